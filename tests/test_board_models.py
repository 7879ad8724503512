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
from tests.simca import CAMonitor, SimCrateProcess, ca_get, ca_put, wait_for
from trackerdcs.power.boards import BOARD_MODELS, GENERIC, markdown_table
from trackerdcs.power.pvnames import board_pv, channel_pv, system_pv

# What a lab's CAEN client reads from a real SY4527, per channel (hardware.md)
EVERY_BOARD = ("V0Set", "I0Set", "Pw", "Trip", "TripInt", "TripExt", "Status", "VMon", "IMon")
HV_EXTRA = ("RUp", "RDWn", "ImRange", "PDwn")
LV_EXTRA = ("UNVThr", "OVVThr", "RUpTime", "RDwTime", "Temp")

# One crate with every model of the table: slot -> (model, board settings, channels used)
ALL_MODELS = {
    12: ("A1515TG", {"imrange": "Low", "tripint": 3, "tripext": 1, "rup": 100, "rdwn": 200}, 2),
    14: ("A7435SN", {"tripint": 5}, 2),
    9: ("generic", {}, 2),
    1: ("A2519", {"unvthr": 9.5, "ovvthr": 11.5, "ruptime": 400, "rdwtime": 200}, 2),
    2: ("generic", {"rup": 30, "rdwn": 60}, 2),
}
KINDS = {12: "hv", 14: "hv", 9: "hv", 1: "lv", 2: "lv"}


def all_models_lab(path, mqtt_port: int, ca_port: int, system: str) -> None:
    boards, channels, numbers = {}, [], {"hv": 0, "lv": 0}
    for slot, (model, settings, used) in ALL_MODELS.items():
        kind = KINDS[slot]
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
        data = yaml.safe_load(self.config.read_text())
        self.places = {c["name"]: (c["board"], c["channel"]) for c in data["power"]["channels"]}

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
    expected = {
        12: {"SVMax": 600.0, "RUp": 100.0, "RDWn": 200.0, "Trip": 0.2, "PDwn": 0, "ImRange": 1,
             "TripInt": 3, "TripExt": 1, "I0Set": 10.0},
        14: {"SVMax": 600.0, "RUp": 50.0, "RDWn": 50.0, "Trip": 0.2, "TripInt": 5, "I0Set": 10.0},
        9: {"SVMax": 600.0, "RUp": 50.0, "RDWn": 50.0, "Trip": 0.2, "PDwn": 0, "I0Set": 10.0},
        1: {"Trip": 0.5, "UNVThr": 9.5, "OVVThr": 11.5, "RUpTime": 400.0, "RDwTime": 200.0,
            "V0Set": 10.5, "I0Set": 2.0},
        2: {"SVMax": 12.0, "RUp": 30.0, "RDWn": 60.0, "Trip": 0.5, "V0Set": 10.5, "I0Set": 2.0},
    }  # fmt: skip
    for slot, values in expected.items():
        for ch in range(2):
            for param, value in values.items():
                pv = lab.pv(slot, ch, param)
                wait_for(lambda pv=pv, v=value: lab.get(pv) == pytest.approx(v), timeout=5)
    state = lab.client.latest("/hv/state").json
    assert state["warnings"] == [] and lab.client.latest("/lv/state").json["warnings"] == []


def test_lv_board_ramps_by_time_to_its_set_point(models_lab):
    lab = models_lab
    since = lab.client.mark()
    t0 = time.monotonic()
    assert lab.command("/lv/cmd/switch/lv_1_0", "on")["ok"]
    on = lab.wait_channel("/lv", "lv_1_0", lambda c: c["state"] == "ON", since=since)
    assert on["vmon"] == 10.5 and on["vreq"] == 10.5
    at_on = next(
        m.t for m in lab.client.messages[since:]
        if m.topic == "/lv/status" and any(c["name"] == "lv_1_0" and c["state"] == "ON"
                                           for c in m.json)
    )  # fmt: skip
    assert at_on - t0 > 0.3  # RUpTime 400 ms: the ramp takes that long, whatever the load
    assert "RAMPING_UP" in [
        next(c["state"] for c in m.json if c["name"] == "lv_1_0")
        for m in lab.client.messages[since:]
        if m.topic == "/lv/status"
    ]
    assert lab.get(lab.pv(1, 0, "Temp")) > 25.0  # the board warms with its load
    since = lab.client.mark()
    assert lab.command("/lv/cmd/kill/lv_1_0", "")["ok"]
    lab.wait_channel("/lv", "lv_1_0", lambda c: c["state"] == "OFF", since=since)
    assert lab.get(lab.pv(1, 0, "RDwTime")) == 100.0  # kill_time, restored at the next on
    assert lab.command("/lv/cmd/switch/lv_1_0", "on")["ok"]
    assert lab.get(lab.pv(1, 0, "RDwTime")) == 200.0
    assert lab.command("/lv/cmd/switch/lv_1_0", "off")["ok"]


def test_over_voltage_threshold_trips_an_lv_channel(models_lab):
    lab = models_lab
    since = lab.client.mark()
    assert lab.command("/lv/cmd/switch/lv_1_1", "on")["ok"]
    lab.wait_channel("/lv", "lv_1_1", lambda c: c["state"] == "ON", since=since)
    lab.put(lab.pv(1, 1, "OVVThr"), 10.0)  # below the 10.5 V output
    tripped = lab.wait_channel("/lv", "lv_1_1", lambda c: c["state"] == "TRIPPED", since=since)
    assert "INT_TRIP" in tripped["flags"]
    lab.put(lab.pv(1, 1, "OVVThr"), 11.5)
    assert lab.command("/lv/cmd/clear", "")["ok"]
    lab.wait_channel("/lv", "lv_1_1", lambda c: c["state"] == "OFF", since=since)


def test_invalid_severity_shows_as_lost_data(models_lab):
    lab = models_lab
    since = lab.client.mark()
    lab.put(lab.pv(12, 1, "SimInvalid"), 1)
    lab.wait_channel("/hv", "hv_12_1", lambda c: c["state"] == "DISCONNECTED", since=since)
    both = ["hv_12_1: IMon INVALID (COMM), VMon INVALID (COMM)"]
    state = lab.client.wait_for("/hv/state", lambda m: m.json["warnings"] == both, since=since)
    assert state.json["state"] == "DISCONNECTED"
    answer = lab.command("/hv/cmd/switch/hv_12_1", "on")
    assert not answer["ok"] and "DISCONNECTED: IMon INVALID (COMM)" in answer["error"]
    lab.put(lab.pv(12, 1, "SimInvalid"), 0)
    lab.wait_channel("/hv", "hv_12_1", lambda c: c["state"] == "OFF", since=since)
    lab.client.wait_for("/hv/state", lambda m: m.json["warnings"] == [], since=since)


CONFIGURED = ": its configured value is not written"


@pytest.mark.parametrize(
    ("name", "crate_args", "absent"),
    [
        ("omit", ["--omit", "12:ImRange,PDwn"], ["ImRange", "PDwn"]),  # another firmware
        ("mismatch", ["--board", "12=generic"], ["ImRange", "TripExt", "TripInt"]),
    ],
)
def test_board_without_a_configured_parameter_works_and_warns_once(
    workdir, broker, name, crate_args, absent
):
    lab = ModelsLab(workdir, broker, f"models-{name}", crate_args=tuple(crate_args)).start()
    try:
        state = lab.client.wait_for(
            "/hv/state",
            lambda m: (
                len(m.json["warnings"]) == len(absent)
                and all("0, 1:" in w for w in m.json["warnings"])
            ),
            timeout=10,
        ).json
        for param, warning in zip(absent, state["warnings"], strict=True):
            assert warning == (
                f"board 12 (A1515TG): {param} not served by the crate on channel(s) 0, 1"
                + CONFIGURED
            )
        for pv, value in ((lab.pv(12, 0, "SVMax"), 600.0), (lab.pv(12, 1, "RUp"), 100.0)):
            wait_for(lambda pv=pv, value=value: lab.get(pv) == value, timeout=5)
        since = lab.client.mark()
        assert lab.command("/hv/cmd/setv/hv_12_0", 40)["ok"]
        assert lab.command("/hv/cmd/switch/hv_12_0", "on")["ok"]
        lab.wait_channel("/hv", "hv_12_0", lambda c: c["state"] == "ON", since=since)
        assert lab.command("/hv/cmd/switch/hv_12_0", "off")["ok"]
        log = lab.daemon.output()
        for param in absent:
            assert log.count(f"the crate does not serve {param} on board 12") == 1
    finally:
        lab.stop()


def test_a_warning_says_only_what_the_missing_parameter_costs(workdir, broker):
    """An LV board configured A2519 that is a generic one: what the lab YAML gives a value for
    is not written; kill's fast ramp-down cannot be set; the rest costs nothing."""
    lab = ModelsLab(workdir, broker, "models-lv-generic", crate_args=("--board", "1=generic"))
    lab.start()
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
            f"board 1 (A2519): {param} not served by the crate on channel(s) 0, 1{cost}"
            for param, cost in costs.items()
        ]
        lab.client.wait_for("/lv/state", lambda m: m.json["warnings"] == expected, timeout=10)
        log = lab.daemon.output()
        said = "the crate does not serve {} on board 1 (configured model A2519){}"
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
        for param in (*EVERY_BOARD, *extra):
            pv = channel_pv(sim.system, slots[kind], 0, param)
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
