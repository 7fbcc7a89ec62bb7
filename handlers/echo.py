"""/echo: say something on the channel, signed with the sender's short name.

This is the command that, in the project this grew from, opened its own TCP connection
for each broadcast and kicked the bot off the node. It goes through the shared sender.
"""

from __future__ import annotations

from typing import Optional

from meshbot.router import BROADCAST_NUM, CommandContext, command
from meshbot.text import quote_command


@command("echo", help="/echo <text>: broadcasts '<you>: <text>' on this channel (ch0 from a DM)")
def echo(ctx: CommandContext) -> Optional[str]:
    if not ctx.args:
        return "usage: /echo <text>"
    channel = 0 if ctx.is_dm else ctx.channel
    # A short name can start with '/' too: the broadcast must not read as a command.
    ctx.services.sender.send(
        quote_command(f"{ctx.sender_name}: {ctx.args}"),
        to=BROADCAST_NUM,
        channel=channel,
        reply_to=None if ctx.is_dm else ctx.message.id,
        requester=ctx.message.sender,  # an answer to a command: its priority and text cap
    )
    return None
