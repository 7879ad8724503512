"""A crate through CAEN's HV Wrapper C library (`caen-libs`), by polling.

The library (`caen_libs.caenhvwrapper`, which loads CAEN's proprietary `libcaenhvwrapper.so`) is
imported only when this backend starts. One thread owns the crate session — the only safe way to
use the library (one session per crate) — and alternates writes, which go first, with reading
every monitored parameter of a board in one call per parameter. Polling more often than every
15 s also keeps the crate from dropping an idle session.

One poll is one consistent picture of a channel, as far as reading parameter by parameter
allows: `Pw` and `Status` are read before the values they qualify (`POLL_FIRST`), so a `Status`
that says the ramp has ended comes with a `VMon` read after it ended; and what changed in the
poll reaches the daemon as one batch (`BackendSink.on_readbacks`), so no status is published with
the poll's new `Status` and the `VMon` of the poll before. (Read `VMon` first and a crate slow
between two calls gives `ON` beside a `VMon` still ramping: seen in CI.)

What is read and written per channel is the board's model (`trackerdcs.power.boards`). When a
session opens, each board is asked what it serves (`get_ch_param_info`) and how each parameter
is typed (`get_ch_param_prop`): a parameter of the model the board does not serve is reported
once (`BackendSink.on_absent`) and never written; values are converted as caen-libs wants them
(`caen_libs/caenhvwrapper.py`, `_PARAM_TYPE_SET_ARG`): NUMERIC as a float, ONOFF as the C int
0/1 of the board's own off/on state names (`Offstate`/`Onstate`: `Pw` On, `PDwn` Ramp), ENUM as
the int of its state in the board's `Enum` list (from `Minval`), BINARY as an int, STRING as
text. A parameter the library does not know (its `Error` with code PARAMNOTFOUND or
PARAMPROPNOTFOUND) is counted absent; a write it refuses by type is dropped with an error in the
log. Neither reopens the session: only a failing connection does.

`device_opener` is the one seam tests replace: a callable returning an object with the
`caen_libs.caenhvwrapper.Device` methods this backend uses (`get_ch_param_info`,
`get_ch_param_prop`, `get_ch_param`, `set_ch_param`, `exec_comm`, `close`).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from trackerdcs.config import CrateConfig
from trackerdcs.guard import FAULTS
from trackerdcs.power.backend import (
    BackendError,
    BackendSink,
    ChannelAddress,
    ParamAbsent,
    channel_models,
)
from trackerdcs.power.boards import BoardModel, Param, ParamType

log = logging.getLogger(__name__)

DeviceOpener = Callable[[CrateConfig], Any]

# caen_libs.caenhvwrapper.ParamType values (_caenhvwrappertypes.py)
NUMERIC, ONOFF, CHSTATUS, BDSTATUS, BINARY, STRING, ENUM, CMD = range(8)
# caen_libs.caenhvwrapper.Error.Code values meaning "no such parameter"
PARAM_NOT_FOUND_CODES = frozenset({21, 22})  # PARAMPROPNOTFOUND, PARAMNOTFOUND
# The states first, then the readings they qualify (the rest keep the board model's order).
POLL_FIRST = ("Pw", "Status")


def poll_order(model: BoardModel) -> tuple[Param, ...]:
    """The monitored parameters of a board in the order one poll reads them."""
    first = [p for p in model.monitored if p.name in POLL_FIRST]
    return (*first, *(p for p in model.monitored if p.name not in POLL_FIRST))


_TABLE_TYPE = {ParamType.FLOAT: NUMERIC, ParamType.ONOFF: ONOFF, ParamType.ENUM: ENUM,
               ParamType.BITMASK: BINARY, ParamType.STRING: STRING}  # fmt: skip


def open_caen_device(crate: CrateConfig) -> Any:
    """Open a session with the real library (import deferred: it needs CAEN's .so)."""
    from caen_libs import caenhvwrapper as hv

    host = crate.address.split(":")[0]
    return hv.Device.open(
        hv.SystemType.SY4527,
        hv.LinkType.TCPIP,
        host,
        os.environ.get(crate.username_env, ""),
        os.environ.get(crate.password_env, ""),
    )


def is_param_not_found(exc: BaseException) -> bool:
    """The binding's `Error` for a parameter the board does not have."""
    code = getattr(exc, "code", None)
    try:
        return code is not None and int(code) in PARAM_NOT_FOUND_CODES
    except (TypeError, ValueError):
        return False


class WireType:
    """How one parameter of one board travels through caen-libs: the board's own answer to
    `get_ch_param_prop` where it gave one, else the model table's."""

    def __init__(self, param: Param, prop: Any = None) -> None:
        self.param = param
        self.type = int(getattr(prop, "type", _TABLE_TYPE[param.type]))
        off, on = (*param.states, "", "")[:2]
        self.off = getattr(prop, "offstate", None) or off
        self.on = getattr(prop, "onstate", None) or on
        self.enum = tuple(getattr(prop, "enum", None) or param.states)
        self.minval = int(getattr(prop, "minval", None) or 0)

    def to_wire(self, value: float | int | str) -> float | int | str:
        """The value as caen-libs takes it for this parameter; ValueError if it cannot be."""
        name = self.param.name
        if self.type == NUMERIC:
            return float(value)
        if self.type == ONOFF:
            if isinstance(value, str):
                for index, state in ((0, self.off), (1, self.on)):
                    if value.lower() == state.lower():
                        return index
                raise ValueError(f"{name}: {value!r} is neither {self.off!r} nor {self.on!r}")
            return int(value)
        if self.type == ENUM:
            if isinstance(value, str):
                if value not in self.enum:
                    raise ValueError(f"{name}: {value!r} is not one of {self.enum}")
                return self.enum.index(value) + self.minval
            return int(value)
        if self.type == STRING:
            return str(value)
        return int(value)  # CHSTATUS, BDSTATUS, BINARY


class CaenWrapperBackend:
    """`PowerBackend` over the HV Wrapper library."""

    def __init__(
        self,
        crate: CrateConfig,
        addresses: list[ChannelAddress],
        device_opener: DeviceOpener = open_caen_device,
        poll_interval: float = 0.5,
        retry_interval: float = 2.0,
    ) -> None:
        self.crate = crate
        self.addresses = list(addresses)
        self.models = channel_models(crate, self.addresses)
        self.device_opener = device_opener
        self.poll_interval = poll_interval
        self.retry_interval = retry_interval
        self._boards: dict[int, list[int]] = defaultdict(list)
        for addr in self.addresses:
            self._boards[addr.board].append(addr.channel)
        self._poll_order = {slot: poll_order(self._model(slot)) for slot in self._boards}
        self._writes: queue.Queue[tuple[str, tuple]] = queue.Queue()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._sink: BackendSink | None = None
        self._device: Any = None
        self._last: dict[tuple[ChannelAddress, str], Any] = {}
        self._wire: dict[tuple[int, str], WireType] = {}  # (slot, param) -> its conversion
        self._absent: set[tuple[int, str]] = set()  # (slot, param) the board does not serve
        self._reported: set[tuple[int, str]] = set()
        self._connected = False
        self._read_at: float | None = None  # unix s: the latest poll, or attempt to open

    def _model(self, slot: int) -> BoardModel:
        return self.crate.boards[slot].spec

    # -- life cycle -------------------------------------------------------------------------------
    def start(self, sink: BackendSink) -> None:
        self._sink = sink
        self._thread = threading.Thread(target=self._run, name=f"caen-{self.crate.name}")
        self._thread.daemon = True
        self._thread.start()

    def alive(self) -> bool:
        """The session thread runs (or was stopped)."""
        return (self._thread is not None and self._thread.is_alive()) or self._stop.is_set()

    def data_time(self) -> float | None:
        """When the latest poll (or attempt to open a session) started: the readbacks are as of
        then (unix s); None if the session thread ended."""
        return self._read_at if self.alive() else None

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(5)
        self._close()

    def reconnect(self) -> None:
        self._enqueue("reconnect")

    def _enqueue(self, what: str, *args: Any) -> None:
        self._writes.put((what, args))
        self._wake.set()

    # -- writes (queued for the session thread) ---------------------------------------------------
    def write(self, addr: ChannelAddress, param: str, value: float | int | str) -> None:
        model = self.models.get(addr)
        spec = model.by_name.get(param) if model else None
        if spec is None or not spec.writable:
            raise BackendError(f"{param} is not a writable parameter of {addr}")
        if not self._connected:
            raise BackendError(f"crate {self.crate.name} is not connected")
        if (addr.board, param) in self._absent:
            raise ParamAbsent(f"board {addr.board} of crate {self.crate.name} has no {param}")
        self._enqueue("set", addr, param, value)

    def clear_alarm(self) -> None:
        if not self._connected:
            raise BackendError(f"crate {self.crate.name} is not connected")
        self._enqueue("clear")

    # -- the session thread -----------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._cycle()
            except Exception as exc:  # a bug here, not the library's: reported, the session
                FAULTS.fault(f"the session thread of crate {self.crate.name}", exc)  # reopened
                self._lost()
                self._stop.wait(self.retry_interval)
            else:
                FAULTS.ok(f"the session thread of crate {self.crate.name}")

    def _cycle(self) -> None:
        """Open the session if needed, write what is queued, poll; then wait for the next."""
        if self._device is None and not self._open():
            self._read_at = time.time()  # DISCONNECTED is as of this attempt
            self._stop.wait(self.retry_interval)
            return
        try:
            if not self._drain_writes():
                return  # closed as asked: the next cycle opens a new session at once
            self._read_at = time.time()
            self._poll()
        except Exception as exc:  # the library raises its own error types
            log.error("crate %s: %s; reconnecting", self.crate.name, exc)
            self._lost()
            return
        self._wait_for_work(self.poll_interval)

    def _open(self) -> bool:
        try:
            self._device = self.device_opener(self.crate)
            self._discover()
        except Exception as exc:
            log.warning("crate %s: cannot open a session: %s", self.crate.name, exc)
            self._close()
            return False
        log.info("crate %s: session open", self.crate.name)
        return True

    def _discover(self) -> None:
        """Ask every board what it serves and how each parameter is typed."""
        self._wire.clear()
        self._absent.clear()
        for slot, channels in self._boards.items():
            model = self._model(slot)
            served = set(self._device.get_ch_param_info(slot, channels[0]))
            for param in model.params:
                if param.name not in served:
                    self._absent.add((slot, param.name))
                    continue
                prop = self._device.get_ch_param_prop(slot, channels[0], param.name)
                self._wire[(slot, param.name)] = WireType(param, prop)
            missing = [p.name for p in model.monitored if (slot, p.name) in self._absent]
            if missing:
                log.error(
                    "crate %s board %d (%s) does not serve the readbacks %s: its channels stay "
                    "DISCONNECTED", self.crate.name, slot, model.name, missing,
                )  # fmt: skip

    def _report_absent(self) -> None:
        for slot, param in sorted(self._absent - self._reported):
            self._reported.add((slot, param))
            if self._model(slot).by_name[param].writable:
                for ch in self._boards[slot]:
                    self._sink.on_absent(ChannelAddress(slot, ch), param)

    def _wait_for_work(self, timeout: float) -> None:
        """Until the next poll is due, or a write is queued (handled before polling)."""
        self._wake.wait(timeout)
        self._wake.clear()

    def _drain_writes(self) -> bool:
        """Hand the queued writes to the crate, in order; False if one was a reconnect, which
        closed the session (the writes after it wait for the new one)."""
        while True:
            try:
                what, args = self._writes.get_nowait()
            except queue.Empty:
                return True
            if what == "set":
                self._set(*args)
            elif what == "clear":
                self._device.exec_comm("ClearAlarm")
            elif what == "reconnect":
                log.info("crate %s: closing the session to open a new one", self.crate.name)
                self._lost()
                return False

    def _set(self, addr: ChannelAddress, param: str, value: float | int | str) -> None:
        wire = self._wire.get((addr.board, param))
        if wire is None:
            return  # absent on this board (reported)
        try:
            self._device.set_ch_param(addr.board, [addr.channel], param, wire.to_wire(value))
        except (TypeError, ValueError) as exc:  # refused by type: a bug, not a lost crate
            log.error("crate %s %s: %s=%r not written: %s", self.crate.name, addr, param,
                      value, exc)  # fmt: skip
        except Exception as exc:
            if not is_param_not_found(exc):
                raise
            self._absent.add((addr.board, param))
            self._report_absent()

    def _poll(self) -> None:
        sink = self._sink
        changed: list[tuple[ChannelAddress, str, float | int | str]] = []
        for board, channels in self._boards.items():
            for param in self._poll_order[board]:
                if (board, param.name) in self._absent:
                    continue
                values = self._device.get_ch_param(board, channels, param.name)
                for ch, value in zip(channels, values, strict=True):
                    key = (ChannelAddress(board, ch), param.name)
                    if self._last.get(key) != value:
                        self._last[key] = value
                        changed.append((key[0], param.name, value))
        if changed:  # one poll, one batch (module docstring)
            sink.on_readbacks(changed)
        if not self._connected:
            self._connected = True
            self._report_absent()
            for addr in self.addresses:
                monitored = self.models[addr].monitored
                if not any((addr.board, p.name) in self._absent for p in monitored):
                    sink.on_connection(addr, True)

    def _lost(self) -> None:
        self._close()
        self._last.clear()
        if self._connected:
            self._connected = False
            for addr in self.addresses:
                self._sink.on_connection(addr, False)

    def _close(self) -> None:
        device, self._device = self._device, None
        if device is not None:
            try:
                device.close()
            except Exception as exc:
                log.debug("closing the session: %s", exc)
