"""Typed Julabo device API, declared as a table of parameters (one line per command).

    with Julabo.from_url("socket://127.0.0.1:5050") as chiller:
        chiller.set_setpoint(1, 18.5)      # OUT_SP_00 18.50, read back and verified
        chiller.active_setpoint = 0        # wire index: 0 selects set point 1
        chiller.start()
        print(chiller.bath_temperature, chiller.status())

Each class attribute of type `Reading` (read-only) or `Control` (read/write) is one row of the
command table: name, `IN_` command, `OUT_` command, type and range. Reading a numeric reply that
is not a number raises `ProtocolError` naming the command and the reply. Writing validates the
value first (type, range: `ValueError`, nothing is sent), then sends it, reads it back and raises
`ReadbackMismatch` (with the unit's STATUS, e.g. `-11 VALUE TOO LARGE`) if it was not applied.
Floats are sent with two decimals.
"""

from __future__ import annotations

import math
from typing import Any, Generic, Never, NoReturn, Self, TypeVar, overload

from trackerdcs.julabo.protocol import (
    JulaboProtocol,
    JulaboStatus,
    ProtocolError,
    parse_number,
)
from trackerdcs.julabo.transport import OpenedInWith, SerialSettings, SerialTransport

T = TypeVar("T", bound=float)  # float, int or bool


class _Parameter(Generic[T]):
    """One row of the command table."""

    def __init__(self, query: str, kind: type[T], doc: str) -> None:
        self.query = query
        self.kind: type[T] = kind
        self.doc = doc
        self.__doc__ = doc
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> Self: ...
    @overload
    def __get__(self, obj: Julabo, owner: type | None = None) -> T: ...
    def __get__(self, obj: Julabo | None, owner: type | None = None) -> Self | T:
        if obj is None:
            return self
        return obj._read_parameter(self)

    def decode(self, reply: str) -> T:
        """The reply as this parameter's type; `ProtocolError` if it is not one."""
        number = parse_number(self.query, reply)
        if self.kind is not float and not number.is_integer():
            raise ProtocolError(f"{self.query}: expected an integer, got {reply!r}")
        if self.kind is bool and number not in (0, 1):
            raise ProtocolError(f"{self.query}: expected 0 or 1, got {reply!r}")
        return self.kind(number)


class Reading(_Parameter[T]):
    """A read-only parameter (`IN_` command only)."""

    def __set__(self, obj: Julabo, value: Never) -> NoReturn:
        raise AttributeError(f"{self.name} is read-only")


class Control(_Parameter[T]):
    """A read/write parameter: `IN_` to read, `OUT_` to write, with a range.

    `temperature=True` checks the value against the device's `temperature_range` (if given)
    instead of fixed bounds: the valid range depends on the unit.
    """

    def __init__(
        self,
        query: str,
        write: str,
        kind: type[T],
        doc: str,
        *,
        minimum: float | None = None,
        maximum: float | None = None,
        temperature: bool = False,
    ) -> None:
        super().__init__(query, kind, doc)
        self.write = write
        self.minimum = minimum
        self.maximum = maximum
        self.temperature = temperature

    def __set__(self, obj: Julabo, value: T) -> None:
        obj._write_parameter(self, value)

    def encode(self, value: object, temperature_range: tuple[float, float] | None) -> str:
        """The wire text of `value`; `ValueError` if its type or range is wrong."""
        if self.kind is bool:
            if not isinstance(value, bool):
                raise ValueError(f"{self.name}: expected a bool, got {value!r}")
            return "1" if value else "0"
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{self.name}: expected a number, got {value!r}")
        if self.kind is int and not isinstance(value, int):
            raise ValueError(f"{self.name}: expected an integer, got {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"{self.name}: value must be finite, got {value!r}")
        low, high = self.minimum, self.maximum
        if self.temperature and temperature_range is not None:
            low, high = temperature_range
        if (low is not None and value < low) or (high is not None and value > high):
            raise ValueError(f"{self.name}: {value} outside [{low}, {high}]")
        return str(value) if self.kind is int else f"{value:.2f}"


class Julabo(OpenedInWith):
    """A Julabo circulator/chiller. Thread-safe (the protocol serialises exchanges).

    `temperature_range` (°C), when given, is checked before sending set points and warning
    limits; without it the unit itself refuses out-of-range values (`ReadbackMismatch`).
    """

    # -- the command table ---------------------------------------------------------------------
    bath_temperature = Reading("IN_PV_00", float, "Bath (internal) temperature, °C.")
    heating_power = Reading("IN_PV_01", float, "Heating power, %; negative when cooling.")
    external_temperature = Reading("IN_PV_02", float, "External Pt100 temperature, °C.")
    safety_temperature = Reading("IN_PV_03", float, "Safety sensor temperature, °C.")
    excess_temperature_limit = Reading(
        "IN_PV_04", float, "Excess-temperature protection set point, °C."
    )
    setpoint_1 = Control("IN_SP_00", "OUT_SP_00", float, "Set point 1, °C.", temperature=True)
    setpoint_2 = Control("IN_SP_01", "OUT_SP_01", float, "Set point 2, °C.", temperature=True)
    setpoint_3 = Control("IN_SP_02", "OUT_SP_02", float, "Set point 3, °C.", temperature=True)
    high_limit = Control(
        "IN_SP_03", "OUT_SP_03", float, "High-temperature warning limit, °C.", temperature=True
    )
    low_limit = Control(
        "IN_SP_04", "OUT_SP_04", float, "Low-temperature warning limit, °C.", temperature=True
    )
    pump_stage = Control(
        "IN_SP_07", "OUT_SP_07", int, "Pump pressure stage, 1..4.", minimum=1, maximum=4
    )
    active_setpoint = Control(
        "IN_MODE_01",
        "OUT_MODE_01",
        int,
        "Active set point as the wire index 0..2: 0 selects setpoint(1), 2 selects setpoint(3).",
        minimum=0,
        maximum=2,
    )
    external_control = Control(
        "IN_MODE_04", "OUT_MODE_04", bool, "Control on the external sensor (else internal)."
    )
    running = Control("IN_MODE_05", "OUT_MODE_05", bool, "Temperature control running.")

    # -- life cycle ------------------------------------------------------------------------------

    def __init__(
        self, protocol: JulaboProtocol, *, temperature_range: tuple[float, float] | None = None
    ) -> None:
        if temperature_range is not None and temperature_range[0] >= temperature_range[1]:
            raise ValueError(f"temperature_range must be (low, high), got {temperature_range}")
        self.protocol = protocol
        self.temperature_range = temperature_range

    @classmethod
    def from_url(
        cls,
        url: str,
        settings: SerialSettings | None = None,
        *,
        write_delay: float = 0.25,
        query_delay: float = 0.1,
        readback_tolerance: float = 0.005,
        temperature_range: tuple[float, float] | None = None,
    ) -> Julabo:
        """A device on `url` (see `SerialTransport`); not opened until `open()` or `with`."""
        protocol = JulaboProtocol(
            SerialTransport(url, settings),
            write_delay=write_delay,
            query_delay=query_delay,
            readback_tolerance=readback_tolerance,
        )
        return cls(protocol, temperature_range=temperature_range)

    @property
    def is_open(self) -> bool:
        return self.protocol.transport.is_open

    def open(self) -> None:
        """Open the line (again, after a `TransportError` and `close()`)."""
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

    def setpoint(self, index: int) -> float:
        """Set point `index` (1..3), °C."""
        return self._read_parameter(self._setpoint_parameter(index))

    def set_setpoint(self, index: int, value: float) -> float:
        """Set set point `index` (1..3) to `value` °C; returns the verified read-back."""
        return self._write_parameter(self._setpoint_parameter(index), value)

    def start(self) -> None:
        """Start temperature control (OUT_MODE_05 1, verified)."""
        self._write_parameter(Julabo.running, True)

    def stop(self) -> None:
        """Stop temperature control (OUT_MODE_05 0, verified)."""
        self._write_parameter(Julabo.running, False)

    # -- generic access by name (for daemons mapping topics onto parameters) --------------------

    @classmethod
    def parameters(cls) -> dict[str, Reading[Any] | Control[Any]]:
        """The command table: attribute name -> `Reading` or `Control` (subclasses included)."""
        table: dict[str, Reading[Any] | Control[Any]] = {}
        for klass in reversed(cls.__mro__):
            for name, attr in vars(klass).items():
                if isinstance(attr, Reading | Control):
                    table[name] = attr
        return table

    def read(self, name: str) -> float | int | bool:
        """Read the parameter called `name` (a key of `parameters()`)."""
        value: float | int | bool = self._read_parameter(self._lookup(name))
        return value

    def write(self, name: str, value: float | int | bool) -> float | int | bool:
        """Write the `Control` called `name`; returns the verified read-back."""
        parameter = self._lookup(name)
        if not isinstance(parameter, Control):
            raise AttributeError(f"{name} is read-only")
        readback: float | int | bool = self._write_parameter(parameter, value)
        return readback

    # -- internals -------------------------------------------------------------------------------

    def _lookup(self, name: str) -> Reading[Any] | Control[Any]:
        try:
            return self.parameters()[name]
        except KeyError:
            raise AttributeError(f"no Julabo parameter {name!r}") from None

    @staticmethod
    def _setpoint_parameter(index: int) -> Control[float]:
        table = (Julabo.setpoint_1, Julabo.setpoint_2, Julabo.setpoint_3)
        if isinstance(index, bool) or index not in (1, 2, 3):
            raise ValueError(f"set point index must be 1, 2 or 3, got {index!r}")
        return table[index - 1]

    def _read_parameter(self, parameter: _Parameter[T]) -> T:
        return parameter.decode(self.protocol.query(parameter.query))

    def _write_parameter(self, parameter: Control[T], value: object) -> T:
        text = parameter.encode(value, self.temperature_range)
        readback = self.protocol.send(f"{parameter.write} {text}")
        return parameter.decode(readback)

    def __repr__(self) -> str:
        return f"Julabo({self.protocol.transport.url!r})"
