"""One power-supply channel: its configuration, its latest readbacks and its state machine.

The state follows the crate: every readback is classified into the state it shows
(`observed_state`) and the matching observation trigger fires. Commands are triggers too, but
internal ones (no change of state: the crate's readback will move the state); their sources say in
which states the command is allowed, so `allows(ChannelCommand.SWITCH_ON)` is the guard the service
asks before it writes anything (the pattern: `trackerdcs.statemachine`). Switching off and kill
are allowed in every state, DISCONNECTED included (a crate that marks a readback INVALID still
takes `Pw`): a channel's state never stands between an operator, the interlock or the sequencer
and switching it off.
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Any

from transitions import Machine

from trackerdcs.config import ChannelConfig, ChannelLimits
from trackerdcs.payloads import PowerChannelStatus, dump
from trackerdcs.power.backend import ChannelAddress
from trackerdcs.power.boards import BoardModel, ParamType, board_model
from trackerdcs.power.status import FAULT_BITS, TRIP_BITS, ChannelStatus, flag_names
from trackerdcs.statemachine import Observed, observing_machine


class ChannelState(StrEnum):
    DISCONNECTED = "DISCONNECTED"
    OFF = "OFF"
    RAMPING_UP = "RAMPING_UP"
    ON = "ON"
    RAMPING_DOWN = "RAMPING_DOWN"
    TRIPPED = "TRIPPED"
    ERROR = "ERROR"  # a fault bit other than a trip (unplugged, power fail, calibration ...)


S = ChannelState
_ALL = list(S)
_CONNECTED = [s for s in S if s is not S.DISCONNECTED]
_HEALTHY = [S.OFF, S.RAMPING_UP, S.ON, S.RAMPING_DOWN]

# Observations: the trigger fired when the readbacks show a state. Allowed from every state,
# since the crate is the truth; the table names them so that logs and callbacks can.
OBSERVATIONS: dict[ChannelState, str] = {
    S.DISCONNECTED: "lose_connection",
    S.OFF: "reach_off",
    S.RAMPING_UP: "start_ramp_up",
    S.ON: "reach_on",
    S.RAMPING_DOWN: "start_ramp_down",
    S.TRIPPED: "trip",
    S.ERROR: "fail",
}


class ChannelCommand(StrEnum):
    """The channel's command triggers (internal transitions of its machine)."""

    SWITCH_ON = "switch_on"
    SWITCH_OFF = "switch_off"
    KILL = "kill"
    SET_VOLTAGE = "set_voltage"
    SET_CURRENT = "set_current"


C = ChannelCommand

# Commands: internal transitions; `source` lists the states in which they are allowed.
COMMANDS: dict[ChannelCommand, list[ChannelState]] = {
    C.SWITCH_ON: _HEALTHY,
    C.SWITCH_OFF: _ALL,  # never refused for the channel's state: safety first
    C.KILL: _ALL,
    C.SET_VOLTAGE: _CONNECTED,
    C.SET_CURRENT: _CONNECTED,
}


# plain ints: IntFlag arithmetic runs in Python, on every readback of every channel
_TRIP, _FAULT = int(TRIP_BITS), int(FAULT_BITS)
_RAMP_UP, _RAMP_DOWN, _ON = (int(ChannelStatus.RAMP_UP), int(ChannelStatus.RAMP_DOWN),
                             int(ChannelStatus.ON))  # fmt: skip


def observed_state(connected: bool, status: int) -> ChannelState:
    """The state the crate's readbacks show. Trips win over faults, faults over ramps."""
    if not connected:
        return S.DISCONNECTED
    if status & _TRIP:
        return S.TRIPPED
    if status & _FAULT:
        return S.ERROR
    if status & _RAMP_UP:
        return S.RAMPING_UP
    if status & _RAMP_DOWN:
        return S.RAMPING_DOWN
    if status & _ON:
        return S.ON
    return S.OFF


class PowerChannel(Observed):
    """A channel as the service sees it. `state` is managed by the shared `Machine`."""

    OBSERVATIONS = OBSERVATIONS
    state: ChannelState

    def __init__(
        self, cfg: ChannelConfig, limits: ChannelLimits, model: BoardModel | None = None
    ) -> None:
        self.cfg = cfg
        self.limits = limits
        self.model = model or board_model(None, cfg.kind.value)
        self.address = ChannelAddress(cfg.board, cfg.channel)
        self.connected = False
        self.invalid: str | None = None  # why the readbacks cannot be trusted (INVALID severity)
        self.garbled: dict[str, str] = {}  # readback -> why the crate's value was not taken
        # the board model's monitored readbacks, and how a change of each is published
        self.readback: dict[str, float | int] = {
            p.name: 0.0 if p.type is ParamType.FLOAT else 0 for p in self.model.monitored
        }
        self.monitor = {p.name: p.monitor for p in self.model.monitored}
        self.inhibits: dict[str, str] = {}  # name -> reason: switching on is refused while set
        self.killed = False  # RDWn was raised by `kill`: restored before switching on again
        self._status: tuple[tuple, dict[str, Any], str] | None = None  # as_status() cache
        self._status_key: tuple | None = None  # what `_status` was made from, when still valid
        self._fresh: set[str] = set()  # readbacks received since the last disconnection

    @property
    def ready(self) -> bool:
        """Connected, every readback has arrived since, none INVALID or garbled: the state can be
        trusted."""
        return (
            self.connected
            and self.invalid is None
            and not self.garbled
            and len(self._fresh) == len(self.readback)
        )

    def set_connected(self, connected: bool) -> None:
        self.connected = connected
        if not connected:
            self._fresh.clear()
            self.garbled.clear()

    @property
    def number(self) -> int:
        return self.cfg.number

    @property
    def name(self) -> str:
        return self.cfg.name

    def update(self, param: str, value: float | int) -> bool:
        """Take a readback; True when its value differs from the one held (a monitor may
        repeat an unchanged value). A value that is not a finite number of the parameter's
        type (`Param.readback_problem`: a NaN `VMon`, a fractional `Status`) is not taken: the
        channel counts as DISCONNECTED, with the reason in `garbled`, until a good one comes."""
        spec = self.model.by_name.get(param)
        problem = spec.readback_problem(value) if spec is not None else None
        if problem is not None:
            changed = self.garbled.get(param) != problem
            self.garbled[param] = problem
            return changed
        was_garbled = self.garbled.pop(param, None) is not None
        changed = was_garbled or self.readback.get(param) != value
        if changed:
            self.readback[param] = value
            self._status_key = None  # `_cached_status` checks state and inhibits, not readbacks
        self._fresh.add(param)
        return changed

    def observe(self) -> bool:
        """Move the state machine to what the readbacks show; True when the state changed."""
        return self.follow(observed_state(self.ready, int(self.readback["Status"])))

    def refusal(self, command: ChannelCommand) -> str | None:
        """Why `command` is not allowed now, or None when it is."""
        if command == C.SWITCH_ON and self.inhibits:
            names = ", ".join(f"{k} ({v})" for k, v in sorted(self.inhibits.items()))
            return f"channel {self.name}: switching on inhibited by interlock {names}"
        if self.allows(command):
            return None
        if self.state is S.TRIPPED:
            return f"channel {self.name} is TRIPPED: send clear first"
        if self.state is S.DISCONNECTED:
            why = self.invalid or "; ".join(self.garbled.values()) or "the crate does not answer"
            return f"channel {self.name} is DISCONNECTED: {why}"
        flags = ",".join(flag_names(int(self.readback["Status"])))
        return f"channel {self.name} is {self.state} ({flags})"

    def as_status(self) -> dict[str, Any]:
        """The channel's entry of `/hv/status`: every key with one JSON type forever."""
        return self._cached_status()[1]

    def status_json(self) -> str:
        """`as_status()` encoded as JSON (cached like it: most channels change rarely)."""
        return self._cached_status()[2]

    def _cached_status(self) -> tuple[tuple, dict[str, Any], str]:
        # readbacks are checked by `update` (it drops the key); state and inhibits here, cheaply
        if self._status is not None and self._status_key == (self.state, self.inhibits):
            return self._status
        self._status_key = (self.state, dict(self.inhibits))
        key = (*self.readback.values(), self.state, tuple(self.inhibits))
        if self._status is None or self._status[0] != key:
            status = self._build_status()
            self._status = (key, status, json.dumps(status))
        return self._status

    def _build_status(self) -> dict[str, Any]:
        rb = self.readback
        status = int(rb["Status"])
        entry = PowerChannelStatus(
            number=self.cfg.number,
            name=self.cfg.name,
            module=self.cfg.module or "",
            on=1 if int(rb["Pw"]) else 0,
            vreq=float(rb["V0Set"]),
            vmon=float(rb["VMon"]),
            imon=float(rb["IMon"]),
            ilim=float(rb["I0Set"]),
            status=status,
            flags=flag_names(status),
            state=str(self.state),
            interlocks=sorted(self.inhibits),
            time=0.0,  # stamped at publication: `PowerService.publish_status`
        )
        return dump(entry, exclude={"time"})


def make_machine(channels: list[PowerChannel]) -> Machine:
    """One machine driving every channel of a service (cheaper than a machine per channel)."""
    return observing_machine(channels, ChannelState, OBSERVATIONS, COMMANDS, S.DISCONNECTED)
