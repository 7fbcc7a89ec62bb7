"""Command plugins in the bot's own process: entry points naming modules in a temporary
directory, the way `importlib.metadata` hands them over for an installed package
(tests/test_package.py installs a real one). A broken plugin is one ERROR line and the
bot runs without it; DISABLED_COMMANDS turns off built-in and plugin commands alike."""

from __future__ import annotations

import importlib.metadata
import logging
import sys
import textwrap
from pathlib import Path
from typing import Iterator

import pytest

from meshbot.app import Bot
from meshbot.config import ConfigError, build_settings
from meshbot.plugins import ENTRY_POINT_GROUP, load_commands
from tests.conftest import settings_for, wait_until

from meshbot import handlers

ALICE = 0x1A2B3C01

MODULES = {
    "good_plugin": """
        from meshbot.router import command

        @command("hello", aliases=("hi",), help="/hello: a greeting")
        def hello(ctx):
            return "hello from a plugin"
    """,
    "broken_plugin": """
        import no_such_dependency_of_a_plugin
    """,
    "raising_plugin": """
        raise RuntimeError("the plugin's own bug")
    """,
    "clashing_plugin": """
        from meshbot.router import command

        @command("pong", help="/pong")
        def pong(ctx):
            return "pong"

        @command("ping", help="/ping: takes a built-in's name")
        def ping(ctx):
            return "not the real ping"
    """,
    "empty_plugin": """
        X = 1
    """,
}


@pytest.fixture
def plugin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    for name, body in MODULES.items():
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(body))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in MODULES:
        sys.modules.pop(name, None)


def entry(name: str, module: str) -> importlib.metadata.EntryPoint:
    return importlib.metadata.EntryPoint(name=name, value=module, group=ENTRY_POINT_GROUP)


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.fixture
def running_bots() -> Iterator[list[Bot]]:
    bots: list[Bot] = []
    yield bots
    for bot in bots:
        bot.stop(budget_s=2.0)


def start(node, bots: list[Bot], plugins, **overrides) -> Bot:
    bot = Bot(settings_for(node, **overrides), plugins=plugins)
    bots.append(bot)
    bot.start()
    wait_until(lambda: bot.sender.get_interface() is not None, 10)
    return bot


def ask(node, text: str, count: int) -> str:
    node.user_text(ALICE, text, dm=True)
    return node.wait_texts(count, 10)[count - 1].text


@pytest.mark.parametrize(
    "plugin, words",
    [
        ("broken_plugin", ["plugin 'bad' (broken_plugin) failed to import", "ModuleNotFoundError", "no_such_dependency_of_a_plugin"]),
        ("raising_plugin", ["plugin 'bad' (raising_plugin) failed to import", "RuntimeError: the plugin's own bug"]),
        ("clashing_plugin", ["plugin 'bad' (clashing_plugin) registers /ping, which meshbot.handlers.ping already has"]),
        ("empty_plugin", ["plugin 'bad' (empty_plugin) defines no @command"]),
    ],
)
def test_a_bad_plugin_is_one_error_and_the_bot_runs_without_it(plugin_dir, node, running_bots, caplog, plugin, words):
    caplog.set_level(logging.INFO)
    start(node, running_bots, [entry("bad", plugin), entry("good", "good_plugin")])
    assert len(errors(caplog)) == 1, errors(caplog)
    assert all(word in errors(caplog)[0] for word in words), errors(caplog)
    assert not any(r.exc_info for r in caplog.records if r.levelno >= logging.ERROR)  # one line, no traceback
    # The bot serves the built-ins and the good plugin; nothing of the bad one (not even /pong).
    assert ask(node, "/ping", 1).startswith("pong")
    assert ask(node, "/hi", 2) == "hello from a plugin"
    assert ask(node, "/pong", 3) == "unknown command /pong: send /help"
    listed = ask(node, "/help", 4)
    assert "/hello" in listed and "/pong" not in listed, listed


def test_plugins_come_after_the_builtins_in_help(plugin_dir, node, running_bots):
    start(node, running_bots, [entry("good", "good_plugin")], ADMIN_NODES=[], DISABLED_COMMANDS=())
    names = ask(node, "/help", 1).split("·")[0].split()[1:]
    assert names[-1] == "/hello" and names[0] == "/echo", names


def test_disabled_commands_by_name_or_alias(plugin_dir, node, running_bots, caplog):
    caplog.set_level(logging.INFO)
    start(node, running_bots, [entry("good", "good_plugin")], DISABLED_COMMANDS=["echo", "/HI", "weathr"])
    assert ask(node, "/echo x", 1) == "unknown command /echo: send /help"
    assert ask(node, "/hello", 2) == "unknown command /hello: send /help"  # its alias turned it off
    listed = ask(node, "/help", 3)
    assert "/echo" not in listed and "/hello" not in listed and "/ping" in listed
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == "meshbot.plugins"]
    assert warnings == ["DISABLED_COMMANDS: no command /weathr (did you mean weather?); nothing turned off for it"]


def test_disabled_commands_is_validated():
    assert build_settings({"DISABLED_COMMANDS": ["/Echo", "bc", "bc"]}, demo=True).DISABLED_COMMANDS == ("echo", "bc")
    for bad in ("echo", ["two words"], [""], [3]):
        with pytest.raises(ConfigError, match="DISABLED_COMMANDS"):
            build_settings({"DISABLED_COMMANDS": bad}, demo=True)


def test_a_scheduled_command_that_is_disabled_is_a_config_error():
    settings = build_settings(
        {"DISABLED_COMMANDS": ["status"], "SCHEDULED_BROADCASTS": [{"every_s": 60, "command": "/status"}]}, demo=True
    )
    with pytest.raises(ConfigError, match="no such command"):
        Bot(settings, plugins=[])


def test_a_broken_builtin_module_is_a_bug_not_a_warning(plugin_dir):
    """handlers/ is meshbot's own: a clash there raises (the tests catch it), never skipped."""
    import good_plugin

    with pytest.raises(ValueError, match="registered twice"):
        load_commands((*handlers.MODULES, handlers.MODULES[0]), plugins=[])
    assert load_commands((good_plugin,), plugins=[]).lookup("hi") is not None
