"""`NodeLink`: the one owner of the one connection to the node.

One thread runs an explicit state machine (connecting -> up -> down -> connecting ...):
it opens the interface, waits for the config handshake, probes the node every
`PROBE_INTERVAL_S`, declares the link dead after `LINK_TIMEOUT_S` without a frame, and
on any loss closes the old interface completely before opening a new one, after an
exponential, jittered backoff. Nothing else in the process opens a connection: the
node accepts one TCP client and kicks the previous one off when a second connects (a
serial port, CONNECTION = 'serial', is locked for one program: the same rule).
"""

from __future__ import annotations

import collections
import enum
import errno
import logging
import random
import socket
import threading
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Optional, Protocol

import serial
from meshtastic.mesh_interface import MeshInterface
from pubsub import pub

from meshbot.config import Settings
from meshbot.health import LoopProgress
from meshbot.link.airtime import RadioParams, radio_params
from meshbot.link.interface import (
    NODE_CLOSED,
    LinkEvents,
    LinkLost,
    QueueReport,
    OptimizedSerialInterface,
    OptimizedTCPInterface,
    SerialPortNotFound,
    TxQueueFull,
    find_serial_port,
)
from meshbot.link.nodedb import HeardClock
from meshbot.text import counted, format_duration

log = logging.getLogger(__name__)

# A connection the node closes this soon after the handshake, several times in a row,
# is being taken by another client of the node's TCP API. The first close of a series
# counts whatever the link's age before it: that is when the other client arrived.
_CONTENTION_UP_S = 10.0
_CONTENTION_COUNT = 3
# A client notification from the node is logged once per distinct text in this long.
_NOTIFICATION_REPEAT_S = 60.0
# Packets that arrive while the link is not up yet wait for it (the bot's own node
# number decides whether a text is a DM); past this many the oldest are dropped.
_HELD_PACKETS_MAX = 256
_DOWN_REMINDER_S = 60.0
# While the link stays down the reminders back off (1, 2, 4 ... minutes): a node off all night
# costs a dozen journal lines by morning, not one a minute.
_DOWN_REMINDER_MAX_S = 3600.0
# After the handshake, how long to wait for the first heartbeat's answer (firmware
# that never answers is then handled without waiting for per-packet statuses).
_FIRST_PROBE_WAIT_S = 1.0
_CLOSE_JOIN_S = 3.0


class LinkState(enum.Enum):
    CONNECTING = "connecting"
    UP = "up"
    DOWN = "down"
    CLOSED = "closed"


@dataclass(frozen=True)
class LinkStatus:
    """A snapshot for /status, systemd STATUS= and the sender."""

    state: LinkState
    since: float  # monotonic time of the last state change
    address: str
    down_since: Optional[float] = None  # when the link last stopped being up (None: it is up)
    reconnects: int = 0
    last_cause: str = ""
    node_num: Optional[int] = None
    node_name: str = ""
    radio: Optional[RadioParams] = None


class LinkObserver(Protocol):
    """What the outbox needs to hear from the link (called on library threads: be quick)."""

    def link_changed(self, status: LinkStatus) -> None: ...

    def queue_status(self, report: QueueReport) -> None: ...

    def routing(self, request_id: int, reason: int, sender: int) -> None: ...


InterfaceFactory = Callable[[LinkEvents], Any]


# What a serial device's errors mean, in the words the operator acts on. pyserial raises
# SerialException (an OSError) carrying the errno of the failed open, read or lock.
_DIALOUT = "permission denied (the bot's user must be in group dialout)"
_SERIAL_ERRNO_CAUSES = {
    errno.ENOENT: "no such device",
    errno.ENODEV: "no such device",
    errno.ENXIO: "no such device",
    errno.EACCES: _DIALOUT,
    errno.EPERM: _DIALOUT,
    errno.EBUSY: "device busy",
    errno.EAGAIN: "in use by another program (it holds the port's lock: the meshtastic CLI?)",
    errno.EISDIR: "not a serial device",
    errno.ENOTTY: "not a serial device",
    errno.EIO: "I/O error (device unplugged?)",
}


def _serial_cause(exc: serial.SerialException) -> str:
    cause = _SERIAL_ERRNO_CAUSES.get(exc.errno) if exc.errno is not None else None
    if cause:
        return cause
    text = str(exc)
    # Messages pyserial raises without an errno.
    if "Could not configure port" in text:  # a file or device that is no tty (ENOTTY)
        return "not a serial device"
    if "returned no data" in text:  # its read() on a hung-up device
        return "device gone (unplugged?)"
    return text


def describe_error(exc: BaseException) -> str:
    """A short cause for the log line, without a traceback for expected network errors."""
    if isinstance(exc, SerialPortNotFound):
        return str(exc)
    if isinstance(exc, serial.SerialException):
        return _serial_cause(exc)
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve host ({exc.strerror})"
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "connect timed out"
    if isinstance(exc, (LinkLost, TxQueueFull)):
        return str(exc)
    if isinstance(exc, MeshInterface.MeshInterfaceError):
        return exc.message
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return f"{type(exc).__name__}: {exc}"


# serial.SerialException and SerialPortNotFound are OSErrors too; named for the reader.
_EXPECTED_ERRORS = (
    OSError, serial.SerialException, SerialPortNotFound, LinkLost, TxQueueFull, MeshInterface.MeshInterfaceError
)


class Backoff:
    """Exponential backoff with jitter, between `low` and `high` seconds."""

    def __init__(self, low: float, high: float, rng: random.Random) -> None:
        self.low, self.high, self._rng = low, high, rng
        self._failures = 0

    def reset(self) -> None:
        self._failures = 0

    def next_delay(self) -> float:
        ceiling = min(self.high, self.low * (2**self._failures))
        self._failures = min(self._failures + 1, 32)
        # "Equal jitter": never below half the ceiling, so a flapping node is not hammered.
        return self._rng.uniform(max(self.low, ceiling / 2), ceiling)


@dataclass
class _Outage:
    """One period of the link being down: for "link up after 3.2 s, 2 attempts"."""

    started: float
    attempts: int = 0
    last_report: Optional[float] = None  # when this outage was last logged
    reminder_s: float = _DOWN_REMINDER_S  # the wait before the next "still down" line

    def reminder_due(self, now: float) -> bool:
        """True when a "still down" line is due at `now` (and the next one is then backed off)."""
        if self.last_report is None or now - self.last_report < self.reminder_s:
            return False
        self.last_report = now
        self.reminder_s = min(self.reminder_s * 2, _DOWN_REMINDER_MAX_S)
        return True


class NodeLink:
    """Owns the interface and its reconnects. Start it once; stop it once."""

    def __init__(
        self,
        settings: Settings,
        on_packet: Callable[[dict], None],
        *,
        interface_factory: Optional[InterfaceFactory] = None,
        rng: Optional[random.Random] = None,
    ) -> None:
        self._settings = settings
        self._on_packet = on_packet
        serial_link = settings.CONNECTION == "serial"
        self._factory = interface_factory or (self._serial_interface if serial_link else self._tcp_interface)
        # The device SERIAL_PORT = 'auto' resolved to at the last attempt, for the log lines.
        self._serial_device: Optional[str] = None
        self._observers: list[LinkObserver] = []
        self._backoff = Backoff(settings.RECONNECT_MIN_S, settings.RECONNECT_MAX_S, rng or random.Random())
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._iface: Any = None
        started = time.monotonic()
        self._status = LinkStatus(LinkState.CONNECTING, started, self.address, down_since=started)
        self._thread = threading.Thread(target=self._run, name="link", daemon=True)
        self._quick_closes = 0
        self._slow_handshake_told = False  # said once per outage
        self._reboot_count: Optional[int] = None  # the previous connection's, to tell reboots
        self._notified: dict[str, float] = {}  # client notification text -> when last logged
        # Until the link is up, received packets wait here (see _HELD_PACKETS_MAX).
        self._held: Optional[collections.deque[dict]] = collections.deque(maxlen=_HELD_PACKETS_MAX)
        self.progress = LoopProgress()  # connecting and closing are its steps; watching is waiting
        # When the bot last heard each node, across connections; it also bounds the node DB.
        self.heard = HeardClock(settings.NODE_DB_MAX)
        # pypubsub keeps only weak references: this attribute keeps the listener alive.
        self._receive_listener = self._make_receive_listener()
        # Shared node API (meshbot/share): given every FromRadio frame of every interface,
        # the handshake's included, on the library's reader thread. Set before start().
        self.frame_tap: Optional[Callable[[bytes, Any], None]] = None

    # --- public ------------------------------------------------------------------------
    @property
    def address(self) -> str:
        """Where the node is: "host:port", or the serial device's path."""
        s = self._settings
        if s.CONNECTION == "serial":
            if s.SERIAL_PORT != "auto":
                return s.SERIAL_PORT
            return self._serial_device or "the auto-detected serial port"
        return f"{s.NODE_HOST}:{s.NODE_PORT}"

    @property
    def interface(self) -> Any:
        """The live interface, or None while the link is not up. Do not keep it."""
        return self._iface

    @property
    def status(self) -> LinkStatus:
        return self._status

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def send_to_radio(self, to_radio: Any) -> None:
        """Write one ToRadio of a client of the shared node API on the current link.

        Raises LinkLost while the link is not up; a packet may wait (bounded) for a slot
        in the node's TX queue, as the bot's own do.
        """
        iface = self._iface
        if iface is None or not iface.alive:
            raise LinkLost("link to the node is down")
        iface.send_to_radio(to_radio)

    def add_observer(self, observer: LinkObserver) -> None:
        self._observers.append(observer)

    def start(self) -> None:
        pub.subscribe(self._receive_listener, "meshtastic.receive")
        self._thread.start()

    def stop(self, timeout: float = _CLOSE_JOIN_S) -> None:
        """Close the link on purpose (not reported as a loss) and wait for the owner thread."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        try:
            pub.unsubscribe(self._receive_listener, "meshtastic.receive")
        except Exception:  # the topic may never have been created
            pass

    def open_once(self) -> Any:
        """One connection and config handshake, without the owner thread (`--probe`).

        The daemon's own code path, so the probe fails where the daemon would. Raises what
        a connection attempt raises (`describe_error()` words it); close with `close_once()`.
        """
        deadline = time.monotonic() + self._settings.CONNECT_TIMEOUT_S

        def give_up() -> Optional[str]:
            # A one-off check may not wait on a silent node the way the daemon does.
            if time.monotonic() < deadline:
                return None
            return f"no config from the node within {self._settings.CONNECT_TIMEOUT_S:g} s"

        return self._open(give_up)

    def close_once(self, iface: Any) -> None:
        """Close what `open_once()` opened, completely (the node frees its client slot)."""
        self._close(iface)

    # --- the owner thread ----------------------------------------------------------------
    def _run(self) -> None:
        outage = _Outage(started=time.monotonic())
        while not self._stop.is_set():
            outage.attempts += 1
            self._set_state(LinkState.CONNECTING)
            try:
                with self.progress.step():
                    iface = self._open()
            except Exception as exc:  # every failure is retried; a bug also gets a traceback
                self._connect_failed(exc, outage)
                self._sleep(self._backoff.next_delay())
                continue
            up_at = time.monotonic()
            self._link_up(iface, outage, up_at)
            cause = self._supervise(iface)
            self._hold_packets()
            self._iface = None
            with self.progress.step():
                self._close(iface)
            if cause is None:  # stop() was called
                break
            outage = _Outage(started=time.monotonic(), last_report=time.monotonic())
            self._link_lost(cause, was_up_s=outage.started - up_at)
        self._set_state(LinkState.CLOSED)

    def _connect_failed(self, exc: Exception, outage: "_Outage") -> None:
        cause = describe_error(exc)
        if not isinstance(exc, _EXPECTED_ERRORS):
            log.error("unexpected error connecting to %s", self.address, exc_info=True)
        self._set_state(LinkState.DOWN, cause=cause)
        now = time.monotonic()
        if outage.last_report is None:
            log.warning("cannot reach the node at %s: %s; retrying", self.address, cause)
            outage.last_report = now
        elif outage.reminder_due(now):
            log.warning(
                "link to %s still down after %s, %d attempts: %s (next reminder in %s)",
                self.address, format_duration(now - outage.started), outage.attempts, cause,
                format_duration(outage.reminder_s),
            )

    def _link_up(self, iface: Any, outage: "_Outage", up_at: float) -> None:
        self._backoff.reset()
        facts = _node_facts(iface)
        node = f"{facts['node_name']}, {facts['radio'].name if facts['radio'] else '?'}"
        # Logged before the state flips: the outbox starts sending on UP, and the journal
        # should show the link up before the texts that go over it.
        if outage.attempts == 1 and self._status.reconnects == 0:
            log.info("link up to %s in %.1f s (%s)", self.address, up_at - outage.started, node)
        else:
            log.info(
                "link up after %s down, %s (%s)",
                format_duration(up_at - outage.started), counted(outage.attempts, "attempt"), node,
            )
        self._slow_handshake_told = False
        self._note_reboot(iface)
        self._iface = iface
        self._set_state(LinkState.UP, node_facts=facts)
        self._release_held()

    def _note_reboot(self, iface: Any) -> None:
        """A higher reboot count than the previous connection's: the node rebooted in
        between (its queues are gone), which is never another client taking the node."""
        count, previous = iface.reboot_count, self._reboot_count
        self._reboot_count = count
        if count is not None and previous is not None and count > previous:
            log.info("the node rebooted while the link was down (reboot count %d -> %d)", previous, count)
            self._quick_closes = 0

    def _link_lost(self, cause: str, was_up_s: float) -> None:
        self._status = replace(self._status, reconnects=self._status.reconnects + 1)
        self._set_state(LinkState.DOWN, cause=cause)
        log.warning("link to %s lost after %s up: %s", self.address, format_duration(was_up_s), cause)
        self._sleep(self._delay_after_loss(cause, was_up_s))

    def _open(self, give_up: Optional[Callable[[], Optional[str]]] = None) -> Any:
        """Connect and complete the handshake, or raise; never leaves a socket open on failure.

        The handshake is waited on for as long as the connection lives (see
        `_HardenedStream._waitConnected`), until `give_up()` gives a reason, by default only
        when the link is stopped."""
        self._wake.clear()
        iface = self._factory(
            LinkEvents(
                lost=self._lost,
                queue_status=self._queue_status,
                routing=self._routing,
                notification=self._notification,
                slow_handshake=self._slow_handshake,
            )
        )
        iface.link_owner = self
        iface.give_up = give_up or self._stopping
        iface.from_radio_tap = self.frame_tap
        try:
            iface.connect()
            # Probe once now: the answer tells whether this firmware reports every packet.
            iface.send_probe(strong=False)
            self._wait_for(lambda: iface.answers_queue_status, iface)
            if not iface.answers_queue_status:
                # Firmware too old to answer heartbeats: its liveness comes from the
                # metadata request, which it does answer.
                asked_at = time.monotonic()
                iface.send_probe(strong=True)
                self._wait_for(lambda: iface.last_rx >= asked_at, iface)
            if not iface.alive:
                raise LinkLost(iface.lost_cause or "closed during handshake")
        except BaseException:
            self._close(iface)
            raise
        return iface

    @staticmethod
    def _wait_for(condition: Callable[[], bool], iface: Any) -> None:
        deadline = time.monotonic() + _FIRST_PROBE_WAIT_S
        while not condition() and iface.alive and time.monotonic() < deadline:
            time.sleep(0.005)

    def _supervise(self, iface: Any) -> Optional[str]:
        """Watch a live link; return the cause of loss, or None when asked to stop."""
        probe_every = self._settings.PROBE_INTERVAL_S
        timeout = self._settings.LINK_TIMEOUT_S
        next_probe = time.monotonic() + probe_every
        while True:
            now = time.monotonic()
            wait = min(next_probe, iface.last_rx + timeout) - now
            if wait > 0 and self._wake.wait(wait):
                self._wake.clear()
            if self._stop.is_set():
                return None
            if iface.lost_cause:
                return iface.lost_cause
            now = time.monotonic()
            silent = now - iface.last_rx
            if silent >= timeout:
                return f"no frame from the node for {silent:.0f} s (half-open link)"
            if now >= next_probe:
                try:
                    # Add the metadata request when heartbeats go unanswered: old firmware
                    # never answers them, and a node that stopped may answer that one.
                    iface.send_probe(strong=not iface.answers_queue_status or silent > probe_every)
                except _EXPECTED_ERRORS as exc:
                    return iface.lost_cause or describe_error(exc)
                next_probe = now + probe_every

    def _delay_after_loss(self, cause: str, was_up_s: float) -> float:
        """Backoff, or a long pause when another client keeps taking the node's TCP API."""
        if cause == NODE_CLOSED:
            # A series of quick closes starts with the close that ended a long link.
            self._quick_closes = self._quick_closes + 1 if was_up_s < _CONTENTION_UP_S else 1
        else:
            self._quick_closes = 0
        if self._quick_closes >= _CONTENTION_COUNT:
            pause = self._settings.CONTENTION_BACKOFF_S
            log.warning(
                "the node closed the connection %d times within %.0f s of the handshake: another client "
                "(phone app on the node's Wi-Fi, meshtastic CLI) is probably using its TCP API, which takes one "
                "client at a time; waiting %.0f s instead of fighting it",
                self._quick_closes, _CONTENTION_UP_S, pause,
            )
            self._quick_closes = 0
            return pause
        return self._backoff.next_delay()

    def _close(self, iface: Any) -> None:
        """Close completely (reader thread joined) so two sockets never coexist."""
        closer = threading.Thread(target=self._close_quietly, args=(iface,), name="link-close", daemon=True)
        closer.start()
        closer.join(_CLOSE_JOIN_S)
        if closer.is_alive():
            log.error("closing the old connection to %s is taking over %.0f s", self.address, _CLOSE_JOIN_S)
            closer.join()

    @staticmethod
    def _close_quietly(iface: Any) -> None:
        try:
            iface.close()
        except Exception:
            log.debug("error while closing the interface", exc_info=True)

    def _sleep(self, seconds: float) -> None:
        self._stop.wait(seconds)

    # --- events from the interface (library threads) -----------------------------------------
    def _lost(self, cause: str) -> None:
        self._wake.set()

    def _queue_status(self, report: QueueReport) -> None:
        for observer in self._observers:
            observer.queue_status(report)

    def _routing(self, request_id: int, reason: int, sender: int) -> None:
        for observer in self._observers:
            observer.routing(request_id, reason, sender)

    def _notification(self, level: int, message: str) -> None:
        """A clientNotification: the node tells its client something (e.g. a refused
        setting, a duty-cycle limit). Logged at its own level, each text once a minute."""
        now = time.monotonic()
        with self._lock:
            last = self._notified.get(message)
            if last is not None and now - last < _NOTIFICATION_REPEAT_S:
                return
            self._notified = {m: t for m, t in self._notified.items() if now - t < _NOTIFICATION_REPEAT_S}
            self._notified[message] = now
        # LogRecord.Level uses the same numbers as Python's levels; TRACE (5) is DEBUG here.
        log.log(max(logging.DEBUG, level) if level else logging.INFO, "the node says: %s", message)

    def _stopping(self) -> Optional[str]:
        return "stopped" if self._stop.is_set() else None

    def _slow_handshake(self, waited_s: float) -> None:
        # A port that answers TCP but is not a node (or a node that is hung) would say this
        # at every attempt: once per outage is enough, the reminders say the rest.
        level = logging.DEBUG if self._slow_handshake_told else logging.WARNING
        self._slow_handshake_told = True
        log.log(
            level,
            "no config from the node at %s within %g s; still waiting on this connection rather than "
            "opening another (node busy or hung? another program on that port?)",
            self.address, waited_s,
        )
        # From here the owner thread waits on the node; it is not a step of its own work.
        self.progress.wait_outside()

    def _make_receive_listener(self) -> Callable[..., None]:
        def on_receive(packet: dict, interface: Any = None) -> None:
            # Runs on the library's one publishing thread: only hand the packet over.
            if getattr(interface, "link_owner", None) is not self:
                return
            with self._lock:
                if self._held is not None:
                    self._held.append(packet)  # released by _release_held() once up
                    return
            self._on_packet(packet)

        return on_receive

    def _hold_packets(self) -> None:
        with self._lock:
            if self._held is None:
                self._held = collections.deque(maxlen=_HELD_PACKETS_MAX)

    def _release_held(self) -> None:
        """Hand over, in order, the packets that arrived before the link was up."""
        with self._lock:
            held, self._held = self._held, None
            # Under the lock, so that a packet arriving now cannot overtake them
            # (`_on_packet` only enqueues).
            for packet in held or ():
                self._on_packet(packet)

    # --- state ---------------------------------------------------------------------------
    def _set_state(self, state: LinkState, *, cause: str = "", node_facts: Optional[dict[str, Any]] = None) -> None:
        with self._lock:
            now = time.monotonic()
            down_since = None if state is LinkState.UP else (self._status.down_since or now)
            # The address too: with SERIAL_PORT = 'auto' it is known once a device is found.
            status = replace(self._status, state=state, since=now, down_since=down_since, address=self.address)
            if cause:
                status = replace(status, last_cause=cause)
            if node_facts is not None:
                status = replace(status, **node_facts)
            self._status = status
        for observer in self._observers:
            observer.link_changed(status)

    def _tcp_interface(self, events: LinkEvents) -> OptimizedTCPInterface:
        s = self._settings
        return OptimizedTCPInterface(
            s.NODE_HOST,
            s.NODE_PORT,
            events=events,
            connect_timeout_s=s.CONNECT_TIMEOUT_S,
            link_timeout_s=s.LINK_TIMEOUT_S,
            heard=self.heard,
            connectNow=False,
        )

    def _serial_interface(self, events: LinkEvents) -> OptimizedSerialInterface:
        s = self._settings
        device = s.SERIAL_PORT
        if device == "auto":
            # Searched at every attempt: the node may come back under another name.
            self._serial_device = None
            device = self._serial_device = find_serial_port()
        return OptimizedSerialInterface(
            device,
            events=events,
            connect_timeout_s=s.CONNECT_TIMEOUT_S,
            link_timeout_s=s.LINK_TIMEOUT_S,
            heard=self.heard,
            connectNow=False,
        )


def _node_facts(iface: Any) -> dict[str, Any]:
    """Who the node is, from the handshake."""
    num = iface.myInfo.my_node_num if iface.myInfo is not None else None
    name = f"!{num:08x}" if num is not None else "?"
    node = (iface.nodesByNum or {}).get(num) if num is not None else None
    if node and node.get("user", {}).get("shortName"):
        name = f"!{num:08x} {node['user']['shortName']}"
    lora = iface.localNode.localConfig.lora if iface.localNode.localConfig.HasField("lora") else None
    return {"node_num": num, "node_name": name, "radio": radio_params(lora)}
