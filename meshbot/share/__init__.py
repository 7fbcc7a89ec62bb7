"""The shared node API (issue 11): the bot serves the node's TCP API to other clients over its one link."""
