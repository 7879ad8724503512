"""Byte transport to a Julabo unit: a serial device, a pty, or a serial line exposed over TCP.

`SerialTransport(url, settings)` wraps pyserial's `serial_for_url`. Accepted URLs:

- a device path: `/dev/ttyUSB0`, `/dev/pts/7` (ptys behave like serial devices);
- `serial:///dev/ttyUSB0` (same as the bare path);
- `socket://host:port` or its alias `tcp://host:port` (a raw TCP socket, e.g. ser2net or socat);
- any other pyserial URL (`rfc2217://...`) is passed through unchanged.

On a pty, character size and parity are not applied (Linux ptys are always 8N1; see
`effective_settings`). Every failure of the line (refused, unplugged, closed by the peer, write
blocked by handshake) raises `TransportError`, whose message names the URL. Nothing is opened
until `open()`.
"""

from __future__ import annotations

import contextlib
import os
import stat
import termios
from types import TracebackType
from typing import Any, Literal, Protocol, Self

import serial
from pydantic import BaseModel, ConfigDict, Field

MAX_REPLY = 256  # bytes of one reply (the longest, VERSION, is about 30)
_PTY_MAJORS = range(136, 144)  # Linux Unix98 pty slaves (/dev/pts/N)
_IO_ERRORS: tuple[type[Exception], ...] = (serial.SerialException, OSError, termios.error)
_OPEN_ERRORS: tuple[type[Exception], ...] = (*_IO_ERRORS, ValueError)


class TransportError(Exception):
    """The line cannot be opened, or failed while in use (closed, unplugged, refused)."""


class SerialLine(BaseModel):
    """A serial line's settings, as the lab file gives them (`chillers[].serial`; ignored by
    `socket://` lines, whose far end owns them). Validated by pydantic: `ValidationError` (a
    ValueError) names the setting.

    Defaults are the older Julabo units' 4800 7E1 with RTS/CTS; newer units and the unit's
    own menu may use 9600 7E1, 4800 8E1 or 9600 8N1: set them to match the unit.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    baudrate: int = Field(4800, gt=0)
    bytesize: Literal[5, 6, 7, 8] = 7
    parity: Literal["N", "E", "O", "M", "S"] = "E"
    stopbits: Literal[1, 1.5, 2] = 1
    rtscts: bool = True
    xonxoff: bool = False


class SerialSettings(SerialLine):
    """A line's settings and its timeouts: what `serial.serial_for_url` is opened with."""

    timeout: float = Field(1.0, gt=0)
    """Read timeout in seconds: how long to wait for a complete reply."""
    write_timeout: float | None = Field(1.0, gt=0)
    """Write timeout in seconds (a write blocked by a low CTS line fails instead of hanging)."""

    def pyserial_kwargs(self) -> dict[str, Any]:
        """The settings as keyword arguments of `serial.serial_for_url`."""
        return self.model_dump()


def normalize_url(url: str) -> str:
    """Map this package's URL aliases onto pyserial's (`serial://` -> path, `tcp://` -> socket)."""
    if url.startswith("serial://"):
        return url.removeprefix("serial://")
    if url.startswith("tcp://"):
        return "socket://" + url.removeprefix("tcp://")
    return url


def is_pty(path: str) -> bool:
    """Whether `path` (a symlink is followed) is a pseudo-terminal slave."""
    try:
        mode = os.stat(path)
    except OSError:
        return False
    return stat.S_ISCHR(mode.st_mode) and os.major(mode.st_rdev) in _PTY_MAJORS


def effective_settings(url: str, settings: SerialSettings) -> SerialSettings:
    """The settings to apply to `url`: a pty gets 8 data bits and no parity.

    A Linux pty forces CS8 and clears PARENB; asking for 7E1 again on a pty that a previous
    client left configured fails with EINVAL, since none of the request can then be applied.
    Character size and parity mean nothing on a pty, so they are dropped there.
    """
    if "://" not in url and is_pty(url):
        return settings.model_copy(update={"bytesize": 8, "parity": "N"})
    return settings


class Transport(Protocol):
    """What the protocol layer needs from a line (a fake implements it in tests)."""

    @property
    def url(self) -> str: ...

    @property
    def is_open(self) -> bool: ...

    def open(self) -> None: ...

    def close(self) -> None: ...

    def write(self, data: bytes) -> None: ...

    def read_until(self, terminator: bytes) -> bytes:
        """Bytes up to and including `terminator`, or what arrived before the read timeout (at
        most `MAX_REPLY` bytes: a longer line is garbage, never a reply)."""
        ...

    def discard_input(self) -> None:
        """Drop whatever is waiting in the input buffer (a late reply, stray XON bytes)."""
        ...


class OpenedInWith:
    """`with x:` calls `x.open()` and, at the end, `x.close()`."""

    def open(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class SerialTransport(OpenedInWith):
    """A pyserial line opened from a URL or device path; see the module docstring."""

    def __init__(self, url: str, settings: SerialSettings | None = None) -> None:
        self._url = url
        self.settings = settings or SerialSettings()
        self._serial: serial.Serial | None = None

    @property
    def url(self) -> str:
        return self._url

    @property
    def is_open(self) -> bool:
        return self._serial is not None and self._serial.is_open

    def open(self) -> None:
        """Open the line (a no-op if already open). Raises `TransportError`."""
        if self.is_open:
            return
        url = normalize_url(self._url)
        settings = effective_settings(url, self.settings)
        try:
            self._serial = serial.serial_for_url(url, **settings.pyserial_kwargs())
        except _OPEN_ERRORS as exc:
            self._serial = None
            raise TransportError(f"{self._url}: cannot open: {exc}") from exc

    def close(self) -> None:
        """Close the line; safe to call twice or on a line that already failed."""
        port, self._serial = self._serial, None
        if port is not None:
            with contextlib.suppress(*_IO_ERRORS):
                port.close()

    def _port(self) -> serial.Serial:
        if self._serial is None or not self._serial.is_open:
            raise TransportError(f"{self._url}: line is not open")
        return self._serial

    def write(self, data: bytes) -> None:
        port = self._port()
        try:
            port.write(data)
            port.flush()
        except serial.SerialTimeoutException as exc:
            raise TransportError(
                f"{self._url}: write timed out (handshake line low? cable unplugged?)"
            ) from exc
        except _IO_ERRORS as exc:
            raise TransportError(f"{self._url}: write failed: {exc}") from exc

    def read_until(self, terminator: bytes) -> bytes:
        port = self._port()
        try:
            return port.read_until(terminator, MAX_REPLY)
        except _IO_ERRORS as exc:
            raise TransportError(f"{self._url}: read failed: {exc}") from exc

    def discard_input(self) -> None:
        port = self._port()
        try:
            port.reset_input_buffer()
        except _IO_ERRORS as exc:
            raise TransportError(f"{self._url}: line failed: {exc}") from exc

    def __repr__(self) -> str:
        state = "open" if self.is_open else "closed"
        return f"SerialTransport({self._url!r}, {state})"
