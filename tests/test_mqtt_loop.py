"""The MQTT link runs its callbacks on the service's asyncio loop (`MqttLink(loop=)`), each as a
callback of its own: in-process, a link never started (no broker), paho's callbacks called from
another thread (where a link without a loop runs them: paho's network thread). The network on
the loop itself, against a real broker: tests/test_mqtt_network.py."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from tests.inprocess import RecordingLink, example_lab
from trackerdcs.guard import FAULTS
from trackerdcs.mqtt import Command

TIMEOUT = 5.0


def _message(topic: str, payload: bytes, retain: bool = False) -> mqtt.MQTTMessage:
    msg = mqtt.MQTTMessage(topic=topic.encode())
    msg.payload = payload
    msg.retain = retain
    return msg


def _drain(loop: asyncio.AbstractEventLoop) -> None:
    """Run every callback scheduled on `loop` so far (one iteration)."""
    loop.call_soon(loop.stop)
    loop.run_forever()


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture
def running_loop() -> Iterator[asyncio.AbstractEventLoop]:
    """A loop running in its own thread (the daemon's), stopped and closed after the test."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="service-loop", daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(TIMEOUT)
    loop.close()


def test_a_command_runs_on_the_services_loop(running_loop) -> None:
    """The handler runs on the loop's thread, not on the one that read the message (the
    test's here)."""
    ran: list[tuple[str, str]] = []
    done = threading.Event()

    def handle(cmd: Command) -> None:
        ran.append((cmd.action, threading.current_thread().name))
        link.respond(cmd, True)
        done.set()

    link = RecordingLink(example_lab(), "/hv", on_command=handle, loop=running_loop)
    link._guarded_message(None, None, _message("/hv/cmd/setv/0", b"10"))
    assert done.wait(TIMEOUT)
    assert ran == [("setv/0", "service-loop")]
    assert [a["ok"] for a in link.answers()] == [True]


def test_a_handler_that_fails_on_the_loop_still_answers(loop) -> None:
    """With `loop`, the link runs the handler through `execute`: a fault is reported, and the
    command answered `internal error`."""

    def handle(cmd: Command) -> None:
        raise RuntimeError("a bug")

    link = RecordingLink(example_lab(), "/hv", on_command=handle, loop=loop)
    link._guarded_message(None, None, _message("/hv/cmd/refresh", b"{}"))
    assert link.answers() == []  # not run on paho's thread
    _drain(loop)
    (answer,) = link.answers()
    assert answer["ok"] is False and answer["error"].startswith("internal error: ")
    assert FAULTS.total == 1


def test_the_gate_refuses_where_the_message_is_read_and_nothing_reaches_the_loop(loop) -> None:
    handled: list[Command] = []
    link = RecordingLink(example_lab(), "/hv", on_command=handled.append, loop=loop)
    link._guarded_message(None, None, _message("/hv/cmd/setv/0", b"10", retain=True))
    (answer,) = link.answers()  # answered at once, before the loop runs
    assert answer["ok"] is False and "retain flag" in answer["error"]
    _drain(loop)
    assert handled == [] and len(link.answers()) == 1


def test_messages_and_connection_changes_are_delivered_on_the_loop(loop) -> None:
    seen: list[Any] = []
    link = RecordingLink(
        example_lab(), "/hv", subscribe=("/interlock/status",), loop=loop,
        on_message=lambda msg: seen.append(msg.topic), on_connection=seen.append,
    )  # fmt: skip
    link._guarded_message(None, None, _message("/interlock/status", b"{}"))
    link._handle_connect(link._client, None, None, ReasonCode(PacketTypes.CONNACK), None)
    link._handle_disconnect(link._client, None, None, ReasonCode(PacketTypes.DISCONNECT), None)
    assert seen == []  # nothing on paho's thread
    _drain(loop)
    assert seen == ["/interlock/status", True, False]


def test_a_failing_message_callback_on_the_loop_is_reported_as_the_links(loop, caplog) -> None:
    """On the loop, a callback's exception is reported as on paho's thread: counted in FAULTS
    under the link's message callback, with the message's topic and payload; the loop and the
    next message go on."""
    seen: list[bytes] = []

    def fail(msg: mqtt.MQTTMessage) -> None:
        seen.append(msg.payload)
        if msg.payload == b"{}":
            raise RuntimeError("a bug")

    link = RecordingLink(example_lab(), "/hv", on_message=fail, loop=loop)
    link._guarded_message(None, None, _message("/interlock/status", b"{}"))
    link._guarded_message(None, None, _message("/interlock/status", b"[]"))
    assert FAULTS.total == 0
    _drain(loop)
    assert FAULTS.total == 1 and seen == [b"{}", b"[]"]
    assert FAULTS.last == (
        "unexpected error in the MQTT message callback of /hv: RuntimeError: a bug"
    )
    assert "/interlock/status b'{}'" in caplog.text


def test_without_a_loop_callbacks_run_on_pahos_thread() -> None:
    handled: list[str] = []
    link = RecordingLink(example_lab(), "/hv", on_command=lambda c: handled.append(c.action))
    link._guarded_message(None, None, _message("/hv/cmd/clear", b""))
    assert handled == ["clear"]


def test_a_command_answered_later_is_answered_on_the_loop(running_loop) -> None:
    """`execute_soon` from another thread (a device line's worker): the handler runs on the
    loop, through `execute` (a failure there is still answered)."""
    answered = threading.Event()
    link = RecordingLink(example_lab(), "/julabo", loop=running_loop)
    threads: list[str] = []

    def finish(cmd: Command, result: str) -> None:
        threads.append(threading.current_thread().name)
        raise RuntimeError(f"a bug with {result}")

    cmd = Command("/julabo/cmd/switch", "switch", "on")
    worker = threading.Thread(target=link.execute_soon, args=(finish, cmd, "done"))
    worker.start()
    worker.join(TIMEOUT)
    running_loop.call_soon_threadsafe(answered.set)  # after the handler: FIFO
    assert answered.wait(TIMEOUT)
    (answer,) = link.answers()
    assert threads == ["service-loop"] and "internal error" in answer["error"]
