"""/weather and /forecast end to end: the real bot over TCP, a fake Open-Meteo over HTTP on 127.0.0.1.

The fake (meshbot/sim/weather.py) answers with Open-Meteo's JSON shape, converts units
itself as the real service does, rejects parameters it does not know, counts the
requests it sees, and has fault switches. Timeouts are short (0.5 s) to keep this fast.
"""

from __future__ import annotations

import datetime
import logging
import re
import socket
import time
from typing import Any, Callable, Iterator

import pytest

import meshbot
from meshbot.config import ConfigError, build_settings
from meshbot.sim.node import SimulatedNode
from meshbot.sim.weather import FORECAST_PATH, SEARCH_PATH, FakeOpenMeteo, SimDay, SimWeather
from meshbot.text import utf8_len
from meshbot.weather import STALE_MAX_S, ServiceUnavailable, WeatherClient
from tests.conftest import wait_until
from tests.test_commands import ALICE, BOB, CARL, ask

DAVE = 0x1A2B3C04  # not in the node DB
TIMEOUT_S = 0.5

# Known weather at Lyon (the fake geocodes "Lyon" to 45.74846,4.84671: cell 45.75,4.85).
LYON_WEATHER = SimWeather(
    temperature_c=12.4,
    weather_code=0,
    wind_kmh=9.3,
    wind_direction=225,
    hourly_mm=(0.0, 0.2, 0.8, 2.5, 12.0, 0.4) + (0.0,) * 18,
    hourly_probability=(5, 40, 70, 90, 90, 60) + (10,) * 18,
    days=(
        SimDay(0, 6.2, 14.5, 0.0, 10),
        SimDay(63, 5.0, 9.0, 12.3, 80),
        SimDay(2, 4.0, 10.0, 0.6, 30),
    ),
)
LYON_NOW = "Lyon, FR: ☀️ clear 12°C, wind 9 km/h SW, today 6..15°C, rain 10%"
DRY_WEATHER = SimWeather(3.0, 3, 0.2, 0, (0.0,) * 24, (0, 5, 20) * 8, LYON_WEATHER.days)


@pytest.fixture
def api() -> Iterator[FakeOpenMeteo]:
    with FakeOpenMeteo() as fake:
        fake.set_weather(45.74846, 4.84671, LYON_WEATHER)
        yield fake


@pytest.fixture
def weather_bot(node: SimulatedNode, start_bot: Callable[..., Any], api: FakeOpenMeteo) -> Callable[..., Any]:
    """weather_bot(**settings): the bot on the simulated node, its weather URLs on the fake."""

    def start(**overrides: Any) -> Any:
        values = dict(
            WEATHER_API_URL=api.forecast_url, GEOCODING_API_URL=api.geocoding_url, WEATHER_TIMEOUT_S=TIMEOUT_S
        )
        values.update(overrides)
        return start_bot(node, **values)

    return start


def one_text(node: SimulatedNode, user: int, text: str, **kwargs: Any) -> str:
    """The bot's only reply to a command (fails if there are none or several)."""
    replies = ask(node, user, text, **kwargs)
    assert len(replies) == 1, (text, [r.text for r in replies])
    assert utf8_len(replies[0].text) <= 200
    return replies[0].text


def weekdays_from_today() -> list[list[str]]:
    """The fake's days start at today in GMT; accept both sides of a midnight during the test."""
    names = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
    today = datetime.datetime.now(datetime.timezone.utc).date()
    return [[names[(today.weekday() + shift + i) % 7] for i in range(3)] for shift in (0, -1)]


# --- the three kinds and the place forms --------------------------------------------------------------
def test_weather_now_by_place_name_in_one_text(node, weather_bot, api):
    weather_bot()
    assert one_text(node, ALICE, "/weather Lyon") == LYON_NOW
    search, forecast = api.seen(SEARCH_PATH), api.seen(FORECAST_PATH)
    assert [r.query["name"] for r in search] == ["Lyon"]
    assert len(forecast) == 1
    query = forecast[0].query
    assert (query["latitude"], query["longitude"]) == ("45.75", "4.85")  # rounded: the cache key is the request
    assert (query["temperature_unit"], query["wind_speed_unit"], query["precipitation_unit"]) == ("celsius", "kmh", "mm")
    assert query["timezone"] == "auto"
    assert {r.user_agent for r in api.seen()} == {f"meshbot/{meshbot.__version__} (+Meshtastic bot)"}


def test_weather_by_dm_is_answered_by_dm(node, weather_bot):
    weather_bot()
    replies = ask(node, BOB, "/weather Lyon", dm=True)
    assert [(r.text, r.to) for r in replies] == [(LYON_NOW, BOB)]


def test_rain_next_12_hours_as_one_bar_per_hour(node, weather_bot, api):
    weather_bot()
    text = one_text(node, ALICE, "/weather rain Lyon")
    # _ dry, ▁ 0.2, ▃ 0.8, ▅ 2.5, █ 12, ▂ 0.4 mm (an absolute scale), 15.9 mm in all.
    assert re.fullmatch(r"Lyon, FR rain from \d\d:00: _▁▃▅█▂______ 16 mm, chance 90%", text), text
    assert api.seen(FORECAST_PATH)[0].query["forecast_hours"] == "12"


def test_rain_when_dry_says_so_in_few_bytes(node, weather_bot, api):
    api.set_weather(10.0, 20.0, DRY_WEATHER)
    weather_bot()
    assert one_text(node, ALICE, "/weather rain 10,20") == "10,20: no rain next 12h, chance 20%"


@pytest.mark.parametrize("command", ["/weather 3d Lyon", "/forecast Lyon", "/FORECAST lyon"])
def test_three_days_one_line_each(node, weather_bot, command):
    weather_bot()
    text = one_text(node, ALICE, command)
    lines = text.split("\n")
    assert lines[0] == "Lyon, FR 3d:"
    assert [line[:3] for line in lines[1:]] in weekdays_from_today()
    assert [line[4:] for line in lines[1:]] == [
        "☀️ clear 6..15°C 0mm 10%",
        "🌧️ rain 5..9°C 12mm 80%",
        "⛅ partly cloudy 4..10°C 0.6mm 30%",
    ]


def test_coordinates_are_asked_rounded_and_shown_rounded(node, weather_bot, api):
    weather_bot()
    text = one_text(node, ALICE, "/weather 48.8566, 2.3522")
    assert text.startswith("48.86,2.35: ")
    assert api.count(SEARCH_PATH) == 0  # no geocoding for coordinates
    query = api.seen(FORECAST_PATH)[0].query
    assert (query["latitude"], query["longitude"]) == ("48.86", "2.35")


def test_node_short_name_uses_its_last_known_position(node, weather_bot, api):
    weather_bot()
    # ALIC is at 45.764,4.8357 in the simulated node DB; any case is accepted.
    assert one_text(node, BOB, "/weather ALIC").startswith("ALIC: ")
    assert one_text(node, BOB, "/weather rain alic").startswith("ALIC")
    queries = [(r.query["latitude"], r.query["longitude"]) for r in api.seen(FORECAST_PATH)]
    assert queries == [("45.76", "4.84"), ("45.76", "4.84")]
    assert api.count(SEARCH_PATH) == 0


def test_node_without_position_falls_back_to_geocoding(node, weather_bot, api):
    weather_bot()
    assert one_text(node, ALICE, "/weather CARL") == 'weather: "CARL" not found (node CARL has no position)'
    assert [r.query["name"] for r in api.seen(SEARCH_PATH)] == ["CARL"]


def test_default_location_and_no_place_at_all(node, weather_bot, api):
    weather_bot(DEFAULT_LOCATION="Paris")
    assert one_text(node, ALICE, "/weather").startswith("Paris, FR: ")
    assert one_text(node, ALICE, "/weather rain").startswith("Paris, FR")


def test_no_place_and_no_default_location_gives_the_usage(node, weather_bot, api):
    weather_bot()
    assert one_text(node, ALICE, "/weather").startswith("usage: /weather [rain|3d] [place]")
    assert api.count() == 0


def test_place_labels_use_a_short_region_or_the_country_code(node, weather_bot):
    weather_bot()
    assert one_text(node, ALICE, "/weather Portland").startswith("Portland, Oregon: ")  # the most populous
    assert one_text(node, ALICE, "/weather tokyo").startswith("Tokyo, JP: ")  # admin1 "Tokyo" says nothing more
    long_name = one_text(node, ALICE, "/weather Llanfairpwllgwyngyllgogerychwyrndrobwllllantysiliogogogoch")
    assert long_name.startswith("Llanfairpwllgwyngyllgog…, Wales: ")


def test_imperial_units_are_asked_of_the_api(node, weather_bot, api):
    weather_bot(UNITS="imperial")
    # The fake converts as Open-Meteo does: 12.4 °C -> 54.3 °F, 9.3 km/h -> 5.8 mph, 12.3 mm -> 0.484 in.
    assert one_text(node, ALICE, "/weather Lyon") == "Lyon, FR: ☀️ clear 54°F, wind 6 mph SW, today 43..58°F, rain 10%"
    days = one_text(node, ALICE, "/weather 3d Lyon").split("\n")
    assert days[2][4:] == "🌧️ rain 41..48°F 0.48in 80%"
    rain = one_text(node, ALICE, "/weather rain Lyon")
    assert re.fullmatch(r"Lyon, FR rain from \d\d:00: _▁▃▅█▂______ 0.63 in, chance 90%", rain), rain
    units = {(r.query["temperature_unit"], r.query["wind_speed_unit"], r.query["precipitation_unit"]) for r in api.seen(FORECAST_PATH)}
    assert units == {("fahrenheit", "mph", "inch")}


@pytest.mark.parametrize("max_bytes", [40, 80, 200])
def test_every_answer_fits_one_text_and_three_days_two(node, weather_bot, max_bytes):
    weather_bot(MAX_TEXT_BYTES=max_bytes)
    for command, most in [
        ("/weather Lyon", 1),
        ("/weather rain Lyon", 1),
        ("/weather 3d Lyon", 2),
        ("/weather Llanfairpwllgwyngyllgogerychwyrndrobwllllantysiliogogogoch", 1),
        ("/weather 3d Llanfairpwllgwyngyllgogerychwyrndrobwllllantysiliogogogoch", 2),
        ("/weather Xyzzyxyzzyxyzzyxyzzyxyzzyxyzzy", 1),
        ("/weather 95,3", 1),
        ("/weather", 1),
    ]:
        replies = ask(node, ALICE, command)
        assert 1 <= len(replies) <= most, (command, [r.text for r in replies])
        assert all(utf8_len(r.text) <= max_bytes for r in replies), (command, [r.text for r in replies])
        if max_bytes == 200:
            assert len(replies) == 1  # at the default size, even three days take one text


# --- errors --------------------------------------------------------------------------------------------
def test_place_not_found(node, weather_bot, api):
    weather_bot()
    assert one_text(node, ALICE, "/weather Xyzzy") == 'weather: "Xyzzy" not found'
    api.set_faults(place_unknown=True)
    assert one_text(node, ALICE, "/weather Lyon") == 'weather: "Lyon" not found'
    assert api.count(FORECAST_PATH) == 0


@pytest.mark.parametrize("text", ["/weather 95,3", "/weather 45,76,4,84", "/weather rain -1,200"])
def test_bad_coordinates_are_refused_without_a_request(node, weather_bot, api, text):
    weather_bot()
    assert one_text(node, ALICE, text).startswith(f'weather: "{text.split()[-1]}"')
    assert api.count() == 0


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "meshbot.weather" and r.levelno >= logging.WARNING]


def test_http_500_is_retried_once_then_reported_in_one_line(node, weather_bot, api, caplog):
    caplog.set_level(logging.INFO)
    weather_bot()
    api.set_faults(status=500)
    assert one_text(node, ALICE, "/weather Lyon") == "weather: service unavailable, try again later"
    assert api.count(SEARCH_PATH) == 2  # the request and its one retry
    assert api.count(FORECAST_PATH) == 0
    [warning] = warnings_of(caplog)
    assert warning.levelno == logging.WARNING and warning.exc_info is None
    assert f"GET {api.geocoding_url}?name=Lyon&count=1" in warning.getMessage()
    assert "failed: HTTP 500 (after a retry)" in warning.getMessage()
    assert "Traceback" not in caplog.text and not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_hung_server_is_given_up_on_after_the_timeout(node, weather_bot, api, caplog):
    caplog.set_level(logging.INFO)
    weather_bot()
    api.set_faults(delay_s=3.0)
    started = time.monotonic()
    assert one_text(node, ALICE, "/weather 45.75,4.85") == "weather: service unavailable, try again later"
    elapsed = time.monotonic() - started
    assert TIMEOUT_S <= elapsed < 3.0 - 0.5, elapsed  # well before the server would have answered
    assert api.count() == 1  # no time left in the budget for a retry
    [warning] = warnings_of(caplog)
    assert f"no answer within {TIMEOUT_S:g} s" in warning.getMessage() and warning.exc_info is None


def test_a_fetch_stuck_past_its_deadline_does_not_hold_the_user(node, weather_bot, api, caplog):
    """A server dripping its answer defeats read timeouts; the waiting is bounded all the same."""
    caplog.set_level(logging.INFO)
    weather_bot()
    api.set_faults(drip_s=0.2)  # the fetch thread stays stuck reading the headers for ~20 s
    started = time.monotonic()
    first = node.user_text(ALICE, "/weather 45.75,4.85")
    time.sleep(0.1)
    second = node.user_text(BOB, "/weather 45.75,4.85")  # joins the stuck fetch: bounded too
    texts = node.wait_texts(2, 5)
    assert time.monotonic() - started < TIMEOUT_S + 2.0  # not the ~20 s the fetch stays stuck
    assert {t.reply_id: t.text for t in texts} == {
        first: "weather: service unavailable, try again later",
        second: "weather: service unavailable, try again later",
    }
    assert api.count() == 1
    [warning] = warnings_of(caplog)  # once, not once per waiter
    assert f"no answer within {TIMEOUT_S:g} s" in warning.getMessage()


def test_an_unreachable_service_is_unavailable(node, weather_bot):
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there now: connection refused
    weather_bot(WEATHER_API_URL=f"http://127.0.0.1:{port}/v1/forecast")
    assert one_text(node, ALICE, "/weather 1,2") == "weather: service unavailable, try again later"


@pytest.mark.parametrize(
    "faults", [dict(garbage=True), dict(omit=("current",)), dict(omit=("daily",))], ids=["not-json", "no-current", "no-daily"]
)
def test_a_bad_answer_is_reported_and_not_retried(node, weather_bot, api, caplog, faults):
    caplog.set_level(logging.INFO)
    weather_bot()
    api.set_faults(**faults)
    assert one_text(node, ALICE, "/weather 45.75,4.85") == "weather: bad answer from the weather service"
    assert api.count() == 1
    [warning] = warnings_of(caplog)
    assert api.forecast_url in warning.getMessage() and warning.exc_info is None


# --- cache, stale copies, single-flight, not blocking others ------------------------------------------------
def test_a_cached_answer_costs_no_request(node, weather_bot, api):
    weather_bot()
    first = one_text(node, ALICE, "/weather Lyon")
    assert one_text(node, BOB, "/weather lyon") == first  # geocoding cached by normalized name
    assert one_text(node, CARL, "/weather 45.7509,4.8521") == first.replace("Lyon, FR", "45.75,4.85")  # same 0.01° cell
    assert (api.count(SEARCH_PATH), api.count(FORECAST_PATH)) == (1, 1)
    one_text(node, ALICE, "/weather rain Lyon")  # another kind is another entry
    assert (api.count(SEARCH_PATH), api.count(FORECAST_PATH)) == (1, 2)


def test_an_expired_answer_is_fetched_again(node, weather_bot, api):
    weather_bot(WEATHER_CACHE_S=0.2)
    one_text(node, ALICE, "/weather 45.75,4.85")
    time.sleep(0.3)
    one_text(node, ALICE, "/weather 45.75,4.85")
    assert api.count(FORECAST_PATH) == 2


def test_an_old_copy_marked_by_its_age_when_the_service_fails(node, weather_bot, api, caplog):
    caplog.set_level(logging.INFO)
    weather_bot(WEATHER_CACHE_S=0.2)
    assert one_text(node, ALICE, "/weather Lyon") == LYON_NOW
    time.sleep(0.3)
    api.set_faults(status=503, paths=(FORECAST_PATH,))
    stale = one_text(node, BOB, "/weather Lyon")
    assert re.fullmatch(r"Lyon, FR \(\d+s old\): ☀️ clear 12°C, wind 9 km/h SW, today 6..15°C, rain 10%", stale), stale
    [warning] = warnings_of(caplog)
    assert "HTTP 503 (after a retry); answering with a copy" in warning.getMessage()


def test_no_copy_older_than_six_hours_is_served(api):
    """The 6-hour limit, through the client with a clock that can jump (the bot's is real time)."""
    now = [1000.0]
    settings = build_settings(
        dict(NODE_HOST="127.0.0.1", WEATHER_API_URL=api.forecast_url, GEOCODING_API_URL=api.geocoding_url, WEATHER_TIMEOUT_S=TIMEOUT_S)
    )
    client = WeatherClient(settings, clock=lambda: now[0])
    try:
        fresh = client.current(45.75, 4.85)
        api.set_faults(status=500)
        now[0] += STALE_MAX_S - 60
        old = client.current(45.75, 4.85)
        assert old.stale and old.data == fresh.data and old.age_s == STALE_MAX_S - 60
        now[0] += 120
        with pytest.raises(ServiceUnavailable):
            client.current(45.75, 4.85)
    finally:
        client.close()


def test_concurrent_identical_requests_are_fetched_once(node, weather_bot, api):
    weather_bot(WEATHER_TIMEOUT_S=3.0, HANDLER_THREADS=4)
    api.set_faults(delay_s=0.3)  # long enough for all four to arrive while the first is fetching
    ids = [node.user_text(user, "/weather Lyon") for user in (ALICE, BOB, CARL, DAVE)]
    texts = node.wait_texts(4, 5)
    assert sorted(t.reply_id for t in texts) == sorted(ids)
    assert {t.text for t in texts} == {LYON_NOW}
    assert (api.count(SEARCH_PATH), api.count(FORECAST_PATH)) == (1, 1)


def test_ping_is_answered_while_a_weather_request_hangs(node, weather_bot, api):
    weather_bot(WEATHER_TIMEOUT_S=3.0)
    api.set_faults(delay_s=5.0)
    weather_id = node.user_text(ALICE, "/weather Lyon")
    wait_until(lambda: api.count() == 1, 5)  # the weather request is now hanging on a handler worker
    pong = ask(node, BOB, "/ping")
    assert pong and pong[0].text.startswith("pong")
    assert not [t for t in node.texts if t.reply_id == weather_id]  # still waiting: the pong did not queue behind it
    texts = node.wait_texts(2, 6)
    assert [t.text for t in texts if t.reply_id == weather_id] == ["weather: service unavailable, try again later"]


# --- settings -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("DEFAULT_LOCATION", "91,0", "out of range"),
        ("DEFAULT_LOCATION", "45,76,4,84", "is not 'lat,lon'"),
        ("DEFAULT_LOCATION", 45.76, "expected a place name"),
        ("UNITS", "kelvin", "one of 'metric', 'imperial'"),
        ("WEATHER_API_URL", "api.open-meteo.com/v1/forecast", "http:// or https:// URL"),
        ("WEATHER_TIMEOUT_S", 0, "from 0.1 to 60"),
    ],
)
def test_bad_weather_settings_name_the_key(key, value, expected):
    with pytest.raises(ConfigError) as info:
        build_settings({"NODE_HOST": "127.0.0.1", key: value})
    assert key in str(info.value) and expected in str(info.value)


@pytest.mark.parametrize("value", ["45.76,4.84", "-33.87, 151.21", "Lyon", "69001", ""])
def test_good_default_locations(value):
    assert build_settings({"NODE_HOST": "127.0.0.1", "DEFAULT_LOCATION": value}).DEFAULT_LOCATION == value
