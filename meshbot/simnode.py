"""A simulated Meshtastic node on 127.0.0.1, for tests, benchmarks and `--demo`.

It speaks the node's real stream protocol (0x94 0xC3, 16-bit length, protobuf) with the
real `ToRadio`/`FromRadio` messages, and reproduces what the firmware does that the
bot must survive:

* the config handshake: my_info, metadata, own node_info, 8 channels, config and
  module config, the other node_infos, config_complete_id (nonce 69420: no nodes);
* a `queueStatus` for every packet and every heartbeat (unless `old_firmware`);
* one TCP client at a time: a new client closes the previous one;
* the 2 s text rate limit, answered by a queueStatus (res 0) and a ROUTING_APP
  RATE_LIMIT_EXCEEDED naming the dropped packet; ids seen among the client's last 20
  packets are ignored silently;
* simulated mesh users sending texts on channels or by DM;
* fault switches: drop (FIN or RST), stop listening for a while, go silent with the
  socket open, reject the next packets.
"""

from __future__ import annotations

import collections
import logging
import random
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

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


class _Client:
    """One accepted connection."""

    def __init__(self, sock: socket.socket, number: int) -> None:
        self.sock = sock
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
    """The node's TCP API, in a thread of this process. Use start()/stop() or `with`."""

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
        self._routing_error_next: list[int] = []
        self._packet_ids = random.Random(4403)
        self._from_radio_id = 0
        self._threads: list[threading.Thread] = []
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
        with self._cond:
            client = self._client
        if client:
            self._close_client(client, rst=False)

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
            with self._cond:
                previous = self._client
                self.counters.connections += 1
                client = _Client(sock, self.counters.connections)
                self._client = client
                self._cond.notify_all()
            if previous is not None:
                # The firmware's one-client rule: "Force close previous TCP connection".
                self._close_client(previous, rst=False)
            self._spawn(self._serve, client, name=f"sim-client-{client.number}")

    # --- the protocol -------------------------------------------------------------------------
    def _serve(self, client: _Client) -> None:
        buf = bytearray()
        try:
            while not client.closed:
                try:
                    data = client.sock.recv(4096)
                except OSError:
                    break
                if not data:
                    break
                if client.silent:
                    continue  # a hung node: the socket stays open, nothing is processed
                buf += data
                while True:
                    payload = self._next_frame(buf)
                    if payload is None:
                        break
                    self._handle(client, payload)
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
                client.sock.sendall(data)
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
        try:
            if rst:
                # Linger 0 turns close() into a reset. The serving thread's blocked recv()
                # would defer the close until it returns: SHUT_RD wakes it without sending.
                client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                client.sock.shutdown(socket.SHUT_RD)
            else:
                client.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        client.sock.close()

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
        """Close the client's connection: a FIN, or with rst=True a reset."""
        client = self._client
        if client is not None:
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

    def go_silent(self) -> None:
        """The current connection hangs: socket open, nothing read or answered, ever."""
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
