"""Logging set-up: journald priorities under systemd, timestamps on a terminal.

When stderr is the journal (below) every line starts with the syslog priority,
`<4>` for a WARNING, which journald strips and stores, so `journalctl -p warning`
works; journald adds its own timestamp. A traceback gets the prefix on every line so
it stays one entry's priority rather than turning into INFO lines.

Two rules hold for every line, whoever logs it:

* **No secrets.** A password in a URL (`user:password@`) and the values of query
  parameters that look secret (`?apikey=...`, `token`, `secret`...) are replaced by `***`
  by the formatter, library lines and tracebacks included (`redact_secrets`). Code that
  logs a URL it built from the operator's settings also redacts it itself, with the names
  it knows to be secret (every parameter the operator wrote into the URL).
* **Repeats summarised.** A WARNING that input can trigger once per packet goes through a
  `RepeatedWarning`: the first one of a kind is logged at once, the next ones within
  `SUMMARY_INTERVAL_S` are counted and told in one line at the end of that minute.

`JOURNAL_STREAM` alone does not mean stderr is the journal: it is inherited by every child
of a service (a shell started from a unit, `systemd-run` with a pipe, a test runner under
systemd). systemd documents the check: the variable holds the journal stream's
`device:inode`, and stderr is that stream only if its fstat() says the same.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import time
import urllib.parse
from typing import Callable, Collection, Optional, TextIO

_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


SUMMARY_INTERVAL_S = 60.0
REDACTED = "***"
# Query parameters whose value is a credential, by name (apikey, api_key, access_token, ...).
_SECRET_NAME_RE = re.compile(r"key|token|secret|pass|pwd|auth|sig|session|credential", re.IGNORECASE)
# `scheme://user:password@`: the password goes, the user stays (it says which account).
_USERINFO_RE = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]*):(?P<password>[^/\s@]*)@")
# `?name=value` or `&name=value` anywhere in a line: full URLs, urllib3's "url: /path?...".
_PARAM_RE = re.compile(r"(?P<sep>[?&;])(?P<name>[^=&;#\s?'\"]+)=(?P<value>[^&;#\s'\"]*)")


def redact_secrets(text: str, secret_names: Collection[str] = ()) -> str:
    """`text` with URL passwords and secret-looking query values replaced by `***`.

    A parameter is secret when its name looks like a credential (`apikey`, `token`...)
    or is one of `secret_names` (compared without case).
    """
    if "@" not in text and "=" not in text:
        return text  # the common case, cheaply
    names = {n.lower() for n in secret_names}

    def param(match: re.Match[str]) -> str:
        name = match.group("name")
        plain = urllib.parse.unquote_plus(name).lower()
        if plain in names or _SECRET_NAME_RE.search(plain):
            return f"{match.group('sep')}{name}={REDACTED}"
        return match.group(0)

    text = _USERINFO_RE.sub(lambda m: f"{m.group('head')}:{REDACTED}@", text)
    return _PARAM_RE.sub(param, text)


def url_secret_names(url: str) -> frozenset[str]:
    """The query parameter names an operator wrote into a configured URL.

    The bot cannot know what such a parameter means, so all of them count as secret in
    the log (Open-Meteo's commercial API takes `&apikey=`; a proxy may take anything).
    """
    query = urllib.parse.urlsplit(url).query
    return frozenset(name.lower() for name, _ in urllib.parse.parse_qsl(query, keep_blank_values=True))


class RedactingFormatter(logging.Formatter):
    """A Formatter whose whole output (message, arguments, traceback) goes through redact_secrets."""

    def format(self, record: logging.LogRecord) -> str:
        return redact_secrets(super().format(record))


class JournalFormatter(RedactingFormatter):
    """`<N>name: message`, one prefix per physical line."""

    def __init__(self) -> None:
        super().__init__("%(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{_PRIORITY.get(record.levelno, 6)}>"
        return "\n".join(prefix + line for line in super().format(record).splitlines())


class RepeatedWarning:
    """At most one line per `interval_s` for one kind of event that can repeat per packet.

    The first event is logged at once, in full. Events of the same kind in the next
    `interval_s` are only counted; when that interval ends, one line says how many there
    were (`summary`, a format string with `{count}` and `{seconds}`, e.g. "ignored {count}
    more undecodable frames in the last {seconds} s") and the next interval starts. A
    flood therefore costs one line a minute, and a burst that stopped is still told, by a
    timer thread that exists only while a count is pending. Thread-safe.

    `burst` lets the first few events of an interval through in full (connect lines of a
    network service: a handful a minute is ordinary and worth reading, a storm is not).
    """

    def __init__(
        self,
        logger: logging.Logger,
        summary: str,
        *,
        level: int = logging.WARNING,
        interval_s: float = SUMMARY_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
        burst: int = 1,
    ) -> None:
        self._logger = logger
        self._burst = max(1, burst)
        self._logged = 0  # lines in full in the current interval
        self._summary = summary
        self._level = level
        self._interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._window_start: Optional[float] = None  # None: no line in the current interval
        self._count = 0
        self._timer: Optional[threading.Timer] = None

    def log(self, msg: str, *args: object) -> None:
        """One event: logged now if it is the first of its interval, counted otherwise."""
        now = self._clock()
        with self._lock:
            over = self._window_start is None or now - self._window_start >= self._interval_s
            if over and self._count:
                # The timer is late (a busy machine): this event joins the count, told now.
                self._count += 1
                self._emit_summary_locked(now)
                return
            if over:
                self._window_start = now
                self._logged = 0
            if self._logged < self._burst and not self._count:
                self._logged += 1
                self._logger.log(self._level, msg, *args, stacklevel=2)  # the caller's file and line
                return
            self._count += 1
            if self._timer is None:
                assert self._window_start is not None
                delay = max(0.0, self._window_start + self._interval_s - now)
                timer = threading.Timer(delay, self._timer_fired)
                timer.daemon = True  # never delays the daemon's exit
                self._timer = timer
                timer.start()

    def flush(self) -> None:
        """Log the pending count now, if any (for an owner that closes)."""
        with self._lock:
            if self._count:
                self._emit_summary_locked(self._clock())

    def _timer_fired(self) -> None:
        with self._lock:
            if self._timer is not threading.current_thread():
                return  # a summary was told meanwhile and a newer timer owns the next one
            self._timer = None
            if self._count:
                self._emit_summary_locked(self._clock())

    @property
    def pending(self) -> int:
        """Events counted and not told yet."""
        return self._count

    def _emit_summary_locked(self, now: float) -> None:
        seconds = now - (self._window_start if self._window_start is not None else now)
        self._logger.log(self._level, self._summary.format(count=self._count, seconds=f"{seconds:.0f}"))
        self._count = 0
        self._window_start = now  # the summary line opens the next interval
        self._logged = self._burst  # ... and counts as its line in full: the storm may go on
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def setup_logging(level: str = "INFO", stream: Optional[TextIO] = None) -> None:
    """Configure the root logger once; safe to call again (handlers are replaced)."""
    stream = stream or sys.stderr
    handler = logging.StreamHandler(stream)
    if stream_is_journal(stream, os.environ.get("JOURNAL_STREAM", "")):
        handler.setFormatter(JournalFormatter())
    else:
        handler.setFormatter(
            RedactingFormatter("%(asctime)s.%(msecs)03d %(levelname)-7s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S")
        )
    # Logger filters do not reach child loggers ("meshtastic.mesh_interface"); a
    # handler filter sees every record.
    handler.addFilter(_ExpectedLibraryNoise())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # The library logs every frame at DEBUG and link events at WARNING/ERROR; the bot
    # reports link events itself, once, in its own words. Its real errors still show.
    logging.getLogger("meshtastic").setLevel(logging.WARNING if level == "DEBUG" else logging.ERROR)


def stream_is_journal(stream: TextIO, journal_stream: str) -> bool:
    """True if `stream` is the journal stream named by $JOURNAL_STREAM ("device:inode")."""
    device, sep, inode = journal_stream.partition(":")
    if not sep or not device.isdigit() or not inode.isdigit():
        return False
    try:
        st = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):  # no file descriptor (a StringIO), or closed
        return False
    return (st.st_dev, st.st_ino) == (int(device), int(inode))


class _ExpectedLibraryNoise(logging.Filter):
    """Drop library ERROR lines about input the bot handles itself (bad UTF-8 from a user)."""

    _EXPECTED = ("Malformatted utf8",)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("meshtastic") and record.getMessage().startswith(self._EXPECTED):
            return False
        return True
