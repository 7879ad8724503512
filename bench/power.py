"""Benchmarks of the power-supply daemon (`trackerdcs.power.daemon`) on the simulated crate.

- `command_latency`: `/hv|lv/cmd/setv/{ch}` -> the new `vreq` in `<prefix>/status`, beside the bare
  broker round trip through the same client.
- `scale`: a 768-channel crate with churning readbacks: start-up to a complete status, then the
  daemon's CPU and memory in steady state.
"""

from __future__ import annotations

import json
import math
import os
import pstats
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

from bench.common import (
    ROOT,
    Figure,
    Options,
    Probe,
    Result,
    broker,
    cpu_seconds,
    crate_process,
    daemon_process,
    example_lab,
    log_times,
    percentile,
    publish_settings,
    python_process,
    results,
    running,
    scale_lab,
    start_all,
    status_complete,
    thread_cpu,
)
from trackerdcs.config import load_config
from trackerdcs.stack.process import free_port, wait_until

Predicate = Callable[[bytes], bool]
STOP_TIMEOUT = 15.0  # s after SIGTERM before the daemon is killed (scale benchmark)

LATENCY_FIGURES = (
    Figure("command_latency_p50_ms", "ms", 10.0),  # setv published -> status showing it
    Figure("command_latency_p99_ms", "ms", 10.0),
    Figure("broker_roundtrip_p50_ms", "ms"),  # publish -> receive, same client, no daemon
    Figure("broker_roundtrip_p99_ms", "ms"),
    Figure("command_latency_max_ms", "ms"),
    Figure("command_response_p50_ms", "ms"),  # setv published -> its answer on /response
    # the command's p99 against the bare broker round trip's p99 of the same run (issue 21)
    Figure("command_latency_p99_per_roundtrip", "x", 3.0),
    Figure("command_latency_p50_per_roundtrip", "x"),
    # put -> monitor to the simulated crate alone, a bare pyepics client (`bench.ca_roundtrip`):
    # the crate's part of the setv path, which the daemon cannot go below
    Figure("crate_roundtrip_p50_ms", "ms"),
    Figure("crate_roundtrip_p99_ms", "ms"),
    # 1 + crate / broker round trip (p50s): an approximate lower bound of
    # command_latency_p50_per_roundtrip whatever the daemon does (bench/README.md)
    Figure("command_latency_floor_p50_per_roundtrip", "x"),
)
SCALE_FIGURES = (
    Figure("scale_first_status_s", "s", 10.0),  # daemon spawned -> complete /hv and /lv status
    Figure("scale_cpu_percent", "%", 15.0),  # daemon, % of one core, churn running
    Figure("scale_rss_mb", "MB", 150.0),  # daemon, peak over the window
    Figure("scale_crate_cpu_percent", "%"),  # the simulated crate itself
    Figure("scale_status_msgs_per_s", "msg/s"),  # /hv/status + /lv/status received
    Figure("scale_stop_s", "s"),  # SIGTERM -> exit
)


# -- command latency --------------------------------------------------------------------------
class Expectation:
    """The one message the benchmark is waiting for: its topic and a test of its payload."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._topic: str | None = None
        self._test: Predicate = lambda payload: False
        self._done = threading.Event()
        self._t = 0.0

    def expect(self, topic: str, test: Predicate) -> None:
        with self._lock:
            self._topic, self._test = topic, test
            self._done.clear()

    def handler(self, topic: str, payload: bytes, t: float) -> None:
        """Probe callback (paho's thread)."""
        with self._lock:
            if topic != self._topic or not self._test(payload):
                return
            self._topic, self._t = None, t
        self._done.set()

    def wait(self, timeout: float, what: str) -> float:
        """The perf_counter time at which the expected message arrived."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"no answer within {timeout:g} s to {what}")
        return self._t


def vreq_is(number: int, value: float) -> Predicate:
    def test(payload: bytes) -> bool:
        return any(
            c["number"] == number and abs(c["vreq"] - value) < 1e-6 for c in json.loads(payload)
        )

    return test


def setv_targets(config: Path) -> list[tuple[str, int, float]]:
    """(prefix, number, vmax) of every configured channel, HV and LV interleaved."""
    cfg = load_config(config)
    crate = cfg.crates[0]
    columns = [
        [(prefix, ch.number, cfg.limits_for(ch).vmax) for ch in cfg.channels_of(crate.name, kind)]
        for kind, prefix in crate.prefixes.items()
    ]
    return [t for row in zip(*columns, strict=False) for t in row]


def setv_value(vmax: float, round_no: int) -> float:
    """A set point that differs from the channel's previous one (40 steps below vmax)."""
    return round(vmax * (1 + round_no % 40) / 50, 2)


def command_latency(opts: Options) -> list[Result]:
    """Sequential setv commands, each timed to the status showing it; broker round trips beside."""
    count, warmup = (100, 5) if opts.quick else (1000, 20)
    wd = opts.workdir / "latency"
    wd.mkdir(parents=True, exist_ok=True)
    mosquitto, mqtt_port = broker(wd)
    ca_port = free_port()
    lab = example_lab(wd / "lab.yml", mqtt_port, ca_port)
    pace = publish_settings(lab)["min_interval"] + 0.005  # past the daemon's burst coalescing
    targets = setv_targets(lab)
    crate = crate_process(wd, lab, ca_port, "--tick", "0.05")
    daemon = daemon_process(wd, lab)
    prefixes = sorted({t[0] for t in targets})
    watch = StatusWatch({f"{p}/status": sum(t[0] == p for t in targets) for p in prefixes})
    waiting = Expectation()

    answered: dict[tuple[str, str], float] = {}

    def handler(topic: str, payload: bytes, t: float) -> None:
        watch.handler(topic, payload, t)
        waiting.handler(topic, payload, t)
        if topic.endswith("/response"):
            answer = json.loads(payload)
            answered[answer["topic"], answer["payload"]] = t

    latencies: list[float] = []
    roundtrips: list[float] = []
    responses: list[float] = []
    with running(mosquitto, crate, daemon):
        start_all(mosquitto, crate)
        with Probe(mqtt_port, [*watch.expected, "bench/echo", "/+/response"], handler) as c:
            daemon.start()
            if not watch.wait(30):
                raise TimeoutError(f"no complete status within 30 s: {daemon.tail()}")
            time.sleep(0.5)  # let the start-up configuration writes settle
            opts.log(f"  {count} setv commands over {len(targets)} channels, paced {pace:g} s")
            for i in range(warmup + count):
                token = str(i).encode()
                waiting.expect("bench/echo", lambda p, token=token: p == token)
                t0 = time.perf_counter()
                c.publish("bench/echo", token)
                roundtrip = waiting.wait(5, "a broker round trip") - t0
                prefix, number, vmax = targets[i % len(targets)]
                value = setv_value(vmax, i // len(targets))
                waiting.expect(f"{prefix}/status", vreq_is(number, value))
                t0 = time.perf_counter()
                c.publish(f"{prefix}/cmd/setv/{number}", f"{value:g}")
                latency = waiting.wait(5, f"{prefix}/cmd/setv/{number} {value:g}") - t0
                answer = answered.get((f"{prefix}/cmd/setv/{number}", f"{value:g}"), math.nan)
                if i >= warmup:
                    latencies.append(latency * 1e3)
                    roundtrips.append(roundtrip * 1e3)
                    responses.append((answer - t0) * 1e3)
                time.sleep(pace)
        crate_trips = bare_ca_roundtrips(wd, lab, count // 2)  # the daemon idle, same crate
    return results(
        LATENCY_FIGURES,
        {
            "command_latency_p50_ms": percentile(latencies, 50),
            "command_latency_p99_ms": percentile(latencies, 99),
            "broker_roundtrip_p50_ms": percentile(roundtrips, 50),
            "broker_roundtrip_p99_ms": percentile(roundtrips, 99),
            "command_latency_max_ms": max(latencies),
            "command_response_p50_ms": percentile(responses, 50),
            "command_latency_p99_per_roundtrip": percentile(latencies, 99)
            / percentile(roundtrips, 99),
            "command_latency_p50_per_roundtrip": percentile(latencies, 50)
            / percentile(roundtrips, 50),
            "crate_roundtrip_p50_ms": percentile(crate_trips, 50),
            "crate_roundtrip_p99_ms": percentile(crate_trips, 99),
            "command_latency_floor_p50_per_roundtrip": 1
            + percentile(crate_trips, 50) / percentile(roundtrips, 50),
        },
    )


# -- scale ------------------------------------------------------------------------------------
class StatusWatch:
    """Records when each status topic first lists every channel connected, and counts traffic."""

    def __init__(self, expected: dict[str, int]) -> None:
        self.expected = expected
        self.complete: dict[str, float] = {}
        self.messages = 0
        self.bytes = 0
        self._lock = threading.Lock()
        self._all = threading.Event()

    def handler(self, topic: str, payload: bytes, t: float) -> None:
        with self._lock:
            self.messages += 1
            self.bytes += len(payload)
            if topic in self.complete or topic not in self.expected:
                return
        if status_complete(payload, self.expected[topic]):
            with self._lock:
                self.complete[topic] = t
                if len(self.complete) == len(self.expected):
                    self._all.set()

    def wait(self, timeout: float) -> bool:
        return self._all.wait(timeout)

    def traffic(self) -> tuple[int, int]:
        with self._lock:
            return self.messages, self.bytes


def _bare_ca_client(workdir: Path, module: str, args: list[str], timeout: float) -> dict:
    """Run `module` (a bare pyepics client of the bench) to its end; its last JSON line."""
    name = module.removeprefix("bench.")
    proc = python_process(
        f"bare CA client {name}",
        module,
        args,
        workdir / f"{name.replace('_', '-')}.log",
        env={"EPICS_CA_REPEATER_PORT": str(free_port())},
        cwd=ROOT,
    )
    with running(proc):
        proc.start()
        wait_until(lambda: not proc.alive, timeout, f"the bare CA client {name}")
    lines = [line for line in proc.output().splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"{module} failed: {proc.tail()}")
    return json.loads(lines[-1])


def bare_ca_roundtrips(workdir: Path, lab: Path, count: int) -> list[float]:
    """`bench.ca_roundtrip` against the crate: put -> monitor round trips in ms."""
    args = ["--config", str(lab), "--count", str(count)]
    report = _bare_ca_client(workdir, "bench.ca_roundtrip", args, 120)
    if "roundtrips_ms" not in report:
        raise RuntimeError(f"bench.ca_roundtrip failed: {report}")
    return report["roundtrips_ms"]


def bare_ca_connect(workdir: Path, lab: Path) -> dict[str, float]:
    """`bench.ca_connect` against the crate: the CA floor under the daemon's start-up."""
    return _bare_ca_client(workdir, "bench.ca_connect", ["--config", str(lab)], 90)


def _startup_phases(log: str, wall0: float) -> dict[str, float]:
    """Daemon start-up milestones, seconds after the process was spawned (from its log)."""
    markers = {
        "imports+config+channels": "connecting to mqtt",
        "CA channels created": " created",
        "first channel ready": "-> OFF",
    }
    phases = {}
    for key, marker in markers.items():
        times = log_times(log, marker)
        if times:
            phases[key] = times[0] - wall0
    ready = log_times(log, "-> OFF")
    if ready:
        phases["last channel ready"] = ready[-1] - wall0
    return phases


def _stop_phases(log: str, sigterm: float) -> dict[str, float]:
    """Daemon stop milestones, seconds after SIGTERM (`returned`: only under --profile)."""
    markers = {
        "'stopping' logged": "stopping",
        "main module returned": "bench.profiled: trackerdcs",
        "finalize_libca start": "finalize_libca start",
        "other atexit start": "atexit handlers start",
        "atexit done": "atexit handlers done",
    }
    phases = {}
    for key, marker in markers.items():
        times = [t for t in log_times(log, marker) if t >= sigterm - 1]
        if times:
            phases[key] = times[0] - sigterm
    return phases


@dataclass
class SteadyState:
    """Figures over the measurement window; CPU in % of one core."""

    cpu: float
    crate_cpu: float
    rss_mb: float
    msgs_per_s: float
    kb_per_s: float
    threads: dict[str, float]  # daemon CPU by thread kind


def _measure_window(
    daemon: psutil.Process, crate: psutil.Process, watch: StatusWatch, window: float
) -> SteadyState:
    """CPU of daemon and crate, peak daemon RSS and status traffic over `window` s."""
    cpu0, crate0, threads0 = cpu_seconds(daemon), cpu_seconds(crate), thread_cpu(daemon.pid)
    msgs0, bytes0 = watch.traffic()
    start = time.perf_counter()
    end = start + window
    rss = daemon.memory_info().rss
    while (now := time.perf_counter()) < end:
        time.sleep(min(1.0, end - now))  # sampling pace, not synchronisation
        rss = max(rss, daemon.memory_info().rss)
    elapsed = time.perf_counter() - start
    cpu1, crate1, threads1 = cpu_seconds(daemon), cpu_seconds(crate), thread_cpu(daemon.pid)
    msgs1, bytes1 = watch.traffic()
    return SteadyState(
        cpu=100 * (cpu1 - cpu0) / elapsed,
        crate_cpu=100 * (crate1 - crate0) / elapsed,
        rss_mb=rss / 2**20,
        msgs_per_s=(msgs1 - msgs0) / elapsed,
        kb_per_s=(bytes1 - bytes0) / elapsed / 1024,
        threads={k: 100 * (v - threads0.get(k, 0.0)) / elapsed for k, v in threads1.items()},
    )


@dataclass
class ScaleRun:
    """Everything the scale benchmark measured."""

    channels: int
    window: float
    floor: dict[str, float]  # the bare CA client's timings
    first: dict[str, float]  # status topic -> s from spawn to its first complete message
    phases: dict[str, float]  # start-up milestones from the daemon's log
    startup_cpu: dict[str, float]  # CPU s until complete, by daemon thread (+ the crate)
    steady: SteadyState
    stop_s: float
    killed: bool  # did not exit within STOP_TIMEOUT after SIGTERM
    stop_phases: dict[str, float]


def scale(opts: Options) -> list[Result]:
    """768 churning channels: time to a complete status, then steady-state CPU and RSS."""
    # quick (smoke test): a quarter of the crate, short windows
    boards, warmup, window = (4, 1.0, 4.0) if opts.quick else (16, 3.0, 20.0)
    profile_out = opts.workdir / "scale" / "daemon.prof" if opts.profile else None
    run = _measure_scale(opts.workdir / "scale", boards, warmup, window, profile_out)
    _log_scale(opts, run)
    if profile_out is not None:
        opts.log(profile_summary(profile_out))
    return results(
        SCALE_FIGURES,
        {
            "scale_first_status_s": max(run.first.values()),
            "scale_cpu_percent": run.steady.cpu,
            "scale_rss_mb": run.steady.rss_mb,
            "scale_crate_cpu_percent": run.steady.crate_cpu,
            "scale_status_msgs_per_s": run.steady.msgs_per_s,
            "scale_stop_s": run.stop_s,
        },
        {"scale_stop_s": f"killed after {STOP_TIMEOUT:g} s"} if run.killed else None,
    )


def _measure_scale(
    wd: Path, boards: int, warmup: float, window: float, profile_out: Path | None
) -> ScaleRun:
    wd.mkdir(parents=True, exist_ok=True)
    mosquitto, mqtt_port = broker(wd)
    ca_port = free_port()
    lab = scale_lab(wd / "scale.yml", mqtt_port, ca_port, boards=boards)
    cfg = load_config(lab)
    expected = {
        f"{prefix}/status": len(cfg.channels_of(cfg.crates[0].name, kind))
        for kind, prefix in cfg.crates[0].prefixes.items()
    }
    crate = crate_process(wd, lab, ca_port, "--churn")
    daemon = daemon_process(wd, lab, profile_out)
    watch = StatusWatch(expected)
    with running(mosquitto, crate, daemon):
        start_all(mosquitto, crate)
        floor = bare_ca_connect(wd, lab)
        with Probe(mqtt_port, list(expected), watch.handler):
            crate_ps = psutil.Process(crate.pid)
            crate_cpu0 = cpu_seconds(crate_ps)
            wall0, t0 = time.time(), time.perf_counter()
            daemon.start()
            if not watch.wait(120):
                raise TimeoutError(f"no complete status within 120 s: {daemon.tail()}")
            first = {topic: t - t0 for topic, t in watch.complete.items()}
            startup_cpu = thread_cpu(daemon.pid)
            startup_cpu["(sim crate, whole process)"] = cpu_seconds(crate_ps) - crate_cpu0
            time.sleep(warmup)  # past the start-up configuration writes
            steady = _measure_window(psutil.Process(daemon.pid), crate_ps, watch, window)
            if not daemon.alive:
                raise RuntimeError(f"the daemon died: {daemon.tail()}")
            stop_wall, stopping = time.time(), time.perf_counter()
            killed = daemon.stop(timeout=STOP_TIMEOUT) == -signal.SIGKILL
            stop_s = time.perf_counter() - stopping
    log = daemon.output()
    return ScaleRun(
        channels=sum(expected.values()),
        window=window,
        floor=floor,
        first=first,
        phases=_startup_phases(log, wall0),
        startup_cpu=startup_cpu,
        steady=steady,
        stop_s=stop_s,
        killed=killed,
        stop_phases={**_stop_phases(log, stop_wall), "exited": stop_s},
    )


def _log_scale(opts: Options, run: ScaleRun) -> None:
    """Where start-up time, CPU and stop time go, for the daemon's owner."""
    floor, steady = run.floor, run.steady
    opts.log(
        f"  {run.channels} channels; a bare pyepics client opens the same "
        f"{floor.get('channels')} CA channels in {floor.get('connect_s')} s (first values "
        f"{floor.get('first_values_s')} s): the CA floor under the start-up"
    )
    steps = {**run.phases, **{f"{topic} complete": t for topic, t in run.first.items()}}
    opts.log("  start-up (s after spawn): " + _listing(steps, "{:.2f}", ascending=True))
    opts.log("  start-up CPU by thread (s): " + _listing(run.startup_cpu, "{:.2f}"))
    opts.log(
        f"  steady state over {run.window:g} s: daemon {steady.cpu:.1f} % CPU, "
        f"status {steady.msgs_per_s:.1f} msg/s ({steady.kb_per_s:.0f} KiB/s)"
    )
    opts.log("  steady-state CPU by daemon thread (%): " + _listing(steady.threads, "{:.1f}"))
    opts.log("  stop (s after SIGTERM): " + _listing(run.stop_phases, "{:.2f}", ascending=True))


def _listing(values: dict[str, float], fmt: str, ascending: bool = False) -> str:
    """`name value, ...` sorted by value; CPU listings (descending) leave zeros out."""
    ordered = sorted(values.items(), key=lambda kv: kv[1], reverse=not ascending)
    return ", ".join(f"{k} {fmt.format(v)}" for k, v in ordered if ascending or round(v, 2))


# Waiting, not working: left out of the profile summary.
_IDLE = ("select.select", "'poll' of 'select.epoll'", "'acquire' of '_thread.lock'", "sleep")


def profile_summary(path: Path, top: int = 20) -> str:
    """The daemon's hottest functions from a cProfile dump: own time (waits left out), then
    cumulative time of trackerdcs' own functions."""
    raw = pstats.Stats(str(path)).stats  # type: ignore[attr-defined]
    rows = [
        (tt, ct, nc, f"{Path(file).name}:{line}({name})", file)
        for (file, line, name), (_cc, nc, tt, ct, _callers) in raw.items()
        if not any(idle in name for idle in _IDLE)
    ]
    busy = sum(r[0] for r in rows)
    out = [
        f"  cProfile of the daemon, every Python thread ({path}); busy {busy:.1f} s",
        "  (wall time: C calls that release the GIL, e.g. socket recv/send, include GIL waits)",
    ]
    out.append("  own time (s)  cumulative (s)  calls      function")
    for tt, ct, nc, where, _ in sorted(rows, reverse=True)[:top]:
        out.append(f"  {tt:12.2f}  {ct:14.2f}  {nc:<9d}  {where}")
    out.append("  trackerdcs functions by cumulative time:")
    ours = [r for r in rows if f"{os.sep}trackerdcs{os.sep}" in r[4]]
    for tt, ct, nc, where, _ in sorted(ours, key=lambda r: -r[1])[:top]:
        out.append(f"  {tt:12.2f}  {ct:14.2f}  {nc:<9d}  {where}")
    return "\n".join(out)
