"""Test helpers: talk Channel Access to a simulated crate, and run one as a subprocess.

Uses caproto's synchronous client, not pyepics: pyepics' libca reads its environment once per
process, while each test's crate listens on its own port. Every call sets the EPICS_CA_*
environment for that port and never spawns a CA repeater.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from caproto import ChannelType
from caproto.sync import client as ca_client

ROOT = Path(__file__).resolve().parent.parent
READY = re.compile(r"sim crate (?P<name>\S+) \((?P<system>[^)]+)\) serving (?P<pvs>\d+) PVs on ")
T = TypeVar("T")
_env_lock = threading.Lock()


class CAPutError(Exception):
    """The server rejected a put."""


def free_port(host: str = "127.0.0.1") -> int:
    """A port free for both TCP and UDP on `host` (CA uses the same number for both)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((host, 0))
            port = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind((host, port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free TCP+UDP port")


@contextlib.contextmanager
def ca_environment(port: int) -> Iterator[None]:
    """Point caproto's client at 127.0.0.1:`port` only, for the duration of one call."""
    settings = {
        "EPICS_CA_ADDR_LIST": f"127.0.0.1:{port}",
        "EPICS_CA_AUTO_ADDR_LIST": "NO",
        "EPICS_CA_SERVER_PORT": str(port),
    }
    with _env_lock:
        saved = {key: os.environ.get(key) for key in settings}
        os.environ.update(settings)
        try:
            yield
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def _scalar(data: Any) -> Any:
    value = data[0] if len(data) == 1 else list(data)
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if hasattr(value, "item"):  # numpy / array scalar
        return value.item()
    return value


def ca_get(port: int, pv: str, *, as_string: bool = False, timeout: float = 2.0) -> Any:
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


def ca_put(port: int, pv: str, value: Any, *, timeout: float = 2.0) -> None:
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

    def __init__(self, port: int, pv: str, *, timeout: float = 2.0) -> None:
        from caproto.threading.client import Context, SharedBroadcaster

        self.values: list[Any] = []
        self._lock = threading.Lock()
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


def wait_for(predicate: Callable[[], T], timeout: float = 5.0, interval: float = 0.02) -> T:
    """Poll `predicate` until it returns something truthy; AssertionError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s (last: {result!r})")
        time.sleep(interval)


class SimCrateProcess:
    """`python -m trackerdcs.sim.crate` on a loopback port, stopped by PID.

    Usable as a context manager. `restart()` comes back on the same port.
    """

    def __init__(
        self,
        config: str | Path,
        port: int | None = None,
        args: Sequence[str] = (),
        *,
        ready_timeout: float = 20.0,
    ) -> None:
        self.config = Path(config)
        self.port = port or free_port()
        self.args = list(args)
        self.ready_timeout = ready_timeout
        self.proc: subprocess.Popen[str] | None = None
        self.system = ""
        self.pv_count = 0
        self.stderr: list[str] = []
        self.start_time = 0.0  # s from spawn to the ready line, last start

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def command(self) -> list[str]:
        return [sys.executable, "-m", "trackerdcs.sim.crate", "--config", str(self.config),
                "--port", str(self.port), *self.args]  # fmt: skip

    def start(self) -> SimCrateProcess:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        t0 = time.monotonic()
        self.proc = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=ROOT,
        )
        lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._drain, args=(self.proc, lines), daemon=True).start()
        self._await_ready(lines)
        self.start_time = time.monotonic() - t0
        return self

    def _drain(self, proc: subprocess.Popen[str], lines: queue.Queue[str | None]) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            self.stderr.append(line.rstrip("\n"))
            lines.put(line)
        lines.put(None)

    def _await_ready(self, lines: queue.Queue[str | None]) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while True:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self.kill()
                raise RuntimeError(f"sim crate not ready in {self.ready_timeout} s") from None
            if line is None:
                code = self.proc.wait() if self.proc else None
                output = "\n".join(self.stderr)
                raise RuntimeError(f"sim crate exited ({code}) before ready:\n{output}")
            match = READY.search(line)
            if match:
                self.system = match["system"]
                self.pv_count = int(match["pvs"])
                return

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM, wait; SIGKILL if it does not exit in `timeout` s. Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL: a crash, no clean shutdown."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def restart(self) -> SimCrateProcess:
        """Stop and start again on the same port (the crate's state is lost, as on power cycle)."""
        self.stop()
        return self.start()

    def pv(self, board: int, channel: int, param: str) -> str:
        return f"{self.system}:{board:02d}:{channel:03d}:{param}"

    def get(self, pv: str, **kw: Any) -> Any:
        return ca_get(self.port, pv, **kw)

    def put(self, pv: str, value: Any, **kw: Any) -> None:
        ca_put(self.port, pv, value, **kw)

    def writes(self) -> int:
        """The crate's count of client puts to real parameters (`<SYS>:Sim:Writes`)."""
        return int(self.get(f"{self.system}:Sim:Writes"))

    def __enter__(self) -> SimCrateProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
