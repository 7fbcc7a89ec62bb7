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

from meshbot.logs import RepeatedWarning

log = logging.getLogger(__name__)

# Eviction tiers, evicted in this order.
_PLAIN, _KEYED, _FAVOURITE = 0, 1, 2
_TIERS = (_PLAIN, _KEYED, _FAVOURITE)


class HeardClock:
    """When the bot last heard each node (any packet from it), on its monotonic clock.

    Bounded like the node DB: past `max_nodes` entries the least recently heard node is
    forgotten, plain nodes before nodes worth keeping (favourites, nodes with a public
    key), so a flood of invented ids does not wipe out what the bot knows of the real
    nodes. Written on the library's reader thread, read by handlers: one lock.
    """

    def __init__(self, max_nodes: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_nodes = max_nodes
        self._clock = clock
        # Oldest first in each; a node is in one of them.
        self._plain: collections.OrderedDict[int, float] = collections.OrderedDict()
        self._kept: collections.OrderedDict[int, float] = collections.OrderedDict()
        self._lock = threading.Lock()

    def heard(self, num: int, keep: bool = False) -> float:
        """Record a packet from `num` now (`keep`: a node worth keeping); return the time."""
        now = self._clock()
        into, other = (self._kept, self._plain) if keep else (self._plain, self._kept)
        with self._lock:
            other.pop(num, None)
            into[num] = now
            into.move_to_end(num)
            while len(self._plain) + len(self._kept) > self.max_nodes:
                (self._plain or self._kept).popitem(last=False)
        return now

    def snapshot(self) -> dict[int, float]:
        """Node number -> monotonic time last heard, a copy."""
        with self._lock:
            return {**self._plain, **self._kept}

    def now(self) -> float:
        return self._clock()

    def __len__(self) -> int:
        return len(self._plain) + len(self._kept)


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

    The interface calls `heard()` when a packet from another node arrives, `created()`
    when the library added an entry for it (after the handshake), `handled()` once the
    library is done with the packet, and `handshake_done()` once the node sent its whole DB. Everything runs on the library's reader thread, which owns the node DB.
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

    def heard(self, iface: Any, num: int) -> None:
        """A packet from `num` (not the own node) arrived: record it on the clock now, before
        the packet reaches a handler (`/nodes` from a node lists that node)."""
        node = iface.nodesByNum.get(num) if iface.nodesByNum is not None else None
        self.clock.heard(num, keep=node is not None and tier(node) != _PLAIN)

    def handled(self, iface: Any, num: int) -> None:
        """The library handled that packet: move the node to the recent end of its (maybe
        new: the packet may have been its NodeInfo) tier, and drop the packet the library
        keeps in the entry (`lastReceived`: the dict and the protobuf, half of an entry's
        memory; nothing reads it)."""
        node = iface.nodesByNum.get(num) if iface.nodesByNum is not None else None
        if node is None:
            return
        node.pop("lastReceived", None)
        node_tier = tier(node)
        if node_tier != _PLAIN:
            self.clock.heard(num, keep=True)  # it may have just become worth keeping
        if self._tracking:
            self._place(num, node_tier)
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
        """The least recently heard node of the lowest tier. Tiers are checked again on the
        way: a node may have sent its key, or a NodeInfo without one, since it was placed."""
        while True:
            moved_down = False
            for tier_index in _TIERS:
                found, stale = None, []
                for num in self._order[tier_index]:  # nearly always stops at the first entry
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
                        moved_down = moved_down or tier(node) < tier_index
                        self._place(num, tier(node))
                if moved_down:
                    break  # a node went to a tier already looked at: look again
                if found is not None:
                    return found
            else:
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

    def __init__(self, max_backlog: int, queue_size: Callable[[], int]) -> None:
        self.max_backlog = max_backlog
        self._queue_size = queue_size
        self.dropped = 0
        # A flood is one line a minute, and a burst that stopped is still told.
        self._warning = RepeatedWarning(
            log, "dropped {count} more packets from the mesh in the last {seconds} s: the publishing queue stayed full"
        )

    def admit(self) -> bool:
        """True if one more packet may be queued; counts (and reports) a refusal."""
        if self._queue_size() < self.max_backlog:
            return True
        self.dropped += 1
        self._warning.log(
            "the library's publishing queue holds %d packets: dropped a packet from the mesh; "
            "the bot cannot keep up with what the node hands over",
            self.max_backlog,
        )
        return False

    def flush(self) -> None:
        """Tell the drops counted since the last line now (the link is closing)."""
        self._warning.flush()
