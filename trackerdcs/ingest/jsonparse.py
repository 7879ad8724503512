"""Telegraf's `json` input format: one MQTT payload -> metrics (tags and fields).

Behaves as Telegraf's parser (plugins/parsers/json) does:

- the payload is a JSON object (one metric) or an array of objects (one metric each); `null` or
  an empty payload gives no metric; anything else (a bare number, an array holding a non-object,
  malformed JSON, NaN/Infinity, a number out of float64's range) rejects the whole message;
- nested objects and arrays are flattened: `{"a": {"b": 1}, "c": [5, 6]}` -> `a_b`, `c_0`, `c_1`;
- every JSON number becomes a float field (`1` and `1.0` alike);
- a lone UTF-16 surrogate escape (`"\\ud800"`, no character) decodes to U+FFFD in keys and
  strings, as Go's encoding/json does (`unquote`: `unicode.ReplacementChar`), so the point is
  kept and can be encoded;
- a key matching `tag_keys` becomes a tag (strings as they are, booleans `true`/`false`,
  numbers formatted like Go's `FormatFloat(v, 'f', -1)`: `3`, `0.5`);
- strings and booleans are dropped unless they match `json_string_fields` (then a string or a
  boolean field); `null` values are dropped;
- with `json_time_key`, each object's timestamp is that key's value (a flattened key name, as
  `a_b` for `{"a": {"b": ...}}`), read as `json_time_format`, and the key is no field or tag;
  an object without it (or with `null`) rejects the whole message ("JSON time key could not be
  found"); without `json_time_key` every metric of a message gets the time it was received.

Timestamps as Telegraf's `internal.ParseTimestamp` (v1.36) makes them for the `unix`,
`unix_ms`, `unix_us`, `unix_ns` formats: a JSON number (a float64) is taken exactly as a
fraction (Go's `big.Rat.SetFloat64`), multiplied by the unit in nanoseconds and truncated toward
minus infinity (`big.Int.Div`, Euclidean), so `1700000000.1` (unix) is 1700000000099999904 ns,
not 1700000000100000000; a string is read as a decimal number or a fraction `a/b` once spaces are
removed and the first `,` or `.` is taken as the decimal point; a boolean is an error. Go
layouts (RFC 3339 strings ...) are not implemented: `trackerdcs.ingest.conf` refuses them. A
time outside InfluxDB's int64 nanoseconds is refused (Telegraf's result is undefined there).
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from fractions import Fraction
from typing import Any

from trackerdcs.guard import has_surrogate_escape, replace_surrogates, shorten
from trackerdcs.ingest.filters import GlobFilter

Fields = dict[str, float | str | bool]
Tags = dict[str, str]


# (tags, fields, time): time in ns since the epoch from `json_time_key`, None: when received
# (a plain tuple: a named one costs a fifth of the parse of a small status)
Metric = tuple[Tags, Fields, int | None]


class PayloadError(ValueError):
    """A payload the json parser rejects as a whole."""


# `json_time_format` -> nanoseconds per unit (internal.ParseTimestamp's factor)
UNIX_FORMATS = {"unix": 1_000_000_000, "unix_ms": 1_000_000, "unix_us": 1_000, "unix_ns": 1}
_INT64 = 2**63
_RAT_DECIMAL = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)
_RAT_FRACTION = re.compile(r"[+-]?\d+/\d+", re.ASCII)


def unix_timestamp(value: Any, factor: int) -> int:
    """Nanoseconds from a `unix*` timestamp value (see the module docstring)."""
    t = type(value)
    if t is float and value - value == 0.0:  # finite: the usual case, straight away
        numerator, denominator = value.as_integer_ratio()
        ns = numerator * factor // denominator
    elif t is float or t is int:
        numerator, denominator = _number("time", value).as_integer_ratio()
        ns = numerator * factor // denominator
    elif t is str:
        text = value.replace(" ", "")
        for separator in (",", "."):
            if separator in text:
                text = text.replace(separator, ".", 1)
                break
        if not (_RAT_DECIMAL.fullmatch(text) or _RAT_FRACTION.fullmatch(text)):
            raise PayloadError(f"invalid number {value!r} in the time key")
        try:
            rational = Fraction(text)
        except ZeroDivisionError:
            raise PayloadError(f"invalid number {value!r} in the time key") from None
        ns = rational.numerator * factor // rational.denominator
    else:
        raise PayloadError(f"unsupported type {t.__name__} in the time key")
    if not -_INT64 < ns < _INT64:
        raise PayloadError(f"time {value!r} is outside the nanosecond range of InfluxDB")
    return ns


def _reject_constant(name: str) -> Any:
    raise PayloadError(f"invalid JSON value {name}")


_decode = json.JSONDecoder(parse_constant=_reject_constant).decode


def go_format_float(v: float) -> str:
    """`strconv.FormatFloat(v, 'f', -1, 64)`: shortest digits, never an exponent, no `.0`."""
    text = repr(v)
    if text[-2:] == ".0":
        return text[:-2]
    if "e" in text:
        text = format(Decimal(text), "f")
        if "." in text:
            text = text.rstrip("0").rstrip(".")
    return text


def _number(key: str, value: int | float) -> float:
    """A JSON number as Go decodes it: a float64, or an error when out of range."""
    try:
        number = float(value)
    except OverflowError:
        raise PayloadError(f"number out of range in {key!r}") from None
    if number - number != 0.0:  # inf (1e999): Go's decoder refuses it
        raise PayloadError(f"number out of range in {key!r}")
    return number


def _flatten(prefix: str, value: Any, out: list[tuple[str, Any]]) -> None:
    """Telegraf's FullFlattenJSON for a nested value: `prefix_key`, `prefix_0`; nulls dropped."""
    t = type(value)
    if t is dict:
        for k, v in value.items():
            _flatten(f"{prefix}_{k}", v, out)
    elif t is list:
        for i, v in enumerate(value):
            _flatten(f"{prefix}_{i}", v, out)
    elif t is float or t is int:
        out.append((prefix, _number(prefix, value)))
    elif value is not None:
        out.append((prefix, value))


_FIELD, _TAG, _STRING = 0, 1, 2  # what a key is: a field if numeric, a tag, a string field


def decode(payload: bytes | str) -> Any:
    """The JSON value of a message (None for an empty one), the same for every input; the
    metrics come from `JsonParser.metrics`. `PayloadError` when it is not JSON."""
    text = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else payload
    text = text.strip().removeprefix("\ufeff")
    if not text:
        return None
    try:
        data = _decode(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise PayloadError(f"malformed JSON: {shorten(str(exc), 120)}") from None
    except ValueError as exc:  # an integer beyond Python's digit limit: out of range
        raise PayloadError(f"number out of range: {shorten(str(exc), 80)}") from None
    if has_surrogate_escape(text):
        data = replace_surrogates(data)
    return data


class JsonParser:
    """One input's parser: `tag_keys` and `json_string_fields` are glob filters; `time_key` and
    `time_format` are `json_time_key` and `json_time_format` ("" for none)."""

    def __init__(
        self, tag_keys: GlobFilter, string_fields: GlobFilter, time_key: str = "",
        time_format: str = "",
    ) -> None:  # fmt: skip
        self.tag_keys = tag_keys
        self.string_fields = string_fields
        self.time_key = time_key
        self._factor = UNIX_FORMATS[time_format] if time_key else 0
        self._roles: dict[str, int] = {}
        self._last_time: tuple[Any, int] | None = None  # the objects of an array share one

    def _role(self, key: str) -> int:
        role = self._roles.get(key)
        if role is None:
            if self.tag_keys and self.tag_keys.match(key):
                role = _TAG
            elif self.string_fields and self.string_fields.match(key):
                role = _STRING
            else:
                role = _FIELD
            if len(self._roles) < 4096:
                self._roles[key] = role
        return role

    def parse(self, payload: bytes | str) -> list[Metric]:
        """The metrics of one message; `PayloadError` rejects the whole message."""
        return self.metrics(decode(payload))

    def metrics(self, data: Any) -> list[Metric]:
        """The metrics of a decoded message (`decode`); `PayloadError` rejects it whole."""
        if type(data) is dict:
            return [self._metric(data)]
        if type(data) is list:
            if not all(type(item) is dict for item in data):
                raise PayloadError("must be an object or an array of objects")
            return [self._metric(item) for item in data]
        if data is None:
            return []
        raise PayloadError("must be an object or an array of objects")

    def _metric(self, obj: dict[str, Any]) -> Metric:
        """One object: the usual flat case in one pass; nested values flattened first."""
        tags: Tags = {}
        fields: Fields = {}
        roles, role_of, time_key = self._roles, self._role, self.time_key
        when: Any = None
        nested: list[tuple[str, Any]] | None = None
        for key, value in obj.items():
            t = type(value)
            if t is dict or t is list:
                if nested is None:
                    nested = []
                _flatten(key, value, nested)
                continue
            if key == time_key:
                when = value
                continue
            role = roles.get(key)
            if role is None:
                role = role_of(key)
            self._put(key, value, t, role, tags, fields)
        for key, value in nested or ():
            if key == time_key:
                when = value
                continue
            self._put(key, value, type(value), role_of(key), tags, fields)
        return tags, fields, self._timestamp(when) if time_key else None

    def _timestamp(self, value: Any) -> int:
        if value is None:
            raise PayloadError("JSON time key could not be found")
        last = self._last_time
        if last is not None and last[0] == value and type(last[0]) is type(value):
            return last[1]
        ns = unix_timestamp(value, self._factor)
        self._last_time = (value, ns)
        return ns

    @staticmethod
    def _put(key: str, value: Any, t: type, role: int, tags: Tags, fields: Fields) -> None:
        if t is float or t is int:
            value = _number(key, value)
            if role == _TAG:
                tags[key] = go_format_float(value)
            else:
                fields[key] = value
        elif t is str:
            if role == _TAG:
                tags[key] = value
            elif role == _STRING:
                fields[key] = value
        elif t is bool:
            if role == _TAG:
                tags[key] = "true" if value else "false"
            elif role == _STRING:
                fields[key] = value
        # None: dropped
