"""docs/topics.md against what the running daemon publishes: keys, JSON types and commands."""

from __future__ import annotations

import re

import pytest

from tests.conftest import ROOT
from trackerdcs.power.service import COMMAND_TABLE

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
    assert lab.command("/hv/cmd/switch/0", "on")["ok"]  # an ON and some OFF channels
    lab.wait_channel("/hv", "hv_m1", lambda c: c["state"] in ("RAMPING_UP", "ON"))
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
        topic = "/hv/cmd/" + usage.replace("{ch}", "hv_m2")
        payload = {"setv": "5", "seti": "5", "switch": "off"}.get(usage.split("/")[0], "")
        answer = lab_answer(power_lab, topic, payload)
        assert response_keys <= set(answer), answer
        assert answer["ok"] is True, answer
        if "{ch}" in usage:
            assert answer["channels"] == ["hv_m2"]


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
    from tests.test_julabo_daemon import FAST, ChillerLab

    lab = ChillerLab(workdir, broker, "contract-julabo", "tcp", **FAST).start()
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
    assert documented == {f"/julabo/cmd/{spec.usage}" for spec in JULABO_COMMANDS.values()}
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
