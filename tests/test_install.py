"""`make install` / `make uninstall` into a scratch DESTDIR: the real recipe, a fresh venv and pip
included (about 10 s per install with a warm pip cache)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from meshbot import __version__
from meshbot.starter import starter_config_text
from tests.conftest import ROOT

MAKE = shutil.which("make")
pytestmark = pytest.mark.skipif(MAKE is None, reason="make is not installed")

EXEC_START = "ExecStart={p}/.venv/bin/python -I -B -m meshbot --config {p}/config.py"


def make(*args: str) -> subprocess.CompletedProcess:
    assert MAKE is not None
    result = subprocess.run(
        [MAKE, "--no-print-directory", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, f"make {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result


def run_installed(prefix: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The installed venv's meshbot, as the unit runs it, away from the checkout; -B: write nothing."""
    return run_venv_python(prefix, "-m", "meshbot", *args, cwd=cwd)


def run_venv_python(prefix: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    return subprocess.run(
        [str(prefix / ".venv" / "bin" / "python"), "-I", "-B", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=60,
    )


def outside_venv(prefix: Path) -> list[Path]:
    return [p for p in prefix.rglob("*") if p.relative_to(prefix).parts[0] != ".venv"]


def test_install_upgrade_and_uninstall_keep_the_operators_config(tmp_path):
    dest = tmp_path / "dest"
    prefix = dest / "opt" / "meshbot"
    unit = dest / "etc" / "systemd" / "system" / "meshbot.service"
    config = prefix / "config.py"

    out = make("install", f"DESTDIR={dest}").stdout

    # The docs and the package in its own venv; nothing of the checkout's development files.
    for rel in ("README.md", "CHANGELOG.md", "LICENSE", "config.example.py"):
        assert (prefix / rel).is_file(), rel
    for rel in ("meshbot", "handlers", "main.py", "tests", "bench", "meshbot.service", "Makefile", ".git", "pyproject.toml"):
        assert not (prefix / rel).exists(), rel
    where = run_venv_python(prefix, "-c", "import meshbot, meshbot.handlers as h; print(meshbot.__file__); print(h.__file__)", cwd=tmp_path)
    assert where.returncode == 0, where.stderr
    assert all(line.startswith(str(prefix / ".venv" / "lib")) for line in where.stdout.splitlines()), where.stdout
    # The runtime dependencies only: the test tools stay out of the service's venv.
    tools = run_venv_python(prefix, "-c", "import importlib.util as u; print(u.find_spec('pytest'), u.find_spec('meshtastic') is not None)", cwd=tmp_path)
    assert tools.stdout.split() == ["None", "True"], tools.stdout + tools.stderr
    installed = outside_venv(prefix)
    assert not [p for p in installed if p.name == "__pycache__" or p.suffix == ".pyc"]
    # Everything readable by the service's dynamic user, writable by root only.
    for path in installed:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o044 == 0o044 and not mode & 0o022, f"{path}: {oct(mode)}"
        if path.is_dir():
            assert mode & 0o011 == 0o011, f"{path}: {oct(mode)}"

    # The config, the short one `meshbot init` writes (defaults stay the package's), readable by the service.
    assert config.read_text() == starter_config_text()
    assert stat.S_IMODE(config.stat().st_mode) == 0o644

    # The unit, with the (default) PREFIX in its paths.
    assert stat.S_IMODE(unit.stat().st_mode) == 0o644
    assert EXEC_START.format(p="/opt/meshbot") in unit.read_text().splitlines()
    assert unit.read_text() == (ROOT / "meshbot.service").read_text()

    # The next steps, without running systemctl.
    for step in ("/opt/meshbot/config.py", "systemctl daemon-reload", "systemctl enable --now meshbot", "journalctl -u meshbot -f"):
        assert step in out, out

    # The installed venv runs the installed code.
    version = run_installed(prefix, "--version", cwd=tmp_path)
    assert version.returncode == 0 and version.stdout == f"meshbot {__version__}\n", version.stderr
    config.write_text('NODE_HOST = "192.0.2.7"  # edited by the operator\n')
    checked = run_installed(prefix, "--config", str(config), "--check-config", cwd=tmp_path)
    assert checked.returncode == 0 and "config OK" in checked.stderr, checked.stderr

    # An upgrade (`make install` again) keeps the operator's config, and nothing stale: not a
    # package the new version no longer needs, nor the files of the old layout (code in PREFIX).
    site = Path(run_venv_python(prefix, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=tmp_path).stdout.strip())
    (site / "stale_dependency").mkdir()
    (site / "stale_dependency" / "__init__.py").write_text("")
    (prefix / "meshbot").mkdir()
    (prefix / "meshbot" / "app.py").write_text("")
    (prefix / "main.py").write_text("")
    out = make("install", f"DESTDIR={dest}").stdout
    assert not (site / "stale_dependency").exists()
    assert not (prefix / "meshbot").exists() and not (prefix / "main.py").exists()
    assert config.read_text() == 'NODE_HOST = "192.0.2.7"  # edited by the operator\n'
    assert "kept the existing /opt/meshbot/config.py" in out
    assert run_installed(prefix, "--config", str(config), "--check-config", cwd=tmp_path).returncode == 0
    assert not [p for p in outside_venv(prefix) if p.name == "__pycache__"]

    # Uninstall: unit, code and venv gone; the config kept, and said so.
    out = make("uninstall", f"DESTDIR={dest}").stdout
    assert not unit.exists()
    assert [p.name for p in prefix.iterdir()] == ["config.py"]
    assert config.read_text() == 'NODE_HOST = "192.0.2.7"  # edited by the operator\n'
    assert "kept /opt/meshbot/config.py" in out
    assert "kept the state database in /var/lib/meshbot" in out


def test_install_writes_its_prefix_into_the_unit(tmp_path):
    dest = tmp_path / "dest"
    make("install", f"DESTDIR={dest}", "PREFIX=/srv/meshbot", "UNITDIR=/usr/local/lib/systemd/system")
    unit = (dest / "usr/local/lib/systemd/system/meshbot.service").read_text()
    assert EXEC_START.format(p="/srv/meshbot") in unit.splitlines()
    assert "WorkingDirectory=/srv/meshbot" in unit.splitlines()
    assert "/opt/meshbot" not in unit
    assert (dest / "srv/meshbot/.venv/bin/python").exists() and (dest / "srv/meshbot/config.py").exists()
    # The venv works from where the unit will find it, not only from the staging directory.
    moved = tmp_path / "moved"
    (dest / "srv/meshbot").rename(moved)
    result = run_installed(moved, "--version", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout == f"meshbot {__version__}\n", result.stderr
