"""A node that hangs with a command kept for its client: is the command answered after it resumes?

    python bench/bench_hang.py --runs 20 --hang 30

Measured on meshtasticd 2.7.13: while the node's process was stopped, every reconnect
attempt still completed at TCP level (the kernel's listen backlog) and was abandoned
after the handshake timeout; when the node resumed it served those connections in turn,
handed the kept command to an abandoned one, and the bot never saw it (2 runs of 5).

The simulated node reproduces that (see test_simnode's abandoned-handshake test): the bot
before issue 9 (5823580) lost the command in 10 runs of 10 here. The bot now waits on its one
connection while it lives, gives it up only after LINK_TIMEOUT_S without a frame, and then
says `disconnect` first, so the node closes that session when it reads its backlog.

Each run: the bot (in this process, link settings short enough that the link dies during
the hang: 2 s probes, 6 s link timeout, 5 s handshake timeout) is up; the simulated node
hangs for `--hang` seconds; a user's DM `/ping` arrives meanwhile and is kept for the
client; the run counts when the pong reaches the node after the node resumes. Runs go
five at a time, each with its own node and bot on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import logging
import sys
import time
from typing import Optional

from common import Row, print_table

from meshbot.app import Bot
from meshbot.config import build_settings
from meshbot.sim.node import SimulatedNode

_USER = 0x1A2B3C01
_PARALLEL = 5


def one_run(hang_s: float) -> tuple[Optional[float], int]:
    """(seconds from the node's resume to the pong, or None if lost; connections opened during the hang)."""
    with SimulatedNode() as node:
        settings = build_settings(
            dict(NODE_HOST=node.host, NODE_PORT=node.port, PROBE_INTERVAL_S=2.0, LINK_TIMEOUT_S=6.0, CONNECT_TIMEOUT_S=5.0)
        )
        bot = Bot(settings)
        bot.start()
        try:
            if not node.wait_connected(10):
                return None, 0
            before = node.counters.connections
            node.hang(hang_s)
            resumes_at = time.monotonic() + hang_s
            command = node.user_text(_USER, "/ping", dm=True)
            deadline = resumes_at + 30.0
            while time.monotonic() < deadline:
                reply = next((t for t in node.texts if t.reply_id == command), None)
                if reply is not None:
                    return max(0.0, reply.at - resumes_at), node.counters.connections - before
                time.sleep(0.05)
            return None, node.counters.connections - before
        finally:
            bot.stop(budget_s=2.0)


def run(quick: bool = False, runs: Optional[int] = None, hang_s: Optional[float] = None) -> list[Row]:
    """For run_all.py: 20 runs of a 30 s hang (about 2.5 min), or 5 of 10 s with --quick."""
    runs = runs if runs is not None else (5 if quick else 20)
    hang_s = hang_s if hang_s is not None else (10.0 if quick else 30.0)
    with concurrent.futures.ThreadPoolExecutor(_PARALLEL) as pool:
        results = list(pool.map(lambda _: one_run(hang_s), range(runs)))
    answered = [latency for latency, _ in results if latency is not None]
    connections = max(count for _, count in results)
    return [
        Row("hang", f"node hung {hang_s:g} s with a command kept: runs answered", len(answered), f"of {runs}",
            f"= {runs}", len(answered) == runs),
        Row("hang", "max time from resume to the reply", max(answered) if answered else float("nan"), "s"),
        Row("hang", "most connections opened during one hang (one at a time, each left with a disconnect)", connections, ""),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--hang", type=float, default=30.0, metavar="S")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # five bots' "waiting on this connection" lines are expected
    rows = run(runs=args.runs, hang_s=args.hang)
    print_table(rows)
    return 0 if all(r.ok is not False for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
