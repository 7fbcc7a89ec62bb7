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


def test_api_allow_closes_other_addresses_at_accept(node: SimulatedNode, start_bot: Callable[..., Bot], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="meshbot")
    bot, port = start_shared(start_bot, node, API_ALLOW=["10.0.0.0/8"])
    outsiders = [RawClient(port) for _ in range(5)]
    try:
        for client in outsiders:
            assert client.closed_by_peer()
        lines = [r.getMessage() for r in caplog.records if "not in API_ALLOW" in r.getMessage()]
        assert lines and len(lines) <= 6 and lines[0].startswith("refused API client 127.0.0.1:"), lines
        assert bot.share is not None and bot.share.client_count() == 0
    finally:
        for client in outsiders:
            client.close()


def test_api_allow_admits_listed_addresses(node: SimulatedNode, start_bot: Callable[..., Bot]) -> None:
    bot, port = start_shared(start_bot, node, API_ALLOW=["10.0.0.0/8", "127.0.0.1"])
    client = RawClient(port)
    try:
        assert any(m.HasField("my_info") for m in client.handshake())
    finally:
        client.close()


def test_a_bad_api_allow_is_a_config_error_naming_the_key() -> None:
    from meshbot.config import ConfigError, build_settings

    for bad in (["192.168.1.7/24"], ["not an address"], [42], "10.0.0.0/33"):
        with pytest.raises(ConfigError, match="API_ALLOW"):
            build_settings(dict(NODE_HOST="127.0.0.1", API_ALLOW=bad))
    settings = build_settings(dict(NODE_HOST="127.0.0.1", API_ALLOW=["127.0.0.1", "fd00::/8"]))
    assert settings.API_ALLOW == ("127.0.0.1/32", "fd00::/8")


def test_a_client_must_ask_for_its_handshake_in_time_and_one_address_has_two_connections(
    node: SimulatedNode, start_bot: Callable[..., Bot]
) -> None:
    bot, port = start_shared(start_bot, node)
    assert bot.share is not None
    talker = RawClient(port)
    talker.handshake()
    bot.share.handshake_timeout_s = 0.5  # 30 s in service
    silent = RawClient(port)
    try:
        third = RawClient(port)  # a third connection from 127.0.0.1: closed at once
        assert third.closed_by_peer(2.0)
        third.close()
        # Stray bytes are no handshake and renew nothing: the silent one is closed.
        silent.sock.sendall(b"\x00" * 16)
        assert silent.closed_by_peer()
        # The idle timeout still applies after a handshake, not this deadline.
        talker.send(heartbeat=mesh_pb2.Heartbeat())
        talker.read_until(lambda m: m.HasField("queueStatus"))
        # A closed session leaves the count when its reader thread ends, a moment later.
        wait_until(lambda: bot.share is not None and bot.share.client_count() == 1, 5)
    finally:
        silent.close()
        talker.close()


def test_the_port_stays_bound_and_listening_while_the_link_is_down(
    node: SimulatedNode, start_bot: Callable[..., Bot], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="meshbot")
    bot, port = start_shared(start_bot, node)
    node.stop_listening(2.0)
    wait_until(lambda: bot.share is not None and not bot.share.listening, 5)
    # Another local account tries to take the port while the link is down (on main: it
    # could, and the bot then logged a traceback a second once the link was back).
    thief = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    thief.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        with pytest.raises(OSError):
            thief.bind(("127.0.0.1", port))
            thief.listen()
    finally:
        thief.close()
    early = RawClient(port)  # accepted and closed at once while the link is down
    assert early.closed_by_peer()
    early.close()
    assert node.wait_connected(10, handshakes=2)
    wait_until(lambda: bot.share is not None and bot.share.listening, 10)
    client = RawClient(port)
    try:
        assert any(m.HasField("my_info") for m in client.handshake())
    finally:
        client.close()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_taken_port_is_one_error_then_quiet_retries(
    node: SimulatedNode, start_bot: Callable[..., Bot], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="meshbot")
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    try:
        taken = holder.getsockname()[1]
        bot = start_bot(node, API_LISTEN=f"127.0.0.1:{taken}")
        wait_until(lambda: any("cannot listen on API_LISTEN" in r.getMessage() for r in caplog.records), 5)
        ping_answered(node)  # the bot works meanwhile, unshared (and its server loop went round)
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and errors[0].exc_info is None, [r.getMessage() for r in errors]
        assert bot.share is not None and not bot.share.bound
    finally:
        holder.close()


def test_repeated_warning_burst_lets_a_few_lines_through_then_summarises(caplog: pytest.LogCaptureFixture) -> None:
    from meshbot.logs import RepeatedWarning

    now = [0.0]
    logger = logging.getLogger("meshbot.test.burst")
    caplog.set_level(logging.INFO, logger="meshbot.test.burst")
    note = RepeatedWarning(logger, "{count} more in {seconds} s", level=logging.INFO, burst=3, clock=lambda: now[0])
    for i in range(10):
        note.log("connect %d", i)
    note.flush()
    assert [r.getMessage() for r in caplog.records] == ["connect 0", "connect 1", "connect 2", "7 more in 0 s"]
    now[0] = 61.0
    note.log("connect %d", 10)  # a new minute: in full again
    assert caplog.records[-1].getMessage() == "connect 10"


def _nodeinfo_packet(num: int, name: str) -> mesh_pb2.MeshPacket:
    packet = mesh_pb2.MeshPacket(to=0xFFFFFFFF, id=num ^ 0x0F0F0F0F, rx_time=int(time.time()))
    setattr(packet, "from", num)
    packet.decoded.portnum = 4  # NODEINFO_APP
    packet.decoded.payload = mesh_pb2.User(id=f"!{num:08x}", long_name=name, short_name=name[:4]).SerializeToString()
    return packet


def test_the_client_node_list_is_bounded_by_node_db_max(node: SimulatedNode, start_bot: Callable[..., Bot]) -> None:
    bot, port = start_shared(start_bot, node, NODE_DB_MAX=10)
    forged = [_nodeinfo_packet(0x0BAD0000 + i, f"forged {i}") for i in range(300)]
    node.deliver_many(forged)
    honest = _nodeinfo_packet(0x1A2B3C77, "Honest")
    node.deliver(honest)  # heard last: the most recent
    client = RawClient(port)
    try:
        wait_until(lambda: any(m.node_info.num == 0x1A2B3C77 for m in client.handshake(69421) if m.HasField("node_info")), 10)
        nodes = [m.node_info.num for m in client.handshake(69421) if m.HasField("node_info")]
        assert nodes[0] == OWN and nodes[1] == 0x1A2B3C77 and len(nodes) == 1 + 10, nodes
        assert nodes[2:] == [0x0BAD0000 + i for i in range(299, 290, -1)]  # the most recently heard
        my_info = [m.my_info for m in client.handshake() if m.HasField("my_info")][0]
        assert my_info.nodedb_count == 11
    finally:
        client.close()


def test_the_snapshot_keeps_the_most_recent_of_a_handshake_over_the_bound() -> None:
    from meshbot.share.handshake import NodeSnapshot

    snapshot = NodeSnapshot(max_nodes=2)
    frames = [mesh_pb2.FromRadio(my_info=mesh_pb2.MyNodeInfo(my_node_num=OWN))]
    frames += [mesh_pb2.FromRadio(node_info=mesh_pb2.NodeInfo(num=n)) for n in (OWN, 0xA1, 0xA2, 0xA3)]  # most recent first
    frames.append(mesh_pb2.FromRadio(config_complete_id=7))
    for message in frames:
        snapshot.note_frame(message, message.WhichOneof("payload_variant") or "")
    data = snapshot.compose(69421)
    assert data is not None
    nums = []
    while data:
        length = int.from_bytes(data[2:4], "big")
        message = mesh_pb2.FromRadio.FromString(data[4 : 4 + length])
        if message.HasField("node_info"):
            nums.append(message.node_info.num)
        data = data[4 + length :]
    assert nums == [OWN, 0xA1, 0xA2]


def _statuses(client: RawClient, packet_id: int, count: int) -> list[int]:
    """The `res` of the next `count` queueStatus frames about `packet_id`, in arrival order."""
    out = []
    for _ in range(count):
        status = client.read_until(lambda m: m.HasField("queueStatus") and m.queueStatus.mesh_packet_id == packet_id, 10)
        out.append(status.queueStatus.res)
    return out


def test_a_packet_id_used_already_is_refused_at_once_and_stalls_nobody(
    node: SimulatedNode, start_bot: Callable[..., Bot], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="meshbot")
    bot, port = start_shared(start_bot, node)
    client, other = RawClient(port), RawClient(port, source="127.0.0.2")
    try:
        client.handshake()
        other.handshake()
        for i in range(5):  # one id, five texts: on main all five entered the outbox
            client.packet(0xFFFFFFFF, f"same id {i}", packet_id=0x77770001)
        results = _statuses(client, 0x77770001, 5)
        assert results.count(0) == 1 and len([r for r in results if r]) == 4, results
        other.packet(0xFFFFFFFF, "another client, the same id", packet_id=0x77770001)
        assert _statuses(other, 0x77770001, 1)[0] != 0
        # The id of the bot's own reply (every client sees it): the node would drop it unanswered.
        node.user_text(0x1A2B3C01, "/ping")
        pong = other.read_until(lambda m: m.HasField("packet") and m.packet.decoded.payload.startswith(b"pong"))
        other.packet(0xFFFFFFFF, "the bot's id", packet_id=pong.packet.id)
        assert _statuses(other, pong.packet.id, 1)[0] != 0
        ping_answered(node)
        assert [t.text for t in node.texts if t.text.startswith("same id")] == ["same id 0"]
        assert node.counters.ignored_repeats == 0  # nothing the node had to drop unanswered
        assert "no status from the node" not in caplog.text
    finally:
        client.close()
        other.close()


def test_a_config_frame_after_the_handshake_is_kept_stripped() -> None:
    """Frames the node sends later (a config frame, a channel) reach clients only through the
    snapshot, which never holds their secrets."""
    from meshtastic.protobuf import channel_pb2, config_pb2

    from meshbot.share.filter import SecretFilter
    from meshbot.share.handshake import NodeSnapshot

    snapshot = NodeSnapshot(SecretFilter("read", share_channel_keys=False))
    for message in (
        mesh_pb2.FromRadio(my_info=mesh_pb2.MyNodeInfo(my_node_num=OWN)),
        mesh_pb2.FromRadio(config_complete_id=1),
        mesh_pb2.FromRadio(config=config_pb2.Config(security=config_pb2.Config.SecurityConfig(
            public_key=b"P" * 32, private_key=b"S" * 32, admin_key=[b"A" * 32]))),
        mesh_pb2.FromRadio(channel=channel_pb2.Channel(index=2, settings=channel_pb2.ChannelSettings(psk=b"K" * 32))),
    ):
        snapshot.note_frame(message, message.WhichOneof("payload_variant") or "")
    data = snapshot.compose(5)
    assert data is not None and b"S" * 32 not in data and b"A" * 32 not in data and b"K" * 32 not in data
    assert b"P" * 32 in data
