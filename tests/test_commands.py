"""The router and the commands, end to end through the simulated node over TCP."""

from __future__ import annotations

import logging
import time
import types

import pytest

from meshbot.router import command
from meshbot.sim.node import BROADCAST_NUM, SimulatedNode, SimUser
from tests.conftest import wait_until

ALICE, BOB, CARL = 0x1A2B3C01, 0x1A2B3C02, 0x1A2B3C03
ADMIN = "!1a2b3c02"  # Bob


def ask(node: SimulatedNode, user: int, text: str | bytes, timeout: float = 5.0, **kwargs) -> list:
    """A user sends a text; return the bot's texts that reply to it (threaded by reply_id)."""
    before = len(node.texts)
    packet_id = node.user_text(user, text, **kwargs)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        replies = [t for t in node.texts[before:] if t.reply_id == packet_id]
        if replies:
            time.sleep(0.05)  # a chunked reply's other texts
            return [t for t in node.texts[before:] if t.reply_id == packet_id]
        time.sleep(0.01)
    return []


def quiet_for(node: SimulatedNode, seconds: float = 0.4) -> list:
    before = len(node.texts)
    time.sleep(seconds)
    return node.texts[before:]


@pytest.mark.parametrize("dm", [False, True], ids=["channel", "dm"])
def test_each_command_answers_on_a_channel_and_by_dm(node, start_bot, dm):
    start_bot(node)
    channel = 0 if dm else 1
    expect_to = ALICE if dm else BROADCAST_NUM
    for text, starts in [
        ("/ping", "pong: SNR 7.5 dB"),
        ("/help", "commands: /echo /ping /help /status /nodes"),
        ("/help echo", "usage: /echo <text>"),
        ("/HELP /Nodes", "usage: /nodes [page]"),
        ("/status", "up "),
        ("/nodes", "nodes 1/1: "),
    ] + ([("/nosuch", "unknown command /nosuch: send /help")] if dm else []):  # on a channel: another bot's
        replies = ask(node, ALICE, text, dm=dm, channel=channel)
        assert len(replies) == 1, (text, replies)
        assert replies[0].text.startswith(starts), (text, replies[0].text)
        assert replies[0].to == expect_to and replies[0].channel == channel
    echoed = ask(node, ALICE, "/echo hello mesh", dm=dm, channel=channel)
    assert [(t.text, t.to, t.channel) for t in echoed] in (
        [("ALIC: hello mesh", BROADCAST_NUM, channel)],
        [],  # a DM's echo is broadcast on ch0, not threaded to the DM
    )
    if dm:
        wait_until(lambda: any(t.text == "ALIC: hello mesh" and t.channel == 0 for t in node.texts), 5)


def test_help_lists_admin_commands_only_to_admins(node, start_bot):
    start_bot(node, ADMIN_NODES=[ADMIN])
    assert "/bc" not in ask(node, ALICE, "/help", dm=True)[0].text
    assert "/bc" in ask(node, BOB, "/help", dm=True, pki=True)[0].text
    assert ask(node, ALICE, "/help bc", dm=True)[0].text.startswith("no command /bc")


def test_exact_names_only_no_prefix_matching(node, start_bot):
    start_bot(node)
    assert ask(node, ALICE, "/echoes hi", dm=True)[0].text == "unknown command /echoes: send /help"
    assert ask(node, ALICE, "/ECHO hi")[0].text == "ALIC: hi"
    assert ask(node, ALICE, "/h")[0].text.startswith("commands:")  # a registered alias


def test_echo_needs_text_and_names_an_unknown_node_by_its_number(node, start_bot):
    start_bot(node)
    stranger = node.add_user(SimUser(0xDEADBEEF, "GHST", in_db=False))
    assert ask(node, ALICE, "/echo")[0].text == "usage: /echo <text>"
    assert ask(node, stranger, "/echo who am i")[0].text == "beef: who am i"


def test_echo_from_a_dm_broadcasts_on_channel_zero_through_the_one_connection(node, start_bot):
    start_bot(node)
    node.user_text(BOB, "/echo from a DM", dm=True, channel=2)
    texts = node.wait_texts(1, 5)
    assert (texts[0].text, texts[0].to, texts[0].channel) == ("BOB: from a DM", BROADCAST_NUM, 0)
    assert node.counters.connections == 1


def test_the_same_packet_delivered_three_times_is_answered_once(node, start_bot):
    start_bot(node)
    packet = node.user_packet(ALICE, "/ping")
    for _ in range(3):
        node.deliver(packet)
    assert len(node.wait_texts(1, 5)) == 1
    assert quiet_for(node) == []


def test_own_broadcast_echoed_back_by_another_node_is_ignored(node, start_bot, caplog):
    caplog.set_level(logging.INFO, logger="meshbot")
    bot = start_bot(node)
    bot.sender.send("/ping")  # e.g. an admin's /bc; a bridge then echoes it back
    node.wait_texts(1, 5)
    node.user_text(CARL, "/ping")
    assert quiet_for(node) == []
    wait_until(lambda: "ignored our own broadcast echoed back by !1a2b3c03" in caplog.text, 5)


def test_rate_limit_answers_n_then_one_notice_while_others_are_served(node, start_bot):
    start_bot(node, RATE_LIMIT_COUNT=3, RATE_LIMIT_WINDOW_S=30)
    answers = [ask(node, ALICE, "/ping", timeout=1.0) for _ in range(6)]
    texts = [a[0].text if a else None for a in answers]
    assert all(t.startswith("pong") for t in texts[:3])
    assert texts[3] is not None and texts[3].startswith("rate limit: wait ") and texts[3].endswith(" s")
    assert 25 <= int(texts[3].split()[3]) <= 30
    assert texts[4:] == [None, None]  # silent for the rest of the window
    assert ask(node, BOB, "/ping")[0].text.startswith("pong")  # another sender is not affected


def test_authenticated_admins_get_a_larger_budget(node, start_bot):
    start_bot(node, RATE_LIMIT_COUNT=2, ADMIN_NODES=[ADMIN])
    answers = [ask(node, BOB, "/ping", dm=True, pki=True, timeout=1.0) for _ in range(8)]
    assert all(a and a[0].text.startswith("pong") for a in answers)
    assert ask(node, BOB, "/ping", dm=True, pki=True, timeout=1.0)[0].text.startswith("rate limit")


BAD_INPUTS = [
    b"/ech\xffo \xc3\x28 invalid utf-8",
    "/echo \x00\x01\x07 control\x1b[31m chars",
    "/echo " + "A" * 1000,  # over the 512-byte frame limit: the library drops the frame
    "/echo " + "A" * 227,  # the largest payload a node delivers (233 bytes)
    "/",
    "/ ",
    "//",
    "/🌧️ emoji command",
    "/echo 🌧️👍🏽🏳️‍🌈 emoji",
    "/echo \u202eright-to-left override\u202c and עברית עם מספרים 123",
    "/" + "x" * 300,
    "/nodes -1",
    "/nodes 99",
    "/nodes two",
    "/help " + "y" * 100,
    "\x00/ping",
    "",
]


def test_bad_input_never_hurts_and_ping_is_answered_after_each(node, start_bot):
    bot = start_bot(node, RATE_LIMIT_COUNT=100, MAX_CHUNKS=2)
    for bad in BAD_INPUTS:
        replies = ask(node, ALICE, bad, timeout=0.3)
        for reply in replies:
            assert len(reply.text.encode()) <= 200 and "\ufffd\ufffd" not in reply.text[:3]
            assert "\x00" not in reply.text and "\u202e" not in reply.text and "\x1b" not in reply.text
        pong = ask(node, ALICE, "/ping")
        assert pong and pong[0].text.startswith("pong"), repr(bad)
    assert bot.health_problem() is None
    assert node.counters.connections == 1
    long_echo = [t.text for t in node.texts if "AAAA" in t.text]
    # Arguments are capped at 200 characters: "ALIC: " + 200 A's needs 2 texts.
    assert [t[-6:] for t in long_echo] == [" (1/2)", " (2/2)"]
    assert "".join(t[:-6] for t in long_echo) == "ALIC: " + "A" * 200


def failing_module() -> types.ModuleType:
    module = types.ModuleType("handlers_test_failing")

    @command("boom", help="/boom: raises")
    def boom(ctx):
        raise RuntimeError("handler bug")

    module.boom = boom
    return module


def test_a_handler_that_raises_is_logged_with_its_traceback_and_the_bot_goes_on(node, start_bot, caplog):
    from meshbot import handlers

    caplog.set_level(logging.ERROR, logger="meshbot")
    start_bot(node, modules=(*handlers.MODULES, failing_module()))
    assert ask(node, ALICE, "/boom")[0].text == "sorry, /boom failed"
    record = next(r for r in caplog.records if "handler /boom failed" in r.getMessage())
    assert record.exc_info is not None and "handler bug" in caplog.text
    assert ask(node, ALICE, "/ping")[0].text.startswith("pong")


@pytest.mark.parametrize(
    "sender, dm, pki, allowed",
    [
        (BOB, True, True, True),  # admin, PKI DM
        (BOB, True, False, False),  # admin, plain DM
        (BOB, False, False, False),  # admin id on a channel: forgeable
        (ALICE, True, True, False),  # not an admin
    ],
    ids=["admin-pki-dm", "admin-plain-dm", "admin-on-channel", "non-admin"],
)
def test_admin_broadcast_needs_an_authenticated_admin(node, start_bot, sender, dm, pki, allowed):
    start_bot(node, ADMIN_NODES=[ADMIN], BROADCAST_CHANNEL=2)
    reply = ask(node, sender, "/bc net tonight at 20:00", dm=dm, pki=pki)
    if allowed:
        assert reply[0].text == "broadcast queued on ch2 (1 text)"
        wait_until(lambda: any(t.text == "net tonight at 20:00" and t.channel == 2 for t in node.texts), 5)
    else:
        assert reply[0].text == "not authorized"
        assert not any(t.text == "net tonight at 20:00" for t in quiet_for(node, 0.3) + node.texts)


def test_admin_over_plain_dm_when_pki_is_not_required(node, start_bot):
    start_bot(node, ADMIN_NODES=[ADMIN], REQUIRE_PKI_FOR_ADMIN=False)
    assert ask(node, BOB, "/broadcast hi all", dm=True)[0].text == "broadcast queued on ch0 (1 text)"
    assert ask(node, BOB, "/bc hi all")[0].text == "not authorized"  # still never on a channel


def test_scheduled_broadcasts_fire_text_and_command(node, start_bot, caplog):
    caplog.set_level(logging.INFO, logger="meshbot")
    start_bot(
        node,
        SCHEDULED_BROADCASTS=[
            {"every_s": 1, "text": "beacon", "channel": 1},
            {"every_s": 1.5, "command": "/status"},
            {"at": "03:00", "text": "nightly"},
        ],
    )
    texts = node.wait_texts(3, 5)
    assert ("beacon", 1) in [(t.text, t.channel) for t in texts]
    assert any(t.text.startswith("up ") and t.channel == 0 for t in texts)
    wait_until(lambda: "scheduled broadcast #0 fired: text 'beacon' every 1 s on ch1, 1 text" in caplog.text, 5)


def test_a_scheduled_command_that_does_not_exist_is_a_config_error(node):
    from meshbot.app import Bot
    from meshbot.config import ConfigError
    from tests.conftest import settings_for

    with pytest.raises(ConfigError, match="SCHEDULED_BROADCASTS: command /nosuch every 60 s on ch0: no such command"):
        Bot(settings_for(node, SCHEDULED_BROADCASTS=[{"every_s": 60, "command": "/nosuch"}]))


def test_ping_reports_hops_and_mqtt(node, start_bot):
    start_bot(node)
    assert ask(node, BOB, "/ping", hops=2, snr=-3.25, rssi=-110)[0].text == "pong: SNR -3.2 dB, RSSI -110 dBm, 2 hops"
    assert ask(node, CARL, "/ping", via_mqtt=True, hops=1)[0].text == "pong: via MQTT, 1 hop"


def test_nodes_pages_fill_one_text_each(start_bot):
    users = tuple(SimUser(0x3C000000 + i, f"N{i:02d}", hops_away=i % 3) for i in range(40))
    with SimulatedNode(firmware_version="2.6.11", users=users, has_time=True) as crowd:  # lastHeard from its DB
        start_bot(crowd, MAX_TEXT_BYTES=120)
        first = ask(crowd, users[0].num, "/nodes")[0].text
        pages = int(first.split(":")[0].split("/")[1])
        assert pages >= 3 and first.startswith(f"nodes 1/{pages}: ")
        seen = []
        for page in range(1, pages + 1):
            text = ask(crowd, users[0].num, f"/nodes {page}")[0].text
            assert len(text.encode()) <= 120 and text.startswith(f"nodes {page}/{pages}: ")
            seen += [entry.split(" ")[0] for entry in text.split(": ", 1)[1].split(", ")]
        assert sorted(seen) == sorted(u.short_name for u in users)  # every node once, none cut
        assert ask(crowd, users[0].num, f"/nodes {pages + 1}")[0].text == f"only {pages} pages of nodes"
