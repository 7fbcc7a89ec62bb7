"""The connection to the node: `owner.NodeLink` owns it, `interface` holds the hardened
transports of the `meshtastic` library it opens."""
