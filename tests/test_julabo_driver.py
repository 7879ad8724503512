"""Julabo driver: protocol replay (no simulator), then the driver against the simulator over a
real pty and real TCP, the simulator's physics in simulated time, and its command line."""

from __future__ import annotations

import math
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

from trackerdcs.julabo import (
    PROFILES,
    STATUS_TABLE,
    ErrorReply,
    Julabo,
    JulaboProtocol,
    JulaboStatus,
    JulaboTimeout,
    NotSupported,
    ProtocolError,
    ReadbackMismatch,
    SerialSettings,
    StatusKind,
    TransportError,
)
from trackerdcs.julabo.protocol import is_placeholder
from trackerdcs.julabo.transport import effective_settings, normalize_url
from trackerdcs.sim.julabo import JulaboSimulator, SimulatedJulabo
from trackerdcs.sim.lineservers import IN_USE

SETTINGS = SerialSettings(timeout=1.0)


def connect(url: str, settings: SerialSettings = SETTINGS, **kw) -> Julabo:
    """A device with the small protocol delays tests use (not opened yet)."""
    return Julabo.from_url(url, settings, write_delay=0.002, query_delay=0.001, **kw)


def wait_for(condition: Callable[[], bool], timeout: float = 3.0) -> None:
    """Poll `condition` until true; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        threading.Event().wait(0.005)


# == protocol replay: a fake line that checks every (sent, reply) pair ===========================


class ReplayTransport:
    """A scripted line: each write must equal the next `sent`; its `reply` is then readable.

    A reply of None means the command gets no reply (an `OUT_`); b"" a silent line (timeout).
    """

    def __init__(self, script: Sequence[tuple[bytes, bytes | None]]) -> None:
        self.script = list(script)
        self.url = "replay://"
        self.is_open = True
        self._pending: bytes | None = None

    def open(self) -> None:
        self.is_open = True

    def close(self) -> None:
        self.is_open = False

    def write(self, data: bytes) -> None:
        assert self.script, f"unexpected write {data!r}: script exhausted"
        sent, reply = self.script.pop(0)
        assert data == sent, f"sent {data!r}, script expects {sent!r}"
        self._pending = reply

    def read_until(self, terminator: bytes) -> bytes:
        assert self._pending is not None, "read with no reply scripted"
        reply, self._pending = self._pending, None
        return reply

    def discard_input(self) -> None:
        pass


@contextmanager
def expected_protocol(
    script: Sequence[tuple[bytes, bytes | None]],
    temperature_range: tuple[float, float] | None = None,
    *,
    retries: int = 0,
    profile: str = "full",
) -> Iterator[Julabo]:
    """A `Julabo` on a `ReplayTransport`; on exit every scripted exchange must have happened."""
    transport = ReplayTransport(script)
    protocol = JulaboProtocol(transport, write_delay=0, query_delay=0, retries=retries)
    yield Julabo(protocol, temperature_range=temperature_range, profile=profile)
    assert transport.script == [], f"never sent: {transport.script}"


OK_STATUS = (b"STATUS\r", b"02 REMOTE STOP\r\n")  # read after every OUT_: nothing refused


def test_replay_identify_and_readings() -> None:
    script = [
        (b"VERSION\r", b"JULABO FP50 VERSION 4.0\r\n"),
        (b"IN_PV_00\r", b"\x1121.50\r\x13\n"),  # XON/XOFF anywhere, even between CR and LF
        (b"IN_PV_02\r", b"-12.50\r\n"),  # negative: a number, not an error line
        (b"IN_PV_01\r", b"  -35\r\n"),
    ]
    with expected_protocol(script) as chiller:
        assert chiller.identify() == "JULABO FP50 VERSION 4.0"
        assert chiller.bath_temperature == 21.5
        assert chiller.external_temperature == -12.5
        assert chiller.heating_power == -35.0


def test_replay_write_is_read_back_and_verified() -> None:
    script: list[tuple[bytes, bytes | None]] = [
        (b"OUT_SP_00 18.50\r", None),
        (b"IN_SP_00\r", b"18.50\r\n"),
        OK_STATUS,
        (b"OUT_MODE_01 2\r", None),
        (b"IN_MODE_01\r", b"2\r\n"),
        OK_STATUS,
        (b"OUT_MODE_05 1\r", None),
        (b"IN_MODE_05\r", b"1\r\n"),
        OK_STATUS,
        (b"OUT_MODE_05 0\r", None),
        (b"IN_MODE_05\r", b"0\r\n"),
        OK_STATUS,
        (b"OUT_SP_07 3\r", None),
        (b"IN_SP_07\r", b"3\r\n"),
        OK_STATUS,
        (b"OUT_PAR_06 3.5\r", None),  # Xp: one decimal, as the manual's range 0.1..99.9
        (b"IN_PAR_06\r", b"3.5\r\n"),
        OK_STATUS,
    ]
    with expected_protocol(script) as chiller:
        assert chiller.set_setpoint(1, 18.5) == 18.5
        chiller.active_setpoint = 2
        chiller.start()
        chiller.stop()
        assert chiller.write("pump_stage", 3) == 3
        assert chiller.write("xp_internal", 3.5) == 3.5


def test_replay_a_value_stored_with_a_complaint_is_a_warning() -> None:
    """-13: "Value lies outside the ... temperature warning limits. But the value is stored."""
    script: list[tuple[bytes, bytes | None]] = [
        (b"OUT_SP_00 30.00\r", None),
        (b"IN_SP_00\r", b"30.00\r\n"),
        (b"STATUS\r", b"-13 VALUE EXCEEDS TEMPERATURE LIMITS\r\n"),
    ]
    with expected_protocol(script) as chiller:
        applied = chiller.apply("setpoint_1", 30.0)
    assert applied.value == 30.0
    assert applied.warning == JulaboStatus(-13, "VALUE EXCEEDS TEMPERATURE LIMITS")


def test_replay_mismatch_reads_status() -> None:
    script: list[tuple[bytes, bytes | None]] = [
        (b"OUT_SP_01 500.00\r", None),
        (b"IN_SP_01\r", b"20.00\r\n"),
        (b"STATUS\r", b"-11 VALUE TOO LARGE\r\n"),
    ]
    with expected_protocol(script) as chiller, pytest.raises(ReadbackMismatch) as info:
        chiller.set_setpoint(2, 500)
    assert info.value.status == JulaboStatus(-11, "VALUE TOO LARGE")
    assert info.value.readback == "20.00"
    assert "OUT_SP_01" in str(info.value)


@pytest.mark.parametrize(
    ("attribute", "command", "reply", "match"),
    [
        ("bath_temperature", b"IN_PV_00\r", b"abc\r\n", "IN_PV_00: expected a number, got 'abc'"),
        ("bath_temperature", b"IN_PV_00\r", b"nan\r\n", "got 'nan'"),
        ("safety_temperature", b"IN_PV_03\r", b"-1-.5\r\n", "IN_PV_03"),
        ("pump_stage", b"IN_SP_07\r", b"2.5\r\n", "IN_SP_07: expected an integer"),
        ("running", b"IN_MODE_05\r", b"2\r\n", "IN_MODE_05: expected 0 or 1"),
        ("bath_temperature", b"IN_PV_00\r", b"\xb2\xb1.5\r\n", "parity"),
    ],
)
def test_replay_strict_parsing(attribute: str, command: bytes, reply: bytes, match: str) -> None:
    with (
        expected_protocol([(command, reply)]) as chiller,
        pytest.raises(ProtocolError, match=match),
    ):
        getattr(chiller, attribute)


@pytest.mark.parametrize("reply", [b"---.--\r\n", b"----\r\n", b"--.-\r\n", b" -.-- \r\n"])
def test_replay_placeholder_is_a_missing_value(reply: bytes) -> None:
    """No external Pt100: the unit answers `---.--` (ISIS's driver ignores the same reply)."""
    with expected_protocol([(b"IN_PV_02\r", reply)]) as chiller:
        assert chiller.external_temperature is None
    assert not is_placeholder("-1.5") and not is_placeholder("-") and not is_placeholder("")


def test_replay_a_transient_is_retried_and_counted() -> None:
    script: list[tuple[bytes, bytes | None]] = [
        (b"IN_PV_00\r", b""),  # no reply before the timeout
        (b"IN_PV_00\r", b"21.50\r\n"),
        (b"STATUS\r", b"03 REMO"),  # cut short
        (b"STATUS\r", b"03 REMOTE START\r\n"),
        (b"IN_SP_00\r", b"2#.5\r\n"),  # garbled
        (b"IN_SP_00\r", b"20.00\r\n"),
    ]
    with expected_protocol(script, retries=1) as chiller:
        assert chiller.bath_temperature == 21.5
        assert chiller.status() == JulaboStatus(3, "REMOTE START")
        assert chiller.setpoint(1) == 20.0
        assert chiller.protocol.transients == 3


def test_replay_a_second_failure_is_raised_and_an_error_line_at_once() -> None:
    script: list[tuple[bytes, bytes | None]] = [
        (b"IN_PV_00\r", b""),
        (b"IN_PV_00\r", b"\r\n"),
        (b"IN_PV_02\r", b"-08 INVALID COMMAND\r\n"),  # an answer: not retried
    ]
    with expected_protocol(script, retries=1) as chiller:
        with pytest.raises(ProtocolError, match="IN_PV_00"):
            _ = chiller.bath_temperature
        with pytest.raises(ErrorReply):
            _ = chiller.external_temperature


def test_replay_error_line_is_decoded() -> None:
    script = [(b"IN_PV_02\r", b"-15 EXTERNAL SENSOR ALARM\r\n")]
    with expected_protocol(script) as chiller, pytest.raises(ErrorReply) as info:
        _ = chiller.external_temperature
    assert info.value.status.code == -15
    assert info.value.status.is_alarm


def test_replay_partial_reply_times_out() -> None:
    with expected_protocol([(b"IN_PV_00\r", b"21.5")]) as chiller:
        with pytest.raises(JulaboTimeout) as info:
            _ = chiller.bath_temperature
        assert isinstance(info.value, TimeoutError)
        assert info.value.partial == b"21.5"


def test_replay_invalid_values_send_nothing() -> None:
    with expected_protocol([], temperature_range=(-40.0, 80.0)) as chiller:
        for bad in (
            lambda: setattr(chiller, "pump_stage", 5),
            lambda: setattr(chiller, "pump_stage", 2.0),
            lambda: setattr(chiller, "active_setpoint", True),
            lambda: chiller.set_setpoint(4, 20.0),
            lambda: chiller.set_setpoint(1, math.nan),
            lambda: chiller.set_setpoint(1, 81.0),
            lambda: chiller.write("high_limit", -41.0),
            lambda: setattr(chiller, "running", 1),
        ):
            with pytest.raises(ValueError):
                bad()
        with pytest.raises(AttributeError):
            chiller.bath_temperature = 3.0  # type: ignore[assignment]
        with pytest.raises(AttributeError):
            chiller.write("heating_power", 3.0)
        for name, bad in (("xp_internal", 0.05), ("tn_internal", 10000), ("tv_internal", -1),
                          ("selftuning", 3), ("external_input", 2)):  # fmt: skip
            with pytest.raises(ValueError):
                chiller.write(name, bad)


def test_a_model_without_a_parameter_sends_nothing() -> None:
    with expected_protocol([], profile="fl") as chiller:
        for bad in (
            lambda: chiller.active_setpoint,
            lambda: chiller.external_temperature,
            lambda: chiller.set_setpoint(2, 10.0),
            lambda: chiller.write("xp_internal", 3.0),
        ):
            with pytest.raises(NotSupported, match="model 'fl' has no"):
                bad()
    with expected_protocol([], profile="fp50-mh") as chiller, pytest.raises(NotSupported):
        chiller.write("high_limit", 50.0)  # read-only there


def command_table(model: str) -> dict[str, tuple[str, str | None]]:
    return {name: (r.query, r.write) for name, r in PROFILES[model].registers.items()}


MINIMAL = {
    "bath_temperature": ("IN_PV_00", None),
    "setpoint_1": ("IN_SP_00", "OUT_SP_00"),
    "running": ("IN_MODE_05", "OUT_MODE_05"),
}


def test_command_tables_match_the_manuals() -> None:
    """Guards against register mix-ups: every model's names against the manuals' commands
    (hardware.md; FL manuals; ISIS EPICS-julabo protocol README for FP50-MH and BIG)."""
    assert command_table("full") == {
        **MINIMAL,
        "heating_power": ("IN_PV_01", None),
        "external_temperature": ("IN_PV_02", None),
        "safety_temperature": ("IN_PV_03", None),
        "excess_temperature_limit": ("IN_PV_04", None),
        "setpoint_2": ("IN_SP_01", "OUT_SP_01"),
        "setpoint_3": ("IN_SP_02", "OUT_SP_02"),
        "high_limit": ("IN_SP_03", "OUT_SP_03"),
        "low_limit": ("IN_SP_04", "OUT_SP_04"),
        "pump_stage": ("IN_SP_07", "OUT_SP_07"),
        "active_setpoint": ("IN_MODE_01", "OUT_MODE_01"),
        "selftuning": ("IN_MODE_02", "OUT_MODE_02"),
        "external_input": ("IN_MODE_03", "OUT_MODE_03"),
        "external_control": ("IN_MODE_04", "OUT_MODE_04"),
        "xp_internal": ("IN_PAR_06", "OUT_PAR_06"),
        "tn_internal": ("IN_PAR_07", "OUT_PAR_07"),
        "tv_internal": ("IN_PAR_08", "OUT_PAR_08"),
        "xp_cascade": ("IN_PAR_09", "OUT_PAR_09"),
        "p_cascade": ("IN_PAR_10", "OUT_PAR_10"),
        "tn_cascade": ("IN_PAR_11", "OUT_PAR_11"),
        "tv_cascade": ("IN_PAR_12", "OUT_PAR_12"),
    }
    assert command_table("fl") == MINIMAL
    limits = {"high_limit": ("IN_SP_01", None), "low_limit": ("IN_SP_02", None)}
    assert command_table("fp50-mh") == {
        **MINIMAL, **limits,
        "external_temperature": ("IN_PV_01", None), "heating_power": ("IN_PV_02", None),
    }  # fmt: skip
    assert command_table("big") == {
        **MINIMAL, **limits,
        "external_temperature": ("IN_PV_02", None), "heating_power": ("IN_PV_01", None),
    }  # fmt: skip
    assert command_table("generic") == command_table("full")
    assert PROFILES["generic"].optional == set(command_table("full")) - set(MINIMAL)


def test_status_decoding() -> None:
    assert JulaboStatus.parse("03 REMOTE START") == JulaboStatus(3, "REMOTE START")
    remote_start = JulaboStatus.parse("03 REMOTE START")
    assert remote_start.is_remote and remote_start.is_running and not remote_start.is_error
    manual_stop = JulaboStatus.parse("00 MANUAL STOP")
    assert not manual_stop.is_remote and not manual_stop.is_running
    low_level = JulaboStatus.parse("-01 LOW LEVEL ALARM")
    assert low_level.is_error and low_level.is_alarm and not low_level.is_running
    assert JulaboStatus.parse("-03 EXCESS TEMPERATURE WARNING").is_warning
    assert JulaboStatus.parse("-08 INVALID COMMAND").kind is StatusKind.COMMAND_ERROR
    unknown = JulaboStatus.parse("-99 Something New")
    assert (unknown.code, unknown.text, unknown.is_alarm, unknown.known) == (
        -99,
        "SOMETHING NEW",
        True,
        False,
    )
    assert str(JulaboStatus.from_code(-8)) == "-08 INVALID COMMAND"
    with pytest.raises(ProtocolError, match="STATUS"):
        JulaboStatus.parse("REMOTE START")
    # the manual's codes, all present
    expected = {0, 1, 2, 3, -1, -3, -4, -5, -6, -7, -8, -9, -10, -11, -12, -13, -14, -15}
    assert expected | {-20, -21, -26, -33, -38, -40} == set(STATUS_TABLE)


class FakeClock:
    """Monotonic time that only moves when slept on (or advanced by the test)."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(round(seconds, 6))
        self.now += seconds


def test_pacing_is_a_minimum_gap_since_the_previous_command() -> None:
    clock = FakeClock()
    transport = ReplayTransport(
        [
            (b"IN_PV_00\r", b"20.00\r\n"),
            (b"IN_PV_00\r", b"20.00\r\n"),
            (b"IN_PV_00\r", b"20.00\r\n"),
            (b"OUT_SP_00 5.00\r", None),
            (b"IN_SP_00\r", b"5.00\r\n"),
            OK_STATUS,
        ]
    )
    protocol = JulaboProtocol(
        transport, write_delay=0.25, query_delay=0.1, clock=clock, sleep=clock.sleep
    )
    protocol.query("IN_PV_00")  # first command: no wait
    assert clock.sleeps == []
    clock.now += 0.04
    protocol.query("IN_PV_00")  # 0.04 s elapsed: waits the remaining 0.06 s
    assert clock.sleeps == [0.06]
    clock.now += 1.0
    protocol.query("IN_PV_00")  # long enough ago: no wait
    assert clock.sleeps == [0.06]
    protocol.send("OUT_SP_00 5.00")  # 0.25 s before a write and before its read-back, then
    assert clock.sleeps == [0.06, 0.25, 0.25, 0.1]  # the query gap before STATUS


# == the driver against the simulator over a real pty and real TCP ===============================


@pytest.fixture
def sim() -> Iterator[JulaboSimulator]:
    with JulaboSimulator(tick=None) as simulator:
        yield simulator


@pytest.fixture(params=["pty", "tcp"])
def url(request: pytest.FixtureRequest, sim: JulaboSimulator) -> str:
    return sim.serve_pty() if request.param == "pty" else sim.serve_tcp()


@pytest.fixture
def chiller(url: str) -> Iterator[Julabo]:
    with connect(url) as device:
        yield device


def test_identify_status_and_readings(sim: JulaboSimulator, chiller: Julabo) -> None:
    assert chiller.identify().startswith("JULABO")
    assert chiller.status() == JulaboStatus(2, "REMOTE STOP")
    assert chiller.bath_temperature == pytest.approx(20.0)
    assert chiller.heating_power == 0.0
    assert chiller.safety_temperature == pytest.approx(20.0)
    assert chiller.excess_temperature_limit == pytest.approx(210.0)
    assert chiller.pump_stage == 2
    assert chiller.running is False
    assert chiller.external_control is False


def test_setpoint_start_cool_and_stop(sim: JulaboSimulator, chiller: Julabo) -> None:
    assert chiller.set_setpoint(2, -10.25) == -10.25
    assert chiller.setpoint(2) == -10.25
    chiller.active_setpoint = 1
    assert chiller.active_setpoint == 1
    chiller.start()
    assert chiller.running is True
    assert chiller.status() == JulaboStatus(3, "REMOTE START")
    sim.step(60.0)  # one simulated minute at 2 K/min
    assert chiller.bath_temperature == pytest.approx(18.0)
    assert chiller.heating_power == -100.0  # cooling hard, clipped
    assert 18.0 < chiller.external_temperature < 20.0  # lags behind the bath
    chiller.stop()
    assert chiller.status() == JulaboStatus(2, "REMOTE STOP")


def test_out_of_range_is_refused_and_not_applied(sim: JulaboSimulator, chiller: Julabo) -> None:
    chiller.set_setpoint(1, 25.0)
    with pytest.raises(ReadbackMismatch) as too_large:
        chiller.set_setpoint(1, 250.0)
    assert too_large.value.status == JulaboStatus(-11, "VALUE TOO LARGE")
    with pytest.raises(ReadbackMismatch) as too_small:
        chiller.set_setpoint(1, -60.0)
    assert too_small.value.status == JulaboStatus(-10, "VALUE TOO SMALL")
    assert chiller.setpoint(1) == 25.0
    assert chiller.status() == JulaboStatus(2, "REMOTE STOP")  # reading STATUS cleared it
    # a client-side range stops the value before anything is sent
    sent = sim.out_count
    strict = Julabo(chiller.protocol, temperature_range=(-50.0, 200.0))
    with pytest.raises(ValueError):
        strict.set_setpoint(1, 250.0)
    assert sim.out_count == sent


def test_unknown_command_reports_invalid_command(sim: JulaboSimulator, chiller: Julabo) -> None:
    chiller.protocol.write("IN_PV_99")  # no reply to an invalid command
    assert chiller.status() == JulaboStatus(-8, "INVALID COMMAND")
    assert chiller.status() == JulaboStatus(2, "REMOTE STOP")


def test_manual_mode_refuses_out_commands(sim: JulaboSimulator, chiller: Julabo) -> None:
    sim.set_remote(False)
    assert chiller.status() == JulaboStatus(0, "MANUAL STOP")
    with pytest.raises(ReadbackMismatch) as info:
        chiller.set_setpoint(1, 30.0)
    assert info.value.status is not None and info.value.status.code == -9
    assert chiller.setpoint(1) == 20.0
    sim.device.set_running(True)  # front panel start
    assert chiller.status() == JulaboStatus(1, "MANUAL START")
    assert chiller.bath_temperature == pytest.approx(20.0)  # queries still answered


def test_faults_alarm_stops_warning_does_not(sim: JulaboSimulator, chiller: Julabo) -> None:
    chiller.start()
    sim.inject_fault(-3)
    status = chiller.status()
    assert (status.code, status.is_warning) == (-3, True)
    assert chiller.running is True
    sim.inject_fault(-1)
    assert chiller.status() == JulaboStatus(-1, "LOW LEVEL ALARM")
    assert chiller.running is False
    with pytest.raises(ReadbackMismatch) as info:
        chiller.start()
    assert info.value.status is not None and info.value.status.code == -9
    sim.clear_fault()
    assert chiller.status() == JulaboStatus(2, "REMOTE STOP")
    chiller.start()


def test_xon_xoff_bytes_are_stripped(sim: JulaboSimulator, chiller: Julabo) -> None:
    sim.xon = True
    assert chiller.identify().startswith("JULABO")
    assert chiller.set_setpoint(3, 42.5) == 42.5
    assert chiller.status() == JulaboStatus(2, "REMOTE STOP")


def test_one_exchange_at_a_time(sim: JulaboSimulator, chiller: Julabo) -> None:
    errors: list[BaseException] = []

    def worker(read: Callable[[], object], check: Callable[[object], bool]) -> None:
        try:
            for _ in range(15):
                value = read()
                assert check(value), value
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=worker, args=(chiller.identify, lambda v: "JULABO" in str(v))),
        threading.Thread(target=worker, args=(lambda: chiller.pump_stage, lambda v: v == 2)),
        threading.Thread(target=worker, args=(chiller.status, lambda v: v.code == 2)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


def test_pid_parameters_and_modes_round_trip(sim: JulaboSimulator, chiller: Julabo) -> None:
    """What facility code drives on full-featured units: IN_/OUT_PAR_06..12, MODE_02/03."""
    assert (chiller.xp_internal, chiller.tn_internal, chiller.tv_internal) == (2.5, 60, 10)
    assert (chiller.xp_cascade, chiller.p_cascade, chiller.tn_cascade, chiller.tv_cascade) == (
        5.0, 1.0, 120, 20,
    )  # fmt: skip
    assert chiller.write("xp_internal", 4.2) == 4.2 and sim.device.pid["xp_internal"] == 4.2
    assert chiller.write("tn_cascade", 300) == 300
    chiller.selftuning = 2
    chiller.external_input = 1
    assert (chiller.selftuning, chiller.external_input) == (2, 1)
    with pytest.raises(ReadbackMismatch) as info:
        chiller.protocol.send("OUT_PAR_07 2")  # Tn below 3 s: the unit refuses it
    assert info.value.status == JulaboStatus(-10, "VALUE TOO SMALL")
    assert chiller.tn_internal == 60


def test_a_value_outside_the_limits_is_stored_with_a_warning(
    sim: JulaboSimulator, chiller: Julabo
) -> None:
    chiller.high_limit = 25.0
    applied = chiller.apply("setpoint_1", 30.0)
    assert applied.value == 30.0 and sim.device.setpoints[0] == 30.0
    assert applied.warning == JulaboStatus(-13, "VALUE EXCEEDS TEMPERATURE LIMITS")
    assert chiller.status() == JulaboStatus(2, "REMOTE STOP")  # read once, by `apply`


def test_a_refusal_is_reported_until_the_next_out_command() -> None:
    """The manuals' command errors describe "the most recently received command"."""
    unit = SimulatedJulabo()
    unit.handle("OUT_SP_07 9")  # -11, then an accepted command: the refusal is gone
    unit.handle("OUT_SP_07 3")
    assert unit.handle("STATUS") == "02 REMOTE STOP"
    unit.handle("OUT_SP_07 9")
    assert unit.handle("IN_SP_07") == "3"  # a query leaves it pending
    assert unit.handle("STATUS") == "-11 VALUE TOO LARGE"
    unit.handle("OUT_SP_07 9")
    unit.handle("OUT_SP_07 0")  # the next refusal replaces it
    assert unit.handle("STATUS") == "-10 VALUE TOO SMALL"
    unit.handle("IN_PV_99")  # unknown: -08 ...
    unit.handle("OUT_SP_07 2")  # ... until an accepted command
    assert unit.handle("STATUS") == "02 REMOTE STOP"


ALL_QUERIES = sorted({r.query for p in PROFILES.values() for r in p.registers.values()})


@pytest.mark.parametrize("model", list(PROFILES))
def test_the_simulator_answers_exactly_its_models_commands(model: str) -> None:
    unit = SimulatedJulabo(model=model)
    registers = PROFILES[model].registers
    queries = {r.query for r in registers.values()}
    writes = {r.write for r in registers.values() if r.write}
    for query in ALL_QUERIES:
        reply = unit.handle(query)
        status = unit.handle("STATUS")
        if query in queries:
            assert reply is not None and status == "02 REMOTE STOP", (model, query, reply)
        else:
            assert reply is None and status == "-08 INVALID COMMAND", (model, query, reply)
        write = "OUT_" + query.removeprefix("IN_")
        unit.handle(f"{write} {reply or 1}")  # its own value back: always in range
        status = unit.handle("STATUS")
        assert (status == "02 REMOTE STOP") == (write in writes), (model, write, status)
    assert unit.commands == queries | writes | {"VERSION", "STATUS"}


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("fl", {"external_temperature": None, "high_limit": None}),
        ("fp50-mh", {"external_temperature": "IN_PV_01", "high_limit": "IN_SP_01"}),
        ("big", {"external_temperature": "IN_PV_02", "high_limit": "IN_SP_01"}),
    ],
)
def test_driver_on_each_model(model: str, expected: dict[str, str | None]) -> None:
    unit = SimulatedJulabo(model=model, setpoint_range=(-40.0, 90.0))
    with JulaboSimulator(unit, tick=None) as sim, connect(sim.serve_tcp(), profile=model) as dev:
        assert dev.identify().startswith("JULABO") and dev.status().code == 2
        assert dev.set_setpoint(1, -5.0) == -5.0 and unit.setpoints[0] == -5.0
        dev.start()
        assert dev.running is True and dev.status() == JulaboStatus(3, "REMOTE START")
        for name, query in expected.items():
            assert dev.has(name) == (query is not None)
            if query is not None:
                assert dev.parameters()[name].query == query
        if dev.has("high_limit"):  # the limits read as limits, not as set points 2 and 3
            assert (dev.high_limit, dev.low_limit) == (90.0, -40.0)
        sent = sim.out_count
        with pytest.raises(NotSupported):
            dev.set_setpoint(2, 10.0)
        assert sim.out_count == sent
        dev.stop()


def test_without_external_sensor_the_reading_is_missing() -> None:
    unit = SimulatedJulabo(external_sensor=False)
    with JulaboSimulator(unit, tick=None) as sim, connect(sim.serve_tcp()) as chiller:
        assert chiller.external_temperature is None
        assert chiller.bath_temperature == 20.0


def test_a_second_tcp_client_is_refused_while_one_is_connected(sim: JulaboSimulator) -> None:
    """As ser2net: the line belongs to the first client."""
    url = sim.serve_tcp()
    with connect(url) as first:
        assert first.identify().startswith("JULABO")
        second = socket.create_connection(("127.0.0.1", sim.tcp.port), timeout=2)
        with second:
            received = b""
            while chunk := second.recv(100):  # the message, then the close
                received += chunk
        assert received == IN_USE
        assert first.status().code == 2  # the first one keeps the line
        assert (sim.tcp.refused, sim.tcp.connections) == (1, 1)
    with connect(url) as again:  # free again once the first is gone
        assert again.identify().startswith("JULABO")


def test_a_dropped_reply_is_retried(sim: JulaboSimulator) -> None:
    with connect(sim.serve_tcp(), SerialSettings(timeout=0.2), retries=1) as chiller:
        sim.drop_replies(1)
        assert chiller.bath_temperature == 20.0
        assert (chiller.protocol.transients, sim.device.dropped) == (1, 1)
        sim.device.drop_every = 3  # never two in a row: every read succeeds
        for _ in range(9):
            assert chiller.status().code == 2
        assert chiller.protocol.transients == sim.device.dropped >= 4  # each one retried
        sim.device.drop_every = 0
        sim.drop_replies(2)
        with pytest.raises(JulaboTimeout):
            _ = chiller.bath_temperature


def test_tcp_line_drop_and_reconnect(sim: JulaboSimulator) -> None:
    url = sim.serve_tcp()
    with connect(url) as chiller:
        chiller.set_setpoint(1, 12.0)
        sim.drop_line()
        with pytest.raises(TransportError, match=url):
            _ = chiller.bath_temperature
        chiller.close()
        with pytest.raises(TransportError, match="refused"):
            chiller.open()
        sim.restore_line()
        chiller.open()
        assert chiller.setpoint(1) == 12.0  # same unit, same port
        # a client disconnecting does not kill the server; a new client can connect
        sim.disconnect_clients()
        with pytest.raises(TransportError):
            chiller.identify()
        chiller.close()
        chiller.open()
        assert chiller.identify().startswith("JULABO")
    with connect(url) as again:
        assert again.status().code == 2
    assert sim.tcp is not None and sim.tcp.connections == 4


def test_pty_line_drop_and_reopen(sim: JulaboSimulator, tmp_path: Path) -> None:
    link = str(tmp_path / "ttyJULABO")
    first = sim.serve_pty(link=link)
    assert os.path.realpath(link) == first
    with connect(link) as chiller:
        assert chiller.identify().startswith("JULABO")
        sim.drop_line()
        with pytest.raises(TransportError):
            chiller.identify()
        chiller.close()
        with pytest.raises(TransportError, match="cannot open"):
            chiller.open()  # the link is gone while unplugged
        sim.restore_line()
        chiller.open()
        assert chiller.status().code == 2
    # a client closing the pty and reopening it keeps working
    with connect(link) as again:
        assert again.pump_stage == 2


def test_missing_device_and_refused_port() -> None:
    with pytest.raises(TransportError, match="/dev/ttyJULABO-missing"):
        Julabo.from_url("/dev/ttyJULABO-missing", SETTINGS).open()
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    with pytest.raises(TransportError, match="refused"):
        Julabo.from_url(f"tcp://127.0.0.1:{port}", SETTINGS).open()
    with pytest.raises(TransportError, match="not open"):
        Julabo.from_url("socket://127.0.0.1:1", SETTINGS).identify()


@pytest.mark.parametrize("kind", ["pty", "tcp"])
def test_silent_line_times_out(kind: str) -> None:
    master = slave = -1
    listener: socket.socket | None = None
    if kind == "pty":
        master, slave = os.openpty()
        url = os.ttyname(slave)
    else:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)  # the kernel accepts the connection; nobody ever answers
        url = f"socket://127.0.0.1:{listener.getsockname()[1]}"
    try:
        with connect(url, SerialSettings(timeout=0.2)) as chiller:
            started = time.monotonic()
            with pytest.raises(JulaboTimeout, match="VERSION: no reply"):
                chiller.identify()
            assert 0.15 < time.monotonic() - started < 1.0
    finally:
        if listener is not None:
            listener.close()
        else:
            os.close(master)
            os.close(slave)


def test_settings_and_urls() -> None:
    assert normalize_url("tcp://host:1") == "socket://host:1"
    assert normalize_url("serial:///dev/ttyUSB0") == "/dev/ttyUSB0"
    assert normalize_url("/dev/pts/3") == "/dev/pts/3"
    for bad in ({"parity": "X"}, {"bytesize": 9}, {"baudrate": 0}, {"timeout": 0}):
        with pytest.raises(ValueError):
            SerialSettings(**bad)
    settings = SerialSettings(baudrate=9600, bytesize=8, parity="N", rtscts=True)
    assert settings.pyserial_kwargs()["baudrate"] == 9600
    # a pty cannot do 7E1 (Linux forces CS8, no parity): those two are dropped there only
    master, slave = os.openpty()
    try:
        on_pty = effective_settings(os.ttyname(slave), SerialSettings())
    finally:
        os.close(master)
        os.close(slave)
    assert (on_pty.bytesize, on_pty.parity, on_pty.baudrate, on_pty.rtscts) == (8, "N", 4800, True)
    assert effective_settings("socket://127.0.0.1:1", SerialSettings()).bytesize == 7
    assert effective_settings("/dev/null", SerialSettings()).parity == "E"


# == simulator physics in simulated time, and its process form ===================================


def test_physics_ramp_drift_and_lag() -> None:
    unit = SimulatedJulabo(rate=3.0, ambient=22.0, ambient_tau=100.0, external_lag=10.0)
    unit.handle("OUT_SP_00 30")
    unit.handle("OUT_MODE_05 1")
    unit.step(60.0)
    assert unit.bath == pytest.approx(25.0)  # 3 K/min from 22
    assert unit.power == 100.0  # heating, clipped
    assert unit.external < unit.bath
    unit.step(600.0)
    assert unit.bath == pytest.approx(30.0)  # reached, no overshoot
    assert 0 < unit.power < 100  # holding against ambient losses
    unit.step(600.0)
    assert unit.external == pytest.approx(30.0, abs=1e-6)
    unit.handle("OUT_MODE_05 0")
    unit.step(100.0)  # one time constant toward ambient
    assert unit.bath == pytest.approx(22.0 + 8.0 * math.exp(-1.0))
    assert unit.power == 0.0


def test_simulator_refusals_and_limits() -> None:
    unit = SimulatedJulabo(setpoint_range=(-20.0, 100.0))
    for line, code in (
        ("OUT_SP_07 5", -11),
        ("OUT_SP_07 1.5", -8),
        ("OUT_MODE_01 -1", -10),
        ("OUT_SP_00", -8),
        ("OUT_SP_00 abc", -8),
        ("IN_PV_00 3", -8),
        ("FOO", -8),
    ):
        assert unit.handle(line) is None
        assert unit.handle("STATUS") == f"-{-code:02d} {STATUS_TABLE[code][0]}", line
    unit.handle("OUT_SP_03 50")
    unit.handle("OUT_SP_00 60")
    assert unit.handle("STATUS") == "-13 VALUE EXCEEDS TEMPERATURE LIMITS"
    assert unit.setpoints[0] == 60.0  # "But the value is stored." (Presto manual)
    unit.handle("OUT_SP_00 45")
    unit.handle("OUT_MODE_05 1")
    unit.bath = 55.0
    assert unit.handle("STATUS") == "-03 EXCESS TEMPERATURE WARNING"
    assert unit.handle("in_sp_00") == "45.00"  # commands are case-insensitive
    assert unit.out_count == 9


def test_tick_thread_advances_time() -> None:
    with JulaboSimulator(tick=0.01, speed=600.0) as simulator:  # 10 simulated min per wall s
        simulator.device.handle("OUT_SP_00 30")
        simulator.device.handle("OUT_MODE_05 1")
        wait_for(lambda: simulator.device.bath > 21.0)


def _stderr_lines(process: subprocess.Popen[str], count: int, timeout: float = 30.0) -> list[str]:
    """The first `count` lines the process writes on stderr, read by a thread until the pipe
    closes (a `select` on the pipe misses a line already in the reader's buffer: two lines
    written at once came in one read)."""
    assert process.stderr is not None
    stderr, lines = process.stderr, queue.Queue[str]()

    def read() -> None:
        for line in stderr:
            lines.put(line.strip())

    threading.Thread(target=read, name="sim-stderr", daemon=True).start()
    try:
        return [lines.get(timeout=timeout) for _ in range(count)]
    except queue.Empty:
        raise AssertionError(f"the simulator printed fewer than {count} lines") from None


def test_standalone_process() -> None:
    command = [sys.executable, "-m", "trackerdcs.sim.julabo", "--pty", "--tcp", "127.0.0.1:0"]
    process = subprocess.Popen(
        [*command, "--tick", "0.05", "--xon"], stderr=subprocess.PIPE, text=True
    )
    try:
        pty_line, tcp_line = _stderr_lines(process, 2)
        assert pty_line.startswith("julabo-sim: pty /dev/")
        assert tcp_line.startswith("julabo-sim: tcp socket://127.0.0.1:")
        for url in (pty_line.split()[-1], tcp_line.split()[-1]):
            with connect(url) as chiller:
                assert chiller.status() == JulaboStatus(2, "REMOTE STOP")
                assert chiller.set_setpoint(1, 21.5) == 21.5
    finally:
        process.terminate()
        assert process.wait(timeout=5) == 0
