"""Command router: turns a received text into a handler call and its reply.

The router knows nothing of what handlers do. A handler is a function marked with
`@command(...)` in a module of `handlers/`; it receives a `CommandContext` (the
request and the services it may use) and returns the reply text, or None. The router
applies the reply policy: a command sent by DM is answered by DM, a command sent on a
channel is answered on that channel, threaded to the command with `reply_id`.
"""

from __future__ import annotations

import bisect
import dataclasses
import logging
import threading
import time
import types
import unicodedata
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional, cast

from meshtastic import BROADCAST_NUM
from meshtastic.protobuf import portnums_pb2

from meshbot.calls import CallResult, HandlerCalls, Outcome
from meshbot.config import Settings
from meshbot.dedup import RecentKeys
from meshbot.outbox.policy import TextKind
from meshbot.ratelimit import Decision, RateLimiter
from meshbot.text import quote_command

if TYPE_CHECKING:
    from meshbot.link.owner import NodeLink
    from meshbot.outbox.sender import MessageSender
    from meshbot.state.store import StateStore
    from meshbot.weather import WeatherClient

log = logging.getLogger(__name__)

MAX_ARGS_CHARS = 200
_TEXT_PORT = portnums_pb2.PortNum.TEXT_MESSAGE_APP


Handler = Callable[["CommandContext"], Optional[str]]


@dataclass(frozen=True)
class Command:
    """A command as registered: its name, aliases, one-line help and where it may run."""

    name: str
    func: Handler
    help: str
    aliases: tuple[str, ...] = ()
    on_channel: bool = True  # False: answered only by DM
    admin: bool = False


def command(
    name: str, *, help: str, aliases: Iterable[str] = (), on_channel: bool = True, admin: bool = False
) -> Callable[[Handler], Handler]:
    """Mark a handler function as a command (sopel-style); `handlers/` lists the modules."""

    def mark(func: Handler) -> Handler:
        func.meshbot_command = Command(name, func, help, tuple(aliases), on_channel, admin)  # type: ignore[attr-defined]
        return func

    return mark


class CommandRegistry:
    """Names and aliases to commands; exact match only (`/echoes` is not `/echo`)."""

    def __init__(self) -> None:
        self._commands: list[Command] = []
        self._by_name: dict[str, Command] = {}

    def add(self, cmd: Command) -> None:
        for name in (cmd.name, *cmd.aliases):
            key = name.lower()
            if key in self._by_name:
                raise ValueError(f"command /{key} registered twice")
            self._by_name[key] = cmd
        self._commands.append(cmd)

    def add_module(self, module: types.ModuleType) -> None:
        found = [obj.meshbot_command for obj in vars(module).values() if hasattr(obj, "meshbot_command")]
        if not found:
            raise ValueError(f"{module.__name__} defines no @command")
        for cmd in found:
            self.add(cmd)

    def lookup(self, name: str) -> Optional[Command]:
        return self._by_name.get(name)

    def commands(self) -> list[Command]:
        return list(self._commands)


@dataclass(frozen=True)
class InboundText:
    """The fields of a received text packet that commands use."""

    id: int
    sender: int
    to: int
    channel: int
    text: str
    rx_snr: float
    rx_rssi: int
    hop_start: int
    hop_limit: int
    via_mqtt: bool
    pki_encrypted: bool
    # The sender's key as the node's DB holds it, copied in by the firmware after a PKI
    # decrypt (trust on first use); empty for other packets.
    public_key: bytes = b""

    @classmethod
    def from_packet(cls, packet: dict) -> Optional["InboundText"]:
        raw = packet.get("raw")
        if raw is None or not raw.HasField("decoded") or raw.decoded.portnum != _TEXT_PORT:
            return None
        return cls(
            id=raw.id,
            sender=getattr(raw, "from"),
            to=raw.to,
            channel=raw.channel,
            # Invalid UTF-8 from a radio is answered, not fatal: show it as U+FFFD.
            text=raw.decoded.payload.decode("utf-8", "replace"),
            rx_snr=raw.rx_snr,
            rx_rssi=raw.rx_rssi,
            hop_start=raw.hop_start,
            hop_limit=raw.hop_limit,
            via_mqtt=raw.via_mqtt,
            pki_encrypted=raw.pki_encrypted,
            public_key=raw.public_key,
        )


# Bidirectional overrides and isolates can flip how a reply reads on other screens; bidi
# marks (LRM, RLM, ALM) and zero-width characters are invisible, so they can make two
# texts that look the same differ, or hide a `/` from a check that looks at the first
# character.
_BIDI_CONTROLS = {chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A))}
_BIDI_MARKS = {"\u200e", "\u200f", "\u061c"}
_ZERO_WIDTH = {"\u200b", "\u200c", "\u2060", "\ufeff"}
_ZWJ = "\u200d"
_REMOVED = _BIDI_CONTROLS | _BIDI_MARKS | _ZERO_WIDTH


def _emoji_part(ch: str) -> bool:
    """A character of an emoji sequence: a symbol, a skin tone, or the emoji variation selector."""
    return ch == "\ufe0f" or unicodedata.category(ch) in ("So", "Sk")


def clean_args(text: str, limit: int = MAX_ARGS_CHARS) -> str:
    """Remove control characters (NUL included), bidi overrides and marks and zero-width
    characters, collapse blanks, cap the length.

    The zero-width joiner is kept between two emoji, where it is what makes 🏳️‍🌈 one
    flag rather than a white flag and a rainbow; anywhere else it goes.
    """
    kept: list[str] = []
    for i, ch in enumerate(text):
        if ch in "\t\n\r":
            kept.append(" ")
        elif ch == _ZWJ:
            if kept and _emoji_part(kept[-1]) and i + 1 < len(text) and _emoji_part(text[i + 1]):
                kept.append(ch)
        elif unicodedata.category(ch) != "Cc" and ch not in _REMOVED:
            kept.append(ch)
    return " ".join("".join(kept).split())[:limit]


def display_name(node: Optional[dict], num: int) -> str:
    """A node DB entry's short name, or the last 4 hex digits of its number when it has none."""
    short = clean_args(((node or {}).get("user") or {}).get("shortName") or "", 8)
    return short or f"{num & 0xFFFF:04x}"


def node_short_name(iface: Any, num: int) -> str:
    """The sender's name from the node DB (a node missing from it: its number's last digits)."""
    nodes = (getattr(iface, "nodesByNum", None) or {}) if iface is not None else {}
    return display_name(nodes.get(num), num)


# Handler latency buckets, in seconds: /ping answers in well under a millisecond, /weather
# waits on the network up to WEATHER_TIMEOUT_S (8 s, 60 s at most).
LATENCY_BUCKETS_S = (0.001, 0.005, 0.025, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# The one label a name that is no registered command counts under, so that what users
# type cannot grow the metrics without bound.
UNKNOWN_COMMAND = "unknown"


@dataclass(frozen=True)
class Latency:
    """One command's handler run times: counts per bucket of LATENCY_BUCKETS_S (not
    cumulative), the runs slower than the last bucket, and the sum of all run times."""

    buckets: tuple[int, ...]
    over: int
    sum_s: float

    @property
    def count(self) -> int:
        return sum(self.buckets) + self.over


@dataclass
class BotStats:
    """Counters /status reports and the metrics endpoint reads (scraped, never pushed)."""

    started_at: float = field(default_factory=time.monotonic)
    commands: int = 0
    replies: int = 0
    _by_command: dict[str, int] = field(default_factory=dict, repr=False)
    _errors: dict[str, int] = field(default_factory=dict, repr=False)
    _latency: dict[str, tuple[list[int], list[float]]] = field(default_factory=dict, repr=False)
    state: Optional["StateStore"] = None  # where the count is kept across restarts
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count_command(self, name: str) -> None:
        """A command received: `name` is its registered name, or UNKNOWN_COMMAND."""
        with self._lock:
            self.commands += 1
            self._by_command[name] = self._by_command.get(name, 0) + 1
        if self.state is not None:
            self.state.count("commands")

    def count_reply(self) -> None:
        with self._lock:
            self.replies += 1

    def record_run(self, name: str, seconds: float, failed: bool) -> None:
        """One handler run: its time, and whether it raised."""
        index = bisect.bisect_left(LATENCY_BUCKETS_S, seconds)
        with self._lock:
            counts, total = self._latency.setdefault(name, ([0] * (len(LATENCY_BUCKETS_S) + 1), [0.0]))
            counts[index] += 1
            total[0] += seconds
            if failed:
                self._errors[name] = self._errors.get(name, 0) + 1

    def by_command(self) -> dict[str, int]:
        with self._lock:
            return dict(self._by_command)

    def errors(self) -> dict[str, int]:
        with self._lock:
            return dict(self._errors)

    def latency(self) -> dict[str, Latency]:
        with self._lock:
            return {
                name: Latency(tuple(counts[:-1]), counts[-1], total[0]) for name, (counts, total) in self._latency.items()
            }


@dataclass
class Services:
    """What handlers may use. Handlers send through `sender`; none keeps the interface."""

    settings: Settings
    sender: "MessageSender"
    link: "NodeLink"
    registry: CommandRegistry
    stats: BotStats
    weather: Optional["WeatherClient"] = None
    state: Optional["StateStore"] = None
    # Clients of the shared node API (API_LISTEN) connected now; None when it is off.
    api_clients: Optional[Callable[[], int]] = None


@dataclass(frozen=True)
class CommandContext:
    """One command invocation, as a handler sees it."""

    command: Command
    name_used: str
    args: str
    message: InboundText
    sender_name: str
    is_dm: bool
    is_admin: bool  # an admin node, authenticated as REQUIRE_PKI_FOR_ADMIN asks
    services: Services

    @property
    def channel(self) -> int:
        return self.message.channel


class _CountingSender:
    """The sender as one handler call sees it: the same outbox, counting what the handler queues.

    So that the command's log line tells every text the command cost, not only its reply.
    """

    def __init__(self, sender: "MessageSender") -> None:
        self._sender = sender
        self.queued = 0

    def send(self, *args: Any, **kwargs: Any) -> int:
        texts = self._sender.send(*args, **kwargs)
        self.queued += texts
        return texts

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sender, name)


class Router:
    """Decides what a received packet is and whom to answer. Runs on handler workers.

    In order: not a text, our own, or no leading `/`: ignored. A command this bot does not
    have, on a channel: ignored (it may be another bot's). Seen already (same sender
    and packet id) or an echo of our own broadcast: ignored. Over the sender's rate
    limit: one notice, then silence. Then the command runs, if it exists and the
    sender may run it here.
    """

    ADMIN_BUDGET_FACTOR = 4

    def __init__(self, services: Services, own_broadcasts: RecentKeys) -> None:
        self._services = services
        settings = services.settings
        self._seen = RecentKeys(settings.DEDUP_WINDOW_S)
        self._own_broadcasts = own_broadcasts
        self._limiter = RateLimiter(settings.RATE_LIMIT_WINDOW_S)
        self._admins = {admin.num: admin for admin in settings.ADMIN_NODES}
        # Every handler runs through it: guarded, under HANDLER_TIMEOUT_S (calls.py). At most
        # HANDLER_THREADS written-off calls of one command: as many as could ever run at once.
        self.calls = HandlerCalls(settings.HANDLER_TIMEOUT_S, settings.HANDLER_THREADS, services.stats)

    def restore_answered(self) -> int:
        """At start-up: the commands the last run answered within DEDUP_WINDOW_S count as
        seen, so that the node's replay of its queue for the client is not answered twice."""
        state = self._services.state
        keys = state.answered_since(self._services.settings.DEDUP_WINDOW_S) if state is not None else []
        for key, age_s in keys:
            self._seen.restore(key, age_s)
        return len(keys)

    def handle(self, packet: dict) -> None:
        message = InboundText.from_packet(packet)
        if message is None:
            return
        services = self._services
        own_num = services.link.status.node_num
        if message.sender == own_num or not message.text.startswith("/"):
            return
        word, _, rest = message.text[1:].partition(" ")
        name = clean_args(word, 32).lower()
        if not name:
            return  # a lone "/" is not worth airtime
        is_dm = own_num is not None and message.to == own_num
        cmd = services.registry.lookup(name)
        if cmd is None and not is_dm:
            # On a channel, `/word` may be meant for another bot: not ours to answer, nor to
            # count against the sender's rate limit.
            log.debug("ignored /%s from !%08x on ch%d: not a command of this bot", name[:16], message.sender, message.channel)
            return
        if message.id and not self._seen.add_if_new((message.sender, message.id)):
            log.debug("ignored a repeat of packet %08x from !%08x", message.id, message.sender)
            return
        if message.text in self._own_broadcasts:
            log.info("ignored our own broadcast echoed back by !%08x", message.sender)
            return
        if not is_dm and services.sender.governor.dm_only():
            # The channel is over CHANNEL_UTIL_MAX_PCT: the bot adds nothing to it.
            services.sender.governor.not_answered(f"/{name}", message.sender, message.channel)
            return
        refusal = self._admin_refusal(message, is_dm)
        is_admin = refusal is None
        # Every command counts for /status, the unknown, refused and rate-limited ones too:
        # they are what the mesh asked of the bot.
        services.stats.count_command(cmd.name if cmd else UNKNOWN_COMMAND)
        verdict = self._limiter.check(
            message.sender, services.settings.RATE_LIMIT_COUNT * (self.ADMIN_BUDGET_FACTOR if is_admin else 1)
        )
        if verdict.decision is Decision.SILENT:
            return
        if verdict.decision is Decision.NOTIFY:
            log.info("rate limit: !%08x sent over %d commands", message.sender, services.settings.RATE_LIMIT_COUNT)
            self._reply(message, is_dm, f"rate limit: wait {verdict.wait_s} s", f"/{name} (rate limited)")
            return
        if cmd is None:  # by DM: the sender meant this bot
            shown = name if len(name) <= 16 else name[:15] + "…"
            self._reply(message, is_dm, f"unknown command /{shown}: send /help", f"/{shown} (unknown)")
            return
        if cmd.admin and not is_admin:
            # The same answer whatever the reason: a forger learns nothing from it.
            self._reply(message, is_dm, "not authorized", f"/{name} refused ({refusal})")
            return
        if not cmd.on_channel and not is_dm:
            self._reply(message, is_dm, f"by DM only: /{cmd.name}", f"/{name} (DM only)")
            return
        sender = _CountingSender(services.sender)
        ctx = CommandContext(
            command=cmd,
            name_used=name,
            args=clean_args(rest),
            message=message,
            sender_name=node_short_name(services.sender.get_interface(), message.sender),
            is_dm=is_dm,
            is_admin=is_admin,
            services=dataclasses.replace(services, sender=cast("MessageSender", sender)),
        )

        def timed_out() -> None:  # on the calls' watcher thread, at HANDLER_TIMEOUT_S
            self._reply(
                message, is_dm, f"sorry, /{cmd.name} timed out", f"/{name} (timed out)", queued_by_handler=sender.queued
            )

        result = self.calls.call(ctx, timed_out)
        if result.outcome is Outcome.LATE:
            return  # answered 'timed out' already
        reply, how = self._answer(result, cmd.name)
        # Logged under the name used (/forecast, not /weather), with the texts the handler
        # queued itself (the /echo broadcast) counted with the reply's.
        self._reply(message, is_dm, reply, f"/{name}{how}", queued_by_handler=sender.queued)

    def lookup_text(self, command_text: str) -> tuple[Optional[Command], str]:
        """The command a text like '/weather Lyon' names (or None), and its argument string."""
        word, _, rest = command_text.lstrip("/").partition(" ")
        return self._services.registry.lookup(word.lower()), rest

    def run_scheduled(self, command_text: str, channel: int) -> int:
        """Run a command for a scheduled broadcast, as the bot itself; broadcast its answer."""
        services = self._services
        cmd, rest = self.lookup_text(command_text)
        if cmd is None:
            raise KeyError(command_text)
        own_num = services.link.status.node_num or 0
        message = InboundText(0, own_num, BROADCAST_NUM, channel, command_text, 0.0, 0, 0, 0, False, False)
        ctx = CommandContext(
            command=cmd,
            name_used=cmd.name,
            args=clean_args(rest),
            message=message,
            sender_name=node_short_name(services.sender.get_interface(), own_num),
            is_dm=False,
            is_admin=True,  # the operator wrote the schedule
            services=services,
        )
        result = self.calls.call_detached(ctx)
        if result.outcome is not Outcome.DONE:
            # Told in the handler calls' own log line; an error is not worth the channel's airtime.
            log.warning("scheduled %s not broadcast: its handler %s", command_text, result.outcome.value.replace("_", " "))
            return 0
        reply = result.reply
        return services.sender.send(reply, channel=channel, kind=TextKind.SCHEDULED) if reply else 0

    def _admin_refusal(self, message: InboundText, is_dm: bool) -> Optional[str]:
        """None if the sender is an authenticated admin, else why not (for the log line).

        A node id is forged easily; what the firmware vouches for is the PKI decrypt
        (`pki_encrypted`) and the key it used (`public_key`, from its node DB). A packet
        that came through MQTT was not decrypted by this node's radio path alone: an MQTT
        downlink with encryption off may carry a forged flag, so it never counts.
        """
        admin = self._admins.get(message.sender)
        if admin is None:
            return "not an admin node"
        if not is_dm:
            return "admin commands need a DM"  # on a channel, anyone with the key can claim any id
        if message.via_mqtt:
            return "arrived via MQTT"
        if self._services.settings.REQUIRE_PKI_FOR_ADMIN and not message.pki_encrypted:
            return "admin commands need a PKI-encrypted DM"
        if admin.public_key is not None:
            if not message.public_key:
                return "no public key in the packet, and ADMIN_NODES pins one"
            if message.public_key != admin.public_key:
                return "public key differs from the one ADMIN_NODES pins"
        return None

    def _reply(
        self,
        message: InboundText,
        is_dm: bool,
        reply: Optional[str],
        what: str,
        level: int = logging.INFO,
        *,
        queued_by_handler: int = 0,
    ) -> None:
        """Answer by DM to a DM, on the channel to a channel message, threaded to it; log one line.

        A reply never starts with `/` (it is quoted: `> /...`): another bot on the channel
        would run it as a command, whether the text is a help line or a user's words.
        """
        texts = queued_by_handler
        # Kept with the reply's texts (one transaction), so a replay after a restart is ignored.
        answered = (message.sender, message.id) if message.id else None
        if reply:
            self._services.stats.count_reply()
            reply = quote_command(reply)
            to = message.sender if is_dm else BROADCAST_NUM
            texts += self._services.sender.send(
                reply, to=to, channel=message.channel, reply_to=message.id, requester=message.sender,
                kind=TextKind.REPLY, answers=answered,
            )
        elif answered is not None and self._services.state is not None:
            self._services.state.answered(answered)
        log.log(
            level,
            "%s from !%08x %s: %d text%s",
            what, message.sender, "by DM" if is_dm else f"on ch{message.channel}", texts, "" if texts == 1 else "s",
        )

    @staticmethod
    def _answer(result: CallResult, name: str) -> tuple[Optional[str], str]:
        """The reply to a handler call's outcome, and what the command's log line says of it."""
        outcome = result.outcome
        if outcome is Outcome.DONE:
            return result.reply, ""
        if outcome is Outcome.FAILED:
            return f"sorry, /{name} failed", " (failed)"
        if outcome is Outcome.TIMED_OUT:
            return f"sorry, /{name} timed out", " (timed out)"
        if outcome is Outcome.RUNNING:
            return f"still busy with your last /{name}: wait for its answer", " (still running)"
        return f"sorry, /{name} is not answering now: try later", " (hung)"
