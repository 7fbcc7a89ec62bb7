"""meshbot/mqtt (issue 16, its foundations): channel keys and encryption as the firmware does
them, ServiceEnvelopes read and made, and `BrokerLink` against a real Mosquitto started here.

The broker tests publish as a gateway does (a plain paho client, the envelope the firmware's
MQTT module publishes) and read what `BrokerLink` takes, rejects and publishes.
"""

from __future__ import annotations

import base64
import logging
import re
import struct
import threading
from typing import Iterator

import paho.mqtt.client as paho
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from meshtastic.protobuf import mesh_pb2, mqtt_pb2, portnums_pb2

from meshbot.mqtt import envelope
from meshbot.mqtt.broker import BrokerLink, BrokerSettings, BrokerState
from meshbot.mqtt.crypto import DEFAULT_KEY, ChannelKey, PskError, channel_hash, crypt, expand_psk, parse_psk
from tests.broker import Mosquitto
from tests.conftest import wait_until

LONG_FAST = ChannelKey.from_psk("LongFast", "AQ==")
PRIVATE = ChannelKey("Club", bytes(range(32)))
CLEAR = ChannelKey("Open", None)
CHANNELS = {c.name: c for c in (LONG_FAST, PRIVATE, CLEAR)}
GATEWAY = "!00002133"
ALICE = 0x1A2B3C01


def text_packet(text: str, *, sender: int = ALICE, packet_id: int = 0x1234ABCD, hops: int = 0) -> mesh_pb2.MeshPacket:
    packet = mesh_pb2.MeshPacket(to=0xFFFFFFFF, id=packet_id, hop_start=3, hop_limit=3 - hops, rx_snr=6.25)
    setattr(packet, "from", sender)
    packet.decoded.portnum = portnums_pb2.PortNum.TEXT_MESSAGE_APP
    packet.decoded.payload = text.encode()
    return packet


def topic(channel: str, gateway: str = GATEWAY, root: str = "msh") -> str:
    return f"{root}/2/e/{channel}/{gateway}"


# --- keys and encryption ------------------------------------------------------------------------
def test_psk_expansion_as_the_firmware_does_it():
    assert parse_psk("AQ==") == DEFAULT_KEY == base64.b64decode("1PG7OiApB1nwvP+rz05pAQ==")
    assert parse_psk("Ag==") == DEFAULT_KEY[:-1] + bytes((DEFAULT_KEY[-1] + 1,))  # n: last byte + n - 1
    assert parse_psk("") is None and parse_psk("AA==") is None  # no encryption
    assert expand_psk(bytes(16)) == bytes(16) and expand_psk(bytes(32)) == bytes(32)
    for bad in ("AAAA", "not base64!", base64.b64encode(bytes(8)).decode()):
        with pytest.raises(PskError):
            parse_psk(bad)


def test_channel_hash_of_longfast_with_the_default_key_is_8():
    # Measured on meshtasticd 2.7.13 (MESHTASTIC-NOTES, "MQTT").
    assert LONG_FAST.hash == 8
    assert channel_hash("Open", None) == ord("O") ^ ord("p") ^ ord("e") ^ ord("n")


def test_the_nonce_is_packet_id_then_sender_little_endian():
    clear = b"\x08\x01\x12\x05hello"
    nonce = struct.pack("<Q", 0x1234ABCD) + struct.pack("<I", ALICE) + bytes(4)
    expected = Cipher(algorithms.AES(DEFAULT_KEY), modes.CTR(nonce)).encryptor().update(clear)
    assert crypt(DEFAULT_KEY, 0x1234ABCD, ALICE, clear) == expected
    assert crypt(DEFAULT_KEY, 0x1234ABCD, ALICE, expected) == clear  # CTR is its own inverse


# --- envelopes ----------------------------------------------------------------------------------
@pytest.mark.parametrize("channel", [LONG_FAST, PRIVATE, CLEAR], ids=lambda c: c.name)
def test_a_downlink_envelope_reads_back_as_the_packet(channel):
    payload = envelope.make_downlink(text_packet("/ping", hops=2), channel, GATEWAY)
    raw = mqtt_pb2.ServiceEnvelope.FromString(payload)
    assert raw.channel_id == channel.name and raw.gateway_id == GATEWAY and raw.packet.channel == channel.hash
    assert raw.packet.WhichOneof("payload_variant") == ("decoded" if channel.key is None else "encrypted")
    uplink = envelope.read_uplink(topic(channel.name), payload, CHANNELS)
    assert uplink.packet.decoded.payload == b"/ping" and uplink.sender == ALICE and uplink.hops == 2
    assert (uplink.root, uplink.channel, uplink.gateway_id, uplink.encrypted) == ("msh", channel.name, GATEWAY, channel.key is not None)


def test_a_root_of_several_levels_is_kept():
    payload = envelope.make_downlink(text_packet("hi"), LONG_FAST, GATEWAY)
    assert envelope.read_uplink(topic("LongFast", root="msh/EU_868/valley"), payload, CHANNELS).root == "msh/EU_868/valley"


def _forged(**packet_fields: object) -> bytes:
    packet = text_packet("hi")
    for name, value in packet_fields.items():
        setattr(packet, name, value)
    return envelope.make_downlink(packet, LONG_FAST, GATEWAY)


@pytest.mark.parametrize(
    ("where", "payload", "reason"),
    [
        (topic("LongFast"), b"\xff\xff garbage", envelope.UNDECODABLE),
        (topic("LongFast"), mqtt_pb2.ServiceEnvelope(channel_id="LongFast", gateway_id=GATEWAY).SerializeToString(), envelope.UNDECODABLE),
        ("msh/2/c/LongFast/!00002133", b"", envelope.BAD_TOPIC),
        ("msh/LongFast", b"", envelope.BAD_TOPIC),
        (topic("Other"), envelope.make_downlink(text_packet("hi"), LONG_FAST, GATEWAY), envelope.BAD_TOPIC),
        (topic("Secret"), envelope.make_downlink(text_packet("hi"), ChannelKey("Secret", bytes(16)), GATEWAY), envelope.UNKNOWN_CHANNEL),
        (topic("PKI"), envelope.make_downlink(text_packet("hi"), ChannelKey("PKI", None), GATEWAY), envelope.PKI),
        # A wrong key: the channel hash says so, and where it does not, the payload does.
        (topic("Club"), envelope.make_downlink(text_packet("hi"), ChannelKey("Club", bytes(32)), GATEWAY), envelope.UNDECRYPTABLE),
        (topic("LongFast", gateway="gateway"), envelope.make_downlink(text_packet("hi"), LONG_FAST, "gateway"), envelope.INVALID),
        (topic("LongFast"), _forged(hop_start=8, hop_limit=8), envelope.INVALID),
        (topic("LongFast"), _forged(**{"from": 0xFFFFFFFF}), envelope.INVALID),
        (topic("LongFast"), _forged(**{"from": 0}), envelope.INVALID),
    ],
)
def test_what_a_hostile_publisher_sends_is_rejected_with_a_reason(where, payload, reason):
    with pytest.raises(envelope.Rejected) as caught:
        envelope.read_uplink(where, payload, CHANNELS)
    assert caught.value.reason == reason


def test_a_wrong_key_with_the_right_hash_is_still_rejected():
    wrong = ChannelKey("Club", bytes(reversed(range(32))))  # the same bytes, so the same XOR: the same hash
    assert wrong.hash == PRIVATE.hash
    payload = envelope.make_downlink(text_packet("hello there"), wrong, GATEWAY)
    with pytest.raises(envelope.Rejected) as caught:
        envelope.read_uplink(topic("Club"), payload, CHANNELS)
    assert caught.value.reason == envelope.UNDECRYPTABLE


# --- settings -----------------------------------------------------------------------------------
def test_broker_settings_from_a_url():
    s = BrokerSettings.from_url("mqtt://bot:s%40cret@127.0.0.1:1884")
    assert (s.host, s.port, s.tls, s.username, s.password) == ("127.0.0.1", 1884, False, "bot", "s@cret")
    assert "s@cret" not in repr(s) and s.address == "127.0.0.1:1884"
    assert BrokerSettings.from_url("mqtts://broker.example").port == 8883
    assert BrokerSettings.from_url("mqtt://10.0.0.5").port == 1883
    for bad in ("http://x", "mqtt://", "mqtt://h:99999", "mqtt://h/topic", "127.0.0.1:1883"):
        with pytest.raises(ValueError):
            BrokerSettings.from_url(bad)


# --- against a real Mosquitto -------------------------------------------------------------------
@pytest.fixture
def broker(tmp_path) -> Iterator[Mosquitto]:
    mosquitto = Mosquitto(tmp_path).start()
    yield mosquitto
    mosquitto.stop()


class Gateway:
    """A plain MQTT client publishing as a gateway node does (and reading what is published)."""

    def __init__(self, port: int, client_id: str = GATEWAY) -> None:
        self.received: list[paho.MQTTMessage] = []
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv311)
        self.client.on_message = lambda _c, _u, message: self.received.append(message)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def publish(self, where: str, payload: bytes) -> None:
        self.client.publish(where, payload, qos=1).wait_for_publish(10)

    def subscribe(self, where: str) -> None:
        done = threading.Event()
        self.client.on_subscribe = lambda *_args: done.set()
        self.client.subscribe(where, qos=1)
        assert done.wait(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Taken:
    def __init__(self) -> None:
        self.uplinks: list[envelope.Uplink] = []

    def __call__(self, uplink: envelope.Uplink) -> None:
        self.uplinks.append(uplink)


def _link(url: str, taken: Taken, **kwargs: object) -> BrokerLink:
    return BrokerLink(BrokerSettings.from_url(url, channels=CHANNELS, **kwargs), taken)


def test_the_bot_reads_encrypted_and_clear_uplinks_and_only_counts_the_rest(broker, caplog):
    caplog.set_level(logging.INFO, logger="meshbot")
    taken = Taken()
    link = _link(broker.url, taken)
    link.start()
    gateway = Gateway(broker.port)
    try:
        assert link.wait_for(BrokerState.UP, 15)
        assert not re.fullmatch(r"![0-9a-f]{8}", link.client_id)  # never a node's id: the broker would kick the node
        gateway.publish(topic("LongFast"), envelope.make_downlink(text_packet("/ping"), LONG_FAST, GATEWAY))
        gateway.publish(topic("Open"), envelope.make_downlink(text_packet("/help", packet_id=7), CLEAR, GATEWAY))
        for i in range(200):
            gateway.publish(topic("LongFast"), b"garbage %d" % i)
        gateway.publish(topic("Club"), envelope.make_downlink(text_packet("x"), ChannelKey("Club", bytes(32)), GATEWAY))
        wait_until(lambda: link.counters.received == 203, 15)
        assert [u.packet.decoded.payload for u in taken.uplinks] == [b"/ping", b"/help"]
        assert taken.uplinks[0].encrypted and not taken.uplinks[1].encrypted
        assert link.counters.taken == 2
        assert link.counters.rejected[envelope.UNDECODABLE] == 200 and link.counters.rejected[envelope.UNDECRYPTABLE] == 1
        mqtt_lines = [r for r in caplog.records if r.name.startswith("meshbot.mqtt")]
        assert len(mqtt_lines) <= 2, [r.getMessage() for r in mqtt_lines]  # connecting, connected: nothing per message
    finally:
        gateway.close()
        link.stop()


def test_what_the_bot_publishes_reaches_the_gateways(broker):
    link = _link(broker.url, Taken())
    link.start()
    gateway = Gateway(broker.port)
    try:
        assert link.wait_for(BrokerState.UP, 15)
        gateway.subscribe("msh/2/e/LongFast/+")
        assert link.publish(topic("LongFast", gateway="!b0700001"), envelope.make_downlink(text_packet("pong"), LONG_FAST, "!b0700001"))
        wait_until(lambda: gateway.received, 10)
        got = envelope.read_uplink(gateway.received[0].topic, gateway.received[0].payload, CHANNELS)
        assert got.packet.decoded.payload == b"pong" and got.gateway_id == "!b0700001"
    finally:
        gateway.close()
        link.stop()


def test_a_refused_login_is_one_warning_however_often_paho_retries(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="meshbot")
    broker = Mosquitto(tmp_path, users={"bot": "right"}).start()
    link = _link(f"mqtt://bot:wrong@127.0.0.1:{broker.port}", Taken())
    try:
        link.start()
        assert link.wait_for(BrokerState.DOWN, 15)
        wait_until(lambda: broker.log().count("not authorised") >= 2, 20)  # paho retried
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "refused the connection" in warnings[0] and "MQTT_URL" in warnings[0]
        assert "wrong" not in " ".join(r.getMessage() for r in caplog.records)  # no password in the log
    finally:
        link.stop()
        broker.stop()


def test_a_restarted_broker_is_reconnected_and_resubscribed(broker, caplog):
    caplog.set_level(logging.INFO, logger="meshbot")
    taken = Taken()
    link = _link(broker.url, taken)
    link.start()
    try:
        assert link.wait_for(BrokerState.UP, 15)
        broker.stop()
        assert link.wait_for(BrokerState.DOWN, 15)
        broker.start()  # the same port
        assert link.wait_for(BrokerState.UP, 30)
        gateway = Gateway(broker.port)
        try:
            gateway.publish(topic("LongFast"), envelope.make_downlink(text_packet("/ping"), LONG_FAST, GATEWAY))
            wait_until(lambda: taken.uplinks, 10)
        finally:
            gateway.close()
        messages = [r.getMessage() for r in caplog.records]
        assert len([m for m in messages if "lost the broker" in m]) == 1
        assert any(re.search(r"mqtt: broker 127\.0\.0\.1:\d+ back after \d+ s", m) for m in messages)
        assert link.counters.connects == 2
    finally:
        link.stop()
