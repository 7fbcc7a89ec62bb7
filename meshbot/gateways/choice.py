"""`CopyWindow`: many gateways hear one packet; it is handled once, by the gateway that heard it best.

Every gateway that hears a packet hands the bot a copy: each linked node over its own link,
and every gateway uplinking to the broker (MESHTASTIC-NOTES, "MQTT": subscribers must
deduplicate by sender and packet id). The first copy opens a window of `window_s`; when it
closes the packet is handed on once, with the copy to answer through and the others. Copies
that come later are duplicates and only counted.

Which copy wins, decided in this order (ChirpStack picks LoRaWAN downlink gateways much the
same way, by the best SNR within a short window):

1. fewest hops (`hop_start - hop_limit`; unknown counts as worse than any known);
2. best SNR;
3. a linked gateway over one reached through MQTT (the bot's own link is surer than a
   downlink through a broker, and nodes with `lora.ignore_mqtt` drop downlinked packets);
4. the gateway's name: on the firmware's simulator every copy ties on hops and SNR, and the
   same input must always pick the same gateway.

Measured on meshtasticd 2.7.13 (the notes): a copy through the broker often reaches the
bot up to ~300 ms before the linked node's own copy of the same packet. So while linked
gateways exist, a window opened by an MQTT copy alone stays open `mqtt_grace_s` longer.

With a window of 0 (one gateway, today's bot) nothing waits: `offer` hands the packet on
before it returns, on the caller's thread.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Optional

from meshbot.dedup import RecentKeys

log = logging.getLogger(__name__)

# How long a handled packet's later copies are still known as duplicates (rebroadcasts and
# slow uplinks come within seconds; the firmware's own dedup remembers for minutes).
REMEMBER_S = 600.0
# Packets whose window is open at once: past this (a flood of distinct ids) the oldest
# window closes early, so memory stays bounded and nothing is dropped.
MAX_OPEN = 2000


@dataclass(frozen=True)
class Copy:
    """One gateway's copy of a packet, as heard by that gateway."""

    gateway: str  # the operator's name for it ('hill'), or a remote gateway's id
    linked: bool  # a node the bot links to directly, else heard through MQTT
    hops: Optional[int]  # None: the sender's firmware does not say (no hop_start)
    snr: float
    at: float  # monotonic time the bot got it

    def rank(self) -> tuple[int, float, int, str]:
        """Smaller is better: the order of the module docstring."""
        return (self.hops if self.hops is not None else 99, -self.snr, 0 if self.linked else 1, self.gateway)

    def describe(self) -> str:
        hops = "hops unknown" if self.hops is None else ("direct" if self.hops == 0 else f"{self.hops} hop{'s' if self.hops > 1 else ''}")
        return f"{self.gateway} ({hops}, SNR {self.snr:g} dB)"


@dataclass
class Heard:
    """A packet handed on once: `best` answers; `others` heard it too (arrival order)."""

    key: Hashable
    packet: Any  # the first copy's packet: what the router reads
    best: Copy
    others: list[Copy] = field(default_factory=list)

    def describe(self) -> str:
        """For the router's INFO line: `via hill (direct, SNR 7.5 dB); also heard by town (2 hops, SNR -3 dB)`."""
        text = f"via {self.best.describe()}"
        if self.others:
            text += "; also heard by " + ", ".join(c.describe() for c in self.others)
        return text


@dataclass
class _Open:
    key: Hashable
    packet: Any
    copies: list[Copy]
    deadline: float
    has_linked: bool


@dataclass
class CopyCounters:
    packets: int = 0  # handed on
    copies: int = 0  # every copy offered
    duplicates: int = 0  # copies after their packet was handed on
    closed_early: int = 0  # windows closed by MAX_OPEN


class CopyWindow:
    """Thread-safe; `start()` runs the one thread that closes windows (not needed with a
    window of 0), `stop()` hands on what is still open."""

    def __init__(
        self,
        window_s: float,
        on_heard: Callable[[Heard], None],
        *,
        linked_gateways: int,
        mqtt_grace_s: float = 0.3,
        clock: Callable[[], float] = time.monotonic,
        remember_s: float = REMEMBER_S,
        max_open: int = MAX_OPEN,
    ) -> None:
        self.window_s = window_s
        self.counters = CopyCounters()
        self._on_heard = on_heard
        self._linked_gateways = linked_gateways
        self._mqtt_grace_s = mqtt_grace_s
        self._clock = clock
        self._max_open = max_open
        self._done = RecentKeys(remember_s)
        self._open: dict[Hashable, _Open] = {}
        self._deadlines: list[tuple[float, int, Hashable]] = []  # heap; stale entries skipped
        self._seq = 0
        self._cond = threading.Condition()
        self._thread: Optional[threading.Thread] = None
        self._stopping = False

    # --- copies in ---------------------------------------------------------------------------
    def offer(self, key: Hashable, copy: Copy, packet: Any, *, now_only: bool = False) -> None:
        """A copy of the packet `key` (sender, packet id). `now_only`: hand it on at once if
        it is the first (a DM, answered by the node it was addressed to)."""
        ready: list[Heard] = []
        with self._cond:
            self.counters.copies += 1
            entry = self._open.get(key)
            if entry is not None:
                if any(c.gateway == copy.gateway for c in entry.copies):
                    self.counters.duplicates += 1  # one gateway's second copy: a rebroadcast it heard
                    return
                entry.copies.append(copy)
                if copy.linked and not entry.has_linked:
                    # The linked copy came: the window runs from the first copy, not longer.
                    entry.has_linked = True
                    entry.deadline = min(entry.deadline, entry.copies[0].at + self.window_s)
                    self._push(entry)
                return
            if key in self._done:
                self.counters.duplicates += 1
                return
            deadline = copy.at + self.window_s
            if not copy.linked and self._linked_gateways:
                deadline += self._mqtt_grace_s
            if now_only or self.window_s <= 0:
                self._done.add(key)
                ready.append(self._heard(_Open(key, packet, [copy], deadline, copy.linked)))
            else:
                entry = _Open(key, packet, [copy], deadline, copy.linked)
                self._open[key] = entry
                self._push(entry)
                while len(self._open) > self._max_open:
                    oldest = next(iter(self._open))
                    self.counters.closed_early += 1
                    ready.append(self._close_locked(oldest))
                self._cond.notify()
        for heard in ready:
            self._hand_on(heard)

    # --- windows closing -----------------------------------------------------------------------
    def close_due(self, now: Optional[float] = None) -> float:
        """Hand on every packet whose window has closed; returns seconds to the next deadline
        (or a long wait when none is open). The thread's work; tests call it with their clock."""
        now = self._clock() if now is None else now
        ready: list[Heard] = []
        with self._cond:
            while self._deadlines:
                deadline, _seq, key = self._deadlines[0]
                entry = self._open.get(key)
                if entry is None or entry.deadline != deadline:
                    heapq.heappop(self._deadlines)  # stale: closed already, or moved
                    continue
                if deadline > now:
                    break
                heapq.heappop(self._deadlines)
                ready.append(self._close_locked(key))
            wait = self._deadlines[0][0] - now if self._deadlines else 3600.0
        for heard in ready:
            self._hand_on(heard)
        return max(0.0, wait)

    def start(self) -> None:
        if self.window_s > 0 and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="gateway-window", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
            keys = list(self._open)
            ready = [self._close_locked(k) for k in keys]
        if self._thread is not None:
            self._thread.join(5)
        for heard in ready:
            self._hand_on(heard)

    @property
    def open_count(self) -> int:
        with self._cond:
            return len(self._open)

    def _run(self) -> None:
        while True:
            wait = self.close_due()
            with self._cond:
                if self._stopping:
                    return
                self._cond.wait(wait)
                if self._stopping:
                    return

    # --- inside ------------------------------------------------------------------------------
    def _push(self, entry: _Open) -> None:
        self._seq += 1
        heapq.heappush(self._deadlines, (entry.deadline, self._seq, entry.key))

    def _close_locked(self, key: Hashable) -> Heard:
        entry = self._open.pop(key)
        self._done.add(key)
        return self._heard(entry)

    def _heard(self, entry: _Open) -> Heard:
        best = min(entry.copies, key=Copy.rank)
        self.counters.packets += 1
        return Heard(entry.key, entry.packet, best, [c for c in entry.copies if c is not best])

    def _hand_on(self, heard: Heard) -> None:
        try:
            self._on_heard(heard)
        except Exception:  # a bug downstream must not stop the windows of other packets
            log.exception("handling a packet from the gateways failed")
