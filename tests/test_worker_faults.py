"""No unexpected exception silently ends a worker thread or a callback (issue 11).

Each kind of worker and callback is made to fail with an exception no code foresaw (a bug
injected with monkeypatch), and the test checks what the issue asks: it is logged with its input
and counted (`trackerdcs.guard.FAULTS`), reported where the service reports (its answer, its
status), control is kept (a command is answered, a device line is reopened, a batch is dropped
and counted, a rule holds its modules unsafe), and five in a row end the daemon with status 70.
In-process, with the real code and (for the Julabo line) the real simulator over TCP.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from tests.inprocess import (
    EXAMPLE_LAB,
    FakeBackend,
    FakeLine,
    RecordingLink,
    command,
    example_lab,
    settle,
)
from trackerdcs import guard
from trackerdcs.guard import EXIT_FAULTS, FAULTS, MAX_CONSECUTIVE, Faults
from trackerdcs.power.channel import ChannelCommand
from trackerdcs.stack.process import wait_until


class Bug(Exception):
    """The unexpected exception injected into the code under test."""


def bug(*_: Any, **__: Any) -> Any:
    raise Bug("an injected bug")


# -- the fault counter itself ---------------------------------------------------------------------
def test_five_in_a_row_are_fatal_a_success_between_resets_the_count(caplog) -> None:
    faults, reasons = Faults(), []
    faults.on_fatal = reasons.append
    for _ in range(MAX_CONSECUTIVE - 1):
        faults.fault("the worker", Bug("x"), "its input")
    faults.ok("the worker")
    for _ in range(MAX_CONSECUTIVE - 1):
        faults.fault("the worker", Bug("x"))
    assert reasons == [] and faults.total == 2 * (MAX_CONSECUTIVE - 1)
    faults.fault("the worker", Bug("x"))
    assert len(reasons) == 1 and "5 unexpected errors in a row in the worker" in reasons[0]
    faults.fault("the worker", Bug("x"))
    assert len(reasons) == 1  # fatal once
    assert "unexpected error in the worker: Bug: x (input 'its input')" in caplog.text


def test_errors_far_apart_are_not_in_a_row(monkeypatch) -> None:
    faults, now = Faults(), [0.0]
    monkeypatch.setattr(guard.time, "monotonic", lambda: now[0])
    for _ in range(2 * MAX_CONSECUTIVE):
        faults.fault("a callback", Bug("x"))
        now[0] += guard.QUIET + 1
    assert faults.fatal_reason is None


def test_an_unexpected_error_in_a_loop_callback_ends_the_daemon_with_70(monkeypatch) -> None:
    """The runner: five failing loop callbacks in a row stop the daemon (its `stop()` runs,
    which publishes `offline`) and `daemon_main` returns 70."""
    from trackerdcs import runner

    monkeypatch.setattr(runner, "setup_logging", lambda *a, **k: None)
    stopped = threading.Event()

    class Daemon:
        def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
            self.loop = loop

        def start(self) -> None:
            for i in range(MAX_CONSECUTIVE):
                self.loop.call_later(0.01 * i, bug, f"message {i}")

        def stop(self) -> None:
            stopped.set()

    status = runner.daemon_main(
        "trackerdcs-test", None, lambda cfg, loop, args: Daemon(loop),
        ["--config", str(EXAMPLE_LAB)],
    )  # fmt: skip
    assert status == EXIT_FAULTS and stopped.is_set()
    assert "in the loop callback bug" in (FAULTS.fatal_reason or "")


# -- commands and paho callbacks ------------------------------------------------------------------
def test_a_command_whose_handler_raises_is_answered_once() -> None:
    link = RecordingLink(example_lab(), "/hv")
    link.execute(bug, command("/hv", "setv/0", '{"value": 1, "id": "alice:7"}'))
    (answer,) = link.answers()
    assert answer["ok"] is False and answer["id"] == "alice:7"
    assert "internal error: unexpected error in the command handler of /hv: Bug" in answer["error"]
    assert FAULTS.total == 1

    def answers_then_fails(cmd: Any) -> None:
        link.respond(cmd, True, None)
        raise Bug("after the answer")

    link.sent.clear()
    link.execute(answers_then_fails, command("/hv", "refresh", ""))
    assert [a["ok"] for a in link.answers()] == [True]  # not a second answer


def _message(topic: str, payload: bytes) -> mqtt.MQTTMessage:
    msg = mqtt.MQTTMessage(topic=topic.encode())
    msg.payload = payload
    return msg


def test_a_paho_callback_never_raises_into_paho() -> None:
    """An exception into paho's network thread would end it: the link's whole connection."""
    lab = example_lab()
    link = RecordingLink(lab, "/hv")
    link._on_message = bug
    link._guarded_message(None, None, _message("/interlock/status", b"{}"))
    link._on_command = bug
    link._guarded_message(None, None, _message("/hv/cmd/setv/0", b"10"))
    (answer,) = link.answers()
    assert answer["topic"] == "/hv/cmd/setv/0" and "internal error" in answer["error"]
    assert FAULTS.total == 2
    # paho's on_connect is the guarded handler: given no client, the real one fails inside
    link._client.on_connect(None, None, None, None, None)
    assert FAULTS.total == 3


# -- the Julabo line worker -----------------------------------------------------------------------
class Sink:
    def __init__(self) -> None:
        self.polls: list[Any] = []
        self.lost: list[str] = []

    def on_poll(self, poll: Any) -> None:
        self.polls.append(poll)

    def on_line_lost(self, reason: str) -> None:
        self.lost.append(reason)


@pytest.fixture
def julabo_line():
    from trackerdcs.julabo.device import Julabo
    from trackerdcs.sim.julabo import JulaboSimulator

    sim = JulaboSimulator(tick=None)
    device = Julabo.from_url(sim.serve_tcp(), write_delay=0, query_delay=0)
    yield device
    sim.close()


def test_a_julabo_job_that_raises_is_answered_and_the_line_reopened(julabo_line) -> None:
    from trackerdcs.julabo.worker import LineWorker

    sink, done = Sink(), []
    worker = LineWorker(julabo_line, sink, poll_interval=0.05, backoff=(0.05, 0.1))
    worker.start()
    try:
        wait_until(lambda: sink.polls, 5, "a first poll")
        worker.submit(bug, lambda result, error: done.append(error))
        wait_until(lambda: done, 5, "the job's answer")
        assert "unexpected error in the line worker of socket://" in str(done[0])
        polls = len(sink.polls)
        wait_until(lambda: len(sink.polls) > polls, 5, "polls on the reopened line")
        assert sink.lost and worker.alive() and FAULTS.total == 1
        assert FAULTS.fatal_reason is None  # a good poll since: not in a row
    finally:
        worker.stop()


def test_julabo_errors_in_a_row_end_the_daemon(julabo_line, monkeypatch) -> None:
    from trackerdcs.julabo.worker import LineWorker

    sink = Sink()
    monkeypatch.setattr(julabo_line, "identify", bug)  # every (re)opening fails unexpectedly
    worker = LineWorker(julabo_line, sink, poll_interval=0.05, backoff=(0.01, 0.02))
    fatal = threading.Event()
    FAULTS.on_fatal = lambda reason: fatal.set()
    worker.start()
    try:
        assert fatal.wait(5), FAULTS.total
        assert worker.alive()  # the daemon exits (the runner): the thread itself goes on
        assert f"{MAX_CONSECUTIVE} unexpected errors in a row" in (FAULTS.fatal_reason or "")
        assert all("unexpected error" in r for r in sink.lost)
    finally:
        worker.stop()


def test_the_julabo_worker_loop_itself_is_guarded(julabo_line, monkeypatch) -> None:
    from trackerdcs.julabo.worker import LineWorker

    sink = Sink()
    worker = LineWorker(julabo_line, sink, poll_interval=0.05, backoff=(0.05, 0.1))
    calls = {"n": 0}
    original = worker._wait_job

    def wait_job(timeout: float) -> Any:
        calls["n"] += 1
        if calls["n"] == 3:
            raise Bug("in the loop")
        return original(timeout)

    monkeypatch.setattr(worker, "_wait_job", wait_job)
    worker.start()
    try:
        wait_until(lambda: FAULTS.total == 1 and len(sink.polls) > 2, 5, "polls after the fault")
        assert worker.alive() and any("in the loop" in r for r in sink.lost)
    finally:
        worker.stop()


def test_a_dead_julabo_worker_is_never_passed_off_as_live() -> None:
    from trackerdcs.julabo.fsm import Chiller, make_machine
    from trackerdcs.julabo.service import JulaboService

    lab, loop = example_lab(), asyncio.new_event_loop()
    assert lab.julabo is not None
    chiller, line = Chiller(lab.julabo.url), FakeLine()
    make_machine(chiller)
    link = RecordingLink(lab, "/julabo")
    service = JulaboService(lab.julabo, chiller, line, link, loop)
    service.publish_status()
    line.alive = lambda: False  # type: ignore[method-assign]
    link.sent.clear()
    service._on_heartbeat()
    assert link.published("/julabo/status") == [] and "line worker" in (FAULTS.fatal_reason or "")
    loop.close()


# -- sensors --------------------------------------------------------------------------------------
def test_a_sensor_source_thread_survives_an_unexpected_error() -> None:
    from trackerdcs.sensors.sources import SimSource

    lines: list[str] = []
    failing = {"left": 2}

    def on_line(line: str) -> None:
        if failing["left"]:
            failing["left"] -= 1
            raise Bug("in the line callback")
        lines.append(line)

    source = SimSource(on_line, temperature=20.0, humidity=None, interval=0.01)
    source.start()
    try:
        wait_until(lambda: lines, 10, "a line after the faults")
        assert source.alive() and FAULTS.total == 2
    finally:
        source.stop()
        source.join()


def test_a_line_no_parser_foresaw_is_the_sensors_error(monkeypatch) -> None:
    from trackerdcs.sensors import sensor as sensor_module
    from trackerdcs.sensors.sensor import SensorState
    from trackerdcs.sensors.service import SensorService

    lab, loop = example_lab(), asyncio.new_event_loop()
    service = SensorService(SensorState(lab.sensors[1]), lab.mqtt, "test", loop)
    service.link = RecordingLink(lab, lab.sensors[1].prefix)
    monkeypatch.setattr(sensor_module, "parse_line", bug)
    service.on_line("T=21.5")
    status = json.loads(service.link.published(service.topic)[-1])
    assert "unexpected error in the line handling of /temp_m1: Bug" in status["error"]
    assert status["temperature"] is None and FAULTS.total == 1
    service.source = type("Dead", (), {"alive": lambda self: False})()
    service.link.sent.clear()
    service._on_period()
    assert service.link.published(service.topic) == [] and FAULTS.fatal_reason
    service.stop()
    loop.close()


def test_a_sensor_status_time_is_its_latest_line() -> None:
    from trackerdcs.sensors.sensor import SensorState
    from trackerdcs.sensors.service import SensorService

    lab, loop = example_lab(), asyncio.new_event_loop()
    service = SensorService(SensorState(lab.sensors[1]), lab.mqtt, "test", loop)
    service.link = RecordingLink(lab, lab.sensors[1].prefix)
    before = time.time()
    service.on_line("T=21.5")
    read = service.reported
    assert read is not None and read >= before
    service.publish()
    status = json.loads(service.link.published(service.topic)[-1])
    assert status["time"] == round(read, 3) and not status["stale"]
    service.on_line("T=garbage")  # the reading is still fresh; the error is news: a later time
    status = json.loads(service.link.published(service.topic)[-1])
    assert status["error"] and status["temperature"] == 21.5 and status["time"] >= round(read, 3)
    assert status["time"] == round(service.reported or 0, 3)
    service.stop()
    loop.close()


# -- the ingest -----------------------------------------------------------------------------------
def _writer(tmp_path):
    from trackerdcs.ingest.buffer import MetricBuffer
    from trackerdcs.ingest.conf import InfluxOutputConf
    from trackerdcs.ingest.writer import InfluxWriter

    buffer = MetricBuffer(100, 10)
    return buffer, InfluxWriter(InfluxOutputConf(url="http://127.0.0.1:9"), buffer, 0.05)


def test_a_batch_that_can_never_be_written_is_dropped_and_counted(tmp_path, monkeypatch):
    buffer, writer = _writer(tmp_path)
    bodies: list[bytes] = []

    def post(path: str, body: bytes) -> tuple[int, str]:
        bodies.append(body)
        return 204, ""

    monkeypatch.setattr(writer, "_post", post)
    buffer.add(["m a=1 1\n", 'm e="\ud800" 2\n', "m a=3 3\n"])  # no parser makes the middle one
    assert writer.flush()
    assert bodies == [b"m a=1 1\nm a=3 3\n"]
    assert buffer.snapshot() == {"metrics": 3, "written": 2, "dropped": 1, "buffered": 0}
    monkeypatch.setattr(writer, "_post", bug)
    buffer.add(["m a=4 4\n"])
    assert writer.flush()  # not retried: it would fail again
    assert buffer.snapshot()["dropped"] == 2 and writer.errors == 1 and writer.up is True


def test_the_writer_thread_survives_its_own_bug(tmp_path, monkeypatch) -> None:
    buffer, writer = _writer(tmp_path)
    calls = {"n": 0}
    original = buffer.wait_batch

    def wait_batch(timeout: float) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise Bug("in the writer loop")
        original(timeout)

    monkeypatch.setattr(buffer, "wait_batch", wait_batch)
    monkeypatch.setattr(writer, "_post", lambda path, body: (204, ""))
    writer.start()
    try:
        buffer.add(["m a=1 1\n"])
        wait_until(lambda: buffer.snapshot()["written"] == 1, 5, "the point written")
        assert writer.alive() and writer.errors == 1
    finally:
        writer.stop()


def test_an_ingest_message_that_breaks_the_consumer_is_counted(monkeypatch) -> None:
    from trackerdcs.ingest.buffer import MetricBuffer
    from trackerdcs.ingest.conf import load_telegraf_conf
    from trackerdcs.ingest.consumer import MqttConsumer, UniqueClock

    conf = load_telegraf_conf(EXAMPLE_LAB.parent.parent / "telegraf.conf")
    consumer = MqttConsumer(conf.inputs[0], conf.agent, MetricBuffer(100, 10), UniqueClock())
    monkeypatch.setattr(consumer.inputs[0].serializer, "line", bug)
    consumer._on_message(None, None, _message("/hv/status", b'[{"time": 1, "vmon": 1}]'))
    assert (consumer.received, consumer.rejected, consumer.errors) == (1, 1, 1)


# -- safety rules, alarms, the sequencer ----------------------------------------------------------
def test_a_rule_that_cannot_be_evaluated_holds_its_modules_unsafe(monkeypatch) -> None:
    from trackerdcs.safety import interlock as interlock_module
    from trackerdcs.safety.interlock import InterlockService
    from trackerdcs.safety.rules import RULE_KINDS, RuleKind

    lab, loop = example_lab(), asyncio.new_event_loop()
    kinds = dict(RULE_KINDS, module_temperature=RuleKind(bug))
    monkeypatch.setattr(interlock_module, "RULE_KINDS", kinds)
    link = RecordingLink(lab, "/interlock")
    service = InterlockService(lab, link, loop)
    service.evaluate()
    (state,) = [s for s in service.states if s.rule.kind == "module_temperature"]
    assert state.active and state.affected == state.protects
    assert state.reason and "cannot evaluate the rule: unexpected error" in state.reason
    kills = [t for t, _ in link.sent if "/cmd/kill/" in t]
    assert sorted(kills) == sorted(f"/hv/cmd/kill/{m}" for m in state.protects)
    assert FAULTS.total >= 1
    service.stop()
    loop.close()


def test_an_alarm_detector_that_raises_raises_an_alarm(tmp_path, monkeypatch) -> None:
    from trackerdcs.safety import alarms as alarms_module
    from trackerdcs.safety.alarms import AlarmService
    from trackerdcs.safety.store import Store

    lab, store = example_lab(), Store(str(tmp_path / "alarms.sqlite"))
    monkeypatch.setitem(alarms_module.DETECTORS, "chiller", (bug, True))
    service = AlarmService(lab, store, RecordingLink(lab, "/alarms"))
    service.on_message("/julabo/status", b'{"state": "RUNNING"}')
    (alarm,) = service.book.listed.values()
    assert alarm.key == "fault:/julabo/status" and "unexpected error" in alarm.text
    store.close()


def test_a_sequence_that_fails_unexpectedly_is_answered_and_frees_the_module(monkeypatch):
    from trackerdcs.safety.sequencer import SequencerService

    lab, loop = example_lab(), asyncio.new_event_loop()
    link = RecordingLink(lab, "/dcs")
    service = SequencerService(lab, link, loop)
    monkeypatch.setattr(service, "_tolerance", bug)
    service.handle_command(command("/dcs", "module/M1", "off"))
    settle(loop)
    (topic, payload), *_ = [(t, p) for t, p in link.sent if t == "/hv/cmd/switch/M1"]
    request = json.loads(payload)
    answer = {"topic": topic, "payload": payload, "ok": True, "error": None, "id": request["id"]}
    service.on_message("/hv/response", json.dumps(answer).encode())
    settle(loop)
    status = [{"number": 0, "name": "hv_m1", "module": "M1", "on": 0, "vreq": 0.0, "vmon": 0.0,
               "state": "OFF", "flags": []}]  # fmt: skip
    service.on_message("/hv/status", json.dumps(status).encode())
    settle(loop)
    (answer,) = link.answers()
    assert not answer["ok"] and "unexpected error in the sequence of M1" in answer["error"]
    assert service.states["M1"]["state"] == "FAILED" and "M1" not in service.running
    service.stop()
    settle(loop)
    loop.close()


# -- power ----------------------------------------------------------------------------------------
def _crate(loop: asyncio.AbstractEventLoop):
    from trackerdcs.power.daemon import CrateDaemon

    lab = example_lab()
    return CrateDaemon(lab, lab.crates[0].name, loop, backend=FakeBackend())


def test_a_readback_no_code_foresaw_is_reported_and_the_others_go_on(monkeypatch) -> None:
    loop = asyncio.new_event_loop()
    daemon = _crate(loop)
    hv = daemon.services[0]
    ch = hv.channels[0]
    original = hv.on_readback

    def on_readback(addr: Any, param: str, value: Any) -> None:
        if param == "IMon":
            raise Bug("in a readback")
        original(addr, param, value)

    monkeypatch.setattr(hv, "on_readback", on_readback)
    daemon.on_readback(ch.address, "IMon", 1.0)
    daemon.on_readback(ch.address, "VMon", 12.5)
    settle(loop)
    assert ch.readback["VMon"] == 12.5 and FAULTS.total == 1
    assert any("unexpected error in the readbacks of /hv" in w for w in hv._warnings)
    loop.close()


def test_a_non_finite_readback_disconnects_the_channel_and_says_why() -> None:
    loop = asyncio.new_event_loop()
    daemon = _crate(loop)
    hv = daemon.services[0]
    ch = hv.channels[0]
    hv.on_connection(ch.address, True)
    for param in ("V0Set", "I0Set", "Pw", "VMon", "IMon", "Status"):
        hv.on_readback(ch.address, param, 0)
    assert str(ch.state) == "OFF"
    hv.on_readback(ch.address, "VMon", float("nan"))
    assert str(ch.state) == "DISCONNECTED" and "VMon read nan: not finite" in hv._warnings[-1]
    assert "NaN" not in ch.status_json() and ch.readback["VMon"] == 0
    assert "VMon read nan" in (ch.refusal(ChannelCommand.SWITCH_ON) or "")
    hv.on_readback(ch.address, "VMon", 1.0)
    assert str(ch.state) == "OFF" and not hv._warnings
    loop.close()


def test_a_dead_crate_backend_is_never_passed_off_as_live() -> None:
    loop = asyncio.new_event_loop()
    daemon = _crate(loop)
    hv = daemon.services[0]
    daemon.backend.alive = lambda: False  # type: ignore[attr-defined]
    hv._heartbeat()
    assert hv._publish_handle is None and "backend's thread has ended" in (
        FAULTS.fatal_reason or ""
    )
    loop.close()
