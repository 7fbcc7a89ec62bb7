"""What became of each DM: delivered, failed, or no word from the mesh.

DMs go out with `want_ack`. The node retransmits by itself (three tries), then the mesh
answers with a ROUTING_APP packet naming the DM in `request_id` (measured on firmware
2.7.13, see ../shared/MESHTASTIC-NOTES.md):

* `error_reason = NONE` from the destination: it got the DM (delivered);
* `error_reason = NONE` from the bot's own node: a neighbour was heard relaying it (an
  implicit ACK). That says nothing about the destination, so it is not "delivered";
* an error (`MAX_RETRANSMIT`, `NO_RESPONSE`, `PKI_FAILED`, `TOO_LARGE`...) usually from
  the own node 20-30 s after the send: failed.

A DM that failed for a reason another try may cure is sent once more (`DM_RETRIES`) with
a new packet id after `DM_RETRY_DELAY_S`. A DM nothing was heard about within
`DM_ACK_TIMEOUT_S` is "unconfirmed": it is not sent again, since its ACK may just have
been lost and a second copy under a new id would show twice on the user's screen.

The node keeps packets for its client across a reconnect, so an ACK may name a DM of the
previous connection: entries are keyed by packet id alone. This object is used under the
outbox's lock; it has none of its own.
"""

from __future__ import annotations

import collections
import enum
import logging
from dataclasses import dataclass, field
from typing import Generic, Mapping, Optional, TypeVar

from meshtastic.protobuf import mesh_pb2

log = logging.getLogger(__name__)

_Error = mesh_pb2.Routing.Error
# Failures a later try may cure: the destination was out of reach for a while.
RETRYABLE = frozenset({_Error.MAX_RETRANSMIT, _Error.NO_RESPONSE, _Error.TIMEOUT, _Error.NO_ROUTE, _Error.GOT_NAK})
_WINDOW_S = 24 * 3600.0
_PENDING_MAX = 512  # DMs awaiting a verdict; past it the oldest counts as unconfirmed
_HISTORY_MAX = 20000  # outcomes kept for the 24 h counts

Item = TypeVar("Item")


class Verdict(enum.Enum):
    """What `on_routing` made of a routing packet."""

    UNTRACKED = "not about a DM awaiting its ACK"
    HANDLED = "recorded, and logged where worth it"
    FAILED = "a failure no retry cures: the caller logs it"


class Outcome(enum.Enum):
    DELIVERED = "delivered"
    FAILED = "failed"
    UNCONFIRMED = "unconfirmed"


@dataclass(frozen=True)
class DeliveryStats:
    """DM outcomes in the last 24 h (a retried DM counts once, by its last outcome)."""

    delivered: int
    failed: int
    unconfirmed: int
    retried: int
    pending: int
    # Since the start, for counters that only grow (the metrics endpoint): outcomes, and
    # the DMs sent again.
    totals: Mapping[Outcome, int] = field(default_factory=dict)
    retried_total: int = 0


@dataclass
class _Pending(Generic[Item]):
    item: Item
    to: int
    label: str
    deadline: float
    attempt: int  # 1 for the first send


def error_name(reason: int) -> str:
    return _Error.Name(reason) if reason in _Error.values() else str(reason)


class DeliveryTracker(Generic[Item]):
    """DMs awaiting their ACK, the retries due, and 24 h of outcomes."""

    def __init__(self, ack_timeout_s: float, retries: int, retry_delay_s: float) -> None:
        self._ack_timeout_s = ack_timeout_s
        self._retries = retries
        self._retry_delay_s = retry_delay_s
        self._pending: collections.OrderedDict[int, _Pending[Item]] = collections.OrderedDict()
        self._retry_at: list[tuple[float, int, Item]] = []  # (when, attempt, item), in order
        self._history: collections.deque[tuple[float, Outcome]] = collections.deque(maxlen=_HISTORY_MAX)
        self._retried: collections.deque[float] = collections.deque(maxlen=_HISTORY_MAX)
        self._totals: collections.Counter[Outcome] = collections.Counter()
        self._retried_total = 0

    def track(self, packet_id: int, item: Item, to: int, label: str, now: float, attempt: int = 1) -> None:
        """The node accepted this DM: wait for the mesh's word on it."""
        self._pending[packet_id] = _Pending(item, to, label, now + self._ack_timeout_s, attempt)
        while len(self._pending) > _PENDING_MAX:
            _, oldest = self._pending.popitem(last=False)
            self._record(now, Outcome.UNCONFIRMED)
            log.debug("no word on %s: too many DMs awaiting their ACK", oldest.label)

    def on_routing(self, request_id: int, reason: int, sender: int, now: float) -> Verdict:
        """A routing packet naming `request_id`: what it meant for a tracked DM."""
        entry = self._pending.get(request_id)
        if entry is None:
            return Verdict.UNTRACKED
        if reason == _Error.NONE:
            if sender != entry.to:
                return Verdict.HANDLED  # an implicit ACK from a relay: wait for the destination's
            del self._pending[request_id]
            self._record(now, Outcome.DELIVERED)
            log.debug("%s delivered", entry.label)
            return Verdict.HANDLED
        del self._pending[request_id]
        if reason not in RETRYABLE:
            self._history.append((now, Outcome.FAILED))
            return Verdict.FAILED  # no retry cures it; the caller says why, at its level
        why = error_name(reason)
        if entry.attempt <= self._retries:
            self._retry_at.append((now + self._retry_delay_s, entry.attempt + 1, entry.item))
            self._retried.append(now)
            self._retried_total += 1
            log.info(
                "%s not delivered (%s); sending it again in %g s (%d/%d)",
                entry.label, why, self._retry_delay_s, entry.attempt, self._retries,
            )
        else:
            self._record(now, Outcome.FAILED)
            tries = f" after {entry.attempt} tries" if entry.attempt > 1 else ""
            log.info("gave up %s%s: %s", entry.label, tries, why)
        return Verdict.HANDLED

    def _record(self, now: float, outcome: Outcome) -> None:
        self._history.append((now, outcome))
        self._totals[outcome] += 1

    def forget(self, packet_id: int) -> None:
        """The node refused this packet after all: it never went out."""
        self._pending.pop(packet_id, None)

    def expire(self, now: float) -> None:
        """DMs past their deadline with no word: unconfirmed."""
        while self._pending:
            packet_id, entry = next(iter(self._pending.items()))
            if entry.deadline > now:
                break  # entries are in send order, and all have the same timeout
            del self._pending[packet_id]
            self._record(now, Outcome.UNCONFIRMED)
            log.info("no ACK for %s within %g s", entry.label, self._ack_timeout_s)

    def due_retries(self, now: float) -> list[tuple[int, Item]]:
        """(attempt, item) of the retries whose time has come, oldest first."""
        due = [(attempt, item) for at, attempt, item in self._retry_at if at <= now]
        if due:
            self._retry_at = [entry for entry in self._retry_at if entry[0] > now]
        return due

    def next_deadline(self) -> Optional[float]:
        """When this tracker next has something to do (a timeout or a retry)."""
        times = [at for at, _, _ in self._retry_at]
        if self._pending:
            times.append(next(iter(self._pending.values())).deadline)
        return min(times) if times else None

    def waiting_retries(self) -> int:
        return len(self._retry_at)

    def stats(self, now: float) -> DeliveryStats:
        since = now - _WINDOW_S
        counts = collections.Counter(outcome for at, outcome in self._history if at >= since)
        return DeliveryStats(
            delivered=counts[Outcome.DELIVERED],
            failed=counts[Outcome.FAILED],
            unconfirmed=counts[Outcome.UNCONFIRMED],
            retried=sum(1 for at in self._retried if at >= since),
            pending=len(self._pending) + len(self._retry_at),
            totals={outcome: self._totals[outcome] for outcome in Outcome},
            retried_total=self._retried_total,
        )
