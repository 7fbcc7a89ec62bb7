"""Memory benchmark: RSS growth of the real daemon fed packets from N distinct sender ids.

    python bench/bench_memory.py [--quick] [--senders 100000,1000000]

Spoofed sender ids are free on a mesh: every packet from a new `from` used to add a node
to the library's node DB (holding the whole packet) for as long as the link stayed up.
The bot (`main.py`, its own process, default NODE_DB_MAX) is fed, through the simulated
node on 127.0.0.1, a mix of text, position and NodeInfo packets (the NodeInfo ones carry
a public key), each from a sender id never seen before, as fast as the bot keeps up: a
batch, then a DM `/ping` from a known user whose reply says the batch went through. RSS
is read before and at each checkpoint; then a DM `/nodes` is timed.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Iterator

from common import Row, print_table, rss_mb, start_bot, stop_bot

from meshbot.sim.node import SimulatedNode
from meshtastic.protobuf import mesh_pb2, portnums_pb2

NAME = "memory"
# Memory is measured, not the channel: the pinger's 500 replies would spend a 5 % budget.
SETTINGS = dict(MIN_TEXT_INTERVAL_S=0.0, PACE_BY_AIRTIME=False, RATE_LIMIT_COUNT=10_000, AIRTIME_BUDGET_PCT=100.0)
_BATCH = 2000
_PINGER = 0x1A2B3C01  # a default user of the simulated node
_GROWTH_TARGET_MB = 20.0
# An odd multiplier is a bijection modulo 2**32: sender i never repeats.
_SPREAD = 2654435761


def sender_ids(node: SimulatedNode) -> Iterator[int]:
    """Distinct node numbers, none of them the node's own, a known user or broadcast."""
    reserved = {0, 0xFFFFFFFF, node.node_num, *node.users}
    i = 0
    while True:
        i += 1
        num = (0x0BAD0000 + i * _SPREAD) & 0xFFFFFFFF
        if num not in reserved:
            yield num


def spoofed_packet(node: SimulatedNode, num: int, kind: int) -> mesh_pb2.MeshPacket:
    """A text, a position or a NodeInfo (with a public key) from `num`."""
    packet = node.user_packet(num, f"hello from {num:08x}")
    if kind == 1:
        position = mesh_pb2.Position(latitude_i=450000000 + num % 1000, longitude_i=48000000, altitude=170)
        packet.decoded.portnum = portnums_pb2.PortNum.POSITION_APP
        packet.decoded.payload = position.SerializeToString()
    elif kind == 2:
        user = mesh_pb2.User(
            id=f"!{num:08x}", long_name=f"Spoofed {num:08x}", short_name=f"{num & 0xFFFF:04x}", public_key=os.urandom(32)
        )
        packet.decoded.portnum = portnums_pb2.PortNum.NODEINFO_APP
        packet.decoded.payload = user.SerializeToString()
    return packet


def ping_round_trip(node: SimulatedNode, text: str = "/ping", timeout: float = 60.0) -> float:
    """Seconds from a DM command delivered to the bot's reply read back.

    Under a flood the bot drops packets it cannot take (that is the bound being measured),
    and the command may be one of them: it is sent again, as a new packet, every 5 s.
    """
    before = len(node.texts)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sent_at = time.monotonic()
        if not node.deliver(node.user_packet(_PINGER, text, dm=True)):
            raise RuntimeError("the bot is not connected")
        texts = node.wait_texts(before + 1, min(5.0, max(0.1, deadline - sent_at)))
        if len(texts) > before:
            return texts[before].at - sent_at
    raise RuntimeError(f"no reply to {text} within {timeout:.0f} s")


def run(quick: bool = False, checkpoints: tuple[int, ...] = ()) -> list[Row]:
    checkpoints = checkpoints or ((20_000,) if quick else (100_000, 1_000_000))
    rows: list[Row] = []
    with SimulatedNode(firmware_version="2.6.11") as node:
        proc = start_bot(node.port, **SETTINGS)
        try:
            if not node.wait_connected(20):
                raise RuntimeError("bot did not connect: " + (proc.stderr.read() if proc.stderr else ""))
            ping_round_trip(node)
            # Warm up the code paths (and the allocator) with the known users first.
            warm = [spoofed_packet(node, num, i % 3) for i, num in enumerate(list(node.users) * 300)]
            node.deliver_many(warm)
            ping_round_trip(node)
            baseline = rss_mb(proc.pid)
            rows.append(Row(NAME, "RSS before the spoofed senders", baseline, "MB"))
            ids = sender_ids(node)
            sent = 0
            started = time.monotonic()
            for target in checkpoints:
                while sent < target:
                    count = min(_BATCH, target - sent)
                    batch = [spoofed_packet(node, next(ids), (sent + i) % 3) for i in range(count)]
                    if not node.deliver_many(batch):
                        raise RuntimeError("the bot lost its link during the run")
                    sent += count
                    ping_round_trip(node)
                growth = rss_mb(proc.pid) - baseline
                rate = sent / (time.monotonic() - started)
                rows += [
                    Row(NAME, f"RSS growth after {target:,} distinct senders", growth, "MB",
                        f"<= {_GROWTH_TARGET_MB:g}", growth <= _GROWTH_TARGET_MB),
                    Row(NAME, f"packets per second taken, up to {target:,}", rate, "/s"),
                ]
                print(f"{target:,} senders: RSS growth {growth:.1f} MB, {rate:.0f} packets/s", flush=True)
            latencies = [ping_round_trip(node, "/nodes") for _ in range(5)]
            rows.append(Row(NAME, f"/nodes latency after {sent:,} senders, worst of 5", max(latencies) * 1000, "ms"))
        finally:
            stop_bot(proc)
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 000 senders only")
    parser.add_argument("--senders", default="", help="checkpoints, comma-separated (default 100000,1000000)")
    args = parser.parse_args()
    points = tuple(int(x) for x in args.senders.split(",") if x)
    print_table(run(args.quick, points))
