"""A fake Open-Meteo on 127.0.0.1, for tests, benchmarks and `--demo`.

It answers the two endpoints meshbot uses, with Open-Meteo's JSON shape for exactly
the parameters of each request:

* `GET /v1/forecast?latitude=..&longitude=..&current=..&hourly=..&daily=..`, with
  `forecast_days`, `forecast_hours`, `timezone`, and the unit parameters
  (`temperature_unit`, `wind_speed_unit`, `precipitation_unit`): the values are
  converted here, as the real service does, so a client that converts by hand shows
  wrong numbers. Unknown variables or bad parameters get the real service's
  HTTP 400 `{"error": true, "reason": "..."}`.
* `GET /v1/search?name=..&count=..`: geocoding; `{"results": [...]}`, or no `results`
  key at all when nothing matches (as the real service answers).

The weather at a place is made up but deterministic (seeded by the coordinates rounded
to 0.01°), and a test can set it with `set_weather()`. Every request is recorded
(`requests`, `count()`), and fault switches (`set_faults()`) make the server answer with
an HTTP status, sleep before answering, drip the answer byte by byte (a read timeout
never fires), send a body that is not JSON, leave fields out, or know no place.

It is the standard library's `ThreadingHTTPServer` on a background thread, HTTP/1.1
with keep-alive like the real service, so a client's connection reuse is exercised.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import random
import socket
import threading
import time
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional
from urllib.parse import parse_qs, urlsplit

log = logging.getLogger(__name__)

FORECAST_PATH = "/v1/forecast"
SEARCH_PATH = "/v1/search"


@dataclass(frozen=True)
class SimPlace:
    """A place the fake geocoding service knows."""

    name: str
    latitude: float
    longitude: float
    country_code: str
    country: str
    admin1: str = ""
    population: int = 0
    timezone: str = "GMT"


DEFAULT_PLACES: tuple[SimPlace, ...] = (
    SimPlace("Lyon", 45.74846, 4.84671, "FR", "France", "Auvergne-Rhône-Alpes", 472317, "Europe/Paris"),
    SimPlace("Paris", 48.85341, 2.3488, "FR", "France", "Île-de-France", 2138551, "Europe/Paris"),
    SimPlace("Marseille", 43.29695, 5.38107, "FR", "France", "Provence-Alpes-Côte d'Azur", 870731, "Europe/Paris"),
    SimPlace("Nice", 43.70313, 7.26608, "FR", "France", "Provence-Alpes-Côte d'Azur", 342669, "Europe/Paris"),
    SimPlace("Berlin", 52.52437, 13.41053, "DE", "Germany", "Berlin", 3426354, "Europe/Berlin"),
    SimPlace("London", 51.50853, -0.12574, "GB", "United Kingdom", "England", 8961989, "Europe/London"),
    SimPlace("Portland", 45.52345, -122.67621, "US", "United States", "Oregon", 652503, "America/Los_Angeles"),
    SimPlace("Portland", 43.66147, -70.25533, "US", "United States", "Maine", 66881, "America/New_York"),
    SimPlace("Tokyo", 35.6895, 139.69171, "JP", "Japan", "Tokyo", 9733276, "Asia/Tokyo"),
    SimPlace("Sydney", -33.86785, 151.20732, "AU", "Australia", "New South Wales", 4627345, "Australia/Sydney"),
    SimPlace("Llanfairpwllgwyngyllgogerychwyrndrobwllllantysiliogogogoch", 53.2208, -4.2096, "GB", "United Kingdom", "Wales", 3107),
)


@dataclass(frozen=True)
class SimDay:
    """One day of the made-up forecast, in metric units."""

    weather_code: int
    min_c: float
    max_c: float
    precipitation_mm: float
    probability: int


@dataclass(frozen=True)
class SimWeather:
    """The made-up weather at a place, in metric units; the server converts on request."""

    temperature_c: float
    weather_code: int
    wind_kmh: float
    wind_direction: float
    hourly_mm: tuple[float, ...]  # from the current hour on (repeated if more are asked)
    hourly_probability: tuple[int, ...]
    days: tuple[SimDay, ...]  # from today on


@dataclass(frozen=True)
class Faults:
    """What goes wrong. `paths` limits the faults to those paths; `count` to the next N requests."""

    status: Optional[int] = None  # answer with this HTTP status (and an Open-Meteo error body)
    delay_s: float = 0.0  # sleep this long before answering
    drip_s: float = 0.0  # send the answer one byte every drip_s: each read succeeds, the answer never ends
    garbage: bool = False  # HTTP 200 with an HTML body
    place_unknown: bool = False  # geocoding finds nothing
    omit: tuple[str, ...] = ()  # top-level keys left out of a good answer ("current", "daily"...)
    paths: tuple[str, ...] = ()
    count: Optional[int] = None


@dataclass(frozen=True)
class SeenRequest:
    """One request as the server received it."""

    path: str
    query: dict[str, str]
    user_agent: str
    at: float  # time.monotonic()


class _BadRequest(Exception):
    """Answered as Open-Meteo does: HTTP 400 {"error": true, "reason": ...}."""


# Variables this fake knows, by section. Anything else is a 400, as on the real service.
_CURRENT = frozenset({"temperature_2m", "weather_code", "wind_speed_10m", "wind_direction_10m", "precipitation"})
_HOURLY = frozenset({"temperature_2m", "weather_code", "precipitation", "precipitation_probability"})
_DAILY = frozenset({"weather_code", "temperature_2m_min", "temperature_2m_max", "precipitation_sum", "precipitation_probability_max"})
_TEMPERATURE = {"celsius": "°C", "fahrenheit": "°F"}
_WIND = {"kmh": ("km/h", 1.0), "ms": ("m/s", 3.6), "mph": ("mp/h", 1.609344), "kn": ("kn", 1.852)}
_PRECIPITATION = {"mm": ("mm", 1.0), "inch": ("inch", 25.4)}
_RAINY_CODES = (51, 61, 63, 65, 80, 81, 95)
_DRY_CODES = (0, 1, 2, 3, 45)


class FakeOpenMeteo:
    """The fake service. Use start()/stop() or `with`; `forecast_url` and `geocoding_url` for settings."""

    def __init__(self, *, places: tuple[SimPlace, ...] = DEFAULT_PLACES, port: int = 0) -> None:
        self.host = "127.0.0.1"
        self.port = port
        self.places = list(places)
        self.requests: list[SeenRequest] = []
        self._faults = Faults()
        self._weather: dict[tuple[float, float], SimWeather] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: Optional[_Server] = None
        self._thread: Optional[threading.Thread] = None

    # --- lifecycle -----------------------------------------------------------------------------
    def __enter__(self) -> "FakeOpenMeteo":
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def start(self) -> "FakeOpenMeteo":
        self._stopping.clear()
        self._server = _Server((self.host, self.port), _Handler, self)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="sim-weather", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes handlers sleeping in a delay fault
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.close_connections()
            server.server_close()
        if self._thread is not None:
            self._thread.join(5)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def forecast_url(self) -> str:
        return self.url + FORECAST_PATH

    @property
    def geocoding_url(self) -> str:
        return self.url + SEARCH_PATH

    # --- switches and observations -------------------------------------------------------------
    def set_faults(self, **faults: Any) -> None:
        """Replace the faults: set_faults(status=500), set_faults(delay_s=2, paths=("/v1/forecast",))."""
        with self._lock:
            self._faults = Faults(**faults)

    def clear_faults(self) -> None:
        self.set_faults()

    def count(self, path: Optional[str] = None) -> int:
        """Requests received in all, or on one path."""
        with self._lock:
            return sum(1 for r in self.requests if path is None or r.path == path)

    def seen(self, path: Optional[str] = None) -> list[SeenRequest]:
        with self._lock:
            return [r for r in self.requests if path is None or r.path == path]

    def set_weather(self, latitude: float, longitude: float, weather: SimWeather) -> None:
        """Fix the weather of the 0.01° cell holding these coordinates."""
        with self._lock:
            self._weather[_cell(latitude, longitude)] = weather

    def weather_at(self, latitude: float, longitude: float) -> SimWeather:
        """The weather the server reports for these coordinates (set, or made up from them)."""
        key = _cell(latitude, longitude)
        with self._lock:
            weather = self._weather.get(key)
        return weather if weather is not None else made_up_weather(*key)

    def place(self, name: str) -> SimPlace:
        """The place the search for `name` answers first (for tests to compute expectations)."""
        found = self._search(name, 1)
        if not found:
            raise KeyError(name)
        return found[0]

    # --- serving (on the server's threads) --------------------------------------------------------
    def _take_faults(self, path: str) -> Faults:
        """The faults that apply to this request, counting it against `count`."""
        with self._lock:
            faults = self._faults
            if faults.paths and path not in faults.paths:
                return Faults()
            if faults.count is not None:
                if faults.count <= 0:
                    return Faults()
                self._faults = replace(faults, count=faults.count - 1)
            return faults

    def _record(self, path: str, query: dict[str, str], user_agent: str) -> None:
        with self._lock:
            self.requests.append(SeenRequest(path, query, user_agent, time.monotonic()))

    def _search(self, name: str, count: int) -> list[SimPlace]:
        wanted = " ".join(name.lower().split())
        if len(wanted) < 2:
            return []  # as documented: 0 or 1 character finds nothing
        exact = [p for p in self.places if p.name.lower() == wanted]
        # 3 characters and more match fuzzily on the real service; a prefix is enough here.
        fuzzy = [p for p in self.places if len(wanted) >= 3 and p.name.lower().startswith(wanted) and p not in exact]
        ranked = sorted(exact, key=lambda p: -p.population) + sorted(fuzzy, key=lambda p: -p.population)
        return ranked[:count]

    def answer(self, path: str, query: dict[str, str]) -> tuple[int, bytes, str]:
        """(status, body, content type) for a request, faults aside."""
        try:
            if path == FORECAST_PATH:
                document = self._forecast(query)
            elif path == SEARCH_PATH:
                document = self._geocode(query)
            else:
                return 404, _json({"error": True, "reason": "Not Found"}), "application/json"
        except _BadRequest as exc:
            return 400, _json({"error": True, "reason": str(exc)}), "application/json"
        return 200, _json(document), "application/json; charset=utf-8"

    def _geocode(self, query: dict[str, str]) -> dict[str, Any]:
        started = time.perf_counter()
        if "name" not in query:
            raise _BadRequest("Parameter 'name' is missing")
        count = _int_param(query, "count", 10, 1, 100)
        found = self._search(query["name"], count)
        document: dict[str, Any] = {}
        if found:
            document["results"] = [_place_json(i, p) for i, p in enumerate(found)]
        document["generationtime_ms"] = round((time.perf_counter() - started) * 1000, 3)
        return document

    def _forecast(self, query: dict[str, str]) -> dict[str, Any]:
        started = time.perf_counter()
        lat = _float_param(query, "latitude", -90, 90)
        lon = _float_param(query, "longitude", -180, 180)
        temperature_unit = _choice(query, "temperature_unit", "celsius", _TEMPERATURE)
        wind_unit = _choice(query, "wind_speed_unit", "kmh", _WIND)
        precipitation_unit = _choice(query, "precipitation_unit", "mm", _PRECIPITATION)
        current = _variables(query, "current", _CURRENT)
        hourly = _variables(query, "hourly", _HOURLY)
        daily = _variables(query, "daily", _DAILY)
        forecast_days = _int_param(query, "forecast_days", 7, 0, 16)
        forecast_hours = _int_param(query, "forecast_hours", 0, 0, 384) if "forecast_hours" in query else None
        weather = self.weather_at(lat, lon)
        convert = _Converter(temperature_unit, wind_unit, precipitation_unit)

        now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)  # "GMT", as timezone=GMT answers
        this_hour = now.replace(minute=0, second=0, microsecond=0)
        today = this_hour.replace(hour=0)
        document: dict[str, Any] = {
            "latitude": round(lat, 4),
            "longitude": round(lon, 4),
            "generationtime_ms": 0.0,
            "utc_offset_seconds": 0,
            "timezone": "GMT",
            "timezone_abbreviation": "GMT",
            "elevation": 170.0,
        }
        if current:
            quarter = now.replace(minute=now.minute - now.minute % 15, second=0, microsecond=0)
            values = {
                "temperature_2m": convert.temperature(weather.temperature_c),
                "weather_code": weather.weather_code,
                "wind_speed_10m": convert.wind(weather.wind_kmh),
                "wind_direction_10m": round(weather.wind_direction),
                "precipitation": convert.precipitation(weather.hourly_mm[0]),
            }
            document["current_units"] = {"time": "iso8601", "interval": "seconds", **{v: convert.unit(v) for v in current}}
            document["current"] = {"time": _iso(quarter), "interval": 900, **{v: values[v] for v in current}}
        if hourly:
            # forecast_hours counts from the current hour; otherwise whole days from 00:00.
            if forecast_hours is not None:
                offsets = range(forecast_hours)
                start = this_hour
            else:
                start = today
                offsets = range(-now.hour, forecast_days * 24 - now.hour)
            hours = [start + datetime.timedelta(hours=i - offsets[0]) for i in offsets] if offsets else []
            series: dict[str, list[Any]] = {"time": [_iso(h) for h in hours]}
            for name in hourly:
                series[name] = [self._hourly_value(weather, name, i, convert) for i in offsets]
            document["hourly_units"] = {"time": "iso8601", **{v: convert.unit(v) for v in hourly}}
            document["hourly"] = series
        if daily:
            days = [weather.days[i % len(weather.days)] for i in range(forecast_days)]
            values_by_name = {
                "weather_code": [d.weather_code for d in days],
                "temperature_2m_min": [convert.temperature(d.min_c) for d in days],
                "temperature_2m_max": [convert.temperature(d.max_c) for d in days],
                "precipitation_sum": [convert.precipitation(d.precipitation_mm) for d in days],
                "precipitation_probability_max": [d.probability for d in days],
            }
            document["daily_units"] = {"time": "iso8601", **{v: convert.unit(v) for v in daily}}
            document["daily"] = {
                "time": [(today + datetime.timedelta(days=i)).date().isoformat() for i in range(forecast_days)],
                **{v: values_by_name[v] for v in daily},
            }
        document["generationtime_ms"] = round((time.perf_counter() - started) * 1000, 3)
        return document

    @staticmethod
    def _hourly_value(weather: SimWeather, name: str, offset: int, convert: "_Converter") -> Any:
        """Hour `offset` from now (negative: earlier today); the made-up series repeats."""
        mm = weather.hourly_mm[offset % len(weather.hourly_mm)]
        if name == "precipitation":
            return convert.precipitation(mm)
        if name == "precipitation_probability":
            return weather.hourly_probability[offset % len(weather.hourly_probability)]
        if name == "weather_code":
            return weather.weather_code if mm == 0 else 61
        return convert.temperature(weather.temperature_c + 3 * math.sin(offset / 24 * 2 * math.pi))


def made_up_weather(latitude: float, longitude: float) -> SimWeather:
    """Plausible, deterministic weather for a 0.01° cell: colder towards the poles, rain now and then."""
    rnd = random.Random(f"{latitude:.2f},{longitude:.2f}")
    base = 27 - 0.45 * abs(latitude) + rnd.uniform(-4, 4)
    code = rnd.choice(_DRY_CODES + _RAINY_CODES)
    rainy = code in _RAINY_CODES
    hourly = tuple(
        round(max(0.0, rnd.uniform(-1.0, 3.0)), 1) if rainy and 2 <= i <= 8 else 0.0 for i in range(24)
    )
    chances = tuple((rnd.randint(50, 95) if mm else rnd.randint(0, 25)) for mm in hourly)
    days = []
    for day in range(7):
        day_code = code if day == 0 else rnd.choice(_DRY_CODES + _RAINY_CODES)
        wet = day_code in _RAINY_CODES
        low = round(base - rnd.uniform(3, 8), 1)
        days.append(
            SimDay(
                weather_code=day_code,
                min_c=low,
                max_c=round(low + rnd.uniform(4, 12), 1),
                precipitation_mm=round(rnd.uniform(0.5, 20), 1) if wet else 0.0,
                probability=rnd.randint(55, 100) if wet else rnd.randint(0, 30),
            )
        )
    return SimWeather(
        temperature_c=round(base, 1),
        weather_code=code,
        wind_kmh=round(rnd.uniform(0, 40), 1),
        wind_direction=float(rnd.randrange(0, 360)),
        hourly_mm=hourly,
        hourly_probability=chances,
        days=tuple(days),
    )


# --- conversions and parameters, as the real service does them ----------------------------------------
@dataclass(frozen=True)
class _Converter:
    temperature_unit: str
    wind_unit: str
    precipitation_unit: str

    def temperature(self, celsius: float) -> float:
        return round(celsius * 9 / 5 + 32 if self.temperature_unit == "fahrenheit" else celsius, 1)

    def wind(self, kmh: float) -> float:
        return round(kmh / _WIND[self.wind_unit][1], 1)

    def precipitation(self, mm: float) -> float:
        return round(mm, 2) if self.precipitation_unit == "mm" else round(mm / 25.4, 3)

    def unit(self, variable: str) -> str:
        if variable.startswith("temperature"):
            return _TEMPERATURE[self.temperature_unit]
        if variable.startswith("wind_speed"):
            return _WIND[self.wind_unit][0]
        if variable.startswith("wind_direction"):
            return "°"
        if variable.startswith("precipitation_probability"):
            return "%"
        if variable.startswith("precipitation"):
            return _PRECIPITATION[self.precipitation_unit][0]
        return "wmo code"


def _cell(latitude: float, longitude: float) -> tuple[float, float]:
    return round(latitude, 2), round(longitude, 2)


def _iso(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M")


def _json(document: Any) -> bytes:
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _place_json(index: int, place: SimPlace) -> dict[str, Any]:
    result: dict[str, Any] = {
        "id": 2990000 + index,
        "name": place.name,
        "latitude": place.latitude,
        "longitude": place.longitude,
        "elevation": 170.0,
        "feature_code": "PPLA",
        "country_code": place.country_code,
        "timezone": place.timezone,
        "population": place.population,
        "country": place.country,
    }
    if place.admin1:  # absent, not empty, when a place has none
        result["admin1"] = place.admin1
    return result


def _float_param(query: dict[str, str], name: str, low: float, high: float) -> float:
    if name not in query:
        raise _BadRequest(f"Parameter '{name}' is missing")
    try:
        value = float(query[name])
    except ValueError:
        raise _BadRequest(f"Parameter '{name}' is not a number: {query[name]}") from None
    if not low <= value <= high:
        raise _BadRequest(f"{name.capitalize()} must be in range of {low:g} to {high:g}. Given: {value:g}.")
    return value


def _int_param(query: dict[str, str], name: str, default: int, low: int, high: int) -> int:
    if name not in query:
        return default
    try:
        value = int(query[name])
    except ValueError:
        raise _BadRequest(f"Parameter '{name}' is not an integer: {query[name]}") from None
    if not low <= value <= high:
        raise _BadRequest(f"Parameter '{name}' must be between {low} and {high}")
    return value


def _choice(query: dict[str, str], name: str, default: str, choices: dict[str, Any]) -> str:
    value = query.get(name, default)
    if value not in choices:
        raise _BadRequest(f"Cannot initialize {name} from invalid String value {value}.")
    return value


def _variables(query: dict[str, str], section: str, known: frozenset[str]) -> list[str]:
    names = [v for v in query.get(section, "").split(",") if v]
    for name in names:
        if name not in known:
            raise _BadRequest(f"Cannot initialize {section.capitalize()}Variable from invalid String value {name}.")
    return names


# --- HTTP plumbing ------------------------------------------------------------------------------------
class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a handler sleeping in a delay fault must not hold up stop()

    def __init__(self, address: tuple[str, int], handler: type, fake: FakeOpenMeteo) -> None:
        self.fake = fake
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, handler)

    def close_connections(self) -> None:
        """Close kept-alive connections, as a stopping server does."""
        with self.connections_lock:
            connections, self.connections = self.connections, set()
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the real service
    server: _Server
    timeout = 30  # an idle kept-alive connection is closed after this

    def setup(self) -> None:
        super().setup()
        with self.server.connections_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.connections_lock:
            self.server.connections.discard(self.connection)
        super().finish()

    def do_GET(self) -> None:  # noqa: N802 (the standard library's name)
        fake = self.server.fake
        parts = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        fake._record(parts.path, query, self.headers.get("User-Agent", ""))
        faults = fake._take_faults(parts.path)
        if faults.delay_s and fake._stopping.wait(faults.delay_s):
            self.close_connection = True
            return
        if faults.status is not None:
            body = _json({"error": True, "reason": f"simulated HTTP {faults.status}"})
            self._send(faults.status, body, "application/json")
        elif faults.garbage:
            self._send(200, b"<html><body><h1>502 Bad Gateway</h1>upstream timed out</body></html>", "text/html")
        elif faults.place_unknown and parts.path == SEARCH_PATH:
            self._send(200, _json({"generationtime_ms": 0.1}), "application/json; charset=utf-8")
        else:
            status, body, content_type = fake.answer(parts.path, query)
            if faults.omit and status == 200:
                document = json.loads(body)
                body = _json({k: v for k, v in document.items() if k not in faults.omit})
            if faults.drip_s:
                self._drip(status, body, content_type, faults.drip_s)
            else:
                self._send(status, body, content_type)

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            self.close_connection = True  # the client gave up (its timeout): nothing to do

    def _drip(self, status: int, body: bytes, content_type: str, interval_s: float) -> None:
        head = (
            f"HTTP/1.1 {status} OK\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode("latin-1")
        self.close_connection = True
        for byte in head + body:
            if self.server.fake._stopping.wait(interval_s):
                return
            try:
                self.wfile.write(bytes((byte,)))
                self.wfile.flush()
            except OSError:
                return

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the standard library's name)
        log.debug("%s %s", self.address_string(), format % args)
