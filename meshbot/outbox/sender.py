"""`MessageSender` and its outbox: the only way anything is sent to the mesh.

`send()` splits a reply into texts the firmware accepts, queues them and returns at
once. One thread, the outbox's, drains the queue in order, one text at a time:

* it waits until the link is up, and until the previous text is far enough behind
  (`_gap`): off the air (airtime on the node's LoRa preset), `MIN_TEXT_INTERVAL_S` old,
  and -- on firmware 2.7.0 and later -- 2 s old *as the node sees it*;
* it writes the text and waits for the node's verdict on that packet id: the
  `queueStatus` for it (and a ROUTING_APP `RATE_LIMIT_EXCEEDED` naming it, should a
  firmware ever deliver that error to its client);
* a refused text goes back to the head of the queue and is sent again with a new
  packet id, up to 3 times; a text whose verdict never came because the link died is
  sent again after the reconnect with the *same* id, so a node that did get it ignores
  the copy (it drops ids it saw among the client's last 20);
* a DM's fate on the mesh (ACK, NAK, nothing) is followed by `DeliveryTracker`, which
  hands back the DMs worth another try;
* texts older than `OUTBOX_TTL_S` and the oldest beyond `OUTBOX_MAX` are dropped, each
  with a WARNING: nothing is lost silently. A flood of them (a burst of commands, a
  node whose duty cycle is spent) is told in one line a minute per kind, with a count
  (texts to strangers: one summary line a minute);
* which text goes next, and whether it may go now, is the airtime policy's choice
  (`policy.py`: priorities and fair shares; `budget.py`: at most `AIRTIME_BUDGET_PCT`
  of any rolling hour on air; `governor.py`: the node's channel utilization).

The firmware's 2 s text limit (2.7.0 and later, measured on 2.7.13) refuses silently: the
client gets one `queueStatus` with res = 0 and the TX queue's `free` unchanged, and the
RATE_LIMIT_EXCEEDED error goes out on the air to node 0 instead of to the client. A
refusal can be recognised only sometimes (`_refusal`), so the outbox makes sure the node
never has a reason to refuse: the node measures the 2 s between the moments it
*processes* two texts, and the `queueStatus` for a text is sent after the node processed
it. Counting the 2 s from that status's arrival therefore counts at least 2 s at the
node, whatever the network's delay or jitter in either direction.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

from meshtastic import BROADCAST_NUM
from meshtastic.mesh_interface import MeshInterface
from meshtastic.protobuf import mesh_pb2

from meshbot.config import FIRMWARE_TEXT_INTERVAL_S, Settings
from meshbot.dedup import RecentKeys
from meshbot.health import LoopProgress
from meshbot.link.airtime import radio_params
from meshbot.link.interface import LinkLost, QueueReport, TxQueueFull
from meshbot.link.owner import LinkStatus, NodeLink
from meshbot.logs import RepeatedWarning
from meshbot.outbox import clients, policy
from meshbot.outbox.budget import AirtimeBudget
from meshbot.outbox.delivery import DeliveryStats, DeliveryTracker, Verdict, error_name
from meshbot.outbox.governor import ChannelGovernor
from meshbot.outbox.policy import TextKind, is_known_node
from meshbot.outbox.restore import sort_leftover, stored_kind
from meshbot.state.store import StateStore, StoredText
from meshbot.text import counted, split_text, utf8_len

log = logging.getLogger(__name__)

MAX_RESENDS = 3
_RATE_LIMITED = mesh_pb2.Routing.Error.RATE_LIMIT_EXCEEDED
# After a rejection the firmware's 2 s text timer still runs from the last accepted
# text; wait a little more than that before the next attempt.
_RETRY_GAP_S = FIRMWARE_TEXT_INTERVAL_S * 1.1
_RECENT_IDS = 64
# Firmware from this version on refuses a text less than 2 s after the last one it took.
FIRST_FIRMWARE_WITH_TEXT_LIMIT = (2, 7, 0)
# Added to the firmware's 2 s: the node's millis() and our monotonic clock tick alike,
# but a check at exactly 2.000 s should not depend on rounding.
_TEXT_LIMIT_MARGIN_S = 0.05
# Routing errors that mean the node itself would not transmit (EU duty cycle spent, a
# payload it considers too large): worth a WARNING. Others are the mesh's business.
_OPERATOR_ERRORS = {
    mesh_pb2.Routing.Error.DUTY_CYCLE_LIMIT,
    mesh_pb2.Routing.Error.TOO_LARGE,
    mesh_pb2.Routing.Error.NO_CHANNEL,
}
# While texts are held (budget spent, channel busy), look again at least this often: the
# channel report or the clock may have changed without anyone notifying the outbox.
_HOLD_RECHECK_S = 1.0
# The budget counts as back once this share of it is free again: without the margin, a
# budget kept full by a flood would log "spent" and "back" for every text.
_BUDGET_BACK_SHARE = 0.1


def describe_destination(to: int, channel: int) -> str:
    return f"ch{channel}" if to == BROADCAST_NUM else f"!{to:08x}"


@dataclass
class OutgoingText:
    """One text waiting in the outbox."""

    text: str
    to: int
    channel: int
    reply_to: Optional[int]
    created: float
    resends: int = 0
    # Id of a write whose verdict never came (the link died): resent with this same id.
    unconfirmed_id: Optional[int] = None
    requester: Optional[int] = None  # the node whose command this answers (None: the bot's own)
    kind: TextKind = TextKind.REPLY
    stranger: bool = False  # the requester had sent no NodeInfo when the text was queued
    attempt: int = 1  # a DM sent again after its delivery failed: 2
    row: Optional[int] = None  # its row in the state store, while it is stored

    @property
    def is_dm(self) -> bool:
        return self.to != BROADCAST_NUM
    # A text of a client of the shared node API (meshbot/share): written as the client
    # made it, with its own packet id, never resent with another (see send_client_text).
    client_packet: Optional[mesh_pb2.MeshPacket] = None

    @property
    def from_client(self) -> bool:
        """A packet of a client of the shared API: paced, charged to the clients' share (clients.py)."""
        return self.client_packet is not None

    def label(self) -> str:
        if self.client_packet is not None and not clients.is_text(self.client_packet):
            return f"API client's {clients.describe(self.client_packet)} to {describe_destination(self.to, self.channel)}"
        preview = self.text if len(self.text) <= 40 else self.text[:39] + "…"
        return f"text to {describe_destination(self.to, self.channel)} {preview!r}"


class DropReason(enum.Enum):
    """Why a text was dropped: the metrics endpoint counts each apart."""

    TTL = "ttl"  # not sent within OUTBOX_TTL_S
    OUTBOX_FULL = "outbox_full"  # the oldest beyond OUTBOX_MAX
    REFUSED = "refused"  # the node refused it MAX_RESENDS + 1 times
    SHUTDOWN = "shutdown"  # offered while stopping, or not sent before the stop deadline
    OVER_BUDGET = "over_budget"  # longer on air than the whole AIRTIME_BUDGET_PCT


@dataclass(frozen=True)
class OutboxStats:
    sent: int
    queued: int
    dropped: int
    resent: int  # refused by the node and sent again
    refused: int  # refusals seen (rate limit, res != 0)
    dms: DeliveryStats
    dropped_by: Mapping[DropReason, int] = dataclasses.field(default_factory=dict)
    # Time on air of the texts the node accepted, from the LoRa preset (one transmission
    # each: the node's own retransmissions of a DM are not seen by the bot).
    airtime_s: float = 0.0


def _dropped_counter(reason: DropReason) -> str:
    """The state store's counter of the texts dropped for this reason."""
    return f"dropped_{reason.value}"


def enforces_text_limit(version: Optional[tuple[int, int, int]]) -> bool:
    """Does this firmware refuse texts less than 2 s apart? Unknown: assume it does."""
    return version is None or version >= FIRST_FIRMWARE_WITH_TEXT_LIMIT


class MessageSender:
    """Owns the outbox and the one thread that drains it. Thread-safe `send()`."""

    def __init__(
        self,
        settings: Settings,
        link: NodeLink,
        own_broadcasts: Optional[RecentKeys] = None,
        *,
        governor: Optional[ChannelGovernor] = None,
        budget: Optional[AirtimeBudget] = None,
        state: Optional[StateStore] = None,
    ) -> None:
        self._settings = settings
        self._link = link
        # Every queued text is also in the store until the node took it or it was dropped,
        # so that a restart sends what was waiting. A store never opened does nothing.
        self._state = state or StateStore(None)
        # Both public so that /status can read them and tests can give the budget a clock.
        self.governor = governor or ChannelGovernor(settings, link)
        self.budget = budget or AirtimeBudget(
            settings.AIRTIME_BUDGET_PCT, client_share=settings.API_AIRTIME_SHARE_PCT / 100.0
        )
        # Shared node API (clients.py): ids written on this connection, whose turn it is,
        # and the client to tell when the outbox refuses its packet after accepting it.
        self._turns = clients.ClientTurns(self.budget, settings.API_AIRTIME_SHARE_PCT)
        self.client_refused_listener: Optional[Callable[[mesh_pb2.MeshPacket, str], None]] = None
        self._budget_held = False  # "spent" was logged; "back" not yet
        self._strangers_held = False  # the same for the strangers' share
        self._spreading = False  # texts wait for the ten minutes' share (budget.py), the hour has room
        # A burst held back is ordinary under load: one INFO line per ten minutes at most.
        self._spread_note = RepeatedWarning(
            log, "airtime budget: spread out {count} more bursts in the last {seconds} s",
            level=logging.INFO, interval_s=600.0,
        )
        # Texts to strangers (a flood of forged ids) dropped: a line a minute of their own.
        self._stranger_drop_warning = RepeatedWarning(
            log, "dropped {count} more texts to unknown nodes in the last {seconds} s"
        )
        # Texts we broadcast, so that an echo of one is not taken for a command.
        self._own_broadcasts = own_broadcasts
        self._cond = threading.Condition()
        self._queue: collections.deque[OutgoingText] = collections.deque()
        self._inflight_id: Optional[int] = None
        self._inflight_label = ""
        self._inflight_report: Optional[QueueReport] = None
        # A routing packet about the in-flight text that came before the text was recorded.
        self._early_routing: Optional[tuple[int, int, int]] = None
        self._inflight_rate_limited = False
        # Set once an accepted text's queueStatus showed it waiting in the TX queue: from
        # then on, a text whose status shows the queue still empty was not taken.
        self._queue_shows_texts = False
        self._delivery: DeliveryTracker[OutgoingText] = DeliveryTracker(
            settings.DM_ACK_TIMEOUT_S, settings.DM_RETRIES, settings.DM_RETRY_DELAY_S
        )
        # The last accepted text, until the next is sent: a RATE_LIMIT_EXCEEDED naming it
        # may still arrive just after its queueStatus.
        self._last_accepted: Optional[tuple[int, OutgoingText]] = None
        self._recent_ids: collections.OrderedDict[int, str] = collections.OrderedDict()
        self._next_send_at = 0.0
        self._stopping = False
        self._deadline = math.inf
        self._sent = self._resent = self._refused = 0
        self._dropped: collections.Counter[DropReason] = collections.Counter()
        self._airtime_s = 0.0
        self._thread = threading.Thread(target=self._run, name="outbox", daemon=True)
        self.progress = LoopProgress()
        # Shared node API: told (packet id, text) of every text the node accepted, under
        # the outbox lock, so that its clients see the bot's texts too. Must only hand over.
        self.text_sent_listener: Optional[Callable[[int, OutgoingText], None]] = None
        # Warnings that a flood of commands can make once per text: one line a minute each.
        self._full_warning = RepeatedWarning(log, "outbox full: dropped {count} more texts in the last {seconds} s")
        self._expired_warning = RepeatedWarning(
            log, "dropped {count} more texts not sent within OUTBOX_TTL_S in the last {seconds} s"
        )
        self._refused_warning = RepeatedWarning(log, "the node could not send {count} more texts in the last {seconds} s")
        link.add_observer(self)

    # --- public ----------------------------------------------------------------------------
    def get_interface(self) -> Any:
        """The shared interface, or None while the link is down. Never keep it."""
        return self._link.interface

    def send(
        self,
        text: str,
        to: int = BROADCAST_NUM,
        channel: int = 0,
        reply_to: Optional[int] = None,
        *,
        requester: Optional[int] = None,
        kind: TextKind = TextKind.REPLY,
        answers: Optional[tuple[int, int]] = None,
    ) -> int:
        """Split and queue a text; return at once with the number of texts queued.

        `requester` is the node whose command this answers (None: the bot's own text),
        `kind` what it is: both decide its priority and how many texts it may cost.

        The texts are in the state store before this returns, in one transaction with
        `answers`, the (sender, packet id) of the command they answer: after a restart
        either both are there (the texts go out, a replay of the command is ignored) or
        neither (the replayed command is answered).
        """
        known = is_known_node(self._link.interface, requester)
        limit = policy.max_texts(kind, to, known, self._settings.MAX_CHUNKS, self.governor.channel_one_text())
        chunks = split_text(text, self._settings.MAX_TEXT_BYTES, limit)
        now = time.monotonic()
        with self._cond:
            if self._stopping:
                self._dropped[DropReason.SHUTDOWN] += len(chunks)
                log.warning("shutting down: not queued: %s", OutgoingText(text, to, channel, reply_to, now).label())
                return 0
            new = [
                OutgoingText(chunk, to, channel, reply_to, now, requester=requester, kind=kind, stranger=not known)
                for chunk in chunks
            ]
            self._queue.extend(new)
            victims = []
            while len(self._queue) > self._settings.OUTBOX_MAX:
                # The text that would go last: the lowest class's oldest (not a known node's DM).
                index = policy.evict(self._queue, lambda num: is_known_node(self._link.interface, num))
                victim = self._queue[index]
                victims.append(victim)
                del self._queue[index]
                self._dropped[DropReason.OUTBOX_FULL] += 1
                self._report_drop(victim, f"outbox full ({self._settings.OUTBOX_MAX} texts)", self._full_warning)
            # Into the store: the new texts not evicted at once, the evicted ones out of it.
            gone = {id(victim) for victim in victims}
            kept = [item for item in new if id(item) not in gone]
            records = [self._stored(item) for item in kept]
            self._state.enqueue(
                records, drop_rows=[v.row for v in victims], drop_counter=_dropped_counter(DropReason.OUTBOX_FULL),
                answered=answers,
            )
            for item, record in zip(kept, records):
                item.row = record.row
            self._cond.notify_all()
        return len(chunks)

    def send_client_packet(self, packet: mesh_pb2.MeshPacket) -> Optional[str]:
        """Queue a packet of a client of the shared node API; None if queued, else why not.

        It waits its turn with the bot's texts (they alternate), paced by the firmware's
        2 s rule and charged to the clients' share of the airtime budget, with the
        client's own packet id so that the node's queueStatus and the mesh's ACK/NAK name
        it for the client. An id the node would drop unanswered is refused here.
        """
        text = packet.decoded.payload.decode("utf-8", "replace") if clients.is_text(packet) else ""
        item = OutgoingText(
            text, packet.to, packet.channel, packet.decoded.reply_id or None, time.monotonic(), client_packet=packet,
        )
        with self._cond:
            if self._stopping:
                return "the bot is stopping"
            if self._id_in_use(packet.id):
                return "packet id used already on the node's connection"
            self._queue.append(item)
            self._cond.notify_all()
        return None

    def _id_in_use(self, packet_id: int) -> bool:
        """Under the lock: would the node drop this id unanswered, or is it queued already?"""
        if packet_id == self._inflight_id or self._turns.written.seen(self._link.interface, packet_id):
            return True
        return any(item.client_packet is not None and item.client_packet.id == packet_id for item in self._queue)

    def airtime_used(self) -> tuple[float, float]:
        """(seconds on air in the last hour, the hour's budget in seconds), for /status."""
        with self._cond:
            return self.budget.spent(), self.budget.budget_s

    def stats(self) -> OutboxStats:
        with self._cond:
            queued = len(self._queue) + (1 if self._inflight_id is not None else 0)
            dms = self._delivery.stats(time.monotonic())
            return OutboxStats(
                self._sent, queued, sum(self._dropped.values()), self._resent, self._refused, dms,
                dropped_by={reason: self._dropped[reason] for reason in DropReason}, airtime_s=self._airtime_s,
            )

    def is_idle(self) -> bool:
        """Nothing queued, in flight, or waiting for a DM retry."""
        with self._cond:
            return not self._queue and self._inflight_id is None and not self._delivery.waiting_retries()

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> None:
        """Take back what the last run left in the state store, then start sending."""
        self._restore()
        self._thread.start()

    def _restore(self) -> None:
        """Take back the last run's texts as a live outbox would hold them (restore.py)."""
        pending = self._state.pending()
        counters = self._state.counters()
        now, wall = time.monotonic(), time.time()
        ttl, most = self._settings.OUTBOX_TTL_S, self._settings.OUTBOX_MAX
        leftover = sort_leftover(pending, wall, ttl, most)
        with self._cond:
            self._sent += counters.get("sent", 0)
            self._resent += counters.get("resent", 0)
            self._refused += counters.get("refused", 0)
            for reason in DropReason:
                self._dropped[reason] += counters.get(_dropped_counter(reason), 0)
            for group, reason, why, warning in (
                (leftover.expired, DropReason.TTL, f"not sent within OUTBOX_TTL_S ({ttl:g} s)", self._expired_warning),
                (leftover.over, DropReason.OUTBOX_FULL, f"outbox full ({most} texts)", self._full_warning),
            ):
                for stored in group:  # one line each at most, repeats summarised (RepeatedWarning)
                    self._report_drop(self._outgoing(stored, now, wall), why, warning)
                self._dropped[reason] += len(group)
                self._state.done([stored.row for stored in group], _dropped_counter(reason))
            for stored in leftover.kept:
                self._queue.append(self._outgoing(stored, now, wall))
        if leftover.expired or leftover.over:
            log.info(
                "%s left by the last run: %d to send, %d older than OUTBOX_TTL_S and %d over OUTBOX_MAX dropped",
                counted(len(pending), "text"), len(leftover.kept), len(leftover.expired), len(leftover.over),
            )
        elif pending:
            log.info("%s left by the last run, to send", counted(len(pending), "text"))

    @staticmethod
    def _outgoing(stored: StoredText, now: float, wall: float) -> OutgoingText:
        # Its age in wall time: the monotonic clock started again with this process.
        created = now - max(0.0, wall - stored.created)
        return OutgoingText(
            stored.text, stored.to, stored.channel, stored.reply_to, created,
            unconfirmed_id=stored.packet_id, requester=stored.requester, kind=stored_kind(stored.kind),
            stranger=stored.stranger, attempt=stored.attempt, row=stored.row,
        )

    def _stored(self, item: OutgoingText) -> StoredText:
        """The store's record of a text: its age as wall time."""
        created = time.time() - (time.monotonic() - item.created)
        return StoredText(
            item.text, item.to, item.channel, item.reply_to, created, item.unconfirmed_id, item.attempt,
            requester=item.requester, kind=item.kind.value, stranger=item.stranger,
        )

    def stop(self, deadline: float) -> None:
        """Flush what can go out before `deadline` (monotonic), then stop the thread."""
        with self._cond:
            self._stopping = True
            self._deadline = deadline
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(max(0.0, deadline - time.monotonic()) + 0.5)
        durable = self._state.durable
        with self._cond:
            left = len(self._queue)
            if not durable:  # kept in the store, they go out at the next start
                self._dropped[DropReason.SHUTDOWN] += left
        if left:
            kept = "; kept for the next start" if durable else ""
            log.warning("shutdown: %d text%s not sent before the deadline%s", left, "" if left == 1 else "s", kept)
        for warning in (
            self._full_warning, self._expired_warning, self._refused_warning, self._stranger_drop_warning, self._spread_note,
        ):
            warning.flush()  # what was counted is told now, not lost with the process

    # --- events from the link (library threads: only record and notify) ---------------------
    def link_changed(self, status: LinkStatus) -> None:
        with self._cond:
            self._cond.notify_all()

    def queue_status(self, report: QueueReport) -> None:
        with self._cond:
            if report.packet_id and report.packet_id == self._inflight_id and self._inflight_report is None:
                self._inflight_report = report
                self._cond.notify_all()

    def routing(self, request_id: int, reason: int, sender: int) -> None:
        """A ROUTING_APP packet naming one of our packets: an ACK, a NAK, or a refusal."""
        with self._cond:
            if reason == _RATE_LIMITED:
                if request_id == self._inflight_id:
                    self._inflight_rate_limited = True
                    self._cond.notify_all()
                    return
                if self._last_accepted is not None and self._last_accepted[0] == request_id:
                    item = self._last_accepted[1]
                    self._last_accepted = None
                    self._sent -= 1
                    self._state.count("sent", -1)
                    self._airtime_s -= self._cost(item)
                    self._delivery.forget(request_id)
                    self._reject(item, "rate limited by the node", time.monotonic())
                    self._cond.notify_all()
                    return
            if request_id == self._inflight_id and self._inflight_report is not None:
                # Its queueStatus is in, but the outbox thread has not recorded the text
                # yet: an ACK right behind the status (a destination one hop away) would
                # find nothing to match. It is handed over once the text is recorded.
                self._early_routing = (request_id, reason, sender)
                return
            verdict = self._delivery.on_routing(request_id, reason, sender, time.monotonic())
            if verdict is Verdict.HANDLED:
                self._cond.notify_all()  # a retry may now be due
                return
            if not reason:
                return  # an ACK nobody waits for (a broadcast's implicit ACK)
            label = self._recent_ids.get(request_id)
            if label is None and request_id == self._inflight_id:
                label = self._inflight_label  # its queueStatus is not processed yet
        if label is None:
            return
        if reason in _OPERATOR_ERRORS:
            # The node refused to put it on the air: the operator may need to act.
            self._refused_warning.log("the node could not send %s: %s", label, error_name(reason))
        else:
            # Delivery trouble on the mesh: the firmware retried already.
            log.info("node reports %s for %s", error_name(reason), label)

    # --- the outbox thread ---------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                picked = self._next_item()
            if picked is None:
                return
            item, iface = picked
            try:
                with self.progress.step():
                    self._deliver(item, iface)
            except Exception:  # a bug here must not stop the outbox
                log.exception("unexpected error sending %s", item.label())
                with self._cond:
                    self._inflight_id = None
                    self._requeue(item)
                    self._next_send_at = time.monotonic() + _RETRY_GAP_S

    def _next_item(self) -> Optional[tuple[OutgoingText, Any]]:
        """Under the lock: wait until a text may go out; None when the thread should end."""
        while True:
            now = time.monotonic()
            self._expire(now)
            self._delivery.expire(now)
            self._take_due_retries(now)
            if self._stopping and (not self._queue or now >= self._deadline):
                return None
            tracker_at = self._delivery.next_deadline()
            if not self._queue:
                wake = min(self._deadline if self._stopping else math.inf, tracker_at or math.inf)
                self._cond.wait(None if wake == math.inf else max(0.0, wake - now))
                continue
            wake_at = min(item.created for item in self._queue) + self._settings.OUTBOX_TTL_S
            if tracker_at is not None:
                wake_at = min(wake_at, tracker_at)
            if self._stopping:
                wake_at = min(wake_at, self._deadline)
            iface = self._link.interface
            if iface is None or not iface.alive:
                self._cond.wait(max(0.0, min(wake_at - now, 1.0)))
                continue
            if now < self._next_send_at:
                if self._stopping and self._next_send_at >= self._deadline:
                    return None  # the next text could not go out in time
                self._cond.wait(min(wake_at, self._next_send_at) - now)
                continue
            index, hold_s = self._select(iface)
            if index is None:
                if self._stopping:
                    return None  # held by the budget or the channel: not before the deadline
                self._cond.wait(max(0.0, min(wake_at - now, hold_s, _HOLD_RECHECK_S)))
                continue
            self._last_accepted = None  # its window for a late rate-limit verdict is over
            item = self._queue[index]
            del self._queue[index]
            return item, iface

    def _select(self, iface: Any) -> tuple[Optional[int], float]:
        """Under the lock: the index of the text to send now, or None and how long to hold.

        API clients' packets and the bot's texts take turns while both wait (clients.py).
        """
        client_index, client_hold = self._client_ready()
        if client_index is not None and not self._turns.last_was_client:
            return client_index, 0.0
        index, hold = self._select_bot(iface)
        if index is not None or client_index is None:
            return index, min(hold, client_hold)
        return self._client_ready()  # the bot's turn, but nothing of its may go: the client's

    def _client_ready(self) -> tuple[Optional[int], float]:
        """Under the lock: the first API client packet, if the clients' share lets it go now."""
        index, wait = self._turns.first_ready(self._queue, lambda item: self.budget.client_wait_s(self._cost(item)))
        if index is not None and math.isinf(wait):
            item = self._queue[index]
            del self._queue[index]
            self._dropped[DropReason.OVER_BUDGET] += 1
            self._client_refused(item, "longer on air than the API clients' whole airtime share")
            return None, 0.0
        return index, wait

    def _client_refused(self, item: OutgoingText, why: str) -> None:
        """Under the lock: a client packet the outbox will not send; its client is told."""
        log.info("not sending %s: %s", item.label(), why)
        if self.client_refused_listener is not None and item.client_packet is not None:
            self.client_refused_listener(item.client_packet, why)

    def _cost(self, item: OutgoingText) -> float:
        """Seconds on air of a queued text or client packet."""
        if item.client_packet is None or clients.is_text(item.client_packet):
            return self._airtime(item.text)
        radio = self._link.status.radio or radio_params(None)
        return radio.airtime_s(clients.payload_len(item.client_packet))

    def _select_bot(self, iface: Any) -> tuple[Optional[int], float]:
        """Under the lock: the index of the bot's text to send now, or None and how long to hold."""
        level = self.governor.level()

        def eligible(item: OutgoingText) -> bool:
            return not item.from_client and self.governor.permits(level, item.to, item.kind)

        known_cache: dict[Optional[int], bool] = {}

        def known(num: Optional[int]) -> bool:
            if num not in known_cache:
                known_cache[num] = is_known_node(iface, num)
            return known_cache[num]

        # Arbitration only when there is something to arbitrate: while every queued text
        # fits in what is left of the hour and none answers a stranger, arrival order it is.
        contested = (
            self._budget_held
            or self._spreading
            or self._strangers_held
            or any(item.kind is not TextKind.REPLY or not known(item.requester) for item in self._queue)
            or self.budget.spent() + sum(self._airtime(item.text) for item in self._queue) > self.budget.budget_s
        )
        index = policy.pick(self._queue, eligible, known, self.budget.spent_by, ordered=contested)
        if index is not None:
            item = self._queue[index]
            if policy.priority(item.kind, item.to, known(item.requester)) is policy.Priority.STRANGER:
                held = self.budget.stranger_wait_s(self._airtime(item.text)) > 0
                self._log_strangers_share(held)
                if held:  # strangers used their share: anything else may still go
                    index = policy.pick(self._queue, eligible, known, self.budget.spent_by, strangers=False, ordered=True)
        if index is None:
            return None, _HOLD_RECHECK_S  # the channel is busy, or strangers used their share
        cost = self._airtime(self._queue[index].text)
        wait = self.budget.wait_s(cost)
        if math.isinf(wait):
            # Longer on air than the whole budget (a tiny budget on a slow preset): it
            # would wait forever and block the texts behind it.
            item = self._queue[index]
            del self._queue[index]
            self._dropped[DropReason.OVER_BUDGET] += 1
            self._state.done([item.row], _dropped_counter(DropReason.OVER_BUDGET))
            log.warning(
                "dropped %s: %.1f s on air, more than the whole airtime budget (AIRTIME_BUDGET_PCT %g %% = %.1f s)",
                item.label(), cost, self._settings.AIRTIME_BUDGET_PCT, self.budget.budget_s,
            )
            return None, 0.0
        if wait > 0:
            if self.budget.hour_wait_s(cost) > 0:
                if not self._budget_held:
                    self._budget_held = True
                    log.warning(
                        "airtime budget spent: %.1f s on air in the last hour (AIRTIME_BUDGET_PCT %g %% = %.1f s); holding %s",
                        self.budget.spent(), self._settings.AIRTIME_BUDGET_PCT, self.budget.budget_s,
                        counted(len(self._queue), "text"),
                    )
            elif not self._spreading:
                self._spreading = True
                self._spread_note.log(
                    "airtime budget: %.1f s on air in the last 10 minutes, the most it lets into 10 minutes; "
                    "holding %s for %.0f s to spread them out",
                    self.budget.spread_spent(), counted(len(self._queue), "text"), wait,
                )
            return None, wait
        self._spreading = False
        if self._budget_held and self.budget.hour_wait_s(self.budget.budget_s * _BUDGET_BACK_SHARE) <= 0:
            self._budget_held = False
            log.info(
                "airtime budget back: %.1f s of %.1f s used in the last hour; sending %s held",
                self.budget.spent(), self.budget.budget_s, counted(len(self._queue), "text"),
            )
        return index, 0.0

    def _log_strangers_share(self, held: bool) -> None:
        """Under the lock: one INFO line when the strangers' share runs out, one when it is
        back (with the same margin as the whole budget's)."""
        if held and not self._strangers_held:
            self._strangers_held = True
            spread = self.budget.strangers_spread
            log.info(
                "strangers' share of the airtime budget used (%.0f s an hour%s): replies to nodes "
                "that sent no NodeInfo wait",
                self.budget.strangers.budget_s, f", {spread.budget_s:.0f} s in any 10 minutes" if spread else "",
            )
        elif self._strangers_held and self.budget.stranger_wait_s(self.budget.strangers.budget_s * _BUDGET_BACK_SHARE) <= 0:
            self._strangers_held = False
            log.info("strangers' share of the airtime budget is back")

    def _airtime(self, text: str) -> float:
        radio = self._link.status.radio or radio_params(None)
        return radio.airtime_s(utf8_len(text))

    def _report_drop(self, item: OutgoingText, why: str, warning: RepeatedWarning) -> None:
        """Under the lock: a WARNING per dropped text (repeats of one kind counted, one line
        a minute); texts to strangers (a flood of forged ids) in a line a minute of their own."""
        if item.stranger:
            warning = self._stranger_drop_warning
        warning.log("dropped %s: %s", item.label(), why)

    def _take_due_retries(self, now: float) -> None:
        """Under the lock: DMs whose delivery failed go back to the head of the queue."""
        for attempt, item in reversed(self._delivery.due_retries(now)):
            item.attempt, item.resends, item.unconfirmed_id, item.created = attempt, 0, None, now
            self._queue.appendleft(item)
            item.row = self._put_back(item)

    def _deliver(self, item: OutgoingText, iface: Any) -> None:
        if item.client_packet is not None:
            with self._cond:
                self._turns.last_was_client = True
                if self._turns.written.seen(iface, item.client_packet.id):
                    # Written since it was queued (another client, the bot): the node would
                    # drop it without a word.
                    self._client_refused(item, "packet id used already on the node's connection")
                    return
            item.unconfirmed_id = item.client_packet.id
        else:
            with self._cond:
                self._turns.last_was_client = False
        packet_id = item.unconfirmed_id or iface.new_packet_id()
        if item.unconfirmed_id is None:
            # Stored before the write: a text the node may have got when this process dies
            # goes out again with this id, and receiving nodes discard the copy.
            self._state.writing(item.row, packet_id)
        with self._cond:
            self._inflight_id, self._inflight_report, self._inflight_rate_limited = packet_id, None, False
            self._inflight_label = item.label()
        # A client's text is a person's, not the bot's: a user sending the same words (a
        # command, say) must not be taken for an echo of it.
        if item.to == BROADCAST_NUM and self._own_broadcasts is not None and not item.from_client:
            # Before the write: the node may put it on the air, and an echo may come back,
            # before its verdict reaches this thread.
            self._own_broadcasts.add(item.text)
        try:
            if item.client_packet is not None:
                iface.send_to_radio(mesh_pb2.ToRadio(packet=item.client_packet))
            else:
                iface.send_text_packet(
                    item.text,
                    item.to,
                    item.channel,
                    reply_id=item.reply_to,
                    want_ack=item.is_dm,  # a DM is retried by the firmware until acknowledged
                    packet_id=packet_id,
                )
        except TxQueueFull as exc:
            with self._cond:
                self._inflight_id = None
                self._requeue(item)
                self._next_send_at = time.monotonic() + _RETRY_GAP_S
            log.info("%s; will retry", exc)
            return
        except (LinkLost, OSError, MeshInterface.MeshInterfaceError) as exc:
            # Not (fully) written: the link owner reconnects, and the text goes out then.
            with self._cond:
                self._inflight_id = None
                item.unconfirmed_id = packet_id
                self._requeue(item)
            log.debug("send of %s failed (%s); kept for after the reconnect", item.label(), exc)
            return
        written_at = time.monotonic()
        with self._cond:
            self._turns.written.add(iface, packet_id)
            bound = clients.CLIENT_VERDICT_S if item.from_client else None
            report = self._await_verdict(iface, packet_id, written_at, bound)
            self._inflight_id = None
            if report is None:  # link lost before the node said anything
                item.unconfirmed_id = packet_id
                self._requeue(item)
                return
            why = self._refusal(report)
            if why is None:
                # Counted from when the node's word arrived, not from the write: see above.
                self._next_send_at = report.at + self._gap(item, iface)
                self._accepted(packet_id, item, report.at)
            else:
                self._reject(item, why, report.at)
            early, self._early_routing = self._early_routing, None
        if early is not None:
            self.routing(*early)

    def _await_verdict(
        self, iface: Any, packet_id: int, written_at: float, bound_s: Optional[float] = None
    ) -> Optional[QueueReport]:
        """Under the lock: the node's queueStatus for the in-flight packet; None if the link
        died first. Firmware that never sends one: a successful write is all we will know.
        `bound_s`: a shorter wait (an API client's packet, clients.py)."""
        if not iface.answers_queue_status:
            return QueueReport(packet_id, 0, 0, 0, written_at)
        # The link's own timeout ends a silent node's link; this bound only covers a node
        # that answers probes but not this packet, so that the outbox never stalls.
        wait_s = self._settings.LINK_TIMEOUT_S if bound_s is None else min(bound_s, self._settings.LINK_TIMEOUT_S)
        give_up_at = time.monotonic() + wait_s
        while self._inflight_report is None and not self._inflight_rate_limited:
            if not iface.alive:
                return None
            if time.monotonic() >= give_up_at:
                log.warning("no status from the node %g s after %s; assuming it was sent", wait_s, self._inflight_label)
                return QueueReport(packet_id, 0, 0, 0, time.monotonic())
            self._cond.wait(0.25)
        return self._inflight_report or QueueReport(packet_id, 0, 0, 0, time.monotonic())

    def _refusal(self, report: QueueReport) -> Optional[str]:
        """Under the lock: why the node did not take the in-flight text, or None if it did.

        Firmware 2.7 refuses a text that came too soon with res = 0 and nothing else; the
        only trace is the TX queue's `free`, which an accepted text lowers (it waits there
        until the radio sends it). So once this node's statuses have shown an accepted
        text in the queue, a status showing the queue still empty (`free == maxlen`) means
        refused. A `free` merely unchanged is not taken for a refusal: another packet may
        have left the queue meanwhile, and a false refusal would put the text on the air
        twice. The pacing (`_gap`) is what keeps the node from refusing in the first place.
        """
        if self._inflight_rate_limited:
            return "rate limited by the node"
        if report.res:
            return f"rejected by the node (res={report.res})"
        if report.maxlen:
            if report.free < report.maxlen:
                self._queue_shows_texts = True
            elif self._queue_shows_texts:
                return "not taken by the node (res=0 but its TX queue stayed empty: its 2 s text limit?)"
        return None

    def _accepted(self, packet_id: int, item: OutgoingText, now: float) -> None:
        self._sent += 1
        self._state.done([item.row], "sent")
        item.row = None
        cost = self._cost(item)
        self._airtime_s += cost
        if item.from_client:  # the clients' share, and the whole budget (clients.py)
            self.budget.record(cost, clients.CLIENTS, client=True)
        else:
            stranger = item.kind is TextKind.REPLY and not is_known_node(self._link.interface, item.requester)
            self.budget.record(cost, item.requester, stranger=stranger)
        self._last_accepted = (packet_id, item)
        self._recent_ids[packet_id] = item.label()
        if len(self._recent_ids) > _RECENT_IDS:
            self._recent_ids.popitem(last=False)
        if item.is_dm and not item.from_client:  # a client tracks its own DMs' ACKs
            self._delivery.track(packet_id, item, item.to, item.label(), now, item.attempt)
        log.debug("sent %s (%d B, id %08x)", item.label(), utf8_len(item.text), packet_id)
        if self.text_sent_listener is not None:
            self.text_sent_listener(packet_id, item)

    def _reject(self, item: OutgoingText, why: str, now: float) -> None:
        """Under the lock: resend later with a new id, or drop after MAX_RESENDS."""
        self._refused += 1
        self._state.count("refused")
        if item.from_client:
            # The client got the node's queueStatus for its packet and decides; a resend
            # would need its id, which the node now ignores as seen.
            log.info("%s %s; left to the client that sent it", item.label(), why)
            return
        item.unconfirmed_id = None
        item.resends += 1
        if item.resends > MAX_RESENDS:
            self._dropped[DropReason.REFUSED] += 1
            self._state.done([item.row], _dropped_counter(DropReason.REFUSED))
            log.warning("dropped %s: %s %d times", item.label(), why, item.resends)
            return
        self._resent += 1
        self._state.count("resent")
        log.info("%s %s; sending it again (%d/%d)", item.label(), why, item.resends, MAX_RESENDS)
        self._requeue(item)
        if item.row is None:  # accepted, then refused late: back in the store too
            item.row = self._put_back(item)
        self._next_send_at = max(self._next_send_at, now + max(self._settings.MIN_TEXT_INTERVAL_S, _RETRY_GAP_S))

    def _put_back(self, item: OutgoingText) -> Optional[int]:
        stored = self._stored(item)
        self._state.put_back(stored)
        return stored.row

    def _requeue(self, item: OutgoingText) -> None:
        self._queue.appendleft(item)
        self._cond.notify_all()

    def _gap(self, item: OutgoingText, iface: Any) -> float:
        """Least time from the node's word on this text (or client packet) to the next one."""
        gap = self._settings.MIN_TEXT_INTERVAL_S
        if enforces_text_limit(iface.firmware_version):
            gap = max(gap, FIRMWARE_TEXT_INTERVAL_S + _TEXT_LIMIT_MARGIN_S)
        if self._settings.PACE_BY_AIRTIME and self._link.status.radio is not None:
            gap = max(gap, self._cost(item))
        return gap

    def _expire(self, now: float) -> None:
        """Under the lock: drop texts older than OUTBOX_TTL_S, each with a WARNING."""
        ttl = self._settings.OUTBOX_TTL_S
        if not any(now - item.created > ttl for item in self._queue):
            return
        kept: collections.deque[OutgoingText] = collections.deque()
        expired = []
        for item in self._queue:
            if now - item.created > ttl:
                self._dropped[DropReason.TTL] += 1
                expired.append(item.row)
                self._report_drop(item, f"not sent within OUTBOX_TTL_S ({ttl:g} s)", self._expired_warning)
            else:
                kept.append(item)
        self._queue = kept
        self._state.done(expired, _dropped_counter(DropReason.TTL))
