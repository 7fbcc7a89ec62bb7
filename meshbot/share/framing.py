"""The node's stream framing, as a server reads it from its clients.

A frame is 0x94 0xC3, a 16-bit big-endian length, then a protobuf (ToRadio from a client,
FromRadio to it). The firmware treats bytes outside a frame as noise and a length over
512 as invalid. A client of the bot gets less slack: a few stray bytes are normal (the
library sends 32 "wake" bytes before its first frame), a stream of them is garbage, and
a frame over 512 bytes is a client the bot cannot trust to frame at all.
"""

from __future__ import annotations

import struct

START1, START2 = 0x94, 0xC3
MAX_FRAME = 512
_HEADER = 4
# Stray bytes a client may send in all before it counts as sending garbage: the library's
# 32 wake bytes per connect, with room to spare.
STRAY_LIMIT = 1024


class FrameError(ValueError):
    """The client's byte stream is not the node's protocol; the message says why."""


def frame(payload: bytes) -> bytes:
    """One frame around a serialized protobuf."""
    return bytes((START1, START2)) + struct.pack(">H", len(payload)) + payload


class FrameReader:
    """Splits one client's byte stream into frame payloads."""

    def __init__(self, stray_limit: int = STRAY_LIMIT) -> None:
        self._buf = bytearray()
        self._stray = 0
        self._stray_limit = stray_limit

    def feed(self, data: bytes) -> list[bytes]:
        """The payloads of the frames `data` completes; FrameError on garbage."""
        buf = self._buf
        buf += data
        payloads: list[bytes] = []
        pos = 0
        while True:
            start = buf.find(START1, pos)
            skipped = (len(buf) if start < 0 else start) - pos
            if skipped:
                self._note_stray(skipped)
            if start < 0:
                pos = len(buf)
                break
            pos = start
            if len(buf) - pos < 2:
                break
            if buf[pos + 1] != START2:
                self._note_stray(1)
                pos += 1
                continue
            if len(buf) - pos < _HEADER:
                break
            length = (buf[pos + 2] << 8) | buf[pos + 3]
            if length > MAX_FRAME:
                raise FrameError(f"frame of {length} bytes (the limit is {MAX_FRAME})")
            if len(buf) - pos < _HEADER + length:
                break
            payloads.append(bytes(buf[pos + _HEADER : pos + _HEADER + length]))
            pos += _HEADER + length
        del buf[:pos]
        return payloads

    def _note_stray(self, count: int) -> None:
        self._stray += count
        if self._stray > self._stray_limit:
            raise FrameError(f"{self._stray} bytes outside any frame")
