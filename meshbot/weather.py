"""Open-Meteo client for /weather: one HTTP session, caches, single-flight, hard time bounds.

Why it is built this way:

* **Bounded.** A handler worker must never hang on the network: other users' commands
  wait for a free worker. Every request runs on a short-lived fetch thread with a
  deadline of `WEATHER_TIMEOUT_S` (one retry included, only if time is left), and the
  worker waits for it at most that long plus a small grace, even when the fetch thread
  itself is stuck somewhere no timeout reaches (a DNS lookup, a server trickling bytes).
* **Single-flight.** Twenty nodes asking about the same town at once cost one HTTP
  request: callers that miss the cache while the same fetch is running wait for it
  (bounded the same way) instead of starting their own.
* **Cached.** Weather answers are fresh for `WEATHER_CACHE_S`, keyed by the query kind
  and the coordinates rounded to 0.01° (about 1 km, finer than the models' grid), and
  kept 6 hours so that a failing API can still be answered with an older copy, marked
  by its age. Geocoding answers are cached a day (a place that is not found, an hour).
* **A daily quota.** At most `WEATHER_MAX_CALLS_PER_DAY` HTTP requests (retries and
  geocoding included, all users together) in any rolling 24 hours: a free API key is
  shared by everyone on the mesh, and 600 invented place names from 600 invented node
  ids must not spend it for the rest of the day. Past it, a fresh cached answer is used
  as always, an old one is served marked by its age, and otherwise the user is told the
  service is busy (`ServiceBusy`); no request is made. The rolling window is counted in
  one-minute buckets (1441 numbers, whatever the quota), so a request counts for 24 h
  to 24 h plus a minute: never more than the quota in any 24 hours.
* **Honest errors.** Three kinds, each one short text for the user and one WARNING
  line (with the URL, its secrets redacted) in the log, at most one a minute when
  they repeat: the place is not found, the service is unavailable (5xx, 429, timeout,
  unreachable), or its answer is unusable (not JSON, fields missing). Anything else is
  a bug and reaches the router, which logs its traceback.

Units are asked of the API (`temperature_unit`, `wind_speed_unit`,
`precipitation_unit`), never converted here. The data classes below carry numbers,
not text: `handlers/weather.py` does the formatting.
"""

from __future__ import annotations

import collections
import copy
import datetime
import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Generic, Optional, TypeVar

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import ReadTimeoutError

import meshbot
from meshbot.config import Settings
from meshbot.logs import RepeatedWarning, redact_secrets, url_secret_names
from meshbot.text import format_age

log = logging.getLogger(__name__)

USER_AGENT = f"meshbot/{meshbot.__version__} (+Meshtastic bot)"
STALE_MAX_S = 6 * 3600  # an answer older than this is not worth sending, even as a fallback
PLACE_TTL_S = 86400.0  # towns do not move
PLACE_NOT_FOUND_TTL_S = 3600.0  # shorter: a glitch in the service must not hide a town for a day
COORD_DECIMALS = 2  # 0.01° is ~1 km: nodes in the same village share one cache entry
RAIN_HOURS = 12
FORECAST_DAYS = 3
MAX_BODY_BYTES = 256 * 1024  # our answers are ~2 KB; more is a misbehaving server
MAX_CACHE_ENTRIES = 1000  # per cache: a bound on memory whatever users ask for
WAIT_GRACE_S = 0.25  # lets the fetch thread report its own, more precise, error first
_RETRY_MIN_SHARE = 0.25  # retry only if a quarter of the budget is left for it
QUOTA_WINDOW_S = 86400.0
QUOTA_BUCKET_S = 60.0

T = TypeVar("T")


# --- errors ------------------------------------------------------------------------------
class WeatherError(Exception):
    """An expected failure of a weather lookup; the message is one short line for the log."""

    def again(self) -> "WeatherError":
        """A copy to raise in another thread (one instance raised twice shares a traceback)."""
        return copy.copy(self)


class PlaceNotFound(WeatherError):
    """The geocoding service knows no place by that name."""

    def __init__(self, place: str) -> None:
        super().__init__(f"place {place!r} not found")
        self.place = place


class ServiceUnavailable(WeatherError):
    """HTTP 5xx or 429, a timeout, or the service cannot be reached."""


class BadAnswer(WeatherError):
    """The service answered, but not with what was asked: not JSON, fields missing, HTTP 4xx."""


class ServiceBusy(ServiceUnavailable):
    """WEATHER_MAX_CALLS_PER_DAY is spent and no copy is cached: no request was made."""


class _Retryable(ServiceUnavailable):
    """A failure worth one more try inside the budget (5xx, connection error)."""


# --- data --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Place:
    """A place with coordinates, as geocoding returned it (name as the service spells it)."""

    name: str
    latitude: float
    longitude: float
    country_code: str = ""
    admin1: str = ""  # first-level region: state, province


@dataclass(frozen=True)
class Units:
    """How the numbers are to be labelled: the units the API was asked for."""

    temperature: str
    wind: str
    precipitation: str


# Parameters sent to the API, and the labels of what comes back.
UNIT_PARAMS = {
    "metric": {"temperature_unit": "celsius", "wind_speed_unit": "kmh", "precipitation_unit": "mm"},
    "imperial": {"temperature_unit": "fahrenheit", "wind_speed_unit": "mph", "precipitation_unit": "inch"},
}
UNIT_LABELS = {"metric": Units("°C", "km/h", "mm"), "imperial": Units("°F", "mph", "in")}


@dataclass(frozen=True)
class Current:
    """Conditions now, and today's range and rain chance."""

    time: datetime.datetime  # local time at the place
    weather_code: int  # WMO code
    temperature: float
    wind_speed: float
    wind_direction: Optional[float]  # degrees the wind comes from
    today_min: float
    today_max: float
    rain_probability: Optional[float]  # %, None where the models give none


@dataclass(frozen=True)
class HourlyRain:
    """Precipitation per hour for the next hours, from the current hour (local time)."""

    hours: tuple[datetime.datetime, ...]
    amounts: tuple[float, ...]
    probabilities: tuple[Optional[float], ...]


@dataclass(frozen=True)
class Day:
    """One day of the forecast."""

    date: datetime.date
    weather_code: int
    temperature_min: float
    temperature_max: float
    precipitation: float
    rain_probability: Optional[float]


@dataclass(frozen=True)
class Report(Generic[T]):
    """A result and how old it is; `stale` if it is an old copy served because the API failed."""

    data: T
    age_s: float
    stale: bool = False


# --- the quota -------------------------------------------------------------------------------------
class RollingQuota:
    """At most `limit` events in any `window_s`, counted in buckets of `bucket_s`.

    Memory is one count per bucket (1441 for a day of minutes), whatever the limit. An
    event counts until its bucket has left the window entirely, so the count is never
    below the true number in any window: the quota errs on the side of fewer requests.
    Not thread-safe (the client locks).
    """

    def __init__(
        self, limit: int, window_s: float = QUOTA_WINDOW_S, bucket_s: float = QUOTA_BUCKET_S
    ) -> None:
        self.limit = limit
        self._bucket_s = bucket_s
        self._buckets_per_window = max(1, int(round(window_s / bucket_s)))
        self._buckets: collections.deque[list[int]] = collections.deque()  # [bucket index, count], oldest first
        self._used = 0

    def used(self, now: float) -> int:
        """Events counted in the window ending at `now`."""
        self._expire(int(now // self._bucket_s))
        return self._used

    def try_take(self, now: float) -> bool:
        """Count one event if the quota allows it; False (nothing counted) if it is spent."""
        index = int(now // self._bucket_s)
        self._expire(index)
        if self._used >= self.limit:
            return False
        if self._buckets and self._buckets[-1][0] == index:
            self._buckets[-1][1] += 1
        else:
            self._buckets.append([index, 1])
        self._used += 1
        return True

    def _expire(self, index: int) -> None:
        # A bucket leaves when all of it is older than the window: strictly before the
        # window's first bucket, so an event counts for the whole window and at most one
        # bucket more, never less.
        while self._buckets and self._buckets[0][0] < index - self._buckets_per_window:
            self._used -= self._buckets.popleft()[1]


# --- caching and single-flight ----------------------------------------------------------------------
@dataclass
class _Entry:
    value: Any
    stored_at: float
    ttl_s: float


class _Cache:
    """Entries with a time of storage, oldest first; not thread-safe (the client locks)."""

    def __init__(self, max_age_s: Optional[float], max_entries: int = MAX_CACHE_ENTRIES) -> None:
        self._entries: collections.OrderedDict[Any, _Entry] = collections.OrderedDict()
        self._max_age_s = max_age_s  # None: kept until pushed out by newer entries
        self._max_entries = max_entries

    def fresh(self, key: Any, now: float) -> Optional[_Entry]:
        entry = self._entries.get(key)
        return entry if entry is not None and now - entry.stored_at < entry.ttl_s else None

    def any(self, key: Any, now: float) -> Optional[_Entry]:
        entry = self._entries.get(key)
        if entry is None or (self._max_age_s is not None and now - entry.stored_at > self._max_age_s):
            return None
        return entry

    def put(self, key: Any, value: Any, now: float, ttl_s: float) -> None:
        self._entries[key] = _Entry(value, now, ttl_s)
        self._entries.move_to_end(key)
        while self._entries:
            oldest_key, oldest = next(iter(self._entries.items()))
            too_old = self._max_age_s is not None and now - oldest.stored_at > self._max_age_s
            if not too_old and len(self._entries) <= self._max_entries:
                break
            del self._entries[oldest_key]


class _Flight:
    """One fetch in progress and what it fetches; everyone asking for the same thing waits on `done`."""

    def __init__(
        self,
        cache: _Cache,
        key: tuple,
        url: str,
        params: dict[str, Any],
        parse: Callable[[Any], Any],
        ttl: Callable[[Any], float],
        deadline: float,
    ) -> None:
        self.cache, self.key, self.base_url, self.params = cache, key, url, params
        self.parse, self.ttl, self.deadline = parse, ttl, deadline
        self.url = ""  # the full URL for the log, set by the caller that starts the fetch
        self.done = threading.Event()
        self.value: Any = None
        self.error: Optional[BaseException] = None
        self.wait_timeout_logged = False


# --- the client ---------------------------------------------------------------------------------
class WeatherClient:
    """Open-Meteo forecast and geocoding, for one Bot. Thread-safe; call close() at the end."""

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._forecast_url = settings.WEATHER_API_URL
        self._geocoding_url = settings.GEOCODING_API_URL
        self._timeout_s = settings.WEATHER_TIMEOUT_S
        self._cache_s = settings.WEATHER_CACHE_S
        self._unit_params = UNIT_PARAMS[settings.UNITS]
        self.units = UNIT_LABELS[settings.UNITS]
        self._clock = clock
        self._session = requests.Session()
        self._session.headers["User-Agent"] = USER_AGENT
        self._session.headers["Accept"] = "application/json"
        # Retries are ours (one, inside the budget); a pool as large as the handler pool
        # lets every worker keep its connection alive instead of reconnecting.
        adapter = HTTPAdapter(pool_connections=2, pool_maxsize=max(4, settings.HANDLER_THREADS), max_retries=0)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        self._lock = threading.Lock()
        self._weather = _Cache(max_age_s=STALE_MAX_S)
        self._places = _Cache(max_age_s=None)
        self._flights: dict[tuple, _Flight] = {}
        self._quota = RollingQuota(settings.WEATHER_MAX_CALLS_PER_DAY)
        self._quota_spent = False  # for one WARNING when it runs out and one INFO when it is back
        # Whatever the operator wrote in the URLs' query strings is a secret for the log.
        self._secret_names = url_secret_names(self._forecast_url) | url_secret_names(self._geocoding_url)
        self._failures = RepeatedWarning(log, "weather: {count} more requests failed in the last {seconds} s")

    @property
    def calls_last_day(self) -> int:
        """HTTP requests counted against WEATHER_MAX_CALLS_PER_DAY now."""
        with self._lock:
            return self._quota.used(self._clock())

    def close(self) -> None:
        """Close the session's connections. A fetch still running finishes on its own thread."""
        self._session.close()
        self._failures.flush()

    # --- public queries ---------------------------------------------------------------------------
    def geocode(self, name: str) -> Place:
        """The best match for a place name. Raises PlaceNotFound or another WeatherError."""
        normalized = " ".join(name.lower().split())
        params = {"name": name, "count": 1, "language": "en", "format": "json"}
        report = self._get(
            self._places, ("place", normalized), self._geocoding_url, params, _parse_place, self._place_ttl
        )
        if report.data is None:
            raise PlaceNotFound(name)
        return report.data

    def current(self, latitude: float, longitude: float) -> Report[Current]:
        """Conditions now at the place, with today's min/max and rain probability."""
        params = {
            "current": "temperature_2m,weather_code,wind_speed_10m,wind_direction_10m",
            "daily": "temperature_2m_min,temperature_2m_max,precipitation_probability_max",
            "forecast_days": 1,
        }
        return self._forecast("now", latitude, longitude, params, _parse_current)

    def rain(self, latitude: float, longitude: float) -> Report[HourlyRain]:
        """Precipitation for the next RAIN_HOURS hours."""
        params = {"hourly": "precipitation,precipitation_probability", "forecast_hours": RAIN_HOURS}
        return self._forecast("rain", latitude, longitude, params, _parse_rain)

    def days(self, latitude: float, longitude: float) -> Report[tuple[Day, ...]]:
        """Today and the next days, FORECAST_DAYS in all."""
        params = {
            "daily": "weather_code,temperature_2m_min,temperature_2m_max,precipitation_sum,precipitation_probability_max",
            "forecast_days": FORECAST_DAYS,
        }
        return self._forecast("3d", latitude, longitude, params, _parse_days)

    # --- the machinery -------------------------------------------------------------------------------
    def _forecast(
        self, kind: str, latitude: float, longitude: float, params: dict[str, Any], parse: Callable[[Any], T]
    ) -> Report[T]:
        lat, lon = round(latitude, COORD_DECIMALS), round(longitude, COORD_DECIMALS)
        # The rounded coordinates are what is asked, so the cache key is exactly the request.
        full = {"latitude": f"{lat:.{COORD_DECIMALS}f}", "longitude": f"{lon:.{COORD_DECIMALS}f}", **params}
        full.update(self._unit_params, timezone="auto")
        return self._get(self._weather, (kind, lat, lon), self._forecast_url, full, parse, lambda _value: self._cache_s)

    @staticmethod
    def _place_ttl(value: Optional[Place]) -> float:
        return PLACE_TTL_S if value is not None else PLACE_NOT_FOUND_TTL_S

    def _get(
        self,
        cache: _Cache,
        key: tuple,
        url: str,
        params: dict[str, Any],
        parse: Callable[[Any], T],
        ttl: Callable[[Any], float],
    ) -> Report[T]:
        """A fresh cached value, or the one shared fetch's result, or an old copy, or an error."""
        now = self._clock()
        # The cache check and the flight registration happen under one lock, and a flight
        # stores its result and leaves `_flights` under that lock too: a caller sees
        # either the result or the flight, never neither, so a value is fetched once.
        with self._lock:
            entry = cache.fresh(key, now)
            if entry is not None:
                return Report(entry.value, now - entry.stored_at)
            flight = self._flights.get(key)
            starting = flight is None
            if flight is None:
                if not self._take_call_locked(now):
                    old = cache.any(key, now)
                    if old is None:
                        raise ServiceBusy("WEATHER_MAX_CALLS_PER_DAY spent")
                    return Report(old.value, now - old.stored_at, stale=True)  # not fresh, or it was returned above
                flight = _Flight(cache, key, url, params, parse, ttl, now + self._timeout_s)
                self._flights[key] = flight
        if starting:
            flight.url = self._redact(_full_url(url, params))  # outside the lock: only misses pay for it
            self._start_flight(flight)
        try:
            value = self._wait(flight)
        except WeatherError:
            with self._lock:
                old = cache.any(key, self._clock())
            if old is None:
                raise
            return Report(old.value, self._clock() - old.stored_at, stale=True)
        return Report(value, 0.0)

    def _take_call_locked(self, now: float) -> bool:
        """Count one HTTP request against the quota, if it allows; log when it runs out or is back."""
        if self._quota.try_take(now):
            if self._quota_spent:
                self._quota_spent = False
                log.info("weather: requests possible again (WEATHER_MAX_CALLS_PER_DAY = %d)", self._quota.limit)
            return True
        if not self._quota_spent:
            self._quota_spent = True
            log.warning(
                "weather: WEATHER_MAX_CALLS_PER_DAY (%d requests in 24 h) spent; answering from the cache or"
                " 'service busy' until older requests leave the window", self._quota.limit,
            )
        return False

    def _redact(self, text: str) -> str:
        return redact_secrets(text, self._secret_names)

    def _start_flight(self, flight: _Flight) -> None:
        thread = threading.Thread(
            target=self._run_flight,
            args=(flight,),
            name=f"weather-{flight.key[0]}",
            daemon=True,  # never delays the daemon's exit, whatever it waits on
        )
        try:
            thread.start()
        except RuntimeError as exc:  # "can't start new thread": fail this flight, not the key forever
            with self._lock:
                self._flights.pop(flight.key, None)
            flight.error = exc
            flight.done.set()

    def _wait(self, flight: _Flight) -> Any:
        """The flight's value; bounded even if the fetch thread is stuck."""
        if not flight.done.wait(self._timeout_s + WAIT_GRACE_S):
            with self._lock:
                first = not flight.wait_timeout_logged
                flight.wait_timeout_logged = True
            if first:
                self._failures.log("weather: GET %s failed: no answer within %g s", flight.url, self._timeout_s)
            raise ServiceUnavailable(f"no answer within {self._timeout_s:g} s")
        error = flight.error
        if isinstance(error, WeatherError):
            raise error.again() from None
        if error is not None:
            # A bug: each waiter raises its own exception, chained to the original and
            # its traceback, so the router logs where it happened.
            raise RuntimeError(f"weather fetch of {flight.url} failed") from error
        return flight.value

    def _run_flight(self, flight: _Flight) -> None:
        """On the fetch thread: fetch, parse, store, wake the waiters; log a failure once."""
        cache, key = flight.cache, flight.key
        try:
            value = self._fetch(flight.base_url, flight.params, flight.parse, flight.deadline)
        except BaseException as exc:  # handed to the waiters, who raise it on their threads
            flight.error = exc
            with self._lock:
                self._flights.pop(key, None)
                old = cache.any(key, self._clock())
            if isinstance(exc, WeatherError):
                fallback = (
                    f"answering with a copy {format_age(self._clock() - old.stored_at)} old" if old is not None
                    else "no older copy to answer with"
                )
                self._failures.log("weather: GET %s failed: %s; %s", flight.url, self._redact(str(exc)), fallback)
        else:
            flight.value = value
            with self._lock:
                cache.put(key, value, self._clock(), flight.ttl(value))
                self._flights.pop(key, None)
        finally:
            flight.done.set()

    def _fetch(self, url: str, params: dict[str, Any], parse: Callable[[Any], T], deadline: float) -> T:
        """GET and parse, with one retry if the first try failed fast enough to leave time."""
        attempt = 1
        while True:
            try:
                document = self._get_json(url, params, deadline)
            except _Retryable as exc:
                left = deadline - self._clock()
                if attempt == 2 or left < self._timeout_s * _RETRY_MIN_SHARE:
                    suffix = " (after a retry)" if attempt == 2 else ""
                    raise ServiceUnavailable(f"{exc}{suffix}") from None
                with self._lock:
                    allowed = self._take_call_locked(self._clock())
                if not allowed:
                    raise ServiceUnavailable(f"{exc} (no retry: WEATHER_MAX_CALLS_PER_DAY spent)") from None
                log.debug(
                    "weather: GET %s: %s; retrying with %.1f s left",
                    self._redact(_full_url(url, params)), self._redact(str(exc)), left,
                )
                attempt += 1
                continue
            try:
                return parse(document)
            except (KeyError, IndexError, TypeError, ValueError) as exc:
                # The service's JSON is input like any other: a missing or mistyped
                # field is its fault, reported as such, not a crash of ours.
                raise BadAnswer(f"unexpected answer: {type(exc).__name__}: {exc}") from None

    def _get_json(self, url: str, params: dict[str, Any], deadline: float) -> Any:
        """One GET: the JSON document, or a WeatherError saying what went wrong."""
        left = deadline - self._clock()
        if left <= 0:
            raise ServiceUnavailable(f"no answer within {self._timeout_s:g} s")
        try:
            # `timeout` bounds the connect and each read; the deadline checks in
            # _read_body bound the whole body (a server can trickle bytes forever).
            response = self._session.get(url, params=params, timeout=(left, left), stream=True)
            try:
                body = _read_body(response, deadline, self._clock)
            finally:
                response.close()
        except requests.Timeout:
            raise ServiceUnavailable(f"no answer within {self._timeout_s:g} s") from None
        except requests.ConnectionError as exc:
            if exc.args and isinstance(exc.args[0], ReadTimeoutError):
                raise ServiceUnavailable(f"no answer within {self._timeout_s:g} s") from None
            raise _Retryable(f"unreachable: {_root_cause(exc)}") from None
        except requests.RequestException as exc:  # broken chunked encoding, bad gzip...
            raise _Retryable(f"broken answer: {_root_cause(exc)}") from None
        status = response.status_code
        if status >= 500:
            raise _Retryable(f"HTTP {status}")
        if status == 429:
            raise ServiceUnavailable("HTTP 429 (rate limited)")  # retrying would only make it worse
        if status != 200:
            raise BadAnswer(f"HTTP {status}{_reason(body)}")
        try:
            return json.loads(body)
        except ValueError:  # JSONDecodeError and UnicodeDecodeError both are
            raise BadAnswer(f"not JSON: {body[:40]!r}") from None


# --- HTTP helpers -------------------------------------------------------------------------------
def _read_body(response: requests.Response, deadline: float, clock: Callable[[], float]) -> bytes:
    chunks, size = [], 0
    for chunk in response.iter_content(16384):
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise BadAnswer(f"answer over {MAX_BODY_BYTES // 1024} KB")
        chunks.append(chunk)
        if clock() > deadline:
            raise requests.Timeout("deadline passed while reading the answer")
    return b"".join(chunks)


def _full_url(url: str, params: dict[str, Any]) -> str:
    """The URL as requests sends it, for the log (commas left readable, as servers take them)."""
    return (requests.Request("GET", url, params=params).prepare().url or url).replace("%2C", ",")


def _root_cause(exc: BaseException) -> str:
    """The innermost reason of a requests/urllib3 error: 'Connection refused', not 3 wrappers."""
    while exc.__context__ is not None or exc.__cause__ is not None:
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    text = str(exc)
    return text.split("] ", 1)[-1] if text.startswith("[Errno") else (text or type(exc).__name__)


def _reason(body: bytes) -> str:
    """Open-Meteo explains a 400 as {"error": true, "reason": "..."}."""
    try:
        reason = json.loads(body).get("reason")
    except (ValueError, AttributeError):
        return ""
    return f": {str(reason)[:120]}" if reason else ""


# --- parsing Open-Meteo's JSON -----------------------------------------------------------------------
# Open-Meteo answers {"current": {...}, "current_units": {...}, "hourly": {"time": [...],
# "<variable>": [...]}, "daily": {...}, ...}; values can be null where a model has none.
def _section(document: Any, name: str) -> dict[str, Any]:
    section = document[name]
    if not isinstance(section, dict):
        raise TypeError(f"{name!r} is not an object")
    return section


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} is {value!r}, not a number")
    return float(value)


def _optional_number(value: Any, what: str) -> Optional[float]:
    return None if value is None else _number(value, what)


def _series(section: dict[str, Any], name: str, length: int) -> list[Any]:
    values = section[name]
    if not isinstance(values, list) or len(values) < length:
        raise ValueError(f"{name!r} has fewer than {length} values")
    return values[:length]


def _local_time(value: Any) -> datetime.datetime:
    return datetime.datetime.fromisoformat(str(value))


def _parse_place(document: Any) -> Optional[Place]:
    """The first geocoding result; None when there is none (Open-Meteo omits "results")."""
    if not isinstance(document, dict):
        raise TypeError("the answer is not an object")
    results = document.get("results") or []
    if not results:
        return None
    first = results[0]
    name = first["name"]
    if not isinstance(name, str) or not name.strip():
        raise TypeError(f"'name' is {name!r}")
    lat, lon = _number(first["latitude"], "latitude"), _number(first["longitude"], "longitude")
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise ValueError(f"coordinates {lat},{lon} out of range")
    country = first.get("country_code")
    admin1 = first.get("admin1")
    return Place(
        name=name.strip(),
        latitude=lat,
        longitude=lon,
        country_code=country if isinstance(country, str) else "",
        admin1=admin1 if isinstance(admin1, str) else "",
    )


def _parse_current(document: Any) -> Current:
    current, daily = _section(document, "current"), _section(document, "daily")
    return Current(
        time=_local_time(current["time"]),
        weather_code=int(_number(current["weather_code"], "weather_code")),
        temperature=_number(current["temperature_2m"], "temperature_2m"),
        wind_speed=_number(current["wind_speed_10m"], "wind_speed_10m"),
        wind_direction=_optional_number(current.get("wind_direction_10m"), "wind_direction_10m"),
        today_min=_number(_series(daily, "temperature_2m_min", 1)[0], "temperature_2m_min"),
        today_max=_number(_series(daily, "temperature_2m_max", 1)[0], "temperature_2m_max"),
        rain_probability=_optional_number(
            (daily.get("precipitation_probability_max") or [None])[0], "precipitation_probability_max"
        ),
    )


def _parse_rain(document: Any) -> HourlyRain:
    hourly = _section(document, "hourly")
    times = hourly["time"]
    if not isinstance(times, list) or not times:
        raise ValueError("'hourly.time' is empty")
    count = min(len(times), RAIN_HOURS)
    probabilities = list(hourly.get("precipitation_probability") or [])[:count]
    probabilities += [None] * (count - len(probabilities))
    return HourlyRain(
        hours=tuple(_local_time(t) for t in times[:count]),
        # A missing hour (null) is shown as dry rather than refusing the whole answer.
        amounts=tuple(_optional_number(v, "precipitation") or 0.0 for v in _series(hourly, "precipitation", count)),
        probabilities=tuple(_optional_number(v, "precipitation_probability") for v in probabilities),
    )


def _parse_days(document: Any) -> tuple[Day, ...]:
    daily = _section(document, "daily")
    dates = _series(daily, "time", FORECAST_DAYS)
    codes = _series(daily, "weather_code", FORECAST_DAYS)
    lows = _series(daily, "temperature_2m_min", FORECAST_DAYS)
    highs = _series(daily, "temperature_2m_max", FORECAST_DAYS)
    sums = _series(daily, "precipitation_sum", FORECAST_DAYS)
    chances = daily.get("precipitation_probability_max") or [None] * FORECAST_DAYS
    return tuple(
        Day(
            date=datetime.date.fromisoformat(str(dates[i])),
            weather_code=int(_number(codes[i], "weather_code")),
            temperature_min=_number(lows[i], "temperature_2m_min"),
            temperature_max=_number(highs[i], "temperature_2m_max"),
            precipitation=_optional_number(sums[i], "precipitation_sum") or 0.0,
            rain_probability=_optional_number(chances[i] if i < len(chances) else None, "precipitation_probability_max"),
        )
        for i in range(FORECAST_DAYS)
    )
