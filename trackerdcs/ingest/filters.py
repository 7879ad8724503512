"""Telegraf's glob filters (`tag_keys`, `json_string_fields`, `tagpass`), the subset we implement.

Telegraf compiles a list of patterns into one filter: a pattern without glob characters matches
exactly; `*` matches any run of characters, `?` one, `[abc]` / `[!abc]` a set. Brace alternatives
(`{a,b}`) and backslash escapes are not implemented and are refused.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable

_GLOB_CHARS = set("*?[")


class FilterError(ValueError):
    """A pattern the bridge does not implement."""


class GlobFilter:
    """Matches a name against any of several Telegraf-style patterns."""

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns = tuple(patterns)
        exact: set[str] = set()
        globs: list[str] = []
        for p in self.patterns:
            if "{" in p or "\\" in p:
                raise FilterError(f"pattern {p!r:.80}: braces and backslashes are not implemented")
            if _GLOB_CHARS & set(p):
                globs.append(p)
            else:
                exact.add(p)
        self._exact = frozenset(exact)
        try:
            self._regex = (
                re.compile("|".join(f"(?:{fnmatch.translate(g)})" for g in globs))
                if globs
                else None
            )
        except re.error as exc:  # `[z-a]`: a set Telegraf's glob refuses too
            raise FilterError(f"patterns {self.patterns!r:.120}: {exc}") from None
        self._cache: dict[str, bool] = {}

    def match(self, name: str) -> bool:
        hit = self._cache.get(name)
        if hit is None:
            hit = name in self._exact or bool(self._regex and self._regex.match(name))
            if len(self._cache) < 4096:
                self._cache[name] = hit
        return hit

    def __bool__(self) -> bool:
        return bool(self.patterns)


class TagPass:
    """`tagpass`: a metric passes when one of its tags matches one of that key's patterns."""

    def __init__(self, table: dict[str, Iterable[str]]) -> None:
        self.filters = {key: GlobFilter(patterns) for key, patterns in table.items()}

    def select(self, tags: dict[str, str]) -> bool:
        for key, flt in self.filters.items():
            value = tags.get(key)
            if value is not None and flt.match(value):
                return True
        return False
