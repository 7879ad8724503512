"""Where a sensor's lines come from. Each source runs its own thread and reports through two
callbacks (from that thread): `on_line(text)` for every line, `on_error(reason)` when the line
cannot be opened or fails.

- `LineSource`: a serial device (`/dev/ttyACM0`, 8N1 at `baudrate`) or a TCP socket
  (`socket://HOST:PORT`, `tcp://HOST:PORT`), opened with pyserial's `serial_for_url`. A lost or
  unopenable line is retried with exponential backoff. On a serial device the first line after
  opening is dropped (the device may have been mid-line).
- `SimSource`: a simulated sensor in the daemon: constant values with a little noise.

The thread never ends before `stop()`: an unexpected exception in it is reported to
`trackerdcs.guard` (logged, counted; too many in a row end the daemon) and, for a line, handled
like a lost line (reported through `on_error`, reopened).
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from typing import Protocol

import serial

from trackerdcs.guard import FAULTS
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

    def alive(self) -> bool:
        """The thread runs (or was never started, or was asked to stop)."""
        ...


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
        self._thread = threading.Thread(
            target=self._guarded_run, name=self.thread_name, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float = 2.0) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def alive(self) -> bool:
        thread = self._thread
        return thread is None or thread.is_alive() or self._stop.is_set()

    @property
    def where(self) -> str:
        return f"the {self.thread_name} thread"

    def _guarded_run(self) -> None:
        """`_run` until stopped; an unexpected exception is reported and `_run` starts again."""
        while not self._stop.is_set():
            try:
                self._run()
            except Exception as exc:
                reason = FAULTS.fault(self.where, exc)
                self._report(reason)
                self._stop.wait(1.0)
                continue
            return

    def _report(self, reason: str) -> None:
        """Tell the service about a fault of the source (the loop may be closing)."""

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
                FAULTS.ok(self.where)  # a line handed on: the count of errors in a row restarts
            if len(buffer) > MAX_LINE:
                self.on_line(buffer[: MAX_LINE + 1].decode("ascii", errors="replace"))
                buffer.clear()

    def _fail(self, reason: str) -> None:
        if reason != self._last_failure:
            log.warning("%s (retrying with backoff)", reason)
        self._last_failure = reason
        self._report(reason)

    def _report(self, reason: str) -> None:
        try:
            self.on_error(reason)
        except RuntimeError as exc:  # asyncio: the loop is closing
            log.debug("not reported (%s): %s", exc, reason)


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
