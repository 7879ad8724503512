"""The chiller's MQTT service (`/julabo`), on the daemon's asyncio loop.

Polls and lost lines arrive from the line worker through `call_soon_threadsafe`, so the service's
state is only touched from the loop. A command is checked here (payload, range, state) before
anything is queued for the line: a refused command sends nothing. An accepted command is answered
once the worker has written it and read it back (back on the loop: `MqttLink.execute_soon`).

Topic contract (docs/topics.md): `<prefix>/status` (retained JSON, on change and every
`heartbeat` s), `<prefix>/availability`, `<prefix>/cmd/{setpoint,switch,refresh,reconnect}`,
answers on `<prefix>/response`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Protocol

from trackerdcs.commands import CommandError, parse_number, parse_switch
from trackerdcs.config import JulaboConfig
from trackerdcs.dispatch import CommandRegistry
from trackerdcs.guard import FAULTS, clip
from trackerdcs.julabo.device import Applied, Julabo, Value
from trackerdcs.julabo.fsm import Chiller, ChillerCommand, Poll
from trackerdcs.julabo.protocol import ProtocolError, ReadbackMismatch
from trackerdcs.julabo.worker import DoneFn, JobFn
from trackerdcs.mqtt import Command, MqttLink, PayloadError, unix_time
from trackerdcs.payloads import ChillerStatus, dump
from trackerdcs.topics import ServiceTopics

log = logging.getLogger(__name__)


class Line(Protocol):
    """What the service needs from the line worker."""

    def submit(self, fn: JobFn, done: DoneFn) -> None: ...

    def reconnect(self, done: DoneFn) -> None: ...

    def alive(self) -> bool: ...


@dataclass(frozen=True)
class Job:
    """A command accepted by the service, to be run on the line."""

    fn: JobFn | None  # None: reconnect the line


# The topic contract's commands, declared on their handlers below (`@COMMANDS.command`).
COMMANDS = CommandRegistry()
COMMAND_TABLE = COMMANDS.table


def write_setpoint(value: float) -> JobFn:
    """Write the set point the unit regulates to, verified by read-back: the active one, read
    from the unit first (`IN_MODE_01`); set point 1 on a unit with one set point. While the
    unit does not say which is active, nothing is written (`ProtocolError`, the refusal):
    writing set point 1 of a unit regulating to set point 2 would change nothing it does."""

    def job(device: Julabo) -> Applied:
        index: Value | None = 0
        if device.has("active_setpoint"):
            try:
                index = device.read("active_setpoint")
            except ProtocolError as exc:  # a timeout too: refused, not a lost line
                raise ProtocolError(
                    f"the active set point is unknown ({exc}): nothing was written; "
                    "send the set point again"
                ) from None
            if index is None:
                raise ProtocolError(
                    "the active set point is unknown (IN_MODE_01 gave no value): nothing was "
                    "written; send the set point again"
                )
        return device.apply(f"setpoint_{int(index) + 1}", value)

    return job


def switch(on: bool) -> JobFn:
    """Start or stop temperature control (`OUT_MODE_05`), verified by read-back."""

    def job(device: Julabo) -> Applied:
        return device.apply("running", on)

    return job


class JulaboService:
    """Status publishing and command handling for one chiller."""

    def __init__(
        self,
        cfg: JulaboConfig,
        chiller: Chiller,
        line: Line,
        link: MqttLink,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.cfg = cfg
        self.prefix = cfg.prefix
        self.chiller = chiller
        self.line = line
        self.link = link
        self.loop = loop
        self._published: dict[str, Any] | None = None
        self._heartbeat: asyncio.TimerHandle | None = None
        self.observed_at = time.time()  # unix s of the line worker's latest report

    # -- from the line worker (on the loop) ------------------------------------------------------
    def on_poll(self, poll: Poll) -> None:
        self._observe(poll, None)

    def on_line_lost(self, reason: str) -> None:
        self._observe(None, reason)

    def _observe(self, poll: Poll | None, reason: str | None) -> None:
        before = self.chiller.state
        self.observed_at = time.time()
        if self.chiller.observe(poll, reason):
            log.info("chiller %s -> %s%s", before, self.chiller.state, _why(self.chiller.error))
        if self.chiller.as_status() != self._published:
            self.publish_status()

    # -- publishing ------------------------------------------------------------------------------
    def publish_status(self) -> None:
        """Publish now: `time` is when the line worker last reported (a poll of the unit, or a
        failed attempt to reach it), or the daemon's start before its first report."""
        if self._heartbeat is not None:  # first: a payload that fails never ends the heartbeat
            self._heartbeat.cancel()
        self._heartbeat = self.loop.call_later(self.cfg.heartbeat, self._on_heartbeat)
        status = self.chiller.as_status()
        self._published = status
        stamped = dump(ChillerStatus(**status, time=unix_time(self.observed_at)))
        self.link.publish_state(ServiceTopics(self.prefix).status, json.dumps(stamped))

    def _on_heartbeat(self) -> None:
        """Republish what the line worker produced last, if it is alive: a dead worker's last
        status is never passed off as live (the daemon exits, its supervisor restarts it)."""
        self._heartbeat = None
        if not self.line.alive():
            FAULTS.fatal(f"{self.prefix}: the line worker thread has ended")
            return
        self.publish_status()

    def stop(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()

    # -- commands --------------------------------------------------------------------------------
    def handle_command(self, cmd: Command) -> None:
        """Check, queue for the line, answer when done. A refused command sends nothing."""
        try:
            outcome = self._dispatch(cmd)
        except (CommandError, PayloadError) as exc:
            self.link.respond(cmd, False, str(exc))
            return
        if not isinstance(outcome, Job):
            self.link.respond(cmd, True, None)
            return
        done = self._answer_later(cmd)
        if outcome.fn is None:
            self.line.reconnect(done)
        else:
            self.line.submit(outcome.fn, done)

    def _answer_later(self, cmd: Command) -> DoneFn:
        def done(result: Any, error: Exception | None) -> None:
            self.link.execute_soon(self._finish, cmd, result, error)  # from the line's thread

        return done

    def _finish(self, cmd: Command, result: Any, error: Exception | None) -> None:
        if error is None and isinstance(result, Applied) and result.warning is not None:
            # applied, but the unit complained (-13: outside its warning limits, stored anyway)
            self.link.respond(cmd, True, None, warning=f"the unit reported {result.warning}")
        elif error is None:
            self.link.respond(cmd, True, None)
        elif isinstance(error, ReadbackMismatch) and error.status is not None:
            self.link.respond(cmd, False, f"the unit refused it: {error.status}")
        else:
            self.link.respond(cmd, False, str(error))

    def _dispatch(self, cmd: Command) -> Job | None:
        spec = COMMAND_TABLE.get(cmd.action)
        if spec is None:
            topics = ServiceTopics(self.prefix)
            known = ", ".join(topics.command(s.usage) for s in COMMAND_TABLE.values())
            raise CommandError(f"unknown command {clip(cmd.action, 60)} (known: {known})")
        value, _ = cmd.decoded()
        return spec.handler(self, value)

    def _check_allowed(self, command: ChillerCommand) -> None:
        reason = self.chiller.refusal(command)
        if reason:
            raise CommandError(reason)

    @COMMANDS.command("setpoint", payload="°C")
    def _cmd_setpoint(self, value: Any) -> Job:
        celsius = parse_number(value, "set point")
        low, high = self.cfg.setpoint_min, self.cfg.setpoint_max
        if celsius > high:
            raise CommandError(f"{celsius:g} C exceeds the maximum set point {high:g} C")
        if celsius < low:
            raise CommandError(f"{celsius:g} C is below the minimum set point {low:g} C")
        self._check_allowed(ChillerCommand.SET_SETPOINT)
        return Job(write_setpoint(celsius))

    @COMMANDS.command("switch", payload="`on` / `off`")
    def _cmd_switch(self, value: Any) -> Job:
        on = parse_switch(value)
        self._check_allowed(ChillerCommand.SWITCH_ON if on else ChillerCommand.SWITCH_OFF)
        return Job(switch(on))

    @COMMANDS.command("refresh")
    def _cmd_refresh(self, value: Any) -> None:
        self.publish_status()

    @COMMANDS.command("reconnect")
    def _cmd_reconnect(self, value: Any) -> Job:
        return Job(None)


def _why(error: str | None) -> str:
    return f" ({error})" if error else ""
