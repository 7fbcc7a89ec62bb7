"""systemd's notify protocol over a real AF_UNIX datagram socket, as systemd listens on it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import types
from pathlib import Path
from typing import Iterator

import pytest

from meshbot import handlers
from main import run_daemon
from meshbot.app import Bot
from meshbot.router import command
from meshbot.sim.node import SimulatedNode
from meshbot.systemd import ServiceNotifier
from tests.conftest import ROOT, settings_for, wait_until


class NotifyListener:
    """What systemd does with NOTIFY_SOCKET: receive datagrams and keep them, in order."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address.replace("@", "\0", 1) if address.startswith("@") else address)
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, dict[str, str]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            fields = dict(line.split("=", 1) for line in data.decode().split("\n"))
            self.messages.append((time.monotonic(), fields))

    def with_key(self, key: str) -> list[tuple[float, dict[str, str]]]:
        return [(at, fields) for at, fields in list(self.messages) if key in fields]

    def statuses(self) -> list[str]:
        return [fields["STATUS"] for _, fields in self.with_key("STATUS")]

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


def _listen(kind: str, tmp_path: Path) -> Iterator[NotifyListener]:
    # systemd itself uses a path (/run/systemd/notify); containers and tests often the abstract namespace.
    address = str(tmp_path / "notify") if kind == "path" else f"@meshbot-test-{os.getpid()}-{time.monotonic_ns()}"
    listen = NotifyListener(address)
    yield listen
    listen.close()


@pytest.fixture
def listener(tmp_path) -> Iterator[NotifyListener]:
    yield from _listen("path", tmp_path)


@pytest.fixture(params=["path", "abstract"])
def any_listener(request, tmp_path) -> Iterator[NotifyListener]:
    yield from _listen(request.param, tmp_path)


def test_each_message_is_one_datagram_of_key_value_lines(any_listener):
    listener = any_listener
    notifier = ServiceNotifier({"NOTIFY_SOCKET": listener.address})
    assert notifier.enabled and notifier.watchdog_interval_s is None
    notifier.ready("link up to 10.0.0.1:4403 · 0 reconnects · 0 commands")
    notifier.status("two\nlines")
    notifier.watchdog()
    notifier.stopping("stopping")
    wait_until(lambda: len(listener.messages) == 4, 5)
    assert [fields for _, fields in listener.messages] == [
        {"READY": "1", "STATUS": "link up to 10.0.0.1:4403 · 0 reconnects · 0 commands"},
        {"STATUS": "two lines"},  # a newline would end the field
        {"WATCHDOG": "1"},
        {"STOPPING": "1", "STATUS": "stopping"},
    ]
    notifier.close()


def test_without_notify_socket_nothing_is_sent_and_nothing_fails():
    notifier = ServiceNotifier({})
    assert not notifier.enabled
    notifier.ready("x")
    notifier.watchdog()
    notifier.close()


@pytest.mark.parametrize(
    "environ, expected",
    [
        ({"WATCHDOG_USEC": "60000000"}, 30.0),  # half of WatchdogSec=60
        ({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "4242"}, 30.0),
        ({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "1"}, None),  # meant for another process
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval_is_half_of_watchdog_usec(environ, expected):
    assert ServiceNotifier(environ, pid=4242).watchdog_interval_s == expected


def test_a_vanished_notify_socket_is_one_warning_not_a_crash(tmp_path, caplog):
    notifier = ServiceNotifier({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    notifier.status("a")
    notifier.status("b")
    assert sum("cannot notify systemd" in r.getMessage() for r in caplog.records) == 1


def hanging_module(release: threading.Event) -> types.ModuleType:
    module = types.ModuleType("handlers_test_hang")

    @command("hang", help="/hang: never returns (a deadlocked handler)")
    def hang(ctx):
        release.wait()
        return "released"

    module.hang = hang
    return module


class Supervised:
    """`run_daemon` (main.py's loop) on a thread, as main() runs it, with a bot of the test's making."""

    def __init__(self, bot: Bot, notifier: ServiceNotifier) -> None:
        self.bot = bot
        self.stop = threading.Event()
        self.result: list[int] = []
        self.thread = threading.Thread(target=lambda: self.result.append(run_daemon(bot, self.stop, notifier)))
        self.thread.start()

    def end(self) -> None:
        self.stop.set()
        self.thread.join(10)


def test_watchdog_fed_while_healthy_withheld_and_exit_1_when_every_handler_hangs(node, listener):
    release = threading.Event()
    bot = Bot(settings_for(node, HANDLER_THREADS=1), modules=(*handlers.MODULES, hanging_module(release)))
    bot.stall_limit_s = 1.0
    daemon = Supervised(bot, ServiceNotifier({"NOTIFY_SOCKET": listener.address, "WATCHDOG_USEC": "200000"}))
    try:
        ready = wait_until(lambda: listener.with_key("READY"), 5)
        assert ready[0][1]["STATUS"] == f"connecting to {node.host}:{node.port}"
        wait_until(lambda: listener.statuses()[-1] == f"link up to {node.host}:{node.port} · 0 reconnects · 0 commands", 5)
        wait_until(lambda: len(listener.with_key("WATCHDOG")) >= 5, 5)
        node.user_text(0x1A2B3C01, "/ping")
        wait_until(lambda: "link up to" in listener.statuses()[-1] and "1 command" in listener.statuses()[-1], 5)

        hung_at = time.monotonic()
        node.user_text(0x1A2B3C01, "/hang")
        daemon.thread.join(10)
        assert daemon.result == [1]
        pings = [at for at, _ in listener.with_key("WATCHDOG")]
        # Fed every 0.1 s while healthy; nothing after the stall limit passed.
        assert max(b - a for a, b in zip(pings, pings[1:])) < 1.0
        assert pings[-1] < hung_at + bot.stall_limit_s + 0.2
        stopping = listener.with_key("STOPPING")[-1][1]
        assert stopping["STATUS"].startswith("stopping: fatal: every handler thread has been stuck in one step")
    finally:
        release.set()
        daemon.end()


def test_status_shows_the_outage_and_its_cause(node, listener):
    bot = Bot(settings_for(node, RECONNECT_MIN_S=0.2, RECONNECT_MAX_S=0.2))
    daemon = Supervised(bot, ServiceNotifier({"NOTIFY_SOCKET": listener.address}))
    try:
        wait_until(lambda: listener.statuses() and listener.statuses()[-1].startswith("link up to"), 5)
        node.stop_listening(2.5)
        node.drop()
        down = wait_until(lambda: [s for s in listener.statuses() if s.startswith("link down 1 s: ")], 5)
        assert down[-1] == "link down 1 s: connection refused"
        wait_until(lambda: listener.statuses()[-1].startswith("link up to") and "1 reconnect ·" in listener.statuses()[-1], 10)
    finally:
        daemon.end()
    assert daemon.result == [0]
    assert listener.with_key("STOPPING")[-1][1]["STATUS"] == "stopping, 0 texts to flush"


def test_the_daemon_under_a_notify_socket_signals_ready_watchdog_and_stopping(tmp_path, any_listener):
    listener = any_listener
    with SimulatedNode(firmware_version="2.6.11") as node:
        config = tmp_path / "config.py"
        config.write_text(f'NODE_HOST = "{node.host}"\nNODE_PORT = {node.port}\n')
        env = dict(os.environ, NOTIFY_SOCKET=listener.address, WATCHDOG_USEC="1000000")
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "main.py"), "--config", str(config)],
            cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True,
        )
        try:
            assert node.wait_connected(10)
            wait_until(lambda: listener.with_key("READY"), 10)
            wait_until(lambda: any(s.startswith("link up to") for s in listener.statuses()), 10)
            wait_until(lambda: len(listener.with_key("WATCHDOG")) >= 3, 5)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
    assert listener.with_key("STOPPING")
    assert "Traceback" not in (proc.stderr.read() if proc.stderr else "")
