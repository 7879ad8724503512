"""The control UI's lab model (node-red/src/model.js, as built into flows.json), run by Node.js
outside Node-RED on a mocked clock: liveness from live statuses only, the server's clock and each
source's status time in every snapshot, the broker connection, the latched alarms and the
interlocks mapped to their modules, who sent a command, and the audit-log queries.
(tests/test_nodered.py runs it for real in Node-RED with a browser.)"""

from __future__ import annotations

import json
import subprocess
from typing import Any

from tests.conftest import ROOT
from trackerdcs.stack.nodered import FLOWS, node_binary

HARNESS = ROOT / "tests" / "ui_model_harness.js"
LAB = {"lab": "t", "power": {}, "chillers": [], "sensors": ["sensor_1"], "modules": [],
       "heartbeats": {"/sensor_1": 2.0}, "liveness_factor": 3}  # fmt: skip
STATUS = {"name": "sensor_1", "kind": "room", "module": "", "temperature": 21.0, "humidity": 40.0,
          "dewpoint": 7.0, "max_temperature": None, "stale": False, "age": 0.2, "error": None,
          "time": 1717171717.0}  # fmt: skip
RULE = {"name": "chiller_running", "kind": "chiller_running", "modules": ["M1", "M2"],
        "action": "ramp_down", "chiller_setpoint": None, "margin": None, "sensor": None,
        "watches": "the chiller stopped cooling", "resettable": True}  # fmt: skip
SAFE_LAB = {**LAB, "power": {"/hv": {"kind": "hv", "crate": "c"}}, "modules": ["M1", "M2"],
            "sensors": ["sensor_1", "temp_m2"], "sequencer": "/dcs", "alarms": "/alarms",
            "audit": "/audit", "interlock": {"prefix": "/interlock", "rules": [RULE]},
            "heartbeats": {"/hv": 10.0, "/sensor_1": 2.0, "/temp_m2": 2.0}}  # fmt: skip


def run_model(steps: list[tuple[float, dict[str, Any]]], lab=LAB) -> list[dict[str, Any]]:
    data = {"lab": lab, "steps": [{"t": t, "msg": msg} for t, msg in steps]}
    done = subprocess.run([node_binary(), str(HARNESS), str(FLOWS)], input=json.dumps(data),
                          capture_output=True, text=True, timeout=30, check=True)  # fmt: skip
    return [json.loads(line) for line in done.stdout.splitlines()]


def status(retain: bool) -> dict[str, Any]:
    return {"topic": "/sensor_1/status", "payload": STATUS, "retain": retain}


def channel(name: str, module: str, state: str = "OFF", t: float = 1000.0) -> dict[str, Any]:
    return {"number": int(name[-1]), "name": name, "module": module, "on": int(state == "ON"),
            "vreq": 0.0, "vmon": 0.0, "imon": 0.0, "ilim": 10.0, "status": 0, "flags": [],
            "state": state, "interlocks": [], "time": t}  # fmt: skip


def command(prefix: str, action: str, target: Any = None, value: Any = "on", **msg: Any) -> dict:
    payload = {"prefix": prefix, "action": action, "target": target, "value": value}
    payload.update(msg.pop("payload", {}))
    return {"topic": "ui/command", "payload": payload, **msg}


TICK = {"topic": "ui/tick"}


def sensor_row(result: dict[str, Any]) -> dict[str, Any]:
    return result["snapshot"]["environment"]["room"][0]


def test_only_live_statuses_keep_a_source_alive():
    results = run_model([
        (0.0, {"topic": "/sensor_1/availability", "payload": "online", "retain": True}),
        (0.1, status(retain=True)),  # the broker's stored copy: maybe from a dead daemon
        (3.0, status(retain=False)),  # live
        (8.5, TICK),  # 5.5 s after the live one: within 3 x 2 s
        (9.5, status(retain=True)),  # the broker restarted from its persistence
        (9.6, TICK),  # 6.6 s since the last live status: stale, whatever the broker says
        (10.0, status(retain=False)),  # the daemon is back
        (10.1, TICK),
    ])  # fmt: skip
    assert sensor_row(results[1])["available"] == "online" and sensor_row(results[1])["ok"]
    assert sensor_row(results[3])["available"] == "online"
    stale = sensor_row(results[5])
    assert stale["available"] == "stale" and stale["ok"] is False
    texts = [a["text"] for a in results[5]["snapshot"]["conditions"]]
    assert "sensor sensor_1: no live data for 6 s" in texts
    assert sensor_row(results[7])["available"] == "online" and sensor_row(results[7])["ok"]


def test_a_source_only_ever_seen_retained_goes_stale_from_the_start():
    results = run_model([
        (0.0, {"topic": "/sensor_1/availability", "payload": "online", "retain": True}),
        (0.1, status(retain=True)),
        (6.5, TICK),
    ])  # fmt: skip
    assert sensor_row(results[2])["available"] == "stale"


def test_every_tick_sends_the_servers_clock_and_each_sources_status_time():
    """The pages count ages against `time` (the server's clock, ms), from each source's status
    `time` (unix s, the daemon's clock), and grey out what is older than `timeout`."""
    results = run_model([(1717171718.0, status(retain=False)), (1717171725.0, TICK)])
    snap = results[1]["snapshot"]
    assert snap["time"] == 1717171725000  # a fresh snapshot at every tick, with nothing new
    assert snap["sources"]["/sensor_1"] == {"what": "sensor", "available": "stale",
                                            "time": 1717171717.0, "timeout": 6.0}  # fmt: skip


def test_a_sensor_of_the_lab_never_heard_from_has_no_age_and_goes_stale():
    results = run_model([(1.0, TICK), (7.5, TICK)])  # 3 x 2 s after the flows started
    assert results[0]["snapshot"]["sources"]["/sensor_1"]["time"] is None  # no age: greyed
    assert results[1]["snapshot"]["sources"]["/sensor_1"]["available"] == "stale"
    assert "sensor sensor_1: no live data for 6 s" in [
        c["text"] for c in results[1]["snapshot"]["conditions"]
    ]


def test_the_broker_connection_comes_from_the_status_node():
    def broker(fill: str) -> dict[str, Any]:
        return {"status": {"fill": fill, "shape": "dot", "text": "x", "source": {"id": "mqtt in"}}}

    results = run_model([(5.0, broker("green")), (9.0, broker("red")), (9.5, broker("yellow")),
                         (20.0, broker("green"))])  # fmt: skip
    states = [r["snapshot"]["broker"] for r in results]
    assert [(b["connected"], b["since"]) for b in states] == [
        (True, 5000), (False, 9000), (False, 9000), (True, 20000)
    ]  # fmt: skip


def test_each_chiller_has_its_own_entry_age_bath_and_commands():
    """Two chillers: each its own status, availability, data age (its prefix's status `time`)
    and bath against the dew point; the conditions name the unit; commands go to either."""
    chillers = [
        {"name": "coldbox", "prefix": "/julabo", "setpoint": [-30, 40], "modules": ["M1"]},
        {"name": "burnin", "prefix": "/burnin", "setpoint": [0, 60], "modules": ["M2"]},
    ]  # fmt: skip
    lab = {**LAB, "chillers": chillers, "heartbeats": {"/sensor_1": 2.0, "/julabo": 1.0,
                                                       "/burnin": 1.0}}  # fmt: skip

    def chiller(prefix: str, bath: float, t: float, state: str = "RUNNING") -> dict[str, Any]:
        return {"topic": f"{prefix}/status", "payload": {"state": state, "bath_temp": bath,
                                                         "error": None, "time": t}}  # fmt: skip

    steps = [
        (1.0, status(retain=False)),
        (1.1, chiller("/julabo", -10.0, 1.0)),
        (1.2, chiller("/burnin", 20.0, 1.1, state="ERROR")),
        (1.3, {"topic": "/burnin/availability", "payload": "online"}),
        (1.4, command("/burnin", "setpoint", None, "25")),
        (1.5, command("/julabo", "switch", None, "off")),
    ]
    results = run_model(steps, lab)
    snap = results[3]["snapshot"]
    coldbox, burnin = snap["chillers"]
    assert (coldbox["name"], coldbox["label"], coldbox["modules"]) == ("coldbox", "chiller coldbox",
                                                                       ["M1"])  # fmt: skip
    assert coldbox["status"]["bath_temp"] == -10.0 and coldbox["available"] is None
    assert (burnin["status"]["state"], burnin["available"]) == ("ERROR", "online")
    assert snap["sources"]["/julabo"]["time"] == 1.0 and snap["sources"]["/burnin"]["time"] == 1.1
    assert snap["sources"]["/burnin"]["what"] == "chiller"
    baths = {s["chiller"]: s["margin"] for s in snap["environment"]["surfaces"] if "chiller" in s}
    assert baths == {"coldbox": -17.0, "burnin": 13.0}  # against the dew point 7 °C
    assert [c["text"] for c in snap["conditions"]] == ["chiller burnin ERROR"]
    assert [r["out"][1]["topic"] for r in results[4:]] == ["/burnin/cmd/setpoint",
                                                           "/julabo/cmd/switch"]  # fmt: skip


def test_every_command_carries_its_send_time_and_who_sent_it():
    lab = {**LAB, "power": {"/hv": {"kind": "hv"}}}
    click = command("/hv", "switch", "hv_m1", payload={"operator": "Night Owl:1"})
    logged_in = command("/hv", "switch", "hv_m1", _client={"user": {"username": "alice"}})
    nobody = command("/hv", "kill", 0)
    [first, second, anonymous] = run_model(
        [(1717171717.25, click), (1717171718.0, logged_in), (1717171719.0, nobody)], lab
    )
    sent = first["out"][1]
    assert sent["topic"] == "/hv/cmd/switch/hv_m1" and sent["retain"] is False
    payload = json.loads(sent["payload"])
    assert payload["time"] == 1717171717.25 and payload["value"] == "on"
    assert payload["id"].startswith("Night_Owl_1:ui-")  # the audit log's sender: before the `:`
    assert json.loads(second["out"][1]["payload"])["id"].startswith("alice:ui-")  # a login wins
    assert json.loads(anonymous["out"][1]["payload"])["id"].startswith("ui:ui-")
    entry = anonymous["snapshot"]["answers"][2]
    assert entry["by"] == "Night_Owl_1" and entry["state"] == "pending"


def test_the_safety_services_take_their_own_commands_only():
    steps = [
        command("/dcs", "module", "M1", "on"),
        command("/alarms", "ack", 3, ""),
        command("/interlock", "reset", "chiller_running", ""),
        command("/dcs", "switch", "M1", "on"),  # not a sequencer command
        command("/alarms", "ack", "3/#", ""),  # no wildcards or levels in a target
        command("/nowhere", "switch", "x"),
    ]
    results = run_model([(1.0 + i, m) for i, m in enumerate(steps)], SAFE_LAB)
    topics = [r["out"][1]["topic"] if r["out"] else None for r in results]
    assert topics == ["/dcs/cmd/module/M1", "/alarms/cmd/ack/3",
                      "/interlock/cmd/reset/chiller_running", None, None, None]  # fmt: skip


def test_latched_alarms_are_counted_and_shown_on_their_modules():
    alarms = [
        {"id": 1, "severity": "major", "source": "/hv", "text": "hv_m2 (M2) TRIPPED: INT_TRIP",
         "key": "channel:/hv:hv_m2", "active": False, "acknowledged": True, "time": 1.0},
        {"id": 2, "severity": "critical", "source": "/interlock",
         "key": "interlock:chiller_running",
         "text": "interlock chiller_running fired: chiller STOPPED", "active": True,
         "acknowledged": False, "time": 2.0},
        {"id": 3, "severity": "major", "source": "/julabo", "text": "/julabo daemon offline",
         "key": "offline:/julabo", "active": True, "acknowledged": False, "time": 3.0},
        {"id": 4, "severity": "minor", "source": "/temp_m2", "text": "sensor temp_m2 stale",
         "key": "stale:/temp_m2", "active": True, "acknowledged": True, "time": 4.0},
    ]  # fmt: skip
    temp_m2 = {**STATUS, "name": "temp_m2", "kind": "module", "module": "M2", "humidity": None}
    steps = [
        (1.0, {"topic": "/hv/status", "payload": [channel("hv_m1", "M1"), channel("hv_m2", "M2")]}),
        (1.1, {"topic": "/temp_m2/status", "payload": temp_m2}),
        (1.2, {"topic": "/interlock/status", "payload": {"rules": [
            {"name": "chiller_running", "active": True, "modules": ["M1", "M2"], "armed": True,
             "reason": "chiller STOPPED", "since": 2.0}], "time": 2.0}}),
        (1.3, {"topic": "/alarms", "payload": {"alarms": alarms, "active": 3, "unacknowledged": 2,
                                               "time": 4.0}, "retain": True}),
    ]  # fmt: skip
    snap = run_model(steps, SAFE_LAB)[-1]["snapshot"]
    latched = snap["alarms"]
    assert latched["known"] and latched["unacknowledged"] == 2
    assert latched["counts"]["critical"] == {"listed": 1, "active": 1, "unacknowledged": 1}
    assert latched["counts"]["major"] == {"listed": 2, "active": 1, "unacknowledged": 1}
    assert latched["newest"]["id"] == 3  # the newest unacknowledged
    modules = {m["name"]: m for m in snap["modules"]}
    assert [a["id"] for a in modules["M1"]["alarms"]] == [2]
    assert [a["id"] for a in modules["M2"]["alarms"]] == [4, 2, 1]  # newest first
    assert [a["id"] for a in latched["list"] if not a["modules"]] == [3]  # the lab's own
    assert [i["name"] for i in modules["M1"]["interlocks"]] == ["chiller_running"]
    rule = snap["interlock"]["rules"][0]
    assert rule["modules"] == ["M1", "M2"] and rule["holding"] == ["M1", "M2"] and rule["active"]


def test_a_module_says_which_interlock_took_its_hv_down_until_it_is_on_again():
    fired = {"time": 50.0, "source": "interlock", "event": "fired", "rule": "chiller_running",
             "modules": ["M1", "M2"], "text": "chiller STOPPED (REMOTE STOP)",
             "commands": ["/hv/cmd/switch/M1"]}  # fmt: skip

    def hv(m1: str, t: float) -> dict[str, Any]:
        return {
            "topic": "/hv/status",
            "payload": [channel("hv_m1", "M1", m1, t), channel("hv_m2", "M2", t=t)],
        }

    steps = [(1.0, hv("ON", 49.0)), (2.0, {"topic": "/interlock/action", "payload": fired}),
             (3.0, hv("OFF", 51.0)), (4.0, hv("ON", 60.0)), (5.0, hv("OFF", 70.0))]  # fmt: skip
    results = run_model(steps, SAFE_LAB)
    m1 = results[2]["snapshot"]["modules"][0]
    assert m1["interlock_action"] == {"rule": "chiller_running", "event": "fired", "time": 50.0,
                                      "text": "chiller STOPPED (REMOTE STOP)", "verb": "switch",
                                      "commands": ["/hv/cmd/switch/M1"]}  # fmt: skip
    assert results[2]["snapshot"]["modules"][1]["interlock_action"] is None  # its HV was off
    rule = results[2]["snapshot"]["interlock"]["rules"][0]  # the rule says what it did last
    assert rule["last_action"] == {"event": "fired", "time": 50.0, "text": fired["text"],
                                   "commands": ["/hv/cmd/switch/M1"]}  # fmt: skip
    assert results[3]["snapshot"]["modules"][0]["interlock_action"] is None  # on again
    assert results[4]["snapshot"]["modules"][0]["interlock_action"] is None  # a later switch-off


def test_audit_queries_are_answered_to_the_asking_browser_only():
    ask = {"topic": "ui/history", "payload": {"since": "8h", "module": "M1", "kind": "",
                                              "limit": 5000, "operator": "bob"},
           "_client": {"socketId": "abc"}}  # fmt: skip
    broker_up = {"status": {"fill": "green", "source": {"id": "x"}}}
    results = run_model([(1.0, ask), (1.1, broker_up), (1.2, TICK)], SAFE_LAB)
    query = results[0]["out"][1]
    assert query["topic"] == "/audit/cmd/query"
    payload = json.loads(query["payload"])
    assert payload["value"] == {"since": "8h", "module": "M1", "limit": 1000}
    assert payload["id"].startswith("bob:ui-")
    recent = json.loads(results[2]["out"][1]["payload"])  # once connected: recent interlock actions
    assert recent["value"] == {
        "since": "12h",
        "source": "interlock",
        "kind": "action",
        "limit": 500,
    }

    action = {"time": 7.0, "event": "fired", "rule": "chiller_running", "modules": ["M2"],
              "text": "chiller STOPPED", "commands": ["/hv/cmd/switch/M2"]}  # fmt: skip
    answers = [
        {"topic": "/audit/response", "payload": {"id": payload["id"], "ok": True, "count": 1,
                                                 "truncated": False, "records": [{"seq": 1}]}},
        {"topic": "/audit/response", "payload": {"id": "someone:else", "ok": True, "records": []}},
        {"topic": "/audit/response", "payload": {"id": recent["id"], "ok": True, "records": [
            {"seq": 2, "payload": json.dumps(action)}]}},
        TICK,
    ]  # fmt: skip
    results = run_model([(1.0, ask), (1.1, broker_up), (1.2, TICK)]
                        + [(2.0 + i, m) for i, m in enumerate(answers)], SAFE_LAB)  # fmt: skip
    [history] = results[3]["sent"]
    assert history["topic"] == "history" and history["_client"] == {"socketId": "abc"}
    assert history["payload"]["records"] == [{"seq": 1}] and history["payload"]["ok"]
    assert results[4]["sent"] == [] and results[5]["sent"] == []  # another's; the model's own
    snap = results[6]["snapshot"]
    assert snap["answers"] == []  # queries are no commands to list
    assert snap["modules"][1]["interlock_action"]["rule"] == "chiller_running"
    assert results[6]["out"] is None  # answered: not asked again
