"""Typed Julabo device API for one model family (`trackerdcs.julabo.models`).

    with Julabo.from_url("socket://127.0.0.1:5050", profile="full") as chiller:
        chiller.set_setpoint(1, 18.5)      # OUT_SP_00 18.50, read back and verified
        chiller.active_setpoint = 0        # wire index: 0 selects set point 1
        chiller.start()
        print(chiller.bath_temperature, chiller.status())

Every parameter of `models.PARAMETERS` is an attribute (and `read(name)` / `write(name, value)`);
the profile says under which command the unit keeps it. A parameter the model does not have, or
writing one that is read-only on it, raises `NotSupported` (an `AttributeError`) and sends
nothing. Reading a numeric reply that is not a number raises `ProtocolError` naming the command
and the reply (after the protocol's retries); a placeholder reply (`---.--`) reads as None.
Writing validates the value first (type, range: `ValueError`, nothing is sent), then sends it,
reads it back and raises `ReadbackMismatch` (with the unit's STATUS, e.g. `-11 VALUE TOO LARGE`)
if it was not applied. Floats are sent with the parameter's decimals (two for temperatures).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from trackerdcs.guard import clip
from trackerdcs.julabo.models import (
    DEFAULT_PROFILE,
    PARAMETERS,
    NotSupported,
    Parameter,
    Profile,
    Register,
    profile,
)
from trackerdcs.julabo.protocol import (
    JulaboProtocol,
    JulaboStatus,
    ProtocolError,
    is_placeholder,
    parse_number,
)
from trackerdcs.julabo.transport import OpenedInWith, SerialSettings, SerialTransport

Value = float | int | bool


def decode(parameter: Parameter, command: str, reply: str) -> Value | None:
    """The reply as the parameter's type, None for a placeholder; `ProtocolError` otherwise,
    also for a number outside what the parameter can hold (`Parameter.reading_range`: an
    `IN_MODE_01` answering 3, a bath at 9999 °C): a garbled reply, asked again."""
    if is_placeholder(reply):
        return None
    number = parse_number(command, reply)
    if parameter.kind is not float and not number.is_integer():
        raise ProtocolError(f"{command}: expected an integer, got {clip(reply, 40)}")
    if parameter.kind is bool and number not in (0, 1):
        raise ProtocolError(f"{command}: expected 0 or 1, got {clip(reply, 40)}")
    low, high = parameter.reading_range
    if not low <= number <= high:
        raise ProtocolError(
            f"{command}: {number:g} is outside {low:g}..{high:g} {parameter.unit}".rstrip()
            + f" ({parameter.name}): a garbled reply"
        )
    value: Value = parameter.kind(number)
    return value


def encode(
    parameter: Parameter, value: object, temperature_range: tuple[float, float] | None
) -> str:
    """The wire text of `value`; `ValueError` if its type or range is wrong."""
    name = parameter.name
    if parameter.kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{name}: expected a bool, got {value!r}")
        return "1" if value else "0"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name}: expected a number, got {value!r}")
    if parameter.kind is int and not isinstance(value, int):
        raise ValueError(f"{name}: expected an integer, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name}: value must be finite, got {value!r}")
    low, high = parameter.minimum, parameter.maximum
    if parameter.temperature and temperature_range is not None:
        low, high = temperature_range
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{name}: {value} outside [{low}, {high}]")
    return str(value) if parameter.kind is int else f"{value:.{parameter.decimals}f}"


@dataclass(frozen=True)
class Applied:
    """A write the unit applied: the verified read-back, and STATUS's complaint about it, if
    any (`-13 VALUE EXCEEDS TEMPERATURE LIMITS`: the value is stored all the same)."""

    value: Value | None
    warning: JulaboStatus | None = None


class _Attribute:
    """`chiller.bath_temperature` reads, `chiller.pump_stage = 3` writes (see the module doc)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.__doc__ = PARAMETERS[name].doc

    def __get__(self, obj: Julabo | None, owner: type | None = None) -> Any:
        if obj is None:
            return self
        return obj.read(self.name)

    def __set__(self, obj: Julabo, value: Value) -> None:
        obj.write(self.name, value)


class Julabo(OpenedInWith):
    """A Julabo circulator/chiller of one model family. Thread-safe (the protocol serialises
    exchanges).

    `temperature_range` (°C), when given, is checked before sending set points and warning
    limits; without it the unit itself refuses out-of-range values (`ReadbackMismatch`).
    """

    def __init__(
        self,
        protocol: JulaboProtocol,
        *,
        profile: Profile | str = DEFAULT_PROFILE,
        temperature_range: tuple[float, float] | None = None,
    ) -> None:
        if temperature_range is not None and temperature_range[0] >= temperature_range[1]:
            raise ValueError(f"temperature_range must be (low, high), got {temperature_range}")
        self.protocol = protocol
        self.profile = _profile(profile)
        self.temperature_range = temperature_range
        self.missing: set[str] = set()  # optional parameters this unit turned out not to have

    @classmethod
    def from_url(
        cls,
        url: str,
        settings: SerialSettings | None = None,
        *,
        profile: Profile | str = DEFAULT_PROFILE,
        write_delay: float = 0.25,
        query_delay: float = 0.1,
        readback_tolerance: float = 0.005,
        retries: int = 1,
        temperature_range: tuple[float, float] | None = None,
    ) -> Julabo:
        """A device on `url` (see `SerialTransport`); not opened until `open()` or `with`."""
        protocol = JulaboProtocol(
            SerialTransport(url, settings),
            write_delay=write_delay,
            query_delay=query_delay,
            readback_tolerance=readback_tolerance,
            retries=retries,
        )
        return cls(protocol, profile=profile, temperature_range=temperature_range)

    @property
    def is_open(self) -> bool:
        return self.protocol.transport.is_open

    def open(self) -> None:
        """Open the line (again, after a `TransportError` and `close()`); forget `missing`
        (a reopened line may lead to another unit)."""
        self.missing.clear()
        self.protocol.transport.open()

    def close(self) -> None:
        self.protocol.transport.close()

    # -- commands ----------------------------------------------------------------------------------

    def identify(self) -> str:
        """The unit's VERSION string."""
        return self.protocol.query("VERSION")

    def status(self) -> JulaboStatus:
        """The decoded STATUS (mode 00..03, or a negative error code)."""
        return self.protocol.status()

    def setpoint(self, index: int) -> float | None:
        """Set point `index` (1..3; a model with one set point has only 1), °C."""
        value = self.read(_setpoint_name(index))
        return None if value is None else float(value)

    def set_setpoint(self, index: int, value: float) -> float:
        """Set set point `index` to `value` °C; returns the verified read-back."""
        return float(self.write(_setpoint_name(index), value))

    def start(self) -> None:
        """Start temperature control (OUT_MODE_05 1, verified)."""
        self.write("running", True)

    def stop(self) -> None:
        """Stop temperature control (OUT_MODE_05 0, verified)."""
        self.write("running", False)

    # -- generic access by name (for daemons mapping topics onto parameters) --------------------

    def parameters(self) -> dict[str, Register]:
        """This model's command table: parameter name -> its register."""
        return dict(self.profile.registers)

    def has(self, name: str) -> bool:
        """Whether this model has parameter `name` (and the unit did not turn out to lack it)."""
        return self.profile.has(name) and name not in self.missing

    def mark_missing(self, name: str) -> None:
        """This unit does not answer optional parameter `name`: never send it again (until the
        line is reopened); `read`/`write` raise `NotSupported` for it."""
        self.missing.add(name)

    def read(self, name: str) -> Value | None:
        """Read parameter `name`: its value, or None for a placeholder reply (`---.--`)."""
        parameter, register = self._lookup(name)
        reply: Value | None = self.protocol.query(
            register.query, lambda text: decode(parameter, register.query, text)
        )
        return reply

    def write(self, name: str, value: Value) -> Value:
        """Write parameter `name`; returns the verified read-back."""
        applied = self.apply(name, value)
        if applied.value is None:
            raise ProtocolError(f"{name}: read back a placeholder after writing {value!r}")
        return applied.value

    def apply(self, name: str, value: Value) -> Applied:
        """Write parameter `name`: the verified read-back and STATUS's complaint, if any."""
        parameter, register = self._lookup(name)
        if register.write is None:
            raise NotSupported(f"{name} is read-only on a Julabo of model {self.profile.name!r}")
        text = encode(parameter, value, self.temperature_range)
        sent = self.protocol.send(f"{register.write} {text}")
        return Applied(decode(parameter, register.query, sent.readback), sent.warning)

    # -- internals -------------------------------------------------------------------------------

    def _lookup(self, name: str) -> tuple[Parameter, Register]:
        parameter = PARAMETERS.get(name)
        if parameter is None:
            raise NotSupported(f"no Julabo parameter {name!r}")
        if name in self.missing:
            raise NotSupported(f"this unit does not answer {name} (model {self.profile.name!r})")
        return parameter, self.profile.register(name)

    def __repr__(self) -> str:
        return f"Julabo({self.protocol.transport.url!r}, profile={self.profile.name!r})"


for _name in PARAMETERS:
    setattr(Julabo, _name, _Attribute(_name))


def _setpoint_name(index: int) -> str:
    if isinstance(index, bool) or index not in (1, 2, 3):
        raise ValueError(f"set point index must be 1, 2 or 3, got {index!r}")
    return f"setpoint_{index}"


def _profile(value: Profile | str) -> Profile:
    return value if isinstance(value, Profile) else profile(value)
