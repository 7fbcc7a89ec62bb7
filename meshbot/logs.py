"""Logging set-up: journald priorities under systemd, timestamps on a terminal.

When stderr is the journal (below) every line starts with the syslog priority,
`<4>` for a WARNING, which journald strips and stores, so `journalctl -p warning`
works; journald adds its own timestamp. A traceback gets the prefix on every line so
it stays one entry's priority rather than turning into INFO lines.

`JOURNAL_STREAM` alone does not mean stderr is the journal: it is inherited by every child
of a service (a shell started from a unit, `systemd-run` with a pipe, a test runner under
systemd). systemd documents the check: the variable holds the journal stream's
`device:inode`, and stderr is that stream only if its fstat() says the same.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Optional, TextIO

_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


class JournalFormatter(logging.Formatter):
    """`<N>name: message`, one prefix per physical line."""

    def __init__(self) -> None:
        super().__init__("%(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{_PRIORITY.get(record.levelno, 6)}>"
        return "\n".join(prefix + line for line in super().format(record).splitlines())


def setup_logging(level: str = "INFO", stream: Optional[TextIO] = None) -> None:
    """Configure the root logger once; safe to call again (handlers are replaced)."""
    stream = stream or sys.stderr
    handler = logging.StreamHandler(stream)
    if stream_is_journal(stream, os.environ.get("JOURNAL_STREAM", "")):
        handler.setFormatter(JournalFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s.%(msecs)03d %(levelname)-7s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S")
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
