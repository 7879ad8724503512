"""The HV Wrapper backend, with CAEN's proprietary library replaced at its one seam.

`libcaenhvwrapper.so` cannot run here, so `device_opener` returns a stand-in for
`caen_libs.caenhvwrapper.Device` backed by the simulated crate's physics and faithful to the
binding's types and errors (`tests/fake_caenhv.py`). Everything above that seam is the
production code: the backend's session thread, the daemon's services, real MQTT.
"""

from __future__ import annotations

import asyncio
import ctypes as ct
import logging
import threading

import pytest

from tests.conftest import PowerLab
from tests.fake_caenhv import Device, Error
from tests.labdata import EXAMPLE, EXAMPLE_LAB
from tests.simca import wait_for
from trackerdcs.config import load_config
from trackerdcs.power.backend import ChannelAddress
from trackerdcs.power.caenwrapper_backend import CaenWrapperBackend
from trackerdcs.power.daemon import CrateDaemon
from trackerdcs.power.status import ChannelStatus as S
from trackerdcs.sim.crate import boards_of
from trackerdcs.sim.crate_model import SimCrate
from trackerdcs.stack.process import wait_until

HV, LV = EXAMPLE.channels("hv"), EXAMPLE.channels("lv")  # the lab below starts from it


def start_wrapper_lab(workdir, broker, name: str, omit=None, **overrides):
    """The power daemon with the caenwrapper backend over the stand-in; returns what it needs
    and a function that stops it."""
    lab = PowerLab(workdir, broker, name, **{"crates.0.backend": "caenwrapper", **overrides})
    cfg = load_config(lab.config)
    crate = cfg.crates[0]
    omit = {lab.slots[kind]: names for kind, names in (omit or {}).items()}  # by board kind
    model = SimCrate(boards_of(crate, omit=omit), noise=0)
    alive = threading.Event()
    alive.set()
    opened: list[Device] = []

    def opener(_crate):
        if not alive.is_set():
            raise Error("connection failed", Error.Code.DOWN, "CAENHV_InitSystem")
        opened.append(Device(model, alive))
        return opened[-1]

    loop = asyncio.new_event_loop()
    addresses = [ChannelAddress(c.board, c.channel) for c in cfg.channels_of(crate.name)]
    backend = CaenWrapperBackend(crate, addresses, opener, poll_interval=0.05, retry_interval=0.1)
    lab.client = lab.broker.client()
    daemon = CrateDaemon(cfg, crate.name, loop, backend=backend)
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    loop.call_soon_threadsafe(daemon.start)
    for prefix in ("/hv", "/lv"):  # each link connects on its own: both, live
        lab.wait_status(prefix, lambda chs: all(c["state"] == "OFF" for c in chs))
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

    def stop() -> None:
        loop.call_soon_threadsafe(daemon.stop)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        lab.client.close()

    return lab, model, alive, opened, stop


@pytest.fixture
def wrapper_lab(workdir, broker):
    *lab, stop = start_wrapper_lab(workdir, broker, "caenwrapper")
    yield lab
    stop()


def test_commands_reach_the_crate_and_readbacks_come_back(wrapper_lab):
    lab, model, *_ = wrapper_lab
    assert model.channel(*lab.places[HV[0].name]).svmax == 600.0  # settings written at connect
    since = lab.client.mark()
    assert lab.command(HV[0].topic("setv"), 80)["ok"]
    assert lab.command(HV[0].topic("switch"), "on")["ok"]
    on = lab.wait_channel("/hv", HV[0].name, lambda c: c["state"] == "ON", since=since)
    assert on["vreq"] == 80.0 and abs(on["vmon"] - 80) <= 2
    assert model.channel(*lab.places[HV[0].name]).pw


def test_refused_command_writes_nothing(wrapper_lab):
    lab, model, *_ = wrapper_lab
    writes = model.writes
    assert not lab.command(EXAMPLE.limited("hv").topic("setv"), 450)["ok"]
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


def test_every_setting_is_written_with_the_bindings_types(wrapper_lab):
    lab, model, _, opened = wrapper_lab
    cfg = load_config(lab.config)
    calls = {(slot, name): value for slot, name, value in opened[-1].calls}
    hv, lv = lab.slots["hv"], lab.slots["lv"]
    # on/off as the C int of the board's state (PDwn Kill = offstate = 0), numbers as C floats
    assert isinstance(calls[(hv, "PDwn")], ct.Array) and calls[(hv, "PDwn")][0] == 0
    assert calls[(hv, "PDwn")]._type_ is ct.c_int
    for slot, name in ((hv, "SVMax"), (hv, "RUp"), (hv, "RDWn"), (hv, "Trip"), (lv, "Trip"),
                       (lv, "RUpTime"), (lv, "RDwTime"), (lv, "V0Set"), (lv, "I0Set")):  # fmt: skip
        assert calls[(slot, name)]._type_ is ct.c_float, name
    lv0 = model.channel(*lab.places[LV[0].name])
    limits = cfg.limits_for(next(c for c in cfg.power.channels if c.name == LV[0].name))
    assert (lv0.settings["RUpTime"], lv0.settings["RDwTime"]) == (
        limits.ruptime,
        limits.rdwtime,
    )
    assert (lv, "RUp") not in calls and (lv, "PDwn") not in calls  # an A2519 has neither
    since = lab.client.mark()
    before = len(opened[-1].calls)
    assert lab.command(LV[0].topic("switch"), "on")["ok"]
    # the daemon may write other settings meanwhile: look for the Pw write, not the last call;
    # the answer comes once the write is queued for the wrapper's session thread, not done
    [pw] = wait_until(
        lambda: [v for slot, name, v in opened[-1].calls[before:] if (slot, name) == (lv, "Pw")],
        5, "the Pw write through the wrapper",
    )  # fmt: skip
    assert pw._type_ is ct.c_int  # Pw as a C int
    lab.wait_channel("/lv", LV[0].name, lambda c: c["state"] == "ON" and c["vmon"] == 10.5,
                     since=since)  # fmt: skip


def test_the_stand_in_fails_like_the_binding(wrapper_lab):
    lab, _, _, opened = wrapper_lab
    device = opened[-1]
    hv_slot, ch = lab.places[HV[0].name]
    with pytest.raises(TypeError):  # ctypes refuses a str for a C int, as in caen-libs
        device.set_ch_param(hv_slot, [ch], "PDwn", "Kill")
    with pytest.raises(TypeError):
        device.set_ch_param(hv_slot, [ch], "Pw", 1.0)
    with pytest.raises(Error) as info:
        device.set_ch_param(hv_slot, [ch], "RUpTime", 100.0)  # an A1515TG ramps by rate
    assert info.value.code is Error.Code.PARAMNOTFOUND
    assert str(info.value) == "__get_param_type failed: Parameter not found (PARAMNOTFOUND)"
    assert device.get_ch_param(hv_slot, [ch], "Pw") == [0]  # on/off read back as an int
    [imon] = device.get_ch_param(hv_slot, [ch], "V0Set")
    assert isinstance(imon, float)


def test_a_parameter_the_board_lacks_is_reported_once_and_the_rest_works(workdir, broker):
    """The configured A2519 lacks RDwTime on the real board: the daemon says so once, writes
    everything else, and the channel switches on and off; no reconnect loop."""
    lab, model, _, opened, stop = start_wrapper_lab(
        workdir, broker, "caenwrapper-absent", omit={"lv": {"RDwTime"}}
    )
    try:
        state = lab.client.wait_for(
            "/lv/state", lambda m: any("0, 1, 2, 3" in w for w in m.json["warnings"])
        ).json
        [warning] = state["warnings"]
        assert warning.startswith("board ") and "(A2519): RDwTime not served" in warning
        lv1 = model.channel(*lab.places[LV[1].name])
        wait_for(lambda: lv1.settings["RUpTime"] == 500.0 and lv1.trip == 0.5)  # the rest
        since = lab.client.mark()
        assert lab.command(LV[1].topic("switch"), "on")["ok"]
        lab.wait_channel("/lv", LV[1].name, lambda c: c["state"] == "ON", since=since)
        assert lab.command(LV[1].topic("kill"), "")["ok"]  # no RDwTime to raise: just off
        lab.wait_channel("/lv", LV[1].name, lambda c: c["state"] == "OFF", timeout=5, since=since)
        assert len(opened) == 1  # one session: no reconnect loop
    finally:
        stop()


class RecordingSink:
    """A `BackendSink` that keeps what the backend hands over, on the backend's thread."""

    def __init__(self) -> None:
        self.batches: list[list] = []
        self.alone: list = []  # readbacks handed over one by one: none expected
        self.connected: set[ChannelAddress] = set()

    def on_readback(self, addr, param, value):
        self.alone.append((addr, param, value))

    def on_readbacks(self, batch):
        self.batches.append(list(batch))

    def on_connection(self, addr, connected):
        if connected:
            self.connected.add(addr)
        else:
            self.connected.discard(addr)

    def on_absent(self, addr, param):
        pass

    def on_invalid(self, addr, reason):
        pass


class SlowCrate(Device):
    """The stand-in on a crate that takes `STEP` s of its own time per call: the physics moves
    between two reads of one poll, as a real crate's does (and as it did on a loaded CI machine,
    which published ON beside a VMon still ramping)."""

    STEP = 0.05

    def __init__(self, model: SimCrate, alive: threading.Event) -> None:
        super().__init__(model, alive)
        self.reads: list[tuple[int, str]] = []  # get_ch_param: (slot, parameter), in order

    def get_ch_param(self, slot: int, channels: list[int], name: str) -> list:
        self.reads.append((slot, name))
        return super().get_ch_param(slot, channels, name)

    def _step(self) -> None:
        self.model.step(self.STEP)


class BackendRig:
    """The wrapper backend alone, in this process, on the example lab's crate: the stand-in
    `device` class over a `SimCrate` (each session opened is in `opened`), a `RecordingSink`.
    `with` starts it and waits until every channel is connected, and stops it."""

    def __init__(self, device: type[Device] = Device, poll_interval: float = 0.01) -> None:
        cfg = load_config(EXAMPLE_LAB)
        crate = cfg.crates[0]
        self.model = SimCrate(boards_of(crate), noise=0)
        self.alive = threading.Event()
        self.alive.set()
        self.opened: list[Device] = []
        self.addresses = [ChannelAddress(c.board, c.channel) for c in cfg.channels_of(crate.name)]
        self.sink = RecordingSink()

        def opener(_crate):
            self.opened.append(device(self.model, self.alive))
            return self.opened[-1]

        self.backend = CaenWrapperBackend(crate, self.addresses, opener, poll_interval, 0.1)

    def all_connected(self) -> bool:
        return self.sink.connected == set(self.addresses)

    def __enter__(self) -> BackendRig:
        self.backend.start(self.sink)
        try:
            wait_for(self.all_connected, timeout=5)
        except BaseException:
            self.backend.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.backend.stop()


def test_a_poll_is_one_picture_the_state_read_before_the_readings():
    rig = BackendRig(SlowCrate, poll_interval=0.001)
    backend, sink, addresses = rig.backend, rig.sink, rig.addresses
    hv = ChannelAddress(*HV[0].place)

    def ended() -> int:
        """Statuses the daemon could publish between two batches with hv's ramp ended; each
        checked: its VMon is at the set point, not the VMon of a poll before."""
        seen: dict[str, float | int] = {}
        count = 0
        for batch in list(sink.batches):
            seen.update({param: value for addr, param, value in batch if addr == hv})
            status = int(seen.get("Status", 0))
            if status & S.ON and not status & (S.RAMP_UP | S.RAMP_DOWN):
                count += 1
                assert seen["VMon"] == seen["V0Set"] == 80.0, seen
        return count

    with rig:
        first = {(addr, param) for addr, param, _ in sink.batches[0]}
        monitored = {(a, p.name) for a in addresses for p in backend.models[a].monitored}
        assert first == monitored  # the first poll: every readback of every channel, at once
        backend.write(hv, "V0Set", 80.0)
        backend.write(hv, "Pw", "On")
        wait_for(lambda: ended() > 0, timeout=10)  # the ramp seen to end
    assert ended() and not sink.alone
    # by construction, not by luck of timing: on every board, in every poll, the state (Pw,
    # Status) is read before the readings it qualifies (VMon, IMon)
    reads = rig.opened[-1].reads
    for slot in {a.board for a in addresses}:
        names = [name for s, name in reads if s == slot]
        poll = len(backend.models[next(a for a in addresses if a.board == slot)].monitored)
        for start in range(0, len(names) - poll + 1, poll):
            one = names[start : start + poll]
            assert max(one.index("Pw"), one.index("Status")) < min(
                one.index("VMon"), one.index("IMon")
            ), one


def test_a_reconnect_asked_for_opens_a_new_session_without_an_error(caplog):
    """`reconnect` closes the session and the next cycle opens one: the poll that followed the
    close used to run on the closed session and log a misleading library error."""
    with BackendRig() as rig:
        opened = rig.opened
        caplog.clear()
        caplog.set_level(logging.INFO, logger=CaenWrapperBackend.__module__)
        rig.backend.reconnect()
        wait_for(lambda: len(opened) == 2 and rig.all_connected(), timeout=5)
        assert opened[0].closed and not opened[1].closed
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]
    assert any("to open a new one" in r.getMessage() for r in caplog.records)
