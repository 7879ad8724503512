"""What keeps a daemon in control when its input or its own code does something unexpected.

- `clip(value)`, `shorten(text)`: a bounded rendering of any input, of a text, for a message or
  a log line (no 100 kB echo).
- `loads(text)`: JSON as every trackerdcs reader of commands and statuses takes it: numbers are
  finite (`NaN`, `Infinity` and `1e400` are refused) and fit a float (an integer beyond
  `FLOAT_MAX`, 309 digits and more, is refused, as is one beyond Python's 4300-digit limit),
  nesting is at most `MAX_DEPTH` deep, and a lone UTF-16 surrogate escape reads as U+FFFD
  (`replace_surrogates`); anything else raises `JsonError` with a short message.
- `Faults`: the unexpected exceptions of one process. Every worker thread, command handler, rule
  evaluation and callback that catches an exception it did not foresee reports it here: it is
  logged with its traceback and its input (clipped), counted, and, after `MAX_CONSECUTIVE`
  unexpected errors in a row from the same place (a success there, or `QUIET` s without an
  error there, resets the count), the daemon is made to exit with status `EXIT_FAULTS` (70,
  `EX_SOFTWARE`): its supervisor (the local stack, the container's restart policy) starts it
  again, and its availability goes `offline` meanwhile. A worker thread that ends anyway is
  fatal at once (`Faults.fatal`).

One `Faults` per process (`FAULTS`); `trackerdcs.runner` connects it to the daemon's loop.
"""

from __future__ import annotations

import json
import logging
import math
import re
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

MAX_CONSECUTIVE = 5  # unexpected errors in a row from one place before the daemon exits
QUIET = 60.0  # s without an error from a place after which its count starts again
EXIT_FAULTS = 70  # the exit status then (sysexits.h EX_SOFTWARE: an internal software error)
MAX_DEPTH = 32  # JSON nesting accepted in commands and statuses (ours nest 3 deep at most)
CLIP = 120  # characters of an input shown in a message
FLOAT_MAX = sys.float_info.max  # a JSON number beyond it cannot be a float (Go refuses it too)


def clip(value: Any, limit: int = CLIP) -> str:
    """`repr(value)` (of text: the text quoted), cut to about `limit` characters."""
    try:
        text = repr(value)
    except Exception as exc:  # a repr that fails (an int beyond the digit limit ...)
        text = f"<{type(value).__name__}: {type(exc).__name__}>"
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


def shorten(value: Any, limit: int = 200) -> str:
    """Text (an error message, a name from a message) cut to about `limit` characters; any
    other value as `clip` renders it."""
    if not isinstance(value, str):
        return clip(value, limit)
    return value if len(value) <= limit else f"{value[:limit]}... ({len(value)} characters)"


class JsonError(ValueError):
    """JSON that trackerdcs does not accept (malformed, non-finite, too big, too deep)."""


def _constant(name: str) -> Any:
    raise JsonError(f"{name} is not a number (JSON has no NaN or Infinity)")


_decoder = json.JSONDecoder(parse_constant=_constant)


def _problem(value: Any) -> str | None:
    """What makes decoded JSON unacceptable (a number beyond a float, nesting deeper than
    `MAX_DEPTH`), or None. One walk over the containers: cheaper than hooks on every number."""
    t = type(value)
    if t is not dict and t is not list:
        return _number_problem(value) if t is float or t is int else None
    stack = [(value, 1)]
    while stack:
        container, depth = stack.pop()
        if depth > MAX_DEPTH:
            return f"nested deeper than {MAX_DEPTH} levels"
        for item in container.values() if type(container) is dict else container:
            t = type(item)
            if t is dict or t is list:
                stack.append((item, depth + 1))
            elif (t is float or t is int) and (why := _number_problem(item)):
                return why
    return None


def _number_problem(number: float | int) -> str | None:
    if type(number) is float:
        return None if number - number == 0.0 else "a number is out of range (beyond a float)"
    if -FLOAT_MAX <= number <= FLOAT_MAX:
        return None
    return "a number is out of range (beyond a float)"


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def replace_surrogates(value: Any) -> Any:
    """`value` (decoded JSON) with every lone UTF-16 surrogate (`"\\ud800"` escaped alone in
    the JSON text: no character, it cannot be encoded) replaced by U+FFFD, in keys and strings,
    as Go's encoding/json decodes it (`unquote`: an invalid surrogate becomes
    `unicode.ReplacementChar`), and so as Telegraf does."""
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [replace_surrogates(v) for v in value]
    if isinstance(value, dict):
        return {replace_surrogates(k): replace_surrogates(v) for k, v in value.items()}
    return value


def has_surrogate_escape(text: str) -> bool:
    """Whether JSON text may decode to a lone surrogate (it escapes one: `\\udXXX`)."""
    return "\\u" in text and _SURROGATE_ESCAPE.search(text) is not None


def loads(text: str | bytes, what: str = "JSON") -> Any:
    """Decode JSON strictly (see the module doc); `JsonError` names `what` and why. A lone
    surrogate escape decodes to U+FFFD (`replace_surrogates`)."""
    if isinstance(text, bytes | bytearray):
        text = bytes(text).decode("utf-8", errors="replace")
    try:
        value = _decoder.decode(text)
    except JsonError as exc:
        raise JsonError(f"{what}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise JsonError(f"malformed {what}: {exc.msg} (at character {exc.pos})") from None
    except RecursionError:
        raise JsonError(f"{what}: nested deeper than {MAX_DEPTH} levels") from None
    except ValueError:  # Python's limit of 4300 digits for an integer
        raise JsonError(f"{what}: a number is out of range (beyond a float)") from None
    problem = _problem(value)
    if problem is not None:
        raise JsonError(f"{what}: {problem}")
    return replace_surrogates(value) if has_surrogate_escape(text) else value


def finite_number(value: Any) -> bool:
    """A JSON number a reader can take: int or float (not bool), finite."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return math.isfinite(value) if isinstance(value, float) else abs(value) <= FLOAT_MAX


class Faults:
    """Unexpected exceptions of one process: logged, counted, fatal after `limit` in a row from
    one place. Thread-safe. `on_fatal(reason)` is called once, from the thread that saw it."""

    def __init__(self, limit: int = MAX_CONSECUTIVE) -> None:
        self.limit = limit
        self.total = 0  # unexpected errors since start
        self.last: str | None = None  # the latest one, as reported
        self.fatal_reason: str | None = None
        self.on_fatal: Callable[[str], None] | None = None
        self._row: dict[str, tuple[int, float]] = {}  # place -> (errors in a row, last at)
        self._lock = threading.Lock()

    def fault(self, where: str, exc: BaseException, data: Any = None) -> str:
        """Report an unexpected exception in `where` while handling `data`; the one-line
        reason (for a status or an answer)."""
        reason = f"unexpected error in {where}: {type(exc).__name__}: {shorten(str(exc), 200)}"
        shown = "" if data is None else f" (input {clip(data, 300)})"
        log.error("%s%s", reason, shown, exc_info=(type(exc), exc, exc.__traceback__))
        now = time.monotonic()
        with self._lock:
            self.total += 1
            self.last = reason
            row, at = self._row.get(where, (0, now))
            row = 1 if now - at > QUIET else row + 1
            self._row[where] = (row, now)
        if row >= self.limit:
            self.fatal(f"{row} unexpected errors in a row in {where} (the last: {reason})")
        return reason

    def ok(self, where: str) -> None:
        """`where` did its job: its count of errors in a row starts again."""
        if where in self._row:
            with self._lock:
                self._row.pop(where, None)

    def fatal(self, reason: str) -> None:
        """The daemon cannot go on (a worker thread ended, too many errors): make it exit."""
        with self._lock:
            first = self.fatal_reason is None
            if first:
                self.fatal_reason = reason
        if not first:
            return
        log.critical("%s: exiting with status %d so that the daemon is restarted", reason,
                     EXIT_FAULTS)  # fmt: skip
        if self.on_fatal is not None:
            self.on_fatal(reason)

    def guarded(self, where: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """`fn` that reports its unexpected exceptions here instead of raising them (for a
        callback whose caller would die of them or swallow them: paho's, a thread's)."""

        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                result = fn(*args, **kwargs)
            except Exception as exc:
                self.fault(where, exc, args or None)
                return None
            self.ok(where)
            return result

        return call

    def reset(self) -> None:
        """Forget everything (tests)."""
        with self._lock:
            self._row.clear()
            self.total, self.last, self.fatal_reason, self.on_fatal = 0, None, None, None


FAULTS = Faults()
"""The process's faults; `trackerdcs.runner` sets `on_fatal` to stop the daemon's loop."""
