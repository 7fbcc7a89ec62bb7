"""The receive path under junk from the node (issue 15, part 5): CPU and link for bytes that
never form a frame, and for packets the library's decoders choke on.

    python bench/bench_receive.py [--quick] [--root DIR]

The simulated node runs in this process; the bot (`main.py` of this checkout, or of
`--root`, e.g. `git worktree add /tmp/old <commit>` to compare) in its own. For each burst the
node writes it to the bot's connection, then a user sends /ping; the figures are the bot's
CPU seconds from the burst to the pong (from /proc, so the node's own work is not counted),
whether the pong came within `_PONG_CAP_S`, and whether the link had to reconnect.

1. **no line end**: 0.25, 0.5, 1 and 2 MB of printable bytes with no newline and no frame
   start (1 and 2 MB only with --quick);
2. **short lines**: 2 MB of 7-byte console lines;
3. **malformed packets**: 2,000 POSITION packets whose payload is no Position, then 2,000
   packets "from" the broadcast address.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import ROOT, Row, cpu_seconds, print_table, stop_bot, wait_for

from meshtastic.protobuf import portnums_pb2

from meshbot.sim.node import SimulatedNode

NAME = "receive"
_PONG_CAP_S = 60.0
_BYTE = b"A"


def _start(root: Path, node_port: int, stderr: Any) -> subprocess.Popen:
    """`main.py` of `root`, its own meshbot package first on the path; its log to the file
    `stderr` (a pipe nobody reads while the bot runs would stall a bot that logs a lot)."""
    values: dict[str, Any] = dict(
        NODE_HOST="127.0.0.1", NODE_PORT=node_port, LOG_LEVEL="WARNING", STATE_DIR=":memory:",
        LINK_TIMEOUT_S=20.0, PROBE_INTERVAL_S=5.0,
    )
    config = tempfile.NamedTemporaryFile("w", suffix=".py", delete=False)
    config.write("".join(f"{k} = {v!r}\n" for k, v in values.items()))
    config.close()
    return subprocess.Popen(
        [sys.executable, str(root / "main.py"), "--config", config.name],
        stdout=subprocess.DEVNULL, stderr=stderr, text=True, cwd=str(root),
    )


def _burst_then_ping(root: Path, label: str, burst: Any) -> list[Row]:
    """Start a bot, run `burst(node)`, then time a /ping; one bot per burst, so that one
    burst's backlog never counts against the next."""
    with SimulatedNode(firmware_version="2.7.13") as node, tempfile.TemporaryFile("w+") as log_file:
        proc = _start(root, node.port, log_file)
        try:
            if not node.wait_connected(30):
                raise RuntimeError("the bot never connected")
            wait_for(lambda: node.counters.heartbeats >= 1, 10)
            before_cpu = cpu_seconds(proc.pid)
            started = time.monotonic()
            burst(node)
            texts_before = len(node.texts)
            node.user_text(0x1A2B3C01, "/ping", dm=True)
            answered = wait_for(lambda: len(node.texts) > texts_before, _PONG_CAP_S)
            elapsed = time.monotonic() - started
            cpu = cpu_seconds(proc.pid) - before_cpu
            connections = node.counters.connections
        finally:
            stop_bot(proc)
            log_file.seek(0)
            errors = log_file.read()
    error_lines = sum(1 for line in errors.splitlines() if " ERROR " in line or line.startswith("Traceback"))
    return [
        Row(NAME, f"{label}: bot CPU to the pong", cpu, "s", "< 1", cpu < 1.0),
        Row(NAME, f"{label}: pong within {_PONG_CAP_S:.0f} s", 1.0 if answered else 0.0, "yes=1", "1", answered),
        Row(NAME, f"{label}: seconds to the pong (capped)", min(elapsed, _PONG_CAP_S), "s"),
        Row(NAME, f"{label}: connections (1 = no reconnect)", connections, "", "1", connections == 1),
        Row(NAME, f"{label}: ERROR or traceback lines", error_lines, "lines", "0", error_lines == 0),
    ]


def _noise(size: int) -> Any:
    return lambda node: node.noise(_BYTE * size)


def _short_lines(size: int) -> Any:
    line = b"12345\r\n"
    return lambda node: node.noise(line * (size // len(line)))


def _malformed(count: int) -> Any:
    def burst(node: SimulatedNode) -> None:
        for i in range(count):
            packet = node.user_packet(0x2000 + i, "x")
            packet.decoded.portnum = portnums_pb2.PortNum.POSITION_APP
            packet.decoded.payload = b"\xff\xff\xff"  # no Position: a truncated varint
            node.deliver(packet)
        for _ in range(count):
            packet = node.user_packet(0x3000, "hello")
            setattr(packet, "from", 0xFFFFFFFF)
            node.deliver(packet)

    return burst


def run(quick: bool = False, root: Path = ROOT) -> list[Row]:
    rows: list[Row] = []
    sizes = (1 << 20, 2 << 20) if quick else (1 << 18, 1 << 19, 1 << 20, 2 << 20)
    for size in sizes:
        rows += _burst_then_ping(root, f"{size / (1 << 20):g} MB, no line end", _noise(size))
    rows += _burst_then_ping(root, "2 MB of short lines", _short_lines(2 << 20))
    rows += _burst_then_ping(root, "2,000 bad POSITION + 2,000 from broadcast", _malformed(2000))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer sizes")
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout whose main.py runs (default: this one)")
    args = parser.parse_args()
    print_table(run(args.quick, args.root.resolve()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
