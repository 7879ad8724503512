"""Interlock rules: the evaluators on a world built from messages, the config checks, and the
real `trackerdcs-interlock` on a real broker, fed by the test acting as the other daemons."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import (
    EXAMPLE_LAB,
    ROOT,
    Broker,
    python_process,
    serving,
    write_lab,
)
from tests.labdata import EXAMPLE
from tests.simca import wait_for
from trackerdcs.config import ConfigError, LabConfig, parse_config
from trackerdcs.safety.config import check_safety, rule_chiller, rule_modules
from trackerdcs.safety.rules import RULE_KINDS, RuleState
from trackerdcs.safety.world import World
from trackerdcs.stack.process import free_port

MODULES = tuple(EXAMPLE.modules)  # every lab here is the example's (write_lab, lab_with)


def example() -> dict[str, Any]:
    return yaml.safe_load(EXAMPLE_LAB.read_text())


def lab_with(rules: list[dict], **extra: Any) -> LabConfig:
    data = example()
    data["interlocks"] = {"rules": rules, **extra}
    cfg = parse_config(data)
    check_safety(cfg)
    return cfg


def channel(name: str, module: str, on: int = 0, state: str = "OFF", vmon: float = 0.0,
            vreq: float = 100.0) -> dict:  # fmt: skip
    return {"number": EXAMPLE.named(name).number, "name": name, "module": module, "on": on,
            "vreq": vreq, "vmon": vmon, "imon": 0.0, "ilim": 10.0, "status": 1 if on else 0,
            "flags": ["ON"] if on else [], "state": state, "interlocks": []}  # fmt: skip


def hv_status(on: tuple[str, ...] = ()) -> list[dict]:
    return [
        channel(c.name, str(c.module), *((1, "ON", 100.0) if c.module in on else ()))
        for c in EXAMPLE.channels("hv")
    ]


def sensor(name: str, temperature: float | None, *, module: str = "", humidity=None,
           dewpoint=None, stale: bool = False, age: float = 0.1) -> dict:  # fmt: skip
    return {"name": name, "kind": "module" if module else "room", "module": module,
            "temperature": temperature, "humidity": humidity, "dewpoint": dewpoint,
            "max_temperature": 30.0 if module else None, "stale": stale, "age": age,
            "error": "no good reading within 1 s" if stale else None}  # fmt: skip


def chiller(state: str, setpoint: float = 15.0, code: int | None = None,
            running: int | None = None) -> dict:  # fmt: skip
    """A `/julabo/status`; `code` (and `running`) for the ERROR and MANUAL states."""
    from trackerdcs.julabo.protocol import JulaboStatus

    if code is None:
        code = {"RUNNING": 3, "STOPPED": 2, "MANUAL": 0}.get(state)
    status = JulaboStatus.from_code(code) if code is not None else None
    if running is None:
        running = int(state == "RUNNING" or code in (1, 3))
    connected = state != "DISCONNECTED"
    return {"state": state, "model": "full", "status_code": code,
            "status_text": status.text if status else None,
            "bath_temp": 15.0 if connected else None, "external_temp": None,
            "power": -20.0 if connected else None, "setpoint": setpoint if connected else None,
            "active_setpoint": 1 if connected else None, "high_limit": None, "low_limit": None,
            "running": running if connected else None,
            "error": ("no reply" if not connected else str(status) if code and code < 0
                      else None)}  # fmt: skip


def evaluate(cfg: LabConfig, world: World, state: RuleState, now: float) -> dict[str, str]:
    return RULE_KINDS[state.rule.kind].evaluate(state.rule, world, state, now)


def new_state(cfg: LabConfig, index: int = 0) -> RuleState:
    rule = cfg.interlocks.rules[index]
    chiller = rule_chiller(cfg, rule)
    return RuleState(rule, frozenset(rule_modules(cfg, rule)), started=0.0, since=0.0,
                     chiller=chiller.prefix if chiller else None,
                     armed=rule.kind != "chiller_running")  # fmt: skip


def feed(world: World, topic: str, payload: Any, now: float) -> None:
    data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
    world.update(topic, data, now)


# -- the evaluators, on a world built from messages ---------------------------------------------


def test_chiller_rule_fires_only_once_the_chiller_has_run():
    cfg = lab_with([{"name": "chiller", "kind": "chiller_running"}])
    world, state = World(cfg), new_state(cfg)
    assert evaluate(cfg, world, state, 1.0) == {}  # nothing known yet
    feed(world, "/julabo/status", chiller("STOPPED"), 1.0)
    assert evaluate(cfg, world, state, 1.0) == {}  # never ran: the lab is warm on purpose
    feed(world, "/julabo/status", chiller("RUNNING"), 2.0)
    assert evaluate(cfg, world, state, 2.0) == {} and state.armed
    feed(world, "/julabo/status", chiller("STOPPED"), 3.0)
    verdict = evaluate(cfg, world, state, 3.0)
    assert set(verdict) == set(MODULES)
    assert verdict["M1"] == "chiller STOPPED (REMOTE STOP)"


@pytest.mark.parametrize(
    ("status", "cooling"),
    [
        (chiller("RUNNING"), True),
        (chiller("MANUAL", code=1), True),  # 01 MANUAL START: still cooling
        (chiller("ERROR", code=-3, running=1), True),  # a warning: the unit goes on
        (chiller("ERROR", code=-20, running=1), True),  # check cooling water: a warning
        (chiller("STOPPED"), False),
        (chiller("MANUAL", code=0), False),  # 00 MANUAL STOP
        (chiller("ERROR", code=-1, running=0), False),  # low level alarm: the unit stops
        (chiller("ERROR", code=-14, running=1), False),  # an alarm, whatever `running` says
        (chiller("ERROR", code=-99, running=1), False),  # unknown codes count as alarms
        (chiller("ERROR", code=-3, running=0), False),  # a warning on a stopped unit
    ],
)
def test_what_counts_as_a_cooling_chiller(status: dict, cooling: bool) -> None:
    cfg = lab_with([{"name": "chiller", "kind": "chiller_running"}])
    world, state = World(cfg), new_state(cfg)
    feed(world, "/julabo/status", chiller("RUNNING"), 1.0)
    assert evaluate(cfg, world, state, 1.0) == {} and state.armed
    feed(world, "/julabo/status", status, 2.0)
    verdict = evaluate(cfg, world, state, 2.0)
    assert (verdict == {}) is cooling, verdict
    fresh = new_state(cfg)  # and it arms the rule just as a remote start does
    evaluate(cfg, world, fresh, 2.0)
    assert fresh.armed is cooling


def test_a_disconnected_chiller_counts_as_stopped_after_its_status_timeout():
    cfg = lab_with([{"name": "chiller", "kind": "chiller_running", "status_timeout": 30}])
    world, state = World(cfg), new_state(cfg)
    deadline = RULE_KINDS["chiller_running"].deadline
    feed(world, "/julabo/status", chiller("RUNNING"), 10.0)
    assert evaluate(cfg, world, state, 10.0) == {}
    assert deadline(state.rule, world, state, 10.0) is None
    feed(world, "/julabo/status", chiller("DISCONNECTED"), 10.8)  # the line lost
    assert evaluate(cfg, world, state, 10.8) == {}
    assert deadline(state.rule, world, state, 10.8) == 40.8  # 30 s after the status went bad
    feed(world, "/julabo/status", chiller("DISCONNECTED"), 20.8)  # its heartbeat: no change
    assert evaluate(cfg, world, state, 40.7) == {}
    verdict = evaluate(cfg, world, state, 40.8)
    assert set(verdict) == set(MODULES)
    assert verdict["M1"] == (
        "chiller DISCONNECTED: no valid status for 30 s (status_timeout 30 s); no reply"
    )
    feed(world, "/julabo/status", chiller("RUNNING"), 41.0)
    assert evaluate(cfg, world, state, 41.0) == {}
    assert deadline(state.rule, world, state, 41.0) is None
    # an active rule stays active while the chiller says nothing valid: not knowing is not safe
    feed(world, "/julabo/status", chiller("STOPPED"), 42.0)
    stopped = evaluate(cfg, world, state, 42.0)
    state.active, state.affected, state.reason = True, frozenset(stopped), stopped["M1"]
    feed(world, "/julabo/status", chiller("DISCONNECTED"), 43.0)
    assert evaluate(cfg, world, state, 43.0) == stopped


def test_dewpoint_rule_at_the_edges_of_humidity():
    cfg = lab_with([{"name": "dew", "kind": "dewpoint_margin", "sensor": "sensor_1"}])
    world, state = World(cfg), new_state(cfg)
    feed(world, "/temp_m1/status", sensor("temp_m1", -20.0, module="M1"), 0)
    dry = {**sensor("sensor_1", 21.0, humidity=0.0), "too_dry": True}
    feed(world, "/sensor_1/status", dry, 0)
    assert evaluate(cfg, world, state, 0) == {}  # no water vapour: nothing can condense
    wet = {**sensor("sensor_1", 21.0, humidity=100.0, dewpoint=21.0), "humidity_clamped": True}
    feed(world, "/sensor_1/status", wet, 1)
    verdict = evaluate(cfg, world, state, 1)
    assert verdict["M1"] == "-41.0 K from the dew point 21.0 C (temp_m1 at -20.0 C; needs 2 K)"


def test_module_temperature_rule_per_module_with_hysteresis():
    cfg = lab_with([{"name": "hot", "kind": "module_temperature", "hysteresis": 1.0}])
    world, state = World(cfg), new_state(cfg)
    feed(world, "/temp_m2/status", sensor("temp_m2", 30.5, module="M2"), 0.0)
    feed(world, "/temp_m3/status", sensor("temp_m3", 29.9, module="M3"), 0.0)
    feed(world, "/temp_m4/status", sensor("temp_m4", None, module="M4", stale=True), 0.0)
    verdict = evaluate(cfg, world, state, 0.0)
    assert verdict == {"M2": "M2 at 30.5 C (limit 30 C)"}  # a stale one is not judged here
    state.active, state.affected = True, frozenset(verdict)
    feed(world, "/temp_m2/status", sensor("temp_m2", 29.5, module="M2"), 1.0)
    assert set(evaluate(cfg, world, state, 1.0)) == {"M2"}  # not yet 1 K below the limit
    feed(world, "/temp_m2/status", sensor("temp_m2", 28.9, module="M2"), 2.0)
    assert evaluate(cfg, world, state, 2.0) == {}


def test_dewpoint_rule_uses_the_coldest_module():
    cfg = lab_with([{"name": "dew", "kind": "dewpoint_margin", "sensor": "sensor_1",
                     "margin": 2.0, "chiller_setpoint": 20}])  # fmt: skip
    world, state = World(cfg), new_state(cfg)
    feed(world, "/sensor_1/status", sensor("sensor_1", 21.0, humidity=45.0, dewpoint=8.6), 0)
    feed(world, "/temp_m1/status", sensor("temp_m1", 12.0, module="M1"), 0)
    feed(world, "/temp_m2/status", sensor("temp_m2", 11.0, module="M2"), 0)
    assert evaluate(cfg, world, state, 0) == {}  # the coldest, M2, is 2.4 K above it
    feed(world, "/sensor_1/status", sensor("sensor_1", 21.0, humidity=60.0, dewpoint=12.9), 1)
    verdict = evaluate(cfg, world, state, 1)
    assert set(verdict) == set(MODULES)
    assert verdict["M1"] == "-1.9 K from the dew point 12.9 C (temp_m2 at 11.0 C; needs 2 K)"


def test_heartbeat_rule_timeout_offline_and_stale():
    cfg = lab_with([{"name": "hb", "kind": "heartbeat",
                     "sources": {"/temp_m1": 1.0, "/julabo": 2.0, "/hv": 2.0}}])  # fmt: skip
    world, state = World(cfg), new_state(cfg)
    rule = state.rule
    assert evaluate(cfg, world, state, 0.5) == {}  # within the first timeout after start
    assert RULE_KINDS["heartbeat"].deadline(rule, world, state, 0.5) == 1.0
    verdict = evaluate(cfg, world, state, 1.0)
    assert verdict == {"M1": "no data from /temp_m1 for 1.0 s"}  # a module sensor: its module
    feed(world, "/temp_m1/status", sensor("temp_m1", 20.0, module="M1", age=0.25), 1.5)
    feed(world, "/julabo/status", chiller("RUNNING"), 1.5)
    feed(world, "/hv/status", hv_status(), 1.5)
    assert evaluate(cfg, world, state, 1.5) == {}
    # the reading was 0.25 s old when published: it is too old 0.75 s later
    assert RULE_KINDS["heartbeat"].deadline(rule, world, state, 1.5) == pytest.approx(2.25)
    assert set(evaluate(cfg, world, state, 2.25)) == {"M1"}
    feed(world, "/temp_m1/status", sensor("temp_m1", None, module="M1", stale=True), 2.3)
    assert "stale" in evaluate(cfg, world, state, 2.3)["M1"]
    feed(world, "/temp_m1/status", sensor("temp_m1", 20.0, module="M1"), 2.4)
    feed(world, "/julabo/availability", "offline", 2.4)
    verdict = evaluate(cfg, world, state, 2.4)
    assert set(verdict) == set(MODULES) and verdict["M3"] == "/julabo offline"  # every module


def test_rule_table_covers_every_kind_of_the_config():
    from trackerdcs.safety import config

    kinds = {
        model.model_fields["kind"].annotation.__args__[0]
        for model in (config.ChillerRunningRule, config.ModuleTemperatureRule,
                      config.DewpointMarginRule, config.HeartbeatRule)
    }  # fmt: skip
    assert kinds == set(RULE_KINDS)


# -- configuration ----------------------------------------------------------------------------


def test_example_lab_rules():
    cfg = parse_config(example())
    check_safety(cfg)
    kinds = {r.name: (r.kind, r.action.value) for r in cfg.interlocks.rules}
    assert kinds == {
        "chiller_running": ("chiller_running", "ramp_down"),
        "module_temperature": ("module_temperature", "kill"),
        "dewpoint": ("dewpoint_margin", "ramp_down"),
        "heartbeat": ("heartbeat", "ramp_down"),
    }
    assert cfg.power.lv_off_requires_hv_off  # the LV-before-HV rule: the power daemon's own


@pytest.mark.parametrize(
    ("rules", "expected"),
    [
        ([{"name": "x", "kind": "nope"}], "interlocks.rules.0"),
        ([{"name": "x", "kind": "module_temperature", "limitt": 3}],
         "interlocks.rules.0.module_temperature.limitt: unknown key"),
        ([{"name": "x", "kind": "dewpoint_margin", "sensor": "sensor_1", "margin": -1}],
         "interlocks.rules.0.dewpoint_margin.margin"),
        ([{"name": "x", "kind": "chiller_running"}, {"name": "x", "kind": "chiller_running"}],
         "rule name 'x' is used twice"),
        ([{"name": "x", "kind": "module_temperature", "hold": -1}],
         "interlocks.rules.0.module_temperature.hold"),
        ([{"name": "x", "kind": "heartbeat", "sources": {"/hv": 3}, "hold": 2}],
         "interlocks.rules.0.heartbeat.hold: unknown key"),  # its timeout is its hold
        ([{"name": "x", "kind": "chiller_running", "status_timeout": 0}],
         "interlocks.rules.0.chiller_running.status_timeout"),
    ],
)  # fmt: skip
def test_bad_rules_are_named_by_load_config(tmp_path, rules, expected):
    data = example()
    data["interlocks"] = {"rules": rules}
    with pytest.raises(ConfigError) as info:
        parse_config(data, tmp_path / "lab.yml")
    assert expected in str(info.value)


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ({"kind": "chiller_running", "modules": ["M9"]},
         "interlocks.rules.0.modules: no power channel powers M9"),
        ({"kind": "dewpoint_margin", "sensor": "temp_m1"},
         "interlocks.rules.0.sensor: no room sensor named 'temp_m1'"),
        ({"kind": "heartbeat", "sources": {"/nope": 3}},
         "interlocks.rules.0.sources./nope: not a prefix of the lab"),
        ({"kind": "chiller_running", "chiller_setpoint": 80},
         "interlocks.rules.0.chiller_setpoint: 80 is outside the chiller's range -30..40"),
    ],
)  # fmt: skip
def test_rules_are_checked_against_the_lab(tmp_path, rule, expected):
    data = example()
    data["interlocks"] = {"rules": [{"name": "r", **rule}]}
    path = tmp_path / "lab.yml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ValueError, match="interlocks") as info:
        check_safety(parse_config(data))
    assert expected in str(info.value)
    result = subprocess.run(
        [sys.executable, "-m", "trackerdcs.cli", "check-config", str(path)],
        cwd=ROOT, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 2 and expected in result.stderr


def test_a_lab_without_a_chiller_refuses_a_chiller_rule():
    data = example()
    del data["julabo"]
    data["interlocks"]["rules"] = [r for r in data["interlocks"]["rules"]
                                   if r["name"] != "heartbeat"]  # fmt: skip
    cfg = parse_config(data)  # loads: the other daemons do not read this section
    with pytest.raises(ValueError, match=r"interlocks.rules.0: needs a chiller"):
        check_safety(cfg)


# -- the interlock daemon on a real broker ----------------------------------------------------

# the modules of the interlock lab (write_lab: the example's) by their part in these tests: the
# one that stays on, the hot one, the one of the `held` rule, the one of the heartbeat's sensor
KEPT, HOT, HELD, BEATING = MODULES[:4]


def sensor_of(module: str) -> str:
    """The name of the lab's `kind: module` sensor of `module`."""
    return next(s["name"] for s in EXAMPLE.data["sensors"] if s.get("module") == module)


BEAT = f"/{sensor_of(BEATING)}"  # the heartbeat rule's source

RULES = [
    {"name": "chiller_running", "kind": "chiller_running", "modules": "all"},
    {"name": "module_temperature", "kind": "module_temperature", "action": "kill"},
    {"name": "dewpoint", "kind": "dewpoint_margin", "sensor": "sensor_1", "margin": 2.0,
     "chiller_setpoint": 20},
    {"name": "heartbeat", "kind": "heartbeat", "action": "ramp_down",
     "sources": {BEAT: 0.4}},
    {"name": "held", "kind": "module_temperature", "modules": [HELD], "action": "none",
     "hold": 0.5},
]  # fmt: skip
HOLD = 0.5
SAFETY = {"rules": RULES, "reassert_interval": 0.3, "startup_grace": 0.2}


class InterlockLab:
    """The interlock daemon; the test client plays the power, chiller and sensor daemons.

    A thread keeps BEAT (the heartbeat rule's source, 0.4 s timeout) coming unless paused.
    """

    def __init__(self, workdir: Path, broker: Broker, name: str) -> None:
        self.broker = broker
        self.config = write_lab(workdir / f"{name}.yml", mqtt_port=broker.port,
                                ca_port=free_port(), lab=name, interlocks=SAFETY)  # fmt: skip
        self.daemon = python_process(
            "interlock", "trackerdcs.safety.interlock_daemon", ["--config", str(self.config)],
            workdir / f"{name}-interlock.log", ready=serving("serving interlocks"),
        )  # fmt: skip
        self.client = broker.client()
        self.feeding = threading.Event()
        self._closed = threading.Event()
        self._feeder = threading.Thread(target=self._feed, daemon=True)

    def _feed(self) -> None:
        while not self._closed.wait(0.1):
            if self.feeding.is_set():
                self.temperature(BEATING, 20.0)

    def start(self) -> InterlockLab:
        self.publish_world()
        self.feeding.set()
        self._feeder.start()
        self.daemon.start()
        self.calm()
        return self

    def stop(self) -> None:
        self._closed.set()
        self._feeder.join()
        self.daemon.stop()
        self.client.close()

    def publish_world(self, hv_on: tuple[str, ...] = ()) -> None:
        """A calm lab: everything in range, the chiller stopped (never ran)."""
        self.client.publish("/julabo/status", chiller("STOPPED"), retain=True)
        self.client.publish("/hv/status", json.dumps(hv_status(hv_on)), retain=True)
        self.client.publish("/sensor_1/status", sensor("sensor_1", 21.0, humidity=45.0,
                                                       dewpoint=8.6), retain=True)  # fmt: skip
        for module in MODULES:
            self.temperature(module, 20.0)

    def calm(self) -> None:
        """The calm lab, and no rule active (asked with `refresh` after it is published)."""
        self.publish_world()
        self.feeding.set()
        since = self.client.mark()
        assert self.client.command("/interlock/cmd/refresh", "", "/interlock/response")["ok"]
        self.wait_rules(lambda rules: not any(r["active"] for r in rules.values()), since=since)

    def temperature(self, module: str, value: float | None, **kw: Any) -> None:
        name = sensor_of(module)
        self.client.publish(f"/{name}/status", sensor(name, value, module=module, **kw),
                            retain=True)  # fmt: skip

    def wait_rules(self, predicate, timeout: float = 5.0, since: int = 0) -> dict[str, dict]:
        def match(m) -> bool:
            return predicate({r["name"]: r for r in m.json["rules"]})

        msg = self.client.wait_for("/interlock/status", match, timeout, since)
        return {r["name"]: r for r in msg.json["rules"]}

    def wait_command(self, topic: str, since: int, timeout: float = 5.0):
        return self.client.wait_for(topic, lambda m: True, timeout, since)

    def commands(self, since: int) -> list[str]:
        return [m.topic for m in self.client.messages[since:] if "/cmd/" in m.topic
                and not m.topic.startswith("/interlock/")]  # fmt: skip


@pytest.fixture(scope="module")
def ilab(workdir, broker):
    lab = InterlockLab(workdir, broker, "interlocks").start()
    yield lab
    lab.stop()


@pytest.fixture
def calm(ilab):
    """Every test starts from a calm lab with no rule active."""
    ilab.calm()
    return ilab


def test_hot_module_kills_its_hv_only(calm):
    lab = calm
    lab.publish_world(hv_on=(KEPT, HOT))
    since = lab.client.mark()
    t0 = time.monotonic()
    lab.temperature(HOT, 31.5)
    kill = lab.wait_command("/hv/cmd/+/+", since)
    assert kill.topic == f"/hv/cmd/kill/{HOT}" and kill.t - t0 < 0.5
    request = kill.json
    assert request["value"] == "off" and request["id"].startswith("interlock:module_temperature:")
    rules = lab.wait_rules(lambda r: r["module_temperature"]["active"], since=since)
    rule = rules["module_temperature"]
    assert rule["modules"] == [HOT] and rule["reason"] == f"{HOT} at 31.5 C (limit 30 C)"
    assert rule["fired_at"] and rule["kind"] == "module_temperature" and rule["action"] == "kill"
    event = lab.client.wait_for("/interlock/action", lambda m: m.json["event"] == "fired",
                                since=since).json  # fmt: skip
    assert event["commands"] == [f"/hv/cmd/kill/{HOT}"] and event["modules"] == [HOT]
    assert lab.commands(since) == [f"/hv/cmd/kill/{HOT}"]

    # the module comes back on behind the interlock's back: it is killed again
    since = lab.client.mark()
    lab.client.publish("/hv/status", json.dumps(hv_status((KEPT, HOT))), retain=True)
    again = lab.wait_command(f"/hv/cmd/kill/{HOT}", since)
    assert again.json["id"] != request["id"]
    lab.client.publish("/hv/status", json.dumps(hv_status((KEPT,))), retain=True)

    since = lab.client.mark()
    lab.temperature(HOT, 29.8)  # within the hysteresis: still held
    lab.temperature(HOT, 29.0)
    rules = lab.wait_rules(lambda r: not r["module_temperature"]["active"], since=since)
    assert rules["module_temperature"]["reason"] == f"{HOT} at 29.8 C (limit 30 C)"  # the last one
    assert rules["module_temperature"]["cleared_at"]


def test_a_kill_not_written_everywhere_is_logged_and_sent_again(calm):
    """The power daemon switches off what it can and answers `ok: false` with `not_written`
    for the rest: the interlock logs it as not done, and sends the action again while the HV
    shows on."""
    lab = calm
    hot = EXAMPLE.of_module(HOT, "hv").name  # its HV channel
    lab.publish_world(hv_on=(HOT,))
    since = lab.client.mark()
    lab.temperature(HOT, 31.5)
    kill = lab.wait_command(f"/hv/cmd/kill/{HOT}", since)
    request_id = kill.json["id"]
    lab.client.publish("/hv/response", {
        "topic": kill.topic, "payload": kill.text, "ok": False, "id": request_id,
        "error": f"could not be switched off: {hot} (test:00:001:Pw not connected)",
        "channels": [], "not_written": [hot]})  # fmt: skip
    logged = f"/hv/cmd/kill/{HOT} did not do all of {request_id}: could not be switched off: {hot}"
    wait_for(lambda: logged in lab.daemon.output(), timeout=5)
    since = lab.client.mark()
    lab.client.publish("/hv/status", json.dumps(hv_status((HOT,))), retain=True)  # still on
    assert lab.wait_command(f"/hv/cmd/kill/{HOT}", since).json["id"] != request_id
    lab.client.publish("/hv/status", json.dumps(hv_status()), retain=True)
    since = lab.client.mark()
    lab.temperature(HOT, 29.0)
    lab.wait_rules(lambda r: not r["module_temperature"]["active"], since=since)


def test_a_spike_does_not_fire_a_rule_with_a_hold_a_sustained_breach_does(calm):
    lab = calm
    since = lab.client.mark()
    lab.temperature(HELD, 35.0)  # one glitched sample ...
    lab.temperature(HELD, 20.0)  # ... and the next one is fine again
    fired = lab.client.wait_for("/interlock/action", lambda m: m.json["event"] == "fired",
                                since=since)  # fmt: skip
    assert fired.json["rule"] == "module_temperature"  # the rule without a hold acts at once
    with pytest.raises(TimeoutError):
        lab.client.wait_for("/interlock/action", lambda m: m.json["rule"] == "held",
                            HOLD + 0.5, since)  # fmt: skip

    since = lab.client.mark()
    started = time.monotonic()
    lab.temperature(HELD, 35.0)  # sustained
    event = lab.client.wait_for("/interlock/action", lambda m: m.json["rule"] == "held"
                                and m.json["event"] == "fired", 3, since)  # fmt: skip
    assert HOLD - 0.05 <= event.t - started < HOLD + 0.3  # a timer ends the hold, not a message
    assert event.json["modules"] == [HELD] and event.json["commands"] == []  # action none
    rules = lab.wait_rules(lambda r: r["held"]["active"], since=since)
    assert rules["held"]["reason"] == f"{HELD} at 35.0 C (limit 30 C)"
    lab.temperature(HELD, 20.0)
    lab.wait_rules(lambda r: not r["held"]["active"], since=since)


def test_silent_sensor_fires_the_heartbeat_on_its_deadline(calm):
    lab = calm
    lab.publish_world(hv_on=(HELD, BEATING))
    lab.feeding.clear()
    since = lab.client.mark()
    lab.temperature(BEATING, 20.0, age=0.0)
    last = lab.client.wait_for(f"{BEAT}/status", since=since).t  # as the broker sent it
    rules = lab.wait_rules(lambda r: r["heartbeat"]["active"], since=since)
    fired = lab.client.latest("/interlock/status").t
    assert 0.4 <= fired - last < 0.4 + 0.15  # the timeout, plus little
    assert rules["heartbeat"]["modules"] == [BEATING]  # the module of that sensor only
    assert f"no data from {BEAT}" in rules["heartbeat"]["reason"]
    lab.wait_command(f"/hv/cmd/switch/{BEATING}", since)  # ramp down: switch off
    assert lab.commands(since) == [f"/hv/cmd/switch/{BEATING}"]

    since = lab.client.mark()
    lab.feeding.set()
    lab.wait_rules(lambda r: not r["heartbeat"]["active"], since=since)
    lab.client.publish(f"{BEAT}/availability", "offline", retain=True)
    rules = lab.wait_rules(lambda r: r["heartbeat"]["active"], since=since)
    assert rules["heartbeat"]["reason"] == f"{BEAT} offline"
    lab.client.publish(f"{BEAT}/availability", "online", retain=True)
    lab.wait_rules(lambda r: not r["heartbeat"]["active"], since=since)


def test_chiller_stop_ramps_down_and_reset_disarms(calm):
    lab = calm
    lab.publish_world(hv_on=(KEPT, HELD))
    since = lab.client.mark()
    lab.client.publish("/julabo/status", chiller("RUNNING"), retain=True)
    lab.wait_rules(lambda r: r["chiller_running"]["armed"], since=since)
    lab.client.publish("/julabo/status", chiller("STOPPED"), retain=True)
    rules = lab.wait_rules(lambda r: r["chiller_running"]["active"], since=since)
    assert rules["chiller_running"]["modules"] == list(MODULES)
    assert rules["chiller_running"]["reason"] == "chiller STOPPED (REMOTE STOP)"
    lab.wait_command(f"/hv/cmd/switch/{HELD}", since)
    on = sorted(f"/hv/cmd/switch/{m}" for m in (KEPT, HELD))
    assert sorted(lab.commands(since)) == on  # the other modules' HV is off already

    answer = lab.client.command("/interlock/cmd/reset/module_temperature", "",
                                "/interlock/response")  # fmt: skip
    assert not answer["ok"] and "clears by itself" in answer["error"]
    since = lab.client.mark()
    assert lab.client.command("/interlock/cmd/reset/chiller_running", "",
                              "/interlock/response")["ok"]  # fmt: skip
    rules = lab.wait_rules(lambda r: not r["chiller_running"]["active"], since=since)
    assert rules["chiller_running"]["armed"] is False


def test_dewpoint_raises_the_chiller_and_reasserts_it(calm):
    lab = calm
    since = lab.client.mark()
    lab.client.publish("/julabo/status", chiller("RUNNING", setpoint=-10.0), retain=True)
    lab.client.publish("/sensor_1/status", sensor("sensor_1", 21.0, humidity=90.0,
                                                  dewpoint=19.3), retain=True)  # fmt: skip
    setpoint = lab.wait_command("/julabo/cmd/setpoint", since)
    assert setpoint.json["value"] == 20.0
    assert lab.commands(since) == ["/julabo/cmd/setpoint"]  # every HV is off already
    since = lab.client.mark()
    lab.client.publish("/julabo/status", chiller("RUNNING", setpoint=-10.0), retain=True)
    lab.wait_command("/julabo/cmd/setpoint", since)  # still low: raised again
    lab.client.publish("/julabo/status", chiller("STOPPED", setpoint=20.0), retain=True)
    assert lab.client.command("/interlock/cmd/reset/chiller_running", "",
                              "/interlock/response")["ok"]  # fmt: skip


def test_restarted_interlock_remembers_the_arming(workdir):
    broker = Broker(workdir).start()
    lab = InterlockLab(workdir, broker, "interlock-restart")
    try:
        lab.publish_world()
        lab.client.publish("/julabo/status", chiller("RUNNING"), retain=True)
        lab.feeding.set()
        lab._feeder.start()
        lab.daemon.start()
        lab.wait_rules(lambda r: r["chiller_running"]["armed"])
        lab.daemon.stop()
        lab.client.publish("/julabo/status", chiller("STOPPED"), retain=True)
        since = lab.client.mark()
        lab.daemon.start()
        rules = lab.wait_rules(lambda r: r["chiller_running"]["active"], since=since)
        assert rules["chiller_running"]["armed"]
    finally:
        lab.stop()
        broker.stop()
