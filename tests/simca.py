"""Test helpers: talk Channel Access to a simulated crate, and run one as a subprocess.

Uses caproto's synchronous client, not pyepics: pyepics' libca reads its environment once per
process, while each test's crate listens on its own port. Every call sets the EPICS_CA_*
environment for that port and never spawns a CA repeater.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar
from unittest import mock

from caproto import ChannelType
from caproto.sync import client as ca_client

from trackerdcs.power.pvnames import channel_pv
from trackerdcs.stack.process import ManagedProcess, free_port, wait_until

ROOT = Path(__file__).resolve().parent.parent
READY = re.compile(r"sim crate (?P<name>\S+) \((?P<system>[^)]+)\) serving (?P<pvs>\d+) PVs on ")
T = TypeVar("T")
_env_lock = threading.Lock()
CA_TIMEOUT = 10.0  # s; generous: a loaded machine answers a search late, a healthy one at once


class CAPutError(Exception):
    """The server rejected a put."""


@contextlib.contextmanager
def ca_environment(port: int) -> Iterator[None]:
    """Point caproto's client at 127.0.0.1:`port` only, for the duration of one call."""
    settings = {
        "EPICS_CA_ADDR_LIST": f"127.0.0.1:{port}",
        "EPICS_CA_AUTO_ADDR_LIST": "NO",
        "EPICS_CA_SERVER_PORT": str(port),
    }
    with _env_lock, mock.patch.dict(os.environ, settings):
        yield


def _scalar(data: Any) -> Any:
    value = data[0] if len(data) == 1 else list(data)
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if hasattr(value, "item"):  # numpy / array scalar
        return value.item()
    return value


def ca_get(port: int, pv: str, *, as_string: bool = False, timeout: float = CA_TIMEOUT) -> Any:
    """Read one PV: float, int (enums as their index, like pyepics) or str."""
    with ca_environment(port):
        response = ca_client.read(
            pv,
            data_type=ChannelType.STRING if as_string else None,
            timeout=timeout,
            force_int_enums=True,
            repeater=False,
        )
    return _scalar(response.data)


def ca_put(port: int, pv: str, value: Any, *, timeout: float = CA_TIMEOUT) -> None:
    """Write one PV and wait for the server's completion; CAPutError if it refused."""
    with ca_environment(port):
        try:
            response = ca_client.write(pv, value, notify=True, timeout=timeout, repeater=False)
        except ca_client.ErrorResponseReceived as exc:
            raise CAPutError(f"{pv}: {exc}") from None
    if not response.status.success:
        raise CAPutError(f"{pv}: {response.status.name}")


class CAMonitor:
    """A monitor on one PV (caproto threading client): records every update's value.

    The client searches only while connecting, so the environment is set just for that.
    """

    def __init__(self, port: int, pv: str, *, timeout: float = CA_TIMEOUT) -> None:
        from caproto.threading.client import Context, SharedBroadcaster

        self.values: list[Any] = []
        self._lock = threading.Condition()
        with ca_environment(port):
            self._broadcaster = SharedBroadcaster()
            self._context = Context(self._broadcaster)
            (self._pv,) = self._context.get_pvs(pv, timeout=timeout)
            self._pv.wait_for_connection(timeout=timeout)
        self._sub = self._pv.subscribe()
        self._sub.add_callback(self._on_update)

    def _on_update(self, sub: Any, response: Any) -> None:
        with self._lock:
            self.values.append(_scalar(response.data))
            self._lock.notify_all()

    def quiet(self, gap: float, timeout: float) -> Any:
        """The PV's value once no update came for `gap` s (its first, the value at subscribing,
        awaited too); TimeoutError if updates keep coming for `timeout` s."""
        deadline = time.monotonic() + timeout
        with self._lock:
            seen = -1
            while seen != len(self.values) or not self.values:
                seen = len(self.values)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{self._pv.name} still updating after {timeout} s")
                self._lock.wait(min(gap, left))
            return self.values[-1]

    def snapshot(self) -> list[Any]:
        with self._lock:
            return list(self.values)

    def close(self) -> None:
        self._sub.clear()
        self._context.disconnect()
        self._broadcaster.disconnect()

    def __enter__(self) -> CAMonitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def wait_for(predicate: Callable[[], T], timeout: float = 5.0) -> T:
    """Poll `predicate` until it returns something truthy; TimeoutError after `timeout` s."""
    return wait_until(predicate, timeout, "the condition")


class SimCrateProcess(ManagedProcess):
    """`python -m trackerdcs.sim.crate` on a loopback port, stopped by PID.

    Usable as a context manager. `start()` again (or `restart()`) comes back on the same port.
    """

    def __init__(
        self,
        config: str | Path,
        port: int | None = None,
        args: Sequence[str] = (),
        *,
        log_path: Path | None = None,
        ready_timeout: float = 20.0,
    ) -> None:
        self.config = Path(config)
        self.port = port or free_port()
        self.system = ""
        self.pv_count = 0
        super().__init__(
            "sim crate",
            [sys.executable, "-m", "trackerdcs.sim.crate", "--config", str(self.config),
             "--port", str(self.port), *args],
            log_path=log_path or Path(tempfile.gettempdir()) / f"sim-crate-{self.port}.log",
            ready=self._ready,
            ready_timeout=ready_timeout,
            cwd=ROOT,
        )  # fmt: skip

    def _ready(self, _: ManagedProcess) -> bool:
        match = READY.search(self.output())
        if match:
            self.system = match["system"]
            self.pv_count = int(match["pvs"])
        return bool(match)

    def restart(self) -> SimCrateProcess:
        self.stop()  # the old server must be gone: its UDP socket would still answer searches
        return self.start()

    def pv(self, board: int, channel: int, param: str) -> str:
        return channel_pv(self.system, board, channel, param)

    def get(self, pv: str, **kw: Any) -> Any:
        return ca_get(self.port, pv, **kw)

    def put(self, pv: str, value: Any, **kw: Any) -> None:
        ca_put(self.port, pv, value, **kw)

    def writes(self) -> int:
        """The simulator's count of client puts to crate parameters."""
        return int(self.get(f"{self.system}:Sim:Writes"))
