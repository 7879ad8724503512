"""Physics of a simulated CAEN SY4527 crate: pure state, simulated time, no I/O.

`SimCrate.step(dt)` advances every channel by `dt` seconds of simulated time (it never sleeps);
`SimCrate.write(board, ch, param, value)` applies a client write with the crate's semantics.
Each board serves its model's parameter set (`trackerdcs.power.boards`): a parameter its model
lacks is unknown to it (KeyError), as on a real crate.

Semantics (as the real mainframe behaves, simplified):
- VMon ramps towards V0Set (Pw on) or 0 (Pw off): at RUp / RDWn V/s on boards that ramp by
  rate; on boards that ramp by time (`RUpTime` / `RDwTime`, ms) a ramp to the set point (or
  from it to 0) takes that long. Status: ON while Pw is on, RAMP_UP / RAMP_DOWN while VMon moves.
- IMon is a load model, zero while VMon is 0. HV: the channel's sensor IV curve (`iv`, a
  `trackerdcs.sim.iv.SensorIV`: the virtual lab gives each module's channels one), else a linear
  leakage of `LEAK_PER_VOLT` µA/V; either x `leakage_scale` (per channel) x `temperature_factor`
  (crate-wide), + `leak_extra` µA. LV: VMon / `LV_LOAD_OHM` + `leak_extra` A. Measurement
  noise is relative gaussian, redrawn once per `readout_interval` per channel (staggered), so a
  steady channel's IMon changes about once a second, not per step.
- A load current above I0Set sets OVC; lasting longer than Trip seconds trips the channel:
  INT_TRIP is latched, Pw goes off and VMon drops to 0 at once (PDwn Kill, and boards without
  PDwn) or ramps down (PDwn Ramp). A tripped channel ignores Pw On until `clear_alarm()`.
- LV boards with `UNVThr` / `OVVThr`: VMon above OVVThr (while on) sets OVV, VMon below UNVThr
  once at the set point sets UNV; either lasting longer than Trip trips the channel likewise.
  A threshold of 0 is off. `Temp` (°C) is `TEMP_AMBIENT` + `TEMP_PER_WATT` x the output power.
- `TripInt`, `TripExt`, `ImRange` and every other setting are kept as written.
- SVMax caps V0Set; lowering SVMax below V0Set lowers V0Set.
- `churn` (benchmarks): every channel's VMon and IMon readings jump by a visible offset once per
  `readout_interval`, staggered evenly over the channels. The offset is a reading artefact only:
  it never reaches the trip logic.
"""

from __future__ import annotations

import dataclasses
import math
import operator
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from trackerdcs.power.boards import (
    PW_STATES,
    BoardModel,
    Param,
    ParamType,
    board_model,
)
from trackerdcs.power.status import ChannelStatus
from trackerdcs.sim.iv import SensorIV

Kind = Literal["hv", "lv"]

LEAK_PER_VOLT = 0.02  # µA per V of HV bias at temperature_factor 1
LV_LOAD_OHM = 8.0  # resistive load of an LV channel
TEMP_AMBIENT = 25.0  # °C of an LV board's channel at no load
TEMP_PER_WATT = 1.5  # K per W of output power
CHURN_OFFSET: dict[str, tuple[float, float]] = {"hv": (1.5, 1.5), "lv": (1.5, 0.15)}  # V, µA|A
NO_YES = ("No", "Yes")
# What `SimCrate.step` can change, as CAEN names (published by the server after a step).
PHYSICS_PARAMS = ("VMon", "IMon", "Status", "Pw", "Temp")
# Board layouts: slot -> (model, channel count) or, for a generic board, (kind, channel count).
BoardSpec = tuple[BoardModel | str, int]


def without(model: BoardModel, omit: Iterable[str]) -> BoardModel:
    """`model` as a board that does not serve the parameters `omit` (another firmware or
    model than configured): its name says so."""
    omit = set(omit)
    if not omit:
        return model
    unknown = omit - set(model.by_name)
    if unknown:
        raise ValueError(f"board model {model.name} has no {', '.join(sorted(unknown))}")
    return dataclasses.replace(
        model, name=f"{model.name} without {','.join(sorted(omit))}",
        params=tuple(p for p in model.params if p.name not in omit),
    )  # fmt: skip


@dataclass(eq=False)
class SimChannel:
    """One board channel. Units: V, V/s, ms, s; current in µA (HV) or A (LV)."""

    board: int
    channel: int
    model: BoardModel
    v0set: float = 0.0
    i0set: float = 0.0
    pw: bool = False
    trip: float = 1.0
    svmax: float = math.inf
    vmon: float = 0.0  # true output voltage
    imon: float = 0.0  # measured current (noise included, churn excluded)
    status: int = 0
    settings: dict[str, float | int | str] = field(default_factory=dict)  # every other setting
    leak_extra: float = 0.0  # fault injection, added to the load current
    leakage_scale: float = 1.0  # per-channel HV leakage multiplier (e.g. a module's temperature)
    iv: SensorIV | None = None  # the HV load's IV curve (None: LEAK_PER_VOLT µA/V)
    over_current_time: float = 0.0  # how long the load has been above I0Set, s
    over_voltage_time: float = 0.0  # how long VMon has been beyond UNVThr/OVVThr, s
    ramp_ref: float = 0.0  # V a time-ramped board spreads over its ramp time
    tripped: bool = False  # INT_TRIP latched until ClearAlarm
    noise_factor: float = 0.0  # current gaussian draw, redrawn at each readout
    churn_on: bool = False  # churn offset currently applied to the readings

    @property
    def kind(self) -> Kind:
        return self.model.kind

    @property
    def target(self) -> float:
        return self.v0set if self.pw else 0.0

    @property
    def idle(self) -> bool:
        """Off, at 0 V and nothing pending: stepping it changes nothing."""
        return not self.pw and self.vmon == 0.0 and self.imon == 0.0 and not self.over_current_time

    def setting(self, name: str, default: float = 0.0) -> float:
        value = self.settings.get(name, default)
        return float(value) if isinstance(value, int | float) else default

    def rates(self) -> tuple[float, float]:
        """Ramp-up and ramp-down speed now, V/s."""
        if self.model.ramp_by_time:
            ref = max(self.ramp_ref, 1e-6)
            return (ref / max(self.setting("RUpTime", 1000.0) / 1000.0, 1e-6),
                    ref / max(self.setting("RDwTime", 1000.0) / 1000.0, 1e-6))  # fmt: skip
        return self.setting("RUp", 50.0), self.setting("RDWn", 50.0)

    @property
    def temperature(self) -> float:
        """The board's `Temp` reading of this channel, °C."""
        return round(TEMP_AMBIENT + TEMP_PER_WATT * self.vmon * self.imon, 1)

    def reading(self, param: str) -> float | int | str:
        """The value the crate reports for `param` (Channel Access native form)."""
        if param == "VMon":
            return self.vmon + (CHURN_OFFSET[self.kind][0] if self.churn_on else 0.0)
        if param == "IMon":
            return self.imon + (CHURN_OFFSET[self.kind][1] if self.churn_on else 0.0)
        if param == "Pw":
            return PW_STATES[self.pw]
        if param == "Status":
            return self.status
        if param == "Temp":
            return self.temperature
        if param in _ATTR:
            return getattr(self, _ATTR[param])
        return self.settings[param]


_ATTR = {"V0Set": "v0set", "I0Set": "i0set", "Trip": "trip", "SVMax": "svmax"}


def _number(param: str, value: object, *, positive: bool = False) -> float:
    """A finite, non-negative (or positive) float, else ValueError."""
    if isinstance(value, str | bytes):
        value = value.strip()
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{param}: not a number: {value!r}") from None
    if not math.isfinite(number) or number < 0 or (positive and number == 0):
        raise ValueError(f"{param}: out of range: {number}")
    return number


def enum_state(param: str, value: object, choices: tuple[str, ...]) -> str:
    """An enum state from its name or index (int, numpy int, bool or digit string)."""
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if isinstance(value, str):
        value = value.strip()
        if value in choices:
            return value
        if value.isdigit():
            value = int(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    try:
        index = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        index = -1
    if 0 <= index < len(choices):
        return choices[index]
    raise ValueError(f"{param}: expected one of {choices}: {value!r}")


def _bitmask(param: str, value: object) -> int:
    number = _number(param, value)
    if not number.is_integer() or number >= 2**31:
        raise ValueError(f"{param}: not a bit mask: {value!r}")
    return int(number)


def convert(spec: Param, value: object) -> float | int | str:
    """A client's value for `spec` in the crate's stored form; ValueError if invalid."""
    if spec.states:
        return enum_state(spec.name, value, spec.states)
    if spec.type is ParamType.BITMASK:
        return _bitmask(spec.name, value)
    if spec.type is ParamType.STRING:
        return value.decode("latin-1") if isinstance(value, bytes) else str(value)
    number = _number(spec.name, value, positive=spec.name in _POSITIVE)
    if spec.high is not None and number > spec.high:
        raise ValueError(f"{spec.name}: above {spec.high:g}: {number}")
    return number


_POSITIVE = frozenset({"RUp", "RDWn", "RUpTime", "RDwTime"})


class SimCrate:
    """All channels of one simulated mainframe, advanced in simulated time."""

    def __init__(
        self,
        boards: dict[int, BoardSpec],
        seed: int | None = 0,
        *,
        noise: float = 0.005,
        churn: bool = False,
        readout_interval: float = 1.0,
    ) -> None:
        self.rng = random.Random(seed)
        self.noise = noise
        self.churn = churn
        self.readout_interval = readout_interval
        self.temperature_factor = 1.0  # crate-wide HV leakage multiplier
        self.time = 0.0  # simulated seconds since creation
        self.writes = 0  # client writes to real crate parameters
        self.channels: dict[tuple[int, int], SimChannel] = {}
        self.models: dict[int, BoardModel] = {}
        self.board_status: dict[int, int] = {}  # BdStatus per slot
        for board, (model, count) in sorted(boards.items()):
            if isinstance(model, str):
                if model not in ("hv", "lv"):
                    raise ValueError(f"board {board}: kind must be 'hv' or 'lv', got {model!r}")
                model = board_model(None, model)
            self.models[board] = model
            self.board_status[board] = 0
            for ch in range(count):
                self.channels[board, ch] = _new_channel(board, ch, model)
        self.order: list[SimChannel] = list(self.channels.values())  # readout stagger order

    def channel(self, board: int, ch: int) -> SimChannel:
        try:
            return self.channels[board, ch]
        except KeyError:
            raise KeyError(f"no channel {ch} on board {board}") from None

    # -- physics -------------------------------------------------------------------------------

    def load_current(self, ch: SimChannel) -> float:
        """True load current (µA for HV, A for LV), before noise; 0 at 0 V."""
        if ch.vmon <= 0.0:
            return 0.0
        if ch.kind == "hv":
            bulk = ch.iv.current_at(ch.vmon) if ch.iv is not None else LEAK_PER_VOLT * ch.vmon
            leak = bulk * ch.leakage_scale * self.temperature_factor
        else:
            leak = ch.vmon / LV_LOAD_OHM
        return leak + ch.leak_extra

    def step(self, dt: float) -> list[SimChannel]:
        """Advance `dt` simulated seconds; return the channels whose readings may have changed."""
        if dt < 0:
            raise ValueError("dt must be >= 0")
        due = set(self._due_readouts(self.time, self.time + dt))
        self.time += dt
        changed = []
        for ch in self.order:
            readout = ch in due
            if ch.idle and not (readout and self.churn):
                continue
            before = (ch.vmon, ch.imon, ch.status, ch.pw, ch.churn_on)
            if readout:
                self._readout(ch)
            self._step_channel(ch, dt)
            if (ch.vmon, ch.imon, ch.status, ch.pw, ch.churn_on) != before:
                changed.append(ch)
        return changed

    def _step_channel(self, ch: SimChannel, dt: float) -> None:
        target = ch.target
        up, down = ch.rates()
        if ch.vmon < target:
            ch.vmon = min(target, ch.vmon + up * dt)
        elif ch.vmon > target:
            ch.vmon = max(target, ch.vmon - down * dt)
        load = self.load_current(ch)
        if ch.pw and load > ch.i0set:
            ch.over_current_time += dt
            if ch.over_current_time > ch.trip + 1e-9:
                self._trip(ch)
                load = self.load_current(ch)
        else:
            ch.over_current_time = 0.0
        if ch.pw and self._voltage_fault(ch):
            ch.over_voltage_time += dt
            if ch.over_voltage_time > ch.trip + 1e-9:
                self._trip(ch)
                load = self.load_current(ch)
        else:
            ch.over_voltage_time = 0.0
        ch.imon = load * (1.0 + self.noise * ch.noise_factor) if load else 0.0
        self._update_status(ch)

    @staticmethod
    def _voltage_fault(ch: SimChannel) -> ChannelStatus:
        """OVV / UNV of a board with thresholds (0: off)."""
        fault = ChannelStatus(0)
        ovv, unv = ch.setting("OVVThr"), ch.setting("UNVThr")
        if ovv and ch.vmon > ovv:
            fault |= ChannelStatus.OVV
        if unv and ch.pw and ch.vmon == ch.target and ch.vmon < unv:
            fault |= ChannelStatus.UNV
        return fault

    def _trip(self, ch: SimChannel) -> None:
        ch.tripped = True
        ch.pw = False
        ch.over_current_time = ch.over_voltage_time = 0.0
        if ch.settings.get("PDwn", "Kill") == "Kill":
            ch.vmon = 0.0

    def _update_status(self, ch: SimChannel) -> None:
        status = ChannelStatus(0)
        if ch.pw:
            status |= ChannelStatus.ON
        if ch.vmon < ch.target:
            status |= ChannelStatus.RAMP_UP
        elif ch.vmon > ch.target:
            status |= ChannelStatus.RAMP_DOWN
        if self.load_current(ch) > ch.i0set:
            status |= ChannelStatus.OVC
        if ch.pw:
            status |= self._voltage_fault(ch)
        if ch.tripped:
            status |= ChannelStatus.INT_TRIP
        ch.status = int(status)

    def _readout(self, ch: SimChannel) -> None:
        """The channel's periodic monitor readout: new noise draw, churn toggle."""
        ch.noise_factor = self.rng.gauss(0.0, 1.0) if self.noise else 0.0
        if self.churn:
            ch.churn_on = not ch.churn_on

    def _due_readouts(self, t0: float, t1: float) -> Iterable[SimChannel]:
        """Channels whose staggered readout instant falls in (t0, t1]."""
        n = len(self.order)
        if not n or t1 <= t0 or not (self.noise or self.churn):
            return ()
        eps = 1e-6  # simulated time is a float sum of steps: 10 x 0.1 must reach slot n
        lo = math.floor(t0 / self.readout_interval * n + eps)
        hi = math.floor(t1 / self.readout_interval * n + eps)
        if hi - lo >= n:
            return self.order
        return (self.order[slot % n] for slot in range(lo + 1, hi + 1))

    # -- writes --------------------------------------------------------------------------------

    def write(self, board: int, ch: int, param: str, value: object) -> float | int | str:
        """Apply a client write of a channel parameter; return the value the crate stored.

        Every call counts in `writes`, even when the value is unchanged or rejected
        (ValueError for an invalid value, KeyError for a parameter the board does not serve or
        one that is read-only).
        """
        channel = self.channel(board, ch)
        spec = channel.model.by_name.get(param)
        if spec is None or not spec.writable:
            raise KeyError(f"{param} is not a writable parameter of board {board}")
        self.writes += 1
        stored = convert(spec, value)
        _WRITERS.get(param, _set_other)(channel, param, stored)
        self._update_status(channel)
        return channel.reading(param)

    def write_system(self, param: str, value: object) -> list[SimChannel]:
        """Apply a crate-level write (`ClearAlarm`); return the channels it changed."""
        if param != "ClearAlarm":
            raise KeyError(f"{param} is not a writable system parameter")
        self.writes += 1
        if enum_state(param, value, NO_YES) == "Yes":
            return self.clear_alarm()
        return []

    def clear_alarm(self) -> list[SimChannel]:
        """Clear every latched trip; return the channels whose status changed."""
        cleared = [ch for ch in self.order if ch.tripped]
        for ch in cleared:
            ch.tripped = False
            self._update_status(ch)
        return cleared

    def set_leak(self, board: int, ch: int, value: float) -> None:
        """Fault injection (not a crate write): extra load current on one channel."""
        self.channel(board, ch).leak_extra = float(value)


def _new_channel(board: int, ch: int, model: BoardModel) -> SimChannel:
    d = {p.name: p.default for p in model.params}
    channel = SimChannel(
        board=board, channel=ch, model=model, v0set=float(d["V0Set"]), i0set=float(d["I0Set"]),
        trip=float(d["Trip"]), svmax=float(d.get("SVMax", math.inf)),
    )  # fmt: skip
    for p in model.params:
        if p.writable and p.name not in _ATTR and p.name != "Pw":
            channel.settings[p.name] = p.default
    if model.has("ChName"):
        channel.settings["ChName"] = f"CH{ch:03d}"
    return channel


def _set_v0set(ch: SimChannel, param: str, value: float) -> None:
    ch.v0set = min(value, ch.svmax)
    ch.ramp_ref = max(ch.v0set, ch.vmon)


def _set_svmax(ch: SimChannel, param: str, value: float) -> None:
    ch.svmax = value
    ch.v0set = min(ch.v0set, ch.svmax)


def _set_pw(ch: SimChannel, param: str, value: str) -> None:
    on = value == "On"
    if on and ch.tripped:
        return  # a tripped channel stays off until ClearAlarm
    if on != ch.pw:
        ch.over_current_time = ch.over_voltage_time = 0.0
        ch.ramp_ref = max(ch.v0set, ch.vmon)
    ch.pw = on


def _setter(attr: str):
    def apply(ch: SimChannel, param: str, value: float) -> None:
        setattr(ch, attr, value)

    return apply


def _set_other(ch: SimChannel, param: str, value: float | int | str) -> None:
    ch.settings[param] = value


_WRITERS = {
    "V0Set": _set_v0set,
    "I0Set": _setter("i0set"),
    "Pw": _set_pw,
    "Trip": _setter("trip"),
    "SVMax": _set_svmax,
}
