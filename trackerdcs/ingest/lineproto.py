"""InfluxDB line protocol, as Telegraf's `influx` serializer writes it.

- measurement: `\\t \\n \\f \\r`, comma and space escaped;
- tag keys, tag values and field keys: the same plus `=`; a trailing backslash is trimmed; a tag
  with an empty key or value is left out; tags sorted by key;
- fields: floats in Go's shortest `'f'` form (`1`, `0.25`), strings quoted with `\\` and `"`
  (and the control characters above) escaped, booleans `true`/`false`; a field with an empty key
  is left out; a metric without fields gives no line;
- the timestamp in nanoseconds.
"""

from __future__ import annotations

from trackerdcs.ingest.jsonparse import Fields, Tags, go_format_float

_ESCAPES = {"\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r", ",": "\\,", " ": "\\ ", "=": "\\="}
_KEY_TABLE = str.maketrans(_ESCAPES)
_NAME_TABLE = str.maketrans({k: v for k, v in _ESCAPES.items() if k != "="})
_STRING_TABLE = str.maketrans(
    {"\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r", '"': '\\"', "\\": "\\\\"}
)
_CACHE_LIMIT = 20000


def escape_name(name: str) -> str:
    return name.translate(_NAME_TABLE)


def _escape_key(text: str) -> str:
    text = text.translate(_KEY_TABLE)
    return text.rstrip("\\") if text.endswith("\\") else text


class LineSerializer:
    """Metrics of one measurement -> lines; caches the escaping of repeated keys, values and
    tag sets (a status stream repeats them all the time)."""

    def __init__(self, measurement: str) -> None:
        name = escape_name(measurement)
        if not name:
            raise ValueError("empty measurement name")
        self.name = name
        self._keys: dict[str, str] = {}
        self._strings: dict[str, str] = {}
        self._heads: dict[tuple[tuple[str, str], ...], str] = {}

    def _key(self, text: str) -> str:
        out = self._keys.get(text)
        if out is None:
            out = _escape_key(text)
            if len(self._keys) > _CACHE_LIMIT:
                self._keys.clear()
            self._keys[text] = out
        return out

    def _string(self, text: str) -> str:
        out = self._strings.get(text)
        if out is None:
            out = '"' + text.translate(_STRING_TABLE) + '"'
            if len(self._strings) > _CACHE_LIMIT:
                self._strings.clear()
            self._strings[text] = out
        return out

    def _head(self, tags: Tags) -> str:
        """`measurement,k=v,...` for a tag set: sorted, escaped, empty ones left out."""
        items = tuple(tags.items())
        head = self._heads.get(items)
        if head is None:
            parts = [self.name]
            for k, v in sorted(items):
                ek, ev = self._key(k), self._key(v)
                if ek and ev:
                    parts.append(f"{ek}={ev}")
            head = ",".join(parts)
            if len(self._heads) > _CACHE_LIMIT:
                self._heads.clear()
            self._heads[items] = head
        return head

    def line(self, tags: Tags, fields: Fields, timestamp: str) -> str | None:
        """One line (with its newline), or None when no field can be written."""
        keys, key, strings, string = self._keys, self._key, self._strings, self._string
        pairs = []
        for k, v in fields.items():
            ek = keys.get(k)
            if ek is None:
                ek = key(k)
            if not ek:
                continue
            t = type(v)
            if t is float:
                text = repr(v)
                if text[-2:] == ".0":
                    text = text[:-2]
                elif "e" in text:
                    text = go_format_float(v)
                pairs.append(f"{ek}={text}")
            elif t is str:
                sv = strings.get(v)
                pairs.append(f"{ek}={sv if sv is not None else string(v)}")
            else:
                pairs.append(f"{ek}={'true' if v else 'false'}")
        if not pairs:
            return None
        return f"{self._head(tags)} {','.join(pairs)} {timestamp}\n"
