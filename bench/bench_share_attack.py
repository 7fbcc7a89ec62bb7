"""The shared node API under attack (issue 15, part 1): what one hostile API client costs the others.

    python bench/bench_share_attack.py [--quick] [--root DIR]

The simulated node runs in this process; the bot (`main.py` of this checkout, or of
`--root`, e.g. an export of main to compare) in its own, with API_LISTEN on 127.0.0.1.
Raw protocol clients, as an attacker on the LAN would write them:

1. **repeated id**: a client sends 30 texts with one packet id, then a user sends /ping:
   how long the pong takes (LINK_TIMEOUT_S 10 s here; capped at `_PING_CAP_S`);
2. **flood**: a client sends 200-byte texts (fresh ids) every 0.3 s for 61 s on a
   LONG_FAST node with the firmware's 2 s rule, while users send 4 /pings: the share of
   those 61 s the client's texts were on air, and how many pongs came within the window;
3. **forged NodeInfos**: the mesh brings NodeInfos from 100,000 invented ids (20,000 with
   --quick); then the bytes of one client's config handshake.
"""

from __future__ import annotations

import argparse
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

from common import ROOT, Row, print_table, stop_bot, wait_for

from meshtastic.protobuf import mesh_pb2, portnums_pb2

from meshbot.link.airtime import radio_params
from meshbot.sim.node import SimulatedNode

NAME = "share_attack"
_PING_CAP_S = 60.0
_FLOOD_S = 61.0
_TEXT = portnums_pb2.PortNum.TEXT_MESSAGE_APP


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _start(root: Path, node_port: int, **settings: Any) -> subprocess.Popen:
    """`main.py` of `root` (its own meshbot package first on the path)."""
    values = dict(NODE_HOST="127.0.0.1", NODE_PORT=node_port, LOG_LEVEL="WARNING", STATE_DIR=":memory:")
    values.update(settings)
    config = tempfile.NamedTemporaryFile("w", suffix=".py", delete=False)
    config.write("".join(f"{k} = {v!r}\n" for k, v in values.items()))
    config.close()
    return subprocess.Popen(
        [sys.executable, str(root / "main.py"), "--config", config.name],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True, cwd=str(root),
    )


class Client:
    """A raw client of the bot's API."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.buf = b""
        self.received = 0

    def send(self, **fields: Any) -> None:
        payload = mesh_pb2.ToRadio(**fields).SerializeToString()
        self.sock.sendall(b"\x94\xc3" + struct.pack(">H", len(payload)) + payload)

    def text(self, text: str, packet_id: int) -> None:
        packet = mesh_pb2.MeshPacket(to=0xFFFFFFFF, id=packet_id)
        packet.decoded.portnum = _TEXT
        packet.decoded.payload = text.encode()
        self.send(packet=packet)

    def read_until(self, predicate: Any, timeout: float) -> Optional[mesh_pb2.FromRadio]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            while len(self.buf) >= 4 and len(self.buf) >= 4 + struct.unpack(">H", self.buf[2:4])[0]:
                length = struct.unpack(">H", self.buf[2:4])[0]
                message = mesh_pb2.FromRadio.FromString(self.buf[4 : 4 + length])
                self.buf = self.buf[4 + length :]
                if predicate(message):
                    return message
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(1 << 20)
            except socket.timeout:
                return None
            if not data:
                return None
            self.received += len(data)
            self.buf += data
        return None

    def handshake(self, nonce: int = 4242) -> int:
        """Bytes of the config handshake."""
        start = self.received - len(self.buf)
        self.send(want_config_id=nonce)
        if self.read_until(lambda m: m.config_complete_id == nonce, 120) is None:
            raise RuntimeError("no handshake")
        return self.received - len(self.buf) - start

    def close(self) -> None:
        self.sock.close()


def _serving(port: int) -> bool:
    try:
        client = Client(port)
    except OSError:
        return False
    try:
        client.handshake()
        return True
    except (OSError, RuntimeError):
        return False
    finally:
        client.close()


def _bot(root: Path, node: SimulatedNode, **settings: Any) -> tuple[subprocess.Popen, int]:
    port = _free_port()
    proc = _start(root, node.port, API_LISTEN=f"127.0.0.1:{port}", **settings)
    if not node.wait_connected(30) or not wait_for(lambda: _serving(port), 30):
        stop_bot(proc)
        raise RuntimeError("the bot does not serve API_LISTEN")
    return proc, port


def repeated_id(root: Path) -> float:
    with SimulatedNode(firmware_version="2.7.13") as node:
        proc, port = _bot(root, node, LINK_TIMEOUT_S=10.0, PROBE_INTERVAL_S=5.0)
        client = Client(port)
        try:
            client.handshake()
            for i in range(30):
                client.text(f"same id {i}", 0x77770001)
            time.sleep(0.5)
            before = len(node.texts)
            sent_at = time.monotonic()
            node.user_text(0x1A2B3C01, "/ping")
            texts = node.wait_texts(before + 1, _PING_CAP_S)
            pongs = [t for t in texts[before:] if t.text.startswith("pong")]
            return pongs[0].at - sent_at if pongs else _PING_CAP_S
        finally:
            client.close()
            stop_bot(proc)


def flood(root: Path, seconds: float) -> tuple[float, int]:
    """(share of the window the client's texts were on air, pongs answered of 4)."""
    radio = radio_params(None)
    with SimulatedNode(firmware_version="2.7.13") as node:
        proc, port = _bot(root, node)
        client = Client(port)
        try:
            client.handshake()
            start = time.monotonic()
            pings = [start + seconds * f for f in (0.15, 0.4, 0.65, 0.9)]
            packet_id = 0x66000000
            while time.monotonic() - start < seconds:
                if pings and time.monotonic() >= pings[0]:
                    pings.pop(0)
                    node.user_text(0x1A2B3C01 + len(pings) % 3, "/ping")
                packet_id += 1
                client.text(f"flood {packet_id:08x} ".ljust(200, "x"), packet_id)
                client.read_until(lambda m: False, 0.3)  # keep reading what the bot sends
            end = time.monotonic()
            texts = [t for t in node.texts if start <= t.at <= end]
            on_air = sum(radio.airtime_s(len(t.text.encode())) for t in texts if t.text.startswith("flood"))
            pongs = sum(1 for t in texts if t.text.startswith("pong"))
            return on_air / (end - start), pongs
        finally:
            client.close()
            stop_bot(proc)


def forged_nodes(root: Path, count: int) -> int:
    with SimulatedNode(firmware_version="2.6.11", tx_time_s=0.0) as node:
        proc, port = _bot(root, node)
        watcher = Client(port)
        try:
            watcher.handshake()
            last_id = 0
            for start in range(0, count, 1000):
                batch = []
                for num in range(0x20000000 + start, 0x20000000 + min(count, start + 1000)):
                    packet = mesh_pb2.MeshPacket(to=0xFFFFFFFF, id=num ^ 0x5A5A5A5A)
                    setattr(packet, "from", num)
                    packet.decoded.portnum = portnums_pb2.PortNum.NODEINFO_APP
                    packet.decoded.payload = mesh_pb2.User(
                        id=f"!{num:08x}", long_name=f"forged {num:08x}", short_name="FRG", public_key=bytes(32)
                    ).SerializeToString()
                    batch.append(packet)
                    last_id = packet.id
                node.deliver_many(batch)
                # Paced by the bot: the watcher reads the batch's last packet before the next.
                done = last_id
                watcher.read_until(lambda m: m.packet.id == done, 120)
            client = Client(port)
            try:
                return client.handshake()
            finally:
                client.close()
        finally:
            watcher.close()
            stop_bot(proc)


def run(quick: bool = False, root: Path = ROOT) -> list[Row]:
    count = 20_000 if quick else 100_000
    waited = repeated_id(root)
    share, pongs = flood(root, 30.0 if quick else _FLOOD_S)
    size = forged_nodes(root, count)
    return [
        Row(NAME, f"/ping wait while a client repeats one id 30 times (cap {_PING_CAP_S:g} s)", waited, "s", "< 10", waited < 10),
        Row(NAME, "airtime share of a flooding client's texts", share * 100, "%", "<= 60", share <= 0.6),
        Row(NAME, "pongs answered during the flood", pongs, "of 4", "= 4", pongs == 4),
        Row(NAME, f"handshake bytes after {count:,} forged NodeInfos", size, "B", "< 1 MB", size < 1_000_000),
    ]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 30 s flood, 20,000 forged NodeInfos")
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout whose main.py to run (default: this one)")
    args = parser.parse_args()
    print_table(run(args.quick, args.root.resolve()))
