"""/bc: an admin broadcasts a text as is on BROADCAST_CHANNEL.

The router lets only authenticated admins through (see REQUIRE_PKI_FOR_ADMIN).
"""

from __future__ import annotations

from typing import Optional

from meshbot.outbox.policy import TextKind
from meshbot.router import BROADCAST_NUM, CommandContext, command
from meshbot.text import counted


@command("bc", aliases=("broadcast",), admin=True, help="/bc <text>: admins broadcast a text as is on the broadcast channel")
def broadcast(ctx: CommandContext) -> Optional[str]:
    if not ctx.args:
        return "usage: /bc <text>"
    channel = ctx.services.settings.BROADCAST_CHANNEL
    # A broadcast, not a reply: it waits while the channel is busy (CHANNEL_UTIL_POLITE_PCT).
    texts = ctx.services.sender.send(
        ctx.args, to=BROADCAST_NUM, channel=channel, requester=ctx.message.sender, kind=TextKind.BROADCAST
    )
    return f"broadcast queued on ch{channel} ({counted(texts, 'text')})"
