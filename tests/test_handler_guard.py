"""Handlers cannot hurt the daemon (issue 15): plugins as real modules (entry points naming
modules in a temporary directory, as tests/test_plugins.py loads them), the real bot and
its supervising loop (`run_daemon`) against the simulated node over TCP.

A handler raising SystemExit (what argparse does on bad arguments), one that hangs, one
that returns bytes: each is answered with a short error, and everyone else is answered."""

from __future__ import annotations

import importlib.metadata
import logging
import sys
import textwrap
from pathlib import Path
from typing import Iterator

import pytest

from meshbot.app import Bot
from meshbot.plugins import ENTRY_POINT_GROUP
from meshbot.sim.node import SentText, SimulatedNode
from meshbot.systemd import ServiceNotifier
from tests.conftest import settings_for, wait_until
from tests.test_metrics import metric
from tests.test_systemd import Supervised

ALICE, BOB, CARL, DAVE = 0x1A2B3C01, 0x1A2B3C02, 0x1A2B3C03, 0x1A2B3C04

PLUGINS = {
    "argparse_plugin": """
        import argparse

        from meshbot.router import command

        @command("sum", help="/sum A B: adds two numbers")
        def add(ctx):
            parser = argparse.ArgumentParser(prog="/sum")
            parser.add_argument("a", type=int)
            parser.add_argument("b", type=int)
            args = parser.parse_args(ctx.args.split())  # bad arguments: SystemExit(2)
            return str(args.a + args.b)
    """,
    "hanging_plugin": """
        import threading

        from meshbot.router import command

        ENTERED = threading.Event()  # a call began
        RELEASE = threading.Event()  # the test sets it at its end

        @command("hang", help="/hang: blocks until the test lets it go")
        def hang(ctx):
            ENTERED.set()
            RELEASE.wait()
            return "released"
    """,
    "bytes_plugin": """
        from meshbot.router import command

        @command("raw", help="/raw: returns bytes, a bug")
        def raw(ctx):
            return b"not a str"
    """,
}


@pytest.fixture
def plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[importlib.metadata.EntryPoint]]:
    for name, body in PLUGINS.items():
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(body))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield [importlib.metadata.EntryPoint(name=n, value=n, group=ENTRY_POINT_GROUP) for n in PLUGINS]
    release = getattr(sys.modules.get("hanging_plugin"), "RELEASE", None)
    if release is not None:
        release.set()  # whatever the test did, no thread stays blocked
    for name in PLUGINS:
        sys.modules.pop(name, None)


@pytest.fixture
def daemon(node: SimulatedNode, plugins) -> Iterator:
    """daemon(**settings) -> the bot, supervised by run_daemon on a thread as main() runs it."""
    started: list[Supervised] = []

    def start(**overrides: object) -> Supervised:
        bot = Bot(settings_for(node, **overrides), plugins=plugins)
        supervised = Supervised(bot, ServiceNotifier({}))
        started.append(supervised)
        wait_until(lambda: bot.sender.get_interface() is not None, 10)
        return supervised

    yield start
    for supervised in started:
        supervised.end()


def reply_to(node: SimulatedNode, packet_id: int, timeout: float = 10) -> SentText:
    """The one text the bot sent threaded to this command (waits for it)."""
    found = wait_until(lambda: [t for t in node.texts if t.reply_id == packet_id], timeout)
    assert len(found) == 1, found
    return found[0]


def test_a_handler_raising_systemexit_is_an_error_reply_and_the_daemon_goes_on(node, daemon, caplog):
    caplog.set_level(logging.INFO, logger="meshbot")
    running = daemon(HANDLER_THREADS=1)  # one worker: had it died, nothing would be answered
    for attempt in range(3):
        bad = node.user_text(ALICE, "/sum two", dm=True)
        assert reply_to(node, bad).text == "sorry, /sum failed"
        good = node.user_text(BOB, f"/sum 2 {attempt}", dm=True)
        assert reply_to(node, good).text == str(2 + attempt)
    assert running.thread.is_alive() and running.bot.health_problem() is None
    failures = [r for r in caplog.records if "handler /sum failed" in r.getMessage()]
    assert len(failures) == 3 and "SystemExit(2)" in failures[0].getMessage()
    running.end()
    assert running.result == [0]


def test_a_hanging_handler_times_out_and_nobody_else_waits(node, daemon, caplog):
    caplog.set_level(logging.INFO, logger="meshbot")
    # The defaults but a short deadline: 4 workers, 5 commands a minute per sender.
    running = daemon(HANDLER_TIMEOUT_S=5.0, RATE_LIMIT_COUNT=5, METRICS_LISTEN="127.0.0.1:0")
    bot = running.bot
    first = node.user_text(ALICE, "/hang", dm=True)
    assert sys.modules["hanging_plugin"].ENTERED.wait(10)
    # The same sender again, within the rate limit, while the first call runs: told at once,
    # and no other worker is taken (four of these silenced the whole bot before).
    again = [node.user_text(ALICE, "/hang", dm=True) for _ in range(3)]
    for packet_id in again:
        assert reply_to(node, packet_id).text == "still busy with your last /hang: wait for its answer"
    pong = node.user_text(BOB, "/ping", dm=True)
    assert reply_to(node, pong).text.startswith("pong")
    assert reply_to(node, first).text == "sorry, /hang timed out"
    order = [t.reply_id for t in node.texts]
    assert order.index(pong) < order.index(first)  # answered while the handler hung
    assert bot.router.calls.hung() == 1 and bot.router.calls.timeouts() == {"hang": 1}

    # Written off, still running: ALICE's next /hang is still refused, others' are run. Once
    # HANDLER_THREADS (4) calls of /hang hang, /hang is not run at all; other commands are.
    assert reply_to(node, node.user_text(ALICE, "/hang", dm=True)).text.startswith("still busy")
    late = [node.user_text(user, "/hang", dm=True) for user in (BOB, CARL, DAVE)]
    assert [reply_to(node, packet_id).text for packet_id in late] == ["sorry, /hang timed out"] * 3
    assert bot.router.calls.hung() == 4
    refused = node.user_text(0x1A2B3C05, "/hang", dm=True)
    assert reply_to(node, refused).text == "sorry, /hang is not answering now: try later"
    assert reply_to(node, node.user_text(CARL, "/ping", dm=True)).text.startswith("pong")
    assert running.thread.is_alive() and bot.health_problem() is None
    assert bot.dispatcher.written_off == 4  # every first worker replaced: CARL's /ping had one
    assert metric(bot, "meshbot_handler_timeouts_total", command="hang") == 4
    assert metric(bot, "meshbot_handler_threads_hung") == 4
    assert metric(bot, "meshbot_command_errors_total", command="hang") == 4

    # The handler lets go: the written-off threads end, their answers are dropped, /hang runs again.
    sys.modules["hanging_plugin"].RELEASE.set()
    wait_until(lambda: bot.router.calls.hung() == 0, 10)
    assert reply_to(node, node.user_text(0x1A2B3C06, "/hang", dm=True)).text == "released"
    assert [t.text for t in node.texts].count("released") == 1
    timeouts = [r for r in caplog.records if "did not return within HANDLER_TIMEOUT_S" in r.getMessage()]
    assert timeouts and timeouts[0].levelno == logging.WARNING
    assert "handler /hang returned after" in caplog.text
    running.end()
    assert running.result == [0]


def test_a_handler_returning_bytes_is_a_short_error_logged_once(node, daemon, caplog):
    caplog.set_level(logging.INFO, logger="meshbot")
    running = daemon(HANDLER_THREADS=1)
    for user in (ALICE, BOB, ALICE):
        assert reply_to(node, node.user_text(user, "/raw", dm=True)).text == "sorry, /raw failed"
    bugs = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(bugs) == 1, [r.getMessage() for r in bugs]
    assert "bug in handler /raw: it returned bytes, not a str or None" in bugs[0].getMessage()
    assert not bugs[0].exc_info  # one line, no traceback
    assert reply_to(node, node.user_text(CARL, "/ping", dm=True)).text.startswith("pong")
    assert running.bot.health_problem() is None


def test_a_hanging_scheduled_command_does_not_hold_the_schedule(node, daemon, caplog):
    caplog.set_level(logging.INFO, logger="meshbot")
    daemon(
        HANDLER_TIMEOUT_S=1.0,
        SCHEDULED_BROADCASTS=[{"every_s": 1, "command": "/hang"}, {"every_s": 1, "text": "tick"}],
    )
    wait_until(lambda: "scheduled /hang not broadcast: its handler timed out" in caplog.text, 15)
    # The schedule goes on past the hung call: later ticks, and later /hang runs refused at once.
    ticks = len([t for t in node.texts if t.text == "tick"])
    wait_until(lambda: len([t for t in node.texts if t.text == "tick"]) >= ticks + 3, 15)
    assert "released" not in [t.text for t in node.texts]
