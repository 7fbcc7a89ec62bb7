"""The node DB bound, the bot's own last-heard clock and the bounded receive path, end to end
through the simulated node over TCP."""

from __future__ import annotations

import logging
import os
import threading
import time
import meshtastic
from meshtastic.protobuf import mesh_pb2, portnums_pb2
from pubsub import pub

from meshbot.link.interface import PUBLISH_BACKLOG_MAX
from meshbot.sim.node import SimulatedNode, SimUser
from tests.conftest import wait_until
from tests.test_commands import ALICE, BOB, CARL, ask

FAVOURITES = (0x0FA70001, 0x0FA70002)
KEYED = (0x0CE10001, 0x0CE10002)
PLAIN = (0x0AA10001, 0x0AA10002, 0x0AA10003)


class NodeDbNode(SimulatedNode):
    """A simulated node whose DB has favourites and nodes with a public key, and which may
    have no clock (then, like the firmware, it stamps rx_time 0 and never records when it
    heard a node). Both stamps are set here, whatever the simulated node's own default."""

    def __init__(self, *, has_clock: bool = True, favourites: tuple[int, ...] = (), keyed: tuple[int, ...] = (), **kwargs: object) -> None:
        super().__init__(firmware_version="2.6.11", **kwargs)  # type: ignore[arg-type]
        self.has_clock = has_clock
        self.favourites = set(favourites)
        self.keyed = set(keyed)

    def _node_info(self, user: SimUser) -> mesh_pb2.NodeInfo:
        info = super()._node_info(user)
        info.last_heard = int(time.time()) - 60 if self.has_clock else 0
        if user.num in self.favourites:
            info.is_favorite = True
        if user.num in self.keyed:
            info.user.public_key = os.urandom(32)
        return info

    def user_packet(self, user: SimUser | int, text: str | bytes, **kwargs: object) -> mesh_pb2.MeshPacket:
        packet = super().user_packet(user, text, **kwargs)  # type: ignore[arg-type]
        packet.rx_time = int(time.time()) if self.has_clock else 0  # 0: the firmware without a trusted time
        return packet

    def packet_from(self, num: int, *, key: bool = False) -> mesh_pb2.MeshPacket:
        """A text (or, with `key`, a NodeInfo carrying a public key) from `num`."""
        packet = self.user_packet(num, "hello mesh")
        if key:
            user = mesh_pb2.User(id=f"!{num:08x}", long_name="spoof", short_name="SPF", public_key=os.urandom(32))
            packet.decoded.portnum = portnums_pb2.PortNum.NODEINFO_APP
            packet.decoded.payload = user.SerializeToString()
        return packet


def crowd_users() -> tuple[SimUser, ...]:
    names = {**{n: "FAV" for n in FAVOURITES}, **{n: "KEY" for n in KEYED}, **{n: "PLN" for n in PLAIN}}
    return tuple(SimUser(num, f"{name}{i}") for i, (num, name) in enumerate(names.items()))


def test_node_db_keeps_node_db_max_evicting_plain_then_keyed_never_own_or_favourites(start_bot):
    with NodeDbNode(users=crowd_users(), favourites=FAVOURITES, keyed=KEYED) as node:
        bot = start_bot(node, NODE_DB_MAX=10)
        iface = bot.sender.get_interface()
        assert set(iface.nodesByNum) == {node.node_num, *FAVOURITES, *KEYED, *PLAIN}

        # A real node speaks, then 30 new senders with no key: the plain nodes go first, oldest first.
        node.deliver(node.packet_from(KEYED[0]))
        spoofed = [0x5F000000 + i for i in range(30)]
        node.deliver_many([node.packet_from(num) for num in spoofed])
        wait_until(lambda: spoofed[-1] in iface.nodesByNum, 5)
        assert set(iface.nodesByNum) == {node.node_num, *FAVOURITES, *KEYED, *spoofed[-6:]}
        # The bot's clock is bounded the same way, and keeps the real node's time through the flood.
        heard = bot.link.heard.snapshot()
        assert len(heard) == 10 and KEYED[0] in heard and spoofed[0] not in heard

        # 8 new senders with a public key: the plain ones go, then the older keyed ones.
        keyed_spoofs = [0x6E000000 + i for i in range(8)]
        node.deliver_many([node.packet_from(num, key=True) for num in keyed_spoofs])
        wait_until(lambda: keyed_spoofs[-1] in iface.nodesByNum, 5)
        assert set(iface.nodesByNum) == {node.node_num, *FAVOURITES, *keyed_spoofs}
        # The by-id index follows: no id of an evicted node is left.
        assert all(iface.nodesByNum.get(entry["num"]) is entry for entry in iface.nodes.values())
        assert iface.node_db.evicted == len(PLAIN) + len(KEYED) + 30

        # A node heard again is the most recent: the next eviction spares it.
        node.deliver(node.packet_from(keyed_spoofs[0], key=True))
        node.deliver(node.packet_from(0x7A000001, key=True))
        wait_until(lambda: 0x7A000001 in iface.nodesByNum, 5)
        assert keyed_spoofs[0] in iface.nodesByNum and keyed_spoofs[1] not in iface.nodesByNum
        assert len(iface.nodesByNum) == 11


def test_nodes_lists_nodes_heard_with_rx_time_zero_on_the_bots_clock(start_bot):
    with NodeDbNode(has_clock=False) as node:
        start_bot(node)
        # The node DB holds ALIC, BOB and CARL, none with a lastHeard: only the asker counts.
        first = ask(node, CARL, "/nodes")
        assert [t.text for t in first] == ["nodes 1/1: CARL 0s 8dB"]
        node.deliver(node.packet_from(ALICE))
        texts = [t.text for t in ask(node, CARL, "/nodes")]
        assert len(texts) == 1 and texts[0].startswith("nodes 1/1: ")
        listed = texts[0][len("nodes 1/1: ") :].split(", ")
        assert [entry.split()[0] for entry in listed] == ["CARL", "ALIC"]  # the most recent first
        assert "BOB" not in texts[0]
        # The bot's record outlives the connection (each one brings a fresh node DB).
        node.drop()
        assert node.wait_connected(10, handshakes=2)
        wait_until(lambda: ask(node, BOB, "/ping"), 10)
        text = ask(node, BOB, "/nodes")[0].text
        assert [entry.split()[0] for entry in text[len("nodes 1/1: ") :].split(", ")] == ["BOB", "CARL", "ALIC"]


def test_nodes_falls_back_to_the_node_dbs_last_heard(start_bot):
    with NodeDbNode(has_clock=True) as node:  # its DB says "heard 60 s ago"
        start_bot(node)
        text = ask(node, CARL, "/nodes")[0].text
        assert text.startswith("nodes 1/1: CARL 0s")
        assert "ALIC 1m" in text and "BOB 1m 1hop" in text


def test_a_stalled_publisher_holds_a_bounded_backlog_and_the_link_stays_up(node, start_bot, caplog):
    caplog.set_level(logging.WARNING, logger="meshbot")
    bot = start_bot(node)
    iface = bot.sender.get_interface()
    release = threading.Event()

    def stall(packet: dict, interface: object = None) -> None:
        release.wait(20)

    pub.subscribe(stall, "meshtastic.receive")  # the library's one publishing thread waits here
    try:
        flood = [node.user_packet(ALICE, f"chatter {i}") for i in range(PUBLISH_BACKLOG_MAX + 500)]
        node.deliver_many(flood)
        wait_until(lambda: iface.publish_backlog.dropped >= 400, 10)
        assert meshtastic.publishingThread.queue.qsize() <= PUBLISH_BACKLOG_MAX + 1
        # The reader still takes frames: the node's queue statuses and probes keep the link up.
        assert bot.link.status.state.value == "up" and iface.alive
    finally:
        release.set()
        pub.unsubscribe(stall, "meshtastic.receive")
    # Once the backlog has drained, packets are taken again.
    wait_until(lambda: meshtastic.publishingThread.queue.qsize() == 0, 10)
    assert ask(node, BOB, "/ping", timeout=10)[0].text.startswith("pong")
    # One line for the first drop; closing the link tells the count, not a timer a minute later.
    assert caplog.text.count("dropped a packet from the mesh") == 1
    bot.stop(budget_s=1.0)
    summary = [r.getMessage() for r in caplog.records if "more packets from the mesh" in r.getMessage()]
    assert len(summary) == 1 and summary[0].startswith(f"dropped {iface.publish_backlog.dropped - 1} more"), summary
    assert bot.link.status.reconnects == 0
