"""Parsing and refusing command payloads: shared by every service's command handlers."""

from __future__ import annotations

import math
import re
from typing import Any

from trackerdcs.guard import clip


class CommandError(Exception):
    """A command that is refused: its message is the answer's `error`."""


# A decimal number as people and scripts write one, in ASCII only: `100`, `-2.5`, `.5`, `1e3`.
# Not `nan`, `inf`, `1_000`, `0x10`, nor digits of other scripts (Arabic-Indic, superscripts),
# all of which float() takes.
_DECIMAL = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)
_NOT_FINITE = frozenset({"nan", "inf", "infinity"})
MAX_NUMBER_TEXT = 64  # characters of a number in a payload (a float has 17 significant digits)


def parse_number(value: Any, what: str) -> float:
    """A finite float from a payload value: a JSON number, or text that is an ASCII decimal
    number (`CommandError` otherwise, with a bounded message)."""
    if isinstance(value, bool) or value is None or not isinstance(value, int | float | str):
        shown = "null" if value is None else clip(value, 40)
        raise CommandError(f"{what} must be a number, got {shown}")
    if isinstance(value, str):
        text = value.strip()
        if text.lower().lstrip("+-") in _NOT_FINITE:
            raise CommandError(f"{what} must be finite, got {clip(value, 40)}")
        if len(text) > MAX_NUMBER_TEXT or not _DECIMAL.fullmatch(text):
            raise CommandError(f"{what} must be a number, got {clip(value, 40)}")
        value = text
    try:
        number = float(value)
    except OverflowError:  # an integer beyond any float
        number = math.inf
    if not math.isfinite(number):
        raise CommandError(f"{what} must be finite, got {clip(value, 40)}")
    return number


_ON_WORDS = {"on": True, "1": True, "true": True, "off": False, "0": False, "false": False}


def parse_switch(value: Any) -> bool:
    """`on`/`1`/`true` or `off`/`0`/`false` (any case; a JSON true/false or 1/0 too)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _ON_WORDS:
        return _ON_WORDS[value.strip().lower()]
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise CommandError(f"switch takes 'on' or 'off', got {clip(value, 40)}")


# Commands that only ever make the lab safer, per service, by the first level of their action
# (below `<prefix>/cmd/`): the power daemon's `kill/{ch}` whatever its value and `switch/{ch}`
# when the value is off; the sequencer's `module/{name}` when off. A service names its table when
# it opens its link (`MqttLink(always_executed=...)`); the MQTT layer executes these whatever their
# age, never rate-limits them, and runs them despite a bad `time`, an unknown key or a bad `id` in
# the payload (answered with a `warning`): an interlock or a sequencer on a loaded machine is never
# refused. Stopping a chiller is not among them: a stale or repeated stop warms powered modules
# (docs/topics.md, "Command safety").
ALWAYS_EXECUTED: dict[str, dict[str, bool | str | None]] = {
    "power": {"kill": None, "switch": False},
    "sequencer": {"module": False, "ivscan": "stop"},  # a module off; an IV scan stopped
}


def always_executed(action: str, value: Any, table: dict[str, bool | str | None]) -> bool:
    """True for a command of `table` (an entry of `ALWAYS_EXECUTED`) that switches something
    off or stops it: any value (None), a switch value (False: off), or a word (`stop`); a value
    that cannot be read as off is not an off."""
    verb = action.split("/", 1)[0]
    if verb not in table:
        return False
    wanted = table[verb]
    if wanted is None:
        return True
    if isinstance(wanted, str):
        return isinstance(value, str) and value.strip().lower() == wanted
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
