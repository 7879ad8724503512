"""The safety sections of the lab YAML: `interlocks`, `alarms` and `sequencer`.

Strict pydantic models (unknown keys are errors), checked by `load_config` like every section.
`check_safety(lab)` checks them against the rest of the lab (modules, sensors, chiller,
prefixes) and names the key that is wrong; the safety daemons and `trackerdcs check-config` run
it, so that a lab derived from the example (say, without its chiller) still loads for the
daemons that do not read these sections. This module imports nothing from `trackerdcs.config`,
which imports it: the checks take the lab as a `SafetyLab`, the part of `LabConfig` they read.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from enum import StrEnum
from typing import Annotated, Any, Literal, Protocol

from pydantic import Field, field_validator

from trackerdcs.configbase import NonNegFloat, PositiveFloat, UnknownChiller
from trackerdcs.configbase import StrictModel as _Strict

Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9_\-]+$")]
ModuleName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.\-]+$")]


class Action(StrEnum):
    """What a rule does to the HV of the modules it finds unsafe."""

    RAMP_DOWN = "ramp_down"  # /hv/cmd/switch/{module} off: ramp down at RDWn
    KILL = "kill"  # /hv/cmd/kill/{module}: the fastest ramp-down
    NONE = "none"  # inhibit switching on and raise the alarm only


class _Rule(_Strict):
    name: Name
    # the modules the rule protects; default: those its chiller cools (see `rule_modules`)
    modules: list[ModuleName] | Literal["all"] = "all"
    action: Action = Action.RAMP_DOWN
    # the chiller it watches (chiller_running) and whose set point it raises (chiller_setpoint);
    # default: the lab's only chiller (required when the lab has several)
    chiller: Name | None = None
    chiller_setpoint: float | None = None  # °C the chiller is raised to while the rule holds
    clear_delay: NonNegFloat = 0.0  # s the condition must stay clear before the rule clears


class ChillerRunningRule(_Rule):
    """The chiller stopped cooling after it had been cooling: a STOP status, an alarm code (the
    unit stops), or no valid status for `status_timeout` s (DISCONNECTED that long). Warning
    codes with the unit still running, and `01 MANUAL START`, count as cooling."""

    kind: Literal["chiller_running"]
    # s without a valid status (the chiller daemon says DISCONNECTED) before that counts as
    # stopped: longer than a transient the daemon rides through (a reply retried, a reconnect
    # backing off up to julabo.reconnect_max_delay), short against the minutes modules take to
    # warm; a silent daemon is the heartbeat rule's business
    status_timeout: PositiveFloat = 30.0


class _ValueRule(_Rule):
    """A rule on measured values: `hold` s the condition must persist (per module) before it
    fires. Default 0: at once, the safe choice when nothing is known of the sensors. Loss of data
    is the heartbeat rule's business, on its own timer."""

    hold: NonNegFloat = 0.0


class ModuleTemperatureRule(_ValueRule):
    """A module's temperature above its limit."""

    kind: Literal["module_temperature"]
    action: Action = Action.KILL
    limit: float | None = None  # °C; default: each module sensor's max_temperature
    hysteresis: NonNegFloat = 0.5  # K below the limit before a module counts as safe again


class DewpointMarginRule(_ValueRule):
    """The coldest module temperature too close to the room's dew point."""

    kind: Literal["dewpoint_margin"]
    sensor: Name  # the room sensor giving the dew point
    margin: PositiveFloat = 2.0  # K: unsafe when coldest - dewpoint < margin
    hysteresis: NonNegFloat = 0.5  # K above the margin before it counts as safe again


class HeartbeatRule(_Rule):
    """Data from a source older than its timeout, its daemon offline, or a sensor stale."""

    kind: Literal["heartbeat"]
    sources: dict[str, PositiveFloat] = Field(min_length=1)  # prefix (`/temp_m1`) -> timeout, s


InterlockRule = Annotated[
    ChillerRunningRule | ModuleTemperatureRule | DewpointMarginRule | HeartbeatRule,
    Field(discriminator="kind"),
]


class InterlocksConfig(_Strict):
    """The interlock service (`trackerdcs-interlock`): its rules, evaluated on every message."""

    rules: list[InterlockRule] = []
    reassert_interval: PositiveFloat = 1.0  # s before an action is sent again while it holds
    startup_grace: NonNegFloat = 1.0  # s to gather the retained statuses before publishing
    heartbeat: PositiveFloat = 10.0  # s between two `/interlock/status` at the latest
    # s between two supervision heartbeats (`/interlock/supervision`), which the power daemons
    # that list the service in `power.failsafe.supervisors` require
    supervision_interval: PositiveFloat = 1.0
    command_max_age: PositiveFloat | None = None  # s; default: mqtt.command_max_age

    @field_validator("rules")
    @classmethod
    def _unique_names(cls, rules: list[Any]) -> list[Any]:
        seen: set[str] = set()
        for rule in rules:
            if rule.name in seen:
                raise ValueError(f"rule name {rule.name!r} is used twice")
            seen.add(rule.name)
        return rules


class AlarmsConfig(_Strict):
    """The alarm and audit service (`trackerdcs-alarms`)."""

    db: str = "trackerdcs-alarms.sqlite"  # SQLite file (relative: to the working directory)
    audit_keep_days: PositiveFloat = 365.0  # older audit records are deleted
    query_limit: int = Field(1000, ge=1)  # most records one audit query returns
    # a source sending no live status for this many of its heartbeats raises an alarm
    liveness_factor: float = Field(3.0, ge=1.5)
    command_max_age: PositiveFloat | None = None  # s; default: mqtt.command_max_age


class SequencerConfig(_Strict):
    """Module on/off sequences (`trackerdcs-dcs`)."""

    answer_timeout: PositiveFloat = 5.0  # s for a power daemon to answer a command
    ramp_factor: float = Field(1.5, ge=1.0)  # allowed ramp time = factor x |dV| / rate ...
    settle_time: PositiveFloat = 10.0  # ... + this, s
    tolerance: NonNegFloat | None = None  # V; default: each channel's on_tolerance
    heartbeat: PositiveFloat = 10.0  # s between two `/dcs/status` at the latest
    command_max_age: PositiveFloat | None = None  # s; default: mqtt.command_max_age


class SafetyLab(Protocol):
    """What the checks below read of the lab: `trackerdcs.config.LabConfig` is one."""

    @property
    def interlocks(self) -> InterlocksConfig: ...

    @property
    def crates(self) -> Sequence[Any]: ...

    @property
    def sensors(self) -> Sequence[Any]: ...

    @property
    def chillers(self) -> Sequence[Any]: ...

    def modules(self) -> Iterable[str]: ...

    def chiller(self, name: str | None = None) -> Any: ...

    def cooled_by(self, chiller: Any) -> list[str]: ...


def uses_chiller(rule: Any) -> bool:
    """The rule watches a chiller or acts on one (or names one for its modules)."""
    return rule.kind == "chiller_running" or rule.chiller_setpoint is not None or bool(rule.chiller)


def rule_chiller(lab: SafetyLab, rule: Any) -> Any | None:
    """The chiller (`JulaboConfig`) a rule watches or acts on: its `chiller`, else the lab's only
    one; None for a rule that uses no chiller. `UnknownChiller` when it cannot be told."""
    return lab.chiller(rule.chiller) if uses_chiller(rule) else None


def rule_modules(lab: SafetyLab, rule: Any) -> list[str]:
    """The modules a rule protects: its `modules` (`all`: every module of the lab); not given,
    those its chiller cools (a chiller rule in a lab of several chillers protects its own)."""
    if "modules" not in rule.model_fields_set and uses_chiller(rule):
        return lab.cooled_by(lab.chiller(rule.chiller))
    return list(lab.modules()) if rule.modules == "all" else list(rule.modules)


def check_safety(lab: SafetyLab) -> None:
    """Check the safety sections against the lab; ValueError naming the key otherwise."""
    modules = set(lab.modules())
    sensors = {s.name: s for s in lab.sensors}
    prefixes = {p for crate in lab.crates for p in crate.prefixes.values()}
    prefixes |= {s.prefix for s in lab.sensors}
    prefixes |= {c.prefix for c in lab.chillers}
    for i, rule in enumerate(lab.interlocks.rules):
        where = f"interlocks.rules.{i}"
        if rule.modules != "all":
            unknown = sorted(set(rule.modules) - modules)
            if unknown:
                raise ValueError(
                    f"{where}.modules: no power channel powers {', '.join(unknown)} "
                    f"(known: {', '.join(sorted(modules)) or 'none'})"
                )
        if uses_chiller(rule) and not lab.chillers:
            raise ValueError(
                f"{where}: needs a chiller (the lab has no julabo or chillers section)"
            )
        try:
            chiller = rule_chiller(lab, rule)
        except UnknownChiller as exc:
            raise ValueError(f"{where}.chiller: {exc}") from None
        if rule.chiller_setpoint is not None and chiller is not None:
            low, high = chiller.setpoint_min, chiller.setpoint_max
            if not low <= rule.chiller_setpoint <= high:
                raise ValueError(
                    f"{where}.chiller_setpoint: {rule.chiller_setpoint:g} is outside the "
                    f"chiller's range {low:g}..{high:g} (chiller {chiller.name}: setpoint_min/max)"
                )
        if rule.kind == "dewpoint_margin":
            sensor = sensors.get(rule.sensor)
            if sensor is None or sensor.kind.value != "room":
                raise ValueError(f"{where}.sensor: no room sensor named {rule.sensor!r}")
        if rule.kind == "heartbeat":
            for prefix in rule.sources:
                if prefix not in prefixes:
                    raise ValueError(
                        f"{where}.sources.{prefix}: not a prefix of the lab "
                        f"(known: {', '.join(sorted(prefixes))})"
                    )
        if rule.kind == "module_temperature":
            watched = modules if rule.modules == "all" else set(rule.modules)
            measured = {s.module for s in lab.sensors if s.module}
            if not watched & measured:
                raise ValueError(f"{where}.modules: none of them has a module sensor")
            if rule.limit is None:
                missing = sorted(
                    s.name for s in lab.sensors if s.module in watched and s.max_temperature is None
                )
                if missing:
                    raise ValueError(
                        f"{where}.limit: required, since sensor(s) {', '.join(missing)} "
                        "have no max_temperature"
                    )


def safety_problem(lab: SafetyLab, args: object = None) -> str | None:
    """`check_safety` as a daemon's `validate` hook (trackerdcs.runner): the message, or None."""
    try:
        check_safety(lab)
    except ValueError as exc:
        return f"invalid configuration\n  {exc}"
    return None
