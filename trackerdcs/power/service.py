"""The MQTT service of one kind of channel on one crate (`/hv` or `/lv`).

Runs on the daemon's asyncio loop: readbacks are handed to it with `call_soon_threadsafe`, commands
by its `MqttLink` (given the loop), so its state is only ever touched from one thread.

Topic contract (docs/topics.md): `<prefix>/status` (retained JSON array, one object per channel),
`<prefix>/state` (retained aggregate), `<prefix>/availability`, `<prefix>/cmd/...`, and answers
on `<prefix>/response`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections import Counter
from collections.abc import Callable
from enum import StrEnum
from typing import Any

from trackerdcs.commands import CommandError, parse_number, parse_switch
from trackerdcs.config import ChannelKind, PublishConfig
from trackerdcs.dispatch import CommandRegistry
from trackerdcs.guard import FAULTS, clip
from trackerdcs.mqtt import Command, MqttLink, PayloadError, unix_time
from trackerdcs.payloads import PowerState, dump
from trackerdcs.power.backend import BackendError, ChannelAddress, ParamAbsent, PowerBackend
from trackerdcs.power.channel import ChannelCommand, ChannelState, PowerChannel
from trackerdcs.topics import ServiceTopics

log = logging.getLogger(__name__)


class ServiceState(StrEnum):
    DISCONNECTED = "DISCONNECTED"
    ERROR = "ERROR"
    RAMPING = "RAMPING"
    ALL_ON = "ALL_ON"
    ALL_OFF = "ALL_OFF"
    MIXED = "MIXED"


def aggregate_state(states: list[ChannelState]) -> ServiceState:
    """The daemon's state from its channels', the most alarming first."""
    present = set(states)
    if not states or ChannelState.DISCONNECTED in present:
        return ServiceState.DISCONNECTED
    if present & {ChannelState.TRIPPED, ChannelState.ERROR}:
        return ServiceState.ERROR
    if present & {ChannelState.RAMPING_UP, ChannelState.RAMPING_DOWN}:
        return ServiceState.RAMPING
    if present == {ChannelState.ON}:
        return ServiceState.ALL_ON
    if present == {ChannelState.OFF}:
        return ServiceState.ALL_OFF
    return ServiceState.MIXED


class PartlyDone(CommandError):
    """An off or kill that could not be written on every target: answered `ok: false` with
    `extra` (`channels` switched off, `not_written`)."""

    def __init__(self, message: str, extra: dict[str, Any]) -> None:
        super().__init__(message)
        self.extra = extra


CONFIGURE_RETRY = 0.5  # s before writing a channel's settings again when the crate refused them
# ... doubling up to this while they keep waiting: a big crate's settings PVs connect seconds
# after its readbacks, and every retry of every channel costs (the bench's profile at start-up)
CONFIGURE_RETRY_MAX = 2.0

# The lab-YAML keys of the ramp-down parameter: (setting, value for `kill`), by CAEN name.
RAMP_DOWN_KEYS = {"RDWn": ("rdwn", "kill_rate"), "RDwTime": ("rdwtime", "kill_time")}


def settings_writes(ch: PowerChannel) -> list[tuple[str, float | int | str]]:
    """The protection settings written at every (re)connection: each parameter of the board
    model with a lab-YAML key that has a value, in the model's order."""
    writes = []
    for key, param in ch.model.settings.items():
        value = getattr(ch.limits, key, None)
        if value is not None:
            writes.append((param.name, value.value if isinstance(value, StrEnum) else value))
    return writes


# The topic contract's commands, declared on their handlers below (`@COMMANDS.command`).
COMMANDS = CommandRegistry()
COMMAND_TABLE = COMMANDS.table


class PowerService:
    """Status publishing and command handling for the channels of one prefix."""

    def __init__(
        self,
        kind: ChannelKind,
        prefix: str,
        channels: list[PowerChannel],
        backend: PowerBackend,
        link: MqttLink,
        publish: PublishConfig,
        loop: asyncio.AbstractEventLoop,
        on_command_done: Callable[[Command, dict], None] | None = None,
    ) -> None:
        self.kind = kind
        self.prefix = prefix
        self.channels = sorted(channels, key=lambda c: c.number)
        self.backend = backend
        self.link = link
        self.publish_cfg = publish
        self.loop = loop
        self.on_command_done = on_command_done
        self.by_address = {c.address: c for c in self.channels}
        self._by_number = {c.number: c for c in self.channels}
        self._by_name = {c.name: c for c in self.channels}
        self._published: dict[ChannelAddress, dict[str, float]] = {}
        self._next_publish = 0.0  # monotonic time before which no status goes out
        self._publish_handle: asyncio.Handle | None = None
        self._heartbeat_handle: asyncio.TimerHandle | None = None
        self._state: ServiceState | None = None
        self._state_payload: dict[str, Any] | None = None
        self._configured: set[ChannelAddress] = set()  # configured at least once (set points)
        self._settings_written: set[ChannelAddress] = set()  # since the last (re)connection
        self._pending: dict[ChannelAddress, list[tuple[str, float | int | str]]] = {}
        self._absent: dict[tuple[int, str], set[int]] = {}  # (board, param) -> channels
        self._warnings: list[str] = []  # `<prefix>/state` warnings
        # extra refusal rules from outside the channel (e.g. LV off while the module's HV is on)
        self.guards: list[Callable[[PowerChannel, ChannelCommand], str | None]] = []
        self.failsafe_note: str | None = None  # set when the daemon acted on its own
        # the last unexpected error handling a readback, and when (monotonic): in `warnings`
        # until a heartbeat finds it older than one heartbeat period
        self._fault: tuple[str, float] | None = None

    # -- readbacks --------------------------------------------------------------------------------
    def on_readback(self, addr: ChannelAddress, param: str, value: float | int) -> None:
        ch = self.by_address.get(addr)
        if ch is None:
            return
        was_ready = ch.ready
        was_garbled = param in ch.garbled
        changed = ch.update(param, value)
        changed_state = ch.observe()
        if changed_state:
            log.info("%s %s -> %s", self.prefix, ch.name, ch.state)
        if ch.ready and not was_ready:
            self._configure(ch)
        if was_garbled or param in ch.garbled:
            if changed:  # a value that cannot be taken, or a good one again
                log.warning("%s %s: %s", self.prefix, ch.name, ch.garbled.get(param, "valid again"))
                self._warnings = self._collect_warnings()
            if changed or changed_state:
                self.request_publish()
            return
        # on change only: a repeated value (a client echoing the status back as a set point, a
        # monitor posted on a same-value put) must not republish, or it feeds itself
        monitor = ch.monitor.get(param)
        if changed_state or (
            changed if monitor == "exact" else self._beyond_deadband(ch, param, monitor, value)
        ):
            self.request_publish()

    def on_connection(self, addr: ChannelAddress, connected: bool) -> None:
        ch = self.by_address.get(addr)
        if ch is None:
            return
        was_ready = ch.ready
        had_garbled = bool(ch.garbled)
        ch.set_connected(connected)
        if not connected:
            self._settings_written.discard(addr)
            if had_garbled:
                self._warnings = self._collect_warnings()
        if ch.observe():
            log.info("%s %s -> %s", self.prefix, ch.name, ch.state)
        if ch.ready and not was_ready:
            self._configure(ch)
        self.request_publish()

    def on_absent(self, addr: ChannelAddress, param: str) -> None:
        """The crate does not serve `param` of this channel: say so once, never write it."""
        ch = self.by_address.get(addr)
        if ch is None:
            return
        key = (addr.board, param)
        channels = self._absent.setdefault(key, set())
        if not channels:
            log.warning(
                "%s: the crate does not serve %s on board %d (configured model %s)%s; the "
                "channels work without it (is the board's model right in the lab YAML?)",
                self.prefix, param, addr.board, ch.model.name, self._absent_effect([ch], param),
            )  # fmt: skip
        if addr.channel not in channels:
            channels.add(addr.channel)
            self._warnings = self._collect_warnings()
            self.request_publish()

    def on_invalid(self, addr: ChannelAddress, reason: str | None) -> None:
        """Readbacks with INVALID severity: the channel's data is lost (DISCONNECTED)."""
        ch = self.by_address.get(addr)
        if ch is None or ch.invalid == reason:
            return
        was_ready = ch.ready
        ch.invalid = reason
        if ch.observe():
            log.info("%s %s -> %s (%s)", self.prefix, ch.name, ch.state, reason or "valid again")
        if ch.ready and not was_ready:
            self._configure(ch)
        self._warnings = self._collect_warnings()
        self.request_publish()

    def _collect_warnings(self) -> list[str]:
        """What an operator should know about the crate: parameters it does not serve, and
        channels whose readbacks it marks INVALID."""
        out = []
        for (board, param), channels in sorted(self._absent.items()):
            mine = [self.by_address[ChannelAddress(board, c)] for c in sorted(channels)]
            effect = self._absent_effect(mine, param)
            out.append(
                f"board {board} ({mine[0].model.name}): {param} not served by the crate on "
                f"channel(s) {', '.join(str(c) for c in sorted(channels))}{effect}"
            )
        out += [f"{c.name}: {c.invalid}" for c in self.channels if c.invalid]
        out += [f"{c.name}: {why}" for c in self.channels for why in c.garbled.values()]
        if self._fault is not None:
            out.append(self._fault[0])
        return out

    def note_fault(self, reason: str) -> None:
        """An unexpected error handling a readback (`trackerdcs.guard`): in `warnings` for at
        least one heartbeat period."""
        self._fault = (reason, time.monotonic())
        self._warnings = self._collect_warnings()
        self.request_publish()

    @staticmethod
    def _absent_effect(channels: list[PowerChannel], param: str) -> str:
        """What a parameter the crate does not serve costs these channels, and only that: a
        configured value that is not written, kill's fast ramp-down that cannot be set; or
        nothing, when the lab YAML gives it no value."""
        effects = []
        if any(param in dict(settings_writes(ch)) for ch in channels):
            effects.append("its configured value is not written")
        if any(
            param == ch.model.ramp_down and getattr(ch.limits, RAMP_DOWN_KEYS[param][1])
            for ch in channels
        ):
            effects.append("kill cannot set its fast ramp-down")
        return f": {'; '.join(effects)}" if effects else " (no value configured: nothing lost)"

    def _beyond_deadband(
        self, ch: PowerChannel, param: str, monitor: str | None, value: float
    ) -> bool:
        last = self._published.get(ch.address)
        if last is None:
            return True
        band = getattr(ch.limits, monitor) if monitor else 0.0
        return abs(float(value) - last.get(param, math.inf)) > band

    def _configure(self, ch: PowerChannel) -> None:
        """Write the lab YAML's protection settings (those the board model has); set points only
        on a first, idle connect. A parameter the crate does not serve is skipped; one not
        connected yet is written again a little later."""
        writes = settings_writes(ch)
        first = ch.address not in self._configured
        if first and ch.state is ChannelState.OFF:
            if ch.limits.vset is not None:
                writes.append(("V0Set", ch.limits.vset))
            writes.append(("I0Set", ch.limits.iset))
        ch.killed = False
        self._configured.add(ch.address)
        self._write_settings(ch, writes)

    def _write_settings(
        self, ch: PowerChannel, writes: list[tuple[str, Any]], delay: float = CONFIGURE_RETRY
    ) -> None:
        pending = []
        for param, value in writes:
            try:
                self.backend.write(ch.address, param, value)
            except ParamAbsent:
                continue
            except BackendError as exc:
                pending.append((param, value))
                reason = exc
        if pending:
            if delay == CONFIGURE_RETRY:  # the first wait only: a slow crate must not flood the log
                log.info("%s %s: %d setting(s) wait for the crate (%s)", self.prefix, ch.name,
                         len(pending), reason)  # fmt: skip
            self._pending[ch.address] = pending
            self.loop.call_later(delay, self._retry_pending, ch, delay)
            return
        self._pending.pop(ch.address, None)
        self._settings_written.add(ch.address)

    def _retry_pending(self, ch: PowerChannel, delay: float = CONFIGURE_RETRY) -> None:
        pending = self._pending.pop(ch.address, None)
        if pending and ch.ready and ch.address not in self._settings_written:
            self._write_settings(ch, pending, min(2 * delay, CONFIGURE_RETRY_MAX))

    # -- publishing -------------------------------------------------------------------------------
    def request_publish(self) -> None:
        """Publish soon: at once after a quiet spell, else coalesced (see PublishConfig)."""
        if self._publish_handle is not None:
            return
        wait = self._next_publish - time.monotonic()
        if wait <= 0:
            self._publish_handle = self.loop.call_soon(self.publish_status)
        else:
            self._publish_handle = self.loop.call_later(wait, self.publish_status)

    def publish_status(self) -> None:
        self._publish_handle = None
        for ch in self.channels:
            self._published[ch.address] = {
                "VMon": float(ch.readback["VMon"]),
                "IMon": float(ch.readback["IMon"]),
            }
        # every channel's object ends with the time of the data: its cached JSON, `}` replaced
        stamp = f', "time": {unix_time(self.data_time())!r}}}'
        payload = "[" + ", ".join(ch.status_json()[:-1] + stamp for ch in self.channels) + "]"
        cfg = self.publish_cfg
        self._next_publish = time.monotonic() + max(
            cfg.min_interval, len(payload) / cfg.max_bytes_per_s
        )
        self.link.publish_state(ServiceTopics(self.prefix).status, payload)
        self._publish_state()
        if self._heartbeat_handle is not None:
            self._heartbeat_handle.cancel()
        self._heartbeat_handle = self.loop.call_later(self.publish_cfg.heartbeat, self._heartbeat)

    def data_time(self) -> float:
        """When the readbacks the status holds were known current (unix s): the backend's
        `data_time()` (now, over CA monitors; the last poll, through the HV Wrapper), else now."""
        data_time = getattr(self.backend, "data_time", None)
        known = data_time() if data_time is not None else None
        return time.time() if known is None else known

    def _heartbeat(self) -> None:
        """Republish, if the backend is alive: a heartbeat never passes off old data as live."""
        alive = getattr(self.backend, "alive", None)
        if alive is not None and not alive():
            self._heartbeat_handle = None
            FAULTS.fatal(f"{self.prefix}: the crate backend's thread has ended")
            return
        if (
            self._fault is not None
            and time.monotonic() - self._fault[1] >= self.publish_cfg.heartbeat
        ):
            self._fault = None
            self._warnings = self._collect_warnings()
        self.request_publish()

    def _publish_state(self) -> None:
        states = [c.state for c in self.channels]
        state = aggregate_state(states)
        counts = dict(Counter(str(s) for s in states))
        payload = dump(
            PowerState(
                state=str(state),
                channels=len(states),
                counts=counts,
                failsafe=self.failsafe_note,
                warnings=self._warnings,
            )
        )
        if payload != self._state_payload:
            if self._state is not None and state != self._state:
                log.info("%s state %s -> %s", self.prefix, self._state, state)
            self._state, self._state_payload = state, payload
            self.link.publish_state(ServiceTopics(self.prefix).state, json.dumps(payload))

    @property
    def state(self) -> ServiceState:
        return aggregate_state([c.state for c in self.channels])

    def stop(self) -> None:
        for handle in (self._publish_handle, self._heartbeat_handle):
            if handle is not None:
                handle.cancel()

    # -- commands ---------------------------------------------------------------------------------
    def handle_command(self, cmd: Command) -> dict:
        """Validate, write, answer. A refused command writes nothing."""
        try:
            extra = self._dispatch(cmd)
        except (CommandError, PayloadError, BackendError) as exc:
            answer = self.link.respond(cmd, False, str(exc), **getattr(exc, "extra", {}))
        else:
            answer = self.link.respond(cmd, True, None, **extra)
        if self.on_command_done is not None:
            self.on_command_done(cmd, answer)
        return answer

    def _dispatch(self, cmd: Command) -> dict[str, Any]:
        parts = cmd.parts
        spec = COMMAND_TABLE.get(parts[0])
        known = ", ".join(s.usage for s in COMMAND_TABLE.values())
        if spec is None:
            raise CommandError(f"unknown command {clip(cmd.action, 60)} (known: {known})")
        if (
            spec.per_channel != (len(parts) == 2)
            or len(parts) > 2
            or (spec.per_channel and not parts[1])
        ):
            raise CommandError(
                f"malformed command topic {clip(cmd.topic, 80)}: "
                f"use {ServiceTopics(self.prefix).command(spec.usage)}"
            )
        value, _ = cmd.decoded()
        if spec.per_channel:
            return spec.handler(self, self.resolve(parts[1]), value)
        return spec.handler(self, value)

    def resolve(self, target: str) -> list[PowerChannel]:
        """Channels named by `{ch}`: a number, a channel name, a module name, or `all`."""
        if target == "all":
            return list(self.channels)
        if target.isascii() and target.isdigit() and len(target) <= 9:
            number = int(target)
            if number in self._by_number:
                return [self._by_number[number]]
        if target in self._by_name:
            return [self._by_name[target]]
        of_module = [c for c in self.channels if c.cfg.module == target]
        if of_module:
            return of_module
        raise CommandError(
            f"unknown channel {clip(target, 60)} on {self.prefix}: give a number ("
            + ", ".join(str(n) for n in self._by_number)
            + "), a channel name, a module name or 'all'"
        )

    def _check_allowed(self, targets: list[PowerChannel], command: ChannelCommand) -> None:
        reasons = [r for r in (c.refusal(command) for c in targets) if r]
        reasons += [r for guard in self.guards for c in targets if (r := guard(c, command))]
        if reasons:
            raise CommandError("; ".join(dict.fromkeys(reasons)))  # each reason once

    @staticmethod
    def _check_maximum(targets: list[PowerChannel], value: float, limit: str, unit: str) -> None:
        """Refuse `value` above the `limit` (a ChannelLimits field) of any target."""
        reasons = [
            f"{value:g} {unit} exceeds the maximum {getattr(c.limits, limit):g} {unit} of {c.name}"
            for c in targets
            if value > getattr(c.limits, limit)
        ]
        if reasons:
            raise CommandError("; ".join(reasons))

    @COMMANDS.command("setv", "setv/{ch}", per_channel=True)
    def _cmd_setv(self, targets: list[PowerChannel], value: Any) -> dict[str, Any]:
        volts = parse_number(value, "voltage")
        if volts < 0:
            raise CommandError(f"voltage must not be negative, got {volts:g} V")
        self._check_maximum(targets, volts, "vmax", "V")
        self._check_allowed(targets, ChannelCommand.SET_VOLTAGE)
        return self._write_all(targets, "V0Set", volts)

    @COMMANDS.command("seti", "seti/{ch}", per_channel=True)
    def _cmd_seti(self, targets: list[PowerChannel], value: Any) -> dict[str, Any]:
        unit = "uA" if self.kind is ChannelKind.HV else "A"
        amps = parse_number(value, "current limit")
        if amps <= 0:
            raise CommandError(f"current limit must be positive, got {amps:g} {unit}")
        self._check_maximum(targets, amps, "imax", unit)
        self._check_allowed(targets, ChannelCommand.SET_CURRENT)
        return self._write_all(targets, "I0Set", amps)

    @COMMANDS.command("switch", "switch/{ch}", per_channel=True)
    def _cmd_switch(self, targets: list[PowerChannel], value: Any) -> dict[str, Any]:
        on = parse_switch(value)
        if not on:
            self._check_allowed(targets, ChannelCommand.SWITCH_OFF)
            return self._switch_off(targets, kill=False)
        self._check_allowed(targets, ChannelCommand.SWITCH_ON)
        for ch in targets:
            if ch.killed:  # back to the configured ramp-down first
                try:
                    self._write_ramp_down(ch, kill=False)
                except BackendError as exc:
                    # on with kill's ramp-down, the next plain `off` would be a kill: refused
                    raise CommandError(
                        f"channel {ch.name}: its ramp-down is still kill's and the configured "
                        f"one could not be written back ({exc}): nothing was switched on; "
                        "try again when the crate answers"
                    ) from None
                ch.killed = False
        return self._write_all(targets, "Pw", 1)

    @COMMANDS.command("kill", "kill/{ch}", per_channel=True)
    def _cmd_kill(self, targets: list[PowerChannel], value: Any) -> dict[str, Any]:
        """Switch off at the fastest ramp-down (`kill_rate` or `kill_time`; interlocks use it)."""
        self._check_allowed(targets, ChannelCommand.KILL)
        return self._switch_off(targets, kill=True)

    def _switch_off(self, targets: list[PowerChannel], kill: bool) -> dict[str, Any]:
        """`Pw` = 0 on every target the crate takes it for: safety over atomicity, the one
        exception to all-or-nothing (docs/topics.md). A `kill` first sets the fast ramp-down;
        when that cannot be written the channel is switched off all the same, at the crate's
        current ramp-down, and the answer's `warning` says so. Channels whose `Pw` could not
        be written make the answer `ok: false` (`not_written`; `channels`: those switched
        off)."""
        written: list[str] = []
        failed: dict[str, str] = {}  # channel name -> why
        warnings: list[str] = []
        for ch in targets:
            if kill:
                try:
                    ch.killed = self._write_ramp_down(ch, kill=True) or ch.killed
                except BackendError as exc:
                    note = (
                        f"{ch.name}: fast ramp-down not set ({exc}): "
                        "ramps down at the crate's current ramp-down"
                    )
                    log.warning("%s kill: %s", self.prefix, note)
                    warnings.append(note)
            try:
                self.backend.write(ch.address, "Pw", 0)
            except BackendError as exc:
                failed[ch.name] = str(exc)
            else:
                written.append(ch.name)
        extra: dict[str, Any] = {"channels": written}
        if warnings:
            extra["warning"] = "; ".join(warnings)
        if failed:
            why = ", ".join(f"{name} ({reason})" for name, reason in failed.items())
            done = f"; switched off: {', '.join(written)}" if written else ""
            log.error("%s: could not switch off %s%s", self.prefix, why, done)
            raise PartlyDone(
                f"could not be switched off: {why}{done}", {**extra, "not_written": list(failed)}
            )
        return extra

    def _write_ramp_down(self, ch: PowerChannel, kill: bool) -> bool:
        """Write the board's ramp-down parameter (`RDWn` or `RDwTime`): its fastest for `kill`,
        else the configured one. False when the board has none, or it has no value (or the
        crate does not serve it); `BackendError` when the crate cannot take it now."""
        param = ch.model.ramp_down
        if param is None:
            return False
        value = getattr(ch.limits, RAMP_DOWN_KEYS[param][1 if kill else 0])
        if value is None:
            return False
        try:
            self.backend.write(ch.address, param, value)
        except ParamAbsent:
            return False
        return True

    def _write_all(self, targets: list[PowerChannel], param: str, value: float | int) -> dict:
        for ch in targets:
            self.backend.write(ch.address, param, value)
        return {"channels": [c.name for c in targets]}

    @COMMANDS.command("clear")
    def _cmd_clear(self, value: Any) -> dict[str, Any]:
        self.backend.clear_alarm()
        return {}

    @COMMANDS.command("refresh")
    def _cmd_refresh(self, value: Any) -> dict[str, Any]:
        self._state_payload = None  # republish the aggregate too
        self.publish_status()
        return {}

    @COMMANDS.command("reconnect")
    def _cmd_reconnect(self, value: Any) -> dict[str, Any]:
        self.backend.reconnect()
        return {}
