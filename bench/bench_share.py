"""Shared node API benchmark: does serving 4 clients slow the bot, and how late do they get the mesh?

    python bench/bench_share.py [--quick]

The simulated node runs in this process, the bot (`main.py`, API_LISTEN on 127.0.0.1) in
its own. The mesh sends 200 packets/s throughout. The bot's /ping latency (a /ping frame
written to the bot -> its reply read back by the node) is measured first with no API
client, then with 4 clients connected, each reading the node's stream through the bot.
Delivery lag: each mesh packet carries the time it was written to the bot; a client
notes when it read it. Pacing is off, as in bench_core: the figures are the bot's own cost.
"""

from __future__ import annotations

import argparse
import socket
import struct
import threading
import time

from common import Row, percentile, ping_latencies, print_table, start_bot, stop_bot, wait_for

from meshtastic.protobuf import mesh_pb2, portnums_pb2

from meshbot.sim.node import SimulatedNode

NAME = "share"
# The airtime budget out of the way too: 400 pings would spend the default 5 % of an hour.
SETTINGS = dict(MIN_TEXT_INTERVAL_S=0.0, PACE_BY_AIRTIME=False, RATE_LIMIT_COUNT=10_000, AIRTIME_BUDGET_PCT=100.0)
CLIENTS = 4
RATE = 200  # packets per second from the mesh
_TICK_S = 0.05
_TEXT = portnums_pb2.PortNum.TEXT_MESSAGE_APP


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Mesh(threading.Thread):
    """RATE packets/s from three users, each stamped with the time it is written."""

    def __init__(self, node: SimulatedNode) -> None:
        super().__init__(name="mesh", daemon=True)
        self.node = node
        self.stop = threading.Event()

    def run(self) -> None:
        users = list(self.node.users)
        per_tick = int(RATE * _TICK_S)
        next_at = time.monotonic()
        count = 0
        while not self.stop.is_set():
            now = time.monotonic()
            batch = []
            for _ in range(per_tick):
                count += 1
                batch.append(self.node.user_packet(users[count % len(users)], f"t={now:.6f} chatter {count} on the mesh"))
            self.node.deliver_many(batch)
            next_at += _TICK_S
            self.stop.wait(max(0.0, next_at - time.monotonic()))


class Client(threading.Thread):
    """A client of the bot's API: handshake, then read and time every chatter packet."""

    def __init__(self, port: int, source: str) -> None:
        super().__init__(name="client", daemon=True)
        # Each from its own loopback address: the bot takes at most 2 connections per address.
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
        self.ready = threading.Event()
        self.lags: list[float] = []
        self.measuring = False

    def run(self) -> None:
        nonce = 4242
        payload = mesh_pb2.ToRadio(want_config_id=nonce).SerializeToString()
        self.sock.sendall(b"\x94\xc3" + struct.pack(">H", len(payload)) + payload)
        buf = b""
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    return
                at = time.monotonic()
                buf += data
                while len(buf) >= 4:
                    length = struct.unpack(">H", buf[2:4])[0]
                    if len(buf) < 4 + length:
                        break
                    message = mesh_pb2.FromRadio.FromString(buf[4 : 4 + length])
                    buf = buf[4 + length :]
                    if message.config_complete_id == nonce:
                        self.ready.set()
                    elif self.measuring and message.packet.decoded.portnum == _TEXT:
                        text = message.packet.decoded.payload.decode()
                        if text.startswith("t="):
                            self.lags.append(at - float(text[2:].split(" ", 1)[0]))
        except OSError:
            return

    def close(self) -> None:
        self.sock.close()


def run(quick: bool = False) -> list[Row]:
    pings = 60 if quick else 200
    port = _free_port()
    rows: list[Row] = []
    # Firmware before 2.7 has no 2 s text limit, so the outbox does not wait for it: what is
    # measured is the bot's own cost, not the pacing.
    with SimulatedNode(text_rate_limit_s=None, tx_time_s=0.0, firmware_version="2.6.11") as node:
        proc = start_bot(node.port, API_LISTEN=f"127.0.0.1:{port}", **SETTINGS)
        mesh = Mesh(node)
        clients: list[Client] = []
        try:
            if not node.wait_connected(20):
                raise RuntimeError("bot did not connect: " + (proc.stderr.read() if proc.stderr else ""))
            time.sleep(0.5)
            mesh.start()
            time.sleep(1.0)
            alone = ping_latencies(node, pings, gap_s=0.02)
            for i in range(CLIENTS):
                if not wait_for(lambda: _accepts(port), 10):
                    raise RuntimeError("the bot does not serve API_LISTEN")
                client = Client(port, f"127.0.0.{i + 2}")
                client.start()
                clients.append(client)
            for client in clients:
                if not client.ready.wait(10):
                    raise RuntimeError("a client got no handshake")
                client.measuring = True
            time.sleep(1.0)
            shared = ping_latencies(node, pings, gap_s=0.02)
            time.sleep(0.5)
        finally:
            mesh.stop.set()
            for client in clients:
                client.close()
            stop_bot(proc)
    p99_alone, p99_shared = percentile(alone, 99) * 1000, percentile(shared, 99) * 1000
    ratio = p99_shared / p99_alone
    lags = [lag for client in clients for lag in client.lags]
    lag_p50, lag_p99 = percentile(lags, 50) * 1000, percentile(lags, 99) * 1000
    rows += [
        Row(NAME, f"/ping p99, {RATE} pkt/s, no API client (n={len(alone)})", p99_alone, "ms"),
        Row(NAME, f"/ping p99, {RATE} pkt/s, {CLIENTS} API clients (n={len(shared)})", p99_shared, "ms"),
        Row(NAME, f"/ping p99 ratio {CLIENTS} clients / none", ratio, "", "<= 2", ratio <= 2),
        Row(NAME, f"per-client delivery lag p50 (n={len(lags)})", lag_p50, "ms"),
        Row(NAME, f"per-client delivery lag p99 (n={len(lags)})", lag_p99, "ms"),
        Row(NAME, "TCP connections to the node", node.counters.connections, "", "= 1", node.counters.connections == 1),
    ]
    return rows


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1, source_address=("127.0.0.1", 0)).close()
        return True
    except OSError:
        return False


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="60 pings per phase instead of 200")
    print_table(run(parser.parse_args().quick))
