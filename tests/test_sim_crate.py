"""The simulated CAEN crate: physics in simulated time, then the real CA server in a subprocess."""

from __future__ import annotations

import time

import pytest

from tests.labdata import EXAMPLE_LAB
from tests.simca import CAMonitor, CAPutError, SimCrateProcess, ca_get, ca_put, wait_for
from trackerdcs.config import load_config
from trackerdcs.power.boards import BOARD_MODELS
from trackerdcs.power.status import ChannelStatus as S
from trackerdcs.sim.crate import boards_of, port_of
from trackerdcs.sim.crate_model import LEAK_PER_VOLT, LV_LOAD_OHM, TEMP_AMBIENT, SimCrate

DT = 0.1


def run(crate: SimCrate, seconds: float, dt: float = DT) -> None:
    for _ in range(round(seconds / dt)):
        crate.step(dt)


def hv_crate(**kw) -> SimCrate:
    return SimCrate({0: ("hv", 4), 2: ("lv", 2)}, seed=1, noise=kw.pop("noise", 0.0), **kw)


def powered(crate: SimCrate, ch: int = 0, volts: float = 100.0) -> SimCrate:
    """Channel `ch` of board 0 on and settled at `volts`, 10 µA limit, 1 s trip."""
    crate.write(0, ch, "I0Set", 10)
    crate.write(0, ch, "V0Set", volts)
    crate.write(0, ch, "Pw", "On")
    run(crate, volts / 50 + 0.2)
    return crate


# -- model ---------------------------------------------------------------------------------------


def test_ramp_up_and_down_timing_and_status_bits():
    crate = hv_crate()
    ch = crate.channel(0, 0)
    crate.write(0, 0, "V0Set", 100)
    crate.write(0, 0, "Pw", "On")
    assert ch.status == S.ON | S.RAMP_UP  # at once, before any step
    run(crate, 1.0)
    assert ch.vmon == pytest.approx(50.0)
    assert ch.status == S.ON | S.RAMP_UP
    run(crate, 1.0)
    assert ch.vmon == pytest.approx(100.0)
    assert ch.status == S.ON
    crate.write(0, 0, "RDWn", 25)
    crate.write(0, 0, "Pw", "Off")
    run(crate, 2.0)
    assert ch.vmon == pytest.approx(50.0)
    assert ch.status == S.RAMP_DOWN  # ON cleared while still ramping down
    run(crate, 2.0)
    assert (ch.vmon, ch.imon, ch.status) == (0.0, 0.0, 0)


def test_load_model_hv_leakage_lv_resistor_and_temperature_factor():
    crate = powered(hv_crate())
    hv = crate.channel(0, 0)
    assert hv.imon == pytest.approx(LEAK_PER_VOLT * 100.0)
    crate.temperature_factor = 2.0
    crate.step(DT)
    assert hv.imon == pytest.approx(2 * LEAK_PER_VOLT * 100.0)
    crate.write(2, 0, "V0Set", 12)
    crate.write(2, 0, "RUp", 100)
    crate.write(2, 0, "Pw", 1)
    run(crate, 0.5)
    assert crate.channel(2, 0).imon == pytest.approx(12 / 8.0)


@pytest.mark.parametrize("pdwn", ["Kill", "Ramp"])
def test_trip_after_trip_time(pdwn):
    crate = powered(hv_crate())
    crate.write(0, 0, "PDwn", pdwn)
    ch = crate.channel(0, 0)
    ch.leak_extra = 20.0  # 22 µA > 10 µA
    run(crate, 0.9)
    assert ch.pw and ch.status == S.ON | S.OVC
    run(crate, 0.3)
    assert not ch.pw and ch.status & S.INT_TRIP
    if pdwn == "Kill":
        assert (ch.vmon, ch.imon, ch.status) == (0.0, 0.0, S.INT_TRIP)
    else:
        assert 80.0 < ch.vmon < 100.0 and ch.status & S.RAMP_DOWN
        run(crate, 3.0)
        assert ch.vmon == 0.0 and ch.status == S.INT_TRIP


def test_short_over_current_sets_ovc_without_trip():
    crate = powered(hv_crate())
    ch = crate.channel(0, 0)
    for _ in range(2):  # the over-current time restarts after each spike
        ch.leak_extra = 20.0
        run(crate, 0.8)
        assert ch.status == S.ON | S.OVC
        ch.leak_extra = 0.0
        crate.step(DT)
        assert ch.status == S.ON and ch.over_current_time == 0.0
    assert ch.pw


def test_trip_time_zero_trips_at_first_step():
    crate = powered(hv_crate())
    crate.write(0, 0, "Trip", 0)
    crate.write(0, 0, "I0Set", 1)
    crate.step(DT)
    assert crate.channel(0, 0).status == S.INT_TRIP


def test_svmax_caps_and_lowers_v0set():
    crate = hv_crate()
    assert crate.write(0, 1, "V0Set", 5000) == 1000.0
    crate.write(0, 1, "SVMax", 300)
    assert crate.write(0, 1, "V0Set", 400) == 300.0
    crate.write(0, 1, "SVMax", 120)
    assert crate.channel(0, 1).v0set == 120.0
    crate.write(0, 1, "SVMax", 500)
    assert crate.channel(0, 1).v0set == 120.0  # raising the limit leaves V0Set alone


def test_tripped_channel_stays_off_until_clear_alarm():
    crate = powered(hv_crate())
    ch = crate.channel(0, 0)
    ch.leak_extra = 50.0
    run(crate, 1.5)
    assert ch.status == S.INT_TRIP
    ch.leak_extra = 0.0
    assert crate.write(0, 0, "Pw", "On") == "Off"
    run(crate, 1.0)
    assert not ch.pw and ch.vmon == 0.0
    crate.write_system("ClearAlarm", "No")
    assert ch.status == S.INT_TRIP
    assert crate.write_system("ClearAlarm", "Yes") == [ch]
    assert ch.status == 0
    assert crate.write(0, 0, "Pw", "On") == "On"
    run(crate, 2.5)
    assert ch.vmon == pytest.approx(100.0) and ch.status == S.ON


def test_write_counter_counts_unchanged_and_rejected_writes():
    crate = hv_crate()
    crate.write(0, 0, "V0Set", 10)
    crate.write(0, 0, "V0Set", 10)
    crate.write_system("ClearAlarm", 1)
    with pytest.raises(ValueError):
        crate.write(0, 0, "RUp", -5)
    with pytest.raises(ValueError):
        crate.write(0, 0, "Pw", "Maybe")
    assert crate.writes == 5
    with pytest.raises(KeyError):
        crate.write(0, 0, "VMon", 1)  # read-only: not a crate write
    crate.set_leak(0, 0, 3.0)  # fault injection: not a crate write
    assert crate.writes == 5


@pytest.mark.parametrize("value", ["On", 1, "1", True, 1.0])
def test_pw_accepts_names_and_indices(value):
    crate = hv_crate()
    assert crate.write(0, 0, "Pw", value) == "On"
    assert crate.write(0, 0, "PDwn", 1) == "Ramp"


def test_noise_zero_is_deterministic_and_seeded_noise_repeats():
    def trace(noise: float, seed: int) -> list[float]:
        crate = SimCrate({0: ("hv", 2)}, seed=seed, noise=noise)
        powered(crate)
        out = []
        for _ in range(30):
            crate.step(DT)
            out.append(crate.channel(0, 0).imon)
        return out

    quiet = trace(0.0, 1)
    assert quiet == trace(0.0, 2) == [pytest.approx(LEAK_PER_VOLT * 100.0)] * 30
    noisy = trace(0.005, 7)
    assert noisy == trace(0.005, 7) and noisy != quiet
    assert all(abs(i / (LEAK_PER_VOLT * 100.0) - 1) < 0.05 for i in noisy)
    assert len(set(noisy)) <= 5  # redrawn once per second, not every step


def test_idle_channels_are_not_reported():
    crate = SimCrate({0: ("hv", 48), 1: ("lv", 48)}, noise=0.005)
    assert all(crate.step(DT) == [] for _ in range(20))
    crate.write(1, 5, "V0Set", 5)
    crate.write(1, 5, "Pw", "On")
    assert crate.step(DT) == [crate.channel(1, 5)]


def test_churn_changes_every_channel_once_per_second_evenly():
    crate = SimCrate({s: ("hv", 48) for s in range(4)}, noise=0.0, churn=True)
    per_step = [crate.step(DT) for _ in range(10)]
    assert {len(c) for c in per_step} <= {19, 20}  # spread evenly over the steps
    seen = [ch for changed in per_step for ch in changed]
    assert len(seen) == len(set(seen)) == 192
    ch = crate.channel(0, 0)
    before = (ch.reading("VMon"), ch.reading("IMon"))
    run(crate, 1.0)
    after = (ch.reading("VMon"), ch.reading("IMon"))
    assert abs(after[0] - before[0]) > 1.0 and abs(after[1] - before[1]) > 1.0
    assert ch.vmon == 0.0 and ch.status == 0  # a reading artefact only


def lv_board(**settings) -> tuple[SimCrate, object]:
    """An A2519 in slot 3, channel 0 with `settings` written."""
    crate = SimCrate({3: (BOARD_MODELS["A2519"], 8)}, noise=0.0)
    for param, value in settings.items():
        crate.write(3, 0, param, value)
    return crate, crate.channel(3, 0)


def test_lv_board_ramps_by_time():
    crate, ch = lv_board(V0Set=12, RUpTime=2000, RDwTime=500)
    crate.write(3, 0, "Pw", "On")
    run(crate, 1.0)
    assert ch.vmon == pytest.approx(6.0) and ch.status == S.ON | S.RAMP_UP
    run(crate, 1.1)
    assert ch.vmon == 12.0 and ch.status == S.ON
    crate.write(3, 0, "Pw", "Off")
    run(crate, 0.3)
    assert ch.vmon == pytest.approx(12.0 * 0.4)
    run(crate, 0.3)
    assert ch.vmon == 0.0 and ch.status == 0
    with pytest.raises(KeyError):
        crate.write(3, 0, "RUp", 5)  # an A2519 has no RUp: unknown to it, as on a real crate
    with pytest.raises(ValueError):
        crate.write(3, 0, "RUpTime", 0)


@pytest.mark.parametrize(("threshold", "value", "bit"), [("UNVThr", 11.0, S.UNV),
                                                         ("OVVThr", 9.0, S.OVV)])  # fmt: skip
def test_under_and_over_voltage_thresholds_trip_an_lv_channel(threshold, value, bit):
    crate, ch = lv_board(V0Set=10, RUpTime=100, Trip=0.5)
    crate.write(3, 0, "Pw", "On")
    run(crate, 0.2)
    assert ch.status == S.ON
    crate.write(3, 0, threshold, value)
    assert ch.status == S.ON | bit
    run(crate, 0.4)
    assert ch.pw and ch.status == S.ON | bit
    run(crate, 0.2)
    assert not ch.pw and ch.status & S.INT_TRIP and ch.vmon == 0.0


def test_temp_moves_with_load_and_settings_are_kept():
    crate, ch = lv_board(V0Set=8, RUpTime=100, TripInt=5, TripExt=2)
    assert ch.reading("Temp") == TEMP_AMBIENT
    crate.write(3, 0, "Pw", "On")
    run(crate, 0.2)
    assert ch.reading("Temp") == pytest.approx(TEMP_AMBIENT + 1.5 * 8 * 8 / LV_LOAD_OHM)
    assert (ch.reading("TripInt"), ch.reading("TripExt")) == (5, 2)
    with pytest.raises(ValueError):
        crate.write(3, 0, "TripInt", 1.5)  # a bit mask


def test_boards_of_serves_another_model_or_a_board_without_some_parameters():
    crate = load_config(EXAMPLE_LAB).crates[0]
    boards = boards_of(crate, {0: "generic"}, {2: {"OVVThr", "Temp"}})
    assert boards[0][0].name == "generic" and boards[0][1] == 16
    assert boards[2][0].name == "A2519 without OVVThr,Temp"
    assert not boards[2][0].has("OVVThr") and boards[2][0].has("UNVThr")
    with pytest.raises(ValueError, match="has no Nope"):
        boards_of(crate, omit={2: {"Nope"}})
    with pytest.raises(ValueError, match="no board in slot 5"):
        boards_of(crate, {5: "A2519"})


def test_port_of_address():
    assert port_of("127.0.0.1:5070") == 5070
    assert port_of("10.0.0.5") == 5064


# -- Channel Access, against a real subprocess -----------------------------------------------------


@pytest.fixture(scope="module")
def sim():
    with SimCrateProcess(EXAMPLE_LAB, args=["--noise", "0"]) as process:
        yield process


def test_ready_line_and_pv_count(sim):
    assert sim.system == "simlab"
    hv, lv = BOARD_MODELS["A1515TG"], BOARD_MODELS["A2519"]  # the example crate's boards
    per_channel = {m.name: len(m.params) + 2 for m in (hv, lv)}  # + SimLeak, SimInvalid
    assert sim.pv_count == 16 * per_channel["A1515TG"] + 8 * per_channel["A2519"] + 2 + 5
    assert ca_get(sim.port, "simlab:02:007:ChName") == "CH007"  # 2 BdStatus, 5 system PVs
    assert ca_get(sim.port, "simlab:02:007:I0Set") == 2.5


def test_ca_power_on_ramps_with_status_bits(sim):
    port = sim.port
    ca_put(port, "simlab:00:003:RUp", 100)
    ca_put(port, "simlab:00:003:V0Set", 40)
    ca_put(port, "simlab:00:003:Pw", "On")
    assert ca_get(port, "simlab:00:003:Pw") == 1
    assert ca_get(port, "simlab:00:003:Pw", as_string=True) == "On"
    assert ca_get(port, "simlab:00:003:Status") == S.ON | S.RAMP_UP
    wait_for(lambda: ca_get(port, "simlab:00:003:VMon") == 40.0, timeout=3)
    assert ca_get(port, "simlab:00:003:Status") == S.ON
    assert ca_get(port, "simlab:00:003:IMon") == pytest.approx(40 * LEAK_PER_VOLT)
    ca_put(port, "simlab:00:003:Pw", 0)
    wait_for(lambda: ca_get(port, "simlab:00:003:Status") == 0, timeout=3)


def test_ca_v0set_capped_by_svmax_and_monitor_sees_it(sim):
    port = sim.port
    with CAMonitor(port, "simlab:00:004:V0Set") as monitor:
        wait_for(lambda: monitor.snapshot() == [0.0])  # the initial value
        ca_put(port, "simlab:00:004:SVMax", 300)
        ca_put(port, "simlab:00:004:V0Set", 350)
        assert ca_get(port, "simlab:00:004:V0Set") == 300.0
        wait_for(lambda: monitor.snapshot()[-1] == 300.0, timeout=2)


def test_ca_read_only_pvs_reject_puts(sim):
    for param in ("VMon", "IMon", "Status"):
        with pytest.raises(CAPutError):
            ca_put(sim.port, f"simlab:00:005:{param}", 7)
    with pytest.raises(CAPutError):
        ca_put(sim.port, "simlab:00:005:V0Set", -1)  # the crate refuses a bad value
    assert ca_get(sim.port, "simlab:00:005:VMon") == 0.0


def test_ca_write_counter_and_last_write(sim):
    before = sim.writes()
    ca_put(sim.port, "simlab:02:001:V0Set", 5.0)
    ca_put(sim.port, "simlab:02:001:V0Set", 5.0)  # unchanged, still a write
    ca_put(sim.port, "simlab:02:001:SimLeak", 0.0)  # backdoor: not counted
    ca_put(sim.port, "simlab:Sim:TempFactor", 1.0)
    sent = time.monotonic()
    ca_put(sim.port, "simlab:02:001:Pw", 0)
    done = time.monotonic()
    assert sim.writes() == before + 3
    assert ca_get(sim.port, "simlab:Sim:LastWrite") == "simlab:02:001:Pw=Off"
    # the same put with the time it reached the simulator, on the machine's monotonic clock
    chars = bytes(ca_get(sim.port, "simlab:Sim:LastWriteAt")).split(b"\0")[0].decode()
    stamp, what = chars.split(" ", 1)
    assert what == "simlab:02:001:Pw=Off" and sent <= float(stamp) <= done


def test_ca_leak_trips_channel_until_clear_alarm(sim):
    port = sim.port
    pv = "simlab:00:006:{}".format
    for param, value in [("I0Set", 5), ("Trip", 0.2), ("RUp", 200), ("V0Set", 20), ("Pw", "On")]:
        ca_put(port, pv(param), value)
    wait_for(lambda: ca_get(port, pv("Status")) == S.ON, timeout=3)
    ca_put(port, pv("SimLeak"), 50)
    wait_for(lambda: ca_get(port, pv("Status")) & S.INT_TRIP, timeout=3)
    assert ca_get(port, pv("Pw")) == 0 and ca_get(port, pv("VMon")) == 0.0
    ca_put(port, pv("SimLeak"), 0)
    ca_put(port, pv("Pw"), "On")  # ignored while tripped
    assert ca_get(port, pv("Pw")) == 0
    ca_put(port, "simlab:ClearAlarm", "Yes")
    assert ca_get(port, pv("Status")) == 0
    assert ca_get(port, "simlab:ClearAlarm", as_string=True) == "No"


def test_process_stops_fast_and_restarts_on_same_port(tmp_path):
    with SimCrateProcess(EXAMPLE_LAB) as sim:
        port = sim.port
        ca_put(port, "simlab:00:000:V0Set", 12)
        t0 = time.monotonic()
        assert sim.stop() == 0
        assert time.monotonic() - t0 < 1.0
        sim.restart()
        assert sim.port == port
        assert ca_get(port, "simlab:00:000:V0Set") == 0.0  # state lost, like a power cycle
