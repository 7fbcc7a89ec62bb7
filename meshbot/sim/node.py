"""A simulated Meshtastic node on 127.0.0.1, for tests, benchmarks and `--demo`.

It speaks the node's real stream protocol (0x94 0xC3, 16-bit length, protobuf) with the
real `ToRadio`/`FromRadio` messages, over TCP or over a serial line (a pseudo-terminal
pair standing in for the USB cable, see `attach_serial()`), and reproduces what firmware
2.7.x does that the bot must survive. The source is /work/shared/MESHTASTIC-NOTES.md
(facts read in the firmware and measured on meshtasticd 2.7.13): where this module and
the notes disagree, the notes are right and this module is the bug.

* the config handshake: my_info (with `reboot_count`), metadata (with
  `firmware_version`), own node_info, 8 channels, config and module config (with the
  secrets a real node sends: private and admin keys, Wi-Fi and MQTT passwords, channel
  PSKs; `prefs.py`, which also answers get_config/channel admin requests and XModem), the other
  node_infos, config_complete_id (nonce 69420: no nodes; 69421: nodes only), then what
  the node kept for the phone, then a queueStatus about packet 0;
* one TCP client at a time: a new client force-closes the previous one;
* a `queueStatus` for every packet and every heartbeat (unless `old_firmware`), whose
  `free` counts the slots of a 16-slot TX queue each packet for the air holds for
  `tx_time_s`; a full queue refuses with res 32;
* the 2 s text rate limit of firmware 2.7.0 and later (on or off from
  `firmware_version`), counted per connection from the last accepted text when the
  node processes the frame; a refused text gets one queueStatus res 0 that leaves
  `free` alone, and nothing else (`rate_limit_nak=True`: also the RATE_LIMIT_EXCEEDED
  routing error the firmware addresses to node 0); ids among the connection's last 20
  packets are dropped with no answer at all;
* ACK/NAK of DMs with want_ack: a ROUTING_APP from the destination, or MAX_RETRANSMIT
  (or `nak_next()`'s error) from the node itself;
* packets for the phone (mesh traffic, routing packets, admin answers, notifications)
  kept in a bounded queue while no client has finished its handshake;
* rx_time and last_heard 0 on a node without time (`has_time`);
* a link with delay and jitter in both directions (`link_delay_s`, `link_jitter_s`),
  in order as TCP is;
* simulated mesh users sending texts on channels or by DM;
* fault switches: drop (FIN or RST), stop listening for a while, reboot, a hung node
  process (`hang()`: the kernel still accepts), go silent with the socket open, reject
  the next packets; over serial, unplug and plug back the device, or stop reading it;
* optionally what `meshtasticd --sim` adds: a SIMULATOR_APP echo and a second
  queueStatus for every packet leaving the TX queue (`sim_echo`).

One client is served at a time, whichever transport it came by.
"""

from __future__ import annotations

import collections
import errno
import heapq
import itertools
import logging
import os
import random
import re
import select
import shutil
import socket
import struct
import tempfile
import threading
import time
import tty
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Protocol, Union

from google.protobuf.message import DecodeError
from meshtastic import BROADCAST_NUM
from meshtastic.protobuf import admin_pb2, config_pb2, mesh_pb2, portnums_pb2

from meshbot.sim.prefs import NodeSecrets

log = logging.getLogger(__name__)

START1, START2 = 0x94, 0xC3
MAX_FRAME = 512
NODELESS_NONCE = 69420
NODES_ONLY_NONCE = 69421
_SEEN_IDS = 20
_TX_QUEUE = 16
_READ_CHUNK = 4096
# How long a write to the serial device may wait for the bot to read before it fails.
_SEND_TIMEOUT_S = 2.0
# While no program has the serial device open, the node's end reads EIO at once: poll.
_NO_READER_POLL_S = 0.01
_TEXT = portnums_pb2.PortNum.TEXT_MESSAGE_APP
# The router's answer when the TX queue is full (ERRNO_UNKNOWN in the firmware's error codes).
_ERRNO_UNKNOWN = 32
# Put in an outbound delay line: close the connection once the bytes before it are delivered.
_CLOSE = object()


def frame(message: mesh_pb2.FromRadio) -> bytes:
    payload = message.SerializeToString()
    return bytes((START1, START2)) + struct.pack(">H", len(payload)) + payload


@dataclass
class SimUser:
    """A simulated person with a radio somewhere on the mesh."""

    num: int
    short_name: str
    long_name: str = ""
    in_db: bool = True  # False: unknown to the node DB (the library gives fromId None)
    position: Optional[tuple[float, float]] = None
    snr: float = 6.25
    hops_away: int = 0
    reachable: bool = True  # False: DMs to this user are never acknowledged (MAX_RETRANSMIT)

    @property
    def node_id(self) -> str:
        return f"!{self.num:08x}"


@dataclass(frozen=True)
class SentText:
    """A text the node accepted from its client (the bot)."""

    id: int
    to: int
    channel: int
    text: str
    reply_id: int
    want_ack: bool
    at: float  # time.monotonic() when the node read it
    connection: int  # 1 for the first client connection, 2 for the next...


DEFAULT_USERS = (
    SimUser(0x1A2B3C01, "ALIC", "Alice", position=(45.764, 4.8357)),
    SimUser(0x1A2B3C02, "BOB", "Bob", position=(48.8566, 2.3522), hops_away=1),
    SimUser(0x1A2B3C03, "CARL", "Carl"),
)


class _Transport(Protocol):
    """The byte stream one client speaks over: a TCP socket or the node's end of a serial line."""

    def recv(self) -> bytes:
        """Block for bytes from the client; b"" once it is gone."""
        ...

    def send(self, data: bytes) -> None:
        """Write all of data, or raise OSError."""
        ...

    def close(self, *, rst: bool) -> None:
        """The node ends this client's session."""
        ...


class _SocketTransport:
    """An accepted TCP connection."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def recv(self) -> bytes:
        try:
            return self.sock.recv(_READ_CHUNK)
        except OSError:
            return b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self, *, rst: bool) -> None:
        try:
            if rst:
                # Linger 0 turns close() into a reset. The serving thread's blocked recv()
                # would defer the close until it returns: SHUT_RD wakes it without sending.
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.sock.shutdown(socket.SHUT_RD)
            else:
                self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


class _SerialPort:
    """One plugged-in serial device: a pty pair whose master is the node's end of the cable.

    The slave is what the bot opens (through a stable symlink, like /dev/serial/by-id/...).
    Only the serving thread reads the master and closes it, so that no other thread ever
    uses a descriptor number that has been closed and reused; others write under `lock`.
    """

    def __init__(self) -> None:
        master, slave = os.openpty()
        tty.setraw(slave)  # no echo, no line editing: a byte stream, as a USB serial port
        self.device = os.ttyname(slave)
        # The bot opens the slave itself. With nobody on the slave side the master reads
        # EIO, which is how the node's end tells that the bot closed the device.
        os.close(slave)
        os.set_blocking(master, False)
        self.master = master
        self.lock = threading.Lock()
        self.closed = False
        self.unplugged = False
        self.stalled = False  # the node stopped reading: the bot's writes fill the buffers
        self._wake_r, self._wake_w = os.pipe()
        self.thread: Optional[threading.Thread] = None

    def recv(self, *, until_opened: bool) -> Optional[bytes]:
        """Bytes the bot wrote. b"" when the bot has the device closed, unless
        `until_opened` (then wait for it to open it and write); None once unplugged."""
        while not self.unplugged:
            watched = [self._wake_r] if self.stalled else [self.master, self._wake_r]
            ready, _, _ = select.select(watched, [], [])
            if self.unplugged:
                break
            if self._wake_r in ready:
                os.read(self._wake_r, 64)
                continue
            try:
                data = os.read(self.master, _READ_CHUNK)
            except BlockingIOError:
                continue
            except OSError as exc:
                if exc.errno != errno.EIO:
                    raise
                if not until_opened:
                    return b""
                select.select([self._wake_r], [], [], _NO_READER_POLL_S)
                continue
            if data:
                return data
        return None

    def send(self, data: bytes) -> None:
        with self.lock:
            if self.closed:
                raise OSError(errno.EIO, "serial device unplugged")
            deadline = time.monotonic() + _SEND_TIMEOUT_S
            view = memoryview(data)
            while view:
                _, writable, _ = select.select([], [self.master], [], max(0.0, deadline - time.monotonic()))
                if not writable:
                    raise TimeoutError("the bot is not reading the serial device")
                try:
                    view = view[os.write(self.master, view) :]
                except BlockingIOError:
                    continue

    def unplug(self) -> None:
        """Ask the serving thread to close the node's end; the bot's next read then fails."""
        with self.lock:
            self.unplugged = True
            self._wake()

    def stall(self) -> None:
        with self.lock:
            self.stalled = True
            self._wake()

    def _wake(self) -> None:
        """Make the serving thread look at the flags again (under `lock`)."""
        if not self.closed:
            os.write(self._wake_w, b"x")

    def close(self) -> None:
        """Called by the serving thread only, when it is done with the master."""
        with self.lock:
            self.closed = True
            os.close(self.master)
            os.close(self._wake_r)
            os.close(self._wake_w)


class _SerialSession:
    """One client over serial: from the bot opening the device to its closing it (or unplug)."""

    def __init__(self, port: _SerialPort) -> None:
        self.port = port

    def recv(self) -> bytes:
        return self.port.recv(until_opened=False) or b""

    def send(self, data: bytes) -> None:
        self.port.send(data)

    def close(self, *, rst: bool) -> None:
        # A node cannot close a serial line: it just stops serving this session (its
        # serving thread returns when the bot closes the device). `drop()` unplugs instead.
        pass


class _Timers:
    """One thread running callbacks at monotonic times: TX slots leaving, ACKs, wake-ups.

    A heap and one thread rather than a threading.Timer per event: a benchmark puts
    hundreds of packets a second through the TX queue.
    """

    def __init__(self, name: str) -> None:
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._running = True
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def call_later(self, delay: float, callback: Callable[[], None]) -> None:
        with self._cond:
            heapq.heappush(self._heap, (time.monotonic() + delay, next(self._seq), callback))
            self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._running = False
            self._heap.clear()
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._running and (not self._heap or self._heap[0][0] > time.monotonic()):
                    self._cond.wait(self._heap[0][0] - time.monotonic() if self._heap else None)
                if not self._running:
                    return
                _, _, callback = heapq.heappop(self._heap)
            try:
                callback()
            except Exception:  # a callback's bug must not stop every later timer
                log.exception("simulated node timer failed")


class _DelayLine:
    """One direction of one connection's link: items come out `delay + uniform(0, jitter)`
    after they went in, and never before the item put before them (TCP keeps order)."""

    def __init__(self, delay: float, jitter: float, rnd: random.Random, sink: Callable[[Any], None], name: str) -> None:
        self._delay = delay
        self._jitter = jitter
        self._rnd = rnd
        self._sink = sink
        self._items: collections.deque[tuple[float, Any]] = collections.deque()
        self._last_release = 0.0
        self._cond = threading.Condition()
        self._open = True
        threading.Thread(target=self._run, name=name, daemon=True).start()

    def put(self, item: Any) -> None:
        with self._cond:
            if not self._open:
                return
            release = time.monotonic() + self._delay + self._rnd.uniform(0.0, self._jitter)
            self._last_release = max(release, self._last_release)
            self._items.append((self._last_release, item))
            self._cond.notify()

    def close(self) -> None:
        """Drop what is still on the way (the connection is gone) and end the thread."""
        with self._cond:
            self._open = False
            self._items.clear()
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._open and (not self._items or self._items[0][0] > time.monotonic()):
                    self._cond.wait(self._items[0][0] - time.monotonic() if self._items else None)
                if not self._open:
                    return
                _, item = self._items.popleft()
            self._sink(item)


class _Client:
    """One client session: an accepted TCP connection, or one open of the serial device."""

    def __init__(self, transport: _Transport, number: int) -> None:
        self.transport = transport
        self.number = number
        self.write_lock = threading.Lock()
        # The firmware's PhoneAPI object: one per connection, so a new one starts empty.
        self.seen_ids: collections.deque[int] = collections.deque(maxlen=_SEEN_IDS)
        self.last_text_at: Optional[float] = None
        self.silent = False
        self.closed = False
        self.configured = False
        self.status_due = False  # a handshake in a backlog: its closing queueStatus comes after the batch
        self.handshake_in_backlog = False
        self.inbound: Optional[_DelayLine] = None  # frames on their way to the node
        self.outbound: Optional[_DelayLine] = None  # bytes on their way to the client


@dataclass
class NodeCounters:
    connections: int = 0
    handshakes: int = 0
    heartbeats: int = 0
    packets: int = 0
    rate_limited: int = 0
    rejected: int = 0
    queue_full: int = 0
    ignored_repeats: int = 0
    metadata_requests: int = 0
    phone_queue_dropped: int = 0
    xmodem_frames: int = 0
    mqtt_proxy_frames: int = 0


def parse_version(version: str) -> tuple[int, ...]:
    """(2, 7, 13) from "2.7.13" or "2.7.13.abcdef": the numeric fields, in order."""
    numbers = []
    for part in version.split("."):
        digits = re.match(r"\d+", part)
        if digits is None:
            break
        numbers.append(int(digits.group()))
    return tuple(numbers)


# `text_rate_limit_s` default: on (2 s) from firmware 2.7.0, off below.
FROM_FIRMWARE = "from firmware_version"
RATE_LIMIT_SINCE = (2, 7, 0)
TEXT_RATE_LIMIT_S = 2.0


class SimulatedNode:
    """The node's TCP API (and its serial API after `attach_serial()`), in threads of this
    process. Use start()/stop() or `with`.

    Threads: one reader per connection (it parses frames and passes them on, through the
    inbound delay line when the link has a delay), and one "node process" thread that
    handles every frame of every connection in order, as the firmware's single loop does;
    `hang()` stops that thread alone, so the kernel still accepts and buffers.
    """

    def __init__(
        self,
        *,
        port: int = 0,
        node_num: int = 0x5EED0B07,
        short_name: str = "BOT",
        long_name: str = "meshbot (simulated node)",
        users: tuple[SimUser, ...] = DEFAULT_USERS,
        modem_preset: str = "LONG_FAST",
        firmware_version: str = "2.7.13",
        text_rate_limit_s: Union[float, None, str] = FROM_FIRMWARE,
        rate_limit_nak: bool = False,
        old_firmware: bool = False,
        tx_time_s: float = 0.2,  # 0: packets leave the queue at once (benchmarks of the bot alone)
        ack_delay_s: float = 0.05,
        nak_delay_s: float = 0.5,
        phone_queue_max: int = 32,
        has_time: bool = False,
        link_delay_s: float = 0.0,
        link_jitter_s: float = 0.0,
        sim_echo: bool = False,
        status_after_handshake: bool = True,
        seed: int = 4403,
    ) -> None:
        self.host = "127.0.0.1"
        self.port = port
        self.node_num = node_num
        self.short_name = short_name
        self.long_name = long_name
        self.users: dict[int, SimUser] = {u.num: u for u in users}
        self.modem_preset = modem_preset
        self.firmware_version = firmware_version
        if text_rate_limit_s == FROM_FIRMWARE:
            text_rate_limit_s = TEXT_RATE_LIMIT_S if parse_version(firmware_version) >= RATE_LIMIT_SINCE else None
        self.text_rate_limit_s: Optional[float] = text_rate_limit_s  # type: ignore[assignment]
        self.rate_limit_nak = rate_limit_nak  # a later firmware might deliver the RATE_LIMIT_EXCEEDED
        self.old_firmware = old_firmware
        self.tx_time_s = tx_time_s
        self.ack_delay_s = ack_delay_s
        self.nak_delay_s = nak_delay_s
        self.has_time = has_time
        self.link_delay_s = link_delay_s
        self.link_jitter_s = link_jitter_s
        self.sim_echo = sim_echo
        self.status_after_handshake = status_after_handshake
        self.reboot_count = 3
        # The settings a real node sends its client whole, secrets included (prefs.py).
        self.secrets = NodeSecrets()
        self.counters = NodeCounters()
        self.texts: list[SentText] = []
        self.refused: list[int] = []  # ids of texts the rate limit dropped
        self.handed: list[int] = []  # ids of mesh packets written to a client, in order
        self.on_text: Optional[Callable[[SentText], None]] = None
        self.on_handed: Optional[Callable[[int], None]] = None  # called with each id added to `handed`
        self._cond = threading.Condition()
        self._listener: Optional[socket.socket] = None
        self._client: Optional[_Client] = None
        self._sessions: list[_Client] = []  # every open connection, served or waiting (hang)
        self._running = False
        self._reject_next: list[int] = []
        self._silent_until = 0.0  # go_silent(seconds): connections until then are hung too
        self._routing_error_next: list[int] = []
        self._nak_next: list[int] = []
        self._packet_ids = random.Random(seed)
        self._link_rng = random.Random(seed + 1)
        self._from_radio_ids = itertools.count(1)
        self._threads: list[threading.Thread] = []
        self._serial_port: Optional[_SerialPort] = None
        self._serial_dir: Optional[str] = None
        self.serial_path: Optional[str] = None  # the stable device path, once attach_serial() ran
        self.listening_since: Optional[float] = None  # monotonic; None while not listening
        self.handshake_at: Optional[float] = None  # when the last config handshake was sent
        # The TX queue: slots in use, and the boot they belong to (a reboot empties it).
        self._tx_used = 0
        self._boot = 0
        # Packets for "the phone" while no configured client can take them (MeshService's
        # toPhoneQueue): the lock also orders them against direct writes after a handshake.
        self._phone_lock = threading.RLock()
        self._phone_queue: collections.deque[mesh_pb2.FromRadio] = collections.deque(maxlen=phone_queue_max)
        # The node process: events (kind, client, payload) handled by one thread, in order.
        self._work = threading.Condition()
        self._events: collections.deque[tuple[str, Optional[_Client], bytes]] = collections.deque()
        self._hung_until = 0.0
        self._hang_pending = False  # a hang began: regroup its backlog by connection at wake-up
        self._backlog_left = 0  # events of that backlog still to handle
        self._deferring = False  # handling a backlog: packets for the phone wait for its end
        self._timers: Optional[_Timers] = None
        self._outages = 0  # stop_listening()/reboot() calls: the last one listens again

    # --- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> "SimulatedNode":
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def start(self) -> "SimulatedNode":
        self._running = True
        self._timers = _Timers("sim-timers")
        self._spawn(self._node_loop, name="sim-node")
        self._listen()
        return self

    def stop(self) -> None:
        self._running = False
        with self._work:
            self._events.clear()
            self._work.notify_all()
        if self._timers is not None:
            self._timers.stop()
        self._close_listener()
        self.unplug()
        with self._cond:
            sessions = list(self._sessions)
        for client in sessions:
            self._close_client(client, rst=False)
        if self._serial_dir is not None:
            shutil.rmtree(self._serial_dir, ignore_errors=True)
            self._serial_dir = None

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    def _bound_socket(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError:
            sock.close()
            raise
        return sock

    def _listen(self, reserved: Optional[socket.socket] = None) -> None:
        """Listen on the node's port; `reserved` is a socket already bound to it (see
        `stop_listening`), else a new one is bound."""
        listener = reserved if reserved is not None else self._bound_socket()
        listener.listen(8)
        listener.settimeout(0.1)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self.listening_since = time.monotonic()
        self._spawn(self._accept_loop, listener, name="sim-accept")

    def _close_listener(self) -> None:
        listener, self._listener = self._listener, None
        self.listening_since = None
        if listener is not None:
            listener.close()

    def _spawn(self, target: Callable[..., None], *args: object, name: str) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        self._threads = [t for t in self._threads if t.is_alive()]
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self, listener: socket.socket) -> None:
        # The kernel's part: it accepts even while the node process is hung.
        while self._running and self._listener is listener:
            try:
                sock, _ = listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            client = self._new_client(_SocketTransport(sock))
            self._spawn(self._serve, client, name=f"sim-client-{client.number}")

    def _new_client(self, transport: _Transport) -> _Client:
        """A connection arrived; the node process makes it the one client when it gets to it."""
        with self._cond:
            self.counters.connections += 1
            client = _Client(transport, self.counters.connections)
            client.silent = time.monotonic() < self._silent_until
            self._sessions.append(client)
        if self.link_delay_s or self.link_jitter_s:
            seed = self._link_rng.getrandbits(32)
            client.inbound = _DelayLine(
                self.link_delay_s, self.link_jitter_s, random.Random(seed), self._post, f"sim-in-{client.number}"
            )
            client.outbound = _DelayLine(
                self.link_delay_s, self.link_jitter_s, random.Random(seed + 1),
                lambda data, c=client: self._delivered(c, data), f"sim-out-{client.number}",
            )
        self._post(("accept", client, b""))
        return client

    def _arrive(self, client: _Client, kind: str, payload: bytes) -> None:
        """A frame (or the EOF) the client sent: to the node process, over the link's delay."""
        event = (kind, client, payload)
        if client.inbound is not None:
            client.inbound.put(event)
        else:
            self._post(event)

    def _post(self, event: tuple[str, Optional[_Client], bytes]) -> None:
        with self._work:
            self._events.append(event)
            self._work.notify()

    def _hung(self) -> bool:
        return time.monotonic() < self._hung_until

    def _node_loop(self) -> None:
        """The firmware's main loop: one event at a time, none while hung."""
        while True:
            with self._work:
                while self._running and (not self._events or self._hung()):
                    self._work.wait(max(0.001, self._hung_until - time.monotonic()) if self._hung() else None)
                if not self._running:
                    return
                if self._hang_pending:
                    # Waking up, the firmware serves the connections in the order they were
                    # accepted, each with all it sent meanwhile (stable sort: the current
                    # client first), then hands the still-connected client what it queued.
                    self._hang_pending = False
                    backlog = sorted(self._events, key=lambda e: e[1].number if e[1] is not None else 0)
                    backlog.append(("flush", None, b""))
                    self._events.clear()
                    self._events.extend(backlog)
                    self._backlog_left = len(backlog)
                kind, client, payload = self._events.popleft()
                in_backlog = self._backlog_left > 0
                batch_ends = later_waiting = False
                if in_backlog:
                    self._backlog_left -= 1
                    batch_ends = self._backlog_left == 0 or self._events[0][1] is not client
                    if batch_ends:
                        later_waiting = any(
                            e[0] == "accept" for e in itertools.islice(self._events, 0, self._backlog_left)
                        )
            # A backlog is read a connection at a time before anything for the phone is
            # written to it (StreamAPI reads all it has, then writes). Its EOF is noticed only
            # after that: measured on meshtasticd 2.7.13, a connection the client had already
            # abandoned (want_config sent, then closed) was served its handshake and handed
            # the packet kept for the phone ("phone downloaded packet"), lost with it. A
            # `disconnect` frame, in contrast, ends the session when it is read.
            self._deferring = in_backlog
            late_eof = in_backlog and kind == "eof"
            try:
                if not late_eof:
                    self._process(kind, client, payload)
                if batch_ends:
                    self._deferring = False
                    self._end_batch(client, later_waiting)
                if late_eof:
                    self._process(kind, client, payload)
            except Exception:  # the simulated node must survive its own bugs to report them
                log.exception("simulated node failed on a %s event", kind)
            finally:
                self._deferring = False

    def _end_batch(self, client: Optional[_Client], later_waiting: bool) -> None:
        """After a connection's backlog: what the node kept for the phone, then the
        queueStatus a handshake in that backlog still owes. A connection that made no
        handshake in its backlog, with a newer one waiting to replace it, gets nothing:
        the packets stay for the newer one. One that did gets them, even if its client
        has gone meanwhile (its EOF is handled after this)."""
        with self._phone_lock:
            handshook = client is not None and client.handshake_in_backlog
            if client is not None:
                client.handshake_in_backlog = False
            if handshook or not later_waiting:
                self._flush_phone_queue()
            if client is not None and client.status_due:
                client.status_due = False
                if client is self._client:
                    self._send(client, self._queue_status(0, 0))

    def _process(self, kind: str, client: Optional[_Client], payload: bytes) -> None:
        if kind == "flush":
            self._flush_phone_queue()
            return
        assert client is not None
        if client.closed:
            return  # force-closed meanwhile: what it sent is lost with the PhoneAPI object
        if kind == "accept":
            with self._cond:
                previous = self._client
                self._client = client
                self._cond.notify_all()
            if previous is not None and previous is not client:
                # The firmware's one-client rule: "Force close previous TCP connection".
                self._close_client(previous, rst=False)
        elif kind == "eof":
            self._close_client(client, rst=False)
        elif not client.silent:  # silent: a hung connection reads and does nothing
            self._handle(client, payload)

    # --- the protocol -------------------------------------------------------------------------
    def _serve(self, client: _Client, first: bytes = b"") -> None:
        """Read one client's frames until it is gone (either transport); the node process handles them."""
        buf = bytearray()
        data = first
        try:
            while not client.closed:
                if data:
                    buf += data
                    while True:
                        payload = self._next_frame(buf)
                        if payload is None:
                            break
                        self._arrive(client, "frame", payload)
                data = client.transport.recv()
                if not data:
                    break
        finally:
            self._arrive(client, "eof", b"")

    @staticmethod
    def _next_frame(buf: bytearray) -> Optional[bytes]:
        """Pop one frame's payload from buf; drop bytes that cannot start a frame."""
        while buf:
            if buf[0] != START1:
                del buf[0]
                continue
            if len(buf) < 2:
                return None
            if buf[1] != START2:
                del buf[0]
                continue
            if len(buf) < 4:
                return None
            length = (buf[2] << 8) | buf[3]
            if length > MAX_FRAME:
                del buf[0]
                continue
            if len(buf) < 4 + length:
                return None
            payload = bytes(buf[4 : 4 + length])
            del buf[: 4 + length]
            return payload
        return None

    def _handle(self, client: _Client, payload: bytes) -> None:
        to_radio = mesh_pb2.ToRadio()
        try:
            to_radio.ParseFromString(payload)
        except DecodeError:
            return
        kind = to_radio.WhichOneof("payload_variant")
        if kind == "want_config_id":
            self._send_config(client, to_radio.want_config_id)
        elif kind == "heartbeat":
            self.counters.heartbeats += 1
            if not self.old_firmware:
                self._send(client, self._queue_status(0, 0))
        elif kind == "packet":
            self._handle_packet(client, to_radio.packet)
        elif kind == "disconnect":
            self._close_client(client, rst=False)
        elif kind == "xmodemPacket":
            self.counters.xmodem_frames += 1
            self._send(client, self._from_radio(xmodemPacket=self.secrets.xmodem_answer(to_radio.xmodemPacket)))
        elif kind == "mqttClientProxyMessage":
            self.counters.mqtt_proxy_frames += 1  # a message "from the broker": nothing to answer

    def mqtt_proxy_publish(self, topic: str, data: bytes) -> bool:
        """What a node with `mqtt.proxy_to_client_enabled` hands its client to publish."""
        message = mesh_pb2.MqttClientProxyMessage(topic=topic, data=data)
        return self._to_phone([self._from_radio(mqttClientProxyMessage=message)])

    def _handle_packet(self, client: _Client, packet: mesh_pb2.MeshPacket) -> None:
        self.counters.packets += 1
        # meshtasticd --sim skips this check (PhoneAPI::handleToRadioPacket, ARCH_PORTDUINO).
        if packet.id and not self.sim_echo:
            if packet.id in client.seen_ids:
                self.counters.ignored_repeats += 1
                return  # PhoneAPI::wasSeenRecently: ignored, no answer at all
            client.seen_ids.append(packet.id)
        decoded = packet.decoded
        if decoded.portnum == portnums_pb2.PortNum.ADMIN_APP and packet.to == self.node_num:
            self._answer_admin(client, packet)
            return
        now = time.monotonic()
        if decoded.portnum == _TEXT:
            limit = self.text_rate_limit_s
            if limit and client.last_text_at is not None and now - client.last_text_at < limit:
                # 2.7.x: a queueStatus res 0 that does not count the packet, and a NAK sent
                # to p.from = 0, out on the air: the client never sees it.
                self.counters.rate_limited += 1
                self.refused.append(packet.id)
                if not self.old_firmware:
                    self._send(client, self._queue_status(packet.id, 0))
                if self.rate_limit_nak:
                    self._to_phone([self._routing_packet(packet.id, mesh_pb2.Routing.Error.RATE_LIMIT_EXCEEDED)])
                return
            # Stamped once the text passed PhoneAPI's checks, whatever the router does next.
            client.last_text_at = now
        with self._cond:
            res = self._reject_next.pop(0) if decoded.portnum == _TEXT and self._reject_next else 0
        if res:
            self.counters.rejected += 1
            if not self.old_firmware:
                self._send(client, self._queue_status(packet.id, res))
            return
        if not self._take_slot(packet):
            self.counters.queue_full += 1
            if not self.old_firmware:
                self._send(client, self._queue_status(packet.id, _ERRNO_UNKNOWN))
            return
        if not self.old_firmware:
            self._send(client, self._queue_status(packet.id, 0))
        if decoded.portnum != _TEXT:
            return
        # Recorded once its status is on the wire: an observer never sees a text
        # the client has not been told about.
        sent = SentText(
            id=packet.id,
            to=packet.to,
            channel=packet.channel,
            text=decoded.payload.decode("utf-8", "replace"),
            reply_id=decoded.reply_id,
            want_ack=packet.want_ack,
            at=now,
            connection=client.number,
        )
        with self._cond:
            self.texts.append(sent)
            self._cond.notify_all()
        if self.on_text is not None:
            self.on_text(sent)
        with self._cond:
            error = self._routing_error_next.pop(0) if self._routing_error_next else 0
        if error:
            self._to_phone([self._routing_packet(packet.id, error)])
        self._schedule_ack(packet)

    def _schedule_ack(self, packet: mesh_pb2.MeshPacket) -> None:
        """What the mesh answers a sent text: an ACK from the destination, or the node's NAK."""
        dm = packet.to != BROADCAST_NUM
        with self._cond:
            error = self._nak_next.pop(0) if dm and self._nak_next else 0
            boot = self._boot
        if error:
            self._later(self.nak_delay_s, boot, packet.id, error, self.node_num)
        elif not packet.want_ack:
            return
        elif not dm:
            # A neighbour's rebroadcast is the implicit ACK, from the own node.
            self._later(self.ack_delay_s, boot, packet.id, mesh_pb2.Routing.Error.NONE, self.node_num)
        else:
            user = self.users.get(packet.to)
            if user is not None and user.reachable:
                self._later(self.ack_delay_s, boot, packet.id, mesh_pb2.Routing.Error.NONE, user.num)
            else:
                self._later(self.nak_delay_s, boot, packet.id, mesh_pb2.Routing.Error.MAX_RETRANSMIT, self.node_num)

    def _later(self, delay: float, boot: int, request_id: int, error: int, sender: int) -> None:
        def answer() -> None:
            if self._boot == boot:  # a reboot forgets the packets it was waiting on
                self._to_phone([self._routing_packet(request_id, error, sender=sender)])

        if self._timers is not None:
            self._timers.call_later(delay, answer)

    # --- the TX queue ---------------------------------------------------------------------------
    def _take_slot(self, packet: mesh_pb2.MeshPacket) -> bool:
        """Queue a packet for the air; False when the 16 slots are taken (the router's refusal)."""
        if self.tx_time_s <= 0 and not self.sim_echo:
            return True  # an instant radio: the slot is free again before the queueStatus
        with self._cond:
            if self._tx_used >= _TX_QUEUE:
                return False
            self._tx_used += 1
            boot = self._boot
        if self._timers is not None:
            self._timers.call_later(self.tx_time_s, lambda: self._transmitted(packet, boot))
        return True

    def _transmitted(self, packet: mesh_pb2.MeshPacket, boot: int) -> None:
        with self._cond:
            if boot != self._boot:
                return  # the reboot emptied the queue already
            self._tx_used -= 1
        if not self.sim_echo:
            return
        # meshtasticd --sim: the packet the simulated radio "sent", wrapped as SIMULATOR_APP,
        # and a second queueStatus about it.
        echo = mesh_pb2.MeshPacket()
        echo.CopyFrom(packet)
        setattr(echo, "from", self.node_num)
        wrapped = mesh_pb2.Compressed(portnum=packet.decoded.portnum, data=packet.decoded.payload)
        echo.decoded.portnum = portnums_pb2.PortNum.SIMULATOR_APP
        echo.decoded.payload = wrapped.SerializeToString()
        self._to_phone([self._from_radio(packet=echo)])
        client = self._client
        if client is not None and client.configured and not self._hung():
            self._send(client, self._queue_status(packet.id, 0))

    @property
    def tx_free(self) -> int:
        """Free slots of the TX queue now."""
        return _TX_QUEUE - self._tx_used

    def _answer_admin(self, client: _Client, packet: mesh_pb2.MeshPacket) -> None:
        request = admin_pb2.AdminMessage()
        try:
            request.ParseFromString(packet.decoded.payload)
        except DecodeError:
            return
        if not self.old_firmware:
            self._send(client, self._queue_status(packet.id, 0))
        answer = self.secrets.admin_answer(request)
        if request.get_device_metadata_request:
            self.counters.metadata_requests += 1
            answer = admin_pb2.AdminMessage(get_device_metadata_response=self._metadata())
        if answer is not None:
            reply = mesh_pb2.MeshPacket(to=self.node_num, id=self._new_packet_id(), channel=0)
            setattr(reply, "from", self.node_num)
            reply.decoded.portnum = portnums_pb2.PortNum.ADMIN_APP
            reply.decoded.payload = answer.SerializeToString()
            reply.decoded.request_id = packet.id
            self._to_phone([self._from_radio(packet=reply)])

    def _queue_status(self, packet_id: int, res: int) -> mesh_pb2.FromRadio:
        status = mesh_pb2.QueueStatus(res=res, free=self.tx_free, maxlen=_TX_QUEUE, mesh_packet_id=packet_id)
        return self._from_radio(queueStatus=status)

    def _routing_packet(self, request_id: int, error: int, *, sender: Optional[int] = None) -> mesh_pb2.FromRadio:
        """A ROUTING_APP packet about `request_id`: from the own node unless `sender` is a user's."""
        packet = mesh_pb2.MeshPacket(to=self.node_num, id=self._new_packet_id(), channel=0)
        setattr(packet, "from", self.node_num if sender is None else sender)
        if self.has_time:
            packet.rx_time = int(time.time())
        packet.decoded.portnum = portnums_pb2.PortNum.ROUTING_APP
        packet.decoded.payload = mesh_pb2.Routing(error_reason=error).SerializeToString()  # type: ignore[arg-type]
        packet.decoded.request_id = request_id
        return self._from_radio(packet=packet)

    def _from_radio(self, **fields: object) -> mesh_pb2.FromRadio:
        return mesh_pb2.FromRadio(id=next(self._from_radio_ids), **fields)  # type: ignore[arg-type]

    def _new_packet_id(self) -> int:
        return self._packet_ids.randint(1, 0xFFFFFFFF)

    # --- the config handshake ------------------------------------------------------------------
    def _metadata(self) -> mesh_pb2.DeviceMetadata:
        return mesh_pb2.DeviceMetadata(
            firmware_version=self.firmware_version, device_state_version=24, hasWifi=True, hasPKC=True
        )

    def _node_info(self, user: SimUser) -> mesh_pb2.NodeInfo:
        info = mesh_pb2.NodeInfo(
            num=user.num,
            user=mesh_pb2.User(id=user.node_id, long_name=user.long_name or user.short_name, short_name=user.short_name),
            snr=user.snr,
            # A node without time (no GPS, no NTP, no phone that set it) stamps 0.
            last_heard=int(time.time()) - 60 if self.has_time else 0,
            hops_away=user.hops_away,
        )
        if user.position is not None:
            info.position.latitude_i = int(user.position[0] * 1e7)
            info.position.longitude_i = int(user.position[1] * 1e7)
        return info

    def _config_frames(self, nonce: int) -> list[mesh_pb2.FromRadio]:
        own = SimUser(self.node_num, self.short_name, self.long_name)
        frames = []
        if nonce != NODES_ONLY_NONCE:
            my_info = mesh_pb2.MyNodeInfo(
                my_node_num=self.node_num, reboot_count=self.reboot_count, min_app_version=30200, nodedb_count=len(self.users) + 1
            )
            frames.append(self._from_radio(my_info=my_info))
            frames.append(self._from_radio(metadata=self._metadata()))
        frames.append(self._from_radio(node_info=self._node_info(own)))
        if nonce != NODES_ONLY_NONCE:
            for index in range(8):  # whole, PSKs included, as the firmware sends them
                frames.append(self._from_radio(channel=self.secrets.channel(index)))
            lora = config_pb2.Config.LoRaConfig(
                use_preset=True,
                modem_preset=config_pb2.Config.LoRaConfig.ModemPreset.Value(self.modem_preset),
                region=config_pb2.Config.LoRaConfig.RegionCode.EU_868,
                hop_limit=3,
                tx_enabled=True,
            )
            for config in (
                config_pb2.Config(device=config_pb2.Config.DeviceConfig()),
                config_pb2.Config(position=config_pb2.Config.PositionConfig()),
                config_pb2.Config(lora=lora),
                *self.secrets.configs(),  # network, bluetooth, security: with their secrets
            ):
                frames.append(self._from_radio(config=config))
            frames.append(self._from_radio(moduleConfig=self.secrets.mqtt()))
        if nonce != NODELESS_NONCE:
            frames.extend(self._from_radio(node_info=self._node_info(u)) for u in self.users.values() if u.in_db)
        frames.append(self._from_radio(config_complete_id=nonce))
        return frames

    def _send_config(self, client: _Client, nonce: int) -> None:
        with self._phone_lock:
            self._send_many(client, self._config_frames(nonce))
            client.configured = True
            if self._deferring:
                client.handshake_in_backlog = True
                client.status_due = self.status_after_handshake and not self.old_firmware
            else:
                # Right after config_complete_id: what the node kept for the phone meanwhile.
                self._flush_phone_queue()
                if self.status_after_handshake and not self.old_firmware:
                    self._send(client, self._queue_status(0, 0))
        with self._cond:
            self.handshake_at = time.monotonic()
            self.counters.handshakes += 1
            self._cond.notify_all()

    # --- writing -----------------------------------------------------------------------------
    def _send(self, client: _Client, message: mesh_pb2.FromRadio) -> bool:
        return self._write(client, frame(message))

    def _send_many(self, client: _Client, messages: list[mesh_pb2.FromRadio]) -> bool:
        return self._write(client, b"".join(frame(m) for m in messages))

    def _write(self, client: _Client, data: bytes) -> bool:
        if client.closed or client.silent:
            return False
        if client.outbound is not None:
            client.outbound.put(data)
            return True
        return self._write_now(client, data)

    def _delivered(self, client: _Client, data: object) -> None:
        """The outbound delay line's end: the bytes reach the client (or the FIN does)."""
        if data is _CLOSE:
            assert client.outbound is not None
            client.outbound.close()
            client.transport.close(rst=False)
        else:
            assert isinstance(data, bytes)
            self._write_now(client, data, closing=True)

    def _write_now(self, client: _Client, data: bytes, *, closing: bool = False) -> bool:
        if client.closed and not closing:
            return False
        with client.write_lock:
            try:
                client.transport.send(data)
                return True
            except OSError:
                return False

    def _phone_client(self) -> Optional[_Client]:
        """The client packets for the phone can be written to now, if any."""
        client = self._client
        if client is None or not client.configured or client.closed or client.silent or self._hung() or self._deferring:
            return None
        return client

    def _to_phone(self, messages: list[mesh_pb2.FromRadio]) -> bool:
        """Write to the client now (True) or keep for the next one (False), as MeshService does."""
        with self._phone_lock:
            client = self._phone_client()
            if client is not None and not self._phone_queue and self._send_many(client, messages):
                self._record_handed(messages)
                return True
            for message in messages:
                if len(self._phone_queue) == self._phone_queue.maxlen:
                    self.counters.phone_queue_dropped += 1  # the oldest goes
                self._phone_queue.append(message)
            if client is None:
                return False
            self._flush_phone_queue()  # behind older queued packets: keep the order
            return not self._phone_queue

    def _flush_phone_queue(self) -> None:
        with self._phone_lock:
            client = self._phone_client()
            if client is None or not self._phone_queue:
                return
            queued = list(self._phone_queue)
            self._phone_queue.clear()
            if self._send_many(client, queued):
                self._record_handed(queued)

    def _record_handed(self, messages: list[mesh_pb2.FromRadio]) -> None:
        for message in messages:
            if message.HasField("packet"):
                self.handed.append(message.packet.id)
                if self.on_handed is not None:
                    self.on_handed(message.packet.id)

    @property
    def phone_queue(self) -> list[mesh_pb2.FromRadio]:
        """What the node keeps for the next client (a copy)."""
        with self._phone_lock:
            return list(self._phone_queue)

    def _close_client(self, client: _Client, *, rst: bool) -> None:
        with self._cond:
            if client.closed:
                return
            client.closed = True
            if self._client is client:
                self._client = None
            if client in self._sessions:
                self._sessions.remove(client)
            self._cond.notify_all()
        if client.inbound is not None:
            client.inbound.close()  # frames still on the way are never processed
        if client.outbound is not None and not rst:
            # A FIN follows the bytes already on their way; a reset overtakes them.
            client.outbound.put(_CLOSE)
            return
        if client.outbound is not None:
            client.outbound.close()
        client.transport.close(rst=rst)

    # --- the serial line ------------------------------------------------------------------------
    def attach_serial(self, *, plugged: bool = True) -> str:
        """Serve the protocol on a serial device too; return its stable path.

        The path is a symlink in a temporary directory (as /dev/serial/by-id/... names a
        USB device whatever /dev/ttyUSBn it gets), re-pointed to a new pseudo-terminal
        by every `plug_back()`. `plugged=False`: the device appears only at `plug_back()`.
        """
        if self.serial_path is None:
            self._serial_dir = tempfile.mkdtemp(prefix="meshbot-sim-")
            self.serial_path = os.path.join(self._serial_dir, "usb-Meshtastic_simulated_node-if00")
        if plugged:
            self.plug_back()
        return self.serial_path

    def plug_back(self) -> None:
        """Plug the device in (again): a new pty pair, behind the same path."""
        if self.serial_path is None:
            raise RuntimeError("attach_serial() first")
        self.unplug()
        port = _SerialPort()
        staged = self.serial_path + ".new"
        os.symlink(port.device, staged)
        os.replace(staged, self.serial_path)  # atomic: the path never names a dead device
        self._serial_port = port
        port.thread = threading.Thread(target=self._serve_serial, args=(port,), name="sim-serial", daemon=True)
        self._threads = [t for t in self._threads if t.is_alive()]
        self._threads.append(port.thread)
        port.thread.start()

    def unplug(self) -> None:
        """Yank the USB cable: the device path vanishes and the bot's reads and writes fail."""
        port, self._serial_port = self._serial_port, None
        if port is None:
            return
        if self.serial_path is not None and os.path.islink(self.serial_path):
            os.unlink(self.serial_path)
        port.unplug()
        # The serving thread closes the node's end; once it has, the bot's side is hung up.
        if port.thread is not None and port.thread is not threading.current_thread():
            port.thread.join(5.0)

    def _serve_serial(self, port: _SerialPort) -> None:
        """One session per open of the device by the bot, until unplugged."""
        try:
            while True:
                first = port.recv(until_opened=True)
                if first is None:
                    return
                self._serve(self._new_client(_SerialSession(port)), first)
        finally:
            port.close()

    # --- the simulated mesh ------------------------------------------------------------------------
    def add_user(self, user: SimUser) -> SimUser:
        self.users[user.num] = user
        return user

    def user_packet(
        self,
        user: SimUser | int,
        text: str | bytes,
        *,
        channel: int = 0,
        dm: bool = False,
        pki: bool = False,
        public_key: bytes = b"",
        via_mqtt: bool = False,
        hops: int = 0,
        snr: float = 7.5,
        rssi: int = -71,
        packet_id: Optional[int] = None,
    ) -> mesh_pb2.MeshPacket:
        """The MeshPacket a user's text arrives as (build it once, deliver it many times)."""
        num = user.num if isinstance(user, SimUser) else user
        packet = mesh_pb2.MeshPacket(
            to=self.node_num if dm else BROADCAST_NUM,
            channel=channel,
            id=packet_id or self._new_packet_id(),
            rx_time=int(time.time()) if self.has_time else 0,  # a node without time stamps 0
            rx_snr=snr,
            rx_rssi=rssi,
            hop_start=3,
            hop_limit=3 - hops,
            via_mqtt=via_mqtt,
            pki_encrypted=pki,
            public_key=public_key,  # the firmware copies in the sender's key after a PKI decrypt
        )
        setattr(packet, "from", num)
        packet.decoded.portnum = _TEXT
        packet.decoded.payload = text.encode("utf-8") if isinstance(text, str) else text
        return packet

    def deliver(self, packet: mesh_pb2.MeshPacket) -> bool:
        """Hand a received mesh packet to the client: True if written now, False if the node
        keeps it for the next client that finishes its handshake (see `handed`)."""
        return self._to_phone([self._from_radio(packet=packet)])

    def deliver_many(self, packets: list[mesh_pb2.MeshPacket]) -> bool:
        return self._to_phone([self._from_radio(packet=p) for p in packets])

    def user_text(self, user: SimUser | int, text: str | bytes, **kwargs: object) -> int:
        """A user sends a text; returns its packet id. With no client it waits in the node."""
        packet = self.user_packet(user, text, **kwargs)  # type: ignore[arg-type]
        self.deliver(packet)
        return packet.id

    def garbage_frames(self, count: int, payload: bytes = b"\xff\xff\xff\xff") -> bool:
        """`count` well-framed frames whose payload is no FromRadio (serial noise, a firmware bug)."""
        client = self._client
        data = (bytes((START1, START2)) + struct.pack(">H", len(payload)) + payload) * count
        return client is not None and client.configured and self._write(client, data)

    def notify_client(self, level: int, message: str) -> bool:
        """A `clientNotification` (level from mesh_pb2.LogRecord.Level), as the firmware sends
        for a refused traceroute; kept for the next client like a packet."""
        notification = mesh_pb2.ClientNotification(level=level, message=message)  # type: ignore[arg-type]
        if self.has_time:
            notification.time = int(time.time())
        return self._to_phone([self._from_radio(clientNotification=notification)])

    def log_line(self, text: str) -> None:
        """Debug log text outside any frame, as a node's serial console interleaves it."""
        client = self._client
        if client is not None and not self._hung():  # a hung node prints nothing either
            self._write(client, text.encode("utf-8") + b"\r\n")

    def noise(self, data: bytes) -> bool:
        """Raw bytes outside any frame (a console line that never ends, a wrong baud rate, a
        port that is not quite a node). False if no client is connected."""
        client = self._client
        return client is not None and client.configured and self._write(client, data)

    def send_telemetry(self, channel_utilization: float, air_util_tx: float) -> bool:
        """The node reports its own DeviceMetrics to the client, as the firmware's
        DeviceTelemetryModule does once a minute: a TELEMETRY_APP packet from the node's
        own number. False if no client is connected."""
        from meshtastic.protobuf import telemetry_pb2  # only this method needs it

        metrics = telemetry_pb2.DeviceMetrics(
            channel_utilization=channel_utilization, air_util_tx=air_util_tx, battery_level=101, uptime_seconds=3600
        )
        telemetry = telemetry_pb2.Telemetry(time=int(time.time()), device_metrics=metrics)
        packet = mesh_pb2.MeshPacket(to=BROADCAST_NUM, id=self._new_packet_id(), channel=0)
        setattr(packet, "from", self.node_num)
        packet.decoded.portnum = portnums_pb2.PortNum.TELEMETRY_APP
        packet.decoded.payload = telemetry.SerializeToString()
        return self.deliver(packet)

    # --- observing -------------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        client = self._client
        return client is not None and client.configured

    def wait_connected(self, timeout: float, *, handshakes: int = 1) -> bool:
        """Wait until `handshakes` config handshakes have completed in all, and a client is up."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not (self.counters.handshakes >= handshakes and self._client is not None and self._client.configured):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def wait_texts(self, count: int, timeout: float) -> list[SentText]:
        """Wait until the node has accepted `count` texts in all; return them all."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.texts) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            return list(self.texts)

    # --- faults ---------------------------------------------------------------------------------
    def drop(self, *, rst: bool = False) -> None:
        """Close the client's connection: a FIN, or with rst=True a reset. Over serial,
        where a node cannot close the line, the device is unplugged (plug_back() it)."""
        client = self._client
        if client is None:
            return
        if isinstance(client.transport, _SerialSession):
            self.unplug()
        else:
            self._close_client(client, rst=rst)

    def stop_listening(self, seconds: float) -> None:
        """Drop the client (reset), refuse connections for `seconds`, then listen again.
        The node keeps its state (see `reboot()` for a real reboot)."""
        self._close_listener()
        # The port stays bound, not listening, meanwhile: connections are refused as by a
        # node that is down, and no other socket (another test's ephemeral source port on a
        # busy machine) can take the port before the node listens again.
        reserved: Optional[socket.socket]
        try:
            reserved = self._bound_socket()
        except OSError:
            reserved = None  # taken in the instant between close and bind: retried below
        self.drop(rst=True)
        with self._cond:
            self._outages += 1
            outage = self._outages

        def relisten() -> None:
            time.sleep(seconds)
            # Only the latest outage opens the port again (two overlapping ones would bind twice).
            if not (self._running and self._outages == outage):
                if reserved is not None:
                    reserved.close()
                return
            deadline = time.monotonic() + 30.0
            while True:
                try:
                    self._listen(reserved)
                    return
                except OSError:
                    if time.monotonic() > deadline or not self._running:
                        raise
                    time.sleep(0.05)

        self._spawn(relisten, name="sim-relisten")

    def reboot(self, seconds: float) -> None:
        """The node reboots: every connection reset, connections refused for `seconds`,
        `reboot_count` one higher, TX queue and phone queue gone, pending ACKs forgotten.
        No `rebooted` frame: none came before the close on the real node."""
        with self._cond:
            self._boot += 1
            self._tx_used = 0
            self.reboot_count += 1
            self._nak_next.clear()
            sessions = list(self._sessions)
        with self._phone_lock:
            self._phone_queue.clear()
        with self._work:
            self._hung_until = 0.0  # a reboot ends a hang
            self._events.clear()
            self._work.notify_all()
        self.stop_listening(seconds)
        for client in sessions:
            if not isinstance(client.transport, _SerialSession):
                self._close_client(client, rst=True)

    def hang(self, seconds: float) -> None:
        """The node's process stops for `seconds`: nothing is read or answered on any
        connection, packets for the client are kept, the kernel still accepts connections.
        Then the node serves the connections in the order they were accepted, each one's
        backlog read before anything is written to it (see `_node_loop`): a new connection
        becomes the client (the previous one is force-closed) and, once its handshake is
        done, gets the kept packets; the connection it had before the hang gets them only
        if it is still open after its backlog and no newer connection is waiting."""
        with self._work:
            self._hung_until = time.monotonic() + seconds
            self._hang_pending = True
            self._work.notify_all()

    @property
    def hung(self) -> bool:
        return self._hung()

    def stall(self) -> None:
        """Over serial: the node stops reading the line (a wedged USB device). What the bot
        writes fills the kernel's buffers (some 20 KB for a pty), then its writes block."""
        port = self._serial_port
        if port is None:
            raise RuntimeError("stall() is a serial fault: attach_serial() and plug the device first")
        port.stall()

    def go_silent(self, seconds: Optional[float] = None) -> None:
        """The current connection hangs: socket open, nothing read or answered, ever.

        With `seconds`, the node stays hung that long: connections opened meanwhile are
        accepted but never answered (a wedged firmware behind a live Wi-Fi stack).
        """
        if seconds is not None:
            self._silent_until = time.monotonic() + seconds
        client = self._client
        if client is not None:
            client.silent = True

    def routing_error_next(self, error: int) -> None:
        """The next accepted text is followed by a ROUTING_APP error naming it (e.g. DUTY_CYCLE_LIMIT)."""
        with self._cond:
            self._routing_error_next.append(error)

    def nak_next(self, error: int = mesh_pb2.Routing.Error.MAX_RETRANSMIT) -> None:
        """The next DM the node accepts fails: a ROUTING_APP from the node with `error`
        (e.g. NO_RESPONSE, PKI_FAILED) after `nak_delay_s`, whatever its want_ack."""
        with self._cond:
            self._nak_next.append(error)

    def reject_next(self, count: int = 1, res: int = 32) -> None:
        """The next `count` texts get a queueStatus with this non-zero res."""
        with self._cond:
            self._reject_next.extend([res] * count)
