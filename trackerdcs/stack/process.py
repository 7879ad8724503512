"""Child processes with a readiness check, stopped by PID; free loopback ports.

A child dies with its parent, however the parent dies (Ctrl-C, SIGTERM, SIGKILL, the OOM
killer): before it executes its program, the child asks Linux for a parent-death signal
(`prctl(PR_SET_PDEATHSIG, SIGTERM)`, prctl(2)), which the kernel sends it when the thread that
started it ends. It is set in the forked child, so it holds for any program (mosquitto, influxd,
node) and survives `execve` (it is cleared only for set-user-ID programs, which none of ours
is). Start children from a thread that lives as long as they should: the supervisor's main
thread does.
"""

from __future__ import annotations

import ctypes
import logging
import os
import random
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

log = logging.getLogger(__name__)


PORT_BLOCK_ENV = "TRACKERDCS_PORT_BLOCK"
_port_lock = threading.Lock()
_port_cursor: dict[tuple[int, int], int] = {}


def port_block() -> tuple[int, int] | None:
    """`TRACKERDCS_PORT_BLOCK` ("FIRST-LAST", inclusive) as (first, last), or None when unset.

    Raises ValueError naming the variable when it is set but not a block of ports 1024..65535.
    """
    text = os.environ.get(PORT_BLOCK_ENV, "").strip()
    if not text:
        return None
    try:
        first, last = (int(part) for part in text.split("-"))
    except ValueError:
        expected = "expected FIRST-LAST, e.g. 20000-21999"
        raise ValueError(f"{PORT_BLOCK_ENV}={text!r}: {expected}") from None
    if not 1024 <= first < last <= 65535:
        raise ValueError(f"{PORT_BLOCK_ENV}={text!r}: expected 1024 <= FIRST < LAST <= 65535")
    return first, last


def _block_ports(first: int, last: int) -> Iterator[int]:
    """Every port of the block once, in turn from where this process left off (a random place
    at its first call), so a port is not handed out again soon after it was."""
    size = last - first + 1
    for _ in range(size):
        with _port_lock:
            k = _port_cursor.setdefault((first, last), random.randrange(size))
            _port_cursor[(first, last)] = (k + 1) % size
        yield first + k


def _kernel_ports(host: str) -> Iterator[int]:
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((host, 0))
            port = tcp.getsockname()[1]
        yield port


def _free(host: str, port: int) -> bool:
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind((host, port))
            except OSError:
                return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port free for both TCP and UDP on `host` (CA uses both on the same number).

    By default the kernel picks it (bind to port 0), from its ephemeral range. With
    `TRACKERDCS_PORT_BLOCK` set (the test suite claims a block for each test process, outside
    the ephemeral range, 32768-60999 on Linux by default: trackerdcs/stack/portblocks.py; a
    benchmark run claims one too), it comes from that block, in turn: no outgoing connection's
    source port, no other such process's port and no port handed out just before lands on it
    between being chosen and being bound by the server it is for. RuntimeError when none is
    free.
    """
    block = port_block()
    for port in _block_ports(*block) if block else _kernel_ports(host):
        if _free(host, port):
            return port
    raise RuntimeError(f"no free port found{f' in {PORT_BLOCK_ENV} {block}' if block else ''}")


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


PR_SET_PDEATHSIG = 1  # linux/prctl.h
_prctl: Callable[..., int] | None = None


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A `preexec_fn` that makes the child receive `sig` when its parent dies (None where
    Linux's prctl is not available). libc's `prctl` is looked up here, in the parent: the
    child only calls it, and checks that the parent did not die before it did."""
    global _prctl
    if _prctl is None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            prctl = libc.prctl
        except (OSError, AttributeError):
            return None
        prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                          ctypes.c_ulong]  # fmt: skip
        prctl.restype = ctypes.c_int
        _prctl = prctl
    call, parent = _prctl, os.getpid()

    def preexec() -> None:
        call(PR_SET_PDEATHSIG, sig, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the signal was set: go now
            os.kill(os.getpid(), sig)

    return preexec


def wait_until(predicate: Callable[[], object], timeout: float, what: str, poll: float = 0.02):
    """Return the predicate's first truthy value; TimeoutError naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(poll)


class ManagedProcess:
    """A child process we started, its log file, and how to know it is ready."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        env: dict[str, str] | None = None,
        ready: Callable[[ManagedProcess], bool] | None = None,
        ready_timeout: float = 15.0,
        cwd: Path | None = None,
        die_with_parent: bool = True,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = Path(log_path)
        self.env = env
        self.ready = ready
        self.ready_timeout = ready_timeout
        self.cwd = cwd
        self.die_with_parent = die_with_parent  # SIGTERM when the starting thread ends
        self.proc: subprocess.Popen | None = None
        self._log_offset = 0

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> ManagedProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        logfile = self.log_path.open("ab")
        self._log_offset = logfile.tell()
        env = {**os.environ, **(self.env or {})}
        env.setdefault("PYTHONUNBUFFERED", "1")
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=logfile,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.cwd,
            start_new_session=True,  # Ctrl-C reaches the supervisor only; it stops us in order
            preexec_fn=die_with_parent() if self.die_with_parent else None,
        )
        logfile.close()
        log.debug("started %s (pid %d): %s", self.name, self.proc.pid, " ".join(self.argv))
        if self.ready is not None:
            try:
                wait_until(self._ready_or_dead, self.ready_timeout, f"{self.name} to be ready")
            except Exception:
                self.stop()
                raise
            if not self.alive:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}: {self.tail()}")
        return self

    def _ready_or_dead(self) -> bool:
        return not self.alive or bool(self.ready and self.ready(self))

    def output(self) -> str:
        """What the process has logged since its last start."""
        try:
            with self.log_path.open("rb") as f:
                f.seek(self._log_offset)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def tail(self, lines: int = 15) -> str:
        return "\n".join(self.output().splitlines()[-lines:])

    def signal(self, sig: int) -> None:
        if self.alive:
            os.kill(self.proc.pid, sig)

    def freeze(self, timeout: float = 5.0) -> None:
        """SIGSTOP, and wait until every thread of the process has stopped.

        A stop signal is handled by one thread, which then stops the others: on a loaded
        machine another thread (the MQTT network thread) may run on for a moment after
        `kill` returns. Linux only (/proc/PID/task/*/stat, state `T`). Raises TimeoutError."""
        self.signal(signal.SIGSTOP)
        tasks = Path(f"/proc/{self.proc.pid}/task")
        wait_until(lambda: all(_stopped(task) for task in tasks.iterdir()), timeout,
                   f"every thread of {self.name} to stop", poll=0.002)  # fmt: skip

    def thaw(self) -> None:
        """SIGCONT: undo `freeze`."""
        self.signal(signal.SIGCONT)

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout`; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %g s: killing it", self.name, timeout)
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill(self) -> None:
        if self.alive:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> ManagedProcess:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc) -> None:
        self.stop()


def _stopped(task: Path) -> bool:
    """Whether the thread `/proc/PID/task/TID` is stopped (or gone)."""
    try:
        stat = (task / "stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("T", "t", "Z", "X")
