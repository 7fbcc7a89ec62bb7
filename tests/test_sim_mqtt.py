"""The simulated gateways' MQTT module (meshbot/sim/mqtt_gateway.py) against a real Mosquitto,
held to what MESHTASTIC-NOTES measured on firmware 2.7.13, and read by the bot's BrokerLink."""

from __future__ import annotations

import threading
from typing import Iterator

import pytest
from meshtastic.protobuf import mesh_pb2, mqtt_pb2, portnums_pb2

from meshbot.mqtt import envelope
from meshbot.mqtt.broker import BrokerLink, BrokerSettings, BrokerState
from meshbot.mqtt.crypto import ChannelKey, crypt
from meshbot.sim.mqtt_gateway import SimMqttGateway
from tests.broker import Mosquitto
from tests.conftest import wait_until

LONG_FAST = ChannelKey.from_psk("LongFast", "AQ==")
ALICE = 0x1A2B3C01
BOT = 0xB0700001


def text_packet(text: str, *, sender: int = ALICE, packet_id: int = 0x55AA) -> mesh_pb2.MeshPacket:
    packet = mesh_pb2.MeshPacket(to=0xFFFFFFFF, id=packet_id, hop_start=3, hop_limit=3, rx_snr=4.0)
    setattr(packet, "from", sender)
    packet.decoded.portnum = portnums_pb2.PortNum.TEXT_MESSAGE_APP
    packet.decoded.payload = text.encode()
    return packet


@pytest.fixture
def broker(tmp_path) -> Iterator[Mosquitto]:
    mosquitto = Mosquitto(tmp_path).start()
    yield mosquitto
    mosquitto.stop()


@pytest.fixture
def bot_link(broker) -> Iterator[tuple[BrokerLink, list[envelope.Uplink]]]:
    taken: list[envelope.Uplink] = []
    link = BrokerLink(BrokerSettings.from_url(broker.url, channels={"LongFast": LONG_FAST}), taken.append)
    link.start()
    assert link.wait_for(BrokerState.UP, 15)
    yield link, taken
    link.stop()


def test_every_gateway_uplinks_what_it_hears_and_the_bot_reads_each_copy(broker, bot_link):
    link, taken = bot_link
    with SimMqttGateway(0x2133, broker.port) as a, SimMqttGateway(0x2135, broker.port, encryption=False) as c:
        packet = text_packet("/ping")
        assert a.hear(packet) and c.hear(packet)
        wait_until(lambda: len(taken) == 2, 10)
    assert sorted(u.gateway_id for u in taken) == ["!00002133", "!00002135"]
    assert {u.encrypted for u in taken} == {True, False}  # A encrypts, C does not
    assert {(u.sender, u.packet.id, u.packet.decoded.payload) for u in taken} == {(ALICE, 0x55AA, b"/ping")}  # one packet: dedup is the bot's


def test_a_downlink_is_transmitted_by_every_downlink_gateway_of_the_root_but_the_publisher(broker, bot_link):
    link, _taken = bot_link
    with SimMqttGateway(0x2133, broker.port) as a, SimMqttGateway(0x2134, broker.port) as b, \
            SimMqttGateway(0x2135, broker.port, downlink=False) as c, SimMqttGateway(0x2136, broker.port, root="msh/valley") as d:
        reply = text_packet("pong", sender=BOT, packet_id=0x7777)
        assert link.publish("msh/2/e/LongFast/!b0700001", envelope.make_downlink(reply, LONG_FAST, "!b0700001"))
        wait_until(lambda: a.transmitted and b.transmitted, 10)
        # Same envelope, published with A's own gateway id: A ignores it ("we originally sent").
        assert link.publish("msh/2/e/LongFast/!00002133", envelope.make_downlink(text_packet("x", sender=BOT, packet_id=8), LONG_FAST, "!00002133"))
        wait_until(lambda: len(b.transmitted) == 2 and a.counters.dropped.get("own gateway id") == 1, 10)
    assert [p.decoded.payload for p in a.transmitted] == [b"pong"]
    on_air = a.transmitted[0]
    assert on_air.via_mqtt and on_air.hop_limit == 2 and on_air.hop_start == 3  # published 3 -> on the air 2
    assert c.transmitted == [] and d.transmitted == []  # downlink off; another root


def test_a_gateway_drops_what_the_firmware_drops(broker, bot_link):
    link, _taken = bot_link
    with SimMqttGateway(0x2133, broker.port) as a:
        decoded = mqtt_pb2.ServiceEnvelope(packet=text_packet("clear", sender=BOT), channel_id="LongFast", gateway_id="!b0700001")
        link.publish("msh/2/e/LongFast/!b0700001", decoded.SerializeToString())  # decoded while encryption is on
        hops = text_packet("far", sender=BOT, packet_id=9)
        hops.hop_start = hops.hop_limit = 8
        link.publish("msh/2/e/LongFast/!b0700001", envelope.make_downlink(hops, LONG_FAST, "!b0700001"))
        link.publish("msh/2/e/LongFast/!b0700001", envelope.make_downlink(text_packet("k", sender=BOT, packet_id=10), ChannelKey("LongFast", bytes(16)), "!b0700001"))
        wait_until(lambda: sum(a.counters.dropped.values()) == 3, 10)
        assert a.transmitted == []
        assert a.counters.dropped == {"decoded while encryption is on": 1, "invalid hops": 1, "undecryptable": 1}


def test_a_packet_that_came_from_mqtt_is_never_uplinked_again(broker):
    with SimMqttGateway(0x2133, broker.port) as a:
        packet = text_packet("relayed")
        packet.via_mqtt = True
        assert not a.hear(packet)
        assert a.counters.uplinked == 0


def test_the_uplinked_packet_decrypts_with_the_firmware_nonce(broker):
    """What the gateway publishes, decrypted here by hand (packet id, then sender, little-endian)."""
    import paho.mqtt.client as paho

    got: list[bytes] = []
    subscribed = threading.Event()
    listener = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="listener", protocol=paho.MQTTv311)
    listener.on_message = lambda _c, _u, m: got.append(m.payload)
    listener.on_subscribe = lambda *_args: subscribed.set()
    listener.connect("127.0.0.1", broker.port)
    listener.subscribe("msh/2/e/+/+")
    listener.loop_start()
    try:
        with SimMqttGateway(0x2133, broker.port) as a:
            assert subscribed.wait(10)
            a.hear(text_packet("secret"))
            wait_until(lambda: got, 10)
    finally:
        listener.disconnect()
        listener.loop_stop()
    packet = mqtt_pb2.ServiceEnvelope.FromString(got[0]).packet
    assert packet.channel == 8 and packet.WhichOneof("payload_variant") == "encrypted"
    data = mesh_pb2.Data.FromString(crypt(LONG_FAST.key, packet.id, ALICE, packet.encrypted))
    assert data.payload == b"secret"
