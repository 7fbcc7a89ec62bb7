"""`NodeSnapshot`: what the node told the bot about itself, to answer a client's handshake.

It is built from the FromRadio frames of the bot's own config handshake, as they pass
(a `my_info` starts a new one, `config_complete_id` ends it), and kept current by the
frames and packets that follow: a node_info update, a config or channel frame, a NodeInfo
or position packet heard from a node, and when each node was last heard. A client's
`want_config_id` is answered from it in the firmware's order (`PhoneAPI::getFromRadio`):
my_info, deviceuiConfig, own node_info, metadata, the channels, every config, every
moduleConfig, the other node_infos, the file manifest, config_complete_id -- where nonce
69420 leaves out the other nodes and 69421 sends only the node infos.

Updates run on the library's reader thread: each is a few dictionary writes under a lock
that a client's handshake holds only to copy the messages out.

The node list is bounded like the bot's own node DB (`NODE_DB_MAX`, the own node not
counted): sender ids cost nothing to invent on a mesh, and every forged NodeInfo would
otherwise stay in this copy and in every client's handshake (100,000 of them: 9.2 MB per
handshake). Past the bound the least recently heard node goes; the own node always stays.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Optional

from google.protobuf.message import DecodeError
from meshtastic.protobuf import mesh_pb2, portnums_pb2

from meshbot.share.filter import SecretFilter
from meshbot.share.framing import frame

ONLY_CONFIG_NONCE = 69420  # the library's noNodes=True: no other nodes
ONLY_NODES_NONCE = 69421  # node infos only
_NODEINFO = portnums_pb2.PortNum.NODEINFO_APP
_POSITION = portnums_pb2.PortNum.POSITION_APP


class NodeSnapshot:
    """The node's state as a client's handshake needs it. Thread-safe."""

    def __init__(self, secrets: Optional[SecretFilter] = None, max_nodes: int = 2000) -> None:
        """`secrets`: what clients may not see is stripped before it is kept (None: kept whole);
        `max_nodes`: most other nodes kept (NODE_DB_MAX)."""
        self._secrets = secrets
        self.max_nodes = max_nodes
        self._lock = threading.Lock()
        self.complete = False  # a full handshake of the bot's has been seen
        self._my_info: Optional[mesh_pb2.MyNodeInfo] = None
        self._ui: Optional[mesh_pb2.FromRadio] = None
        self._metadata: Optional[mesh_pb2.DeviceMetadata] = None
        self._channels: dict[int, mesh_pb2.FromRadio] = {}
        self._configs: dict[str, mesh_pb2.FromRadio] = {}
        self._module_configs: dict[str, mesh_pb2.FromRadio] = {}
        self._files: list[mesh_pb2.FromRadio] = []
        self._own: Optional[mesh_pb2.NodeInfo] = None
        # The other nodes, least recently heard first (the node sends its DB most recent first).
        self._nodes: collections.OrderedDict[int, mesh_pb2.NodeInfo] = collections.OrderedDict()

    @property
    def own_num(self) -> Optional[int]:
        info = self._my_info
        return info.my_node_num if info is not None else None

    # --- what the node says (reader thread) --------------------------------------------------
    def note_frame(self, message: mesh_pb2.FromRadio, kind: str) -> None:
        """Record a non-packet frame; `kind` is its payload variant."""
        with self._lock:
            if kind == "my_info":  # the first frame of a full handshake: start over
                self._reset()
                self._my_info = mesh_pb2.MyNodeInfo()
                self._my_info.CopyFrom(message.my_info)
            elif kind == "node_info":
                info = mesh_pb2.NodeInfo()
                info.CopyFrom(message.node_info)
                self._note_node(info)
            elif kind == "metadata":
                self._metadata = mesh_pb2.DeviceMetadata()
                self._metadata.CopyFrom(message.metadata)
            elif kind == "channel":
                self._channels[message.channel.index] = self._kept(message)
            elif kind == "config":
                self._configs[message.config.WhichOneof("payload_variant") or ""] = self._kept(message)
            elif kind == "moduleConfig":
                self._module_configs[message.moduleConfig.WhichOneof("payload_variant") or ""] = self._kept(message)
            elif kind == "deviceuiConfig":
                self._ui = _copy(message)
            elif kind == "fileInfo" and not self.complete:
                self._files.append(_copy(message))
            elif kind == "config_complete_id" and self._my_info is not None:
                self.complete = True

    def note_packet(self, packet: mesh_pb2.MeshPacket) -> None:
        """What a packet from the mesh changes in the node DB, as the firmware updates it."""
        sender = getattr(packet, "from")
        if not self.complete or not sender or not packet.HasField("decoded") or sender == self.own_num:
            return
        decoded = packet.decoded
        user = position = None
        try:
            if decoded.portnum == _NODEINFO:
                user = mesh_pb2.User()
                user.ParseFromString(decoded.payload)
            elif decoded.portnum == _POSITION:
                position = mesh_pb2.Position()
                position.ParseFromString(decoded.payload)
        except DecodeError:
            return
        with self._lock:
            info = self._nodes.get(sender)
            if info is None:
                if user is None:
                    return  # the firmware adds a node to its DB once it knows who it is
                info = self._nodes[sender] = mesh_pb2.NodeInfo(num=sender)
                self._trim()
            else:
                self._nodes.move_to_end(sender)  # heard now: the most recent
            if user is not None:
                info.user.CopyFrom(user)
            if position is not None:
                info.position.CopyFrom(position)
            info.last_heard = packet.rx_time or int(time.time())
            if packet.rx_snr:
                info.snr = packet.rx_snr
            if packet.hop_start:
                info.hops_away = max(0, packet.hop_start - packet.hop_limit)

    def _note_node(self, info: mesh_pb2.NodeInfo) -> None:
        """Under the lock: a node_info frame, from a handshake or live."""
        if self._my_info is not None and info.num == self._my_info.my_node_num:
            self._own = info
            return
        known = info.num in self._nodes
        self._nodes[info.num] = info
        if not self.complete and not known:
            # The node's own handshake lists its DB most recently heard first: each one
            # heard before the ones already kept. A full copy takes no older ones.
            if len(self._nodes) > self.max_nodes:
                del self._nodes[info.num]
                return
            self._nodes.move_to_end(info.num, last=False)
        elif self.complete:
            self._nodes.move_to_end(info.num)  # a live update: the node just heard it
            self._trim()

    def _trim(self) -> None:
        while len(self._nodes) > self.max_nodes:
            self._nodes.popitem(last=False)

    def _kept(self, message: mesh_pb2.FromRadio) -> mesh_pb2.FromRadio:
        copy = _copy(message)
        if self._secrets is not None:
            self._secrets.strip(copy)
        return copy

    def _reset(self) -> None:
        self.complete = False
        self._my_info = self._ui = self._metadata = None
        self._channels, self._configs, self._module_configs = {}, {}, {}
        self._files, self._own = [], None
        self._nodes = collections.OrderedDict()

    # --- what a client gets (client threads) ---------------------------------------------------
    def compose(self, nonce: int) -> Optional[bytes]:
        """The framed handshake answering `want_config_id = nonce`; None before the first full one."""
        with self._lock:
            if not self.complete or self._my_info is None:
                return None
            own = self._own
            others = list(reversed(self._nodes.values()))  # the firmware's order: most recent first
            messages: list[mesh_pb2.FromRadio] = []
            if nonce != ONLY_NODES_NONCE:
                my_info = mesh_pb2.MyNodeInfo()
                my_info.CopyFrom(self._my_info)
                my_info.nodedb_count = len(self._nodes) + (own is not None)
                messages.append(mesh_pb2.FromRadio(my_info=my_info))
                if self._ui is not None:
                    messages.append(self._ui)
            if own is not None:
                messages.append(mesh_pb2.FromRadio(node_info=own))
            if nonce != ONLY_NODES_NONCE:
                if self._metadata is not None:
                    messages.append(mesh_pb2.FromRadio(metadata=self._metadata))
                messages += [self._channels[i] for i in sorted(self._channels)]
                messages += list(self._configs.values())
                messages += list(self._module_configs.values())
            if nonce != ONLY_CONFIG_NONCE:
                messages += [mesh_pb2.FromRadio(node_info=info) for info in others]
            if nonce != ONLY_NODES_NONCE:
                messages += self._files
            data = [frame(m.SerializeToString()) for m in messages]
        data.append(frame(mesh_pb2.FromRadio(config_complete_id=nonce).SerializeToString()))
        return b"".join(data)


def _copy(message: mesh_pb2.FromRadio) -> mesh_pb2.FromRadio:
    out = mesh_pb2.FromRadio()
    out.CopyFrom(message)
    out.id = 0
    return out
