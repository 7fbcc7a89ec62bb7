"""/ping: proof of life, with what the bot heard of the packet."""

from __future__ import annotations

from typing import Optional

from meshbot.router import CommandContext, InboundText, command
from meshbot.text import counted


def signal_report(message: InboundText) -> str:
    """SNR, RSSI, hops and MQTT, as far as the node reported them."""
    parts = []
    if message.via_mqtt:
        parts.append("via MQTT")
    elif message.rx_rssi or message.rx_snr:
        parts.append(f"SNR {message.rx_snr:.1f} dB, RSSI {message.rx_rssi} dBm")
    if message.hop_start:
        hops = message.hop_start - message.hop_limit
        parts.append("direct" if hops == 0 else counted(hops, "hop"))
    return ", ".join(parts)


@command("ping", help="/ping: pong, with the SNR, RSSI and hops the bot heard")
def ping(ctx: CommandContext) -> Optional[str]:
    report = signal_report(ctx.message)
    return f"pong: {report}" if report else "pong"
