"""The bot's built-in commands: one module per command family, each listed here once.

Adding a command: write `handlers/<family>.py` (installed as `meshbot.handlers.<family>`) with functions marked `@command(...)`,
then add the module to `MODULES`. The order here is the order /help lists them.
Commands from outside the repo come as plugins (entry-point group `meshbot.commands`,
see meshbot/plugins.py) and are listed after these.
"""

from __future__ import annotations

import types

from meshbot.handlers import broadcast, echo, help, ping, status, weather

MODULES: tuple[types.ModuleType, ...] = (echo, ping, help, status, weather, broadcast)
