"""Physics of a simulated CAEN SY4527 crate: pure state, simulated time, no I/O.

`SimCrate.step(dt)` advances every channel by `dt` seconds of simulated time (it never sleeps);
`SimCrate.write(board, ch, param, value)` applies a client write with the crate's semantics.

Semantics (as the real mainframe behaves, simplified):
- VMon ramps towards V0Set (Pw on) or 0 (Pw off) at RUp / RDWn V/s. Status: ON while Pw is on,
  RAMP_UP / RAMP_DOWN while VMon moves.
- IMon is a load model, zero while VMon is 0. HV: leakage `LEAK_PER_VOLT` µA/V x `leakage_scale`
  (per channel) x `temperature_factor` (crate-wide) + `leak_extra` µA. LV: VMon / `LV_LOAD_OHM`
  + `leak_extra` A. Measurement noise is relative gaussian, redrawn once per `readout_interval`
  per channel (staggered), so a steady channel's IMon changes about once a second, not per step.
- A load current above I0Set sets OVC; lasting longer than Trip seconds trips the channel:
  INT_TRIP is latched, Pw goes off and VMon drops to 0 at once (PDwn Kill) or ramps down at RDWn
  (PDwn Ramp). A tripped channel ignores Pw On until `clear_alarm()`.
- SVMax caps V0Set; lowering SVMax below V0Set lowers V0Set.
- `churn` (benchmarks): every channel's VMon and IMon readings jump by a visible offset once per
  `readout_interval`, staggered evenly over the channels. The offset is a reading artefact only:
  it never reaches the trip logic.
"""

from __future__ import annotations

import math
import operator
import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from trackerdcs.power.status import ChannelStatus

Kind = Literal["hv", "lv"]
ParamType = Literal["double", "enum", "int", "string"]

LEAK_PER_VOLT = 0.02  # µA per V of HV bias at temperature_factor 1
LV_LOAD_OHM = 8.0  # resistive load of an LV channel
CHURN_OFFSET: dict[str, tuple[float, float]] = {"hv": (1.5, 1.5), "lv": (1.5, 0.15)}  # V, µA|A
PW_STATES = ("Off", "On")
PDWN_MODES = ("Kill", "Ramp")
NO_YES = ("No", "Yes")


@dataclass(frozen=True)
class Param:
    """One CAEN channel parameter as served over Channel Access."""

    name: str  # CAEN spelling, case-sensitive
    type: ParamType
    writable: bool
    hv: float | int | str  # default on HV boards
    lv: float | int | str  # default on LV boards
    units: tuple[str, str] = ("", "")  # (HV, LV)
    choices: tuple[str, ...] = ()  # enum states, index = raw value
    precision: int = 0

    def default(self, kind: str) -> float | int | str:
        return self.hv if kind == "hv" else self.lv

    def unit(self, kind: str) -> str:
        return self.units[0] if kind == "hv" else self.units[1]


# The channel parameters the crate serves: the server builds its PVs from this table.
PARAMS: tuple[Param, ...] = (
    Param("V0Set", "double", True, 0.0, 0.0, ("V", "V"), precision=2),
    Param("I0Set", "double", True, 500.0, 2.5, ("uA", "A"), precision=3),
    Param("Pw", "enum", True, "Off", "Off", choices=PW_STATES),
    Param("RUp", "double", True, 50.0, 2.0, ("V/s", "V/s"), precision=1),
    Param("RDWn", "double", True, 50.0, 2.0, ("V/s", "V/s"), precision=1),
    Param("Trip", "double", True, 1.0, 10.0, ("s", "s"), precision=1),
    Param("SVMax", "double", True, 1000.0, 15.0, ("V", "V"), precision=1),
    Param("PDwn", "enum", True, "Kill", "Kill", choices=PDWN_MODES),
    Param("VMon", "double", False, 0.0, 0.0, ("V", "V"), precision=2),
    Param("IMon", "double", False, 0.0, 0.0, ("uA", "A"), precision=4),
    Param("Status", "int", False, 0, 0),
    Param("ChName", "string", False, "", ""),
)
PARAM_BY_NAME: dict[str, Param] = {p.name: p for p in PARAMS}
WRITABLE: frozenset[str] = frozenset(p.name for p in PARAMS if p.writable)
SYSTEM_WRITABLE: frozenset[str] = frozenset({"ClearAlarm"})


@dataclass(eq=False)
class SimChannel:
    """One board channel. Units: V, V/s, s; current in µA (HV) or A (LV)."""

    board: int
    channel: int
    kind: Kind
    v0set: float = 0.0
    i0set: float = 0.0
    pw: bool = False
    rup: float = 1.0
    rdwn: float = 1.0
    trip: float = 1.0
    pdwn: str = "Kill"
    svmax: float = 0.0
    vmon: float = 0.0  # true output voltage
    imon: float = 0.0  # measured current (noise included, churn excluded)
    status: int = 0
    name: str = ""
    leak_extra: float = 0.0  # fault injection, added to the load current
    leakage_scale: float = 1.0  # per-channel HV leakage multiplier (e.g. a module's temperature)
    over_current_time: float = 0.0  # how long the load has been above I0Set, s
    tripped: bool = False  # INT_TRIP latched until ClearAlarm
    noise_factor: float = 0.0  # current gaussian draw, redrawn at each readout
    churn_on: bool = False  # churn offset currently applied to the readings

    @property
    def target(self) -> float:
        return self.v0set if self.pw else 0.0

    @property
    def idle(self) -> bool:
        """Off, at 0 V and nothing pending: stepping it changes nothing."""
        return not self.pw and self.vmon == 0.0 and self.imon == 0.0 and not self.over_current_time

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
        if param == "ChName":
            return self.name
        return getattr(self, _ATTR[param])


_ATTR = {"V0Set": "v0set", "I0Set": "i0set", "RUp": "rup", "RDWn": "rdwn", "Trip": "trip",
         "SVMax": "svmax", "PDwn": "pdwn"}  # fmt: skip


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


class SimCrate:
    """All channels of one simulated mainframe, advanced in simulated time."""

    def __init__(
        self,
        boards: dict[int, tuple[str, int]],
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
        for board, (kind, count) in sorted(boards.items()):
            if kind not in ("hv", "lv"):
                raise ValueError(f"board {board}: kind must be 'hv' or 'lv', got {kind!r}")
            for ch in range(count):
                self.channels[board, ch] = _new_channel(board, ch, kind)
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
            leak = LEAK_PER_VOLT * ch.vmon * ch.leakage_scale * self.temperature_factor
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
        if ch.vmon < target:
            ch.vmon = min(target, ch.vmon + ch.rup * dt)
        elif ch.vmon > target:
            ch.vmon = max(target, ch.vmon - ch.rdwn * dt)
        load = self.load_current(ch)
        if ch.pw and load > ch.i0set:
            ch.over_current_time += dt
            if ch.over_current_time > ch.trip + 1e-9:
                self._trip(ch)
                load = self.load_current(ch)
        else:
            ch.over_current_time = 0.0
        ch.imon = load * (1.0 + self.noise * ch.noise_factor) if load else 0.0
        self._update_status(ch)

    def _trip(self, ch: SimChannel) -> None:
        ch.tripped = True
        ch.pw = False
        ch.over_current_time = 0.0
        if ch.pdwn == "Kill":
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
        (ValueError for an invalid value, KeyError for an unknown or read-only parameter).
        """
        channel = self.channel(board, ch)
        if param not in WRITABLE:
            raise KeyError(f"{param} is not a writable channel parameter")
        self.writes += 1
        _WRITERS[param](channel, param, value)
        self._update_status(channel)
        return channel.reading(param)

    def write_system(self, param: str, value: object) -> list[SimChannel]:
        """Apply a crate-level write (`ClearAlarm`); return the channels it changed."""
        if param not in SYSTEM_WRITABLE:
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


def _new_channel(board: int, ch: int, kind: str) -> SimChannel:
    d = {p.name: p.default(kind) for p in PARAMS}
    return SimChannel(
        board=board, channel=ch, kind=kind, v0set=float(d["V0Set"]), i0set=float(d["I0Set"]),
        rup=float(d["RUp"]), rdwn=float(d["RDWn"]), trip=float(d["Trip"]), pdwn=str(d["PDwn"]),
        svmax=float(d["SVMax"]), name=f"CH{ch:03d}",
    )  # fmt: skip


def _set_v0set(ch: SimChannel, param: str, value: object) -> None:
    ch.v0set = min(_number(param, value), ch.svmax)


def _set_svmax(ch: SimChannel, param: str, value: object) -> None:
    ch.svmax = _number(param, value)
    ch.v0set = min(ch.v0set, ch.svmax)


def _set_pw(ch: SimChannel, param: str, value: object) -> None:
    on = enum_state(param, value, PW_STATES) == "On"
    if on and ch.tripped:
        return  # a tripped channel stays off until ClearAlarm
    if on != ch.pw:
        ch.over_current_time = 0.0
    ch.pw = on


def _setter(attr: str, *, positive: bool = False):
    def apply(ch: SimChannel, param: str, value: object) -> None:
        setattr(ch, attr, _number(param, value, positive=positive))

    return apply


def _set_pdwn(ch: SimChannel, param: str, value: object) -> None:
    ch.pdwn = enum_state(param, value, PDWN_MODES)


_WRITERS = {
    "V0Set": _set_v0set,
    "I0Set": _setter("i0set"),
    "Pw": _set_pw,
    "RUp": _setter("rup", positive=True),
    "RDWn": _setter("rdwn", positive=True),
    "Trip": _setter("trip"),
    "SVMax": _set_svmax,
    "PDwn": _set_pdwn,
}
assert set(_WRITERS) == WRITABLE, "every writable parameter needs a writer"
