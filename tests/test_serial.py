"""The node link over a serial line: the real bot and the simulated node on a pty pair.

The simulated node serves the master side of a pseudo-terminal; the bot opens the slave
through a symlink (as /dev/serial/by-id/... names a USB device) with the library's
SerialInterface under NodeLink. `unplug()` closes the master, which the bot sees as a
yanked USB cable; `plug_back()` brings a new pty behind the same path.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import meshtastic.util
import pytest
import serial

from meshbot.config import EX_CONFIG, ConfigError
from meshbot.link.interface import LinkEvents, LinkLost, OptimizedSerialInterface, SerialPortNotFound, find_serial_port
from meshbot.link.owner import describe_error
from meshbot.sim.node import SimulatedNode
from tests.conftest import FAST, ROOT, settings_for, wait_until
from tests.test_link import ping_answered


def start_serial_bot(start_bot, node: SimulatedNode, **overrides):
    return start_bot(node, CONNECTION="serial", SERIAL_PORT=node.serial_path, **overrides)


def link_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "meshbot.link.owner" and r.levelno >= logging.WARNING]


def test_ping_and_twenty_replies_over_serial_on_one_open(node, start_bot):
    node.attach_serial()
    bot = start_serial_bot(start_bot, node)
    assert bot.link.address == node.serial_path
    # A node's serial console interleaves its debug log with the frames.
    node.log_line("INFO  | 12:00:01 42 [SerialConsole] Serial API started")
    ping_answered(node)
    ids = [node.user_text(0x1A2B3C01 + i % 3, "/ping", dm=i % 2 == 0) for i in range(20)]
    texts = node.wait_texts(21, 20)
    assert [t.reply_id for t in texts[1:]] == ids  # in order, none lost, none twice
    assert len(node.texts) == 21
    assert node.counters.connections == 1 and node.counters.handshakes == 1
    assert bot.link.status.reconnects == 0


def test_unplug_is_reported_once_and_plug_back_delivers_what_was_queued(node, start_bot, caplog):
    caplog.set_level(logging.INFO, logger="meshbot")
    node.attach_serial()
    # Pacing holds the second pong in the outbox while the device is away.
    # A long link timeout: an unplug noticed quickly is then told apart from one noticed by it.
    bot = start_serial_bot(start_bot, node, MIN_TEXT_INTERVAL_S=3.0, LINK_TIMEOUT_S=6.0)
    first = node.user_text(0x1A2B3C01, "/ping")
    node.wait_texts(1, 5)
    second = node.user_text(0x1A2B3C02, "/ping")

    def second_pong_waits() -> bool:
        # `queued` also counts a text in flight: only once the first pong is confirmed
        # sent does `queued == 1` mean the second one waits in the outbox.
        stats = bot.sender.stats()
        return stats.sent == 1 and stats.queued == 1

    wait_until(second_pong_waits, 5)
    started = time.monotonic()
    node.unplug()
    wait_until(lambda: bot.link.status.reconnects == 1, 5)
    detected = time.monotonic() - started
    bot.sender.send("written while unplugged")
    time.sleep(0.8)  # several reconnect attempts fail: the device is gone
    assert bot.sender.get_interface() is None
    node.plug_back()
    texts = node.wait_texts(3, 15)
    assert [t.reply_id for t in texts[:2]] == [first, second]
    assert texts[2].text == "written while unplugged"
    assert [t.connection for t in texts] == [1, 2, 2]
    time.sleep(0.3)
    assert len(node.texts) == 3  # nothing twice
    assert detected < 3.0  # the read fails at once (about 10 ms): no waiting for the 6 s link timeout
    warnings = link_warnings(caplog)
    assert len(warnings) == 1, warnings
    assert "lost after" in warnings[0] and "serial device gone (unplugged?)" in warnings[0]
    assert any("link up after" in r.getMessage() for r in caplog.records)


def test_device_absent_at_start_is_retried_with_backoff_until_it_appears(node, start_bot, caplog):
    caplog.set_level(logging.INFO, logger="meshbot")
    node.attach_serial(plugged=False)
    bot = start_serial_bot(start_bot, node, wait=False)
    expected = f"cannot reach the node at {node.serial_path}: no such device; retrying"
    wait_until(lambda: expected in caplog.text, 5)
    time.sleep(1.0)
    node.plug_back()
    assert node.wait_connected(10)
    wait_until(lambda: bot.sender.get_interface() is not None, 5)
    ping_answered(node)
    assert link_warnings(caplog) == [expected]  # one line, no traceback, for the whole outage
    assert "Traceback" not in caplog.text
    up = [r.getMessage() for r in caplog.records if r.getMessage().startswith("link up after")]
    attempts = int(up[0].split(", ")[1].split()[0])
    # About 1.1 s with delays from 0.05 s doubling to 0.3 s: a handful of attempts, not a
    # tight loop, and not one long sleep either.
    assert 3 <= attempts <= 15, up


def test_silent_node_over_serial_is_detected_by_the_probe(node, start_bot, caplog):
    caplog.set_level(logging.INFO, logger="meshbot")
    node.attach_serial()
    bot = start_serial_bot(start_bot, node)
    ping_answered(node)
    started = time.monotonic()
    node.go_silent()  # the node reads the line and answers nothing, ever
    wait_until(lambda: bot.link.status.reconnects == 1, 10)
    detected = time.monotonic() - started
    assert detected < FAST["LINK_TIMEOUT_S"] + FAST["PROBE_INTERVAL_S"] + 1.0
    wait_until(lambda: "no frame from the node" in caplog.text, 5)
    # Closing and opening the device again starts a new session with the node.
    assert node.wait_connected(10, handshakes=2)
    ping_answered(node)
    assert len(link_warnings(caplog)) == 1


def test_device_held_by_another_program_is_one_clear_line(node, start_bot, caplog):
    caplog.set_level(logging.WARNING, logger="meshbot")
    path = node.attach_serial()
    other = serial.Serial(path, 115200, exclusive=True)  # the meshtastic CLI, say
    try:
        bot = start_serial_bot(start_bot, node, wait=False)
        wait_until(lambda: "in use by another program" in caplog.text, 5)
        assert node.counters.handshakes == 0
    finally:
        other.close()
    wait_until(lambda: bot.sender.get_interface() is not None, 5)
    assert link_warnings(caplog) == [
        f"cannot reach the node at {path}: in use by another program (it holds the port's lock: the meshtastic CLI?); retrying"
    ]


def test_a_stuck_device_never_blocks_a_write_for_long(node):
    """The library writes with pyserial's write_timeout=0, which spins forever on a full
    buffer; here a write gives up after write_timeout_s, without burning the CPU."""
    node.attach_serial()
    causes: list[str] = []
    iface = OptimizedSerialInterface(
        node.serial_path, events=LinkEvents(lost=causes.append), connect_timeout_s=2.0, write_timeout_s=0.3,
        connectNow=False,
    )
    last_write: dict[str, object] = {}

    def write_until_it_fails() -> None:
        blob = bytes(4096)
        for _ in range(64):  # a pty holds some 20 KB before writes block
            started, cpu = time.monotonic(), time.thread_time()
            try:
                iface._writeBytes(blob)
            except LinkLost as exc:
                last_write.update(error=exc, seconds=time.monotonic() - started, cpu=time.thread_time() - cpu)
                return

    try:
        iface.connect()
        node.stall()
        writer = threading.Thread(target=write_until_it_fails, daemon=True)
        writer.start()
        writer.join(5.0)  # a write that never returns fails the test here instead of hanging it
        assert not writer.is_alive(), "a write to the stuck device is still blocked"
        assert "timed out" in str(last_write["error"])
        assert last_write["seconds"] < 0.3 + 0.1 + 0.3
        assert last_write["cpu"] < 0.1  # waited in select(), did not spin
        assert len(causes) == 1 and "device not reading" in causes[0]
    finally:
        closer = threading.Thread(target=iface.close, daemon=True)
        started = time.monotonic()
        closer.start()
        closer.join(3.0)
    assert not closer.is_alive(), "close() is blocked"
    assert time.monotonic() - started < 2.0
    assert not iface._rxThread.is_alive()


def test_auto_with_no_device_says_so(start_bot, caplog):
    if meshtastic.util.findPorts(True):
        pytest.skip("this machine has a serial device the finder may take for a node")
    caplog.set_level(logging.WARNING, logger="meshbot")
    with SimulatedNode() as tcp_only:
        bot = start_bot(tcp_only, wait=False, CONNECTION="serial", SERIAL_PORT="auto")
        wait_until(lambda: link_warnings(caplog), 5)
        assert link_warnings(caplog) == [
            "cannot reach the node at the auto-detected serial port: no Meshtastic serial device found; retrying"
        ]
        assert bot.sender.get_interface() is None
        assert tcp_only.counters.connections == 0  # serial means serial: no TCP fallback


def test_auto_never_guesses_between_several_devices(monkeypatch):
    # The library's finder lists USB devices by vendor id; two are plugged in here.
    monkeypatch.setattr(meshtastic.util, "findPorts", lambda eliminate_duplicates=False: ["/dev/ttyACM0", "/dev/ttyUSB0"])
    with pytest.raises(SerialPortNotFound) as caught:
        find_serial_port()
    assert describe_error(caught.value) == "several devices: /dev/ttyACM0, /dev/ttyUSB0; set SERIAL_PORT"
    monkeypatch.setattr(meshtastic.util, "findPorts", lambda eliminate_duplicates=False: ["/dev/ttyACM0"])
    assert find_serial_port() == "/dev/ttyACM0"


def test_serial_open_errors_read_as_causes(tmp_path):
    def open_error(path: str) -> BaseException:
        with pytest.raises(serial.SerialException) as caught:
            serial.Serial(path, 115200, exclusive=True)
        return caught.value

    assert describe_error(open_error(str(tmp_path / "ttyUSB9"))) == "no such device"
    assert describe_error(open_error(str(tmp_path))) == "not a serial device"
    assert describe_error(open_error("/dev/null")) == "not a serial device"
    # The tests run as root, who may open anything: this is the exception pyserial
    # raises for EACCES, built the way its open() builds it.
    denied = serial.SerialException(errno.EACCES, "could not open port /dev/ttyUSB0: [Errno 13] Permission denied")
    assert describe_error(denied) == "permission denied (the bot's user must be in group dialout)"


@pytest.mark.parametrize(
    "values, expected",
    [
        ({"CONNECTION": "usb"}, "CONNECTION = 'usb': expected one of 'tcp', 'serial'"),
        ({"CONNECTION": "serial", "SERIAL_PORT": "ttyUSB0"}, "SERIAL_PORT: expected a device path"),
        ({"CONNECTION": "serial", "SERIAL_PORT": ""}, "SERIAL_PORT: expected a device path"),
        ({"CONNECTION": "serial", "SERIAL_PORT": 0}, "SERIAL_PORT: expected a device path"),
        ({"CONNECTION": "tcp", "NODE_HOST": ""}, "NODE_HOST is required"),
    ],
)
def test_bad_serial_settings_are_config_errors(node, values, expected):
    with pytest.raises(ConfigError, match="^" + expected.replace("(", r"\(").replace(")", r"\)")):
        settings_for(node, **values)


def test_bad_serial_config_exits_78_and_serial_needs_no_host(tmp_path):
    def check(body: str) -> subprocess.CompletedProcess:
        path = tmp_path / "config.py"
        path.write_text(body)
        return subprocess.run(
            [sys.executable, str(ROOT / "main.py"), "--config", str(path), "--check-config"],
            capture_output=True, text=True, timeout=30,
        )

    result = check("CONNECTION = 'serial'\nSERIAL_PORT = 'ttyUSB0'\n")
    assert result.returncode == EX_CONFIG
    assert [ln for ln in result.stderr.splitlines() if ln.strip()][0].count("SERIAL_PORT") == 1
    result = check("CONNECTION = 'serial'\nSERIAL_PORT = '/dev/serial/by-id/usb-x-if00'\n")
    assert result.returncode == 0, result.stderr


def test_unplugging_does_not_kill_a_daemon_that_leads_its_session(node, tmp_path):
    """systemd starts every service as a session leader. The library opens the device
    without O_NOCTTY, which makes it the daemon's controlling terminal: unplugging it then
    sends SIGHUP, and the daemon dies (measured). The bot's open must not do that."""
    node.attach_serial()
    config = tmp_path / "config.py"
    fast = "".join(f"{key} = {value!r}\n" for key, value in FAST.items())
    config.write_text(f"CONNECTION = 'serial'\nSERIAL_PORT = {node.serial_path!r}\n{fast}")
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "main.py"), "--config", str(config)],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        assert node.wait_connected(15)
        stat = Path(f"/proc/{proc.pid}/stat").read_text()
        assert int(stat.rsplit(")", 1)[1].split()[4]) == 0  # tty_nr: no controlling terminal
        node.unplug()
        time.sleep(0.3)
        assert proc.poll() is None, "the daemon died when the device was unplugged"
        node.plug_back()
        assert node.wait_connected(15, handshakes=2)
        ping_answered(node)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = proc.stderr.read() if proc.stderr else ""
    assert "serial device gone (unplugged?)" in stderr
    assert "Traceback" not in stderr
