"""/weather (and /forecast): Open-Meteo weather in one LoRa text; three days in at most two.

    /weather [place]        now: `Lyon, FR: ☀️ clear 12°C, wind 9 km/h SW, today 6..14°C, rain 10%`
    /weather rain [place]   next 12 h: `Lyon, FR rain from 14:00: ▁▂▅█▃▁______ 4.2 mm, chance 80%`
    /weather 3d [place]     three days, one line each (/forecast [place] is the same)

A place is `lat,lon`, a node's short name (its last known position, when the node DB has
one), or a name for the geocoding service; none means DEFAULT_LOCATION. Every byte is
airtime, so the texts are terse, and shortened further rather than split when a small
MAX_TEXT_BYTES or a long place name would need another text. The network work, its
bounds, the caches and the errors are `meshbot/weather.py`'s business.
"""

from __future__ import annotations

import decimal
import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from meshbot.config import looks_like_lat_lon, parse_lat_lon
from meshbot.router import CommandContext, clean_args, command
from meshbot.text import ELLIPSIS, format_age, split_text, utf8_len
from meshbot.weather import (
    BadAnswer,
    Current,
    Day,
    HourlyRain,
    Place,
    PlaceNotFound,
    Report,
    ServiceBusy,
    ServiceUnavailable,
    Units,
    WeatherClient,
)

USAGE = "usage: /weather [rain|3d] [place]: a town, lat,lon or a node's short name"
MAX_PLACE_CHARS = 64  # longer is not a place name; it would only cost a geocoding request
MAX_LABEL_CHARS = 24
MAX_ADMIN1_CHARS = 12  # "Oregon" says more than "US"; "Auvergne-Rhône-Alpes" costs too much
KIND_WORDS = {"now": "now", "rain": "rain", "3d": "3d", "3": "3d", "3days": "3d"}

# WMO weather interpretation codes (as Open-Meteo documents them): one emoji, a short word.
# Emoji with U+FE0F are shown as emoji, not as a black-and-white symbol.
WMO: dict[int, tuple[str, str]] = {
    0: ("☀️", "clear"),
    1: ("🌤️", "fair"),
    2: ("⛅", "partly cloudy"),
    3: ("☁️", "overcast"),
    45: ("🌫️", "fog"),
    48: ("🌫️", "rime fog"),
    51: ("🌦️", "light drizzle"),
    53: ("🌦️", "drizzle"),
    55: ("🌦️", "dense drizzle"),
    56: ("🧊", "freezing drizzle"),
    57: ("🧊", "freezing drizzle"),
    61: ("🌧️", "light rain"),
    63: ("🌧️", "rain"),
    65: ("🌧️", "heavy rain"),
    66: ("🧊", "freezing rain"),
    67: ("🧊", "freezing rain"),
    71: ("🌨️", "light snow"),
    73: ("🌨️", "snow"),
    75: ("❄️", "heavy snow"),
    77: ("🌨️", "snow grains"),
    80: ("🌦️", "light showers"),
    81: ("🌧️", "showers"),
    82: ("⛈️", "violent showers"),
    85: ("🌨️", "snow showers"),
    86: ("🌨️", "heavy snow showers"),
    95: ("⛈️", "thunderstorm"),
    96: ("⛈️", "storm, hail"),
    99: ("⛈️", "storm, heavy hail"),
}
COMPASS = ("N", "NE", "E", "SE", "S", "SW", "W", "NW")
WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")  # not strftime: the host's locale must not matter
BARS = "▁▂▃▄▅▆▇█"
DRY = "_"
# Rain bar levels by amount per hour, in mm: an absolute scale, so that a drizzle never
# looks like a downpour (a scale relative to the wettest hour would).
BAR_STEPS_MM = (0.0, 0.3, 0.6, 1.0, 2.0, 4.0, 7.0, 10.0)
MM_PER_INCH = 25.4


class _Refusal(Exception):
    """The request cannot be answered as asked; the arguments are the reply's variants."""


@dataclass(frozen=True)
class Target:
    """Where to ask about, and how to call it in the reply."""

    label: str
    latitude: float
    longitude: float


@command(
    "weather",
    aliases=("forecast",),
    help="/weather [rain|3d] [place]: now, rain next 12h, or 3 days (/forecast); place: town, lat,lon or node",
)
def weather(ctx: CommandContext) -> Optional[str]:
    settings = ctx.services.settings
    client = ctx.services.weather
    if client is None:
        return "weather: not available on this bot"
    kind, place_text = parse_request(ctx.name_used, ctx.args)
    place_text = place_text or settings.DEFAULT_LOCATION
    if not place_text:
        return fit([USAGE, "usage: /weather [rain|3d] [place]"], settings.MAX_TEXT_BYTES)
    allowed = min(2, settings.MAX_CHUNKS) if kind == "3d" else 1
    return fit(answer(ctx, client, kind, place_text), settings.MAX_TEXT_BYTES, allowed)


def answer(ctx: CommandContext, client: WeatherClient, kind: str, place_text: str) -> list[str]:
    """The reply's variants, most detailed first: the weather, or why there is none."""
    try:
        target = resolve_place(ctx, client, place_text)
        if kind == "rain":
            return format_rain(target.label, client.rain(target.latitude, target.longitude), client.units)
        if kind == "3d":
            return format_days(target.label, client.days(target.latitude, target.longitude), client.units)
        return format_now(target.label, client.current(target.latitude, target.longitude), client.units)
    except _Refusal as refusal:
        return list(refusal.args)
    # Expected network outcomes: one short text; meshbot.weather has logged the cause once.
    except ServiceBusy:  # WEATHER_MAX_CALLS_PER_DAY spent and nothing cached for this place
        return ["weather: service busy, try again later", "weather: busy"]
    except ServiceUnavailable:
        return ["weather: service unavailable, try again later", "weather: unavailable"]
    except BadAnswer:
        return ["weather: bad answer from the weather service", "weather: bad answer"]


def parse_request(name_used: str, args: str) -> tuple[str, str]:
    """(kind, place text) from `/weather rain Lyon`, `/forecast Lyon`, `/weather 45.76,4.84`..."""
    kind = "3d" if name_used == "forecast" else "now"
    first, _, rest = args.partition(" ")
    if first.lower() in KIND_WORDS:
        return KIND_WORDS[first.lower()], rest.strip()
    return kind, args.strip()


def resolve_place(ctx: CommandContext, client: WeatherClient, text: str) -> Target:
    """lat,lon first (no request), then a node's short name, then the geocoding service."""
    text = text[:MAX_PLACE_CHARS]
    try:
        coords = parse_lat_lon(text)
    except ValueError:
        raise _Refusal(
            f"weather: {quoted(text)} is out of range (lat -90..90, lon -180..180)", f"weather: {quoted(text)} out of range"
        ) from None
    if coords is not None:
        lat, lon = round(coords[0], 2) + 0.0, round(coords[1], 2) + 0.0  # + 0.0: no "-0" in the label
        return Target(f"{lat:g},{lon:g}", lat, lon)
    if looks_like_lat_lon(text):
        raise _Refusal(f"weather: {quoted(text)}: use lat,lon like 45.76,4.84", f"weather: bad lat,lon {quoted(text)}")
    node, positionless = find_node(ctx.services.sender.get_interface(), text)
    if node is not None:
        return node
    try:
        return place_target(client.geocode(text))
    except PlaceNotFound:
        found_not = f"weather: {quoted(text)} not found"
        if positionless:
            raise _Refusal(f"{found_not} (node {positionless} has no position)", found_not) from None
        raise _Refusal(found_not) from None


def find_node(iface: Any, text: str) -> tuple[Optional[Target], str]:
    """The node with this short name and a position (exact case first), newest first.

    Returns (target, "") or (None, short name of a match that has no position, or "").
    Reads the node DB once and keeps nothing of the interface.
    """
    nodes = list((getattr(iface, "nodesByNum", None) or {}).values()) if iface is not None else []
    named = [(n, str((n.get("user") or {}).get("shortName") or "")) for n in nodes]
    matches = [(n, s) for n, s in named if s == text] or [(n, s) for n, s in named if s and s.lower() == text.lower()]
    matches.sort(key=lambda pair: pair[0].get("lastHeard") or 0, reverse=True)
    for node, short in matches:
        position = node.get("position") or {}
        lat, lon = position.get("latitude"), position.get("longitude")
        if isinstance(lat, (int, float)) and isinstance(lon, (int, float)) and (lat, lon) != (0, 0):
            if -90 <= lat <= 90 and -180 <= lon <= 180:
                return Target(clean_args(short, 8), float(lat), float(lon)), ""
    return None, clean_args(matches[0][1], 8) if matches else ""


def place_target(place: Place) -> Target:
    """Name, then a short region (state) or the country code: `Portland, Oregon`, `Lyon, FR`."""
    name = shorten(clean_args(place.name), MAX_LABEL_CHARS)
    admin1 = clean_args(place.admin1)
    if admin1 and len(admin1) <= MAX_ADMIN1_CHARS and name.lower() not in admin1.lower():
        label = f"{name}, {admin1}"
    elif place.country_code:
        label = f"{name}, {clean_args(place.country_code, 3).upper()}"
    else:
        label = name
    return Target(label, place.latitude, place.longitude)


# --- formatting -------------------------------------------------------------------------------------
def format_now(label: str, report: Report[Current], units: Units) -> list[str]:
    """Variants of the answer, most detailed first (fit() takes the first that fits)."""
    now = report.data
    emoji, word = describe(now.weather_code)
    head = heading(label, report)
    temperature = f"{whole(now.temperature)}{units.temperature}"
    wind = wind_text(now.wind_speed, now.wind_direction, units)
    today = f"{whole(now.today_min)}..{whole(now.today_max)}{units.temperature}"
    rain = f"{whole(now.rain_probability)}%" if now.rain_probability is not None else ""
    return [
        f"{head}: {emoji} {word} {temperature}, {wind}, today {today}" + (f", rain {rain}" if rain else ""),
        f"{head}: {emoji} {temperature}, {wind}, today {today}" + (f", rain {rain}" if rain else ""),
        f"{head}: {emoji} {temperature} {wind.removeprefix('wind ')} {today} {rain}".rstrip(),
    ]


def format_rain(label: str, report: Report[HourlyRain], units: Units) -> list[str]:
    rain = report.data
    head = heading(label, report)
    chances = [p for p in rain.probabilities if p is not None]
    chance = f"chance {whole(max(chances))}%" if chances else ""
    hours = len(rain.amounts)
    total = sum(rain.amounts)
    if total <= 0:
        text = f"{head}: no rain next {hours}h" + (f", {chance}" if chance else "")
        return [text, text.replace("chance ", "")]
    bars = "".join(bar(amount, units) for amount in rain.amounts)
    amount = f"{precipitation(total, units)} {units.precipitation}"
    start = f"{rain.hours[0]:%H:%M}"
    return [
        f"{head} rain from {start}: {bars} {amount}" + (f", {chance}" if chance else ""),
        f"{head} {start}: {bars} {amount} {chance.removeprefix('chance ')}".rstrip(),
    ]


def format_days(label: str, report: Report[tuple[Day, ...]], units: Units) -> list[str]:
    head = f"{heading(label, report)} {len(report.data)}d:"

    def line(day: Day, *, word: bool, chance: bool) -> str:
        emoji, name = describe(day.weather_code)
        parts = [WEEKDAYS[day.date.weekday()], emoji] + ([name] if word else [])
        parts.append(f"{whole(day.temperature_min)}..{whole(day.temperature_max)}{units.temperature}")
        parts.append(f"{precipitation(day.precipitation, units)}{units.precipitation}")
        if chance and day.rain_probability is not None:
            parts.append(f"{whole(day.rain_probability)}%")
        return " ".join(parts)

    return [
        "\n".join([head] + [line(d, word=word, chance=chance) for d in report.data])
        for word, chance in ((True, True), (False, True), (False, False))
    ]


def heading(label: str, report: Report[Any]) -> str:
    """The place, and the age of an old copy served because the service failed.

    The age goes right after the place, so that shortening a text never drops it.
    """
    return f"{label} ({format_age(report.age_s)} old)" if report.stale else label


def describe(code: int) -> tuple[str, str]:
    return WMO.get(code, ("🌡️", f"WMO {code}"))


def wind_text(speed: float, direction: Optional[float], units: Units) -> str:
    if whole(speed) == 0:
        return "wind calm"
    where = f" {compass(direction)}" if direction is not None else ""
    return f"wind {whole(speed)} {units.wind}{where}"


def compass(degrees: float) -> str:
    """Where the wind comes from, on 8 points: 225° -> SW."""
    return COMPASS[int((degrees % 360) / 45 + 0.5) % 8]


def whole(value: float) -> int:
    """Rounded half up, as people read thermometers (Python's round() goes to even)."""
    return int(math.floor(value + 0.5))


def precipitation(amount: float, units: Units) -> str:
    """4.2 or 12 (mm), 0.17 (in); 0 for none. No trailing zeros: `8`, not `8.0`."""
    if amount <= 0:
        return "0"
    if units.precipitation == "mm":
        places = 1 if amount < 10 else 0
    else:
        places = 2 if amount < 10 else 1
    text = str(half_up(amount, places))
    return text.rstrip("0").rstrip(".") if "." in text else text


def half_up(value: float, places: int) -> decimal.Decimal:
    """Round half up at `places` decimals, on the value as written (0.625 -> 0.63, not 0.62).

    A sum of amounts carries float noise (0.6249999...), so it is first rounded to 6 places.
    """
    exact = decimal.Decimal(repr(round(value, 6)))
    return exact.quantize(decimal.Decimal(1).scaleb(-places), rounding=decimal.ROUND_HALF_UP)


def bar(amount: float, units: Units) -> str:
    """One hour as one character: `_` dry, then ▁..█ on an absolute scale."""
    if amount <= 0:
        return DRY
    mm = amount if units.precipitation == "mm" else amount * MM_PER_INCH
    level = sum(1 for step in BAR_STEPS_MM if mm > step) - 1
    return BARS[max(0, level)]


def quoted(text: str) -> str:
    return f'"{shorten(text, MAX_LABEL_CHARS)}"'


def shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + ELLIPSIS


def texts_needed(text: str, budget: int) -> int:
    return 1 if utf8_len(text) <= budget else len(split_text(text, budget, 99))


def fit(variants: Sequence[str], budget: int, allowed: int = 1) -> str:
    """The first variant that goes out in `allowed` texts; else the last one, shortened.

    Texts are cut by the sender; this only chooses what to say so that it is not cut.
    """
    for text in variants:
        if texts_needed(text, budget) <= allowed:
            return text
    text = variants[-1]
    while " " in text and texts_needed(text + ELLIPSIS, budget) > allowed:
        text = text.rsplit(" ", 1)[0].rstrip()
    if texts_needed(text + ELLIPSIS, budget) <= allowed:
        return text + ELLIPSIS
    return split_text(text, budget, 1)[0]
