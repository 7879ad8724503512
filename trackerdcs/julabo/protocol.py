"""The Julabo RS-232 protocol: framing, pacing, retries, read-back, and the STATUS vocabulary.

- A command is ASCII text ended by CR. A reply is ASCII text ended by CR LF; XON/XOFF bytes
  (0x11, 0x13) may appear anywhere in it and are dropped.
- `OUT_...` commands get no reply: `send()` reads the matching `IN_...` back and checks it, then
  reads `STATUS`: the manuals' command errors (-08 .. -13) describe "the most recently received
  command" (Presto and Magio manuals, "Status messages as reply to sent commands"), so a refusal
  is only visible until the next command; `-13 VALUE EXCEEDS TEMPERATURE LIMITS` is reported for
  a value that *is* stored ("But the value is stored", Presto manual), so a read-back that agrees
  is not enough to know that nothing was wrong.
- The unit needs time between commands. Pacing is a *minimum gap since the end of the previous
  exchange* (monotonic clock), never an unconditional sleep: `write_delay` when either this
  command or the previous one is an `OUT_` (the unit is applying a change), `query_delay`
  between two queries (the manuals: 250 ms between commands, 10 ms after a reply).
- A transient is not a lost line: a query that times out or gets a garbled reply is tried again
  (`retries` times, after `write_delay`, with the input discarded so that a late reply is not
  taken for the next one) and each retry is logged with the reply that failed. Only when every
  attempt failed does the caller get the error. A reply that is an error line
  (`-08 INVALID COMMAND`) is an answer, not a transient: it is raised at once (`ErrorReply`).
- A placeholder reply (`---.--`: no sensor connected) is a missing value, not a garbled one
  (`is_placeholder`).
- One exchange at a time: a lock covers the write, the read and (for `send`) the read-back.
- `STATUS` replies `NN TEXT`; `STATUS_TABLE` is the one table of codes (the device API,
  the error messages and the simulator all use it).
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Final, TypeVar

from trackerdcs.guard import clip
from trackerdcs.julabo.transport import Transport

log = logging.getLogger(__name__)
T = TypeVar("T")

CR: Final = b"\r"
LF: Final = b"\n"
XON: Final = b"\x11"
XOFF: Final = b"\x13"


class StatusKind(StrEnum):
    """What a status code means for the operator."""

    STATE = "state"  # 00..03: no error, the operating mode
    WARNING = "warning"  # the unit keeps running
    ALARM = "alarm"  # the unit stops (or cannot run) until the cause is fixed
    COMMAND_ERROR = "command_error"  # the last command was refused; nothing changed


_S, _W, _A, _C = StatusKind.STATE, StatusKind.WARNING, StatusKind.ALARM, StatusKind.COMMAND_ERROR

STATUS_TABLE: Final[dict[int, tuple[str, StatusKind]]] = {
    0: ("MANUAL STOP", _S),
    1: ("MANUAL START", _S),
    2: ("REMOTE STOP", _S),
    3: ("REMOTE START", _S),
    -1: ("LOW LEVEL ALARM", _A),
    -3: ("EXCESS TEMPERATURE WARNING", _W),
    -4: ("LOW TEMPERATURE WARNING", _W),
    -5: ("WORKING SENSOR ALARM", _A),
    -6: ("SENSOR DIFFERENCE ALARM", _A),
    -7: ("I2C BUS ERROR", _A),
    -8: ("INVALID COMMAND", _C),
    -9: ("COMMAND NOT ALLOWED IN CURRENT MODE", _C),
    -10: ("VALUE TOO SMALL", _C),
    -11: ("VALUE TOO LARGE", _C),
    -12: ("TEMPERATURE MEASUREMENT ALARM", _A),
    -13: ("VALUE EXCEEDS TEMPERATURE LIMITS", _C),
    -14: ("EXCESS TEMPERATURE PROTECTOR ALARM", _A),
    -15: ("EXTERNAL SENSOR ALARM", _A),
    -20: ("CHECK COOLING WATER", _W),
    -21: ("COMPRESSOR STAGE 1 FAILS", _W),
    -26: ("STAND-BY PLUG MISSING", _A),
    -33: ("SAFETY SENSOR ALARM", _A),
    -38: ("EXTERNAL SENSOR SET POINT ALARM", _A),
    -40: ("LOW LEVEL WARNING", _W),
}
"""Every status code of the manual: code -> (text as the unit prints it, kind)."""

_STATUS_RE: Final = re.compile(r"^\s*(-?\d{1,3})(?:\s+(.*?))?\s*$", re.ASCII | re.DOTALL)
_ERROR_LINE_RE: Final = re.compile(r"^\s*(-\d{1,3})\s+([A-Za-z].*?)\s*$", re.ASCII | re.DOTALL)
_NUMBER_RE: Final = re.compile(r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)$", re.ASCII)
_PLACEHOLDER_RE: Final = re.compile(r"^[+-]?-+\.?-*$", re.ASCII)


@dataclass(frozen=True)
class JulaboStatus:
    """A decoded `STATUS` reply. Unknown negative codes count as alarms (fail safe)."""

    code: int
    text: str

    @classmethod
    def from_code(cls, code: int) -> JulaboStatus:
        """The status for `code`, with the table's text (`UNKNOWN STATUS` if not in the table)."""
        text, _ = STATUS_TABLE.get(code, ("UNKNOWN STATUS", _A))
        return cls(code, text)

    @classmethod
    def parse(cls, reply: str) -> JulaboStatus:
        """Decode `NN TEXT`; the table's text wins for known codes. Raises `ProtocolError`."""
        match = _STATUS_RE.match(reply)
        if match is None:
            raise ProtocolError(f"STATUS: cannot decode reply {clip(reply, 60)}")
        code = int(match.group(1))
        if code in STATUS_TABLE:
            return cls.from_code(code)
        return cls(code, (match.group(2) or "UNKNOWN STATUS").upper())

    @property
    def kind(self) -> StatusKind:
        if self.code in STATUS_TABLE:
            return STATUS_TABLE[self.code][1]
        return StatusKind.ALARM if self.code < 0 else StatusKind.STATE

    @property
    def known(self) -> bool:
        """Whether the code is in `STATUS_TABLE`."""
        return self.code in STATUS_TABLE

    @property
    def is_error(self) -> bool:
        """Any negative code: warning, alarm or refused command."""
        return self.code < 0

    @property
    def is_alarm(self) -> bool:
        return self.kind is StatusKind.ALARM

    @property
    def is_warning(self) -> bool:
        return self.kind is StatusKind.WARNING

    @property
    def is_remote(self) -> bool:
        """02/03: under remote control. False for manual modes and for error codes."""
        return self.code in (2, 3)

    @property
    def is_running(self) -> bool:
        """01/03: the unit runs. False for error codes (read `running` from the unit instead)."""
        return self.code in (1, 3)

    def __str__(self) -> str:
        return f"{format_status_code(self.code)} {self.text}"


def format_status_code(code: int) -> str:
    """The wire form of a code: `03`, `-08`."""
    return f"-{-code:02d}" if code < 0 else f"{code:02d}"


class ProtocolError(Exception):
    """The unit's reply is not what the protocol expects (garbled, not a number, refused)."""


class JulaboTimeout(ProtocolError, TimeoutError):
    """No complete reply within the line's read timeout."""

    def __init__(self, command: str, partial: bytes) -> None:
        detail = f" (partial reply {clip(partial, 60)})" if partial else ""
        super().__init__(f"{command}: no reply before the timeout{detail}")
        self.command = command
        self.partial = partial


class ErrorReply(ProtocolError):
    """The unit answered a command with an error status line (`-08 INVALID COMMAND`)."""

    def __init__(self, command: str, status: JulaboStatus) -> None:
        super().__init__(f"{command}: unit answered {status}")
        self.command = command
        self.status = status


class ReadbackMismatch(ProtocolError):
    """An `OUT_` command was not applied: its `IN_` read-back differs from the value sent.

    `status` is the unit's STATUS read right after (e.g. `-11 VALUE TOO LARGE`), or None if
    it could not be read.
    """

    def __init__(self, command: str, readback: str, status: JulaboStatus | None) -> None:
        why = f"; STATUS {status}" if status is not None else ""
        super().__init__(f"{command}: not applied, read back {clip(readback, 60)}{why}")
        self.command = command
        self.readback = readback
        self.status = status


@dataclass(frozen=True)
class Sent:
    """An `OUT_` command the unit applied: its read-back, and the command error STATUS then
    reported about it (`-13 VALUE EXCEEDS TEMPERATURE LIMITS`: stored, but outside the limits),
    or None."""

    readback: str
    warning: JulaboStatus | None = None


def is_placeholder(reply: str) -> bool:
    """A reply made of dashes (`---.--`, `----`, `--.-`): the unit has no value to give (no
    external sensor connected). ISIS's EPICS driver matches the same reply for `IN_PV_02`
    (EPICS-julabo, julaboVariable.proto, `readExtTemp`: `@mismatch { in "---.--"; }`)."""
    text = reply.strip()
    return text.count("-") >= 2 and bool(_PLACEHOLDER_RE.match(text))


MAX_REPLY_DIGITS = 12  # a Julabo prints at most 7 (`-100.00`, `1500`); more is a garbled line


def parse_number(command: str, reply: str) -> float:
    """A decimal number in ASCII (`-12.50`, `3`) of at most `MAX_REPLY_DIGITS` digits, strictly:
    anything else raises `ProtocolError` (`ErrorReply` for an error status line)."""
    text = reply.strip()
    if not _NUMBER_RE.match(text):
        match = _ERROR_LINE_RE.match(text)
        if match:
            raise ErrorReply(command, JulaboStatus.parse(text))
        raise ProtocolError(f"{command}: expected a number, got {clip(reply, 60)}")
    if sum(c.isdigit() for c in text) > MAX_REPLY_DIGITS:
        raise ProtocolError(f"{command}: a number of more than {MAX_REPLY_DIGITS} digits")
    return float(text)


def readback_command(command: str) -> str:
    """`OUT_SP_00 25.0` -> `IN_SP_00`."""
    name = command.split(None, 1)[0]
    if not name.startswith("OUT_"):
        raise ValueError(f"not an OUT_ command: {command!r}")
    return "IN_" + name.removeprefix("OUT_")


class JulaboProtocol:
    """Framing, pacing, retries and read-back over a `Transport`. Thread-safe: one exchange at
    a time.

    The read timeout is the transport's (`SerialSettings.timeout`). `retries`: how many times a
    query that timed out or got a garbled reply is tried again before its error is raised;
    `transients` counts those retries.
    """

    def __init__(
        self,
        transport: Transport,
        *,
        write_delay: float = 0.25,
        query_delay: float = 0.1,
        readback_tolerance: float = 0.005,
        retries: int = 1,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if write_delay < 0 or query_delay < 0 or readback_tolerance < 0 or retries < 0:
            raise ValueError("delays, tolerance and retries must not be negative")
        self.transport = transport
        self.write_delay = write_delay
        self.query_delay = query_delay
        self.readback_tolerance = readback_tolerance
        self.retries = retries
        self.transients = 0
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.RLock()
        self._last_end: float | None = None
        self._last_was_write = False
        self._settle = False  # the previous exchange failed: wait `write_delay` before the next
        self.last_exchange: tuple[str, bytes] | None = None  # (command, raw reply): for logs

    # -- public -------------------------------------------------------------------------------

    def query(self, command: str, decode: Callable[[str], T] | None = None) -> T | str:
        """Send a query, return its reply (framing and XON/XOFF removed), decoded by `decode`.

        A timeout or a reply `decode` refuses (`ProtocolError`) is retried `retries` times.
        Raises `JulaboTimeout` or `ProtocolError` once every attempt failed, `ErrorReply` at once
        when the unit answers with an error line, `TransportError` when the line fails.
        """
        with self._lock:
            for attempt in range(self.retries + 1):
                try:
                    reply = self._checked_reply(command)
                    return reply if decode is None else decode(reply)
                except ErrorReply:
                    raise
                except ProtocolError as exc:
                    self._settle = True
                    if attempt == self.retries:
                        raise
                    self.transients += 1
                    log.warning("%s (attempt %d of %d): trying again", exc, attempt + 1,
                                self.retries + 1)  # fmt: skip
            raise AssertionError("unreachable")  # pragma: no cover

    def write(self, command: str) -> None:
        """Send a command that gets no reply, without read-back (paced like any command)."""
        with self._lock:
            self._exchange(command, expect_reply=False)

    def send(self, command: str) -> Sent:
        """Send `OUT_xx value`, read `IN_xx` back, then STATUS; return what was applied.

        Numeric values must agree within `readback_tolerance`; otherwise `ReadbackMismatch` is
        raised with the STATUS that explains it (the unit refused the value, or is in manual
        mode). A value that was applied but that STATUS complains about (`-13`) comes back with
        that status as `Sent.warning`.
        """
        parts = command.split()
        if len(parts) != 2:
            raise ValueError(f"expected 'OUT_xx value', got {command!r}")
        check = readback_command(command)
        with self._lock:
            self._exchange(command, expect_reply=False)
            try:
                readback = self.query(check)
            except ErrorReply as exc:
                raise ReadbackMismatch(command, str(exc.status), exc.status) from exc
            status = self._status_or_none()
            if not self._agrees(parts[1], readback):
                raise ReadbackMismatch(command, readback, status)
            refused = status is not None and status.kind is StatusKind.COMMAND_ERROR
            return Sent(readback, status if refused else None)

    def status(self) -> JulaboStatus:
        """Query and decode STATUS (retried like any query)."""
        return self.query("STATUS", JulaboStatus.parse)

    # -- internals ----------------------------------------------------------------------------

    def _checked_reply(self, command: str) -> str:
        """The reply to `command`; an error status line instead of a value raises `ErrorReply`."""
        reply = self._exchange(command, expect_reply=True)
        if command != "STATUS" and _ERROR_LINE_RE.match(reply):
            raise ErrorReply(command, JulaboStatus.parse(reply))
        return reply

    def _agrees(self, sent: str, readback: str) -> bool:
        try:
            got = parse_number("read-back", readback)
        except ProtocolError:
            return sent.strip() == readback.strip()
        try:
            want = float(sent)
        except ValueError:
            return False
        return math.isclose(want, got, rel_tol=0.0, abs_tol=self.readback_tolerance + 1e-9)

    def _status_or_none(self) -> JulaboStatus | None:
        try:
            return self.status()
        except ProtocolError:
            return None

    def _exchange(self, command: str, *, expect_reply: bool) -> str:
        frame = self._encode(command)
        is_write = command.startswith("OUT_")
        self._pace(is_write)
        try:
            self.transport.discard_input()
            self.transport.write(frame)
            if not expect_reply:
                return ""
            raw = self.transport.read_until(LF)
            self.last_exchange = (command, raw[:200])
        finally:
            self._last_end = self._clock()
            self._last_was_write = is_write
        return self._decode(command, raw)

    def _pace(self, is_write: bool) -> None:
        if self._last_end is None:
            return
        slow = is_write or self._last_was_write or self._settle
        self._settle = False
        gap = self.write_delay if slow else self.query_delay
        wait = self._last_end + gap - self._clock()
        if wait > 0:
            self._sleep(wait)

    @staticmethod
    def _encode(command: str) -> bytes:
        if not command or any(c in command for c in "\r\n"):
            raise ValueError(f"invalid command {command!r}")
        try:
            return command.encode("ascii") + CR
        except UnicodeEncodeError:
            raise ValueError(f"command is not ASCII: {command!r}") from None

    @staticmethod
    def _decode(command: str, raw: bytes) -> str:
        if not raw.endswith(LF):
            raise JulaboTimeout(command, raw)
        clean = raw.replace(XON, b"").replace(XOFF, b"").removesuffix(LF).removesuffix(CR)
        try:
            return clean.decode("ascii").strip()
        except UnicodeDecodeError:
            raise ProtocolError(
                f"{command}: reply is not ASCII {clip(raw, 60)} (check baud rate, bytesize, parity)"
            ) from None
