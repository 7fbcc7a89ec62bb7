"""`ConsoleText`: the bytes a node sends between frames, cut into lines in linear time.

A node's serial API interleaves its debug console with the protobuf frames (firmware with
`security.debug_log_api_enabled` off still prints its boot banner), and a wrong baud rate or
a port that is not quite a node sends bytes that never form a frame. The library builds each
such line one character at a time by string concatenation, which is quadratic in a line
that never ends: 1 MB without a newline cost 18.9 s of CPU on the reader thread, and 2 MB
starved the link into a reconnect (issue 15). Here a chunk is split at its newlines by
`bytes.split` and a line is kept to `LINE_MAX` bytes: what a line holds beyond that is
counted and dropped, and said in one summarised line.

The lines themselves are the node's business: they go to the DEBUG log, never above
(firmware log levels are not the operator's; a node that is really unwell shows in the
link's own lines).
"""

from __future__ import annotations

import logging

from meshbot.logs import RepeatedWarning

# The first byte of a frame (the stream protocol's START1): the reader's scan for where
# console text ends.
FRAME_START = b"\x94"
# Firmware console lines are well under 200 bytes; a longer "line" is noise.
LINE_MAX = 512


class ConsoleText:
    """Owned by one transport, fed only by its reader thread."""

    def __init__(self, logger: logging.Logger, line_max: int = LINE_MAX) -> None:
        self._log = logger
        self._line_max = line_max
        self._line = bytearray()
        self._dropped = 0  # bytes of the current line beyond line_max
        self.lines = 0  # complete lines seen (for tests and the curious)
        self.dropped_bytes = 0  # all bytes ever dropped
        self._noise = RepeatedWarning(
            logger,
            "ignored {count} more overlong lines of non-frame bytes from the node in the last {seconds} s",
            level=logging.INFO,
        )

    def feed(self, data: bytes) -> None:
        """Bytes the reader found outside any frame, in the order they came."""
        *ended, rest = data.split(b"\n")
        for part in ended:
            self._append(part)
            self._end_line()
        self._append(rest)

    def flush(self) -> None:
        """On close: a count still pending is told now."""
        self._noise.flush()

    def _append(self, part: bytes) -> None:
        room = self._line_max - len(self._line)
        if len(part) <= room:
            self._line += part
            return
        if not self._dropped:  # told when the line overflows, not when (if ever) it ends
            self._noise.log(
                "a line of non-frame bytes from the node is over %d bytes: dropping the rest of it"
                " (wrong baud rate, or not a node?)",
                self._line_max,
            )
        self._line += part[:room]
        self._dropped += len(part) - room
        self.dropped_bytes += len(part) - room

    def _end_line(self) -> None:
        line = self._line
        self._line, self._dropped = bytearray(), 0
        self.lines += 1
        if self._log.isEnabledFor(logging.DEBUG):
            text = line.decode("utf-8", "replace").rstrip("\r")
            if text:
                self._log.debug("node console: %s", text)

    @property
    def pending(self) -> int:
        """Bytes of the line not yet ended, kept and dropped."""
        return len(self._line) + self._dropped
