"""A stand-in for `caen_libs.caenhvwrapper.Device` over the simulated crate, true to the binding.

CAEN's `libcaenhvwrapper.so` cannot run here, so the caenwrapper backend's one seam
(`device_opener`) gets this `Device`. It behaves as the binding does, after its own source
(`caen_libs/caenhvwrapper.py`, caen-libs 3.3.0 on PyPI):

- every access first asks the parameter's type (`Device.__get_param_type`, through
  `GetChParamProp(..., "Type")`); a name the board does not have raises the binding's `Error`
  with code PARAMNOTFOUND (22): message `"<func> failed: <message> (PARAMNOTFOUND)"`;
- `set_ch_param` builds the C argument with `_PARAM_TYPE_SET_ARG`: NUMERIC as
  `(c_float * n)(*[value] * n)`, ONOFF, CHSTATUS, BDSTATUS, BINARY and ENUM as
  `(c_int * n)(*[value] * n)`, STRING as `value.encode('ascii')`. So a `str` for an on/off
  parameter (`Pw`, `PDwn`) raises ctypes' `TypeError`, a `float` for one too, and a float is
  stored with C float precision;
- `get_ch_param` reads into `(c_float * n)` (NUMERIC) or `(c_int * n)` arrays: floats come back
  as single precision, on/off and enum parameters as ints;
- `get_ch_param_info(slot, ch)` lists the board's parameter names; `get_ch_param_prop` returns a
  `ParamProp` with `type`, `mode`, and for ONOFF `onstate`/`offstate`, for ENUM
  `minval`/`maxval`/`enum`, for NUMERIC `unit`, `minval`, `maxval`;
- `exec_comm("ClearAlarm")` clears the crate's latched alarms.

A crate that does not answer raises `Error` with code DOWN (5). The board model's table types
map to the binding's `ParamType` as the crate reports them: float NUMERIC, on/off ONOFF, enum
ENUM, bit mask BINARY (`Status`: CHSTATUS), string STRING.
"""

from __future__ import annotations

import ctypes as ct
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from trackerdcs.power.boards import Param, ParamType, Role
from trackerdcs.sim.crate_model import SimCrate


class ParamTypeCode(IntEnum):
    """`caen_libs.caenhvwrapper.ParamType`."""

    NUMERIC = 0
    ONOFF = 1
    CHSTATUS = 2
    BDSTATUS = 3
    BINARY = 4
    STRING = 5
    ENUM = 6
    CMD = 7


class ParamMode(IntEnum):
    """`caen_libs.caenhvwrapper.ParamMode`."""

    RDONLY = 0
    WRONLY = 1
    RDWR = 2


class Error(RuntimeError):
    """`caen_libs.caenhvwrapper.Error` (a `caen_libs.error.Error`, itself a RuntimeError)."""

    class Code(IntEnum):
        OK = 0
        SYSERR = 1
        DOWN = 5
        NOTPRES = 6
        PARAMPROPNOTFOUND = 21
        PARAMNOTFOUND = 22

    def __init__(self, message: str, res: int, func: str) -> None:
        self.code = Error.Code(res)
        self.message, self.func = message, func
        super().__init__(f"{func} failed: {message} ({self.code.name})")


@dataclass
class ParamProp:
    """`caen_libs.caenhvwrapper.ParamProp`."""

    type: ParamTypeCode
    mode: ParamMode
    minval: float | None = None
    maxval: float | None = None
    unit: str | None = None
    onstate: str | None = None
    offstate: str | None = None
    enum: tuple[str, ...] | None = None


def type_code(param: Param) -> ParamTypeCode:
    if param.name == "Status":
        return ParamTypeCode.CHSTATUS
    return {
        ParamType.FLOAT: ParamTypeCode.NUMERIC,
        ParamType.ONOFF: ParamTypeCode.ONOFF,
        ParamType.ENUM: ParamTypeCode.ENUM,
        ParamType.BITMASK: ParamTypeCode.BINARY,
        ParamType.STRING: ParamTypeCode.STRING,
    }[param.type]


# caen_libs/caenhvwrapper.py: _PARAM_TYPE_SET_ARG and _PARAM_TYPE_GET_ARG
_SET_ARG: dict[ParamTypeCode, Callable[[Any, int], Any]] = {
    ParamTypeCode.NUMERIC: lambda v, n: (ct.c_float * n)(*[v] * n),
    ParamTypeCode.ONOFF: lambda v, n: (ct.c_int * n)(*[v] * n),
    ParamTypeCode.CHSTATUS: lambda v, n: (ct.c_int * n)(*[v] * n),
    ParamTypeCode.BDSTATUS: lambda v, n: (ct.c_int * n)(*[v] * n),
    ParamTypeCode.BINARY: lambda v, n: (ct.c_int * n)(*[v] * n),
    ParamTypeCode.STRING: lambda v, n: v.encode("ascii"),
    ParamTypeCode.ENUM: lambda v, n: (ct.c_int * n)(*[v] * n),
}
_GET_ARG: dict[ParamTypeCode, Callable[[Sequence[Any]], list[Any]]] = {
    ParamTypeCode.NUMERIC: lambda vs: (ct.c_float * len(vs))(*vs)[:],
    ParamTypeCode.STRING: list,
}


class Device:
    """What the backend uses of `caen_libs.caenhvwrapper.Device`, over `SimCrate`."""

    def __init__(self, model: SimCrate, alive: threading.Event) -> None:
        self.model = model
        self.alive = alive
        self.t = time.monotonic()
        self.closed = False
        self.calls: list[tuple[int, str, Any]] = []  # set_ch_param: (slot, param, C argument)

    def _check(self, func: str) -> None:
        if not self.alive.is_set():
            raise Error("crate does not answer", Error.Code.DOWN, func)

    def _param(self, slot: int, channel: int, name: str) -> Param:
        """`Device.__get_param_type`: an unknown name raises PARAMNOTFOUND."""
        self._check("CAENHV_GetChParamProp")
        param = self.model.channel(slot, channel).model.by_name.get(name)
        if param is None:
            raise Error("Parameter not found", Error.Code.PARAMNOTFOUND, "__get_param_type")
        return param

    def get_ch_param_info(self, slot: int, channel: int) -> tuple[str, ...]:
        self._check("CAENHV_GetChParamInfo")
        return tuple(p.name for p in self.model.channel(slot, channel).model.params)

    def get_ch_param_prop(self, slot: int, channel: int, name: str) -> ParamProp:
        param = self._param(slot, channel, name)
        code = type_code(param)
        mode = ParamMode.RDONLY if param.role is Role.READBACK else ParamMode.RDWR
        prop = ParamProp(code, mode)
        if code is ParamTypeCode.NUMERIC:
            prop.unit, prop.minval, prop.maxval = param.unit, param.low or 0.0, param.high or 0.0
        elif code is ParamTypeCode.ONOFF:
            prop.offstate, prop.onstate = param.states
        elif code is ParamTypeCode.ENUM:
            prop.minval, prop.maxval = 0.0, float(len(param.states) - 1)
            prop.enum = param.states
        return prop

    def get_ch_param(self, slot: int, channels: list[int], name: str) -> list:
        param = self._param(slot, channels[0], name)
        self._step()
        values = [self.model.channel(slot, c).reading(name) for c in channels]
        if param.states:  # ONOFF and ENUM come back as the C int of the state
            values = [param.states.index(v) for v in values]
        return _GET_ARG.get(type_code(param), lambda vs: (ct.c_int * len(vs))(*vs)[:])(values)

    def set_ch_param(self, slot: int, channels: list[int], name: str, value: Any) -> None:
        param = self._param(slot, channels[0], name)
        code = type_code(param)
        c_value = _SET_ARG[code](value, len(channels))  # TypeError as in the binding
        if code is ParamTypeCode.STRING:
            stored: Any = c_value.decode("ascii")
        else:
            stored = c_value[0]
            if param.states:  # the crate takes the index of the state
                stored = param.states[stored]
        self.calls.append((slot, name, c_value))
        for c in channels:
            self.model.write(slot, c, name, stored)

    def exec_comm(self, name: str) -> None:
        self._check("CAENHV_ExecComm")
        assert name == "ClearAlarm", name
        self.model.clear_alarm()

    def close(self) -> None:
        self.closed = True

    def _step(self) -> None:
        now = time.monotonic()
        self.model.step(now - self.t)
        self.t = now
