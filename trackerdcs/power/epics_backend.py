"""A crate through its EPICS Channel Access server: pyepics' `ca` layer, monitors, no polling.

Every channel parameter is one CA channel `<SYSNAME>:<SS>:<CCC>:<Param>`; which parameters, and
with which DBR type, comes from the channel's board model (`trackerdcs.power.boards`). Readbacks
arrive as monitor callbacks (subscriptions with an explicit DBR_STS type, so they are installed
before the channel connects and reinstalled by libca after every reconnection); a channel counts
as connected when all its monitored readbacks are.

Alarm severity: every monitor update carries the PV's alarm status and severity (DBR_STS_LONG,
DBR_STS_DOUBLE). A readback with INVALID severity means the IOC has lost the data behind it
(an IOC may keep serving the last value): the channel is reported through
`BackendSink.on_invalid` until every readback is valid again. Time stamps stay the daemon's.

Absent parameters: over Channel Access an absent PV looks like a slow one. A settings PV that is
still unconnected `absent_timeout` seconds (default 5, `crates[].absent_timeout`) after the
channel's readbacks connected is counted absent: reported once through `BackendSink.on_absent`,
its CA channel cleared (no endless search), and writes to it raise `ParamAbsent`.

Crate lost: the CA circuit drops and every channel reports a disconnection at once (an
unresponsive crate is declared lost after `EPICS_CA_CONN_TMO`, set from the crate's
`connect_timeout`). libca then searches with a growing back-off, which can take tens of seconds to
notice a crate that reboots. So while the whole crate is gone a watchdog recreates one probe
channel every `probe_interval` (a fresh channel is searched at once) and, when the probe
connects, recreates every channel: recovery within about a second of the crate's return.

libca reads its environment once per process, when it is first used, so the crate's address is
put into the environment before pyepics is imported: one daemon process per crate.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
import time
from dataclasses import dataclass
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
from trackerdcs.power.pvnames import channel_pv, system_pv

log = logging.getLogger(__name__)


class DbrStsLong(ctypes.Structure):
    """`struct dbr_sts_long` (db_access.h): status, severity, value."""

    _fields_ = (("status", ctypes.c_int16), ("severity", ctypes.c_int16),
                ("value", ctypes.c_int32))  # fmt: skip


class DbrStsDouble(ctypes.Structure):
    """`struct dbr_sts_double` (db_access.h): status, severity, RISC padding, value."""

    _fields_ = (("status", ctypes.c_int16), ("severity", ctypes.c_int16),
                ("RISC_pad", ctypes.c_int32), ("value", ctypes.c_double))  # fmt: skip


DBR_STS_LONG, DBR_STS_DOUBLE = 12, 13  # db_access.h
INVALID_ALARM = 3  # alarm severity (alarm.h): NO_ALARM, MINOR, MAJOR, INVALID
ALARM_STATUS = ("NO_ALARM", "READ", "WRITE", "HIHI", "HIGH", "LOLO", "LOW", "STATE", "COS",
                "COMM", "TIMEOUT", "HWLIMIT", "CALC", "SCAN", "LINK", "SOFT", "BAD_SUB", "UDF",
                "DISABLE", "SIMM", "READ_ACCESS", "WRITE_ACCESS")  # fmt: skip


def monitor_type(param: Param) -> tuple[int, Any]:
    """The DBR type a readback is requested as (CA converts from the native type), and how its
    buffer is read: floats as DBR_STS_DOUBLE, enums, on/off and bit masks as DBR_STS_LONG."""
    if param.type is ParamType.FLOAT:
        return DBR_STS_DOUBLE, ctypes.POINTER(DbrStsDouble)
    if param.type is ParamType.STRING:
        raise ValueError(f"{param.name}: a string is not monitored")
    return DBR_STS_LONG, ctypes.POINTER(DbrStsLong)


def channel_params(model: BoardModel) -> tuple[Param, ...]:
    """The CA channels of one board channel, in creation order: readbacks, then settings."""
    return (*model.monitored, *model.written)


def ca_environment(crate: CrateConfig) -> dict[str, str]:
    """The libca environment that reaches this crate and nothing else."""
    return {
        "EPICS_CA_ADDR_LIST": crate.address,
        "EPICS_CA_AUTO_ADDR_LIST": "NO",
        "EPICS_CA_CONN_TMO": f"{crate.connect_timeout:g}",
    }


@dataclass
class _Chan:
    """One CA channel we hold, and what keeps its callbacks alive."""

    chid: Any
    subscription: Any = None


class EpicsBackend:
    """`PowerBackend` over Channel Access."""

    def __init__(
        self, crate: CrateConfig, addresses: list[ChannelAddress], probe_interval: float = 0.5
    ) -> None:
        self.crate = crate
        self.addresses = list(addresses)
        self.models = channel_models(crate, self.addresses)
        self.probe_interval = probe_interval
        self.absent_timeout = crate.absent_timeout
        self._sink: BackendSink | None = None
        self._ca: Any = None
        self._dbr: Any = None
        self._chans: dict[tuple[ChannelAddress, str], _Chan] = {}
        self._clear: _Chan | None = None
        self._up: dict[ChannelAddress, set[str]] = {}
        self._connected: set[tuple[ChannelAddress, str]] = set()  # every param, written too
        self._invalid: dict[ChannelAddress, dict[str, str]] = {}  # param -> reason
        self._absent: set[tuple[ChannelAddress, str]] = set()  # reported, CA channel cleared
        self._absent_due: dict[ChannelAddress, float] = {}  # monotonic deadline per channel
        self._absent_wake = threading.Event()
        self._lock = threading.Lock()
        self._reconnecting = threading.Lock()
        self._crate_lost = threading.Event()
        self._stop = threading.Event()
        self._watchdog: threading.Thread | None = None
        self._absent_thread: threading.Thread | None = None
        self._generation = 0  # callbacks of channels from an earlier generation are ignored

    # -- life cycle -------------------------------------------------------------------------------
    def start(self, sink: BackendSink) -> None:
        self._sink = sink
        os.environ.update(ca_environment(self.crate))
        from epics import ca, dbr  # libca must see the environment set above

        self._ca, self._dbr = ca, dbr
        ca.initialize_libca()
        self._event_callback = ctypes.CFUNCTYPE(None, dbr.event_handler_args)(self._on_event)
        self._create_all()
        self._watchdog = threading.Thread(
            target=self._guarded(self._watch), name="ca-watchdog", daemon=True
        )
        self._watchdog.start()
        self._absent_thread = threading.Thread(
            target=self._guarded(self._watch_absent), name="ca-absent", daemon=True
        )
        self._absent_thread.start()

    def alive(self) -> bool:
        """The backend's own threads (watchdog, absent check) run; libca's are libca's."""
        threads = (self._watchdog, self._absent_thread)
        return all(t is not None and t.is_alive() for t in threads) or self._stop.is_set()

    def data_time(self) -> float | None:
        """CA monitors send every change: the readbacks are current now (None: a thread died)."""
        return time.time() if self.alive() else None

    def stop(self) -> None:
        self._stop.set()
        self._crate_lost.set()  # wakes the watchdog
        self._absent_wake.set()
        if self._watchdog is not None:
            self._watchdog.join(2)
        self._clear_all()

    def reconnect(self) -> None:
        """Drop every channel and create them anew (CA searches for the crate at once)."""
        log.info("crate %s: reconnecting every channel", self.crate.name)
        with self._reconnecting:
            self._ca.use_initial_context()
            self._clear_all()
            self._absent.clear()  # a board may have been swapped: search everything again
            if self._sink is not None:
                for addr in self.addresses:
                    self._sink.on_connection(addr, False)
            self._create_all()

    def _create_all(self) -> None:
        ca = self._ca
        with self._lock:
            self._generation += 1
            generation = self._generation
            self._up = {a: set() for a in self.addresses}
            self._connected = set()
            self._invalid = {a: {} for a in self.addresses}
            self._absent_due.clear()
        system = self.crate.system
        # readbacks first: CA searches in creation order, so every channel's state is known
        # before the settings channels (write-only, needed a little later) are searched for
        for addr, param in [
            *((a, p) for a in self.addresses for p in self.models[a].monitored),
            *((a, p) for a in self.addresses for p in self.models[a].written),
        ]:
            if (addr, param.name) in self._absent:
                continue  # reported absent: searched again only after `reconnect`
            name = channel_pv(system, addr.board, addr.channel, param.name)
            chid = ca.create_channel(
                name, connect=False, auto_cb=False,
                callback=self._on_connection(generation, addr, param.name),
            )  # fmt: skip
            chan = _Chan(chid)
            if param.monitor is not None:
                chan.subscription = self._subscribe(chid, (generation, addr, param))
            self._chans[(addr, param.name)] = chan
        ca.flush_io()
        self._clear = _Chan(ca.create_channel(system_pv(system, "ClearAlarm"), auto_cb=False))
        log.info("crate %s: %d channels created", self.crate.name, len(self._chans) + 1)

    def _clear_all(self) -> None:
        ca = self._ca
        if ca is None:
            return
        with self._lock:
            self._generation += 1
        chans = list(self._chans.values()) + ([self._clear] if self._clear else [])
        self._chans.clear()
        self._clear = None
        for chan in chans:
            if chan.subscription is not None:
                ca.clear_subscription(chan.subscription[1])
            ca.clear_channel(chan.chid)
        ca.flush_io()

    def _guarded(self, loop_fn):
        """Run a thread's loop again after an unexpected error (reported, `trackerdcs.guard`):
        the thread never ends before `stop`; too many errors in a row end the daemon."""
        where = f"crate {self.crate.name} {loop_fn.__name__.strip('_')}"

        def run() -> None:
            while not self._stop.is_set():
                try:
                    loop_fn()
                except Exception as exc:
                    FAULTS.fault(where, exc)
                    self._stop.wait(self.probe_interval)
                    continue
                return

        return run

    def _subscribe(self, chid: Any, key: tuple[int, ChannelAddress, Param]) -> tuple[Any, Any]:
        """A monitor straight on libca, with our own C callback.

        pyepics' generic monitor path (casting, metadata, keyword arguments) cost more CPU than
        everything else in a 768-channel daemon; a readback is one scalar of a known type with
        its alarm status, read here directly. Returns what must stay alive with the
        subscription, and its event id.
        """
        dbr = self._dbr
        generation, addr, param = key
        ftype, pointer = monitor_type(param)
        usr = ctypes.py_object((generation, addr, param.name, pointer))
        evid = ctypes.c_void_p()
        status = self._ca.libca.ca_create_subscription(
            ftype, 1, chid, dbr.DBE_VALUE | dbr.DBE_ALARM, self._event_callback, usr,
            ctypes.byref(evid),
        )  # fmt: skip
        if status != dbr.ECA_NORMAL:
            raise BackendError(f"cannot subscribe to {self._ca.name(chid)}: CA status {status}")
        return usr, evid

    # -- callbacks (libca threads) ----------------------------------------------------------------
    def _on_event(self, args: Any) -> None:
        """libca's monitor callback: one readback."""
        if args.status != self._dbr.ECA_NORMAL or not args.raw_dbr:
            return
        generation, addr, param, pointer = args.usr
        if generation != self._generation:
            return
        sts = ctypes.cast(args.raw_dbr, pointer)[0]
        invalid = self._invalid[addr]
        if (sts.severity == INVALID_ALARM) != (param in invalid):
            self._note_invalid(addr, param, sts.status if sts.severity == INVALID_ALARM else None)
        self._sink.on_readback(addr, param, sts.value)

    def _note_invalid(self, addr: ChannelAddress, param: str, status: int | None) -> None:
        """A readback's severity went to or from INVALID: tell the sink the channel's reason."""
        invalid = self._invalid[addr]
        if status is None:
            invalid.pop(param, None)
        else:
            name = ALARM_STATUS[status] if 0 <= status < len(ALARM_STATUS) else str(status)
            invalid[param] = f"{param} INVALID ({name})"
        reason = ", ".join(invalid[p] for p in sorted(invalid)) or None
        log.warning("crate %s %s: %s", self.crate.name, addr, reason or "readbacks valid again")
        self._sink.on_invalid(addr, reason)

    def _on_connection(self, generation: int, addr: ChannelAddress, param: str):
        # a channel is connected when its readbacks are: the write-only settings may connect a
        # little later (a write to one that is not connected yet fails and is retried), or
        # never (counted absent `absent_timeout` s after the readbacks connected)
        model = self.models[addr]
        wanted = len(model.monitored)
        monitored = model.by_name[param].monitor is not None

        def callback(conn: bool = False, **_: Any) -> None:
            with self._lock:
                if generation != self._generation:
                    return
                names = self._up[addr]
                (self._connected.add if conn else self._connected.discard)((addr, param))
                before = len(names) == wanted
                if monitored:
                    (names.add if conn else names.discard)(param)
                after = len(names) == wanted
                lost = not conn and not any(self._up.values())
                if after and not before:
                    self._absent_due[addr] = time.monotonic() + self.absent_timeout
            if lost and not self._crate_lost.is_set():
                log.warning("crate %s lost: every channel disconnected", self.crate.name)
                self._crate_lost.set()
            if before != after:
                self._sink.on_connection(addr, after)
                if after:
                    self._absent_wake.set()

        return callback

    # -- absent parameters ------------------------------------------------------------------------
    def _watch_absent(self) -> None:
        """Count a channel's settings PVs absent once its readbacks have been up long enough."""
        self._ca.use_initial_context()
        while not self._stop.is_set():
            with self._lock:
                due = min(self._absent_due.values(), default=None)
            timeout = None if due is None else max(0.0, due - time.monotonic())
            self._absent_wake.wait(timeout)
            self._absent_wake.clear()
            if self._stop.is_set():
                return
            now = time.monotonic()
            with self._lock:
                ripe = [a for a, t in self._absent_due.items() if t <= now]
                for addr in ripe:
                    del self._absent_due[addr]
                generation = self._generation
            for addr in ripe:
                self._check_absent(addr, generation)

    def _check_absent(self, addr: ChannelAddress, generation: int) -> None:
        ca = self._ca
        with self._reconnecting:
            if generation != self._generation or len(self._up.get(addr, ())) < len(
                self.models[addr].monitored
            ):
                return  # recreated meanwhile, or lost again: checked at the next connection
            gone = []
            for param in self.models[addr].written:
                chan = self._chans.get((addr, param.name))
                if chan is not None and not ca.isConnected(chan.chid):
                    ca.clear_channel(chan.chid)
                    del self._chans[(addr, param.name)]
                    self._absent.add((addr, param.name))
                    gone.append(param.name)
            if gone:
                ca.flush_io()
        for name in gone:
            self._sink.on_absent(addr, name)

    # -- recovery ---------------------------------------------------------------------------------
    def _watch(self) -> None:
        """While the whole crate is gone, probe for it with fresh channels; then reconnect."""
        ca = self._ca
        ca.use_initial_context()
        while not self._stop.is_set():
            self._crate_lost.wait()
            if self._stop.is_set():
                return
            probe_name = system_pv(self.crate.system, "ClearAlarm")
            with self._reconnecting:  # the probe takes the place of our ClearAlarm channel
                if self._clear is not None:
                    ca.clear_channel(self._clear.chid)
                    self._clear = None
            probe = None
            while not self._stop.is_set():
                if probe is not None:
                    ca.clear_channel(probe)
                probe = ca.create_channel(probe_name, auto_cb=False)
                if ca.connect_channel(probe, timeout=self.probe_interval):
                    break
            if probe is not None:
                ca.clear_channel(probe)
            if self._stop.is_set():
                return
            log.info("crate %s answers again", self.crate.name)
            self._crate_lost.clear()
            if not any(self._up.values()):
                self.reconnect()

    # -- writes -----------------------------------------------------------------------------------
    def write(self, addr: ChannelAddress, param: str, value: float | int | str) -> None:
        model = self.models.get(addr)
        spec = model.by_name.get(param) if model else None
        if spec is None or not spec.writable:
            raise BackendError(f"{param} is not a writable parameter of {addr}")
        if (addr, param) in self._absent:
            raise ParamAbsent(
                f"{channel_pv(self.crate.system, addr.board, addr.channel, param)} not served"
            )
        if (addr, param) not in self._connected:  # cheap: a crate still connecting gets many
            raise BackendError(
                f"{channel_pv(self.crate.system, addr.board, addr.channel, param)} not connected"
            )
        chan = self._chans.get((addr, param))
        self._put(
            chan, value, lambda: channel_pv(self.crate.system, addr.board, addr.channel, param)
        )

    def clear_alarm(self) -> None:
        self._put(self._clear, "Yes", lambda: system_pv(self.crate.system, "ClearAlarm"))

    def _put(self, chan: _Chan | None, value: float | int | str, name) -> None:
        """`ca_array_put` of one element, then `ca_flush_io`: pyepics' `ca.put` does the same
        and then polls (`ca_pend_event`), which the preemptive libca does not need and which
        cost ~0.2 ms per write (the bench's profile: an eighth of a big crate's start-up)."""
        ca, dbr = self._ca, self._dbr
        if chan is None or not ca.isConnected(chan.chid):
            raise BackendError(f"{name()} not connected")
        libca = ca.libca
        # names of enum states ('On', 'Kill') go as strings: the server maps them to its indices
        if isinstance(value, str):
            ftype = dbr.STRING
            data = (dbr.Map[ftype] * 1)()
            data[0].value = value.encode()
        else:
            ftype = libca.ca_field_type(chan.chid)
            data = (dbr.Map[ftype] * 1)()
            try:
                data[0] = value
            except TypeError:
                data[0] = type(data[0])(value)
        status = libca.ca_array_put(ftype, 1, chan.chid, data)
        if status != dbr.ECA_NORMAL:
            raise BackendError(f"{name()}: put failed ({ca.message(status)})")
        libca.ca_flush_io()
