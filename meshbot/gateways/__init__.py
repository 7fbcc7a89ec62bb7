"""Gateways (issue 16): the nodes and the MQTT broker the bot hears the mesh through. `choice`
decides, for each packet heard by several, which one copy is handled and by which gateway
it is answered. Nothing here knows of commands or of how a link is kept."""
