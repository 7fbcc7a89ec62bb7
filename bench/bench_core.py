"""Daemon-core benchmark: latency, interface CPU (optimized vs stock), RSS, idle CPU, reconnect.

    python bench/bench_core.py [--quick]

Everything runs on 127.0.0.1: the simulated node in this process, the bot (`main.py`)
and the interface workers in their own processes, so their CPU is measured alone.
Pacing is off (MIN_TEXT_INTERVAL_S = 0, PACE_BY_AIRTIME = False, no node rate limit) and
the per-sender command limit raised: the figures are the bot's own cost, not the 2 s the
firmware imposes between texts.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from common import ROOT, Row, cpu_seconds, percentile, ping_latencies, print_table, rss_mb, start_bot, stop_bot

from meshbot.sim.node import SimulatedNode

NAME = "core"
# Pacing, the per-sender limit and the airtime budget out of the way: 3 simulated users send
# thousands of commands.
SETTINGS = dict(MIN_TEXT_INTERVAL_S=0.0, PACE_BY_AIRTIME=False, RATE_LIMIT_COUNT=10_000, AIRTIME_BUDGET_PCT=100.0)
# The bot's own cost is measured here, not the radio's: no 2 s text limit, and a TX queue
# that empties at once (with the default 0.2 s per packet, replies faster than 80/s fill
# its 16 slots and the library then waits for a queueStatus that a real radio never sends).
NODE = dict(firmware_version="2.6.11", tx_time_s=0.0)  # no 2 s limit: the bot is measured, not the firmware


def bench_interface_cpu(kind: str, count: int) -> float:
    """CPU seconds the interface's process spends receiving `count` text packets."""
    with SimulatedNode(**NODE) as node:
        worker = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "iface_cpu.py"), kind, str(node.port), str(count)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert worker.stdout is not None
        assert worker.stdout.readline().strip() == "READY"
        users = list(node.users)
        batch = [node.user_packet(users[i % len(users)], f"chatter number {i} on the mesh tonight") for i in range(500)]
        for _ in range(count // len(batch)):
            node.deliver_many(batch)
        line = worker.stdout.readline().split()
        worker.wait(30)
    if not line or line[0] != "DONE":
        raise RuntimeError(f"{kind} interface worker failed: {line}")
    return float(line[1])


def bench_reconnect(node: SimulatedNode, rounds: int, outage_s: float) -> list[float]:
    """Seconds from the node listening again (after an outage) to the bot's handshake done."""
    times = []
    for _ in range(rounds):
        handshakes = node.counters.handshakes
        node.stop_listening(outage_s)
        if not node.wait_connected(60, handshakes=handshakes + 1):
            raise RuntimeError("the bot did not come back")
        assert node.listening_since is not None and node.handshake_at is not None
        times.append(node.handshake_at - node.listening_since)
        time.sleep(1.0)
    return times


def run(quick: bool = False) -> list[Row]:
    rows: list[Row] = []
    packets = 2000 if quick else 10_000

    # Interface CPU: the same 10 000 packets through each interface, in one run.
    optimized = bench_interface_cpu("optimized", packets)
    stock = bench_interface_cpu("stock", packets)
    ratio = optimized / stock
    rows += [
        Row(NAME, f"CPU per {packets} packets, OptimizedTCPInterface", optimized, "s"),
        Row(NAME, f"CPU per {packets} packets, stock TCPInterface", stock, "s"),
        Row(NAME, "CPU ratio optimized / stock", ratio, "", "<= 0.5", ratio <= 0.5),
    ]

    with SimulatedNode(**NODE) as node:
        proc = start_bot(node.port, **SETTINGS)
        try:
            if not node.wait_connected(20):
                raise RuntimeError("bot did not connect: " + (proc.stderr.read() if proc.stderr else ""))
            time.sleep(0.5)
            latencies = ping_latencies(node, 50 if quick else 200)
            p50, p99 = percentile(latencies, 50) * 1000, percentile(latencies, 99) * 1000
            rows += [
                Row(NAME, f"/ping bot-added latency p50 (n={len(latencies)})", p50, "ms"),
                Row(NAME, f"/ping bot-added latency p99 (n={len(latencies)})", p99, "ms", "<= 5", p99 <= 5),
            ]

            # RSS after 10 000 inbound packets: chatter with a /ping in every 10.
            users = list(node.users)
            batch = [
                node.user_packet(users[i % len(users)], "/ping" if i % 10 == 0 else f"chatter {i} about the weather")
                for i in range(500)
            ]
            replies_before = len(node.texts)
            for _ in range(packets // len(batch)):
                node.deliver_many(batch)
                time.sleep(0.05)
            node.wait_texts(replies_before + packets // 10, 60)
            rss = rss_mb(proc.pid)
            rows.append(Row(NAME, f"RSS after {packets} inbound packets", rss, "MB", "<= 60", rss <= 60))

            # Idle CPU while connected (heartbeats only).
            idle_s = 10.0 if quick else 60.0
            cpu0 = cpu_seconds(proc.pid)
            time.sleep(idle_s)
            idle = (cpu_seconds(proc.pid) - cpu0) / idle_s * 100
            rows.append(Row(NAME, f"idle CPU over {idle_s:.0f} s connected", idle, "% core", "<= 0.5", idle <= 0.5))

            ready = bench_reconnect(node, rounds=2 if quick else 5, outage_s=3.0)
            rows += [
                Row(NAME, f"node listening again -> bot ready, mean of {len(ready)}", sum(ready) / len(ready), "s"),
                Row(NAME, f"node listening again -> bot ready, max of {len(ready)}", max(ready), "s"),
            ]
            rows.append(Row(NAME, "TCP connections opened by the bot", node.counters.connections, "", f"= {1 + len(ready)}", node.counters.connections == 1 + len(ready)))
        finally:
            stop_bot(proc)
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer packets and a 10 s idle window")
    print_table(run(parser.parse_args().quick))
