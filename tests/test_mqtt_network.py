"""`MqttLink(loop=)` runs its network on the service's asyncio loop (`trackerdcs.mqttloop`),
against a real Mosquitto: paho touched from the loop's thread only, no thread of paho's own, a
publish from another thread handed over, (re)connection with backoff when the broker is absent,
restarted or frozen (keepalive), a TLS connection made and read, and a stop from the loop that
leaves `offline` behind."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from tests.conftest import Broker
from tests.mqttclient import TestClient
from trackerdcs.config import MqttConfig, TlsConfig
from trackerdcs.guard import FAULTS
from trackerdcs.mqtt import Command, MqttLink
from trackerdcs.mqttloop import LoopNetwork
from trackerdcs.stack.mosquitto import mosquitto_process
from trackerdcs.stack.process import free_port, wait_until

TIMEOUT = 10.0
ROOT = Path(__file__).resolve().parent.parent


class Service:
    """A loop on a thread of its own (a daemon's), and a link on it that records what it gets
    and on which thread paho's client was used."""

    def __init__(self, cfg: MqttConfig, prefix: str = "/net") -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="service-loop")
        self.thread.start()
        self.connections: list[bool] = []
        self.messages: list[mqtt.MQTTMessage] = []
        self.commands: list[tuple[str, str]] = []
        self.changed = threading.Condition()
        self.link = MqttLink(
            cfg, prefix, client_id=f"net-{os.getpid()}-{id(self)}", loop=self.loop,
            on_command=self._command, on_connection=self._connection,
            subscribe=("/burst/#",), on_message=self._message,
        )  # fmt: skip
        self.paho_threads: set[str] = set()  # threads that used the client, but to connect
        self.overlaps: list[str] = []  # a method called while another thread was in one
        self._inside: dict[str, int] = {}  # thread -> methods of the client it is in
        self._inside_lock = threading.Lock()
        client = self.link._client
        for name in ("publish", "subscribe", "loop_read", "loop_write", "loop_misc",
                     "reconnect", "disconnect"):  # fmt: skip
            setattr(client, name, self._recorded(name, getattr(client, name)))

    def _recorded(self, name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kw: Any) -> Any:
            me = threading.current_thread().name
            with self._inside_lock:
                others = [t for t, n in self._inside.items() if n and t != me]
                if others:
                    self.overlaps.append(f"{name} on {me} while {others} used the client")
                self._inside[me] = self._inside.get(me, 0) + 1
                if name != "reconnect":
                    self.paho_threads.add(me)
            try:
                return method(*args, **kw)
            finally:
                with self._inside_lock:
                    self._inside[me] -= 1

        return call

    def _note(self, what: list, item: Any) -> None:
        with self.changed:
            what.append(item)
            self.changed.notify_all()

    def _command(self, cmd: Command) -> None:
        self._note(self.commands, (cmd.action, threading.current_thread().name))
        self.link.respond(cmd, True)

    def _connection(self, up: bool) -> None:
        self._note(self.connections, up)

    def _message(self, msg: mqtt.MQTTMessage) -> None:
        self._note(self.messages, msg)

    def wait(self, predicate: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
        with self.changed:
            assert self.changed.wait_for(predicate, timeout), f"{what} within {timeout} s"

    def on_loop(self, fn: Callable[[], Any]) -> Any:
        """`fn()` on the service's loop; its result."""

        async def run() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(TIMEOUT)

    def close(self) -> None:
        self.on_loop(self.link.stop)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(TIMEOUT)
        self.loop.close()


def mqtt_config(port: int, **kw: Any) -> MqttConfig:
    return MqttConfig(port=port, reconnect_min_delay=0.05, reconnect_max_delay=0.4, **kw)


@pytest.fixture
def service(broker: Broker) -> Iterator[Service]:
    s = Service(mqtt_config(broker.port))
    yield s
    s.close()


def paho_threads_of(link: MqttLink) -> list[str]:
    """The network threads paho started for `link`'s client (`loop_start` names them so)."""
    own = f"paho-mqtt-client-{link.client_id}"
    return [t.name for t in threading.enumerate() if t.name == own]


def test_the_network_runs_on_the_loop_and_paho_is_used_there_only(service, client) -> None:
    """Commands arrive, are answered and status goes out, all with paho used on the loop's thread
    (a publish from the test's thread is handed over); paho starts no thread of its own."""
    service.link.start()
    service.wait(lambda: service.connections == [True], "connected")
    client.wait_for("/net/availability", lambda m: m.text == "online", timeout=TIMEOUT)
    mark = client.mark()
    client.publish("/net/cmd/refresh", "{}", qos=1)
    answer = client.wait_for("/net/response", since=mark, timeout=TIMEOUT)
    assert answer.json["ok"] is True
    assert service.commands == [("refresh", "service-loop")]
    service.link.publish("/net/status", "from the test's thread", qos=1)  # handed over
    service.link.publish_state("/net/state", "kept")
    client.wait_for("/net/status", lambda m: m.text == "from the test's thread", timeout=TIMEOUT)
    client.wait_for("/net/state", lambda m: m.text == "kept", timeout=TIMEOUT)
    assert service.paho_threads == {"service-loop"}
    assert paho_threads_of(service.link) == [] and service.overlaps == []


def test_an_absent_broker_is_retried_until_it_is_there(workdir, caplog) -> None:
    """The broker is down at start: one warning, retries with backoff, connected once it is up;
    the loop runs on meanwhile (an attempt blocks a thread of its own, not the loop)."""
    broker = Broker(workdir)
    service = Service(mqtt_config(broker.port))
    try:
        with caplog.at_level(logging.DEBUG, logger="trackerdcs.mqttloop"):
            service.link.start()
            wait_until(
                lambda: sum("cannot reach the broker" in r.message for r in caplog.records) >= 2,
                TIMEOUT, "two failed attempts",
            )  # fmt: skip
        warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warnings) == 1 and f"127.0.0.1:{broker.port}" in warnings[0].message
        assert service.on_loop(lambda: "the loop answers") == "the loop answers"
        broker.start()
        service.wait(lambda: service.connections == [True], "connected once the broker is up")
    finally:
        service.close()
        broker.stop()


def test_a_restarted_broker_gets_the_retained_state_again(workdir) -> None:
    broker = Broker(workdir).start()
    service = Service(mqtt_config(broker.port))
    try:
        service.link.start()
        service.wait(lambda: service.connections == [True], "connected")
        service.on_loop(lambda: service.link.publish_state("/net/state", "before the restart"))
        broker.stop()
        service.wait(lambda: service.connections == [True, False], "the loss seen")
        broker.start()
        service.wait(lambda: service.connections == [True, False, True], "reconnected")
        fresh = broker.client()  # the broker kept nothing (no persistence): republished
        try:
            fresh.wait_for("/net/state", lambda m: m.text == "before the restart", timeout=TIMEOUT)
        finally:
            fresh.close()
    finally:
        service.close()
        broker.stop()


def test_a_frozen_broker_is_lost_by_keepalive_and_found_again(workdir) -> None:
    """A broker that stops answering (SIGSTOP) keeps the TCP connection open: only the keepalive
    (`loop_misc` on the loop) can tell, within about two keepalive periods."""
    broker = Broker(workdir).start()
    service = Service(mqtt_config(broker.port, keepalive=2))
    try:
        service.link.start()
        service.wait(lambda: service.connections == [True], "connected")
        broker.process.freeze()
        try:
            service.wait(lambda: service.connections == [True, False], "the loss seen")
        finally:
            broker.process.thaw()
        service.wait(lambda: service.connections[-1:] == [True], "reconnected")
    finally:
        service.close()
        broker.stop()


def test_a_stop_on_the_loop_leaves_offline_and_watches_nothing(service, client) -> None:
    """(A live `offline`: the one an earlier test's link left retained may arrive late.)"""
    service.link.start()
    service.wait(lambda: service.connections == [True], "connected")
    mark = client.mark()
    service.on_loop(service.link.stop)
    live_offline = lambda m: m.text == "offline" and not m.retain  # noqa: E731
    client.wait_for("/net/availability", live_offline, since=mark, timeout=TIMEOUT)
    net = service.link._net
    assert service.link._client.socket() is None and net is not None and net._sock is None
    assert service.connections == [True, False]


@pytest.fixture(scope="module")
def tls_broker(workdir) -> Iterator[tuple[int, Path]]:
    """A Mosquitto with a TLS listener (the project's certificate script), its port and CA."""
    certs = workdir / f"certs-{os.getpid()}"
    subprocess.run(
        ["sh", str(ROOT / "mosquitto" / "make-certs.sh"), "localhost", "127.0.0.1"],
        env={**os.environ, "CERT_DIR": str(certs)}, check=True, capture_output=True,
    )  # fmt: skip
    port, tls_port = free_port(), free_port()
    extra = (
        f"listener {tls_port} 127.0.0.1\ncafile {certs}/ca.crt\n"
        f"certfile {certs}/server.crt\nkeyfile {certs}/server.key\n"
    )
    process = mosquitto_process(workdir, port, extra=extra).start()
    yield tls_port, certs / "ca.crt"
    process.stop()


def test_a_burst_over_tls_is_read_whole(tls_broker) -> None:
    """Over TLS (the handshake on a connect attempt's thread, the reading on the loop), every
    message of a burst arrives, in order."""
    tls_port, ca = tls_broker
    cfg = mqtt_config(tls_port, tls=TlsConfig(enabled=True, ca_file=str(ca)))
    service = Service(cfg)
    sender = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    sender.tls_set(ca_certs=str(ca))
    try:
        service.link.start()
        service.wait(lambda: service.connections == [True], "connected over TLS")
        sender.connect("127.0.0.1", tls_port)
        sender.loop_start()
        infos = [sender.publish(f"/burst/{n}", str(n), qos=0) for n in range(500)]
        for info in infos:
            info.wait_for_publish(TIMEOUT)
        service.wait(lambda: len(service.messages) == 500, "all 500 messages")
        assert [m.payload for m in service.messages] == [str(n).encode() for n in range(500)]
    finally:
        sender.disconnect()
        sender.loop_stop()
        service.close()


class Gate:
    """Holds a connect attempt inside paho's `reconnect()`, its socket open and CONNECT not yet
    queued (the link's `on_socket_open`), until `release()`: the gap a slow thread switch or a
    TLS handshake makes."""

    def __init__(self, service: Service) -> None:
        net = service.link._net
        assert net is not None
        self.entered, self.opened = threading.Event(), threading.Event()
        inner = net._on_socket_open

        def held(client: mqtt.Client, userdata: Any, sock: Any) -> None:
            self.entered.set()
            assert self.opened.wait(TIMEOUT), "the test never released the connect attempt"
            if inner is not None:
                inner(client, userdata, sock)

        net._on_socket_open = held

    def release(self) -> None:
        self.opened.set()


@dataclass
class HeldAttempt:
    """A service whose first connect attempt is held by its `gate`, a watcher on its broker."""

    service: Service
    gate: Gate
    watcher: TestClient
    net: LoopNetwork


@contextlib.contextmanager
def held_attempt(workdir: Path, **cfg: Any) -> Iterator[HeldAttempt]:
    """A broker of its own, and a service started with its first attempt held in the gate; all
    released and stopped at the end."""
    broker = Broker(workdir).start()
    service = Service(mqtt_config(broker.port, **cfg))
    gate = Gate(service)
    watcher = broker.client()
    net = service.link._net
    assert net is not None
    try:
        service.link.start()
        assert gate.entered.wait(TIMEOUT)
        yield HeldAttempt(service, gate, watcher, net)
    finally:
        gate.release()
        watcher.close()
        service.close()
        broker.stop()


def test_publishes_during_a_connect_attempt_wait_for_it(workdir) -> None:
    """The loop publishes while an attempt is inside `reconnect()`: nothing touches the client
    meanwhile, CONNECT goes first, and the publishes follow in order once connected (no stall
    until the keepalive, here a minute)."""
    with held_attempt(workdir, keepalive=60) as held:
        service, watcher = held.service, held.watcher
        service.on_loop(lambda: service.link.publish_state("/net/state", "during the attempt"))
        service.on_loop(lambda: service.link.publish("/net/event", "first", qos=1))
        service.link.publish("/net/event", "second", qos=1)  # from another thread
        held.gate.release()
        service.wait(lambda: service.connections == [True], "connected", TIMEOUT)
        watcher.wait_for("/net/state", lambda m: m.text == "during the attempt", timeout=TIMEOUT)
        watcher.wait_for("/net/event", lambda m: m.text == "second", timeout=TIMEOUT)
        events = [m.text for m in watcher.messages if m.topic == "/net/event"]
        assert events == ["first", "second"] and service.overlaps == []


def test_a_stop_during_a_connect_attempt_leaves_nothing_behind(workdir) -> None:
    """The daemon stops while an attempt is inside `reconnect()`: the stop waits for it, closes
    its socket, and no error, watched socket or `online` is left."""
    with held_attempt(workdir) as held:
        service, gate, watcher, net = held.service, held.gate, held.watcher, held.net
        releaser = threading.Thread(
            target=lambda: (wait_until(lambda: net._stopping, TIMEOUT, "the stop"), gate.release())
        )
        releaser.start()
        service.on_loop(service.link.stop)
        releaser.join(TIMEOUT)
        service.on_loop(lambda: None)  # whatever the attempt handed to the loop has run
        assert net._sock is None and service.link._client.socket() is None
        assert service.connections == [] and FAULTS.total == 0
        assert [m.text for m in watcher.messages if m.topic == "/net/availability"] == []


def test_what_another_thread_publishes_during_the_stop_leaves_before_offline(
    service, client
) -> None:
    """A daemon's stop runs on its loop and ends a worker thread that publishes its last words
    (a recipe's abort, an IV scan's event): they are sent, before `offline`."""
    service.link.start()
    service.wait(lambda: service.connections == [True], "connected")
    mark = client.mark()

    def stop() -> None:
        worker = threading.Thread(
            target=lambda: service.link.publish("/net/event", "last words", qos=1)
        )
        worker.start()
        worker.join(TIMEOUT)  # the loop is busy stopping: the publish waits in the queue
        service.link.stop()

    service.on_loop(stop)
    client.wait_for("/net/availability", lambda m: m.text == "offline" and not m.retain, since=mark,
                    timeout=TIMEOUT)  # fmt: skip
    order = [(m.topic, m.text) for m in client.messages[mark:]]
    assert order.index(("/net/event", "last words")) < order.index(("/net/availability", "offline"))


def test_a_stop_that_outlasts_a_connect_attempt_leaves_it_to_close_its_socket(workdir) -> None:
    """An attempt still inside `reconnect()` when the stop's wait ends (an unreachable broker
    takes up to 5 s): the stop goes on without touching the client, and the attempt, when it
    returns, closes its socket: nothing is sent, no error counted."""
    with held_attempt(workdir) as held:
        service, watcher, net = held.service, held.watcher, held.net
        attempt = net._attempt
        assert attempt is not None
        service.on_loop(lambda: service.link.stop(timeout=0.2))
        held.gate.release()
        attempt.join(TIMEOUT)
        service.on_loop(lambda: None)  # the attempt's outcome has been handled
        sock = service.link._client.socket()
        assert sock is not None and sock.fileno() == -1  # closed
        assert net._sock is None and FAULTS.total == 0 and service.connections == []
        assert [m.text for m in watcher.messages if m.topic == "/net/availability"] == []


def test_after_a_reconnect_the_newest_state_is_the_one_kept(workdir) -> None:
    """A state published while the broker hangs stays unacknowledged in paho, which sends it
    again when it reconnects; a newer state made while disconnected must end up retained, not
    that older one (paho resends after its on_connect: the link republishes after that)."""
    broker = Broker(workdir).start()
    service = Service(mqtt_config(broker.port))
    try:
        service.link.start()
        service.wait(lambda: service.connections == [True], "connected")
        broker.process.freeze()
        service.on_loop(lambda: service.link.publish_state("/net/state", "older"))
        broker.process.kill()  # no PUBACK ever came for "older"
        service.wait(lambda: service.connections == [True, False], "the loss seen")
        service.on_loop(lambda: service.link.publish_state("/net/state", "newest"))
        broker.start()
        service.wait(lambda: service.connections == [True, False, True], "reconnected")
        fresh = broker.client(topics=("/net/state",))
        try:
            state = fresh.wait_for("/net/state", timeout=TIMEOUT)
            assert state.text == "newest" and state.retain
        finally:
            fresh.close()
    finally:
        service.close()
        broker.stop()
