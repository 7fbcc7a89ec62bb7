"""The simulated node's settings that hold secrets, and its XModem file server.

Kept apart from `node.py` (already long). What the real firmware sends is the model
(`PhoneAPI::getFromRadio`, read in the firmware sources): the config handshake copies
`config.security`, `config.network`, `config.bluetooth`, `moduleConfig.mqtt` and every
channel whole to its client -- the node's private key, the admin keys, the Wi-Fi
password, the BLE PIN, the MQTT password and every channel PSK included. A test of what
the bot's shared API strips must therefore see these fields in the simulated node's
handshake and in its admin answers (`get_config_response`...), as a real node gives them.

XModem (`xmodem.proto`, the firmware's `XModemAdapter`): a client asks for a file with
`STX`, seq 0 and the file name in `buffer`; the node answers with the first block
(`SOH`, seq 1) or `NAK` when there is no such file. Any other frame is acknowledged
(`ACK`): enough to see where the node's answers go, not a full transfer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from meshtastic.protobuf import admin_pb2, channel_pb2, config_pb2, module_config_pb2, xmodem_pb2

_BLOCK = 128  # bytes of file per XModem block


@dataclass
class NodeSecrets:
    """The secret-bearing settings, with values shaped like a real node's."""

    private_key: bytes = bytes(range(32, 64))
    public_key: bytes = bytes(range(64, 96))
    admin_keys: tuple[bytes, ...] = (bytes(range(96, 128)),)
    wifi_ssid: str = "HomeNet"
    wifi_psk: str = "correct horse battery staple"
    ble_pin: int = 402113
    mqtt_username: str = "meshdev"
    mqtt_password: str = "large4cats"  # the firmware's default, sent to any broker
    # Channel 1's own 16-byte key (channel 0 has the well-known default key, AQ==).
    channel_psk: bytes = bytes(range(16))
    files: dict[str, bytes] = field(
        default_factory=lambda: {"/prefs/config.proto": b"\x0a\x20" + bytes(range(32, 64)) + b" config"}
    )

    def configs(self) -> list[config_pb2.Config]:
        """The Config frames with secrets, in the firmware's order (after lora)."""
        return [
            config_pb2.Config(
                network=config_pb2.Config.NetworkConfig(wifi_enabled=True, wifi_ssid=self.wifi_ssid, wifi_psk=self.wifi_psk)
            ),
            config_pb2.Config(
                bluetooth=config_pb2.Config.BluetoothConfig(
                    enabled=True, mode=config_pb2.Config.BluetoothConfig.PairingMode.FIXED_PIN, fixed_pin=self.ble_pin
                )
            ),
            config_pb2.Config(
                security=config_pb2.Config.SecurityConfig(
                    public_key=self.public_key, private_key=self.private_key, admin_key=list(self.admin_keys)
                )
            ),
        ]

    def mqtt(self) -> module_config_pb2.ModuleConfig:
        return module_config_pb2.ModuleConfig(
            mqtt=module_config_pb2.ModuleConfig.MQTTConfig(
                address="mqtt.meshtastic.org", username=self.mqtt_username, password=self.mqtt_password
            )
        )

    def channel(self, index: int) -> channel_pb2.Channel:
        channel = channel_pb2.Channel(index=index)
        if index == 0:
            channel.role = channel_pb2.Channel.Role.PRIMARY
            channel.settings.psk = b"\x01"
        elif index == 1:
            channel.role = channel_pb2.Channel.Role.SECONDARY
            channel.settings.name = "Local"
            channel.settings.psk = self.channel_psk
        else:
            channel.role = channel_pb2.Channel.Role.DISABLED
        return channel

    def admin_answer(self, request: admin_pb2.AdminMessage) -> Optional[admin_pb2.AdminMessage]:
        """The node's answer to a get_* request about these settings; None for other requests."""
        kind = request.WhichOneof("payload_variant")
        answer = admin_pb2.AdminMessage(session_passkey=b"\x5e\x55\x10\x4e\x0a\x0b\x0c\x0d")
        types = admin_pb2.AdminMessage
        if kind == "get_config_request":
            wanted = {
                types.ConfigType.NETWORK_CONFIG: "network",
                types.ConfigType.BLUETOOTH_CONFIG: "bluetooth",
                types.ConfigType.SECURITY_CONFIG: "security",
            }.get(request.get_config_request)
            for config in self.configs():
                if config.WhichOneof("payload_variant") == wanted:
                    answer.get_config_response.CopyFrom(config)
                    return answer
            return None
        if kind == "get_module_config_request" and request.get_module_config_request == types.ModuleConfigType.MQTT_CONFIG:
            answer.get_module_config_response.CopyFrom(self.mqtt())
            return answer
        if kind == "get_channel_request":
            answer.get_channel_response.CopyFrom(self.channel(request.get_channel_request - 1))
            return answer
        return None

    def xmodem_answer(self, request: xmodem_pb2.XModem) -> xmodem_pb2.XModem:
        """What the node sends back for one XModem frame of its client."""
        control = xmodem_pb2.XModem.Control
        if request.control == control.STX and request.seq == 0:
            data = self.files.get(request.buffer.decode("utf-8", "replace"))
            if data is None:
                return xmodem_pb2.XModem(control=control.NAK)
            return xmodem_pb2.XModem(control=control.SOH, seq=1, buffer=data[:_BLOCK])
        return xmodem_pb2.XModem(control=control.ACK, seq=request.seq)
