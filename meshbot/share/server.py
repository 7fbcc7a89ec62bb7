"""`ApiServer`: the node's TCP API, served by the bot to the phone app, the CLI and others.

The node's TCP API takes one client at a time and force-closes the previous one when
another connects: an operator opening the phone app would throw the bot off. The bot owns
the one connection and shares it instead. Nothing here opens a socket to the node:

* node -> clients: `NodeLink.frame_tap` hands every FromRadio frame over, on the library's
  reader thread; each is appended to the send buffer of every client that finished its
  handshake (admin answers and queueStatus only to the client they are about);
* handshake: answered from `NodeSnapshot`, built from the bot's own handshake;
* clients -> node: packets for the air through the bot's outbox
  (`MessageSender.send_client_packet`), so that the firmware's 2 s text rule holds for
  everyone behind the one connection and the clients' share of the airtime budget
  applies; packets for the node itself (admin) through `NodeLink.send_to_radio`; admin
  messages filtered by API_ADMIN, XModem and MQTT proxying by `filter.py`; heartbeats
  and `disconnect` answered here. A packet id is refused at once (a queueStatus with an
  error) when its client used it lately or another connected client owns it: the node
  would drop it without a word;
* while the link is down, clients are closed, and a new one is accepted and closed at
  once (the app sees the node go away and retries later). The socket stays bound and
  listening all the time: a port released or merely bound (not listening) while the link
  is down could be taken by another local account, which would then get the phone app's
  connection -- and the bot's own listen() would fail once the link is back. A bind that
  fails at start (the port is taken) is one ERROR, then retried quietly with backoff;
* who may connect (`gate.py`): API_ALLOW, API_MAX_CLIENTS, at most 2 connections per
  address; a client that has not asked for its handshake within 30 s is closed, one
  that then sends no frame for 15 minutes too (as the node does). Connect and
  disconnect lines are summarised past a few a minute.

The server knows nothing of commands: the bot wires it in `meshbot.app` when API_LISTEN
is set.
"""

from __future__ import annotations

import collections
import logging
import random
import socket
import threading
import time
from typing import Any, Callable, Optional

from meshtastic import BROADCAST_NUM
from meshtastic.protobuf import mesh_pb2, portnums_pb2, xmodem_pb2

from meshbot.config import API_LISTEN_FORM, Settings, split_host_port
from meshbot.link.interface import LinkLost, TxQueueFull
from meshbot.link.owner import LinkState, LinkStatus, NodeLink
from meshbot.outbox.sender import MessageSender, OutgoingText
from meshbot.logs import RepeatedWarning
from meshbot.share.admin import ADMIN_PORT, admin_refusal
from meshbot.share.filter import FULL_ONLY, SecretFilter, refusal_of
from meshbot.share.framing import frame
from meshbot.share.gate import Gate
from meshbot.share.handshake import NodeSnapshot
from meshbot.share.session import ClientSession
from meshbot.text import counted, format_duration

log = logging.getLogger(__name__)

# The firmware closes a TCP client that sent nothing for 15 minutes (TCP_IDLE_TIMEOUT_MS).
IDLE_TIMEOUT_S = 15 * 60.0
# A client that connected must ask for its config this soon: an app does at once, and a
# socket that never does only holds a client slot.
HANDSHAKE_TIMEOUT_S = 30.0
# Packets one client may have waiting in the outbox: the node's TX queue holds 16 packets.
MAX_PENDING_TEXTS = 8
# Packet ids remembered to route the node's answers (queueStatus, admin responses) back.
_OWNED_IDS = 4096
_POLL_S = 0.2
_KERNEL_SNDBUF = 64 * 1024
# A failed bind is tried again after this, doubling up to the longest.
_REBIND_FIRST_S = 5.0
_REBIND_MAX_S = 300.0
# The firmware's ErrorCode for "not queued" in a queueStatus (ERRNO_UNKNOWN).
_ERRNO_UNKNOWN = 32
_TEXT = portnums_pb2.PortNum.TEXT_MESSAGE_APP
_ROUTING = portnums_pb2.PortNum.ROUTING_APP
# Frames of the node's own handshake: they feed the snapshot; clients get theirs from it.
_SNAPSHOT_KINDS = frozenset(
    {"my_info", "node_info", "metadata", "channel", "config", "moduleConfig", "deviceuiConfig", "fileInfo", "config_complete_id"}
)


class _LinkWatch:
    """The server's link observer: only the link's state matters to it. The frame tap sees
    the queueStatus and routing frames themselves, so every other report is ignored,
    whatever its name and arguments."""

    def __init__(self, on_change: Callable[[LinkStatus], None]) -> None:
        self._on_change = on_change

    def link_changed(self, status: LinkStatus) -> None:
        self._on_change(status)

    def __getattr__(self, name: str) -> Callable[..., None]:
        return _ignore


def _ignore(*_args: Any) -> None:
    return None


class ApiServer:
    """Listens on API_LISTEN while the link is up; one ClientSession per client."""

    def __init__(
        self, settings: Settings, link: NodeLink, sender: MessageSender, *, idle_timeout_s: float = IDLE_TIMEOUT_S
    ) -> None:
        self._host, self._port = split_host_port(settings.API_LISTEN, API_LISTEN_FORM)
        self.listen_address = settings.API_LISTEN
        self._admin_mode = settings.API_ADMIN
        self._gate = Gate(settings.API_ALLOW, settings.API_MAX_CLIENTS)
        self.idle_timeout_s = idle_timeout_s
        self.handshake_timeout_s = HANDSHAKE_TIMEOUT_S
        self._outbox_ttl_s = settings.OUTBOX_TTL_S
        self._link = link
        self._sender = sender
        self._secrets = SecretFilter(settings.API_ADMIN, settings.API_SHARE_CHANNEL_KEYS)
        self.snapshot = NodeSnapshot(self._secrets, settings.NODE_DB_MAX)
        # Who gets the node's XModem and MQTT-proxy frames: the last client that sent one.
        self._answer_to: dict[str, ClientSession] = {}
        # A client may try these in a loop: one line, then a count a minute.
        self._refused_note = RepeatedWarning(
            log, "refused {count} more frames from API clients in the last {seconds} s", level=logging.INFO
        )
        self._lock = threading.Lock()
        # Replaced, never changed in place: the reader thread iterates it without the lock.
        self._sessions: tuple[ClientSession, ...] = ()
        self._owners: collections.OrderedDict[int, ClientSession] = collections.OrderedDict()
        self._link_up = False
        self._free, self._maxlen = 16, 16  # the node's TX queue, from its last queueStatus
        self._socket: Optional[socket.socket] = None  # bound and listening, from the first bind on
        self._serving = False  # "serving" was logged, "not serving" not since
        self._next_bind_at = 0.0
        self._rebind_s = _REBIND_FIRST_S
        self._bind_error = ""
        self.port: Optional[int] = None  # the bound port (API_LISTEN may say 0 in tests)
        self._rng = random.Random()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="api-server", daemon=True)
        link.frame_tap = self._on_frame
        link.add_observer(_LinkWatch(self.link_changed))
        sender.text_sent_listener = self._on_text_sent
        sender.client_refused_listener = self._on_client_refused

    # --- public ---------------------------------------------------------------------------
    def start(self) -> None:
        self._bind()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2.0)
        for session in self._sessions:
            session.close("the bot is stopping")
        self._close_socket()
        self._gate.flush()
        self._refused_note.flush()

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def client_count(self) -> int:
        return len(self._sessions)

    @property
    def listening(self) -> bool:
        """Whether clients are served now (the link is up and the node's config known);
        the socket itself listens all the time once bound."""
        return self._socket is not None and self._link_up and self.snapshot.complete

    @property
    def bound(self) -> bool:
        return self._socket is not None

    # --- the accept thread -----------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._note_serving()
                sock = self._socket
                if sock is None and not self._bind():
                    self._stop.wait(_POLL_S)
                elif sock is not None:
                    try:
                        conn, peer = sock.accept()
                    except socket.timeout:
                        pass
                    except OSError as exc:  # EMFILE and the like: the next try may work
                        log.debug("accept on API_LISTEN failed: %s", exc)
                        self._stop.wait(_POLL_S)
                    else:
                        self._admit(conn, peer)
                self._close_idle()
            except Exception:  # a bug here must not end the sharing for good
                log.exception("unexpected error in the API server")
                self._stop.wait(1.0)

    def _note_serving(self) -> None:
        """One INFO line when serving starts, one when it stops (the link went down)."""
        serving = self.listening
        if serving == self._serving:
            return
        self._serving = serving
        if serving:
            log.info("serving the node's API on %s:%s (API_ADMIN = %r)", self._host, self.port, self._admin_mode)
        else:
            log.info(
                "not serving the node's API on %s:%s while the link is down (the port stays ours)", self._host, self.port
            )

    def _bind(self) -> bool:
        """Bind and listen, at most once per backoff step; one ERROR per cause, then quiet."""
        now = time.monotonic()
        if self._socket is not None:
            return True
        if now < self._next_bind_at:
            return False
        try:
            # The port got the first time (API_LISTEN may say 0): clients come back to it.
            family, kind, proto, _, address = socket.getaddrinfo(
                self._host, self.port or self._port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )[0]
            sock = socket.socket(family, kind, proto)
            try:
                # SO_REUSEADDR: a restart binds while old connections are in TIME_WAIT. On a
                # listening socket it lets nobody else bind the port.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(address)
                sock.listen(self._gate.max_clients)
            except OSError:
                sock.close()
                raise
        except OSError as exc:
            cause = exc.strerror or str(exc)
            self._next_bind_at = now + self._rebind_s
            if cause != self._bind_error:
                log.error(
                    "cannot listen on API_LISTEN = %r: %s; retrying quietly (every %.0f s at first, then less often)",
                    self.listen_address, cause, self._rebind_s,
                )
                self._bind_error = cause
            self._rebind_s = min(_REBIND_MAX_S, self._rebind_s * 2)
            return False
        if self._bind_error:
            log.info("API_LISTEN %s bound after all", self.listen_address)
            self._bind_error = ""
        self._rebind_s = _REBIND_FIRST_S
        sock.settimeout(_POLL_S)
        self._socket = sock
        self.port = sock.getsockname()[1]
        return True

    def _close_socket(self) -> None:
        sock, self._socket = self._socket, None
        if sock is not None:
            sock.close()

    def _admit(self, conn: socket.socket, peer: Any) -> None:
        host = str(peer[0])
        address = f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"
        with self._lock:
            refusal = self._gate.refusal(host, self._sessions, serving=self.listening)
        if refusal is not None:
            self._gate.refused(address, refusal)
            conn.close()
            return
        conn.settimeout(None)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        # A fixed kernel buffer (no autotuning up to megabytes): with the session's own
        # bound, what a client that stops reading can hold is known.
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _KERNEL_SNDBUF)
        session = ClientSession(conn, address, self, host=host)
        with self._lock:
            self._sessions = self._sessions + (session,)
            count = len(self._sessions)
        self._gate.note("API client %s connected (%s)", address, counted(count, "client"))
        session.start()

    def _close_idle(self) -> None:
        now = time.monotonic()
        for session in self._sessions:
            if not session.ready and now - session.connected_at > self.handshake_timeout_s:
                session.close(f"no handshake within {format_duration(self.handshake_timeout_s)}")
            elif now - session.last_rx > self.idle_timeout_s:
                session.close(f"sent nothing for {format_duration(now - session.last_rx)}")

    # --- sessions (their reader threads) ------------------------------------------------------
    def session_ended(self, session: ClientSession) -> None:
        with self._lock:
            self._sessions = tuple(s for s in self._sessions if s is not session)
            count = len(self._sessions)
        self._gate.note(
            "API client %s disconnected after %s: %s (%s)",
            session.address, format_duration(time.monotonic() - session.connected_at), session.close_reason,
            counted(count, "client"),
        )

    def handle_to_radio(self, session: ClientSession, message: mesh_pb2.ToRadio) -> None:
        kind = message.WhichOneof("payload_variant")
        if kind == "want_config_id":
            handshake = self.snapshot.compose(message.want_config_id)
            if handshake is None:
                session.close("the node's config is not known yet")
            else:
                session.send_handshake(handshake)
        elif kind == "heartbeat":
            session.send(self._queue_status(0, 0))
        elif kind == "disconnect":
            session.close("client disconnected")
        elif kind == "packet":
            self._client_packet(session, message.packet)
        elif kind in FULL_ONLY:
            refusal = refusal_of(kind, self._admin_mode)
            if refusal is not None:
                self._refused_note.log("refused %s from API client %s", refusal, session.address)
                if kind == "xmodemPacket":  # the transfer is over, as XModem says it
                    cancel = xmodem_pb2.XModem(control=xmodem_pb2.XModem.Control.CAN)
                    session.send(frame(mesh_pb2.FromRadio(xmodemPacket=cancel).SerializeToString()))
                return
            with self._lock:
                self._answer_to[kind] = session
            self._to_node(session, message, 0)
        # Anything else (a kind this library version does not know) is nothing an app needs.

    def _client_packet(self, session: ClientSession, packet: mesh_pb2.MeshPacket) -> None:
        if not packet.id:  # the firmware gives a packet without an id one
            packet.id = self._rng.randint(1, 0xFFFFFFFF)
        with self._lock:
            owner = self._owners.get(packet.id)
        if owner is not None and owner is not session and not owner.closed:
            self._refuse_packet(session, packet.id, "a packet id another client uses")
            return
        if not session.use_id(packet.id):
            self._refuse_packet(session, packet.id, "a packet id it sent already")
            return
        self._own(packet.id, session)
        portnum = packet.decoded.portnum if packet.HasField("decoded") else None
        if portnum == ADMIN_PORT or (portnum is None and packet.to == self.snapshot.own_num):
            refusal = admin_refusal(packet, self._admin_mode)
            if refusal is not None:
                log.info("refused %s from API client %s (API_ADMIN = %r)", refusal, session.address, self._admin_mode)
                session.send(self._routing_error(packet.id, mesh_pb2.Routing.Error.NOT_AUTHORIZED))
                return
        if packet.to == self.snapshot.own_num:  # for the node itself (admin): nothing goes on air
            self._to_node(session, mesh_pb2.ToRadio(packet=packet), packet.id)
            return
        now = time.monotonic()
        pending = session.pending_texts
        for old in [i for i, at in pending.items() if now - at > self._outbox_ttl_s]:
            del pending[old]  # dropped by the outbox (it logged why)
        if len(pending) >= MAX_PENDING_TEXTS:
            self._refuse_packet(session, packet.id, f"{MAX_PENDING_TEXTS} of its packets wait in the outbox already")
            return
        why = self._sender.send_client_packet(packet)
        if why is not None:
            self._refuse_packet(session, packet.id, why)
            return
        pending[packet.id] = now

    def _refuse_packet(self, session: ClientSession, packet_id: int, why: str) -> None:
        """Refused at once, as the node refuses a packet it cannot queue."""
        self._refused_note.log("refused packet %08x from API client %s: %s", packet_id, session.address, why)
        session.send(self._queue_status(packet_id, _ERRNO_UNKNOWN))

    def _on_client_refused(self, packet: mesh_pb2.MeshPacket, why: str) -> None:
        """The outbox will not send a packet it had queued (outbox lock held: hand over only)."""
        owner = self._owners.get(packet.id)
        if owner is not None:
            owner.pending_texts.pop(packet.id, None)
            owner.send(self._queue_status(packet.id, _ERRNO_UNKNOWN))

    def _to_node(self, session: ClientSession, message: mesh_pb2.ToRadio, packet_id: int) -> None:
        try:
            self._link.send_to_radio(message)
        except TxQueueFull:
            session.send(self._queue_status(packet_id, _ERRNO_UNKNOWN))
        except (LinkLost, OSError):
            session.close("link to the node is down")

    def _own(self, packet_id: int, session: ClientSession) -> None:
        with self._lock:
            self._owners[packet_id] = session
            self._owners.move_to_end(packet_id)
            while len(self._owners) > _OWNED_IDS:
                self._owners.popitem(last=False)

    # --- the link (library threads: only hand over) -------------------------------------------
    def link_changed(self, status: LinkStatus) -> None:
        up = status.state is LinkState.UP
        with self._lock:
            self._link_up = up
        if not up:
            for session in self._sessions:
                session.close("link to the node is down")

    def _on_frame(self, raw: bytes, message: mesh_pb2.FromRadio) -> None:
        """Every FromRadio frame from the node, on the library's reader thread."""
        kind = message.WhichOneof("payload_variant")
        snapshot = self.snapshot
        if kind == "packet":
            packet = message.packet
            snapshot.note_packet(packet)
            if not snapshot.complete:
                return
            decoded = packet.decoded
            if packet.HasField("decoded") and decoded.portnum == ADMIN_PORT:
                # An admin answer goes to the client that asked; the bot's own probes'
                # answers to nobody.
                owner = self._owners.get(decoded.request_id) if decoded.request_id else None
                if owner is not None:
                    owner.send(self._client_bytes(raw, message, kind))
                return
            self._broadcast(frame(raw))
        elif kind == "queueStatus":
            status = message.queueStatus
            self._free, self._maxlen = status.free, status.maxlen or self._maxlen
            owner = self._owners.get(status.mesh_packet_id) if status.mesh_packet_id else None
            if owner is not None:
                owner.pending_texts.pop(status.mesh_packet_id, None)
                owner.send(frame(raw))
        elif kind in _SNAPSHOT_KINDS:
            snapshot.note_frame(message, kind)  # stripped of secrets there
            if kind == "node_info" and snapshot.complete:
                self._broadcast(frame(raw))
        elif kind in FULL_ONLY:
            # The answer to one client's file transfer or MQTT proxying: that client's only.
            owner = self._answer_to.get(kind)
            if owner is not None and not owner.closed:
                owner.send_if_ready(frame(raw))
        elif kind not in (None, "rebooted") and snapshot.complete:
            self._broadcast(frame(raw))  # log records, client notifications...

    def _on_text_sent(self, packet_id: int, item: OutgoingText) -> None:
        """A text the node accepted (the bot's or a client's): the others see it, as the
        firmware copies a text its own modules send to the phone (sendToMesh, ccToPhone)."""
        own = self.snapshot.own_num
        if own is None or not self._sessions:
            return
        origin = None
        packet = mesh_pb2.MeshPacket()
        if item.client_packet is not None:
            if not item.client_packet.HasField("decoded") or item.client_packet.decoded.portnum != _TEXT:
                return  # the firmware copies texts to its other clients, nothing else
            packet.CopyFrom(item.client_packet)
            origin = self._owners.get(packet_id)
        else:
            packet.to = item.to
            packet.channel = item.channel
            packet.want_ack = item.to != BROADCAST_NUM
            packet.decoded.portnum = _TEXT
            packet.decoded.payload = item.text.encode("utf-8")
            if item.reply_to:
                packet.decoded.reply_id = item.reply_to
        packet.id = packet_id
        setattr(packet, "from", own)
        packet.rx_time = int(time.time())
        data = frame(mesh_pb2.FromRadio(packet=packet).SerializeToString())
        for session in self._sessions:
            if session is not origin:
                session.send_if_ready(data)

    def _client_bytes(self, raw: bytes, message: mesh_pb2.FromRadio, kind: Optional[str]) -> bytes:
        """The frame as a client may see it: the node's bytes, or a copy without secrets."""
        if self._secrets.may_hold_secrets(kind, message):
            copy = mesh_pb2.FromRadio()
            copy.CopyFrom(message)
            if self._secrets.strip(copy):
                return frame(copy.SerializeToString())
        return frame(raw)

    def _broadcast(self, data: bytes) -> None:
        for session in self._sessions:
            session.send_if_ready(data)

    # --- frames the server makes ------------------------------------------------------------------
    def _queue_status(self, packet_id: int, res: int) -> bytes:
        status = mesh_pb2.QueueStatus(res=res, free=self._free, maxlen=self._maxlen, mesh_packet_id=packet_id)
        return frame(mesh_pb2.FromRadio(queueStatus=status).SerializeToString())

    def _routing_error(self, request_id: int, error: int) -> bytes:
        """A NAK from the own node, as the firmware answers a request it refuses."""
        own = self.snapshot.own_num or 0
        packet = mesh_pb2.MeshPacket(to=own, id=self._rng.randint(1, 0xFFFFFFFF), rx_time=int(time.time()))
        setattr(packet, "from", own)
        packet.decoded.portnum = _ROUTING
        packet.decoded.payload = mesh_pb2.Routing(error_reason=error).SerializeToString()  # type: ignore[arg-type]
        packet.decoded.request_id = request_id
        return frame(mesh_pb2.FromRadio(packet=packet).SerializeToString())
