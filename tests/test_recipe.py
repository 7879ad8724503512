"""Thermal-cycle recipes end to end on the virtual lab, every process real: the simulators
(thermal physics 300 times faster than the wall clock, so a chiller step takes about a second),
the power, chiller and sensor daemons, the interlock, alarm/audit and dcs daemons, Mosquitto.

Two cycles paused and resumed; an interlock that aborts a run (everything left safe) and one
that pauses it (resume refused until it clears, then everything restored); a set point too
close to the dew point waits, or fails; bad recipe files refused before anything moves.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT, Broker
from tests.labdata import EXAMPLE
from tests.test_ivscan import IvLab
from trackerdcs.client import CommandRefused
from trackerdcs.stack.process import wait_until

M = EXAMPLE.modules  # the lab's modules (the recipe lab starts from the example), in order

MODULES = M[:2]
STABLE = {"tolerance": 0.5, "stable_for": 0.5}
SCAN = {"stop": 40, "step": 20, "settle": 0, "readings": 1, "end": "previous"}


def cycles(n: int = 2, hold: float = 1.5, **head: Any) -> dict[str, Any]:
    """A short recipe: 20 C and stable, M1 and M2 on, `n` cycles (15 C, hold, scan, 20 C,
    hold), M1 and M2 off."""
    return {
        "name": "cycles", "modules": MODULES, **head,
        "steps": [
            {"setpoint": 20}, {"wait_stable": STABLE}, {"module": "on"},
            {"repeat": n, "steps": [
                {"setpoint": 15}, {"wait_stable": STABLE}, {"hold": hold}, {"ivscan": SCAN},
                {"setpoint": 20}, {"wait_stable": STABLE}, {"hold": 0.5},
            ]},
            {"module": "off"},
        ],
    }  # fmt: skip


class RecipeLab(IvLab):
    """The IV scan lab, its recipe status published every second at least."""

    def __init__(self, workdir: Path, broker: Broker, name: str) -> None:
        super().__init__(workdir, broker, name)
        data = yaml.safe_load(self.config.read_text())
        data["recipes"] = {"heartbeat": 1.0}
        self.config.write_text(yaml.safe_dump(data, sort_keys=False))

    def status(self, predicate, timeout: float = 30.0, since: int | None = None) -> dict:
        return self.wait("/dcs/recipe/status", predicate, timeout, since)

    def modules_off(self, modules: list[str] = MODULES) -> None:
        """Every channel of `modules` off at 0 V, as the power daemon says."""
        for prefix in ("/hv", "/lv"):
            self.wait(f"{prefix}/status", lambda chs: all(
                c["on"] == 0 and c["state"] == "OFF" and abs(c["vmon"]) < 0.5
                for c in chs if c["module"] in modules), 20, since=0)  # fmt: skip


@pytest.fixture(scope="module")
def rlab(workdir: Path, broker: Broker) -> Iterator[RecipeLab]:
    lab = RecipeLab(workdir, broker, "recipe").start()
    lab.rules(lambda r: not any(rule["active"] for rule in r.values()), since=0)
    yield lab
    assert lab.stop() == [0] * 7


@pytest.fixture
def lab(rlab: RecipeLab) -> RecipeLab:
    rlab.reset()
    for module in MODULES:
        assert rlab.command(f"/hv/cmd/setv/{module}", 50)["ok"]
    if not rlab.client.latest("/julabo/status").json["running"]:
        assert rlab.command("/julabo/cmd/switch", "on")["ok"]
    rlab.rules(lambda r: not any(rule["active"] for rule in r.values()), since=0)
    return rlab


def test_two_cycles_paused_and_resumed(lab: RecipeLab) -> None:
    assert lab.alice is not None
    since = lab.client.mark()
    answer = lab.alice.start_recipe(cycles(), file="cycles.yml")
    run = answer["run"]
    assert answer["recipe"] == "cycles" and answer["steps"] == 18 and run.startswith("cycles-")

    # paused in the first cycle's hold: the hold's time left is frozen, the modules stay on
    lab.status(lambda s: s["path"] == "4.3" and s["time_left"] is not None)
    assert lab.alice.pause_recipe()["run"] == run
    paused = lab.status(lambda s: s["state"] == "PAUSED")
    assert paused["repetition"] == 1 and paused["repetitions"] == 2 and paused["step"] == 6
    assert paused["paused"] == "paused by alice" and 0 < paused["time_left"] <= 1.5
    assert paused["min_time_left"] == pytest.approx(paused["time_left"] + 0.5 + 2.0, abs=0.05)
    assert lab.status(lambda s: s["state"] == "PAUSED")["time_left"] == paused["time_left"]
    assert all(c["state"] == "ON" for c in lab.client.latest("/hv/status").json
               if c["module"] in MODULES)  # fmt: skip
    with pytest.raises(CommandRefused, match="already paused"):
        lab.alice.pause_recipe()

    resumed = lab.client.mark()
    assert lab.alice.resume_recipe()["run"] == run
    again = lab.status(lambda s: s["state"] == "RUNNING", since=resumed)
    assert again["path"] == "4.3" and again["time_left"] <= paused["time_left"]
    final = lab.alice.wait_recipe(run, timeout=90)
    assert final["state"] == "COMPLETED" and final["outcome"] == "completed", final
    assert final["step"] == final["steps"] == 18
    lab.modules_off()

    # its four scans, linked both ways by id
    assert [(s["module"], s["path"], s["outcome"]) for s in final["scans"]] == [
        (M[0], "4.4", "completed"), (M[1], "4.4", "completed")] * 2  # fmt: skip
    scans = lab.client.latest("/dcs/ivscan/status").json["scans"]
    assert {scans[m]["recipe"] for m in MODULES} == {run}
    assert {scans[m]["scan"] for m in MODULES} <= {s["scan"] for s in final["scans"]}
    record = json.loads((lab.results / "recipes" / f"{run}.json").read_text())
    assert record["outcome"] == "completed" and len(record["log"]) == 18
    assert [e["path"] for e in record["log"][:4]] == ["1", "2", "3", "4.1"]

    # every status carries time; each step is in the audit log
    statuses = [m.json for m in lab.client.messages[since:] if m.topic == "/dcs/recipe/status"]
    assert all(isinstance(s["time"], float) for s in statuses)
    assert {s["repetition"] for s in statuses if s["run"] == run} >= {1, 2}
    events = [r["event"] for r in lab.audit(source="recipe", kind="action", since="5m")
              if run in r["payload"]]  # fmt: skip
    assert events[0] == "start" and events[-1] == "done"
    assert events.count("step") == 18 and events.count("step_done") == 18
    assert {"pausing", "paused", "resumed"} <= set(events)
    sent = {r["topic"] for r in lab.audit(source="recipe", kind="command", since="5m")}
    assert {"/julabo/cmd/setpoint", f"/dcs/cmd/module/{M[0]}", f"/dcs/cmd/ivscan/{M[1]}"} <= sent


def test_an_interlock_aborts_the_run_and_leaves_everything_safe(lab: RecipeLab) -> None:
    assert lab.alice is not None
    recipe = cycles(1, hold=60, safe_setpoint=22)
    run = lab.alice.start_recipe(recipe, file="abort.yml")["run"]
    lab.status(lambda s: s["path"] == "4.3" and s["time_left"] is not None)
    since = lab.client.mark()
    assert lab.backdoor("julabo stop")["ok"]  # the chiller's front panel: chiller_running fires
    try:
        final = lab.alice.wait_recipe(run, timeout=60)
        assert final["state"] == "ABORTED" and final["outcome"] == "interlock", final
        assert final["reason"].startswith("interlock chiller_running: chiller STOPPED")
        assert f"{M[0]}, {M[1]} switched off (sequencer)" in final["reason"]
        assert "chiller set to 22 °C" in final["reason"]
        lab.modules_off()  # HV and LV of both
        lab.wait("/julabo/status", lambda s: s["setpoint"] == 22.0, 5, since)
        events = [m.json["event"] for m in lab.client.messages[since:]
                  if m.topic == "/dcs/recipe/action"]  # fmt: skip
        assert events[-1] == "aborted"
    finally:
        assert lab.command("/julabo/cmd/switch", "on")["ok"]
        lab.rules(lambda r: not r["chiller_running"]["active"])


def test_an_interlock_pauses_the_run_until_it_clears_then_restores_it(lab: RecipeLab) -> None:
    assert lab.alice is not None
    recipe = cycles(1, hold=3, on_interlock="pause")
    run = lab.alice.start_recipe(recipe, file="pause.yml")["run"]
    lab.status(lambda s: s["path"] == "4.3" and s["time_left"] is not None)
    assert lab.backdoor("set room_humidity=80")["ok"]  # dew point 17.4 C: above the modules
    try:
        paused = lab.status(lambda s: s["state"] == "PAUSED" and "switched off" in s["paused"])
        assert paused["paused"].startswith("interlock dewpoint")
        lab.modules_off()  # the interlock ramped the HV down; the run switched both modules off
        with pytest.raises(CommandRefused, match="still held by interlock dewpoint"):
            lab.alice.resume_recipe()
    finally:
        assert lab.backdoor("set room_humidity=45")["ok"]
    lab.rules(lambda r: not r["dewpoint"]["active"])
    assert lab.alice.resume_recipe()["run"] == run
    # restored: the set point the rule had raised back to 15 C and stable, both modules on,
    # then the hold goes on with what it had left
    lab.status(lambda s: s["state"] == "RUNNING" and s["path"] == "4.3")
    final = lab.alice.wait_recipe(run, timeout=60)
    assert final["outcome"] == "completed", final
    events = [r for r in lab.audit(source="recipe", kind="action", since="5m")
              if run in r["payload"]]  # fmt: skip
    restored = next(r["text"] for r in events if r["event"] == "restored")
    assert "set point 15 °C" in restored and f"{M[0]}, {M[1]} on again" in restored
    commands = [r for r in lab.audit(since="5m", kind="command") if r["time"] >= events[0]["time"]]
    setpoints = [(r["source"], json.loads(r["payload"])["value"]) for r in commands
                 if r["topic"] == "/julabo/cmd/setpoint"]  # fmt: skip
    ours = [value for source, value in setpoints if source == "recipe"]
    assert ours == [20, 15, 15, 20]  # 20, 15, then restored to 15 after the rule, then 20
    raised = setpoints.index(("interlock", 20))
    assert setpoints[1] == ("recipe", 15) and setpoints[raised + 1 :].count(("recipe", 15)) == 1


def test_a_set_point_too_close_to_the_dew_point_waits_or_fails(lab: RecipeLab) -> None:
    assert lab.alice is not None
    cold = {"name": "cold", "modules": [M[0]], "steps": [{"setpoint": 10}, {"hold": 0.1}]}
    final = lab.alice.start_recipe({**cold, "dewpoint": "fail"}, wait=True, timeout=30)
    assert final["outcome"] == "failed" and final["step"] == 1, final
    assert ("set point 10 °C is below the dew point 8.6 °C + 2 K margin (10.6 °C): the air is "
            "too humid (dewpoint: fail)") in final["reason"]  # fmt: skip

    run = lab.alice.start_recipe(cold)["run"]
    waiting = lab.status(lambda s: s["run"] == run and s["waiting"])
    assert waiting["waiting"].startswith("set point 10 °C is below the dew point 8.6 °C")
    assert lab.client.latest("/julabo/status").json["setpoint"] != 10.0  # not sent
    assert lab.backdoor("set room_humidity=30")["ok"]  # dew point 2.6 C
    try:
        final = lab.alice.wait_recipe(run, timeout=30)
    finally:
        assert lab.backdoor("set room_humidity=45")["ok"]
    assert final["outcome"] == "completed", final
    assert lab.client.latest("/julabo/status").json["setpoint"] == 10.0
    assert lab.command("/julabo/cmd/setpoint", 20)["ok"]


def test_bad_recipes_are_refused_before_anything_moves(lab: RecipeLab, tmp_path: Path) -> None:
    assert lab.alice is not None
    bad = tmp_path / "bad.yml"
    bad.write_text(yaml.safe_dump({"modules": [M[0], "M9"], "steps": [
        {"setpoint": 15}, {"repeat": 2, "steps": [{"hold": "ten minutes"}, {"module": "up"}]},
        {"ivscan": {"stop": 900, "step": 10}},
    ]}, sort_keys=False))  # fmt: skip
    since = lab.client.mark()
    done = subprocess.run(
        [sys.executable, "-m", "trackerdcs.cli", "recipe", "run", str(bad), "--config",
         str(lab.config), "--name", "bob"], capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        f"{bad}: invalid recipe",
        "  step 2.1 (steps.1.steps.0), hold: not a duration: 'ten minutes' (seconds, or 90s, "
        "10m, 2h, 1d)",
        "  step 2.2 (steps.1.steps.1), module: on or off, got 'up'",
    ]
    done = subprocess.run(
        [sys.executable, "-m", "trackerdcs.cli", "recipe", "check", str(bad), "--config",
         str(lab.config)], capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 2 and "step 2.1 (steps.1.steps.0), hold" in done.stderr

    # sent anyway: the daemon refuses it, and then what the lab does not allow
    hv, known = EXAMPLE.channel("hv", 0), ", ".join(EXAMPLE.modules)  # the lab starts from it
    refusals = {
        "a mapping": (42, "start takes a recipe name or a path, got 42"),
        "no file": ("nothere", "no recipe 'nothere' in"),
        "the steps": ({"recipe": yaml.safe_load(bad.read_text()), "file": "bad.yml"},
                      "bad.yml: invalid recipe; step 2.1 (steps.1.steps.0), hold: not a duration"),
        "the lab": ({"recipe": {"modules": [hv.module, "M9"], "steps": [
            {"setpoint": -50}, {"ivscan": {"stop": 900, "step": 10}}]}, "file": "lab.yml"},
            f"lab.yml: invalid recipe; modules: no power channel powers M9 (known: {known}); "
            "step 1 (steps.0), setpoint: -50 °C is outside chiller julabo's range -30..40 "
            f"°C (setpoint_min/setpoint_max); step 2 (steps.1), ivscan: {hv.module}: stop: 900 V "
            f"exceeds the maximum 600 V of {hv.name}"),
    }  # fmt: skip
    for what, (value, error) in refusals.items():
        with pytest.raises(CommandRefused) as refused:
            lab.alice.command("/dcs/cmd/recipe/start", value)
        assert refused.value.error.startswith(error), (what, refused.value.error)
    # a recipe whose module is busy, or held by an interlock
    assert lab.alice.iv_scan(M[1], wait=False, stop=300, step=5, settle=0.2)["ok"]
    with pytest.raises(CommandRefused, match=f"{M[1]} is scanning"):
        lab.alice.start_recipe({"modules": [M[1]], "steps": [{"hold": 1}]})
    lab.alice.stop_iv_scan(M[1])
    lab.wait("/dcs/ivscan/status", lambda s: s["scans"][M[1]]["ended"], 20)
    lab.modules_off([M[1]])
    sent = [m.topic for m in lab.client.messages[since:] if "/cmd/" in m.topic
            and b'"id": "recipe:' in m.payload]  # fmt: skip
    assert not sent  # no recipe ran: it sent nothing
    assert not [m for m in lab.client.messages[since:] if m.topic == "/dcs/recipe/action"]


def test_trackerdcs_recipe_run_follows_the_run_with_its_progress(
    lab: RecipeLab, tmp_path: Path
) -> None:
    """`trackerdcs recipe run FILE`: checked, started, followed step by step to its end, the
    outcome and its scans printed, exit status 0; the modules left off."""
    recipe = {"modules": [M[0]], "steps": [
        {"module": "on"}, {"repeat": 2, "steps": [{"hold": 0.3}]}, {"ivscan": SCAN},
        {"module": "off"}]}  # fmt: skip
    path = tmp_path / "short.yml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    done = subprocess.run(
        [sys.executable, "-m", "trackerdcs.cli", "recipe", "run", str(path), "--config",
         str(lab.config), "--name", "carol"], capture_output=True, text=True, timeout=120,
        cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, (done.stdout, done.stderr)
    progress = done.stderr.splitlines()
    assert progress[0].startswith("recipe short: run short-") and progress[0].endswith("(5 steps)")
    assert any(line.startswith("[3/5] step 2.1 (repetition 2/2): hold") for line in progress)
    assert progress[-1].startswith("[5/5] step 4: ") and progress[-1].endswith("COMPLETED")
    report = done.stdout.splitlines()
    assert report[0].startswith("short short-") and ": completed: " in report[0]
    assert report[1].startswith(f"  IV scan {M[0]}-") and report[1].endswith(
        f"({M[0]}, step 3): completed"
    )
    started = [r for r in lab.audit(source="carol", kind="command", since="5m")
               if r["topic"] == "/dcs/cmd/recipe/start"]  # fmt: skip
    assert started and started[-1]["ok"] is True  # sent as carol, accepted
    lab.modules_off([M[0]])


def test_paused_while_waiting_for_a_stable_bath_and_resumed(lab: RecipeLab) -> None:
    """A pause takes effect at once in a wait; resumed, the wait starts again and the run goes
    on to its end."""
    assert lab.alice is not None
    recipe = {"modules": [M[0]], "steps": [
        {"setpoint": 20}, {"wait_stable": {"tolerance": 0.5, "stable_for": 3}},
        {"hold": 0.2}]}  # fmt: skip
    run = lab.alice.start_recipe(recipe, file="wait.yml")["run"]
    lab.status(lambda s: s["path"] == "2" and s["state"] == "RUNNING")
    lab.alice.pause_recipe()
    paused = lab.status(lambda s: s["state"] == "PAUSED")
    assert paused["path"] == "2", paused
    resumed = lab.client.mark()
    lab.alice.resume_recipe()
    lab.status(lambda s: s["state"] == "RUNNING", since=resumed)
    final = lab.alice.wait_recipe(run, timeout=60)
    assert final["outcome"] == "completed", final


def test_a_stopped_chiller_is_started_and_the_run_waits_until_it_runs(lab: RecipeLab) -> None:
    """The chiller stopped (its `chiller_running` rule disarmed): the set point step starts it
    and ends once its status says it runs, so the wait for a stable bath that follows goes on."""
    assert lab.alice is not None
    since = lab.client.mark()
    assert lab.command("/julabo/cmd/switch", "off")["ok"]
    lab.rules(lambda r: r["chiller_running"]["active"], since=since)
    since = lab.client.mark()
    assert lab.command("/interlock/cmd/reset/chiller_running", "")["ok"]
    lab.rules(lambda r: not any(rule["active"] for rule in r.values()), since=since)
    lab.wait("/julabo/status", lambda s: not s["running"], 10, since=0)
    recipe = {"modules": [M[0]], "steps": [
        {"setpoint": 20}, {"wait_stable": {"tolerance": 0.5, "stable_for": 0.5}},
        {"hold": 0.1}]}  # fmt: skip
    alice = lab.alice

    def start() -> dict[str, Any] | None:
        # The recipe service reads /interlock/status through its own subscription, which may
        # deliver the cleared rule a moment after ours did: until then it refuses, naming it.
        try:
            return alice.start_recipe(recipe, file="cold-start.yml")
        except CommandRefused as exc:
            if "interlock chiller_running" not in str(exc):
                raise
            return None

    run = wait_until(start, 10, "the recipe service to see chiller_running cleared")["run"]
    final = lab.alice.wait_recipe(run, timeout=60)
    assert final["outcome"] == "completed", final
    record = json.loads((lab.results / "recipes" / f"{run}.json").read_text())
    assert record["log"][0]["detail"] == "set point 20 °C, chiller started", record["log"][0]
