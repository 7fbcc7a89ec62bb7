"""Attack benchmark: forged sender ids at one command a second, against the airtime budget.

    python bench/bench_attack.py [--minutes 10] [--quick]

The real daemon (`main.py`, its own process, default settings: AIRTIME_BUDGET_PCT 5,
2.5 s between texts, pacing by airtime) against the simulated node on LONG_FAST with the
firmware's 2 s text limit on, and the fake Open-Meteo for `/forecast`. Every second a new
node id, never announced (no NodeInfo: a stranger), sends `/forecast Nice` on channel 0:
the cheapest abuse on a mesh, and the one that kept the bot on the air 72 % of the time
before the budget (issue 10). Each minute an honest node of the node DB sends `/ping` by
DM; its reply latency is printed.

Figures: the bot's time on air (computed from each text the node accepted, with the
preset's airtime) in the worst rolling hour of the run, in seconds and as a share of the
hour's budget; texts to strangers; the honest node's latencies; WARNING lines. Everything
stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import re
import sys
import threading
import time
from typing import Optional

from common import Row, percentile, print_table, start_bot, stop_bot

from meshbot.config import Settings
from meshbot.outbox.budget import SPREAD_RATE, SPREAD_WINDOW_S
from meshbot.link.airtime import PRESETS, RadioParams
from meshbot.sim.node import SimulatedNode, SimUser
from meshbot.sim.weather import FakeOpenMeteo
from meshbot.text import utf8_len

NAME = "attack"
HOUR = 3600.0
HONEST = SimUser(0x4F4E4553, "HON", "Honest user")
_FIRST_FORGED = 0x0BAD0000
_PING_EVERY_S = 60.0
_PING_TIMEOUT_S = 60.0


class BotLog:
    """The bot's stderr lines (read on a thread so that the pipe never fills)."""

    def __init__(self, stream) -> None:  # type: ignore[no-untyped-def]
        self.lines: list[str] = []
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream) -> None:  # type: ignore[no-untyped-def]
        for line in stream:
            self.lines.append(line.rstrip("\n"))

    def matching(self, pattern: str) -> list[str]:
        return [line for line in list(self.lines) if re.search(pattern, line)]


def worst_window(texts: list[tuple[float, float]], window: float = HOUR) -> float:
    """The most airtime any rolling window holds: (start, seconds) per text, overlaps exact."""
    if not texts:
        return 0.0
    edges = {t for at, d in texts for t in (at, at + d, at + window, at + d + window)}

    def held(end: float) -> float:
        return sum(max(0.0, min(at + d, end) - max(at, end - window)) for at, d in texts)

    return max(held(end) for end in edges)


def run(quick: bool = False, minutes: Optional[float] = None) -> list[Row]:
    minutes = minutes if minutes is not None else (1.5 if quick else 3.0)
    radio = RadioParams("LONG_FAST", *PRESETS["LONG_FAST"])
    budget_pct = Settings().AIRTIME_BUDGET_PCT
    budget_s = HOUR * budget_pct / 100
    latencies: list[float] = []
    unanswered = 0
    forged = 0
    with FakeOpenMeteo() as api, SimulatedNode(users=(HONEST,), modem_preset="LONG_FAST") as node:
        proc = start_bot(node.port, LOG_LEVEL="INFO", WEATHER_API_URL=api.forecast_url, GEOCODING_API_URL=api.geocoding_url)
        log = BotLog(proc.stderr)
        try:
            if not node.wait_connected(30):
                raise RuntimeError("the bot never connected")
            started = time.monotonic()
            end = started + minutes * 60
            next_ping = started + 30.0
            pending: Optional[tuple[int, float]] = None  # the honest /ping waiting for its reply
            while time.monotonic() < end or pending is not None:
                now = time.monotonic()
                if now < end:
                    node.deliver(node.user_packet(_FIRST_FORGED + forged, "/forecast Nice", channel=0))
                    forged += 1
                if pending is None and now >= next_ping and now < end:
                    packet = node.user_packet(HONEST, "/ping", dm=True)
                    node.deliver(packet)
                    pending = (packet.id, now)
                    next_ping += _PING_EVERY_S
                if pending is not None:
                    reply = next((t for t in list(node.texts) if t.reply_id == pending[0]), None)
                    if reply is not None:
                        latencies.append(reply.at - pending[1])
                        pending = None
                    elif now - pending[1] > _PING_TIMEOUT_S:
                        unanswered += 1
                        pending = None
                time.sleep(max(0.0, 1.0 - (time.monotonic() - now)))
            duration = time.monotonic() - started
        finally:
            stop_bot(proc)
    texts = list(node.texts)
    on_air = [(t.at, radio.airtime_s(utf8_len(t.text))) for t in texts]
    worst = worst_window(on_air)
    worst_spread = worst_window(on_air, SPREAD_WINDOW_S)
    spread_s = budget_s * SPREAD_RATE * SPREAD_WINDOW_S / HOUR
    worst_minute = worst_window(on_air, 60.0)
    to_strangers = [t for t in texts if t.to != HONEST.num]
    stranger_air = sum(radio.airtime_s(utf8_len(t.text)) for t in to_strangers)
    warnings = [line for line in log.lines if " WARNING " in line]
    errors = [line for line in log.lines if " ERROR " in line or "Traceback" in line]
    for line in errors[:5]:
        print("bot:", line, file=sys.stderr)
    rows = [
        Row(NAME, f"run on LONG_FAST, 1 forged id/s sending /forecast ({forged} commands)", duration / 60, "min"),
        Row(NAME, "texts the node accepted from the bot", len(texts), ""),
        Row(NAME, "texts to strangers (forged ids; one text each at most)", len(to_strangers), ""),
        Row(NAME, "bot airtime, worst rolling hour of the run", worst, "s", f"<= {budget_s:g}", worst <= budget_s + 1e-6),
        Row(NAME, f"  as % of the hour's budget (AIRTIME_BUDGET_PCT {budget_pct:g})", 100 * worst / budget_s, "%"),
        Row(NAME, "  as % of the run's own duration (channel share while attacked)", 100 * worst / duration, "%"),
        Row(NAME, "bot airtime, worst 10 minutes (the budget's spread)", worst_spread, "s",
            f"<= {spread_s:g}", worst_spread <= spread_s + 1e-6),
        Row(NAME, "bot airtime, worst minute (as % of the minute)", 100 * worst_minute / 60.0, "%"),
        Row(NAME, "airtime of texts to strangers (share: half the budget)", stranger_air, "s",
            f"<= {budget_s / 2:g}", stranger_air <= budget_s / 2 + 1e-6),
        Row(NAME, f"honest DM /ping answered during the attack ({len(latencies)} of {len(latencies) + unanswered})",
            len(latencies), "", f"= {len(latencies) + unanswered}", unanswered == 0 and bool(latencies)),
    ]
    if latencies:
        rows.append(Row(NAME, "  honest /ping latency, median", percentile(latencies, 50), "s"))
        rows.append(Row(NAME, "  honest /ping latency, max", max(latencies), "s"))
        print("honest /ping latencies (s):", " ".join(f"{v:.1f}" for v in latencies), file=sys.stderr)
    rows.append(Row(NAME, "WARNING lines in the bot's log", len(warnings), ""))
    rows.append(Row(NAME, "ERROR lines or tracebacks in the bot's log", len(errors), "", "0", not errors))
    for line in warnings[:8]:
        print("bot:", line, file=sys.stderr)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    args = parser.parse_args()
    rows = run(minutes=args.minutes)
    print_table(rows)
    return 0 if all(r.ok is not False for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
