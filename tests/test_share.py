"""The shared node API (API_LISTEN, issue 11), over real sockets: the official `meshtastic`
CLI and raw protocol clients talk to the bot, which talks to the simulated node over its
one connection.

The simulated node must answer a want_ack DM with an ACK from the destination, as the real
firmware delivers it (ROUTING_APP, error NONE, request_id = the DM's id, from the
destination user). A simulated node too old to do so gets `_ack_dms` to play the destination.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import pytest
from meshtastic.protobuf import admin_pb2, mesh_pb2, portnums_pb2

from meshbot.app import Bot
from meshbot.share.framing import frame
from meshbot.share.handshake import NodeSnapshot
from meshbot.sim.node import SentText, SimulatedNode
from tests.conftest import wait_until

# The library's own `meshtastic` command, next to this Python (a venv); else the same main().
_SCRIPT = Path(sys.executable).parent / "meshtastic"
CLI = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "meshtastic"]
ALICE, BOB = 0x1A2B3C01, 0x1A2B3C02
OWN = 0x5EED0B07
TEXT = portnums_pb2.PortNum.TEXT_MESSAGE_APP
ROUTING = portnums_pb2.PortNum.ROUTING_APP
ADMIN = portnums_pb2.PortNum.ADMIN_APP


class RawClient:
    """A client of the node's stream protocol, byte by byte as the node sees it."""

    def __init__(self, port: int, *, rcvbuf: Optional[int] = None, source: Optional[str] = None) -> None:
        """`source`: another loopback address (127.0.0.2...) to connect from: the bot
        takes at most 2 connections per address, as from 2 apps on one phone."""
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if source is not None:
            self.sock.bind((source, 0))
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(5.0)
        self.sock.connect(("127.0.0.1", port))
        self._buf = b""
        self.frames: list[mesh_pb2.FromRadio] = []  # everything read so far

    def send(self, **fields: Any) -> None:
        self.write(mesh_pb2.ToRadio(**fields).SerializeToString())

    def write(self, payload: bytes) -> None:
        self.sock.sendall(b"\x94\xc3" + struct.pack(">H", len(payload)) + payload)

    def packet(self, to: int, text: str = "", *, portnum: int = TEXT, payload: bytes = b"", channel: int = 0,
               packet_id: int, want_ack: bool = False) -> None:
        packet = mesh_pb2.MeshPacket(to=to, id=packet_id, channel=channel, want_ack=want_ack)
        packet.decoded.portnum = portnum
        packet.decoded.payload = payload or text.encode()
        self.send(packet=packet)

    def read_one(self, timeout: float) -> Optional[mesh_pb2.FromRadio]:
        """The next frame, or None at EOF; socket.timeout if nothing comes."""
        self.sock.settimeout(timeout)
        while True:
            if len(self._buf) >= 4 and len(self._buf) >= 4 + struct.unpack(">H", self._buf[2:4])[0]:
                length = struct.unpack(">H", self._buf[2:4])[0]
                message = mesh_pb2.FromRadio.FromString(self._buf[4 : 4 + length])
                self._buf = self._buf[4 + length :]
                self.frames.append(message)
                return message
            data = self.sock.recv(65536)
            if not data:
                return None
            self._buf += data

    def read_until(self, predicate: Callable[[mesh_pb2.FromRadio], Any], timeout: float = 5.0) -> mesh_pb2.FromRadio:
        deadline = time.monotonic() + timeout
        while True:
            message = self.read_one(max(0.01, deadline - time.monotonic()))
            if message is None:
                raise AssertionError("connection closed")
            if predicate(message):
                return message

    def handshake(self, nonce: int = 1234) -> list[mesh_pb2.FromRadio]:
        start = len(self.frames)
        self.send(want_config_id=nonce)
        self.read_until(lambda m: m.config_complete_id == nonce)
        return self.frames[start:]

    def closed_by_peer(self, timeout: float = 5.0) -> bool:
        """True once the bot closed the connection (EOF or reset), reading what comes meanwhile."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.read_one(0.2) is None:
                    return True
            except socket.timeout:
                continue
            except OSError:
                return True
        return False

    def close(self) -> None:
        self.sock.close()


def text_from(message: mesh_pb2.FromRadio, sender: int, text: str) -> bool:
    packet = message.packet
    return (
        message.HasField("packet") and getattr(packet, "from") == sender and packet.decoded.portnum == TEXT
        and packet.decoded.payload == text.encode()
    )


def _ack_dms(node: SimulatedNode) -> None:
    """Play the destination of want_ack DMs: its ACK reaches the node's client (see the module doc)."""
    if hasattr(node, "ack_delay_s"):
        return  # the simulated node acknowledges DMs itself

    def on_text(sent: SentText) -> None:
        if sent.want_ack and sent.to in node.users:
            ack = mesh_pb2.MeshPacket(to=node.node_num, id=sent.id ^ 0x5A5A5A5A, rx_time=int(time.time()))
            setattr(ack, "from", sent.to)
            ack.decoded.portnum = ROUTING
            ack.decoded.payload = mesh_pb2.Routing(error_reason=mesh_pb2.Routing.Error.NONE).SerializeToString()
            ack.decoded.request_id = sent.id
            node.deliver(ack)

    node.on_text = on_text


def cli(port: int, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CLI, "--host", f"127.0.0.1:{port}", *args], capture_output=True, text=True, timeout=60, cwd="/tmp"
    )


def start_shared(start_bot: Callable[..., Bot], node: SimulatedNode, **settings: Any) -> tuple[Bot, int]:
    bot = start_bot(node, API_LISTEN="127.0.0.1:0", **settings)
    assert bot.share is not None
    wait_until(lambda: bot.share is not None and bot.share.client_count() == 0 and bot.share.listening, 10)
    assert bot.share.port
    return bot, bot.share.port


def ping_answered(node: SimulatedNode, user: int = ALICE) -> None:
    """A simulated user's /ping gets the bot's pong."""
    before = len(node.texts)
    node.user_text(user, "/ping")
    texts = node.wait_texts(before + 1, 10)
    assert texts[before].text.startswith("pong"), texts[before]


def test_meshtastic_cli_through_the_bot(node: SimulatedNode, start_bot: Callable[..., Bot], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="meshbot")
    _ack_dms(node)
    bot, port = start_shared(start_bot, node)
    seen: list[mesh_pb2.MeshPacket] = []
    handle_packet = node._handle_packet
    node._handle_packet = lambda client, packet: (seen.append(packet), handle_packet(client, packet))[1]  # type: ignore[method-assign]

    info = cli(port, "--info")
    assert info.returncode == 0, info.stderr
    assert "Owner: meshbot (simulated node) (BOT)" in info.stdout and "!5eed0b07" in info.stdout
    assert '"region": "EU_868"' in info.stdout and "Index 1: SECONDARY" in info.stdout
    ping_answered(node)

    nodes = cli(port, "--nodes")
    assert nodes.returncode == 0 and all(name in nodes.stdout for name in ("Alice", "Bob", "Carl")), nodes.stdout
    lora = cli(port, "--get", "lora")
    assert lora.returncode == 0 and "lora.region: 3" in lora.stdout and "lora.hop_limit: 3" in lora.stdout, lora.stdout
    ping_answered(node, BOB)

    before = len(node.texts)
    for args in (["--sendtext", "hi"], ["--ch-index", "1", "--sendtext", "hi ch1"]):
        sent = cli(port, *args)
        assert sent.returncode == 0, sent.stderr
    texts = node.wait_texts(before + 2, 10)[before:]
    assert [(t.text, t.channel, t.to) for t in texts] == [("hi", 0, 0xFFFFFFFF), ("hi ch1", 1, 0xFFFFFFFF)]

    dm = cli(port, "--sendtext", "hi alice", "--dest", "!1a2b3c01", "--ack")
    assert dm.returncode == 0 and "Received an ACK." in dm.stdout, dm.stdout + dm.stderr
    assert node.texts[-1].text == "hi alice" and node.texts[-1].to == ALICE and node.texts[-1].want_ack
    ping_answered(node)

    refused = cli(port, "--set", "lora.region", "EU_868")
    assert refused.returncode == 0, refused.stderr
    wait_until(lambda: "refused set_config from API client 127.0.0.1:" in caplog.text, 5)
    sets = [p for p in seen if p.decoded.portnum == ADMIN and admin_pb2.AdminMessage.FromString(p.decoded.payload).HasField("set_config")]
    assert sets == []
    ping_answered(node, BOB)

    assert node.counters.connections == 1
    assert node.counters.rate_limited == 0
    # One INFO line per connect and one per disconnect, 7 CLI runs: the first few a minute
    # in full (gate.py), the rest in a summary line a minute later.
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("API client 127.0.0.1:")]
    assert len(lines) == 6 and "connected (1 client)" in lines[0], lines


def test_three_clients_handshakes_traffic_echo_and_admin(node: SimulatedNode, start_bot: Callable[..., Bot]) -> None:
    bot, port = start_shared(start_bot, node, API_MAX_CLIENTS=3)
    a, b, c = RawClient(port), RawClient(port, source="127.0.0.2"), RawClient(port, source="127.0.0.3")
    try:
        wait_until(lambda: bot.share is not None and bot.share.client_count() == 3, 5)
        fourth = RawClient(port, source="127.0.0.4")  # over API_MAX_CLIENTS: closed at once
        assert fourth.closed_by_peer()
        fourth.close()
        # The firmware's order; 69420: no other nodes; 69421: node infos only.
        kinds = [m.WhichOneof("payload_variant") for m in a.handshake(1234)]
        assert kinds[:3] == ["my_info", "node_info", "metadata"]
        assert kinds[3:11] == ["channel"] * 8 and kinds[-1] == "config_complete_id"
        assert kinds.index("config") < kinds.index("moduleConfig") < len(kinds) - 4
        assert kinds[-4:-1] == ["node_info"] * 3
        no_nodes = b.handshake(69420)
        assert [m.node_info.num for m in no_nodes if m.HasField("node_info")] == [OWN]
        only_nodes = c.handshake(69421)
        assert {m.WhichOneof("payload_variant") for m in only_nodes} == {"node_info", "config_complete_id"}
        assert only_nodes[0].node_info.num == OWN and len(only_nodes) == 5
        wait_until(lambda: bot.share is not None and bot.share.client_count() == 3, 5)

        # The mesh to every client; a client's heartbeat answered by the bot.
        node.user_text(BOB, "evening all", channel=1)
        for client in (a, b, c):
            client.read_until(lambda m: text_from(m, BOB, "evening all"))
        a.send(heartbeat=mesh_pb2.Heartbeat())
        a.read_until(lambda m: m.HasField("queueStatus") and m.queueStatus.mesh_packet_id == 0)

        # A client's text: to the node with its id, its queueStatus to it alone, the others see it.
        a.packet(0xFFFFFFFF, "from the app", packet_id=0x11110001)
        status = a.read_until(lambda m: m.HasField("queueStatus") and m.queueStatus.mesh_packet_id == 0x11110001)
        assert status.queueStatus.res == 0
        assert node.wait_texts(1, 5)[-1].id == 0x11110001
        for client in (b, c):
            echo = client.read_until(lambda m: text_from(m, OWN, "from the app"))
            assert echo.packet.id == 0x11110001
        # The bot's reply shows to every client as the own node's packet; /status counts them.
        node.user_text(ALICE, "/status")
        replies = node.wait_texts(2, 10)
        assert replies[-1].text.endswith("3 API clients"), replies[-1].text
        for client in (a, b, c):
            client.read_until(lambda m: text_from(m, OWN, replies[-1].text))
        assert not any(text_from(m, OWN, "from the app") for m in a.frames)
        assert bot.status_line().endswith("3 API clients")

        # Admin under 'read': a get passes and its answer goes to the asker only; a set is refused.
        a.packet(OWN, portnum=ADMIN, payload=admin_pb2.AdminMessage(get_device_metadata_request=True).SerializeToString(), packet_id=0x22220001)
        answer = a.read_until(lambda m: m.HasField("packet") and m.packet.decoded.request_id == 0x22220001)
        assert admin_pb2.AdminMessage.FromString(answer.packet.decoded.payload).HasField("get_device_metadata_response")
        b.packet(OWN, portnum=ADMIN, payload=admin_pb2.AdminMessage(reboot_seconds=5).SerializeToString(), packet_id=0x22220002)
        nak = b.read_until(lambda m: m.HasField("packet") and m.packet.decoded.request_id == 0x22220002)
        assert nak.packet.decoded.portnum == ROUTING
        assert mesh_pb2.Routing.FromString(nak.packet.decoded.payload).error_reason == mesh_pb2.Routing.Error.NOT_AUTHORIZED
        node.user_text(BOB, "marker")
        b.read_until(lambda m: text_from(m, BOB, "marker"))
        assert not any(m.packet.decoded.request_id == 0x22220001 for m in b.frames)

        # The node DB stays current: a node first heard now is in later handshakes.
        dave = mesh_pb2.MeshPacket(to=0xFFFFFFFF, id=0x44440001, rx_time=int(time.time()), rx_snr=5.0, hop_start=3, hop_limit=2)
        setattr(dave, "from", 0x1A2B3C09)
        dave.decoded.portnum = portnums_pb2.PortNum.NODEINFO_APP
        dave.decoded.payload = mesh_pb2.User(id="!1a2b3c09", long_name="Dave", short_name="DAVE").SerializeToString()
        node.deliver(dave)
        a.read_until(lambda m: m.packet.id == 0x44440001)
        later = {m.node_info.num: m.node_info for m in c.handshake(69421) if m.HasField("node_info")}
        assert later[0x1A2B3C09].user.long_name == "Dave" and later[0x1A2B3C09].hops_away == 1

        # `disconnect` closes that client only.
        c.send(disconnect=True)
        assert c.closed_by_peer()
        wait_until(lambda: bot.share is not None and bot.share.client_count() == 2, 5)
        assert node.counters.connections == 1
    finally:
        for client in (a, b, c):
            client.close()


def test_client_texts_paced_with_the_bots_and_taking_turns_with_its_replies(start_bot: Callable[..., Bot]) -> None:
    with SimulatedNode(text_rate_limit_s=2.0) as node:
        bot, port = start_shared(start_bot, node, MIN_TEXT_INTERVAL_S=2.5)  # the default
        client = RawClient(port)
        try:
            client.handshake()
            client.packet(0xFFFFFFFF, "app 1", packet_id=0x33330001)
            node.wait_texts(1, 5)
            node.user_text(ALICE, "/ping")
            wait_until(lambda: bot.sender.stats().queued == 1, 5)  # the pong waits its turn
            for i in range(2, 5):  # a tight loop
                client.packet(0xFFFFFFFF, f"app {i}", packet_id=0x33330000 + i)
            texts = node.wait_texts(5, 20)
            # The pong waited for one client text, not for all of them.
            assert [t.text[:4] for t in texts] == ["app ", "pong", "app ", "app ", "app "]
            assert [t.text for t in texts if t.text.startswith("app")] == ["app 1", "app 2", "app 3", "app 4"]
            gaps = [later.at - earlier.at for earlier, later in zip(texts, texts[1:])]
            assert min(gaps) >= 2.0, gaps
            assert node.counters.rate_limited == 0
        finally:
            client.close()


def test_misbehaving_clients_are_dropped_alone(node: SimulatedNode, start_bot: Callable[..., Bot]) -> None:
    bot, port = start_shared(start_bot, node)
    good = RawClient(port)
    slow = RawClient(port, rcvbuf=4096, source="127.0.0.2")
    garbage, oversized, flood = (RawClient(port, source=f"127.0.0.{i}") for i in (3, 4, 5))
    try:
        good.handshake()
        slow.handshake()  # then never reads again
        # Each misbehaviour until the bot drops the client: a write after that may fail
        # (EPIPE, or a reset), which is the point.
        with contextlib.suppress(OSError):
            garbage.write(b"")  # nothing framed at all:
            garbage.sock.sendall(b"GET / HTTP/1.1\r\nHost: meshbot\r\n\r\n" * 64)
        with contextlib.suppress(OSError):
            oversized.sock.sendall(b"\x94\xc3" + struct.pack(">H", 600) + bytes(600))
        with contextlib.suppress(OSError):
            for _ in range(250):
                flood.send(heartbeat=mesh_pb2.Heartbeat())
        for client in (garbage, oversized, flood):
            assert client.closed_by_peer(), client

        # The mesh gets busy; the slow client's buffer fills and it is dropped, the rest go on.
        batch = [node.user_packet(BOB, f"chatter {i} " + "x" * 150) for i in range(500)]
        deadline = time.monotonic() + 20
        rounds = 0
        while bot.share is not None and bot.share.client_count() > 1 and time.monotonic() < deadline:
            node.deliver_many(batch)
            good.read_until(lambda m: m.packet.id == batch[-1].id, timeout=10)
            rounds += 1
            if rounds == 2:  # the slow client is stuck by now: the bot still answers at once
                ping_answered(node)
        assert bot.share is not None and bot.share.client_count() == 1
        ping_answered(node)
        node.user_text(ALICE, "still here")
        good.read_until(lambda m: text_from(m, ALICE, "still here"), timeout=10)
        assert node.counters.connections == 1
    finally:
        for client in (good, slow, garbage, oversized, flood):
            client.close()


def test_clients_closed_and_refused_while_the_node_is_down(node: SimulatedNode, start_bot: Callable[..., Bot]) -> None:
    bot, port = start_shared(start_bot, node)
    first, second = RawClient(port), RawClient(port)
    try:
        first.handshake()
        second.handshake()
        node.long_name = "renamed while rebooting"
        node.stop_listening(1.5)
        assert first.closed_by_peer() and second.closed_by_peer()
        # Accepted and closed at once: the port stays the bot's (test_share_hardening.py).
        wait_until(lambda: bot.share is not None and not bot.share.listening, 5)
        meanwhile = RawClient(port)
        assert meanwhile.closed_by_peer()
        meanwhile.close()
        # Back: accepted again, with the node's config from the new handshake.
        assert node.wait_connected(10, handshakes=2)
        again = wait_until(lambda: _connect(port), 10)
        try:
            # The node's config from the new handshake, not the old one.
            own = [m.node_info for m in again.handshake() if m.HasField("node_info") and m.node_info.num == OWN]
            assert own[0].user.long_name == "renamed while rebooting"
            # A client that sends nothing for the idle timeout is closed, as the firmware does.
            assert bot.share is not None
            bot.share.idle_timeout_s = 0.5
            assert again.closed_by_peer()
        finally:
            again.close()
        assert node.counters.connections == 2  # the bot's own reconnect, nothing else
    finally:
        first.close()
        second.close()


def _connect(port: int) -> Optional[RawClient]:
    """A client the bot serves (it finished a handshake), or None while it closes them."""
    try:
        client = RawClient(port)
    except ConnectionRefusedError:
        return None
    try:
        client.handshake()
    except (AssertionError, OSError):
        client.close()
        return None
    client.frames.clear()
    return client


def test_handshake_order_and_special_nonces() -> None:
    """The firmware's order, with the frames the simulated node does not send (deviceuiConfig,
    the file manifest), from a handshake recorded frame by frame."""
    recorded = [
        mesh_pb2.FromRadio(my_info=mesh_pb2.MyNodeInfo(my_node_num=OWN)),
        mesh_pb2.FromRadio(deviceuiConfig={"screen_brightness": 7}),
        mesh_pb2.FromRadio(node_info=mesh_pb2.NodeInfo(num=OWN)),
        mesh_pb2.FromRadio(metadata=mesh_pb2.DeviceMetadata(firmware_version="2.7.13")),
        mesh_pb2.FromRadio(channel={"index": 1}),
        mesh_pb2.FromRadio(channel={"index": 0}),
        mesh_pb2.FromRadio(config={"lora": {"hop_limit": 3}}),
        mesh_pb2.FromRadio(moduleConfig={"mqtt": {}}),
        mesh_pb2.FromRadio(node_info=mesh_pb2.NodeInfo(num=ALICE)),
        mesh_pb2.FromRadio(fileInfo={"file_name": "/prefs/db.proto"}),
        mesh_pb2.FromRadio(config_complete_id=99),
    ]
    snapshot = NodeSnapshot()
    assert snapshot.compose(1) is None
    for message in recorded:
        snapshot.note_frame(message, message.WhichOneof("payload_variant") or "")

    def kinds(nonce: int) -> list[str]:
        data = snapshot.compose(nonce)
        assert data is not None
        out = []
        while data:
            length = struct.unpack(">H", data[2:4])[0]
            out.append(mesh_pb2.FromRadio.FromString(data[4 : 4 + length]).WhichOneof("payload_variant"))
            assert frame(data[4 : 4 + length]) == data[: 4 + length]
            data = data[4 + length :]
        return out

    full = ["my_info", "deviceuiConfig", "node_info", "metadata", "channel", "channel", "config", "moduleConfig"]
    assert kinds(7) == full + ["node_info", "fileInfo", "config_complete_id"]
    assert kinds(69420) == full + ["fileInfo", "config_complete_id"]
    assert kinds(69421) == ["node_info", "node_info", "config_complete_id"]


def test_api_admin_modes() -> None:
    from meshbot.share.admin import admin_refusal

    def admin(**fields: Any) -> mesh_pb2.MeshPacket:
        packet = mesh_pb2.MeshPacket(to=OWN, id=1)
        packet.decoded.portnum = ADMIN
        packet.decoded.payload = admin_pb2.AdminMessage(**fields).SerializeToString()
        return packet

    get = admin(get_config_request=admin_pb2.AdminMessage.ConfigType.LORA_CONFIG)
    change = admin(set_owner=mesh_pb2.User(long_name="x"))
    reset = admin(factory_reset_device=1)
    encrypted = mesh_pb2.MeshPacket(to=OWN, id=2, encrypted=b"\x01\x02")
    assert admin_refusal(get, "read") is None
    assert (admin_refusal(change, "read"), admin_refusal(reset, "read")) == ("set_owner", "factory_reset_device")
    assert admin_refusal(encrypted, "read") == "an encrypted admin message"
    assert all(admin_refusal(p, "full") is None for p in (get, change, reset, encrypted))
    assert admin_refusal(get, "none") == "get_config_request"


def test_client_packets_count_against_the_clients_share_and_leave_the_rest_to_the_bot(
    node: SimulatedNode, start_bot: Callable[..., Bot], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="meshbot")
    # 18 s an hour, 6 s in any 10 minutes; the clients' half: 3 s in 10 minutes.
    bot, port = start_shared(start_bot, node, AIRTIME_BUDGET_PCT=0.5)
    client = RawClient(port)
    try:
        client.handshake()
        # A position (no text) goes through the outbox too, and is charged.
        client.packet(0xFFFFFFFF, portnum=3, payload=mesh_pb2.Position(latitude_i=1).SerializeToString(), packet_id=0x55550000)
        client.read_until(lambda m: m.HasField("queueStatus") and m.queueStatus.mesh_packet_id == 0x55550000)
        wait_until(lambda: bot.sender.budget.clients.spent(time.monotonic()) > 0, 5)
        for i in range(1, 5):  # 1.95 s on air each: one fits the clients' ten minutes
            client.packet(0xFFFFFFFF, f"flood {i} ".ljust(200, "x"), packet_id=0x55550000 + i)
        wait_until(lambda: "API clients' share of the airtime budget used" in caplog.text, 15)
        before = len(node.texts)
        ping_answered(node)  # the bot's part of the budget is still there
        assert [t.text[:7] for t in node.texts[:before]] == ["flood 1"]
        wait_until(lambda: bot.sender.stats().queued == 3, 5)  # the client's other texts wait for its share
    finally:
        client.close()
