"""Packets of the shared node API's clients in the outbox (kept apart from `sender.py`).

A client's packet (a text, a position, a traceroute... anything for the air) goes through
the outbox like the bot's texts, for three reasons measured against main (issue 15):

* **Its packet id.** The node silently drops a packet whose id it saw among the last 20
  of its connection -- *the bot's* connection, shared by every client and the bot. Such
  a packet gets no queueStatus at all, and the outbox waited `LINK_TIMEOUT_S` for one
  (45 s; a client repeating one id 30 times kept an honest /ping waiting 59 s). So an id
  already written on this connection (`WrittenIds`, 64 > 20 ids, forgotten with the
  connection, as the node forgets them), or queued, is refused at once; and whatever a
  client's packet does, the outbox waits at most `CLIENT_VERDICT_S` for the node's word
  on it: the client follows its own packet, the wait is only there to pace the next one.
* **Airtime.** A client's packets count against `API_AIRTIME_SHARE_PCT` of the airtime
  budget (`AirtimeBudget.clients`), and against the whole budget like the bot's: a
  client flooding texts had 96 % of a LONG_FAST channel in 61 s, and none of 4 /pings
  was answered. The rest of the budget stays for the bot's replies.
* **Turns.** Client packets and the bot's texts alternate when both wait (a client's
  packet no longer always goes first), each side in its own order.

All client packets keep the firmware's 2 s text spacing, texts or not: the node counts
2 s from the last text it took, so spacing every packet that way is never too short,
and a client's non-text packets are few (a position every few minutes).
"""

from __future__ import annotations

import collections
import logging
import math
from typing import Any, Callable, Optional, Sequence

from meshtastic.protobuf import mesh_pb2, portnums_pb2

log = logging.getLogger("meshbot.outbox.sender")  # the outbox's lines, wherever the code is

# Longest wait for the node's queueStatus on a client's packet before the next may go.
# The node answers in milliseconds; the bound only stops one odd packet from holding up
# everyone behind it.
CLIENT_VERDICT_S = 5.0
# Ids remembered per connection to the node: the node remembers its last 20.
_WRITTEN_IDS = 64
_TEXT = portnums_pb2.PortNum.TEXT_MESSAGE_APP
# The requester the budget books client packets under (for the per-requester ledgers).
CLIENTS = "api-clients"


class WrittenIds:
    """Packet ids written to the node on one connection, the last `_WRITTEN_IDS`. Not
    thread-safe: the outbox uses it under its lock."""

    def __init__(self) -> None:
        self._iface: Any = None
        self._ids: collections.OrderedDict[int, None] = collections.OrderedDict()

    def _for(self, iface: Any) -> collections.OrderedDict[int, None]:
        if iface is not self._iface:  # a new connection: the node's list starts empty too
            self._iface = iface
            self._ids.clear()
        return self._ids

    def add(self, iface: Any, packet_id: int) -> None:
        ids = self._for(iface)
        ids[packet_id] = None
        ids.move_to_end(packet_id)
        while len(ids) > _WRITTEN_IDS:
            ids.popitem(last=False)

    def seen(self, iface: Any, packet_id: int) -> bool:
        return iface is self._iface and packet_id in self._ids


def payload_len(packet: mesh_pb2.MeshPacket) -> int:
    """Bytes the packet puts on the air beyond the header (what airtime is computed from)."""
    if packet.HasField("decoded"):
        return len(packet.decoded.payload)
    return len(packet.encrypted)


def is_text(packet: Optional[mesh_pb2.MeshPacket]) -> bool:
    return packet is not None and packet.HasField("decoded") and packet.decoded.portnum == _TEXT


def describe(packet: mesh_pb2.MeshPacket) -> str:
    """A client's non-text packet in a log line: its port."""
    if not packet.HasField("decoded"):
        return "encrypted packet"
    try:
        name = portnums_pb2.PortNum.Name(packet.decoded.portnum)
    except ValueError:
        name = str(packet.decoded.portnum)
    return f"{name} packet"


class ClientTurns:
    """The outbox's bookkeeping for API clients' packets: the ids written on the node's
    connection, whose turn it is, and whether the clients' share holds them. Not
    thread-safe: the outbox uses it under its lock."""

    def __init__(self, budget: Any, share_pct: float) -> None:
        self._budget = budget  # an AirtimeBudget: its `clients` ledger, for the log line
        self._share_pct = share_pct
        self.written = WrittenIds()
        self.last_was_client = False  # the last packet written was a client's: the bot's turn
        self._held = False  # "share used" was logged, "back" not yet

    def first_ready(self, queue: Sequence[Any], wait_s: Callable[[Any], float]) -> tuple[Optional[int], float]:
        """The first client packet of `queue` and 0 if the clients' share lets it go now;
        None and how long to wait if not; its index and math.inf if it never will (longer
        on air than the whole share: the caller drops it)."""
        for index, item in enumerate(queue):
            if item.client_packet is None:
                continue
            wait = wait_s(item)
            if math.isinf(wait):
                return index, wait
            if wait > 0:
                if not self._held:
                    self._held = True
                    log.info(
                        "API clients' share of the airtime budget used (%.0f s an hour, API_AIRTIME_SHARE_PCT %g %%):"
                        " their packets wait", self._budget.clients.budget_s, self._share_pct,
                    )
                return None, wait
            if self._held:
                self._held = False
                log.info("API clients' share of the airtime budget is back")
            return index, 0.0
        return None, math.inf
