"""The connection to the node: `owner.NodeLink` owns it, `interface` holds the hardened
transports of the `meshtastic` library it opens, `nodedb` bounds what they remember of the
mesh, and `airtime` says how long a packet keeps the node's radio busy."""
