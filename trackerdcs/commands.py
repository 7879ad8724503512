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


# Commands that only ever make the lab safer, per service, by the first level of their action
# (below `<prefix>/cmd/`): the power daemon's `kill/{ch}` whatever its value and `switch/{ch}`
# when the value is off; the sequencer's `module/{name}` when off. A service names its table when
# it opens its link (`MqttLink(always_executed=...)`); the MQTT layer executes these whatever their
# age, never rate-limits them, and runs them despite a bad `time`, an unknown key or a bad `id` in
# the payload (answered with a `warning`): an interlock or a sequencer on a loaded machine is never
# refused. Stopping a chiller is not among them: a stale or repeated stop warms powered modules
# (docs/topics.md, "Command safety").
ALWAYS_EXECUTED: dict[str, dict[str, bool | None]] = {
    "power": {"kill": None, "switch": False},
    "sequencer": {"module": False},
}


def always_executed(action: str, value: Any, table: dict[str, bool | None]) -> bool:
    """True for a command of `table` (an entry of `ALWAYS_EXECUTED`) that switches something
    off; a value that cannot be read as off is not an off."""
    verb = action.split("/", 1)[0]
    if verb not in table:
        return False
    wanted = table[verb]
    if wanted is None:
        return True
    try:
        return parse_switch(value) is wanted
    except CommandError:
        return False


def sender_of(request_id: str | None) -> str | None:
    """Who sent a command, from its id `<sender>:...` (`interlock:dewpoint:3`, `alice:1`): the
    convention of the safety services, the audit log and the rate limit; None without one."""
    if request_id and ":" in request_id:
        return request_id.split(":", 1)[0] or None
    return None
