"""meshbot: a Meshtastic slash-command bot with one persistent, self-healing node link."""

__version__ = "0.2.0"
