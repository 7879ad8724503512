"""Module sequencing: `/dcs/cmd/module/{name}` `on` / `off` (`{name}` a module or `all`).

- on: LV on, wait until every LV channel of the module is ON within tolerance, HV on, wait until
  the HV is ON within tolerance;
- off: HV off, wait until it is OFF (at 0 V within tolerance), LV off, wait until it is OFF.

Each step is reported on `/dcs/action` as it ends and in the command's answer on
`/dcs/response`. A failed `on` rolls the module back to off (HV first) and says why; a failed
`off` stops where it is (the LV stays on while the HV has not reached 0 V). Waits are bounded by
`ramp_factor x ramp time + settle_time`, the ramp time in the board's own terms (`|dV| / rup` or
`rdwn` on boards that ramp by rate, `ruptime` or `rdwtime` on boards that ramp by time); a
channel that trips, fails or disconnects ends the wait at once. `all` runs every module's
sequence side by side; `off` cancels a running `on`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from trackerdcs.commands import CommandError, parse_switch
from trackerdcs.config import ChannelKind, LabConfig
from trackerdcs.guard import FAULTS, clip
from trackerdcs.mqtt import Command, MqttLink, PayloadError, unix_time
from trackerdcs.payloads import SequenceAction, SequencerStatus, SequenceStep, dump
from trackerdcs.safety.sender import CommandSender
from trackerdcs.safety.world import World
from trackerdcs.topics import DCS, ServiceTopics

log = logging.getLogger(__name__)

SOURCE = "dcs"
PREFIX = DCS.prefix
COMMANDS = ("module/{name}",)  # under /dcs/cmd/
FAULT_STATES = frozenset({"TRIPPED", "ERROR", "DISCONNECTED"})
OFF_STATES = frozenset({"OFF", "TRIPPED", "ERROR"})


class StepFailed(Exception):
    """A step that did not succeed: its message says why."""


class Conditions:
    """Waits on the world: `check()` is asked again after every status update."""

    def __init__(self) -> None:
        self._waiting: list[tuple[Callable[[], Any], asyncio.Future[Any]]] = []

    async def wait(self, check: Callable[[], Any], timeout: float) -> Any:
        """The first non-None result of `check`; TimeoutError after `timeout` s."""
        result = check()
        if result is not None:
            return result
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        entry = (check, future)
        self._waiting.append(entry)
        try:
            return await asyncio.wait_for(future, timeout)
        finally:
            self._waiting.remove(entry)

    def changed(self) -> None:
        for check, future in list(self._waiting):
            if future.done():
                continue
            try:
                result = check()
            except Exception as exc:  # ends that wait (its sequence fails, reported)
                future.set_exception(exc)
                continue
            if result is not None:
                future.set_result(result)


@dataclass
class Run:
    """One module's sequence: its steps so far."""

    module: str
    on: bool
    request_id: str | None
    steps: list[dict[str, Any]] = field(default_factory=list)


class SequencerService:
    def __init__(
        self,
        lab: LabConfig,
        link: MqttLink,
        loop: asyncio.AbstractEventLoop,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.lab = lab
        self.cfg = lab.sequencer
        self.link = link
        self.loop = loop
        self.clock = clock
        self.world = World(lab)
        self.sender = CommandSender(link, SOURCE)
        self.conditions = Conditions()
        self._channel_cfg = {ch.name: ch for ch in lab.power.channels}
        self.modules = list(self.world.modules)
        self.running: dict[str, tuple[bool, asyncio.Task]] = {}
        self._heartbeat: asyncio.TimerHandle | None = None
        self.states: dict[str, dict[str, Any]] = {
            m: {"state": "IDLE", "step": None, "error": None, "since": unix_time(clock())}
            for m in self.modules
        }

    @staticmethod
    def subscriptions(lab: LabConfig) -> tuple[str, ...]:
        prefixes = sorted({p for crate in lab.crates for p in crate.prefixes.values()})
        services = [ServiceTopics(p) for p in prefixes]
        return tuple(t for s in services for t in (s.status, s.response))

    # -- input (on the loop) ----------------------------------------------------------------------
    def on_message(self, topic: str, payload: bytes, retained: bool = False) -> None:
        if topic.endswith("/response"):
            self.sender.on_response(payload)
        elif self.world.update(topic, payload, self.loop.time(), retained) is not None:
            self.conditions.changed()

    def handle_command(self, cmd: Command) -> None:
        try:
            modules, on = self._parse(cmd)
            busy = [
                f"{m} is busy switching {'on' if self.running[m][0] else 'off'}"
                for m in modules
                if m in self.running and (on or not self.running[m][0])  # off may cancel an on
            ]
            if busy:
                raise CommandError("; ".join(busy))
        except (CommandError, PayloadError) as exc:
            self.link.respond(cmd, False, str(exc))
            return
        for module in modules:
            previous = self.running.get(module)
            if previous is not None:  # an `off` cancels a running `on`
                log.warning("%s: switching on cancelled by %s", module, cmd.request_id())
                previous[1].cancel()
        tasks = {m: self.loop.create_task(self._sequence(m, on, cmd.request_id())) for m in modules}
        for module, task in tasks.items():
            self.running[module] = (on, task)
        self.loop.create_task(self._answer(cmd, tasks))

    def _parse(self, cmd: Command) -> tuple[list[str], bool]:
        parts = cmd.parts
        if len(parts) != 2 or parts[0] != "module" or not parts[1]:
            raise CommandError(
                f"unknown command {clip(cmd.action, 60)} (known: {DCS.command(COMMANDS[0])} "
                "with on or off)"
            )
        value, _ = cmd.decoded()
        on = parse_switch(value)
        if parts[1] == "all":
            return list(self.modules), on
        if parts[1] not in self.modules:
            known = ", ".join(self.modules) or "none"
            raise CommandError(f"unknown module {clip(parts[1], 60)} (known: {known}, or all)")
        return [parts[1]], on

    async def _answer(self, cmd: Command, tasks: dict[str, asyncio.Task]) -> None:
        results = await asyncio.gather(*tasks.values(), return_exceptions=True)
        outcomes = {
            m: r if isinstance(r, dict) else {"ok": False, "error": repr(r), "steps": []}
            for m, r in zip(tasks, results, strict=True)
        }
        errors = [f"{m}: {o['error']}" for m, o in outcomes.items() if not o["ok"]]
        self.link.execute(
            lambda c: self.link.respond(c, not errors, "; ".join(errors) or None, modules=outcomes),
            cmd,
        )

    # -- one module -------------------------------------------------------------------------------
    async def _sequence(self, module: str, on: bool, request_id: str | None) -> dict[str, Any]:
        run = Run(module, on, request_id)
        self._set_state(module, "SWITCHING_ON" if on else "SWITCHING_OFF")
        self._event(run, "start", None, f"switching {module} {'on' if on else 'off'}")
        try:
            await (self._switch_on(run) if on else self._switch_off(run, ""))
        except StepFailed as exc:
            error = str(exc)
            if on:
                error += await self._roll_back(run)
            self._finish(run, "FAILED", error)
            return {"ok": False, "error": error, "steps": run.steps}
        except asyncio.CancelledError:
            error = "cancelled by an off command"
            self._step(run, "cancelled", False, error)
            self._finish(run, "FAILED", error, current=False)
            return {"ok": False, "error": error, "steps": run.steps}
        except Exception as exc:  # a bug, or data no check foresaw: the sequence fails
            error = FAULTS.fault(f"the sequence of {module}", exc, run.steps[-1:] or None)
            if on:
                error += await self._roll_back(run)
            self._finish(run, "FAILED", error)
            return {"ok": False, "error": error, "steps": run.steps}
        FAULTS.ok(f"the sequence of {module}")
        self._finish(run, "ON" if on else "OFF", None)
        return {"ok": True, "error": None, "steps": run.steps}

    async def _switch_on(self, run: Run) -> None:
        for kind in (ChannelKind.LV, ChannelKind.HV):
            if self.world.prefixes(run.module, kind):
                await self._command(run, f"{kind}_on", kind, "on")
                await self._settle(run, f"{kind}_ready", kind, on=True)

    async def _switch_off(self, run: Run, label: str) -> None:
        for kind in (ChannelKind.HV, ChannelKind.LV):
            if self.world.prefixes(run.module, kind):
                await self._command(run, f"{label}{kind}_off", kind, "off")
                await self._settle(run, f"{label}{kind}_down", kind, on=False)

    async def _roll_back(self, run: Run) -> str:
        """After a failed `on`: the module off again, HV first. Text to add to the error."""
        try:
            await self._switch_off(run, "rollback_")
        except StepFailed as exc:
            return f"; rollback failed: {exc}"
        return "; rolled back: module off"

    async def _command(self, run: Run, step: str, kind: ChannelKind, value: str) -> None:
        for prefix in self.world.prefixes(run.module, kind):
            topic = ServiceTopics(prefix).command("switch", run.module)
            timeout = self.cfg.answer_timeout
            try:
                answer = await self.sender.request(topic, value, run.module, timeout)
            except TimeoutError:
                raise self._fail(run, step, f"{topic}: no answer within {timeout:g} s") from None
            if not answer.get("ok"):  # refused, or (off) not written on every channel
                what = "not done on every channel" if answer.get("not_written") else "refused"
                raise self._fail(run, step, f"{topic} {value} {what}: {answer.get('error')}")
            self._step(run, step, True, f"{topic} {value}: ok")

    async def _settle(self, run: Run, step: str, kind: ChannelKind, on: bool) -> None:
        """Wait until the module's channels of `kind` are ON at their set point (or OFF at 0 V)
        within tolerance."""
        timeout = self._ramp_time(run.module, kind, on)
        seen_on: set[str] = set()

        def check() -> bool | str | None:
            channels = self.world.channels(run.module, kind)
            if any(c is None for c in channels):
                return None
            done = True
            for c in channels:
                assert c is not None
                name, state = c["name"], c["state"]
                if state in FAULT_STATES and (on or state == "DISCONNECTED"):
                    return f"{name} is {state} ({', '.join(c.get('flags', [])) or 'no flags'})"
                if on and c["on"]:
                    seen_on.add(name)
                elif on and name in seen_on:
                    return f"{name} was switched off while ramping up ({state})"
                tolerance = self._tolerance(name)
                if on:
                    done &= state == "ON" and abs(c["vmon"] - c["vreq"]) <= tolerance
                else:  # a tripped channel at 0 V is off too
                    done &= state in OFF_STATES and not c["on"] and abs(c["vmon"]) <= tolerance
            return True if done else None

        try:
            outcome = await self.conditions.wait(check, timeout)
        except TimeoutError:
            raise self._fail(
                run,
                step,
                f"{kind.value.upper()} of {run.module} not "
                f"{'ON' if on else 'OFF'} within {timeout:.0f} s: "
                f"{self._describe(run.module, kind)}",
            ) from None
        if outcome is not True:
            raise self._fail(run, step, outcome)
        self._step(run, step, True, self._describe(run.module, kind))

    def _ramp_time(self, module: str, kind: ChannelKind, on: bool) -> float:
        longest = 0.0
        for c in self.world.channels(module, kind):
            if c is None:
                continue
            limits = self.lab.limits_for(self._channel_cfg[c["name"]])
            dv = abs(c["vreq"] - c["vmon"]) if on else abs(c["vmon"])
            longest = max(longest, limits.ramp_seconds(dv, up=on))
        return self.cfg.ramp_factor * longest + self.cfg.settle_time

    def _tolerance(self, name: str) -> float:
        if self.cfg.tolerance is not None:
            return self.cfg.tolerance
        return self.lab.limits_for(self._channel_cfg[name]).on_tolerance

    def _describe(self, module: str, kind: ChannelKind) -> str:
        return ", ".join(
            f"{c['name']} {c['state']} {c['vmon']:g}/{c['vreq']:g} V" if c else "(no status yet)"
            for c in self.world.channels(module, kind)
        )

    # -- reporting --------------------------------------------------------------------------------
    def _fail(self, run: Run, step: str, why: str) -> StepFailed:
        self._step(run, step, False, why)
        return StepFailed(f"{step}: {why}")

    def _step(self, run: Run, step: str, ok: bool, detail: str) -> None:
        entry = dump(SequenceStep(step=step, ok=ok, detail=detail, time=unix_time(self.clock())))
        run.steps.append(entry)
        (log.info if ok else log.error)("%s %s: %s", run.module, step, detail)
        self.states[run.module]["step"] = step
        self._event(run, "step", step, detail, ok)
        self._publish_status()

    def _event(self, run: Run, event: str, step: str | None, text: str, ok: bool | None = None):
        payload = SequenceAction(
            time=unix_time(self.clock()),
            source=SOURCE,
            event=event,
            module=run.module,
            modules=[run.module],
            direction="on" if run.on else "off",
            step=step,
            ok=ok,
            text=text,
            id=run.request_id,
        )
        self.link.publish(DCS.action, json.dumps(dump(payload)), qos=1)

    def _finish(self, run: Run, state: str, error: str | None, current: bool = True) -> None:
        if current:  # a cancelled run leaves the state to the run that replaced it
            with contextlib.suppress(KeyError):
                if self.running[run.module][1] is asyncio.current_task():
                    del self.running[run.module]
            self._set_state(run.module, state, error)
        event = "done" if error is None else "failed"
        self._event(run, event, None, error or f"{run.module} {state}", error is None)

    def _set_state(self, module: str, state: str, error: str | None = None) -> None:
        self.states[module].update(state=state, error=error, since=unix_time(self.clock()))
        if state in ("ON", "OFF"):
            self.states[module]["step"] = None
        self._publish_status()

    def _publish_status(self) -> None:
        """`/dcs/status`, on change and every `sequencer.heartbeat` s (rescheduled first: a
        payload that fails never ends the heartbeat)."""
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        self._heartbeat = self.loop.call_later(self.cfg.heartbeat, self._publish_status)
        payload = SequencerStatus.model_validate(
            {"modules": self.states, "time": unix_time(self.clock())}
        )
        self.link.publish_state(DCS.status, json.dumps(dump(payload)))

    def start(self) -> None:
        self._publish_status()

    def stop(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        for _, task in self.running.values():
            task.cancel()
