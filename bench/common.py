"""Shared helpers for the benchmarks: the bot as a real subprocess, /proc readings, the table."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class Row:
    """One figure of the table."""

    bench: str
    metric: str
    value: float
    unit: str
    target: str = ""
    ok: Optional[bool] = None

    def cells(self) -> list[str]:
        mark = "" if self.ok is None else ("ok" if self.ok else "MISSED")
        return [self.bench, self.metric, f"{self.value:,.3f}".rstrip("0").rstrip("."), self.unit, self.target, mark]


def print_table(rows: list[Row]) -> None:
    header = ["bench", "metric", "value", "unit", "target", ""]
    table = [header] + [r.cells() for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for i, row in enumerate(table):
        print("  ".join(cell.ljust(w) if j != 2 else cell.rjust(w) for j, (cell, w) in enumerate(zip(row, widths))))
        if i == 0:
            print("  ".join("-" * w for w in widths))


def start_bot(port: int, **settings: Any) -> subprocess.Popen:
    """The real daemon, `main.py`, in its own process, against 127.0.0.1:port.

    Each bot gets a fresh STATE_DIR: the simulated node's packet ids repeat from run to run,
    so a shared one would make a run take its commands for ones a previous run answered.
    """
    values = dict(NODE_HOST="127.0.0.1", NODE_PORT=port, LOG_LEVEL="WARNING")
    values["STATE_DIR"] = tempfile.mkdtemp(prefix="meshbot-bench-state-")
    values.update(settings)
    config = tempfile.NamedTemporaryFile("w", suffix=".py", delete=False)
    config.write("".join(f"{k} = {v!r}\n" for k, v in values.items()))
    config.close()
    return subprocess.Popen(
        [sys.executable, str(ROOT / "main.py"), "--config", config.name],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def kill_and_restart(proc: subprocess.Popen) -> subprocess.Popen:
    """SIGKILL the bot, then start it again with the same config file, hence the same
    STATE_DIR (what a crash and systemd's Restart= do)."""
    proc.kill()
    proc.wait(10)
    return subprocess.Popen(proc.args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def stop_bot(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def rss_mb(pid: int) -> float:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE / 1e6


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))
    return ordered[index]


def wait_for(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return False


def ping_latencies(node: Any, count: int, gap_s: float = 0.0) -> list[float]:
    """Seconds from each /ping frame the simulated node writes to the bot to the bot's reply
    read back (by DM and on ch0 in turn, from three users); `gap_s` between pings."""
    latencies = []
    for i in range(count):
        before = len(node.texts)
        packet = node.user_packet(0x1A2B3C01 + i % 3, "/ping", dm=i % 2 == 0)
        sent_at = time.monotonic()
        node.deliver(packet)
        texts = node.wait_texts(before + 1, 10)
        if len(texts) <= before:
            raise RuntimeError("the bot did not answer a /ping within 10 s")
        latencies.append(texts[before].at - sent_at)
        if gap_s:
            time.sleep(gap_s)
    return latencies
