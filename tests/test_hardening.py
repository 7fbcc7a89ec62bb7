"""The small doors of issue 10: /nodes arguments, replies that read as commands, unknown
commands on channels, repeated warnings, secrets in log lines, invisible characters.

End to end through the simulated node over TCP where the bot is involved; the helpers
(`split_text`, `quote_command`, `RepeatedWarning`, `redact_secrets`) also on their own.
"""

from __future__ import annotations

import io
import logging
import random
import sys
import types

import pytest

from meshbot import handlers
from meshbot.app import Bot
from meshbot.logs import JournalFormatter, RedactingFormatter, RepeatedWarning, redact_secrets, setup_logging
from meshbot.router import clean_args, command
from meshbot.sim.node import BROADCAST_NUM, DEFAULT_USERS, SimulatedNode, SimUser
from meshbot.text import quote_command, split_text, starts_command, utf8_len
from tests.conftest import settings_for, wait_until
from tests.test_commands import ADMIN, ALICE, BOB, ask, quiet_for


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


# --- /nodes ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("arg", ["²", "①", "١", "５", "2²", "-1", "0", "1.5"])
def test_nodes_with_a_non_ascii_or_bad_digit_answers_usage(node, start_bot, caplog, arg):
    start_bot(node)
    assert [r.text for r in ask(node, ALICE, f"/nodes {arg}")] == ["usage: /nodes [page], e.g. /nodes 2"]
    assert not errors(caplog)  # measured on main: ValueError with a traceback for ² and ①


# --- no reply starts with '/' --------------------------------------------------------------------------
def test_no_help_reply_starts_with_a_slash(node, start_bot):
    bot = start_bot(node, ADMIN_NODES=[ADMIN])
    for cmd in bot.registry.commands():
        for name in (cmd.name, *cmd.aliases):
            [reply] = ask(node, BOB, f"/help {name}", dm=True, pki=True)
            assert reply.text.startswith("usage: /"), reply.text
    assert ask(node, ALICE, "/help echo")[0].text == (
        "usage: /echo <text> · broadcasts '<you>: <text>' on this channel (ch0 from a DM)"
    )


def test_echo_of_a_command_does_not_start_with_a_slash(node, start_bot):
    start_bot(node)
    [echoed] = ask(node, ALICE, "/echo /ping")
    assert echoed.text == "ALIC: /ping"


def test_a_short_name_starting_with_a_slash_is_quoted_in_an_echo():
    slash = SimUser(0x1A2B3C09, "/bc", "slash user")
    with SimulatedNode(firmware_version="2.6.11", users=DEFAULT_USERS + (slash,)) as sim:
        bot = Bot(settings_for(sim))
        bot.start()
        try:
            wait_until(lambda: bot.sender.get_interface() is not None, 10)
            [echoed] = ask(sim, slash.num, "/echo net at 20:00")
            assert echoed.text == "> /bc: net at 20:00"
        finally:
            bot.stop(budget_s=2.0)


def slashy_module() -> types.ModuleType:
    module = types.ModuleType("slashy")

    @command("reboot", help="/reboot: a handler whose answer starts with a slash")
    def reboot(ctx):  # type: ignore[no-untyped-def]
        return "/reboot all nodes now"

    @command("secret", help="/secret: DM only", on_channel=False)
    def secret(ctx):  # type: ignore[no-untyped-def]
        return "psst"

    @command("hidden", help="/hidden: starts with an invisible character, then a slash")
    def hidden(ctx):  # type: ignore[no-untyped-def]
        return "\u200b\u200f/bc hello"

    module.reboot, module.secret, module.hidden = reboot, secret, hidden  # type: ignore[attr-defined]
    return module


def test_any_reply_starting_with_a_slash_is_quoted(node, start_bot):
    start_bot(node, modules=(*handlers.MODULES, slashy_module()))
    assert [r.text for r in ask(node, ALICE, "/reboot")] == ["> /reboot all nodes now"]
    assert [r.text for r in ask(node, ALICE, "/hidden")] == ["> /bc hello"]
    assert [r.text for r in ask(node, ALICE, "/secret", channel=1)] == ["by DM only: /secret"]
    assert [r.text for r in ask(node, ALICE, "/secret", dm=True)] == ["psst"]


def test_a_split_echo_never_puts_a_command_at_the_start_of_a_text(node, start_bot):
    start_bot(node, MAX_TEXT_BYTES=60, MAX_CHUNKS=10)
    replies = ask(node, ALICE, "/echo " + " ".join(["/bc", "take", "over"] * 12))
    assert len(replies) > 2
    assert not [r.text for r in replies if starts_command(r.text)]


def test_split_text_never_starts_a_later_chunk_with_a_slash():
    rng = random.Random(10)
    words = ["/bc", "/ping", "a", "word", "longerword", "ééé", "🌧️", "x/y", "//", "/", "\u200b/x"]
    for _ in range(2000):
        text = " ".join(rng.choice(words) for _ in range(rng.randint(1, 60)))
        budget = rng.randint(40, 120)
        chunks = split_text(text, budget, 99)
        assert all(utf8_len(c) <= budget for c in chunks)
        assert not [c for c in chunks[1:] if starts_command(c) and text.replace(" ", "").strip("/")], (text, chunks)
        pieces = [c.rsplit(" (", 1)[0] if len(chunks) > 1 else c for c in chunks]
        assert "".join(pieces).replace(" ", "") == text.replace(" ", "")  # nothing lost, nothing added


def test_quote_command():
    assert quote_command("pong") == "pong"
    assert quote_command("/ping") == "> /ping"
    assert quote_command("  /ping") == "> /ping"
    assert quote_command("\u200e\u200b/ping") == "> /ping"  # invisible marks do not hide it
    assert quote_command("a /ping") == "a /ping"


# --- unknown commands ----------------------------------------------------------------------------------
def test_unknown_commands_are_answered_by_dm_only(node, start_bot, caplog):
    caplog.set_level(logging.DEBUG, logger="meshbot.router")
    start_bot(node, RATE_LIMIT_COUNT=2)
    for _ in range(5):  # meant for another bot: no answer, and not counted against the limit
        node.user_text(ALICE, "/weatherbot Lyon", channel=1)
    assert not quiet_for(node)
    assert "ignored /weatherbot from !1a2b3c01 on ch1: not a command of this bot" in caplog.text
    assert [r.text for r in ask(node, ALICE, "/ping", channel=1)][0].startswith("pong")
    assert [(r.text, r.to) for r in ask(node, ALICE, "/weatherbot", dm=True)] == [
        ("unknown command /weatherbot: send /help", ALICE)
    ]


# --- repeated warnings ----------------------------------------------------------------------------------
def test_repeated_warning_logs_the_first_then_one_summary_per_interval(caplog):
    caplog.set_level(logging.WARNING, logger="test.repeat")
    logger = logging.getLogger("test.repeat")
    warning = RepeatedWarning(logger, "ignored {count} more frames in the last {seconds} s", interval_s=0.3)
    for i in range(1000):
        warning.log("ignored a frame (%d bytes)", i)
    assert [r.getMessage() for r in caplog.records] == ["ignored a frame (0 bytes)"]
    wait_until(lambda: len(caplog.records) == 2, 5)  # the timer tells the count when the interval ends
    assert caplog.records[1].getMessage() == "ignored 999 more frames in the last 0 s"
    assert caplog.records[0].levelno == caplog.records[1].levelno == logging.WARNING
    assert warning.pending == 0


def test_repeated_warning_with_a_clock_and_a_late_timer():
    now = [0.0]
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    logger = logging.getLogger("test.repeat.clock")
    logger.addHandler(Collect())
    logger.propagate = False
    try:
        warning = RepeatedWarning(logger, "{count} more in {seconds} s", interval_s=60.0, clock=lambda: now[0])
        warning.log("first")
        for _ in range(10):
            now[0] += 5
            warning.log("again")
        now[0] = 61.0  # the interval is over and the (real-time) timer has not run yet
        warning.log("after")
        assert lines == ["first", "11 more in 61 s"]  # 10, and the one that found the timer late
        now[0] = 200.0
        warning.flush()
        assert lines == ["first", "11 more in 61 s"]  # nothing pending: nothing to say
        warning.log("much later")  # a quiet interval since the last line: in full again
        assert lines == ["first", "11 more in 61 s", "much later"]
    finally:
        logger.propagate = True


def test_undecodable_frames_are_one_warning_and_a_count(node, start_bot, caplog):
    caplog.set_level(logging.WARNING, logger="meshbot")
    bot = start_bot(node)
    iface = bot.sender.get_interface()
    assert node.garbage_frames(5000)
    wait_until(lambda: iface._undecodable.pending == 4999, 10)  # each frame seen, and counted
    assert [r.getMessage() for r in caplog.records if "undecodable" in r.getMessage()] == [
        "ignored an undecodable frame from the node (4 bytes)"
    ]
    assert ask(node, ALICE, "/ping")[0].text.startswith("pong")  # the link shrugs it off
    iface._undecodable.flush()  # what the timer does at the end of the minute
    summary = [r.getMessage() for r in caplog.records if "more undecodable" in r.getMessage()]
    assert len(summary) == 1 and summary[0].startswith("ignored 4999 more undecodable frames from the node in the last ")


# --- secrets in log lines -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("GET https://api.example/v1/forecast?apikey=abc123&latitude=45.75 failed",
         "GET https://api.example/v1/forecast?apikey=***&latitude=45.75 failed"),
        ("https://user:pa55w0rd@host:8080/path?x=1", "https://user:***@host:8080/path?x=1"),
        ("Max retries exceeded with url: /v1/search?name=Lyon&access_token=T0K (Caused by ...)",
         "Max retries exceeded with url: /v1/search?name=Lyon&access_token=*** (Caused by ...)"),
        ("http://h/?API_KEY=k&Signature=s&password=p&session=z", "http://h/?API_KEY=***&Signature=***&password=***&session=***"),
        ("queueStatus res=0 free=16", "queueStatus res=0 free=16"),  # not a query string
        ("link up to 192.168.1.38:4403", "link up to 192.168.1.38:4403"),
        ("mail alice@example.org", "mail alice@example.org"),
    ],
)
def test_redact_secrets(text, expected):
    assert redact_secrets(text) == expected


def test_redact_named_secrets():
    assert redact_secrets("http://h/v1?plan=pro&lat=1", {"PLAN"}) == "http://h/v1?plan=***&lat=1"


def test_every_formatted_line_is_redacted_tracebacks_included():
    record_args = ("https://u:hunter2@h/x?token=SECRET",)
    try:
        raise ConnectionError("cannot reach https://h/x?apikey=SECRET2")
    except ConnectionError:
        exc_info = sys.exc_info()
    record = logging.LogRecord("urllib3.connectionpool", logging.WARNING, __file__, 1, "GET %s", record_args, exc_info)
    for formatter in (RedactingFormatter("%(name)s: %(message)s"), JournalFormatter()):
        out = formatter.format(record)
        assert "SECRET" not in out and "hunter2" not in out and "https://u:***@h/x?token=***" in out, out
        assert "apikey=***" in out  # in the traceback too
    root = logging.getLogger()
    saved, level = list(root.handlers), root.level
    try:
        stream = io.StringIO()
        setup_logging("INFO", stream)
        logging.getLogger("meshbot.test").warning("GET %s failed", "http://h/x?key=K3Y")
        assert "key=***" in stream.getvalue() and "K3Y" not in stream.getvalue()
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved:
            root.addHandler(handler)
        root.setLevel(level)


# --- invisible characters in arguments ------------------------------------------------------------------
def test_bidi_marks_and_zero_width_characters_are_stripped_from_broadcasts(node, start_bot):
    start_bot(node, ADMIN_NODES=[ADMIN])
    before = len(node.texts)
    text = "/bc \u200fnet\u200b starts\u2060 at\u061c 20:00\ufeff\u200e \u200c\u200d"
    [reply] = ask(node, BOB, text, dm=True, pki=True)
    assert reply.text == "broadcast queued on ch0 (1 text)"
    texts = node.wait_texts(before + 2, 5)
    assert [t.text for t in texts[before:] if t.to == BROADCAST_NUM] == ["net starts at 20:00"]


def test_the_zero_width_joiner_stays_inside_emoji_only():
    assert clean_args("flag 🏳️\u200d🌈 family 👨\u200d👩\u200d👧") == "flag 🏳️\u200d🌈 family 👨\u200d👩\u200d👧"
    assert clean_args("a\u200db \u200d/ping") == "ab /ping"
    assert clean_args("\u200fשלום\u200e 123") == "שלום 123"


def test_an_invisible_character_in_the_command_word_does_not_hide_it(node, start_bot):
    start_bot(node)
    assert ask(node, ALICE, "/pi\u200bng")[0].text.startswith("pong")
