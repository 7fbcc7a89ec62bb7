"""`Gate`: who may connect to the shared node API, and the log lines about it.

At accept, a connection is closed at once when:

* the bot is not serving (the link is down, or the node's config is not known yet): the
  app sees the node go away, as when it reboots, and tries again later;
* its address is outside API_ALLOW (when the operator set it);
* API_MAX_CLIENTS clients are connected;
* its address has `MAX_PER_ADDRESS` connections already: one phone has one app, and one
  host opening every slot would lock everybody else out.

Connect and disconnect lines are INFO (the operator reads who used the node), a few a
minute in full, then one summary a minute; refusals the same on a line of their own, so
that a port scan or a reconnect loop costs a line a minute, not a line a connect.
"""

from __future__ import annotations

import logging
from typing import Optional, Sequence

from meshbot.logs import RepeatedWarning
from meshbot.netaddr import AllowList

log = logging.getLogger("meshbot.share.server")  # the lines read as the server's

MAX_PER_ADDRESS = 2
# Lines in full per minute before the summary takes over: a few app reconnects.
_BURST = 6


class Gate:
    """Admission rules; the caller holds its own lock around `refusal()`."""

    def __init__(self, allow: tuple[str, ...], max_clients: int, per_address: int = MAX_PER_ADDRESS) -> None:
        self._allow = AllowList(allow)
        self.max_clients = max_clients
        self.per_address = per_address
        self._sessions_note = RepeatedWarning(
            log, "{count} more API client connects and disconnects in the last {seconds} s",
            level=logging.INFO, burst=_BURST,
        )
        self._refused_note = RepeatedWarning(
            log, "refused {count} more API connections in the last {seconds} s", level=logging.INFO, burst=_BURST
        )

    def refusal(self, host: str, sessions: Sequence[object], *, serving: bool) -> Optional[str]:
        """Why a new connection from `host` is closed at once, or None to serve it."""
        if not serving:
            return "link to the node is down"
        if not self._allow.allows(host):
            return "address not in API_ALLOW"
        if len(sessions) >= self.max_clients:
            return f"API_MAX_CLIENTS ({self.max_clients}) connected already"
        if sum(1 for s in sessions if getattr(s, "host", None) == host) >= self.per_address:
            return f"{self.per_address} connections from that address already"
        return None

    def refused(self, address: str, why: str) -> None:
        self._refused_note.log("refused API client %s: %s", address, why)

    def note(self, msg: str, *args: object) -> None:
        """A connect or disconnect line, summarised past a few a minute."""
        self._sessions_note.log(msg, *args)

    def flush(self) -> None:
        self._sessions_note.flush()
        self._refused_note.flush()
