"""Restarts are boring (issue 15): a config file that raises anything, SystemExit included,
is a config error (exit 78, no restart loop) naming the file and the line; a malformed row
in the state database is skipped with one WARNING; the outbox a restart takes back obeys
OUTBOX_TTL_S and OUTBOX_MAX; SIGHUP to the real process is a clean stop, like SIGTERM."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from meshbot.config import EX_CONFIG
from tests.conftest import ROOT


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
