"""`CopyWindow` (meshbot/gateways/choice.py): one packet heard by many gateways is handled
once, through the gateway that heard it best. Driven by a clock the test moves; one test
runs the real closing thread."""

from __future__ import annotations

import threading
import time

import pytest

from meshbot.gateways.choice import Copy, CopyWindow, Heard
from tests.conftest import wait_until

KEY = (0x1A2B3C01, 0x1234)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def window(clock: Clock, seconds: float = 0.3, linked: int = 2, **kwargs: object) -> tuple[CopyWindow, list[Heard]]:
    heard: list[Heard] = []
    return CopyWindow(seconds, heard.append, linked_gateways=linked, clock=clock, **kwargs), heard  # type: ignore[arg-type]


def copy(clock: Clock, gateway: str, *, linked: bool = True, hops: int | None = 0, snr: float = 5.0) -> Copy:
    return Copy(gateway, linked, hops, snr, clock.now)


def test_one_gateway_waits_for_nothing():
    clock = Clock()
    copies, heard = window(clock, seconds=0.0, linked=1)
    copies.offer(KEY, copy(clock, "hill"), "packet")
    assert [h.best.gateway for h in heard] == ["hill"]  # before offer returned
    copies.offer(KEY, copy(clock, "hill"), "packet")  # the node handing it over again
    assert len(heard) == 1 and copies.counters.duplicates == 1


def test_fewest_hops_then_best_snr_then_linked_then_name():
    clock = Clock()
    copies, heard = window(clock)
    copies.offer(KEY, copy(clock, "town", hops=2, snr=9.0), "first")
    clock.now += 0.05
    copies.offer(KEY, copy(clock, "!a1b2c3d4", linked=False, hops=0, snr=7.5), "second")
    copies.offer(KEY, copy(clock, "hill", hops=0, snr=7.5), "third")
    copies.offer(KEY, copy(clock, "shack", hops=0, snr=6.0), "fourth")
    copies.offer(KEY, copy(clock, "attic", hops=None, snr=12.0), "fifth")
    clock.now += 0.2
    assert copies.close_due() > 0 and heard == []  # 0.25 s after the first copy: still open
    clock.now += 0.06
    copies.close_due()
    assert len(heard) == 1
    assert heard[0].packet == "first"  # the router reads the first copy
    assert heard[0].best.gateway == "hill"  # direct, 7.5 dB, linked beats the MQTT copy's tie
    assert [c.gateway for c in heard[0].others] == ["town", "!a1b2c3d4", "shack", "attic"]
    assert heard[0].describe() == (
        "via hill (direct, SNR 7.5 dB); also heard by town (2 hops, SNR 9 dB), !a1b2c3d4 (direct, SNR 7.5 dB),"
        " shack (direct, SNR 6 dB), attic (hops unknown, SNR 12 dB)"
    )
    clock.now += 1
    copies.offer(KEY, copy(clock, "late"), "late")  # a slow uplink after the answer
    copies.close_due()
    assert len(heard) == 1 and copies.counters.duplicates == 1


def test_a_tie_always_picks_the_same_gateway():
    for order in (["b", "a", "c"], ["c", "b", "a"], ["a", "c", "b"]):
        clock = Clock()
        copies, heard = window(clock)
        for name in order:
            copies.offer(KEY, copy(clock, name), name)
        clock.now += 1
        copies.close_due()
        assert heard[0].best.gateway == "a"


def test_an_mqtt_copy_alone_waits_longer_for_the_linked_one():
    clock = Clock()
    copies, heard = window(clock, seconds=0.3, mqtt_grace_s=0.3)
    copies.offer(KEY, copy(clock, "!a1b2c3d4", linked=False, hops=1), "mqtt")
    clock.now += 0.35
    copies.close_due()
    assert heard == []  # a linked copy may still be on its way (measured: up to ~300 ms behind)
    copies.offer(KEY, copy(clock, "hill", hops=1), "linked")
    copies.close_due()
    assert heard and heard[0].best.gateway == "hill"  # the window had run 0.3 s since the first copy


def test_without_linked_gateways_an_mqtt_copy_waits_only_the_window():
    clock = Clock()
    copies, heard = window(clock, linked=0)
    copies.offer(KEY, copy(clock, "!a1b2c3d4", linked=False), "mqtt")
    clock.now += 0.31
    copies.close_due()
    assert len(heard) == 1


def test_a_dm_is_handed_on_at_once_and_its_other_copies_are_duplicates():
    clock = Clock()
    copies, heard = window(clock)
    copies.offer(KEY, copy(clock, "hill"), "dm", now_only=True)
    assert len(heard) == 1
    copies.offer(KEY, copy(clock, "!a1b2c3d4", linked=False), "dm")
    assert len(heard) == 1 and copies.counters.duplicates == 1


def test_a_flood_of_distinct_ids_closes_the_oldest_windows_early_and_loses_none():
    clock = Clock()
    copies, heard = window(clock, max_open=100)
    for i in range(1000):
        copies.offer((1, i), copy(clock, "hill"), i)
    assert copies.open_count == 100 and copies.counters.closed_early == 900
    clock.now += 1
    copies.close_due()
    assert sorted(h.packet for h in heard) == list(range(1000))


def test_a_failing_consumer_does_not_stop_the_others(caplog):
    clock = Clock()
    seen: list[Heard] = []

    def consumer(heard: Heard) -> None:
        if heard.packet == "bad":
            raise RuntimeError("a bug")
        seen.append(heard)

    copies = CopyWindow(0.0, consumer, linked_gateways=1, clock=clock)
    copies.offer((1, 1), copy(clock, "hill"), "bad")
    copies.offer((1, 2), copy(clock, "hill"), "good")
    assert [h.packet for h in seen] == ["good"]
    assert "handling a packet from the gateways failed" in caplog.text and "RuntimeError: a bug" in caplog.text


def test_the_closing_thread_hands_packets_on_and_stop_flushes_the_open_ones():
    done = threading.Event()
    heard: list[Heard] = []

    def consumer(item: Heard) -> None:
        heard.append(item)
        done.set()

    copies = CopyWindow(0.05, consumer, linked_gateways=2)
    copies.start()
    try:
        copies.offer(KEY, Copy("hill", True, 0, 1.0, time.monotonic()), "p")
        assert done.wait(10)
    finally:
        copies.stop()
    copies2 = CopyWindow(3600.0, heard.append, linked_gateways=2)
    copies2.start()
    copies2.offer((2, 2), Copy("hill", True, 0, 1.0, time.monotonic()), "open")
    assert copies2.open_count == 1  # an hour to go
    copies2.stop()
    wait_until(lambda: [h.packet for h in heard] == ["p", "open"], 5)


@pytest.mark.parametrize(("hops", "text"), [(0, "direct"), (1, "1 hop"), (3, "3 hops"), (None, "hops unknown")])
def test_copy_describe(hops, text):
    assert Copy("hill", True, hops, -2.5, 0.0).describe() == f"hill ({text}, SNR -2.5 dB)"
