"""Settings: one frozen dataclass, loaded from a Python file of UPPER_CASE assignments.

Every key is declared once, here, with its type, default, allowed range and a one-line
doc. `config.example.py` and the README's key table are checked against this list by the
tests, so the documentation cannot drift from the code.

A bad value is reported as one line naming the key and the expected form; `main.py`
turns that into exit code 78 (EX_CONFIG), before any connection is tried, so systemd
does not restart-loop on a typo.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import difflib
import ipaddress
import logging
import re
import runpy
import zoneinfo
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from meshbot.logs import redact_secrets
from meshbot.netaddr import ALLOW_FORM, parse_allow

log = logging.getLogger(__name__)

EX_CONFIG = 78
_KEY_RE = re.compile(r"^[A-Z][A-Z0-9_]*$")
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
# Firmware 2.7.0 and later drops a text that comes less than 2 s after the previous one
# it accepted from the same client (PhoneAPI), without telling the client.
FIRMWARE_TEXT_INTERVAL_S = 2.0


class ConfigError(Exception):
    """A setting is missing, malformed or out of range. The message is one line."""


@dataclass(frozen=True)
class KeySpec:
    """How one key is checked and documented."""

    kind: type
    doc: str
    low: Optional[float] = None
    high: Optional[float] = None
    choices: tuple[str, ...] = ()
    # For structured values: turns the raw value into the canonical one, or raises
    # ValueError with the expected form.
    parse: Optional[Callable[[Any], Any]] = None
    form: str = ""  # the expected form, when `parse` decides
    example: str = ""  # an extra example line for config.example.py

    def expected(self) -> str:
        """The expected form, as the error message and the docs say it."""
        if self.form:
            return self.form
        if self.choices:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        noun = {bool: "True or False", int: "an integer", float: "a number", str: "a string"}.get(
            self.kind, self.kind.__name__
        )
        if self.low is not None and self.high is not None:
            return f"{noun} from {self.low:g} to {self.high:g}"
        if self.low is not None:
            return f"{noun} >= {self.low:g}"
        return noun


_NODE_ID_RE = re.compile(r"^![0-9a-f]{8}$")
_HHMM_RE = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])$")


# Curve25519 public keys, as the apps and `meshtastic --info` show them: base64 of 32 bytes.
PUBLIC_KEY_BYTES = 32
ADMIN_NODES_FORM = "a list of node ids like '!a1b2c3d4', each optionally followed by its public key: '!a1b2c3d4 <base64 key>'"


@dataclass(frozen=True)
class AdminNode:
    """One ADMIN_NODES entry: a node number and, if pinned, the public key it must use."""

    num: int
    public_key: Optional[bytes] = None  # None: not pinned

    @property
    def node_id(self) -> str:
        return f"!{self.num:08x}"


def parse_public_key(text: str) -> bytes:
    """A base64 Curve25519 public key (32 bytes, 44 characters with its '=') -> bytes.

    `meshtastic --get security` prints keys as 'base64:...': that prefix is accepted too.
    """
    if text.startswith("base64:"):
        text = text[len("base64:") :]
    try:
        key = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{text!r} is not base64 (a public key looks like 'pU7Xm...Q3c=', 44 characters)") from None
    if len(key) != PUBLIC_KEY_BYTES:
        raise ValueError(f"{text!r} is {len(key)} bytes of base64; a public key is {PUBLIC_KEY_BYTES} bytes (44 characters)")
    return key


def parse_admin_nodes(value: Any) -> tuple[AdminNode, ...]:
    """ADMIN_NODES: ['!a1b2c3d4', '!0badc0de <base64 public key>'] -> AdminNode entries."""
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"expected {ADMIN_NODES_FORM}, got {value!r}")
    admins: dict[int, AdminNode] = {}
    for item in value:
        if not isinstance(item, str):
            raise ValueError(f"{item!r} is not a node id: expected '!' and 8 hex digits, like '!a1b2c3d4'")
        words = item.split()
        if not words or not _NODE_ID_RE.match(words[0].lower()) or len(words) > 2:
            raise ValueError(
                f"{item!r} is not a node id: expected '!' and 8 hex digits, like '!a1b2c3d4',"
                " optionally followed by one space and the node's base64 public key"
            )
        num = int(words[0][1:], 16)
        key = parse_public_key(words[1]) if len(words) == 2 else None
        if num in admins:
            raise ValueError(f"{words[0]} is listed twice")
        admins[num] = AdminNode(num, key)
    return tuple(admins.values())


@dataclass(frozen=True)
class ScheduledBroadcast:
    """One SCHEDULED_BROADCASTS entry: a time of day or an interval, a text or a command."""

    at: Optional[tuple[int, int]]  # local (hour, minute)
    every_s: Optional[float]
    text: Optional[str]
    command: Optional[str]
    channel: int

    def describe(self) -> str:
        when = f"at {self.at[0]:02d}:{self.at[1]:02d}" if self.at else f"every {self.every_s:g} s"
        what = f"command {self.command}" if self.command else f"text {self.text!r}"
        return f"{what} {when} on ch{self.channel}"


_SCHEDULE_FORM = (
    "a list of entries like {'at': '07:30', 'text': '...'} or {'every_s': 3600, 'command': '/weather'},"
    " each with an optional 'channel' (0-7)"
)


def parse_schedule(value: Any) -> tuple[ScheduledBroadcast, ...]:
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"expected {_SCHEDULE_FORM}")
    entries = []
    for index, entry in enumerate(value):
        where = f"entry {index} ({entry!r})"
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: expected a dict, {_SCHEDULE_FORM}")
        unknown = set(entry) - {"at", "every_s", "text", "command", "channel"}
        if unknown:
            raise ValueError(f"{where}: unknown field {sorted(unknown)[0]!r}")
        if ("at" in entry) == ("every_s" in entry):
            raise ValueError(f"{where}: expected exactly one of 'at' ('HH:MM') or 'every_s' (seconds)")
        if ("text" in entry) == ("command" in entry):
            raise ValueError(f"{where}: expected exactly one of 'text' or 'command'")
        at = None
        if "at" in entry:
            match = _HHMM_RE.match(entry["at"]) if isinstance(entry["at"], str) else None
            if not match:
                raise ValueError(f"{where}: 'at' must be a local time 'HH:MM', like '07:30'")
            at = (int(match.group(1)), int(match.group(2)))
        every = entry.get("every_s")
        if every is not None and (isinstance(every, bool) or not isinstance(every, (int, float)) or not 1 <= every <= 7 * 86400):
            raise ValueError(f"{where}: 'every_s' must be a number of seconds from 1 to 604800")
        text, command = entry.get("text"), entry.get("command")
        if text is not None and (not isinstance(text, str) or not text.strip()):
            raise ValueError(f"{where}: 'text' must be a non-empty string")
        if command is not None and (not isinstance(command, str) or not command.startswith("/") or len(command) < 2):
            raise ValueError(f"{where}: 'command' must be a command like '/weather'")
        channel = entry.get("channel", 0)
        if isinstance(channel, bool) or not isinstance(channel, int) or not 0 <= channel <= 7:
            raise ValueError(f"{where}: 'channel' must be a channel index from 0 to 7")
        entries.append(ScheduledBroadcast(at, None if every is None else float(every), text, command, channel))
    return tuple(entries)


# "lat,lon" in decimal degrees, as users type it: "45.76,4.84", "-33.87, 151.21".
_LAT_LON_RE = re.compile(r"^([-+]?\d{1,3}(?:\.\d+)?)\s*,\s*([-+]?\d{1,3}(?:\.\d+)?)$")
LAT_LON_FORM = "'lat,lon' in decimal degrees, like '45.76,4.84'"


def looks_like_lat_lon(text: str) -> bool:
    """True if text is only digits, signs, dots, commas and blanks, with a comma.

    Such a text cannot be a place name, so it must be valid coordinates: '45,76,4,84'
    is an error, not a place to look up. A lone number stays a place (a postal code).
    """
    text = text.strip()
    return "," in text and all(ch in "0123456789+-., " for ch in text)


def parse_lat_lon(text: str) -> Optional[tuple[float, float]]:
    """'45.76,4.84' -> (45.76, 4.84); None if text is not in that form.

    Raises ValueError for coordinates in that form but out of range.
    """
    match = _LAT_LON_RE.match(text.strip())
    if not match:
        return None
    lat, lon = float(match.group(1)), float(match.group(2))
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise ValueError(f"{text.strip()!r} is out of range: latitude -90..90, longitude -180..180")
    return lat, lon


_LOCATION_FORM = f"a place name like 'Lyon', or {LAT_LON_FORM}"


def parse_location(value: Any) -> str:
    """DEFAULT_LOCATION: a place name or coordinates; numeric-looking text must be valid 'lat,lon'."""
    if not isinstance(value, str):
        raise ValueError(f"expected {_LOCATION_FORM}, got {value!r}")
    text = " ".join(value.split())
    if looks_like_lat_lon(text) and parse_lat_lon(text) is None:
        raise ValueError(f"{value!r} is not {LAT_LON_FORM}")
    return text


SERIAL_PORT_FORM = "a device path like '/dev/ttyUSB0' or '/dev/serial/by-id/...', or 'auto'"


def parse_serial_port(value: Any) -> str:
    """SERIAL_PORT: 'auto' or an absolute device path.

    The device need not exist yet (the link waits for it to be plugged in), so only the
    form is checked: a relative name like 'ttyUSB0' would be opened relative to the
    daemon's working directory, never what the operator meant.
    """
    if value == "auto" or (isinstance(value, str) and value.startswith("/") and len(value) > 1 and value == value.strip()):
        return value
    raise ValueError(f"expected {SERIAL_PORT_FORM}, got {value!r}")


def parse_http_url(value: Any) -> str:
    """An API URL: http:// or https:// and a host (tests point these at 127.0.0.1)."""
    if not isinstance(value, str) or not re.match(r"^https?://[^/\s]+(/\S*)?$", value):
        # The exit-78 line must not print a key the operator put in the URL.
        raise ValueError(f"expected an http:// or https:// URL, got {redact_secrets(repr(value))}")
    return value


def parse_state_dir(value: Any) -> str:
    """STATE_DIR: a path, '' (the default place) or ':memory:'. Whether it is writable is
    found out at start-up: a bad directory is a WARNING then, never a refusal to start."""
    if isinstance(value, Path):
        value = str(value)
    if not isinstance(value, str) or value != value.strip():
        raise ValueError(f"expected a directory path, '' or ':memory:', got {value!r}")
    return value


_HOST_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$")
_IPV6_HOST_RE = re.compile(r"^[0-9A-Fa-f:.]+(%[A-Za-z0-9_.-]+)?$")
METRICS_LISTEN_FORM = "'' (off), or 'host:port' like '127.0.0.1:9464', '0.0.0.0:9464' or '[::1]:9464'"


def split_host_port(value: str, form: str) -> tuple[str, int]:
    """'host:port' (an IPv6 address in brackets) -> (host, port); ValueError naming `form`.

    Port 0 (any free port) is accepted: tests listen there and read the port they got.
    """
    host, sep, port = value.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    if bracketed:
        host = host[1:-1]
    # A hostname or IPv4 address; an IPv6 address only in brackets, or '::1:9464' would be
    # ambiguous. No scheme, path or user: this is where to listen, not a URL.
    host_re = _IPV6_HOST_RE if bracketed else _HOST_RE
    if not sep or not host_re.match(host) or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"expected {form}, got {value!r}")
    return host, int(port)


API_LISTEN_FORM = "'' (off), or 'host:port' like '0.0.0.0:4403', '127.0.0.1:4404' or '[::]:4403'"


def listen_address_parser(form: str) -> Callable[[Any], str]:
    """A parser for a key naming where the bot listens (API_LISTEN, METRICS_LISTEN): ''
    (off) or 'host:port'. The host is never implied: '0.0.0.0' (every interface) must be
    written out, since whoever reaches the port can use the node or see how busy it is."""

    def parse(value: Any) -> str:
        if not isinstance(value, str):
            raise ValueError(f"expected {form}, got {value!r}")
        value = value.strip()
        if value:
            split_host_port(value, form)
        return value

    return parse


TIMEZONE_FORM = "an IANA time zone name like 'Europe/Paris' or 'America/New_York', or '' for the system's zone"


def parse_timezone(value: Any) -> str:
    """TIMEZONE: '' (the system's zone, resolved when the scheduler starts) or a zone zoneinfo knows.

    Checked here, so that a typo is an exit-78 line naming the key rather than a
    schedule that silently runs in UTC.
    """
    if value == "":
        return value
    if not isinstance(value, str):
        raise ValueError(f"expected {TIMEZONE_FORM}, got {value!r}")
    try:
        zoneinfo.ZoneInfo(value)
    except (ValueError, OSError, LookupError):  # not found, a directory, a path, not a TZif file
        close = difflib.get_close_matches(value, sorted(zoneinfo.available_timezones()), n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"{value!r} is not a time zone this system knows{hint}: expected {TIMEZONE_FORM}") from None
    return value


NODE_HOST_FORM = "a hostname or IP like '192.168.1.38' or 'meshtastic.local', optionally with ':port'"
_HOSTNAME_RE = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?$")


def split_node_host(value: Any) -> tuple[str, Optional[int]]:
    """NODE_HOST -> (host, port or None): '192.168.1.38:4403' is the form `meshtastic --host`
    teaches, so it is split rather than refused; '[fe80::1]:4403' for IPv6 with a port.

    Refused, with the reason: a URL (the API is no web page), blanks anywhere (a copied
    line break is no part of a name), a path, a port that is no port.
    """
    if not isinstance(value, str):
        raise ValueError(f"expected {NODE_HOST_FORM}, got {value!r}")
    if value == "":
        return "", None  # required only for CONNECTION = 'tcp'; _check_together says so
    if "://" in value:
        host = value.split("://", 1)[1].split("/", 1)[0]
        raise ValueError(
            f"{value!r} is a URL; expected {NODE_HOST_FORM}: the bot speaks the node's TCP API"
            f" (port 4403), not HTTP, e.g. NODE_HOST = {host!r}"
        )
    if any(ch.isspace() for ch in value):
        stripped = value.strip()
        example = f", e.g. {stripped!r}" if stripped and not any(ch.isspace() for ch in stripped) else ""
        raise ValueError(f"{value!r} contains blanks; expected {NODE_HOST_FORM}{example}")
    if "/" in value:
        raise ValueError(f"{value!r} is not a host name; expected {NODE_HOST_FORM}")
    host, port_text = value, ""
    if value.startswith("["):  # [IPv6] or [IPv6]:port
        inside, bracket, rest = value[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"{value!r}: expected an IPv6 address like '[fe80::1]' or '[fe80::1]:4403'")
        host, port_text = inside, rest[1:]
        _check_ipv6(value, host)
        if rest and not port_text:
            raise ValueError(f"{value!r}: the port after ':' is missing")
    elif value.count(":") > 1:  # a bare IPv6 address, no port
        _check_ipv6(value, value)
    elif ":" in value:
        host, _, port_text = value.partition(":")
        if not port_text:
            raise ValueError(f"{value!r}: the port after ':' is missing (or drop the ':')")
    if not value.startswith("[") and value.count(":") <= 1 and not _HOSTNAME_RE.match(host):
        raise ValueError(f"{value!r}: {host!r} is not a hostname or IP; expected {NODE_HOST_FORM}")
    if not port_text:
        return host, None
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"{value!r}: the port {port_text!r} is not a port number from 1 to 65535")
    return host, int(port_text)


def _check_ipv6(value: str, host: str) -> None:
    try:
        ipaddress.IPv6Address(host.split("%", 1)[0])  # "%eth0": a link-local address's zone
    except ValueError:
        raise ValueError(f"{value!r}: {host!r} is not an IPv6 address; expected {NODE_HOST_FORM}") from None


def parse_node_host(value: Any) -> str:
    """NODE_HOST's form is checked here; `build_settings` splits off a ':port'."""
    split_node_host(value)
    return value


COMMAND_NAMES_FORM = "a list of command names like ['bc', 'weather']"


def parse_command_names(value: Any) -> tuple[str, ...]:
    """DISABLED_COMMANDS: names as users type them, with or without the '/', any case.

    Whether each names a command is known only once the plugins are loaded (meshbot.plugins).
    """
    if not isinstance(value, (list, tuple, set, frozenset)):
        raise ValueError(f"expected {COMMAND_NAMES_FORM}, got {value!r}")
    names = []
    for item in value:
        name = item.strip().lstrip("/").lower() if isinstance(item, str) else ""
        if not name or any(ch.isspace() for ch in name):
            raise ValueError(f"{item!r} is not a command name; expected {COMMAND_NAMES_FORM}")
        names.append(name)
    return tuple(dict.fromkeys(names))


def _key(default: Any, kind: type, doc: str, **spec: Any) -> Any:
    return field(default=default, metadata={"spec": KeySpec(kind=kind, doc=doc, **spec)})


@dataclass(frozen=True)
class Settings:
    """Everything the daemon can be told. Field names are the config file's keys."""

    # --- the node link -------------------------------------------------------------
    CONNECTION: str = _key(
        "tcp", str, "How the bot reaches the node: its TCP API (Wi-Fi, Ethernet) or a USB serial port.",
        choices=("tcp", "serial"),
    )
    NODE_HOST: str = _key(
        "",
        str,
        "Hostname or IP of the node's TCP API, e.g. '192.168.1.38' (required for tcp, unless --demo);"
        " '192.168.1.38:4403' sets NODE_PORT too.",
        parse=parse_node_host,
        form=NODE_HOST_FORM,
    )
    NODE_PORT: int = _key(4403, int, "TCP port of the node's API.", low=1, high=65535)
    SERIAL_PORT: str = _key(
        "auto",
        str,
        "The node's serial device when CONNECTION is 'serial' ('auto': the one USB serial device found).",
        parse=parse_serial_port,
        form=SERIAL_PORT_FORM,
        example="SERIAL_PORT = '/dev/serial/by-id/usb-1a86_USB_Single_Serial_54FC0012345-if00'",
    )
    CONNECT_TIMEOUT_S: float = _key(
        10.0, float, "Give up one connect + config handshake after this long.", low=0.5, high=300
    )
    PROBE_INTERVAL_S: float = _key(
        20.0, float, "Send a heartbeat to the node this often.", low=0.2, high=600
    )
    LINK_TIMEOUT_S: float = _key(
        45.0, float, "No frame from the node for this long means the link is dead.", low=0.5, high=3600
    )
    RECONNECT_MIN_S: float = _key(
        0.5, float, "First reconnect delay; doubles (with jitter) per failed attempt.", low=0.05, high=600
    )
    RECONNECT_MAX_S: float = _key(5.0, float, "Longest reconnect delay.", low=0.05, high=3600)
    CONTENTION_BACKOFF_S: float = _key(
        60.0,
        float,
        "Delay when another client (phone app, CLI) keeps taking the node's TCP API.",
        low=0.1,
        high=3600,
    )
    # --- sending ---------------------------------------------------------------------
    MIN_TEXT_INTERVAL_S: float = _key(
        0.0,
        float,
        "Your own least time between two texts, on top of the firmware's 2 s limit, which the bot always keeps on"
        " firmware 2.7 and later (counted as the node sees it).",
        low=0,
        high=600,
    )
    PACE_BY_AIRTIME: bool = _key(
        True, bool, "Also wait the previous text's time on air (from the node's LoRa preset)."
    )
    MAX_TEXT_BYTES: int = _key(200, int, "Largest text, in bytes of UTF-8.", low=40, high=228)
    MAX_CHUNKS: int = _key(4, int, "Most texts one reply may be split into.", low=1, high=10)
    OUTBOX_TTL_S: float = _key(
        300.0, float, "A text not sent after this long is dropped (with a WARNING).", low=1, high=86400
    )
    OUTBOX_MAX: int = _key(
        50, int, "Most texts waiting to be sent; past it the oldest is dropped.", low=1, high=10000
    )
    DM_ACK_TIMEOUT_S: float = _key(
        60.0, float, "A DM nobody acknowledged (ACK or NAK) within this long counts as unconfirmed.", low=1, high=3600
    )
    DM_RETRIES: int = _key(
        1, int, "Times a DM whose delivery failed (NAK) is sent again with a new id (0: never).", low=0, high=5
    )
    DM_RETRY_DELAY_S: float = _key(
        30.0, float, "Wait after a failed DM before sending it again.", low=1, high=3600
    )
    # --- airtime ---------------------------------------------------------------------
    AIRTIME_BUDGET_PCT: float = _key(
        5.0,
        float,
        "Most of any rolling hour the bot's own texts may be on the air, in % (past it texts wait in the outbox); "
        "any 10 minutes hold at most a third of it.",
        low=0.1,
        high=100,
    )
    CHANNEL_UTIL_POLITE_PCT: float = _key(
        25.0,
        float,
        "Channel utilization (as the node reports it) over which broadcasts wait and a channel command gets one text.",
        low=0,
        high=100,
    )
    CHANNEL_UTIL_MAX_PCT: float = _key(
        40.0, float, "Channel utilization over which the bot sends DM replies only.", low=0, high=100
    )
    # --- receiving -------------------------------------------------------------------
    HANDLER_THREADS: int = _key(4, int, "Worker threads running command handlers.", low=1, high=64)
    HANDLER_TIMEOUT_S: float = _key(
        30.0,
        float,
        "Longest a command's handler may run: past it the user gets 'timed out' and the call is written off.",
        low=0.1,
        high=600,
    )
    INBOUND_QUEUE_MAX: int = _key(
        1000, int, "Packets waiting for a worker; past it new packets are dropped.", low=10, high=100000
    )
    NODE_DB_MAX: int = _key(
        2000,
        int,
        "Most nodes kept in the node DB; past it the least recently heard is forgotten (favourites and nodes with a public key last).",
        low=10,
        high=100000,
    )
    # --- commands --------------------------------------------------------------------
    DEDUP_WINDOW_S: float = _key(
        600.0, float, "A packet seen again (same sender and id), or an echo of our own broadcast, within this is ignored.", low=1, high=86400
    )
    RATE_LIMIT_COUNT: int = _key(
        5, int, "Commands one sender may send per window (admins, authenticated: 4 times that).", low=1, high=10000
    )
    RATE_LIMIT_WINDOW_S: float = _key(60.0, float, "The rate limit's window.", low=1, high=86400)
    ADMIN_NODES: tuple = _key(
        (),
        tuple,
        "Node ids allowed to run admin commands (/bc), each optionally pinned to its public key.",
        parse=parse_admin_nodes,
        form=ADMIN_NODES_FORM,
        example="ADMIN_NODES = ['!a1b2c3d4', '!0badc0de pU7XmYQw8b0eEtL2hGJ0mVqk6Zc4y9sX1rN5tA3vQ3c=']",
    )
    REQUIRE_PKI_FOR_ADMIN: bool = _key(
        True, bool, "Admin commands count only in PKI-encrypted DMs (a node id is forged easily on a public channel)."
    )
    BROADCAST_CHANNEL: int = _key(0, int, "Channel index /bc broadcasts on.", low=0, high=7)
    SCHEDULED_BROADCASTS: tuple = _key(
        (),
        tuple,
        "Broadcasts fired on a timetable ('at' is a time of day in TIMEZONE).",
        parse=parse_schedule,
        form=_SCHEDULE_FORM,
        example="SCHEDULED_BROADCASTS = [{'at': '07:30', 'text': 'good morning mesh'}, {'every_s': 3600, 'command': '/status', 'channel': 1}]",
    )
    TIMEZONE: str = _key(
        "",
        str,
        "Time zone of the schedule's 'at' times, daylight saving time included ('': the system's zone, from /etc/localtime).",
        parse=parse_timezone,
        form=TIMEZONE_FORM,
        example="TIMEZONE = 'Europe/Paris'",
    )
    DISABLED_COMMANDS: tuple = _key(
        (),
        tuple,
        "Commands turned off, built-in or from a plugin, by name (an unknown name is a WARNING).",
        parse=parse_command_names,
        form=COMMAND_NAMES_FORM,
        example="DISABLED_COMMANDS = ['bc', 'echo']",
    )
    # --- sharing the node ------------------------------------------------------------
    API_LISTEN: str = _key(
        "",
        str,
        "Serve the node's TCP API here to the phone app, the meshtastic CLI and other clients, over the bot's one connection.",
        parse=listen_address_parser(API_LISTEN_FORM),
        form=API_LISTEN_FORM,
        example="API_LISTEN = '0.0.0.0:4403'",
    )
    API_MAX_CLIENTS: int = _key(8, int, "Most clients of API_LISTEN at once; more are refused.", low=1, high=64)
    API_ADMIN: str = _key(
        "read",
        str,
        "What API clients may do to the node: 'read' only get_* admin requests, 'full' everything (set, reboot...), 'none' no admin at all.",
        choices=("read", "full", "none"),
    )
    API_SHARE_CHANNEL_KEYS: bool = _key(
        False, bool,
        "Under API_ADMIN 'read' or 'none', still give API clients the channel keys (PSKs), which an app needs to show"
        " a channel's key or QR code; the node's private and admin keys and its passwords are removed regardless.",
    )
    API_ALLOW: tuple = _key(
        (),
        tuple,
        "Client addresses API_LISTEN accepts, as addresses or networks (empty: any); others are closed at once.",
        parse=parse_allow,
        form=ALLOW_FORM,
        example="API_ALLOW = ['127.0.0.1', '192.168.1.0/24']",
    )
    API_AIRTIME_SHARE_PCT: float = _key(
        50.0, float,
        "Share of AIRTIME_BUDGET_PCT that API clients' packets may use together; the rest is kept for the bot's replies.",
        low=0, high=100,
    )
    # --- weather ---------------------------------------------------------------------
    WEATHER_API_URL: str = _key(
        "https://api.open-meteo.com/v1/forecast",
        str,
        "Open-Meteo forecast API that /weather asks.",
        parse=parse_http_url,
        form="an http:// or https:// URL",
    )
    GEOCODING_API_URL: str = _key(
        "https://geocoding-api.open-meteo.com/v1/search",
        str,
        "Open-Meteo geocoding API that turns a place name into coordinates.",
        parse=parse_http_url,
        form="an http:// or https:// URL",
    )
    DEFAULT_LOCATION: str = _key(
        "",
        str,
        "Place /weather reports when the user names none (empty: /weather needs a place).",
        parse=parse_location,
        form=_LOCATION_FORM,
        example="DEFAULT_LOCATION = '45.76,4.84'",
    )
    UNITS: str = _key(
        "metric", str, "Units /weather asks the API for: metric (°C, km/h, mm) or imperial (°F, mph, inch).",
        choices=("metric", "imperial"),
    )
    WEATHER_CACHE_S: float = _key(
        600.0, float, "A weather answer is reused this long for the same place (within ~1 km) and kind.", low=0, high=86400
    )
    WEATHER_TIMEOUT_S: float = _key(
        8.0, float, "Longest wait for one weather or geocoding request, its one retry included.", low=0.1, high=60
    )
    WEATHER_MAX_CALLS_PER_DAY: int = _key(
        5000,
        int,
        "Most HTTP requests to the weather and geocoding APIs in any 24 hours, all users together"
        " (past it: cached answers, else 'busy').",
        low=1,
        high=1000000,
    )
    # --- state -----------------------------------------------------------------------
    STATE_DIR: str = _key(
        "",
        str,
        "Directory of the state database (the outbox, the commands answered, the counters), kept across restarts;"
        " '': systemd's $STATE_DIRECTORY when set, else ./state; ':memory:': keep nothing.",
        form="a directory path, '' or ':memory:'",
        parse=parse_state_dir,
    )
    # --- logging ---------------------------------------------------------------------
    LOG_LEVEL: str = _key("INFO", str, "Log level.", choices=_LOG_LEVELS)
    # --- monitoring ------------------------------------------------------------------
    METRICS_LISTEN: str = _key(
        "",
        str,
        "Where to serve Prometheus metrics over HTTP (see docs/metrics.md; an address that cannot be used is one WARNING, and the bot runs on without them).",
        parse=listen_address_parser(METRICS_LISTEN_FORM),
        form=METRICS_LISTEN_FORM,
        example="METRICS_LISTEN = '127.0.0.1:9464'",
    )

    @classmethod
    def specs(cls) -> dict[str, KeySpec]:
        """Every key with its spec, in declaration order."""
        return {f.name: f.metadata["spec"] for f in dataclasses.fields(cls)}

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return {f.name: f.default for f in dataclasses.fields(cls)}


def _check_value(name: str, value: Any, spec: KeySpec) -> Any:
    """Return the value in its canonical type, or raise ConfigError naming the key."""

    def bad() -> ConfigError:
        return ConfigError(f"{name} = {value!r}: expected {spec.expected()}")

    if spec.parse is not None:
        try:
            return spec.parse(value)
        except ValueError as exc:
            raise ConfigError(f"{name}: {exc}") from None
    if spec.kind is bool:
        if not isinstance(value, bool):
            raise bad()
    elif spec.kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad()
    elif spec.kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            raise bad()
        value = float(value)
    elif spec.kind is str:
        if not isinstance(value, str):
            raise bad()
    elif not isinstance(value, spec.kind):
        raise bad()
    if spec.choices:
        # The operator types these (`UNITS = 'Metric'`, `LOG_LEVEL = 'info'`): any case will do.
        canonical = {c.lower(): c for c in spec.choices}.get(value.lower() if isinstance(value, str) else value)
        if canonical is None:
            raise bad()
        value = canonical
    if spec.low is not None and value < spec.low:
        raise bad()
    if spec.high is not None and value > spec.high:
        raise bad()
    return value


def build_settings(values: Mapping[str, Any], *, demo: bool = False) -> Settings:
    """Validate a mapping of keys to values into Settings (unknown keys only warn)."""
    specs = Settings.specs()
    checked: dict[str, Any] = {}
    for name, value in values.items():
        if name not in specs:
            close = difflib.get_close_matches(name, specs, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]}?" if close else ""
            log.warning("%s = %s: unknown key, ignored%s", name, _shown(name, value), hint)
            continue
        checked[name] = _check_value(name, value, specs[name])
    _split_port_off_host(checked)
    settings = Settings(**checked)
    _check_together(settings, demo=demo)
    return settings


_SECRET_KEY_RE = re.compile(r"PASS|SECRET|TOKEN|KEY|PSK")


def _shown(name: str, value: Any, limit: int = 40) -> str:
    """A value as a warning may show it: short, and hidden when the key's name (or a URL in
    it) says it holds a credential: a typo'd key may well be the password's."""
    if _SECRET_KEY_RE.search(name):
        return "***"
    text = redact_secrets(repr(value))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _split_port_off_host(checked: dict[str, Any]) -> None:
    """NODE_HOST = 'host:port' -> NODE_HOST = 'host', NODE_PORT = port, unless NODE_PORT says otherwise."""
    raw = checked.get("NODE_HOST", "")
    host, port = split_node_host(raw)
    if port is None:
        checked["NODE_HOST"] = host
        return
    if "NODE_PORT" in checked and checked["NODE_PORT"] != port:
        raise ConfigError(
            f"NODE_HOST = {raw!r} names port {port} but NODE_PORT = {checked['NODE_PORT']}: give the port once,"
            f" e.g. NODE_HOST = {host!r} and NODE_PORT = {checked['NODE_PORT']}"
        )
    checked["NODE_HOST"], checked["NODE_PORT"] = host, port


def _check_together(s: Settings, *, demo: bool) -> None:
    """Rules that involve more than one key."""
    if not demo and s.CONNECTION == "tcp" and not s.NODE_HOST.strip():
        raise ConfigError(
            "NODE_HOST is required: the node's hostname or IP, e.g. '192.168.1.38' (or CONNECTION = 'serial')"
        )
    if s.RECONNECT_MAX_S < s.RECONNECT_MIN_S:
        raise ConfigError(
            f"RECONNECT_MAX_S = {s.RECONNECT_MAX_S:g}: expected a number >= RECONNECT_MIN_S ({s.RECONNECT_MIN_S:g})"
        )
    if s.LINK_TIMEOUT_S <= s.PROBE_INTERVAL_S:
        raise ConfigError(
            f"LINK_TIMEOUT_S = {s.LINK_TIMEOUT_S:g}: expected a number > PROBE_INTERVAL_S ({s.PROBE_INTERVAL_S:g}),"
            " or a healthy link would be declared dead between two probes"
        )
    if s.CHANNEL_UTIL_MAX_PCT < s.CHANNEL_UTIL_POLITE_PCT:
        raise ConfigError(
            f"CHANNEL_UTIL_MAX_PCT = {s.CHANNEL_UTIL_MAX_PCT:g}: expected a number >= CHANNEL_UTIL_POLITE_PCT"
            f" ({s.CHANNEL_UTIL_POLITE_PCT:g})"
        )
    if s.HANDLER_TIMEOUT_S < 2 * s.WEATHER_TIMEOUT_S:
        # /weather by place name makes two requests (geocoding, forecast), each bounded so.
        log.warning(
            "HANDLER_TIMEOUT_S = %g is under twice WEATHER_TIMEOUT_S (%g): a slow /weather will be answered"
            " 'timed out'", s.HANDLER_TIMEOUT_S, s.WEATHER_TIMEOUT_S,
        )
    if 0 < s.MIN_TEXT_INTERVAL_S < FIRMWARE_TEXT_INTERVAL_S:
        log.info(
            "MIN_TEXT_INTERVAL_S = %g is under the firmware's 2 s text limit: it applies to firmware older than "
            "2.7 only; on 2.7 and later the bot keeps texts 2 s apart anyway (the node would refuse them silently)",
            s.MIN_TEXT_INTERVAL_S,
        )


def read_config_file(path: Path) -> dict[str, Any]:
    """Run the config file and return its UPPER_CASE names."""
    if not path.is_file():
        raise ConfigError(f"config file {path} not found (start from config.example.py)")
    try:
        namespace = runpy.run_path(str(path), run_name="meshbot_config")
    except SyntaxError as exc:
        raise ConfigError(f"{path}:{exc.lineno}: syntax error: {exc.msg}") from exc
    except KeyboardInterrupt:
        raise  # the operator pressed Ctrl-C while the file ran: theirs to see, not a config error
    except BaseException as exc:  # noqa: BLE001 - the operator's file raised anything, SystemExit too
        # A `sys.exit(3)` in the file would otherwise end the daemon with exit 3 and no word:
        # every raise is a config error (78, no restart loop) naming the file and the line.
        raise ConfigError(f"{_where_raised(exc, path)}: {_what_raised(exc)}") from None
    _warn_lowercase_keys(namespace)
    return {k: v for k, v in namespace.items() if _KEY_RE.match(k)}


def _where_raised(exc: BaseException, path: Path) -> str:
    """`path:line` of the config file's deepest line in the traceback: where the file raised,
    or its line that called what raised; the path alone if the file's own code is not in it."""
    line = None
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == str(path):
            line = tb.tb_lineno
        tb = tb.tb_next
    return f"{path}:{line}" if line is not None else str(path)


def _what_raised(exc: BaseException) -> str:
    """The exception in words; SystemExit said plainly (its str() is only the code)."""
    if isinstance(exc, SystemExit):
        return f"the file called sys.exit({exc.code!r}) (SystemExit)"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _warn_lowercase_keys(namespace: Mapping[str, Any]) -> None:
    """`node_host = ...` is ignored like any lower-case helper name; say so when it is a key.

    Other lower-case names are the operator's own helpers and stay silent.
    """
    keys = {name.lower(): name for name in Settings.specs()}
    for name in namespace:
        key = keys.get(name.lower())
        if key is not None and name != key and not _KEY_RE.match(name):
            log.warning("%s ignored: keys are upper case (did you mean %s?)", name, key)


def load_settings(path: Optional[Path], *, demo: bool = False, overrides: Optional[Mapping[str, Any]] = None) -> Settings:
    """Load, merge overrides (used by --demo and tests), validate."""
    values: dict[str, Any] = read_config_file(path) if path is not None else {}
    values.update(overrides or {})
    return build_settings(values, demo=demo)

