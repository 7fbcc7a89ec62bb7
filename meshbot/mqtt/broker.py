"""`BrokerLink`: the bot's one connection to an MQTT broker, its reconnects and what it hears.

paho-mqtt does the protocol and its network thread; this object owns the client and gives
it an explicit state (`BrokerState`), the bot's kind of log lines and counters, and turns
every message into an `Uplink` or a counted rejection. It never touches a node link: a
broker outage is this object's business alone.

Decisions, with what they rest on (../shared/MESHTASTIC-NOTES.md, "MQTT"):

* the client id is `meshbot-<random>`, never a node id: the broker closes the older of two
  connections with one client id, and gateways use their node ids;
* MQTT 3.1.1 with a clean session, as the firmware's own client: nothing is kept for the
  bot while it is away (what it missed is old news on a mesh);
* it subscribes to `<root>/2/e/+/+` for each root (QoS 0: a lost uplink copy is one of
  several), again after every reconnect;
* reconnects are paho's, with its bounded backoff (`RECONNECT_MIN_S` doubling to
  `RECONNECT_MAX_S`); the log says the loss once and the return once, with how long;
* a broker that refuses the login is told once per outage, with the reason code and where
  to fix it; paho keeps retrying, so a broker fixed later is picked up without a restart;
* what is published while the broker is away waits in paho's queue, bounded by
  `PUBLISH_QUEUE_MAX`; past it `publish` says no, and the caller keeps the text.
"""

from __future__ import annotations

import enum
import logging
import secrets
import ssl
import threading
import time
import traceback
import urllib.parse
from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional, Sequence

import paho.mqtt.client as paho

from meshbot.mqtt.crypto import ChannelKey
from meshbot.logs import RepeatedWarning
from meshbot.mqtt.envelope import REASONS, Rejected, Uplink, read_uplink

log = logging.getLogger(__name__)

RECONNECT_MIN_S = 1.0
RECONNECT_MAX_S = 60.0
KEEPALIVE_S = 30
PUBLISH_QUEUE_MAX = 100
DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}


class BrokerState(enum.Enum):
    STOPPED = "stopped"  # not started, or stopped
    CONNECTING = "connecting"  # started, never connected yet
    UP = "up"
    DOWN = "down"  # was up, or refused: paho is retrying


@dataclass(frozen=True)
class BrokerSettings:
    """Where the broker is and what to read there (MQTT_URL, MQTT_ROOT, MQTT_CHANNELS)."""

    host: str
    port: int
    tls: bool = False
    username: Optional[str] = None
    password: Optional[str] = field(default=None, repr=False)
    roots: Sequence[str] = ("msh",)
    channels: Mapping[str, ChannelKey] = field(default_factory=dict)

    @classmethod
    def from_url(cls, url: str, **kwargs: object) -> "BrokerSettings":
        """`mqtt://user:password@host:port` (or `mqtts://` for TLS); ValueError if it is not one."""
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in DEFAULT_PORTS:
            raise ValueError(f"an MQTT URL starts with mqtt:// or mqtts://, not {parts.scheme or url!r}")
        if not parts.hostname:
            raise ValueError("an MQTT URL names a host: mqtt://host[:port]")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError("an MQTT URL is mqtt://[user:password@]host[:port], without a path or query")
        try:
            port = parts.port or DEFAULT_PORTS[parts.scheme]
        except ValueError:
            raise ValueError("an MQTT URL's port is a number from 1 to 65535") from None
        username = urllib.parse.unquote(parts.username) if parts.username else None
        password = urllib.parse.unquote(parts.password) if parts.password else None
        return cls(parts.hostname, port, parts.scheme == "mqtts", username, password, **kwargs)  # type: ignore[arg-type]

    @property
    def address(self) -> str:
        """For log lines: never the password."""
        return f"{self.host}:{self.port}"


@dataclass
class BrokerCounters:
    """What the broker brought: read by /status and /metrics; written by paho's thread only."""

    received: int = 0
    taken: int = 0
    rejected: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))
    published: int = 0
    connects: int = 0


class BrokerLink:
    """One broker connection. `start()` once, `stop()` once; `on_uplink` is called on paho's
    network thread for every packet taken, and must only hand it on."""

    def __init__(
        self,
        settings: BrokerSettings,
        on_uplink: Callable[[Uplink], None],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.client_id = f"meshbot-{secrets.token_hex(4)}"
        self.counters = BrokerCounters()
        self._on_uplink = on_uplink
        self._clock = clock
        self._lock = threading.Lock()
        self._state = BrokerState.STOPPED
        self._down_since: Optional[float] = None
        self._told_down = False
        self._changed = threading.Condition(self._lock)
        self._bugs = RepeatedWarning(log, "mqtt: {count} more packets failed the same way in the last {seconds} s", level=logging.ERROR)
        self._client = self._make_client()

    # --- state ---------------------------------------------------------------------------
    @property
    def state(self) -> BrokerState:
        with self._lock:
            return self._state

    def wait_for(self, state: BrokerState, timeout: float) -> bool:
        """Wait until the link is in `state` (tests, `--probe`)."""
        deadline = self._clock() + timeout
        with self._changed:
            while self._state is not state:
                left = deadline - self._clock()
                if left <= 0:
                    return False
                self._changed.wait(left)
        return True

    def _set_state(self, state: BrokerState) -> None:
        with self._changed:
            self._state = state
            self._changed.notify_all()

    # --- life ----------------------------------------------------------------------------
    def start(self) -> None:
        self._set_state(BrokerState.CONNECTING)
        log.info("mqtt: connecting to %s as %s", self.settings.address, self.client_id)
        self._client.connect_async(self.settings.host, self.settings.port, keepalive=KEEPALIVE_S)
        self._client.loop_start()

    def stop(self) -> None:
        if self.state is BrokerState.STOPPED:
            return
        self._set_state(BrokerState.STOPPED)
        self._client.disconnect()
        self._client.loop_stop()

    def publish(self, topic: str, payload: bytes) -> bool:
        """Hand an envelope to paho (QoS 1, so the broker confirms it); False if paho's
        bounded queue is full or the link is stopped: the caller keeps what it wanted sent."""
        if self.state is BrokerState.STOPPED:
            return False
        info = self._client.publish(topic, payload, qos=1)
        if info.rc != paho.MQTT_ERR_SUCCESS and info.rc != paho.MQTT_ERR_NO_CONN:
            return False
        self.counters.published += 1
        return True

    # --- paho ----------------------------------------------------------------------------
    def _make_client(self) -> paho.Client:
        client = paho.Client(
            paho.CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=paho.MQTTv311, clean_session=True
        )
        if self.settings.username is not None:
            client.username_pw_set(self.settings.username, self.settings.password)
        if self.settings.tls:
            client.tls_set_context(ssl.create_default_context())
        client.reconnect_delay_set(min_delay=int(RECONNECT_MIN_S), max_delay=int(RECONNECT_MAX_S))
        client.max_queued_messages_set(PUBLISH_QUEUE_MAX)
        client.on_connect = self._connected
        client.on_subscribe = self._subscribed
        client.on_disconnect = self._disconnected
        client.on_message = self._message
        client.on_connect_fail = self._connect_failed
        return client

    def _connected(self, client: paho.Client, _userdata: object, _flags: object, reason: paho.ReasonCode, _props: object) -> None:
        if reason.is_failure:
            self._went_down(f"the broker refused the connection ({reason}): check the user and password in MQTT_URL")
            return
        client.subscribe(self._topics())
        self.counters.connects += 1

    def _topics(self) -> list[tuple[str, int]]:
        return [(f"{root}/2/e/+/+", 0) for root in self.settings.roots]

    def _subscribed(self, _client: paho.Client, _userdata: object, _mid: int, reasons: list, _props: object) -> None:
        """UP once the broker confirmed the subscription: from then on nothing uplinked is missed."""
        if any(r.is_failure for r in reasons):
            self._went_down(f"the broker refused the subscription ({', '.join(str(r) for r in reasons)})")
            return
        with self._lock:
            down_since, self._down_since, self._told_down = self._down_since, None, False
        self._set_state(BrokerState.UP)
        if down_since is None:
            log.info("mqtt: connected to %s, reading %s", self.settings.address, ", ".join(t for t, _ in self._topics()))
        else:
            log.info("mqtt: broker %s back after %.0f s", self.settings.address, self._clock() - down_since)

    def _disconnected(self, _client: paho.Client, _userdata: object, _flags: object, reason: paho.ReasonCode, _props: object) -> None:
        if self.state is BrokerState.STOPPED:
            return
        self._went_down(f"lost the broker ({reason})")

    def _connect_failed(self, _client: paho.Client, _userdata: object) -> None:
        if self.state is not BrokerState.STOPPED:
            self._went_down("cannot reach the broker")

    def _went_down(self, why: str) -> None:
        """One WARNING per outage (the first cause); paho retries with its backoff."""
        with self._lock:
            if self._down_since is None:
                self._down_since = self._clock()
            tell = not self._told_down
            self._told_down = True
        self._set_state(BrokerState.DOWN)
        if tell:
            log.warning(
                "mqtt: %s at %s; retrying (every %.0f s at most); the linked nodes are not affected",
                why, self.settings.address, RECONNECT_MAX_S,
            )

    def _message(self, _client: paho.Client, _userdata: object, message: paho.MQTTMessage) -> None:
        self.counters.received += 1
        try:
            uplink = read_uplink(message.topic, message.payload, self.settings.channels)
        except Rejected as exc:
            self.counters.rejected[exc.reason] += 1
            return
        self.counters.taken += 1
        try:
            self._on_uplink(uplink)
        except Exception:  # a bug downstream: told in full (once a minute), paho's thread lives on
            self._bugs.log("mqtt: handling a packet from %s failed\n%s", uplink.gateway_id, traceback.format_exc().rstrip())
