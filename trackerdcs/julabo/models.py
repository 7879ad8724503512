"""Julabo model families as data: which parameters a model has, and under which command.

One table (`PROFILES`) from which the driver (`Julabo`), the daemon's poll, the simulator, the
configuration check (`julabo.model`) and the docs derive. A profile maps parameter names (the
rows of `PARAMETERS`: type, unit, range) to the model's registers (`IN_xx` to read, `OUT_xx` to
write, or read-only). A parameter a model does not have is never sent to it: the driver refuses
it (`NotSupported`) and the daemon publishes it as `null`.

Profiles (`julabo.model` in the lab YAML; `full` is the default):

- `full`: the F / FP / CF / ME / SE / HE / Presto controllers' set: three set points, warning
  limits on `SP_03`/`SP_04`, heating power on `PV_01`, the external Pt100 on `PV_02`, self-tuning
  (`MODE_02`), the external programmer input (`MODE_03`), the PID parameters `PAR_06`..`PAR_12`.
  Sources: the command lists of the Julabo FP50-HL, SL/HL-4 and Presto operating manuals
  ("Remote control: list of commands"), and the PID parameter ranges of the MA/SC manuals
  ("Control parameters Xp, Tn, Tv": Xp 0.1..99.9 K, Tn 3..9999 s, Tv 0..999 s), as ISIS's EPICS
  driver uses them (ISISComputingGroup/EPICS-julabo, julaboApp/protocol/julaboCommon.proto).
- `fl`: the FL recirculating coolers (FL300, FL601, FL1201, FL1703, FL4006, ...): `VERSION`,
  `STATUS`, `IN_PV_00`, `IN_SP_00`/`OUT_SP_00`, `IN_MODE_05`/`OUT_MODE_05`, nothing else (the
  FL300/FL601 and FL1201 manuals, "List of commands").
- `fp50-mh`: the FP50-MH mapping: external sensor on `PV_01`, power on `PV_02`, the high and low
  temperature limits on `SP_01`/`SP_02` (read-only), one set point (ISIS EPICS-julabo,
  julaboApp/protocol/README.txt and iocs/FP50_MH).
- `big`: the "BIG" models' mapping: power on `PV_01`, external sensor on `PV_02`, limits on
  `SP_01`/`SP_02` (same source).
- `generic`: an unknown model: the FL set is required, every other parameter of `full` is
  optional: queried, and dropped from the poll (reported once) when the unit does not answer.

Designed to be shared by several chillers: a profile is immutable and chosen by name, so a list
of chillers can each name theirs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final


class NotSupported(AttributeError):
    """The unit's model has no such parameter (or it is read-only on that model)."""


@dataclass(frozen=True)
class Parameter:
    """One parameter, whatever register a model puts it on.

    `temperature`: a temperature the device's `temperature_range` bounds (set points, limits);
    otherwise `minimum`/`maximum` bound written values. `decimals`: how floats are written.
    `reading_range`: what a reply may hold (`minimum`..`maximum`, or the unit's span below);
    a number outside it is a garbled reply.
    """

    name: str
    kind: type  # float, int or bool
    unit: str
    doc: str
    minimum: float | None = None
    maximum: float | None = None
    temperature: bool = False
    decimals: int = 2

    @property
    def reading_range(self) -> tuple[float, float]:
        if self.minimum is not None and self.maximum is not None:
            return (self.minimum, self.maximum)
        return UNIT_SPAN.get(self.unit, (-1e6, 1e6))


# What a reply of a parameter without its own range may hold, by unit. Julabo units work
# between -95 and +400 °C (the widest in the manuals' specifications); heating power is a
# percentage, negative when cooling. Wider than that, a reply is garbled.
UNIT_SPAN: Final[Mapping[str, tuple[float, float]]] = MappingProxyType(
    {"°C": (-150.0, 500.0), "%": (-100.0, 100.0)}
)


@dataclass(frozen=True)
class Register:
    """Where a model keeps a parameter: the `IN_` query, and the `OUT_` command or None."""

    query: str
    write: str | None

    @property
    def writable(self) -> bool:
        return self.write is not None


def rw(register: str) -> Register:
    """`rw("SP_00")`: read with `IN_SP_00`, write with `OUT_SP_00`."""
    return Register(f"IN_{register}", f"OUT_{register}")


def ro(register: str) -> Register:
    """`ro("PV_00")`: read with `IN_PV_00` only."""
    return Register(f"IN_{register}", None)


_P = Parameter
PARAMETERS: Final[Mapping[str, Parameter]] = MappingProxyType({p.name: p for p in (
    _P("bath_temperature", float, "°C", "Bath (internal) temperature."),
    _P("heating_power", float, "%", "Heating power; negative when cooling."),
    _P("external_temperature", float, "°C",
       "External Pt100 temperature; None when no sensor is connected (the unit answers `---.--`)."),
    _P("safety_temperature", float, "°C", "Safety sensor temperature."),
    _P("excess_temperature_limit", float, "°C", "Excess-temperature protection set point."),
    _P("setpoint_1", float, "°C", "Set point 1 (working temperature).", temperature=True),
    _P("setpoint_2", float, "°C", "Set point 2.", temperature=True),
    _P("setpoint_3", float, "°C", "Set point 3.", temperature=True),
    _P("high_limit", float, "°C", "High-temperature warning limit.", temperature=True),
    _P("low_limit", float, "°C", "Low-temperature warning limit.", temperature=True),
    _P("pump_stage", int, "", "Pump pressure stage, 1..4.", minimum=1, maximum=4),
    _P("active_setpoint", int, "",
       "Active set point as the wire index 0..2: 0 selects setpoint_1.", minimum=0, maximum=2),
    _P("selftuning", int, "", "Self-tuning: 0 off, 1 once, 2 always.", minimum=0, maximum=2),
    _P("external_input", int, "",
       "External programmer input: 0 voltage 0..10 V, 1 current 0..20 mA.", minimum=0, maximum=1),
    _P("external_control", bool, "", "Control on the external sensor (else the internal one)."),
    _P("running", bool, "", "Temperature control running (start/stop)."),
    _P("xp_internal", float, "K", "Xp, proportional range of the internal controller.",
       minimum=0.1, maximum=99.9, decimals=1),
    _P("tn_internal", int, "s", "Tn, reset time of the internal controller.",
       minimum=3, maximum=9999),
    _P("tv_internal", int, "s", "Tv, lead time of the internal controller.",
       minimum=0, maximum=999),
    _P("xp_cascade", float, "K", "Xp of the cascade (external) controller.",
       minimum=0.1, maximum=99.9, decimals=1),
    _P("p_cascade", float, "",
       "Proportional portion of the cascade controller (the manuals list the command, not its "
       "range: Xp's range is assumed).",
       minimum=0.1, maximum=99.9, decimals=1),
    _P("tn_cascade", int, "s", "Tn of the cascade controller.", minimum=3, maximum=9999),
    _P("tv_cascade", int, "s", "Tv of the cascade controller.", minimum=0, maximum=999),
)})  # fmt: skip
"""Every parameter any profile has: name -> type, unit, range and meaning."""

REQUIRED: Final = frozenset({"bath_temperature", "setpoint_1", "running"})
"""What every Julabo answers (with `VERSION` and `STATUS`): a failing one means the line is lost."""


@dataclass(frozen=True)
class Profile:
    """One model family: its registers, and which of them are optional (`generic`)."""

    name: str
    title: str
    models: str  # examples, for the docs
    registers: Mapping[str, Register]
    optional: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        unknown = set(self.registers) - set(PARAMETERS)
        if unknown or not set(self.registers) >= REQUIRED:
            raise ValueError(f"profile {self.name}: unknown {unknown} or missing required")

    def has(self, name: str) -> bool:
        return name in self.registers

    def register(self, name: str) -> Register:
        """The register of parameter `name`; `NotSupported` if the model has none."""
        try:
            return self.registers[name]
        except KeyError:
            raise NotSupported(f"a Julabo of model {self.name!r} has no {name}") from None


_FULL: Final = {
    "bath_temperature": ro("PV_00"),
    "heating_power": ro("PV_01"),
    "external_temperature": ro("PV_02"),
    "safety_temperature": ro("PV_03"),
    "excess_temperature_limit": ro("PV_04"),
    "setpoint_1": rw("SP_00"),
    "setpoint_2": rw("SP_01"),
    "setpoint_3": rw("SP_02"),
    "high_limit": rw("SP_03"),
    "low_limit": rw("SP_04"),
    "pump_stage": rw("SP_07"),
    "active_setpoint": rw("MODE_01"),
    "selftuning": rw("MODE_02"),
    "external_input": rw("MODE_03"),
    "external_control": rw("MODE_04"),
    "running": rw("MODE_05"),
    "xp_internal": rw("PAR_06"),
    "tn_internal": rw("PAR_07"),
    "tv_internal": rw("PAR_08"),
    "xp_cascade": rw("PAR_09"),
    "p_cascade": rw("PAR_10"),
    "tn_cascade": rw("PAR_11"),
    "tv_cascade": rw("PAR_12"),
}
_FL: Final = {name: _FULL[name] for name in ("bath_temperature", "setpoint_1", "running")}
_LIMITS_ON_SP_01: Final = {"high_limit": ro("SP_01"), "low_limit": ro("SP_02")}

PROFILES: Final[Mapping[str, Profile]] = MappingProxyType({p.name: p for p in (
    Profile("full", "F / FP / CF / Presto (full command set)",
            "FP50-HL, F25-HE, CF31, CF41, Presto A40", _FULL),
    Profile("fl", "FL recirculating coolers (minimal command set)",
            "FL300, FL601, FL1201, FL1703, FL4006", _FL),
    Profile("fp50-mh", "FP50-MH (external sensor on PV_01, limits on SP_01/SP_02)", "FP50-MH",
            {**_FL, "external_temperature": ro("PV_01"), "heating_power": ro("PV_02"),
             **_LIMITS_ON_SP_01}),
    Profile("big", "\"BIG\" models (limits on SP_01/SP_02)", "the units ISIS's driver calls BIG",
            {**_FL, "heating_power": ro("PV_01"), "external_temperature": ro("PV_02"),
             **_LIMITS_ON_SP_01}),
    Profile("generic", "unknown model: the FL set, every other parameter optional",
            "any other", _FULL, optional=frozenset(_FULL) - frozenset(_FL)),
)})  # fmt: skip
"""Every model family: `julabo.model` picks one."""

DEFAULT_PROFILE: Final = "full"


def profile(name: str) -> Profile:
    """The profile called `name`; ValueError naming the known ones otherwise."""
    try:
        return PROFILES[name]
    except KeyError:
        known = ", ".join(PROFILES)
        raise ValueError(f"unknown Julabo model {name!r} (known: {known})") from None
