"""Router benchmark: inbound packets/s the bot absorbs, and /ping latency under chatter.

    python bench/bench_router.py [--quick]

The bot (`main.py`) runs in its own process against the simulated node on 127.0.0.1,
with pacing off (the 2 s firmware limit would otherwise be all we measure) and the
per-sender rate limit raised (here we measure throughput, not the limiter).

* Absorbed rate: for each offered rate, 3 s of mixed traffic (80 % chatter, 20 %
  commands from 50 senders); the rate is absorbed when every command's reply has
  arrived within 0.5 s of the last packet offered, i.e. no queue grew.
* /ping p99 under load: 200 sequential /ping while 200 chatter packets/s flow.
"""

from __future__ import annotations

import argparse
import threading
import time

from common import Row, cpu_seconds, percentile, print_table, start_bot, stop_bot

from meshbot.sim.node import SimulatedNode

NAME = "router"
SETTINGS = dict(
    MIN_TEXT_INTERVAL_S=0.0, PACE_BY_AIRTIME=False, RATE_LIMIT_COUNT=10_000, OUTBOX_MAX=10_000, AIRTIME_BUDGET_PCT=100.0
)
# The bot's own cost is measured here, not the radio's: no 2 s text limit, and a TX queue
# that empties at once (with the default 0.2 s per packet, replies faster than 80/s fill
# its 16 slots and the library then waits for a queueStatus that a real radio never sends).
NODE = dict(firmware_version="2.6.11", tx_time_s=0.0)  # no 2 s limit: the bot is measured, not the firmware
COMMANDS = ("/ping", "/help", "/status", "/nodes", "/echo benchmark")
SENDERS = [0x2B000000 + i for i in range(50)]
_TICK_S = 0.01


def offer(node: SimulatedNode, rate: float, seconds: float) -> tuple[set[int], float, float]:
    """Deliver `rate` packets/s for `seconds`; return the command ids, the end time, the rate achieved."""
    commands: set[int] = set()
    per_tick = rate * _TICK_S
    owed, n = 0.0, 0
    start = time.monotonic()
    tick = start
    while tick - start < seconds:
        owed += per_tick
        batch = []
        while owed >= 1:
            owed -= 1
            sender = SENDERS[n % len(SENDERS)]
            if n % 5 == 0:
                packet = node.user_packet(sender, COMMANDS[(n // 5) % len(COMMANDS)], channel=n % 2)
                commands.add(packet.id)
            else:
                packet = node.user_packet(sender, f"chatter {n}: anyone copy on the north ridge?", channel=n % 2)
            batch.append(packet)
            n += 1
        node.deliver_many(batch)
        tick += _TICK_S
        time.sleep(max(0.0, tick - time.monotonic()))
    ended = time.monotonic()
    return commands, ended, n / (ended - start)


def absorbed(node: SimulatedNode, rate: float, seconds: float) -> tuple[bool, float, float]:
    """Whether the bot kept up, how long after the load its last reply came, the rate achieved."""
    replied_before = len(node.texts)
    commands, ended, achieved = offer(node, rate, seconds)
    deadline = ended + 10
    while time.monotonic() < deadline:
        answered = {t.reply_id for t in node.texts[replied_before:]} & commands
        if len(answered) == len(commands):
            break
        time.sleep(0.01)
    last = max((t.at for t in node.texts[replied_before:] if t.reply_id in commands), default=deadline)
    lag = max(0.0, last - ended)
    return len(answered) == len(commands) and lag <= 0.5, lag, achieved


def chatter(node: SimulatedNode, rate: float, stop: threading.Event) -> None:
    n = 0
    while not stop.is_set():
        node.deliver(node.user_packet(SENDERS[n % len(SENDERS)], f"chatter {n} on the mesh tonight"))
        n += 1
        stop.wait(1 / rate)


def run(quick: bool = False) -> list[Row]:
    rows: list[Row] = []
    with SimulatedNode(**NODE) as node:
        proc = start_bot(node.port, **SETTINGS)
        try:
            if not node.wait_connected(20):
                raise RuntimeError("bot did not connect")
            time.sleep(0.5)
            best, seconds = 0.0, 1.0 if quick else 3.0
            for rate in (250, 500, 1000, 2000, 4000, 8000):
                cpu0 = cpu_seconds(proc.pid)
                ok, lag, achieved = absorbed(node, rate, seconds)
                cpu = (cpu_seconds(proc.pid) - cpu0) / seconds * 100
                verdict = "kept up" if ok else "fell behind"
                rows.append(Row(NAME, f"offered {achieved:.0f} pkt/s: reply lag after the load ({verdict})", lag * 1000, "ms"))
                rows.append(Row(NAME, f"offered {achieved:.0f} pkt/s: bot CPU", cpu, "% core"))
                if not ok:
                    break
                best = achieved
                time.sleep(1.0)
            rows.append(Row(NAME, "inbound packets/s absorbed (20 % commands)", best, "pkt/s", ">= 500", best >= 500))

            stop = threading.Event()
            load = threading.Thread(target=chatter, args=(node, 200.0, stop), daemon=True)
            load.start()
            latencies = []
            try:
                for i in range(50 if quick else 200):
                    before = len(node.texts)
                    packet = node.user_packet(SENDERS[i % len(SENDERS)], "/ping")
                    sent = time.monotonic()
                    node.deliver(packet)
                    deadline = sent + 5
                    reply = None
                    while reply is None and time.monotonic() < deadline:
                        reply = next((t for t in node.texts[before:] if t.reply_id == packet.id), None)
                        time.sleep(0.0005)
                    if reply is None:
                        raise RuntimeError("a /ping went unanswered under load")
                    latencies.append(reply.at - sent)
                    time.sleep(0.01)
            finally:
                stop.set()
                load.join()
            p50, p99 = percentile(latencies, 50) * 1000, percentile(latencies, 99) * 1000
            rows.append(Row(NAME, f"/ping p50 under 200 chatter pkt/s (n={len(latencies)})", p50, "ms"))
            rows.append(Row(NAME, f"/ping p99 under 200 chatter pkt/s (n={len(latencies)})", p99, "ms", "<= 10", p99 <= 10))
        finally:
            stop_bot(proc)
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 s per offered rate, 50 pings")
    print_table(run(parser.parse_args().quick))
