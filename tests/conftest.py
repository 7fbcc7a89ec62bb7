"""Shared fixtures: a simulated node on 127.0.0.1 and the real bot connected to it over TCP."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from meshbot.app import Bot  # noqa: E402
from meshbot.config import build_settings  # noqa: E402
from meshbot.sim.node import SimulatedNode  # noqa: E402

# Short intervals so that faults are detected in about a second, not in a minute.
FAST = dict(
    PROBE_INTERVAL_S=0.3,
    LINK_TIMEOUT_S=1.2,
    CONNECT_TIMEOUT_S=2.0,
    RECONNECT_MIN_S=0.05,
    RECONNECT_MAX_S=0.3,
    MIN_TEXT_INTERVAL_S=0.0,
    PACE_BY_AIRTIME=False,
    CONTENTION_BACKOFF_S=1.0,
    RATE_LIMIT_COUNT=1000,  # tests of the limit set their own
    STATE_DIR=":memory:",  # no test shares a database with another (tests/test_state.py sets its own)
)


def settings_for(node: SimulatedNode, **overrides: Any):
    values = dict(FAST, NODE_HOST=node.host, NODE_PORT=node.port)
    values.update(overrides)
    return build_settings(values)


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.01) -> Any:
    """Poll until predicate() is truthy; return its value, or fail the test."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {getattr(predicate, '__name__', predicate)}")


@pytest.fixture
def node() -> Iterator[SimulatedNode]:
    """A simulated node whose firmware (2.6.11) has no 2 s text limit: its metadata tells the
    bot so (tests that need the limit build a 2.7 node)."""
    with SimulatedNode(firmware_version="2.6.11") as sim:
        yield sim


@pytest.fixture
def start_bot() -> Iterator[Callable[..., Bot]]:
    """start_bot(node, **settings) -> a running Bot whose link is up; stopped after the test."""
    bots: list[Bot] = []

    def start(sim: SimulatedNode, *, wait: bool = True, modules: Any = None, **overrides: Any) -> Bot:
        kwargs = {} if modules is None else {"modules": modules}
        bot = Bot(settings_for(sim, **overrides), **kwargs)
        bots.append(bot)
        bot.start()
        if wait:
            wait_until(lambda: bot.sender.get_interface() is not None, 10)
        return bot

    yield start
    for bot in bots:
        bot.stop(budget_s=2.0)
