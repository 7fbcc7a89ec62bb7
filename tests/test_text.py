"""Splitting replies by UTF-8 bytes, and LoRa airtime."""

from __future__ import annotations

import pytest

from meshbot.link.airtime import PRESETS, RadioParams, radio_params
from meshbot.text import ELLIPSIS, split_text, utf8_len


def test_short_text_is_one_text_unchanged():
    assert split_text("pong", 200, 4) == ["pong"]
    assert split_text("   ", 200, 4) == []


@pytest.mark.parametrize(
    "unit",
    ["a", "é", "Ж", "€", "🌧", "👍🏽", "🏳️‍🌈", "e\u0301"],  # 1, 2, 2, 3, 4 bytes; a skin tone; a ZWJ flag; a combining mark
)
def test_chunks_stay_within_the_byte_budget_and_never_split_a_character(unit):
    text = " ".join(unit * (i % 7 + 1) for i in range(300))
    for max_bytes in (40, 61, 200, 228):
        chunks = split_text(text, max_bytes, 10)
        assert 1 < len(chunks) <= 10
        for chunk in chunks:
            encoded = chunk.encode("utf-8")
            assert len(encoded) <= max_bytes
            assert encoded.decode("utf-8") == chunk


def test_cyrillic_and_emoji_are_counted_in_bytes_not_characters():
    text = "Привет мир " * 20  # 11 characters, 20 bytes per repeat
    chunks = split_text(text, 100, 10)
    assert all(utf8_len(c) <= 100 for c in chunks)
    assert len(text) < 100 * len(chunks) < utf8_len(text) + 100 * len(chunks)
    assert len(chunks) >= utf8_len(text.strip()) // 100


def test_splits_at_word_boundaries_with_markers_inside_the_budget():
    words = [f"w{i:02d}" for i in range(60)]
    chunks = split_text(" ".join(words), 50, 10)
    total = len(chunks)
    rebuilt = []
    for i, chunk in enumerate(chunks, 1):
        assert chunk.endswith(f" ({i}/{total})")
        assert utf8_len(chunk) <= 50
        rebuilt += chunk[: -len(f" ({i}/{total})")].split(" ")
    assert rebuilt == words  # no word was cut


def test_a_word_longer_than_a_chunk_is_cut_on_a_character_boundary():
    chunks = split_text("x" * 120, 50, 4)
    assert [len(c.split(" ")[0]) for c in chunks] == [44, 44, 32]


def test_too_long_reply_is_cut_to_max_chunks_and_ends_with_an_ellipsis():
    text = " ".join(f"word{i}" for i in range(400))
    chunks = split_text(text, 60, 3)
    assert len(chunks) == 3
    assert chunks[-1].endswith(f"{ELLIPSIS} (3/3)")
    assert all(utf8_len(c) <= 60 for c in chunks)
    one = split_text(text, 60, 1)
    assert len(one) == 1 and one[0].endswith(ELLIPSIS) and utf8_len(one[0]) <= 60


def test_ten_chunks_use_two_digit_markers_within_budget():
    text = "abcdefgh " * 200
    chunks = split_text(text, 40, 10)
    assert len(chunks) == 10
    assert chunks[-1].endswith(" (10/10)")
    assert all(utf8_len(c) <= 40 for c in chunks)


def test_lone_surrogates_do_not_crash():
    assert split_text("bad \udcff text", 200, 4) == ["bad ? text"]


def test_airtime_matches_the_semtech_formula_for_long_fast():
    radio = RadioParams("LONG_FAST", *PRESETS["LONG_FAST"])
    # SF11/250 kHz/CR 4/5, 230 bytes on air: Tsym 8.192 ms, (16 + 4.25 + 218) symbols.
    assert radio.airtime_s(200) == pytest.approx((20.25 + 218) * 0.008192, rel=1e-9)
    assert 1.9 < radio.airtime_s(200) < 2.0
    slow = RadioParams("LONG_SLOW", *PRESETS["LONG_SLOW"])
    assert slow.airtime_s(200) > 8  # low data rate optimisation on: SF12/125 kHz


def test_radio_params_from_the_nodes_lora_config():
    from meshtastic.protobuf import config_pb2

    lora = config_pb2.Config.LoRaConfig(use_preset=True, modem_preset=config_pb2.Config.LoRaConfig.ModemPreset.MEDIUM_FAST)
    assert radio_params(lora).spreading_factor == 9
    custom = config_pb2.Config.LoRaConfig(use_preset=False, bandwidth=62, spread_factor=10, coding_rate=6)
    params = radio_params(custom)
    assert (params.bandwidth_khz, params.spreading_factor, params.coding_rate) == (62.5, 10, 6)
    newer = config_pb2.Config.LoRaConfig(use_preset=True, modem_preset=config_pb2.Config.LoRaConfig.ModemPreset.NARROW_FAST)
    assert radio_params(newer).airtime_s(100) == RadioParams("x", *PRESETS["LONG_SLOW"]).airtime_s(100)
    assert radio_params(None).name == "LONG_FAST"
