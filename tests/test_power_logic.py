"""The power daemon's command handling in-process: refusals, limits, targets, trips, kill, the
LV/HV order, interlocks and the fail-safe, on the simulated crate's physics in simulated time
(`tests.inprocess_power.PowerHarness`). What crosses a process boundary (Channel Access, the
broker, MQTT 5 response topics, availability) stays in test_power.py and test_power_safety.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from tests.inprocess_power import PowerHarness, harness_lab
from tests.labdata import EXAMPLE, Channel
from trackerdcs.power.backend import ChannelAddress
from trackerdcs.power.channel import PowerChannel
from trackerdcs.power.service import settings_writes

HV, LV = EXAMPLE.channels("hv"), EXAMPLE.channels("lv")
LOW = EXAMPLE.limited("hv")  # the HV channel whose own vmax is below the default
CFG = harness_lab()


def limits(ch: Channel):
    """The lab's limits of a channel (`ChannelLimits`: vmax, imax, vset, iset, rdwn, ...)."""
    return CFG.limits_for(next(c for c in CFG.power.channels if c.name == ch.name))


@pytest.fixture
def h() -> Iterator[PowerHarness]:
    harness = PowerHarness()
    yield harness
    harness.close()


def switch_on(h: PowerHarness, ch: Channel, volts: float) -> None:
    assert h.command(ch.topic("setv"), volts)["ok"]
    assert h.command(ch.topic("switch"), "on")["ok"]
    h.step_until(lambda: h.channel_status(ch.prefix, ch.name)["state"] == "ON")


def trip(h: PowerHarness, ch: Channel) -> None:
    """Switch `ch` on and draw a load far above its current limit until the crate trips it."""
    switch_on(h, ch, 20)
    h.sim(ch.name).leak_extra = 5 * limits(ch).iset  # fault injection: the model's SimLeak
    h.step_until(lambda: h.channel_status(ch.prefix, ch.name)["state"] == "TRIPPED")


def writes(h: PowerHarness) -> tuple[int, int]:
    """Writes the crate counted, and writes the backend handed to it."""
    return h.crate.writes, len(h.backend.writes)


def test_the_daemon_configures_every_channel_at_connection(h):
    for ch in (*HV, *LV):
        sim, lim = h.sim(ch.name), limits(ch)
        assert sim.i0set == lim.iset and sim.v0set == lim.vset and sim.trip == lim.trip
    assert h.sim(LOW.name).svmax == limits(LOW).vmax
    assert h.state("/hv")["state"] == h.state("/lv")["state"] == "ALL_OFF"


# -- set points and switching reach the crate -------------------------------------------------
@pytest.mark.parametrize(("target", "names"), EXAMPLE.targets("hv"))
def test_setv_by_number_name_module_and_all(h, target, names):
    answer = h.command(f"/hv/cmd/setv/{target}", 123.5)
    assert answer["ok"] is True and answer["error"] is None and answer["channels"] == names
    h.step(0)
    for ch in HV:
        assert h.sim(ch.name).v0set == (123.5 if ch.name in names else limits(ch).vset)
    status = h.status("/hv")
    assert [c["vreq"] for c in status if c["name"] in names] == [123.5] * len(names)
    assert all(isinstance(c["vreq"], float) for c in status)


def test_seti_by_module_on_lv(h):
    answer = h.command(LV[1].topic("seti", by="module"), 1.25)
    assert answer["ok"] and answer["channels"] == [LV[1].name], answer
    h.step(0)
    assert h.sim(LV[1].name).i0set == 1.25
    assert h.channel_status("/lv", LV[1].name)["ilim"] == 1.25
    assert h.sim(LV[0].name).i0set == limits(LV[0]).iset


@pytest.mark.parametrize("by", ["number", "name", "module"])
def test_switch_by_number_name_and_module_reaches_pw(h, by):
    assert h.command(LV[2].topic("switch", by=by), "on")["ok"]
    assert [c.name for c in LV if h.sim(c.name).pw] == [LV[2].name]
    assert h.command(LV[2].topic("switch", by=by), "off")["ok"]
    assert not any(h.sim(c.name).pw for c in LV)


def test_switch_ramps_up_then_on_then_down_then_off(h):
    assert h.command(HV[0].topic("setv"), 100)["ok"]
    since = h.mark("/hv")
    assert h.command(HV[0].topic("switch"), "on")["ok"]
    h.step_until(lambda: h.sim(HV[0].name).status == 1)  # ON, no ramp
    h.step(h.dt)
    on = h.channel_status("/hv", HV[0].name)
    assert on["state"] == "ON" and on["on"] == 1 and on["vmon"] == 100.0 and on["flags"] == ["ON"]
    assert on["imon"] > 0  # the leakage current of the load model
    assert h.states_seen("/hv", HV[0].name, since) == ["RAMPING_UP", "ON"]
    state = h.state("/hv")
    assert state["state"] == "MIXED" and state["counts"] == {"ON": 1, "OFF": len(HV) - 1}

    since = h.mark("/hv")
    assert h.command(HV[0].topic("switch"), "OFF")["ok"]
    h.step_until(lambda: h.sim(HV[0].name).status == 0)
    h.step(h.dt)
    off = h.channel_status("/hv", HV[0].name)
    assert off["state"] == "OFF" and off["on"] == 0 and off["vmon"] == 0.0
    assert h.states_seen("/hv", HV[0].name, since)[-2:] == ["RAMPING_DOWN", "OFF"]


def test_switch_all_lv_then_all_on_state(h):
    assert h.command("/lv/cmd/switch/all", "on")["ok"]
    h.step_until(lambda: h.state("/lv")["state"] == "ALL_ON")
    status = h.status("/lv")
    assert all(c["on"] == 1 and c["vmon"] == limits(LV[0]).vset for c in status)


def test_a_json_payload_is_answered_with_its_id(h):
    answer = h.command(HV[1].topic("setv", by="number"), json.dumps({"value": 12, "id": "abc"}))
    assert answer["ok"] is True and answer["id"] == "abc"
    assert answer["topic"] == HV[1].topic("setv", by="number")
    assert h.sim(HV[1].name).v0set == 12


# -- refusals write nothing -------------------------------------------------------------------
def _bad_commands() -> list[tuple[str, str, str]]:
    hv0, lv0 = HV[0].topic, LV[0].topic
    vmax, low, imax = limits(HV[0]).vmax, limits(LOW).vmax, limits(HV[0]).imax
    lv_vmax, lv_imax = limits(LV[0]).vmax, limits(LV[0]).imax
    unknown = max(c.number for c in HV) + 1
    return [
        (hv0("setv", by="number"), "abc", "must be a number"),
        (hv0("setv", by="number"), "", "must be a number"),
        (hv0("setv", by="number"), "nan", "must be finite"),
        (hv0("setv", by="number"), "-5", "must not be negative"),
        (hv0("setv", by="number"), f"{vmax + 0.5}",
         f"exceeds the maximum {vmax:g} V of {HV[0].name}"),
        (LOW.topic("setv"), f"{low + 50}", f"exceeds the maximum {low:g} V of {LOW.name}"),
        ("/hv/cmd/setv/all", f"{low + 50}", f"exceeds the maximum {low:g} V of {LOW.name}"),
        (f"/hv/cmd/setv/{unknown}", "10", f"unknown channel '{unknown}'"),
        ("/hv/cmd/setv/nosuch", "10", "unknown channel 'nosuch'"),
        (f"/hv/cmd/setv/{LV[0].name}", "10", f"unknown channel '{LV[0].name}'"),
        ("/hv/cmd/setv", "10", "malformed command topic"),
        (hv0("setv", by="number") + "/1", "10", "malformed command topic"),
        (hv0("seti", by="number"), "0", "must be positive"),
        (hv0("seti", by="number"), f"{imax * 10:g}", f"exceeds the maximum {imax:g} uA"),
        (lv0("seti", by="number"), f"{lv_imax + 1:g}", f"exceeds the maximum {lv_imax:g} A"),
        (lv0("setv", by="module"), f"{lv_vmax + 0.1:g}",
         f"exceeds the maximum {lv_vmax:g} V of {LV[0].name}"),
        (hv0("switch", by="number"), "maybe", "takes 'on' or 'off'"),
        (hv0("switch", by="number"), '{"value": "on", "extra": 1}',
         "unknown key(s) in payload: extra"),
        (hv0("switch", by="number"), '{"value": "on"', "malformed JSON"),
        (hv0("switch", by="number"), "[1, 2]", "takes 'on' or 'off'"),
        (hv0("setv", by="number"), '{"value": true}', "must be a number"),
        ("/hv/cmd/explode", "1", "unknown command 'explode'"),
        ("/hv/cmd/clear/now", "", "malformed command topic"),
    ]  # fmt: skip


@pytest.mark.parametrize(("topic", "payload", "expected"), _bad_commands())
def test_a_bad_command_is_answered_and_writes_nothing(h, topic, payload, expected):
    before, vset = writes(h), h.sim(HV[0].name).v0set
    answer = h.command(topic, payload)
    assert answer["ok"] is False and expected in answer["error"], answer
    assert answer["topic"] == topic and answer["payload"] == payload
    assert writes(h) == before, "a refused command wrote to the crate"
    assert h.sim(HV[0].name).v0set == vset


def test_an_invalid_utf8_payload_is_refused(h):
    before = writes(h)
    answer = h.command(HV[0].topic("setv", by="number"), b"\xff\xfe")
    assert answer["ok"] is False and "must be a number" in answer["error"]
    assert writes(h) == before


# -- trips ------------------------------------------------------------------------------------
def test_an_over_current_trip_latches_and_switch_on_needs_clear(h):
    trip(h, HV[1])
    tripped = h.channel_status("/hv", HV[1].name)
    assert "INT_TRIP" in tripped["flags"] and tripped["on"] == 0 and tripped["vmon"] == 0.0
    others = [c["state"] for c in h.status("/hv") if c["name"] != HV[1].name]
    assert others == ["OFF"] * (len(HV) - 1)
    assert h.state("/hv")["state"] == "ERROR"

    h.sim(HV[1].name).leak_extra = 0.0
    h.step(1.0)
    assert h.channel_status("/hv", HV[1].name)["state"] == "TRIPPED"  # latched
    before = writes(h)
    answer = h.command(HV[1].topic("switch"), "on")
    assert answer["ok"] is False and "TRIPPED" in answer["error"] and "clear" in answer["error"]
    assert writes(h) == before  # nothing reached the crate

    assert h.command("/hv/cmd/clear", "")["ok"]
    assert h.backend.writes[-1] == (None, "ClearAlarm", "Yes")
    h.step(0)
    cleared = h.channel_status("/hv", HV[1].name)
    assert cleared["state"] == "OFF" and cleared["flags"] == []
    switch_on(h, HV[1], 20)


def test_a_tripped_channel_refuses_switch_on_even_on_the_crate(h):
    """The crate's own latch, under the daemon's refusal: `Pw` On is ignored until ClearAlarm."""
    trip(h, HV[0])
    h.sim(HV[0].name).leak_extra = 0.0
    h.crate.write(*HV[0].place, "Pw", "On")
    h.step(0.5)
    assert not h.sim(HV[0].name).pw
    assert h.channel_status("/hv", HV[0].name)["state"] == "TRIPPED"


def test_all_or_nothing_when_one_channel_refuses(h):
    trip(h, HV[2])
    before = writes(h)
    for action in ("switch/all", f"switch/{HV[2].module}"):
        answer = h.command(f"/hv/cmd/{action}", "on")
        assert not answer["ok"] and f"{HV[2].name} is TRIPPED" in answer["error"], answer
    assert writes(h) == before
    assert not any(h.sim(c.name).pw for c in HV)


def test_switching_off_all_reaches_a_tripped_channel_too(h):
    """Off is the exception to all-or-nothing: never refused for a channel's state."""
    switch_on(h, HV[0], 30)
    trip(h, HV[1])
    answer = h.command("/hv/cmd/switch/all", "off")
    assert answer["ok"] and answer["channels"] == [c.name for c in HV]
    assert h.backend.writes[-len(HV) :] == [(ChannelAddress(*c.place), "Pw", 0) for c in HV]
    assert not any(h.sim(c.name).pw for c in HV)


# -- kill -------------------------------------------------------------------------------------
def test_kill_switches_off_fast_and_switch_on_restores_the_ramp(h):
    lim = limits(HV[2])
    switch_on(h, HV[2], 100)
    addr = ChannelAddress(*HV[2].place)
    assert h.command(HV[2].topic("kill"), "")["ok"]
    assert h.backend.writes[-2:] == [(addr, "RDWn", lim.kill_rate), (addr, "Pw", 0)]
    assert lim.kill_rate > lim.rdwn
    h.step(100 / lim.kill_rate + h.dt)  # at the kill rate: well before the configured ramp-down
    assert h.sim(HV[2].name).vmon == 0.0
    h.step(h.dt)
    assert h.channel_status("/hv", HV[2].name)["state"] == "OFF"
    assert h.command(HV[2].topic("switch"), "on")["ok"]
    assert h.backend.writes[-2:] == [(addr, "RDWn", lim.rdwn), (addr, "Pw", 1)]
    assert h.sim(HV[2].name).setting("RDWn") == lim.rdwn


def test_kill_switches_off_while_the_ramp_down_cannot_be_written(h):
    switch_on(h, HV[0], 60)
    h.backend.down = {(ChannelAddress(*HV[0].place), "RDWn")}
    answer = h.command(HV[0].topic("kill"), "")
    assert answer["ok"] and answer["channels"] == [HV[0].name], answer
    warning = answer["warning"]
    assert warning.startswith(f"{HV[0].name}: fast ramp-down not set (")
    assert warning.endswith("not connected): ramps down at the crate's current ramp-down")
    assert not h.sim(HV[0].name).pw
    h.backend.down = set()
    switch_on(h, HV[0], 60)  # nothing to restore: on as usual
    assert h.command(HV[0].topic("switch"), "off")["ok"]


# -- the daemon's own safety duties -----------------------------------------------------------
def test_lv_off_refused_while_the_modules_hv_is_on(h):
    switch_on(h, LV[0], limits(LV[0]).vset)
    switch_on(h, HV[0], 60)
    before = writes(h)
    for topic in (LV[0].topic("switch"), LV[0].topic("switch", by="module"), LV[0].topic("kill")):
        answer = h.command(topic, "off")
        assert not answer["ok"] and f"HV is on ({HV[0].name})" in answer["error"], answer
    assert writes(h) == before and h.sim(LV[0].name).pw
    assert h.command(HV[0].topic("switch"), "off")["ok"]
    h.step_until(lambda: h.channel_status("/hv", HV[0].name)["state"] == "OFF")
    assert h.command(LV[0].topic("switch"), "off")["ok"]
    assert not h.sim(LV[0].name).pw


def _interlocks(h: PowerHarness, *rules: dict) -> None:
    h.message(CFG.power.interlock_topic, json.dumps({"rules": list(rules)}))


def test_an_active_interlock_inhibits_hv_on_of_its_modules(h):
    _interlocks(h, {"name": "chiller_running", "active": True, "reason": "chiller STOPPED",
                    "modules": [HV[1].module]})  # fmt: skip
    assert h.channel_status("/hv", HV[1].name)["interlocks"] == ["chiller_running"]
    before = writes(h)
    answer = h.command(HV[1].topic("switch"), "on")
    assert not answer["ok"]
    assert "chiller_running" in answer["error"] and "chiller STOPPED" in answer["error"]
    assert writes(h) == before
    assert h.command(HV[0].topic("switch"), "on")["ok"]  # another module is not inhibited
    assert h.command(HV[1].topic("switch"), "off")["ok"]  # switching off is always allowed

    _interlocks(h, {"name": "chiller_running", "active": False, "modules": [HV[1].module]})
    assert h.channel_status("/hv", HV[1].name)["interlocks"] == []
    assert h.command(HV[1].topic("switch"), "on")["ok"]


def test_an_interlock_for_every_module_and_a_malformed_status_ignored(h):
    _interlocks(h, {"name": "dewpoint", "active": True, "reason": "margin 1.2 K", "modules": ["*"]})
    assert all(c["interlocks"] == ["dewpoint"] for c in h.status("/hv"))
    h.message(CFG.power.interlock_topic, b"{not json")
    answer = h.command("/hv/cmd/switch/all", "on")  # the last valid status still holds
    assert not answer["ok"] and "dewpoint" in answer["error"]
    assert not any(h.sim(c.name).pw for c in HV)


def test_an_invalid_channel_is_still_switched_off_and_killed(h):
    """Readbacks the IOC marks INVALID show the channel DISCONNECTED, but it still takes `Pw`:
    `off`, `kill` and `switch/all off` reach it (and the others); `on` and `setv` wait."""
    for ch in HV[:2]:
        switch_on(h, ch, 60)
    addr = ChannelAddress(*HV[0].place)
    h.backend.invalid(addr, "IMon INVALID (COMM)")
    h.settle()
    assert h.channel_status("/hv", HV[0].name)["state"] == "DISCONNECTED"
    answer = h.command("/hv/cmd/switch/all", "off")
    assert answer["ok"] and answer["channels"] == [c.name for c in HV]
    assert not h.sim(HV[0].name).pw and not h.sim(HV[1].name).pw
    for topic, value in ((HV[0].topic("switch"), "on"), (HV[0].topic("setv"), 70)):
        refused = h.command(topic, value)
        assert not refused["ok"] and "DISCONNECTED: IMon INVALID (COMM)" in refused["error"]
    h.backend.invalid(addr, None)
    h.step_until(lambda: h.channel_status("/hv", HV[0].name)["state"] == "OFF")
    switch_on(h, HV[0], 60)
    h.backend.invalid(addr, "IMon INVALID (COMM)")
    h.settle()
    assert h.command(HV[0].topic("kill"), "")["ok"]
    assert not h.sim(HV[0].name).pw
    assert h.sim(HV[0].name).setting("RDWn") == limits(HV[0]).kill_rate


def _broker(h: PowerHarness, up: bool) -> None:
    """Every link's paho callback: connected to the broker, or lost it."""
    for link in h.links.values():
        if up:
            link._client.on_connect(link._client, None, None,
                                    ReasonCode(PacketTypes.CONNACK, "Success"), None)  # fmt: skip
        else:
            link._client.on_disconnect(link._client, None, None,
                                       ReasonCode(PacketTypes.DISCONNECT, "Unspecified error"),
                                       None)  # fmt: skip
    h.settle()


@pytest.fixture
def failsafe_h() -> Iterator[PowerHarness]:
    failsafe = {"broker_timeout": 0.5, "supervisors": []}
    harness = PowerHarness(harness_lab(failsafe=failsafe))
    _broker(harness, True)
    yield harness
    harness.close()


def test_the_failsafe_switches_hv_off_when_the_broker_is_gone(failsafe_h):
    h = failsafe_h
    switch_on(h, LV[1], limits(LV[1]).vset)
    switch_on(h, HV[1], 80)
    _broker(h, False)
    h.step(0.4)
    assert h.sim(HV[1].name).pw  # the countdown runs
    h.step(0.2)
    assert not h.sim(HV[1].name).pw and h.sim(LV[1].name).pw  # LV is left alone
    assert "no broker for 0.5 s" in h.state("/hv")["failsafe"]
    assert h.state("/lv")["failsafe"] is None
    h.crate.write(*HV[1].place, "Pw", "On")  # the front panel, while nobody watches
    h.step(h.dt)
    assert not h.sim(HV[1].name).pw  # off again
    refused = h.command(HV[1].topic("switch"), "on")
    assert not refused["ok"] and "fail-safe" in refused["error"]
    _broker(h, True)
    assert h.command(HV[1].topic("switch"), "on")["ok"]


def test_a_short_broker_outage_does_not_trigger_the_failsafe(failsafe_h):
    h = failsafe_h
    switch_on(h, HV[0], 50)
    _broker(h, False)
    h.step(0.3)
    _broker(h, True)
    h.step(1.0)
    assert h.sim(HV[0].name).pw and h.channel_status("/hv", HV[0].name)["state"] == "ON"
    assert h.state("/hv")["failsafe"] is None


# -- service commands -------------------------------------------------------------------------
def test_refresh_republishes_status_and_state(h):
    since = h.mark("/hv")
    assert h.command("/hv/cmd/refresh", "")["ok"]
    topics = [t for t, _ in h.links["/hv"].sent[since:]]
    assert "/hv/status" in topics and "/hv/state" in topics


def test_reconnect_writes_the_protection_settings_again(h):
    settings = {
        c.name: settings_writes(PowerChannel(c, CFG.limits_for(c), CFG.board_of(c).spec))
        for c in CFG.power.channels
    }
    assert h.command(HV[0].topic("setv", by="number"), 30)["ok"]
    before = len(h.backend.writes)
    for prefix in ("/hv", "/lv"):
        assert h.command(f"{prefix}/cmd/reconnect", "")["ok"]
    h.step(h.dt)
    rewritten = h.backend.writes[before:]
    expected = [(ChannelAddress(*EXAMPLE.named(n).place), p, v)
                for n, ws in settings.items() for p, v in ws]  # fmt: skip
    assert sorted(rewritten, key=str) == sorted(expected * 2, key=str)  # one per prefix
    assert h.sim(HV[0].name).v0set == 30  # set points only at the first connection
    for prefix in ("/hv", "/lv"):
        assert all(c["state"] == "OFF" for c in h.status(prefix))
