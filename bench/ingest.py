"""Benchmark of the data path: MQTT -> `trackerdcs-ingest` (the repo's telegraf.conf) -> InfluxDB.

- `ingest_points_per_s`: the highest sustained rate of status messages (one point each: sensor
  objects on `/bench_sensor/status`) that reach InfluxDB with zero loss: the count in InfluxDB
  equals the count sent, and the bridge keeps up (everything written within 2 s of the last
  publish). Rates are tried upward; publishers are `mosquitto_pub -l` processes fed at a paced
  rate, so the publishers' own cost stays small on these two cores.
- the CPU share of the bridge, InfluxDB and Mosquitto at that rate (% of one core): where the
  time goes.
- `ingest_plain_client_points_per_s`: the same rate with the bridge reading through paho's own
  client (`TRACKERDCS_INGEST_MQTT_CLIENT=plain`), its fallback when paho lacks the internals of
  the buffered `FastClient` (`trackerdcs.ingest.consumer`).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from bench.common import LOOPBACK, ROOT, Figure, Options, Result, broker, running, start_all
from trackerdcs.config import InfluxConfig
from trackerdcs.ingest.bridge import READY
from trackerdcs.ingest.consumer import CLIENT_ENV
from trackerdcs.ingest.influxdb import InfluxClient
from trackerdcs.stack.influx import influxd_process, setup_database
from trackerdcs.stack.process import ManagedProcess, free_port, wait_until
from trackerdcs.stack.ready import logged

TOPIC = "/bench_sensor/status"  # read by telegraf.conf's sensor input (/+/status, kind room)
SERIES = 100  # distinct sensors (name tag) in the stream
PUBLISHERS = 2  # mosquitto_pub processes sharing the rate


@dataclass
class AtLeastResult(Result):
    """A figure whose target is a minimum."""

    @property
    def target(self) -> str:
        return "info" if self.limit is None else f">= {self.limit:g}"

    @property
    def passed(self) -> bool | None:
        if self.limit is None:
            return None
        return self.value is not None and self.value >= self.limit


@dataclass(frozen=True)
class AtLeast(Figure):
    def result(self, value: float | None, note: str = "") -> Result:
        return AtLeastResult(self.name, value, self.unit, self.limit, note)


INGEST_FIGURES = (
    AtLeast("ingest_points_per_s", "msg/s", 20000.0),
    Figure("ingest_bridge_cpu_percent", "%"),  # at that rate, % of one core
    Figure("ingest_influxd_cpu_percent", "%"),
    Figure("ingest_mosquitto_cpu_percent", "%"),
    Figure("ingest_plain_client_points_per_s", "msg/s"),  # paho's own client: the fallback
)


def _payloads(run: str, n: int) -> list[bytes]:
    """Sensor statuses, each with its own `time` (10 us apart: a point each, none overwritten)."""
    lines = []
    start = time.time()
    for i in range(n):
        doc = {"name": f"bench_{i % SERIES}", "kind": "room", "module": run,
               "temperature": 20.0 + (i % 1000) / 100, "humidity": 45.0 + (i % 7) / 10,
               "dewpoint": 8.61, "max_temperature": None, "stale": False, "age": 0.1,
               "error": None, "time": round(start + i * 1e-5, 6)}  # fmt: skip
        lines.append(json.dumps(doc).encode() + b"\n")
    return lines


def _publish_paced(port: int, lines: list[bytes], rate: float) -> tuple[float, float]:
    """Feed `lines` to mosquitto_pub -l processes at `rate` lines/s. Returns the rate achieved
    (lines before the last write / time to it) and the wall time, publishers' exit included."""
    pubs = [
        subprocess.Popen(
            ["mosquitto_pub", "-h", LOOPBACK, "-p", str(port), "-t", TOPIC, "-l", "-q", "0"],
            stdin=subprocess.PIPE,
        )
        for _ in range(PUBLISHERS)
    ]
    chunk = max(1, int(rate / 200))  # 5 ms worth per write
    start = last = time.monotonic()
    try:
        for i in range(0, len(lines), chunk):
            pubs[(i // chunk) % PUBLISHERS].stdin.write(b"".join(lines[i : i + chunk]))
            last = time.monotonic()
            delay = start + (i + chunk) / rate - last
            if delay > 0:
                time.sleep(delay)  # pacing the feed, not synchronisation
    finally:
        for p in pubs:
            p.stdin.close()
        for p in pubs:
            p.wait(30)
    achieved = (len(lines) - chunk) / (last - start) if last > start else rate
    return achieved, time.monotonic() - start


def _cpu(procs: dict[str, psutil.Process]) -> dict[str, float]:
    out = {}
    for name, p in procs.items():
        t = p.cpu_times()
        out[name] = t.user + t.system
    return out


def _bridge(workdir: Path, mqtt_port: int, influx_url: str, client: str = "") -> ManagedProcess:
    """The bridge on the repo's telegraf.conf; `client="plain"`: reading with paho's client."""
    return ManagedProcess(
        f"ingest bridge {client}".strip(),
        [sys.executable, "-m", "trackerdcs.ingest.bridge",
         "--config", str(ROOT / "telegraf.conf"), "--status-prefix", ""],
        log_path=workdir / f"ingest-bridge{'-' + client if client else ''}.log",
        env={"TRACKERDCS_MQTT_SERVER": f"tcp://{LOOPBACK}:{mqtt_port}",
             "TRACKERDCS_INFLUX_URL": influx_url, CLIENT_ENV: client},
        ready=logged(READY),
        cwd=ROOT,
    )  # fmt: skip


def ingest(opts: Options) -> list[Result]:
    workdir = opts.workdir / "ingest"
    workdir.mkdir(parents=True, exist_ok=True)
    mosq, mqtt_port = broker(workdir)
    cfg = InfluxConfig(port=free_port(), rpc_port=free_port())
    influxd = influxd_process(workdir, cfg.host, cfg.port, cfg.rpc_port)
    db = InfluxClient(cfg.url)
    with running(mosq, influxd):
        start_all(mosq, influxd)
        setup_database(db, cfg)
        best = _highest_rate(opts, workdir, (mosq, mqtt_port), influxd, db, "")
        opts.log("  the same with paho's own client (the fallback):")
        plain = _highest_rate(opts, workdir, (mosq, mqtt_port), influxd, db, "plain")
    plain_result = INGEST_FIGURES[4].result(
        plain[0] if plain else 0.0, note="" if plain else "lost points at the lowest rate"
    )
    if best is None:
        return [
            f.result(0.0, note="lost points at the lowest rate") for f in INGEST_FIGURES[:4]
        ] + [plain_result]
    value, share = best
    return [
        INGEST_FIGURES[0].result(value),
        INGEST_FIGURES[1].result(share["bridge"]),
        INGEST_FIGURES[2].result(share["influxd"]),
        INGEST_FIGURES[3].result(share["mosquitto"]),
        plain_result,
    ]


def _highest_rate(
    opts: Options,
    workdir: Path,
    broker_and_port: tuple[ManagedProcess, int],
    influxd: ManagedProcess,
    db: InfluxClient,
    client: str,
) -> tuple[float, dict[str, float]] | None:
    """The highest zero-loss rate of a bridge reading with `client`, and the CPU shares at it
    (None: points lost at the lowest rate). Rates are tried upward until one loses points."""
    rates = [12000.0, 24000.0] if opts.quick else [10000.0 + 5000.0 * i for i in range(9)]
    seconds = 1.5 if opts.quick else 5.0
    best: tuple[float, dict[str, float]] | None = None
    mosq, mqtt_port = broker_and_port
    bridge = _bridge(workdir, mqtt_port, db.url, client)
    with running(bridge):
        start_all(bridge)
        procs = {
            "bridge": psutil.Process(bridge.pid),
            "influxd": psutil.Process(influxd.pid),
            "mosquitto": psutil.Process(mosq.pid),
        }
        _warm_up(db, mqtt_port, f"warmup{client}", rates[0])
        for n, rate in enumerate(rates):
            run = f"run{n}{client}"
            lines = _payloads(run, int(rate * seconds))
            cpu0 = _cpu(procs)
            achieved, took = _publish_paced(mqtt_port, lines, rate)
            cpu1 = _cpu(procs)
            where, sent = f"\"module\" = '{run}'", len(lines)
            try:
                wait_until(
                    lambda w=where, k=sent: db.count("sensor", "temperature", w) >= k,
                    2.0,
                    "all points written",
                    poll=0.05,
                )
                kept_up = True
            except TimeoutError:
                kept_up = False
            stored = _settled_count(db, where)
            share = {k: 100 * (cpu1[k] - cpu0[k]) / took for k in procs}
            opts.log(
                f"  {achieved:8.0f} msg/s for {took:.1f} s: stored {stored}/{len(lines)} "
                f"{'kept up' if kept_up else 'fell behind'}; cpu % "
                + ", ".join(f"{k} {v:.0f}" for k, v in share.items())
            )
            if stored != len(lines) or not kept_up:
                break
            # the step's rate, unless the feed could not hold it
            best = (rate if achieved >= 0.99 * rate else achieved, share)
    return best


def _warm_up(db: InfluxClient, port: int, run: str, rate: float) -> None:
    """One second at `rate`, not measured: a bridge's first writes (and InfluxDB's first to a
    series) are slower, which would count against whichever bridge the benchmark starts first."""
    lines = _payloads(run, int(rate))
    _publish_paced(port, lines, rate)
    with contextlib.suppress(TimeoutError):
        where = f"\"module\" = '{run}'"
        wait_until(lambda: db.count("sensor", "temperature", where) >= len(lines), 10.0,
                   "the warm-up written", poll=0.1)  # fmt: skip


def _settled_count(db: InfluxClient, where: str, timeout: float = 30.0) -> int:
    """The run's count once it stops changing (a run that fell behind drains first)."""
    last, deadline = -1, time.monotonic() + timeout
    while time.monotonic() < deadline:
        count = db.count("sensor", "temperature", where)
        if count == last:
            return count
        last = count
        threading.Event().wait(1.2)  # longer than the bridge's flush interval
    return last
