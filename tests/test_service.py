"""meshbot.service: the directives the daemon relies on, systemd's verdict on the file, and its
hardening score (`systemd-analyze security`, 2.0 at most). The systemd checks are skipped on a
machine without systemd-analyze."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

UNIT = ROOT / "meshbot.service"
MAX_EXPOSURE = 2.0
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")


def service_directives(text: str) -> dict[str, list[str]]:
    """The [Service] section as key -> values, in file order (a key may repeat)."""
    values: dict[str, list[str]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
            continue
        if section == "[Service]":
            key, _, value = line.partition("=")
            values.setdefault(key.strip(), []).append(value.strip())
    return values


def analyze(*args: str) -> subprocess.CompletedProcess:
    assert ANALYZE is not None
    return subprocess.run([ANALYZE, *args], capture_output=True, text=True, timeout=120)


def runnable_copy(tmp_path: Path, text: str) -> Path:
    """The unit with /opt/meshbot pointing at a tree where ExecStart's program exists, so that
    `verify` judges the file itself rather than this machine's /opt."""
    prefix = tmp_path / "prefix"
    (prefix / ".venv" / "bin").mkdir(parents=True)
    os.symlink(sys.executable, prefix / ".venv" / "bin" / "python")
    for name in ("config.py", "README.md"):
        (prefix / name).write_text("")
    unit = tmp_path / "meshbot.service"
    unit.write_text(text.replace("/opt/meshbot", str(prefix)))
    return unit


def verify_complaints(unit: Path) -> tuple[int, list[str]]:
    result = analyze("verify", str(unit))
    lines = (result.stdout + result.stderr).splitlines()
    return result.returncode, [ln for ln in lines if unit.name in ln]


def test_the_daemon_gets_what_it_relies_on():
    d = service_directives(UNIT.read_text())
    assert d["Type"] == ["notify"] and d["NotifyAccess"] == ["main"]  # meshbot.cli sends sd_notify itself
    assert d["WatchdogSec"] == ["60"]
    assert d["Restart"] == ["on-failure"] and d["RestartSec"] == ["5"]
    assert d["RestartPreventExitStatus"] == ["78"]  # config error: no restart loop
    assert d["TimeoutStopSec"] and float(d["TimeoutStopSec"][-1]) > 5  # SIGTERM exits within 5 s
    # The installed package from its venv, isolated from the working directory (-I).
    assert d["ExecStart"] == ["/opt/meshbot/.venv/bin/python -I -B -m meshbot --config /opt/meshbot/config.py"]
    assert d["DynamicUser"] == ["yes"] and d["StateDirectory"] == ["meshbot"]
    # The node over TCP (IPv4/IPv6), DNS and HTTPS, the notify socket:
    families = " ".join(d["RestrictAddressFamilies"]).split()
    assert {"AF_INET", "AF_INET6", "AF_UNIX"} <= set(families) and not any(f.startswith("~") for f in families)
    assert "PrivateNetwork" not in d and "IPAddressDeny" not in d
    # A serial node: the device must stay visible, allowed and group-accessible.
    assert d.get("PrivateDevices", ["no"]) == ["no"]
    assert {"char-ttyUSB rw", "char-ttyACM rw"} <= set(d["DeviceAllow"])
    assert d["SupplementaryGroups"] == ["dialout"]


def test_the_state_database_goes_where_the_service_may_write(monkeypatch):
    """ProtectSystem=strict (implied by DynamicUser= too) makes everything read-only but the
    StateDirectory=, which systemd passes as $STATE_DIRECTORY: STATE_DIR's default follows it."""
    from meshbot.config import Settings
    from meshbot.state.store import resolve_state_dir

    d = service_directives(UNIT.read_text())
    assert d["ProtectSystem"] == ["strict"] and d["StateDirectory"] == ["meshbot"]
    assert not {"ReadOnlyPaths", "InaccessiblePaths", "TemporaryFileSystem", "StateDirectoryMode"} & set(d)
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/meshbot")
    assert resolve_state_dir(Settings().STATE_DIR) == Path("/var/lib/meshbot")


@needs_analyze
def test_systemd_accepts_the_unit(tmp_path):
    code, complaints = verify_complaints(runnable_copy(tmp_path, UNIT.read_text()))
    assert code == 0 and not complaints, "\n".join(complaints)


@needs_analyze
def test_the_verify_check_catches_a_broken_unit(tmp_path):
    """The check above would fail: verify only warns (exit 0) on a bad key or value."""
    broken = UNIT.read_text().replace("Restart=on-failure", "Restart=sometimes\nRestartSecs=5")
    _code, complaints = verify_complaints(runnable_copy(tmp_path, broken))
    assert any("sometimes" in ln for ln in complaints) and any("RestartSecs" in ln for ln in complaints), complaints


@needs_analyze
def test_hardening_exposure_is_at_most_2():
    result = analyze("security", "--offline=true", str(UNIT))
    if "--offline" in result.stderr and ("unrecognized" in result.stderr or "Unknown" in result.stderr):
        pytest.skip("systemd-analyze is older than 250: no offline security assessment")
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", result.stdout)
    assert match, result.stdout + result.stderr
    exposed = [ln for ln in result.stdout.splitlines() if ln.startswith("✗")]
    assert float(match.group(1)) <= MAX_EXPOSURE, "\n".join(exposed)
