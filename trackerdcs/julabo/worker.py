"""The thread that owns the chiller's line: opens it, polls the unit, runs commands one at a time.

Nothing else touches the `Julabo` device, so exchanges never interleave. The worker reports to a
`WorkerSink` from its own thread (the daemon moves the calls onto its asyncio loop):

- `on_poll(poll)` after every complete poll (every `poll_interval` s, and right after a command);
- `on_line_lost(reason)` when the line fails, the unit stops answering (a read timeout) or a
  reopen attempt fails. The line is then closed and reopened with exponential backoff.

Jobs (`submit`) run between polls; each job's `done(result, error)` is called from the worker
thread. While the line is down, jobs fail at once with the reason, except `reconnect()`.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from trackerdcs.julabo.device import Julabo
from trackerdcs.julabo.fsm import Poll
from trackerdcs.julabo.protocol import JulaboTimeout, ProtocolError, StatusKind
from trackerdcs.julabo.transport import TransportError

log = logging.getLogger(__name__)

MAX_BAD_POLLS = 3  # garbled replies in a row before the line is declared lost

JobFn = Callable[[Julabo], Any]
DoneFn = Callable[[Any, Exception | None], None]


class WorkerSink(Protocol):
    def on_poll(self, poll: Poll) -> None: ...

    def on_line_lost(self, reason: str) -> None: ...


class LineDown(Exception):
    """A job could not run: the line is down."""


@dataclass
class _Job:
    fn: JobFn | None  # None: reconnect
    done: DoneFn


def read_poll(device: Julabo) -> Poll:
    """Read everything `/julabo/status` shows, in one pass over the line."""
    status = device.status()
    if status.kind is StatusKind.COMMAND_ERROR:
        # a refused command's code is reported once by STATUS; reading it cleared it
        log.warning("the unit reported %s; reading STATUS again", status)
        status = device.status()
    active = device.active_setpoint + 1
    return Poll(
        status=status,
        bath=device.bath_temperature,
        external=device.external_temperature,
        power=device.heating_power,
        setpoint=device.setpoint(active),
        active_setpoint=active,
        running=device.running,
    )


class LineWorker:
    """Polls a `Julabo` every `poll_interval` s and runs submitted jobs, in one thread."""

    def __init__(
        self,
        device: Julabo,
        sink: WorkerSink,
        *,
        poll_interval: float,
        backoff: tuple[float, float] = (0.5, 5.0),
    ) -> None:
        self.device = device
        self.sink = sink
        self.poll_interval = poll_interval
        self.backoff_min, self.backoff_max = backoff
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._bad_polls = 0
        self._last_reason: str | None = None

    # -- any thread ------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="julabo-line", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping = True
        self._jobs.put(None)
        if self._thread is not None:
            self._thread.join(timeout)
        self.device.close()

    def submit(self, fn: JobFn, done: DoneFn) -> None:
        """Run `fn(device)` on the line between polls; then `done(result, error)`."""
        self._jobs.put(_Job(fn, done))

    def reconnect(self, done: DoneFn) -> None:
        """Close the line and open it again now; `done(None, error or None)`."""
        self._jobs.put(_Job(None, done))

    # -- the worker thread ----------------------------------------------------------------------
    def _run(self) -> None:
        delay = self.backoff_min
        next_poll = 0.0
        while not self._stopping:
            if not self.device.is_open:
                if not self._open():
                    job = self._wait_job(delay)
                    delay = min(delay * 2, self.backoff_max)
                    if job is not None:
                        self._run_while_down(job)
                    if self.device.is_open:  # reopened by a reconnect command
                        delay, next_poll = self.backoff_min, 0.0
                    continue
                delay, next_poll = self.backoff_min, 0.0
            now = time.monotonic()
            if now >= next_poll:
                next_poll += self.poll_interval
                if next_poll <= now:  # first poll, or fell behind: keep the period from now
                    next_poll = now + self.poll_interval
                self._poll()
                continue
            job = self._wait_job(next_poll - now)
            if job is not None:
                self._run_job(job)
                if self.device.is_open:
                    self._poll()  # show the command's effect at once

    def _wait_job(self, timeout: float) -> _Job | None:
        try:
            return self._jobs.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return None

    def _open(self) -> bool:
        try:
            self.device.open()
            version = self.device.identify()
        except (TransportError, ProtocolError) as exc:
            self._lost(str(exc))
            return False
        log.info("connected to %r on %s", version, self.device.protocol.transport.url)
        self._last_reason = None
        self._bad_polls = 0
        return True

    def _lost(self, reason: str) -> None:
        self.device.close()
        if reason != self._last_reason:
            log.warning("chiller line lost: %s (reconnecting with backoff)", reason)
        else:
            log.debug("chiller line still down: %s", reason)
        self._last_reason = reason
        self.sink.on_line_lost(reason)

    def _poll(self) -> None:
        try:
            poll = read_poll(self.device)
        except (TransportError, JulaboTimeout) as exc:
            self._lost(str(exc))
            return
        except ProtocolError as exc:
            self._bad_polls += 1
            log.warning("poll failed (%d/%d): %s", self._bad_polls, MAX_BAD_POLLS, exc)
            if self._bad_polls >= MAX_BAD_POLLS:
                self._lost(f"{MAX_BAD_POLLS} garbled replies in a row, last: {exc}")
            return
        self._bad_polls = 0
        self.sink.on_poll(poll)

    def _run_job(self, job: _Job) -> None:
        if job.fn is None:
            self.device.close()
            job.done(None, None if self._open() else LineDown(self._last_reason or "down"))
            return
        try:
            result = job.fn(self.device)
        except (TransportError, JulaboTimeout) as exc:
            self._lost(str(exc))
            job.done(None, exc)
        except (ProtocolError, ValueError) as exc:
            job.done(None, exc)
        else:
            job.done(result, None)

    def _run_while_down(self, job: _Job) -> None:
        if job.fn is None and self._open():
            job.done(None, None)
            return
        job.done(None, LineDown(self._last_reason or "the line is down"))
