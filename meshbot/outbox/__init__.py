"""Everything the bot sends: `sender.MessageSender` and its outbox thread, and what decides
which text goes next (`policy`, `budget`, `governor`) and what became of DMs (`delivery`)."""
