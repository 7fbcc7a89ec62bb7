"""/status and /nodes: what the bot and the mesh around it look like."""

from __future__ import annotations

import time
from typing import Any, Optional

from meshbot.router import CommandContext, command, display_name
from meshbot.text import counted, format_age, utf8_len


@command("status", help="/status: uptime, link, texts sent/queued/dropped, commands served")
def status(ctx: CommandContext) -> Optional[str]:
    services = ctx.services
    link = services.link.status
    out = services.sender.stats()
    uptime = format_age(time.monotonic() - services.stats.started_at)
    dms = out.dms
    return (
        f"up {uptime}, link {link.state.value} ({counted(link.reconnects, 'reconnect')}), texts sent {out.sent}, queued {out.queued}, "
        f"dropped {out.dropped}, commands {services.stats.commands}, DMs 24h: {dms.delivered} delivered, {dms.failed} failed"
    )


def _heard(node: dict[str, Any], now: float) -> str:
    parts = [display_name(node, node["num"])]
    parts.append(format_age(now - node["lastHeard"]))
    hops = node.get("hopsAway")
    if hops:
        parts.append(f"{hops}hop")
    elif node.get("snr") is not None:
        parts.append(f"{node['snr']:.0f}dB")
    return " ".join(parts)


def node_pages(nodes: list[dict[str, Any]], budget: int, now: float) -> list[list[str]]:
    """Entries packed into pages that each fit one text with their header."""
    entries = [_heard(n, now) for n in sorted(nodes, key=lambda n: n["lastHeard"], reverse=True)]
    header_room = len("nodes 99/99: ")
    pages: list[list[str]] = [[]]
    for entry in entries:
        candidate = pages[-1] + [entry]
        if pages[-1] and header_room + utf8_len(", ".join(candidate)) > budget:
            pages.append([entry])
        else:
            pages[-1] = candidate
    return pages


@command("nodes", help="/nodes [page]: nodes heard most recently: name, last heard, SNR or hops")
def nodes(ctx: CommandContext) -> Optional[str]:
    page_arg = ctx.args.split(" ")[0] if ctx.args else "1"
    # ASCII digits only: str.isdigit() also accepts '²' and '①', which int() refuses.
    if not (page_arg.isascii() and page_arg.isdigit()) or int(page_arg) < 1:
        return "usage: /nodes [page], e.g. /nodes 2"
    iface = ctx.services.sender.get_interface()
    own = ctx.services.link.status.node_num
    known = list((getattr(iface, "nodesByNum", None) or {}).values())
    heard = [n for n in known if n.get("num") != own and n.get("lastHeard")]
    if not heard:
        return "no nodes heard yet"
    pages = node_pages(heard, ctx.services.settings.MAX_TEXT_BYTES, time.time())
    page = int(page_arg)
    if page > len(pages):
        return f"only {counted(len(pages), 'page')} of nodes"
    return f"nodes {page}/{len(pages)}: " + ", ".join(pages[page - 1])
