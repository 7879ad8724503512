"""Safety duties of the power daemon itself: inhibits, LV/HV order, kill, fail-safe."""

from __future__ import annotations

import json

import pytest

from tests.conftest import EXAMPLE_SLOTS, Broker, PowerLab
from tests.simca import wait_for

HV, LV = EXAMPLE_SLOTS["hv"], EXAMPLE_SLOTS["lv"]


def switch_on(lab, prefix: str, name: str, volts: float) -> None:
    assert lab.command(f"{prefix}/cmd/setv/{name}", volts)["ok"]
    since = lab.client.mark()
    assert lab.command(f"{prefix}/cmd/switch/{name}", "on")["ok"]
    lab.wait_channel(prefix, name, lambda c: c["state"] == "ON", since=since)


@pytest.fixture
def interlocks(power_lab):
    """Publish a retained `/interlock/status`; cleared after the test."""

    def publish(*rules: dict) -> None:
        since = power_lab.client.mark()
        power_lab.client.publish("/interlock/status", {"rules": list(rules)}, retain=True)
        power_lab.client.wait_for("/interlock/status", since=since)

    yield publish
    power_lab.client.publish("/interlock/status", b"", retain=True)


def test_active_interlock_inhibits_hv_on_of_its_modules(power_lab, interlocks):
    lab = power_lab
    since = lab.client.mark()
    interlocks({"name": "chiller_running", "active": True, "reason": "chiller STOPPED",
                "modules": ["M2"]})  # fmt: skip
    lab.wait_channel("/hv", "hv_m2", lambda c: c["interlocks"] == ["chiller_running"], since=since)
    writes = lab.writes()
    answer = lab.command("/hv/cmd/switch/hv_m2", "on")
    assert not answer["ok"]
    assert "chiller_running" in answer["error"] and "chiller STOPPED" in answer["error"]
    assert lab.writes() == writes
    assert lab.command("/hv/cmd/switch/hv_m1", "on")["ok"]  # another module is not inhibited
    assert lab.command("/hv/cmd/switch/hv_m2", "off")["ok"]  # switching off is always allowed

    since = lab.client.mark()
    interlocks({"name": "chiller_running", "active": False, "modules": ["M2"]})
    lab.wait_channel("/hv", "hv_m2", lambda c: c["interlocks"] == [], since=since)
    assert lab.command("/hv/cmd/switch/hv_m2", "on")["ok"]


def test_interlock_for_every_module_and_malformed_status_ignored(power_lab, interlocks):
    lab = power_lab
    since = lab.client.mark()
    interlocks({"name": "dewpoint", "active": True, "reason": "margin 1.2 K", "modules": ["*"]})
    lab.wait_status("/hv", lambda chs: all(c["interlocks"] == ["dewpoint"] for c in chs), 5, since)
    lab.client.publish("/interlock/status", b"{not json", retain=True)
    answer = lab.command("/hv/cmd/switch/all", "on")  # the last valid status still holds
    assert not answer["ok"] and "dewpoint" in answer["error"]


def test_lv_off_refused_while_the_modules_hv_is_on(power_lab):
    lab = power_lab
    switch_on(lab, "/lv", "lv_m1", 10.5)
    switch_on(lab, "/hv", "hv_m1", 60)
    writes = lab.writes()
    for topic in ("/lv/cmd/switch/lv_m1", "/lv/cmd/switch/M1", "/lv/cmd/kill/lv_m1"):
        answer = lab.command(topic, "off")
        assert not answer["ok"] and "HV is on (hv_m1)" in answer["error"], answer
    assert lab.writes() == writes
    since = lab.client.mark()
    assert lab.command("/hv/cmd/switch/hv_m1", "off")["ok"]
    lab.wait_channel("/hv", "hv_m1", lambda c: c["state"] == "OFF", since=since)
    assert lab.command("/lv/cmd/switch/lv_m1", "off")["ok"]


def test_kill_switches_off_fast_and_switch_on_restores_the_ramp(power_lab):
    lab = power_lab
    switch_on(lab, "/hv", "hv_m3", 100)
    since = lab.client.mark()
    assert lab.command("/hv/cmd/kill/hv_m3", "")["ok"]
    lab.wait_channel("/hv", "hv_m3", lambda c: c["state"] == "OFF", since=since)
    assert lab.get(lab.pv(HV, 2, "RDWn")) == 1000.0
    assert lab.command("/hv/cmd/switch/hv_m3", "on")["ok"]
    assert lab.get(lab.pv(HV, 2, "RDWn")) == 400.0  # the lab's configured rdwn


def test_failsafe_switches_hv_off_when_the_broker_is_gone(workdir):
    broker = Broker(workdir).start()
    lab = PowerLab(workdir, broker, "failsafe",
                   **{"power.failsafe": {"broker_timeout": 0.5}}).start()  # fmt: skip
    try:
        switch_on(lab, "/lv", "lv_m2", 10.5)
        switch_on(lab, "/hv", "hv_m2", 80)
        lab.client.close()
        broker.stop()
        wait_for(lambda: lab.get(lab.pv(HV, 1, "Pw")) == 0, timeout=5)  # the crate sees it
        assert lab.get(lab.pv(LV, 1, "Pw")) == 1  # LV is left alone
        broker.start()
        lab.client = broker.client()
        state = lab.client.wait_for("/hv/state", lambda m: m.json["failsafe"], timeout=10).json
        assert "no broker for 0.5 s" in state["failsafe"]
        lab.wait_channel("/hv", "hv_m2", lambda c: c["state"] == "OFF", timeout=10)
        lv_state = lab.client.wait_for("/lv/state", timeout=5).json
        assert lv_state["failsafe"] is None
    finally:
        lab.stop()
        broker.stop()


def test_failsafe_covers_a_daemon_started_without_the_broker(workdir):
    """A daemon restarted while the broker is away finds HV on and nobody watching: it arms the
    fail-safe at start; a daemon that finds its broker at start does not fire it."""
    broker = Broker(workdir).start()
    lab = PowerLab(workdir, broker, "failsafe_start",
                   **{"power.failsafe": {"broker_timeout": 0.5}}).start()  # fmt: skip
    try:
        wait_for(lambda: "fail-safe countdown stopped" in lab.daemon.output(), timeout=5)
        switch_on(lab, "/hv", "hv_m1", 60)
        assert "fail-safe:" not in lab.daemon.output()  # the broker was there: it never fired
        lab.daemon.stop()  # a restart leaves the crate as it was
        assert lab.get(lab.pv(HV, 0, "Pw")) == 1
        lab.client.close()
        broker.stop()
        lab.daemon.start()
        wait_for(lambda: lab.get(lab.pv(HV, 0, "Pw")) == 0, timeout=5)
        assert "fail-safe armed until the broker connects" in lab.daemon.output()
        lab.put(lab.pv(HV, 0, "Pw"), 1)  # the front panel, while nobody watches: off again
        wait_for(lambda: "hv_m1 is on without supervision" in lab.daemon.output(), timeout=5)
        wait_for(lambda: lab.get(lab.pv(HV, 0, "Pw")) == 0, timeout=5)
        broker.start()
        lab.client = broker.client()
        state = lab.client.wait_for("/hv/state", lambda m: m.json["failsafe"], timeout=10).json
        assert "no broker for 0.5 s" in state["failsafe"]
    finally:
        lab.stop()
        broker.stop()


def test_short_broker_outage_does_not_trigger_the_failsafe(workdir):
    broker = Broker(workdir).start()
    lab = PowerLab(workdir, broker, "failsafe_short",
                   **{"power.failsafe": {"broker_timeout": 30}}).start()  # fmt: skip
    try:
        switch_on(lab, "/hv", "hv_m1", 50)
        lab.client.close()
        broker.stop()
        broker.start()
        lab.client = broker.client()
        lab.client.wait_for("/hv/availability", lambda m: m.text == "online", timeout=10)
        status = lab.client.wait_for("/hv/status", timeout=5).json
        assert status[0]["state"] == "ON"
        assert json.loads(lab.client.wait_for("/hv/state").payload)["failsafe"] is None
    finally:
        lab.stop()
        broker.stop()
