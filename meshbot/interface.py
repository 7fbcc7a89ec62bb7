"""`OptimizedTCPInterface`: the library's TCPInterface with its traps removed.

What meshtastic 2.7.11 does by itself, measured (see ../shared/MESHTASTIC-NOTES.md),
and what this subclass does instead:

* no connect timeout (a powered-off node blocks ~130 s) -> `CONNECT_TIMEOUT_S`;
* one `recv(1)` system call per byte -> one `recv(4096)` feeding the library's reader;
* never notices a half-open socket -> TCP keepalive + TCP_USER_TIMEOUT here, and
  `NodeLink` probes the node and watches `last_rx`;
* reconnects silently by itself on EOF, dropping what is sent meanwhile -> never: the
  loss is reported once to the link owner, who alone reconnects;
* a send to a silent node blocks forever waiting for TX-queue slots -> bounded, and
  raises `LinkLost` as soon as the link is known dead;
* re-sends unconfirmed packets with the same id on every later write -> not at all;
  the outbox decides about resends, with fresh ids;
* a 300 s heartbeat timer -> none; `NodeLink` probes at `PROBE_INTERVAL_S`.

The interface reports what the link owner and the outbox need through `LinkEvents`,
called on the library's reader thread: they must only record and return.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional

from google.protobuf.message import DecodeError
from meshtastic.protobuf import admin_pb2, mesh_pb2, portnums_pb2
from meshtastic.tcp_interface import TCPInterface

log = logging.getLogger(__name__)

_READ_CHUNK = 4096
# The reader wakes this often to notice an intended close; a half-open link is found
# by NodeLink's probes, not by this timeout.
_READ_POLL_S = 1.0
# How long a send may wait for a free slot in the node's TX queue before giving up
# (the text stays in the outbox and is tried again).
TX_QUEUE_WAIT_S = 10.0
_TEXT = portnums_pb2.PortNum.TEXT_MESSAGE_APP
_ROUTING = portnums_pb2.PortNum.ROUTING_APP


class LinkLost(ConnectionError):
    """The link to the node is gone (or was never up); the cause is the message."""


class TxQueueFull(RuntimeError):
    """The node's TX queue stayed full; try again later."""


def _ignore(*_args: object) -> None:
    return None


@dataclass
class LinkEvents:
    """What the interface reports, on its reader thread. Each callback must be quick."""

    lost: Callable[[str], None] = _ignore  # cause
    queue_status: Callable[[int, int], None] = _ignore  # packet id, res (0 = accepted)
    routing_error: Callable[[int, int], None] = _ignore  # request id, Routing.Error value


class _HardenedStream:
    """Fixes shared by the TCP and serial transports; mixed in before the library class."""

    # Set by _init_hardening() before the library constructor runs.
    events: LinkEvents
    last_rx: float
    lost_cause: Optional[str]
    answers_queue_status: bool
    _closing: bool

    def _init_hardening(self, events: Optional[LinkEvents], handshake_timeout_s: float) -> None:
        self.events = events or LinkEvents()
        self.handshake_timeout_s = handshake_timeout_s
        self.last_rx = time.monotonic()
        self.lost_cause = None
        self.answers_queue_status = False
        self._closing = False
        self._lost_lock = threading.Lock()
        self._write_lock = threading.Lock()

    # --- loss ------------------------------------------------------------------------
    def mark_lost(self, cause: str) -> None:
        """Record the first cause of loss and tell the link owner, once. Ignored on close."""
        with self._lost_lock:
            if self.lost_cause is not None or self._closing:
                return
            self.lost_cause = cause
        self._wantExit = True  # the library reader stops after this read
        self.events.lost(cause)

    @property
    def alive(self) -> bool:
        return self.lost_cause is None and not self._closing

    def _reconnect(self) -> None:
        # The library would sleep 1 s and reconnect on this same object, silently.
        self.mark_lost("node closed the connection")

    def _disconnected(self) -> None:
        # Called when the library's reader exits, for whatever reason.
        self.mark_lost("reader stopped")
        super()._disconnected()  # type: ignore[misc]

    # --- receive -----------------------------------------------------------------------
    def _handleFromRadio(self, fromRadioBytes: bytes) -> None:
        self.last_rx = time.monotonic()  # any frame from the node proves the link alive
        from_radio = mesh_pb2.FromRadio()
        try:
            from_radio.ParseFromString(fromRadioBytes)
        except DecodeError:
            log.warning("ignored an undecodable frame from the node (%d bytes)", len(fromRadioBytes))
            return
        kind = from_radio.WhichOneof("payload_variant")
        # Packets and queue statuses are nearly all the traffic; the library converts
        # every frame to a dict first, which only node_info frames need.
        if kind == "packet":
            self._handlePacketFromRadio(from_radio.packet)
        elif kind == "queueStatus":
            self._handleQueueStatusFromRadio(from_radio.queueStatus)
        elif kind == "rebooted":
            self.mark_lost("node rebooted")
        else:
            super()._handleFromRadio(fromRadioBytes)  # type: ignore[misc]

    def _handleQueueStatusFromRadio(self, queueStatus: mesh_pb2.QueueStatus) -> None:
        # Keep the free-slot count; skip the library's resend bookkeeping entirely.
        self.queueStatus = queueStatus
        self.answers_queue_status = True
        self.events.queue_status(queueStatus.mesh_packet_id, queueStatus.res)

    def _handlePacketFromRadio(self, meshPacket: mesh_pb2.MeshPacket, hack: bool = False) -> None:
        decoded = meshPacket.decoded
        if decoded.portnum == _ROUTING and decoded.request_id:
            routing = mesh_pb2.Routing()
            try:
                routing.ParseFromString(decoded.payload)
            except DecodeError:
                routing.Clear()
            if routing.error_reason:
                self.events.routing_error(decoded.request_id, routing.error_reason)
        super()._handlePacketFromRadio(meshPacket, hack)  # type: ignore[misc]

    # --- send --------------------------------------------------------------------------
    def _startHeartbeat(self) -> None:
        """NodeLink probes at PROBE_INTERVAL_S; the library's 300 s timer is not wanted."""

    def _waitConnected(self, timeout: float = 30.0) -> None:
        """Wait for the config handshake, but never past the handshake timeout or a loss."""
        deadline = time.monotonic() + min(timeout, self.handshake_timeout_s)
        while not self.isConnected.wait(0.05):
            if not self.alive:
                raise LinkLost(self.lost_cause or "closed")
            if time.monotonic() >= deadline:
                raise LinkLost(f"no config from the node within {self.handshake_timeout_s:g} s")
        if self.failure:
            raise self.failure

    def _sendToRadio(self, toRadio: mesh_pb2.ToRadio) -> None:
        """Write one ToRadio; a packet first waits (bounded) for a free TX-queue slot."""
        if toRadio.HasField("packet"):
            deadline = time.monotonic() + TX_QUEUE_WAIT_S
            while self.queueStatus is not None and self.queueStatus.free <= 0:
                if not self.alive:
                    raise LinkLost(self.lost_cause or "closed")
                if time.monotonic() >= deadline:
                    raise TxQueueFull(f"node TX queue full for {TX_QUEUE_WAIT_S:g} s")
                time.sleep(0.05)
            self._queueClaim()
        self._sendToRadioImpl(toRadio)

    def send_text_packet(
        self, text: str, to: int, channel: int, *, reply_id: Optional[int], want_ack: bool, packet_id: int
    ) -> None:
        """Send one text with a packet id chosen by the caller (the outbox tracks it)."""
        packet = mesh_pb2.MeshPacket()
        packet.id = packet_id
        packet.channel = channel
        packet.decoded.portnum = _TEXT
        packet.decoded.payload = text.encode("utf-8")
        if reply_id:
            packet.decoded.reply_id = reply_id
        self._sendPacket(packet, destinationId=to, wantAck=want_ack)

    def new_packet_id(self) -> int:
        return self._generatePacketId()

    def send_probe(self, strong: bool) -> None:
        """A heartbeat (answered by a queueStatus); `strong` adds a metadata request, which
        firmware too old to answer heartbeats still answers."""
        self.sendHeartbeat()
        if strong and self.myInfo is not None:
            admin = admin_pb2.AdminMessage(get_device_metadata_request=True)
            self.sendData(
                admin,
                self.myInfo.my_node_num,
                portNum=portnums_pb2.PortNum.ADMIN_APP,
                wantResponse=True,
            )


class OptimizedTCPInterface(_HardenedStream, TCPInterface):
    """TCPInterface with a connect timeout, keepalive, buffered reads and no silent reconnect."""

    def __init__(
        self,
        hostname: str,
        portNumber: int = 4403,
        *,
        events: Optional[LinkEvents] = None,
        connect_timeout_s: float = 10.0,
        link_timeout_s: float = 45.0,
        connectNow: bool = True,
        noNodes: bool = False,
    ) -> None:
        self._init_hardening(events, handshake_timeout_s=connect_timeout_s)
        self.connect_timeout_s = connect_timeout_s
        self.link_timeout_s = link_timeout_s
        self._rx_chunk = b""
        self._rx_pos = 0
        super().__init__(hostname, portNumber=portNumber, connectNow=connectNow, noNodes=noNodes)

    def myConnect(self) -> None:
        sock = socket.create_connection((self.hostname, self.portNumber), timeout=self.connect_timeout_s)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        # The kernel declares the peer dead after idle + interval * count seconds of
        # silence, and TCP_USER_TIMEOUT after the same time with data unacknowledged.
        idle = max(1, int(self.link_timeout_s / 3))
        interval = max(1, int(self.link_timeout_s / 9))
        for name, value in (
            ("TCP_KEEPIDLE", idle),
            ("TCP_KEEPINTVL", interval),
            ("TCP_KEEPCNT", 3),
            ("TCP_USER_TIMEOUT", int(self.link_timeout_s * 1000)),
        ):
            option = getattr(socket, name, None)
            if option is not None:  # Linux has all four; other systems some
                sock.setsockopt(socket.IPPROTO_TCP, option, value)
        sock.settimeout(_READ_POLL_S)
        self.socket = sock

    def close(self) -> None:
        """An intended close: tell the node we are leaving, then close without reporting a loss."""
        if self.socket is not None and self.alive and self.isConnected.is_set():
            try:
                self._sendToRadioImpl(mesh_pb2.ToRadio(disconnect=True))
            except (OSError, LinkLost):
                pass
        self._closing = True
        super().close()

    def _writeBytes(self, b: bytes) -> None:
        sock = self.socket
        if sock is None:
            if self._closing:
                return
            raise LinkLost(self.lost_cause or "not connected")
        with self._write_lock:
            try:
                sock.sendall(b)
            except OSError as exc:
                cause = "send timed out (node not reading)" if isinstance(exc, socket.timeout) else f"send failed: {exc}"
                self.mark_lost(cause)
                raise LinkLost(cause) from exc

    def _readBytes(self, length: int) -> Optional[bytes]:
        if self._rx_pos < len(self._rx_chunk):
            start = self._rx_pos
            self._rx_pos = start + length
            return self._rx_chunk[start : self._rx_pos]
        sock = self.socket
        if sock is None:
            self._wantExit = True
            return None
        try:
            chunk = sock.recv(_READ_CHUNK)
        except socket.timeout:
            return b""  # the library's reader loops and checks _wantExit
        except OSError as exc:
            self.mark_lost(f"connection error: {exc.strerror or exc}")
            return None
        if not chunk:
            self.mark_lost("node closed the connection")
            return None
        self._rx_chunk, self._rx_pos = chunk, length
        return chunk[:length]
