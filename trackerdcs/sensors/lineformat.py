"""The line a sensor prints, one reading per line (an Arduino or ESP on USB serial or TCP).

    T=21.53 RH=45.2

- one reading per line, ended by LF (CR LF accepted); at most `MAX_LINE` characters;
- fields `KEY=VALUE` or `KEY:VALUE`, separated by spaces, tabs, commas or semicolons;
- keys, case-insensitive: `T`, `TEMP` or `TEMPERATURE` (°C); `RH`, `H`, `HUM` or `HUMIDITY` (%);
  other keys (`ID=3`, `P=1013.2`) are ignored;
- values are plain decimal numbers (`-8.5`, `45`): no units, no `nan`;
- plausible ranges: temperature -80..150 °C, humidity above 0 and at most 100 %;
- empty lines and lines starting with `#` (banners, comments) are not readings and are skipped.

A room sensor's line must carry T and RH, a module sensor's line T. Anything else is an error
(`LineError`) whose message says why; it is never turned into numbers.

The Arduino side is one line of code:
`Serial.print("T="); Serial.print(t, 2); Serial.print(" RH="); Serial.println(h, 1);`
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

MAX_LINE: Final = 256
TEMPERATURE_RANGE: Final = (-80.0, 150.0)
_KEYS: Final = {
    "t": "temperature", "temp": "temperature", "temperature": "temperature",
    "rh": "humidity", "h": "humidity", "hum": "humidity", "humidity": "humidity",
}  # fmt: skip
_FIELD_SEP: Final = re.compile(r"[\s,;]+")
_NUMBER: Final = re.compile(r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)$")


class LineError(ValueError):
    """A line that is not a valid reading."""


@dataclass(frozen=True)
class Reading:
    temperature: float  # °C
    humidity: float | None  # % RH; None when the line has none


def is_reading(line: str) -> bool:
    """False for what is not meant as a reading: an empty line or a `#` comment."""
    text = line.strip()
    return bool(text) and not text.startswith("#")


def parse_line(line: str, *, humidity: bool) -> Reading:
    """The reading on `line`; `humidity=True` requires RH. Raises `LineError`."""
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
            raise LineError(f"{key} given twice")
        if not _NUMBER.match(raw):
            raise LineError(f"{key}: not a number: {raw!r}")
        values[name] = float(raw)
    if "temperature" not in values:
        raise LineError("no temperature (T=...)")
    low, high = TEMPERATURE_RANGE
    if not low <= values["temperature"] <= high:
        raise LineError(f"temperature {values['temperature']:g} °C outside {low:g}..{high:g}")
    rh = values.get("humidity")
    if humidity and rh is None:
        raise LineError("no humidity (RH=...)")
    if rh is not None and not 0.0 < rh <= 100.0:
        raise LineError(f"humidity {rh:g} % outside (0, 100]")
    return Reading(values["temperature"], rh if humidity else None)


def format_line(temperature: float, humidity: float | None = None) -> str:
    """A reading as a sensor prints it (without the line end)."""
    text = f"T={temperature:.2f}"
    return text if humidity is None else f"{text} RH={humidity:.1f}"
