"""The local stack behind `make run`: broker, simulated hardware and daemons, no containers.

Everything listens on 127.0.0.1. Progress is printed while things start, then a summary of what
runs where. Ctrl-C or SIGTERM stops every process it started, in reverse order, by PID. A daemon
that dies is restarted (at most `MAX_RESTARTS` times in a row).
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from trackerdcs.config import LabConfig
from trackerdcs.stack.mosquitto import mosquitto_process
from trackerdcs.stack.process import ManagedProcess, port_open

MAX_RESTARTS = 5
PY = sys.executable


@dataclass
class StackEntry:
    """One process of the stack and how to describe it in the summary."""

    name: str
    make: Callable[[], ManagedProcess]
    endpoint: str
    what: str
    process: ManagedProcess | None = None
    restarts: int = 0
    started_at: float = field(default=0.0)


def _logged(text: str) -> Callable[[ManagedProcess], bool]:
    """Ready when the process has logged `text` since it started."""
    return lambda proc: text in proc.output()


def _loopback(address: str) -> bool:
    host = address.rsplit(":", 1)[0] if ":" in address else address
    return host in ("127.0.0.1", "localhost")


def build_entries(cfg: LabConfig, config_path: Path, run_dir: Path) -> list[StackEntry]:
    """The processes of the local stack for this lab, in start order."""
    logs = run_dir / "logs"
    entries: list[StackEntry] = []
    host, port = cfg.mqtt.host, cfg.mqtt.port
    entries.append(
        StackEntry(
            "mosquitto",
            lambda: mosquitto_process(run_dir, port, host),
            f"mqtt://{host}:{port}",
            "MQTT broker (anonymous, loopback only)",
        )
    )
    for crate in cfg.crates:
        if crate.backend == "epics" and _loopback(crate.address):
            log = logs / f"sim-crate-{crate.name}.log"
            argv = [PY, "-m", "trackerdcs.sim.crate", "--config", str(config_path)]
            argv += ["--crate", crate.name]
            entries.append(
                StackEntry(
                    f"sim-crate-{crate.name}",
                    lambda argv=argv, log=log: ManagedProcess(
                        "sim crate", argv, log_path=log, ready=_logged("serving")
                    ),
                    f"ca://{crate.address}",
                    f"simulated SY4527 '{crate.system}' (Channel Access)",
                )
            )
        log = logs / f"power-{crate.name}.log"
        argv = [PY, "-m", "trackerdcs.power.daemon", "--config", str(config_path)]
        argv += ["--crate", crate.name]
        prefixes = " ".join(crate.prefixes[k] for k in sorted(crate.prefixes))
        entries.append(
            StackEntry(
                f"power-{crate.name}",
                lambda argv=argv, log=log: ManagedProcess(
                    "power daemon", argv, log_path=log, ready=_logged("serving crate")
                ),
                prefixes,
                f"power-supply daemon for crate {crate.name}",
            )
        )
    return entries


class LocalStack:
    def __init__(self, cfg: LabConfig, config_path: Path, run_dir: Path, out=sys.stdout) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.run_dir = run_dir
        self.out = out
        self.entries = build_entries(cfg, config_path, run_dir)
        self._stop = threading.Event()

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def check_ports(self) -> None:
        host, port = self.cfg.mqtt.host, self.cfg.mqtt.port
        if port_open(host, port):
            raise RuntimeError(
                f"{host}:{port} is already in use (another broker, or a stack still running?); "
                "stop it or set mqtt.port in the lab YAML"
            )

    def start(self) -> None:
        self.check_ports()
        total = len(self.entries)
        for i, entry in enumerate(self.entries, 1):
            self.say(f"[{i}/{total}] starting {entry.name:<22} {entry.what}")
            t0 = time.monotonic()
            entry.process = entry.make()
            try:
                entry.process.start()
            except (RuntimeError, TimeoutError) as exc:
                self.say(f"      failed: {exc}\n{entry.process.tail()}")
                self.stop()
                raise
            entry.started_at = time.monotonic()
            self.say(f"      ok: pid {entry.process.pid}, {time.monotonic() - t0:.1f} s")

    def summary(self) -> str:
        lines = ["", "trackerdcs local stack is running (simulated hardware):", ""]
        lines.append(f"  {'process':<22} {'pid':>7}  {'where':<26} log")
        for e in self.entries:
            assert e.process is not None
            log = e.process.log_path
            if log.is_relative_to(Path.cwd()):
                log = log.relative_to(Path.cwd())
            lines.append(f"  {e.name:<22} {e.process.pid:>7}  {e.endpoint:<26} {log}")
        host, port = self.cfg.mqtt.host, self.cfg.mqtt.port
        lines += [
            "",
            "Try:",
            f"  mosquitto_sub -h {host} -p {port} -t '/#' -v",
            f"  mosquitto_pub -h {host} -p {port} -t /hv/cmd/setv/0 -m 100",
            f"  mosquitto_pub -h {host} -p {port} -t /hv/cmd/switch/0 -m on",
            "",
            "Ctrl-C stops everything.",
        ]
        return "\n".join(lines)

    def supervise(self) -> None:
        """Until asked to stop: restart a process that died."""
        while not self._stop.wait(0.5):
            for entry in self.entries:
                proc = entry.process
                if proc is None or proc.alive or self._stop.is_set():
                    continue
                code = proc.proc.returncode if proc.proc else None
                if entry.restarts >= MAX_RESTARTS:
                    continue
                entry.restarts += 1
                self.say(
                    f"! {entry.name} exited ({code}); restart {entry.restarts}/{MAX_RESTARTS}; "
                    f"log {proc.log_path}"
                )
                try:
                    proc.start()
                except (RuntimeError, TimeoutError) as exc:
                    self.say(f"! {entry.name} failed to restart: {exc}")

    def request_stop(self, *_: object) -> None:
        self._stop.set()

    def stop(self) -> None:
        self._stop.set()
        for entry in reversed(self.entries):
            if entry.process is not None and entry.process.proc is not None:
                code = entry.process.stop()
                self.say(f"stopped {entry.name} (pid {entry.process.pid}, exit {code})")


def run_stack(cfg: LabConfig, config_path: Path, run_dir: Path) -> int:
    stack = LocalStack(cfg, config_path.resolve(), run_dir.resolve())
    signal.signal(signal.SIGTERM, stack.request_stop)
    signal.signal(signal.SIGINT, stack.request_stop)
    try:
        stack.start()
    except (RuntimeError, TimeoutError) as exc:
        print(f"trackerdcs: {exc}", file=sys.stderr)
        return 1
    stack.say(stack.summary())
    try:
        stack.supervise()
    finally:
        stack.say("\nstopping the stack")
        stack.stop()
    return 0
