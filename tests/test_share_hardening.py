"""The shared node API forwards what an app needs and nothing else (issue 15, part 1).

Raw protocol clients against the bot's API_LISTEN, the simulated node behind the bot; the
simulated node sends its secrets (keys, passwords, PSKs) as the real firmware does
(`meshbot/sim/prefs.py`), so what is stripped is what a real node gives.
"""

from __future__ import annotations

import logging
import socket
import time
from typing import Callable

import pytest
from meshtastic.protobuf import admin_pb2, mesh_pb2, xmodem_pb2

from meshbot.app import Bot
from meshbot.sim.node import SimulatedNode
from tests.conftest import wait_until
from tests.test_share import ADMIN, BOB, OWN, RawClient, ping_answered, start_shared, text_from

XM = xmodem_pb2.XModem.Control
AdminMessage = admin_pb2.AdminMessage


def _xmodem_request(name: str) -> xmodem_pb2.XModem:
    return xmodem_pb2.XModem(control=XM.STX, seq=0, buffer=name.encode())


def _marker(node: SimulatedNode, *clients: RawClient, text: str) -> None:
    """A mesh text every client reads: whatever the bot sent a client before it has arrived."""
    node.user_text(BOB, text)
    for client in clients:
        client.read_until(lambda m: text_from(m, BOB, text))


def test_xmodem_and_mqtt_proxy_frames_need_api_admin_full(node: SimulatedNode, start_bot: Callable[..., Bot]) -> None:
    bot, port = start_shared(start_bot, node)  # API_ADMIN = 'read', the default
    client = RawClient(port)
    try:
        client.handshake()
        client.send(xmodemPacket=_xmodem_request("/prefs/config.proto"))
        cancel = client.read_until(lambda m: m.HasField("xmodemPacket"))
        assert cancel.xmodemPacket.control == XM.CAN
        client.send(mqttClientProxyMessage=mesh_pb2.MqttClientProxyMessage(topic="msh/2/e/LongFast/!x", data=b"\x01"))
        # Ordinary traffic still passes: a heartbeat, a position packet.
        client.send(heartbeat=mesh_pb2.Heartbeat())
        client.read_until(lambda m: m.HasField("queueStatus") and m.queueStatus.mesh_packet_id == 0)
        client.packet(0xFFFFFFFF, portnum=3, payload=mesh_pb2.Position(latitude_i=1).SerializeToString(), packet_id=0x7A7A0001)
        client.read_until(lambda m: m.HasField("queueStatus") and m.queueStatus.mesh_packet_id == 0x7A7A0001)
        assert node.counters.xmodem_frames == 0 and node.counters.mqtt_proxy_frames == 0
        ping_answered(node)
    finally:
        client.close()


def test_with_api_admin_full_xmodem_and_mqtt_answers_go_to_the_asker_only(
    node: SimulatedNode, start_bot: Callable[..., Bot]
) -> None:
    bot, port = start_shared(start_bot, node, API_ADMIN="full")
    asker, other = RawClient(port), RawClient(port)
    try:
        asker.handshake()
        other.handshake()
        # Nobody proxies MQTT yet: what the node hands its client for the broker goes nowhere.
        assert node.mqtt_proxy_publish("msh/2/e/LongFast/!5eed0b07", b"first")
        asker.send(xmodemPacket=_xmodem_request("/prefs/config.proto"))
        block = asker.read_until(lambda m: m.HasField("xmodemPacket"))
        assert block.xmodemPacket.control == XM.SOH and block.xmodemPacket.buffer.endswith(b" config")
        assert node.counters.xmodem_frames == 1

        other.send(mqttClientProxyMessage=mesh_pb2.MqttClientProxyMessage(topic="msh/2/e/LongFast/!x", data=b"\x01"))
        wait_until(lambda: node.counters.mqtt_proxy_frames == 1, 5)
        assert node.mqtt_proxy_publish("msh/2/e/LongFast/!5eed0b07", b"second")
        proxied = other.read_until(lambda m: m.HasField("mqttClientProxyMessage"))
        assert proxied.mqttClientProxyMessage.data == b"second"
        _marker(node, asker, other, text="after the transfers")
        assert [m.xmodemPacket.control for m in other.frames if m.HasField("xmodemPacket")] == []
        assert [m for m in asker.frames if m.HasField("mqttClientProxyMessage")] == []
    finally:
        asker.close()
        other.close()


def _secrets_seen(frames: list[mesh_pb2.FromRadio]) -> dict[str, object]:
    """Every secret field of a handshake, by name."""
    seen: dict[str, object] = {}
    for m in frames:
        if m.HasField("config"):
            config = m.config
            kind = config.WhichOneof("payload_variant")
            if kind == "security":
                seen["private_key"] = config.security.private_key
                seen["admin_key"] = list(config.security.admin_key)
                seen["public_key"] = config.security.public_key
            elif kind == "network":
                seen["wifi_psk"] = config.network.wifi_psk
                seen["wifi_ssid"] = config.network.wifi_ssid
            elif kind == "bluetooth":
                seen["fixed_pin"] = config.bluetooth.fixed_pin
        elif m.HasField("moduleConfig") and m.moduleConfig.HasField("mqtt"):
            seen["mqtt_password"] = m.moduleConfig.mqtt.password
        elif m.HasField("channel"):
            seen[f"psk{m.channel.index}"] = m.channel.settings.psk
    return seen


def test_the_simulated_node_sends_its_secrets_as_a_real_node_does() -> None:
    with SimulatedNode() as node:
        client = RawClient(node.port)
        try:
            seen = _secrets_seen(client.handshake())
        finally:
            client.close()
    secrets = node.secrets
    assert seen["private_key"] == secrets.private_key and seen["admin_key"] == list(secrets.admin_keys)
    assert seen["wifi_psk"] == secrets.wifi_psk and seen["mqtt_password"] == secrets.mqtt_password
    assert seen["psk1"] == secrets.channel_psk and seen["psk0"] == b"\x01" and seen["fixed_pin"] == secrets.ble_pin


def _admin_answer(client: RawClient, packet_id: int, **request: object) -> AdminMessage:
    client.packet(OWN, portnum=ADMIN, payload=AdminMessage(**request).SerializeToString(), packet_id=packet_id)
    answer = client.read_until(lambda m: m.HasField("packet") and m.packet.decoded.request_id == packet_id)
    return AdminMessage.FromString(answer.packet.decoded.payload)


@pytest.mark.parametrize("share_keys", [False, True], ids=["keys-stripped", "keys-shared"])
def test_secrets_are_stripped_from_the_handshake_and_admin_answers(
    node: SimulatedNode, start_bot: Callable[..., Bot], share_keys: bool
) -> None:
    bot, port = start_shared(start_bot, node, API_SHARE_CHANNEL_KEYS=share_keys)
    secrets = node.secrets
    client = RawClient(port)
    try:
        seen = _secrets_seen(client.handshake())
        assert seen["private_key"] == b"" and seen["admin_key"] == [] and seen["wifi_psk"] == ""
        assert seen["mqtt_password"] == "" and seen["fixed_pin"] == 0
        # What an app shows stays: the public key, the Wi-Fi name, the default key's index.
        assert seen["public_key"] == secrets.public_key and seen["wifi_ssid"] == secrets.wifi_ssid
        assert seen["psk0"] == b"\x01"
        assert seen["psk1"] == (secrets.channel_psk if share_keys else b"")

        # Live: the node's admin answers, which API_ADMIN = 'read' lets a client ask for.
        types = AdminMessage
        security = _admin_answer(client, 0x66660001, get_config_request=types.ConfigType.SECURITY_CONFIG)
        assert security.get_config_response.security.public_key == secrets.public_key
        assert security.get_config_response.security.private_key == b""
        assert list(security.get_config_response.security.admin_key) == [] and security.session_passkey == b""
        network = _admin_answer(client, 0x66660002, get_config_request=types.ConfigType.NETWORK_CONFIG)
        assert network.get_config_response.network.wifi_psk == "" and network.get_config_response.network.wifi_ssid
        mqtt = _admin_answer(client, 0x66660003, get_module_config_request=types.ModuleConfigType.MQTT_CONFIG)
        assert mqtt.get_module_config_response.mqtt.password == "" and mqtt.get_module_config_response.mqtt.username
        channel = _admin_answer(client, 0x66660004, get_channel_request=2)  # index + 1: channel 1
        assert channel.get_channel_response.settings.name == "Local"
        assert channel.get_channel_response.settings.psk == (secrets.channel_psk if share_keys else b"")
    finally:
        client.close()


def test_api_admin_full_gets_the_node_whole(node: SimulatedNode, start_bot: Callable[..., Bot]) -> None:
    bot, port = start_shared(start_bot, node, API_ADMIN="full")
    client = RawClient(port)
    try:
        seen = _secrets_seen(client.handshake())
        assert seen["private_key"] == node.secrets.private_key and seen["psk1"] == node.secrets.channel_psk
        answer = _admin_answer(client, 0x66670001, get_config_request=AdminMessage.ConfigType.SECURITY_CONFIG)
        assert answer.get_config_response.security.private_key == node.secrets.private_key
    finally:
        client.close()
