"""One sensor's state: its latest good reading, why the latest line (or the line) failed, and
whether the reading is stale. Pure logic on explicit timestamps: no I/O, no clock of its own.

Rules (docs/topics.md, "Sensors"):
- a good line replaces the reading and clears the error;
- a bad line or a failing source sets `error`; the last good reading stays valid until it is
  older than `stale_timeout`;
- `stale` is true when there is no good reading younger than `stale_timeout` (none yet
  included); the numbers are then null, never the last values passed off as current;
- humidity at its edges (`lineformat`): a reading slightly outside 0..100 % is clamped and
  `humidity_clamped` says so; at 0 % there is no dew point: `dewpoint` is null and `too_dry` true
  (the dew-point rule reads that as safe); at 100 % the dew point is the temperature.
"""

from __future__ import annotations

from typing import Any

from trackerdcs.config import SensorConfig, SensorKind
from trackerdcs.sensors.dewpoint import dew_point
from trackerdcs.sensors.lineformat import LineError, Reading, is_reading, parse_line


class SensorState:
    def __init__(self, cfg: SensorConfig) -> None:
        self.cfg = cfg
        self.room = cfg.kind is SensorKind.ROOM
        self.reading: Reading | None = None
        self.read_at: float | None = None  # monotonic time of the last good reading
        self.error: str | None = None
        self.bad_lines = 0

    def ingest(self, line: str, now: float) -> None:
        """A line from the source, received at `now`."""
        if not is_reading(line):
            return
        try:
            reading = parse_line(line, humidity=self.room, tolerance=self.cfg.humidity_tolerance)
        except LineError as exc:
            self.bad_lines += 1
            self.error = f"unparsable line {_clip(line)!r}: {exc}"
            return
        self.reading, self.read_at, self.error = reading, now, None

    def source_failed(self, reason: str) -> None:
        self.error = reason

    def stale(self, now: float) -> bool:
        return self.read_at is None or now - self.read_at > self.cfg.stale_timeout

    def snapshot(self, now: float) -> dict[str, Any]:
        """`/<name>/status`: every key keeps one JSON type; numbers are null unless valid."""
        stale = self.stale(now)
        valid = None if stale else self.reading
        dewpoint, too_dry = None, False
        if valid is not None and valid.humidity is not None:
            point = dew_point(valid.temperature, valid.humidity)
            dewpoint, too_dry = (None, True) if point is None else (round(point, 2), False)
        error = self.error
        if stale and error is None:
            error = f"no good reading within {self.cfg.stale_timeout:g} s"
        return {
            "name": self.cfg.name,
            "kind": self.cfg.kind.value,
            "module": self.cfg.module or "",
            "temperature": float(valid.temperature) if valid else None,
            "humidity": float(valid.humidity) if valid and valid.humidity is not None else None,
            "dewpoint": dewpoint,
            "too_dry": too_dry,
            "humidity_clamped": bool(valid is not None and valid.clamped),
            "max_temperature": _float_or_none(self.cfg.max_temperature),
            "stale": stale,
            "age": None if self.read_at is None else round(now - self.read_at, 3),
            "error": error,
        }


def _clip(line: str, limit: int = 40) -> str:
    text = line.strip()
    return text if len(text) <= limit else text[:limit] + "..."


def _float_or_none(value: float | None) -> float | None:
    return None if value is None else float(value)
