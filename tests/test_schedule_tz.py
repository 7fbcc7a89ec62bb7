"""Scheduled 'at' entries across daylight saving time changes: fixed datetimes, no sleeping.

The computation (`next_occurrence`) is a pure function of the entry, an aware "now"
and the zone; the scheduler's loop takes an injected wall clock, monotonic clock and
wait, so days of schedule run in milliseconds. The days tested are the 2025 changes:
Europe/Paris 2025-03-30 (02:00 -> 03:00) and 2025-10-26 (03:00 -> 02:00),
America/New_York 2025-03-09 and 2025-11-02, and Australia/Lord_Howe, whose clocks move
by half an hour.
"""

from __future__ import annotations

import datetime
import logging
import subprocess
import sys
import zoneinfo
from typing import Any

import pytest
import tzlocal

from meshbot.config import ConfigError, build_settings, parse_schedule
from meshbot.scheduler import UTC, Scheduler, next_occurrence, occurrence_on, resolve_zone
from tests.conftest import ROOT, wait_until

PARIS = zoneinfo.ZoneInfo("Europe/Paris")
NEW_YORK = zoneinfo.ZoneInfo("America/New_York")
LORD_HOWE = zoneinfo.ZoneInfo("Australia/Lord_Howe")


def utc(*args: int) -> datetime.datetime:
    return datetime.datetime(*args, tzinfo=UTC)


def firings(at: tuple[int, int], zone: zoneinfo.ZoneInfo, start: datetime.datetime, end: datetime.datetime) -> list[datetime.datetime]:
    """Every occurrence in [start, end), by chaining next_occurrence as the loop does."""
    out = []
    moment = next_occurrence(at, start, zone)
    while moment.astimezone(UTC) < end:
        out.append(moment)
        moment = next_occurrence(at, moment, zone)
    return out


# --- the pure function -------------------------------------------------------------------------------
def test_autumn_change_a_0730_entry_fires_once_at_0730_cet():
    # Measured on main: the naive computation fired at 06:30 and 07:30 CET on 2025-10-26.
    fired = firings((7, 30), PARIS, utc(2025, 10, 24, 12), utc(2025, 10, 28, 0))
    assert [f.astimezone(UTC) for f in fired] == [
        utc(2025, 10, 25, 5, 30),  # 07:30 CEST
        utc(2025, 10, 26, 6, 30),  # 07:30 CET: 25 hours later, the day is 25 hours long
        utc(2025, 10, 27, 6, 30),
    ]
    assert {f.strftime("%H:%M") for f in fired} == {"07:30"}


def test_spring_change_a_0730_entry_fires_at_0730_cest_not_an_hour_late():
    fired = firings((7, 30), PARIS, utc(2025, 3, 28, 12), utc(2025, 4, 1, 0))
    assert [f.astimezone(UTC) for f in fired] == [
        utc(2025, 3, 29, 6, 30),  # 07:30 CET
        utc(2025, 3, 30, 5, 30),  # 07:30 CEST: 23 hours later
        utc(2025, 3, 31, 5, 30),
    ]


def test_a_time_that_does_not_exist_fires_at_the_next_valid_minute():
    fired = firings((2, 30), PARIS, utc(2025, 3, 29, 12), utc(2025, 4, 1, 0))
    assert [f.isoformat() for f in fired] == [
        "2025-03-30T03:00:00+02:00",  # 02:00-03:00 does not exist that night
        "2025-03-31T02:30:00+02:00",
    ]
    # The edges of the gap: 01:59 exists, 02:00 does not, 03:00 does.
    day = datetime.date(2025, 3, 30)
    assert occurrence_on(day, (1, 59), PARIS).isoformat() == "2025-03-30T01:59:00+01:00"
    assert occurrence_on(day, (2, 0), PARIS).isoformat() == "2025-03-30T03:00:00+02:00"
    assert occurrence_on(day, (2, 59), PARIS).isoformat() == "2025-03-30T03:00:00+02:00"
    assert occurrence_on(day, (3, 0), PARIS).isoformat() == "2025-03-30T03:00:00+02:00"


def test_a_time_that_exists_twice_fires_once_at_its_first_occurrence():
    fired = firings((2, 30), PARIS, utc(2025, 10, 25, 12), utc(2025, 10, 28, 0))
    assert [(f.astimezone(UTC), f.fold) for f in fired] == [
        (utc(2025, 10, 26, 0, 30), 0),  # 02:30 CEST, the first of the two
        (utc(2025, 10, 27, 1, 30), 0),  # 02:30 CET the next day
    ]
    # Asked during the repeated hour, after the first 02:30 (02:15 CET, fold=1): not again today.
    second_pass = datetime.datetime(2025, 10, 26, 2, 15, tzinfo=PARIS, fold=1)
    assert second_pass.astimezone(UTC) == utc(2025, 10, 26, 1, 15)
    assert next_occurrence((2, 30), second_pass, PARIS).astimezone(UTC) == utc(2025, 10, 27, 1, 30)
    # Asked before the first 02:30, in the zone itself (same tzinfo: the comparison must be in UTC).
    before = datetime.datetime(2025, 10, 26, 2, 45, tzinfo=PARIS, fold=0)
    assert next_occurrence((2, 30), before, PARIS).astimezone(UTC) == utc(2025, 10, 27, 1, 30)
    early = datetime.datetime(2025, 10, 26, 2, 15, tzinfo=PARIS, fold=0)
    assert next_occurrence((2, 30), early, PARIS).astimezone(UTC) == utc(2025, 10, 26, 0, 30)


@pytest.mark.parametrize(
    ("at", "start", "expected"),
    [
        # Spring, 2025-03-09: 02:00 EST -> 03:00 EDT. 02:30 does not exist: 03:00 EDT.
        ((2, 30), utc(2025, 3, 8, 18), ["2025-03-09T03:00:00-04:00", "2025-03-10T02:30:00-04:00"]),
        ((7, 30), utc(2025, 3, 8, 18), ["2025-03-09T07:30:00-04:00", "2025-03-10T07:30:00-04:00"]),
        # Autumn, 2025-11-02: 02:00 EDT -> 01:00 EST. 01:30 happens twice: the first (EDT).
        ((1, 30), utc(2025, 11, 1, 18), ["2025-11-02T01:30:00-04:00", "2025-11-03T01:30:00-05:00"]),
        ((7, 30), utc(2025, 11, 1, 18), ["2025-11-02T07:30:00-05:00", "2025-11-03T07:30:00-05:00"]),
    ],
)
def test_a_us_zone(at, start, expected):
    fired = firings(at, NEW_YORK, start, start + datetime.timedelta(days=2))
    assert [f.isoformat() for f in fired] == expected


def test_a_half_hour_change():
    # Lord Howe Island, 2025-10-05: 02:00 -> 02:30 (+10:30 -> +11:00).
    fired = firings((2, 15), LORD_HOWE, utc(2025, 10, 4, 0), utc(2025, 10, 6, 12))
    assert [f.isoformat() for f in fired] == ["2025-10-05T02:30:00+11:00", "2025-10-06T02:15:00+11:00"]


@pytest.mark.parametrize(
    ("zone", "first_day"),
    [(PARIS, datetime.date(2025, 3, 29)), (PARIS, datetime.date(2025, 10, 25)),
     (NEW_YORK, datetime.date(2025, 3, 8)), (NEW_YORK, datetime.date(2025, 11, 1))],
    ids=["paris-spring", "paris-autumn", "ny-spring", "ny-autumn"],
)
def test_every_quarter_hour_of_the_day_fires_once_a_day_across_a_change(zone, first_day):
    start = datetime.datetime.combine(first_day, datetime.time(0), tzinfo=zone).astimezone(UTC) - datetime.timedelta(seconds=1)
    end = datetime.datetime.combine(first_day + datetime.timedelta(days=3), datetime.time(0), tzinfo=zone).astimezone(UTC)
    for minute in range(0, 24 * 60, 15):
        at = (minute // 60, minute % 60)
        fired = firings(at, zone, start, end)
        days = [f.date() for f in fired]
        assert days == [first_day + datetime.timedelta(days=i) for i in range(3)], (at, fired)
        for moment in fired:
            if (moment.hour, moment.minute) == at:
                continue
            # Not its own time: only for a time in the spring gap, and then the first minute after it.
            naive = datetime.datetime.combine(moment.date(), datetime.time(*at))
            assert naive.replace(tzinfo=zone).astimezone(UTC).astimezone(zone).replace(tzinfo=None) != naive, (at, moment)
            before = (moment.astimezone(UTC) - datetime.timedelta(minutes=1)).astimezone(zone)
            assert before.utcoffset() != moment.utcoffset(), (at, moment)


def test_now_must_be_aware():
    with pytest.raises(ValueError, match="aware"):
        next_occurrence((7, 30), datetime.datetime(2025, 10, 26, 7, 0), PARIS)


# --- the loop, with an injected clock -----------------------------------------------------------------
class FakeClock:
    """A wall clock and a monotonic clock that move only when the scheduler waits."""

    def __init__(self, start: datetime.datetime, end: datetime.datetime) -> None:
        self.now = start
        self.mono = 1000.0
        self.end = end
        self.steps: dict[datetime.datetime, datetime.timedelta] = {}  # at this time, the wall clock jumps

    def wall(self) -> datetime.datetime:
        return self.now

    def monotonic(self) -> float:
        return self.mono

    def wait(self, seconds: float) -> bool:
        assert 0 < seconds <= 60.0, seconds  # the loop re-reads the wall clock at least once a minute
        for at, jump in list(self.steps.items()):
            if self.now < at <= self.now + datetime.timedelta(seconds=seconds):
                del self.steps[at]
                self.now, self.mono = at + jump, self.mono + (at - self.now).total_seconds()
                return self.now >= self.end
        self.now += datetime.timedelta(seconds=seconds)
        self.mono += seconds
        return self.now >= self.end


class QuietChannel:
    """The channel governor of a quiet channel: every broadcast may go."""

    def allows(self, to: int, kind: Any) -> bool:
        return True


class RecordingSender:
    """Stands for the outbox in the loop tests: records what would be sent, and when."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.sent: list[tuple[datetime.datetime, str]] = []
        self.governor = QuietChannel()

    def send(self, text: str, channel: int = 0, **_kwargs: Any) -> int:
        self.sent.append((self.clock.now, text))
        return 1


def run_schedule(entries: list[dict[str, Any]], zone: zoneinfo.ZoneInfo, clock: FakeClock, router: Any = None,
                 sender: Any = None) -> RecordingSender:
    recorder = RecordingSender(clock)
    scheduler = Scheduler(
        parse_schedule(entries), router, sender or recorder, zone=zone, now=clock.wall, monotonic=clock.monotonic,
        wait=clock.wait,
    )
    scheduler.run()
    return recorder


def test_the_loop_fires_each_entry_once_per_occurrence_across_the_autumn_change():
    clock = FakeClock(utc(2025, 10, 24, 22), utc(2025, 10, 28, 0))
    sent = run_schedule(
        [{"at": "07:30", "text": "morning"}, {"at": "02:30", "text": "night"}, {"every_s": 6 * 3600, "text": "6h"}],
        PARIS, clock,
    ).sent
    morning = [t for t, text in sent if text == "morning"]
    night = [t for t, text in sent if text == "night"]
    assert morning == [utc(2025, 10, 25, 5, 30), utc(2025, 10, 26, 6, 30), utc(2025, 10, 27, 6, 30)]
    assert night == [utc(2025, 10, 25, 0, 30), utc(2025, 10, 26, 0, 30), utc(2025, 10, 27, 1, 30)]
    # The interval entry keeps its 6 hours of real time through the 25-hour day: 3 days and 2 h, 12 of them.
    assert len([t for t, text in sent if text == "6h"]) == 12


def test_the_loop_across_the_spring_change():
    clock = FakeClock(utc(2025, 3, 28, 22), utc(2025, 4, 1, 0))
    sent = run_schedule([{"at": "07:30", "text": "morning"}, {"at": "02:30", "text": "night"}], PARIS, clock).sent
    assert [t for t, text in sent if text == "morning"] == [
        utc(2025, 3, 29, 6, 30), utc(2025, 3, 30, 5, 30), utc(2025, 3, 31, 5, 30)
    ]
    assert [t for t, text in sent if text == "night"] == [
        utc(2025, 3, 29, 1, 30), utc(2025, 3, 30, 1, 0), utc(2025, 3, 31, 0, 30)  # 03:00 CEST on the 30th
    ]


def test_a_clock_set_back_after_firing_does_not_fire_again():
    clock = FakeClock(utc(2025, 6, 1, 5), utc(2025, 6, 2, 12))
    clock.steps[utc(2025, 6, 1, 5, 40)] = datetime.timedelta(minutes=-30)  # NTP steps back 30 min after 07:30 CEST
    sent = run_schedule([{"at": "07:30", "text": "morning"}], PARIS, clock).sent
    assert [t for t, _ in sent] == [utc(2025, 6, 1, 5, 30), utc(2025, 6, 2, 5, 30)]


def test_a_clock_that_jumps_over_an_occurrence_skips_it_with_an_info_line(caplog):
    caplog.set_level(logging.INFO, logger="meshbot.scheduler")
    # A Pi without a battery-backed clock boots at its last shutdown time; NTP then sets it 9 hours later.
    clock = FakeClock(utc(2025, 6, 1, 1), utc(2025, 6, 2, 12))
    clock.steps[utc(2025, 6, 1, 1, 10)] = datetime.timedelta(hours=9)
    sent = run_schedule([{"at": "07:30", "text": "morning"}], PARIS, clock).sent
    assert [t for t, _ in sent] == [utc(2025, 6, 2, 5, 30)]  # not at 10:10 local, hours late
    assert "scheduled broadcast #0 (text 'morning' at 07:30 on ch0) skipped: its time 2025-06-01T07:30+02:00 passed" in caplog.text


def test_the_loop_broadcasts_through_the_real_bot_over_the_autumn_change(node, start_bot):
    """The texts and a command's answer go out through the simulated node, once per occurrence."""
    bot = start_bot(node)
    clock = FakeClock(utc(2025, 10, 25, 12), utc(2025, 10, 27, 12))
    run_schedule(
        [{"at": "07:30", "text": "good morning mesh"}, {"at": "02:30", "command": "/ping", "channel": 2}],
        PARIS, clock, router=bot.router, sender=bot.sender,
    )
    texts = node.wait_texts(4, 10)
    assert sorted((t.text, t.channel) for t in texts) == [
        ("good morning mesh", 0), ("good morning mesh", 0), ("pong", 2), ("pong", 2)
    ]


# --- TIMEZONE -------------------------------------------------------------------------------------
def test_timezone_is_checked_at_config_load():
    assert build_settings({"NODE_HOST": "x", "TIMEZONE": "Europe/Paris"}).TIMEZONE == "Europe/Paris"
    assert build_settings({"NODE_HOST": "x"}).TIMEZONE == ""
    for bad, message in [
        ("Europe/Pari", "'Europe/Pari' is not a time zone this system knows (did you mean 'Europe/Paris'?)"),
        ("Europe", "'Europe' is not a time zone"),
        ("/etc/localtime", "is not a time zone"),
        ("../../etc/passwd", "is not a time zone"),
        (1, "expected an IANA time zone name"),
    ]:
        with pytest.raises(ConfigError) as caught:
            build_settings({"NODE_HOST": "x", "TIMEZONE": bad})
        assert str(caught.value).startswith("TIMEZONE: ") and message in str(caught.value), caught.value


def test_a_bad_timezone_exits_78_with_one_line(tmp_path):
    config = tmp_path / "config.py"
    config.write_text("NODE_HOST = '10.0.0.2'\nTIMEZONE = 'Europe/Pari'\n")
    result = subprocess.run(
        [sys.executable, str(ROOT / "main.py"), "--config", str(config), "--check-config"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 78, result.stderr
    errors = [ln for ln in result.stderr.splitlines() if "config error" in ln]
    assert len(errors) == 1 and "TIMEZONE: 'Europe/Pari' is not a time zone" in errors[0], result.stderr


def test_the_system_zone_is_the_named_zone_not_a_fixed_offset(monkeypatch):
    monkeypatch.setenv("TZ", "America/New_York")
    tzlocal.reload_localzone()
    try:
        zone, shown = resolve_zone("")
        assert shown == "America/New_York (the system's zone)"
        # A named zone follows DST: the same zone gives -5 h in January and -4 h in July.
        assert datetime.datetime(2025, 1, 15, tzinfo=zone).utcoffset() == datetime.timedelta(hours=-5)
        assert datetime.datetime(2025, 7, 15, tzinfo=zone).utcoffset() == datetime.timedelta(hours=-4)
    finally:
        monkeypatch.undo()
        tzlocal.reload_localzone()
    zone, shown = resolve_zone("Europe/Paris")
    assert (zone, shown) == (PARIS, "Europe/Paris")


def test_the_bot_schedules_in_timezone_and_says_so(node, start_bot, caplog):
    caplog.set_level(logging.INFO, logger="meshbot.scheduler")
    bot = start_bot(node, TIMEZONE="America/New_York", SCHEDULED_BROADCASTS=[{"at": "07:30", "text": "hi"}])
    assert bot.scheduler._zone == NEW_YORK
    wait_until(lambda: "scheduled times are in America/New_York" in caplog.text, 5)
