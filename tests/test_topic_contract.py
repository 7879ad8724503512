"""docs/topics.md against what the running daemon publishes: keys, JSON types and commands."""

from __future__ import annotations

import re

import pytest

from tests.conftest import ROOT
from tests.labdata import EXAMPLE
from trackerdcs.power.service import COMMAND_TABLE
from trackerdcs.topics import ServiceTopics, is_command, split_command

HV, LV = EXAMPLE.channels("hv"), EXAMPLE.channels("lv")  # the lab below starts from it
M = EXAMPLE.modules  # its modules, in the lab file's order

TOPICS_MD = ROOT / "docs" / "topics.md"

JSON_TYPES = {
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, float),  # floats stay floats, even 0.0
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "object": lambda v: isinstance(v, dict),
    "array of string": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
    "string or null": lambda v: v is None or isinstance(v, str),
}


def contract_table(name: str) -> list[list[str]]:
    """Rows of the markdown table between `<!-- contract:NAME -->` and `<!-- /contract -->`."""
    text = TOPICS_MD.read_text()
    match = re.search(rf"<!-- contract:{name} -->\n(.*?)<!-- /contract -->", text, re.S)
    assert match, f"docs/topics.md has no contract table {name!r}"
    rows = [line for line in match.group(1).splitlines() if line.startswith("|")]
    return [[cell.strip().strip("`") for cell in row.strip("|").split("|")] for row in rows[2:]]


def check_object(obj: dict, table: str) -> None:
    spec = {row[0]: row[1] for row in contract_table(table)}
    assert set(obj) == set(spec), f"{table}: published {sorted(obj)}, documented {sorted(spec)}"
    for key, kind in spec.items():
        assert JSON_TYPES[kind](obj[key]), f"{table}.{key}: {obj[key]!r} is not {kind}"


def test_status_and_state_match_the_contract(power_lab):
    lab = power_lab
    assert lab.command(HV[0].topic("switch", by="number"), "on")[
        "ok"
    ]  # an ON and some OFF channels
    lab.wait_channel("/hv", HV[0].name, lambda c: c["state"] in ("RAMPING_UP", "ON"))
    for prefix in ("/hv", "/lv"):
        channels = lab.client.latest(f"{prefix}/status").json
        numbers = [c["number"] for c in channels]
        assert numbers == sorted(numbers) and len(channels) == 4
        for ch in channels:
            check_object(ch, "power-status")
        check_object(lab.client.wait_for(f"{prefix}/state").json, "power-state")


def test_documented_commands_are_the_implemented_ones():
    documented = {row[0].split("/cmd/")[1] for row in contract_table("power-commands")}
    assert documented == {spec.usage for spec in COMMAND_TABLE.values()}


def test_every_command_is_answered_with_the_documented_keys(power_lab):
    response_keys = {"topic", "payload", "ok", "error", "id"}
    for usage in (spec.usage for spec in COMMAND_TABLE.values()):
        topic = "/hv/cmd/" + usage.replace("{ch}", HV[1].name)
        payload = {"setv": "5", "seti": "5", "switch": "off"}.get(usage.split("/")[0], "")
        answer = lab_answer(power_lab, topic, payload)
        assert response_keys <= set(answer), answer
        assert answer["ok"] is True, answer
        if "{ch}" in usage:
            assert answer["channels"] == [HV[1].name]


def lab_answer(lab, topic: str, payload: str) -> dict:
    return lab.client.raw_command(topic, payload, "/hv/response")


# -- chiller and sensors: readings may be null (unknown), never of another type ----------------

NULLABLE_TYPES = {
    **JSON_TYPES,
    "number or null": lambda v: v is None or isinstance(v, float),
    "integer or null": lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool)),
}


def check_nullable_object(obj: dict, table: str) -> None:
    spec = {row[0]: row[1] for row in contract_table(table)}
    assert set(obj) == set(spec), f"{table}: published {sorted(obj)}, documented {sorted(spec)}"
    for key, kind in spec.items():
        assert NULLABLE_TYPES[kind](obj[key]), f"{table}.{key}: {obj[key]!r} is not {kind}"


@pytest.fixture(scope="module")
def contract_chiller(workdir, broker):
    from tests.test_julabo_daemon import STEADY, ChillerLab

    lab = ChillerLab(workdir, broker, "contract-julabo", "tcp", **STEADY).start()  # line kept
    yield lab
    lab.stop()


@pytest.fixture(scope="module")
def contract_sensors(workdir, broker):
    from tests.test_sensors import SensorLab

    lab = SensorLab(workdir, broker, "contract-sensors").start()
    yield lab
    lab.stop()


def test_julabo_status_matches_the_contract_in_every_state(contract_chiller):
    lab = contract_chiller
    assert lab.command("switch", "on")["ok"]
    lab.wait_status(lambda s: s["state"] == "RUNNING")
    lab.sim.inject_fault(-3)
    lab.wait_status(lambda s: s["state"] == "ERROR")
    lab.sim.clear_fault()
    lab.sim.set_remote(False)
    lab.wait_status(lambda s: s["state"] == "MANUAL")
    lab.sim.set_remote(True)
    lab.sim.drop_line()
    lab.wait_status(lambda s: s["state"] == "DISCONNECTED")
    lab.sim.restore_line()
    lab.wait_status(lambda s: s["state"] == "RUNNING", timeout=5)
    seen = [m.json for m in lab.client.messages if m.topic == "/julabo/status"]
    assert {s["state"] for s in seen} == {"DISCONNECTED", "STOPPED", "RUNNING", "ERROR", "MANUAL"}
    for status in seen:
        check_nullable_object(status, "julabo-status")


def test_julabo_documented_commands_are_the_implemented_ones(contract_chiller):
    from trackerdcs.julabo.service import COMMAND_TABLE as JULABO_COMMANDS

    documented = {row[0] for row in contract_table("julabo-commands")}
    julabo = ServiceTopics("/julabo")
    assert documented == {julabo.command(spec.usage) for spec in JULABO_COMMANDS.values()}
    payloads = {"setpoint": "15", "switch": "off"}
    for spec in JULABO_COMMANDS.values():
        answer = contract_chiller.raw(spec.usage, payloads.get(spec.usage, ""))
        assert {"topic", "payload", "ok", "error", "id"} <= set(answer), answer
        assert answer["ok"] is True, answer


def test_sensor_status_matches_the_contract_fresh_and_stale(contract_sensors):
    lab = contract_sensors
    lab.server.set_mode("silent")
    try:
        lab.wait("room_tcp", lambda s: s["stale"], timeout=3)
    finally:
        lab.server.set_mode("ok")
    lab.wait("room_tcp", lambda s: not s["stale"])
    topics = {f"/{name}/status" for name in ("room_tcp", "m1_pty", "room_sim")}
    seen = [m.json for m in lab.client.messages if m.topic in topics]
    assert {(s["kind"], s["stale"]) for s in seen} >= {
        ("room", True), ("room", False), ("module", False)
    }  # fmt: skip
    for status in seen:
        check_nullable_object(status, "sensor-status")


# -- safety: interlocks, alarms, sequencer, audit log (their own broker and power lab) ----------

SAFETY_TYPES = {
    **NULLABLE_TYPES,
    "array of object": lambda v: isinstance(v, list) and all(isinstance(x, dict) for x in v),
    "boolean or null": lambda v: v is None or isinstance(v, bool),
}
CONTRACT_INTERLOCKS = {
    "startup_grace": 0.2,
    "rules": [
        {"name": "chiller_running", "kind": "chiller_running"},
        {"name": "module_temperature", "kind": "module_temperature", "action": "kill"},
        {"name": "heartbeat", "kind": "heartbeat", "action": "none", "sources": {"/temp_m2": 0.5}},
    ],
}


def check_safety_object(obj: dict, table: str) -> None:
    spec = {row[0]: row[1] for row in contract_table(table)}
    assert set(obj) == set(spec), f"{table}: published {sorted(obj)}, documented {sorted(spec)}"
    for key, kind in spec.items():
        assert SAFETY_TYPES[kind](obj[key]), f"{table}.{key}: {obj[key]!r} is not {kind}"


@pytest.fixture(scope="module")
def safety_lab(workdir):
    from tests.conftest import Broker, PowerLab, python_process, serving

    broker = Broker(workdir).start()
    lab = PowerLab(workdir, broker, "contract-safety", interlocks=CONTRACT_INTERLOCKS,
                   alarms={"db": str(workdir / "contract-safety.sqlite")},
                   ivscan={"results_dir": str(workdir / "contract-ivscans"), "settle": 0,
                           "readings": 2, "interval": 0.1})  # fmt: skip
    daemons = [
        python_process(name, f"trackerdcs.safety.{name}_daemon", ["--config", str(lab.config)],
                       workdir / f"contract-safety-{name}.log", ready=serving(ready))
        for name, ready in (("interlock", "serving interlocks"), ("alarms", "serving alarms"),
                            ("dcs", "serving the sequencer"))
    ]  # fmt: skip
    lab.start()
    for daemon in daemons:
        daemon.start()  # ready: connected and subscribed, its prefixes `online`
    yield lab
    for daemon in reversed(daemons):
        daemon.stop()
    lab.stop()
    broker.stop()


def test_interlock_status_and_action_match_the_contract(safety_lab):
    from tests.test_interlocks import sensor

    lab = safety_lab
    since = lab.client.mark()
    lab.client.publish("/temp_m1/status", sensor("temp_m1", 35.0, module=M[0]), retain=True)
    status = lab.client.wait_for("/interlock/status", lambda m: "module_temperature" in
                                 m.json["active"], 5, since).json  # fmt: skip
    check_safety_object(status, "interlock-status")
    assert {r["active"] for r in status["rules"]} == {True, False}
    for rule in status["rules"]:
        check_safety_object(rule, "interlock-rule")
    lab.client.publish("/temp_m1/status", sensor("temp_m1", 20.0, module=M[0]), retain=True)
    lab.client.wait_for("/interlock/action", lambda m: m.json["event"] == "cleared", 5, since)
    events = [m.json for m in lab.client.messages[since:] if m.topic == "/interlock/action"]
    assert {"fired", "cleared"} <= {e["event"] for e in events}
    for event in events:
        check_safety_object(event, "interlock-action")
    answer = lab.client.command("/interlock/cmd/refresh", "", "/interlock/response")
    assert answer["ok"] and {"topic", "payload", "ok", "error", "id"} <= set(answer)


def test_supervision_heartbeat_matches_the_contract(safety_lab):
    lab = safety_lab
    since = lab.client.mark()
    beats = [lab.client.wait_for("/interlock/supervision", timeout=5, since=since)]
    beats.append(lab.client.wait_for("/interlock/supervision", lambda m: m is not beats[0], 5,
                                     lab.client.messages.index(beats[0]) + 1))  # fmt: skip
    for beat in beats:
        assert not beat.retain
        check_safety_object(beat.json, "supervision")
    assert beats[1].json["seq"] == beats[0].json["seq"] + 1


def test_alarms_match_the_contract(safety_lab):
    lab = safety_lab
    alarms = lab.client.wait_for("/alarms", lambda m: m.json["alarms"], 5).json
    check_safety_object(alarms, "alarms")
    for alarm in alarms["alarms"]:
        check_safety_object(alarm, "alarm")
    answer = lab.client.command("/alarms/cmd/ack/all", "", "/alarms/response")
    assert answer["ok"] and isinstance(answer["acknowledged"], list)


def test_sequencer_and_audit_log_match_the_contract(safety_lab):
    lab = safety_lab
    since = lab.client.mark()
    assert lab.command(HV[2].topic("setv", by="module"), 30)["ok"]
    for value in ("on", "off"):
        answer = lab.client.command(f"/dcs/cmd/module/{M[2]}", value, "/dcs/response", 20)
        assert answer["ok"] and {"topic", "payload", "ok", "error", "id"} <= set(answer)
        outcome = answer["modules"][M[2]]
        assert set(outcome) == {"ok", "error", "steps"}
        for step in outcome["steps"]:
            check_safety_object(step, "dcs-step")
    for event in (m.json for m in lab.client.messages[since:] if m.topic == "/dcs/action"):
        check_safety_object(event, "dcs-action")
    status = lab.client.latest("/dcs/status").json
    check_safety_object(status, "dcs-status")
    for module in status["modules"].values():
        check_safety_object(module, "dcs-module")
    answer = lab.client.command("/audit/cmd/query", {"since": "5m"}, "/audit/response")
    assert answer["ok"] and answer["count"] == len(answer["records"]) and not answer["truncated"]
    records = answer["records"] + [m.json for m in lab.client.messages[since:]
                                   if m.topic == "/dcs/log"]  # fmt: skip
    assert {r["kind"] for r in records} == {"command", "action"}
    for record in records:
        check_safety_object(record, "audit-record")


def test_ivscan_status_points_and_actions_match_the_contract(safety_lab):
    from trackerdcs.ivscan.plan import ScanParams

    lab = safety_lab
    idle = lab.client.wait_for("/dcs/ivscan/status").json
    since = lab.client.mark()
    answer = lab.client.command(
        f"/dcs/cmd/ivscan/{M[2]}", {"stop": 20, "step": 10}, "/dcs/response"
    )
    assert answer["ok"] and set(answer["scans"]) == {M[2]}, answer
    ended = lab.client.wait_for("/dcs/ivscan/status", lambda m: m.json["scans"][M[2]]["ended"],
                                20, since).json  # fmt: skip
    assert ended["scans"][M[2]]["outcome"] == "completed", ended
    statuses = [idle] + [m.json for m in lab.client.messages[since:]
                         if m.topic == "/dcs/ivscan/status"]  # fmt: skip
    assert {s["scans"][M[2]]["state"] for s in statuses} >= {"IDLE", "RUNNING", "COMPLETED"}
    for status in statuses:
        check_safety_object(status, "ivscan-status")
        for scan in status["scans"].values():
            check_safety_object(scan, "ivscan-scan")
    points = [m.json for m in lab.client.messages[since:] if m.topic == "/dcs/ivscan/points"]
    assert len(points) == 3 and points[0]["temperature"] is None  # no sensor daemon here
    for point in points:
        check_safety_object(point, "ivscan-point")
    actions = [m.json for m in lab.client.messages[since:] if m.topic == "/dcs/ivscan/action"]
    assert [a["event"] for a in actions] == ["start", "step", "step", "step", "done"]
    for action in actions:
        check_safety_object(action, "ivscan-action")
    documented = {row[0] for row in contract_table("ivscan-params")}
    assert documented == set(ScanParams.model_fields)
    results = lab.client.wait_for("/dcs/ivscan/results", lambda m: any(
        r["scan"] == ended["scans"][M[2]]["scan"] for r in m.json["scans"]), 10).json  # fmt: skip
    check_safety_object(results, "ivscan-results")
    assert results["scans"][0]["scan"] == ended["scans"][M[2]]["scan"], results
    for result in results["scans"]:
        check_safety_object(result, "ivscan-result")


def test_recipe_status_and_actions_match_the_contract(safety_lab):
    lab = safety_lab
    idle = lab.client.wait_for("/dcs/recipe/status").json
    since = lab.client.mark()
    recipe = {"modules": [M[2]], "steps": [
        {"module": "on"}, {"repeat": 2, "steps": [{"hold": 0.2}]},
        {"ivscan": {"stop": 10, "step": 10}}, {"module": "off"}]}  # fmt: skip
    value = {"recipe": recipe, "file": "contract.yml"}
    answer = lab.client.command("/dcs/cmd/recipe/start", value, "/dcs/response")
    assert answer["ok"] and answer["steps"] == 5, answer
    ended = lab.client.wait_for("/dcs/recipe/status", lambda m: m.json["ended"], 30, since).json
    assert ended["outcome"] == "completed", ended
    statuses = [idle] + [m.json for m in lab.client.messages[since:]
                         if m.topic == "/dcs/recipe/status"]  # fmt: skip
    assert {"RUNNING", "COMPLETED"} <= {s["state"] for s in statuses}
    assert any(s["repetition"] == 2 and s["time_left"] is not None for s in statuses)
    for status in statuses:
        check_safety_object(status, "recipe-status")
        for scan in status["scans"]:
            check_safety_object(scan, "recipe-scan")
    actions = [m.json for m in lab.client.messages[since:] if m.topic == "/dcs/recipe/action"]
    assert [a["event"] for a in actions][:: len(actions) - 1] == ["start", "done"]
    for action in actions:
        check_safety_object(action, "recipe-action")


def test_safety_documented_commands_are_the_implemented_ones():
    from trackerdcs.ivscan import service as ivscan
    from trackerdcs.recipe import service as recipe
    from trackerdcs.safety import alarms, audit, interlock, sequencer

    for table, prefix, implemented in (
        ("interlock-commands", "/interlock", interlock.COMMANDS),
        ("alarms-commands", "/alarms", alarms.COMMANDS),
        ("dcs-commands", "/dcs", sequencer.COMMANDS),
        ("audit-commands", "/audit", audit.COMMANDS),
        ("ivscan-commands", "/dcs", ivscan.COMMANDS),
        ("recipe-commands", "/dcs", recipe.COMMANDS),
    ):
        documented = {row[0] for row in contract_table(table)}
        assert documented == {ServiceTopics(prefix).command(c) for c in implemented}, table


# -- topic names: the ones the code builds (trackerdcs/topics.py) --------------------------------
def documented_topics() -> set[str]:
    """Every topic docs/topics.md names in a heading or in a table's first column (`/hv/status`,
    `/<name>/status`, `/dcs/ivscan/...`, `/+/availability`, `/hv/cmd/setv/{ch}`)."""
    found: set[str] = set()
    for line in TOPICS_MD.read_text().splitlines():
        if line.startswith("#"):
            found |= set(re.findall(r"`(/[^`\s]*)`", line))
        elif line.startswith("| `/"):
            found |= set(re.findall(r"`(/[^`\s]*)`", line.split("|")[1]))
    return found


def test_documented_topics_are_the_ones_the_code_builds():
    """Each documented topic is one a service of the example lab uses (tests/test_topics.py
    lists them, as built by trackerdcs.topics); a command topic lies under a service's prefix
    (its commands: the tests above)."""
    from tests.inprocess import example_lab
    from tests.test_topics import lab_topics
    from trackerdcs.topics import INGEST

    built = {t for topics in lab_topics().values() for t in topics if " " not in t}
    built |= {INGEST.status, INGEST.availability}  # the ingest bridge's (not an in-process one)
    sensors = [s.name for s in example_lab().sensors]
    for documented in sorted(documented_topics()):
        for topic in {documented.replace("<name>", n).replace("<sensor>", n) for n in sensors}:
            if topic.endswith("/..."):
                assert any(b.startswith(topic[:-3]) for b in built), topic
            elif is_command(topic) and "+" not in topic:
                prefix, _ = split_command(topic)
                assert any(b.startswith(f"{prefix}/") for b in built), topic
            else:
                assert topic in built or any(b.startswith(f"{topic}/") for b in built), topic
