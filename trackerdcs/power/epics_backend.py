"""A crate through its EPICS Channel Access server: pyepics' `ca` layer, monitors, no polling.

Every channel parameter is one CA channel `<SYSNAME>:<SS>:<CCC>:<Param>`. Readbacks arrive as
monitor callbacks (subscriptions with an explicit DBR type, so they are installed before the
channel connects and reinstalled by libca after every reconnection); a channel counts as connected
when all its parameters are.

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
from dataclasses import dataclass
from typing import Any

from trackerdcs.config import CrateConfig
from trackerdcs.power.backend import (
    MONITORED_PARAMS,
    WRITABLE_PARAMS,
    BackendError,
    BackendSink,
    ChannelAddress,
)
from trackerdcs.power.pvnames import channel_pv, system_pv

log = logging.getLogger(__name__)

# The DBR type each monitored parameter is requested as (CA converts from the native type).
MONITOR_TYPES = {"V0Set": "DOUBLE", "I0Set": "DOUBLE", "VMon": "DOUBLE", "IMon": "DOUBLE",
                 "Pw": "LONG", "Status": "LONG"}  # fmt: skip
# How a monitor's value is read from libca's buffer, per DBR type.
_POINTERS = {"DOUBLE": ctypes.POINTER(ctypes.c_double), "LONG": ctypes.POINTER(ctypes.c_int32)}
# Written but not monitored.
WRITE_ONLY_PARAMS = tuple(p for p in WRITABLE_PARAMS if p not in MONITORED_PARAMS)
CHANNEL_PARAMS = (*MONITORED_PARAMS, *WRITE_ONLY_PARAMS)


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
        self.probe_interval = probe_interval
        self._sink: BackendSink | None = None
        self._ca: Any = None
        self._dbr: Any = None
        self._chans: dict[tuple[ChannelAddress, str], _Chan] = {}
        self._clear: _Chan | None = None
        self._up: dict[ChannelAddress, set[str]] = {}
        self._lock = threading.Lock()
        self._reconnecting = threading.Lock()
        self._crate_lost = threading.Event()
        self._stop = threading.Event()
        self._watchdog: threading.Thread | None = None
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
        self._watchdog = threading.Thread(target=self._watch, name="ca-watchdog", daemon=True)
        self._watchdog.start()

    def stop(self) -> None:
        self._stop.set()
        self._crate_lost.set()  # wakes the watchdog
        if self._watchdog is not None:
            self._watchdog.join(2)
        self._clear_all()

    def reconnect(self) -> None:
        """Drop every channel and create them anew (CA searches for the crate at once)."""
        log.info("crate %s: reconnecting every channel", self.crate.name)
        with self._reconnecting:
            self._ca.use_initial_context()
            self._clear_all()
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
        system = self.crate.system
        # readbacks first: CA searches in creation order, so every channel's state is known
        # before the settings channels (write-only, needed a little later) are searched for
        for addr, param in [
            *((a, p) for a in self.addresses for p in MONITORED_PARAMS),
            *((a, p) for a in self.addresses for p in WRITE_ONLY_PARAMS),
        ]:
            name = channel_pv(system, addr.board, addr.channel, param)
            chid = ca.create_channel(
                name, connect=False, auto_cb=False,
                callback=self._on_connection(generation, addr, param),
            )  # fmt: skip
            chan = _Chan(chid)
            if param in MONITOR_TYPES:
                chan.subscription = self._subscribe(chid, (generation, addr, param))
            self._chans[(addr, param)] = chan
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

    def _subscribe(self, chid: Any, key: tuple[int, ChannelAddress, str]) -> tuple[Any, Any]:
        """A monitor straight on libca, with our own C callback.

        pyepics' generic monitor path (casting, metadata, keyword arguments) cost more CPU than
        everything else in a 768-channel daemon; a readback is one scalar of a known type, read
        here directly. Returns what must stay alive with the subscription, and its event id.
        """
        dbr = self._dbr
        ftype = getattr(dbr, MONITOR_TYPES[key[2]])
        usr = ctypes.py_object((*key, _POINTERS[MONITOR_TYPES[key[2]]]))
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
        if generation == self._generation:
            self._sink.on_readback(addr, param, ctypes.cast(args.raw_dbr, pointer)[0])

    def _on_connection(self, generation: int, addr: ChannelAddress, param: str):
        # a channel is connected when its readbacks are: the write-only settings may connect a
        # little later (a write to one that is not connected yet fails and is retried)
        wanted = len(MONITORED_PARAMS)

        def callback(conn: bool = False, **_: Any) -> None:
            with self._lock:
                if generation != self._generation:
                    return
                names = self._up[addr]
                before = len(names) == wanted
                if param in MONITOR_TYPES:
                    (names.add if conn else names.discard)(param)
                after = len(names) == wanted
                lost = not conn and not any(self._up.values())
            if lost and not self._crate_lost.is_set():
                log.warning("crate %s lost: every channel disconnected", self.crate.name)
                self._crate_lost.set()
            if before != after:
                self._sink.on_connection(addr, after)

        return callback

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
        if param not in WRITABLE_PARAMS:
            raise BackendError(f"{param} is not a writable parameter")
        chan = self._chans.get((addr, param))
        self._put(
            chan, value, lambda: channel_pv(self.crate.system, addr.board, addr.channel, param)
        )

    def clear_alarm(self) -> None:
        self._put(self._clear, "Yes", lambda: system_pv(self.crate.system, "ClearAlarm"))

    def _put(self, chan: _Chan | None, value: float | int | str, name) -> None:
        ca = self._ca
        if chan is None or not ca.isConnected(chan.chid):
            raise BackendError(f"{name()} not connected")
        # names of enum states ('On', 'Kill') go as strings: the server maps them to its indices
        ftype = self._dbr.STRING if isinstance(value, str) else None
        ca.put(chan.chid, value, wait=False, ftype=ftype)
