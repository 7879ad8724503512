"""A crate through CAEN's HV Wrapper C library (`caen-libs`), by polling.

The library (`caen_libs.caenhvwrapper`, which loads CAEN's proprietary `libcaenhvwrapper.so`) is
imported only when this backend starts. One thread owns the crate session — the only safe way to
use the library (one session per crate) — and alternates writes, which go first, with reading
every monitored parameter of a board in one call per parameter. Polling more often than every
15 s also keeps the crate from dropping an idle session.

`device_opener` is the one seam tests replace: a callable returning an object with the
`caen_libs.caenhvwrapper.Device` methods this backend uses (`get_ch_param`, `set_ch_param`,
`exec_comm`, `close`).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from trackerdcs.config import CrateConfig
from trackerdcs.power.backend import (
    MONITORED_PARAMS,
    WRITABLE_PARAMS,
    BackendError,
    BackendSink,
    ChannelAddress,
)

log = logging.getLogger(__name__)

DeviceOpener = Callable[[CrateConfig], Any]


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
        self.device_opener = device_opener
        self.poll_interval = poll_interval
        self.retry_interval = retry_interval
        self._boards: dict[int, list[int]] = defaultdict(list)
        for addr in self.addresses:
            self._boards[addr.board].append(addr.channel)
        self._writes: queue.Queue[tuple[str, tuple]] = queue.Queue()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._sink: BackendSink | None = None
        self._device: Any = None
        self._last: dict[tuple[ChannelAddress, str], Any] = {}
        self._connected = False

    # -- life cycle -------------------------------------------------------------------------------
    def start(self, sink: BackendSink) -> None:
        self._sink = sink
        self._thread = threading.Thread(target=self._run, name=f"caen-{self.crate.name}")
        self._thread.daemon = True
        self._thread.start()

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
        if param not in WRITABLE_PARAMS:
            raise BackendError(f"{param} is not a writable parameter")
        if not self._connected:
            raise BackendError(f"crate {self.crate.name} is not connected")
        self._enqueue("set", addr, param, value)

    def clear_alarm(self) -> None:
        if not self._connected:
            raise BackendError(f"crate {self.crate.name} is not connected")
        self._enqueue("clear")

    # -- the session thread -----------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            if self._device is None and not self._open():
                self._stop.wait(self.retry_interval)
                continue
            try:
                self._drain_writes()
                self._poll()
            except Exception as exc:  # the library raises its own error types
                log.error("crate %s: %s; reconnecting", self.crate.name, exc)
                self._lost()
                continue
            self._wait_for_work(self.poll_interval)

    def _open(self) -> bool:
        try:
            self._device = self.device_opener(self.crate)
        except Exception as exc:
            log.warning("crate %s: cannot open a session: %s", self.crate.name, exc)
            return False
        log.info("crate %s: session open", self.crate.name)
        return True

    def _wait_for_work(self, timeout: float) -> None:
        """Until the next poll is due, or a write is queued (handled before polling)."""
        self._wake.wait(timeout)
        self._wake.clear()

    def _drain_writes(self) -> None:
        while True:
            try:
                what, args = self._writes.get_nowait()
            except queue.Empty:
                return
            if what == "set":
                addr, param, value = args
                self._device.set_ch_param(addr.board, [addr.channel], param, value)
            elif what == "clear":
                self._device.exec_comm("ClearAlarm")
            elif what == "reconnect":
                self._lost()
                return

    def _poll(self) -> None:
        sink = self._sink
        for board, channels in self._boards.items():
            for param in MONITORED_PARAMS:
                values = self._device.get_ch_param(board, channels, param)
                for ch, value in zip(channels, values, strict=True):
                    key = (ChannelAddress(board, ch), param)
                    if self._last.get(key) != value:
                        self._last[key] = value
                        sink.on_readback(key[0], param, value)
        if not self._connected:
            self._connected = True
            for addr in self.addresses:
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
