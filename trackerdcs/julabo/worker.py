"""The thread that owns the chiller's line: opens it, polls the unit, runs commands one at a time.

Nothing else touches the `Julabo` device, so exchanges never interleave. The worker reports to a
`WorkerSink` from its own thread (the daemon moves the calls onto its asyncio loop):

- `on_poll(poll)` after every complete poll (every `poll_interval` s, and right after a command);
- `on_line_lost(reason)` when the line fails, the unit stops answering or a reopen attempt
  fails. The line is then closed and reopened with exponential backoff.

When the line counts as lost (the rule `docs/topics.md` documents):

- a transport failure (closed, unplugged, refused) at once;
- a query that timed out or got a garbled reply is tried again (`julabo.retries` times, default
  1): one missed reply is a transient, logged with its reply, not a lost line. When every attempt
  of STATUS or of a required reading (bath, set point, running) failed, the line is lost: with
  the defaults (0.5 s timeout, one retry) about 1.3 s after the unit fell silent;
- an optional reading (external sensor, power, active set point, limits) that the unit
  answers with `-08 INVALID COMMAND` (as an error line, or in the STATUS read right after it
  failed every attempt) is reported once and dropped from the poll until the line is reopened:
  the unit does not have it. One that failed every attempt while STATUS still answers normally
  is a transient: published as null for this poll (the log says so once), asked again at the
  next. On the `generic` profile, whose optional readings are guesses, a reading that fails
  every attempt is dropped all the same. A placeholder (`---.--`) is a missing value, never a
  failure. What a dropped reading is published as: null, except the active set point, which
  is then 1 (a unit without `IN_MODE_01` has one set point);
- an unexpected exception in a poll, a command or the thread's own loop (a bug, a reply no
  parser foresaw) is reported to `trackerdcs.guard` (logged with the line's last exchange,
  counted) and handled as a line fault: the line is reopened, the thread goes on, and the
  command is answered with the reason. After `guard.MAX_CONSECUTIVE` such errors in a row
  without a good poll between them the daemon exits (status 70), to be restarted.

Jobs (`submit`) run between polls, before the next poll when one is waiting; each job's
`done(result, error)` is called from the worker thread. While the line is down, jobs fail at once
with the reason, except `reconnect()`.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from trackerdcs.guard import FAULTS, Faults
from trackerdcs.julabo.device import Julabo, Value
from trackerdcs.julabo.fsm import Poll
from trackerdcs.julabo.protocol import ErrorReply, JulaboTimeout, ProtocolError, StatusKind
from trackerdcs.julabo.transport import TransportError

log = logging.getLogger(__name__)

INVALID_COMMAND = -8  # STATUS `-08 INVALID COMMAND`: the unit does not know the last command
SETTINGS_EVERY = 10  # polls between two readings of the warning limits (they seldom change;
# they are also read at every (re)connection and right after every command)

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


class Poller:
    """Reads what `/julabo/status` shows from the unit's model, in one pass over the line.

    Marks the optional readings the unit turned out not to have (`Julabo.missing`, forgotten
    when the line is reopened), keeps the warning limits between two readings of them, and the
    optional readings failing transiently (reported once per spell).
    """

    def __init__(self, device: Julabo, settings_every: int = SETTINGS_EVERY) -> None:
        self.device = device
        self.settings_every = settings_every
        self._polls = 0
        self._limits: tuple[float | None, float | None] = (None, None)
        self._failing: set[str] = set()  # optional readings that failed at their last query

    def reset(self) -> None:
        """A new connection: read everything again."""
        self.refresh_settings()
        self._limits = (None, None)
        self._failing.clear()

    def refresh_settings(self) -> None:
        """Read the warning limits at the next poll (after a command: it may have moved them)."""
        self._polls = 0

    def read(self) -> Poll:
        """One poll. Raises `TransportError` / `ProtocolError` when the line is to count as
        lost (STATUS or a required reading failed every attempt)."""
        device = self.device
        status = device.status()
        if status.kind is StatusKind.COMMAND_ERROR:
            # a refused or unknown command's code is reported once by STATUS; reading cleared it
            log.warning("the unit reported %s; reading STATUS again", status)
            status = device.status()
        running = self._required("running")
        # 00..03 say stop/start themselves: running from the same reply as the mode, never a mix
        # of two reads taken apart (the unit started or stopped in between)
        said = 0 <= status.code <= 3
        active = self._active_setpoint()
        if active is None:  # not known this poll: which set point is active is unknown too
            setpoint = None
        else:
            name = f"setpoint_{active}" if device.has(f"setpoint_{active}") else "setpoint_1"
            setpoint = self._required(name)
        if self._polls % self.settings_every == 0:
            self._limits = (self._optional("high_limit"), self._optional("low_limit"))
        self._polls += 1
        return Poll(
            status=status,
            running=status.is_running if running is None or said else bool(running),
            bath=self._required("bath_temperature"),
            setpoint=setpoint,
            active_setpoint=active,
            external=self._optional("external_temperature"),
            power=self._optional("heating_power"),
            high_limit=self._limits[0],
            low_limit=self._limits[1],
        )

    def _active_setpoint(self) -> int | None:
        """The active set point 1..3: 1 on a unit without `IN_MODE_01` (one set point), None
        while the unit's answer is missing (never a default passed off as a reading)."""
        if not self.device.has("active_setpoint"):
            return 1
        index = self._optional("active_setpoint")
        if index is None:
            return None if self.device.has("active_setpoint") else 1  # else: just dropped
        return int(index) + 1

    def _required(self, name: str) -> Any:
        """A reading every Julabo has: a failure (after the retries) propagates."""
        try:
            return self.device.read(name)
        except ErrorReply as exc:  # e.g. -05 WORKING SENSOR ALARM instead of a value
            log.warning("%s", exc)
            return None

    def _optional(self, name: str) -> Any:
        """A reading the model may lack: None if it has not, or the unit does not answer it."""
        if not self.device.has(name):
            return None
        try:
            value: Value | None = self.device.read(name)
        except ErrorReply as exc:
            if exc.status.code == INVALID_COMMAND:
                self._drop(name, str(exc))
            else:
                log.warning("%s", exc)
            return None
        except ProtocolError as exc:  # no reply, or garbled, every attempt
            status = self.device.status()  # the line is alive? (if not, this raises)
            if status.code == INVALID_COMMAND:  # the unit did not know the command
                self._drop(name, f"{exc}; STATUS then reported {status}")
            elif name in self.device.profile.optional:  # `generic`: a guess that failed
                self._drop(name, str(exc))
            elif name not in self._failing:
                self._failing.add(name)
                log.warning(
                    "%s (%s): %s; published as null until it answers, asked again at every "
                    "poll (a unit that never answers it may be another model: see the README "
                    "to pick julabo.model)", self._query(name), name, exc,
                )  # fmt: skip
            return None
        if name in self._failing:
            self._failing.discard(name)
            log.info("%s (%s) answers again", self._query(name), name)
        return value

    def _query(self, name: str) -> str:
        return self.device.profile.register(name).query

    def _drop(self, name: str, why: str) -> None:
        self.device.mark_missing(name)
        self._failing.discard(name)
        profile = self.device.profile
        level = logging.INFO if name in profile.optional else logging.WARNING
        shown = (
            "the unit is taken to have one set point: active_setpoint published as 1, set "
            "point commands write set point 1"
            if name == "active_setpoint"
            else "published as null"
        )
        log.log(
            level,
            "%s (%s) dropped from the poll until the line is reopened: %s; %s (julabo.model "
            "is %r: see the README to pick the unit's model)",
            self._query(name), name, why, shown, profile.name,
        )  # fmt: skip


class LineWorker:
    """Polls a `Julabo` every `poll_interval` s and runs submitted jobs, in one thread."""

    def __init__(
        self,
        device: Julabo,
        sink: WorkerSink,
        *,
        poll_interval: float,
        backoff: tuple[float, float] = (0.5, 5.0),
        faults: Faults | None = None,
    ) -> None:
        self.device = device
        self.faults = faults or FAULTS
        self.where = f"the line worker of {device.protocol.transport.url}"
        self.sink = sink
        self.poller = Poller(device)
        self.poll_interval = poll_interval
        self.backoff_min, self.backoff_max = backoff
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._stopping = False
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

    def alive(self) -> bool:
        """The thread runs (or has not been started, or was stopped)."""
        thread = self._thread
        return thread is None or thread.is_alive() or self._stopping

    # -- the worker thread ----------------------------------------------------------------------
    def _run(self) -> None:
        self._delay = self.backoff_min
        self._next_poll = 0.0
        while not self._stopping:
            try:
                self._step()
            except Exception as exc:  # the loop's own code: reported, a line fault
                reason = self.faults.fault(self.where, exc, self.device.protocol.last_exchange)
                self._lost(reason)
                self._wait_job_later(self._delay)

    def _step(self) -> None:
        """One turn: (re)open the line, or run a waiting command, or poll when it is time."""
        if not self.device.is_open:
            if not self._open():
                job = self._wait_job(self._delay)
                self._delay = min(self._delay * 2, self.backoff_max)
                if job is not None:
                    self._run_while_down(job)
                if self.device.is_open:  # reopened by a reconnect command
                    self._delay, self._next_poll = self.backoff_min, 0.0
                return
            self._delay, self._next_poll = self.backoff_min, 0.0
        now = time.monotonic()
        job = self._wait_job(0.0 if now >= self._next_poll else self._next_poll - now)
        if job is not None:  # a waiting command goes before the next poll
            self._run_job(job)
            if self.device.is_open:
                self.poller.refresh_settings()
                self._poll()  # show the command's effect at once
            return
        if time.monotonic() >= self._next_poll:
            self._next_poll += self.poll_interval
            if self._next_poll <= time.monotonic():  # first poll, or fell behind: from now
                self._next_poll = time.monotonic() + self.poll_interval
            self._poll()

    def _wait_job_later(self, delay: float) -> None:
        """After a fault of the loop itself: wait `delay`, answering the jobs that come."""
        job = self._wait_job(delay)
        if job is not None:
            self._run_while_down(job)

    def _wait_job(self, timeout: float) -> _Job | None:
        try:
            if timeout <= 0:
                return self._jobs.get_nowait()
            return self._jobs.get(timeout=timeout)
        except queue.Empty:
            return None

    def _open(self) -> bool:
        try:
            self.device.open()
            version = self.device.identify()
        except (TransportError, ProtocolError) as exc:
            self._lost(str(exc))
            return False
        except Exception as exc:  # a bug must not end the thread: a line fault, reported
            reason = self.faults.fault(self.where, exc, self.device.protocol.last_exchange)
            self._lost(reason)
            return False
        log.info("connected to %r on %s (model %s)", version, self._url,
                 self.device.profile.name)  # fmt: skip
        self._last_reason = None
        self.poller.reset()
        return True

    @property
    def _url(self) -> str:
        return self.device.protocol.transport.url

    def _lost(self, reason: str) -> None:
        self.device.close()
        if reason != self._last_reason:
            log.warning("chiller line lost: %s (reconnecting with backoff)", reason)
        else:
            log.debug("chiller line still down: %s", reason)
        self._last_reason = reason
        self._tell(self.sink.on_line_lost, reason)

    def _done(self, job: _Job, result: Any, error: Exception | None) -> None:
        self._tell(lambda args: job.done(*args), (result, error))

    def _tell(self, fn: Callable[[Any], None], arg: Any) -> None:
        """Call the sink (the daemon's loop may be closing: that is no fault of the line)."""
        try:
            fn(arg)
        except RuntimeError as exc:  # asyncio: "Event loop is closed" while stopping
            log.debug("not reported (%s): %s", exc, arg)

    def _poll(self) -> None:
        try:
            poll = self.poller.read()
        except (TransportError, ProtocolError) as exc:
            self._lost(str(exc))
            return
        except Exception as exc:  # a bug, or a reply no parser foresaw: a line fault
            reason = self.faults.fault(self.where, exc, self.device.protocol.last_exchange)
            self._lost(reason)
            return
        self.faults.ok(self.where)  # a good poll: the count of errors in a row starts again
        self._tell(self.sink.on_poll, poll)

    def _run_job(self, job: _Job) -> None:
        if job.fn is None:
            self.device.close()
            self._done(job, None, None if self._open() else LineDown(self._last_reason or "down"))
            return
        try:
            result = job.fn(self.device)
        except (TransportError, JulaboTimeout) as exc:  # no reply after the retries: lost
            self._lost(str(exc))
            self._done(job, None, exc)
        except (ProtocolError, ValueError, AttributeError) as exc:
            # refused by the unit (read-back, error line), or before anything was sent
            self._done(job, None, exc)
        except Exception as exc:
            reason = self.faults.fault(self.where, exc, self.device.protocol.last_exchange)
            self._lost(reason)
            self._done(job, None, RuntimeError(reason))
        else:
            self._done(job, result, None)

    def _run_while_down(self, job: _Job) -> None:
        if job.fn is None and self._open():
            self._done(job, None, None)
            return
        self._done(job, None, LineDown(self._last_reason or "the line is down"))
