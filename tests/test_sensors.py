"""Environmental sensors: the dew point against published values, the line format, a sensor's
staleness rules, and the daemon reading real lines over TCP and a pty, through real Mosquitto."""

from __future__ import annotations

import contextlib
import math
import os
import re
import threading
import time
import tty
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Broker, python_process, serving, write_lab
from tests.labdata import EXAMPLE
from trackerdcs.config import SensorConfig
from trackerdcs.sensors.dewpoint import dew_point
from trackerdcs.sensors.lineformat import LineError, format_line, parse_line
from trackerdcs.sensors.sensor import SensorState
from trackerdcs.sim.sensors import GARBAGE_LINE, SensorLineServer
from trackerdcs.stack.process import ManagedProcess, free_port

# == dew point ===================================================================================

# Sensirion, SHTxx application note "Dew-point Calculation" (Magnus, Sonntag 1990 constants):
# its two worked examples, to the hundredth; and the brief's room condition.
MODULE = EXAMPLE.modules[0]  # the module of the pty sensor: the lab's (write_lab) first
SENSIRION_EXAMPLES = [(25.0, 10.0, -8.77), (50.0, 90.0, 47.90), (20.0, 50.0, 9.26)]

# A published climate/humidity table (the "Dew Point Table" of absolute humidity and dew point
# versus air temperature and RH, in whole °C), its entries at or above 0 °C (below, the table
# gives frost points over ice): air °C: {RH %: dew point °C}
CLIMATE_TABLE = {
    30: {30: 10, 50: 18, 70: 24, 90: 28},
    25: {20: 0, 40: 10, 60: 16, 80: 21, 100: 25},
    20: {30: 1, 50: 9, 60: 12, 80: 16, 90: 18},
    10: {50: 0, 70: 4, 90: 8},
}


def vaisala_dew_point(t: float, rh: float) -> float:
    """Vaisala's "Humidity conversion formulas" (A, m, Tn for -20..50 °C, error < 0.083 %)."""
    a, m, tn = 6.116441, 7.591386, 240.7263
    pw = a * 10 ** (m * t / (t + tn)) * rh / 100
    return tn / (m / math.log10(pw / a) - 1)


@pytest.mark.parametrize(("t", "rh", "expected"), SENSIRION_EXAMPLES)
def test_dew_point_matches_the_published_examples(t: float, rh: float, expected: float) -> None:
    assert round(dew_point(t, rh), 2) == expected


def test_dew_point_against_a_published_table_and_another_formulation() -> None:
    for t, row in CLIMATE_TABLE.items():
        for rh, expected in row.items():
            assert dew_point(t, rh) == pytest.approx(expected, abs=1.0), (t, rh)
    for t in range(-20, 51, 5):
        for rh in (5, 20, 40, 60, 80, 95):
            assert dew_point(t, rh) == pytest.approx(vaisala_dew_point(t, rh), abs=0.15)
    assert dew_point(15.0, 100.0) == pytest.approx(15.0, abs=1e-9)  # saturated: Td = T


@pytest.mark.parametrize("rh", [-0.1, 100.5, math.nan])
def test_dew_point_refuses_impossible_humidity(rh: float) -> None:
    with pytest.raises(ValueError):
        dew_point(20.0, rh)


def test_dew_point_at_the_edges_of_humidity() -> None:
    """0 %: no water vapour, no dew point (None, never -inf); 100 %: Td = T; finite between."""
    assert dew_point(21.0, 0.0) is None
    for t in (-45.0, -10.0, 0.0, 21.0, 60.0):
        assert dew_point(t, 100.0) == pytest.approx(t, abs=1e-9)
        for rh in (1e-9, 0.1, 1.0, 50.0, 99.9):
            point = dew_point(t, rh)
            assert point is not None and math.isfinite(point) and point < t


# == the line format =============================================================================


@pytest.mark.parametrize(
    ("line", "t", "rh"),
    [
        ("T=21.53 RH=45.2", 21.53, 45.2),
        ("T=21.53 RH=45.2\r", 21.53, 45.2),
        ("temp:-8.5, hum:30", -8.5, 30.0),
        ("ID=3;Temperature=20;Humidity=100;P=1013.2", 20.0, 100.0),
        ("  rh=5  t=+.5  ", 0.5, 5.0),
        ("T=21.5 RH=0.0", 21.5, 0.0),  # a box flushed with dry nitrogen
        ("T=21.5 RH=0", 21.5, 0.0),
        ("T=21.5 RH=100", 21.5, 100.0),
    ],
)
def test_lines_that_parse(line: str, t: float, rh: float) -> None:
    reading = parse_line(line, humidity=True)
    assert (reading.temperature, reading.humidity, reading.clamped) == (t, rh, False)
    assert parse_line(line, humidity=False).humidity is None


@pytest.mark.parametrize(
    ("line", "rh", "tolerance"),
    [
        ("T=21.5 RH=100.4", 100.0, 5.0),  # condensing air, an unclipped sensor
        ("T=21.5 RH=-0.3", 0.0, 5.0),  # an SHT4x's raw formula goes below 0
        ("T=21.5 RH=105", 100.0, 5.0),
        ("T=21.5 RH=-5", 0.0, 5.0),
        ("T=21.5 RH=101", 100.0, 1.0),
    ],
)
def test_humidity_slightly_outside_is_clamped_and_flagged(
    line: str, rh: float, tolerance: float
) -> None:
    reading = parse_line(line, humidity=True, tolerance=tolerance)
    assert (reading.humidity, reading.clamped) == (rh, True)


@pytest.mark.parametrize(
    ("line", "why"),
    [
        (GARBAGE_LINE, "no temperature"),
        ("T=nan RH=40", "not a number: 'nan'"),
        ("T=21.5C RH=40", "not a number: '21.5C'"),
        ("T=21.5", "no humidity"),
        ("T=21.5 RH=105.1", "humidity 105.1 % outside 0..100 (and beyond the tolerance of 5"),
        ("T=21.5 RH=-6", "humidity -6 % outside 0..100"),
        ("T=21.5 RH=119", "outside 0..100"),
        ("T=-999 RH=40", "outside -80..150"),
        ("T=1 T=2 RH=3", "given twice"),
        ("T=" + "1" * 300, "longer than"),
        ("\x00\xff\ufffd", "no temperature"),
    ],
)
def test_lines_that_do_not(line: str, why: str) -> None:
    with pytest.raises(LineError, match=re.escape(why)):
        parse_line(line, humidity=True)


def test_format_and_parse_agree() -> None:
    assert format_line(-8.5, None) == "T=-8.50"
    assert format_line(21.0, 45.0) == "T=21.00 RH=45.0"
    reading = parse_line(format_line(21.0, 45.0), humidity=True)
    assert (reading.temperature, reading.humidity) == (21.0, 45.0)


# == one sensor's rules, in explicit time ========================================================


def test_stale_and_error_rules() -> None:
    state = SensorState(SensorConfig(name="s", stale_timeout=10.0))
    first = state.snapshot(0.0)
    assert first["stale"] is True and first["temperature"] is None and first["age"] is None
    assert first["error"] == "no good reading within 10 s"

    state.ingest("# banner: sensor v1.2", 1.0)  # not a reading: ignored
    state.ingest("T=20 RH=50", 1.0)
    good = state.snapshot(2.0)
    assert (good["temperature"], good["humidity"], good["dewpoint"]) == (20.0, 50.0, 9.26)
    assert (good["stale"], good["age"], good["error"]) == (False, 1.0, None)

    state.ingest(GARBAGE_LINE, 3.0)  # flagged; the good reading stays valid while fresh
    flagged = state.snapshot(4.0)
    assert flagged["temperature"] == 20.0 and flagged["stale"] is False
    assert flagged["error"] == f"unparsable line {GARBAGE_LINE!r}: no temperature (T=...)"

    stale = state.snapshot(11.5)  # 10.5 s after the last good reading
    assert stale["stale"] is True and stale["age"] == 10.5
    assert stale["temperature"] is None and stale["humidity"] is None and stale["dewpoint"] is None
    assert stale["error"].startswith("unparsable line")  # the reason it went stale

    state.ingest("T=21 RH=50", 12.0)
    assert state.snapshot(12.0)["stale"] is False and state.snapshot(12.0)["error"] is None


def test_dry_and_condensing_air_in_the_status() -> None:
    state = SensorState(SensorConfig(name="box"))
    state.ingest("T=21.0 RH=0.0", 1.0)
    dry = state.snapshot(1.5)
    assert (dry["humidity"], dry["dewpoint"], dry["too_dry"]) == (0.0, None, True)
    assert (dry["stale"], dry["error"], dry["humidity_clamped"]) == (False, None, False)
    state.ingest("T=21.0 RH=100.4", 2.0)
    wet = state.snapshot(2.5)
    assert (wet["humidity"], wet["dewpoint"], wet["humidity_clamped"]) == (100.0, 21.0, True)
    assert wet["too_dry"] is False
    state.ingest("T=21.0 RH=45", 3.0)
    assert state.snapshot(3.0)["humidity_clamped"] is False
    state.ingest("T=21.0 RH=130", 4.0)  # far outside: an error, the last good reading stays
    bad = state.snapshot(4.0)
    assert bad["humidity"] == 45.0 and "outside 0..100" in bad["error"]
    strict = SensorState(SensorConfig(name="strict", humidity_tolerance=0.0))
    strict.ingest("T=21.0 RH=100.4", 1.0)
    assert strict.snapshot(1.0)["stale"] is True  # nothing valid came


# == the daemon ==================================================================================


class PtySensor:
    """A serial sensor: lines written to a pty's master every `interval` s by a thread."""

    def __init__(self, line: str, interval: float = 0.1) -> None:
        self.line = line
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        os.set_blocking(self.master, False)
        self.path = os.ttyname(self.slave)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._thread.start()

    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            with contextlib.suppress(BlockingIOError, OSError):
                os.write(self.master, (self.line + "\r\n").encode("latin-1"))

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        os.close(self.master)
        os.close(self.slave)


STALE_TIMEOUT = 0.6


class SensorLab:
    """Three sensors (TCP line server, pty, simulated) served by one daemon."""

    def __init__(self, workdir: Path, broker: Broker, name: str = "sensors") -> None:
        self.room = {"t": 22.5, "rh": 55.0}
        self.server = SensorLineServer(
            lambda: format_line(self.room["t"], self.room["rh"]), port=free_port(), interval=0.1
        )
        self.server.start()
        self.pty = PtySensor("T=-5.25")
        common = {"stale_timeout": STALE_TIMEOUT, "publish_interval": 0.2}
        sensors = [
            {"name": "room_tcp", "kind": "room", "source": self.server.url, **common},
            {"name": "m1_pty", "kind": "module", "module": MODULE, "source": self.pty.path,
             "max_temperature": 30, **common},
            {"name": "room_sim", "kind": "room", "source": "sim", **common},
        ]  # fmt: skip
        self.config = write_lab(
            workdir / f"{name}.yml", mqtt_port=broker.port, ca_port=free_port(),
            lab=name, sensors=sensors,
        )  # fmt: skip
        self.daemon: ManagedProcess = python_process(
            "sensor daemon", "trackerdcs.sensors.daemon", ["--config", str(self.config)],
            workdir / f"{name}.log", ready=serving("serving 3 sensor(s)"),
        )  # fmt: skip
        self.client = broker.client()

    def start(self) -> SensorLab:
        self.daemon.start()
        for name in ("room_tcp", "m1_pty", "room_sim"):
            self.wait(name, lambda s: s["stale"] is False, timeout=5, since=0)
        return self

    def stop(self) -> None:
        self.daemon.stop()
        self.server.stop()
        self.pty.close()
        self.client.close()

    def wait(
        self, name: str, predicate: Callable[[dict], bool], timeout: float = 3.0, since=None
    ) -> dict[str, Any]:
        since = self.client.mark() if since is None else since
        return self.client.wait_for(
            f"/{name}/status", lambda m: not m.retain and predicate(m.json), timeout, since
        ).json


@pytest.fixture(scope="module")
def sensors(workdir: Path, broker: Broker) -> Iterator[SensorLab]:
    lab = SensorLab(workdir, broker).start()
    yield lab
    lab.stop()


SENSOR_TYPES = {"name": str, "kind": str, "module": str, "stale": bool, "temperature": float,
                "age": float}  # fmt: skip


def test_room_sensor_over_tcp(sensors: SensorLab) -> None:
    status = sensors.wait("room_tcp", lambda s: True)
    for key, kind in SENSOR_TYPES.items():
        assert type(status[key]) is kind, (key, status)
    assert (status["temperature"], status["humidity"]) == (22.5, 55.0)
    assert status["dewpoint"] == round(dew_point(22.5, 55.0), 2)
    assert (status["kind"], status["module"], status["max_temperature"]) == ("room", "", None)
    assert status["error"] is None and 0 <= status["age"] < STALE_TIMEOUT
    sensors.client.wait_for("/room_tcp/availability", lambda m: m.text == "online")
    sensors.room.update(t=18.0, rh=70.0)  # the room changes: so does the dew point
    status = sensors.wait("room_tcp", lambda s: s["temperature"] == 18.0)
    assert status["dewpoint"] == round(dew_point(18.0, 70.0), 2)


def test_dry_and_condensing_air_over_tcp(sensors: SensorLab) -> None:
    """RH 0.0 (dry nitrogen) is a good reading, not a stale sensor; 100.4 is clamped to 100."""
    before = dict(sensors.room)
    sensors.room.update(t=21.0, rh=0.0)
    try:
        dry = sensors.wait("room_tcp", lambda s: s["humidity"] == 0.0)
        assert (dry["dewpoint"], dry["too_dry"], dry["stale"], dry["error"]) == (
            None, True, False, None,
        )  # fmt: skip
        sensors.room.update(rh=100.4)
        wet = sensors.wait("room_tcp", lambda s: s["humidity"] == 100.0)
        assert (wet["dewpoint"], wet["humidity_clamped"], wet["too_dry"]) == (21.0, True, False)
    finally:
        sensors.room.update(before)


def test_module_sensor_over_a_pty(sensors: SensorLab) -> None:
    status = sensors.wait("m1_pty", lambda s: True)
    assert (status["temperature"], status["humidity"], status["dewpoint"]) == (-5.25, None, None)
    assert (status["kind"], status["module"], status["max_temperature"]) == ("module", MODULE, 30.0)
    sensors.pty.line = "T=abc"
    status = sensors.wait("m1_pty", lambda s: s["error"] is not None)
    assert status["error"] == "unparsable line 'T=abc': T: not a number: 'abc'"
    status = sensors.wait("m1_pty", lambda s: s["stale"], timeout=STALE_TIMEOUT + 1)
    assert status["temperature"] is None and status["error"].startswith("unparsable")
    sensors.pty.line = "T=-4.00"
    status = sensors.wait("m1_pty", lambda s: not s["stale"])
    assert status["temperature"] == -4.0 and status["error"] is None


def test_garbage_is_flagged_then_stale_never_numbers(sensors: SensorLab) -> None:
    since = sensors.client.mark()
    sensors.server.set_mode("garbage")
    try:
        flagged = sensors.wait("room_tcp", lambda s: s["error"] is not None, since=since)
        assert GARBAGE_LINE in flagged["error"]
        stale = sensors.wait("room_tcp", lambda s: s["stale"], timeout=STALE_TIMEOUT + 1)
        assert stale["temperature"] is None and stale["dewpoint"] is None
        assert stale["humidity"] is None and stale["age"] >= STALE_TIMEOUT
    finally:
        sensors.server.set_mode("ok")
    messages = [m.json for m in sensors.client.messages[since:] if m.topic == "/room_tcp/status"]
    assert all(m["temperature"] in (None, 22.5, 18.0) for m in messages)
    recovered = sensors.wait("room_tcp", lambda s: not s["stale"])
    assert recovered["error"] is None and recovered["dewpoint"] is not None


def test_silent_sensor_goes_stale_in_time(sensors: SensorLab) -> None:
    since = sensors.client.mark()
    silenced = time.monotonic()
    sensors.server.set_mode("silent")
    try:
        stale = sensors.client.wait_for(
            "/room_tcp/status", lambda m: m.json["stale"], STALE_TIMEOUT + 1, since
        )
        assert stale.t - silenced < STALE_TIMEOUT + 0.2  # published when it goes stale
        assert stale.json["error"] == f"no good reading within {STALE_TIMEOUT:g} s"
        assert stale.json["temperature"] is None and stale.json["age"] >= STALE_TIMEOUT
    finally:
        sensors.server.set_mode("ok")
    sensors.wait("room_tcp", lambda s: not s["stale"])


def test_source_lost_and_back(sensors: SensorLab) -> None:
    port = sensors.server.port
    sensors.server.stop()
    status = sensors.wait("room_tcp", lambda s: s["stale"], timeout=STALE_TIMEOUT + 2)
    assert "socket://127.0.0.1" in status["error"]
    sensors.server = SensorLineServer(sensors.server.reading, port=port, interval=0.1)
    sensors.server.start()
    status = sensors.wait("room_tcp", lambda s: not s["stale"], timeout=8)
    assert status["error"] is None


def test_simulated_source(sensors: SensorLab) -> None:
    status = sensors.wait("room_sim", lambda s: True)
    assert status["temperature"] == pytest.approx(21.0, abs=0.5)
    assert status["humidity"] == pytest.approx(45.0, abs=0.5)
    assert status["dewpoint"] == pytest.approx(dew_point(21.0, 45.0), abs=0.5)


def test_refresh_and_unknown_commands(sensors: SensorLab) -> None:
    answer = sensors.client.command("/room_sim/cmd/refresh", "", "/room_sim/response")
    assert answer["ok"] is True
    answer = sensors.client.command("/room_sim/cmd/calibrate", "", "/room_sim/response")
    assert answer["ok"] is False and "unknown command 'calibrate'" in answer["error"]
