"""What firmware 2.7 really does (../shared/MESHTASTIC-NOTES.md), against the faithful
simulated node over real TCP: silent text refusals, link jitter, a hung node, a reboot,
DM ACKs and NAKs, packets kept for the client across connections."""

from __future__ import annotations

import logging
import time

import pytest
from meshtastic.protobuf import mesh_pb2

from meshbot.link.owner import NodeLink
from meshbot.sim.node import SimulatedNode, SimUser
from tests.conftest import settings_for, wait_until

ALICE = 0x1A2B3C01
LONG_REPLY = " ".join(f"word{i:03d}" for i in range(110))


def replies_to(node: SimulatedNode, packet_id: int) -> list:
    return [t for t in node.texts if t.reply_id == packet_id]


def test_no_text_is_refused_with_half_a_second_of_jitter_each_way(start_bot):
    with SimulatedNode(link_delay_s=0.0, link_jitter_s=0.5) as node:
        bot = start_bot(node)  # MIN_TEXT_INTERVAL_S = 0: the 2 s floor comes from the firmware version
        assert bot.sender.send(LONG_REPLY[:700]) == 4
        texts = node.wait_texts(4, 30)
        wait_until(bot.sender.is_idle, 5)
    assert [t.text[-6:] for t in texts] == [" (1/4)", " (2/4)", " (3/4)", " (4/4)"]
    assert node.counters.rate_limited == 0
    assert len({t.id for t in texts}) == 4
    assert min(b.at - a.at for a, b in zip(texts, texts[1:])) >= 2.0  # as the node measured it
    assert bot.sender.stats().refused == 0


def test_a_silent_refusal_is_recognised_and_the_text_sent_again(start_bot, caplog):
    """A node that says it is older than 2.7 but refuses anyway: the only trace of a
    refusal is a queueStatus with res 0 and the TX queue's room unchanged."""
    caplog.set_level(logging.INFO, logger="meshbot")
    with SimulatedNode(firmware_version="2.6.11", text_rate_limit_s=2.0, tx_time_s=0.2) as node:
        # 0.5 s apart: the previous text has left the TX queue (0.2 s on air), so a text
        # whose status shows the queue empty was never taken. (Sent while the previous one
        # still waits there, a refusal cannot be told from another packet leaving: the
        # bot then takes the text for sent, rather than risk putting it on the air twice.)
        bot = start_bot(node, MIN_TEXT_INTERVAL_S=0.5)
        bot.sender.send(LONG_REPLY[:500])
        texts = node.wait_texts(3, 20)
        wait_until(bot.sender.is_idle, 5)
    assert [t.text[-6:] for t in texts] == [" (1/3)", " (2/3)", " (3/3)"]
    assert node.counters.rate_limited >= 1
    stats = bot.sender.stats()
    assert stats.sent == 3 and stats.refused == node.counters.rate_limited and stats.dropped == 0
    assert "its 2 s text limit?" in caplog.text
    assert not set(node.refused) & {t.id for t in texts}  # resent under new ids


def test_a_rate_limit_error_from_a_later_firmware_also_counts_as_a_refusal(start_bot, caplog):
    caplog.set_level(logging.INFO, logger="meshbot")
    # An instant radio (the TX queue never shows a text): only the error can tell.
    with SimulatedNode(firmware_version="2.6.11", text_rate_limit_s=2.0, rate_limit_nak=True, tx_time_s=0.0) as node:
        # 0.5 s apart, so that the error (which follows the refused text's status) arrives
        # before the next text is picked; on 2.7+ the 2 s floor leaves it even more time.
        bot = start_bot(node, MIN_TEXT_INTERVAL_S=0.5)
        bot.sender.send(LONG_REPLY[:500])
        texts = node.wait_texts(3, 20)
        wait_until(bot.sender.is_idle, 5)  # the node took the third text: its status may be on the way
    assert [t.text[-6:] for t in texts] == [" (1/3)", " (2/3)", " (3/3)"]
    assert "rate limited by the node" in caplog.text
    assert bot.sender.stats().sent == 3


@pytest.mark.parametrize("hang_s", [3.5, 7.0])
def test_a_command_queued_while_the_node_hangs_is_answered_after_it_resumes(node, start_bot, hang_s):
    """3.5 s: the link dies (2 s without a frame) and the bot waits on its one new
    connection. 7 s: that connection stays silent for LINK_TIMEOUT_S too and is given up,
    with a `disconnect`, for another: when the node resumes and reads the backlogs in
    order, the abandoned ones end before anything is written to them."""
    bot = start_bot(node, CONNECT_TIMEOUT_S=0.5, LINK_TIMEOUT_S=2.0)
    node.hang(hang_s)
    command = node.user_text(ALICE, "/ping", dm=True)  # kept for the client while hung
    reply = wait_until(lambda: replies_to(node, command), 20)
    assert len(reply) == 1 and reply[0].to == ALICE
    assert bot.link.status.reconnects == 1
    if hang_s > 5:
        assert node.counters.connections >= 3  # some were given up during the hang


def test_a_dm_that_arrives_with_the_handshake_is_answered_by_dm(start_bot):
    with SimulatedNode(firmware_version="2.6.11") as node:
        command = node.user_text(ALICE, "/ping", dm=True)  # before the bot connects: queued
        start_bot(node)
        reply = wait_until(lambda: replies_to(node, command), 10)[0]
    assert reply.to == ALICE


def test_reboots_are_told_from_another_client(node, start_bot, caplog):
    caplog.set_level(logging.INFO, logger="meshbot")
    bot = start_bot(node)
    for count in range(1, 4):
        node.reboot(0.3)
        wait_until(lambda: bot.link.status.reconnects == count and bot.sender.get_interface() is not None, 10)
    assert caplog.text.count("the node rebooted while the link was down") == 3
    assert "another client" not in caplog.text


def test_quick_closes_are_counted_from_the_close_that_ended_a_long_link(node, caplog):
    caplog.set_level(logging.WARNING, logger="meshbot")
    link = NodeLink(settings_for(node, CONTENTION_BACKOFF_S=42.0), lambda packet: None)
    closed = "node closed the connection"
    delays = [link._delay_after_loss(closed, was_up_s) for was_up_s in (3600.0, 3.0, 3.0)]
    assert delays[2] == 42.0 and max(delays[:2]) < 42.0
    assert "closed the connection 3 times" in caplog.text


def test_client_notifications_are_logged_at_their_level_once_a_minute(node, start_bot, caplog):
    caplog.set_level(logging.INFO, logger="meshbot")
    start_bot(node)
    for _ in range(3):
        node.notify_client(mesh_pb2.LogRecord.Level.WARNING, "Duty cycle limit exceeded")
    node.notify_client(mesh_pb2.LogRecord.Level.INFO, "Config saved")
    wait_until(lambda: "the node says: Config saved" in caplog.text, 5)
    lines = [r for r in caplog.records if "Duty cycle limit exceeded" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING


def test_simulator_echoes_are_ignored(start_bot):
    with SimulatedNode(firmware_version="2.6.11", sim_echo=True) as node:
        bot = start_bot(node)
        command = node.user_text(ALICE, "/echo hello")
        wait_until(lambda: replies_to(node, command), 10)
        wait_until(bot.sender.is_idle, 5)
        node.user_text(ALICE, "/ping")
        node.wait_texts(2, 10)
        assert len(node.texts) == 2


# --- DM delivery ---------------------------------------------------------------------------------
def test_an_acknowledged_dm_counts_as_delivered(node, start_bot):
    bot = start_bot(node)
    command = node.user_text(ALICE, "/ping", dm=True)
    wait_until(lambda: replies_to(node, command), 10)
    wait_until(lambda: bot.sender.stats().dms.delivered == 1, 5)
    status = node.user_text(ALICE, "/status", dm=True)
    reply = wait_until(lambda: replies_to(node, status), 10)[0]
    assert "DMs 24h: 1 delivered, 0 failed" in reply.text


def test_a_failed_dm_is_sent_once_more_with_a_new_id_then_given_up(start_bot, caplog):
    caplog.set_level(logging.INFO, logger="meshbot")
    far = SimUser(0x1A2B3C09, "FAR", "Far away", reachable=False)
    with SimulatedNode(firmware_version="2.6.11", users=(far,), nak_delay_s=0.2) as node:
        bot = start_bot(node, DM_RETRY_DELAY_S=1.0, DM_RETRIES=1)
        command = node.user_text(far, "/ping", dm=True)
        wait_until(lambda: bot.sender.stats().dms.failed == 1, 10)
        texts = replies_to(node, command)
    assert len(texts) == 2 and texts[0].text == texts[1].text and texts[0].id != texts[1].id
    assert "not delivered (MAX_RETRANSMIT); sending it again in 1 s (1/1)" in caplog.text
    assert "after 2 tries: MAX_RETRANSMIT" in caplog.text
    assert bot.sender.stats().dms.retried == 1


def test_a_failure_no_retry_can_cure_is_not_retried(node, start_bot, caplog):
    caplog.set_level(logging.INFO, logger="meshbot")
    bot = start_bot(node, DM_RETRY_DELAY_S=1.0)
    node.nak_next(mesh_pb2.Routing.Error.PKI_FAILED)
    command = node.user_text(ALICE, "/ping", dm=True)
    wait_until(lambda: bot.sender.stats().dms.failed == 1, 10)
    assert len(replies_to(node, command)) == 1
    wait_until(lambda: "node reports PKI_FAILED for text to !1a2b3c01" in caplog.text, 5)


def test_a_dm_nobody_answers_for_is_unconfirmed_and_not_resent(start_bot):
    far = SimUser(0x1A2B3C09, "FAR", "Far away", reachable=False)
    with SimulatedNode(firmware_version="2.6.11", users=(far,), nak_delay_s=30.0) as node:
        bot = start_bot(node, DM_ACK_TIMEOUT_S=1.0)
        command = node.user_text(far, "/ping", dm=True)
        wait_until(lambda: bot.sender.stats().dms.unconfirmed == 1, 10)
        assert len(replies_to(node, command)) == 1


def test_an_ack_for_a_dm_of_the_previous_connection_still_counts(start_bot):
    with SimulatedNode(firmware_version="2.6.11", ack_delay_s=0.5) as node:
        bot = start_bot(node)
        command = node.user_text(ALICE, "/ping", dm=True)
        wait_until(lambda: replies_to(node, command), 10)
        node.drop()  # before the ACK: the node keeps it for the next client
        wait_until(lambda: bot.sender.stats().dms.delivered == 1, 10)
        assert node.counters.connections == 2


def test_an_ack_right_behind_the_queue_status_still_counts(start_bot):
    """A destination one hop away can ACK before the outbox thread has recorded the text
    whose status just came in: the ACK is kept and matched once it has."""
    with SimulatedNode(firmware_version="2.6.11", ack_delay_s=0.0) as node:
        bot = start_bot(node)
        for _ in range(10):
            node.user_text(ALICE, "/ping", dm=True)
        node.wait_texts(10, 20)
        wait_until(lambda: bot.sender.stats().dms.delivered == 10, 10)
        assert bot.sender.stats().dms.pending == 0
