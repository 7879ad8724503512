"""IV scans without processes: the simulated sensors' IV curves (and the crate's trips with
them), the breakdown criterion, the parameters' parser (total), the plan, the results files."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import EXAMPLE_LAB
from trackerdcs.commands import CommandError
from trackerdcs.config import ConfigError, load_config, parse_config
from trackerdcs.ivscan.analysis import breakdown, log_slope, mean_and_spread
from trackerdcs.ivscan.plan import ScanParams, parse_params, plan_scan, step_count, voltages
from trackerdcs.ivscan.results import csv_text, read_results, write_results
from trackerdcs.sim.crate_model import SimCrate
from trackerdcs.sim.iv import SensorIV

LAB = load_config(EXAMPLE_LAB)


def example_iv(module: str) -> SensorIV:
    assert LAB.virtual_lab is not None
    return SensorIV(**LAB.virtual_lab.sensor_iv(module))


def test_the_iv_curve_depletes_as_sqrt_v_then_plateaus_then_breaks_down() -> None:
    iv = SensorIV(depletion_voltage=200, current=2.0, plateau_slope=0.1, breakdown_voltage=450)
    assert iv.current_at(0) == 0.0
    assert iv.current_at(50) == pytest.approx(2.0 * math.sqrt(50 / 200), rel=1e-6)
    assert iv.current_at(200) == pytest.approx(2.0, rel=1e-6)
    assert iv.current_at(400) == pytest.approx(2.2, rel=0.01)  # +10 % per 200 V
    assert iv.current_at(450) == pytest.approx(2.25 + 2.0, rel=0.01)  # breakdown: x e per 10 V
    assert iv.current_at(480) > 10 * iv.current_at(440)
    assert math.isfinite(iv.current_at(1e6))


def test_the_example_lab_gives_each_module_its_curve_and_m3_breaks_down_below_its_maximum():
    assert example_iv("M3").breakdown_voltage == 450 < LAB.limits_for(LAB.power.channels[2]).vmax
    assert example_iv("M1").breakdown_voltage == 800
    assert example_iv("M2").depletion_voltage == 150 and example_iv("M2").current == 1.2
    with pytest.raises(ConfigError, match=r"virtual_lab\.modules: no power channel powers M9"):
        data = yaml.safe_load(EXAMPLE_LAB.read_text())
        data["virtual_lab"]["modules"] = {"M9": {"breakdown_voltage": 10}}
        parse_config(data, "lab.yml")


def test_the_crate_loads_a_channel_with_its_iv_scaled_by_temperature_and_trips_beyond_i0set():
    crate = SimCrate({0: ("hv", 4)}, noise=0.0)
    ch = crate.channel(0, 0)
    ch.iv = example_iv("M3")
    crate.write(0, 0, "I0Set", 10.0)
    crate.write(0, 0, "Trip", 0.5)
    crate.write(0, 0, "RUp", 1000.0)
    crate.write(0, 0, "V0Set", 200.0)
    crate.write(0, 0, "Pw", "On")
    crate.step(0.5)
    assert ch.imon == pytest.approx(2.0, rel=1e-6)
    ch.leakage_scale = 2.0  # 7 K warmer
    crate.step(0.1)
    assert ch.imon == pytest.approx(4.0, rel=1e-6)
    ch.leakage_scale = 1.0
    crate.write(0, 0, "V0Set", 480.0)  # in breakdown: 42 uA
    crate.step(0.4)
    assert ch.status & (1 << 3) and not ch.tripped  # OVC, not yet longer than Trip
    crate.step(0.2)
    assert ch.tripped and not ch.pw and ch.vmon == 0.0  # PDwn Kill
    other = crate.channel(0, 1)  # no IV: the linear leakage of a bare crate
    crate.write(0, 1, "V0Set", 100.0)
    crate.write(0, 1, "Pw", "On")
    crate.step(10)
    assert other.imon == pytest.approx(2.0, rel=1e-6)


def scan_points(iv: SensorIV, stop: float, step: float) -> list[tuple[float, float]]:
    return [(v, iv.current_at(v)) for v in voltages(0, stop, step)]


def first_breakdown(points, slope=4.0, min_current=0.05) -> float | None:
    for (v1, i1), (v2, i2) in itertools.pairwise(points):
        if breakdown(v1, i1, v2, i2, slope, min_current) is not None:
            return v2
    return None


@pytest.mark.parametrize("step", [1, 5, 10, 20, 50])
def test_the_breakdown_criterion_finds_m3_near_450_v_and_nothing_else(step: float) -> None:
    found = first_breakdown(scan_points(example_iv("M3"), 600, step))
    assert found is not None and 400 <= found <= 470, found
    for module in ("M1", "M2", "M4"):
        assert first_breakdown(scan_points(example_iv(module), 600, step)) is None


def test_log_slope_and_spread() -> None:
    assert log_slope(100, 1.0, 400, 2.0) == pytest.approx(0.5)  # sqrt(V)
    assert log_slope(0, 1.0, 10, 2.0) is None and log_slope(10, 0, 20, 1) is None
    assert breakdown(100, 1.0, 200, 100.0, None, 0.0) is None  # criterion off
    assert breakdown(200, 1.0, 100, 100.0, 4.0, 0.0) is None  # going down
    assert breakdown(100, 0.001, 110, 0.01, 4.0, 0.05) is None  # below the minimum current
    assert mean_and_spread([1.0]) == (1.0, 0.0)
    assert mean_and_spread([1.0, 3.0]) == (2.0, pytest.approx(math.sqrt(2)))


@given(st.floats(0, 1000), st.floats(0, 1000), st.floats(0.5, 500))
def test_voltages_run_from_start_to_stop_by_at_most_step(start, stop, step) -> None:
    vs = voltages(start, stop, step)
    assert len(vs) == step_count(start, stop, step)
    assert vs[0] == pytest.approx(start, abs=1e-5) and vs[-1] == pytest.approx(stop, abs=1e-5)
    assert all(abs(b - a) <= step + 1e-5 for a, b in itertools.pairwise(vs))
    assert len(vs) <= abs(stop - start) / step + 2


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=10,
)
KEYS = st.sampled_from([*ScanParams.model_fields, "speed"])


@settings(max_examples=300)
@given(JSON | st.dictionaries(KEYS, JSON, max_size=6))
def test_the_parameter_parser_is_total(value) -> None:
    try:
        params = parse_params(value)
    except CommandError as exc:
        assert str(exc)
    else:
        assert params.step > 0 and math.isfinite(params.stop) and params.stop >= 0


def test_a_plan_takes_the_labs_defaults_and_limits() -> None:
    params = parse_params({"stop": 300, "step": 100})
    plan = plan_scan(LAB, "M1", params, operator="alice", request_id="alice:1")
    assert plan.channel == "hv_m1" and plan.voltages == [0, 100, 200, 300]
    assert plan.compliance == 10.0 and plan.settle == 2.0 and plan.readings == 5
    assert plan.end == "ramp_down" and plan.breakdown_slope == 4.0 and plan.operator == "alice"
    assert plan.scan_id.startswith("M1-") and plan.scan_id.endswith("Z")
    off = plan_scan(
        LAB,
        "M1",
        parse_params({"stop": 10, "step": 5, "breakdown_slope": None, "operator": "bob"}),
        operator="x",
        request_id=None,
    )
    assert off.breakdown_slope is None and off.operator == "bob"  # fmt: skip
    with pytest.raises(CommandError, match="stop: 450 V exceeds the maximum 400 V of hv_m4"):
        plan_scan(LAB, "M4", parse_params({"stop": 450, "step": 10}), operator="a",
                  request_id=None)  # fmt: skip
    with pytest.raises(CommandError, match="600000000001 steps exceed the 1000"):
        plan_scan(LAB, "M1", parse_params({"stop": 600, "step": 1e-9}), operator="a",
                  request_id=None)  # fmt: skip


def test_results_round_trip(tmp_path: Path) -> None:
    params = parse_params({"stop": 100, "step": 50, "compliance": 5})
    plan = plan_scan(LAB, "M2", params, operator="alice", request_id="alice:7")
    points = [
        {"step": i + 1, "time": 1714550400.0 + i, "vset": v, "vmon": v + 0.1,
         "imon": 0.5 * math.sqrt(v), "imon_std": 0.01, "readings": 3, "temperature": 20.5,
         "room_temperature": 21.0, "humidity": None, "dewpoint": 8.6}
        for i, v in enumerate(plan.voltages)
    ]  # fmt: skip
    scan = SimpleNamespace(
        plan=plan, points=points, started=1714550400.0, end_time=1714550410.5, step=3,
        outcome="completed", reason="completed 3 steps; hv_m2 ramped down and off",
        environment_start={"temperature": 20.5, "humidity": 45.0},
        environment_end={"temperature": 20.6},
    )  # fmt: skip
    csv_path, png_path = write_results(scan, tmp_path)  # type: ignore[arg-type]
    assert csv_path == tmp_path / "M2" / f"{plan.scan_id}.csv"
    meta, rows = read_results(csv_path)
    assert meta["scan"] == plan.scan_id and meta["operator"] == "alice"
    assert meta["start_time"] == "2024-05-01T08:00:00.000Z"
    assert meta["end_time"] == "2024-05-01T08:00:10.500Z"
    assert meta["parameter.compliance"] == "5.0" and meta["humidity_start"] == "45.0"
    assert meta["humidity_end"] == "" and meta["reason"].startswith("completed 3 steps")
    assert [r["vset"] for r in rows] == [0, 50, 100] and rows[0]["humidity"] is None
    assert csv_text(scan).startswith("# trackerdcs IV scan")  # type: ignore[arg-type]
    assert png_path.read_bytes()[:4] == b"\x89PNG"
