"""`ServiceEnvelope`s: what gateways publish on `<root>/2/e/<channel>/<!gateway id>`, read and made.

What this relies on (../shared/MESHTASTIC-NOTES.md, "MQTT", measured on meshtasticd 2.7.13):
the payload is a `ServiceEnvelope {packet, channel_id, gateway_id}`; the packet is the one
the gateway heard, unchanged (`hop_limit` not decremented, so hops = `hop_start -
hop_limit`), `encrypted` with the channel key when the gateway's `mqtt.encryption_enabled`
is on, else `decoded`; its `channel` field is the channel hash. PKI DMs are uplinked on the
channel name `PKI`: only the node they were addressed to can read them. A gateway drops a
downlinked envelope whose `channel_id` is not its channel's name, whose hop limit or start
is above 7, or which is decoded while its encryption is on.

Everything a hostile publisher can put on a topic ends as `Rejected` with one of a few
reasons, for a counter: never an exception of another kind, never a log line per message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping

from google.protobuf.message import DecodeError
from meshtastic.protobuf import mesh_pb2, mqtt_pb2

from meshbot.mqtt.crypto import ChannelKey, crypt

PKI_CHANNEL = "PKI"
MAX_HOPS = 7  # the firmware's bound on hop_start and hop_limit
BROADCAST_NUM = 0xFFFFFFFF
_GATEWAY_ID = re.compile(r"^![0-9a-f]{8}$")

# Why an envelope was not taken: the counter names (a bounded set).
UNDECODABLE = "undecodable"  # not a ServiceEnvelope, or no packet in it
BAD_TOPIC = "bad_topic"  # not <root>/2/e/<channel>/<gateway>, or its levels disagree with the envelope
UNKNOWN_CHANNEL = "unknown_channel"  # a channel the bot has no key for (MQTT_CHANNELS)
PKI = "pki"  # a PKI DM: end to end between two nodes, not for the bot to read
UNDECRYPTABLE = "undecryptable"  # wrong key (the channel hash or the payload says so)
INVALID = "invalid"  # hops above 7, no sender or the broadcast address as sender, bad gateway id
REASONS = (UNDECODABLE, BAD_TOPIC, UNKNOWN_CHANNEL, PKI, UNDECRYPTABLE, INVALID)


class Rejected(Exception):
    """An envelope not taken; `reason` is one of REASONS."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Uplink:
    """A packet a gateway heard, as the bot reads it: decoded, with where it came from."""

    root: str
    channel: str  # the channel's name (the envelope's channel_id)
    gateway_id: str  # '!xxxxxxxx', the gateway node that published it
    packet: mesh_pb2.MeshPacket  # `decoded` filled in, even if it came encrypted
    encrypted: bool

    @property
    def sender(self) -> int:
        return getattr(self.packet, "from")

    @property
    def hops(self) -> int:
        return max(0, self.packet.hop_start - self.packet.hop_limit)


def split_topic(topic: str) -> tuple[str, str, str]:
    """(root, channel, gateway id) of `<root>/2/e/<channel>/<gateway>`; Rejected otherwise."""
    levels = topic.split("/")
    if len(levels) < 5 or levels[-4:-2] != ["2", "e"] or not all(levels):
        raise Rejected(BAD_TOPIC)
    return "/".join(levels[:-4]), levels[-2], levels[-1]


def read_uplink(topic: str, payload: bytes, channels: Mapping[str, ChannelKey]) -> Uplink:
    """The packet in an uplinked envelope, decrypted with its channel's key."""
    root, topic_channel, topic_gateway = split_topic(topic)
    envelope = mqtt_pb2.ServiceEnvelope()
    try:
        envelope.ParseFromString(payload)
    except DecodeError:
        raise Rejected(UNDECODABLE) from None
    if not envelope.HasField("packet"):
        raise Rejected(UNDECODABLE)
    if envelope.channel_id != topic_channel or envelope.gateway_id != topic_gateway:
        raise Rejected(BAD_TOPIC)
    if envelope.channel_id == PKI_CHANNEL:
        raise Rejected(PKI)
    channel = channels.get(envelope.channel_id)
    if channel is None:
        raise Rejected(UNKNOWN_CHANNEL)
    packet = mesh_pb2.MeshPacket()
    packet.CopyFrom(envelope.packet)
    sender = getattr(packet, "from")
    if (
        not _GATEWAY_ID.match(envelope.gateway_id)
        or sender in (0, BROADCAST_NUM)
        or packet.hop_start > MAX_HOPS
        or packet.hop_limit > MAX_HOPS
    ):
        raise Rejected(INVALID)
    kind = packet.WhichOneof("payload_variant")
    if kind == "encrypted":
        if channel.key is None or packet.channel != channel.hash:
            raise Rejected(UNDECRYPTABLE)
        data = mesh_pb2.Data()
        try:
            data.ParseFromString(crypt(channel.key, packet.id, sender, packet.encrypted))
        except DecodeError:
            raise Rejected(UNDECRYPTABLE) from None
        if data.portnum == 0:  # UNKNOWN_APP: what a wrong key that happens to parse gives
            raise Rejected(UNDECRYPTABLE)
        packet.decoded.CopyFrom(data)  # replaces `encrypted` (a oneof)
    elif kind != "decoded":
        raise Rejected(UNDECODABLE)
    return Uplink(root, envelope.channel_id, envelope.gateway_id, packet, kind == "encrypted")


def make_downlink(packet: mesh_pb2.MeshPacket, channel: ChannelKey, gateway_id: str) -> bytes:
    """The envelope that makes downlink gateways transmit `packet` (decoded: id, from, to,
    hops set by the caller) on `channel`: encrypted with its key when it has one."""
    out = mesh_pb2.MeshPacket()
    out.CopyFrom(packet)
    out.channel = channel.hash
    if channel.key is not None:
        clear = out.decoded.SerializeToString()
        out.encrypted = crypt(channel.key, out.id, getattr(out, "from"), clear)  # replaces `decoded`
    envelope = mqtt_pb2.ServiceEnvelope(packet=out, channel_id=channel.name, gateway_id=gateway_id)
    return envelope.SerializeToString()
