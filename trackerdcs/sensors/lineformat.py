"""The line a sensor prints, one reading per line (an Arduino or ESP on USB serial or TCP).

    T=21.53 RH=45.2

- one reading per line, ended by LF (CR LF accepted); at most `MAX_LINE` characters;
- fields `KEY=VALUE` or `KEY:VALUE`, separated by spaces, tabs, commas or semicolons;
- keys, case-insensitive: `T`, `TEMP` or `TEMPERATURE` (°C); `RH`, `H`, `HUM` or `HUMIDITY` (%);
  other keys (`ID=3`, `P=1013.2`) are ignored;
- values are plain decimal numbers in ASCII (`-8.5`, `45`): no units, no `nan`, no digits of
  other scripts;
- plausible ranges: temperature -80..150 °C; humidity 0..100 %, and within `tolerance` % RH
  outside it (default `HUMIDITY_TOLERANCE`): clamped to 0 or 100 and flagged `clamped`;
- empty lines and lines starting with `#` (banners, comments) are not readings and are skipped.

A room sensor's line must carry T and RH, a module sensor's line T. Anything else is an error
(`LineError`) whose message says why; it is never turned into numbers.

Humidity at its edges: a box flushed with dry nitrogen reads exactly 0 %, a valid reading. Sensors
that do not clip read slightly outside 0..100: the SHT4x converts with RH = -6 + 125 * S / 65535,
which spans -6..119 % RH, and its datasheet tells the host to crop the result to 0..100 % (its
accuracy is about ±1..2 % RH); condensing air reads just above 100. Such a reading within
`tolerance` of the range is clamped and flagged; farther out the sensor is broken (an error).

The Arduino side is one line of code:
`Serial.print("T="); Serial.print(t, 2); Serial.print(" RH="); Serial.println(h, 1);`
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from trackerdcs.guard import clip, shorten

MAX_LINE: Final = 256
TEMPERATURE_RANGE: Final = (-80.0, 150.0)
HUMIDITY_TOLERANCE: Final = 5.0  # % RH: a few times an SHT4x's accuracy, well inside its -6..119
_KEYS: Final = {
    "t": "temperature", "temp": "temperature", "temperature": "temperature",
    "rh": "humidity", "h": "humidity", "hum": "humidity", "humidity": "humidity",
}  # fmt: skip
_FIELD_SEP: Final = re.compile(r"[\s,;]+")
_NUMBER: Final = re.compile(r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)$", re.ASCII)  # not `٣`, `²`


class LineError(ValueError):
    """A line that is not a valid reading."""


@dataclass(frozen=True)
class Reading:
    temperature: float  # °C
    humidity: float | None  # % RH, within 0..100; None when the line has none
    clamped: bool = False  # the sensor read outside 0..100 (within tolerance): clamped


def is_reading(line: str) -> bool:
    """False for what is not meant as a reading: an empty line or a `#` comment."""
    text = line.strip()
    return bool(text) and not text.startswith("#")


def parse_line(line: str, *, humidity: bool, tolerance: float = HUMIDITY_TOLERANCE) -> Reading:
    """The reading on `line`; `humidity=True` requires RH, clamped to 0..100 within `tolerance`
    % RH. Raises `LineError`."""
    text = line.strip()
    if len(text) > MAX_LINE:
        raise LineError(f"line longer than {MAX_LINE} characters")
    values: dict[str, float] = {}
    for field in _FIELD_SEP.split(text):
        key, sep, raw = field.partition("=")
        if not sep:
            key, sep, raw = field.partition(":")
        name = _KEYS.get(key.strip().lower()) if sep else None
        if name is None:
            continue
        if name in values:
            raise LineError(f"{shorten(key, 20)} given twice")
        if not _NUMBER.match(raw):
            raise LineError(f"{shorten(key, 20)}: not a number: {clip(raw, 40)}")
        values[name] = float(raw)
    if "temperature" not in values:
        raise LineError("no temperature (T=...)")
    low, high = TEMPERATURE_RANGE
    if not low <= values["temperature"] <= high:
        raise LineError(f"temperature {values['temperature']:g} °C outside {low:g}..{high:g}")
    rh = values.get("humidity")
    if not humidity:
        return Reading(values["temperature"], None)
    if rh is None:
        raise LineError("no humidity (RH=...)")
    if not -tolerance <= rh <= 100.0 + tolerance:
        raise LineError(
            f"humidity {rh:g} % outside 0..100 (and beyond the tolerance of {tolerance:g} % RH)"
        )
    clamped = min(100.0, max(0.0, rh))
    return Reading(values["temperature"], clamped, clamped != rh)


def format_line(temperature: float, humidity: float | None = None) -> str:
    """A reading as a sensor prints it (without the line end)."""
    text = f"T={temperature:.2f}"
    return text if humidity is None else f"{text} RH={humidity:.1f}"
