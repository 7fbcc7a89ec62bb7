"""Logging set-up: journald priorities under systemd, timestamps on a terminal.

Under systemd (`JOURNAL_STREAM` is set) every line starts with the syslog priority,
`<4>` for a WARNING, which journald strips and stores, so `journalctl -p warning`
works; journald adds its own timestamp. A traceback gets the prefix on every line so
it stays one entry's priority rather than turning into INFO lines.
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
    if os.environ.get("JOURNAL_STREAM"):
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


class _ExpectedLibraryNoise(logging.Filter):
    """Drop library ERROR lines about input the bot handles itself (bad UTF-8 from a user)."""

    _EXPECTED = ("Malformatted utf8",)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("meshtastic") and record.getMessage().startswith(self._EXPECTED):
            return False
        return True
