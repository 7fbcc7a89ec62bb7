"""The node DB, bounded: when the bot heard each node, and which nodes the library may keep.

Two facts make this necessary:

* A node without a trusted clock (no GPS, no NTP, no phone) stamps received packets with
  `rx_time = 0` and never records `lastHeard` (measured on meshtasticd 2.7.13), so the node
  DB cannot say who was heard recently. `HeardClock` records it on the bot's own monotonic
  clock, from every packet, whatever the node's clock says.
* The `meshtastic` library adds a node-DB entry for every new sender id and never removes
  one while the link is up; sender ids are free to invent on a mesh. `NodeDbLimiter` keeps
  one interface's node DB (`nodesByNum` and `nodes`) within `NODE_DB_MAX` entries by
  evicting the least recently heard node: plain nodes first, then nodes with a public key,
  then favourites; never the bot's own node, never the node being heard right now.

"Least recently heard" has one owner, the `HeardClock`: `/nodes` and the eviction order
both read it. The clock outlives connections (each connection gets a new interface and a
new node DB from the node); a limiter belongs to one interface.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Any, Callable, Optional

from meshbot.text import counted

log = logging.getLogger(__name__)

# Eviction tiers, evicted in this order.
_PLAIN, _KEYED, _FAVOURITE = 0, 1, 2
_TIERS = (_PLAIN, _KEYED, _FAVOURITE)


class HeardClock:
    """When the bot last heard each node (any packet from it), on its monotonic clock.

    Bounded like the node DB: past `max_nodes` entries the least recently heard one is
    forgotten. Written on the library's reader thread, read by handlers: one lock.
    """

    def __init__(self, max_nodes: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_nodes = max_nodes
        self._clock = clock
        self._heard: collections.OrderedDict[int, float] = collections.OrderedDict()  # oldest first
        self._lock = threading.Lock()

    def heard(self, num: int) -> float:
        """Record a packet from `num` now; return the time recorded."""
        now = self._clock()
        with self._lock:
            self._heard[num] = now
            self._heard.move_to_end(num)
            while len(self._heard) > self.max_nodes:
                self._heard.popitem(last=False)
        return now

    def heard_at(self, num: int) -> Optional[float]:
        """When `num` was last heard (monotonic), or None if not since the bot started."""
        with self._lock:
            return self._heard.get(num)

    def snapshot(self) -> dict[int, float]:
        """Node number -> monotonic time last heard, a copy."""
        with self._lock:
            return dict(self._heard)

    def now(self) -> float:
        return self._clock()

    def __len__(self) -> int:
        return len(self._heard)


def tier(node: dict[str, Any]) -> int:
    """How long a node DB entry is kept: favourites longest, then nodes with a public key.

    A favourite is the operator's choice on the node; a public key means the node sent
    its NodeInfo (or the node knew it), which a spoofed id that only sent a text has not.
    """
    if node.get("isFavorite"):
        return _FAVOURITE
    if (node.get("user") or {}).get("publicKey"):
        return _KEYED
    return _PLAIN


def recency(num: int, node: dict[str, Any], heard: dict[int, float], mono_now: float, wall_now: float) -> float:
    """A node's last-heard time on the monotonic scale: the bot's own record first, then the
    node DB's `lastHeard` (epoch seconds) shifted onto that scale; never heard: -inf."""
    if num in heard:
        return heard[num]
    last = node.get("lastHeard")
    if isinstance(last, (int, float)) and last > 0:
        return mono_now - (wall_now - last)
    return float("-inf")


class NodeDbLimiter:
    """Keeps one interface's node DB within `max_nodes` entries (its own node not counted).

    The interface calls `created()` when the library added an entry after the handshake,
    `touched()` after each packet it handled, and `handshake_done()` once the node sent
    its whole DB. Everything runs on the library's reader thread, which owns the node DB.
    Eviction is O(1) per new sender: one insertion-ordered dict per tier, least recently
    heard first.
    """

    def __init__(self, clock: HeardClock, max_nodes: Optional[int] = None) -> None:
        self.clock = clock
        self.max_nodes = clock.max_nodes if max_nodes is None else max_nodes
        self._order: tuple[collections.OrderedDict[int, None], ...] = tuple(collections.OrderedDict() for _ in _TIERS)
        self._tier_of: dict[int, int] = {}
        self._tracking = False  # False until the handshake is done: the node's DB comes first
        self.evicted = 0

    # --- hooks -----------------------------------------------------------------------------
    def handshake_done(self, iface: Any) -> None:
        """Order the node's DB by when each node was last heard, then trim it to the bound."""
        nodes: dict[int, dict[str, Any]] = iface.nodesByNum
        heard = self.clock.snapshot()
        mono_now, wall_now = self.clock.now(), time.time()
        by_recency = sorted(nodes.items(), key=lambda item: recency(item[0], item[1], heard, mono_now, wall_now))
        for order in self._order:
            order.clear()
        self._tier_of.clear()
        own = _own_num(iface)
        for num, node in by_recency:
            if num != own:
                self._place(num, tier(node))
        self._tracking = True
        self._evict(iface, keep=None)

    def created(self, iface: Any, num: int) -> None:
        """The library just added `num`: it is the most recently heard; make room for it."""
        if not self._tracking or num == _own_num(iface):
            return
        self._place(num, _PLAIN)
        self._evict(iface, keep=num)

    def touched(self, iface: Any, num: int) -> None:
        """A packet from `num` was handled: it moves to the recent end of its (maybe new) tier."""
        if not self._tracking:
            return
        node = iface.nodesByNum.get(num)
        if node is not None and num != _own_num(iface):
            self._place(num, tier(node))
        self._prune_ids(iface)

    # --- internals ---------------------------------------------------------------------------
    def _place(self, num: int, new_tier: int) -> None:
        old_tier = self._tier_of.get(num)
        if old_tier is not None and old_tier != new_tier:
            del self._order[old_tier][num]
        self._tier_of[num] = new_tier
        order = self._order[new_tier]
        order[num] = None
        order.move_to_end(num)

    def _forget(self, num: int) -> None:
        old_tier = self._tier_of.pop(num, None)
        if old_tier is not None:
            self._order[old_tier].pop(num, None)

    def _evict(self, iface: Any, keep: Optional[int]) -> None:
        nodes: dict[int, dict[str, Any]] = iface.nodesByNum
        own = _own_num(iface)
        limit = self.max_nodes + (1 if own in nodes else 0)
        while len(nodes) > limit:
            victim = self._oldest(nodes, keep)
            if victim is None:
                victim = next((num for num in nodes if num not in (own, keep)), None)
                if victim is None:
                    return  # only the own node and the one being heard are left
            self._remove(iface, victim)
        self._prune_ids(iface)

    def _oldest(self, nodes: dict[int, dict[str, Any]], keep: Optional[int]) -> Optional[int]:
        """The least recently heard node of the lowest tier (its tier checked again: a node
        may have sent its key or become a favourite since it was placed)."""
        for tier_index in _TIERS:
            order = self._order[tier_index]
            found, stale = None, []
            for num in order:  # nearly always stops at the first entry
                if num == keep:
                    continue
                node = nodes.get(num)
                if node is None or tier(node) != tier_index:
                    stale.append(num)
                    continue
                found = num
                break
            for num in stale:
                node = nodes.get(num)
                if node is None:
                    self._forget(num)
                else:
                    self._place(num, tier(node))
            if found is not None:
                return found
        return None

    def _remove(self, iface: Any, num: int) -> None:
        self._forget(num)
        node = iface.nodesByNum.pop(num, None)
        self.evicted += 1
        if node is None:
            return
        node_id = (node.get("user") or {}).get("id")
        by_id: dict[str, Any] = iface.nodes if iface.nodes is not None else {}
        if node_id and by_id.get(node_id) is node:
            del by_id[node_id]

    @staticmethod
    def _prune_ids(iface: Any) -> None:
        """Bound the library's by-id index too. It keys nodes by the id their NodeInfo
        *claims*, so one sender claiming many ids leaves entries no eviction reaches. When
        it holds twice as many ids as there are nodes, drop every id that is not the
        current id of a node still in the DB (amortised O(1) per packet)."""
        by_id = iface.nodes
        nodes = iface.nodesByNum
        if by_id is None or len(by_id) <= 2 * len(nodes) + 16:
            return
        for node_id, node in list(by_id.items()):
            if nodes.get(node.get("num")) is not node or (node.get("user") or {}).get("id") != node_id:
                del by_id[node_id]


def _own_num(iface: Any) -> Optional[int]:
    my_info = getattr(iface, "myInfo", None)
    return my_info.my_node_num if my_info is not None else None


class PublishBacklog:
    """Bounds what the library holds for the bot between its reader and its publisher.

    The library's reader hands each received packet, as a dict holding the whole packet,
    to one process-wide "publishing" thread through an unbounded queue
    (`meshtastic.publishingThread`, a `DeferredExecution`); pubsub listeners run there. A
    reader faster than that thread (a flood of packets, a slow listener) grows the queue
    without limit. The interface asks `admit()` before handing a packet over: past
    `max_backlog` queued items, packets from other nodes are dropped at the reader. The
    connection events the library queues there (established, lost) are never refused,
    nor packets from the bot's own node.
    """

    def __init__(self, max_backlog: int, queue_size: Callable[[], int], report_every_s: float = 60.0) -> None:
        self.max_backlog = max_backlog
        self._queue_size = queue_size
        self._report_every_s = report_every_s
        self.dropped = 0
        self._reported_at: Optional[float] = None
        self._unreported = 0

    def admit(self) -> bool:
        """True if one more packet may be queued; counts (and reports) a refusal."""
        if self._queue_size() < self.max_backlog:
            return True
        self.dropped += 1
        self._unreported += 1
        now = time.monotonic()
        if self._reported_at is None or now - self._reported_at >= self._report_every_s:
            log.warning(
                "the library's publishing queue holds %d packets: dropped %s from the mesh "
                "(%d in all); the bot cannot keep up with what the node hands over",
                self.max_backlog, counted(self._unreported, "packet"), self.dropped,
            )
            self._reported_at, self._unreported = now, 0
        return False
