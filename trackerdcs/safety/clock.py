"""Wall-clock times as the safety services publish and read them."""

from __future__ import annotations

import re
from datetime import UTC, datetime

_SPAN = re.compile(r"^(\d+(?:\.\d+)?)(s|m|h|d)$")
_SPAN_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def iso(t: float | None) -> str | None:
    """Epoch seconds as ISO 8601 UTC with milliseconds (`2024-05-01T08:00:00.123Z`)."""
    if t is None:
        return None
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_when(value: str | float | int, now: float) -> float:
    """Epoch seconds from a number, `now`, a span back from now (`30s`, `10m`, `2h`, `7d`) or
    an ISO 8601 time (local time unless it has a zone). ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"not a time: {value!r}")
    if isinstance(value, int | float):
        return float(value)
    text = value.strip()
    if text == "now":
        return now
    span = _SPAN.match(text)
    if span:
        return now - float(span.group(1)) * _SPAN_SECONDS[span.group(2)]
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"not a time: {value!r} (ISO 8601, a span back from now such as 10m, or now)"
        ) from None
    return when.timestamp()
