"""Where the bot's commands come from: `handlers/` (built in) and installed plugins.

A plugin is any installed package that declares entry points in the group
`meshbot.commands`; each names a module whose `@command` functions are added exactly as a
module of `handlers/` is. The router only ever sees the resulting `CommandRegistry`.

A plugin is someone else's code: one that fails to import, defines no command, or takes a
name (or alias) that is already taken is one ERROR line naming it, and the bot starts
without that plugin rather than not at all. A broken built-in module is a bug in meshbot
and raises. `DISABLED_COMMANDS` then turns commands off by name, whatever their origin.
"""

from __future__ import annotations

import difflib
import importlib.metadata
import logging
import types
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

from meshbot.router import Command, CommandRegistry

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "meshbot.commands"


@dataclass(frozen=True)
class _Source:
    """A module of commands and how to name it in a log line."""

    label: str  # "handlers.echo", or "plugin 'hello' (meshbot_hello.commands)"
    commands: tuple[Command, ...]


def installed_plugins() -> list[importlib.metadata.EntryPoint]:
    """The `meshbot.commands` entry points of every installed distribution, by name."""
    found = importlib.metadata.entry_points()
    if hasattr(found, "select"):  # Python 3.10+
        points = list(found.select(group=ENTRY_POINT_GROUP))
    else:  # Python 3.9: a dict of group -> entry points
        points = list(found.get(ENTRY_POINT_GROUP, ()))  # type: ignore[attr-defined]
    # A distribution seen twice on sys.path (a venv and a .pth) lists its entry points twice.
    unique = {(ep.name, ep.value): ep for ep in points}
    return sorted(unique.values(), key=lambda ep: (ep.name, ep.value))


def module_commands(module: types.ModuleType) -> tuple[Command, ...]:
    """The commands a module marks with `@command`, in definition order."""
    return tuple(obj.meshbot_command for obj in vars(module).values() if hasattr(obj, "meshbot_command"))


def load_commands(
    builtin: Sequence[types.ModuleType],
    disabled: Sequence[str] = (),
    plugins: Optional[Iterable[importlib.metadata.EntryPoint]] = None,
) -> CommandRegistry:
    """The registry: built-in commands, then each plugin's, minus `disabled` (names or aliases).

    `plugins` defaults to the installed ones (tests pass their own).
    """
    sources: list[_Source] = []
    taken: dict[str, str] = {}  # name or alias -> the label of the module that has it
    for module in builtin:
        commands = module_commands(module)
        if not commands:
            raise ValueError(f"{module.__name__} defines no @command")
        clash = _first_clash(commands, taken)
        if clash:
            raise ValueError(f"command /{clash} registered twice ({module.__name__} and {taken[clash]})")
        _add(sources, taken, _Source(module.__name__, commands))
    for entry_point in installed_plugins() if plugins is None else plugins:
        source = _load_plugin(entry_point, taken)
        if source is not None:
            _add(sources, taken, source)
            log.info("%s: %s", source.label, " ".join(f"/{c.name}" for c in source.commands))
    off = _disabled(disabled, sources)
    registry = CommandRegistry()
    for source in sources:
        for cmd in source.commands:
            if cmd.name.lower() not in off:
                registry.add(cmd)
    return registry


def _load_plugin(entry_point: importlib.metadata.EntryPoint, taken: dict[str, str]) -> Optional[_Source]:
    label = f"plugin {entry_point.name!r} ({entry_point.value})"
    try:
        module = entry_point.load()
    except Exception as exc:  # anything its import raises: one line, the bot starts without it
        log.error("%s failed to import: %s: %s; starting without it", label, type(exc).__name__, exc)
        log.debug("%s: the traceback", label, exc_info=True)
        return None
    if not isinstance(module, types.ModuleType):
        log.error("%s is not a module (an entry point names a module of @command functions); starting without it", label)
        return None
    commands = module_commands(module)
    if not commands:
        log.error("%s defines no @command; starting without it", label)
        return None
    clash = _first_clash(commands, taken)
    if clash:
        owner = taken.get(clash, "itself")
        log.error("%s registers /%s, which %s already has; starting without it", label, clash, owner)
        return None
    return _Source(label, commands)


def _first_clash(commands: Sequence[Command], taken: dict[str, str]) -> Optional[str]:
    """A name or alias that is taken already, or used twice among `commands`."""
    seen: set[str] = set()
    for cmd in commands:
        for name in (cmd.name, *cmd.aliases):
            key = name.lower()
            if key in taken or key in seen:
                return key
            seen.add(key)
    return None


def _add(sources: list[_Source], taken: dict[str, str], source: _Source) -> None:
    sources.append(source)
    for cmd in source.commands:
        for name in (cmd.name, *cmd.aliases):
            taken[name.lower()] = source.label


def _disabled(names: Sequence[str], sources: Sequence[_Source]) -> set[str]:
    """The names of the commands to leave out; an alias turns off its command. Unknown names warn."""
    command_of = {alias.lower(): cmd.name.lower() for src in sources for cmd in src.commands for alias in (cmd.name, *cmd.aliases)}
    off = set()
    for name in names:
        if name in command_of:
            off.add(command_of[name])
            continue
        close = difflib.get_close_matches(name, list(command_of), n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]}?)" if close else ""
        log.warning("DISABLED_COMMANDS: no command /%s%s; nothing turned off for it", name, hint)
    if off:
        log.info("commands turned off (DISABLED_COMMANDS): %s", " ".join(f"/{n}" for n in sorted(off)))
    return off
