"""The receive path under junk from the node (issue 15, part 5), end to end over TCP.

Bytes between frames (a node's serial console, noise) go to `ConsoleText` in slices, in time
linear in their size and with a bounded buffer; packets the library's decoders choke on
are one summarised WARNING, never an ERROR with a traceback each. What it costs in CPU is
measured by bench/bench_receive.py, not here.
"""

from __future__ import annotations

import logging

import pytest
from meshtastic.protobuf import portnums_pb2

from meshbot.link.console import LINE_MAX, ConsoleText
from tests.conftest import wait_until
from tests.test_commands import ALICE, ask

TWO_MB = 2 << 20


def test_two_megabytes_without_a_line_end_are_dropped_without_a_reconnect(node, start_bot, caplog):
    caplog.set_level(logging.INFO, logger="meshbot")
    bot = start_bot(node)
    console = bot.sender.get_interface()._console
    assert node.noise(b"A" * TWO_MB)
    # Every byte was seen by the console, and all but one line's worth dropped: the
    # buffer never held more than LINE_MAX.
    wait_until(lambda: console.dropped_bytes == TWO_MB - LINE_MAX, 30)
    assert console.pending == TWO_MB
    assert ask(node, ALICE, "/ping", timeout=30)[0].text.startswith("pong")
    assert node.counters.connections == 1
    overlong = [r for r in caplog.records if "non-frame bytes" in r.getMessage()]
    assert len(overlong) == 1 and overlong[0].levelno == logging.INFO


def test_console_lines_between_frames_reach_the_debug_log_and_frames_still_pass(node, start_bot, caplog):
    caplog.set_level(logging.DEBUG, logger="meshbot.link.interface")
    bot = start_bot(node)
    console = bot.sender.get_interface()._console
    node.log_line("INFO  | 12:00:01 42 [Router] Received text msg from=0x1a2b3c01")
    # Text, a frame, text with a frame-start byte inside a UTF-8 character (U+2014 is E2 80 94), a frame.
    assert ask(node, ALICE, "/ping")[0].text.startswith("pong")
    node.log_line("DEBUG | 12:00:02 43 [Power] Battery 4.10 V \u2014 ok")
    assert ask(node, ALICE, "/ping")[0].text.startswith("pong")
    wait_until(lambda: console.lines >= 2, 10)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("node console: ")]
    assert lines[0] == "node console: INFO  | 12:00:01 42 [Router] Received text msg from=0x1a2b3c01"
    assert node.counters.connections == 1


def test_malformed_packets_are_one_warning_and_a_count_never_an_error(node, start_bot, caplog):
    caplog.set_level(logging.DEBUG)
    bot = start_bot(node)
    iface = bot.sender.get_interface()
    for i in range(50):
        packet = node.user_packet(0x2000 + i, "x")
        packet.decoded.portnum = portnums_pb2.PortNum.POSITION_APP
        packet.decoded.payload = b"\xff\xff\xff"  # a truncated varint: no Position
        node.deliver(packet)
        forged = node.user_packet(0x3000, "/ping")
        setattr(forged, "from", 0xFFFFFFFF)
        node.deliver(forged)
    wait_until(lambda: iface._malformed.pending == 99, 15)
    assert ask(node, ALICE, "/ping")[0].text.startswith("pong")  # and no pong for the forged ones
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "ignored" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith("ignored a malformed packet from !00002000 (port 3): DecodeError")
    iface._malformed.flush()
    summary = [r.getMessage() for r in caplog.records if "more malformed packets" in r.getMessage()]
    assert len(summary) == 1 and summary[0].startswith("ignored 99 more malformed packets from the mesh in the last ")
    assert len([t for t in node.texts if t.text.startswith("pong")]) == 1  # Alice's only


@pytest.mark.parametrize("size", [1, 7, 511, 512, 513, 4096])
def test_console_text_is_cut_at_newlines_whatever_the_chunking(size, caplog):
    caplog.set_level(logging.DEBUG, logger="test.console")
    console = ConsoleText(logging.getLogger("test.console"), line_max=16)
    data = b"first line\r\nsecond\n" + b"x" * 40 + b"\nlast\n"
    for start in range(0, len(data), size):
        console.feed(data[start : start + size])
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("node console: ")]
    assert lines == ["node console: first line", "node console: second", "node console: " + "x" * 16, "node console: last"]
    assert console.dropped_bytes == 24 and console.pending == 0
