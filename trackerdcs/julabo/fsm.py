"""The chiller as the daemon sees it: its latest poll and its state machine.

The state follows the unit: every poll (or lost line) is classified into the state it shows
(`observed_state`) and the matching observation trigger fires. Commands are internal triggers
(no change of state: the next poll moves it); their sources say in which states a command is
allowed, so `allows(ChillerCommand.SWITCH_ON)` is the guard the service asks before anything is
sent (the pattern: `trackerdcs.statemachine`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from transitions import Machine

from trackerdcs.julabo.protocol import JulaboStatus
from trackerdcs.statemachine import Observed, observing_machine


class ChillerState(StrEnum):
    DISCONNECTED = "DISCONNECTED"  # the line is down or the unit does not answer
    STOPPED = "STOPPED"  # remote control, temperature control off (02 REMOTE STOP)
    RUNNING = "RUNNING"  # remote control, temperature control on (03 REMOTE START)
    ERROR = "ERROR"  # a negative status code: warning or alarm, decoded in `status_text`
    MANUAL = "MANUAL"  # 00/01: operated from the front panel; commands are refused. 01 MANUAL
    # START still cools: `running` is 1 and the interlocks count it as running.


S = ChillerState

OBSERVATIONS: dict[ChillerState, str] = {
    S.DISCONNECTED: "lose_line",
    S.STOPPED: "see_stopped",
    S.RUNNING: "see_running",
    S.ERROR: "see_error",
    S.MANUAL: "see_manual",
}


class ChillerCommand(StrEnum):
    """The chiller's command triggers (internal transitions of its machine)."""

    SET_SETPOINT = "set_setpoint"
    SWITCH_ON = "switch_on"
    SWITCH_OFF = "switch_off"


C = ChillerCommand

# Commands: internal transitions; `source` lists the states in which they are allowed.
COMMANDS: dict[ChillerCommand, list[ChillerState]] = {
    C.SET_SETPOINT: [S.STOPPED, S.RUNNING, S.ERROR],  # a new set point may cure a warning
    C.SWITCH_ON: [S.STOPPED, S.RUNNING],
    C.SWITCH_OFF: [S.STOPPED, S.RUNNING, S.ERROR],  # stopping is always allowed when connected
}


@dataclass(frozen=True)
class Poll:
    """One complete reading of the unit. A reading the model does not have, a placeholder
    reply (`---.--`) or an optional reading the unit did not answer is None."""

    status: JulaboStatus
    running: bool  # IN_MODE_05 (from the status code when the unit gave a placeholder)
    bath: float | None = None  # IN_PV_00, °C
    setpoint: float | None = None  # the active set point's value, °C
    active_setpoint: int | None = None  # 1..3 (IN_MODE_01 + 1); 1: one set point; None: unread
    external: float | None = None  # the external Pt100, °C (IN_PV_02 on most models)
    power: float | None = None  # heating power, % (IN_PV_01 on most models)
    high_limit: float | None = None  # high-temperature warning limit, °C
    low_limit: float | None = None  # low-temperature warning limit, °C


def observed_state(poll: Poll | None) -> ChillerState:
    """The state a poll shows (None: no answer). Errors win over the mode."""
    if poll is None:
        return S.DISCONNECTED
    if poll.status.is_error:
        return S.ERROR
    if not poll.status.is_remote:
        return S.MANUAL
    return S.RUNNING if poll.running else S.STOPPED


class Chiller(Observed):
    """The unit's latest poll, why it is not connected, and the state (set by the `Machine`)."""

    OBSERVATIONS = OBSERVATIONS
    state: ChillerState

    def __init__(self, url: str, model: str = "full", name: str = "julabo") -> None:
        self.url = url
        self.model = model
        self.name = name  # the chiller's name in the lab YAML: the `chiller` key of its status
        self.poll: Poll | None = None
        self.line_error: str | None = "not connected yet"

    def observe(self, poll: Poll | None, line_error: str | None = None) -> bool:
        """Record a poll (or a lost line, with its reason); True when the state changed."""
        self.poll = poll
        self.line_error = line_error if poll is None else None
        return self.follow(observed_state(poll))

    def refusal(self, command: ChillerCommand) -> str | None:
        """Why `command` is not allowed now, or None when it is."""
        if self.allows(command):
            return None
        if self.state is S.DISCONNECTED:
            return f"the chiller is DISCONNECTED ({self.line_error}): nothing was sent"
        status = self.poll.status if self.poll else None
        if self.state is S.MANUAL:
            return (
                f"the chiller is in MANUAL mode (status {status}): it is not under remote "
                "control; switch it to remote on its front panel"
            )
        return f"the chiller is in {self.state} (status {status}): clear the cause on the unit"

    def as_status(self) -> dict[str, Any]:
        """`/julabo/status`: every key keeps one JSON type; readings are null when unknown
        (not connected, not on this model, a placeholder, or an optional reading dropped)."""
        p = self.poll
        return {
            "chiller": self.name,
            "state": str(self.state),
            "model": self.model,
            "status_code": p.status.code if p else None,
            "status_text": p.status.text if p else None,
            "bath_temp": _float(p.bath if p else None),
            "external_temp": _float(p.external if p else None),
            "power": _float(p.power if p else None),
            "setpoint": _float(p.setpoint if p else None),
            "active_setpoint": p.active_setpoint if p else None,
            "high_limit": _float(p.high_limit if p else None),
            "low_limit": _float(p.low_limit if p else None),
            "running": int(p.running) if p else None,
            "error": self.error,
        }

    @property
    def error(self) -> str | None:
        """Why the chiller is not healthy: the lost line, or the decoded error status."""
        if self.state is S.DISCONNECTED:
            return self.line_error
        if self.poll is not None and self.poll.status.is_error:
            return str(self.poll.status)
        return None


def _float(value: float | None) -> float | None:
    return None if value is None else float(value)


def make_machine(chiller: Chiller) -> Machine:
    return observing_machine(chiller, ChillerState, OBSERVATIONS, COMMANDS, S.DISCONNECTED)
