"""One module's IV scan: a blocking procedure on the Python client (`trackerdcs.client.Lab`),
run by the dcs daemon in a thread of its own per module.

1. Remember the channel's set point, on/off state and current limit; set the current limit
   (I0Set) to the scan's compliance, so that the supply itself trips beyond it.
2. Go to the first voltage (switching the channel on there if it was off).
3. At each voltage: ramp there (`set_voltage(wait=True)`), wait `settle` s, take `readings`
   readings of `imon` `interval` s apart; the step's point: the `vmon` readback, the mean and
   spread of `imon`, the module's temperature, the room's temperature, humidity and dew point.
4. Stop early at compliance (a reading at or above it, or the channel tripped), at breakdown
   (`trackerdcs.ivscan.analysis.breakdown`), on an active interlock rule holding the module,
   or on a stop command; an error (a refused command, a wait that timed out) ends it too.
5. Leave the channel safe: a completed scan does its `end` action (`ramp_down`: off, at 0 V;
   `previous`: back to the voltage and on/off state it had); every other ending ramps it down
   (off, at 0 V). Then the set point and the current limit it had are restored.
6. Write the results (`trackerdcs.ivscan.results`): CSV and PNG.

Every change is reported to a `Reporter` (the service publishes status, points, audit events).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Protocol

from trackerdcs.client import Aborted, Channel, ChannelFault, CommandRefused, DcsError, Lab
from trackerdcs.ivscan.analysis import breakdown, mean_and_spread
from trackerdcs.ivscan.plan import ScanPlan
from trackerdcs.mqtt import unix_time
from trackerdcs.topics import ServiceTopics

log = logging.getLogger(__name__)

OUTCOMES = ("completed", "compliance", "breakdown", "interlock", "stopped", "error")
TRIP_FLAGS = frozenset({"OVC", "INT_TRIP", "EXT_TRIP"})
# the power daemon's refusal of `switch on` under an active rule (trackerdcs.power.channel)
INHIBIT = "inhibited by interlock"


class Reporter(Protocol):
    def changed(self, scan: IvScan) -> None: ...

    def point(self, scan: IvScan, point: dict[str, Any]) -> None: ...

    def event(self, scan: IvScan, event: str, text: str, ok: bool | None = None) -> None: ...


class _End(Exception):
    """The scan ends early: `outcome` (one of OUTCOMES) and why."""

    def __init__(self, outcome: str, reason: str) -> None:
        super().__init__(reason)
        self.outcome, self.reason = outcome, reason


class IvScan:
    """One module's scan. `run()` blocks until the scan has ended and its channel is safe."""

    def __init__(
        self, lab: Lab, plan: ScanPlan, reporter: Reporter, results_dir: Path,
        clock=time.time,
    ) -> None:  # fmt: skip
        self.lab = lab
        self.plan = plan
        self.reporter = reporter
        self.results_dir = results_dir
        self.clock = clock
        self.state = "RUNNING"  # RUNNING, FINISHING, then COMPLETED, STOPPED or FAILED
        self.points: list[dict[str, Any]] = []
        self.step = 0  # steps measured
        self.vset: float | None = None
        self.outcome: str | None = None
        self.reason: str | None = None
        self.files: list[str] = []
        self.started = unix_time(clock())
        self.ended: float | None = None  # set once everything is done, files written
        self.end_time: float | None = None  # when the channel was safe (the results' end time)
        self.before: Channel | None = None
        self.touched = False  # a command was sent to the channel (there is something to undo)
        self.environment_start: dict[str, Any] = {}
        self.environment_end: dict[str, Any] = {}
        self._stop: tuple[str, str] | None = None  # (outcome, reason) asked from outside
        self._abort_outcome = "stopped"

    # -- control (any thread) ---------------------------------------------------------------------
    def stop(self, reason: str, outcome: str = "stopped") -> None:
        """Ask the scan to stop (it ramps its channel down and records `reason`)."""
        if self._stop is None:
            self._stop = (outcome, reason)
        self.lab.wake()

    def abort(self) -> str | None:
        """Why the scan must stop now: a stop asked for, or an active interlock rule."""
        if self._stop is not None:
            self._abort_outcome = self._stop[0]
            return self._stop[1]
        rules = self.lab.interlocks(self.plan.module)
        if rules:
            self._abort_outcome = "interlock"
            return "; ".join(f"interlock {r.get('name')}: {r.get('reason')}" for r in rules)
        return None

    # -- the procedure ----------------------------------------------------------------------------
    def run(self) -> None:
        plan = self.plan
        self.reporter.event(self, "start", f"IV scan {plan.scan_id} of {plan.module} on "
                            f"{plan.channel}: {self._describe_plan()}")  # fmt: skip
        self.reporter.changed(self)
        outcome, reason = "completed", f"completed {len(plan.voltages)} steps"
        try:
            self._prepare()
            for i, volts in enumerate(plan.voltages):
                self._measure(i, volts)
        except _End as end:
            outcome, reason = end.outcome, end.reason
        except Aborted as exc:
            outcome, reason = self._abort_outcome, exc.reason
        except ChannelFault as exc:
            tripped = exc.channel.state == "TRIPPED" and TRIP_FLAGS & set(exc.channel.flags)
            outcome = "compliance" if tripped else "error"
            at = f" at {self.vset:g} V" if self.vset is not None else ""
            reason = (f"{exc.channel.name} tripped{at} (compliance {plan.compliance:g} uA): "
                      f"{exc}") if tripped else str(exc)  # fmt: skip
        except CommandRefused as exc:  # the power daemon's own inhibit is an interlock too
            outcome = "interlock" if INHIBIT in exc.error else "error"
            reason = str(exc)
        except DcsError as exc:
            outcome, reason = "error", str(exc)
        except Exception as exc:  # never end the thread silently
            log.exception("IV scan %s failed", plan.scan_id)
            outcome, reason = "error", f"unexpected error: {exc!r}"
        self._finish(outcome, reason)

    def _describe_plan(self) -> str:
        p = self.plan.parameters
        return (f"{p['start']:g} -> {p['stop']:g} V by {p['step']:g} V ({len(self.plan.voltages)} "
                f"steps), compliance {p['compliance']:g} uA, end {p['end']}")  # fmt: skip

    def _prepare(self) -> None:
        plan, lab = self.plan, self.lab
        self.before = before = lab.channel(plan.channel)
        self.environment_start = self.environment()
        if (reason := self.abort()) is not None:
            raise Aborted(reason)  # before anything was written: nothing to undo
        self.touched = True
        lab.set_current_limit(plan.channel, plan.compliance)
        first = plan.voltages[0]
        self.vset = first
        if before.on:
            lab.set_voltage(plan.channel, first, abort=self.abort)
        else:
            lab.set_voltage(plan.channel, first)
            lab.switch(plan.channel, True, abort=self.abort)

    def _measure(self, index: int, volts: float) -> None:
        plan, lab = self.plan, self.lab
        self.vset = volts
        if index:
            lab.set_voltage(plan.channel, volts, abort=self.abort)
        lab.hold(plan.settle, self.abort)
        imons: list[float] = []
        vmons: list[float] = []
        for k in range(plan.readings):
            if k:
                lab.hold(plan.interval, self.abort)
            channel = lab.channel(plan.channel)
            # by its state: `on` (the Pw readback) may lag the Status readback by a message
            if channel.state in ("TRIPPED", "ERROR", "DISCONNECTED", "OFF", "RAMPING_DOWN"):
                raise ChannelFault(f"{channel.describe()} during the readings", channel)
            imons.append(channel.imon)
            vmons.append(channel.vmon)
            if abs(channel.imon) >= plan.compliance:
                break
        imon, spread = mean_and_spread(imons)
        point = {
            "scan": plan.scan_id, "module": plan.module, "channel": plan.channel,
            "step": index + 1, "vset": float(volts), "vmon": round(mean_and_spread(vmons)[0], 4),
            "imon": round(imon, 6), "imon_std": round(spread, 6), "readings": len(imons),
            **self.environment(), "time": unix_time(self.clock()),
        }  # fmt: skip
        self.points.append(point)
        self.step = index + 1
        self.reporter.point(self, point)
        self.reporter.changed(self)
        worst = max(abs(i) for i in imons)
        if worst >= plan.compliance:
            raise _End("compliance", f"{worst:g} uA at {volts:g} V reached the compliance "
                       f"{plan.compliance:g} uA")  # fmt: skip
        if len(self.points) > 1:
            prev = self.points[-2]
            k = breakdown(prev["vmon"], prev["imon"], point["vmon"], point["imon"],
                          plan.breakdown_slope, plan.breakdown_min_current)  # fmt: skip
            if k is not None:
                raise _End("breakdown", f"breakdown at {volts:g} V: the current grows as V^"
                           f"{k:.1f} from {prev['vset']:g} V ({prev['imon']:.4g} uA) to "
                           f"{volts:g} V ({imon:.4g} uA), beyond the criterion k > "
                           f"{plan.breakdown_slope:g}")  # fmt: skip

    def environment(self) -> dict[str, Any]:
        """The module's temperature and the room's temperature, humidity and dew point now
        (null when unknown or stale)."""
        lab = self.lab
        module_sensor = next((s for s in lab.lab.sensors if s.module == self.plan.module), None)
        status = lab.latest(ServiceTopics(module_sensor.prefix).status) if module_sensor else None
        room = next((s for s in lab.lab.sensors if s.kind.value == "room"), None)
        air = (lab.latest(ServiceTopics(room.prefix).status) if room else None) or {}

        def number(obj: Any, key: str) -> float | None:
            value = obj.get(key) if isinstance(obj, dict) else None
            return float(value) if isinstance(value, int | float) and not isinstance(
                value, bool) else None  # fmt: skip

        return {
            "temperature": number(status, "temperature"),
            "room_temperature": number(air, "temperature"),
            "humidity": number(air, "humidity"),
            "dewpoint": number(air, "dewpoint"),
        }

    # -- the end ----------------------------------------------------------------------------------
    def _finish(self, outcome: str, reason: str) -> None:
        plan = self.plan
        self.state, self.outcome, self.reason = "FINISHING", outcome, reason
        self.reporter.changed(self)
        log.info("IV scan %s: %s (%s)", plan.scan_id, outcome, reason)
        left = self._make_safe(outcome)
        self.reason = f"{reason}; {left}"
        self.environment_end = self.environment()
        self.end_time = unix_time(self.clock())
        try:
            from trackerdcs.ivscan.results import write_results  # matplotlib: only here

            self.files = [str(p) for p in write_results(self, self.results_dir)]
        except Exception as exc:
            log.exception("IV scan %s: results not written", plan.scan_id)
            self.reason += f"; results not written: {exc}"
        self.ended = self.end_time  # published: the scan is over and its files are written
        self.state = {"completed": "COMPLETED", "error": "FAILED"}.get(outcome, "STOPPED")
        ok = outcome == "completed"
        self.reporter.event(self, {"COMPLETED": "done", "FAILED": "failed"}.get(
            self.state, "stopped"), f"{outcome}: {self.reason}", ok)  # fmt: skip
        self.reporter.changed(self)

    def _make_safe(self, outcome: str) -> str:
        """Leave the channel safe (see the module's doc); what was done, for the reason."""
        plan, lab, before = self.plan, self.lab, self.before
        channel = plan.channel
        try:
            if before is None or not self.touched:  # stopped before its first command
                return f"{channel} not touched"
            if outcome == "completed" and plan.end == "previous":
                lab.set_voltage(channel, before.vreq)
                if not before.on:
                    lab.switch(channel, False)
                done = f"{channel} back at {before.vreq:g} V ({'on' if before.on else 'off'})"
            else:
                lab.switch(channel, False)
                lab.set_voltage(channel, before.vreq)  # off: the set point it had, not the scan's
                done = f"{channel} ramped down and off"
            lab.set_current_limit(channel, before.ilim)
            return f"{done}, current limit {before.ilim:g} uA"
        except DcsError as exc:
            log.error("IV scan %s: leaving %s safe: %s", plan.scan_id, channel, exc)
            return f"leaving {channel} safe failed: {exc}"

    # -- what the service publishes ---------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        last = self.points[-1] if self.points else {}
        return {
            "state": self.state,
            "scan": self.plan.scan_id,
            "channel": self.plan.channel,
            "operator": self.plan.operator,
            "step": self.step,
            "steps": len(self.plan.voltages),
            "vset": self.vset,
            "vmon": last.get("vmon"),
            "imon": last.get("imon"),
            "outcome": self.outcome,
            "reason": self.reason,
            "files": list(self.files),
            "started": self.started,
            "ended": self.ended,
            "id": self.plan.request_id,
            "recipe": self.plan.recipe,
        }
