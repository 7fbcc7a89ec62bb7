"""The shared node API (API_LISTEN, issue 11), over real sockets: the official `meshtastic`
CLI and raw protocol clients talk to the bot, which talks to the simulated node over its
one connection.

The simulated node must answer a want_ack DM with an ACK from the destination; until it
does by itself, `_ack_dms` plays the destination (ROUTING_APP, error NONE, request_id = the
DM's id, from the destination user), exactly as the real firmware delivers it.
"""

from __future__ import annotations

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
from meshbot.sim.node import SentText, SimulatedNode
from tests.conftest import wait_until

ROOT = Path(__file__).resolve().parent.parent
CLI = Path(sys.executable).parent / "meshtastic"
ALICE, BOB = 0x1A2B3C01, 0x1A2B3C02
OWN = 0x5EED0B07
TEXT = portnums_pb2.PortNum.TEXT_MESSAGE_APP
ROUTING = portnums_pb2.PortNum.ROUTING_APP
ADMIN = portnums_pb2.PortNum.ADMIN_APP


class RawClient:
    """A client of the node's stream protocol, byte by byte as the node sees it."""

    def __init__(self, port: int, *, rcvbuf: Optional[int] = None) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
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
        [str(CLI), "--host", f"127.0.0.1:{port}", *args], capture_output=True, text=True, timeout=60, cwd="/tmp"
    )


def start_shared(start_bot: Callable[..., Bot], node: SimulatedNode, **settings: Any) -> tuple[Bot, int]:
    bot = start_bot(node, API_LISTEN="127.0.0.1:0", **settings)
    assert bot.share is not None
    wait_until(lambda: bot.share is not None and bot.share.client_count() == 0 and bot.share._listening, 10)
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
    wait_until(lambda: bot.share is not None and bot.share.client_count() == 0, 5)
    assert caplog.text.count("API client 127.0.0.1:") >= 2 * 7
