"""Who goes first when airtime is scarce, and how many texts a reply may cost.

The outbox asks `pick()` for the next text each time it may send one. While every queued
text fits in what is left of the hour's budget and none is for a stranger or a broadcast,
there is nothing to arbitrate and texts go in arrival order (`ordered=False`). Otherwise:

1. a DM reply to a node the bot knows (its NodeInfo was heard: the node DB has its
   `user`); the bot's own texts without a requester count as known;
2. a channel reply to a known node;
3. a reply to a stranger (a node id never announced: the cheapest thing to forge);
4. broadcasts: an admin's `/bc`, then scheduled broadcasts.

Within a class, the requester whose texts used the least airtime over the last hour goes
first (the oldest text on a tie): one sender, or one attacker inventing ids, cannot
take the whole budget while others wait. A requester's own texts stay in order, so
the chunks of a reply still arrive 1/3, 2/3, 3/3.

Amplification: a reply to a command costs at most `MAX_CHUNKS` texts, and a stranger
gets one text per command (cut with "…"), so a forged id buys one text, not four.
"""

from __future__ import annotations

import enum
from typing import Any, Callable, Hashable, Optional, Sequence

from meshtastic import BROADCAST_NUM


class TextKind(enum.Enum):
    """What a text is, for the priorities and the channel governor."""

    REPLY = "reply"  # an answer to a command (by DM or on the channel), /echo included
    BROADCAST = "broadcast"  # an admin's /bc: deferred while the channel is busy
    SCHEDULED = "scheduled"  # SCHEDULED_BROADCASTS: skipped while the channel is busy


class Priority(enum.IntEnum):
    KNOWN_DM = 0
    KNOWN_CHANNEL = 1
    STRANGER = 2
    BROADCAST = 3
    SCHEDULED = 4


def is_known_node(iface: Any, num: Optional[int]) -> bool:
    """True if the node DB holds a NodeInfo `user` for `num` that the node announced.

    The library invents a placeholder user ("Meshtastic 3c01", hwModel UNSET) for every
    sender it has no entry for; that one is not a NodeInfo heard and does not count.
    A real NodeInfo never carries hwModel UNSET in the library's dict (MessageToDict
    leaves default values out).
    """
    if num is None:
        return True  # the bot's own texts (operator, tests): nobody to distrust
    nodes = getattr(iface, "nodesByNum", None) if iface is not None else None
    user = (nodes or {}).get(num, {}).get("user") if nodes else None
    if not user:
        return False
    return not (user.get("hwModel") == "UNSET" and user.get("id") == f"!{num:08x}" and len(user) <= 4)


def priority(kind: TextKind, to: int, known: bool) -> Priority:
    if kind is TextKind.SCHEDULED:
        return Priority.SCHEDULED
    if kind is TextKind.BROADCAST:
        return Priority.BROADCAST
    if not known:
        return Priority.STRANGER
    return Priority.KNOWN_CHANNEL if to == BROADCAST_NUM else Priority.KNOWN_DM


def pick(
    items: Sequence[Any],
    eligible: Callable[[Any], bool],
    known: Callable[[Optional[int]], bool],
    spent_by: Callable[[Hashable], float],
    strangers: bool = True,
    ordered: bool = True,
) -> Optional[int]:
    """Index of the text to send next among `items` (queue order), or None if none may go.

    Each item has `kind`, `to` and `requester`. `known` and `spent_by` are asked once per
    requester. `strangers=False` leaves out replies to strangers (their share is spent);
    `ordered=False` keeps arrival order (nothing to arbitrate: see the outbox).
    """
    known_cache: dict[Optional[int], bool] = {}
    spent_cache: dict[Hashable, float] = {}
    best: Optional[tuple[int, float, int]] = None
    best_index: Optional[int] = None
    for index, item in enumerate(items):
        if not eligible(item):
            continue
        requester = item.requester
        if requester not in known_cache:
            known_cache[requester] = known(requester)
            spent_cache[requester] = spent_by(requester)
        rank = priority(item.kind, item.to, known_cache[requester])
        if rank is Priority.STRANGER and not strangers:
            continue
        key = (int(rank), spent_cache[requester], index) if ordered else (0, 0.0, index)
        if best is None or key < best:
            best, best_index = key, index
    return best_index


def evict(items: Sequence[Any], known: Callable[[Optional[int]], bool]) -> int:
    """Index of the text to drop when the outbox is full: the oldest of the lowest class
    present, so that a flood of strangers' texts never pushes out a known node's DM."""
    worst: Optional[tuple[int, int]] = None
    worst_index = 0
    known_cache: dict[Optional[int], bool] = {}
    for index, item in enumerate(items):
        if item.requester not in known_cache:
            known_cache[item.requester] = known(item.requester)
        key = (-int(priority(item.kind, item.to, known_cache[item.requester])), index)
        if worst is None or key < worst:
            worst, worst_index = key, index
    return worst_index


def max_texts(kind: TextKind, to: int, known: bool, max_chunks: int, channel_one_text: bool) -> int:
    """How many texts one reply may be split into."""
    if kind is not TextKind.REPLY:
        return max_chunks  # the operator's own broadcasts
    if not known:
        return 1  # a stranger: one text per command, whatever it asked for
    if to == BROADCAST_NUM and channel_one_text:
        return 1  # the channel is busy (CHANNEL_UTIL_POLITE_PCT): one text on it
    return max_chunks
