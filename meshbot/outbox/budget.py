"""The airtime budget: the bot's own time on air over any rolling hour, and per requester.

Node ids cost nothing to invent, so a per-sender rate limit cannot bound what the bot
puts on the air; only a global budget can. `AirtimeLedger` remembers every text the
node accepted (when, how long on air) for one window and answers two questions: how
much is spent now, and when a text of a given cost will fit.

Counting rule, chosen so that the budget holds for *every* window, not only for the
windows that happen to start at a text: a text occupies the air from `at` to
`at + seconds`, and it counts, whole, against every hour it overlaps. A new text is
admitted at `now` only if the texts still overlapping the hour that ends now, plus
itself, fit. Any later hour-long window holds no text that was not counted at the
admission of the last text inside it, so no window ever holds more than the budget
(at worst, a text that only grazes a window is counted whole in it: conservative by
one text's airtime).

The hour alone would let the whole budget go out in one burst: paced as closely as the
firmware and PACE_BY_AIRTIME allow, the bot's texts fill about half of a LONG_FAST
channel (bench_attack.py), and 5 % of an hour is six minutes of that. So a second
ledger spreads it out: any `SPREAD_WINDOW_S` (10 minutes) may hold at most `SPREAD_RATE`
times its pro-rata share of the hour's budget (twice: a third of it), and the whole
budget takes at least half an hour to spend. A text longer than that share (a tiny
budget on a slow preset) goes out alone, once the ten minutes hold no other text.
Within the ten minutes the pace still allows a burst (half of one minute's air, at
worst): a per-minute cap would also hold ordinary use (four users asking /forecast in
the same minute), and the channel governor steps in when the node sees the channel busy.

Clients of the shared node API (API_LISTEN) get their own share, `client_share` of the
budget (API_AIRTIME_SHARE_PCT, half by default), hour and spread alike, and their packets
count against the whole budget too: what they leave is the bot's, and they can never
take the part kept for its replies.

Times are whatever clock the caller passes (the outbox uses `time.monotonic()`);
`AirtimeBudget` holds the clock so that tests can inject one.
"""

from __future__ import annotations

import collections
import math
import time
from dataclasses import dataclass
from typing import Callable, Hashable, Optional

WINDOW_S = 3600.0
# Strangers (ids that never sent a NodeInfo) may use at most this share of the budget,
# together: forged ids cost nothing, and without this bound a flood of them would spend
# the whole hour before a known node asks anything.
STRANGER_SHARE = 0.5
SPREAD_WINDOW_S = 600.0
SPREAD_RATE = 2.0


@dataclass(frozen=True)
class _Entry:
    at: float
    seconds: float

    @property
    def end(self) -> float:
        return self.at + self.seconds


class AirtimeLedger:
    """Texts on air within the last `window_s`, oldest first. Not thread-safe: the
    outbox calls it under its own lock."""

    def __init__(self, budget_s: float, window_s: float = WINDOW_S) -> None:
        self.budget_s = budget_s
        self.window_s = window_s
        self._entries: collections.deque[_Entry] = collections.deque()
        self._total = 0.0

    def record(self, at: float, seconds: float) -> None:
        """A text went on the air at `at` for `seconds`."""
        self._entries.append(_Entry(at, seconds))
        self._total += seconds

    def spent(self, now: float) -> float:
        """Airtime of the texts that overlap the window ending at `now`."""
        self._forget(now)
        return max(0.0, self._total)

    def fits_at(self, now: float, cost: float) -> float:
        """The earliest time >= now at which a text of `cost` seconds may go out
        (math.inf if it is longer than the whole budget)."""
        if cost > self.budget_s:
            return math.inf
        self._forget(now)
        excess = self._total + cost - self.budget_s
        if excess <= 1e-9:
            return now
        # Entries leave the window in order of their end (texts do not overlap on one
        # radio, so that is the order they were recorded in): the room comes back when
        # enough of the oldest have left.
        freed = 0.0
        for entry in self._entries:
            freed += entry.seconds
            if freed >= excess - 1e-9:
                return max(now, entry.end + self.window_s)
        return now  # unreachable: the total covers the excess

    def is_empty(self) -> bool:
        return not self._entries

    def _forget(self, now: float) -> None:
        horizon = now - self.window_s
        while self._entries and self._entries[0].end <= horizon:
            self._total -= self._entries.popleft().seconds
        if not self._entries:
            self._total = 0.0  # no float drift accumulates over days


def _fits_at(hour: AirtimeLedger, spread: Optional[AirtimeLedger], now: float, cost: float) -> float:
    """When a text of `cost` fits both an hour's ledger and its ten-minute spread."""
    at = hour.fits_at(now, cost)
    if spread is not None:
        # Capped at the spread's whole share: a longer text needs the ten minutes empty.
        # Both ledgers only free room as time passes, so the later time suits both.
        at = max(at, spread.fits_at(now, min(cost, spread.budget_s)))
    return at


class AirtimeBudget:
    """The bot's ledger, its spread over ten minutes, the strangers' share, and one
    ledger per requester (for fair shares), on one clock.

    The per-requester ledgers hold only texts of the last window, and a requester is
    forgotten once its last text left it: memory is bounded by the texts one window
    can hold, however many ids an attacker invents.
    """

    def __init__(
        self,
        budget_pct: float,
        *,
        window_s: float = WINDOW_S,
        spread_window_s: Optional[float] = SPREAD_WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
        client_share: float = 0.5,
    ) -> None:
        """`spread_window_s` None: the hour's budget only (tests of the hour alone)."""
        self.clock = clock
        self.window_s = window_s
        self.total = AirtimeLedger(window_s * budget_pct / 100.0, window_s)
        self.strangers = AirtimeLedger(self.total.budget_s * STRANGER_SHARE, window_s)
        # The strangers' share holds within the ten minutes too: a flood of forged ids
        # cannot fill them and keep a known node waiting for the next ten.
        self.spread: Optional[AirtimeLedger] = None
        self.strangers_spread: Optional[AirtimeLedger] = None
        if spread_window_s is not None:
            share = self.total.budget_s * SPREAD_RATE * spread_window_s / window_s
            self.spread = AirtimeLedger(share, spread_window_s)
            self.strangers_spread = AirtimeLedger(share * STRANGER_SHARE, spread_window_s)
        # API clients' packets, together (a person's own messages, but any client may flood).
        self.clients = AirtimeLedger(self.total.budget_s * client_share, window_s)
        self.clients_spread: Optional[AirtimeLedger] = None
        if self.spread is not None:
            self.clients_spread = AirtimeLedger(self.spread.budget_s * client_share, self.spread.window_s)
        self._by_requester: dict[Hashable, AirtimeLedger] = {}

    @property
    def budget_s(self) -> float:
        return self.total.budget_s

    def record(
        self, seconds: float, requester: Hashable = None, *, stranger: bool = False, at: Optional[float] = None,
        client: bool = False,
    ) -> None:
        """A text for `requester` (None: the bot's own) went on the air now (or at `at`);
        `client`: a packet of an API client, also booked in the clients' share."""
        at = self.clock() if at is None else at
        self.total.record(at, seconds)
        if self.spread is not None:
            self.spread.record(at, seconds)
        if client:
            self.clients.record(at, seconds)
            if self.clients_spread is not None:
                self.clients_spread.record(at, seconds)
        if stranger:
            self.strangers.record(at, seconds)
            if self.strangers_spread is not None:
                self.strangers_spread.record(at, seconds)
        ledger = self._by_requester.get(requester)
        if ledger is None:
            ledger = self._by_requester[requester] = AirtimeLedger(math.inf, self.window_s)
        ledger.record(at, seconds)

    def spent(self) -> float:
        return self.total.spent(self.clock())

    def spent_by(self, requester: Hashable) -> float:
        """What this requester's texts used of the window ending now (for fair shares)."""
        ledger = self._by_requester.get(requester)
        if ledger is None:
            return 0.0
        spent = ledger.spent(self.clock())
        if ledger.is_empty():
            del self._by_requester[requester]
        return spent

    def wait_s(self, cost: float) -> float:
        """Seconds until a text of `cost` seconds fits both the hour and its spread (0: now;
        math.inf: never)."""
        now = self.clock()
        self._prune(now)
        return _fits_at(self.total, self.spread, now, cost) - now

    def hour_wait_s(self, cost: float) -> float:
        """Seconds until a text of `cost` seconds fits the hour's budget, spread aside."""
        now = self.clock()
        return self.total.fits_at(now, cost) - now

    def spread_spent(self) -> float:
        """Airtime of the last ten minutes (0 without a spread)."""
        return self.spread.spent(self.clock()) if self.spread is not None else 0.0

    def stranger_wait_s(self, cost: float) -> float:
        """Seconds until a text to a stranger of `cost` seconds fits the strangers' share."""
        now = self.clock()
        return _fits_at(self.strangers, self.strangers_spread, now, cost) - now

    def client_wait_s(self, cost: float) -> float:
        """Seconds until an API client's packet of `cost` fits both the clients' share and
        the whole budget (math.inf: longer than the clients' whole share)."""
        now = self.clock()
        own = _fits_at(self.clients, self.clients_spread, now, cost)
        return max(own, _fits_at(self.total, self.spread, now, cost)) - now

    def requesters(self) -> int:
        return len(self._by_requester)

    def _prune(self, now: float) -> None:
        for requester in [r for r, ledger in self._by_requester.items() if ledger.spent(now) == 0.0 and ledger.is_empty()]:
            del self._by_requester[requester]
