"""Shared pieces of the benchmarks: results, lab files, processes, an MQTT probe client.

Every process is real, listens on a free 127.0.0.1 port and is stopped by PID.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import re
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psutil
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from trackerdcs.stack.mosquitto import mosquitto_process
from trackerdcs.stack.process import ManagedProcess, free_port
from trackerdcs.stack.ready import logged

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_LAB = ROOT / "examples" / "lab.yml"
LOOPBACK = "127.0.0.1"
_ids = itertools.count()


# -- results ----------------------------------------------------------------------------------
@dataclass
class Result:
    """One figure. `limit` None means information only (target "info")."""

    name: str
    value: float | None
    unit: str
    limit: float | None = None
    note: str = ""

    @property
    def target(self) -> str:
        return "info" if self.limit is None else f"<= {self.limit:g}"

    @property
    def skipped(self) -> bool:
        """Not measured on purpose (the note says why): not a failure."""
        return self.value is None and self.note.startswith("skipped")

    @property
    def passed(self) -> bool | None:
        if self.limit is None:
            return None
        return self.value is not None and self.value <= self.limit

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": None if self.value is None else round(self.value, 4),
            "unit": self.unit,
            "target": self.target,
            "limit": self.limit,
            "pass": self.passed,
            "note": self.note,
        }


@dataclass(frozen=True)
class Figure:
    """What a benchmark reports under one name: unit and target (None: information only)."""

    name: str
    unit: str
    limit: float | None = None

    def result(self, value: float | None, note: str = "") -> Result:
        return Result(self.name, value, self.unit, self.limit, note)


def results(
    figures: tuple[Figure, ...], values: dict[str, float], notes: dict[str, str] | None = None
) -> list[Result]:
    """One result per figure, in the figures' order; a note replaces the pass/info verdict."""
    notes = notes or {}
    return [f.result(values[f.name], notes.get(f.name, "")) for f in figures]


@dataclass
class Options:
    """What the runner passes to every benchmark."""

    workdir: Path
    quick: bool = False
    profile: bool = False
    log: Callable[[str], None] = field(default=lambda text: print(text, flush=True))


def percentile(values: Sequence[float], q: float) -> float:
    """The `q`-th percentile (0..100), nearest-rank on the sorted values."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


# -- lab files --------------------------------------------------------------------------------
def _with_ports(data: dict[str, Any], mqtt_port: int, ca_port: int, system: str) -> dict:
    data["mqtt"]["host"] = LOOPBACK
    data["mqtt"]["port"] = mqtt_port
    crate = data["crates"][0]
    crate["address"] = f"{LOOPBACK}:{ca_port}"
    crate["system"] = system
    return data


def _example_power() -> dict[str, Any]:
    """The example lab's power part (lab, mqtt, crates, power): the other services are not
    benchmarked here, and sensors or chillers must not depend on the generated channels."""
    data = yaml.safe_load(EXAMPLE_LAB.read_text())
    # no interlock service beside them: the daemons watch their broker only
    data["power"]["failsafe"]["supervisors"] = []
    return {key: data[key] for key in ("lab", "mqtt", "crates", "power") if key in data}


def example_lab(path: Path, mqtt_port: int, ca_port: int) -> Path:
    """The example lab's crate and channels on this run's ports."""
    data = _with_ports(_example_power(), mqtt_port, ca_port, "benchlat")
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def scale_lab(path: Path, mqtt_port: int, ca_port: int, boards: int = 16, per_board: int = 48):
    """One crate, half HV and half LV boards of `per_board` channels, every channel configured.

    HV channel n and LV channel n power module `M<n>`. The boards are `generic` ones (48-channel
    boards; the table's real models have 16 and 8), so the LV ramps by rate here.
    """
    data = _example_power()
    hv_boards = boards // 2
    data["crates"][0]["boards"] = {
        slot: {"kind": "hv" if slot < hv_boards else "lv", "channels": per_board}
        for slot in range(boards)
    }
    lv = data["power"]["defaults"]["lv"]
    for key in ("ruptime", "rdwtime"):
        lv.pop(key, None)
    lv.update(rup=5.0, rdwn=5.0)
    channels = []
    for slot in range(boards):
        kind = "hv" if slot < hv_boards else "lv"
        for ch in range(per_board):
            number = (slot % hv_boards) * per_board + ch
            channels.append(
                {"number": number, "name": f"{kind}_b{slot:02d}_c{ch:02d}", "kind": kind,
                 "board": slot, "channel": ch, "module": f"M{number:03d}"}
            )  # fmt: skip
    data["power"]["channels"] = channels
    data = _with_ports(data, mqtt_port, ca_port, "benchscale")
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def publish_settings(path: Path) -> dict[str, float]:
    """The `power.publish` block of a lab file (heartbeat, min_interval)."""
    data = yaml.safe_load(path.read_text())
    return {"heartbeat": 10.0, "min_interval": 0.02, **data["power"].get("publish", {})}


# -- processes --------------------------------------------------------------------------------
def python_process(name: str, module: str, args: list[str], log: Path, **kw) -> ManagedProcess:
    return ManagedProcess(name, [sys.executable, "-m", module, *args], log_path=log, **kw)


def crate_process(workdir: Path, config: Path, ca_port: int, *extra: str) -> ManagedProcess:
    """The simulated crate on `ca_port` (noise 0 unless `extra` says otherwise)."""
    return python_process(
        "sim crate",
        "trackerdcs.sim.crate",
        ["--config", str(config), "--port", str(ca_port), "--noise", "0", *extra],
        workdir / f"crate-{ca_port}.log",
        ready=logged("serving"),
        ready_timeout=120.0,
        cwd=ROOT,
    )


def daemon_process(workdir: Path, config: Path, profile_out: Path | None = None) -> ManagedProcess:
    """The power daemon, optionally under `bench.profiled` (cProfile of every Python thread).

    No readiness check: the caller measures start-up itself. libca's repeater port is a free
    one, so that nothing outside this run is ever contacted.
    """
    module, args = "trackerdcs.power.daemon", ["--config", str(config)]
    if profile_out is not None:
        module, args = "bench.profiled", [str(profile_out), module, *args]
    return python_process(
        "power daemon",
        module,
        args,
        workdir / f"daemon-{config.stem}.log",
        env={"EPICS_CA_REPEATER_PORT": str(free_port())},
        cwd=ROOT,
    )


@contextlib.contextmanager
def running(*procs: ManagedProcess) -> Iterator[None]:
    """Stop (by PID, in reverse order) every process given, whatever happens."""
    try:
        yield
    finally:
        for proc in reversed(procs):
            proc.stop()


def broker(workdir: Path) -> tuple[ManagedProcess, int]:
    port = free_port()
    return mosquitto_process(workdir, port), port


def start_all(*procs: ManagedProcess) -> None:
    for proc in procs:
        proc.start()
        if not proc.alive:
            raise RuntimeError(f"{proc.name} exited: {proc.tail()}")


# -- MQTT probe -------------------------------------------------------------------------------
MessageHandler = Callable[[str, bytes, float], None]


def _no_delay(client: mqtt.Client, userdata: Any, sock: Any) -> None:
    """Disable Nagle: else a publish sent right after a PUBACK waits for the broker's delayed
    ACK (~20 ms here), which would be measured as latency."""
    if isinstance(sock, socket.socket):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Probe:
    """A paho-mqtt 2.x client (MQTT 5) that hands every message to `handler(topic, payload, t)`.

    `t` is `time.perf_counter()` taken first thing in the callback.
    """

    def __init__(self, port: int, topics: Sequence[str], handler: MessageHandler) -> None:
        self.handler = handler
        self.errors: list[str] = []  # exceptions raised by the handler
        self._subscribed = threading.Event()
        self._topics = list(topics)
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"bench-{next(_ids)}-{time.monotonic_ns()}",
            protocol=mqtt.MQTTv5,
        )
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.on_socket_open = _no_delay
        self.client.connect(LOOPBACK, port)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            self.close()
            raise TimeoutError("bench client did not subscribe")

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        client.subscribe([(topic, 1) for topic in self._topics])

    def _on_message(self, client, userdata, msg: mqtt.MQTTMessage) -> None:
        t = time.perf_counter()
        try:
            self.handler(msg.topic, msg.payload, t)
        except Exception as exc:  # an exception here would end paho's network thread
            self.errors.append(f"{msg.topic}: {type(exc).__name__}: {exc}")

    def publish(self, topic: str, payload: str | bytes, qos: int = 1) -> mqtt.MQTTMessageInfo:
        return self.client.publish(topic, payload, qos=qos)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        if self.errors:
            print(
                f"bench client: {len(self.errors)} handler errors: {self.errors[:3]}",
                file=sys.stderr,
            )

    def __enter__(self) -> Probe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def status_complete(payload: bytes, channels: int) -> bool:
    """A status message listing `channels` channels, none of them DISCONNECTED."""
    if b'"DISCONNECTED"' in payload:
        return False
    entries = json.loads(payload)
    return len(entries) == channels and all(c["state"] != "DISCONNECTED" for c in entries)


# -- process measurements ---------------------------------------------------------------------
def cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.user + times.system


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds per thread kind of process `pid`, keyed by the thread's name (`comm`).

    The main thread (the asyncio loop) is `main`; other Python threads are named after the
    interpreter (`python...`), libca's threads carry their EPICS names (CAC-*, timerQueue ...).
    """
    totals: dict[str, float] = {}
    for thread in psutil.Process(pid).threads():
        if thread.id == pid:
            name = "main (asyncio loop)"
        else:
            try:
                name = Path(f"/proc/{pid}/task/{thread.id}/comm").read_text().strip()
            except OSError:
                continue
            name = re.sub(r"\d+$", "", name) or "?"
            if name.startswith("python"):
                name = "python threads (paho)"
        totals[name] = totals.get(name, 0.0) + thread.user_time + thread.system_time
    return totals


_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})")


def log_times(text: str, marker: str) -> list[float]:
    """Wall-clock times (epoch s) of the log lines containing `marker`."""
    times = []
    for line in text.splitlines():
        match = _LOG_TIME.match(line)
        if match and marker in line:
            stamp = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f")
            times.append(stamp.timestamp())
    return times
