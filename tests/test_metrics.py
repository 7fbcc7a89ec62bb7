"""METRICS_LISTEN: the bot's Prometheus endpoint, scraped over HTTP on 127.0.0.1 and parsed
with prometheus_client's own parser, while users talk to the bot through the simulated node."""

from __future__ import annotations

import logging
import re
import socket
import time
import types
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Optional

import pytest
from meshtastic.protobuf import mesh_pb2, portnums_pb2, telemetry_pb2
from prometheus_client.parser import text_string_to_metric_families

from meshbot import handlers
from meshbot.metrics import MetricsServer, metrics_registry
from meshbot.config import ConfigError, build_settings
from meshbot.link.airtime import PRESETS, RadioParams
from meshbot.outbox.sender import DropReason
from meshbot.router import CommandContext, command
from meshbot.sim.node import BROADCAST_NUM, SimulatedNode, SimUser
from meshbot.text import utf8_len
from tests.conftest import wait_until

ALICE, BOB, CARL = 0x1A2B3C01, 0x1A2B3C02, 0x1A2B3C03

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(bot) -> tuple[str, Samples]:
    """GET the bot's endpoint; the raw text and {(sample name, sorted labels): value}."""
    host, port = bot.metrics.address
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as answer:
        assert answer.status == 200
        assert answer.headers["Content-Type"].startswith("text/plain")
        text = answer.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return text, samples


def value(samples: Samples, name: str, **labels: str) -> Optional[float]:
    return samples.get((name, tuple(sorted(labels.items()))))


def metric(bot, name: str, **labels: str) -> Optional[float]:
    return value(scrape(bot)[1], name, **labels)


def replies_to(node: SimulatedNode, packet_id: int) -> list:
    return [t for t in node.texts if t.reply_id == packet_id]


def slow_and_failing_module() -> types.ModuleType:
    """Two test commands: one that takes 50 ms (a bucket to land in) and answers nothing
    (texts are 2 s apart on firmware 2.7: fewer texts, a faster test), one that raises."""
    module = types.ModuleType("handlers_test_metrics")

    @command("slow", help="/slow: works 50 ms, answers nothing")
    def slow(ctx: CommandContext) -> None:
        time.sleep(0.05)  # the handler's own work, measured by the histogram
        return None

    @command("boom", help="/boom: raises")
    def boom(ctx: CommandContext) -> str:
        raise RuntimeError("boom")

    module.slow, module.boom = slow, boom  # type: ignore[attr-defined]
    return module


def own_telemetry(node: SimulatedNode, channel_utilization: float, air_util_tx: float) -> mesh_pb2.MeshPacket:
    """The DeviceMetrics telemetry a node sends its client about itself."""
    packet = mesh_pb2.MeshPacket(to=BROADCAST_NUM, id=0x7E1E0001, channel=0)
    setattr(packet, "from", node.node_num)
    packet.decoded.portnum = portnums_pb2.PortNum.TELEMETRY_APP
    telemetry = telemetry_pb2.Telemetry(time=int(time.time()))
    telemetry.device_metrics.channel_utilization = channel_utilization
    telemetry.device_metrics.air_util_tx = air_util_tx
    telemetry.device_metrics.battery_level = 100
    packet.decoded.payload = telemetry.SerializeToString()
    return packet


def test_scraped_counters_match_what_the_users_did(node, start_bot):
    bot = start_bot(node, METRICS_LISTEN="127.0.0.1:0", modules=(*handlers.MODULES, slow_and_failing_module()))
    answered = [
        node.user_text(ALICE, "/ping", channel=1),
        node.user_text(BOB, "/h", dm=True),  # an alias counts under its command's name
        node.user_text(CARL, "/boom"),
        node.user_text(CARL, "/1a2b3c01", dm=True),  # a name no command has: "unknown", never the text
    ]
    node.user_text(ALICE, "/slow")
    node.user_text(BOB, "/slow", dm=True)
    wait_until(lambda: all(replies_to(node, packet_id) for packet_id in answered), 15)
    wait_until(bot.sender.is_idle, 5)
    # /slow answers nothing: its runs are done when the histogram has both.
    wait_until(lambda: metric(bot, "meshbot_handler_duration_seconds_count", command="slow") == 2, 5)

    text, samples = scrape(bot)
    assert value(samples, "meshbot_link_up") == 1
    assert value(samples, "meshbot_link_reconnects_total") == 0
    by_command = {
        dict(labels)["command"]: v for (name, labels), v in samples.items() if name == "meshbot_commands_total"
    }
    assert by_command == {
        "bc": 0, "echo": 0, "help": 1, "nodes": 0, "ping": 1, "status": 0, "weather": 0,
        "slow": 2, "boom": 1, "unknown": 1,
    }
    assert value(samples, "meshbot_command_errors_total", command="boom") == 1
    assert value(samples, "meshbot_command_errors_total", command="slow") == 0
    assert value(samples, "meshbot_replies_total") == len(answered)
    assert value(samples, "meshbot_texts_sent_total") == len(node.texts) == len(answered)
    assert value(samples, "meshbot_outbox_texts") == 0
    for reason in DropReason:
        assert value(samples, "meshbot_texts_dropped_total", reason=reason.value) == 0

    # The histogram: every run counted once, in the right buckets.
    assert value(samples, "meshbot_handler_duration_seconds_count", command="ping") == 1
    assert value(samples, "meshbot_handler_duration_seconds_bucket", command="ping", le="+Inf") == 1
    assert value(samples, "meshbot_handler_duration_seconds_count", command="boom") == 1
    assert value(samples, "meshbot_handler_duration_seconds_count", command="slow") == 2
    assert value(samples, "meshbot_handler_duration_seconds_bucket", command="slow", le="0.025") == 0
    assert value(samples, "meshbot_handler_duration_seconds_bucket", command="slow", le="0.1") == 2
    assert 0.1 <= value(samples, "meshbot_handler_duration_seconds_sum", command="slow") < 2.0
    assert value(samples, "meshbot_handler_duration_seconds_count", command="nodes") is None  # never run

    # Airtime: each accepted text once, on the simulated node's preset (LONG_FAST).
    radio = RadioParams("LONG_FAST", *PRESETS["LONG_FAST"])
    expected_airtime = sum(radio.airtime_s(utf8_len(t.text)) for t in node.texts)
    assert value(samples, "meshbot_airtime_seconds_total") == pytest.approx(expected_airtime)
    assert value(samples, "meshbot_airtime_budget_used_seconds") == pytest.approx(expected_airtime)  # all in this hour
    assert value(samples, "meshbot_node_info", preset="LONG_FAST") == 1

    # No label value names a node: no node id, number or short name, whatever the users sent.
    node_words = {"5eed0b07", str(node.node_num)} | {f"{u.num:08x}" for u in node.users.values()}
    node_words |= {str(u.num) for u in node.users.values()} | {u.short_name.lower() for u in node.users.values()}
    for (_, labels) in samples:
        for _, label_value in labels:
            assert not any(word in label_value.lower() for word in node_words), label_value
            assert not re.search(r"[0-9a-f]{8}", label_value.lower()), label_value
    assert "1a2b3c01" not in text


def test_channel_utilization_comes_from_the_nodes_own_telemetry(node, start_bot):
    bot = start_bot(node, METRICS_LISTEN="127.0.0.1:0")
    # The simulated node's handshake carries no DeviceMetrics: absent, not a made-up 0.
    assert metric(bot, "meshbot_channel_utilization_ratio") is None
    assert metric(bot, "meshbot_airtime_budget_seconds") == pytest.approx(3600 * bot.settings.AIRTIME_BUDGET_PCT / 100)
    assert node.deliver(own_telemetry(node, channel_utilization=12.5, air_util_tx=3.25))
    wait_until(lambda: metric(bot, "meshbot_channel_utilization_ratio") is not None, 5)
    _, samples = scrape(bot)
    assert value(samples, "meshbot_channel_utilization_ratio") == pytest.approx(0.125)
    assert value(samples, "meshbot_node_air_util_tx_ratio") == pytest.approx(0.0325)


@dataclass(frozen=True)
class Channel:
    channel_utilization: float
    air_util_tx: Optional[float]


def test_the_figures_can_come_from_elsewhere(node, start_bot):
    """The airtime and the channel's figures are two callables: None means no metric."""
    bot = start_bot(node)
    server = MetricsServer(
        "127.0.0.1:0",
        metrics_registry(bot, airtime=lambda: 42.5, channel=lambda: Channel(channel_utilization=30.0, air_util_tx=None)),
    )
    assert server.start()
    bot.metrics = server  # so that scrape() finds it, and the fixture's stop() closes it
    _, samples = scrape(bot)
    assert value(samples, "meshbot_airtime_seconds_total") == 42.5
    assert value(samples, "meshbot_channel_utilization_ratio") == pytest.approx(0.3)
    assert value(samples, "meshbot_node_air_util_tx_ratio") is None


def test_a_bug_in_the_collector_is_logged_with_its_traceback_and_the_next_scrape_works(node, start_bot, caplog):
    bot = start_bot(node)
    calls = []

    def airtime() -> float:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a bug")
        return 1.5

    bot.metrics = MetricsServer("127.0.0.1:0", metrics_registry(bot, airtime=airtime))
    assert bot.metrics.start()
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        scrape(bot)
    errors = [r for r in caplog.records if r.name == "meshbot.metrics" and r.levelno == logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info and "a bug" in str(errors[0].exc_info[1])
    assert metric(bot, "meshbot_airtime_seconds_total") == 1.5


def test_link_down_and_the_reconnect_show(node, start_bot):
    bot = start_bot(node, METRICS_LISTEN="127.0.0.1:0")
    node.stop_listening(2.0)  # down long enough for a scrape to see it, even on a loaded machine
    node.drop()
    wait_until(lambda: metric(bot, "meshbot_link_up") == 0, 5)
    wait_until(lambda: metric(bot, "meshbot_link_up") == 1, 10)
    assert metric(bot, "meshbot_link_reconnects_total") == 1


def test_dm_outcomes_are_counted_from_the_meshs_acks_and_naks(node, start_bot):
    far = node.add_user(SimUser(0x1A2B3C09, "FAR", "Far away", reachable=False))  # NAKed: MAX_RETRANSMIT
    bot = start_bot(node, METRICS_LISTEN="127.0.0.1:0", DM_RETRIES=0)
    node.user_text(ALICE, "/ping", dm=True)  # ACKed by Alice's node
    node.user_text(far, "/ping", dm=True)
    wait_until(lambda: metric(bot, "meshbot_dm_outcomes_total", outcome="failed") == 1, 10)
    wait_until(lambda: metric(bot, "meshbot_dm_outcomes_total", outcome="delivered") == 1, 10)
    _, samples = scrape(bot)
    assert value(samples, "meshbot_dm_outcomes_total", outcome="unconfirmed") == 0
    assert value(samples, "meshbot_dm_retries_total") == 0
    assert value(samples, "meshbot_dm_pending") == 0


def test_texts_dropped_are_counted_by_reason(node, start_bot):
    bot = start_bot(node, METRICS_LISTEN="127.0.0.1:0", OUTBOX_MAX=2, OUTBOX_TTL_S=1.0)
    node.stop_listening(5.0)
    node.drop()
    wait_until(lambda: metric(bot, "meshbot_link_up") == 0, 5)
    for n in range(5):
        bot.sender.send(f"text {n}", channel=0)
    _, samples = scrape(bot)
    assert value(samples, "meshbot_texts_dropped_total", reason="outbox_full") == 3
    assert value(samples, "meshbot_outbox_texts") == 2
    wait_until(lambda: metric(bot, "meshbot_texts_dropped_total", reason="ttl") == 2, 5)
    assert metric(bot, "meshbot_outbox_texts") == 0


def test_texts_left_at_shutdown_count_as_dropped(node, start_bot):
    bot = start_bot(node)
    node.stop_listening(5.0)
    node.drop()
    wait_until(lambda: bot.sender.get_interface() is None, 5)
    bot.sender.send("never sent", channel=0)
    bot.stop(budget_s=1.0)
    assert bot.sender.send("too late", channel=0) == 0
    stats = bot.sender.stats()
    assert stats.dropped_by[DropReason.SHUTDOWN] == 2 and stats.dropped == 2


def test_a_port_in_use_is_one_warning_and_the_bot_runs_on(node, start_bot, caplog):
    caplog.set_level(logging.INFO, logger="meshbot")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        bot = start_bot(node, METRICS_LISTEN=f"127.0.0.1:{port}")
        assert bot.metrics.address is None
        packet_id = node.user_text(ALICE, "/ping")
        wait_until(lambda: replies_to(node, packet_id), 10)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING and r.name == "meshbot.metrics"]
    assert len(warnings) == 1
    assert f"cannot serve metrics on 127.0.0.1:{port}" in warnings[0].getMessage()
    assert not warnings[0].exc_info


def test_stop_closes_the_endpoint(node, start_bot, caplog):
    caplog.set_level(logging.INFO, logger="meshbot")
    bot = start_bot(node, METRICS_LISTEN="127.0.0.1:0")
    host, port = bot.metrics.address
    assert f"metrics on http://127.0.0.1:{port}/metrics" in caplog.text
    assert metric(bot, "meshbot_link_up") == 1
    bot.stop(budget_s=2.0)
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=2)


def test_no_endpoint_without_the_key(node, start_bot):
    assert start_bot(node).metrics is None


@pytest.mark.parametrize("bad", ["9464", ":9464", "localhost", "::1:9464", "http://127.0.0.1:9464", "127.0.0.1:65536", 9464])
def test_a_bad_listen_address_is_a_config_error(bad):
    with pytest.raises(ConfigError, match="METRICS_LISTEN"):
        build_settings({"METRICS_LISTEN": bad}, demo=True)


@pytest.mark.parametrize("good", ["127.0.0.1:9464", "0.0.0.0:9464", "[::1]:9464", "pi.local:9464", " 127.0.0.1:9464 "])
def test_good_listen_addresses(good):
    assert build_settings({"METRICS_LISTEN": good}, demo=True).METRICS_LISTEN == good.strip()
