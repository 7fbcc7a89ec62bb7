"""/help: the command list in one text, or one command's help."""

from __future__ import annotations

from typing import Optional

from meshbot.router import CommandContext, command
from meshbot.text import utf8_len


def describe(help_text: str) -> str:
    """A command's help as a reply: `usage: /echo <text> · broadcasts ...`.

    Help strings start with the command ("/echo <text>: ..."), and a reply must not:
    another bot on the channel would run it.
    """
    synopsis, sep, what = help_text.partition(": ")
    return f"usage: {synopsis} · {what}" if sep else f"usage: {help_text}"


@command("help", aliases=("h", "?"), help="/help [command]: the commands, or how to use one")
def help_(ctx: CommandContext) -> Optional[str]:
    registry = ctx.services.registry
    if ctx.args:
        name = ctx.args.split(" ")[0].lstrip("/").lower()
        cmd = registry.lookup(name)
        if cmd is None or (cmd.admin and not ctx.is_admin):
            return f"no command /{name[:16]}: send /help"
        return describe(cmd.help)
    names = [f"/{c.name}" for c in registry.commands() if ctx.is_admin or not c.admin]
    text = "commands: " + " ".join(names) + " · /help <cmd> for more"
    budget = ctx.services.settings.MAX_TEXT_BYTES
    while utf8_len(text) > budget and len(names) > 1:  # one text, always
        names.pop()
        text = "commands: " + " ".join(names) + " …"
    return text
