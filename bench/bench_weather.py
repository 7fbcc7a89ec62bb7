"""Weather benchmark: cached /weather latency, and HTTP requests when a crowd asks about a few places.

    python bench/bench_weather.py [--quick]

The bot (`main.py`) runs in its own process against the simulated node; its
WEATHER_API_URL and GEOCODING_API_URL point at the fake Open-Meteo
(`meshbot/sim/weather.py`) in this process, on 127.0.0.1. Pacing is off, as in
bench_core, so the figures are the bot's own cost.

* HTTP requests: 20 nodes (4 near each of 5 places) send 100 /weather commands in one
  burst, naming the place by a node's short name or by `lat,lon` a few hundred metres
  apart. Every place is fetched once: the cache is keyed by coordinates rounded to
  0.01°, and concurrent misses share one request (single-flight). A second burst names
  5 other places by name, in any case: one geocoding request and one forecast each.
* Latency: /weather answered from the cache, from the frame written to the bot to its
  reply frame read back, against /ping in the same run for reference.
"""

from __future__ import annotations

import argparse
import random
import time

from common import Row, percentile, print_table, start_bot, stop_bot

from meshbot.sim.node import SimulatedNode, SimUser
from meshbot.sim.weather import FORECAST_PATH, SEARCH_PATH, FakeOpenMeteo

NAME = "weather"
# A burst of 100 replies would overflow the default outbox (50: the oldest are dropped,
# by design, on a real mesh where they would wait minutes): room for all of them here.
SETTINGS = dict(
    MIN_TEXT_INTERVAL_S=0.0, PACE_BY_AIRTIME=False, RATE_LIMIT_COUNT=10_000, HANDLER_THREADS=4, OUTBOX_MAX=200,
    AIRTIME_BUDGET_PCT=100.0,
)
# The bot's own cost is measured here, not the radio's: no 2 s text limit, and a TX queue
# that empties at once (with the default 0.2 s per packet, replies faster than 80/s fill
# its 16 slots and the library then waits for a queueStatus that a real radio never sends).
NODE = dict(firmware_version="2.6.11", tx_time_s=0.0)  # no 2 s limit: the bot is measured, not the firmware
# Centres of five 0.01° cells (Annecy, Bordeaux, Nantes, Lille, Toulouse); nodes sit
# within 0.004° (~400 m) of them, so each group's positions round to its centre. None
# is in the cell of a named place below, which would be answered from the cache.
PLACES = ((45.9, 6.12), (44.84, -0.58), (47.22, -1.55), (50.63, 3.06), (43.6, 1.44))
NAMED = ("Nice", "tokyo", "SYDNEY", "Portland", "london")  # known to the fake geocoder
NODES_PER_PLACE = 4
COMMANDS = 100


def crowd(rnd: random.Random) -> list[SimUser]:
    """20 nodes, 4 around each place, with short names N01..N20."""
    users = []
    for i in range(len(PLACES) * NODES_PER_PLACE):
        lat, lon = PLACES[i % len(PLACES)]
        position = (lat + rnd.uniform(-0.004, 0.004), lon + rnd.uniform(-0.004, 0.004))
        users.append(SimUser(0x2B000001 + i, f"N{i + 1:02d}", f"Node {i + 1}", position=position))
    return users


def place_words(users: list[SimUser], rnd: random.Random) -> list[str]:
    """What each of the 100 commands names: a node's short name, or coordinates near a place."""
    words = []
    for k in range(COMMANDS):
        place = k % len(PLACES)
        if k % 2 == 0:
            words.append(users[place + len(PLACES) * rnd.randrange(NODES_PER_PLACE)].short_name)
        else:
            lat, lon = PLACES[place]
            words.append(f"{lat + rnd.uniform(-0.004, 0.004):.4f},{lon + rnd.uniform(-0.004, 0.004):.4f}")
    return words


def burst(node: SimulatedNode, users: list[SimUser], places: list[str]) -> list[str]:
    """All commands at once (users taking turns); the bot's replies, in the order they came."""
    before = len(node.texts)
    packets = [node.user_packet(users[k % len(users)], f"/weather {place}") for k, place in enumerate(places)]
    node.deliver_many(packets)
    texts = node.wait_texts(before + len(packets), 30)[before:]
    if len(texts) != len(packets):
        raise RuntimeError(f"{len(texts)} replies to {len(packets)} commands")
    return [t.text for t in texts]


def check_answers(replies: list[str]) -> None:
    failed = [r for r in replies if r.startswith(("weather:", "usage:", "sorry"))]
    if failed:
        raise RuntimeError(f"{len(failed)} commands failed, e.g. {failed[0]!r}")


def latencies(node: SimulatedNode, users: list[SimUser], texts: list[str], count: int) -> tuple[list[float], list[str]]:
    """Seconds from a command frame written to the bot to its reply frame read back; the replies."""
    result, replies_seen = [], []
    for i in range(count):
        before = len(node.texts)
        packet = node.user_packet(users[i % len(users)], texts[i % len(texts)], dm=i % 2 == 0)
        sent_at = time.monotonic()
        node.deliver(packet)
        replies = node.wait_texts(before + 1, 10)
        if len(replies) <= before:
            raise RuntimeError(f"no reply to {texts[i % len(texts)]!r}")
        result.append(replies[before].at - sent_at)
        replies_seen.append(replies[before].text)
    return result, replies_seen


def run(quick: bool = False) -> list[Row]:
    rnd = random.Random(4403)
    users = crowd(rnd)
    rows: list[Row] = []
    with FakeOpenMeteo() as api, SimulatedNode(**NODE, users=tuple(users)) as node:
        proc = start_bot(
            node.port, WEATHER_API_URL=api.forecast_url, GEOCODING_API_URL=api.geocoding_url, **SETTINGS
        )
        try:
            if not node.wait_connected(20):
                raise RuntimeError("bot did not connect: " + (proc.stderr.read() if proc.stderr else ""))
            time.sleep(0.5)

            by_position = place_words(users, rnd)
            check_answers(burst(node, users, by_position))
            requests = api.count()
            rows.append(
                Row(NAME, f"HTTP requests, {COMMANDS} /weather from {len(users)} nodes about 5 places", requests, "", "= 5", requests == 5)
            )
            by_name = [NAMED[k % len(NAMED)] for k in range(COMMANDS)]
            check_answers(burst(node, users, by_name))
            search, forecast = api.count(SEARCH_PATH), api.count(FORECAST_PATH) - requests
            rows.append(
                Row(NAME, f"HTTP requests, {COMMANDS} /weather about 5 places by name (geocoding + forecast)",
                    search + forecast, "", "= 10", (search, forecast) == (5, 5))
            )

            count = 50 if quick else 200
            cached = [f"/weather {w}" for w in by_position[:10] + by_name[:5]]
            before = api.count()
            weather, answers = latencies(node, users, cached, count)
            check_answers(answers)
            if api.count() != before:
                raise RuntimeError("the latency run was not served from the cache")
            ping, _ = latencies(node, users, ["/ping"], count)
            for label, values, target in (("cached /weather", weather, True), ("/ping, same run", ping, False)):
                p50, p99 = percentile(values, 50) * 1000, percentile(values, 99) * 1000
                rows.append(Row(NAME, f"{label} bot-added latency p50 (n={len(values)})", p50, "ms"))
                rows.append(
                    Row(NAME, f"{label} bot-added latency p99 (n={len(values)})", p99, "ms",
                        "<= 5" if target else "", (p99 <= 5) if target else None)
                )
        finally:
            stop_bot(proc)
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer latency samples")
    print_table(run(parser.parse_args().quick))
