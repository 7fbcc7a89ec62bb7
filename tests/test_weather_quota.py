"""WEATHER_MAX_CALLS_PER_DAY, the geocoding cache and secrets in weather URLs.

Against the fake Open-Meteo (a real HTTP server on 127.0.0.1) whose request count is
the truth: past the quota, it must see no request at all. The rolling 24 hours are
tested through the client with an injected clock.
"""

from __future__ import annotations

import logging
import random
from typing import Any, Callable, Iterator

import pytest

from meshbot.config import build_settings
from meshbot.sim.node import SimulatedNode
from meshbot.sim.weather import FORECAST_PATH, SEARCH_PATH, FakeOpenMeteo
from meshbot.weather import PlaceNotFound, RollingQuota, ServiceBusy, ServiceUnavailable, WeatherClient
from tests.test_commands import ALICE, BOB, CARL, ask
from tests.test_weather import LYON_NOW, LYON_WEATHER, TIMEOUT_S

LYON = (45.75, 4.85)
DAY_S = 86400.0


@pytest.fixture
def api() -> Iterator[FakeOpenMeteo]:
    with FakeOpenMeteo() as fake:
        fake.set_weather(45.74846, 4.84671, LYON_WEATHER)
        yield fake


def client_for(api: FakeOpenMeteo, now: list[float], **overrides: Any) -> WeatherClient:
    values = dict(
        NODE_HOST="127.0.0.1", WEATHER_API_URL=api.forecast_url, GEOCODING_API_URL=api.geocoding_url,
        WEATHER_TIMEOUT_S=TIMEOUT_S,
    )
    values.update(overrides)
    return WeatherClient(build_settings(values), clock=lambda: now[0])


@pytest.fixture
def weather_bot(node: SimulatedNode, start_bot: Callable[..., Any], api: FakeOpenMeteo) -> Callable[..., Any]:
    def start(**overrides: Any) -> Any:
        values = dict(WEATHER_API_URL=api.forecast_url, GEOCODING_API_URL=api.geocoding_url, WEATHER_TIMEOUT_S=TIMEOUT_S)
        values.update(overrides)
        return start_bot(node, **values)

    return start


def one_text(node: SimulatedNode, user: int, text: str) -> str:
    replies = ask(node, user, text)
    assert len(replies) == 1, (text, replies)
    return replies[0].text


# --- the quota, end to end -------------------------------------------------------------------------
def test_past_the_quota_the_bot_answers_from_cache_or_busy_and_makes_no_request(node, weather_bot, api, caplog):
    caplog.set_level(logging.INFO, logger="meshbot.weather")
    bot = weather_bot(WEATHER_MAX_CALLS_PER_DAY=3)
    assert one_text(node, ALICE, "/weather Lyon") == LYON_NOW  # geocoding + forecast: 2 requests
    assert one_text(node, BOB, "/weather Paris") == "weather: service busy, try again later"  # geocoded (3), no forecast
    assert api.count() == 3 and bot.weather.calls_last_day == 3
    assert one_text(node, CARL, "/weather Berlin") == "weather: service busy, try again later"
    assert one_text(node, CARL, "/weather Lyon") == LYON_NOW  # a fresh cached answer is not a request
    assert one_text(node, ALICE, "/weather rain Paris") == "weather: service busy, try again later"
    assert api.count() == 3
    spent = [r for r in caplog.records if "WEATHER_MAX_CALLS_PER_DAY (3 requests in 24 h) spent" in r.getMessage()]
    assert len(spent) == 1 and spent[0].levelno == logging.WARNING  # once, not per refused request


def test_spoofed_ids_with_invented_places_cannot_spend_more_than_the_quota(node, weather_bot, api):
    """Measured on main: 600 place names from 600 ids made 600 geocoding requests."""
    # The whole channel for the bot: 40 replies to strangers are more than their share of
    # ten minutes' airtime, and this test is about the weather quota.
    weather_bot(WEATHER_MAX_CALLS_PER_DAY=10, HANDLER_THREADS=4, AIRTIME_BUDGET_PCT=100)
    ids = [node.user_text(0x70000000 + i, f"/weather Nowhere{i:03d}") for i in range(40)]
    texts = node.wait_texts(40, 20)
    answers = {t.reply_id: t.text for t in texts}
    assert set(answers) == set(ids)
    assert api.count(SEARCH_PATH) == 10 and api.count(FORECAST_PATH) == 0
    assert sum(v.startswith('weather: "Nowhere') and v.endswith('" not found') for v in answers.values()) == 10
    assert sum(v == "weather: service busy, try again later" for v in answers.values()) == 30


# --- the quota, through the client with a clock ------------------------------------------------------
def test_the_quota_is_a_rolling_24_hours_and_stale_copies_are_served_marked_by_age(api, caplog):
    caplog.set_level(logging.INFO, logger="meshbot.weather")
    now = [1000.0]
    client = client_for(api, now, WEATHER_MAX_CALLS_PER_DAY=2)
    try:
        fresh = client.current(*LYON)  # request 1
        client.days(*LYON)  # request 2: the quota is spent
        now[0] += 3600  # both cached answers are an hour old (WEATHER_CACHE_S is 10 min)
        old = client.current(*LYON)
        assert old.stale and old.age_s == 3600 and old.data == fresh.data
        with pytest.raises(ServiceBusy):
            client.rain(*LYON)  # nothing cached for this kind
        assert api.count() == 2
        now[0] = 1000.0 + DAY_S - 1  # request 1 is still in the last 24 hours
        with pytest.raises(ServiceBusy):
            client.rain(*LYON)
        now[0] = 1000.0 + DAY_S + 120  # and now it is not (counted per minute: up to a minute more)
        assert not client.rain(*LYON).stale
        assert api.count() == 3
        messages = [(r.levelno, r.getMessage()) for r in caplog.records]
        assert (logging.INFO, "weather: requests possible again (WEATHER_MAX_CALLS_PER_DAY = 2)") in messages
    finally:
        client.close()


def test_a_retry_is_a_request_too(api):
    now = [1000.0]
    client = client_for(api, now, WEATHER_MAX_CALLS_PER_DAY=1, WEATHER_TIMEOUT_S=2.0)
    api.set_faults(status=500, count=1)  # the first answer fails; a retry would succeed
    try:
        with pytest.raises(ServiceUnavailable, match="no retry: WEATHER_MAX_CALLS_PER_DAY spent"):
            client.current(*LYON)
        assert api.count() == 1
    finally:
        client.close()


def test_place_names_are_geocoded_once_a_day_and_kept_as_a_fallback(api):
    now = [1000.0]
    client = client_for(api, now, WEATHER_MAX_CALLS_PER_DAY=2)
    try:
        lyon = client.geocode("Lyon")  # request 1
        now[0] += DAY_S - 60
        assert client.geocode("lyon ") == lyon  # same name, normalized: cached for a day
        with pytest.raises(PlaceNotFound):
            client.geocode("Atlantis")  # request 2: the quota is spent
        now[0] += 180  # request 1 has left the 24 hours, and Lyon's entry is over a day old
        with pytest.raises(PlaceNotFound):
            client.geocode("Gotham")  # request 3 takes the freed place: spent again
        assert client.geocode("Lyon") == lyon  # towns do not move: the old answer, no request
        assert api.count(SEARCH_PATH) == 3
        with pytest.raises(ServiceBusy):
            client.geocode("Paris")  # never asked: nothing to fall back on
    finally:
        client.close()


def test_rolling_quota_never_allows_more_than_the_limit_in_any_window():
    rng = random.Random(4403)
    quota = RollingQuota(limit=50, window_s=3600.0, bucket_s=60.0)
    taken: list[float] = []
    now = 0.0
    for _ in range(5000):
        now += rng.expovariate(1 / 30.0)  # one attempt every 30 s on average: 120 an hour, over the limit
        if quota.try_take(now):
            taken.append(now)
    assert len(taken) > 50 * 20  # it does let requests through, hour after hour
    for i, start in enumerate(taken):  # every window starting at an allowed request
        assert sum(1 for t in taken[i:i + 60] if t < start + 3600.0) <= 50
    assert quota.used(now + 3600.0 + 60.0) == 0
    assert len(quota._buckets) <= 61  # memory: one count per minute of the window, whatever the limit


# --- secrets in URLs --------------------------------------------------------------------------------
def test_secrets_in_weather_urls_never_reach_the_log(api, caplog):
    caplog.set_level(logging.DEBUG, logger="meshbot")
    now = [1000.0]
    forecast = api.forecast_url + "?apikey=S3CR3T-forecast&plan=pro"
    geocoding = api.geocoding_url.replace("http://", "http://meshbot:hunter2@")
    client = client_for(api, now, WEATHER_API_URL=forecast, GEOCODING_API_URL=geocoding, WEATHER_TIMEOUT_S=2.0)
    api.set_faults(status=503)
    try:
        with pytest.raises(ServiceUnavailable):
            client.current(*LYON)
        with pytest.raises(ServiceUnavailable):
            client.geocode("Lyon")
    finally:
        client.close()
    assert api.seen(FORECAST_PATH)[0].query["apikey"] == "S3CR3T-forecast"  # it was sent...
    # The fake server's own request log is the other side of the wire: not the bot's lines.
    text = "\n".join(caplog.handler.format(r) for r in caplog.records if not r.name.startswith("meshbot.sim"))
    assert "S3CR3T" not in text and "hunter2" not in text  # ...and never logged
    assert "apikey=***&plan=***" in text  # what the operator wrote is redacted, all of it
    assert "latitude=45.75" in text  # what the bot adds is not secret, and helps
    assert "http://meshbot:***@127.0.0.1" in text


def test_a_malformed_url_in_the_config_error_is_redacted():
    from meshbot.config import ConfigError

    with pytest.raises(ConfigError) as caught:
        build_settings({"NODE_HOST": "x", "WEATHER_API_URL": "ftp://me:pa55@host/v1?token=T0KEN"})
    assert "pa55" not in str(caught.value) and "T0KEN" not in str(caught.value)
    assert "WEATHER_API_URL" in str(caught.value)


def test_quota_is_a_setting_with_bounds():
    from meshbot.config import ConfigError

    assert build_settings({"NODE_HOST": "x"}).WEATHER_MAX_CALLS_PER_DAY == 5000
    for bad in (0, -1, 1.5, "5000", True):
        with pytest.raises(ConfigError, match="WEATHER_MAX_CALLS_PER_DAY"):
            build_settings({"NODE_HOST": "x", "WEATHER_MAX_CALLS_PER_DAY": bad})

