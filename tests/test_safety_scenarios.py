"""Safety scenarios on the coupled virtual lab, every process real: the simulators, the power,
chiller and sensor daemons, the interlock, alarm/audit and sequencer daemons, Mosquitto.

The lab's physics runs 300 times faster than the wall clock (tests/test_virtual_lab.py): the
chiller reaches its set point and the modules follow it within about a second.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import Broker, python_process, serving
from tests.labdata import EXAMPLE
from tests.simca import ca_get, ca_put, wait_for
from tests.test_virtual_lab import VirtualLab
from trackerdcs.power.pvnames import channel_pv
from trackerdcs.stack.process import ManagedProcess
from trackerdcs.topics import ServiceTopics

HV, LV = EXAMPLE.channels("hv"), EXAMPLE.channels("lv")  # the virtual lab starts from it
M = EXAMPLE.modules  # its modules, in the lab file's order
SENSOR_TIMEOUT = 1.5  # s: the sensors publish every 0.2 s, and go stale after 1 s of silence
STATUS_TIMEOUT = 2.0  # s: a DISCONNECTED chiller counts as stopped after this
SOAK = 15.0  # s of a loaded machine and a lossy chiller line
INTERLOCKS = {
    "reassert_interval": 0.5,
    "startup_grace": 0.5,
    "rules": [
        {"name": "chiller_running", "kind": "chiller_running", "action": "ramp_down",
         "status_timeout": STATUS_TIMEOUT},
        {"name": "module_temperature", "kind": "module_temperature", "action": "kill"},
        {"name": "dewpoint", "kind": "dewpoint_margin", "sensor": "sensor_1", "margin": 2.0,
         "action": "ramp_down", "chiller_setpoint": 20},
        {"name": "heartbeat", "kind": "heartbeat", "action": "ramp_down",
         "sources": {"/sensor_1": SENSOR_TIMEOUT, "/temp_m1": SENSOR_TIMEOUT,
                     "/temp_m2": SENSOR_TIMEOUT, "/temp_m3": SENSOR_TIMEOUT,
                     "/temp_m4": SENSOR_TIMEOUT, "/julabo": 5.0, "/hv": 25.0, "/lv": 25.0}},
    ],
}  # fmt: skip


class SafetyLab(VirtualLab):
    """The virtual lab with the safety daemons, and helpers to drive and watch them."""

    def __init__(self, workdir: Path, broker: Broker, name: str = "safety",
                 interlocks: dict[str, Any] = INTERLOCKS, **lab: Any) -> None:  # fmt: skip
        super().__init__(workdir, broker, name, **lab)
        self.broker = broker
        data = yaml.safe_load(self.config.read_text())
        data["interlocks"] = interlocks
        data["alarms"] = {"db": str(workdir / f"{name}-alarms.sqlite")}
        data["power"]["failsafe"] = {"broker_timeout": 1.0}
        self.config.write_text(yaml.safe_dump(data, sort_keys=False))
        crate = data["crates"][0]
        self.ca_port, self.system = int(crate["address"].rsplit(":", 1)[1]), crate["system"]

        def daemon(what: str, module: str, ready: str) -> ManagedProcess:
            log = workdir / f"{name}-{what}.log"
            return python_process(what, module, ["--config", str(self.config)], log,
                                  ready=serving(ready))  # fmt: skip

        self.alarm_daemon = daemon("alarms", "trackerdcs.safety.alarms_daemon", "serving alarms")
        self.processes += [
            daemon("interlock", "trackerdcs.safety.interlock_daemon", "serving interlocks"),
            self.alarm_daemon,
            daemon("dcs", "trackerdcs.safety.dcs_daemon", "serving the sequencer"),
        ]

    # -- the crate, as the simulator sees it ------------------------------------------------------
    def pv(self, name: str, param: str) -> str:
        """The PV of a parameter of the channel called `name` in the lab file."""
        return channel_pv(self.system, *self.lab.named(name).place, param)

    def crate(self, name: str, param: str) -> Any:
        return ca_get(self.ca_port, self.pv(name, param))

    def put(self, name: str, param: str, value: Any) -> None:
        ca_put(self.ca_port, self.pv(name, param), value)

    # -- MQTT -------------------------------------------------------------------------------------
    def module(self, name: str, value: str) -> dict[str, Any]:
        return self.client.command(f"/dcs/cmd/module/{name}", value, "/dcs/response", 30)

    def current(self, topic: str) -> int:
        """A `since` from the last live message on `topic`: the state as it was last published,
        then every change. A state already reached publishes nothing new (the lab is shared by
        the module's tests), and one reached before a plain mark would be missed. With only a
        retained copy (a new client), a plain mark: a wait on it needs more than the interlock's
        10 s heartbeat, which republishes the state."""
        messages = self.client.messages
        for index in range(len(messages) - 1, -1, -1):
            if messages[index].topic == topic and not messages[index].retain:
                return index
        return self.client.mark()

    def rules(self, predicate: Callable[[dict], bool], timeout: float = 10.0,
              since: int | None = None) -> dict[str, dict]:  # fmt: skip
        status = self.wait("/interlock/status",
                           lambda s: predicate({r["name"]: r for r in s["rules"]}), timeout,
                           since)  # fmt: skip
        return {r["name"]: r for r in status["rules"]}

    def alarms(self, predicate: Callable[[list], bool], since: int | None = None) -> list[dict]:
        return self.wait("/alarms", lambda s: predicate(s["alarms"]), 10, since)["alarms"]

    def hv(self, predicate: Callable[[dict[str, dict]], bool], since: int | None = None,
           timeout: float = 10.0) -> dict[str, dict]:  # fmt: skip
        status = self.wait("/hv/status", lambda chs: predicate({c["module"]: c for c in chs}),
                           timeout, since)  # fmt: skip
        return {c["module"]: c for c in status}

    def audit(self, **query: Any) -> list[dict]:
        answer = self.client.command("/audit/cmd/query", query, "/audit/response")
        assert answer["ok"], answer
        return answer["records"]

    def all_off(self) -> None:
        """Every module off through the sequencer (HV first)."""
        answer = self.module("all", "off")
        assert answer["ok"], answer


@pytest.fixture(scope="module")
def lab(workdir: Path, broker: Broker) -> Iterator[SafetyLab]:
    lab = SafetyLab(workdir, broker).start()
    lab.rules(lambda r: not any(rule["active"] for rule in r.values()), since=0)
    yield lab
    assert lab.stop() == [0] * 7  # every process exits cleanly on SIGTERM


def on_at(volts: float) -> Callable[[dict], bool]:
    return lambda c: c["state"] == "ON" and abs(c["vmon"] - volts) <= 2.0


def by_text(alarms: list[dict], text: str) -> list[dict]:
    return [a for a in alarms if text in a["text"]]


def test_chiller_stopped_at_full_hv_ramps_down_latches_and_is_audited(lab: SafetyLab) -> None:
    since = lab.current("/interlock/status")  # switching on cannot disarm it
    assert lab.command("/julabo/cmd/setpoint", 15)["ok"]
    assert lab.command("/julabo/cmd/switch", "on")["ok"]
    lab.rules(lambda r: r["chiller_running"]["armed"] and not r["chiller_running"]["active"],
              timeout=15, since=since)  # fmt: skip
    assert (
        lab.command(HV[0].topic("setv", by="module"), 150)["ok"]
        and lab.command(HV[1].topic("setv", by="module"), 150)["ok"]
    )
    for module in M[:2]:
        assert lab.module(module, "on")["ok"]
    lab.hv(lambda m: on_at(150)(m[M[0]]) and on_at(150)(m[M[1]]), since=0)

    since = lab.client.mark()
    assert lab.command("/julabo/cmd/switch", "off")["ok"]
    rules = lab.rules(lambda r: r["chiller_running"]["active"], since=since)
    assert rules["chiller_running"]["reason"].startswith("chiller STOPPED")
    lab.hv(lambda m: m[M[0]]["state"] == "OFF" and m[M[1]]["state"] == "OFF", since=since)
    assert lab.crate(HV[0].name, "Pw") == 0 and lab.crate(HV[1].name, "Pw") == 0
    assert lab.crate(LV[0].name, "Pw") == 1  # the LV is left to the operator

    alarms = lab.alarms(lambda a: by_text(a, "interlock chiller_running fired"), since)
    alarm = by_text(alarms, "interlock chiller_running fired")[0]
    assert alarm["severity"] == "critical" and alarm["active"] and not alarm["acknowledged"]

    # HV on is refused while the interlock holds, by the power daemon and so by the sequencer
    answer = lab.command(HV[0].topic("switch", by="module"), "on")
    assert not answer["ok"] and "interlock chiller_running (chiller STOPPED" in answer["error"]
    answer = lab.module(M[2], "on")
    assert not answer["ok"] and f"hv_on: /hv/cmd/switch/{M[2]} on refused" in answer["error"]
    assert lab.crate(LV[2].name, "Pw") == 0  # rolled back

    # the chain, from the audit log: the chiller stopped, the rule fired, HV switched off
    records = lab.audit(module=M[0], since="5m")
    fired = max(i for i, r in enumerate(records) if r["event"] == "fired"
                and json.loads(r["payload"])["rule"] == "chiller_running")  # fmt: skip
    assert "chiller STOPPED" in records[fired]["text"]
    after = [(r["source"], r["topic"], r["ok"]) for r in records[fired:] if r["kind"] == "command"]
    assert ("interlock", HV[0].topic("switch", by="module"), True) in after
    stop = [r for r in lab.audit(since="5m", kind="command")
            if r["topic"] == "/julabo/cmd/switch" and '"off"' in r["payload"]][-1]  # fmt: skip
    assert stop["time"] <= records[fired]["time"]

    # running again: the rule clears, the alarm stays latched until acknowledged
    since = lab.client.mark()
    assert lab.command("/julabo/cmd/switch", "on")["ok"]
    lab.rules(lambda r: not r["chiller_running"]["active"], since=since)
    alarms = lab.alarms(lambda a: not by_text(a, "chiller_running fired")[0]["active"], since)
    assert not by_text(alarms, "chiller_running fired")[0]["acknowledged"]
    answer = lab.client.command(f"/alarms/cmd/ack/{alarm['id']}", "", "/alarms/response")
    assert answer["ok"]
    lab.all_off()


def test_dewpoint_margin_breached(lab: SafetyLab) -> None:
    lab.wait("/julabo/status", lambda s: s["state"] == "RUNNING", since=0)
    assert lab.command(HV[0].topic("setv", by="module"), 100)["ok"]
    assert lab.module(M[0], "on")["ok"]
    lab.wait("/temp_m1/status", lambda s: abs((s["temperature"] or 99) - 15) < 1, 10)
    since = lab.client.mark()
    assert lab.backdoor("set room_humidity=75")["ok"]  # dew point 16.4 C: above the modules
    rules = lab.rules(lambda r: r["dewpoint"]["active"], since=since)
    assert "from the dew point 16.4 C" in rules["dewpoint"]["reason"]
    assert rules["dewpoint"]["modules"] == M
    lab.hv(lambda m: m[M[0]]["state"] == "OFF", since=since)
    chiller = lab.wait("/julabo/status", lambda s: s["setpoint"] == 20.0, since=since)
    assert chiller["state"] == "RUNNING"  # raised to the safe set point, still cooling
    assert lab.backdoor("set room_humidity=45")["ok"]
    lab.rules(lambda r: not r["dewpoint"]["active"], since=since)
    lab.all_off()


def test_silent_sensor_ramps_down_its_module_only(lab: SafetyLab) -> None:
    for module in (M[1], M[2]):
        assert lab.command(f"/hv/cmd/setv/{module}", 80)["ok"]
        assert lab.module(module, "on")["ok"]
    since = lab.client.mark()
    assert lab.backdoor("sensor temp_m3 silent")["ok"]
    rules = lab.rules(lambda r: r["heartbeat"]["active"], since=since)
    assert rules["heartbeat"]["modules"] == [M[2]]
    assert "/temp_m3 stale" in rules["heartbeat"]["reason"]
    hv = lab.hv(lambda m: m[M[2]]["state"] == "OFF", since=since)
    assert hv[M[1]]["state"] == "ON"
    lab.alarms(lambda a: by_text(a, "sensor temp_m3 stale"), since)
    assert lab.backdoor("sensor temp_m3 ok")["ok"]
    lab.rules(lambda r: not r["heartbeat"]["active"], since=since)
    lab.all_off()


def test_one_module_trips_only_it_goes_off(lab: SafetyLab) -> None:
    for module in M[:2]:
        assert lab.command(f"/hv/cmd/setv/{module}", 100)["ok"]
        assert lab.module(module, "on")["ok"]
    since = lab.client.mark()
    lab.put(HV[1].name, "SimLeak", 50.0)  # 50 uA over its 10 uA limit
    hv = lab.hv(lambda m: m[M[1]]["state"] == "TRIPPED", since=since)
    assert on_at(100)(hv[M[0]])
    tripped = f"{HV[1].name} ({HV[1].module}) TRIPPED"
    alarms = lab.alarms(lambda a: by_text(a, tripped), since)
    assert by_text(alarms, tripped)[0]["severity"] == "major"
    status = lab.client.latest("/interlock/status").json
    assert status["active"] == []  # a trip is the crate's business: no interlock fires
    # the LV of a module whose HV is on stays on (the power daemon refuses it)
    answer = lab.command(LV[0].topic("switch", by="module"), "off")
    assert not answer["ok"] and "switch the HV off first" in answer["error"]
    lab.put(HV[1].name, "SimLeak", 0.0)
    assert lab.command("/hv/cmd/clear", "")["ok"]
    lab.all_off()


def test_module_on_off_order_from_the_audit_log(lab: SafetyLab) -> None:
    assert lab.command(HV[3].topic("setv", by="module"), 120)["ok"]
    assert lab.module(M[3], "on")["ok"]
    assert lab.module(M[3], "off")["ok"]
    records = lab.audit(module=M[3], source="dcs", since="1m")
    commands = [(r["topic"], json.loads(r["payload"])["value"], r["ok"], r["time"])
                for r in records if r["kind"] == "command"][-4:]  # fmt: skip
    lv, hv = LV[3].topic("switch", by="module"), HV[3].topic("switch", by="module")
    assert [c[:3] for c in commands] == [
        (lv, "on", True), (hv, "on", True), (hv, "off", True), (lv, "off", True),
    ]  # fmt: skip
    last = [(json.loads(r["payload"])["step"], r) for r in records if r["event"] == "step"][-8:]
    assert [name for name, _ in last] == ["lv_on", "lv_ready", "hv_on", "hv_ready",
                                          "hv_off", "hv_down", "lv_off", "lv_down"]  # fmt: skip
    steps = dict(last)
    assert steps["lv_ready"]["text"] == f"{LV[3].name} ON 10.5/10.5 V"
    assert steps["hv_down"]["text"].startswith(f"{HV[3].name} OFF 0/120 V")
    assert steps["lv_ready"]["time"] <= commands[1][3]  # HV on only once the LV was ready
    assert steps["hv_down"]["time"] <= commands[3][3]  # LV off only once the HV was down


def test_acknowledgement_kept_across_a_restart_of_the_alarm_service(lab: SafetyLab) -> None:
    since = lab.client.mark()
    assert lab.backdoor("sensor temp_m4 silent")["ok"]
    alarms = lab.alarms(lambda a: by_text(a, "sensor temp_m4 stale")
                        and by_text(a, "interlock heartbeat fired"), since)  # fmt: skip
    stale = by_text(alarms, "sensor temp_m4 stale")[0]
    fired = by_text(alarms, "interlock heartbeat fired")[0]
    assert lab.client.command(f"/alarms/cmd/ack/{stale['id']}", "", "/alarms/response")["ok"]
    lab.alarms(lambda a: by_text(a, "sensor temp_m4 stale")[0]["acknowledged"], since)

    lab.alarm_daemon.stop()
    since = lab.client.mark()
    lab.alarm_daemon.start()
    alarms = {a["id"]: a for a in lab.alarms(lambda a: True, since)}
    assert alarms[stale["id"]]["acknowledged"] and alarms[stale["id"]]["active"]
    assert not alarms[fired["id"]]["acknowledged"]

    assert lab.backdoor("sensor temp_m4 ok")["ok"]
    alarms = lab.alarms(
        lambda a: (
            not any(x["id"] == stale["id"] for x in a)  # ack'd, cleared
            and any(x["id"] == fired["id"] and not x["active"] for x in a)
        ),
        since,
    )
    assert not next(a for a in alarms if a["id"] == fired["id"])["acknowledged"]  # latched
    assert lab.client.command("/alarms/cmd/ack/all", "", "/alarms/response")["ok"]


def test_power_daemon_cut_from_the_broker_ramps_hv_down_by_itself(lab: SafetyLab) -> None:
    assert lab.command(HV[1].topic("setv", by="module"), 100)["ok"]
    assert lab.module(M[1], "on")["ok"]
    last = {m.topic: m.payload for m in lab.client.messages if m.topic.endswith("/availability")}
    services = {topic for topic, payload in last.items() if payload == b"online"}
    lab.client.close()
    lab.broker.stop()
    wait_for(
        lambda: lab.crate(HV[1].name, "Pw") == 0, timeout=5
    )  # the crate sees it: 1 s fail-safe
    assert lab.crate(LV[1].name, "Pw") == 1
    lab.broker.start()
    lab.client = lab.broker.client()
    state = lab.client.wait_for("/hv/state", lambda m: m.json["failsafe"], timeout=10).json
    assert "HV switched off" in state["failsafe"]
    lab.alarms(lambda a: by_text(a, "/hv fail-safe"), since=0)
    # the restarted broker kept no session: a command sent before a service is back (its
    # `online` follows its subscriptions) would reach no one, in this test or the next
    assert ServiceTopics("/dcs").availability in services
    for online in sorted(services):
        lab.client.wait_for(online, lambda m: m.payload == b"online", timeout=10)
    answer = lab.module(M[1], "off")
    assert answer["ok"], answer


# -- the chiller and the room as labs have them -------------------------------------------------


def cooling_with_hv(lab: SafetyLab, *modules: str, volts: float = 100.0) -> int:
    """The chiller running at 15 C (the rule armed), these modules' HV on; a message mark."""
    since = lab.current("/interlock/status")  # the chiller may run already, the rule armed
    assert lab.command("/julabo/cmd/setpoint", 15)["ok"]
    assert lab.command("/julabo/cmd/switch", "on")["ok"]
    lab.rules(lambda r: r["chiller_running"]["armed"] and not r["chiller_running"]["active"],
              timeout=15, since=since)  # fmt: skip
    for module in modules:
        assert lab.command(f"/hv/cmd/setv/{module}", volts)["ok"]
        assert lab.module(module, "on")["ok"]
    lab.hv(lambda m: all(on_at(volts)(m[x]) for x in modules), since=0)
    return lab.client.mark()


def statuses(lab: SafetyLab, topic: str, since: int) -> list[dict]:
    return [m.json for m in lab.client.messages[since:] if m.topic == topic and not m.retain]


def no_fired_rule_for(lab: SafetyLab, seconds: float, since: int) -> None:
    """No interlock fires within `seconds` (waiting for the event that must not come)."""
    with pytest.raises(TimeoutError):
        lab.client.wait_for("/interlock/action", lambda m: m.json["event"] == "fired",
                            seconds, since)  # fmt: skip


def test_dry_box_then_condensing_air_through_the_interlock_service(lab: SafetyLab) -> None:
    cooling_with_hv(lab, M[0])
    lab.wait("/temp_m1/status", lambda s: abs((s["temperature"] or 99) - 15) < 1, 10)
    since = lab.client.mark()
    assert lab.backdoor("set room_humidity=0")["ok"]  # the box flushed with dry nitrogen
    dry = lab.wait("/sensor_1/status", lambda s: s["humidity"] == 0.0, since=since)
    assert (dry["dewpoint"], dry["too_dry"], dry["stale"]) == (None, True, False)
    no_fired_rule_for(lab, SENSOR_TIMEOUT + 0.5, since)  # longer than the sensors' timeout
    assert lab.client.latest("/interlock/status").json["active"] == []
    assert on_at(100)(lab.hv(lambda m: True)[M[0]])

    since = lab.client.mark()
    assert lab.backdoor("set room_humidity=100.4")["ok"]  # condensing air, unclipped sensor
    rules = lab.rules(lambda r: r["dewpoint"]["active"], since=since)
    assert "from the dew point 21.0 C" in rules["dewpoint"]["reason"]  # Td = T at 100 %
    room = lab.client.latest("/sensor_1/status").json
    assert (room["humidity"], room["humidity_clamped"], room["dewpoint"]) == (100.0, True, 21.0)
    lab.hv(lambda m: m[M[0]]["state"] == "OFF", since=since)
    lab.wait("/julabo/status", lambda s: s["setpoint"] == 20.0, since=since)  # raised
    assert lab.backdoor("set room_humidity=45")["ok"]
    lab.rules(lambda r: not r["dewpoint"]["active"], since=since)
    lab.all_off()


def test_manual_start_keeps_hv_on_manual_stop_does_not(lab: SafetyLab) -> None:
    since = cooling_with_hv(lab, M[1])
    assert lab.backdoor("julabo manual")["ok"]  # the operator takes the front panel
    status = lab.wait("/julabo/status", lambda s: s["state"] == "MANUAL", since=since)
    assert (status["status_code"], status["status_text"], status["running"]) == (
        1, "MANUAL START", 1,
    )  # fmt: skip
    answer = lab.command("/julabo/cmd/setpoint", 10)
    assert not answer["ok"] and "MANUAL mode" in answer["error"]
    no_fired_rule_for(lab, 1.0, since)  # still cooling: the HV stays on
    assert on_at(100)(lab.hv(lambda m: True)[M[1]])

    since = lab.client.mark()
    assert lab.backdoor("julabo stop")["ok"]  # 00 MANUAL STOP: not cooling any more
    rules = lab.rules(lambda r: r["chiller_running"]["active"], since=since)
    assert rules["chiller_running"]["reason"].startswith("chiller MANUAL (MANUAL STOP)")
    lab.hv(lambda m: m[M[1]]["state"] == "OFF", since=since)
    assert lab.backdoor("julabo remote")["ok"]
    lab.wait("/julabo/status", lambda s: s["state"] == "STOPPED", since=since)
    assert lab.command("/julabo/cmd/switch", "on")["ok"]
    lab.rules(lambda r: not r["chiller_running"]["active"], since=since)
    lab.all_off()


def test_a_lossy_chiller_line_never_fires_the_chiller_rule_a_lost_one_does(
    lab: SafetyLab,
) -> None:
    since = cooling_with_hv(lab, M[0])
    dropped = lab.backdoor("julabo drop-every 3")["chiller_replies_dropped"]
    try:
        # 20 lost replies: slow on a loaded machine (each costs a reply timeout)
        lab.wait("/julabo/status", lambda s: lab.backdoor("get")["chiller_replies_dropped"]
                 >= dropped + 20, timeout=40, since=since)  # fmt: skip
    finally:
        assert lab.backdoor("julabo drop-every 0")["ok"]
    assert {s["state"] for s in statuses(lab, "/julabo/status", since)} == {"RUNNING"}
    assert not lab.client.latest("/interlock/status").json["active"]
    assert on_at(100)(lab.hv(lambda m: True)[M[0]])

    since = lab.client.mark()
    unplugged = time.monotonic()
    assert lab.backdoor("julabo unplug")["ok"]
    lab.wait("/julabo/status", lambda s: s["state"] == "DISCONNECTED", since=since)
    fired = lab.client.wait_for("/interlock/action", lambda m: m.json["event"] == "fired"
                                and m.json["rule"] == "chiller_running", 10, since)  # fmt: skip
    assert fired.t - unplugged >= STATUS_TIMEOUT - 0.1  # its own time, not at once
    assert "no valid status" in fired.json["text"]
    lab.hv(lambda m: m[M[0]]["state"] == "OFF", since=since)
    since = lab.client.mark()  # a heartbeat before the rule fired would match the older mark
    assert lab.backdoor("julabo plug")["ok"]
    lab.rules(lambda r: not r["chiller_running"]["active"], timeout=15, since=since)
    lab.all_off()


def test_soak_a_loaded_machine_and_a_lossy_line_trip_nothing(lab: SafetyLab) -> None:
    """Every module on, the chiller cooling over a line that loses every 7th reply, both cores
    busy with other work: for SOAK s nothing fires, nothing goes DISCONNECTED or stale."""
    since = cooling_with_hv(lab, *M, volts=60.0)
    start = lab.backdoor("julabo drop-every 7")["chiller_replies_dropped"]
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        no_fired_rule_for(lab, SOAK, since)
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()
        assert lab.backdoor("julabo drop-every 0")["ok"]
    dropped = lab.backdoor("get")["chiller_replies_dropped"] - start
    assert dropped >= 10  # the line did lose replies, and every one was retried
    assert {s["state"] for s in statuses(lab, "/julabo/status", since)} == {"RUNNING"}
    for name in ("sensor_1", "temp_m1", "temp_m4"):
        assert not any(s["stale"] for s in statuses(lab, f"/{name}/status", since)), name
    assert all(on_at(60)(c) for c in lab.hv(lambda m: True).values())
    lab.all_off()
