"""The control UI's lab model (node-red/src/model.js, as built into flows.json), run by Node.js
outside Node-RED on a mocked clock: liveness from live statuses only, and the send time in every
command. (tests/test_nodered.py runs it for real in Node-RED with a browser.)"""

from __future__ import annotations

import json
import subprocess
from typing import Any

from tests.conftest import ROOT
from trackerdcs.stack.nodered import FLOWS, node_binary

HARNESS = ROOT / "tests" / "ui_model_harness.js"
LAB = {"lab": "t", "power": {}, "julabo": None, "sensors": ["sensor_1"], "modules": [],
       "heartbeats": {"/sensor_1": 2.0}, "liveness_factor": 3}  # fmt: skip
STATUS = {"name": "sensor_1", "kind": "room", "module": "", "temperature": 21.0, "humidity": 40.0,
          "dewpoint": 7.0, "max_temperature": None, "stale": False, "age": 0.2, "error": None,
          "time": 1717171717.0}  # fmt: skip


def run_model(steps: list[tuple[float, dict[str, Any]]], lab=LAB) -> list[dict[str, Any]]:
    data = {"lab": lab, "steps": [{"t": t, "msg": msg} for t, msg in steps]}
    done = subprocess.run([node_binary(), str(HARNESS), str(FLOWS)], input=json.dumps(data),
                          capture_output=True, text=True, timeout=30, check=True)  # fmt: skip
    return [json.loads(line) for line in done.stdout.splitlines()]


def status(retain: bool) -> dict[str, Any]:
    return {"topic": "/sensor_1/status", "payload": STATUS, "retain": retain}


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
    texts = [a["text"] for a in results[5]["snapshot"]["alarms"]]
    assert "sensor sensor_1: no live data for 6 s" in texts
    assert sensor_row(results[7])["available"] == "online" and sensor_row(results[7])["ok"]


def test_a_source_only_ever_seen_retained_goes_stale_from_the_start():
    results = run_model([
        (0.0, {"topic": "/sensor_1/availability", "payload": "online", "retain": True}),
        (0.1, status(retain=True)),
        (6.5, TICK),
    ])  # fmt: skip
    assert sensor_row(results[2])["available"] == "stale"


def test_every_command_carries_its_send_time():
    lab = {**LAB, "power": {"/hv": {"kind": "hv"}}}
    click = {"topic": "ui/command", "payload": {"prefix": "/hv", "action": "switch",
                                                "target": "hv_m1", "value": "on"}}  # fmt: skip
    [result] = run_model([(1717171717.25, click)], lab)
    command = result["out"][1]
    assert command["topic"] == "/hv/cmd/switch/hv_m1" and command["retain"] is False
    assert json.loads(command["payload"])["time"] == 1717171717.25
    assert json.loads(command["payload"])["value"] == "on"
