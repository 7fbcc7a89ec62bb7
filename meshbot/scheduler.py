"""Scheduled broadcasts: a text or a command's answer, at a time of day in TIMEZONE or every N s.

One thread sleeps until the next entry is due. A fired broadcast goes through the
outbox like any reply, so it waits for the link and respects the pacing.

Times of day are computed with aware datetimes in the configured zone (`zoneinfo`),
and every comparison and difference is made in UTC: Python compares and subtracts two
datetimes of the *same* zone by their wall-clock digits, ignoring the offset and the
`fold`, which is how a naive scheduler fires a 07:30 entry at 06:30 and at 07:30 on
the autumn change and an hour late in spring. The rules, in `next_occurrence`:

* an entry fires once per day, at its time in the zone, whatever the day's length;
* a time that does not exist (02:30 on the spring change in Europe) fires at the next
  minute that exists (03:00);
* a time that exists twice (02:30 on the autumn change) fires at its first occurrence
  (`fold=0`), once.

The wall clock is read again at least every `RECHECK_S`, so a clock set by NTP after
boot (a Raspberry Pi has no battery-backed clock) or a suspend is followed; an
occurrence missed by more than `LATE_GRACE_S` (the clock jumped over it) is skipped
with an INFO line rather than sent hours late. Interval entries (`every_s`) use the
monotonic clock: a clock step neither bunches nor stretches them.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
import zoneinfo
from typing import TYPE_CHECKING, Callable, Optional, Sequence

import tzlocal

from meshtastic import BROADCAST_NUM

from meshbot.config import ScheduledBroadcast
from meshbot.health import LoopProgress
from meshbot.outbox.policy import TextKind

if TYPE_CHECKING:
    from meshbot.router import Router
    from meshbot.outbox.sender import MessageSender

log = logging.getLogger(__name__)

UTC = datetime.timezone.utc
RECHECK_S = 60.0  # longest sleep before the wall clock is read again
LATE_GRACE_S = 300.0  # an occurrence found later than this after its time is skipped
_MINUTE = datetime.timedelta(minutes=1)
_MAX_GAP_MINUTES = 25 * 60  # the longest skipped stretch of local time (Samoa skipped a whole day in 2011)


# --- the zone -------------------------------------------------------------------------------
def system_zone() -> tuple[datetime.tzinfo, str]:
    """The host's zone and its name, from TZ, /etc/timezone or /etc/localtime (via tzlocal).

    A fixed offset (what `datetime.now().astimezone()` gives) would not follow daylight
    saving time, so the zone is looked up by name; tzlocal also reads /etc/localtime as
    a zone file when it is a copy rather than a link. Without any, the schedule runs in
    UTC, and says so.
    """
    try:
        zone = tzlocal.get_localzone()
        name = tzlocal.get_localzone_name() or str(zone)
    except Exception as exc:  # an unreadable or inconsistent system setting: not fatal
        log.warning("cannot tell the system's time zone (%s); scheduled times are in UTC: set TIMEZONE", exc)
        return UTC, "UTC"
    return zone, name


def resolve_zone(name: str) -> tuple[datetime.tzinfo, str]:
    """TIMEZONE's zone and how to call it in the log: '' is the system's zone."""
    if not name:
        zone, shown = system_zone()
        return zone, f"{shown} (the system's zone)"
    return zoneinfo.ZoneInfo(name), name


# --- the pure computation ---------------------------------------------------------------------
def _exists(local: datetime.datetime, zone: datetime.tzinfo) -> bool:
    """True if the naive wall-clock time `local` happens in `zone` (is not in a spring gap)."""
    back = local.replace(tzinfo=zone).astimezone(UTC).astimezone(zone)
    return back.replace(tzinfo=None) == local


def occurrence_on(day: datetime.date, at: tuple[int, int], zone: datetime.tzinfo) -> datetime.datetime:
    """When HH:MM of `day` happens in `zone`, as an aware datetime in the zone.

    Twice (autumn): the first one (fold=0). Never (spring): the next minute that exists.
    """
    local = datetime.datetime.combine(day, datetime.time(at[0], at[1]))
    for _ in range(_MAX_GAP_MINUTES):
        if _exists(local, zone):
            return local.replace(tzinfo=zone, fold=0)
        local += _MINUTE
    raise ValueError(f"no valid local time after {day} {at[0]:02d}:{at[1]:02d} in {zone}")


def next_occurrence(
    at: tuple[int, int], now: datetime.datetime, zone: datetime.tzinfo
) -> datetime.datetime:
    """The first time after `now` (aware, any zone) that an 'at' entry fires, in `zone`.

    Strictly after: an entry that fired at `now` is next due tomorrow.
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be an aware datetime")
    now_utc = now.astimezone(UTC)
    today = now_utc.astimezone(zone).date()
    # Yesterday too: a gap's "next valid minute" can spill into the next day.
    for offset in (-1, 0, 1, 2):
        candidate = occurrence_on(today + datetime.timedelta(days=offset), at, zone)
        if candidate.astimezone(UTC) > now_utc:
            return candidate
    raise AssertionError("unreachable: a day always has its occurrence within two days")


# --- the thread -------------------------------------------------------------------------------
def _wall_clock() -> datetime.datetime:
    return datetime.datetime.now(UTC)


class Scheduler:
    """Fires SCHEDULED_BROADCASTS entries on their own thread.

    `now` (an aware wall clock), `monotonic` and `wait` (sleep up to N s; True when
    stopped) are injectable so that tests can run days of schedule in milliseconds.
    """

    def __init__(
        self,
        entries: Sequence[ScheduledBroadcast],
        router: "Router",
        sender: "MessageSender",
        *,
        zone: Optional[datetime.tzinfo] = None,
        zone_name: str = "",
        now: Callable[[], datetime.datetime] = _wall_clock,
        monotonic: Callable[[], float] = time.monotonic,
        wait: Optional[Callable[[float], bool]] = None,
    ) -> None:
        self._entries = tuple(entries)
        self._router = router
        self._sender = sender
        self._zone = zone if zone is not None else UTC
        self._zone_name = zone_name or str(self._zone)
        self._now = now
        self._monotonic = monotonic
        self._stop = threading.Event()
        self._wait = wait if wait is not None else self._stop.wait
        self._thread = threading.Thread(target=self.run, name="scheduler", daemon=True)
        self.progress = LoopProgress()

    def start(self) -> None:
        if self._entries:
            if any(entry.at is not None for entry in self._entries):
                log.info("scheduled times are in %s", self._zone_name)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def is_alive(self) -> bool:
        return not self._entries or self._thread.is_alive() or self._stop.is_set()

    def run(self) -> None:
        """The loop: sleep until the next entry is due, fire it, plan its next time; until stopped."""
        if not self._entries:
            return
        now = self._now()
        # Per entry: the aware instant of its next occurrence ('at') or a monotonic deadline (every_s).
        wall_due: list[Optional[datetime.datetime]] = []
        mono_due: list[Optional[float]] = []
        for entry in self._entries:
            if entry.at is not None:
                wall_due.append(next_occurrence(entry.at, now, self._zone))
                mono_due.append(None)
            else:
                assert entry.every_s is not None
                wall_due.append(None)
                mono_due.append(self._monotonic() + entry.every_s)
        while True:
            now, mono = self._now(), self._monotonic()
            left = [self._left(wall_due[i], mono_due[i], now, mono) for i in range(len(self._entries))]
            index = min(range(len(left)), key=left.__getitem__)
            if left[index] > 0:
                if self._wait(min(left[index], RECHECK_S)):
                    return
                continue
            entry = self._entries[index]
            due_at = wall_due[index]
            if due_at is not None:
                late_s = (now.astimezone(UTC) - due_at.astimezone(UTC)).total_seconds()
                if late_s > LATE_GRACE_S:
                    log.info(
                        "scheduled broadcast #%d (%s) skipped: its time %s passed %.0f s ago (clock set or suspended)",
                        index, entry.describe(), due_at.isoformat(timespec="minutes"), late_s,
                    )
                else:
                    with self.progress.step():
                        self._fire(index, entry)
                assert entry.at is not None
                # After both the occurrence and now: fires once per occurrence, even if the
                # wall clock is stepped back after firing.
                wall_due[index] = next_occurrence(entry.at, max(now.astimezone(UTC), due_at.astimezone(UTC)), self._zone)
            else:
                with self.progress.step():
                    self._fire(index, entry)
                assert entry.every_s is not None
                mono_due[index] = self._monotonic() + entry.every_s
            if self._stop.is_set():
                return

    @staticmethod
    def _left(
        wall: Optional[datetime.datetime], mono: Optional[float], now: datetime.datetime, mono_now: float
    ) -> float:
        if wall is not None:
            return (wall.astimezone(UTC) - now.astimezone(UTC)).total_seconds()
        assert mono is not None
        return mono - mono_now

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
