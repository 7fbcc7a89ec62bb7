"""`--probe`: connect to the node once, say what it is and how fast it answers, close.

Run before enabling the service: it answers "is NODE_HOST (or SERIAL_PORT) right, is the
node's API on, which node is it" in a second, through the daemon's own link code
(`NodeLink.open_once()`: the same connect timeout, handshake and probes), with one
connection that is closed after, so it kicks no other client off for long.
"""

from __future__ import annotations

import statistics
import threading
import time
from dataclasses import dataclass
from typing import Any, Optional

from meshtastic.protobuf import channel_pb2

from meshbot.config import Settings
from meshbot.link.airtime import radio_params
from meshbot.link.interface import NoHandshake, QueueReport
from meshbot.link.owner import LinkStatus, NodeLink, describe_error

# Heartbeats timed; the median is reported, so that a queueStatus the node sends on its
# own right after the handshake cannot pass for a fast answer.
HEARTBEATS = 3


class ProbeFailed(Exception):
    """What went wrong, in one line."""


@dataclass(frozen=True)
class ProbeResult:
    address: str
    node_id: str  # "!5eed0b07"
    short_name: str
    long_name: str
    firmware: str
    preset: str
    channels: int  # enabled channels (primary and secondaries)
    round_trip_s: float

    def line(self) -> str:
        """One line for the operator."""
        names = " ".join(n for n in (self.short_name, f"({self.long_name})" if self.long_name else "") if n)
        return (
            f"node {self.node_id} {names} at {self.address}: firmware {self.firmware}, {self.preset}, "
            f"{self.channels} channel{'' if self.channels == 1 else 's'}, heartbeat round trip {_ms(self.round_trip_s)}"
        )


def _ms(seconds: float) -> str:
    """0.4 ms over loopback, 38 ms over Wi-Fi: a decimal only where it says something."""
    ms = seconds * 1000
    return f"{ms:.1f} ms" if ms < 10 else f"{ms:.0f} ms"


class _HeartbeatAnswers:
    """A link observer that notes the node's answers to heartbeats (queueStatus for id 0)."""

    def __init__(self) -> None:
        self.answered = threading.Event()

    def link_changed(self, status: LinkStatus) -> None:
        pass

    def queue_status(self, report: QueueReport) -> None:
        if report.packet_id == 0:
            self.answered.set()

    def routing(self, request_id: int, reason: int, sender: int) -> None:
        pass


def probe_node(settings: Settings) -> ProbeResult:
    """Connect, handshake, time heartbeats, close. Raises ProbeFailed."""
    link = NodeLink(settings, lambda _packet: None)
    answers = _HeartbeatAnswers()
    link.add_observer(answers)
    try:
        iface = link.open_once()
    except NoHandshake as exc:
        raise ProbeFailed(
            f"connected to {link.address} but got no node handshake: {exc} (is it a Meshtastic node's API port?)"
        ) from None
    except Exception as exc:  # every failure is one line; the causes are the daemon's words
        raise ProbeFailed(f"cannot reach the node at {link.address}: {describe_error(exc)}") from None
    try:
        round_trip = _round_trip(iface, answers, settings.LINK_TIMEOUT_S)
        return _describe(iface, link.address, round_trip)
    finally:
        link.close_once(iface)


def _round_trip(iface: Any, answers: _HeartbeatAnswers, timeout_s: float) -> float:
    times = []
    for _ in range(HEARTBEATS):
        answers.answered.clear()
        sent_at = time.monotonic()
        if iface.answers_queue_status:
            iface.send_probe(strong=False)
            answered = answers.answered.wait(timeout_s)
        else:
            # Firmware too old to answer heartbeats answers the metadata request instead.
            iface.send_probe(strong=True)
            answered = _wait(lambda: iface.last_rx >= sent_at, timeout_s)
        if not answered:
            raise ProbeFailed(f"the node did not answer a heartbeat within {timeout_s:g} s")
        times.append(time.monotonic() - sent_at)
    return statistics.median(times)


def _wait(condition: Any, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.002)
    return True


def _describe(iface: Any, address: str, round_trip_s: float) -> ProbeResult:
    num: Optional[int] = iface.myInfo.my_node_num if iface.myInfo is not None else None
    user = (((iface.nodesByNum or {}).get(num) or {}).get("user") or {}) if num is not None else {}
    local = iface.localNode
    lora = local.localConfig.lora if local.localConfig.HasField("lora") else None
    radio = radio_params(lora)
    disabled = channel_pb2.Channel.Role.DISABLED
    channels = sum(1 for ch in (local.channels or []) if ch.role != disabled)
    return ProbeResult(
        address=address,
        node_id=f"!{num:08x}" if num is not None else "?",
        short_name=str(user.get("shortName") or ""),
        long_name=str(user.get("longName") or ""),
        firmware=(iface.metadata.firmware_version if iface.metadata is not None else "") or "unknown",
        preset=radio.name if radio else "unknown preset",
        channels=channels,
        round_trip_s=round_trip_s,
    )
