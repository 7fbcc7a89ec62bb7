"""`pip install .` into a fresh venv, and a third-party plugin package installed beside it.

Fast by design: the venv is made without pip (this interpreter's pip installs into it with
`--python`), sees the dependencies of the venv running the tests through a .pth file, and the
packages are built without build isolation (`--no-deps --no-build-isolation`): nothing is
downloaded. What is tested is what `pip install .` produces: the metadata, the `meshbot`
console script, `python -m meshbot`, the packages shipped, the entry points a plugin declares.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from meshbot import __version__
from meshbot.sim.node import SimulatedNode
from tests.conftest import ROOT

ALICE = 0x1A2B3C01
# What the package is built from (a copy of the checkout's files a build reads).
SOURCE = ("pyproject.toml", "README.md", "CHANGELOG.md", "LICENSE", "meshbot", "handlers", "tools")

HELLO_PYPROJECT = """\
[build-system]
requires = ["setuptools>=77"]
build-backend = "setuptools.build_meta"

[project]
name = "meshbot-hello"
version = "1.0"
dependencies = ["meshbot"]

[project.entry-points."meshbot.commands"]
hello = "meshbot_hello"
"""
HELLO_MODULE = """\
from meshbot.router import CommandContext, command


@command("hello", help="/hello: a greeting from a plugin")
def hello(ctx: CommandContext) -> str:
    return f"hello {ctx.sender_name}, from a plugin"
"""


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "PIP_REQUIRE"))}


def run(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    result = subprocess.run(list(args), cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result


def pip_install(venv: Path, source: Path, cwd: Path) -> None:
    run(
        sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--quiet",
        "--no-deps", "--no-build-isolation", "--no-index", str(source), cwd=cwd,
    )


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with meshbot (`pip install .`) and the meshbot-hello plugin installed."""
    tmp = tmp_path_factory.mktemp("package")
    venv = tmp / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", str(venv), cwd=tmp)
    # The dependencies (and setuptools, for the build) of the venv running the tests.
    site = Path(run(str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=tmp).stdout.strip())
    (site / "test-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    source = tmp / "meshbot-src"
    source.mkdir()
    for name in SOURCE:
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy
        copy(ROOT / name, source / name, **({"ignore": shutil.ignore_patterns("__pycache__")} if (ROOT / name).is_dir() else {}))
    pip_install(venv, source, tmp)
    # pip install . (and pipx) leave nothing behind in the clone (tools/build_backend.py).
    assert sorted(p.name for p in source.iterdir()) == sorted(SOURCE)
    plugin = tmp / "meshbot-hello"
    plugin.mkdir()
    (plugin / "pyproject.toml").write_text(HELLO_PYPROJECT)
    (plugin / "meshbot_hello.py").write_text(HELLO_MODULE)
    pip_install(venv, plugin, tmp)
    return venv


def test_pip_install_gives_the_meshbot_command_and_python_m_meshbot(venv, tmp_path):
    expected = f"meshbot {__version__}\n"
    assert run(str(venv / "bin" / "meshbot"), "--version", cwd=tmp_path).stdout == expected
    assert run(str(venv / "bin" / "python"), "-m", "meshbot", "--version", cwd=tmp_path).stdout == expected
    # The same options as main.py.
    usage = run(str(venv / "bin" / "meshbot"), "--help", cwd=tmp_path).stdout
    for option in ("--config", "--check-config", "--probe", "--demo", "--version"):
        assert option in usage
    # The installed copy runs, not the checkout; both packages are shipped, tests/ is not.
    where = run(
        str(venv / "bin" / "python"), "-c",
        "import meshbot, meshbot.handlers as h, importlib.util as u; print(meshbot.__file__); print(h.__file__); print(u.find_spec('tests'), u.find_spec('handlers'))",
        cwd=tmp_path,
    ).stdout.splitlines()
    assert where[0].startswith(str(venv)) and where[1].startswith(str(venv)) and where[2] == "None None", where
    metadata = run(
        str(venv / "bin" / "python"), "-c",
        "import importlib.metadata as m; d = m.metadata('meshbot'); print(d['License-Expression']); print(d['Version']);"
        "print(sorted(r for r in m.requires('meshbot') if 'extra' not in r))",
        cwd=tmp_path,
    ).stdout.splitlines()
    assert metadata[:2] == ["GPL-3.0-or-later", __version__]
    assert "meshtastic<2.8,>=2.7.11" in metadata[2] and "pytest" not in metadata[2]


def test_an_installed_plugin_adds_its_command(venv, tmp_path):
    """meshbot-hello, a separate distribution, adds /hello through its entry point: listed by
    /help and answered over the simulated node by the installed daemon."""
    with SimulatedNode(firmware_version="2.6.11") as node:
        config = tmp_path / "config.py"
        config.write_text(f"NODE_HOST = '127.0.0.1'\nNODE_PORT = {node.port}\nMIN_TEXT_INTERVAL_S = 0\nPACE_BY_AIRTIME = False\n")
        proc = subprocess.Popen(
            [str(venv / "bin" / "meshbot"), "--config", str(config)],
            cwd=tmp_path, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        try:
            assert node.wait_connected(20)
            node.user_text(ALICE, "/hello")
            node.wait_texts(1, 10)
            node.user_text(ALICE, "/help", dm=True)
            texts = node.wait_texts(2, 10)
        finally:
            proc.terminate()
            _, stderr = proc.communicate(timeout=10)
    # The sender's name is the node DB's, or its number's last digits before the DB arrives.
    assert texts[0].text in ("hello ALIC, from a plugin", "hello 3c01, from a plugin"), stderr
    assert "/hello" in texts[1].text and texts[1].text.startswith("commands: /echo"), texts[1].text
    assert "plugin 'hello' (meshbot_hello): /hello" in stderr
    assert "ERROR" not in stderr and "Traceback" not in stderr, stderr


def test_disabled_commands_turns_off_a_plugins_command_and_a_builtin(venv, tmp_path):
    config = tmp_path / "config.py"
    config.write_text("NODE_HOST = '127.0.0.1'\nDISABLED_COMMANDS = ['hello', '/ECHO', 'nosuch']\n")
    result = subprocess.run(
        [str(venv / "bin" / "meshbot"), "--config", str(config), "--check-config"],
        cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "commands turned off (DISABLED_COMMANDS): /echo /hello" in result.stderr
    warnings = [ln for ln in result.stderr.splitlines() if "WARNING" in ln]
    assert len(warnings) == 1 and "DISABLED_COMMANDS: no command /nosuch" in warnings[0], result.stderr


def test_the_checkout_builds_nothing_into_itself():
    """The build copied the source: no build/ or egg-info left in the checkout by these tests."""
    leftovers = [p.name for p in ROOT.iterdir() if p.name == "build" or p.name.endswith(".egg-info")]
    # An editable install (make test) writes meshbot.egg-info, which .gitignore covers.
    assert leftovers in ([], ["meshbot.egg-info"]), leftovers


def test_every_package_of_the_checkout_is_shipped():
    import tomllib

    shipped = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(("meshbot", *p.parent.relative_to(ROOT / "meshbot").parts)) for p in (ROOT / "meshbot").rglob("__init__.py")}
    found |= {".".join(("meshbot.handlers", *p.parent.relative_to(ROOT / "handlers").parts)) for p in (ROOT / "handlers").rglob("__init__.py")}
    assert found == shipped, "list every package in pyproject.toml's [tool.setuptools] packages"
