"""IV scans end to end on the virtual lab, every process real: the simulators (with each module's
IV curve), the power, chiller and sensor daemons, the interlock, alarm/audit and dcs daemons,
Mosquitto, InfluxDB and the ingest bridge on the repo's telegraf.conf.

A scan to the end (files, points in InfluxDB, audit log, channel back as it was); stopped by
compliance, breakdown, an interlock and a stop command (channel safe, reason recorded); two
modules in parallel; bad parameters refused with nothing moved.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT, Broker
from tests.ingestlab import InfluxServer, bridge_process
from tests.test_safety_scenarios import HV, M, SafetyLab
from trackerdcs.client import Channel, CommandRefused, Lab
from trackerdcs.ivscan.results import read_results
from trackerdcs.stack.process import wait_until

BREAKDOWN_M3 = 300.0  # V: this lab's M3 breaks down here (the example's: 450 V)
IVSCAN = {"settle": 0.1, "readings": 3, "interval": 0.2, "heartbeat": 2, "max_steps": 200}


class IvLab(SafetyLab):
    """The safety lab with IV scans: noisy readings (so a step has a spread), a fine current
    deadband, M3 breaking down at 300 V, results in the test's folder; optionally InfluxDB and
    the ingest bridge."""

    def __init__(self, workdir: Path, broker: Broker, name: str, influx: bool = False) -> None:
        super().__init__(workdir, broker, name)
        self.results = workdir / f"{name}-ivscans"
        self.influx = InfluxServer(workdir) if influx else None
        data = yaml.safe_load(self.config.read_text())
        data["ivscan"] = {**IVSCAN, "results_dir": str(self.results)}
        # these tests fire interlocks on purpose (dewpoint); a loaded machine must not fire the
        # heartbeat rule by the way (tests/test_safety_scenarios.py tests it at 1.5 s)
        heartbeat = next(r for r in data["interlocks"]["rules"] if r["kind"] == "heartbeat")
        heartbeat["sources"] = {p: max(t, 10.0) for p, t in heartbeat["sources"].items()}
        data["virtual_lab"]["modules"][M[2]] = {"breakdown_voltage": BREAKDOWN_M3}
        data["power"]["defaults"]["hv"]["ideadband"] = 0.001
        if self.influx is not None:
            data["influx"]["port"] = self.influx.cfg.port
            data["influx"]["rpc_port"] = self.influx.cfg.rpc_port
        self.config.write_text(yaml.safe_dump(data, sort_keys=False))
        argv = self.processes[0].argv  # the virtual lab: measurement noise on
        argv[argv.index("--noise") + 1] = "0.005"
        self.bridge = (
            bridge_process(workdir, name, broker.port, self.influx.url) if self.influx else None
        )
        self.alice: Lab | None = None

    def start(self) -> IvLab:
        if self.influx is not None and self.bridge is not None:
            self.influx.start()
            self.bridge.start()
        super().start()
        self.wait("/dcs/ivscan/status", lambda s: True, 10, since=0)
        self.alice = Lab(self.config, name="alice", timeout=10).connect()
        return self

    def stop(self) -> list[int | None]:
        if self.alice is not None:
            self.alice.close()
        codes = super().stop()
        if self.bridge is not None and self.influx is not None:
            self.bridge.stop()
            self.influx.stop()
        return codes

    def scan(self, module: str, **params: Any) -> dict[str, Any]:
        """A scan of `module` by alice, to its end: the module's final scan status."""
        return self.start_scan(module, timeout=60, **params)

    def start_scan(self, module: str, **params: Any) -> dict[str, Any]:
        """alice's `iv_scan(module, **params)`. The scan service reads `/interlock/status`
        through its own subscription, which may deliver a rule's clearing a moment after the
        test's: while it refuses for an active interlock, the start is asked again (10 s)."""
        alice = self.alice
        assert alice is not None

        def attempt() -> dict[str, Any] | None:
            try:
                return alice.iv_scan(module, **params)
            except CommandRefused as exc:
                if "interlock active" not in exc.error:
                    raise
                return None

        return wait_until(attempt, 10, f"the IV scan service to accept a scan of {module}")

    def reset(self) -> None:
        """Every HV channel off at 0 V, at its set point of 0 V, limit 10 uA, no trip."""
        for hv in self.lab.channels("hv"):
            self.put(hv.name, "SimLeak", 0.0)
        assert self.command("/hv/cmd/switch/all", "off")["ok"]
        assert self.command("/hv/cmd/clear", "")["ok"]
        assert self.command("/hv/cmd/setv/all", 0)["ok"]
        assert self.command("/hv/cmd/seti/all", 10)["ok"]
        for module in self.lab.modules:
            off_at(self, module)


@pytest.fixture(scope="module")
def ivlab(workdir: Path, broker: Broker) -> Iterator[IvLab]:
    lab = IvLab(workdir, broker, "ivscan", influx=True).start()
    lab.rules(lambda r: not any(rule["active"] for rule in r.values()), since=0)
    yield lab
    assert lab.stop() == [0] * 7


@pytest.fixture
def lab(ivlab: IvLab) -> IvLab:
    ivlab.reset()
    return ivlab


def hv(lab: IvLab, module: str) -> dict[str, Any]:
    return next(c for c in lab.client.latest("/hv/status").json if c["module"] == module)


def off_at(lab: IvLab, module: str, vreq: float = 0.0, ilim: float = 10.0) -> Channel:
    """The module's HV once it is off at 0 V with its set point and limit restored (as alice's
    client sees it: the scan's own client saw it before it said the scan had ended)."""
    assert lab.alice is not None
    name = f"hv_{module.lower()}"

    def safe() -> Channel | None:
        c = lab.alice.peek(name)
        ok = c is not None and not c.on and c.state in ("OFF", "TRIPPED") and c.vmon == 0
        return c if ok and c.vreq == vreq and c.ilim == ilim else None  # type: ignore[union-attr]

    return lab.alice.wait_until(safe, 5, f"{name} off, {vreq:g} V, {ilim:g} uA")


def test_a_scan_to_the_end_writes_its_results_and_restores_the_channel(lab: IvLab) -> None:
    assert lab.command(HV[0].topic("setv", by="module"), 80)["ok"]
    assert lab.command(HV[0].topic("switch", by="module"), "on")["ok"]
    lab.wait("/hv/status", lambda chs: any(c["module"] == M[0] and c["state"] == "ON" and
                                           abs(c["vmon"] - 80) < 2 for c in chs))  # fmt: skip
    since = lab.client.mark()
    final = lab.scan(M[0], start=0, stop=200, step=50, readings=3, interval=0.6, end="previous",
                     compliance=20)  # fmt: skip
    assert final["state"] == "COMPLETED" and final["outcome"] == "completed", final
    assert final["step"] == final["steps"] == 5 and final["operator"] == "alice"
    assert f"{HV[0].name} back at 80 V (on), current limit 10 uA" in final["reason"]
    channel = hv(lab, M[0])
    assert channel["on"] == 1 and abs(channel["vmon"] - 80) < 2 and channel["ilim"] == 10

    # the CSV: metadata header, one row per step, growing as sqrt(V) below full depletion
    csv_path, png_path = (Path(f) for f in final["files"])
    assert csv_path.parent == lab.results / M[0] and csv_path.name == f"{final['scan']}.csv"
    meta, rows = read_results(csv_path)
    assert meta["module"] == M[0] and meta["channel"] == HV[0].name and meta["operator"] == "alice"
    assert meta["outcome"] == "completed" and meta["parameter.compliance"] == "20.0"
    assert meta["start_time"] < meta["end_time"] and float(meta["humidity_start"]) == 45.0
    assert [r["vset"] for r in rows] == [0, 50, 100, 150, 200]
    assert all(abs(r["vmon"] - r["vset"]) < 2 for r in rows)
    currents = [r["imon"] for r in rows]
    assert currents[0] == 0 and currents[1:] == sorted(currents[1:])
    assert currents[4] / currents[1] == pytest.approx(2.0, rel=0.05)  # sqrt(200 / 50)
    assert any(r["imon_std"] > 0 for r in rows)  # the readings' spread
    assert all(r["temperature"] is not None and r["dewpoint"] is not None for r in rows)
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # the points on MQTT are the rows; progress went out on the retained status
    points = [m.json for m in lab.client.messages[since:] if m.topic == "/dcs/ivscan/points"]
    assert [p["vset"] for p in points] == [0.0, 50.0, 100.0, 150.0, 200.0]
    assert {p["scan"] for p in points} == {final["scan"]}
    assert [p["imon"] for p in points] == currents
    running = [
        m.json["scans"][M[0]]
        for m in lab.client.messages[since:]
        if m.topic == "/dcs/ivscan/status" and m.json["scans"][M[0]]["state"] == "RUNNING"
    ]
    assert {s["step"] for s in running} >= {1, 2, 3, 4}  # fmt: skip

    # every step in the audit log, and the commands the scan sent, as ivscan's
    actions = lab.audit(module=M[0], source="ivscan", since="5m", kind="action")
    scan_actions = [r for r in actions if final["scan"] in r["payload"]]
    assert [r["event"] for r in scan_actions] == ["start"] + ["step"] * 5 + ["done"]
    sent = [r["topic"] for r in lab.audit(module=M[0], source="ivscan", since="5m",
                                          kind="command")]  # fmt: skip
    assert HV[0].topic("seti") in sent and HV[0].topic("setv") in sent

    # InfluxDB: the points in their own measurement, tagged with the scan id
    assert lab.influx is not None
    query = f'SELECT * FROM "ivscan" WHERE "scan" = \'{final["scan"]}\''
    wait_until(lambda: len(lab.influx.client.series(query)[0].values) == 5
               if lab.influx.client.series(query) else False, 10, "5 ivscan points")  # fmt: skip
    [series] = lab.influx.client.series(query)
    stored = series.rows()
    assert [r["vset"] for r in stored] == [0.0, 50.0, 100.0, 150.0, 200.0]
    assert {r["module"] for r in stored} == {M[0]} and {r["channel"] for r in stored} == {
        HV[0].name
    }
    assert [r["imon"] for r in stored] == pytest.approx(currents)

    def export(name: str) -> list[str]:
        done = subprocess.run(
            [sys.executable, "-m", "trackerdcs.cli", "export", "ivscan", name, "--from", "1h",
             "--config", str(lab.config)], capture_output=True, text=True, timeout=60, cwd=ROOT,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout.strip().splitlines()

    lines = export(final["scan"])  # one scan, by its id
    assert len(lines) == 6 and "vmon" in lines[0] and lines[0].startswith("time,measurement")
    assert all(f",ivscan,{final['scan']}" in line or final["scan"] in line for line in lines[1:])
    assert len(export(M[0])) >= 6  # every scan of the module in the range


def test_breakdown_stops_the_scan_and_ramps_the_channel_down(lab: IvLab) -> None:
    final = lab.scan(M[2], start=100, stop=500, step=20)
    assert final["outcome"] == "breakdown" and final["state"] == "STOPPED", final
    assert (
        "breakdown at" in final["reason"] and f"{HV[2].name} ramped down and off" in final["reason"]
    )
    last = final["vset"]
    assert BREAKDOWN_M3 - 60 <= last <= BREAKDOWN_M3 + 20  # before the current runs away
    off_at(lab, M[2])
    meta, rows = read_results(Path(final["files"][0]))
    assert meta["outcome"] == "breakdown" and rows[-1]["vset"] == last


def test_compliance_stops_the_scan(lab: IvLab) -> None:
    final = lab.scan(M[1], start=0, stop=400, step=50, compliance=1.0)
    assert final["outcome"] == "compliance" and final["state"] == "STOPPED", final
    assert "compliance 1 uA" in final["reason"] and final["vset"] < 400
    off_at(lab, M[1])  # and its own limit, 10 uA, back


def test_an_interlock_stops_the_scan(lab: IvLab) -> None:
    assert lab.alice is not None
    answer = lab.start_scan(M[3], wait=False, start=0, stop=390, step=5, settle=0.2)
    scan = answer["scans"][M[3]]
    lab.wait("/dcs/ivscan/status", lambda s: s["scans"][M[3]]["step"] >= 2)
    since = lab.client.mark()
    assert lab.backdoor("set room_humidity=97")["ok"]  # dew point above the modules
    try:
        status = lab.wait("/dcs/ivscan/status", lambda s: s["scans"][M[3]]["ended"], 20, since)
    finally:
        assert lab.backdoor("set room_humidity=45")["ok"]
    final = status["scans"][M[3]]
    assert final["scan"] == scan and final["outcome"] == "interlock", final
    assert "interlock dewpoint" in final["reason"]
    off_at(lab, M[3])
    lab.rules(lambda r: not r["dewpoint"]["active"], since=since)


def test_a_stop_command_stops_the_scan(lab: IvLab) -> None:
    assert lab.alice is not None
    lab.start_scan(M[0], wait=False, start=0, stop=400, step=5, settle=0.2)
    lab.wait("/dcs/ivscan/status", lambda s: s["scans"][M[0]]["step"] >= 2)
    answer = lab.alice.stop_iv_scan(M[0])
    assert answer["stopped"] == [M[0]]
    status = lab.wait("/dcs/ivscan/status", lambda s: s["scans"][M[0]]["ended"], 20)
    final = status["scans"][M[0]]
    assert final["outcome"] == "stopped" and final["reason"].startswith("stopped by alice")
    off_at(lab, M[0])
    with pytest.raises(CommandRefused, match=f"no IV scan running on {M[0]}"):
        lab.alice.stop_iv_scan(M[0])


def test_two_modules_scan_in_parallel(lab: IvLab) -> None:
    assert lab.alice is not None
    since = lab.client.mark()
    results: dict[str, dict] = {}

    def scan(module: str) -> None:
        results[module] = lab.scan(module, start=0, stop=150, step=25)

    threads = [threading.Thread(target=scan, args=(m,)) for m in M[:2]]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert {m: r["outcome"] for m, r in results.items()} == {M[0]: "completed",
                                                             M[1]: "completed"}  # fmt: skip
    both = [m.json["scans"] for m in lab.client.messages[since:] if m.topic ==
            "/dcs/ivscan/status"]  # fmt: skip
    assert any(s[M[0]]["state"] == s[M[1]]["state"] == "RUNNING" for s in both)
    points = [m.json for m in lab.client.messages[since:] if m.topic == "/dcs/ivscan/points"]
    modules = [p["module"] for p in points]
    assert modules.count(M[0]) == modules.count(M[1]) == 7
    first_m2 = modules.index(M[1])
    assert M[0] in modules[first_m2:]  # interleaved: side by side, not one after the other
    # a different IV per module: M2's sensor depletes at 150 V with 1.2 uA
    m1, m2 = (read_results(Path(results[m]["files"][0]))[1] for m in M[:2])
    assert m2[-1]["imon"] < m1[-1]["imon"]
    off_at(lab, M[0])
    off_at(lab, M[1])


@pytest.mark.parametrize(
    ("target", "params", "error"),
    [
        (M[0], {"stop": 100, "step": 10, "speed": 3}, "speed: unknown parameter"),
        (M[0], {"stop": 100}, "step: Field required"),
        (M[0], {"stop": 100, "step": 0}, "step: Input should be greater than 0"),
        (M[0], {"stop": -5, "step": 10}, "stop: Input should be greater than or equal to 0"),
        (M[3], {"stop": 450, "step": 10}, f"stop: 450 V exceeds the maximum 400 V of {HV[3].name}"),
        (M[0], {"stop": 100, "step": 10, "compliance": 500},
         f"compliance: 500 uA exceeds the maximum 100 uA of {HV[0].name} (imax)"),
        (M[0], {"stop": 600, "step": 0.5}, "1201 steps exceed the 200 a scan may have"),
        (M[0], {"stop": 100, "step": 10, "end": "stay"}, "end: Input should be 'ramp_down'"),
        (M[0], {"stop": 100, "step": 10, "channel": HV[1].name},
         f"'{HV[1].name}' is no HV channel of {M[0]}"),
        (M[0], {"stop": 100, "step": 10, "readings": 0}, "readings: Input should be greater"),
        ("M9", {"stop": 100, "step": 10}, f"unknown module 'M9' (known: {', '.join(M)}, or all)"),
        ("all", {"stop": 100, "step": 10, "channel": HV[0].name},
         "channel: only for a scan of one"),
        (M[0], "go", "an IV scan takes a JSON object of parameters"),
    ],
)  # fmt: skip
def test_bad_parameters_are_refused_and_nothing_moves(lab: IvLab, target, params, error) -> None:
    since = lab.client.mark()
    answer = lab.client.command(f"/dcs/cmd/ivscan/{target}", params, "/dcs/response")
    assert answer["ok"] is False and error in answer["error"], answer
    sent = [m.topic for m in lab.client.messages[since:] if m.topic.startswith("/hv/cmd/")]
    assert sent == []


def test_a_busy_or_interlocked_module_is_refused(lab: IvLab) -> None:
    assert lab.alice is not None
    scan = lab.start_scan(M[1], wait=False, start=0, stop=300, step=5, settle=0.2)["scans"]
    lab.wait("/dcs/ivscan/status", lambda s: s["scans"][M[1]]["scan"] == scan[M[1]]
             and s["scans"][M[1]]["step"] >= 1, since=0)  # fmt: skip
    with pytest.raises(CommandRefused, match=f"{M[1]} is already scanning"):
        lab.alice.iv_scan(M[1], wait=False, stop=10, step=5)
    answer = lab.module(M[1], "on")  # the sequencer refuses to switch a scanning module on
    assert not answer["ok"] and f"{M[1]} scanning (IV scan)" in answer["error"]
    assert lab.module(M[1], "off")["ok"]  # off stops the scan, then switches it off
    status = lab.wait("/dcs/ivscan/status", lambda s: s["scans"][M[1]]["scan"] == scan[M[1]]
                      and s["scans"][M[1]]["ended"], 20, since=0)  # fmt: skip
    assert status["scans"][M[1]]["reason"].startswith(f"module {M[1]} switched off")
    off_at(lab, M[1])
    since = lab.client.mark()
    lab.client.publish("/interlock/status", {"rules": [
        {"name": "chiller_running", "active": True, "reason": "chiller STOPPED",
         "modules": [M[2]]}]}, retain=True)  # fmt: skip
    try:
        lab.alice.wait_until(lambda: lab.alice.interlocks(M[2]) or None, 5)
        try:
            answer = lab.alice.iv_scan(M[2], wait=False, stop=10, step=5)
        except CommandRefused as refused:
            assert f"{M[2]}: interlock active: chiller_running (chiller STOPPED)" in refused.error
            sent = [m.topic for m in lab.client.messages[since:] if "/cmd/" in m.topic]
            assert not [t for t in sent if t.startswith("/hv/cmd/")]  # nothing moved
        else:  # on a loaded machine the daemon's client may see the rule a moment after alice's
            final = lab.alice.wait_iv_scans(answer["scans"], timeout=10)[M[2]]
            assert final["outcome"] == "interlock" and final["step"] == 0, final
            assert "chiller_running" in final["reason"]
            assert lab.crate(HV[2].name, "Pw") == 0  # refused by the power daemon: never on
    finally:
        lab.client.publish("/interlock/status", b"", retain=True)
        assert lab.command("/interlock/cmd/refresh", "")["ok"]
    off_at(lab, M[2])


def test_the_command_line_shows_progress_and_the_outcome(lab: IvLab) -> None:
    def iv_scan(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "trackerdcs.cli", "iv-scan", *args, "--config", str(lab.config),
             "--name", "carol"], capture_output=True, text=True, timeout=60, cwd=ROOT,
        )  # fmt: skip

    done = iv_scan(M[0], "--stop", "100", "--step", "50", "--settle", "0", "--readings", "1")
    assert done.returncode == 0, done.stderr
    assert (
        f"{M[0]}: IV scan {M[0]}-" in done.stderr
        and f"{M[0]} [####################] 3/3" in done.stderr
    )
    assert f"{M[0]}: completed: completed 3 steps" in done.stdout
    [csv_line] = [line for line in done.stdout.splitlines() if line.endswith(".csv")]
    meta, rows = read_results(Path(csv_line.strip()))
    assert meta["operator"] == "carol" and len(rows) == 3
    ended = iv_scan(M[2], "--start", "200", "--stop", "500", "--step", "25", "--settle", "0")
    assert ended.returncode == 3 and f"{M[2]}: breakdown: breakdown at" in ended.stdout
    refused = iv_scan(M[3], "--stop", "450", "--step", "10")
    assert refused.returncode == 1
    assert f"stop: 450 V exceeds the maximum 400 V of {HV[3].name}" in refused.stderr
    assert iv_scan(M[3], "--stop", "450").returncode == 2
    off_at(lab, M[2])
