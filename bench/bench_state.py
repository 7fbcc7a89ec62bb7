"""State benchmark: what durability costs a `send()`, and how long a start-up takes to load.

    python bench/bench_state.py [--quick]

In this process, no node: `MessageSender.send()` of a one-text reply with its command's key
(the router's call), once with the state in SQLite (STATE_DIR in a temporary directory,
WAL, synchronous=NORMAL) and once in memory (':memory:'), outbox drained between calls
so OUTBOX_MAX never drops. Then the store alone: marking a text accepted (`done`), and
opening a database holding a full outbox (OUTBOX_MAX texts) and 10,000 answered commands,
as a restart does. The figures are for this machine's disk; a Pi's SD card writes slower,
but no call here waits for the card (no fsync in WAL with synchronous=NORMAL, except at
checkpoints).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from common import Row, percentile, print_table

from meshbot.config import build_settings
from meshbot.link.owner import NodeLink
from meshbot.outbox.sender import MessageSender
from meshbot.state.store import StateStore, StoredText

NAME = "state"


def _send_latencies(state_dir: str, count: int) -> list[float]:
    settings = build_settings({"NODE_HOST": "127.0.0.1", "STATE_DIR": state_dir})
    store = StateStore(None if state_dir == ":memory:" else Path(state_dir), settings.DEDUP_WINDOW_S)
    store.open()
    link = NodeLink(settings, lambda packet: None)  # never started: send() only queues
    sender = MessageSender(settings, link, state=store)
    times = []
    for i in range(count):
        started = time.perf_counter()
        sender.send(f"pong {i}: SNR 7.5 dB, RSSI -71 dBm, direct", to=0x1A2B3C01, reply_to=i + 1, answers=(0x1A2B3C01, i + 1))
        times.append(time.perf_counter() - started)
        # Drain as the node's acceptance would, so that the outbox stays small.
        with sender._cond:  # noqa: SLF001 - a benchmark reaching in on purpose
            item = sender._queue.popleft()  # noqa: SLF001
            store.done([item.row], "sent")
    store.close()
    return times


def _store_figures(directory: Path, outbox: int, answered: int) -> tuple[list[float], float, int]:
    store = StateStore(directory, answered_window_s=86400)
    store.open()
    texts = [StoredText(f"text {i} " + "x" * 150, 0xFFFFFFFF, 0, None, time.time()) for i in range(outbox)]
    store.enqueue(texts)
    for i in range(answered):
        store.answered((0x2B000000 + i % 50, i + 1))
    done_times = []
    extra = [StoredText(f"extra {i}", 0xFFFFFFFF, 0, None, time.time()) for i in range(200)]
    store.enqueue(extra)
    for item in extra:
        started = time.perf_counter()
        store.done([item.row], "sent")
        done_times.append(time.perf_counter() - started)
    store.close()
    started = time.perf_counter()
    again = StateStore(directory, answered_window_s=86400)
    again.open()
    loaded = len(again.pending()) + len(again.answered_since(86400)) + len(again.counters())
    open_s = time.perf_counter() - started
    again.close()
    size = sum(p.stat().st_size for p in directory.iterdir())
    assert loaded >= outbox + answered
    return done_times, open_s, size


def run(quick: bool = False) -> list[Row]:
    count = 300 if quick else 2000
    with tempfile.TemporaryDirectory(prefix="meshbot-bench-state-") as tmp:
        durable = _send_latencies(str(Path(tmp) / "send"), count)
        memory = _send_latencies(":memory:", count)
        done_times, open_s, size = _store_figures(Path(tmp) / "load", 50, 10_000)
    ms = 1000.0
    return [
        Row(NAME, f"send() p50, state in SQLite ({count} replies)", percentile(durable, 50) * ms, "ms"),
        Row(NAME, "send() p99, state in SQLite", percentile(durable, 99) * ms, "ms", "<= 5", percentile(durable, 99) <= 0.005),
        Row(NAME, "send() p50, state in memory", percentile(memory, 50) * ms, "ms"),
        Row(NAME, "text accepted: done() p99", percentile(done_times, 99) * ms, "ms"),
        Row(NAME, "start-up: open + load 50 texts and 10,000 answered keys", open_s * ms, "ms", "<= 500", open_s <= 0.5),
        Row(NAME, "database size with those", size / 1e6, "MB"),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    rows = run(parser.parse_args().quick)
    print_table(rows)
    return 0 if all(r.ok is not False for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
