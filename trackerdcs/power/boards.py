"""CAEN board models: the one table of what each board serves, per channel and per board.

Everything about a board's parameters derives from `BOARD_MODELS`: what the EPICS backend
monitors and with which DBR type, what it writes, how the caenwrapper backend converts values
for `caen-libs`, what the channel state machine reads back and which readbacks go through
deadbands, which lab-YAML settings a board accepts (and their ranges), what the simulated crate
serves, and the parameter list in the README.

Sources:
- parameter sets by board kind: the project's hardware reference (hardware.md), "Parameter sets
  by board kind, as a real lab reads them" (a lab client run against a real SY4527: every board
  `V0Set`, `I0Set`, `Pw`, `Trip`, `TripInt`, `TripExt`, `Status`, `VMon`, `IMon`; HV boards also
  `RUp`, `RDWn`, `ImRange`, `PDwn`; LV boards also `UNVThr`, `OVVThr`, `RUpTime`, `RDwTime`,
  `Temp`);
- the A7435SN set (`V1Set`, `I1Set`, `POn`, `ZCDetect`, `ZCAdjust`, no `PDwn`): the README of
  the CaenHV satellite of constellation-daq/Constellation (a DESY DAQ framework);
- parameter types (`caen_libs.caenhvwrapper.ParamType`: NUMERIC, ONOFF, CHSTATUS, BDSTATUS,
  BINARY, STRING, ENUM) and their C conversions: `caen_libs/caenhvwrapper.py` of caen-libs 3.3.0;
- `Status` and `BdStatus` bits: `trackerdcs.power.status`, after hardware.md.
Channel counts and ranges are CAEN's catalogue figures for the boards (A1515 family: 16
channels, 1 kV / 1 mA; A2519: 8 channels, 15 V / 5 A), not confirmed from a public source here:
check them against the crate (its front panel, or `get_crate_map`). What is not known is left
open (None): a model without a channel count takes it from the lab YAML. Enum state order
(`ImRange`) and on/off state names (`PDwn`: off Kill, on Ramp) are what the simulator serves; the
caenwrapper backend takes the crate's own from `get_ch_param_prop`.

A lab YAML picks an entry with `crates[].boards.<slot>.model`; a board without a model is the
`generic` entry of its kind: the parameter set the daemon assumed before board models existed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Literal

from trackerdcs.guard import clip


class ParamType(StrEnum):
    """How a parameter's value travels: over Channel Access, and through caen-libs."""

    FLOAT = "float"  # CA DBR_DOUBLE; caen-libs NUMERIC, a C float
    ONOFF = "onoff"  # CA enum of two states; caen-libs ONOFF, a C int 0 (off state) / 1 (on state)
    ENUM = "enum"  # CA enum; caen-libs ENUM, a C int (index from the crate's Minval)
    BITMASK = "bitmask"  # CA DBR_LONG; caen-libs BINARY / CHSTATUS / BDSTATUS, a C int
    STRING = "string"  # CA DBR_STRING; caen-libs STRING, ASCII bytes


class Role(StrEnum):
    SETTING = "setting"  # written by the daemon (lab YAML or commands); readable
    READBACK = "readback"  # measured or reported by the board; read-only
    COMMAND = "command"  # a momentary action


# How a readback the daemon monitors is published: every change (`exact`), or only beyond the
# channel's `vdeadband` / `ideadband` (lab YAML).
Monitor = Literal["exact", "vdeadband", "ideadband"]


@dataclass(frozen=True)
class Param:
    """One CAEN parameter of a board model."""

    name: str  # CAEN spelling, case-sensitive (the PV suffix and the HV Wrapper name)
    type: ParamType
    role: Role
    unit: str = ""
    states: tuple[str, ...] = ()  # ONOFF: (off state, on state); ENUM: states by index
    low: float | None = None  # range, where known
    high: float | None = None
    default: float | int | str = 0  # the value a simulated board starts with
    precision: int = 0  # decimals shown (CA PREC)
    key: str | None = None  # the lab-YAML setting written to it at every (re)connection
    monitor: Monitor | None = None  # the daemon monitors it as a readback

    @property
    def writable(self) -> bool:
        return self.role is not Role.READBACK

    def readback_problem(self, value: object) -> str | None:
        """Why a value the crate reports for this parameter cannot be taken, or None: a FLOAT
        must be a finite number, an ONOFF / ENUM / BITMASK a non-negative 32-bit integer."""
        if self.type is ParamType.STRING:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"{self.name} read {clip(value, 40)}: not a number"
        if self.type is ParamType.FLOAT:
            finite = math.isfinite(value) if isinstance(value, float) else abs(value) < 1e308
            return None if finite else f"{self.name} read {clip(value, 40)}: not finite"
        if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
            return f"{self.name} read {value!r}: not an integer"
        if not 0 <= value < 2**32:
            return f"{self.name} read {clip(value, 40)}: outside 0..2^32-1"
        return None

    def check(self, value: object) -> str | None:
        """Why `value` is not acceptable for this parameter, or None."""
        if isinstance(value, float) and not math.isfinite(value):
            return "must be a finite number"
        if self.states:
            return None if value in self.states else f"must be one of {', '.join(self.states)}"
        if self.type is ParamType.BITMASK and (
            not isinstance(value, int) or isinstance(value, bool) or value < 0
        ):
            return "must be a non-negative integer (a bit mask)"
        if isinstance(value, int | float) and not isinstance(value, bool):
            if self.low is not None and value < self.low:
                return f"must be at least {self.low:g} {self.unit}".rstrip()
            if self.high is not None and value > self.high:
                return f"must be at most {self.high:g} {self.unit}".rstrip()
        return None


@dataclass(frozen=True)
class BoardModel:
    """A board as the crate serves it: its kind, channel count and parameters."""

    name: str
    kind: Literal["hv", "lv"]
    channels: int | None  # None: given by the lab YAML (generic boards)
    params: tuple[Param, ...]
    board_params: tuple[Param, ...] = ()
    description: str = ""
    by_name: dict[str, Param] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_name", {p.name: p for p in self.params})
        missing = [p for p in MONITORED if p not in self.by_name]
        if missing:
            raise ValueError(f"board model {self.name} lacks the readbacks {missing}")

    def has(self, name: str) -> bool:
        return name in self.by_name

    @property
    def monitored(self) -> tuple[Param, ...]:
        """The readbacks the daemon monitors, in `MONITORED` order."""
        return tuple(self.by_name[n] for n in MONITORED)

    @property
    def written(self) -> tuple[Param, ...]:
        """Writable parameters the daemon does not monitor (connected after the readbacks)."""
        return tuple(p for p in self.params if p.writable and p.monitor is None)

    @property
    def settings(self) -> dict[str, Param]:
        """Lab-YAML setting key -> the parameter it is written to."""
        return {p.key: p for p in self.params if p.key}

    @property
    def ramp_by_time(self) -> bool:
        """The board ramps by `RUpTime`/`RDwTime` (ms) rather than `RUp`/`RDWn` (V/s)."""
        return self.has("RDwTime") and not self.has("RDWn")

    @property
    def ramp_down(self) -> str | None:
        """The parameter `kill` raises to its fastest (and `switch on` restores), if any."""
        return "RDwTime" if self.ramp_by_time else ("RDWn" if self.has("RDWn") else None)


# The readbacks the channel state machine needs, on every board model.
MONITORED = ("V0Set", "I0Set", "Pw", "VMon", "IMon", "Status")

_S, _R = Role.SETTING, Role.READBACK
_F, _O, _E, _B, _T = (ParamType.FLOAT, ParamType.ONOFF, ParamType.ENUM, ParamType.BITMASK,
                      ParamType.STRING)  # fmt: skip
PW_STATES = ("Off", "On")
PDWN_STATES = ("Kill", "Ramp")
IMRANGE_STATES = ("High", "Low")  # High: high power, ~3.5 mA full scale; Low: ~350 µA, fine


def _core(kind: str, *, vmax: float | None, imax: float | None) -> tuple[Param, ...]:
    """What every board serves (hardware.md: `V0Set`, `I0Set`, `Pw`, `Trip`, `Status`, `VMon`,
    `IMon`), with the kind's current unit."""
    hv = kind == "hv"
    amps = "uA" if hv else "A"
    return (
        Param("V0Set", _F, _S, "V", low=0, high=vmax, precision=2, monitor="exact"),
        Param(
            "I0Set",
            _F,
            _S,
            amps,
            low=0,
            high=imax,
            default=500.0 if hv else 2.5,
            precision=3,
            monitor="exact",
        ),
        Param("Pw", _O, _S, states=PW_STATES, default="Off", monitor="exact"),
        Param(
            "Trip",
            _F,
            _S,
            "s",
            low=0,
            high=1000.0,
            default=1.0 if hv else 10.0,
            precision=1,
            key="trip",
        ),
        Param("Status", _B, _R, monitor="exact"),
        Param("VMon", _F, _R, "V", precision=2, monitor="vdeadband"),
        Param("IMon", _F, _R, amps, precision=4, monitor="ideadband"),
    )


def _svmax(high: float | None, default: float) -> Param:
    return Param("SVMax", _F, _S, "V", low=0, high=high, default=default, precision=1, key="vmax")


_RATES = (
    Param("RUp", _F, _S, "V/s", default=50.0, precision=1, key="rup"),
    Param("RDWn", _F, _S, "V/s", default=50.0, precision=1, key="rdwn"),
)
_TRIP_LINES = (
    Param("TripInt", _B, _S, key="tripint"),  # internal trip connections (bit mask)
    Param("TripExt", _B, _S, key="tripext"),  # external trip connections (bit mask)
)
_PDWN = Param("PDwn", _O, _S, states=PDWN_STATES, default="Kill", key="pdwn")
_CHNAME = Param("ChName", _T, _R)
_BDSTATUS = (Param("BdStatus", _B, _R),)


def _generic(kind: Literal["hv", "lv"]) -> BoardModel:
    hv = kind == "hv"
    rates = _RATES if hv else tuple(replace(p, default=2.0) for p in _RATES)
    return BoardModel(
        "generic", kind, None,
        (*_core(kind, vmax=None, imax=None), *rates, _svmax(None, 1000.0 if hv else 15.0),
         _PDWN, _CHNAME),
        description="no model given: the SY4527 channel set the daemon assumed before models",
    )  # fmt: skip


BOARD_MODELS: dict[str, BoardModel] = {
    m.name: m
    for m in (
        BoardModel(
            "A1515TG",
            "hv",
            16,
            (
                *_core("hv", vmax=1000.0, imax=1000.0),
                *_RATES,
                _svmax(1000.0, 1000.0),
                _PDWN,
                *_TRIP_LINES,
                Param("ImRange", _E, _S, states=IMRANGE_STATES, default="High", key="imrange"),
                _CHNAME,
            ),
            _BDSTATUS,
            "16 ch 1 kV / 1 mA HV, common floating return (hardware.md HV set)",
        ),
        BoardModel(
            "A7435SN",
            "hv",
            None,  # channel count and ranges not in the source: from the YAML
            (
                *_core("hv", vmax=None, imax=None),
                Param("V1Set", _F, _S, "V", low=0),
                Param("I1Set", _F, _S, "uA", low=0),
                *_RATES,
                _svmax(None, 3500.0),
                Param("POn", _O, _S, states=PW_STATES, default="Off"),
                *_TRIP_LINES,
                Param("ZCDetect", _O, _S, states=PW_STATES, default="Off"),
                Param("ZCAdjust", _O, _S, states=PW_STATES, default="Off"),
                _CHNAME,
            ),
            _BDSTATUS,
            "HV with V1Set/I1Set and POn, no PDwn (Constellation CaenHV satellite)",
        ),
        BoardModel(
            "A2519",
            "lv",
            8,
            (
                *_core("lv", vmax=15.0, imax=5.0),
                *_TRIP_LINES,
                Param("UNVThr", _F, _S, "V", low=0, high=15.0, precision=2, key="unvthr"),
                Param(
                    "OVVThr", _F, _S, "V", low=0, high=16.0, default=16.0, precision=2, key="ovvthr"
                ),
                Param("RUpTime", _F, _S, "ms", default=1000.0, key="ruptime"),
                Param("RDwTime", _F, _S, "ms", default=1000.0, key="rdwtime"),
                Param("Temp", _F, _R, "C", default=25.0, precision=1),
                _CHNAME,
            ),
            _BDSTATUS,
            "8 ch 15 V / 5 A LV, floating channels (hardware.md LV set)",
        ),
    )
}
GENERIC: dict[str, BoardModel] = {"hv": _generic("hv"), "lv": _generic("lv")}
GENERIC_NAME = "generic"


def known_models() -> list[str]:
    return [*BOARD_MODELS, GENERIC_NAME]


def board_model(name: str | None, kind: str) -> BoardModel:
    """The table entry of `name` (None or `generic`: the generic board of `kind`).

    KeyError naming the known models for an unknown name.
    """
    if name is None or name == GENERIC_NAME:
        return GENERIC[kind]
    try:
        return BOARD_MODELS[name]
    except KeyError:
        raise KeyError(
            f"unknown board model {name!r} (known: {', '.join(known_models())})"
        ) from None


def setting_keys() -> dict[str, set[str]]:
    """Every lab-YAML setting key -> the parameters (CAEN names) it is written to."""
    keys: dict[str, set[str]] = {}
    for model in (*BOARD_MODELS.values(), *GENERIC.values()):
        for key, param in model.settings.items():
            keys.setdefault(key, set()).add(param.name)
    return keys


def markdown_table() -> str:
    """The board models as the README lists them (a test keeps the README equal to this)."""
    models = [*BOARD_MODELS.values(), GENERIC["hv"], GENERIC["lv"]]
    lines = ["| model | kind | channels | parameters (setting key) | ramps by |",
             "|---|---|---|---|---|"]  # fmt: skip
    for m in models:
        params = ", ".join(
            f"`{p.name}`" + (f" (`{p.key}`)" if p.key else "") + ("" if p.writable else " ro")
            for p in m.params
        )
        ramp = "time (`ruptime`, `rdwtime`, ms)" if m.ramp_by_time else "rate (`rup`, `rdwn`, V/s)"
        channels = m.channels or "from the YAML"
        lines.append(f"| {m.name} | {m.kind} | {channels} | {params} | {ramp} |")
    return "\n".join(lines)
