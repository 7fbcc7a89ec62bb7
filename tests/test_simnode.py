"""The simulated node itself, seen by a bare client over a real TCP socket.

The bot's tests trust the simulated node to behave as firmware 2.7.x does (the facts are in
MESHTASTIC-NOTES.md); these tests pin that behaviour down frame by frame, with no library
in between that could hide or add a frame.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from typing import Callable, Iterator, Optional

import pytest
from meshtastic.protobuf import admin_pb2, mesh_pb2, portnums_pb2

from meshbot.sim.node import SimulatedNode, SimUser
from tests.conftest import wait_until

ALICE = 0x1A2B3C01
TEXT = portnums_pb2.PortNum.TEXT_MESSAGE_APP
POSITION = portnums_pb2.PortNum.POSITION_APP
ROUTING = portnums_pb2.PortNum.ROUTING_APP
Error = mesh_pb2.Routing.Error


class RawClient:
    """A TCP client of the node that frames ToRadio/FromRadio by hand and records every
    frame it reads (and when), so a test can say exactly what arrived and in what order."""

    def __init__(self, node: SimulatedNode) -> None:
        self.node = node
        self.sock = socket.create_connection(node.address, timeout=5)
        self.frames: list[mesh_pb2.FromRadio] = []
        self.times: list[float] = []  # time.monotonic() each frame was read
        self.eof = False
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        buf = bytearray()
        while True:
            try:
                data = self.sock.recv(4096)
            except OSError:
                data = b""
            if not data:
                with self._cond:
                    self.eof = True
                    self._cond.notify_all()
                return
            buf += data
            while len(buf) >= 4 and buf[:2] == b"\x94\xc3":
                length = struct.unpack(">H", bytes(buf[2:4]))[0]
                if len(buf) < 4 + length:
                    break
                message = mesh_pb2.FromRadio()
                message.ParseFromString(bytes(buf[4 : 4 + length]))
                del buf[: 4 + length]
                with self._cond:
                    self.frames.append(message)
                    self.times.append(time.monotonic())
                    self._cond.notify_all()

    def send(self, **fields: object) -> float:
        """Write one ToRadio; return when (monotonic)."""
        payload = mesh_pb2.ToRadio(**fields).SerializeToString()  # type: ignore[arg-type]
        self.sock.sendall(b"\x94\xc3" + struct.pack(">H", len(payload)) + payload)
        return time.monotonic()

    def send_packet(self, packet_id: int, *, to: int = 0xFFFFFFFF, portnum: int = TEXT, text: str = "hi", want_ack: bool = False) -> float:
        packet = mesh_pb2.MeshPacket(id=packet_id, to=to, want_ack=want_ack)
        packet.decoded.portnum = portnum  # type: ignore[assignment]
        packet.decoded.payload = text.encode()
        return self.send(packet=packet)

    def wait(self, predicate: Callable[[mesh_pb2.FromRadio], bool], timeout: float = 5.0) -> mesh_pb2.FromRadio:
        """The first frame read (ever) that matches, waiting for it."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = next((f for f in self.frames if predicate(f)), None)
                if found is not None:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no matching frame in {timeout} s; read {self.frames}")
                self._cond.wait(left)

    def wait_eof(self, timeout: float = 5.0) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: self.eof, timeout), "the node did not close the connection"

    def handshake(self, nonce: int = 4242) -> int:
        """Ask for the config; return the index of config_complete_id in `frames`."""
        self.send(want_config_id=nonce)
        done = self.index(self.wait(lambda f: f.config_complete_id == nonce))
        if self.node.status_after_handshake and not self.node.old_firmware:
            # The queueStatus that ends the handshake: read it, or a barrier could take it for its own.
            self.wait(lambda f: f.HasField("queueStatus") and self.index(f) > done)
        return done

    def index(self, message: mesh_pb2.FromRadio) -> int:
        with self._cond:
            return next(i for i, f in enumerate(self.frames) if f is message)

    def barrier(self) -> int:
        """A heartbeat, answered after anything the node did with the frames before it: the
        index of its queueStatus. Frames before it are all the node wrote for earlier ones."""
        with self._cond:
            seen = len(self.frames)
        self.send(heartbeat=mesh_pb2.Heartbeat())
        status = self.wait(lambda f: f.HasField("queueStatus") and f.queueStatus.mesh_packet_id == 0 and self.index(f) >= seen)
        return self.index(status)

    def statuses(self, packet_id: int) -> list[mesh_pb2.QueueStatus]:
        with self._cond:
            return [f.queueStatus for f in self.frames if f.HasField("queueStatus") and f.queueStatus.mesh_packet_id == packet_id]

    def packets(self) -> list[mesh_pb2.MeshPacket]:
        with self._cond:
            return [f.packet for f in self.frames if f.HasField("packet")]

    def close(self) -> None:
        try:
            # shutdown first: close() alone leaves the reader thread's recv() holding the
            # connection open, and the node would see no FIN.
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            self.sock.close()
        except OSError:
            pass


@pytest.fixture
def make() -> Iterator[Callable[..., SimulatedNode]]:
    """make(**node kwargs) -> a started node; clients and nodes are closed after the test."""
    nodes: list[SimulatedNode] = []

    def build(**kwargs: object) -> SimulatedNode:
        node = SimulatedNode(**kwargs)  # type: ignore[arg-type]
        nodes.append(node.start())
        return node

    yield build
    for node in nodes:
        node.stop()


@pytest.fixture
def connect() -> Iterator[Callable[[SimulatedNode], RawClient]]:
    clients: list[RawClient] = []

    def open_client(node: SimulatedNode) -> RawClient:
        client = RawClient(node)
        clients.append(client)
        return client

    yield open_client
    for client in clients:
        client.close()


def routing(packet: mesh_pb2.MeshPacket) -> Optional[int]:
    """The error_reason of a ROUTING_APP packet, None for any other packet."""
    if packet.decoded.portnum != ROUTING:
        return None
    return mesh_pb2.Routing.FromString(packet.decoded.payload).error_reason


# --- 1. the firmware version ----------------------------------------------------------------------
def test_firmware_version_is_reported_and_drives_the_text_limit(make, connect):
    assert make(firmware_version="2.7.13").text_rate_limit_s == 2.0
    assert make(firmware_version="2.7.0").text_rate_limit_s == 2.0
    assert make(firmware_version="2.6.11").text_rate_limit_s is None
    assert make(firmware_version="2.6.11", text_rate_limit_s=1.5).text_rate_limit_s == 1.5
    assert make(firmware_version="2.7.13", text_rate_limit_s=None).text_rate_limit_s is None
    node = make(firmware_version="2.7.26.abc1234")
    client = connect(node)
    client.handshake()
    assert client.wait(lambda f: f.HasField("metadata")).metadata.firmware_version == "2.7.26.abc1234"
    # The admin metadata answer says the same.
    request = mesh_pb2.MeshPacket(id=99, to=node.node_num)
    request.decoded.want_response = True
    request.decoded.portnum = portnums_pb2.PortNum.ADMIN_APP
    request.decoded.payload = admin_pb2.AdminMessage(get_device_metadata_request=True).SerializeToString()
    client.send(packet=request)
    answer = client.wait(lambda f: f.packet.decoded.request_id == 99)
    metadata = admin_pb2.AdminMessage.FromString(answer.packet.decoded.payload).get_device_metadata_response
    assert metadata.firmware_version == "2.7.26.abc1234"


# --- 2. the rate limit ----------------------------------------------------------------------------
@pytest.mark.parametrize("rate_limit_nak", [False, True])
def test_refused_text_gets_one_queue_status_res_0_free_unchanged_and_nothing_else(make, connect, rate_limit_nak):
    node = make(firmware_version="2.7.13", tx_time_s=5.0, rate_limit_nak=rate_limit_nak)
    client = connect(node)
    start = client.handshake()
    client.send_packet(1)
    client.send_packet(2)  # well within 2 s of the first
    end = client.barrier()
    assert [(s.res, s.free, s.maxlen) for s in client.statuses(1)] == [(0, 15, 16)]
    assert [(s.res, s.free, s.maxlen) for s in client.statuses(2)] == [(0, 15, 16)]  # not counted: never queued
    errors = [routing(f.packet) for f in client.frames[start:end] if f.HasField("packet")]
    if rate_limit_nak:
        assert errors == [Error.RATE_LIMIT_EXCEEDED]
        assert client.wait(lambda f: f.packet.decoded.request_id == 2).packet.decoded.portnum == ROUTING
    else:
        assert errors == []  # the firmware's NAK goes to node 0, on the air
    assert node.refused == [2] and node.counters.rate_limited == 1
    assert [t.id for t in node.texts] == [1]


def test_rate_limit_counts_from_the_last_accepted_text_of_the_connection(make, connect):
    node = make(firmware_version="2.7.13", text_rate_limit_s=0.5)
    client = connect(node)
    client.handshake()
    client.send_packet(1)
    accepted = node.wait_texts(1, 5)[0]
    client.send_packet(2)
    client.barrier()
    assert node.refused == [2]
    # 0.5 s after the accepted text (but maybe not after the refused one): accepted.
    wait_until(lambda: time.monotonic() > accepted.at + 0.55, 2)
    client.send_packet(3)
    assert [t.id for t in node.wait_texts(2, 5)] == [1, 3]
    # A new connection has its own clock.
    other = connect(node)
    other.handshake()
    other.send_packet(4)
    assert [t.id for t in node.wait_texts(3, 5)] == [1, 3, 4]


# --- 3. the TX queue --------------------------------------------------------------------------------
def test_free_slots_go_down_per_packet_and_come_back_after_tx_time(make, connect):
    node = make(firmware_version="2.6.11", tx_time_s=0.3)
    client = connect(node)
    client.handshake()
    for packet_id in (1, 2, 3):
        client.send_packet(packet_id, portnum=TEXT if packet_id != 2 else POSITION)
    client.barrier()
    assert [client.statuses(i)[0].free for i in (1, 2, 3)] == [15, 14, 13]

    def heartbeat_free() -> bool:
        return client.frames[client.barrier()].queueStatus.free == 16

    wait_until(heartbeat_free, 3, interval=0.05)


def test_full_tx_queue_refuses_with_res_32(make, connect):
    node = make(firmware_version="2.6.11", tx_time_s=5.0)
    client = connect(node)
    client.handshake()
    for packet_id in range(1, 18):
        client.send_packet(packet_id)
    client.barrier()
    assert [client.statuses(i)[0].free for i in range(1, 17)] == list(range(15, -1, -1))
    assert (client.statuses(17)[0].res, client.statuses(17)[0].free) == (32, 0)
    assert len(node.texts) == 16 and node.counters.queue_full == 1


# --- 4. ids seen recently ---------------------------------------------------------------------------
def test_repeated_ids_are_dropped_silently_and_the_list_is_per_connection(make, connect):
    node = make(firmware_version="2.6.11", tx_time_s=0.01)
    first = connect(node)
    first.handshake()
    first.send_packet(7)
    first.send_packet(7)
    first.barrier()
    assert len(first.statuses(7)) == 1 and node.counters.ignored_repeats == 1
    for packet_id in range(100, 120):  # 20 other ids push 7 out of the list
        first.send_packet(packet_id, portnum=POSITION)
    first.send_packet(7)
    first.barrier()
    assert len(first.statuses(7)) == 2
    second = connect(node)  # force-closes the first: a new PhoneAPI, an empty list
    second.handshake()
    second.send_packet(119, portnum=POSITION)
    second.barrier()
    assert len(second.statuses(119)) == 1
    first.wait_eof()


# --- 5. ACK / NAK -----------------------------------------------------------------------------------
def test_dm_with_want_ack_is_acknowledged_by_the_destination(make, connect):
    node = make(firmware_version="2.6.11", ack_delay_s=0.05)
    client = connect(node)
    client.handshake()
    sent_at = client.send_packet(11, to=ALICE, want_ack=True)
    ack = client.wait(lambda f: f.packet.decoded.request_id == 11)
    assert client.times[client.index(ack)] - sent_at >= 0.05
    packet = ack.packet
    assert (getattr(packet, "from"), packet.to, routing(packet)) == (ALICE, node.node_num, Error.NONE)
    wait_until(lambda: packet.id in node.handed, 2)  # recorded just after the write


def test_dm_to_an_unreachable_or_unknown_user_gets_max_retransmit_from_the_node(make, connect):
    users = (SimUser(ALICE, "ALIC"), SimUser(0x1A2B3C09, "GONE", reachable=False))
    node = make(firmware_version="2.6.11", users=users, nak_delay_s=0.1)
    client = connect(node)
    client.handshake()
    client.send_packet(21, to=0x1A2B3C09, want_ack=True)
    client.send_packet(22, to=0x0BADBEEF, want_ack=True)
    client.barrier()  # both handled before the next DM is made to fail
    node.nak_next(Error.PKI_FAILED)
    client.send_packet(23, to=ALICE, want_ack=True)
    for request_id, error in ((21, Error.MAX_RETRANSMIT), (22, Error.MAX_RETRANSMIT), (23, Error.PKI_FAILED)):
        nak = client.wait(lambda f: f.packet.decoded.request_id == request_id).packet
        assert (getattr(nak, "from"), routing(nak)) == (node.node_num, error)


# --- 6. the phone queue -----------------------------------------------------------------------------
def test_packets_for_the_client_wait_for_the_next_handshake_bounded(make, connect):
    node = make(firmware_version="2.6.11", phone_queue_max=3)
    ids = [node.user_text(ALICE, f"/ping {i}") for i in range(5)]  # no client: kept, no raise
    assert node.handed == [] and node.counters.phone_queue_dropped == 2
    client = connect(node)
    done = client.handshake()
    client.wait(lambda f: f.HasField("queueStatus"))
    # Right after config_complete_id: the 3 newest, then the queueStatus about packet 0.
    after = client.frames[done + 1 : done + 5]
    assert [f.packet.id for f in after[:3]] == ids[2:]
    assert after[3].HasField("queueStatus") and after[3].queueStatus.mesh_packet_id == 0
    assert node.handed == ids[2:]
    assert node.deliver(node.user_packet(ALICE, "live")) is True


def test_an_ack_for_a_previous_connection_reaches_the_next_one(make, connect):
    node = make(firmware_version="2.6.11", ack_delay_s=0.3)
    first = connect(node)
    first.handshake()
    first.send_packet(31, to=ALICE, want_ack=True)
    first.wait(lambda f: f.queueStatus.mesh_packet_id == 31)
    first.close()
    wait_until(lambda: not node.connected, 5)
    second = connect(node)
    second.handshake()
    ack = second.wait(lambda f: f.packet.decoded.request_id == 31)
    assert getattr(ack.packet, "from") == ALICE
    assert all(p.decoded.request_id != 31 for p in first.packets())


def test_a_client_mid_handshake_gets_packets_only_after_config_complete(make, connect):
    node = make(firmware_version="2.6.11")
    client = connect(node)
    wait_until(lambda: node.counters.connections == 1, 5)
    assert node.deliver(node.user_packet(ALICE, "early")) is False  # no handshake yet
    done = client.handshake()
    early = client.wait(lambda f: f.packet.decoded.payload == b"early")
    assert client.index(early) == done + 1


# --- 7. time ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("has_time", [False, True])
def test_rx_time_and_last_heard_are_zero_without_time(make, connect, has_time):
    node = make(firmware_version="2.6.11", has_time=has_time)
    client = connect(node)
    done = client.handshake()
    heard = [f.node_info.last_heard for f in client.frames[:done] if f.HasField("node_info")]
    node.user_text(ALICE, "hello")
    packet = client.wait(lambda f: f.packet.decoded.payload == b"hello").packet
    if has_time:
        assert packet.rx_time > 1_700_000_000 and all(h > 1_700_000_000 for h in heard)
    else:
        assert packet.rx_time == 0 and heard and all(h == 0 for h in heard)


# --- 8. link delay and jitter -----------------------------------------------------------------------
def test_link_jitter_delays_both_directions_and_keeps_order(make, connect):
    node = make(firmware_version="2.6.11", tx_time_s=0.01, link_delay_s=0.03, link_jitter_s=0.04)
    client = connect(node)
    client.handshake()
    sent = {packet_id: client.send_packet(packet_id, portnum=POSITION) for packet_id in range(1, 21)}
    client.barrier()
    statuses = [f for f in client.frames if f.HasField("queueStatus") and f.queueStatus.mesh_packet_id in sent]
    assert [f.queueStatus.mesh_packet_id for f in statuses] == list(range(1, 21))  # TCP order both ways
    delays = [client.times[client.index(f)] - sent[f.queueStatus.mesh_packet_id] for f in statuses]
    assert min(delays) >= 0.06  # one delay each way at least
    ids = [node.user_text(ALICE, f"n{i}") for i in range(20)]
    wait_until(lambda: len(client.packets()) >= 20, 5)
    assert [p.id for p in client.packets()] == ids


# --- 9. a hung node ---------------------------------------------------------------------------------
def test_hang_then_connections_served_in_accept_order_first_gets_the_queue(make, connect):
    node = make(firmware_version="2.6.11")
    old = connect(node)
    old.handshake()
    node.hang(0.6)
    assert node.deliver(node.user_packet(ALICE, "during the hang")) is False
    first = connect(node)
    wait_until(lambda: node.counters.connections == 2, 5)  # the kernel still accepts
    first.send(want_config_id=1)
    second = connect(node)
    wait_until(lambda: node.counters.connections == 3, 5)
    second.send(want_config_id=2)
    old.send(heartbeat=mesh_pb2.Heartbeat())
    assert node.hung and first.frames == [] and second.frames == []  # nothing answered
    done_first = first.wait(lambda f: f.config_complete_id == 1)
    queued = first.wait(lambda f: f.packet.decoded.payload == b"during the hang")
    assert first.index(queued) == first.index(done_first) + 1
    first.wait_eof()  # force-closed by the second
    second.wait(lambda f: f.config_complete_id == 2)
    old.wait_eof()
    assert len(old.statuses(0)) == 2  # after its handshake, and its heartbeat sent in the hang
    assert all(p.decoded.payload != b"during the hang" for p in second.packets() + old.packets())
    wait_until(lambda: node.connected, 2)  # configured just after the last handshake frame went out
    assert node.counters.connections == 3


def test_hang_then_the_kept_connection_gets_the_queued_packets(make, connect):
    node = make(firmware_version="2.6.11")
    client = connect(node)
    client.handshake()
    node.hang(0.3)
    packet_id = node.user_text(ALICE, "kept")
    sent_at = client.send(heartbeat=mesh_pb2.Heartbeat())
    got = client.wait(lambda f: f.packet.id == packet_id)
    assert client.times[client.index(got)] - sent_at >= 0.25 and not client.eof


def test_hang_a_connection_abandoned_during_it_loses_nothing_to_the_next(make, connect):
    """The bot probes, gives up on its connection and opens a new one, all during the hang:
    the old connection's backlog (probe, disconnect) is read before anything is written,
    so the kept packet goes to the new connection."""
    node = make(firmware_version="2.6.11")
    old = connect(node)
    old.handshake()
    node.hang(0.5)
    packet_id = node.user_text(ALICE, "for the next one")
    probe = mesh_pb2.MeshPacket(id=61, to=node.node_num)
    probe.decoded.portnum = portnums_pb2.PortNum.ADMIN_APP
    probe.decoded.want_response = True
    probe.decoded.payload = admin_pb2.AdminMessage(get_device_metadata_request=True).SerializeToString()
    old.send(packet=probe)
    old.send(disconnect=True)
    new = connect(node)
    wait_until(lambda: node.counters.connections == 2, 5)
    new.send(want_config_id=7)
    got = new.wait(lambda f: f.packet.id == packet_id)
    done = new.wait(lambda f: f.config_complete_id == 7)
    assert new.index(got) == new.index(done) + 1
    new.wait(lambda f: f.HasField("queueStatus") and new.index(f) > new.index(got))  # the handshake's status, after
    assert all(p.id != packet_id for p in old.packets())


# --- 10. reboot -------------------------------------------------------------------------------------
def test_reboot_counts_and_empties_the_queues(make, connect):
    node = make(firmware_version="2.6.11", tx_time_s=30.0)
    client = connect(node)
    done = client.handshake()
    count = next(f.my_info.reboot_count for f in client.frames[:done] if f.HasField("my_info"))
    client.send_packet(1)
    assert client.wait(lambda f: f.queueStatus.mesh_packet_id == 1).queueStatus.free == 15
    node.reboot(0.2)
    client.wait_eof()
    assert not any(f.HasField("rebooted") for f in client.frames)
    node.user_text(ALICE, "lost with the reboot")  # the phone queue of the new boot
    node.reboot(0.2)
    wait_until(lambda: node.listening_since is not None, 5)
    again = connect(node)
    done = again.handshake()
    assert next(f.my_info.reboot_count for f in again.frames[:done] if f.HasField("my_info")) == count + 2
    assert again.frames[again.barrier()].queueStatus.free == 16
    assert again.packets() == []
    node.stop_listening(0.1)  # not a reboot: the count stays
    wait_until(lambda: node.listening_since is not None, 5)
    last = connect(node)
    done = last.handshake()
    assert next(f.my_info.reboot_count for f in last.frames[:done] if f.HasField("my_info")) == count + 2


# --- 11. client notifications -----------------------------------------------------------------------
def test_client_notification_arrives(make, connect):
    node = make(firmware_version="2.6.11")
    client = connect(node)
    client.handshake()
    node.notify_client(mesh_pb2.LogRecord.Level.WARNING, "TraceRoute can only be sent once every 30 seconds")
    note = client.wait(lambda f: f.HasField("clientNotification")).clientNotification
    assert (note.level, note.message) == (mesh_pb2.LogRecord.Level.WARNING, "TraceRoute can only be sent once every 30 seconds")


# --- 12. meshtasticd --sim --------------------------------------------------------------------------
def test_sim_echo_wraps_each_transmitted_packet_and_sends_a_second_status(make, connect):
    node = make(firmware_version="2.7.13", sim_echo=True, tx_time_s=0.05)
    client = connect(node)
    client.handshake()
    client.send_packet(41, text="on the air")
    echo = client.wait(lambda f: f.packet.decoded.portnum == portnums_pb2.PortNum.SIMULATOR_APP).packet
    inner = mesh_pb2.Compressed.FromString(echo.decoded.payload)
    assert (echo.id, inner.portnum, inner.data) == (41, TEXT, b"on the air")
    wait_until(lambda: len(client.statuses(41)) == 2, 5)
    assert [s.free for s in client.statuses(41)] == [15, 16]


def test_no_echo_by_default(make, connect):
    node = make(firmware_version="2.6.11", tx_time_s=0.01)
    client = connect(node)
    client.handshake()
    client.send_packet(51)
    wait_until(lambda: node.tx_free == 16, 5)
    client.barrier()
    assert len(client.statuses(51)) == 1 and client.packets() == []


def test_tx_time_zero_is_an_instant_radio(make, connect):
    node = make(firmware_version="2.6.11", tx_time_s=0.0)
    client = connect(node)
    client.handshake()
    for packet_id in range(1, 21):  # more than 16 slots' worth, back to back
        client.send_packet(packet_id)
    client.barrier()
    assert [client.statuses(i)[0].free for i in range(1, 21)] == [16] * 20
    assert len(node.texts) == 20


def test_hang_a_handshake_abandoned_during_it_takes_the_kept_packet_with_it(make, connect):
    """Measured on meshtasticd 2.7.13: a client that sent want_config during the hang and
    closed the connection before the node resumed is still served its handshake and the
    packet kept for the phone; the EOF is noticed after. The packet is lost with it."""
    node = make(firmware_version="2.6.11")
    old = connect(node)
    old.handshake()
    node.hang(0.5)
    packet_id = node.user_text(ALICE, "lost with the abandoned one")
    abandoned = connect(node)
    wait_until(lambda: node.counters.connections == 2, 5)
    abandoned.send(want_config_id=5)
    abandoned.sock.shutdown(socket.SHUT_WR)  # the client gives up: FIN after its want_config
    retry = connect(node)
    wait_until(lambda: node.counters.connections == 3, 5)
    retry.send(want_config_id=6)
    retry.wait(lambda f: f.config_complete_id == 6)
    wait_until(lambda: packet_id in node.handed, 5)  # handed over, to the abandoned connection
    assert abandoned.wait(lambda f: f.packet.id == packet_id)  # (read here only because the test's socket still reads)
    assert all(p.id != packet_id for p in retry.packets())
