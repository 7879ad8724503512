"""A tracker-sized lab on one machine: 13 crate daemons of 768 channels (9,984 channels), every
channel's readings changing once a second, with the broker and the data path (the repo's
telegraf.conf run by `trackerdcs-ingest` into InfluxDB).

Each crate is the 768-channel crate of the `scale` benchmark (16 generic boards of 48 channels,
8 HV + 8 LV) under its own prefixes `/hv<n>`, `/lv<n>` (which telegraf.conf files under `hv` and
`lv`), served by its own simulated crate (`--churn`) on its own CA port, and each daemon reads a
lab file with its crate only (a 10,000-channel file is validated by every daemon at start: see
`tracker_config_load_s`). Measured:

- `tracker_first_status_s`: the 13 daemons spawned at once -> every one of the 26 status topics
  complete (no channel DISCONNECTED); target <= 10 s. Beside it, the CPU of that start-up:
  the most any one daemon used (`tracker_daemon_startup_cpu_max_s`: with a core per daemon,
  about its start-up time), all daemons' together, the cores the simulated crates took
  meanwhile, and `tracker_first_status_cpu_bound_s` = all daemons' CPU s / (cores - the
  simulators' cores): the first complete status cannot come sooner on this machine with these
  simulators running;
- over a window of steady churn: the CPU of all daemons together (% of one core; target <= 100)
  and per 1,000 channels, beside the simulators', the broker's, the ingest's and InfluxDB's;
- `tracker_points_lost`: status objects the daemons published in the window (counted by a
  subscriber) minus the points InfluxDB holds for it (target 0: broker and ingest keep up),
  counted once the ingest's counters (`/ingest/status`) show its buffer written;
- `tracker_load_average`: the machine's 1-minute load at the end (2 cores).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
from pathlib import Path

import psutil
import yaml

from bench.common import (
    LOOPBACK,
    ROOT,
    Figure,
    Options,
    Probe,
    Result,
    broker,
    cpu_seconds,
    crate_process,
    daemon_process,
    results,
    running,
    scale_lab,
    start_all,
    status_complete,
)
from trackerdcs.config import InfluxConfig, load_config
from trackerdcs.ingest.bridge import READY
from trackerdcs.ingest.influxdb import InfluxClient, InfluxError
from trackerdcs.stack.influx import influxd_process, setup_database
from trackerdcs.stack.process import ManagedProcess, free_port, wait_until
from trackerdcs.stack.ready import logged

CRATES = 13
INGEST_STATUS = "/ingest/status"  # the ingest's counters: the bench counts once it is drained
DRAIN_TIMEOUT = 300.0  # s the ingest may take to write its backlog on a saturated machine
FIGURES = (
    Figure("tracker_channels", "channels"),
    Figure("tracker_first_status_s", "s", 10.0),
    # CPU s the daemons spent from their spawn to every status complete: the most of one, and
    # all of them; the cores the simulated crates took meanwhile (their churn never stops)
    Figure("tracker_daemon_startup_cpu_max_s", "s"),
    Figure("tracker_daemons_startup_cpu_s", "s"),
    Figure("tracker_sims_startup_cores", "cores"),
    # all daemons' start-up CPU / the cores the simulators left them: the first complete status
    # cannot come sooner on this machine with these simulators running
    Figure("tracker_first_status_cpu_bound_s", "s"),
    Figure("tracker_daemons_cpu_percent", "%", 100.0),  # all daemons, % of one core
    Figure("tracker_daemon_cpu_per_1000_channels", "%"),
    Figure("tracker_sims_cpu_percent", "%"),  # the simulated crates (not the product)
    Figure("tracker_broker_cpu_percent", "%"),
    Figure("tracker_ingest_cpu_percent", "%"),
    Figure("tracker_influxd_cpu_percent", "%"),
    Figure("tracker_status_msgs_per_s", "msg/s"),
    Figure("tracker_points_per_s", "points/s"),
    Figure("tracker_points_lost", "points", 0.0),
    Figure("tracker_config_load_s", "s"),  # one 10,000-channel lab file, loaded and validated
    Figure("tracker_load_average", "load"),
)


class Counter:
    """Status messages and the objects in them whose `time` falls in a window (probe thread)."""

    def __init__(self, expected: dict[str, int]) -> None:
        self.expected = expected
        self.complete: dict[str, float] = {}
        self.window: tuple[float, float] | None = None
        self.messages = 0
        self.objects = 0
        self.ingest: dict = {}  # the ingest's latest counters (/ingest/status)
        self._goal: int | None = None  # metrics made by the window's end (`drained`)
        self._lock = threading.Lock()
        self._all = threading.Event()

    def handler(self, topic: str, payload: bytes, t: float) -> None:
        if topic == INGEST_STATUS:
            self.ingest = json.loads(payload)
            return
        if topic not in self.expected:
            return
        if topic not in self.complete and status_complete(payload, self.expected[topic]):
            with self._lock:
                self.complete[topic] = t
                if len(self.complete) == len(self.expected):
                    self._all.set()
        window = self.window
        if window is not None:
            times = [c["time"] for c in json.loads(payload)]
            inside = sum(window[0] <= x <= window[1] for x in times)
            with self._lock:
                self.messages += 1
                self.objects += inside

    def wait(self, timeout: float) -> bool:
        return self._all.wait(timeout)

    def drained(self, after: float) -> bool:
        """The ingest has written (or dropped) every metric its first counters sent after
        `after` (unix s) had made: what it received until then is in InfluxDB (its buffer is
        written oldest first, and new statuses keep coming)."""
        counters = self.ingest
        if counters.get("time", 0) <= after:
            return False
        if self._goal is None:
            self._goal = counters["metrics"]
        return counters["written"] + counters["dropped"] >= self._goal


def crate_lab(path: Path, n: int, mqtt_port: int, ca_port: int) -> Path:
    """The scale benchmark's 768-channel crate as crate `c<n>`, prefixes /hv<n>, /lv<n>."""
    scale_lab(path, mqtt_port, ca_port)
    data = yaml.safe_load(path.read_text())
    crate = data["crates"][0]
    crate.update(name=f"c{n}", system=f"tracker{n}", prefixes={"hv": f"/hv{n}", "lv": f"/lv{n}"})
    for ch in data["power"]["channels"]:
        ch.update(name=f"c{n}_{ch['name']}", module=f"C{n}{ch['module']}", crate=f"c{n}")
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def whole_lab(path: Path, labs: list[Path]) -> Path:
    """One lab file with every crate (10,000 channels): what a single-file tracker lab is."""
    data = yaml.safe_load(labs[0].read_text())
    for lab in labs[1:]:
        more = yaml.safe_load(lab.read_text())
        data["crates"] += more["crates"]
        data["power"]["channels"] += more["power"]["channels"]
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def ingest_process(workdir: Path, mqtt_port: int, influx_url: str) -> ManagedProcess:
    return ManagedProcess(
        "ingest",
        [sys.executable, "-m", "trackerdcs.ingest.bridge",
         "--config", str(ROOT / "telegraf.conf"), "--status-prefix", INGEST_STATUS[:-7],
         "--status-interval", "2"],
        log_path=workdir / "ingest.log",
        env={"TRACKERDCS_MQTT_SERVER": f"tcp://{LOOPBACK}:{mqtt_port}",
             "TRACKERDCS_INFLUX_URL": influx_url},
        ready=logged(READY),
        cwd=ROOT,
    )  # fmt: skip


def _cpu(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            total += cpu_seconds(p)
    return total


def _stored(db: InfluxClient, start: float, end: float) -> int:
    where = f"time >= {int(start * 1e9)} AND time <= {int(end * 1e9)}"
    return sum(db.count(m, "vmon", where) for m in ("hv", "lv"))


def tracker(opts: Options) -> list[Result]:
    crates, window = (2, 5.0) if opts.quick else (CRATES, 20.0)
    wd = opts.workdir / "tracker"
    wd.mkdir(parents=True, exist_ok=True)
    mosq, mqtt_port = broker(wd)
    influx = InfluxConfig(port=free_port(), rpc_port=free_port())
    influxd = influxd_process(wd, influx.host, influx.port, influx.rpc_port)
    db = InfluxClient(influx.url, timeout=60.0)  # a saturated machine answers slowly
    labs = [crate_lab(wd / f"c{n}.yml", n, mqtt_port, free_port()) for n in range(1, crates + 1)]
    started = time.perf_counter()
    load_config(whole_lab(wd / "whole.yml", labs))
    config_load = time.perf_counter() - started
    sims, daemons, expected = [], [], {}
    for lab in labs:
        cfg = load_config(lab)
        crate = cfg.crates[0]
        port = int(crate.address.rsplit(":", 1)[1])
        # physics once a second: each crate's readings change in one burst a second, as a
        # crate's IOC scanning its channels posts them (and 13 simulators fit the machine better)
        sims.append(crate_process(wd, lab, port, "--churn", "--tick", "1.0"))
        daemons.append(daemon_process(wd, lab))
        for kind, prefix in crate.prefixes.items():
            expected[f"{prefix}/status"] = len(cfg.channels_of(crate.name, kind))
    bridge = ingest_process(wd, mqtt_port, influx.url)
    counter = Counter(expected)
    with running(mosq, influxd, bridge, *sims, *daemons):
        start_all(mosq, influxd)
        setup_database(db, influx)
        start_all(bridge)
        opts.log(f"  starting {crates} simulated crates ({crates * 768} channels)")
        for sim in sims:
            sim.start()
        sim_procs = [psutil.Process(s.pid) for s in sims]
        with Probe(mqtt_port, [*expected, INGEST_STATUS], counter.handler):
            sims0 = _cpu(sim_procs)
            t0 = time.perf_counter()
            for daemon in daemons:
                daemon.start()
            daemon_procs = [psutil.Process(d.pid) for d in daemons]  # a daemon that dies later
            # counts what it used until then (and the check below names it)
            if not counter.wait(300):
                missing = sorted(set(expected) - set(counter.complete))
                raise TimeoutError(f"incomplete after 300 s: {missing[:4]}")
            first = max(counter.complete.values()) - t0
            startup = [_cpu([p]) for p in daemon_procs]  # from their spawn: all of it
            sims_cores = (_cpu(sim_procs) - sims0) / first
            cores = len(os.sched_getaffinity(0))
            opts.log(f"  every status complete {first:.1f} s after the daemons were spawned")
            time.sleep(5.0)  # past the start-up configuration writes
            procs = {
                "daemons": daemon_procs,
                "sims": sim_procs,
                "broker": [psutil.Process(mosq.pid)],
                "ingest": [psutil.Process(bridge.pid)],
                "influxd": [psutil.Process(influxd.pid)],
            }
            cpu0 = {k: _cpu(v) for k, v in procs.items()}
            start = time.time()
            counter.window = (start, start + window)
            begun = time.perf_counter()
            wait_until(lambda: time.time() > start + window, window + 5, "the window", 0.5)
            elapsed = time.perf_counter() - begun
            cpu = {k: 100 * (_cpu(v) - cpu0[k]) / elapsed for k, v in procs.items()}
            time.sleep(1.0)  # the last status of the window reaches the probe
            counter.window = None
            published, messages = counter.objects, counter.messages
            for name, daemon in zip(labs, daemons, strict=True):
                if not daemon.alive:
                    raise RuntimeError(f"daemon of {name.stem} died: {daemon.tail()}")
            # the points of the window are behind everything the ingest buffered before it (the
            # start-up's statuses, on a saturated machine): count once it has written them
            end = start + window + 1.0
            drained = True
            with contextlib.suppress(TimeoutError):
                wait_until(lambda: counter.drained(end), DRAIN_TIMEOUT, "the ingest drained", 1.0)
            if not counter.drained(end):
                drained = False
                opts.log(f"  the ingest still holds {counter.ingest.get('buffered')} metrics")
        load = os.getloadavg()[0]
        stored, note = -1, "" if drained else f"ingest not drained in {DRAIN_TIMEOUT:g} s"
        try:
            # until InfluxDB holds all, or the count has not grown for 15 s (on a saturated
            # machine the ingest's buffer may hold ~100,000 points while InfluxDB catches up)
            still = 0
            for _ in range(36):
                count = _stored(db, start, start + window)
                still = still + 1 if count == stored else 0
                stored = count
                if count >= published or still >= 3:
                    break
                time.sleep(5.0)
        except InfluxError as exc:
            note = f"InfluxDB did not answer: {exc}"
            opts.log(f"  {note}")
    channels = sum(expected.values())
    opts.log(
        f"  {channels} channels over {window:g} s: CPU % of one core: "
        + ", ".join(f"{k} {v:.0f}" for k, v in cpu.items())
        + f"; {messages / elapsed:.0f} status msg/s, {published} objects, {stored} stored"
    )
    return results(
        FIGURES,
        {
            "tracker_channels": channels,
            "tracker_first_status_s": first,
            "tracker_daemon_startup_cpu_max_s": max(startup),
            "tracker_daemons_startup_cpu_s": sum(startup),
            "tracker_sims_startup_cores": sims_cores,
            "tracker_first_status_cpu_bound_s": sum(startup) / max(cores - sims_cores, 0.05),
            "tracker_daemons_cpu_percent": cpu["daemons"],
            "tracker_daemon_cpu_per_1000_channels": cpu["daemons"] * 1000 / channels,
            "tracker_sims_cpu_percent": cpu["sims"],
            "tracker_broker_cpu_percent": cpu["broker"],
            "tracker_ingest_cpu_percent": cpu["ingest"],
            "tracker_influxd_cpu_percent": cpu["influxd"],
            "tracker_status_msgs_per_s": messages / elapsed,
            "tracker_points_per_s": published / window,
            "tracker_points_lost": published - stored if stored >= 0 else None,
            "tracker_config_load_s": config_load,
            "tracker_load_average": load,
        },
        {"tracker_points_lost": note} if note else None,
    )
