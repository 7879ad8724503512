"""The power-supply daemon against the simulated crate over real Channel Access and real MQTT,
in two board layouts: what crosses the process boundaries (PV names, monitors, MQTT 5
properties, retained availability). Its command logic (refusals, limits, targets, all-or-nothing)
is tested in-process in tests/test_power_logic.py."""

from __future__ import annotations

import json
import threading

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.conftest import FAST_DEFAULTS, PowerLab
from tests.labdata import EXAMPLE
from tests.simca import wait_for
from trackerdcs.config import load_config
from trackerdcs.power.channel import PowerChannel
from trackerdcs.power.service import settings_writes

# the example lab's channels: both layouts below keep their names, numbers and modules
HV, LV = EXAMPLE.channels("hv"), EXAMPLE.channels("lv")


@pytest.fixture(scope="module", params=["example", "cleanroom"])
def power_lab_module(workdir, broker, request):
    """The power tests run unchanged on the example lab and on a lab laid out as real ones are
    (another system name, HV boards in a high slot, LV in a low one)."""
    name = f"power-{request.param}"
    lab = PowerLab(workdir, broker, name, layout=request.param).start()
    yield lab
    lab.stop()


def states_seen(lab, prefix: str, name: str, since: int) -> list[str]:
    """The successive states of a channel in the status messages received since `since`."""
    seen: list[str] = []
    for m in lab.client.messages[since:]:
        if m.topic == f"{prefix}/status":
            state = next(c["state"] for c in m.json if c["name"] == name)
            if not seen or seen[-1] != state:
                seen.append(state)
    return seen


# -- set points -------------------------------------------------------------------------------
@pytest.mark.parametrize(("target", "names"), EXAMPLE.targets("hv"))
def test_setv_by_number_name_module_and_all(power_lab, target, names):
    since = power_lab.client.mark()
    answer = power_lab.command(f"/hv/cmd/setv/{target}", 123.5)
    assert answer["ok"] is True and answer["error"] is None
    assert answer["channels"] == names
    status = power_lab.wait_status(
        "/hv", lambda chs: all(c["vreq"] == 123.5 for c in chs if c["name"] in names), since=since
    )
    assert all(isinstance(c["vreq"], float) for c in status)
    for name in names:
        assert power_lab.get(power_lab.chpv(name, "V0Set")) == 123.5


def test_switch_ramps_up_then_on_then_down_then_off(power_lab):
    assert power_lab.command(HV[0].topic("setv"), 100)["ok"]
    since = power_lab.client.mark()
    assert power_lab.command(HV[0].topic("switch"), "on")["ok"]
    on = power_lab.wait_channel("/hv", HV[0].name, lambda c: c["state"] == "ON", since=since)
    assert on["on"] == 1 and abs(on["vmon"] - 100) <= 2 and "ON" in on["flags"]
    assert on["imon"] > 0  # the leakage current of the load model
    assert states_seen(power_lab, "/hv", HV[0].name, since)[-2:] == ["RAMPING_UP", "ON"]
    state = power_lab.client.wait_for(
        "/hv/state", lambda m: m.json["state"] == "MIXED", since=since
    )
    assert state.json["counts"] == {"ON": 1, "OFF": len(HV) - 1}

    since = power_lab.client.mark()
    assert power_lab.command(HV[0].topic("switch"), "OFF")["ok"]
    off = power_lab.wait_channel("/hv", HV[0].name, lambda c: c["state"] == "OFF", since=since)
    assert off["on"] == 0 and off["vmon"] == 0.0
    assert states_seen(power_lab, "/hv", HV[0].name, since)[-2:] == ["RAMPING_DOWN", "OFF"]


def test_switch_all_lv_then_all_on_state(power_lab):
    """The LV boards over Channel Access in each layout (Pw, VMon and the state from their
    monitors); the command logic of `all` is in tests/test_power_logic.py."""
    since = power_lab.client.mark()
    assert power_lab.command("/lv/cmd/switch/all", "on")["ok"]
    power_lab.client.wait_for(
        "/lv/state", lambda m: m.json["state"] == "ALL_ON", timeout=5, since=since
    )
    status = power_lab.client.latest("/lv/status").json
    vset = FAST_DEFAULTS["lv"]["vset"]
    assert all(c["on"] == 1 and abs(c["vmon"] - vset) < 0.1 for c in status)


def test_over_current_trips_and_switch_on_needs_clear(power_lab):
    lab = power_lab
    assert lab.command(HV[1].topic("setv"), 50)["ok"]
    since = lab.client.mark()
    assert lab.command(HV[1].topic("switch"), "on")["ok"]
    lab.wait_channel("/hv", HV[1].name, lambda c: c["state"] == "ON", since=since)

    since = lab.client.mark()
    lab.put(lab.chpv(HV[1].name, "SimLeak"), 50.0)  # 50 µA over a 10 µA limit
    tripped = lab.wait_channel("/hv", HV[1].name, lambda c: c["state"] == "TRIPPED", since=since)
    assert "INT_TRIP" in tripped["flags"] and tripped["on"] == 0
    others = lab.client.latest("/hv/status").json
    assert [c["state"] for c in others if c["name"] != HV[1].name] == ["OFF"] * (len(HV) - 1)
    lab.client.wait_for("/hv/state", lambda m: m.json["state"] == "ERROR", since=since)

    lab.put(lab.chpv(HV[1].name, "SimLeak"), 0.0)
    writes = lab.writes()
    answer = lab.command(HV[1].topic("switch"), "on")
    assert answer["ok"] is False and "TRIPPED" in answer["error"] and "clear" in answer["error"]
    assert lab.writes() == writes  # nothing reached the crate

    since = lab.client.mark()
    assert lab.command("/hv/cmd/clear", "")["ok"]
    lab.wait_channel(
        "/hv", HV[1].name, lambda c: c["state"] == "OFF" and not c["flags"], since=since
    )
    assert lab.command(HV[1].topic("switch"), "on")["ok"]
    lab.wait_channel("/hv", HV[1].name, lambda c: c["state"] == "ON", since=since)


# -- bad input --------------------------------------------------------------------------------
def test_request_id_and_mqtt5_response_topic(power_lab, broker):
    got = []
    subscribed = threading.Event()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    c.on_message = lambda cl, ud, msg: got.append(msg)
    c.on_subscribe = lambda *a: subscribed.set()
    c.connect("127.0.0.1", broker.port)
    c.loop_start()
    try:
        c.subscribe("reply/me", qos=1)
        assert subscribed.wait(5)
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = "reply/me"
        props.CorrelationData = b"corr-42"
        c.publish(
            HV[1].topic("setv", by="number"),
            json.dumps({"value": 12, "id": "abc"}),
            qos=1,
            properties=props,
        )
        answer = power_lab.client.wait_for("/hv/response", lambda m: m.json["id"] == "abc").json
        assert answer["ok"] is True and answer["topic"] == HV[1].topic("setv", by="number")
        wait_for(lambda: got, timeout=5)
        assert json.loads(got[0].payload)["id"] == "abc"
        assert got[0].properties.CorrelationData == b"corr-42"
    finally:
        c.disconnect()
        c.loop_stop()


def test_refresh_republishes_and_availability_is_retained(power_lab, broker):
    since = power_lab.client.mark()
    assert power_lab.command("/hv/cmd/refresh", "")["ok"]
    power_lab.client.wait_for("/hv/status", since=since)
    power_lab.client.wait_for("/hv/state", since=since)
    late = broker.client(topics=("/hv/availability", "/lv/availability", "/hv/status"))
    try:
        for prefix in ("/hv", "/lv"):
            m = late.wait_for(f"{prefix}/availability")
            assert m.retain and m.text == "online"
        assert late.wait_for("/hv/status").retain
    finally:
        late.close()


def test_reconnect_command_recreates_the_channels(power_lab):
    lab = power_lab
    writes = lab.writes()
    since = lab.client.mark()
    assert lab.command("/hv/cmd/reconnect", "")["ok"]
    # the fresh channels connect and the daemon writes the protection settings again
    cfg = load_config(lab.config)
    settings = sum(
        len(settings_writes(PowerChannel(c, cfg.limits_for(c), cfg.board_of(c).spec)))
        for c in cfg.power.channels
    )
    # HV: SVMax RUp RDWn Trip PDwn; LV: Trip RUpTime RDwTime
    assert settings == len(HV) * 5 + len(LV) * 3
    wait_for(lambda: lab.writes() >= writes + settings, timeout=5)
    for prefix in ("/hv", "/lv"):
        lab.wait_status(prefix, lambda chs: all(c["state"] == "OFF" for c in chs), since=since)
    assert lab.command(HV[0].topic("setv", by="number"), 3)["ok"]
