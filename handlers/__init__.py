"""The bot's commands: one module per command family, each listed here once.

Adding a command: write `handlers/<family>.py` with functions marked `@command(...)`,
then add the module to `MODULES`.
"""

from __future__ import annotations

import types

from handlers import ping

MODULES: tuple[types.ModuleType, ...] = (ping,)
