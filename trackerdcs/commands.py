"""Parsing and refusing command payloads: shared by every service's command handlers."""

from __future__ import annotations

import json
import math
from typing import Any


class CommandError(Exception):
    """A command that is refused: its message is the answer's `error`."""


def parse_number(value: Any, what: str) -> float:
    """A finite float from a payload value (text or JSON number)."""
    if isinstance(value, bool) or value is None:
        raise CommandError(f"{what} must be a number, got {json.dumps(value)}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise CommandError(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise CommandError(f"{what} must be finite, got {value!r}")
    return number


_ON_WORDS = {"on": True, "1": True, "true": True, "off": False, "0": False, "false": False}


def parse_switch(value: Any) -> bool:
    key = str(value).strip().lower() if not isinstance(value, bool) else str(value).lower()
    if key not in _ON_WORDS:
        raise CommandError(f"switch takes 'on' or 'off', got {value!r}")
    return _ON_WORDS[key]


# Commands that only ever make the lab safer, by the first level of their action (below
# `<prefix>/cmd/`): `kill/{ch}` whatever its value; `switch/...` (power, chiller) and
# `module/{name}` (sequencer) when the value is off. The MQTT layer executes them whatever their
# age and never rate-limits them: an interlock or a sequencer on a loaded machine is never refused.
ALWAYS_EXECUTED = {"kill": None, "switch": False, "module": False}


def always_executed(action: str, value: Any) -> bool:
    """True for a command that switches something off (see `ALWAYS_EXECUTED`)."""
    verb = action.split("/", 1)[0]
    if verb not in ALWAYS_EXECUTED:
        return False
    wanted = ALWAYS_EXECUTED[verb]
    if wanted is None:
        return True
    try:
        return parse_switch(value) is wanted
    except CommandError:
        return False
