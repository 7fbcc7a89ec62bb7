"""The outbox over real TCP: pacing, the firmware's rate limit, rejections, TTL, flush."""

from __future__ import annotations

import logging
import time

from meshbot.sim.node import SimulatedNode
from meshbot.text import utf8_len
from tests.conftest import wait_until

LONG_REPLY = " ".join(f"word{i:03d}" for i in range(110))  # ~880 bytes: 4+ chunks at 200 B


def test_four_chunk_reply_arrives_whole_and_in_order_under_the_2s_limit(start_bot):
    with SimulatedNode(text_rate_limit_s=2.0) as node:
        bot = start_bot(node, MIN_TEXT_INTERVAL_S=2.05, MAX_CHUNKS=4)
        assert bot.sender.send(LONG_REPLY[:700]) == 4
        texts = node.wait_texts(4, 15)
    assert [t.text[-6:] for t in texts] == [" (1/4)", " (2/4)", " (3/4)", " (4/4)"]
    assert node.counters.rate_limited == 0
    gaps = [b.at - a.at for a, b in zip(texts, texts[1:])]
    assert min(gaps) >= 2.0
    rebuilt = " ".join(t.text[:-6] for t in texts)
    assert rebuilt == LONG_REPLY[:700].strip()


def test_rejected_text_is_resent_with_a_new_packet_id(node, start_bot):
    bot = start_bot(node)
    node.reject_next(2)
    bot.sender.send("try again")
    texts = node.wait_texts(1, 10)
    assert texts[0].text == "try again"
    assert node.counters.rejected == 2
    assert bot.sender.stats().resent == 2
    assert node.counters.ignored_repeats == 0  # a new id each time, never a seen one


def test_text_rejected_four_times_is_dropped_with_a_warning(node, start_bot, caplog):
    caplog.set_level(logging.WARNING, logger="meshbot")
    bot = start_bot(node)
    node.reject_next(4)
    bot.sender.send("doomed")
    bot.sender.send("next one")
    texts = node.wait_texts(1, 15)
    assert [t.text for t in texts] == ["next one"]
    assert "dropped text to ch0 'doomed'" in caplog.text
    assert bot.sender.stats().dropped == 1


def test_texts_are_paced_by_min_interval(node, start_bot):
    bot = start_bot(node, MIN_TEXT_INTERVAL_S=0.4)
    for i in range(3):
        bot.sender.send(f"paced {i}")
    texts = node.wait_texts(3, 10)
    assert min(b.at - a.at for a, b in zip(texts, texts[1:])) >= 0.39


def test_texts_are_paced_by_airtime_of_the_nodes_preset(start_bot):
    with SimulatedNode(firmware_version="2.6.11", modem_preset="MEDIUM_SLOW") as node:
        bot = start_bot(node, PACE_BY_AIRTIME=True, MIN_TEXT_INTERVAL_S=0.0)
        radio = bot.link.status.radio
        assert radio is not None and radio.name == "MEDIUM_SLOW"
        body = "x" * 180
        bot.sender.send(body)
        bot.sender.send("second")
        texts = node.wait_texts(2, 10)
    expected = radio.airtime_s(180)
    assert 0.3 < expected < 1.0
    assert texts[1].at - texts[0].at >= expected - 0.01


def test_utf8_chunks_never_exceed_the_byte_budget_end_to_end(node, start_bot):
    bot = start_bot(node, MAX_TEXT_BYTES=60, MAX_CHUNKS=10)
    reply = "Привет, мир! 🌧️ дождь 🌦 и солнце ☀️ " * 6
    count = bot.sender.send(reply)
    texts = node.wait_texts(count, 10)
    assert count > 3
    for t in texts:
        assert utf8_len(t.text) <= 60
        assert "\ufffd" not in t.text  # every chunk was valid UTF-8


def test_outbox_ttl_drops_old_texts_with_a_warning(node, start_bot, caplog):
    caplog.set_level(logging.WARNING, logger="meshbot")
    bot = start_bot(node, OUTBOX_TTL_S=1.0)
    node.stop_listening(2.5)
    wait_until(lambda: bot.sender.get_interface() is None, 5)
    bot.sender.send("too late")
    wait_until(lambda: "not sent within OUTBOX_TTL_S" in caplog.text, 5)
    wait_until(lambda: bot.sender.get_interface() is not None, 10)
    bot.sender.send("in time")
    texts = node.wait_texts(1, 10)
    assert [t.text for t in texts] == ["in time"]
    assert bot.sender.stats().dropped == 1


def test_outbox_max_drops_the_oldest_with_a_warning(node, start_bot, caplog):
    caplog.set_level(logging.WARNING, logger="meshbot")
    bot = start_bot(node, OUTBOX_MAX=3)
    node.stop_listening(1.5)
    wait_until(lambda: bot.sender.get_interface() is None, 5)
    for i in range(5):
        bot.sender.send(f"queued {i}")
    # The first drop in full, the next one counted: a flood is one line a minute.
    assert caplog.text.count("outbox full") == 1
    texts = node.wait_texts(3, 10)
    assert [t.text for t in texts] == ["queued 2", "queued 3", "queued 4"]
    bot.stop(budget_s=1.0)  # stopping tells what was counted
    assert "outbox full: dropped 1 more texts in the last " in caplog.text


def test_shutdown_flushes_the_outbox_within_the_deadline(node, start_bot):
    bot = start_bot(node, MIN_TEXT_INTERVAL_S=0.5)
    for i in range(3):
        bot.sender.send(f"last words {i}")
    started = time.monotonic()
    bot.stop(budget_s=4.5)
    assert time.monotonic() - started < 4.5 + 1.0
    assert [t.text for t in node.texts] == [f"last words {i}" for i in range(3)]


def test_get_interface_is_the_one_live_interface(node, start_bot):
    bot = start_bot(node)
    first = bot.sender.get_interface()
    assert first is bot.link.interface
    node.drop()
    wait_until(lambda: bot.link.status.reconnects == 1, 5)
    wait_until(lambda: bot.sender.get_interface() is not None, 5)
    assert bot.sender.get_interface() is not first
    assert node.counters.connections == 2


def test_a_text_the_node_will_not_transmit_is_reported_as_a_warning(node, start_bot, caplog):
    from meshtastic.protobuf import mesh_pb2

    caplog.set_level(logging.INFO, logger="meshbot")
    bot = start_bot(node)
    node.routing_error_next(mesh_pb2.Routing.Error.DUTY_CYCLE_LIMIT)
    bot.sender.send("over the duty cycle")
    node.wait_texts(1, 5)
    wait_until(lambda: "could not send text to ch0 'over the duty cycle': DUTY_CYCLE_LIMIT" in caplog.text, 5)
    record = next(r for r in caplog.records if "DUTY_CYCLE_LIMIT" in r.getMessage())
    assert record.levelno == logging.WARNING
