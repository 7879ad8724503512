"""Safety duties of the power daemon itself where they cross a process boundary (Channel
Access alarm severities and unconnected PVs, a real broker lost): the logic of inhibits, LV/HV
order and kill is tested in-process in tests/test_power_logic.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest

from tests.conftest import EXAMPLE_LAB, Broker, PowerLab
from tests.labdata import EXAMPLE
from tests.simca import wait_for
from trackerdcs.config import ChannelKind, load_config
from trackerdcs.mqtt import Command
from trackerdcs.power.backend import BackendError
from trackerdcs.power.channel import PowerChannel, make_machine
from trackerdcs.power.service import PowerService
from trackerdcs.stack.ready import logged

HV, LV = EXAMPLE.channels("hv"), EXAMPLE.channels("lv")  # the labs below start from it


def switch_on(lab, prefix: str, name: str, volts: float) -> None:
    assert lab.command(f"{prefix}/cmd/setv/{name}", volts)["ok"]
    since = lab.client.mark()
    assert lab.command(f"{prefix}/cmd/switch/{name}", "on")["ok"]
    lab.wait_channel(prefix, name, lambda c: c["state"] == "ON", since=since)


def test_an_invalid_channel_is_still_switched_off_and_killed(power_lab):
    """An IOC that marks a readback INVALID shows the channel DISCONNECTED, but still takes
    `Pw`: `off`, `kill` and `switch/all off` reach it (and the others); `on` and `setv` wait."""
    lab = power_lab
    invalid = lab.chpv(HV[0].name, "SimInvalid")
    try:
        for name in (HV[0].name, HV[1].name):
            switch_on(lab, "/hv", name, 60)
        since = lab.client.mark()
        lab.put(invalid, 1)
        lab.wait_channel("/hv", HV[0].name, lambda c: c["state"] == "DISCONNECTED", since=since)
        answer = lab.command("/hv/cmd/switch/all", "off")
        assert answer["ok"] and answer["channels"] == [c.name for c in HV]
        assert lab.get(lab.chpv(HV[0].name, "Pw")) == 0 and lab.get(lab.chpv(HV[1].name, "Pw")) == 0
        for topic, value in ((HV[0].topic("switch"), "on"), (HV[0].topic("setv"), 70)):
            refused = lab.command(topic, value)
            assert not refused["ok"] and "DISCONNECTED: IMon INVALID (COMM)" in refused["error"]
        since = lab.client.mark()
        lab.put(invalid, 0)
        lab.wait_channel("/hv", HV[0].name, lambda c: c["state"] == "OFF", since=since)
        switch_on(lab, "/hv", HV[0].name, 60)
        since = lab.client.mark()
        lab.put(invalid, 1)
        lab.wait_channel("/hv", HV[0].name, lambda c: c["state"] == "DISCONNECTED", since=since)
        assert lab.command(HV[0].topic("kill"), "")["ok"]
        assert lab.get(lab.chpv(HV[0].name, "Pw")) == 0
        assert lab.get(lab.chpv(HV[0].name, "RDWn")) == 1000.0  # kill_rate
        assert lab.command(HV[0].topic("switch"), "off")["ok"]
    finally:
        lab.put(invalid, 0)


def test_kill_switches_off_while_the_ramp_down_pv_is_not_connected(workdir):
    """Right after a (re)start the RDWn PV may not be connected yet: kill writes Pw all the
    same, and its answer says the fast ramp-down was not set."""
    broker = Broker(workdir).start()  # its own: the module's lab serves /hv as well
    never_absent = {"crates.0.absent_timeout": 600}  # not counted absent during the test
    lab = PowerLab(workdir, broker, "kill_no_rdwn", crate_args=("--omit", f"{HV[0].board}:RDWn"),
                   **never_absent).start()  # fmt: skip
    try:
        switch_on(lab, "/hv", HV[0].name, 60)
        answer = lab.command(HV[0].topic("kill"), "")
        assert answer["ok"] and answer["channels"] == [HV[0].name], answer
        warning = answer["warning"]
        assert warning.startswith(f"{HV[0].name}: fast ramp-down not set (") and warning.endswith(
            "RDWn not connected): ramps down at the crate's current ramp-down"
        )
        assert lab.get(lab.chpv(HV[0].name, "Pw")) == 0
        switch_on(lab, "/hv", HV[0].name, 60)  # nothing to restore: on as usual
        assert lab.command(HV[0].topic("switch"), "off")["ok"]
    finally:
        lab.stop()
        broker.stop()


# -- off and kill where the crate cannot take every write: the service in-process -------------
class AnswerLink:
    """Stands in for MqttLink: keeps the answers."""

    def __init__(self) -> None:
        self.answers: list[dict] = []

    def publish_state(self, topic: str, payload: str) -> None:
        pass

    def respond(self, cmd: Command, ok: bool, error: str | None = None, **extra) -> dict:
        answer = {"ok": ok, "error": error, **extra}
        self.answers.append(answer)
        return answer


class PartialBackend:
    """A crate some of whose PVs cannot be written now (`down`: (channel name, param))."""

    def __init__(self, names: dict) -> None:
        self.names = names  # address -> channel name
        self.down: set[tuple[str, str]] = set()
        self.writes: list[tuple[str, str, object]] = []

    def write(self, addr, param: str, value) -> None:
        if (self.names[addr], param) in self.down:
            raise BackendError(f"{self.names[addr]}:{param} not connected")
        self.writes.append((self.names[addr], param, value))


@pytest.fixture
def hv_service() -> Iterator[PowerService]:
    cfg = load_config(EXAMPLE_LAB)
    channels = [PowerChannel(c, cfg.limits_for(c), cfg.board_of(c).spec)
                for c in cfg.power.channels if c.kind == "hv"]  # fmt: skip
    make_machine(channels)
    loop = asyncio.new_event_loop()
    backend = PartialBackend({c.address: c.name for c in channels})
    svc = PowerService(ChannelKind.HV, "/hv", channels, backend, AnswerLink(),  # type: ignore
                       cfg.power.publish, loop)  # fmt: skip
    for ch in channels:
        svc.on_connection(ch.address, True)
        for param, value in ch.readback.items():
            svc.on_readback(ch.address, param, value)
    assert all(ch.state == "OFF" for ch in channels)
    yield svc
    svc.stop()
    loop.close()


def command(svc: PowerService, action: str, payload: str) -> dict:
    svc.handle_command(Command(topic=f"/hv/cmd/{action}", action=action, payload=payload))
    return svc.link.answers[-1]  # type: ignore[attr-defined]


@pytest.mark.parametrize("action", ["switch/all", "kill/all"])
def test_off_reaches_every_channel_it_can_and_names_the_others(hv_service, action):
    backend = hv_service.backend
    backend.down = {(HV[1].name, "Pw"), (HV[1].name, "RDWn")}
    backend.writes.clear()
    answer = command(hv_service, action, "off")
    assert answer["ok"] is False and answer["not_written"] == [HV[1].name]
    assert answer["channels"] == [HV[0].name, HV[2].name, HV[3].name]
    assert answer["error"] == (
        f"could not be switched off: {HV[1].name} ({HV[1].name}:Pw not connected); "
        f"switched off: {HV[0].name}, {HV[2].name}, {HV[3].name}"
    )
    assert [(n, v) for n, p, v in backend.writes if p == "Pw"] == [
        (HV[0].name, 0), (HV[2].name, 0), (HV[3].name, 0)
    ]  # fmt: skip
    if action.startswith("kill"):
        assert (
            f"{HV[1].name}: fast ramp-down not set ({HV[1].name}:RDWn not connected)"
            in answer["warning"]
        )


def test_switch_on_after_kill_waits_until_the_ramp_down_is_restored(hv_service):
    backend = hv_service.backend
    assert command(hv_service, f"kill/{HV[2].name}", "")["ok"]
    assert backend.writes[-2:] == [(HV[2].name, "RDWn", 1000.0), (HV[2].name, "Pw", 0)]
    backend.down = {(HV[2].name, "RDWn")}
    writes = len(backend.writes)
    answer = command(hv_service, f"switch/{HV[2].name}", "on")
    assert answer["ok"] is False and "ramp-down is still kill's" in answer["error"]
    assert "nothing was switched on" in answer["error"] and len(backend.writes) == writes
    backend.down = set()
    assert command(hv_service, f"switch/{HV[2].name}", "on")["ok"]
    assert backend.writes[-2:] == [(HV[2].name, "RDWn", 50.0), (HV[2].name, "Pw", 1)]


def test_failsafe_switches_hv_off_when_the_broker_is_gone(workdir):
    broker = Broker(workdir).start()
    lab = PowerLab(workdir, broker, "failsafe",
                   **{"power.failsafe": {"broker_timeout": 0.5}}).start()  # fmt: skip
    try:
        switch_on(lab, "/lv", LV[1].name, 10.5)
        switch_on(lab, "/hv", HV[1].name, 80)
        lab.client.close()
        broker.stop()
        wait_for(lambda: lab.get(lab.chpv(HV[1].name, "Pw")) == 0, timeout=5)  # the crate sees it
        assert lab.get(lab.chpv(LV[1].name, "Pw")) == 1  # LV is left alone
        broker.start()
        lab.client = broker.client()
        state = lab.client.wait_for("/hv/state", lambda m: m.json["failsafe"], timeout=10).json
        assert "no broker for 0.5 s" in state["failsafe"]
        lab.wait_channel("/hv", HV[1].name, lambda c: c["state"] == "OFF", timeout=10)
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
        switch_on(lab, "/hv", HV[0].name, 60)
        assert "fail-safe:" not in lab.daemon.output()  # the broker was there: it never fired
        lab.daemon.stop()  # a restart leaves the crate as it was
        assert lab.get(lab.chpv(HV[0].name, "Pw")) == 1
        lab.client.close()
        broker.stop()
        lab.daemon.ready = logged("serving crate")  # no broker to say `online` on
        lab.daemon.start()
        wait_for(lambda: lab.get(lab.chpv(HV[0].name, "Pw")) == 0, timeout=5)
        assert "fail-safe armed until the broker connects" in lab.daemon.output()
        lab.put(lab.chpv(HV[0].name, "Pw"), 1)  # the front panel, while nobody watches: off again
        wait_for(
            lambda: f"{HV[0].name} is on without supervision" in lab.daemon.output(), timeout=5
        )
        wait_for(lambda: lab.get(lab.chpv(HV[0].name, "Pw")) == 0, timeout=5)
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
        switch_on(lab, "/hv", HV[0].name, 50)
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
