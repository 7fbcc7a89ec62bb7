"""The node link over real TCP against the simulated node: one socket, every fault survived."""

from __future__ import annotations

import logging
import socket
import threading
import time
from types import SimpleNamespace

import pytest

from meshbot.sim.node import SimulatedNode
from tests.conftest import settings_for, wait_until


def ping_answered(node: SimulatedNode, user_num: int = 0x1A2B3C01, timeout: float = 10.0, **kwargs) -> None:
    """A user sends /ping and the bot's pong reaches the node."""
    before = len(node.texts)
    wait_until(lambda: node.connected, timeout)
    packet_id = node.user_text(user_num, "/ping", **kwargs)
    texts = node.wait_texts(before + 1, timeout)
    assert any(t.reply_id == packet_id and t.text.startswith("pong") for t in texts[before:]), texts[before:]


def test_fifty_replies_mixing_dms_and_broadcasts_use_one_connection(node, start_bot):
    start_bot(node)
    ids = []
    for i in range(50):
        dm = i % 2 == 0
        ids.append(node.user_text(0x1A2B3C01 + i % 3, "/ping", dm=dm, channel=0 if dm else i % 2))
    texts = node.wait_texts(50, 20)
    assert len(texts) == 50
    assert [t.reply_id for t in texts] == ids  # in order, none lost, none twice
    dms = [t for t in texts if t.to != 0xFFFFFFFF]
    assert len(dms) == 25 and all(t.want_ack for t in dms)
    assert node.counters.connections == 1
    assert {t.connection for t in texts} == {1}


@pytest.mark.parametrize(
    "fault",
    ["fin", "rst", "stop_listening_3s", "silent"],
)
def test_link_recovers_after_fault(node, start_bot, caplog, fault):
    caplog.set_level(logging.INFO, logger="meshbot")
    # EOF and RST get a long link timeout, so that noticing them at once is told apart from
    # noticing them by the timeout; a silent node is only ever noticed by the timeout.
    bot = start_bot(node, **({} if fault == "silent" else {"LINK_TIMEOUT_S": 6.0}))
    ping_answered(node)
    wait_until(lambda: bot.sender.stats().queued == 0, 5)
    started = time.monotonic()
    if fault == "fin":
        node.drop()
    elif fault == "rst":
        node.drop(rst=True)
    elif fault == "stop_listening_3s":
        node.stop_listening(3.0)
    else:
        node.go_silent()
    wait_until(lambda: bot.link.status.reconnects == 1, 15)
    detected = time.monotonic() - started
    assert node.wait_connected(15, handshakes=2)
    ping_answered(node)
    assert node.counters.handshakes == 2
    if fault == "silent":
        # Detected by the link timeout (1.2 s here), not by the library's 300 s heartbeat.
        assert detected < 1.2 + 0.3 + 1.0
        assert "half-open" in caplog.text
    elif fault == "stop_listening_3s":
        assert node.counters.connections == 2
    else:
        assert detected < 3.0  # EOF and RST are noticed at once, not after the 6 s link timeout
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "lost" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert any("link up after" in r.getMessage() for r in caplog.records)


def test_node_down_for_a_while_logs_at_most_one_line_a_minute(node, start_bot, caplog):
    caplog.set_level(logging.INFO, logger="meshbot")
    bot = start_bot(node)
    node.stop_listening(3.0)
    assert node.wait_connected(15, handshakes=2)
    wait_until(lambda: bot.sender.get_interface() is not None, 5)
    link_lines = [r for r in caplog.records if r.name == "meshbot.link.owner"]
    # up, lost, up again: the many refused attempts in between are not logged one by one.
    assert len(link_lines) == 3, [r.getMessage() for r in link_lines]
    assert "attempts" in link_lines[-1].getMessage()


def test_reply_produced_while_link_is_down_arrives_after_reconnect(node, start_bot):
    bot = start_bot(node)
    node.stop_listening(1.5)
    wait_until(lambda: bot.sender.get_interface() is None, 5)
    bot.sender.send("written while the node was away", channel=0)
    assert node.wait_texts(1, 15)[0].text == "written while the node was away"
    assert node.texts[0].connection == 2


def test_texts_queued_around_an_rst_all_arrive_once_in_order(node, start_bot):
    bot = start_bot(node, MIN_TEXT_INTERVAL_S=0.3)
    for i in range(6):
        bot.sender.send(f"text {i}")
    node.wait_texts(2, 10)
    # Between two texts (the pacing gap), so that no text is in flight: a text the node
    # accepted whose status the reset swallowed cannot be told from one it never read.
    time.sleep(0.05)
    node.drop(rst=True)
    texts = node.wait_texts(6, 15)
    assert [t.text for t in texts] == [f"text {i}" for i in range(6)]
    assert {t.connection for t in texts[2:]} == {2}


def test_text_written_into_a_half_open_link_is_sent_after_the_reconnect(node, start_bot):
    bot = start_bot(node)
    node.go_silent()
    bot.sender.send("into the void")  # written, never read, never answered
    texts = node.wait_texts(1, 10)
    assert [t.text for t in texts] == ["into the void"]
    assert texts[0].connection == 2
    time.sleep(0.3)
    assert len(node.texts) == 1
    assert bot.sender.stats().sent == 1


def test_old_firmware_without_queue_status_stays_up_and_sends(start_bot):
    with SimulatedNode(firmware_version="2.6.11", old_firmware=True) as old:
        bot = start_bot(old)
        time.sleep(3 * 1.2)  # three link timeouts: kept alive by the metadata probe
        assert bot.link.status.reconnects == 0
        assert old.counters.metadata_requests >= 1
        ping_answered(old)


def test_another_client_taking_the_node_is_reported_and_not_fought(node, start_bot, caplog):
    caplog.set_level(logging.WARNING, logger="meshbot")
    bot = start_bot(node, CONTENTION_BACKOFF_S=3.0)
    intruders = []
    for round_ in range(3):
        assert node.wait_connected(10, handshakes=round_ + 1)
        wait_until(lambda: bot.sender.get_interface() is not None, 5)
        intruders.append(socket.create_connection(node.address))  # a phone app connects
        wait_until(lambda: bot.link.status.reconnects == round_ + 1, 5)
    connections_at_warning = node.counters.connections
    wait_until(lambda: "another client" in caplog.text, 5)
    time.sleep(1.5)  # within the contention pause the bot does not come back
    assert node.counters.connections == connections_at_warning
    for sock in intruders:
        sock.close()


class MuteNode:
    """A TCP server that accepts connections and never answers: a node whose process is
    stalled while its kernel still completes connections (the listen backlog)."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.listener.settimeout(0.1)
        self.host, self.port = self.listener.getsockname()
        self.accepted: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                self.accepted.append(self.listener.accept()[0])
            except socket.timeout:
                pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        for sock in self.accepted:
            sock.close()
        self.listener.close()


def read_frames(sock: socket.socket) -> list:
    """Every ToRadio the bot wrote on this connection, up to its close."""
    from meshtastic.protobuf import mesh_pb2

    sock.settimeout(5)
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    frames, i = [], 0
    while i + 4 <= len(data):
        if data[i : i + 2] != b"\x94\xc3":
            i += 1  # the library's wake-up bytes before the first frame
            continue
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        message = mesh_pb2.ToRadio()
        message.ParseFromString(data[i + 4 : i + 4 + length])
        frames.append(message)
        i += 4 + length
    return frames


def test_a_handshake_that_takes_long_is_waited_on_then_left_with_a_disconnect(start_bot, caplog):
    """Abandoning a slow handshake for a new connection would leave a stalled node a
    connection to hand its kept packets to once it resumes: the bot waits while its one
    connection lives, and gives up only after LINK_TIMEOUT_S without a frame, saying
    `disconnect` first (the node then closes that session before writing anything)."""
    caplog.set_level(logging.WARNING, logger="meshbot")
    mute = MuteNode()
    try:
        bot = start_bot(mute, wait=False, CONNECT_TIMEOUT_S=0.5, PROBE_INTERVAL_S=0.3, LINK_TIMEOUT_S=3.0)
        wait_until(lambda: "no config from the node" in caplog.text, 5)
        assert "within 0.5 s; still waiting on this connection" in caplog.text
        time.sleep(1.0)  # two handshake timeouts more: still the one connection, no new attempt
        assert len(mute.accepted) == 1
        assert bot.sender.get_interface() is None
        assert bot.health_problem() is None  # waiting on the node is not a hung daemon
        wait_until(lambda: len(mute.accepted) == 2, 10)  # silent for 3 s: given up, a new attempt
        kinds = [frame.WhichOneof("payload_variant") for frame in read_frames(mute.accepted[0])]
        assert kinds == ["want_config_id", "disconnect"], kinds
        assert "no config from the node and no frame for 3 s" in caplog.text
        mute.accepted[1].close()  # the node's end goes away: the bot tries again at once
        wait_until(lambda: len(mute.accepted) == 3, 5)
        started = time.monotonic()
        bot.stop(budget_s=2.0)
        assert time.monotonic() - started < 2.5  # stopping ends the wait at once
    finally:
        mute.close()


def test_node_debug_log_text_between_frames_is_ignored(node, start_bot):
    start_bot(node)
    node.log_line("DEBUG | 12:00:01 123 [Router] Received routing from 0x1a2b3c01")
    ping_answered(node)
    assert node.counters.connections == 1


def test_settings_are_used_for_the_probe(node, start_bot):
    start_bot(node, PROBE_INTERVAL_S=0.2, LINK_TIMEOUT_S=5.0)
    before = node.counters.heartbeats
    time.sleep(1.1)
    assert 4 <= node.counters.heartbeats - before <= 7


def test_bad_settings_reach_no_socket(node):
    """Validation happens before any connection: nothing connects for a bad value."""
    from meshbot.config import ConfigError

    with pytest.raises(ConfigError):
        settings_for(node, NODE_PORT="abc")
    time.sleep(0.2)
    assert node.counters.connections == 0


def test_down_reminders_back_off_to_hourly():
    """A night's outage (8 h, an attempt every 5 s) is 12 reminders, not 480."""
    from meshbot.link.owner import _Outage

    outage = _Outage(started=0.0, last_report=0.0)  # the first "cannot reach" line, at 0
    due = [t for t in range(5, 8 * 3600, 5) if outage.reminder_due(float(t))]
    assert [t // 60 for t in due[:6]] == [1, 3, 7, 15, 31, 63]  # after 1, 2, 4, 8, 16, 32 min
    assert all(b - a == 3600 for a, b in zip(due[6:], due[7:]))  # then hourly
    assert len(due) == 12


def test_a_port_that_is_not_a_node_is_told_once_per_outage(start_bot, caplog):
    """It accepts TCP and never hands a handshake over: each attempt would warn again."""
    caplog.set_level(logging.WARNING, logger="meshbot")
    mute = MuteNode()
    try:
        start_bot(mute, wait=False, CONNECT_TIMEOUT_S=0.5, PROBE_INTERVAL_S=0.3, LINK_TIMEOUT_S=1.0)
        wait_until(lambda: len(mute.accepted) >= 3, 20)
        for conn in mute.accepted:
            conn.close()
        told = [r for r in caplog.records if r.getMessage().startswith("no config from the node at")]
        assert len(told) == 1, [r.getMessage() for r in told]
        assert "another program on that port?" in told[0].getMessage()
    finally:
        mute.close()
