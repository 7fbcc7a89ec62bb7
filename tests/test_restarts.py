"""Restarts are boring (issue 15): a config file that raises anything, SystemExit included,
is a config error (exit 78, no restart loop) naming the file and the line; a malformed row
in the state database is skipped with one WARNING; the outbox a restart takes back obeys
OUTBOX_TTL_S and OUTBOX_MAX; SIGHUP to the real process is a clean stop, like SIGTERM."""

from __future__ import annotations

import logging
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from meshbot.config import EX_CONFIG
from meshbot.outbox.sender import DropReason
from meshbot.sim.node import SimulatedNode
from meshbot.state.store import DB_NAME
from tests.conftest import ROOT, wait_until

ALICE = 0x1A2B3C01


def run_main(*args: str, cwd: Path, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "main.py"), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


# --- a config file that raises ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "body, where, words",
    [
        ("NODE_HOST = '127.0.0.1'\nimport sys; sys.exit(3)\n", 2, "sys.exit(3)"),
        ("NODE_HOST = '127.0.0.1'\nraise SystemExit\n", 2, "SystemExit"),
        # Raised deeper, in what the file called: the file's own line that called it.
        ("import json\n\nNODE_HOST = json.loads('{')\n", 3, "JSONDecodeError: Expecting property name"),
    ],
)
@pytest.mark.parametrize("mode", [("--check-config",), ()])
def test_a_config_file_that_raises_anything_exits_78_naming_its_line(tmp_path, body, where, words, mode):
    config = tmp_path / "config.py"
    config.write_text(body)
    # The daemon itself too: it must stop at the config, never reach the node (nothing listens).
    result = run_main("--config", str(config), *mode, cwd=tmp_path)
    assert result.returncode == EX_CONFIG, result.stderr
    last = [ln for ln in result.stderr.splitlines() if ln.strip()][-1]
    assert f"config error: {config}:{where}: " in last and words in last, result.stderr
    assert "Traceback" not in result.stderr


# --- the state database ----------------------------------------------------------------------------
def _make_state(node: SimulatedNode, start_bot, state_dir: Path) -> None:
    """A database as a run of this version leaves it (made by the bot itself)."""
    first = start_bot(node, STATE_DIR=str(state_dir))
    first.stop(budget_s=2.0)


@pytest.mark.parametrize(
    "table, insert, shown",
    [
        ("outbox", "INSERT INTO outbox (text, dest, channel, created) VALUES ('old', 4294967295, 0, 'yesterday')",
         "outbox row seq 2: created is 'yesterday', not a wall time"),
        ("outbox", "INSERT INTO outbox (text, dest, channel, created) VALUES ('old', 'everyone', 0, 1.0)",
         "outbox row seq 2: dest is 'everyone', not a node number"),
        ("outbox", "INSERT INTO outbox (text, dest, channel, created) VALUES (x'00ff', 4294967295, 0, 1.0)",
         "outbox row seq 2: text is b'\\x00\\xff', not a text"),
        ("answered", "INSERT INTO answered (sender, packet_id, at) VALUES (1, 2, 'noon')",
         "answered row sender 1, packet_id 2: at is 'noon', not a wall time"),
        ("counters", "INSERT INTO counters (name, value) VALUES ('sent', 'many')",
         "counters row name 'sent': value is 'many', not a count"),
    ],
)
def test_a_malformed_state_row_is_skipped_with_one_warning_and_the_bot_starts(
    node, start_bot, tmp_path, caplog, table, insert, shown
):
    state_dir = tmp_path / "state"
    _make_state(node, start_bot, state_dir)
    with sqlite3.connect(state_dir / DB_NAME) as db:
        db.execute("INSERT INTO outbox (text, dest, channel, created) VALUES ('kept', 4294967295, 0, ?)", (time.time(),))
        db.execute(insert)
    caplog.set_level(logging.INFO, logger="meshbot")
    bot = start_bot(node, STATE_DIR=str(state_dir))
    assert [t.text for t in node.wait_texts(1, 10)] == ["kept"]  # the good row still goes out
    node.user_text(ALICE, "/ping")
    assert node.wait_texts(2, 10)[1].text.startswith("pong")
    assert bot.state.durable
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert f"state database {state_dir / DB_NAME}: removed 1 malformed row this version cannot read" in warnings[0]
    assert f"(first: {shown})" in warnings[0], warnings[0]
    bot.stop(budget_s=2.0)

    caplog.clear()  # removed for good: the next start says nothing
    start_bot(node, STATE_DIR=str(state_dir))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_the_restored_outbox_obeys_outbox_ttl_s_and_outbox_max(node, start_bot, tmp_path, caplog):
    """50,000 texts left behind (a long outage, an older version): a live outbox would hold
    OUTBOX_MAX of them at most, none older than OUTBOX_TTL_S, and the restart does the same."""
    state_dir = tmp_path / "state"
    _make_state(node, start_bot, state_dir)
    now = time.time()
    everyone, stranger = 0xFFFFFFFF, 0x0BAD0001
    rows = [(f"stale {i}", everyone, 0, None, now - 3600 + i * 0.01, None, 1, None, "reply", 0) for i in range(30_000)]
    rows += [(f"fresh {i}", everyone, 0, None, now - 500 + i * 0.01, None, 1, None, "reply", 0) for i in range(19_990)]
    # Replies to a node never announced: a full outbox drops these first, however new.
    rows += [(f"stranger {i}", stranger, 0, None, now - 1 + i * 0.01, None, 1, stranger, "reply", 1) for i in range(10)]
    with sqlite3.connect(state_dir / DB_NAME) as db:
        db.executemany(
            "INSERT INTO outbox (text, dest, channel, reply_to, created, packet_id, attempt, requester, kind, stranger)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows,
        )
    caplog.set_level(logging.INFO, logger="meshbot")
    bot = start_bot(node, STATE_DIR=str(state_dir), OUTBOX_MAX=50, OUTBOX_TTL_S=600.0)
    stats = bot.sender.stats()
    assert stats.queued <= 50
    assert (stats.dropped_by[DropReason.TTL], stats.dropped_by[DropReason.OUTBOX_FULL]) == (30_000, 19_950)
    assert "50000 texts left by the last run: 50 to send, 30000 older than OUTBOX_TTL_S and 19950 over OUTBOX_MAX dropped" in caplog.text
    with sqlite3.connect(state_dir / DB_NAME) as db:  # gone from the store too: not restored again
        assert db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] <= 50
    # What goes out: the 50 newest of the known class, in their order; no stranger's text.
    texts = node.wait_texts(50, 60)
    assert [t.text for t in texts] == [f"fresh {i}" for i in range(19_940, 19_990)]
    wait_until(bot.sender.is_idle, 10)
    assert len(node.texts) == 50
    drop_lines = [r for r in caplog.records if r.levelno >= logging.WARNING and "dropped" in r.getMessage()]
    # One line per kind (too old, outbox full, to strangers), the rest counted: not one per text.
    assert len(drop_lines) == 3, [r.getMessage() for r in drop_lines]


# --- SIGHUP ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGTERM])
def test_sighup_to_the_real_daemon_is_a_clean_stop_like_sigterm(node, tmp_path, signum):
    config = tmp_path / "config.py"
    config.write_text(f"NODE_HOST = '127.0.0.1'\nNODE_PORT = {node.port}\nSTATE_DIR = ':memory:'\n")
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "main.py"), "--config", str(config)],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert node.wait_connected(15)
        node.user_text(ALICE, "/ping")
        assert node.wait_texts(1, 10)[0].text.startswith("pong")  # running, its handlers installed
        proc.send_signal(signum)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = proc.stderr.read() if proc.stderr else ""
    assert f"{signal.Signals(signum).name} received, stopping" in log
    assert "meshbot stopped in" in log  # the stop path ran: outbox flushed, link closed
    assert "Traceback" not in log
