"""What the outbox takes back at start-up of what the last run left in the state store.

The leftover obeys the rules of a live outbox: a text older than `OUTBOX_TTL_S` (on the
wall clock: the monotonic one started again with the process) is dropped, and past
`OUTBOX_MAX` the texts a full outbox would have dropped go, in the same order (the lowest
class first, the oldest first within it: `policy.evict`). Otherwise a store grown by an
older version, a long outage or an edit would restore everything: 50,000 texts, hours
of airtime for answers nobody waits for any more.

The choice is made in one pass and a sort, not by evicting one text at a time (quadratic
in the leftover), and it is told in one line, not one per text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from meshbot.outbox import policy
from meshbot.outbox.policy import TextKind
from meshbot.state.store import StoredText


@dataclass
class Leftover:
    """The last run's texts, sorted: those to send (in their order), and those dropped."""

    kept: list[StoredText] = field(default_factory=list)
    expired: list[StoredText] = field(default_factory=list)  # older than OUTBOX_TTL_S
    over: list[StoredText] = field(default_factory=list)  # beyond OUTBOX_MAX


def stored_kind(value: str) -> TextKind:
    """A stored kind back to its enum; one this version does not know counts as a reply."""
    try:
        return TextKind(value)
    except ValueError:
        return TextKind.REPLY


def sort_leftover(pending: Sequence[StoredText], wall_now: float, ttl_s: float, max_texts: int) -> Leftover:
    """Split the store's texts (in queue order) into what a live outbox would still hold."""
    result = Leftover()
    fresh: list[StoredText] = []
    for stored in pending:
        # A wall clock that went back makes an age negative: counted as new, never dropped early.
        age_s = max(0.0, wall_now - stored.created)
        (result.expired if age_s > ttl_s else fresh).append(stored)
    excess = len(fresh) - max_texts
    if excess <= 0:
        result.kept = fresh
        return result

    def eviction_order(index: int) -> tuple[int, int]:
        # policy.evict drops the lowest class present first (the highest Priority value),
        # its oldest first. The node DB is not loaded yet: the text's stored `stranger` says
        # whether its requester was known when it was queued.
        item = fresh[index]
        known = item.requester is None or not item.stranger
        return (-int(policy.priority(stored_kind(item.kind), item.to, known)), index)

    dropped = set(sorted(range(len(fresh)), key=eviction_order)[:excess])
    for index, stored in enumerate(fresh):
        (result.over if index in dropped else result.kept).append(stored)
    return result
