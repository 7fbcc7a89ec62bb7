"""`meshbot try`: the real bot against the simulated node, and you typing as its users.

The demo plays a script; this reads lines from the terminal and sends each as a text from a
simulated radio, so that a new operator can talk to the bot before owning a node:

    /ping              ALIC says it on channel 0
    @BOB /help         a DM from BOB (any simulated user's short name)
    #1 /echo hi        on channel 1 (0-7)
    !stranger /ping    from a node the mesh has no NodeInfo for (the stranger rules)

The bot's replies are printed as they reach the node, with the time since the line was
sent, next to the bot's own log (stderr). The per-user rate limit is raised, and the banner
says so: someone trying the bot sends far more than a mesh user would. Like the demo, this
is the one place besides tests and benchmarks that runs the simulators.
"""

from __future__ import annotations

import re
import sys
import threading
import time
from dataclasses import dataclass, replace
from typing import Optional, TextIO

from meshbot.app import Bot
from meshbot.config import Settings
from meshbot.demo import Transcript, with_simulators
from meshbot.link.owner import LinkState
from meshbot.sim.node import DEFAULT_USERS, SentText, SimulatedNode, SimUser
from meshbot.sim.weather import FakeOpenMeteo

# Far above what one person types in a minute, far below what would hide the limit's purpose.
TRIAL_RATE_LIMIT = 1000
CONNECT_WAIT_S = 15.0
# After the end of piped input (`meshbot try < lines.txt`): replies still coming are awaited.
QUIET_S = 3.0
DRAIN_MAX_S = 120.0
# The node id of `!stranger`: not in the simulated node's DB, so the bot has no NodeInfo for it.
STRANGER = SimUser(0x00002134, "", in_db=False)
_LINE_RE = re.compile(r"^(?:@(?P<dm>\S+)\s+|#(?P<channel>\d)\s+|(?P<stranger>!stranger)\s+)?(?P<text>.+)$")


@dataclass(frozen=True)
class TrialLine:
    """What one typed line means: who says what, where."""

    user: SimUser
    text: str
    channel: int = 0
    dm: bool = False


class TrialInputError(ValueError):
    """A typed line that means nothing; the message says what would."""


def parse_line(line: str, users: dict[str, SimUser]) -> Optional[TrialLine]:
    """A typed line as a text from a simulated user; None for an empty line."""
    line = line.strip()
    if not line:
        return None
    match = _LINE_RE.match(line)
    assert match is not None  # `.+` matches any non-empty line
    text = match["text"]
    if match["dm"] is not None:
        user = users.get(match["dm"].upper())
        if user is None:
            raise TrialInputError(f"no user {match['dm']}: try {', '.join('@' + name for name in users)}")
        return TrialLine(user, text, dm=True)
    if match["channel"] is not None:
        channel = int(match["channel"])
        if channel > 7:
            raise TrialInputError("channels are #0 to #7")
        return TrialLine(next(iter(users.values())), text, channel=channel)
    if match["stranger"] is not None:
        return TrialLine(STRANGER, text)
    return TrialLine(next(iter(users.values())), text)


class _ReplyClock:
    """Prints the bot's texts with the time since the user's last line."""

    def __init__(self, transcript: Transcript) -> None:
        self._transcript = transcript
        self._sent_at = self._last_reply = time.monotonic()

    def user_spoke(self) -> None:
        self._sent_at = self._last_reply = time.monotonic()

    def wait_quiet(self, bot: Bot, stop: threading.Event) -> None:
        """Until the outbox is empty and the node heard nothing new for QUIET_S (a reply that
        waits for the 2 s text pacing or a weather answer still comes), or DRAIN_MAX_S."""
        deadline = time.monotonic() + DRAIN_MAX_S
        while not stop.wait(0.1) and time.monotonic() < deadline:
            if bot.sender.stats().queued == 0 and time.monotonic() - self._last_reply > QUIET_S:
                return

    def bot_sent(self, sent: SentText) -> None:
        self._last_reply = time.monotonic()
        where = self._transcript.where(sent.to, sent.channel)
        self._transcript.line("BOT", where, f"{sent.text}   (+{time.monotonic() - self._sent_at:.1f} s)")


def run_trial(settings: Settings, stop: threading.Event, stdin: TextIO = sys.stdin, out: TextIO = sys.stdout) -> None:
    """Until end of input (Ctrl-D) or `stop` (Ctrl-C, SIGTERM)."""
    with SimulatedNode(users=(*DEFAULT_USERS, STRANGER)) as node, FakeOpenMeteo() as weather_service:
        transcript = Transcript(node, out)
        clock = _ReplyClock(transcript)
        node.on_text = clock.bot_sent
        trial_settings = replace(with_simulators(settings, node, weather_service), RATE_LIMIT_COUNT=TRIAL_RATE_LIMIT)
        bot = Bot(trial_settings)
        users = {u.short_name: u for u in node.users.values() if u.in_db}
        out.write(
            f"meshbot try: the real bot against a simulated node on 127.0.0.1:{node.port}; type as its users:\n"
            f"  /ping            {next(iter(users))} on ch0\n"
            f"  @BOB /help       a DM from BOB (users: {', '.join(users)})\n"
            "  #1 /echo hi      on channel 1\n"
            "  !stranger /ping  from a node with no NodeInfo\n"
            f"The rate limit is raised to {TRIAL_RATE_LIMIT} commands a minute for the trial (the default is "
            f"{settings.RATE_LIMIT_COUNT}). Ctrl-D or Ctrl-C ends it.\n"
        )
        out.flush()
        bot.start()
        if not _wait_link_up(bot, stop):
            out.write("meshbot try: the bot did not connect to the simulated node; see the log above\n")
        ended = threading.Event()
        reader = threading.Thread(
            target=_read_lines, args=(stdin, node, users, transcript, clock, ended), name="trial-input", daemon=True
        )
        reader.start()
        while not stop.is_set() and not ended.wait(0.2):
            pass
        if not stop.is_set():
            clock.wait_quiet(bot, stop)  # end of piped input: let the replies come first
        bot.stop()
        out.write("meshbot try: ended\n")
        out.flush()


def _wait_link_up(bot: Bot, stop: threading.Event) -> bool:
    """Lines typed before the link is up would wait in the node; they are read after."""
    deadline = time.monotonic() + CONNECT_WAIT_S
    while bot.link.status.state is not LinkState.UP:
        if stop.wait(0.05) or time.monotonic() > deadline:
            return False
    return True


def _read_lines(
    stdin: TextIO,
    node: SimulatedNode,
    users: dict[str, SimUser],
    transcript: Transcript,
    clock: _ReplyClock,
    ended: threading.Event,
) -> None:
    try:
        for raw in stdin:
            try:
                line = parse_line(raw, users)
            except TrialInputError as exc:
                transcript.line("try", "-", str(exc))
                continue
            if line is None:
                continue
            where = node.short_name if line.dm else f"ch{line.channel}"
            transcript.line(line.user.short_name or line.user.node_id, where, line.text)
            clock.user_spoke()
            packet = node.user_packet(line.user, line.text, channel=line.channel, dm=line.dm, hops=line.user.hops_away)
            if not node.deliver(packet):
                transcript.line("node", "-", "*** the bot is not connected yet; the node keeps the text for it")
    finally:
        ended.set()
