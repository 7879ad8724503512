"""Module sequencing (`trackerdcs-dcs`) on the simulated crate with the real power daemon:
the order of the steps, the waits, a failure midway left safe, `all`, busy and cancelled."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import PowerLab, python_process, serving
from tests.labdata import EXAMPLE
from trackerdcs.stack.process import ManagedProcess

HV, LV = EXAMPLE.channels("hv"), EXAMPLE.channels("lv")  # the labs below start from it
M = EXAMPLE.modules  # its modules, in the lab file's order


class SequencerLab:
    def __init__(self, lab: PowerLab, workdir) -> None:
        self.lab = lab
        self.daemon: ManagedProcess = python_process(
            "dcs", "trackerdcs.safety.dcs_daemon", ["--config", str(lab.config)],
            workdir / "sequencer-dcs.log", ready=serving("serving the sequencer"),
        )  # fmt: skip

    def module(self, name: str, value: str, timeout: float = 20.0) -> dict[str, Any]:
        return self.lab.client.command(f"/dcs/cmd/module/{name}", value, "/dcs/response", timeout)

    def commands(self, since: int) -> list[tuple[str, str, float]]:
        """(topic, value, time) of the power commands seen since `since`."""
        return [
            (m.topic, m.json["value"], m.t)
            for m in self.lab.client.messages[since:]
            if m.topic.startswith(("/hv/cmd/", "/lv/cmd/"))
        ]

    def first(self, prefix: str, name: str, predicate, since: int) -> float:
        """When `<prefix>/status` first showed channel `name` satisfying `predicate`."""
        for m in self.lab.client.messages[since:]:
            if (
                m.topic == f"{prefix}/status"
                and not m.retain
                and any(c["name"] == name and predicate(c) for c in m.json)
            ):
                return m.t
        raise AssertionError(f"{prefix}/status never showed {name} so")


@pytest.fixture(scope="module")
def seq(power_lab_module, workdir):
    s = SequencerLab(power_lab_module, workdir)
    s.daemon.start()
    yield s
    s.daemon.stop()


@pytest.fixture
def sequencer(seq, power_lab):
    """The sequencer on a lab reset to all off; any interlock status cleared afterwards."""
    yield seq
    power_lab.client.publish("/interlock/status", b"", retain=True)


def steps(outcome: dict, module: str) -> list[str]:
    return [s["step"] for s in outcome["modules"][module]["steps"]]


def test_on_then_off_in_order(sequencer):
    lab = sequencer.lab
    assert lab.command(HV[0].topic("setv", by="module"), 150)["ok"]
    since = lab.client.mark()
    answer = sequencer.module(M[0], "on")
    assert answer["ok"] and answer["error"] is None, answer
    assert steps(answer, M[0]) == ["lv_on", "lv_ready", "hv_on", "hv_ready"]
    sent = sequencer.commands(since)
    assert [(t, v) for t, v, _ in sent] == [(LV[0].topic("switch", by="module"), "on"),
                                            (HV[0].topic("switch", by="module"), "on")]  # fmt: skip
    lv_ready = sequencer.first("/lv", LV[0].name, lambda c: c["state"] == "ON"
                               and abs(c["vmon"] - 10.5) <= 0.1, since)  # fmt: skip
    assert lv_ready < sent[1][2]  # HV only once the LV is at its set point
    hv = lab.client.latest("/hv/status").json[0]
    assert hv["state"] == "ON" and abs(hv["vmon"] - 150) <= 2.0
    status = lab.client.wait_for("/dcs/status", lambda m: m.json["modules"][M[0]]["state"] == "ON",
                                 since=since).json  # fmt: skip
    assert status["modules"][M[0]]["error"] is None

    since = lab.client.mark()
    answer = sequencer.module(M[0], "off")
    assert answer["ok"], answer
    assert steps(answer, M[0]) == ["hv_off", "hv_down", "lv_off", "lv_down"]
    sent = sequencer.commands(since)
    assert [(t, v) for t, v, _ in sent] == [
        (HV[0].topic("switch", by="module"), "off"), (LV[0].topic("switch", by="module"), "off")
    ]  # fmt: skip
    hv_down = sequencer.first("/hv", HV[0].name, lambda c: c["state"] == "OFF", since)
    assert hv_down < sent[1][2]  # LV only once the HV is at 0 V
    assert lab.get(lab.chpv(LV[0].name, "Pw")) == 0 and lab.get(lab.chpv(HV[0].name, "Pw")) == 0
    steps_seen = [m.json for m in lab.client.messages[since:] if m.topic == "/dcs/action"]
    assert [e["step"] for e in steps_seen if e["event"] == "step"] == steps(answer, M[0])
    assert steps_seen[-1]["event"] == "done" and steps_seen[0]["event"] == "start"


def test_hv_refused_by_an_interlock_rolls_the_module_back(sequencer):
    lab = sequencer.lab
    since = lab.client.mark()
    lab.client.publish("/interlock/status", {"rules": [
        {"name": "chiller_running", "active": True, "reason": "chiller STOPPED",
         "modules": [M[1]]}]}, retain=True)  # fmt: skip
    lab.wait_channel("/hv", HV[1].name, lambda c: c["interlocks"] == ["chiller_running"],
                     since=since)  # fmt: skip
    answer = sequencer.module(M[1], "on")
    assert not answer["ok"]
    error = answer["modules"][M[1]]["error"]
    assert error.startswith(f"hv_on: /hv/cmd/switch/{M[1]} on refused: ")
    assert "chiller_running (chiller STOPPED)" in error
    assert error.endswith("rolled back: module off")
    assert steps(answer, M[1]) == [
        "lv_on",
        "lv_ready",
        "hv_on",
        "rollback_hv_off",
        "rollback_hv_down",
        "rollback_lv_off",
        "rollback_lv_down",
    ]
    assert lab.get(lab.chpv(LV[1].name, "Pw")) == 0  # the module is off again: LV too
    dcs = lab.client.wait_for("/dcs/status", lambda m: m.json["modules"][M[1]]["state"] ==
                              "FAILED", since=since).json["modules"][M[1]]  # fmt: skip
    assert dcs["error"] == error


def test_off_with_an_invalid_hv_readback_writes_it_and_keeps_the_lv_on(sequencer):
    """The IOC marks a module's HV readbacks INVALID: the HV off is written all the same (an off is
    never refused for a channel's state), but 0 V cannot be confirmed: the step fails and the
    module's LV stays on (LV only after its HV is known off)."""
    lab = sequencer.lab
    assert lab.command(HV[2].topic("setv", by="module"), 60)["ok"]
    assert sequencer.module(M[2], "on")["ok"]
    invalid = lab.chpv(HV[2].name, "SimInvalid")
    since = lab.client.mark()
    lab.put(invalid, 1)
    try:
        lab.wait_channel("/hv", HV[2].name, lambda c: c["state"] == "DISCONNECTED", since=since)
        answer = sequencer.module(M[2], "off")
        assert not answer["ok"] and steps(answer, M[2]) == ["hv_off", "hv_down"], answer
        assert f"hv_down: {HV[2].name} is DISCONNECTED" in answer["modules"][M[2]]["error"]
        assert lab.get(lab.chpv(HV[2].name, "Pw")) == 0 and lab.get(lab.chpv(LV[2].name, "Pw")) == 1
    finally:
        since = lab.client.mark()
        lab.put(invalid, 0)
        lab.wait_channel("/hv", HV[2].name, lambda c: c["state"] == "OFF", since=since)
        assert lab.command(LV[2].topic("switch", by="module"), "off")["ok"]


def test_a_trip_while_ramping_fails_fast_and_leaves_it_off(sequencer):
    lab = sequencer.lab
    assert lab.command(HV[2].topic("setv", by="module"), 300)["ok"]  # 1.5 s of ramp at 200 V/s
    lab.put(lab.chpv(HV[2].name, "SimLeak"), 50.0)  # 50 uA over the 10 uA limit: trips in 0.2 s
    answer = sequencer.module(M[2], "on")
    assert not answer["ok"]
    error = answer["modules"][M[2]]["error"]
    assert error.startswith(f"hv_ready: {HV[2].name} is TRIPPED") and "rolled back" in error, error
    assert steps(answer, M[2])[-2:] == ["rollback_lv_off", "rollback_lv_down"]
    assert lab.get(lab.chpv(LV[2].name, "Pw")) == 0


def test_all_busy_and_off_cancels_on(sequencer):
    lab = sequencer.lab
    assert lab.command("/hv/cmd/setv/all", 40)["ok"]
    answer = sequencer.module("all", "on")
    assert answer["ok"], answer
    assert sorted(answer["modules"]) == M
    states = {c["name"]: c["state"] for c in lab.client.latest("/hv/status").json}
    assert set(states.values()) == {"ON"}
    assert sequencer.module("all", "off")["ok"]

    assert lab.command(HV[3].topic("setv", by="module"), 300)["ok"]
    first = "req-seq-on"
    since = lab.client.mark()
    lab.client.publish(f"/dcs/cmd/module/{M[3]}", {"value": "on", "id": first})
    lab.client.wait_for("/dcs/action", lambda m: m.json["step"] == "hv_on", since=since)
    busy = sequencer.module(M[3], "on")
    assert not busy["ok"] and busy["error"] == f"{M[3]} is busy switching on"
    off = sequencer.module(M[3], "off")  # cancels the ramp up, then switches off
    assert off["ok"], off
    cancelled = lab.client.wait_for("/dcs/response", lambda m: m.json["id"] == first).json
    assert not cancelled["ok"] and "cancelled by an off command" in cancelled["error"]
    assert steps(cancelled, M[3]) == ["lv_on", "lv_ready", "hv_on", "cancelled"]
    assert lab.get(lab.chpv(HV[3].name, "Pw")) == 0 and lab.get(lab.chpv(LV[3].name, "Pw")) == 0


def test_bad_commands_are_refused(sequencer):
    answer = sequencer.module("M9", "on")
    assert not answer["ok"] and "unknown module 'M9'" in answer["error"]
    answer = sequencer.module(M[0], "sideways")
    assert not answer["ok"] and "switch takes 'on' or 'off'" in answer["error"]
    answer = sequencer.lab.client.command("/dcs/cmd/reboot", "", "/dcs/response")
    assert not answer["ok"] and "/dcs/cmd/module/{name}" in answer["error"]
