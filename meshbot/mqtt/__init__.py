"""MQTT: the gateways a broker joins (issue 16). `crypto` does channel keys and packet
encryption as the firmware does, `envelope` reads and makes `ServiceEnvelope`s, `broker`
owns the one connection to the broker. Nothing here knows of commands or of node links."""
