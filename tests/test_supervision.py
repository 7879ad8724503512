"""Supervision end to end: the interlock service's heartbeat and the power daemons' fail-safe on it.

In-process: the heartbeat's parser (total), the watch's deadlines on a fake loop, the beacon, the
configuration checks. Real processes: the power daemon, its simulated crate and the interlock
service on a real Mosquitto (the interlock dies: HV ramps down; it comes back: HV may go on
again), and on two Mosquittos joined by the production bridge configuration
(`mosquitto/bridge.sh`): the central broker goes away, the daemon's own broker stays, and the
daemon ramps its HV down on the missing heartbeat alone; when the bridge is back, the statuses
queued meanwhile reach the central broker.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.conftest import (
    EXAMPLE_LAB,
    FAST_DEFAULTS,
    ROOT,
    Broker,
    PowerLab,
    python_process,
    serving,
    write_lab,
)
from tests.labdata import EXAMPLE
from tests.simca import wait_for
from tests.test_power_safety import switch_on
from trackerdcs.config import ConfigError, parse_config
from trackerdcs.guard import finite_number
from trackerdcs.safety.supervision import (
    SupervisionBeacon,
    SupervisionWatch,
    heartbeat_payload,
    parse_heartbeat,
)
from trackerdcs.stack.process import free_port

HV, LV = EXAMPLE.channels("hv"), EXAMPLE.channels("lv")  # the lab below starts from it

T0 = 1_700_000_000.0  # the fake wall clock's start


# -- in process: the heartbeat ---------------------------------------------------------------------
# a shared two-core machine: generation may be slow, never the parser
LOADED = settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)


@LOADED
@given(st.binary(max_size=200))
@example(b'{"time": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
@example(b'{"time": 1' + b"0" * 400 + b"}")
@example(b'{"time": 1e400}')
@example(b'{"time": NaN}')
def test_parse_heartbeat_is_total(payload: bytes) -> None:
    try:
        sent = parse_heartbeat(payload)
    except ValueError as exc:
        assert str(exc)
    else:
        assert math.isfinite(sent)


@LOADED
@given(
    st.dictionaries(
        st.sampled_from(["time", "source", "seq", "x"]),
        st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=5)),
    )
)
def test_parse_heartbeat_takes_only_a_finite_number_time(obj: dict) -> None:
    payload = json.dumps(obj).encode()
    sent = obj.get("time")
    numbers = [v for v in obj.values() if isinstance(v, int | float) and not isinstance(v, bool)]
    if not all(finite_number(v) for v in numbers):
        with pytest.raises(ValueError, match="heartbeat: "):  # not strict JSON: none of it read
            parse_heartbeat(payload)
    elif isinstance(sent, int | float) and not isinstance(sent, bool):
        assert parse_heartbeat(payload) == float(sent)
    else:
        with pytest.raises(ValueError, match="time"):
            parse_heartbeat(payload)


def test_the_heartbeat_payload_round_trips() -> None:
    payload = heartbeat_payload("interlock", 1, 7, T0 + 0.12345)
    assert json.loads(payload) == {"time": T0 + 0.123, "source": "interlock", "interval": 1.0,
                                   "seq": 7}  # fmt: skip
    assert parse_heartbeat(payload.encode()) == T0 + 0.123


# -- in process: the watch and the beacon on a fake loop ------------------------------------------
class FakeHandle:
    def __init__(self, when: float, fn: Callable, args: tuple) -> None:
        self.when, self.fn, self.args, self.cancelled = when, fn, args, False

    def cancel(self) -> None:
        self.cancelled = True


class FakeLoop:
    """`time`, `call_at`, `call_later`, and `advance` to run what falls due, in order."""

    def __init__(self) -> None:
        self.now = 0.0
        self.timers: list[FakeHandle] = []

    def time(self) -> float:
        return self.now

    def wall(self) -> float:
        return T0 + self.now

    def call_at(self, when: float, fn: Callable, *args: Any) -> FakeHandle:
        handle = FakeHandle(when, fn, args)
        self.timers.append(handle)
        return handle

    def call_later(self, delay: float, fn: Callable, *args: Any) -> FakeHandle:
        return self.call_at(self.now + delay, fn, *args)

    def advance(self, seconds: float) -> None:
        end = self.now + seconds
        while True:
            due = [h for h in self.timers if not h.cancelled and h.when <= end]
            if not due:
                break
            handle = min(due, key=lambda h: h.when)
            self.timers.remove(handle)
            self.now = max(self.now, handle.when)
            handle.fn(*handle.args)
        self.now = end


class Watched:
    """A SupervisionWatch on a fake loop, recording what it reports."""

    def __init__(self, supervisors=("/interlock",), timeout: float = 10.0, skew: float = 2.0):
        self.loop = FakeLoop()
        self.events: list[str] = []
        self.watch = SupervisionWatch(
            list(supervisors), timeout, skew, self.loop,  # type: ignore[arg-type]
            on_lost=lambda why: self.events.append(f"lost: {why}"),
            on_back=lambda: self.events.append("back"),
            clock=self.loop.wall,
        )  # fmt: skip
        self.watch.start()

    def beat(self, prefix: str = "/interlock", age: float = 0.0, payload: bytes | None = None):
        sent = self.loop.wall() - age
        data = payload if payload is not None else heartbeat_payload("x", 1, 1, sent).encode()
        return self.watch.on_message(f"{prefix}/supervision", data)


def test_a_daemon_that_never_hears_its_supervisor_fires_at_the_timeout() -> None:
    w = Watched()
    w.loop.advance(9.9)
    assert w.events == []
    w.loop.advance(0.2)
    assert w.events == ["lost: no supervision heartbeat from /interlock for 10 s (never seen)"]
    w.loop.advance(100)
    assert len(w.events) == 1, "reported once"


def test_fresh_heartbeats_keep_it_supervised_and_their_age_counts() -> None:
    w = Watched()
    for _ in range(30):
        w.loop.advance(1.0)
        assert w.beat()
    assert w.events == []
    w.loop.advance(5.0)
    w.beat(age=4.0)  # delayed on its way: supervises until 10 s after it was sent
    w.beat(age=7.0)  # an older one overtaken by it shortens nothing
    w.loop.advance(5.9)
    assert w.events == []
    w.loop.advance(0.2)
    assert w.events == ["lost: no supervision heartbeat from /interlock for 10 s (last 10.0 s ago)"]


def test_old_future_and_malformed_heartbeats_do_not_count(caplog) -> None:
    w = Watched()
    w.loop.advance(5.0)
    assert w.beat(age=10.5)  # queued longer than the timeout (a bridge coming back)
    assert w.beat(age=-2.5)  # beyond the clock-skew tolerance
    for bad in (b"{", b"[]", b'{"time": "soon"}', b'{"time": NaN}', b""):
        assert w.beat(payload=bad)
    assert not w.watch.on_message("/other/supervision", b"{}")  # not a supervision topic
    w.loop.advance(5.1)
    assert w.events == ["lost: no supervision heartbeat from /interlock for 10 s (never seen)"]
    assert "sent 10.5 s ago" in caplog.text
    assert caplog.text.count("ignoring") == 1, "once per spell: a flood does not flood the log"
    w.beat()
    w.beat(payload=b"{")
    assert "malformed heartbeat" in caplog.text


def test_back_only_when_every_supervisor_is_fresh_again() -> None:
    w = Watched(supervisors=("/interlock", "/alarms"))
    w.loop.advance(3.0)
    w.beat("/interlock")
    w.loop.advance(7.5)  # /alarms never seen: lost at 10 s
    assert [e[:45] for e in w.events] == ["lost: no supervision heartbeat from /alarms f"]
    w.loop.advance(3.0)  # /interlock last seen at 3 s: lost at 13 s
    assert len(w.events) == 2 and "/interlock" in w.events[1]
    w.beat("/interlock")
    assert "back" not in w.events
    w.beat("/alarms")
    assert w.events[-1] == "back"
    w.loop.advance(9.9)
    assert w.events[-1] == "back"


def test_the_beacon_publishes_from_its_loop_at_its_interval() -> None:
    loop = FakeLoop()

    class Link:
        sent: list[tuple[str, dict, int]] = []

        def publish(self, topic: str, payload: str, qos: int = 0, retain: bool = False):
            assert not retain
            self.sent.append((topic, json.loads(payload), qos))

    link = Link()
    beacon = SupervisionBeacon(link, loop, "/interlock", "interlock", 0.5,  # type: ignore[arg-type]
                               clock=loop.wall)  # fmt: skip
    beacon.start()
    loop.advance(2.0)
    assert [(t, p["seq"], p["time"], q) for t, p, q in link.sent] == [
        ("/interlock/supervision", n + 1, round(T0 + n * 0.5, 3), 0) for n in range(5)
    ]
    beacon.stop()
    loop.advance(5.0)
    assert len(link.sent) == 5


# -- in process: configuration ---------------------------------------------------------------------
def example() -> dict:
    return yaml.safe_load(EXAMPLE_LAB.read_text())


def test_supervisors_must_publish_a_heartbeat_and_outlast_three_of_them() -> None:
    lab = parse_config(example())
    assert lab.power.failsafe.supervisors == ["/interlock"]
    assert not any("supervisors" in w for w in lab.warnings)
    data = example()
    data["power"]["failsafe"]["supervisors"] = ["/alarms"]
    with pytest.raises(ConfigError, match=r"supervisors\.0: '/alarms' publishes no supervision"):
        parse_config(data)
    data = example()
    data["power"]["failsafe"]["supervision_timeout"] = 2.5
    with pytest.raises(ConfigError, match="shorter than 3 heartbeats"):
        parse_config(data)
    data["interlocks"]["supervision_interval"] = 0.5
    assert parse_config(data).power.failsafe.supervision_timeout == 2.5
    data["power"]["failsafe"]["supervisors"] = ["interlock"]
    with pytest.raises(ConfigError, match=r"supervisors\.0"):
        parse_config(data)


def test_a_lab_with_rules_and_no_supervisor_says_so() -> None:
    data = example()
    data["power"]["failsafe"]["supervisors"] = []
    warnings = parse_config(data).warnings
    assert any("keeps its HV on (add /interlock)" in w for w in warnings), warnings


# -- real processes: the interlock service supervises the power daemon -----------------------------
TIMEOUT = 1.0  # s: the power daemon's supervision_timeout in these tests
INTERLOCK = {"rules": [], "startup_grace": 0.1, "supervision_interval": 0.2}
SUPERVISED = {"broker_timeout": 30, "supervisors": ["/interlock"], "supervision_timeout": TIMEOUT}


def interlock_daemon(config: Path, log: Path):
    return python_process("interlock", "trackerdcs.safety.interlock_daemon",
                          ["--config", str(config)], log,
                          ready=serving("serving interlocks"))  # fmt: skip


def test_the_power_daemon_ramps_hv_down_when_the_interlock_service_dies(workdir) -> None:
    broker = Broker(workdir).start()
    lab = PowerLab(workdir, broker, "supervised",
                   **{"power.failsafe": SUPERVISED, "interlocks": INTERLOCK})  # fmt: skip
    interlock = interlock_daemon(lab.config, workdir / "supervised-interlock.log").start()
    try:
        lab.start()
        lab.client.wait_for("/interlock/supervision", timeout=5)
        switch_on(lab, "/lv", LV[0].name, 10.5)
        switch_on(lab, "/hv", HV[0].name, 60)
        switch_on(lab, "/hv", HV[1].name, 60)
        since = lab.client.mark()
        interlock.stop()  # the service is gone; the broker is not
        state = lab.client.wait_for("/hv/state", lambda m: m.json["failsafe"], 5, since).json
        assert "no supervision heartbeat from /interlock for 1 s" in state["failsafe"]
        lab.wait_status("/hv", lambda chs: all(c["state"] == "OFF" for c in chs), 5, since)
        assert lab.get(lab.chpv(LV[0].name, "Pw")) == 1  # LV is left alone
        assert "lost the broker" not in lab.daemon.output()  # its broker never went away
        writes = lab.writes()
        answer = lab.command(HV[0].topic("switch"), "on")
        assert not answer["ok"] and "fail-safe holds it off" in answer["error"], answer
        assert "no supervision heartbeat" in answer["error"] and lab.writes() == writes
        lab.put(lab.chpv(HV[1].name, "Pw"), 1)  # the front panel, while nobody supervises
        wait_for(
            lambda: f"{HV[1].name} is on without supervision" in lab.daemon.output(), timeout=5
        )
        wait_for(lambda: lab.get(lab.chpv(HV[1].name, "Pw")) == 0, timeout=5)

        interlock.start()  # supervised again: nothing goes on by itself, switching on may
        wait_for(lambda: "supervised again" in lab.daemon.output(), timeout=5)
        assert lab.get(lab.chpv(HV[0].name, "Pw")) == 0
        switch_on(lab, "/hv", HV[0].name, 60)
    finally:
        interlock.stop()
        lab.stop()
        broker.stop()


# -- real processes: a DAQ host's broker bridged to the central one -------------------------------
def bridge_conf(workdir: Path, central: Broker, name: str, prefixes: str) -> str:
    """mosquitto/bridge.sh's bridge.conf for a broker bridged to `central` (plain TCP here)."""
    run = workdir / f"bridge-{name}"
    run.mkdir(exist_ok=True)
    env = {
        **os.environ,
        "MOSQUITTO_RUN_DIR": str(run),
        "TRACKERDCS_BRIDGE_ADDRESS": f"127.0.0.1:{central.port}",
        "TRACKERDCS_BRIDGE_NAME": name,
        "TRACKERDCS_BRIDGE_PREFIXES": prefixes,
        "TRACKERDCS_BRIDGE_TLS": "false",
        "TRACKERDCS_BRIDGE_KEEPALIVE": "2",
        "MQTT_PASSWORD_BRIDGE": "unused-without-a-password-file",  # secret-scan: allow (test)
    }
    done = subprocess.run(["sh", str(ROOT / "mosquitto" / "bridge.sh")], env=env,
                          capture_output=True, text=True, timeout=10)  # fmt: skip
    assert done.returncode == 0, done.stderr
    conf = (run / "conf.d" / "bridge.conf").read_text()
    # the test's central broker is anonymous: no login
    return "".join(line for line in conf.splitlines(True)
                   if not line.startswith(("remote_username", "remote_password")))  # fmt: skip


def test_a_daq_host_cut_from_the_central_broker_ramps_hv_down_and_its_data_follows(workdir):
    central = Broker(workdir, persistent=True).start()
    daq = Broker(workdir, extra="max_queued_messages 100000\n" + bridge_conf(
        workdir, central, "daq1", "/hv /lv")).start()  # fmt: skip
    lab = PowerLab(workdir, daq, "bridged",
                   **{"power.failsafe": SUPERVISED, "interlocks": INTERLOCK})  # fmt: skip
    # the interlock service on the central host, reading the same lab YAML there
    data = yaml.safe_load(lab.config.read_text())
    data["mqtt"]["port"] = central.port
    central_lab = workdir / "bridged-central.yml"
    central_lab.write_text(yaml.safe_dump(data))
    interlock = interlock_daemon(central_lab, workdir / "bridged-interlock.log").start()
    watcher = central.client(topics=("/hv/#", "/lv/#"), session_expiry=600)
    try:
        lab.start()
        # commands from the central broker reach the crate, answers and statuses come back
        assert watcher.command(HV[0].topic("setv"), 60, "/hv/response")["ok"]
        since = watcher.mark()
        assert watcher.command(HV[0].topic("switch"), "on", "/hv/response")["ok"]
        watcher.wait_for("/hv/status", lambda m: any(
            c["name"] == HV[0].name and c["state"] == "ON" for c in m.json), 10, since)  # fmt: skip
        # across the bridge, a retained command stays refused and an MQTT 5 caller gets its
        # answer on its response topic, with its correlation data
        since = watcher.mark()
        watcher.publish(HV[1].topic("setv"), "70", retain=True)
        refusal = watcher.wait_for("/hv/response", lambda m: m.json["payload"] == "70", 10, since)
        assert "retain flag" in refusal.json["error"]
        watcher.publish(HV[1].topic("setv"), b"", retain=True)
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic, props.CorrelationData = "/hv/reply/test", b"corr-1"
        watcher.publish("/hv/cmd/refresh", "", properties=props)
        reply = watcher.wait_for("/hv/reply/test", timeout=10, since=since)
        assert reply.json["ok"] and reply.properties.CorrelationData == b"corr-1"
        local = daq.client(topics=("/hv/status", "/lv/status", "/hv/state"))

        central.stop()  # the network cut: the DAQ host's broker and daemons go on
        cut = local.mark()
        state = local.wait_for("/hv/state", lambda m: m.json["failsafe"], 5, cut).json
        assert "no supervision heartbeat from /interlock" in state["failsafe"]
        lab.wait_channel("/hv", HV[0].name, lambda c: c["state"] == "OFF", 5, cut)
        assert "lost the broker" not in lab.daemon.output()
        queued = [m.json for m in local.messages[cut:] if m.topic.endswith("/status")]
        assert queued

        central.start()  # the cut heals: supervised again, the queued statuses reach central
        wait_for(lambda: "supervised again" in lab.daemon.output(), timeout=15)
        times = {(c["name"], c["time"]) for status in queued for c in status}
        wait_for(lambda: times <= {(c["name"], c["time"]) for m in watcher.messages
                                   if m.topic.endswith("/status") for c in m.json},
                 timeout=15)  # fmt: skip
        local.close()
    finally:
        watcher.close()
        interlock.stop()
        lab.stop()
        daq.stop()
        central.stop()


def test_write_lab_leaves_supervision_off_unless_asked(workdir) -> None:
    path = write_lab(workdir / "plain.yml", mqtt_port=free_port(), ca_port=free_port(),
                     **{"power.defaults": FAST_DEFAULTS})  # fmt: skip
    assert yaml.safe_load(path.read_text())["power"]["failsafe"]["supervisors"] == []
