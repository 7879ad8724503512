"""Wall-clock times as the safety services publish and read them."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime

from trackerdcs.guard import clip

_SPAN = re.compile(r"^(\d{1,12}(?:\.\d{1,12})?)(s|m|h|d)$", re.ASCII)
_SPAN_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def iso(t: float | None) -> str | None:
    """Epoch seconds as ISO 8601 UTC with milliseconds (`2024-05-01T08:00:00.123Z`)."""
    if t is None:
        return None
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_when(value: object, now: float) -> float:
    """Epoch seconds from a number, `now`, a span back from now (`30s`, `10m`, `2h`, `7d`) or
    an ISO 8601 time (local time unless it has a zone). ValueError otherwise (also for a time
    that is not a finite number of seconds)."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"not a time: {clip(value, 40)}")
    if isinstance(value, int | float):
        return _finite(value, value)
    text = value.strip()
    if text == "now":
        return now
    span = _SPAN.match(text)
    if span:
        return _finite(now - float(span.group(1)) * _SPAN_SECONDS[span.group(2)], value)
    try:
        if not text.isascii():
            raise ValueError(text)
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
        return _finite(when.timestamp(), value)
    except (ValueError, OverflowError, OSError):
        raise ValueError(
            f"not a time: {clip(value, 40)} (ISO 8601, a span back from now such as 10m, or now)"
        ) from None


def _finite(seconds: float, value: object) -> float:
    try:
        seconds = float(seconds)
    except OverflowError:
        seconds = math.inf
    if not math.isfinite(seconds):
        raise ValueError(f"not a time: {clip(value, 40)} is out of range")
    return seconds
