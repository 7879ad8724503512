"""Board models end to end: the power daemon and the simulated crate over real Channel Access.

Every model of the table is configured on one crate; boards whose real parameter set differs
from the configured model; INVALID alarm severity; and a client that reads every PV a real lab
client reads per board kind (hardware.md, "Parameter sets by board kind").
"""

from __future__ import annotations

import time

import pytest
import yaml

from tests.conftest import EXAMPLE_LAB, EXAMPLE_SLOTS, PowerLab
from tests.labdata import EXAMPLE, LabData
from tests.simca import CAMonitor, SimCrateProcess, ca_get, ca_put, wait_for
from trackerdcs.power.boards import BOARD_MODELS, GENERIC, markdown_table
from trackerdcs.power.pvnames import board_pv, channel_pv, system_pv

# What a lab's CAEN client reads from a real SY4527, per channel (hardware.md)
EVERY_BOARD = ("V0Set", "I0Set", "Pw", "Trip", "TripInt", "TripExt", "Status", "VMon", "IMon")
HV_EXTRA = ("RUp", "RDWn", "ImRange", "PDwn")
LV_EXTRA = ("UNVThr", "OVVThr", "RUpTime", "RDwTime", "Temp")

# One crate with every model of the table: slot -> (kind, model, board settings, channels used)
ALL_MODELS = {
    12: ("hv", "A1515TG", {"imrange": "Low", "tripint": 3, "tripext": 1, "rup": 100, "rdwn": 200},
         2),
    14: ("hv", "A7435SN", {"tripint": 5}, 2),
    9: ("hv", "generic", {}, 2),
    1: ("lv", "A2519", {"unvthr": 9.5, "ovvthr": 11.5, "ruptime": 400, "rdwtime": 200}, 2),
    2: ("lv", "generic", {"rup": 30, "rdwn": 60}, 2),
}  # fmt: skip


def slot_of(model: str) -> int:
    """The slot of the all-models crate's (only) board of this model."""
    return next(slot for slot, (_, m, *_) in ALL_MODELS.items() if m == model)


HV_SLOT, LV_SLOT = slot_of("A1515TG"), slot_of("A2519")  # the boards the tests below drive


def all_models_lab(path, mqtt_port: int, ca_port: int, system: str) -> None:
    boards, channels, numbers = {}, [], {"hv": 0, "lv": 0}
    for slot, (kind, model, settings, used) in ALL_MODELS.items():
        board = {"kind": kind, "model": model, "settings": settings}
        if BOARD_MODELS.get(model, GENERIC[kind]).channels is None:
            board["channels"] = 4  # generic boards and A7435SN: the count is the YAML's
        boards[slot] = board
        for ch in range(used):
            channels.append({"number": numbers[kind], "name": f"{kind}_{slot}_{ch}", "kind": kind,
                             "board": slot, "channel": ch})  # fmt: skip
            numbers[kind] += 1
    data = {
        "lab": "models",
        "mqtt": {"host": "127.0.0.1", "port": mqtt_port, "reconnect_max_delay": 0.5},
        "crates": [{"name": "sy4527", "system": system, "address": f"127.0.0.1:{ca_port}",
                    "boards": boards, "absent_timeout": 0.5}],
        "power": {
            "defaults": {"hv": {"vset": 0, "vmax": 600, "iset": 10, "imax": 100, "trip": 0.2},
                         "lv": {"vset": 10.5, "vmax": 12, "iset": 2.0, "imax": 4, "trip": 0.5}},
            "channels": channels,
        },
    }  # fmt: skip
    path.write_text(yaml.safe_dump(data, sort_keys=False))


class ModelsLab(PowerLab):
    """A PowerLab on the all-models crate instead of the example lab."""

    def __init__(self, workdir, broker, name: str, **kw) -> None:
        super().__init__(workdir, broker, name, **kw)
        all_models_lab(self.config, broker.port, self.ca_port, self.system)
        self.lab = LabData.load(self.config)
        self.places, self.slots = self.lab.places, self.lab.slots

    def on_board(self, slot: int) -> list:
        """The lab file's channels on the board in `slot` (tests.labdata.Channel)."""
        return [c for c in self.lab.channels() if c.board == slot]

    def start(self) -> ModelsLab:
        self.client = self.broker.client()
        self.crate.start()
        self.daemon.start()
        for prefix in ("/hv", "/lv"):
            self.wait_status(prefix, lambda chs: all(c["state"] == "OFF" for c in chs), 10)
        return self


@pytest.fixture(scope="module")
def models_lab(workdir, broker):
    lab = ModelsLab(workdir, broker, "models").start()
    yield lab
    lab.stop()


def test_every_model_is_configured_end_to_end(models_lab):
    lab = models_lab
    expected = [  # per board of ALL_MODELS, in its order
        {"SVMax": 600.0, "RUp": 100.0, "RDWn": 200.0, "Trip": 0.2, "PDwn": 0, "ImRange": 1,
         "TripInt": 3, "TripExt": 1, "I0Set": 10.0},
        {"SVMax": 600.0, "RUp": 50.0, "RDWn": 50.0, "Trip": 0.2, "TripInt": 5, "I0Set": 10.0},
        {"SVMax": 600.0, "RUp": 50.0, "RDWn": 50.0, "Trip": 0.2, "PDwn": 0, "I0Set": 10.0},
        {"Trip": 0.5, "UNVThr": 9.5, "OVVThr": 11.5, "RUpTime": 400.0, "RDwTime": 200.0,
         "V0Set": 10.5, "I0Set": 2.0},
        {"SVMax": 12.0, "RUp": 30.0, "RDWn": 60.0, "Trip": 0.5, "V0Set": 10.5, "I0Set": 2.0},
    ]  # fmt: skip
    for slot, values in zip(ALL_MODELS, expected, strict=True):
        for ch in lab.on_board(slot):
            for param, value in values.items():
                pv = lab.chpv(ch.name, param)
                wait_for(lambda pv=pv, v=value: lab.get(pv) == pytest.approx(v), timeout=5)
    state = lab.client.latest("/hv/state").json
    assert state["warnings"] == [] and lab.client.latest("/lv/state").json["warnings"] == []


def test_lv_board_ramps_by_time_to_its_set_point(models_lab):
    lab = models_lab
    lv = lab.on_board(LV_SLOT)[0]
    since = lab.client.mark()
    t0 = time.monotonic()
    assert lab.command(lv.topic("switch"), "on")["ok"]
    on = lab.wait_channel("/lv", lv.name, lambda c: c["state"] == "ON", since=since)
    assert on["vmon"] == 10.5 and on["vreq"] == 10.5
    at_on = next(
        m.t for m in lab.client.messages[since:]
        if m.topic == "/lv/status" and any(c["name"] == lv.name and c["state"] == "ON"
                                           for c in m.json)
    )  # fmt: skip
    assert at_on - t0 > 0.3  # RUpTime 400 ms: the ramp takes that long, whatever the load
    assert "RAMPING_UP" in [
        next(c["state"] for c in m.json if c["name"] == lv.name)
        for m in lab.client.messages[since:]
        if m.topic == "/lv/status"
    ]
    assert lab.get(lab.chpv(lv.name, "Temp")) > 25.0  # the board warms with its load
    since = lab.client.mark()
    assert lab.command(lv.topic("kill"), "")["ok"]
    lab.wait_channel("/lv", lv.name, lambda c: c["state"] == "OFF", since=since)
    assert lab.get(lab.chpv(lv.name, "RDwTime")) == 100.0  # kill_time, restored at the next on
    assert lab.command(lv.topic("switch"), "on")["ok"]
    assert lab.get(lab.chpv(lv.name, "RDwTime")) == 200.0
    assert lab.command(lv.topic("switch"), "off")["ok"]


def test_over_voltage_threshold_trips_an_lv_channel(models_lab):
    lab = models_lab
    lv = lab.on_board(LV_SLOT)[1]
    since = lab.client.mark()
    assert lab.command(lv.topic("switch"), "on")["ok"]
    lab.wait_channel("/lv", lv.name, lambda c: c["state"] == "ON", since=since)
    lab.put(lab.chpv(lv.name, "OVVThr"), 10.0)  # below the 10.5 V output
    tripped = lab.wait_channel("/lv", lv.name, lambda c: c["state"] == "TRIPPED", since=since)
    assert "INT_TRIP" in tripped["flags"]
    lab.put(lab.chpv(lv.name, "OVVThr"), 11.5)
    assert lab.command("/lv/cmd/clear", "")["ok"]
    lab.wait_channel("/lv", lv.name, lambda c: c["state"] == "OFF", since=since)


def test_invalid_severity_shows_as_lost_data(models_lab):
    lab = models_lab
    hv = lab.on_board(HV_SLOT)[1]
    since = lab.client.mark()
    lab.put(lab.chpv(hv.name, "SimInvalid"), 1)
    lab.wait_channel("/hv", hv.name, lambda c: c["state"] == "DISCONNECTED", since=since)
    both = [f"{hv.name}: IMon INVALID (COMM), VMon INVALID (COMM)"]
    state = lab.client.wait_for("/hv/state", lambda m: m.json["warnings"] == both, since=since)
    assert state.json["state"] == "DISCONNECTED"
    answer = lab.command(hv.topic("switch"), "on")
    assert not answer["ok"] and "DISCONNECTED: IMon INVALID (COMM)" in answer["error"]
    lab.put(lab.chpv(hv.name, "SimInvalid"), 0)
    lab.wait_channel("/hv", hv.name, lambda c: c["state"] == "OFF", since=since)
    lab.client.wait_for("/hv/state", lambda m: m.json["warnings"] == [], since=since)


CONFIGURED = ": its configured value is not written"


@pytest.mark.parametrize(
    ("name", "crate_args", "absent"),
    [
        ("omit", ["--omit", f"{HV_SLOT}:ImRange,PDwn"], ["ImRange", "PDwn"]),  # another firmware
        ("mismatch", ["--board", f"{HV_SLOT}=generic"], ["ImRange", "TripExt", "TripInt"]),
    ],
)
def test_board_without_a_configured_parameter_works_and_warns_once(
    workdir, broker, name, crate_args, absent
):
    lab = ModelsLab(workdir, broker, f"models-{name}", crate_args=tuple(crate_args)).start()
    hv = lab.on_board(HV_SLOT)
    try:
        state = lab.client.wait_for(
            "/hv/state",
            lambda m: (
                len(m.json["warnings"]) == len(absent)
                and all(f"{hv[0].channel}, {hv[1].channel}:" in w for w in m.json["warnings"])
            ),
            timeout=10,
        ).json
        for param, warning in zip(absent, state["warnings"], strict=True):
            assert warning == (
                f"board {HV_SLOT} (A1515TG): {param} not served by the crate on channel(s) "
                f"{hv[0].channel}, {hv[1].channel}" + CONFIGURED
            )
        for pv, value in ((lab.chpv(hv[0].name, "SVMax"), 600.0),
                          (lab.chpv(hv[1].name, "RUp"), 100.0)):  # fmt: skip
            wait_for(lambda pv=pv, value=value: lab.get(pv) == value, timeout=5)
        since = lab.client.mark()
        assert lab.command(hv[0].topic("setv"), 40)["ok"]
        assert lab.command(hv[0].topic("switch"), "on")["ok"]
        lab.wait_channel("/hv", hv[0].name, lambda c: c["state"] == "ON", since=since)
        assert lab.command(hv[0].topic("switch"), "off")["ok"]
        log = lab.daemon.output()
        for param in absent:
            assert log.count(f"the crate does not serve {param} on board {HV_SLOT}") == 1
    finally:
        lab.stop()


def test_a_warning_says_only_what_the_missing_parameter_costs(workdir, broker):
    """An LV board configured A2519 that is a generic one: what the lab YAML gives a value for
    is not written; kill's fast ramp-down cannot be set; the rest costs nothing."""
    lab = ModelsLab(
        workdir, broker, "models-lv-generic", crate_args=("--board", f"{LV_SLOT}=generic")
    )
    lab.start()
    lv = lab.on_board(LV_SLOT)
    try:
        costs = {
            "OVVThr": CONFIGURED,
            "RDwTime": CONFIGURED + "; kill cannot set its fast ramp-down",
            "RUpTime": CONFIGURED,
            "TripExt": " (no value configured: nothing lost)",
            "TripInt": " (no value configured: nothing lost)",
            "UNVThr": CONFIGURED,
        }
        expected = [
            f"board {LV_SLOT} (A2519): {param} not served by the crate on channel(s) "
            f"{lv[0].channel}, {lv[1].channel}{cost}"
            for param, cost in costs.items()
        ]
        lab.client.wait_for("/lv/state", lambda m: m.json["warnings"] == expected, timeout=10)
        log = lab.daemon.output()
        said = f"the crate does not serve {{}} on board {LV_SLOT} (configured model A2519){{}}"
        assert said.format("TripExt", " (no value configured: nothing lost)") in log
        assert said.format("UNVThr", CONFIGURED) in log
    finally:
        lab.stop()


# -- the simulated crate as a real lab client sees it -------------------------------------------
@pytest.fixture(scope="module")
def example_crate():
    with SimCrateProcess(EXAMPLE_LAB, args=["--noise", "0"]) as process:
        yield process, EXAMPLE_SLOTS


def test_a_lab_client_connects_to_every_pv_of_its_list(example_crate):
    sim, slots = example_crate
    for kind, extra in (("hv", HV_EXTRA), ("lv", LV_EXTRA)):
        first = EXAMPLE.channel(kind)  # the lab's first channel of this kind
        for param in (*EVERY_BOARD, *extra):
            pv = channel_pv(sim.system, *first.place, param)
            assert ca_get(sim.port, pv) is not None, pv
        assert ca_get(sim.port, board_pv(sim.system, slots[kind], "BdStatus")) == 0
    assert ca_get(sim.port, system_pv(sim.system, "ClearAlarm"), as_string=True) == "No"
    pv = channel_pv(sim.system, slots["lv"], 5, "TripInt")
    ca_put(sim.port, pv, 6)  # kept as written
    assert ca_get(sim.port, pv) == 6
    imrange = channel_pv(sim.system, slots["hv"], 5, "ImRange")
    ca_put(sim.port, imrange, "Low")
    assert ca_get(sim.port, imrange, as_string=True) == "Low"


def test_a_put_of_the_same_value_posts_no_monitor(example_crate):
    sim, slots = example_crate
    pv = channel_pv(sim.system, slots["hv"], 7, "V0Set")
    with CAMonitor(sim.port, pv) as monitor:
        wait_for(lambda: monitor.snapshot() == [0.0])
        ca_put(sim.port, pv, 12.0)
        wait_for(lambda: monitor.snapshot() == [0.0, 12.0])
        ca_put(sim.port, pv, 12.0)  # unchanged: an EPICS record with MDEL 0 posts nothing
        ca_put(sim.port, pv, 13.0)
        wait_for(lambda: monitor.snapshot()[-1] == 13.0)
        assert monitor.snapshot() == [0.0, 12.0, 13.0]


def test_the_readme_lists_the_board_models_of_the_table():
    readme = (EXAMPLE_LAB.parent.parent / "README.md").read_text()
    block = readme.split("<!-- board-models -->\n", 1)[1].split("\n<!-- /board-models -->")[0]
    assert block == markdown_table()
