"""The local stack behind `make run`: broker, simulated hardware and daemons, no containers.

Everything listens on 127.0.0.1. Progress is printed while things start, then a summary of what
runs where. Ctrl-C or SIGTERM stops every process it started, in reverse order, by PID. A daemon
that dies is restarted (at most `MAX_RESTARTS` times in a row). Every process dies with the
supervisor, however it dies (`ManagedProcess`'s parent-death signal); the running stack is
recorded in `run/stack.json`, from which (and from its ports) a new `make run` recognises the
leftovers of an earlier one (`trackerdcs.stack.leftovers`).
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from trackerdcs.config import LabConfig, loopback_port
from trackerdcs.safety.dcs_daemon import recipes_dir
from trackerdcs.stack.influx import data_path_ports, data_path_processes
from trackerdcs.stack.leftovers import check_leftovers, clear_state, write_state
from trackerdcs.stack.mosquitto import mosquitto_process
from trackerdcs.stack.nodered import NodeRed
from trackerdcs.stack.process import ManagedProcess, port_open
from trackerdcs.stack.ready import Serving, logged, serving
from trackerdcs.topics import ServiceTopics

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
    details: list[str] = field(default_factory=list)  # more endpoints, under the summary line


def _loopback(address: str) -> bool:
    host = address.rsplit(":", 1)[0] if ":" in address else address
    return host in ("127.0.0.1", "localhost")


def _python_entry(
    name: str, module: str, config_path: Path, logs: Path, ready: str, endpoint: str, what: str,
    details: tuple[str, ...] = (), args: tuple[str, ...] = (),
) -> StackEntry:  # fmt: skip
    """A trackerdcs process `python -m MODULE --config FILE [ARGS]`, ready when it logs `ready`
    and, a daemon, its prefixes are online (`trackerdcs.stack.ready.serving`)."""
    argv = [PY, "-m", module, "--config", str(config_path), *args]
    log = logs / f"{name}.log"
    return StackEntry(
        name,
        lambda: ManagedProcess(name, argv, log_path=log, ready=serving(ready)),
        endpoint,
        what,
        details=list(details),
    )


def _lab_entry(cfg: LabConfig, config_path: Path, logs: Path) -> StackEntry:
    """The coupled virtual lab: the crate it serves, the chiller's and the sensors' lines."""
    vlab = cfg.virtual_lab
    assert vlab is not None
    crate = cfg.virtual_lab_crate()
    served = []
    chillers = [c for c in cfg.chillers if loopback_port(c.url) is not None]
    if chillers:
        served.append(f"Julabo on {chillers[0].url}" if len(chillers) == 1 else
                      f"{len(chillers)} Julabos")  # fmt: skip
    lines = [s for s in cfg.sensors if loopback_port(s.source) is not None]
    if lines:
        served.append(f"{len(lines)} sensor line(s)")
    parts = [f"simulated SY4527 '{crate.system}'"] if crate else []
    what = "virtual lab: " + ", ".join(parts + served)
    details = [f"Julabo simulator {c.name} on {c.url}" for c in chillers]
    details += [f"{s.name} line on {s.source}" for s in lines]
    if vlab.control_port is not None:
        details.append(f"backdoor on 127.0.0.1:{vlab.control_port} (get, set, sensor, julabo)")
    endpoint = f"ca://{crate.address}" if crate else (chillers[0].url if chillers else "-")
    return _python_entry(
        "sim-lab", "trackerdcs.sim.lab", config_path, logs, "virtual lab", endpoint, what,
        details=tuple(details),
    )  # fmt: skip


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
    for d in data_path_processes(cfg, run_dir):  # InfluxDB, then Telegraf or trackerdcs-ingest
        entries.append(StackEntry(d.name, d.make, d.endpoint, d.what, details=d.details))
    lab_crate = cfg.virtual_lab_crate()
    if cfg.virtual_lab is not None:
        entries.append(_lab_entry(cfg, config_path, logs))
    for crate in cfg.crates:
        simulated = crate.backend == "epics" and _loopback(crate.address)
        if simulated and (lab_crate is None or crate.name != lab_crate.name):
            log = logs / f"sim-crate-{crate.name}.log"
            argv = [PY, "-m", "trackerdcs.sim.crate", "--config", str(config_path)]
            argv += ["--crate", crate.name]
            entries.append(
                StackEntry(
                    f"sim-crate-{crate.name}",
                    lambda argv=argv, log=log: ManagedProcess(
                        "sim crate", argv, log_path=log, ready=logged("serving")
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
                    "power daemon", argv, log_path=log, ready=serving("serving crate")
                ),
                prefixes,
                f"power-supply daemon for crate {crate.name}",
            )
        )
    several = len(cfg.chillers) > 1
    for chiller in cfg.chillers:  # one daemon per chiller (--chiller when the lab has several)
        entries.append(_python_entry(
            f"julabo-{chiller.name}" if several else "julabo", "trackerdcs.julabo.daemon",
            config_path, logs, "serving chiller", chiller.prefix,
            f"chiller daemon for the Julabo {chiller.name} on {chiller.url}",
            args=("--chiller", chiller.name) if several else (),
        ))  # fmt: skip
    if cfg.sensors:
        topics = [s.prefix for s in cfg.sensors]
        endpoint = " ".join(topics) if len(topics) <= 2 else f"{topics[0]} +{len(topics) - 1}"
        sensors = _python_entry(
            "sensors", "trackerdcs.sensors.daemon", config_path, logs, "serving",
            endpoint, f"sensor daemon: {', '.join(topics)}",
        )  # fmt: skip
        entries.append(sensors)
    entries += _safety_entries(cfg, config_path, run_dir)
    ui = NodeRed(cfg, run_dir / "node-red", config_path=config_path,
                 results_dir=ivscan_results(cfg, run_dir))  # fmt: skip
    entries.append(
        StackEntry(
            "node-red",
            lambda: ui.process(logs / "node-red.log"),
            ui.dashboard_url,
            "operators' control UI (Node-RED dashboard)",
            details=[ui.login_hint(), f"history: {cfg.influx.url} as the read-only user nodered"],
        )
    )
    return entries


def stack_ports(cfg: LabConfig) -> dict[int, str]:
    """The TCP ports the local stack listens on -> the lab YAML key (or process) that sets each."""
    ports: dict[int, str] = {cfg.mqtt.port: "mqtt.port"}
    ports.update({port: key for _, port, key in data_path_ports(cfg)})
    ports.setdefault(NodeRed.port, "the Node-RED port")
    if cfg.virtual_lab is not None and cfg.virtual_lab.control_port is not None:
        ports.setdefault(cfg.virtual_lab.control_port, "virtual_lab.control_port")
    if cfg.julabo is not None and (port := loopback_port(cfg.julabo.url)) is not None:
        ports.setdefault(port, "julabo.url")
    for i, sensor in enumerate(cfg.sensors):
        if (port := loopback_port(sensor.source)) is not None:
            ports.setdefault(port, f"sensors.{i}.source")
    for i, crate in enumerate(cfg.crates):
        if crate.backend == "epics" and _loopback(crate.address):
            port = crate.address.rsplit(":", 1)[1] if ":" in crate.address else "5064"
            if port.isdigit():
                ports.setdefault(int(port), f"crates.{i}.address")
    return ports


def ivscan_results(cfg: LabConfig, run_dir: Path) -> Path:
    """Where the stack keeps IV scan results (and recipe records): `ivscan.results_dir`, in the
    run directory when relative."""
    results = Path(cfg.ivscan.results_dir)
    return results if results.is_absolute() else run_dir / results.name


def _safety_entries(cfg: LabConfig, config_path: Path, run_dir: Path) -> list[StackEntry]:
    """Interlocks (when the lab has rules), alarms and audit log, module sequencer."""
    logs, entries = run_dir / "logs", []
    if cfg.interlocks.rules:
        names = ", ".join(r.name for r in cfg.interlocks.rules)
        entries.append(_python_entry(
            "interlock", "trackerdcs.safety.interlock_daemon", config_path, logs,
            "serving interlocks", cfg.power.interlock_topic.rsplit("/", 1)[0],
            f"interlock service: {names}",
        ))  # fmt: skip
    db = Path(cfg.alarms.db)
    db = db if db.is_absolute() else run_dir / db.name
    entries.append(_python_entry(
        "alarms", "trackerdcs.safety.alarms_daemon", config_path, logs, "serving alarms",
        "/alarms /audit", "latching alarms, audit log (/dcs/log)",
        details=(f"alarms and audit log in {db}",), args=("--db", str(db)),
    ))  # fmt: skip
    if cfg.modules():
        results = ivscan_results(cfg, run_dir)
        recipes = recipes_dir(cfg, config_path)
        entries.append(_python_entry(
            "dcs", "trackerdcs.safety.dcs_daemon", config_path, logs, "serving the sequencer",
            "/dcs", "module on/off sequencer (/dcs/cmd/module/{name}), IV scans "
            "(/dcs/cmd/ivscan/{module}, trackerdcs iv-scan), recipes (/dcs/cmd/recipe/..., "
            "trackerdcs recipe run)",
            details=(f"IV scan results in {results}", f"recipes from {recipes}"),
            args=("--results-dir", str(results)),
        ))  # fmt: skip
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
        for host, port, key in data_path_ports(self.cfg):
            if port_open(host, port):
                raise RuntimeError(
                    f"{host}:{port} is already in use (another InfluxDB, or a stack still "
                    f"running?); stop it or set {key} in the lab YAML"
                )

    def record(self) -> None:
        """`run/stack.json`: what runs now (for the leftovers check of a later stack)."""
        write_state(self.run_dir, self.config_path, [
            (e.name, e.process.pid, e.process.argv)
            for e in self.entries if e.process is not None and e.process.pid is not None
        ])  # fmt: skip

    def start(self) -> None:
        self.check_ports()
        total = len(self.entries)
        for i, entry in enumerate(self.entries, 1):
            self.say(f"[{i}/{total}] starting {entry.name:<22} {entry.what}")
            t0 = time.monotonic()
            entry.process = entry.make()
            try:
                entry.process.start()
            except Exception as exc:  # whatever it is, nothing started is left running
                self.say(f"      failed: {exc}\n{entry.process.tail()}")
                self.stop()
                raise
            entry.started_at = time.monotonic()
            self.record()
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
            lines += [f"  {'':<22} {'':>7}  - {detail}" for detail in e.details]
        host, port = self.cfg.mqtt.host, self.cfg.mqtt.port
        pub = f"  mosquitto_pub -h {host} -p {port} -t"
        lines += [
            "",
            "Try:",
            f"  mosquitto_sub -h {host} -p {port} -t '/#' -v",
            f"{pub} /hv/cmd/setv/0 -m 100",
            f"{pub} /hv/cmd/switch/0 -m on",
        ]
        for chiller in self.cfg.chillers:
            topics = ServiceTopics(chiller.prefix)
            lines += [
                f"{pub} {topics.command('setpoint')} -m -10",
                f"{pub} {topics.command('switch')} -m on",
            ]
        lines += ["", "Ctrl-C stops everything."]
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
                if isinstance(proc.ready, Serving):  # its line only: it connects by itself,
                    proc.ready = proc.ready.line  # and a broker down meanwhile waits for no one
                try:
                    proc.start()
                except Exception as exc:  # the others are still watched
                    self.say(f"! {entry.name} failed to restart: {exc}")
                self.record()

    def request_stop(self, *_: object) -> None:
        self._stop.set()

    def stop(self) -> None:
        self._stop.set()
        for entry in reversed(self.entries):
            if entry.process is not None and entry.process.proc is not None:
                code = entry.process.stop()
                self.say(f"stopped {entry.name} (pid {entry.process.pid}, exit {code})")
        clear_state(self.run_dir)


def run_stack(cfg: LabConfig, config_path: Path, run_dir: Path) -> int:
    """`make run`: leftovers of an earlier stack first (named; stopped only if the user agrees),
    then the stack until Ctrl-C or SIGTERM. 1 when it could not start."""
    if not check_leftovers(run_dir, config_path, stack_ports(cfg)):
        return 1
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
