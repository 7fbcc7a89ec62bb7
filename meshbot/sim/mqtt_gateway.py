"""`SimMqttGateway`: a simulated node's MQTT module, uplinking what it hears to a real broker and
transmitting what is published for it, as firmware 2.7.13 does.

What it relies on, all in ../shared/MESHTASTIC-NOTES.md ("MQTT", measured on meshtasticd
2.7.13 with Mosquitto 2.0.11, and read in the firmware's `src/mqtt/MQTT.cpp`):

* the client id is the gateway's node id (`!00002133`), MQTT 3.1.1, clean session,
  keepalive 15 s, user `meshdev` / `large4cats` unless set;
* uplink: every packet heard or sent on an uplink channel, as received (hop limit not
  decremented), in a `ServiceEnvelope` on `<root>/2/e/<channel>/<!gateway id>`; encrypted
  with the channel key when `encryption` is on, else decoded; packets that came from MQTT
  (`via_mqtt`) are never uplinked again;
* downlink: subscribed (QoS 1) to `<root>/2/e/<channel>/+` for each downlink channel, then to
  `<root>/2/e/PKI/+`; the topic's last level is not looked at, the envelope's `channel_id`
  must be the channel's name. Dropped: an envelope with the gateway's own id (and, if the
  packet is also from itself, taken as an implicit ACK), a decoded packet while encryption
  is on, a hop limit or start above 7, a packet that does not decrypt. Accepted packets go
  on the air with `hop_limit - 1` and `via_mqtt` set, and to the node's own client.

What it leaves out (no test needs it): map reports, JSON, the `ok_to_mqtt` bit and the
private-address rule for public brokers (the tests' broker is 127.0.0.1, where every packet
is uplinked), PKI decryption.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional

import paho.mqtt.client as paho
from google.protobuf.message import DecodeError
from meshtastic.protobuf import mesh_pb2, mqtt_pb2

from meshbot.mqtt.crypto import ChannelKey, crypt

MAX_HOPS = 7


@dataclass
class GatewayCounters:
    uplinked: int = 0
    transmitted: int = 0  # downlinked packets put on the (simulated) air
    implicit_acks: int = 0
    dropped: dict[str, int] = field(default_factory=dict)

    def drop(self, why: str) -> None:
        self.dropped[why] = self.dropped.get(why, 0) + 1


class SimMqttGateway:
    """One simulated gateway node's MQTT side. `on_air(packet)` is called for every packet it
    transmits from the broker (the simulated mesh decides who hears it)."""

    def __init__(
        self,
        node_num: int,
        broker_port: int,
        *,
        root: str = "msh",
        channels: Optional[Mapping[str, ChannelKey]] = None,
        encryption: bool = True,
        downlink: bool = True,
        on_air: Optional[Callable[[mesh_pb2.MeshPacket], None]] = None,
        username: str = "meshdev",
        password: str = "large4cats",
    ) -> None:
        self.node_num = node_num
        self.gateway_id = f"!{node_num:08x}"
        self.root = root
        self.channels = dict(channels or {"LongFast": ChannelKey.from_psk("LongFast", "AQ==")})
        self.encryption = encryption
        self.downlink = downlink
        self.counters = GatewayCounters()
        self.on_air = on_air or (lambda _packet: None)
        self.transmitted: list[mesh_pb2.MeshPacket] = []
        self._port = broker_port
        self._subscribed = threading.Event()
        self._client = paho.Client(
            paho.CallbackAPIVersion.VERSION2, client_id=self.gateway_id, protocol=paho.MQTTv311, clean_session=True
        )
        self._client.username_pw_set(username, password)
        self._client.on_connect = self._connected
        self._client.on_subscribe = lambda *_args: self._subscribed.set()
        self._client.on_message = self._message

    def start(self, timeout: float = 15.0) -> "SimMqttGateway":
        self._client.connect("127.0.0.1", self._port, keepalive=15)
        self._client.loop_start()
        if not self._subscribed.wait(timeout):
            raise RuntimeError(f"gateway {self.gateway_id} did not subscribe")
        return self

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> "SimMqttGateway":
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # --- uplink ------------------------------------------------------------------------------
    def hear(self, packet: mesh_pb2.MeshPacket, channel: str = "LongFast") -> bool:
        """The gateway heard (or sent) `packet`, decoded, on `channel`: uplinked as received.
        False if the firmware would not uplink it."""
        key = self.channels.get(channel)
        if key is None or packet.via_mqtt:
            return False
        out = mesh_pb2.MeshPacket()
        out.CopyFrom(packet)
        out.channel = key.hash
        if self.encryption and key.key is not None:
            out.encrypted = crypt(key.key, out.id, getattr(out, "from"), out.decoded.SerializeToString())
        envelope = mqtt_pb2.ServiceEnvelope(packet=out, channel_id=channel, gateway_id=self.gateway_id)
        self._client.publish(f"{self.root}/2/e/{channel}/{self.gateway_id}", envelope.SerializeToString(), qos=0).wait_for_publish(10)
        self.counters.uplinked += 1
        return True

    # --- downlink ----------------------------------------------------------------------------
    def _connected(self, client: paho.Client, _userdata: object, _flags: object, reason: paho.ReasonCode, _props: object) -> None:
        if reason.is_failure:
            return
        topics = [(f"{self.root}/2/e/{name}/+", 1) for name in self.channels] if self.downlink else []
        client.subscribe(topics + [(f"{self.root}/2/e/PKI/+", 1)])

    def _message(self, _client: paho.Client, _userdata: object, message: paho.MQTTMessage) -> None:
        envelope = mqtt_pb2.ServiceEnvelope()
        try:
            envelope.ParseFromString(message.payload)
        except DecodeError:
            self.counters.drop("undecodable")
            return
        packet = envelope.packet
        sender = getattr(packet, "from")
        if envelope.gateway_id == self.gateway_id:
            if sender == self.node_num:
                self.counters.implicit_acks += 1  # "Received a ACK for <id>"
            else:
                self.counters.drop("own gateway id")  # "Ignore downlink message we originally sent"
            return
        key = self.channels.get(envelope.channel_id)
        if key is None or not self.downlink:
            self.counters.drop("not a downlink channel")
            return
        if sender == self.node_num:
            self.counters.drop("from itself")
            return
        if packet.hop_limit > MAX_HOPS or packet.hop_start > MAX_HOPS:
            self.counters.drop("invalid hops")
            return
        kind = packet.WhichOneof("payload_variant")
        if kind == "decoded" and self.encryption:
            self.counters.drop("decoded while encryption is on")
            return
        air = mesh_pb2.MeshPacket()
        air.CopyFrom(packet)
        if kind == "encrypted":
            if key.key is None or packet.channel != key.hash:
                self.counters.drop("undecryptable")
                return
            data = mesh_pb2.Data()
            try:
                data.ParseFromString(crypt(key.key, packet.id, sender, packet.encrypted))
            except DecodeError:
                self.counters.drop("undecryptable")
                return
            if data.portnum == 0:
                self.counters.drop("undecryptable")
                return
            air.decoded.CopyFrom(data)
        air.via_mqtt = True
        air.hop_limit = max(0, packet.hop_limit - 1)
        self.transmitted.append(air)
        self.counters.transmitted += 1
        self.on_air(air)
