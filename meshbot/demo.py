"""`--demo`: the real bot against the simulated node, with a scripted conversation.

The transcript goes to stdout (it is the demo's user interface, not logging); the
bot's own log lines go to stderr as usual, so both can be watched side by side.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from dataclasses import dataclass, replace
from typing import Callable, Optional, TextIO

from meshbot.app import Bot
from meshbot.config import Settings
from meshbot.sim.node import BROADCAST_NUM, SentText, SimulatedNode, SimUser
from meshbot.sim.weather import FakeOpenMeteo

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Step:
    at_s: float
    user: str  # short name of a simulated user, or "" for a node event
    text: str
    channel: int = 0
    dm: bool = False
    event: Optional[Callable[[SimulatedNode], None]] = None


SCRIPT: tuple[Step, ...] = (
    Step(1.0, "ALIC", "/ping"),
    Step(2.0, "BOB", "/help", dm=True),
    Step(3.0, "CARL", "hello everyone, anyone on tonight?"),
    Step(4.0, "CARL", "/echo QSL from the hilltop, 73"),
    Step(5.0, "ALIC", "/weather"),
    Step(6.0, "BOB", "/forecast ALIC"),
    Step(7.0, "ALIC", "/nodes"),
    Step(8.0, "BOB", "/pong", dm=True),  # on a channel an unknown command is ignored (another bot's)
    Step(9.0, "ALIC", "/bc net starts at 20:00"),
    Step(24.0, "", "the node drops the bot's connection (FIN)", event=lambda node: node.drop()),
    Step(24.5, "BOB", "/ping", channel=1),
    Step(28.0, "", "the node goes silent with the socket open", event=lambda node: node.go_silent()),
    Step(40.0, "CARL", "/status", dm=True),
)


class Transcript:
    """Readable lines of what goes over the simulated mesh."""

    def __init__(self, node: SimulatedNode, out: TextIO) -> None:
        self._node = node
        self._out = out
        self._t0 = time.monotonic()
        self._lock = threading.Lock()

    def line(self, who: str, where: str, text: str) -> None:
        with self._lock:
            self._out.write(f"[{time.monotonic() - self._t0:6.1f}s] {who:<5} -> {where:<5} {text}\n")
            self._out.flush()

    def where(self, to: int, channel: int) -> str:
        if to == BROADCAST_NUM:
            return f"ch{channel}"
        user = self._node.users.get(to)
        return user.short_name if user and user.short_name else f"!{to:08x}"

    def bot_sent(self, sent: SentText) -> None:
        self.line(self._node.short_name, self.where(sent.to, sent.channel), sent.text)


def run_demo(settings: Settings, seconds: float, stop: threading.Event, out: TextIO = sys.stdout) -> None:
    """Run the bot against a simulated node until `stop` is set or `seconds` pass (0: forever)."""
    with SimulatedNode() as node, FakeOpenMeteo() as weather_service:
        transcript = Transcript(node, out)
        node.on_text = transcript.bot_sent
        demo_settings = with_simulators(settings, node, weather_service)
        bot = Bot(demo_settings)
        out.write(
            f"meshbot demo: simulated node {node.short_name} on 127.0.0.1:{node.port}, "
            f"users {', '.join(u.short_name for u in node.users.values())}, "
            f"fake Open-Meteo on {weather_service.url}\n"
        )
        bot.start()
        users = {u.short_name: u for u in node.users.values()}
        player = threading.Thread(target=_play, args=(node, users, transcript, stop), name="demo-script", daemon=True)
        player.start()
        stop.wait(seconds if seconds > 0 else None)
        bot.stop()


def _play(node: SimulatedNode, users: dict[str, SimUser], transcript: Transcript, stop: threading.Event) -> None:
    started = time.monotonic()
    for step in SCRIPT:
        if stop.wait(max(0.0, started + step.at_s - time.monotonic())):
            return
        if step.event is not None:
            transcript.line("node", "-", f"*** {step.text}")
            step.event(node)
            continue
        if not node.wait_connected(30):
            transcript.line("node", "-", "*** no client connected; demo step skipped")
            continue
        user = users[step.user]
        where = node.short_name if step.dm else f"ch{step.channel}"
        transcript.line(user.short_name, where, step.text)
        packet = node.user_packet(user, step.text, channel=step.channel, dm=step.dm, hops=user.hops_away)
        if not node.deliver(packet):
            # As a real node does, the simulated one keeps it for the bot's next connection.
            transcript.line("node", "-", "*** the bot is reconnecting; the node keeps the message for it")
    transcript.line("demo", "-", "script done; the bot keeps running (Ctrl-C to stop)")


def with_simulators(settings: Settings, node: SimulatedNode, weather: FakeOpenMeteo) -> Settings:
    """The operator's settings, pointed at the simulators (nothing leaves 127.0.0.1)."""
    return replace(
        settings,
        CONNECTION="tcp",  # the simulated node listens on TCP, whatever config.py says
        NODE_HOST=node.host,
        NODE_PORT=node.port,
        # Short probe times so the silent-node fault is noticed within the demo.
        PROBE_INTERVAL_S=3.0,
        LINK_TIMEOUT_S=8.0,
        WEATHER_API_URL=weather.forecast_url,
        GEOCODING_API_URL=weather.geocoding_url,
        DEFAULT_LOCATION=settings.DEFAULT_LOCATION or "Lyon",
        STATE_DIR=":memory:",  # the demo's texts are not the operator's: nothing is kept
    )
