"""Scheduled broadcasts: a text or a command's answer, at a local time of day or every N s.

One thread sleeps until the next entry is due. A fired broadcast goes through the
outbox like any reply, so it waits for the link and respects the pacing.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from typing import TYPE_CHECKING, Sequence

from meshtastic import BROADCAST_NUM

from meshbot.config import ScheduledBroadcast
from meshbot.health import LoopProgress
from meshbot.outbox.policy import TextKind

if TYPE_CHECKING:
    from meshbot.router import Router
    from meshbot.outbox.sender import MessageSender

log = logging.getLogger(__name__)


def seconds_until(at: tuple[int, int], now: datetime.datetime) -> float:
    """Seconds from `now` (local, naive) to the next local HH:MM."""
    target = now.replace(hour=at[0], minute=at[1], second=0, microsecond=0)
    if target <= now:
        target += datetime.timedelta(days=1)
    return (target - now).total_seconds()


class Scheduler:
    """Fires SCHEDULED_BROADCASTS entries on their own thread."""

    def __init__(self, entries: Sequence[ScheduledBroadcast], router: "Router", sender: "MessageSender") -> None:
        self._entries = tuple(entries)
        self._router = router
        self._sender = sender
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scheduler", daemon=True)
        self.progress = LoopProgress()

    def start(self) -> None:
        if self._entries:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def is_alive(self) -> bool:
        return not self._entries or self._thread.is_alive() or self._stop.is_set()

    def _run(self) -> None:
        due = [time.monotonic() + self._delay(entry) for entry in self._entries]
        while True:
            index = min(range(len(due)), key=due.__getitem__)
            if self._stop.wait(max(0.0, due[index] - time.monotonic())):
                return
            with self.progress.step():
                self._fire(index, self._entries[index])
            due[index] = time.monotonic() + self._delay(self._entries[index])

    @staticmethod
    def _delay(entry: ScheduledBroadcast) -> float:
        if entry.at is not None:
            # Recomputed from the wall clock each time, so DST changes and clock steps are followed.
            return seconds_until(entry.at, datetime.datetime.now())
        assert entry.every_s is not None
        return entry.every_s

    def _fire(self, index: int, entry: ScheduledBroadcast) -> None:
        governor = self._sender.governor
        if not governor.allows(BROADCAST_NUM, TextKind.SCHEDULED):
            # Checked before running the command: a skipped /weather costs no HTTP call either.
            reading = governor.reading()
            util = f"{reading.channel_utilization:.0f} %" if reading else "?"
            log.info(
                "scheduled broadcast #%d skipped: channel utilization %s is over CHANNEL_UTIL_POLITE_PCT (%s)",
                index, util, entry.describe(),
            )
            return
        try:
            if entry.command:
                texts = self._router.run_scheduled(entry.command, entry.channel)
            else:
                assert entry.text is not None
                texts = self._sender.send(entry.text, channel=entry.channel, kind=TextKind.SCHEDULED)
        except Exception:  # a broken handler must not stop the other entries
            log.exception("scheduled broadcast #%d (%s) failed", index, entry.describe())
            return
        log.info("scheduled broadcast #%d fired: %s, %d text%s", index, entry.describe(), texts, "" if texts == 1 else "s")
