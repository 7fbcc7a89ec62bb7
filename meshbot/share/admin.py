"""API_ADMIN: which admin messages a client of the shared API may send to the node.

An admin request that only reads (the `get_..._request` variants of AdminMessage) cannot
change the node; everything else (set_*, begin/commit edit, reboot, shutdown, factory
reset, remove node...) can, and one careless client would take the node -- and the bot
with it -- down. The variants are read from the protobuf, so requests added by later
library versions are classified by the same rule.
"""

from __future__ import annotations

from typing import Optional

from google.protobuf.message import DecodeError
from meshtastic.protobuf import admin_pb2, mesh_pb2, portnums_pb2

ADMIN_PORT = portnums_pb2.PortNum.ADMIN_APP
_VARIANTS = admin_pb2.AdminMessage.DESCRIPTOR.oneofs_by_name["payload_variant"].fields
READ_ONLY = frozenset(f.name for f in _VARIANTS if f.name.startswith("get_") and f.name.endswith("_request"))


def admin_refusal(packet: mesh_pb2.MeshPacket, mode: str) -> Optional[str]:
    """Why this admin packet may not pass under `mode` (what it asks, for the log); None if it may."""
    if mode == "full":
        return None
    if not packet.HasField("decoded"):
        return "an encrypted admin message"
    message = admin_pb2.AdminMessage()
    try:
        message.ParseFromString(packet.decoded.payload)
    except DecodeError:
        return "an undecodable admin message"
    variant = message.WhichOneof("payload_variant") or "an empty admin message"
    if mode == "read" and variant in READ_ONLY:
        return None
    return variant
