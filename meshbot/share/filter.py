"""What the shared node API lets through, in both directions.

Clients -> node (`refusal_of`): an app needs mesh packets (texts, positions, admin under
API_ADMIN's rule), heartbeats, its config handshake and `disconnect`. Two more ToRadio
kinds exist and neither is for an ordinary client:

* `xmodemPacket`: the node's file transfer. It reads and writes the node's files --
  `/prefs/config.proto` holds the private key, `/prefs/channels.proto` every channel
  key -- and deletes them: admin without the admin protocol;
* `mqttClientProxyMessage`: what a client acting as the node's MQTT broker connection
  hands it; another client injecting these speaks for the broker.

Both pass only with API_ADMIN = 'full'. Their answers (FromRadio of the same kinds) are
the asker's business: the server sends them to the last client that sent such a frame.

Node -> clients (`SecretFilter`): the firmware gives its client its settings whole,
secrets included (PhoneAPI copies config.security, config.network, moduleConfig.mqtt and
the channels as they are; the simulated node does the same, `meshbot/sim/prefs.py`).
Under API_ADMIN 'read' and 'none' a client gets them without:

* config.security.private_key and admin_key (the node's identity and who may admin it),
* config.network.wifi_psk, config.bluetooth.fixed_pin (the Wi-Fi password, the BLE PIN),
* moduleConfig.mqtt.password,
* the admin session passkey of admin answers (only needed for set_*, refused anyway),
* channel PSKs, unless API_SHARE_CHANNEL_KEYS: an app needs them to show a channel's key
  or its QR code, so the operator may opt in. A 1-byte PSK is not a secret (it names one
  of the well-known default keys) and always passes, so that the app still shows the
  default channel as it is.

Stripped both from the handshake (the snapshot keeps stripped copies only) and from
live frames: admin answers (get_config_response, get_module_config_response,
get_channel_response) and config, moduleConfig and channel frames. The public key stays:
it is public, and apps show it.
"""

from __future__ import annotations

from typing import Optional

from google.protobuf.message import DecodeError
from meshtastic.protobuf import admin_pb2, channel_pb2, config_pb2, mesh_pb2, module_config_pb2, portnums_pb2

# ToRadio kinds that only API_ADMIN = 'full' forwards.
FULL_ONLY = frozenset({"xmodemPacket", "mqttClientProxyMessage"})
_ADMIN = portnums_pb2.PortNum.ADMIN_APP
# FromRadio kinds that may carry secrets (a packet only on the admin port).
_SECRET_KINDS = frozenset({"config", "moduleConfig", "channel", "packet"})


def refusal_of(kind: str, admin_mode: str) -> Optional[str]:
    """Why a non-packet ToRadio of `kind` may not pass (for the log), or None if it may."""
    if kind in FULL_ONLY and admin_mode != "full":
        return f"{kind} (only with API_ADMIN = 'full')"
    return None


def strip_config(config: config_pb2.Config) -> bool:
    """Remove a Config's secrets in place; True if there were any."""
    changed = False
    kind = config.WhichOneof("payload_variant")
    if kind == "security":
        security = config.security
        changed = bool(security.private_key or security.admin_key)
        security.private_key = b""
        del security.admin_key[:]
    elif kind == "network":
        changed = bool(config.network.wifi_psk)
        config.network.wifi_psk = ""
    elif kind == "bluetooth":
        changed = bool(config.bluetooth.fixed_pin)
        config.bluetooth.fixed_pin = 0
    return changed


def strip_module_config(module: module_config_pb2.ModuleConfig) -> bool:
    if module.WhichOneof("payload_variant") != "mqtt" or not module.mqtt.password:
        return False
    module.mqtt.password = ""
    return True


def strip_channel(channel: channel_pb2.Channel) -> bool:
    if len(channel.settings.psk) <= 1:  # none, or a well-known default key's index
        return False
    channel.settings.psk = b""
    return True


class SecretFilter:
    """Strips secrets from the node's FromRadio frames before a client sees them."""

    def __init__(self, admin_mode: str, share_channel_keys: bool) -> None:
        self.active = admin_mode != "full"
        self._channel_keys = share_channel_keys

    def may_hold_secrets(self, kind: Optional[str], message: mesh_pb2.FromRadio) -> bool:
        """Cheap test first: most frames (mesh traffic) are passed on as the node's bytes."""
        if not self.active or kind not in _SECRET_KINDS:
            return False
        if kind == "packet":
            packet = message.packet
            return packet.HasField("decoded") and packet.decoded.portnum == _ADMIN
        return True

    def strip(self, message: mesh_pb2.FromRadio) -> bool:
        """Remove the secrets of one frame in place; True if it changed."""
        if not self.active:
            return False
        kind = message.WhichOneof("payload_variant")
        if kind == "config":
            return strip_config(message.config)
        if kind == "moduleConfig":
            return strip_module_config(message.moduleConfig)
        if kind == "channel":
            return not self._channel_keys and strip_channel(message.channel)
        if kind == "packet":
            return self._strip_admin(message.packet)
        return False

    def _strip_admin(self, packet: mesh_pb2.MeshPacket) -> bool:
        if not packet.HasField("decoded") or packet.decoded.portnum != _ADMIN:
            return False
        admin = admin_pb2.AdminMessage()
        try:
            admin.ParseFromString(packet.decoded.payload)
        except DecodeError:
            # Nothing an app could use, and maybe a secret the bot cannot see into.
            packet.decoded.payload = b""
            return True
        changed = bool(admin.session_passkey)
        admin.session_passkey = b""
        kind = admin.WhichOneof("payload_variant")
        if kind == "get_config_response":
            changed = strip_config(admin.get_config_response) or changed
        elif kind == "get_module_config_response":
            changed = strip_module_config(admin.get_module_config_response) or changed
        elif kind == "get_channel_response" and not self._channel_keys:
            changed = strip_channel(admin.get_channel_response) or changed
        if changed:
            packet.decoded.payload = admin.SerializeToString()
        return changed
