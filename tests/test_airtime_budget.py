"""The airtime budget, the priorities and the channel governor (issue 10, points 1 and 2).

The ledger is tested alone with explicit times; the rest runs the real bot against the
simulated node over TCP, on LONG_FAST with a budget of 0.1 % (3.6 s an hour: a few
short texts), and a clock the test moves forward instead of waiting an hour.
"""

from __future__ import annotations

import logging
import math
import random
import time
import types

import pytest

from meshbot import handlers
from meshbot.outbox.budget import SPREAD_WINDOW_S, AirtimeBudget, AirtimeLedger
from meshbot.outbox.governor import Level
from meshbot.outbox.policy import TextKind
from meshbot.router import command
from meshbot.sim.node import BROADCAST_NUM, SimulatedNode
from meshbot.text import ELLIPSIS, utf8_len
from tests.conftest import wait_until

ALICE, BOB = 0x1A2B3C01, 0x1A2B3C02  # in the node DB (NodeInfo heard)
STRANGER, STRANGER2 = 0x0BAD0001, 0x0BAD0002  # never announced
HOUR = 3600.0
# Skipping two hours puts every text sent so far out of the window (a text counts against
# every hour it overlaps: one hour later, the last one may still graze the window).
LATER = 2 * HOUR
TINY_BUDGET_PCT = 0.1  # 3.6 s an hour
LONG_TEXT = " ".join(f"word{i:03d}" for i in range(110))  # ~880 bytes: MAX_CHUNKS texts


class Clock:
    """time.monotonic(), plus whatever the test skipped ahead."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset

    def skip(self, seconds: float) -> None:
        self.offset += seconds


def long_module() -> types.ModuleType:
    module = types.ModuleType("long_handlers")

    @command("long", help="/long: a reply of several texts")
    def long(ctx):  # type: ignore[no-untyped-def]
        return LONG_TEXT

    module.long = long
    return module


def start(start_bot, node: SimulatedNode, clock: Clock, spread: bool = False, **settings):  # type: ignore[no-untyped-def]
    """The bot with a tiny budget on the test's clock (swapped in before anything is sent).

    Without its ten-minute spread unless asked: these tests are about the hour, and a
    third of 3.6 s holds no 150-byte text (each would go out alone)."""
    settings.setdefault("AIRTIME_BUDGET_PCT", TINY_BUDGET_PCT)
    bot = start_bot(node, modules=(*handlers.MODULES, long_module()), **settings)
    bot.sender.budget = AirtimeBudget(
        settings["AIRTIME_BUDGET_PCT"], clock=clock, spread_window_s=SPREAD_WINDOW_S if spread else None
    )
    return bot


def airtime(bot, texts) -> float:  # type: ignore[no-untyped-def]
    radio = bot.link.status.radio
    return sum(radio.airtime_s(utf8_len(t.text)) for t in texts)


def filler(i: int, size: int = 150) -> str:
    """One of the bot's own texts, `size` bytes (150: 1.58 s on LONG_FAST: two fill 3.6 s
    but for 0.43 s, less than any reply costs)."""
    return f"filler {i:02d} ".ljust(size, "x")


def spend_the_budget(bot, node: SimulatedNode, caplog, count: int = 3, size: int = 150) -> int:  # type: ignore[no-untyped-def]
    """Send `count` of the bot's own texts, more than the budget takes; return how many went out.

    Few texts on purpose: every text costs the firmware's 2 s gap on a 2.7 node."""
    for i in range(count):
        bot.sender.send(filler(i, size))
    wait_until(lambda: "airtime budget spent" in caplog.text, 10)
    sent = len(node.texts)
    assert 0 < sent < count
    assert airtime(bot, node.texts) <= bot.sender.budget.budget_s
    return sent


def held_count(bot) -> int:  # type: ignore[no-untyped-def]
    return bot.sender.stats().queued


def next_batch(clock: Clock, caplog) -> None:  # type: ignore[no-untyped-def]
    """Move past the last hour, and wait until the budget holds texts again."""
    held = caplog.text.count("airtime budget spent")
    clock.skip(LATER)
    wait_until(lambda: caplog.text.count("airtime budget spent") > held, 15)


# --- the ledger alone ---------------------------------------------------------------------------
def worst_window(entries: list[tuple[float, float]], window: float) -> float:
    """The most airtime any window of `window` seconds holds (overlaps counted exactly)."""
    edges = {t for at, d in entries for t in (at, at + d, at + window, at + d + window)}

    def held(end: float) -> float:
        start = end - window
        return sum(max(0.0, min(at + d, end) - max(at, start)) for at, d in entries)

    return max(held(end) for end in edges)


def test_greedy_sender_never_exceeds_the_budget_in_any_rolling_window():
    rng = random.Random(10)
    ledger = AirtimeLedger(budget_s=20.0, window_s=100.0)
    now, entries = 0.0, []
    while now < 1000.0:
        cost = rng.uniform(0.2, 3.0)
        now = ledger.fits_at(now, cost)  # wait exactly as long as the ledger says
        ledger.record(now, cost)
        entries.append((now, cost))
        now += cost + rng.choice([0.0, 0.0, 0.5, 7.0])  # back to back, mostly
    assert len(entries) > 100  # ten windows' worth, each filled to the brim
    assert worst_window(entries, 100.0) <= 20.0 + 1e-6
    # It is also used: some window comes within one text of the budget.
    assert worst_window(entries, 100.0) > 20.0 - 3.0


def test_ledger_says_when_room_comes_back():
    ledger = AirtimeLedger(budget_s=10.0, window_s=HOUR)
    ledger.record(0.0, 4.0)
    ledger.record(100.0, 4.0)
    assert ledger.spent(200.0) == 8.0
    assert ledger.fits_at(200.0, 2.0) == 200.0
    # 3 s more needs the first text (0-4 s) out of the window: at 4 s + an hour.
    assert ledger.fits_at(200.0, 3.0) == 4.0 + HOUR
    assert ledger.fits_at(200.0, 7.0) == 104.0 + HOUR
    assert ledger.fits_at(200.0, 11.0) == math.inf  # longer than the whole budget
    assert ledger.spent(104.0 + HOUR) == 0.0


def test_per_requester_ledgers_are_forgotten_after_the_window():
    clock = Clock()
    budget = AirtimeBudget(5.0, clock=clock)
    for num in range(1000):  # a thousand forged ids, one text each
        budget.record(0.1, num, stranger=True)
    assert budget.spent_by(7) == 0.1 and budget.requesters() == 1000
    clock.skip(HOUR + 1)
    budget.wait_s(0.1)
    assert budget.requesters() == 0 and budget.spent() == 0.0


class FixedClock:
    """A clock that moves only when the test says."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_hours_budget_is_spread_over_at_least_half_an_hour():
    clock = FixedClock()
    budget = AirtimeBudget(5.0, clock=clock)  # the default: 180 s an hour, 60 s in any 10 minutes
    assert budget.spread is not None and budget.spread.budget_s == 60.0
    started, entries = clock.now, []
    while clock.now < started + 3 * HOUR:  # a flood: always a 1.58 s text waiting, sent as soon as allowed
        clock.now += budget.wait_s(1.58)
        budget.record(1.58)
        entries.append((clock.now, 1.58))
        clock.now += 2.05  # the firmware's gap between two texts
    assert worst_window(entries, HOUR) <= 180.0 + 1e-6
    assert worst_window(entries, SPREAD_WINDOW_S) <= 60.0 + 1e-6
    assert worst_window(entries, HOUR) > 180.0 - 2 * 1.58  # spread, not cut: the hour is still used
    # From an empty ledger, the hour's budget takes at least half an hour to go out.
    spent_at, total = [], 0.0
    for at, cost in entries:
        total += cost
        if total > 180.0 - 1.58:
            spent_at.append(at)
            break
    assert spent_at[0] - started >= 30 * 60 - SPREAD_WINDOW_S / 6


def test_a_text_longer_than_the_ten_minutes_share_goes_out_alone():
    clock = FixedClock()
    budget = AirtimeBudget(TINY_BUDGET_PCT, clock=clock)  # 3.6 s an hour, 1.2 s in 10 minutes
    assert budget.wait_s(1.58) == 0.0  # longer than 1.2 s, but nothing else is on air
    budget.record(1.58)
    assert budget.wait_s(0.1) == pytest.approx(SPREAD_WINDOW_S + 1.58)  # the ten minutes are its own
    assert budget.hour_wait_s(0.1) == 0.0  # the hour has room: held by the spread alone
    clock.now += SPREAD_WINDOW_S + 1.58
    assert budget.wait_s(1.58) == 0.0
    assert math.isinf(budget.wait_s(3.7))  # longer than the hour's whole budget: never


def test_strangers_get_at_most_half_of_the_ten_minutes_too():
    clock = FixedClock()
    budget = AirtimeBudget(5.0, clock=clock)  # 60 s in 10 minutes: 30 s for strangers
    while budget.stranger_wait_s(1.58) == 0:
        budget.record(1.58, clock.now, stranger=True)
        clock.now += 2.05
    assert 30.0 - 1.58 < budget.spread_spent() <= 30.0
    assert budget.wait_s(1.58) == 0.0  # a known node's reply still goes now

# --- the outbox over TCP ------------------------------------------------------------------------
def test_budget_holds_texts_and_sends_them_when_the_hour_has_passed(node, start_bot, caplog):
    caplog.set_level(logging.INFO, logger="meshbot")
    clock = Clock()
    bot = start(start_bot, node, clock)
    assert spend_the_budget(bot, node, caplog) == 2  # two 150-byte texts in 3.6 s
    assert held_count(bot) == 1
    warning = next(r for r in caplog.records if "airtime budget spent" in r.getMessage())
    assert warning.levelno == logging.WARNING and "holding 1 text" in warning.getMessage()
    assert "airtime budget back" not in caplog.text
    clock.skip(LATER)
    texts = node.wait_texts(3, 10)
    assert [t.text for t in texts] == [filler(0), filler(1), filler(2)]
    wait_until(lambda: held_count(bot) == 0, 5)
    assert caplog.text.count("airtime budget spent") == 1
    assert caplog.text.count("airtime budget back") == 1
    info = next(r for r in caplog.records if "airtime budget back" in r.getMessage())
    assert info.levelno == logging.INFO
    # Each hour held no more than the budget.
    assert airtime(bot, texts[:2]) <= bot.sender.budget.budget_s
    assert bot.sender.budget.spent() == airtime(bot, texts[2:])


def test_a_burst_is_held_for_its_ten_minutes_without_calling_the_hour_spent(node, start_bot, caplog):
    caplog.set_level(logging.INFO, logger="meshbot")
    clock = Clock()
    bot = start(start_bot, node, clock, spread=True, AIRTIME_BUDGET_PCT=0.5)  # 18 s an hour, 6 s in 10 minutes
    for i in range(5):
        bot.sender.send(filler(i))  # 1.58 s each: three fit in 6 s
    wait_until(lambda: "spread them out" in caplog.text, 15)
    assert [t.text for t in node.texts] == [filler(i) for i in range(3)]
    assert held_count(bot) == 2
    note = next(r for r in caplog.records if "spread them out" in r.getMessage())
    assert note.levelno == logging.INFO and "4.7 s on air in the last 10 minutes" in note.getMessage()
    assert "airtime budget spent" not in caplog.text  # the hour has room: nothing for the operator to do
    clock.skip(SPREAD_WINDOW_S)
    texts = node.wait_texts(5, 15)
    assert [t.text for t in texts] == [filler(i) for i in range(5)]


def test_held_texts_still_expire_with_the_ttl(node, start_bot, caplog):
    caplog.set_level(logging.INFO, logger="meshbot")
    bot = start(start_bot, node, Clock(), OUTBOX_TTL_S=3.0)  # more than the firmware's 2 s gap
    for i in range(2):
        bot.sender.send(filler(i))
    node.wait_texts(2, 10)  # the budget is now spent but for 0.43 s
    for i in range(2, 4):
        bot.sender.send(filler(i))
    wait_until(lambda: "airtime budget spent" in caplog.text, 10)
    wait_until(lambda: held_count(bot) == 0, 10)
    assert bot.sender.stats().dropped == 2  # the first drop in a WARNING of its own, the next counted
    assert "not sent within OUTBOX_TTL_S" in caplog.text
    assert len(node.texts) == 2


def test_a_known_nodes_dm_goes_before_a_strangers(node, start_bot, caplog):
    caplog.set_level(logging.INFO, logger="meshbot")
    clock = Clock()
    bot = start(start_bot, node, clock)
    spend_the_budget(bot, node, caplog)
    stranger_id = node.user_text(STRANGER, "/ping", dm=True)
    wait_until(lambda: held_count(bot) == 2, 5)
    known_id = node.user_text(ALICE, "/ping", dm=True)
    wait_until(lambda: held_count(bot) == 3, 5)
    clock.skip(LATER)  # room for all three (0.8 + 1.6 + 0.8 s), in priority order
    texts = node.wait_texts(5, 10)[2:]
    assert [(t.to, t.reply_id) for t in texts] == [(ALICE, known_id), (BROADCAST_NUM, 0), (STRANGER, stranger_id)]


def test_a_reply_goes_before_a_scheduled_broadcast(node, start_bot, caplog):
    caplog.set_level(logging.INFO, logger="meshbot")
    clock = Clock()
    bot = start(start_bot, node, clock)
    spend_the_budget(bot, node, caplog)
    bot.sender.send("scheduled weather", channel=0, kind=TextKind.SCHEDULED)
    wait_until(lambda: held_count(bot) == 2, 5)
    reply_id = node.user_text(BOB, "/ping", channel=0)
    wait_until(lambda: held_count(bot) == 3, 5)
    clock.skip(LATER)
    texts = node.wait_texts(5, 10)[2:]
    # Queued before the reply, the broadcast goes after it (and after the bot's held text).
    assert sorted(t.reply_id for t in texts[:2]) == [0, reply_id]
    assert texts[2].text == "scheduled weather"


def test_two_requesters_share_the_airtime_turn_by_turn(node, start_bot, caplog):
    caplog.set_level(logging.INFO, logger="meshbot")
    clock = Clock()
    # Texts of 110 bytes: 1.3 s each on LONG_FAST, two an hour in a budget of 3.6 s.
    bot = start(start_bot, node, clock, MAX_TEXT_BYTES=110, MAX_CHUNKS=4)
    sent = spend_the_budget(bot, node, caplog, count=3, size=110)
    node.user_text(ALICE, "/long", dm=True)
    wait_until(lambda: held_count(bot) == 3 - sent + 4, 5)
    node.user_text(BOB, "/long", dm=True)
    wait_until(lambda: held_count(bot) == 3 - sent + 8, 5)
    next_batch(clock, caplog)  # two of the 1.3 s texts fit in 3.6 s
    next_batch(clock, caplog)
    replies = [t for t in node.texts if t.to in (ALICE, BOB)]
    # First come is not first served: Alice asked first, yet her texts and Bob's alternate.
    assert [t.to for t in replies] == [ALICE, BOB, ALICE, BOB]
    for user in (ALICE, BOB):
        assert [t.text[-6:] for t in replies if t.to == user] == [" (1/4)", " (2/4)"]


def test_a_stranger_gets_one_text_per_command_a_known_node_all(node, start_bot):
    start_bot(node, modules=(*handlers.MODULES, long_module()), MAX_CHUNKS=2)
    stranger_id = node.user_text(STRANGER, "/long", dm=True)
    node.user_text(ALICE, "/long", dm=True)
    # Alice's texts first (a known node), then the stranger's one.
    wait_until(lambda: len(node.texts) == 3, 10)
    assert len([t for t in node.texts if t.to == ALICE]) == 2
    to_stranger = [t for t in node.texts if t.to == STRANGER]
    assert len(to_stranger) == 1 and to_stranger[0].reply_id == stranger_id
    assert to_stranger[0].text.endswith(ELLIPSIS) and utf8_len(to_stranger[0].text) <= 200


def test_strangers_together_get_at_most_half_the_budget(node, start_bot, caplog):
    caplog.set_level(logging.INFO, logger="meshbot")
    clock = Clock()
    bot = start(start_bot, node, clock, AIRTIME_BUDGET_PCT=0.2)  # 7.2 s: 3.6 s for strangers
    for i in range(6):
        node.user_text(0x0BAD0100 + i, "/ping", dm=True)  # six forged ids; 3.6 s takes four replies
    wait_until(lambda: "strangers' share of the airtime budget used" in caplog.text, 15)
    known_id = node.user_text(ALICE, "/ping", dm=True)
    reply = wait_until(lambda: [t for t in node.texts if t.reply_id == known_id], 10)[0]
    to_strangers = [t for t in node.texts if t.to != ALICE]
    assert airtime(bot, to_strangers) <= bot.sender.budget.budget_s / 2
    assert reply.to == ALICE and len(to_strangers) == 4


def test_texts_to_strangers_dropped_in_a_flood_are_one_line_then_a_count(node, start_bot, caplog):
    caplog.set_level(logging.INFO, logger="meshbot")
    clock = Clock()
    bot = start(start_bot, node, clock, AIRTIME_BUDGET_PCT=0.2, OUTBOX_MAX=5, RATE_LIMIT_COUNT=100)
    for i in range(30):
        node.user_text(0x0BAD0200 + i, "/ping", dm=True)  # 30 forged ids: the outbox holds 5, the share sends 4
    def all_placed() -> bool:  # every reply sent, held or dropped
        stats = bot.sender.stats()
        return stats.sent + stats.queued + stats.dropped == 30

    wait_until(all_placed, 15)
    dropped = bot.sender.stats().dropped
    drops = [r.getMessage() for r in caplog.records if r.getMessage().startswith("dropped")]
    assert len(drops) == 1 and drops[0].startswith("dropped text to !0bad02") and "outbox full (5 texts)" in drops[0], drops
    bot.stop(budget_s=1.0)  # what was counted is told when the bot stops, not lost
    summary = [r for r in caplog.records if "more texts to unknown nodes" in r.getMessage()]
    assert len(summary) == 1 and summary[0].levelno == logging.WARNING
    assert summary[0].getMessage().startswith(f"dropped {dropped - 1} more texts to unknown nodes in the last"), summary[0].getMessage()

# --- the channel governor ----------------------------------------------------------------------
def test_polite_channel_one_text_on_channels_broadcasts_wait_schedule_skipped(node, start_bot, caplog):
    caplog.set_level(logging.INFO, logger="meshbot")
    bot = start_bot(
        node,
        modules=(*handlers.MODULES, long_module()),
        MAX_CHUNKS=2,
        SCHEDULED_BROADCASTS=[{"every_s": 1.0, "text": "scheduled hello"}],
    )
    assert node.send_telemetry(channel_utilization=31.5, air_util_tx=2.0)
    wait_until(lambda: bot.sender.governor.level() is Level.POLITE, 5)
    polite_since = time.monotonic()
    wait_until(lambda: "channel utilization 32 % > CHANNEL_UTIL_POLITE_PCT (25 %)" in caplog.text, 5)
    bot.sender.send("an admin's /bc", kind=TextKind.BROADCAST)
    on_channel = node.user_text(ALICE, "/long", channel=0)
    by_dm = node.user_text(BOB, "/long", dm=True)
    wait_until(lambda: len([t for t in node.texts if t.reply_id in (by_dm, on_channel)]) == 3, 10)
    wait_until(lambda: "scheduled broadcast #0 skipped" in caplog.text, 5)
    assert len([t for t in node.texts if t.reply_id == on_channel]) == 1
    assert not [t for t in node.texts if t.text == "scheduled hello" and t.at > polite_since]
    assert not [t for t in node.texts if t.text == "an admin's /bc"]  # held, not lost
    assert node.send_telemetry(channel_utilization=12.0, air_util_tx=2.0)
    wait_until(lambda: [t for t in node.texts if t.text == "an admin's /bc"], 5)
    assert "back under CHANNEL_UTIL_POLITE_PCT" in caplog.text


def test_max_channel_utilization_dm_replies_only(node, start_bot, caplog):
    caplog.set_level(logging.INFO, logger="meshbot")
    bot = start_bot(node, HANDLER_THREADS=1)  # commands handled in the order they came
    assert node.send_telemetry(channel_utilization=45.0, air_util_tx=9.0)
    wait_until(lambda: bot.sender.governor.level() is Level.DM_ONLY, 5)
    for _ in range(3):
        node.user_text(ALICE, "/ping", channel=0)
    wait_until(lambda: "/ping from !1a2b3c01 on ch0 not answered" in caplog.text, 5)
    dm_id = node.user_text(ALICE, "/ping", dm=True)
    wait_until(lambda: [t for t in node.texts if t.reply_id == dm_id], 5)
    assert not [t for t in node.texts if t.to == BROADCAST_NUM]
    # Summarised: one line for the first, the others counted for the next line.
    assert caplog.text.count("on ch0 not answered") == 1
    assert node.send_telemetry(channel_utilization=5.0, air_util_tx=9.0)
    wait_until(lambda: "2 more channel commands were not answered" in caplog.text, 5)
    again = node.user_text(ALICE, "/ping", channel=0)
    wait_until(lambda: [t for t in node.texts if t.reply_id == again and t.to == BROADCAST_NUM], 5)


def test_status_shows_airtime_and_channel_utilization_in_one_text(node, start_bot):
    bot = start_bot(node, MAX_TEXT_BYTES=200)
    node.send_telemetry(channel_utilization=18.4, air_util_tx=1.5)
    wait_until(lambda: bot.sender.governor.reading() is not None, 5)
    ping = node.user_text(ALICE, "/ping", dm=True)
    wait_until(lambda: [t for t in node.texts if t.reply_id == ping], 5)
    spent, budget = bot.sender.airtime_used()
    assert 0 < spent < 2 and budget == 180.0  # 5 % of an hour
    status = node.user_text(ALICE, "/status", dm=True)
    texts = wait_until(lambda: [t for t in node.texts if t.reply_id == status], 5)
    assert len(texts) == 1 and utf8_len(texts[0].text) <= 200
    assert f"air {spent:.0f}s/1h ({100 * spent / budget:.0f}% of budget)" in texts[0].text
    assert "ch util 18% (tx 1.5%)" in texts[0].text
