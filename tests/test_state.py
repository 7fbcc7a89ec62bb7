"""Durable state (STATE_DIR): the outbox and the commands answered survive a SIGKILL of the real
`main.py` process; a database that cannot be used is one WARNING and a bot that works anyway."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator, Optional

import pytest

from meshbot.sim.node import SimulatedNode
from meshbot.state.store import DB_NAME, StateStore, StoredText, resolve_state_dir
from tests.conftest import ROOT, wait_until

ALICE, BOB = 0x1A2B3C01, 0x1A2B3C02
CLONE_NEWUSER = 0x10000000


class Daemon:
    """main.py in its own process, with one config file and one STATE_DIR for all its lives."""

    def __init__(self, tmp_path: Path, node: SimulatedNode, **settings: object) -> None:
        self.state_dir = tmp_path / "state"
        values = {
            "NODE_HOST": "127.0.0.1",
            "NODE_PORT": node.port,
            "STATE_DIR": str(self.state_dir),
            # A hung node is noticed late on purpose: the test kills the bot while its text waits.
            "PROBE_INTERVAL_S": 10.0,
            "LINK_TIMEOUT_S": 30.0,
            "RECONNECT_MIN_S": 0.05,
            "RECONNECT_MAX_S": 0.3,
            "HANDLER_THREADS": 1,  # commands handled in the order they came
            **settings,
        }
        self.config = tmp_path / "config.py"
        self.config.write_text("".join(f"{key} = {value!r}\n" for key, value in values.items()))
        self.cwd = tmp_path
        self.proc: subprocess.Popen | None = None
        self.logs: list[str] = []

    def start(self, preexec_fn: Optional[Callable[[], None]] = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "main.py"), "--config", str(self.config)],
            cwd=self.cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, preexec_fn=preexec_fn,
        )

    def kill(self) -> None:
        """SIGKILL: no flush, no goodbye, nothing the process could do about it."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.logs.append(self.proc.stderr.read() if self.proc.stderr else "")
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            finally:
                if self.proc.poll() is None:
                    self.proc.kill()
            self.logs.append(self.proc.stderr.read() if self.proc.stderr else "")
            self.proc = None

    def stored_texts(self) -> list[tuple[str, int | None]]:
        """(text, packet id) of the outbox as stored, read as another program would."""
        path = self.state_dir / DB_NAME
        if not path.exists():
            return []
        with sqlite3.connect(path) as db:
            return db.execute("SELECT text, packet_id FROM outbox ORDER BY seq").fetchall()


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[list[Daemon]]:
    made: list[Daemon] = []
    yield made
    for daemon in made:
        daemon.stop()


def test_texts_waiting_when_the_bot_is_killed_go_out_once_in_order_after_the_restart(node, tmp_path, daemons):
    daemon = Daemon(tmp_path, node, MIN_TEXT_INTERVAL_S=2.5)
    daemons.append(daemon)
    daemon.start()
    assert node.wait_connected(15)
    node.user_text(ALICE, "/echo before")
    assert [t.text for t in node.wait_texts(1, 10)] == ["ALIC: before"]  # accepted: not sent again

    # The bot sends its next text 2.5 s after the node's word on this one. Meanwhile three
    # commands arrive and the node hangs (socket open, nothing read or answered): the first
    # reply is written and waits for a verdict, the others wait behind it. Then the bot is killed.
    assert node.deliver_many([node.user_packet(ALICE, f"/echo {word}") for word in ("one", "two", "three")])
    node.go_silent()
    assert len(node.texts) == 1
    stored = wait_until(
        lambda: (rows := daemon.stored_texts()) and len(rows) == 3 and rows[0][1] is not None and rows, 10
    )
    assert [text for text, _ in stored] == ["ALIC: one", "ALIC: two", "ALIC: three"]
    unconfirmed_id = stored[0][1]
    daemon.kill()
    assert len(node.texts) == 1

    daemon.start()  # the same config, the same STATE_DIR
    texts = node.wait_texts(4, 20)
    assert [t.text for t in texts] == ["ALIC: before", "ALIC: one", "ALIC: two", "ALIC: three"]
    assert texts[1].id == unconfirmed_id  # receiving nodes drop a copy of (from, id) they already got
    assert len({t.id for t in texts}) == 4
    assert all(t.connection == texts[1].connection for t in texts[1:])
    wait_until(lambda: daemon.stored_texts() == [], 5)
    daemon.stop()
    assert "3 texts left by the last run, to send" in daemon.logs[-1]
    assert len(node.texts) == 4  # nothing more after the SIGTERM either


def test_a_command_the_node_replays_after_a_restart_is_not_answered_again(node, tmp_path, daemons):
    daemon = Daemon(tmp_path, node)
    daemons.append(daemon)
    daemon.start()
    assert node.wait_connected(15)
    ping = node.user_packet(BOB, "/ping", dm=True)
    echo = node.user_packet(ALICE, "/echo once")  # answered with a broadcast and no reply
    assert node.deliver(ping) and node.deliver(echo)
    assert len(node.wait_texts(2, 10)) == 2
    wait_until(lambda: daemon.stored_texts() == [], 5)
    daemon.kill()

    daemon.start()
    assert node.wait_connected(15, handshakes=2)
    # The node hands over what it kept for its client: the same packets again, then a new one.
    assert node.deliver(ping) and node.deliver(echo)
    node.user_text(ALICE, "/echo after")
    texts = node.wait_texts(3, 10)
    assert [t.text.split(":")[0] for t in texts] == ["pong", "ALIC", "ALIC"]
    assert [t.text for t in texts[1:]] == ["ALIC: once", "ALIC: after"]
    assert texts[0].to == BOB and texts[0].reply_id == ping.id
    daemon.stop()
    assert len(node.texts) == 3
    assert "2 commands answered by the last run will not be answered again" in daemon.logs[-1]


def test_counters_survive_a_restart_and_an_expired_text_is_dropped_on_wall_time(node, start_bot, tmp_path, caplog):
    state_dir = tmp_path / "state"
    first = start_bot(node, STATE_DIR=str(state_dir), OUTBOX_TTL_S=60.0)
    node.user_text(ALICE, "/ping")
    node.wait_texts(1, 10)
    wait_until(lambda: first.sender.stats().sent == 1 and first.stats.commands == 1, 5)
    first.stop(budget_s=2.0)

    # Two texts left by a run that ended long ago, as its store kept them: one older than
    # OUTBOX_TTL_S on the wall clock, one not.
    store = StateStore(state_dir)
    assert store.open()
    store.enqueue([
        StoredText("stale", 0xFFFFFFFF, 0, None, time.time() - 61),
        StoredText("fresh", 0xFFFFFFFF, 0, None, time.time() - 50),
    ])
    store.close()

    caplog.set_level(logging.WARNING, logger="meshbot")
    second = start_bot(node, STATE_DIR=str(state_dir), OUTBOX_TTL_S=60.0)
    assert second.stats.commands == 1
    texts = node.wait_texts(2, 10)
    assert [t.text.split(":")[0] for t in texts] == ["pong", "fresh"]
    wait_until(lambda: second.sender.stats().sent == 2, 5)
    stats = second.sender.stats()
    assert (stats.sent, stats.dropped, stats.queued) == (2, 1, 0)
    assert "dropped text to ch0 'stale': not sent within OUTBOX_TTL_S" in caplog.text


def test_the_outbox_keeps_its_order_when_a_text_is_put_back_at_the_head(tmp_path):
    store = StateStore(tmp_path)
    assert store.open()
    texts = [StoredText(f"t{i}", 1, 0, None, time.time()) for i in range(3)]
    store.enqueue(texts, answered=(7, 70))
    store.writing(texts[0].row, 0xABCD)
    store.done([texts[0].row], "sent")
    store.put_back(StoredText("retry", 1, 0, None, time.time(), attempt=2, requester=9, kind="broadcast", stranger=True))
    store.done([texts[2].row, None], "dropped")  # a text never stored counts too
    store.close()

    again = StateStore(tmp_path)
    assert again.open()
    assert [(t.text, t.attempt, t.packet_id) for t in again.pending()] == [("retry", 2, None), ("t1", 1, None)]
    assert [(t.requester, t.kind, t.stranger) for t in again.pending()] == [(9, "broadcast", True), (None, "reply", False)]
    assert again.counters() == {"sent": 1, "dropped": 2}
    assert [key for key, _age in again.answered_since(600)] == [(7, 70)]
    with sqlite3.connect(tmp_path / DB_NAME) as db:  # a key from before the window
        db.execute("UPDATE answered SET at = ?", (time.time() - 601,))
    assert again.answered_since(600) == []
    assert again.durable
    again.close()


def test_a_second_bot_on_the_same_state_dir_runs_in_memory(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="meshbot")
    first, second = StateStore(tmp_path), StateStore(tmp_path)
    assert first.open()
    assert not second.open() and not second.durable
    assert "in use by another meshbot process" in caplog.text
    first.close()  # the lock goes with it (and with the process, however it dies)
    assert second.open()
    second.close()


def test_state_dir_defaults_to_systemds_state_directory_else_dot_state(monkeypatch):
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/meshbot:/var/lib/other")
    assert resolve_state_dir("") == Path("/var/lib/meshbot")
    assert resolve_state_dir("/srv/bot") == Path("/srv/bot")
    assert resolve_state_dir(":memory:") is None
    monkeypatch.delenv("STATE_DIRECTORY")
    assert resolve_state_dir("") == Path("state")


def _garbage_file(tmp_path: Path) -> Path:
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    (state_dir / DB_NAME).write_bytes(b"this is not a database, just bytes " * 200)
    return state_dir


def _under_a_file(tmp_path: Path) -> Path:
    (tmp_path / "afile").write_text("")
    return tmp_path / "afile" / "state"  # mkdir fails, even for root


@pytest.mark.parametrize("make_state_dir, why", [(_garbage_file, "not a database"), (_under_a_file, "Not a directory")])
def test_an_unusable_database_is_one_warning_and_the_bot_works(node, start_bot, tmp_path, caplog, make_state_dir, why):
    state_dir = make_state_dir(tmp_path)
    caplog.set_level(logging.WARNING, logger="meshbot")
    bot = start_bot(node, STATE_DIR=str(state_dir))
    node.user_text(ALICE, "/ping")
    assert [t.text[:4] for t in node.wait_texts(1, 10)] == ["pong"]
    bot.stop(budget_s=2.0)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert f"state database {state_dir / DB_NAME} unusable" in warnings[0] and why in warnings[0]
    assert "running in memory" in warnings[0]
    assert not bot.state.durable


def test_a_database_failing_while_running_is_one_warning_and_the_bot_goes_on(node, start_bot, tmp_path, caplog):
    bot = start_bot(node, STATE_DIR=str(tmp_path / "state"))
    assert bot.state.durable
    caplog.set_level(logging.WARNING, logger="meshbot")
    # What a disk that fails (full, I/O error, file removed) does to the next statement: it raises.
    bot.state._db.close()  # noqa: SLF001 - the one fault injected from inside
    for count in (1, 2):
        node.user_text(ALICE, "/ping")
        assert len(node.wait_texts(count, 10)) == count
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "failed" in warnings[0] and "running in memory from now on" in warnings[0], warnings
    assert not bot.state.durable


def _without_root_powers() -> None:
    """In the child, before exec: a new user namespace. The process keeps its user (root) for
    the files' owner bits, but loses the capability to override them: a root-owned directory
    of mode 0555 is read-only to it, as it is to the service's own user."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWUSER) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWUSER)")


def test_a_read_only_state_dir_is_one_warning_and_the_real_daemon_works(node, tmp_path, daemons):
    daemon = Daemon(tmp_path, node)
    daemons.append(daemon)
    daemon.state_dir.mkdir(mode=0o555)
    try:
        daemon.start(preexec_fn=_without_root_powers if os.geteuid() == 0 else None)
    except subprocess.SubprocessError as exc:
        pytest.skip(f"running as root, and no user namespace to drop its powers in: {exc}")
    assert node.wait_connected(15)
    node.user_text(ALICE, "/ping")
    assert [t.text[:4] for t in node.wait_texts(1, 10)] == ["pong"]
    daemon.stop()
    warnings = [ln for ln in daemon.logs[-1].splitlines() if "WARNING" in ln]
    assert len(warnings) == 1, daemon.logs[-1]
    assert "state database" in warnings[0] and "unusable" in warnings[0] and "running in memory" in warnings[0]
    assert not list(daemon.state_dir.iterdir())
