"""The HV Wrapper backend, with CAEN's proprietary library replaced at its one seam.

`libcaenhvwrapper.so` cannot run here, so `device_opener` returns a stand-in for
`caen_libs.caenhvwrapper.Device` backed by the simulated crate's physics. Everything above that
seam is the production code: the backend's session thread, the daemon's services, real MQTT.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from tests.conftest import PowerLab
from tests.simca import wait_for
from trackerdcs.config import load_config
from trackerdcs.power.backend import ChannelAddress
from trackerdcs.power.caenwrapper_backend import CaenWrapperBackend
from trackerdcs.power.daemon import CrateDaemon
from trackerdcs.sim.crate_model import PW_STATES, SimCrate


class SimDevice:
    """What the backend uses of `caen_libs.caenhvwrapper.Device`, over `SimCrate`."""

    def __init__(self, model: SimCrate, alive: threading.Event) -> None:
        self.model = model
        self.alive = alive
        self.t = time.monotonic()
        self.closed = False

    def _check(self) -> None:
        if not self.alive.is_set():
            raise ConnectionError("CAENHV_SYSERR: crate does not answer")  # as the library would

    def get_ch_param(self, slot: int, channels: list[int], name: str) -> list:
        self._check()
        now = time.monotonic()
        self.model.step(now - self.t)
        self.t = now
        values = [self.model.channel(slot, c).reading(name) for c in channels]
        return [PW_STATES.index(v) if name == "Pw" else v for v in values]

    def set_ch_param(self, slot: int, channels: list[int], name: str, value) -> None:
        self._check()
        for c in channels:
            self.model.write(slot, c, name, value)

    def exec_comm(self, name: str) -> None:
        self._check()
        assert name == "ClearAlarm"
        self.model.clear_alarm()

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def wrapper_lab(workdir, broker):
    lab = PowerLab(workdir, broker, "caenwrapper", **{"crates.0.backend": "caenwrapper"})
    cfg = load_config(lab.config)
    crate = cfg.crates[0]
    model = SimCrate({b: (bd.kind.value, bd.channels) for b, bd in crate.boards.items()}, noise=0)
    alive = threading.Event()
    alive.set()
    opened: list[SimDevice] = []

    def opener(_crate):
        if not alive.is_set():
            raise ConnectionError("CAENHV_DEVICEOPEN failed")
        opened.append(SimDevice(model, alive))
        return opened[-1]

    loop = asyncio.new_event_loop()
    addresses = [ChannelAddress(c.board, c.channel) for c in cfg.channels_of(crate.name)]
    backend = CaenWrapperBackend(crate, addresses, opener, poll_interval=0.05, retry_interval=0.1)
    lab.client = lab.broker.client()
    daemon = CrateDaemon(cfg, crate.name, loop, backend=backend)
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    loop.call_soon_threadsafe(daemon.start)
    lab.wait_status("/hv", lambda chs: all(c["state"] == "OFF" for c in chs))
    # the settings written at connection go through the session thread's queue: wait for the
    # last of them (I0Set) on every channel before tests count writes
    wait_for(
        lambda: (
            all(
                model.channel(c.board, c.channel).i0set == cfg.limits_for(c).iset
                for c in cfg.channels_of(crate.name)
            )
            and backend._writes.empty()
        ),
        timeout=5,
    )
    yield lab, model, alive, opened
    loop.call_soon_threadsafe(daemon.stop)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    lab.client.close()


def test_commands_reach_the_crate_and_readbacks_come_back(wrapper_lab):
    lab, model, *_ = wrapper_lab
    assert model.channel(0, 0).svmax == 600.0  # protection settings written at connect
    since = lab.client.mark()
    assert lab.command("/hv/cmd/setv/hv_m1", 80)["ok"]
    assert lab.command("/hv/cmd/switch/hv_m1", "on")["ok"]
    on = lab.wait_channel("/hv", "hv_m1", lambda c: c["state"] == "ON", since=since)
    assert on["vreq"] == 80.0 and abs(on["vmon"] - 80) <= 2
    assert model.channel(0, 0).pw


def test_refused_command_writes_nothing(wrapper_lab):
    lab, model, *_ = wrapper_lab
    writes = model.writes
    assert not lab.command("/hv/cmd/setv/hv_m4", 450)["ok"]
    assert model.writes == writes


def test_session_lost_then_reopened(wrapper_lab):
    lab, _, alive, opened = wrapper_lab
    since = lab.client.mark()
    alive.clear()
    lab.wait_status("/hv", lambda chs: all(c["state"] == "DISCONNECTED" for c in chs), 2, since)
    assert opened[-1].closed
    since = lab.client.mark()
    alive.set()
    lab.wait_status("/hv", lambda chs: all(c["state"] == "OFF" for c in chs), 5, since)
    assert lab.command("/hv/cmd/clear", "")["ok"]
