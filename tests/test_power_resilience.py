"""The power daemon when things go away: the crate, the broker, the daemon itself."""

from __future__ import annotations

import time

import pytest

from tests.conftest import Broker, PowerLab
from tests.labdata import EXAMPLE
from tests.simca import wait_for

HV, LV = EXAMPLE.channels("hv"), EXAMPLE.channels("lv")  # the lab below starts from it


@pytest.fixture
def lab(workdir, broker, request):
    lab = PowerLab(workdir, broker, request.node.name).start()
    yield lab
    lab.stop()


def all_in(state: str):
    return lambda channels: all(c["state"] == state for c in channels)


@pytest.mark.parametrize("how", ["kill", "stop"])
def test_crate_lost_then_back_without_restarting_the_daemon(lab, how):
    assert lab.command(LV[0].topic("switch"), "on")["ok"]
    lab.wait_channel("/lv", LV[0].name, lambda c: c["state"] == "ON")
    daemon_pid = lab.daemon.pid

    since = lab.client.mark()
    t0 = time.monotonic()
    getattr(lab.crate, how)()
    for prefix in ("/hv", "/lv"):
        lab.wait_status(prefix, all_in("DISCONNECTED"), timeout=2.0, since=since)
    assert time.monotonic() - t0 < 2.0
    lab.client.wait_for("/hv/state", lambda m: m.json["state"] == "DISCONNECTED", since=since)
    # the last known values stay, flagged by the state
    lv = lab.client.latest("/lv/status").json
    assert lv[0]["vreq"] == 10.5 and isinstance(lv[0]["vmon"], float)

    answer = lab.command(HV[0].topic("switch", by="number"), "on")
    assert not answer["ok"] and "DISCONNECTED" in answer["error"]

    since = lab.client.mark()
    lab.crate.start()  # same port: a crate that reboots
    for prefix in ("/hv", "/lv"):
        lab.wait_status(prefix, all_in("OFF"), timeout=10, since=since)
    assert lab.daemon.pid == daemon_pid and lab.daemon.alive
    assert lab.command(HV[0].topic("setv", by="number"), 42)["ok"]
    lab.wait_channel("/hv", HV[0].name, lambda c: c["vreq"] == 42.0, since=since)
    # protection settings written again (the settings channels connect just after the readbacks)
    wait_for(lambda: lab.get(lab.chpv(HV[0].name, "SVMax")) == 600.0, timeout=5)


def test_broker_restart_reconnects_republishes_and_takes_commands(workdir):
    broker = Broker(workdir).start()
    lab = PowerLab(workdir, broker, "broker_restart").start()
    try:
        lab.client.close()
        broker.stop()
        broker.start()  # a fresh broker: no retained messages survive (persistence off)
        lab.client = broker.client()
        for prefix in ("/hv", "/lv"):
            lab.client.wait_for(f"{prefix}/availability", lambda m: m.text == "online", 10)
            assert len(lab.client.wait_for(f"{prefix}/status", timeout=5).json) == 4
            lab.client.wait_for(f"{prefix}/state", timeout=5)
        late = broker.client(topics=("/hv/#", "/lv/#"))  # sees only what the broker retained
        try:
            for prefix in ("/hv", "/lv"):
                for topic in ("availability", "status", "state"):
                    assert late.wait_for(f"{prefix}/{topic}").retain
        finally:
            late.close()
        answer = lab.command(HV[1].topic("setv"), 77)
        assert answer["ok"], answer
        lab.wait_channel("/hv", HV[1].name, lambda c: c["vreq"] == 77.0)
    finally:
        lab.stop()
        broker.stop()


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_availability_goes_offline_when_the_daemon_goes(lab, broker, how):
    since = lab.client.mark()
    getattr(lab.daemon, how)()  # clean stop publishes it; a killed one leaves it to the will
    for prefix in ("/hv", "/lv"):
        lab.client.wait_for(f"{prefix}/availability", lambda m: m.text == "offline",
                                timeout=5, since=since)  # fmt: skip
    late = broker.client(topics=("/hv/availability",))
    try:
        assert late.wait_for("/hv/availability").text == "offline"
    finally:
        late.close()
