"""The Python client (`trackerdcs.client.Lab`) against the virtual lab with every daemon: its
waits (at the set point, within tolerance, the bath stable), its timeouts, and refusals raised
with the daemon's own text; the id and send time on every command."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import Broker
from tests.test_ivscan import IvLab, off_at
from tests.test_safety_scenarios import HV, LV, M
from trackerdcs.client import (
    Aborted,
    ChannelFault,
    CommandRefused,
    DcsError,
    Lab,
    NoAnswer,
    NotConnected,
    UnknownName,
    WaitTimeout,
)
from trackerdcs.config import load_config
from trackerdcs.stack.process import free_port


@pytest.fixture(scope="module")
def clab(workdir: Path, broker: Broker) -> Iterator[IvLab]:
    lab = IvLab(workdir, broker, "client").start()
    lab.rules(lambda r: not any(rule["active"] for rule in r.values()), since=0)
    yield lab
    assert lab.stop() == [0] * 7


@pytest.fixture
def lab(clab: IvLab) -> IvLab:
    clab.reset()
    return clab


@pytest.fixture
def alice(lab: IvLab) -> Lab:
    assert lab.alice is not None
    return lab.alice


def test_no_connection_before_connect_and_a_missing_broker_is_reported(tmp_path) -> None:
    data = yaml.safe_load(Path("examples/lab.yml").read_text())
    data["mqtt"]["port"] = free_port()  # nobody listens there
    path = tmp_path / "nobroker.yml"
    path.write_text(yaml.safe_dump(data))
    lab = Lab(path, name="bob", timeout=0.5)  # reads the file, connects to nothing
    assert not lab.connected
    with pytest.raises(NotConnected, match="not connected"):
        lab.command("/hv/cmd/refresh", "")
    started = time.monotonic()
    with pytest.raises(NotConnected, match=f"no broker at mqtt://127.0.0.1:{data['mqtt']['port']}"):
        lab.connect()
    assert time.monotonic() - started < 3
    with pytest.raises(ValueError, match="without ':'"):
        Lab(path, name="a:b")


def test_set_voltage_waits_until_the_channel_is_there(lab: IvLab, alice: Lab) -> None:
    alice.switch(HV[0].name, True)  # on at 0 V
    since = lab.client.mark()
    started = time.monotonic()
    [ch] = alice.set_voltage(HV[0].name, 300)  # 200 V/s: 1.5 s
    assert time.monotonic() - started >= 1.2
    assert ch.state == "ON" and abs(ch.vmon - 300) <= 2.0 and ch.vreq == 300
    assert ch.imon > 0 and alice.channel(HV[0].name).module == M[0]
    # the command as it went out: value, the client's id, its send time; answered ok
    [cmd] = [m for m in lab.client.messages[since:] if m.topic == HV[0].topic("setv")]
    assert set(cmd.json) == {"value", "id", "time"} and cmd.json["value"] == 300
    assert cmd.json["id"].startswith("alice:") and abs(cmd.json["time"] - time.time()) < 10
    records = lab.audit(module=M[0], source="alice", since="1m", kind="command")
    assert any(r["topic"] == HV[0].topic("setv") and r["ok"] for r in records)
    # a module's HV channels by the module's name, with a tolerance of one's own
    [ch] = alice.set_voltage(M[0], 250, tolerance=0.5)
    assert abs(ch.vmon - 250) <= 0.5
    alice.switch(M[0], False)
    assert alice.channel(HV[0].name).vmon == 0


def test_refusals_carry_the_daemons_text_and_write_nothing(lab: IvLab, alice: Lab) -> None:
    low = lab.lab.limited("hv")  # its own vmax of 400 V
    with pytest.raises(CommandRefused) as refused:
        alice.set_voltage(low.name, 450)
    assert refused.value.error == f"450 V exceeds the maximum 400 V of {low.name}"
    assert refused.value.answer["ok"] is False and refused.value.topic == low.topic("setv")
    assert lab.crate(low.name, "V0Set") == 0
    with pytest.raises(CommandRefused, match="60 C exceeds the maximum set point 40 C"):
        alice.set_chiller(60)
    with pytest.raises(CommandRefused, match=r"current limit .* exceeds the maximum|exceeds"):
        alice.set_current_limit(HV[0].name, 500)
    with pytest.raises(UnknownName, match="no channel or module 'hv_m9'"):
        alice.set_voltage("hv_m9", 10)
    with pytest.raises(NoAnswer, match=r"/nobody/cmd/x: no answer from /nobody within 0\.3 s"):
        alice.command("/nobody/cmd/x", 1, timeout=0.3)


def test_timeouts_faults_and_aborts_end_a_wait(lab: IvLab, alice: Lab) -> None:
    alice.switch(HV[1].name, True)
    started = time.monotonic()
    with pytest.raises(WaitTimeout, match=rf"{HV[1].name} at 500 V not reached within 0.3 s"):
        alice.set_voltage(HV[1].name, 500, timeout=0.3)  # 2.5 s of ramp
    assert time.monotonic() - started < 2
    alice.set_voltage(HV[1].name, 0)
    with pytest.raises(Aborted, match="the operator said so"):
        alice.set_voltage(HV[1].name, 400, abort=lambda: "the operator said so")
    leaked: list[bool] = []

    def leak_once() -> None:
        """Once the command is sent with the channel on (a trip that came before it would be
        an off channel's, no fault of the wait's): 50 uA over its 10 uA limit, trips in 0.2 s."""
        if not leaked:
            lab.put(HV[1].name, "SimLeak", 50.0)
            leaked.append(True)

    with pytest.raises(ChannelFault, match=f"{HV[1].name} TRIPPED") as fault:
        alice.set_voltage(HV[1].name, 300, abort=leak_once)
    assert fault.value.channel.state == "TRIPPED" and "INT_TRIP" in fault.value.channel.flags
    lab.put(HV[1].name, "SimLeak", 0.0)
    with pytest.raises(CommandRefused, match="TRIPPED"):
        alice.switch(HV[1].name, True)
    alice.command("/hv/cmd/clear", "")
    off_at(lab, M[1], vreq=300)


def test_module_on_and_off_through_the_sequencer(lab: IvLab, alice: Lab) -> None:
    alice.set_voltage(M[2], 60)  # off: only the set point's readback
    outcome = alice.module_on(M[2])
    assert outcome["ok"] and [s["step"] for s in outcome["steps"]] == [
        "lv_on", "lv_ready", "hv_on", "hv_ready"]  # fmt: skip
    assert alice.channel(LV[2].name).state == "ON" and abs(alice.channel(HV[2].name).vmon - 60) <= 2
    assert alice.module_state(M[2])["state"] == "ON"
    outcome = alice.module_off(M[2])
    assert outcome["ok"] and alice.channel(LV[2].name).state == "OFF"
    lab.client.publish("/interlock/status", {"rules": [
        {"name": "chiller_running", "active": True, "reason": "chiller STOPPED",
         "modules": [M[2]]}]}, retain=True)  # fmt: skip
    try:
        alice.wait_until(lambda: alice.interlocks(M[2]) or None, 5)
        with pytest.raises(CommandRefused, match=r"hv_on: .* chiller_running") as refused:
            alice.module_on(M[2])
        assert "rolled back: module off" in refused.value.error
        with pytest.raises(UnknownName, match="no module 'M7'"):
            alice.module_on("M7")
    finally:
        lab.client.publish("/interlock/status", b"", retain=True)
        lab.command("/interlock/cmd/refresh", "")


def test_set_chiller_waits_until_the_bath_is_stable(lab: IvLab, alice: Lab) -> None:
    lab.wait("/julabo/status", lambda s: s["state"] in ("STOPPED", "RUNNING"), since=0)
    if alice.chiller()["state"] == "STOPPED":
        with pytest.raises(DcsError, match="the chiller is STOPPED: start it first"):
            alice.set_chiller(18, stable_for=0.5, timeout=5)
        since = lab.client.mark()
        alice.start_chiller()
        lab.rules(lambda r: r["chiller_running"].get("armed"), since=since)
    started = time.monotonic()
    status = alice.set_chiller(17.0, tolerance=0.2, stable_for=1.0, timeout=20)
    assert abs(status["bath_temp"] - 17.0) <= 0.2 and status["setpoint"] == 17.0
    assert time.monotonic() - started >= 1.0  # stable for a second, not just reached
    with pytest.raises(WaitTimeout, match=r"the bath within 0.2 K of 5 C for 30 s not reached"):
        alice.set_chiller(5.0, tolerance=0.2, stable_for=30, timeout=1.0)
    alice.set_chiller(20.0, wait=False)


def test_readings_by_name(lab: IvLab, alice: Lab) -> None:
    room = alice.room()
    assert room is not None and room["kind"] == "room" and room["humidity"] == 45.0
    assert isinstance(alice.module_temperature(M[0]), float)
    assert alice.sensor("temp_m2")["module"] == M[1]
    assert [c.name for c in alice.channels(M[3], kind=None)] == [HV[3].name, LV[3].name]
    with pytest.raises(UnknownName, match="no sensor 'nope'"):
        alice.sensor("nope")
    assert alice.lab == load_config(lab.config)
