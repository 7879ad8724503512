"""One recipe run: a blocking procedure on the Python client (`trackerdcs.client.Lab`), run by
the dcs daemon in a thread of its own, as the IV scans are.

Steps run in order, repeats unrolled (`trackerdcs.recipe.model`):

- `setpoint`: first the dew point: a set point below the room's dew point plus the margin
  waits for drier air (`dewpoint: wait`, up to `dewpoint_timeout`, saying so in `waiting`) or
  fails with the reason (`dewpoint: fail`); then the set point, and the chiller started if it
  is stopped;
- `wait_stable`: the client's `wait_chiller_stable` (the bath within tolerance for a time);
- `module`: the client's `module_on` / `module_off`, one module after the other (the
  sequencer: LV then HV, HV then LV);
- `hold`: wall time (a pause freezes what is left of it);
- `ivscan`: one scan command per module (`/dcs/cmd/ivscan/{module}`, with `recipe`: the run's
  id), followed to their end. A scan that ends at compliance or breakdown is a result (the
  recipe goes on, the channel left as the scan leaves it: ramped down); one stopped by someone
  else, or in error, fails the run.

It never fights the safety layer. An interlock rule holding one of its modules (the interlock
service's `/interlock/status`), seen while it waits, between steps, or as the reason a command
was refused or a scan stopped, ends the run (`on_interlock: abort`) or pauses it
(`on_interlock: pause`); either way its scans are stopped and its modules switched off through
the sequencer (HV first). `resume` is refused while a rule still holds a module; it then
restores what the run had set up (the chiller's set point, stable again if the run had waited
for it, and the modules it had switched on) and runs the interrupted step again (a hold goes
on with the time it had left). An operator's `pause` changes nothing in the lab: it takes
effect at once during a hold or a wait, after the step otherwise (state `PAUSING`).

`abort`, a failed step and an interlock (with `on_interlock: abort`) all end the same way:
scans stopped, modules off through the sequencer, the chiller set to `safe_setpoint` if the
recipe has one (never stopped: it may still cool powered modules elsewhere). When the dcs
daemon itself stops, its sequencer cannot run: the run switches its modules' HV off through
the power daemon instead and leaves the LV as it is.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from trackerdcs.client import Aborted, CommandRefused, DcsError, Lab, WaitTimeout
from trackerdcs.mqtt import unix_time
from trackerdcs.recipe.model import (
    HoldStep,
    IvScanStep,
    ModuleStep,
    Recipe,
    RepeatStep,
    SetpointStep,
    Stability,
    Step,
    WaitStableStep,
    human_path,
)
from trackerdcs.topics import DCS, ServiceTopics

log = logging.getLogger(__name__)

FINAL_STATES = frozenset({"COMPLETED", "ABORTED", "FAILED"})
OUTCOMES = ("completed", "aborted", "interlock", "failed")
SCAN_RESULTS = frozenset({"completed", "compliance", "breakdown"})  # a scan's outcome, not a fault
SAFE_TIMEOUT = 600.0  # s for the scans to end and the modules to be off when making safe
FOREVER = 30 * 86400.0  # s: a pause lasts until resumed or aborted
CHILLER_START_TIMEOUT = 60.0  # s for a started chiller's status to say it runs


def _running(status: dict[str, Any]) -> bool:
    """A chiller status that says it controls the temperature."""
    return bool(status.get("running")) or status.get("state") in ("RUNNING", "MANUAL")


class Reporter(Protocol):
    def changed(self, run: RecipeRun) -> None: ...

    def event(self, run: RecipeRun, event: str, text: str, ok: bool | None = None) -> None: ...


class Interrupted(Exception):
    """The run is interrupted: `kind` `abort`, `pause` or `interlock`, and why."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind, self.reason = kind, reason


class StepFailed(DcsError):
    """A step that cannot be done: its message says why."""


class DewPoint:
    """When a set point is too close to the room's dew point: below the highest dew point of
    `sensors` (prefixes of room sensors) plus `margin` K. No sensor: never judged."""

    def __init__(self, margin: float, sensors: list[str]) -> None:
        self.margin, self.sensors = margin, sensors

    def problem(self, lab: Lab, setpoint: float) -> str | None:
        """Why `setpoint` is not safe now (too humid, or the dew point unknown), or None."""
        if not self.sensors:
            return None
        dews: list[float] = []
        known = False
        for prefix in self.sensors:
            status = lab.latest(ServiceTopics(prefix).status)
            if not isinstance(status, dict) or status.get("stale"):
                continue
            if status.get("too_dry") is True:  # 0 % RH: no dew point at all
                known = True
                continue
            dew = status.get("dewpoint")
            if isinstance(dew, int | float) and not isinstance(dew, bool):
                known = True
                dews.append(float(dew))
        if not known:
            names = ", ".join(p.lstrip("/") for p in self.sensors)
            return f"the dew point is unknown (no fresh reading of {names})"
        if not dews:
            return None
        dew = max(dews)
        if setpoint < dew + self.margin:
            limit = dew + self.margin
            return (f"set point {setpoint:g} °C is below the dew point {dew:.1f} °C + "
                    f"{self.margin:g} K margin ({limit:.1f} °C): the air is too humid")  # fmt: skip
        return None


class RecipeRun:
    """One run of a recipe. `run()` blocks until it has ended and everything is left safe.

    `pause`, `resume` and `abort` may be called from any thread; `status()` too."""

    def __init__(
        self, lab: Lab, recipe: Recipe, reporter: Reporter, *, run_id: str, operator: str,
        request_id: str | None, dewpoint: DewPoint, chiller: str | None,
        results_dir: Path | None = None, clock: Callable[[], float] = time.time,
    ) -> None:  # fmt: skip
        self.lab = lab
        self.recipe = recipe
        self.reporter = reporter
        self.run_id = run_id
        self.operator = operator
        self.request_id = request_id
        self.dewpoint = dewpoint
        self.chiller = chiller  # the chiller's name (None: the lab's only one, or none used)
        self.results_dir = results_dir
        self.clock = clock
        self.state = "RUNNING"
        self.steps = int(recipe.total_steps())
        self.step = 0
        self.path: str | None = None
        self.text: str | None = None
        self.waiting: str | None = None
        self.paused: str | None = None
        self.outcome: str | None = None
        self.reason: str | None = None
        self.started = unix_time(clock())
        self.ended: float | None = None
        self.scans: list[dict[str, Any]] = []
        self.log: list[dict[str, Any]] = []  # every step: where, what, when, how it ended
        self.powered: list[str] = []  # modules the run switched on (and not off since)
        self.setpoint: float | None = None  # the run's last set point
        self.stability: Stability | None = None  # its wait_stable since that set point
        self._lock = threading.Lock()
        self._abort: str | None = None
        self._stopping = False  # the dcs daemon is stopping: no sequencer
        self._pause: str | None = None  # a pause asked for (by whom)
        self._resume: str | None = None  # a resume asked for (by whom)
        self._kind = "abort"  # what the last interruption was
        self._safe_made = False  # modules switched off for an interlock pause: restore them
        self._frames: list[list[Any]] = []  # [steps, index, repetition, repetitions] per level
        self._hold_end: float | None = None  # monotonic end of the running hold
        self._hold_left: float | None = None  # s left of an interrupted hold
        self._scanning: dict[str, str] = {}  # module -> scan id, while a scan step runs

    # -- control (any thread) ---------------------------------------------------------------------
    def pause(self, by: str) -> str | None:
        """Ask the run to pause; the refusal's text, or None."""
        with self._lock:
            if self.state == "PAUSED" or self._pause is not None:
                return f"recipe {self.recipe.name} is already {self.state.lower()}"
            if self.state != "RUNNING":
                return f"recipe {self.recipe.name} is {self.state}: nothing to pause"
            self._pause = f"paused by {by}"
            self.state = "PAUSING"
        self.reporter.event(self, "pausing", f"pause asked by {by}: {self._where()}")
        self._wake()
        return None

    def resume(self, by: str) -> str | None:
        """Resume a paused run (cancel a pause not yet in effect); the refusal, or None."""
        with self._lock:
            if self.state == "PAUSING":
                self._pause, self.state = None, "RUNNING"
                cancelled = True
            elif self.state != "PAUSED":
                return f"recipe {self.recipe.name} is {self.state}: not paused"
            else:
                cancelled = False
        if cancelled:
            self.reporter.event(self, "resumed", f"pause cancelled by {by}")
            self._wake()
            return None
        holding = self.interlock_reason()
        if holding:
            return f"still held by {holding}: resume once it has cleared"
        with self._lock:
            self._resume = by
        self._wake()
        return None

    def abort(self, reason: str, stopping: bool = False) -> None:
        """Ask the run to end: scans stopped, modules off (see the module's doc)."""
        with self._lock:
            if self._abort is None:
                self._abort = reason
            self._stopping |= stopping
        self._wake()

    def _wake(self) -> None:
        self.lab.wake()
        self.reporter.changed(self)

    def finished(self) -> bool:
        return self.state in FINAL_STATES

    # -- what holds it ----------------------------------------------------------------------------
    def interlock_reason(self) -> str | None:
        """The active interlock rules holding one of the run's modules, in words, or None."""
        seen: dict[str, str] = {}
        for module in self.recipe.modules:
            for rule in self.lab.interlocks(module):
                seen.setdefault(str(rule.get("name")), str(rule.get("reason")))
        return "; ".join(f"interlock {n}: {r}" for n, r in seen.items()) or None

    def _guard(self, pausable: bool) -> Callable[[], str | None]:
        """For the client's waits: the reason to stop waiting now (kind in `_kind`)."""

        def check() -> str | None:
            if self._abort is not None:
                self._kind = "abort"
                return self._abort
            if (why := self.interlock_reason()) is not None:
                self._kind = "interlock"
                return why
            if pausable and self._pause is not None:
                self._kind = "pause"
                return self._pause
            return None

        return check

    def _checkpoint(self, pausable: bool = True) -> None:
        if (why := self._guard(pausable)()) is not None:
            raise Interrupted(self._kind, why)

    # -- the run ----------------------------------------------------------------------------------
    def run(self) -> None:
        r = self.recipe
        text = (f"recipe {r.name} ({r.source}) on {', '.join(r.modules)}: {self.steps} steps, "
                f"holds {r.hold_time():g} s in all; on an interlock: {r.on_interlock}")  # fmt: skip
        self.reporter.event(self, "start", text)
        self.reporter.changed(self)
        try:
            self._frames = [[r.steps, 0, 1, 1]]
            self._run_steps(r.steps)
            outcome, reason = "completed", f"completed {self.step} steps"
        except Interrupted as exc:
            outcome = "interlock" if exc.kind == "interlock" else "aborted"
            reason = exc.reason  # `_finish` says the outcome before it
        except DcsError as exc:
            outcome, reason = "failed", str(exc)
        except Exception as exc:  # never end the thread silently
            log.exception("recipe run %s failed", self.run_id)
            outcome, reason = "failed", f"unexpected error: {exc!r}"
        self._finish(outcome, reason)

    def _run_steps(self, steps: tuple[Step, ...]) -> None:
        frame = self._frames[-1]
        for i, step in enumerate(steps):
            frame[1] = i
            if isinstance(step, RepeatStep):
                for n in range(step.repeat):
                    self._frames.append([step.steps, 0, n + 1, step.repeat])
                    try:
                        self._run_steps(step.steps)
                    finally:
                        self._frames.pop()
            else:
                self._leaf(step)

    def _at(self) -> tuple[int, ...]:
        return tuple(f[1] for f in self._frames)

    def _where(self) -> str:
        reps = [f"{f[2]}/{f[3]}" for f in self._frames[1:]]
        rep = f", repetition {', '.join(reps)}" if reps else ""
        return f"step {self.path}{rep}: {self.text}"

    def _leaf(self, step: Step) -> None:
        self.step += 1
        self.path, self.text = human_path(self._at()), self.recipe.describe(step)
        self._hold_left = None
        entry: dict[str, Any] = {"step": self.step, "path": self.path, "text": self.text,
                                 "started": unix_time(self.clock())}  # fmt: skip
        self.log.append(entry)
        self.reporter.event(self, "step", self._where())
        self.reporter.changed(self)
        while True:
            try:
                if self._safe_made:
                    self._restore()
                self._checkpoint()
                detail = self._execute(step)
                break
            except Interrupted as exc:
                self._interrupted(exc)
            except DcsError as exc:  # a refusal or a fault: an interlock's doing, or a failure
                if (why := self.interlock_reason()) is None:
                    entry.update(ended=unix_time(self.clock()), ok=False, detail=str(exc))
                    raise StepFailed(f"step {self.path} ({self.text}): {exc}") from None
                self._interrupted(Interrupted("interlock", f"{why} ({exc})"))
        entry.update(ended=unix_time(self.clock()), ok=True, detail=detail)
        self.reporter.event(self, "step_done", f"step {self.path} done: {detail}", True)

    def _interrupted(self, exc: Interrupted) -> None:
        """Abort (re-raised), or pause: safe first after an interlock; returns once resumed."""
        if exc.kind == "abort" or (exc.kind == "interlock" and self.recipe.on_interlock == "abort"):
            raise exc
        if exc.kind == "interlock":
            self.reporter.event(self, "interlock", f"{exc.reason}: pausing, leaving it safe "
                                f"({self._where()})", False)  # fmt: skip
            done = self._make_safe()
            self._safe_made = True
            self._wait_resume(f"{exc.reason}; {done}")
        else:
            self._wait_resume(exc.reason)

    def _wait_resume(self, why: str) -> None:
        with self._lock:
            self.state, self.paused, self._pause = "PAUSED", why, None
        self.reporter.event(self, "paused", f"{why} ({self._where()})")
        self.reporter.changed(self)
        guard = self._guard(pausable=False)

        def check() -> str | None:
            if self._abort is not None:
                self._kind = "abort"
                return self._abort
            # an interlock while paused by an operator (modules still on)
            return None if self._safe_made else guard()

        while True:
            try:
                self.lab.wait_until(lambda: True if self._resume else None, FOREVER,
                                    "a resume", check)  # fmt: skip
                break
            except Aborted as exc:
                interrupted = Interrupted(self._kind, exc.reason)
            if interrupted.kind == "abort" or self.recipe.on_interlock == "abort":
                raise interrupted
            self.reporter.event(self, "interlock", f"{interrupted.reason} while paused: "
                                "leaving it safe", False)  # fmt: skip
            done = self._make_safe()
            self._safe_made = True
            with self._lock:
                self.paused = f"{interrupted.reason}; {done}"
            self.reporter.changed(self)
        with self._lock:
            by, self._resume = self._resume, None
            self.state, self.paused = "RUNNING", None
        self.reporter.event(self, "resumed", f"resumed by {by}: {self._where()}")
        self.reporter.changed(self)

    def _restore(self) -> None:
        """After an interlock pause: the chiller's set point (and its stability) and the modules
        the run had switched on, before the interrupted step runs again."""
        parts = []
        if self.setpoint is not None:
            parts.append(self._set_point(self.setpoint))
            if self.stability is not None:
                parts.append(self._wait_stable(self.stability))
        for module in list(self.powered):
            self._checkpoint(pausable=False)
            self.lab.module_on(module)
        if self.powered:
            parts.append(f"{', '.join(self.powered)} on again")
        self._safe_made = False
        self.reporter.event(self, "restored", "; ".join(parts) or "nothing to restore", True)

    # -- the steps --------------------------------------------------------------------------------
    def _execute(self, step: Step) -> str:
        if isinstance(step, SetpointStep):
            self.setpoint, self.stability = step.setpoint, None
            return self._set_point(step.setpoint)
        if isinstance(step, WaitStableStep):
            detail = self._wait_stable(step.stability)
            self.stability = step.stability
            return detail
        if isinstance(step, ModuleStep):
            return self._modules(step)
        if isinstance(step, HoldStep):
            return self._hold(step.hold)
        if isinstance(step, IvScanStep):
            return self._scan(step)
        raise StepFailed(f"unknown step {step!r}")  # the model has no other

    def _set_point(self, setpoint: float) -> str:
        """The dew point first (wait or fail), then the set point, then start the chiller."""
        lab = self.lab
        why = self.dewpoint.problem(lab, setpoint)
        if why is not None:
            if self.recipe.dewpoint == "fail":
                raise StepFailed(f"{why} (dewpoint: fail)")
            self._set_waiting(why)
            try:
                lab.wait_until(
                    lambda: True if self.dewpoint.problem(lab, setpoint) is None else None,
                    self.recipe.dewpoint_timeout, "a safe dew point", self._guard(True),
                )  # fmt: skip
            except Aborted as exc:  # a pause, an abort or an interlock (the guard's kind)
                raise Interrupted(self._kind, exc.reason) from None
            except WaitTimeout:
                last = self.dewpoint.problem(lab, setpoint) or why
                raise StepFailed(f"{last}, still after {self.recipe.dewpoint_timeout:g} s "
                                 "(dewpoint_timeout)") from None  # fmt: skip
            finally:
                self._set_waiting(None)
        lab.set_chiller(setpoint, wait=False, chiller=self.chiller)
        started = ""
        if not _running(lab.chiller(self.chiller)):
            lab.start_chiller(self.chiller)
            # its answer comes before its status says so: the next step (a wait for a stable
            # bath) needs it running; an abort or an interlock ends this wait, a pause does not
            try:
                lab.wait_until(lambda: True if _running(lab.chiller(self.chiller)) else None,
                               CHILLER_START_TIMEOUT, "the chiller running",
                               self._guard(False))  # fmt: skip
            except Aborted as exc:
                raise Interrupted(self._kind, exc.reason) from None
            started = ", chiller started"
        return f"set point {setpoint:g} °C{started}"

    def _wait_stable(self, s: Stability) -> str:
        target = "its set point" if self.setpoint is None else f"{self.setpoint:g} °C"
        self._set_waiting(f"the bath within {s.tolerance:g} K of {target} for {s.stable_for:g} s")
        try:
            status = self.lab.wait_chiller_stable(
                self.setpoint, tolerance=s.tolerance, stable_for=s.stable_for, timeout=s.timeout,
                chiller=self.chiller, abort=self._guard(True),
            )  # fmt: skip
        except Aborted as exc:  # a pause, an abort or an interlock (the guard's kind)
            raise Interrupted(self._kind, exc.reason) from None
        finally:
            self._set_waiting(None)
        return f"bath {status.get('bath_temp')} °C, stable for {s.stable_for:g} s"

    def _set_waiting(self, why: str | None) -> None:
        self.waiting = why
        self.reporter.changed(self)

    def _modules(self, step: ModuleStep) -> str:
        modules = self.recipe.step_modules(step)
        for i, module in enumerate(modules):
            if i:
                self._checkpoint(pausable=False)
            if step.module:
                self.lab.module_on(module)
                if module not in self.powered:
                    self.powered.append(module)
            else:
                self.lab.module_off(module)
                if module in self.powered:
                    self.powered.remove(module)
        return f"{', '.join(modules)} {'ON' if step.module else 'OFF'}"

    def _hold(self, seconds: float) -> str:
        left = seconds if self._hold_left is None else self._hold_left
        self._hold_end = time.monotonic() + left
        self.reporter.changed(self)
        try:
            self.lab.hold(left, self._guard(True))
        except Aborted as exc:
            self._hold_left = max(0.0, self._hold_end - time.monotonic())
            raise Interrupted(self._kind, exc.reason) from None
        finally:
            self._hold_end = None
        self._hold_left = None
        return f"held {seconds:g} s"

    def _scan(self, step: IvScanStep) -> str:
        params = {**step.ivscan.model_dump(exclude_unset=True), "recipe": self.run_id}
        scans: dict[str, str] = {}
        try:
            for module in self.recipe.step_modules(step):
                answer = self.lab.command(DCS.command("ivscan", module), params)
                scans[module] = answer["scans"][module]
                self._scanning[module] = scans[module]
                self.scans.append({"scan": scans[module], "module": module, "path": self.path,
                                   "outcome": None})  # fmt: skip
                self.reporter.changed(self)
            ended = self.lab.wait_iv_scans(scans, self._scan_progress,
                                           abort=self._guard(False))  # fmt: skip
        except Aborted as exc:
            kind = self._kind
            self._stop_scans(scans, exc.reason)
            raise Interrupted(kind, exc.reason) from None
        except DcsError:
            self._stop_scans(scans, "the recipe's scan step failed")
            raise
        finally:
            for module in scans:
                self._scanning.pop(module, None)
        results = []
        for module, scan in ended.items():
            self._scan_progress(module, scan)
            outcome = scan.get("outcome")
            if outcome == "interlock":
                raise Interrupted("interlock", f"IV scan {scan.get('scan')} of {module}: "
                                  f"{scan.get('reason')}")  # fmt: skip
            if outcome not in SCAN_RESULTS:
                raise StepFailed(f"IV scan {scan.get('scan')} of {module} {outcome}: "
                                 f"{scan.get('reason')}")  # fmt: skip
            results.append(f"{module} {scan.get('scan')} {outcome}")
        return "IV scans: " + ", ".join(results)

    def _scan_progress(self, module: str, scan: dict[str, Any]) -> None:
        outcome = scan.get("outcome")  # read from MQTT: into our status only a string, or null
        outcome = outcome if isinstance(outcome, str) else None
        for entry in self.scans:
            if entry["scan"] == scan.get("scan") and entry["outcome"] != outcome:
                entry["outcome"] = outcome
                self.reporter.changed(self)

    def _stop_scans(self, scans: dict[str, str], why: str) -> str:
        """Stop the scans `scans` (module -> id) and wait for their end (bounded). Not when the
        dcs daemon is stopping: it stops them itself, and answers no command meanwhile."""
        running = dict(scans)
        if self._stopping:
            return ""
        for module in list(running):
            try:
                self.lab.stop_iv_scan(module)
            except CommandRefused:  # it had ended already
                pass
            except DcsError as exc:
                log.error("recipe %s: stopping the scan of %s: %s", self.run_id, module, exc)
        if running:
            try:
                ended = self.lab.wait_iv_scans(running, self._scan_progress,
                                               timeout=SAFE_TIMEOUT)  # fmt: skip
            except DcsError as exc:
                return f"the scans of {', '.join(running)} did not end: {exc}"
            for module, scan in ended.items():
                self._scan_progress(module, scan)
            return f"IV scans of {', '.join(running)} stopped ({why})"
        return ""

    # -- leaving it safe --------------------------------------------------------------------------
    def _make_safe(self, final: bool = False) -> str:
        """Scans stopped, the run's modules off (through the sequencer; HV through the power
        daemon when the dcs daemon is stopping), `safe_setpoint` at the end; what was done."""
        lab, done = self.lab, []
        if self._scanning:
            done.append(self._stop_scans(dict(self._scanning), "leaving it safe"))
        modules = list(self.recipe.modules)
        failed = []
        if self._stopping:
            for module in modules:
                try:
                    lab.switch(module, False, wait=False)
                except DcsError as exc:
                    failed.append(f"{module}: {exc}")
            done.append(f"HV of {', '.join(modules)} switched off (the dcs daemon is stopping: "
                        "no sequencer, LV left as it was)")  # fmt: skip
        else:
            for module in modules:
                try:
                    self._module_off(module)
                except DcsError as exc:
                    failed.append(f"{module}: {exc}")
            done.append(f"{', '.join(modules)} switched off (sequencer)")
        if failed:
            done.append("not switched off: " + "; ".join(failed))
        if final and self.recipe.safe_setpoint is not None:
            try:
                lab.set_chiller(self.recipe.safe_setpoint, wait=False, chiller=self.chiller)
                done.append(f"chiller set to {self.recipe.safe_setpoint:g} °C")
            except DcsError as exc:
                done.append(f"chiller not set to {self.recipe.safe_setpoint:g} °C: {exc}")
        return "; ".join(d for d in done if d)

    def _module_off(self, module: str) -> None:
        """The module off through the sequencer; an `off` already running is waited for."""
        try:
            self.lab.module_off(module)
        except CommandRefused as exc:
            if "busy switching off" not in exc.error:
                raise

            def off() -> bool | None:
                state = (self.lab.module_state(module) or {}).get("state")
                return True if state not in ("SWITCHING_OFF", None) else None

            self.lab.wait_until(off, SAFE_TIMEOUT, f"{module} switched off")

    def _finish(self, outcome: str, reason: str) -> None:
        with self._lock:  # ABORTING: leaving it safe
            self.state = self.state if outcome == "completed" else "ABORTING"
            self.outcome, self.reason = outcome, reason
            self.paused = self.waiting = None
        self.reporter.changed(self)
        log.info("recipe run %s: %s (%s)", self.run_id, outcome, reason)
        if outcome != "completed":
            self.reason = f"{reason}; {self._make_safe(final=True)}"
        state = "COMPLETED" if outcome == "completed" else (
            "FAILED" if outcome == "failed" else "ABORTED")  # fmt: skip
        ended = unix_time(self.clock())
        self._write_record({"state": state, "ended": ended})
        with self._lock:  # published: the run is over, its modules safe, its record written
            self.state, self.ended = state, ended
        event = {"COMPLETED": "done", "FAILED": "failed"}.get(self.state, "aborted")
        self.reporter.event(self, event, f"{outcome}: {self.reason}", outcome == "completed")
        self.reporter.changed(self)

    def _write_record(self, final: dict[str, Any]) -> None:
        """`<results_dir>/recipes/<run id>.json`: the run, its steps and its scans."""
        if self.results_dir is None:
            return
        record = {**self.status(), **final, "description": self.recipe.description,
                  "log": self.log}  # fmt: skip
        path = self.results_dir / "recipes" / f"{self.run_id}.json"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(record, indent=1) + "\n")
        except OSError as exc:
            log.error("recipe run %s: record not written to %s: %s", self.run_id, path, exc)
            self.reason = f"{self.reason}; record not written: {exc.strerror}"

    # -- what the service publishes ---------------------------------------------------------------
    def time_left(self) -> tuple[float | None, float | None]:
        """The running hold's time left, and that plus every hold still to come, s."""
        if self.finished():
            return None, None
        if self._hold_end is not None and self.state != "PAUSED":
            current = max(0.0, self._hold_end - time.monotonic())
        else:
            current = self._hold_left
        later = 0.0
        for steps, index, rep, reps in self._frames:
            later += self.recipe.hold_time(steps[index + 1 :]) + (reps - rep) * (
                self.recipe.hold_time(steps)
            )
        return (None if current is None else round(current, 1)), round((current or 0.0) + later, 1)

    def status(self) -> dict[str, Any]:
        current, total = self.time_left()
        inner = self._frames[-1] if len(self._frames) > 1 else None
        return {
            "state": self.state, "recipe": self.recipe.name, "run": self.run_id,
            "file": self.recipe.source, "operator": self.operator,
            "modules": list(self.recipe.modules), "step": self.step, "steps": self.steps,
            "path": self.path, "text": self.text,
            "repetition": inner[2] if inner else None, "repetitions": inner[3] if inner else None,
            "time_left": current, "min_time_left": total, "waiting": self.waiting,
            "paused": self.paused, "on_interlock": self.recipe.on_interlock,
            "outcome": self.outcome, "reason": self.reason,
            "scans": [dict(s) for s in self.scans], "started": self.started,
            "ended": self.ended, "id": self.request_id,
        }  # fmt: skip
