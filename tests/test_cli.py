"""The newcomer's rough edges: NODE_HOST forms, lower-case keys, --check-config without the
dependencies, --probe, the demo and ./config.py, `make help` and `make check-config`, the
simulated node on its own, and log lines that tell the truth."""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from meshbot.config import EX_CONFIG, ConfigError, build_settings
from meshbot.sim.node import SimulatedNode
from tests.conftest import ROOT, wait_until

ALICE, BOB = 0x1A2B3C01, 0x1A2B3C02
MAKE = shutil.which("make")


def run_main(*args: str, cwd: Path = ROOT, python: tuple[str, ...] = (sys.executable,), timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([*python, str(ROOT / "main.py"), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


# --- NODE_HOST -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "values, host, port",
    [
        ({"NODE_HOST": "192.168.1.38"}, "192.168.1.38", 4403),
        ({"NODE_HOST": "192.168.1.38:4403"}, "192.168.1.38", 4403),  # as `meshtastic --host` teaches
        ({"NODE_HOST": "192.168.1.38:4404"}, "192.168.1.38", 4404),
        ({"NODE_HOST": "192.168.1.38:4404", "NODE_PORT": 4404}, "192.168.1.38", 4404),
        ({"NODE_HOST": "meshtastic.local"}, "meshtastic.local", 4403),
        ({"NODE_HOST": "fe80::1"}, "fe80::1", 4403),
        ({"NODE_HOST": "[fe80::1]:4404"}, "fe80::1", 4404),
    ],
)
def test_node_host_forms_that_work(values, host, port):
    settings = build_settings(values)
    assert (settings.NODE_HOST, settings.NODE_PORT) == (host, port)


@pytest.mark.parametrize(
    "values, words",
    [
        ({"NODE_HOST": "192.168.1.38:4404", "NODE_PORT": 4403}, ["names port 4404 but NODE_PORT = 4403", "give the port once"]),
        ({"NODE_HOST": "http://192.168.1.38"}, ["is a URL", "TCP API (port 4403)", "NODE_HOST = '192.168.1.38'"]),
        ({"NODE_HOST": "tcp://meshtastic.local:4403/"}, ["is a URL"]),
        ({"NODE_HOST": "192.168.1.38 "}, ["contains blanks", "e.g. '192.168.1.38'"]),
        ({"NODE_HOST": "192.168.1.38\n"}, ["contains blanks"]),
        ({"NODE_HOST": "my node"}, ["contains blanks"]),
        ({"NODE_HOST": "192.168.1.38:"}, ["the port after ':' is missing"]),
        ({"NODE_HOST": "192.168.1.38:http"}, ["is not a port number"]),
        ({"NODE_HOST": "192.168.1.38:70000"}, ["is not a port number"]),
        ({"NODE_HOST": "[zz::q]:4403"}, ["is not an IPv6 address"]),
        ({"NODE_HOST": "node/api"}, ["is not a host name"]),
        ({"NODE_HOST": 192}, ["expected a hostname or IP"]),
    ],
)
def test_node_host_forms_refused_with_a_hint(values, words):
    with pytest.raises(ConfigError) as caught:
        build_settings(values)
    message = str(caught.value)
    assert message.startswith("NODE_HOST") and "\n" not in message
    assert all(word in message for word in words), message


def test_a_bad_node_host_exits_78_with_one_line(tmp_path):
    config = tmp_path / "config.py"
    config.write_text("NODE_HOST = 'http://192.168.1.38:4403'\n")
    result = run_main("--config", str(config), "--check-config")
    assert result.returncode == EX_CONFIG
    assert len(lines(result.stderr)) == 1 and "NODE_HOST" in result.stderr and "is a URL" in result.stderr


# --- keys --------------------------------------------------------------------------------------------
def test_a_lowercase_key_is_a_warning_and_helpers_stay_silent(tmp_path):
    config = tmp_path / "config.py"
    config.write_text("NODE_HOST = '10.0.0.2'\nnode_port = 4404\nLog_Level = 'DEBUG'\nhelper = 1\nNODE_PROT = 1\n")
    result = run_main("--config", str(config), "--check-config")
    assert result.returncode == 0, result.stderr
    warnings = [ln for ln in lines(result.stderr) if "WARNING" in ln]
    assert any("node_port ignored: keys are upper case (did you mean NODE_PORT?)" in ln for ln in warnings), warnings
    assert any("Log_Level ignored: keys are upper case (did you mean LOG_LEVEL?)" in ln for ln in warnings), warnings
    assert any("NODE_PROT = 1: unknown key, ignored; did you mean NODE_PORT?" in ln for ln in warnings), warnings
    assert len(warnings) == 3 and "helper" not in result.stderr


# --- a Python without the dependencies -----------------------------------------------------------------
# The interpreter behind the venv (its symlink resolved: outside the venv), with -S: no
# site-packages at all, so neither meshtastic nor requests; only the standard library and the
# checkout (main.py's directory). What the system's python3 is on a fresh Pi.
BARE_PYTHON = (str(Path(sys.executable).resolve()), "-S")


def test_check_config_without_the_dependencies_says_how_to_run_it(tmp_path):
    config = tmp_path / "config.py"
    config.write_text("NODE_HOST = '10.0.0.2'\n")
    result = run_main("--config", str(config), "--check-config", python=BARE_PYTHON)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert len(lines(result.stderr)) == 1, result.stderr
    line = result.stderr
    assert "lacks meshbot's dependencies (no module named" in line, line
    if (ROOT / ".venv" / "bin" / "python").exists():
        assert f"{ROOT / '.venv' / 'bin' / 'python'} -m meshbot --config {config} --check-config" in line, line


def test_a_bad_config_is_still_found_without_the_dependencies(tmp_path):
    """The values are checked with the standard library alone: exit 78 naming the key."""
    config = tmp_path / "config.py"
    config.write_text("NODE_HOST = '10.0.0.2'\nNODE_PORT = 'abc'\n")
    result = run_main("--config", str(config), "--check-config", python=BARE_PYTHON)
    assert result.returncode == EX_CONFIG
    assert lines(result.stderr)[-1].endswith("config error: NODE_PORT = 'abc': expected an integer from 1 to 65535")


# --- --probe --------------------------------------------------------------------------------------
def test_probe_reports_the_node_and_closes_its_one_connection(tmp_path):
    with SimulatedNode(firmware_version="2.6.11", modem_preset="MEDIUM_FAST") as node:
        config = tmp_path / "config.py"
        config.write_text(f"NODE_HOST = '127.0.0.1:{node.port}'\n")
        result = run_main("--config", str(config), "--probe")
        assert result.returncode == 0, result.stderr
        out = lines(result.stdout)
        assert len(out) == 1 and result.stderr == "", (result.stdout, result.stderr)
        for part in (f"node !{node.node_num:08x} BOT", f"at 127.0.0.1:{node.port}", f"firmware {node.firmware_version}", "MEDIUM_FAST", "2 channels", "heartbeat round trip"):
            assert part in out[0], out[0]
        assert node.counters.connections == 1 and node.counters.handshakes == 1
        assert node.counters.heartbeats >= 3  # the handshake's probe and the timed ones
        assert not node.connected  # closed before exit


def test_probe_against_a_closed_port_is_one_line_and_exit_1(tmp_path):
    with socket.socket() as sock:  # a port that was free a moment ago and has no listener now
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = tmp_path / "config.py"
    config.write_text(f"NODE_HOST = '127.0.0.1'\nNODE_PORT = {port}\n")
    result = run_main("--config", str(config), "--probe")
    assert result.returncode == 1 and result.stdout == ""
    assert len(lines(result.stderr)) == 1, result.stderr
    assert f"probe failed: cannot reach the node at 127.0.0.1:{port}: connection refused" in result.stderr


def test_probe_of_a_node_that_never_answers_gives_up_after_the_connect_timeout(tmp_path):
    """The daemon waits on a silent node's one connection; a one-off probe may not."""
    from tests.test_link import MuteNode

    mute = MuteNode()
    try:
        config = tmp_path / "config.py"
        config.write_text(f"NODE_HOST = '127.0.0.1'\nNODE_PORT = {mute.port}\nCONNECT_TIMEOUT_S = 1.0\n")
        result = run_main("--config", str(config), "--probe")
        assert result.returncode == 1 and result.stdout == ""
        assert len(lines(result.stderr)) == 1, result.stderr
        assert f"probe failed: connected to 127.0.0.1:{mute.port} but got no node handshake: no config from the node within 1 s" in result.stderr
        assert len(mute.accepted) == 1
    finally:
        mute.close()


def test_the_simulated_node_runs_on_its_own(tmp_path):
    """`python -m meshbot.sim --port N`: a node other clients (here: --probe) can try."""
    sim = subprocess.Popen(
        [sys.executable, "-m", "meshbot.sim", "--port", "0"],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert sim.stdout is not None
        banner = sim.stdout.readline()
        assert "listening on 127.0.0.1:" in banner, banner
        port = int(banner.split("127.0.0.1:")[1].split(";")[0])
        config = tmp_path / "config.py"
        config.write_text(f"NODE_HOST = '127.0.0.1:{port}'\n")
        result = run_main("--config", str(config), "--probe")
        assert result.returncode == 0 and "node !5eed0b07 BOT" in result.stdout, result.stderr
        sim.send_signal(signal.SIGINT)
        assert sim.wait(timeout=10) == 0
    finally:
        if sim.poll() is None:
            sim.kill()
            sim.wait()


# --- the demo --------------------------------------------------------------------------------------
def test_the_demo_never_reads_config_py(tmp_path):
    (tmp_path / "config.py").write_text("NODE_PORT = 'this would be a config error'\nraise SystemExit(3)\n")
    result = run_main("--demo", "--demo-seconds", "1.5", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "config" not in result.stderr.lower(), result.stderr
    assert "meshbot demo: simulated node BOT" in result.stdout


# --- meshbot try ------------------------------------------------------------------------------------
def test_try_answers_typed_lines_then_ends_at_end_of_input(tmp_path):
    typed = "/ping\n@BOB /help\n!stranger /echo hi there\n#1 /ping\n@ZED /ping\n"
    result = subprocess.run(
        [sys.executable, str(ROOT / "main.py"), "try"], input=typed, cwd=tmp_path,
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "meshbot try: the real bot against a simulated node" in out
    assert re.search(r"BOT   -> ch0   pong: .*\(\+\d+\.\d s\)", out), out
    assert re.search(r"BOT   -> BOB   commands: /echo", out), out  # the DM answered by DM
    assert re.search(r"BOT   -> ch1   pong", out), out
    assert "hi there" in out.split("!00002134 -> ch0")[-1], out  # the stranger's echo answered
    assert "no user ZED: try @ALIC, @BOB, @CARL" in out
    assert out.rstrip().endswith("meshbot try: ended"), out
    assert "Traceback" not in result.stderr, result.stderr


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pty")
def test_try_on_a_terminal_answers_as_you_type_and_ends_on_ctrl_c(tmp_path):
    controller, terminal = os.openpty()
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "main.py"), "try"], stdin=terminal, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, cwd=tmp_path, text=True,
    )
    os.close(terminal)
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        wait_until(lambda: any("Ctrl-D or Ctrl-C ends it" in ln for ln in seen), 30)
        os.write(controller, b"/ping\n")
        wait_until(lambda: any("BOT   -> ch0   pong" in ln for ln in seen), 30)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
        reader.join(10)
        assert seen[-1].strip() == "meshbot try: ended", seen
        assert "Traceback" not in proc.stderr.read()
    finally:
        os.close(controller)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


# --- make --------------------------------------------------------------------------------------------
@pytest.mark.skipif(MAKE is None, reason="make is not installed")
def test_make_help_lists_the_targets():
    result = subprocess.run([MAKE, "--no-print-directory", "-C", str(ROOT), "help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    targets = {ln.split()[0] for ln in result.stdout.splitlines()[1:]}
    assert {"demo", "test", "check-config", "probe", "sim", "install", "uninstall", "help"} <= targets, result.stdout


@pytest.mark.skipif(MAKE is None, reason="make is not installed")
def test_make_check_config_shows_the_line_naming_the_key(tmp_path):
    config = tmp_path / "config.py"
    config.write_text("NODE_HOST = '10.0.0.2'\nMAX_CHUNKS = 0\n")
    # -o: the venv running this test is the one to use; never rebuild it from here.
    result = subprocess.run(
        [MAKE, "--no-print-directory", "-C", str(ROOT), "-o", ".venv/.installed", "check-config",
         f"CONFIG={config}", f"PY={sys.executable}"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2  # make's own code for a failed recipe; main.py exited 78
    first = lines(result.stderr)[0]
    assert first.endswith("config error: MAX_CHUNKS = 0: expected an integer from 1 to 10"), result.stderr
    assert "Error 78" in result.stderr


# --- log lines that tell the truth -------------------------------------------------------------------
def router_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "meshbot.router"]


def test_log_lines_count_the_echo_broadcast_and_name_forecast(node, start_bot, caplog):
    caplog.set_level(logging.INFO)
    start_bot(node, DEFAULT_LOCATION="45.76,4.84", WEATHER_API_URL="http://127.0.0.1:9/v1/forecast", WEATHER_TIMEOUT_S=0.5)
    node.user_text(ALICE, "/echo hi all")
    node.wait_texts(1, 10)
    node.user_text(ALICE, "/forecast")
    node.wait_texts(2, 10)
    # The router logs its line once the reply is queued: the outbox may have sent it before.
    logged = wait_until(lambda: len(router_lines(caplog)) >= 2 and router_lines(caplog), 5)
    assert f"/echo from !{ALICE:08x} on ch0: 1 text" in logged, logged
    assert any(line.startswith(f"/forecast from !{ALICE:08x} on ch0: 1 text") for line in logged), logged
    assert not any(line.startswith("/weather") for line in logged), logged


def test_status_counts_unknown_refused_and_rate_limited_commands(node, start_bot):
    start_bot(node, RATE_LIMIT_COUNT=3)
    node.user_text(ALICE, "/nosuch", dm=True)  # unknown (on a channel it would be another bot's)
    node.user_text(ALICE, "/bc hello")  # refused: not an admin
    node.user_text(BOB, "/ping")  # served
    node.wait_texts(3, 10)
    for _ in range(2):  # ALICE's 3rd command is served; her 4th is over the limit
        node.user_text(ALICE, "/ping")
    node.wait_texts(5, 10)
    node.user_text(BOB, "/status", dm=True)
    status = node.wait_texts(6, 10)[5].text
    assert "commands 6" in status, status
