"""Everything the bot sends: `sender.MessageSender` and its outbox thread, `airtime` for
how long a text keeps the channel busy."""
