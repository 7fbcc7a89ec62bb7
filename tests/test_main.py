"""The command line and the config file, through `main.py` in a real subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from meshbot.config import EX_CONFIG, Settings, load_settings
from meshbot.configtext import REFERENCE, example_config_text, markdown_key_table, with_key_table
from meshbot.sim.node import SimulatedNode
from tests.conftest import ROOT, wait_until


def run_main(*args: str, cwd: Path = ROOT, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "main.py"), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def write_config(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "config.py"
    path.write_text(body)
    return path


@pytest.mark.parametrize(
    "line, key, expected",
    [
        ('NODE_PORT = "abc"', "NODE_PORT", "an integer from 1 to 65535"),
        ("NODE_PORT = 70000", "NODE_PORT", "an integer from 1 to 65535"),
        ("MAX_TEXT_BYTES = 229", "MAX_TEXT_BYTES", "an integer from 40 to 228"),
        ("MAX_CHUNKS = 0", "MAX_CHUNKS", "an integer from 1 to 10"),
        ("PROBE_INTERVAL_S = 'often'", "PROBE_INTERVAL_S", "a number"),
        ("PACE_BY_AIRTIME = 1", "PACE_BY_AIRTIME", "True or False"),
        ("LOG_LEVEL = 'LOUD'", "LOG_LEVEL", "one of 'DEBUG'"),
        ("LINK_TIMEOUT_S = 10", "LINK_TIMEOUT_S", "> PROBE_INTERVAL_S"),
        ("ADMIN_NODES = ['a1b2c3d4']", "ADMIN_NODES", "'!' and 8 hex digits"),
        ("ADMIN_NODES = '!a1b2c3d4'", "ADMIN_NODES", "a list of node ids"),
        ("SCHEDULED_BROADCASTS = [{'at': '25:00', 'text': 'x'}]", "SCHEDULED_BROADCASTS", "entry 0"),
        ("SCHEDULED_BROADCASTS = [{'every_s': 60}]", "SCHEDULED_BROADCASTS", "exactly one of 'text' or 'command'"),
        ("SCHEDULED_BROADCASTS = [{'every_s': 60, 'command': '/nosuch'}]", "SCHEDULED_BROADCASTS", "no such command"),
    ],
)
def test_bad_value_exits_78_with_one_line_naming_the_key(tmp_path, line, key, expected):
    config = write_config(tmp_path, f'NODE_HOST = "127.0.0.1"\n{line}\n')
    for extra in (["--check-config"], []):  # the daemon itself stops before connecting
        result = run_main("--config", str(config), *extra)
        assert result.returncode == EX_CONFIG, result.stderr
        lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1, result.stderr
        assert key in lines[0] and expected in lines[0]


def test_missing_node_host_and_missing_file_exit_78(tmp_path):
    result = run_main("--config", str(write_config(tmp_path, "NODE_PORT = 4403\n")), "--check-config")
    assert result.returncode == EX_CONFIG and "NODE_HOST is required" in result.stderr
    result = run_main("--config", str(tmp_path / "nope.py"), "--check-config")
    assert result.returncode == EX_CONFIG and "not found" in result.stderr
    result = run_main("--config", str(write_config(tmp_path, "NODE_HOST = (\n")), "--check-config")
    assert result.returncode == EX_CONFIG and "syntax error" in result.stderr


def test_unknown_key_warns_with_the_closest_known_key(tmp_path):
    config = write_config(tmp_path, 'NODE_HOST = "10.0.0.2"\nNODE_PROT = 4403\nhelper = 1\n')
    result = run_main("--config", str(config), "--check-config")
    assert result.returncode == 0, result.stderr
    assert "NODE_PROT = 4403: unknown key, ignored; did you mean NODE_PORT?" in result.stderr
    assert "helper" not in result.stderr  # lower-case names are the operator's own helpers


def test_version():
    result = run_main("--version")
    assert result.returncode == 0 and result.stdout.startswith("meshbot ")


def test_config_example_documents_every_key_with_its_default():
    text = (ROOT / "config.example.py").read_text()
    assert text == example_config_text(), "run `make example-config` after changing a key"
    settings = load_settings(ROOT / "config.example.py", demo=True)
    assert settings == Settings()


def test_the_configuration_reference_lists_every_key_as_the_code_defines_it():
    page = (ROOT / REFERENCE).read_text()
    assert markdown_key_table() in page, "run `make example-config` after changing a key"
    assert with_key_table(page) == page
    for name in Settings.specs():
        assert f"| `{name}` |" in page


def test_sigterm_stops_the_daemon_within_5_s_with_exit_0(tmp_path):
    with SimulatedNode(firmware_version="2.6.11") as node:
        config = write_config(
            tmp_path,
            f'NODE_HOST = "127.0.0.1"\nNODE_PORT = {node.port}\nMIN_TEXT_INTERVAL_S = 1.0\n',
        )
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "main.py"), "--config", str(config)],
            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        try:
            assert node.wait_connected(15)
            wait_until(lambda: node.connected, 5)
            # Two replies queued: the flush sends what the deadline allows.
            for _ in range(2):
                node.user_text(0x1A2B3C01, "/ping")
            node.wait_texts(1, 5)
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=10)
            elapsed = time.monotonic() - started
        finally:
            if proc.poll() is None:
                proc.kill()
        stderr = proc.stderr.read() if proc.stderr else ""
        assert code == 0, stderr
        assert elapsed < 5.0
        assert "SIGTERM received" in stderr
        assert len(node.texts) == 2  # the second reply was flushed before exit
        assert "Traceback" not in stderr


def run_check_with_stderr_in(tmp_path: Path, config: Path, journal_stream) -> list[str]:
    """--check-config with stderr going to a file; JOURNAL_STREAM from journal_stream(stat of that file)."""
    err_path = tmp_path / "stderr.txt"
    with open(err_path, "w") as err:
        st = os.fstat(err.fileno())
        env = dict(os.environ, JOURNAL_STREAM=journal_stream(st))
        subprocess.run(
            [sys.executable, str(ROOT / "main.py"), "--config", str(config), "--check-config"],
            stdout=subprocess.DEVNULL, stderr=err, env=env, timeout=30, check=False,
        )
    return err_path.read_text().splitlines()


def test_journal_format_carries_syslog_priorities(tmp_path):
    """stderr is the journal stream JOURNAL_STREAM names (same device and inode): priorities, no time."""
    config = write_config(tmp_path, 'NODE_HOST = "127.0.0.1"\nNODE_PROT = 1\n')
    lines = run_check_with_stderr_in(tmp_path, config, lambda st: f"{st.st_dev}:{st.st_ino}")
    assert any(ln.startswith("<4>meshbot.config: NODE_PROT = 1: unknown key") for ln in lines), lines
    assert any(ln.startswith("<6>meshbot: config OK") for ln in lines), lines
    assert not any(ln[:4].isdigit() for ln in lines)  # journald adds the timestamps


def test_an_inherited_journal_stream_is_not_the_journal(tmp_path):
    """JOURNAL_STREAM set, but naming another file (a child of a unit whose stderr was
    redirected): the readable format, with timestamps and level names."""
    config = write_config(tmp_path, 'NODE_HOST = "127.0.0.1"\nNODE_PROT = 1\n')
    lines = run_check_with_stderr_in(tmp_path, config, lambda st: f"{st.st_dev}:{st.st_ino + 1}")
    assert not any(ln.startswith("<") for ln in lines), lines
    assert any(ln[:4].isdigit() and "WARNING meshbot.config: NODE_PROT = 1: unknown key" in ln for ln in lines), lines


def test_demo_runs_the_script_against_the_simulated_node():
    result = run_main("--demo", "--demo-seconds", "26", timeout=60)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "ALIC  -> ch0   /ping" in out
    assert "BOT   -> ch0   pong" in out
    assert "BOT   -> BOB   commands: /echo /ping" in out  # a DM answered by DM
    assert "BOT   -> ch0   CARL: QSL from the hilltop, 73" in out
    assert "BOT   -> ch0   Lyon, FR: " in out  # /weather from the fake Open-Meteo
    assert "BOT   -> ch0   ALIC 3d:" in out  # /forecast at a node's position
    assert "unknown command /pong" in out
    assert "BOT   -> ch0   not authorized" in out  # /bc from a non-admin
    assert "BOT   -> ch1   pong" in out  # after the scripted FIN
    assert "link up after" in result.stderr
