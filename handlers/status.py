"""/status and /nodes: what the bot and the mesh around it look like."""

from __future__ import annotations

import time
from typing import Any, Optional

from meshbot.router import CommandContext, command, display_name
from meshbot.text import counted, format_age, utf8_len


@command("status", help="/status: uptime, link, texts sent/queued/dropped, commands, airtime, channel use")
def status(ctx: CommandContext) -> Optional[str]:
    services = ctx.services
    link = services.link.status
    out = services.sender.stats()
    uptime = format_age(time.monotonic() - services.stats.started_at)
    spent, budget = services.sender.airtime_used()
    reading = services.sender.governor.reading()
    channel = f"ch util {reading.channel_utilization:.0f}%" if reading else "ch util ?"
    if reading and reading.air_util_tx:
        channel += f" (tx {reading.air_util_tx:.1f}%)"
    # Most important first: parts that would not fit in one text are left out.
    parts = [
        f"up {uptime}",
        f"link {link.state.value} ({counted(link.reconnects, 'reconnect')})",
        f"air {spent:.0f}s/1h ({100 * spent / budget:.0f}% of budget)",
        channel,
        f"texts sent {out.sent}, queued {out.queued}, dropped {out.dropped}",
        f"commands {services.stats.commands}",
        f"DMs 24h: {out.dms.delivered} delivered, {out.dms.failed} failed",
    ]
    if services.api_clients is not None:
        parts.append(counted(services.api_clients(), "API client"))
    return join_within(parts, ", ", ctx.services.settings.MAX_TEXT_BYTES)


def join_within(parts: list[str], separator: str, max_bytes: int) -> str:
    """The parts, in order, that fit together in one text of max_bytes (the first always)."""
    text = parts[0]
    for part in parts[1:]:
        candidate = text + separator + part
        if utf8_len(candidate) <= max_bytes:
            text = candidate
    return text


def heard_ages(nodes: dict[int, dict[str, Any]], heard: dict[int, float], mono_now: float, wall_now: float) -> dict[int, float]:
    """Seconds since each node was last heard: the bot's own record first (its monotonic
    clock, any packet), then the node DB's `lastHeard`. A node without a clock stamps
    packets rx_time 0 and never sets `lastHeard`, so the bot's record is often the only one.
    Nodes heard by neither are left out."""
    ages = {num: max(0.0, mono_now - at) for num, at in heard.items()}
    for num, node in nodes.items():
        last = node.get("lastHeard")
        if num not in ages and isinstance(last, (int, float)) and last > 0:
            ages[num] = max(0.0, wall_now - last)
    return ages


def _heard(num: int, node: Optional[dict[str, Any]], age_s: float) -> str:
    parts = [display_name(node, num), format_age(age_s)]
    node = node or {}
    hops = node.get("hopsAway")
    if hops:
        parts.append(f"{hops}hop")
    elif node.get("snr") is not None:
        parts.append(f"{node['snr']:.0f}dB")
    return " ".join(parts)


def node_pages(nodes: dict[int, dict[str, Any]], ages: dict[int, float], budget: int) -> list[list[str]]:
    """Entries, most recently heard first, packed into pages that each fit one text with their header."""
    entries = [_heard(num, nodes.get(num), age) for num, age in sorted(ages.items(), key=lambda item: item[1])]
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
    link = ctx.services.link
    known = dict(getattr(iface, "nodesByNum", None) or {})  # a copy: the reader thread edits it
    ages = heard_ages(known, link.heard.snapshot(), link.heard.now(), time.time())
    ages.pop(link.status.node_num, None)  # type: ignore[arg-type]
    if not ages:
        return "no nodes heard yet"
    pages = node_pages(known, ages, ctx.services.settings.MAX_TEXT_BYTES)
    page = int(page_arg)
    if page > len(pages):
        return f"only {counted(len(pages), 'page')} of nodes"
    return f"nodes {page}/{len(pages)}: " + ", ".join(pages[page - 1])
