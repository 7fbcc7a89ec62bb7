"""Is the daemon working? Liveness of its own loops, for the main loop and systemd's watchdog.

A thread that died is easy to see (`Thread.is_alive`). A thread that hangs (a deadlock,
a library call that never returns) is not: each loop therefore says when it starts a
step of work and when it is back to waiting, and a step that lasts far longer than any
step can legitimately take means the loop is hung. Waiting for work is never a hang:
an idle bot on a quiet mesh is healthy, and no loop has to wake up just to say so.
"""

from __future__ import annotations

import contextlib
import time
from typing import Iterator, Optional

from meshbot.config import Settings
from meshbot.link.interface import TX_QUEUE_WAIT_S

# Added to the longest legitimate step, so a slow Pi under load is not taken for hung.
_STALL_MARGIN_S = 60.0


class LoopProgress:
    """When the loop's current step began; None while the loop waits for work."""

    __slots__ = ("busy_since",)

    def __init__(self) -> None:
        self.busy_since: Optional[float] = None

    @contextlib.contextmanager
    def step(self) -> Iterator[None]:
        self.busy_since = time.monotonic()
        try:
            yield
        finally:
            self.busy_since = None

    def wait_outside(self) -> None:
        """The current step now waits on something outside the process (a node that takes
        its time), which no watchdog restart would speed up: count it as waiting."""
        self.busy_since = None

    def busy_for(self, now: float) -> float:
        since = self.busy_since
        return 0.0 if since is None else now - since


def stall_limit_s(settings: Settings) -> float:
    """How long one step may take before its loop counts as hung.

    The longest legitimate steps: the link's connect plus handshake (each bounded by
    CONNECT_TIMEOUT_S), the outbox's wait for a TX-queue slot and then for the node's
    verdict (bounded by LINK_TIMEOUT_S), a /weather by place name (geocoding, then the
    forecast, each bounded by WEATHER_TIMEOUT_S), any handler call (a receive worker waits
    for it HANDLER_TIMEOUT_S at most, then writes it off). With the defaults: 115 s.
    """
    longest = max(
        2 * settings.CONNECT_TIMEOUT_S + 5.0,
        TX_QUEUE_WAIT_S + settings.LINK_TIMEOUT_S,
        2 * settings.WEATHER_TIMEOUT_S,
        settings.HANDLER_TIMEOUT_S,
    )
    return longest + _STALL_MARGIN_S
