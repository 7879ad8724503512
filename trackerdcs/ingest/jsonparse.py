"""Telegraf's `json` input format: one MQTT payload -> metrics (tags and fields).

Behaves as Telegraf's parser (plugins/parsers/json) does:

- the payload is a JSON object (one metric) or an array of objects (one metric each); `null` or
  an empty payload gives no metric; anything else (a bare number, an array holding a non-object,
  malformed JSON, NaN/Infinity, a number out of float64's range) rejects the whole message;
- nested objects and arrays are flattened: `{"a": {"b": 1}, "c": [5, 6]}` -> `a_b`, `c_0`, `c_1`;
- every JSON number becomes a float field (`1` and `1.0` alike);
- a key matching `tag_keys` becomes a tag (strings as they are, booleans `true`/`false`,
  numbers formatted like Go's `FormatFloat(v, 'f', -1)`: `3`, `0.5`);
- strings and booleans are dropped unless they match `json_string_fields` (then a string or a
  boolean field); `null` values are dropped.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from trackerdcs.ingest.filters import GlobFilter

Fields = dict[str, float | str | bool]
Tags = dict[str, str]


class PayloadError(ValueError):
    """A payload the json parser rejects as a whole."""


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
        return _decode(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise PayloadError(f"malformed JSON: {exc}") from None


class JsonParser:
    """One input's parser: `tag_keys` and `json_string_fields` are glob filters."""

    def __init__(self, tag_keys: GlobFilter, string_fields: GlobFilter) -> None:
        self.tag_keys = tag_keys
        self.string_fields = string_fields
        self._roles: dict[str, int] = {}

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

    def parse(self, payload: bytes | str) -> list[tuple[Tags, Fields]]:
        """The metrics of one message; `PayloadError` rejects the whole message."""
        return self.metrics(decode(payload))

    def metrics(self, data: Any) -> list[tuple[Tags, Fields]]:
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

    def _metric(self, obj: dict[str, Any]) -> tuple[Tags, Fields]:
        """One object: the usual flat case in one pass; nested values flattened first."""
        tags: Tags = {}
        fields: Fields = {}
        roles, role_of = self._roles, self._role
        nested: list[tuple[str, Any]] | None = None
        for key, value in obj.items():
            t = type(value)
            if t is dict or t is list:
                if nested is None:
                    nested = []
                _flatten(key, value, nested)
                continue
            role = roles.get(key)
            if role is None:
                role = role_of(key)
            self._put(key, value, t, role, tags, fields)
        for key, value in nested or ():
            self._put(key, value, type(value), role_of(key), tags, fields)
        return tags, fields

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
