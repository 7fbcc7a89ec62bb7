"""Admin hardening: MQTT-borne commands refused, pinned public keys, ADMIN_NODES forms."""

from __future__ import annotations

import base64
import logging
import os

import pytest

from meshbot.config import EX_CONFIG
from tests.conftest import wait_until
from tests.test_commands import ADMIN, ALICE, BOB, ask, quiet_for
from tests.test_main import run_main, write_config

KEY = os.urandom(32)
OTHER_KEY = os.urandom(32)
PINNED = f"{ADMIN} {base64.b64encode(KEY).decode()}"


def refusals(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "refused" in r.getMessage()]


def assert_refused(node, caplog, reason: str, **packet) -> None:  # type: ignore[no-untyped-def]
    caplog.clear()
    reply = ask(node, BOB, "/bc net tonight", dm=True, **packet)
    assert [t.text for t in reply] == ["not authorized"]
    lines = wait_until(lambda: refusals(caplog), 5)  # logged once the reply is queued, maybe after it left
    assert len(lines) == 1 and lines[0].levelno == logging.INFO
    assert f"/bc refused ({reason}) from !1a2b3c02 by DM" in lines[0].getMessage()
    assert not any(t.text == "net tonight" for t in quiet_for(node, 0.3) + node.texts)


def test_an_admin_command_that_came_through_mqtt_is_refused(node, start_bot, caplog):
    caplog.set_level(logging.INFO, logger="meshbot")
    start_bot(node, ADMIN_NODES=[ADMIN])
    assert_refused(node, caplog, "arrived via MQTT", pki=True, via_mqtt=True, public_key=KEY)
    # The same admin in a PKI DM that did not come through MQTT: accepted.
    assert ask(node, BOB, "/bc hello", dm=True, pki=True)[0].text == "broadcast queued on ch0 (1 text)"


def test_admin_without_pki_requirement_still_refused_over_mqtt(node, start_bot, caplog):
    caplog.set_level(logging.INFO, logger="meshbot")
    start_bot(node, ADMIN_NODES=[ADMIN], REQUIRE_PKI_FOR_ADMIN=False)
    assert_refused(node, caplog, "arrived via MQTT", via_mqtt=True)


def test_a_pinned_key_must_match_the_packets_public_key(node, start_bot, caplog):
    caplog.set_level(logging.INFO, logger="meshbot")
    start_bot(node, ADMIN_NODES=[PINNED, "!0badc0de"], BROADCAST_CHANNEL=1)
    reply = ask(node, BOB, "/bc net at 20:00", dm=True, pki=True, public_key=KEY)
    assert [t.text for t in reply] == ["broadcast queued on ch1 (1 text)"]
    assert_refused(node, caplog, "public key differs from the one ADMIN_NODES pins", pki=True, public_key=OTHER_KEY)
    assert_refused(node, caplog, "no public key in the packet, and ADMIN_NODES pins one", pki=True)
    # Unchanged for everyone else: not an admin, and an admin id on a channel.
    assert ask(node, ALICE, "/bc hi", dm=True, pki=True, public_key=KEY)[0].text == "not authorized"
    assert ask(node, BOB, "/bc hi", pki=True, public_key=KEY)[0].text == "not authorized"


@pytest.mark.parametrize(
    "entry, expected",
    [
        (f"'{ADMIN} abc'", "a public key is 32 bytes"),
        (f"'{ADMIN} {base64.b64encode(os.urandom(31)).decode()}'", "31 bytes of base64"),
        (f"'{ADMIN} not*base64!'", "is not base64"),
        (f"'{ADMIN} {base64.b64encode(KEY).decode()} extra'", "optionally followed by one space"),
        ("'!1a2b3c0 " + base64.b64encode(KEY).decode() + "'", "'!' and 8 hex digits"),
        (f"'{ADMIN}', '{PINNED}'", "listed twice"),
    ],
    ids=["short-key", "31-bytes", "not-base64", "extra-word", "bad-id", "twice"],
)
def test_bad_admin_nodes_entries_exit_78_with_one_line(tmp_path, entry, expected):
    config = write_config(tmp_path, f"NODE_HOST = '127.0.0.1'\nADMIN_NODES = [{entry}]\n")
    result = run_main("--config", str(config), "--check-config")
    assert result.returncode == EX_CONFIG, result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "ADMIN_NODES" in lines[0] and expected in lines[0], result.stderr


def test_a_pinned_key_without_padding_is_accepted(tmp_path):
    unpadded = base64.b64encode(KEY).decode().rstrip("=")
    config = write_config(tmp_path, f"NODE_HOST = '127.0.0.1'\nADMIN_NODES = ['{ADMIN} {unpadded}', '!0BADC0DE']\n")
    result = run_main("--config", str(config), "--check-config")
    assert result.returncode == 0, result.stderr
