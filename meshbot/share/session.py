"""`ClientSession`: one client of the shared node API, on its own two threads.

The reader thread parses the client's frames and hands each ToRadio to the server; the
writer thread sends what is queued for the client. Anything else (the library's reader
thread forwarding the node's frames, the outbox echoing a text) only appends to the
client's send buffer and returns: a client that stops reading fills its own buffer, is
dropped when the buffer passes its bound, and never delays anybody else.
"""

from __future__ import annotations

import collections
import logging
import socket
import threading
import time
from typing import Protocol

from google.protobuf.message import DecodeError
from meshtastic.protobuf import mesh_pb2

from meshbot.share.framing import FrameError, FrameReader

log = logging.getLogger(__name__)

# What one client may have waiting to be sent to it before it counts as not reading:
# hundreds of packets, and more than any handshake.
MAX_SEND_BUFFER = 256 * 1024
# A flood: more frames than this from one client within FLOOD_WINDOW_S. A phone app
# sends a handful at connect and one per message or setting after that.
FLOOD_FRAMES = 200
FLOOD_WINDOW_S = 10.0
_RECV_CHUNK = 4096
# Packet ids of one client remembered to refuse a repeat: more than the node's 20.
_USED_IDS = 64
_WRITER_JOIN_S = 2.0


class SessionHandler(Protocol):
    """What a session asks of its server."""

    def handle_to_radio(self, session: "ClientSession", message: mesh_pb2.ToRadio) -> None: ...

    def session_ended(self, session: "ClientSession") -> None: ...


class ClientSession:
    """One accepted connection. `send()` may be called from any thread and never blocks."""

    def __init__(self, sock: socket.socket, address: str, handler: SessionHandler, *, host: str = "") -> None:
        self.sock = sock
        self.address = address
        self.host = host  # the address without the port: the per-address limit counts it
        self._handler = handler
        self._cond = threading.Condition()
        self._out: list[bytes] = []
        self._out_size = 0
        self.ready = False  # its handshake is queued: the node's traffic goes to it
        self.closed = False
        self.close_reason = ""
        self.connected_at = self.last_rx = time.monotonic()
        # Its packets waiting in the bot's outbox: packet id -> when queued (the server's).
        # Ids are unique per client (`use_id`), so this counts packets, not ids.
        self.pending_texts: dict[int, float] = {}
        self._used_ids: collections.OrderedDict[int, None] = collections.OrderedDict()
        self._frame_times: collections.deque[float] = collections.deque()
        self._reader = threading.Thread(target=self._read_loop, name=f"api-rx {address}", daemon=True)
        self._writer = threading.Thread(target=self._write_loop, name=f"api-tx {address}", daemon=True)

    def use_id(self, packet_id: int) -> bool:
        """Record a packet id the client sent; False if it sent it already lately (the node
        would drop the repeat without a word, and the repeat must not enter the outbox).
        Only the client's reader thread calls it."""
        if packet_id in self._used_ids:
            return False
        self._used_ids[packet_id] = None
        while len(self._used_ids) > _USED_IDS:
            self._used_ids.popitem(last=False)
        return True

    def start(self) -> None:
        self._writer.start()
        self._reader.start()

    # --- sending (any thread) ---------------------------------------------------------------
    def send(self, data: bytes) -> None:
        """Queue bytes for the client; drops the client if it is not reading them."""
        overflow = False
        with self._cond:
            if self.closed:
                return
            if self._out_size + len(data) > MAX_SEND_BUFFER:
                overflow = True
            else:
                self._out.append(data)
                self._out_size += len(data)
                self._cond.notify()
        if overflow:
            self.close(f"not reading (over {MAX_SEND_BUFFER // 1024} KB waiting)")

    def send_if_ready(self, data: bytes) -> None:
        if self.ready:
            self.send(data)

    def send_handshake(self, data: bytes) -> None:
        """Queue a config handshake and from then on the node's traffic.

        A handshake may pass the buffer's bound (a large node DB), but only into a buffer
        under it: a client asking again and again without reading is dropped.
        """
        overflow = False
        with self._cond:
            if self.closed:
                return
            if self._out_size > MAX_SEND_BUFFER:
                overflow = True
            else:
                self._out.append(data)
                self._out_size += len(data)
                self.ready = True
                self._cond.notify()
        if overflow:
            self.close(f"not reading (over {MAX_SEND_BUFFER // 1024} KB waiting)")

    def close(self, reason: str) -> None:
        """End the session (first reason wins); both threads wake and finish."""
        with self._cond:
            if self.closed:
                return
            self.closed = True
            self.close_reason = reason
            self.ready = False
            self._out.clear()
            self._cond.notify()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # --- the two threads ---------------------------------------------------------------------
    def _read_loop(self) -> None:
        reader = FrameReader()
        try:
            while not self.closed:
                try:
                    data = self.sock.recv(_RECV_CHUNK)
                except OSError as exc:
                    self.close(f"connection error: {exc.strerror or exc}")
                    break
                if not data:
                    self.close("client closed the connection")
                    break
                try:
                    payloads = reader.feed(data)
                except FrameError as exc:
                    self.close(f"garbage: {exc}")
                    break
                if payloads:
                    # A frame, not any byte, counts as activity (as the firmware's
                    # lastContactMsec): stray bytes now and then cannot hold a slot.
                    self.last_rx = time.monotonic()
                for payload in payloads:
                    if not self._take(payload):
                        break
        except Exception:  # a bug must end this client only
            log.exception("unexpected error serving API client %s", self.address)
            self.close("internal error")
        finally:
            self._writer.join(_WRITER_JOIN_S)
            try:
                self.sock.close()
            except OSError:
                pass
            self._handler.session_ended(self)

    def _take(self, payload: bytes) -> bool:
        """Hand one frame to the server; False once the session is closed."""
        now = time.monotonic()
        times = self._frame_times
        times.append(now)
        while times and now - times[0] > FLOOD_WINDOW_S:
            times.popleft()
        if len(times) > FLOOD_FRAMES:
            self.close(f"flood: over {FLOOD_FRAMES} frames in {FLOOD_WINDOW_S:g} s")
            return False
        message = mesh_pb2.ToRadio()
        try:
            message.ParseFromString(payload)
        except DecodeError:
            self.close("garbage: a frame that is no ToRadio")
            return False
        self._handler.handle_to_radio(self, message)
        return not self.closed

    def _write_loop(self) -> None:
        while True:
            with self._cond:
                while not self._out and not self.closed:
                    self._cond.wait()
                if self.closed:
                    return
                data = b"".join(self._out)
                self._out.clear()
                self._out_size = 0
            try:
                self.sock.sendall(data)
            except OSError as exc:
                self.close(f"connection error: {exc.strerror or exc}")
                return
