"""Durable state: the outbox, the commands answered and the counters, across restarts."""
