"""Settings: one frozen dataclass, loaded from a Python file of UPPER_CASE assignments.

Every key is declared once, here, with its type, default, allowed range and a one-line
doc. `config.example.py` and the README's key table are checked against this list by the
tests, so the documentation cannot drift from the code.

A bad value is reported as one line naming the key and the expected form; `main.py`
turns that into exit code 78 (EX_CONFIG), before any connection is tried, so systemd
does not restart-loop on a typo.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import re
import runpy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

log = logging.getLogger(__name__)

EX_CONFIG = 78
_KEY_RE = re.compile(r"^[A-Z][A-Z0-9_]*$")
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
# The firmware drops a text that comes less than 2 s after the previous one.
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
    check: Optional[Callable[[Any], Optional[str]]] = None  # returns an error text or None

    def expected(self) -> str:
        """The expected form, as the error message and the docs say it."""
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


def _key(default: Any, kind: type, doc: str, **spec: Any) -> Any:
    return field(default=default, metadata={"spec": KeySpec(kind=kind, doc=doc, **spec)})


@dataclass(frozen=True)
class Settings:
    """Everything the daemon can be told. Field names are the config file's keys."""

    # --- the node link -------------------------------------------------------------
    NODE_HOST: str = _key("", str, "Hostname or IP of the node's TCP API, e.g. '192.168.1.38' (required unless --demo).")
    NODE_PORT: int = _key(4403, int, "TCP port of the node's API.", low=1, high=65535)
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
        2.5, float, "Least time between two texts (the firmware drops texts < 2 s apart).", low=0, high=600
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
    # --- receiving -------------------------------------------------------------------
    HANDLER_THREADS: int = _key(4, int, "Worker threads running command handlers.", low=1, high=64)
    INBOUND_QUEUE_MAX: int = _key(
        1000, int, "Packets waiting for a worker; past it new packets are dropped.", low=10, high=100000
    )
    # --- logging ---------------------------------------------------------------------
    LOG_LEVEL: str = _key("INFO", str, "Log level.", choices=_LOG_LEVELS)

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
    if spec.choices and value not in spec.choices:
        raise bad()
    if spec.low is not None and value < spec.low:
        raise bad()
    if spec.high is not None and value > spec.high:
        raise bad()
    if spec.check is not None:
        problem = spec.check(value)
        if problem:
            raise ConfigError(f"{name} = {value!r}: {problem}")
    return value


def build_settings(values: Mapping[str, Any], *, demo: bool = False) -> Settings:
    """Validate a mapping of keys to values into Settings (unknown keys only warn)."""
    specs = Settings.specs()
    checked: dict[str, Any] = {}
    for name, value in values.items():
        if name not in specs:
            close = difflib.get_close_matches(name, specs, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]}?)" if close else ""
            log.warning("unknown key %s ignored%s", name, hint)
            continue
        checked[name] = _check_value(name, value, specs[name])
    settings = Settings(**checked)
    _check_together(settings, demo=demo)
    return settings


def _check_together(s: Settings, *, demo: bool) -> None:
    """Rules that involve more than one key."""
    if not demo and not s.NODE_HOST.strip():
        raise ConfigError("NODE_HOST is required: the node's hostname or IP, e.g. '192.168.1.38'")
    if s.RECONNECT_MAX_S < s.RECONNECT_MIN_S:
        raise ConfigError(
            f"RECONNECT_MAX_S = {s.RECONNECT_MAX_S:g}: expected a number >= RECONNECT_MIN_S ({s.RECONNECT_MIN_S:g})"
        )
    if s.LINK_TIMEOUT_S <= s.PROBE_INTERVAL_S:
        raise ConfigError(
            f"LINK_TIMEOUT_S = {s.LINK_TIMEOUT_S:g}: expected a number > PROBE_INTERVAL_S ({s.PROBE_INTERVAL_S:g}),"
            " or a healthy link would be declared dead between two probes"
        )
    if 0 < s.MIN_TEXT_INTERVAL_S < FIRMWARE_TEXT_INTERVAL_S or s.MIN_TEXT_INTERVAL_S == 0:
        log.warning(
            "MIN_TEXT_INTERVAL_S = %g is under the firmware's 2 s text limit; "
            "a real node will reject texts and the bot will resend them",
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
    except Exception as exc:  # the operator's file raised: report it in one line
        raise ConfigError(f"{path}: {type(exc).__name__}: {exc}") from exc
    return {k: v for k, v in namespace.items() if _KEY_RE.match(k)}


def load_settings(path: Optional[Path], *, demo: bool = False, overrides: Optional[Mapping[str, Any]] = None) -> Settings:
    """Load, merge overrides (used by --demo and tests), validate."""
    values: dict[str, Any] = read_config_file(path) if path is not None else {}
    values.update(overrides or {})
    return build_settings(values, demo=demo)


# The first key of each section, for config.example.py and the README's table.
_SECTIONS = {
    "NODE_HOST": "The node link",
    "MIN_TEXT_INTERVAL_S": "Sending",
    "HANDLER_THREADS": "Receiving",
    "LOG_LEVEL": "Logging",
}


def example_config_text() -> str:
    """config.example.py, generated from the key definitions (a test keeps the file equal)."""
    lines = [
        "# meshbot configuration: copy to config.py and edit. Every key is shown with its default.",
        "# Check it with: python main.py --config config.py --check-config  (exit 0, or 78 naming the key)",
    ]
    for name, spec in Settings.specs().items():
        if name in _SECTIONS:
            lines += ["", f"# --- {_SECTIONS[name]} " + "-" * (70 - len(_SECTIONS[name]))]
        lines.append(f"# {spec.doc} Expected: {spec.expected()}.")
        lines.append(f"{name} = {Settings.defaults()[name]!r}")
    return "\n".join(lines) + "\n"


def markdown_key_table() -> str:
    """The README's table of keys, generated from the same definitions."""
    rows = ["| key | default | meaning |", "| --- | --- | --- |"]
    for name, spec in Settings.specs().items():
        default = Settings.defaults()[name]
        rows.append(f"| `{name}` | `{default!r}` | {spec.doc} {spec.expected().capitalize()}. |")
    return "\n".join(rows) + "\n"
