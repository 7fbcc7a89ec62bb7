"""A simulated Meshtastic node on 127.0.0.1, for tests, benchmarks and `--demo`.

It speaks the node's real stream protocol (0x94 0xC3, 16-bit length, protobuf) with the
real `ToRadio`/`FromRadio` messages, over TCP or over a serial line (a pseudo-terminal
pair standing in for the USB cable, see `attach_serial()`), and reproduces what the
firmware does that the bot must survive:

* the config handshake: my_info, metadata, own node_info, 8 channels, config and
  module config, the other node_infos, config_complete_id (nonce 69420: no nodes);
* a `queueStatus` for every packet and every heartbeat (unless `old_firmware`);
* one TCP client at a time: a new client closes the previous one;
* the 2 s text rate limit, answered by a queueStatus (res 0) and a ROUTING_APP
  RATE_LIMIT_EXCEEDED naming the dropped packet; ids seen among the client's last 20
  packets are ignored silently;
* simulated mesh users sending texts on channels or by DM;
* fault switches: drop (FIN or RST), stop listening for a while, go silent with the
  socket open, reject the next packets; over serial, unplug and plug back the device,
  or stop reading it.

One client is served at a time, whichever transport it came by.
"""

from __future__ import annotations

import collections
import errno
import logging
import os
import random
import select
import shutil
import socket
import struct
import tempfile
import threading
import time
import tty
from dataclasses import dataclass, field
from typing import Callable, Optional, Protocol

from google.protobuf.message import DecodeError
from meshtastic import BROADCAST_NUM
from meshtastic.protobuf import admin_pb2, channel_pb2, config_pb2, mesh_pb2, module_config_pb2, portnums_pb2

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


class _Client:
    """One client session: an accepted TCP connection, or one open of the serial device."""

    def __init__(self, transport: _Transport, number: int) -> None:
        self.transport = transport
        self.number = number
        self.write_lock = threading.Lock()
        self.seen_ids: collections.deque[int] = collections.deque(maxlen=_SEEN_IDS)
        self.last_text_at: Optional[float] = None
        self.silent = False
        self.closed = False
        self.configured = False


@dataclass
class NodeCounters:
    connections: int = 0
    handshakes: int = 0
    heartbeats: int = 0
    packets: int = 0
    rate_limited: int = 0
    rejected: int = 0
    ignored_repeats: int = 0
    metadata_requests: int = 0


class SimulatedNode:
    """The node's TCP API (and its serial API after `attach_serial()`), in threads of this
    process. Use start()/stop() or `with`."""

    def __init__(
        self,
        *,
        port: int = 0,
        node_num: int = 0x5EED0B07,
        short_name: str = "BOT",
        long_name: str = "meshbot (simulated node)",
        users: tuple[SimUser, ...] = DEFAULT_USERS,
        modem_preset: str = "LONG_FAST",
        text_rate_limit_s: Optional[float] = 2.0,
        old_firmware: bool = False,
    ) -> None:
        self.host = "127.0.0.1"
        self.port = port
        self.node_num = node_num
        self.short_name = short_name
        self.long_name = long_name
        self.users: dict[int, SimUser] = {u.num: u for u in users}
        self.modem_preset = modem_preset
        self.text_rate_limit_s = text_rate_limit_s
        self.old_firmware = old_firmware
        self.counters = NodeCounters()
        self.texts: list[SentText] = []
        self.on_text: Optional[Callable[[SentText], None]] = None
        self._cond = threading.Condition()
        self._listener: Optional[socket.socket] = None
        self._client: Optional[_Client] = None
        self._running = False
        self._reject_next: list[int] = []
        self._silent_until = 0.0  # go_silent(seconds): connections until then are hung too
        self._routing_error_next: list[int] = []
        self._packet_ids = random.Random(4403)
        self._from_radio_id = 0
        self._threads: list[threading.Thread] = []
        self._serial_port: Optional[_SerialPort] = None
        self._serial_dir: Optional[str] = None
        self.serial_path: Optional[str] = None  # the stable device path, once attach_serial() ran
        self.listening_since: Optional[float] = None  # monotonic; None while not listening
        self.handshake_at: Optional[float] = None  # when the last config handshake was sent

    # --- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> "SimulatedNode":
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def start(self) -> "SimulatedNode":
        self._running = True
        self._listen()
        return self

    def stop(self) -> None:
        self._running = False
        self._close_listener()
        self.unplug()
        with self._cond:
            client = self._client
        if client:
            self._close_client(client, rst=False)
        if self._serial_dir is not None:
            shutil.rmtree(self._serial_dir, ignore_errors=True)
            self._serial_dir = None

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    def _listen(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, self.port))
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
        """Make this the one client; the previous one is closed."""
        with self._cond:
            previous = self._client
            self.counters.connections += 1
            client = _Client(transport, self.counters.connections)
            client.silent = time.monotonic() < self._silent_until
            self._client = client
            self._cond.notify_all()
        if previous is not None:
            # The firmware's one-client rule: "Force close previous TCP connection".
            self._close_client(previous, rst=False)
        return client

    # --- the protocol -------------------------------------------------------------------------
    def _serve(self, client: _Client, first: bytes = b"") -> None:
        """Parse and answer one client's frames until it is gone (either transport)."""
        buf = bytearray()
        data = first
        try:
            while not client.closed:
                if data and not client.silent:  # silent: a hung node reads and does nothing
                    buf += data
                    while True:
                        payload = self._next_frame(buf)
                        if payload is None:
                            break
                        self._handle(client, payload)
                data = client.transport.recv()
                if not data:
                    break
        finally:
            self._close_client(client, rst=False)

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

    def _handle_packet(self, client: _Client, packet: mesh_pb2.MeshPacket) -> None:
        self.counters.packets += 1
        if packet.id and packet.id in client.seen_ids:
            self.counters.ignored_repeats += 1
            return  # PhoneAPI::wasSeenRecently: ignored, no answer at all
        client.seen_ids.append(packet.id)
        decoded = packet.decoded
        if decoded.portnum == portnums_pb2.PortNum.ADMIN_APP and packet.to == self.node_num:
            self._answer_admin(client, packet)
            return
        if decoded.portnum == _TEXT:
            now = time.monotonic()
            limit = self.text_rate_limit_s
            if limit and client.last_text_at is not None and now - client.last_text_at < limit:
                self.counters.rate_limited += 1
                if not self.old_firmware:
                    self._send(client, self._queue_status(packet.id, 0))
                self._send(client, self._routing_error(packet.id, mesh_pb2.Routing.Error.RATE_LIMIT_EXCEEDED))
                return
            with self._cond:
                res = self._reject_next.pop(0) if self._reject_next else 0
            if res:
                self.counters.rejected += 1
                if not self.old_firmware:
                    self._send(client, self._queue_status(packet.id, res))
                return
            client.last_text_at = now
            if not self.old_firmware:
                self._send(client, self._queue_status(packet.id, 0))
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
                self._send(client, self._routing_error(packet.id, error))
            return
        if not self.old_firmware:
            self._send(client, self._queue_status(packet.id, 0))

    def _answer_admin(self, client: _Client, packet: mesh_pb2.MeshPacket) -> None:
        request = admin_pb2.AdminMessage()
        try:
            request.ParseFromString(packet.decoded.payload)
        except DecodeError:
            return
        if not self.old_firmware:
            self._send(client, self._queue_status(packet.id, 0))
        if request.get_device_metadata_request:
            self.counters.metadata_requests += 1
            answer = admin_pb2.AdminMessage(get_device_metadata_response=self._metadata())
            reply = mesh_pb2.MeshPacket(to=self.node_num, id=self._new_packet_id(), channel=0)
            setattr(reply, "from", self.node_num)
            reply.decoded.portnum = portnums_pb2.PortNum.ADMIN_APP
            reply.decoded.payload = answer.SerializeToString()
            reply.decoded.request_id = packet.id
            self._send(client, self._from_radio(packet=reply))

    def _queue_status(self, packet_id: int, res: int) -> mesh_pb2.FromRadio:
        status = mesh_pb2.QueueStatus(res=res, free=_TX_QUEUE, maxlen=_TX_QUEUE, mesh_packet_id=packet_id)
        return self._from_radio(queueStatus=status)

    def _routing_error(self, request_id: int, error: int) -> mesh_pb2.FromRadio:
        packet = mesh_pb2.MeshPacket(to=self.node_num, id=self._new_packet_id(), channel=0)
        setattr(packet, "from", self.node_num)
        packet.decoded.portnum = portnums_pb2.PortNum.ROUTING_APP
        packet.decoded.payload = mesh_pb2.Routing(error_reason=error).SerializeToString()
        packet.decoded.request_id = request_id
        return self._from_radio(packet=packet)

    def _from_radio(self, **fields: object) -> mesh_pb2.FromRadio:
        self._from_radio_id += 1
        return mesh_pb2.FromRadio(id=self._from_radio_id, **fields)  # type: ignore[arg-type]

    def _new_packet_id(self) -> int:
        return self._packet_ids.randint(1, 0xFFFFFFFF)

    # --- the config handshake ------------------------------------------------------------------
    def _metadata(self) -> mesh_pb2.DeviceMetadata:
        return mesh_pb2.DeviceMetadata(
            firmware_version="2.7.11.sim", device_state_version=24, hasWifi=True, hasPKC=True
        )

    def _node_info(self, user: SimUser) -> mesh_pb2.NodeInfo:
        info = mesh_pb2.NodeInfo(
            num=user.num,
            user=mesh_pb2.User(id=user.node_id, long_name=user.long_name or user.short_name, short_name=user.short_name),
            snr=user.snr,
            last_heard=int(time.time()) - 60,
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
            frames.append(self._from_radio(my_info=mesh_pb2.MyNodeInfo(my_node_num=self.node_num, reboot_count=3, min_app_version=30200, nodedb_count=len(self.users) + 1)))
            frames.append(self._from_radio(metadata=self._metadata()))
        frames.append(self._from_radio(node_info=self._node_info(own)))
        if nonce != NODES_ONLY_NONCE:
            for index in range(8):
                channel = channel_pb2.Channel(index=index)
                if index == 0:
                    channel.role = channel_pb2.Channel.Role.PRIMARY
                    channel.settings.psk = b"\x01"
                elif index == 1:
                    channel.role = channel_pb2.Channel.Role.SECONDARY
                    channel.settings.name = "Local"
                    channel.settings.psk = bytes(range(16))
                else:
                    channel.role = channel_pb2.Channel.Role.DISABLED
                frames.append(self._from_radio(channel=channel))
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
                config_pb2.Config(network=config_pb2.Config.NetworkConfig(wifi_enabled=True)),
            ):
                frames.append(self._from_radio(config=config))
            frames.append(self._from_radio(moduleConfig=module_config_pb2.ModuleConfig(mqtt=module_config_pb2.ModuleConfig.MQTTConfig())))
        if nonce != NODELESS_NONCE:
            frames.extend(self._from_radio(node_info=self._node_info(u)) for u in self.users.values() if u.in_db)
        frames.append(self._from_radio(config_complete_id=nonce))
        return frames

    def _send_config(self, client: _Client, nonce: int) -> None:
        self._send_many(client, self._config_frames(nonce))
        with self._cond:
            client.configured = True
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
        with client.write_lock:
            try:
                client.transport.send(data)
                return True
            except OSError:
                return False

    def _close_client(self, client: _Client, *, rst: bool) -> None:
        with self._cond:
            if client.closed:
                return
            client.closed = True
            if self._client is client:
                self._client = None
            self._cond.notify_all()
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
            rx_time=int(time.time()),
            rx_snr=snr,
            rx_rssi=rssi,
            hop_start=3,
            hop_limit=3 - hops,
            via_mqtt=via_mqtt,
            pki_encrypted=pki,
        )
        setattr(packet, "from", num)
        packet.decoded.portnum = _TEXT
        packet.decoded.payload = text.encode("utf-8") if isinstance(text, str) else text
        return packet

    def deliver(self, packet: mesh_pb2.MeshPacket) -> bool:
        """Hand a received mesh packet to the connected client; False if none is connected."""
        client = self._client
        return client is not None and client.configured and self._send(client, self._from_radio(packet=packet))

    def deliver_many(self, packets: list[mesh_pb2.MeshPacket]) -> bool:
        client = self._client
        return client is not None and client.configured and self._send_many(client, [self._from_radio(packet=p) for p in packets])

    def user_text(self, user: SimUser | int, text: str | bytes, **kwargs: object) -> int:
        """A user sends a text; returns its packet id. Raises if no client is connected."""
        packet = self.user_packet(user, text, **kwargs)  # type: ignore[arg-type]
        if not self.deliver(packet):
            raise ConnectionError("no client connected to the simulated node")
        return packet.id

    def garbage_frames(self, count: int, payload: bytes = b"\xff\xff\xff\xff") -> bool:
        """`count` well-framed frames whose payload is no FromRadio (serial noise, a firmware bug)."""
        client = self._client
        data = (bytes((START1, START2)) + struct.pack(">H", len(payload)) + payload) * count
        return client is not None and client.configured and self._write(client, data)

    def log_line(self, text: str) -> None:
        """Debug log text outside any frame, as a node's serial console interleaves it."""
        client = self._client
        if client is not None:
            self._write(client, text.encode("utf-8") + b"\r\n")

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
        """A reboot: drop the client, refuse connections for `seconds`, then listen again."""
        self._close_listener()
        self.drop(rst=True)

        def relisten() -> None:
            time.sleep(seconds)
            if self._running:
                self._listen()

        self._spawn(relisten, name="sim-relisten")

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

    def reject_next(self, count: int = 1, res: int = 32) -> None:
        """The next `count` texts get a queueStatus with this non-zero res."""
        with self._cond:
            self._reject_next.extend([res] * count)
