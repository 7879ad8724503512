"""A crate through its EPICS Channel Access server, with pyepics monitors (no polling).

Every channel parameter is one PV `<SYSNAME>:<SS>:<CCC>:<Param>`. Readbacks arrive as CA monitor
callbacks; a channel counts as connected when all its PVs are. When the crate goes away the CA
circuit drops, every PV reports a disconnection, and libca searches again by itself: when the
crate is back the PVs reconnect and the monitors resume without any help from the daemon.

libca reads its environment once per process, when it is first used, so the address of the crate
is put into the environment before pyepics is imported: one daemon process per crate.
"""

from __future__ import annotations

import logging
import os
import threading
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

# Enumerated parameters: monitored with their control data, so that writes of their names
# ('On', 'Kill') can be turned into indices without a blocking read.
ENUM_PARAMS = frozenset({"Pw", "PDwn"})
# Written but not monitored: connected like the others, read only on demand.
WRITE_ONLY_PARAMS = tuple(p for p in WRITABLE_PARAMS if p not in MONITORED_PARAMS)


def ca_environment(crate: CrateConfig) -> dict[str, str]:
    """The libca environment that reaches this crate and nothing else."""
    return {
        "EPICS_CA_ADDR_LIST": crate.address,
        "EPICS_CA_AUTO_ADDR_LIST": "NO",
        # echo timeout: a crate that stops answering is declared lost within this time
        "EPICS_CA_CONN_TMO": f"{crate.connect_timeout:g}",
        "EPICS_CA_MAX_SEARCH_PERIOD": "60",
    }


class EpicsBackend:
    """`PowerBackend` over Channel Access."""

    def __init__(self, crate: CrateConfig, addresses: list[ChannelAddress]) -> None:
        self.crate = crate
        self.addresses = list(addresses)
        self._sink: BackendSink | None = None
        self._pvs: dict[tuple[ChannelAddress, str], Any] = {}
        self._clear_pv: Any = None
        self._connected_pvs: dict[ChannelAddress, set[str]] = {a: set() for a in self.addresses}
        self._lock = threading.Lock()
        self._epics: Any = None

    # -- life cycle -------------------------------------------------------------------------------
    def start(self, sink: BackendSink) -> None:
        self._sink = sink
        os.environ.update(ca_environment(self.crate))
        import epics

        self._epics = epics
        self._create_pvs()

    def _create_pvs(self) -> None:
        epics = self._epics
        system = self.crate.system
        for addr in self.addresses:
            for param in (*MONITORED_PARAMS, *WRITE_ONLY_PARAMS):
                name = channel_pv(system, addr.board, addr.channel, param)
                monitored = param in MONITORED_PARAMS or param in ENUM_PARAMS
                pv = epics.PV(
                    name,
                    form="ctrl" if param in ENUM_PARAMS else "native",
                    auto_monitor=monitored,
                    callback=self._monitor_callback(addr, param) if monitored else None,
                    connection_callback=self._connection_callback(addr, param),
                    connection_timeout=self.crate.connect_timeout,
                )
                self._pvs[(addr, param)] = pv
        self._clear_pv = epics.PV(system_pv(system, "ClearAlarm"), form="ctrl", auto_monitor=False)
        log.info("created %d PVs for crate %s (%s)", len(self._pvs) + 1, self.crate.name, system)

    def stop(self) -> None:
        for pv in self._pvs.values():
            pv.clear_callbacks()
            pv.disconnect()
        if self._clear_pv is not None:
            self._clear_pv.disconnect()
        self._pvs.clear()

    def reconnect(self) -> None:
        """Drop every PV and create them again (CA searches for the crate anew)."""
        log.info("reconnecting to crate %s", self.crate.name)
        self.stop()
        with self._lock:
            self._connected_pvs = {a: set() for a in self.addresses}
        if self._sink is not None:
            for addr in self.addresses:
                self._sink.on_connection(addr, False)
        self._create_pvs()

    # -- callbacks (libca threads) ----------------------------------------------------------------
    def _monitor_callback(self, addr: ChannelAddress, param: str):
        def callback(value=None, **_: Any) -> None:
            if value is not None and self._sink is not None and param in MONITORED_PARAMS:
                self._sink.on_readback(addr, param, value)

        return callback

    def _connection_callback(self, addr: ChannelAddress, param: str):
        wanted = len(MONITORED_PARAMS) + len(WRITE_ONLY_PARAMS)

        def callback(conn: bool = False, **_: Any) -> None:
            with self._lock:
                names = self._connected_pvs[addr]
                before = len(names) == wanted
                if conn:
                    names.add(param)
                else:
                    names.discard(param)
                after = len(names) == wanted
            if before != after and self._sink is not None:
                self._sink.on_connection(addr, after)

        return callback

    # -- writes -----------------------------------------------------------------------------------
    def write(self, addr: ChannelAddress, param: str, value: float | int | str) -> None:
        if param not in WRITABLE_PARAMS:
            raise BackendError(f"{param} is not a writable parameter")
        pv = self._pvs.get((addr, param))
        if pv is None or not pv.connected:
            raise BackendError(
                f"{channel_pv(self.crate.system, addr.board, addr.channel, param)} not connected"
            )
        if isinstance(value, str):
            value = self._enum_index(pv, value)
        pv.put(value, wait=False)

    def clear_alarm(self) -> None:
        pv = self._clear_pv
        if pv is None or not pv.connected:
            raise BackendError(f"{system_pv(self.crate.system, 'ClearAlarm')} not connected")
        pv.put(1, wait=False)

    @staticmethod
    def _enum_index(pv: Any, name: str) -> int:
        strings = pv.enum_strs or ()
        if name not in strings:
            raise BackendError(f"{pv.pvname}: {name!r} is not one of {list(strings)}")
        return strings.index(name)
