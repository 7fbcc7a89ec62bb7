"""Per-sender command rate limit: N commands per window, one notice, then silence.

A user over the limit gets one short notice (`rate limit: wait 42 s`) and nothing
more until the window lets them in again: answering every extra command would spend
the airtime the limit exists to save. Other senders are not affected.
"""

from __future__ import annotations

import collections
import enum
import math
import threading
import time
from dataclasses import dataclass


class Decision(enum.Enum):
    ALLOW = "allow"
    NOTIFY = "notify"  # over the limit: send the one notice
    SILENT = "silent"  # over the limit, already notified


@dataclass(frozen=True)
class Verdict:
    decision: Decision
    wait_s: int = 0


class _Sender:
    __slots__ = ("times", "notified")

    def __init__(self) -> None:
        self.times: collections.deque[float] = collections.deque()
        self.notified = False


class RateLimiter:
    """Sliding-window limiter keyed by sender; remembers at most `max_senders` senders."""

    def __init__(self, window_s: float, max_senders: int = 10_000) -> None:
        self._window = window_s
        self._max = max_senders
        self._senders: collections.OrderedDict[int, _Sender] = collections.OrderedDict()
        self._lock = threading.Lock()

    def check(self, sender: int, budget: int) -> Verdict:
        """Count one command from `sender`, allowed `budget` per window."""
        now = time.monotonic()
        with self._lock:
            state = self._senders.pop(sender, None) or _Sender()
            self._senders[sender] = state  # most recently active last
            if len(self._senders) > self._max:
                self._senders.popitem(last=False)
            while state.times and now - state.times[0] >= self._window:
                state.times.popleft()
            if len(state.times) < budget:
                state.times.append(now)
                state.notified = False
                return Verdict(Decision.ALLOW)
            if state.notified:
                return Verdict(Decision.SILENT)
            state.notified = True
            return Verdict(Decision.NOTIFY, max(1, math.ceil(state.times[0] + self._window - now)))
