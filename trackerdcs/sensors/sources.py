"""Where a sensor's lines come from. Each source runs its own thread and reports through two
callbacks (from that thread): `on_line(text)` for every line, `on_error(reason)` when the line
cannot be opened or fails.

- `LineSource`: a serial device (`/dev/ttyACM0`, 8N1 at `baudrate`) or a TCP socket
  (`socket://HOST:PORT`, `tcp://HOST:PORT`), opened with pyserial's `serial_for_url`. A lost or
  unopenable line is retried with exponential backoff. On a serial device the first line after
  opening is dropped (the device may have been mid-line).
- `SimSource`: a simulated sensor in the daemon: constant values with a little noise.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from typing import Protocol

import serial

from trackerdcs.sensors.lineformat import MAX_LINE, format_line

log = logging.getLogger(__name__)

LineFn = Callable[[str], None]
ErrorFn = Callable[[str], None]
_IO_ERRORS = (serial.SerialException, OSError, ValueError)


class Source(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None:
        """Ask the thread to end (returns at once)."""
        ...

    def join(self, timeout: float = 2.0) -> None: ...


def normalize_url(url: str) -> str:
    if url.startswith("tcp://"):
        return "socket://" + url.removeprefix("tcp://")
    return url.removeprefix("serial://")


class _SourceThread:
    """The life cycle both sources share: one reading thread, stopped by an event."""

    thread_name = "sensor source"

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float = 2.0) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        raise NotImplementedError


class LineSource(_SourceThread):
    """Reads lines from a serial device or a TCP socket; reconnects by itself."""

    def __init__(
        self, url: str, on_line: LineFn, on_error: ErrorFn, *, baudrate: int = 9600,
        read_timeout: float = 0.2, backoff: tuple[float, float] = (0.5, 5.0),
    ) -> None:  # fmt: skip
        self.url = url
        self.on_line = on_line
        self.on_error = on_error
        self.baudrate = baudrate
        self.read_timeout = read_timeout
        self.backoff = backoff
        self._last_failure: str | None = None
        self.thread_name = f"line {url}"
        super().__init__()

    def _run(self) -> None:
        delay = self.backoff[0]
        while not self._stop.is_set():
            try:
                port = serial.serial_for_url(
                    normalize_url(self.url), baudrate=self.baudrate, timeout=self.read_timeout
                )
            except _IO_ERRORS as exc:
                self._fail(f"{self.url}: cannot open: {exc}")
                self._stop.wait(delay)
                delay = min(delay * 2, self.backoff[1])
                continue
            log.info("reading %s", self.url)
            delay, self._last_failure = self.backoff[0], None
            try:
                self._read_lines(port, skip_first="://" not in normalize_url(self.url))
            except _IO_ERRORS as exc:
                self._fail(f"{self.url}: line lost: {exc}")
            finally:
                port.close()
            self._stop.wait(delay)

    def _read_lines(self, port: serial.SerialBase, skip_first: bool) -> None:
        buffer = bytearray()
        if skip_first:
            port.reset_input_buffer()
        while not self._stop.is_set():
            buffer += port.read(max(1, port.in_waiting))
            while b"\n" in buffer:
                raw, _, rest = bytes(buffer).partition(b"\n")
                buffer = bytearray(rest)
                if skip_first:
                    skip_first = False
                    log.debug("%s: dropped the first line %r", self.url, raw)
                    continue
                self.on_line(raw.decode("ascii", errors="replace"))
            if len(buffer) > MAX_LINE:
                self.on_line(buffer[: MAX_LINE + 1].decode("ascii", errors="replace"))
                buffer.clear()

    def _fail(self, reason: str) -> None:
        if reason != self._last_failure:
            log.warning("%s (retrying with backoff)", reason)
        self._last_failure = reason
        self.on_error(reason)


class SimSource(_SourceThread):
    """A simulated sensor: `format_line` of constant values plus gaussian noise, every
    `interval` s."""

    def __init__(
        self, on_line: LineFn, *, temperature: float, humidity: float | None,
        interval: float = 1.0, noise: float = 0.02, seed: int | None = None,
    ) -> None:  # fmt: skip
        self.on_line = on_line
        self.temperature = temperature
        self.humidity = humidity
        self.interval = interval
        self.noise = noise
        self.rng = random.Random(seed)
        self.thread_name = "sim sensor"
        super().__init__()

    def line(self) -> str:
        t = self.temperature + self.rng.gauss(0.0, self.noise)
        rh = None if self.humidity is None else self.humidity + self.rng.gauss(0.0, self.noise)
        return format_line(t, rh)

    def _run(self) -> None:
        while True:
            self.on_line(self.line())
            if self._stop.wait(self.interval):
                return
