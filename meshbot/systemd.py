"""systemd integration: the sd_notify protocol, written with the standard library.

The protocol is one datagram of newline-separated `KEY=VALUE` lines sent to the
AF_UNIX socket named by `$NOTIFY_SOCKET` (a leading '@' means Linux's abstract
namespace). That is a socket and a `sendto()`; the packages that wrap it cost more
than they give here: `sdnotify` is unmaintained, and `systemd-python` is a C extension
that needs libsystemd's headers and a compiler on the Pi.

Without `$NOTIFY_SOCKET` (a terminal, the tests, `--demo`) every call does nothing.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Mapping, Optional

log = logging.getLogger(__name__)

# Never let the service manager make the main loop wait.
_SEND_TIMEOUT_S = 1.0


class ServiceNotifier:
    """Tells systemd that meshbot is ready, how it is doing, that it is alive, that it stops."""

    def __init__(self, environ: Mapping[str, str] = os.environ, pid: Optional[int] = None) -> None:
        self._socket_name = environ.get("NOTIFY_SOCKET", "")
        self.address = _socket_address(self._socket_name)
        self.watchdog_interval_s = _watchdog_interval(environ, os.getpid() if pid is None else pid)
        self._sock: Optional[socket.socket] = None
        self._failed = False
        if self.address is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sock.settimeout(_SEND_TIMEOUT_S)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def ready(self, status: str) -> None:
        """Start-up is over: systemd marks the unit active (Type=notify waits for this)."""
        self._notify("READY=1", _status_field(status))

    def status(self, status: str) -> None:
        """The one line `systemctl status meshbot` shows under the unit's state."""
        self._notify(_status_field(status))

    def watchdog(self) -> None:
        """Proof of life; withheld when one of the daemon's loops is hung, so systemd restarts it."""
        self._notify("WATCHDOG=1")

    def stopping(self, status: str) -> None:
        self._notify("STOPPING=1", _status_field(status))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _notify(self, *fields: str) -> None:
        if self._sock is None:
            return
        try:
            self._sock.sendto("\n".join(fields).encode("utf-8"), self.address)
        except OSError as exc:
            # Only the first failure is worth a line: systemd will notice the silence itself
            # (a missed READY=1 fails the start, a missed WATCHDOG=1 restarts the service).
            if not self._failed:
                log.warning("cannot notify systemd at %s: %s", self._socket_name, exc.strerror or exc)
                self._failed = True
        else:
            self._failed = False


def _socket_address(value: str) -> Optional[str]:
    if value.startswith("@"):
        return "\0" + value[1:]  # abstract namespace: no file, a leading NUL byte
    if value.startswith("/"):
        return value
    if value:
        # e.g. "vsock:2:1234" (a VM's host manager): not something a Pi runs meshbot under.
        log.warning("NOTIFY_SOCKET=%s is not a unix socket path; not notifying systemd", value)
    return None


def _watchdog_interval(environ: Mapping[str, str], pid: int) -> Optional[float]:
    """Half of WatchdogSec, as sd_watchdog_enabled() advises; None when there is no watchdog."""
    try:
        usec = int(environ.get("WATCHDOG_USEC", "0"))
    except ValueError:
        return None
    watchdog_pid = environ.get("WATCHDOG_PID")
    if usec <= 0 or (watchdog_pid and watchdog_pid != str(pid)):
        return None  # no watchdog, or it is meant for another process
    return usec / 1e6 / 2


def _status_field(text: str) -> str:
    return "STATUS=" + " ".join(text.split())  # one line: a newline would end the field
