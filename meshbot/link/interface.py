"""`OptimizedTCPInterface` and `OptimizedSerialInterface`: the library's transports with
their traps removed.

What meshtastic 2.7.11 does by itself over TCP, measured (see ../shared/MESHTASTIC-NOTES.md),
and what the TCP subclass does instead:

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

And over a serial port (`SerialInterface`, measured on a pseudo-terminal pair):

* it opens the device once with plain `open()` to clear HUPCL: no O_NOCTTY, so a daemon
  that is a session leader (every systemd service) takes the device as its controlling
  terminal, and unplugging it kills the daemon with SIGHUP (a "clean" signal for
  systemd's Restart=on-failure: no restart) -> opened by pyserial only (O_NOCTTY,
  O_NONBLOCK, so no wait for a carrier either), HUPCL cleared on that descriptor;
* writes with pyserial's write_timeout=0, whose loop spins at 100 % CPU, forever, while
  the device's buffer is full, then `tcdrain()`s without a bound -> a select() loop
  bounded by `write_timeout_s`, no drain;
* an unplugged device ends the reader with a WARNING and nothing reconnects -> reported
  once to the link owner as "serial device gone (unplugged?)";
* `close()` drains twice with 0.1 s sleeps -> unsent output is discarded when the link is
  lost (a stuck device would otherwise hold `close()` for the driver's closing_wait, 30 s
  for USB serial adapters), and the reader is woken at once.

And on the receive side, for both (see link/nodedb.py):

* the node DB gains an entry, holding the whole last packet, for every new sender id and
  never loses one while the link is up (ids are free to invent on a mesh) -> at most
  `NODE_DB_MAX` nodes, the least recently heard evicted first, and no packet kept;
* every packet waits for the pubsub listeners in one unbounded process-wide queue ->
  packets from other nodes are dropped at the reader past `PUBLISH_BACKLOG_MAX`;
* a node without a clock stamps packets `rx_time = 0` and never records `lastHeard` ->
  the bot records when it heard each node on its own clock (`HeardClock`).

The interface reports what the link owner and the outbox need through `LinkEvents`,
called on the library's reader thread: they must only record and return.

Private library methods overridden or relied on (checked against meshtastic 2.7.11; the
pin is 2.7.x, re-check on upgrade): `_reconnect`, `_disconnected`, `_readBytes`,
`_handleFromRadio`, `_handleQueueStatusFromRadio`, `_handlePacketFromRadio` (still called,
wrapped), `_getOrCreateByNum` (wrapped: reports a new entry), `_handleConfigComplete`
(wrapped: orders and trims the node DB first), `_startHeartbeat`, `_waitConnected`,
`_sendToRadio`, `_sendToRadioImpl`, `_sendPacket`, `_generatePacketId`, `_queueClaim`,
`_writeBytes`, `StreamInterface.connect`; the attributes `nodesByNum`, `nodes`,
`queueStatus`, `isConnected`, `failure`, `_wantExit`, `_rxBuf` (read only: empty while the
reader looks for a frame's first byte); and the library's module-level
`publishingThread.queue` (read only, for its length). `_handleLogByte` is no longer reached
(the bytes between frames never get to the reader, see `_readBytes`), so the library
publishes no `meshtastic.log.line`: nothing in meshbot listens to it; the lines go to the
DEBUG log instead.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import socket
import termios
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional

import meshtastic.util
import serial
from google.protobuf.message import DecodeError
from meshtastic.protobuf import admin_pb2, mesh_pb2, portnums_pb2
from meshtastic.serial_interface import SerialInterface
from meshtastic.stream_interface import StreamInterface
from meshtastic.tcp_interface import TCPInterface

from meshbot.link.console import FRAME_START as _FRAME_START
from meshbot.link.console import ConsoleText
from meshbot.link.nodedb import HeardClock, NodeDbLimiter, PublishBacklog
from meshbot.logs import RepeatedWarning

log = logging.getLogger(__name__)

_READ_CHUNK = 4096
# The reader wakes this often to notice an intended close; a half-open link is found
# by NodeLink's probes, not by this timeout.
_READ_POLL_S = 1.0
# How long a send may wait for a free slot in the node's TX queue before giving up
# (the text stays in the outbox and is tried again).
TX_QUEUE_WAIT_S = 10.0
# The node's serial API runs at 115200 baud (the library's and the firmware's setting).
SERIAL_BAUD = 115200
# A write the device has not taken after this long means it stopped reading: at 115200
# baud the largest frame (516 bytes) takes 45 ms and a full 4 KB tty buffer 0.4 s.
SERIAL_WRITE_TIMEOUT_S = 2.0
# Least time between two writes to a serial device. The library sleeps 0.1 s after every
# write "to give the TBeam a chance to work"; a gap keeps that protection for the device
# without adding the sleep to a write that comes later anyway.
_SERIAL_WRITE_GAP_S = 0.1
_TEXT = portnums_pb2.PortNum.TEXT_MESSAGE_APP
_ROUTING = portnums_pb2.PortNum.ROUTING_APP
_SIMULATOR = portnums_pb2.PortNum.SIMULATOR_APP
# The cause of loss for a clean close by the node (EOF): another client, or a restart.
NODE_CLOSED = "node closed the connection"
# Packets the library may hold for the pubsub listeners (each a dict with the whole
# packet, ~3 KB); the bot's own receive queue, behind them, is INBOUND_QUEUE_MAX long.
PUBLISH_BACKLOG_MAX = 1000
# The node DB bound when the caller gives no HeardClock (tools, benchmarks).
DEFAULT_NODE_DB_MAX = 2000


class LinkLost(ConnectionError):
    """The link to the node is gone (or was never up); the cause is the message."""


class NoHandshake(LinkLost):
    """The connection was made but no node handshake came over it: not a node's API port,
    or a node that is hung. Told apart from "cannot reach" in what the operator reads."""


class TxQueueFull(RuntimeError):
    """The node's TX queue stayed full; try again later."""


class SerialPortNotFound(ConnectionError):
    """SERIAL_PORT = 'auto' found no candidate device, or several; the message says which."""


def find_serial_port() -> str:
    """The one serial device that may be a Meshtastic node, for SERIAL_PORT = 'auto'.

    Uses the library's finder (USB devices by vendor id). Asked again on every connect
    attempt, so a node plugged in later is found. Never guesses between several devices:
    the library's own answer to that is sys.exit(), which a daemon cannot take.
    """
    ports = meshtastic.util.findPorts(True)
    if not ports:
        raise SerialPortNotFound("no Meshtastic serial device found")
    if len(ports) > 1:
        raise SerialPortNotFound(f"several devices: {', '.join(ports)}; set SERIAL_PORT")
    return ports[0]


def parse_firmware_version(text: str) -> Optional[tuple[int, int, int]]:
    """'2.7.13.5a3b2c1' -> (2, 7, 13); None when it does not start with three numbers."""
    parts = text.split(".")
    try:
        return (int(parts[0]), int(parts[1]), int(parts[2]))
    except (IndexError, ValueError):
        return None


def _ignore(*_args: object) -> None:
    return None


@dataclass(frozen=True)
class QueueReport:
    """One `queueStatus` from the node: its verdict on a packet and its TX queue's room.

    `free` is what the queue had left *after* the node handled the packet: an accepted
    packet waits in it until the radio sends it, so a `free` still at `maxlen` means the
    packet never entered it (firmware 2.7 refuses a text that way: res 0, nothing else).
    """

    packet_id: int
    res: int  # 0: not refused by the router (not proof that it was queued)
    free: int
    maxlen: int
    at: float  # time.monotonic() when the frame arrived


@dataclass
class LinkEvents:
    """What the interface reports, on its reader thread. Each callback must be quick."""

    lost: Callable[[str], None] = _ignore  # cause
    queue_status: Callable[[QueueReport], None] = _ignore
    # request id, Routing.Error value (0 = an ACK), the node that sent the routing packet
    routing: Callable[[int, int, int], None] = _ignore
    notification: Callable[[int, str], None] = _ignore  # LogRecord.Level value, message
    slow_handshake: Callable[[float], None] = _ignore  # seconds waited so far


class _HardenedStream:
    """Fixes shared by the TCP and serial transports; mixed in before the library class."""

    # Set by _init_hardening() before the library constructor runs.
    events: LinkEvents
    last_rx: float
    lost_cause: Optional[str]
    answers_queue_status: bool
    _closing: bool

    def _init_hardening(
        self,
        events: Optional[LinkEvents],
        handshake_timeout_s: float,
        silence_limit_s: float,
        heard: Optional[HeardClock] = None,
    ) -> None:
        self.events = events or LinkEvents()
        self.silence_limit_s = silence_limit_s
        # The bot's last-heard clock outlives this connection; the limiter does not.
        self.node_db = NodeDbLimiter(heard if heard is not None else HeardClock(DEFAULT_NODE_DB_MAX))
        self.publish_backlog = PublishBacklog(PUBLISH_BACKLOG_MAX, meshtastic.publishingThread.queue.qsize)
        self.handshake_timeout_s = handshake_timeout_s
        self.last_rx = time.monotonic()
        self.lost_cause = None
        self.answers_queue_status = False
        self._closing = False
        # Set by the link owner: why to stop waiting for the handshake now, or None.
        self.give_up: Callable[[], Optional[str]] = lambda: None
        self._lost_lock = threading.Lock()
        self._write_lock = threading.Lock()
        # What the last chunk read from the transport holds beyond what the library took.
        self._rx_chunk = b""
        self._rx_pos = 0
        # Bytes between frames: the node's serial console, or noise.
        self._console = ConsoleText(log)
        # Packets the library's decoders cannot take (a POSITION that is no Position, a
        # sender of 0xFFFFFFFF): the library would log an ERROR with a traceback for each.
        self._malformed = RepeatedWarning(log, "ignored {count} more malformed packets from the mesh in the last {seconds} s")
        # Serial noise can make thousands of bad frames: one line a minute says how many.
        self._undecodable = RepeatedWarning(log, "ignored {count} more undecodable frames from the node in the last {seconds} s")
        # Shared node API (meshbot/share): sees every FromRadio frame, raw and parsed, on
        # this reader thread. Set by NodeLink before connect(); it must only hand over.
        self.from_radio_tap: Optional[Callable[[bytes, mesh_pb2.FromRadio], None]] = None

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

    def _tell_what_was_counted(self) -> None:
        """On close: the counts of summarised warnings are told now, not by a timer after the link is gone."""
        self._undecodable.flush()
        self._malformed.flush()
        self._console.flush()
        self.publish_backlog.flush()

    def _say_goodbye(self, transport_open: bool) -> None:
        """Start an intended close: a `disconnect` to a node that may be listening, then no
        loss is reported any more.

        The node frees its client slot at once; and a node that reads this connection only
        later (a stalled process serving its backlog) closes the session when it reads the
        `disconnect` (PhoneAPI::close), instead of sending a handshake and the packets it
        kept for its client into a socket nobody reads. So it is sent during a handshake too.
        """
        if transport_open and self.alive:
            try:
                self._sendToRadioImpl(mesh_pb2.ToRadio(disconnect=True))
            except (OSError, LinkLost):
                pass
        self._closing = True

    def _reconnect(self) -> None:
        # The library would sleep 1 s and reconnect on this same object, silently.
        self.mark_lost(NODE_CLOSED)

    def _disconnected(self) -> None:
        # Called when the library's reader exits, for whatever reason.
        self.mark_lost("reader stopped")
        super()._disconnected()  # type: ignore[misc]

    # --- receive -----------------------------------------------------------------------
    def _readBytes(self, length: int) -> Optional[bytes]:
        """Serve the library's byte-at-a-time reader from one chunk read per wake-up.

        The library asks for one byte per call; reading the transport that way costs a
        system call (and a select, for pyserial) per byte. Between frames (the library's
        `_rxBuf` empty: it looks for a frame's first byte), every byte up to the next
        possible frame start is console text or noise: it goes to `_console` in one slice,
        never through the library's per-byte log handling, which builds each line by string
        concatenation (quadratic: 1 MB without a newline cost 18.9 s of CPU).
        """
        if self._rx_pos >= len(self._rx_chunk):
            chunk = self._read_chunk()
            if not chunk:
                return chunk  # b"": nothing yet, the reader loops; None: the link is gone
            self._rx_chunk, self._rx_pos = chunk, 0
        if not self._rxBuf:
            start = self._rx_chunk.find(_FRAME_START, self._rx_pos)
            end = len(self._rx_chunk) if start < 0 else start
            if end > self._rx_pos:
                self._console.feed(self._rx_chunk[self._rx_pos : end])
                self._rx_pos = end
            if start < 0:
                return b""  # all of it was text: the reader loops (and sees _wantExit)
        start = self._rx_pos
        self._rx_pos = start + length
        return self._rx_chunk[start : self._rx_pos]

    def _read_chunk(self) -> Optional[bytes]:
        """Whatever the transport has, after waiting at most _READ_POLL_S for it.

        Returns b"" when nothing came, None when the link is gone (after mark_lost).
        """
        raise NotImplementedError

    def _handleFromRadio(self, fromRadioBytes: bytes) -> None:
        self.last_rx = time.monotonic()  # any frame from the node proves the link alive
        from_radio = mesh_pb2.FromRadio()
        try:
            from_radio.ParseFromString(fromRadioBytes)
        except DecodeError:
            self._undecodable.log("ignored an undecodable frame from the node (%d bytes)", len(fromRadioBytes))
            return
        tap = self.from_radio_tap
        if tap is not None:  # before the library sees it: clients get frames in the node's order
            tap(fromRadioBytes, from_radio)
        kind = from_radio.WhichOneof("payload_variant")
        # Packets and queue statuses are nearly all the traffic; the library converts
        # every frame to a dict first, which only node_info frames need.
        if kind == "packet":
            self._handlePacketFromRadio(from_radio.packet)
        elif kind == "queueStatus":
            self._handleQueueStatusFromRadio(from_radio.queueStatus)
        elif kind == "rebooted":
            self.mark_lost("node rebooted")
        elif kind == "clientNotification":
            # The library would only publish it; the link owner logs it at its level.
            note = from_radio.clientNotification
            self.events.notification(note.level, note.message)
        else:
            super()._handleFromRadio(fromRadioBytes)  # type: ignore[misc]

    def _handleQueueStatusFromRadio(self, queueStatus: mesh_pb2.QueueStatus) -> None:
        # Keep the free-slot count; skip the library's resend bookkeeping entirely.
        self.queueStatus = queueStatus
        self.answers_queue_status = True
        self.events.queue_status(
            QueueReport(queueStatus.mesh_packet_id, queueStatus.res, queueStatus.free, queueStatus.maxlen, self.last_rx)
        )

    def _handlePacketFromRadio(self, meshPacket: mesh_pb2.MeshPacket, hack: bool = False) -> None:
        decoded = meshPacket.decoded
        if decoded.portnum == _ROUTING and decoded.request_id:
            routing = mesh_pb2.Routing()
            try:
                routing.ParseFromString(decoded.payload)
            except DecodeError:
                routing.Clear()
            # error_reason NONE is an ACK: from the destination for a DM it reached, from
            # the own node when a neighbour was heard relaying it (implicit ACK).
            self.events.routing(decoded.request_id, routing.error_reason, getattr(meshPacket, "from"))
        elif decoded.portnum == _SIMULATOR:
            # `meshtasticd --sim` echoes every packet it transmits; a real radio never does.
            return
        sender = getattr(meshPacket, "from")
        if sender == meshtastic.BROADCAST_NUM:
            # No node has that number: the library would raise (ERROR and traceback) on it.
            self._malformed.log("ignored a packet from the broadcast address 0xffffffff (port %d)", decoded.portnum)
            return
        other = bool(sender) and sender != (self.myInfo.my_node_num if self.myInfo is not None else None)
        if other:
            self.node_db.heard(self, sender)  # before a handler can see the packet
            if not self.publish_backlog.admit():
                return
        try:
            super()._handlePacketFromRadio(meshPacket, hack)  # type: ignore[misc]
        except (DecodeError, ValueError, KeyError, TypeError) as exc:
            # What the library's decoders raise for a payload that is not what its port
            # says; one summarised WARNING instead of an ERROR and a traceback per packet.
            self._malformed.log(
                "ignored a malformed packet from !%08x (port %d): %s: %s", sender, decoded.portnum, type(exc).__name__, exc
            )
            log.debug("the library's traceback for that packet", exc_info=True)
        if other:
            self.node_db.handled(self, sender)

    def _getOrCreateByNum(self, nodeNum: int) -> dict:
        new = self.nodesByNum is not None and nodeNum not in self.nodesByNum
        node = super()._getOrCreateByNum(nodeNum)  # type: ignore[misc]
        if new:
            self.node_db.created(self, nodeNum)
        return node

    def _handleConfigComplete(self) -> None:
        self.node_db.handshake_done(self)  # before the link counts as up
        super()._handleConfigComplete()  # type: ignore[misc]

    # --- send --------------------------------------------------------------------------
    def _startHeartbeat(self) -> None:
        """NodeLink probes at PROBE_INTERVAL_S; the library's 300 s timer is not wanted."""

    def _waitConnected(self, timeout: float = 30.0) -> None:
        """Wait for the config handshake while the node shows any sign of life.

        The library gives up after `timeout` and the caller would open another connection.
        A node whose process stalls still has its kernel accept connections, and when it
        resumes it serves them in turn: an abandoned connection whose `want_config` it reads
        is handed its handshake and the packets the node kept for its client, which nobody
        reads any more (measured on meshtasticd 2.7.13: a command lost in 2 runs of 5).
        So a handshake is waited on for as long as frames come, or until nothing at all has
        come for `silence_limit_s` (LINK_TIMEOUT_S: the rule that ends a silent link once
        up). Only then is the connection given up, and `close()` first sends `disconnect`,
        which a node reading that backlog later handles before it writes anything. The
        socket's own end (EOF, reset, TCP_USER_TIMEOUT) ends the wait at once, and
        `give_up()` on an intended stop or a one-off probe's deadline. After
        `handshake_timeout_s`, `events.slow_handshake` is called once, for the log line and
        the watchdog (the loop is waiting, not working).
        """
        slow_at = time.monotonic() + self.handshake_timeout_s
        while not self.isConnected.wait(0.05):
            if not self.alive:
                raise LinkLost(self.lost_cause or "closed")
            reason = self.give_up()
            if reason:
                raise NoHandshake(reason)
            now = time.monotonic()
            silent = now - self.last_rx
            if silent >= self.silence_limit_s:
                raise NoHandshake(f"no config from the node and no frame for {silent:.0f} s (node hung?)")
            if now >= slow_at:
                slow_at = float("inf")
                self.events.slow_handshake(self.handshake_timeout_s)
        if self.failure:
            raise self.failure

    @property
    def firmware_version(self) -> Optional[tuple[int, int, int]]:
        """The node's firmware version from the handshake's metadata, e.g. (2, 7, 13)."""
        metadata = getattr(self, "metadata", None)
        return parse_firmware_version(metadata.firmware_version) if metadata is not None else None

    @property
    def reboot_count(self) -> Optional[int]:
        """How often the node has rebooted, from the handshake's my_info."""
        return self.myInfo.reboot_count if self.myInfo is not None else None

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

    def send_to_radio(self, to_radio: mesh_pb2.ToRadio) -> None:
        """Write a ToRadio as a client built it (an API client's packet, kept as it is);
        a packet waits for a TX-queue slot like any other."""
        self._sendToRadio(to_radio)

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
        heard: Optional[HeardClock] = None,
        connectNow: bool = True,
        noNodes: bool = False,
    ) -> None:
        self._init_hardening(events, connect_timeout_s, link_timeout_s, heard)
        self.connect_timeout_s = connect_timeout_s
        self.link_timeout_s = link_timeout_s
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
        self._say_goodbye(self.socket is not None)
        super().close()
        self._tell_what_was_counted()

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

    def _read_chunk(self) -> Optional[bytes]:
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
            self.mark_lost(NODE_CLOSED)
            return None
        return chunk


class OptimizedSerialInterface(_HardenedStream, SerialInterface):
    """SerialInterface with a bounded open and writes, buffered reads and no silent failure.

    `devPath` is the device itself: resolve SERIAL_PORT = 'auto' with find_serial_port()
    first (the library's constructor would otherwise search, print, and on several
    devices call sys.exit()).
    """

    def __init__(
        self,
        devPath: str,
        *,
        events: Optional[LinkEvents] = None,
        connect_timeout_s: float = 10.0,
        link_timeout_s: float = 45.0,
        write_timeout_s: float = SERIAL_WRITE_TIMEOUT_S,
        heard: Optional[HeardClock] = None,
        connectNow: bool = True,
        noNodes: bool = False,
    ) -> None:
        self._init_hardening(events, connect_timeout_s, link_timeout_s, heard)
        self.write_timeout_s = write_timeout_s
        self._last_write_at = 0.0
        super().__init__(devPath, connectNow=connectNow, noNodes=noNodes)

    def connect(self) -> None:
        """Open the device, then the library's wake bytes, reader and handshake (bounded)."""
        path = self.devPath
        # O_NOCTTY and O_NONBLOCK (pyserial's open): never our controlling terminal, never
        # a wait for a carrier. The exclusive lock keeps the CLI or a second bot off the
        # port instead of two programs reading halves of each other's frames. Our writes
        # go through _write_all(); write_timeout only bounds any pyserial write.
        stream = serial.Serial(path, SERIAL_BAUD, exclusive=True, timeout=_READ_POLL_S, write_timeout=self.write_timeout_s)
        try:
            # HUPCL cleared, as the library does: closing the port then does not drop
            # DTR/RTS, which resets some boards (pyserial issue 124), so a reconnect does
            # not reboot the node. The library clears it through a second, plain open()
            # of the device (see the module docstring); this descriptor does as well.
            attrs = termios.tcgetattr(stream.fd)
            attrs[2] &= ~termios.HUPCL
            termios.tcsetattr(stream.fd, termios.TCSANOW, attrs)
        except termios.error as exc:
            stream.close()
            raise serial.SerialException(f"could not configure {path}: {exc}") from exc
        self.stream = stream
        StreamInterface.connect(self)  # not SerialInterface.connect: it would open the device again

    def close(self) -> None:
        """An intended close: tell the node we are leaving, wake the reader, close the port."""
        self._say_goodbye(self.stream is not None)
        self._wantExit = True
        with self._write_lock:  # the reader closes the stream under this lock
            if self.stream is not None:
                with contextlib.suppress(Exception):
                    self.stream.cancel_read()  # the reader's select() returns now, not in 1 s
        # Not SerialInterface.close(): its two tcdrain() calls have no bound.
        StreamInterface.close(self)
        self._tell_what_was_counted()

    def _disconnected(self) -> None:
        # The reader is exiting; it closes the stream. Under the write lock, so that no
        # writer or close() uses a descriptor that is being closed (and may be reused).
        with self._write_lock:
            if self.stream is not None and self.lost_cause is not None:
                # Unsent output of a device that stopped reading would hold close() for
                # the driver's closing_wait (30 s for USB serial adapters): discard it.
                with contextlib.suppress(Exception):
                    self.stream.reset_output_buffer()
            super()._disconnected()

    def _writeBytes(self, b: bytes) -> None:
        """Write all of b within write_timeout_s, at least _SERIAL_WRITE_GAP_S after the last write."""
        with self._write_lock:
            stream = self.stream
            if self._closing:
                return
            if stream is None or not stream.is_open:
                raise LinkLost(self.lost_cause or "not connected")
            gap = self._last_write_at + _SERIAL_WRITE_GAP_S - time.monotonic()
            if gap > 0:
                time.sleep(gap)
            try:
                self._write_all(stream.fd, b)
            except OSError as exc:
                if isinstance(exc, TimeoutError):
                    cause = str(exc)
                elif _device_gone(exc):
                    cause = "serial device gone (unplugged?)"
                else:
                    cause = f"serial write failed: {exc.strerror or exc}"
                self.mark_lost(cause)
                raise LinkLost(cause) from exc
            finally:
                self._last_write_at = time.monotonic()

    def _write_all(self, fd: int, data: bytes) -> None:
        """os.write until done, waiting in select(): pyserial's own bounded write spins
        on a full buffer, and its unbounded one (the library's) spins forever."""
        deadline = time.monotonic() + self.write_timeout_s
        view = memoryview(data)
        while view:
            left = deadline - time.monotonic()
            _, writable, _ = select.select([], [fd], [], max(0.0, left))
            if not writable:
                raise TimeoutError(f"serial write timed out after {self.write_timeout_s:g} s (device not reading)")
            try:
                written = os.write(fd, view)
            except BlockingIOError:
                continue
            view = view[written:]

    def _read_chunk(self) -> Optional[bytes]:
        stream = self.stream
        if stream is None:
            self._wantExit = True
            return None
        try:
            # pyserial waits (select, at most _READ_POLL_S) for the first byte; close()
            # wakes it with cancel_read(). Then whatever else already arrived.
            chunk = stream.read(1)
            waiting = stream.in_waiting if chunk else 0
            if waiting:
                chunk += stream.read(min(waiting, _READ_CHUNK))
        except (serial.SerialException, OSError) as exc:
            # An unplugged device reads as "ready but no data" (pyserial raises), or EIO.
            self._wantExit = True  # even when close() is under way and mark_lost ignores it
            self.mark_lost("serial device gone (unplugged?)" if _device_gone(exc) else f"serial read failed: {exc}")
            return None
        return chunk


def _device_gone(exc: BaseException) -> bool:
    """True for the errors a vanished device gives: EIO, ENODEV, ENXIO, or pyserial's
    "device reports readiness to read but returned no data" (its read() after a hang-up)."""
    if getattr(exc, "errno", None) in (errno.EIO, errno.ENODEV, errno.ENXIO):
        return True
    text = str(exc)
    return "returned no data" in text or "Input/output error" in text
