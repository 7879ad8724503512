"""`[[inputs.mqtt_consumer]]`: an MQTT connection, messages -> metrics -> the buffer.

As Telegraf's mqtt_consumer: MQTT 3.1.1, a clean session, every topic subscribed at `qos` on each
(re)connect, lost connections retried every `[agent] interval` at most; the measurement is
`name_override` (else `mqtt_consumer`); the topic goes into the `topic_tag` tag (none when it is
empty); metrics failing `tagpass` are left out (a message whose topic fails a `tagpass` on the
topic tag alone is not even parsed), then the `tagexclude` tags removed; while
`max_undelivered_messages` messages wait for InfluxDB, no further message is read. A payload
the json parser rejects is counted, logged and skipped.

Telegraf opens a connection per input. Inputs that subscribe identically (`/+/status` for the
HV and LV crates, the chillers and the sensors, telegraf.conf) get the same messages on each:
here they share one connection (`shares_connection`) and each message is read and decoded once
(not at all when every input's `tagpass` on the topic refuses it), then every input makes its
own metrics, as it would from its own copy, parsing only the array elements that carry a key
its `tagpass` needs (`ConsumerInput.may_pass`). What lands in InfluxDB is the same; `received`
counts a message once per input, `rejected` what an input parsed and refused.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Sequence
from typing import Any

import paho.mqtt
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from trackerdcs.guard import FAULTS
from trackerdcs.ingest.buffer import MetricBuffer
from trackerdcs.ingest.conf import AgentConf, ConsumerConf
from trackerdcs.ingest.jsonparse import JsonParser, PayloadError, decode
from trackerdcs.ingest.lineproto import LineSerializer
from trackerdcs.payloads import ONLINE

log = logging.getLogger(__name__)

_LOG_FIRST_REJECTS = 10  # then every 100th, so a flood of garbage cannot flood the log


class UniqueClock:
    """Nanosecond timestamps, strictly increasing: two messages never share one, so no point
    overwrites another of the same series."""

    def __init__(self) -> None:
        self._last = 0
        self._lock = threading.Lock()

    def now(self) -> int:
        with self._lock:
            t = time.time_ns()
            if t <= self._last:
                t = self._last + 1
            self._last = t
            return t


class _BufferedSocket:
    """A TCP socket read 256 kB at a time. paho reads a packet in three to four `recv` calls;
    from this buffer those cost no system call, and `pending()` tells paho's loop to go on
    reading without `select`."""

    __slots__ = ("_buf", "_pos", "_sock")

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buf = b""
        self._pos = 0

    def recv(self, n: int) -> bytes:
        pos, buf = self._pos, self._buf
        if pos >= len(buf):
            buf = self._sock.recv(262144)
            if not buf:
                return buf
            self._buf, pos = buf, 0
        self._pos = pos + n
        return buf[pos : pos + n]

    def pending(self) -> int:
        return len(self._buf) - self._pos

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class FastClient(mqtt.Client):
    """paho's client (2.2) reading through `_BufferedSocket` and draining it in one `loop_read`.

    Relies on internals of paho-mqtt 2.2 (pinned in requirements.txt), `FAST_CLIENT_INTERNALS`:
    `client_class` checks them at start-up and falls back to paho's own client without them;
    `tests/test_ingest_units.py` checks both receive every message.
    """

    def _create_socket(self) -> Any:
        sock = super()._create_socket()
        return _BufferedSocket(sock) if isinstance(sock, socket.socket) else sock

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        rc = super().loop_read(max_packets)
        sock = self._sock
        while rc == MQTTErrorCode.MQTT_ERR_SUCCESS and isinstance(sock, _BufferedSocket):
            if not sock.pending():
                break
            rc = self._packet_read()
            if rc == MQTTErrorCode.MQTT_ERR_AGAIN:
                return MQTTErrorCode.MQTT_ERR_SUCCESS
            if rc > 0:
                return self._loop_rc_handle(rc)
            sock = self._sock
        return rc


FAST_CLIENT_INTERNALS = ("_create_socket", "_packet_read", "_loop_rc_handle", "_sock")
CLIENT_ENV = "TRACKERDCS_INGEST_MQTT_CLIENT"  # `plain`: paho's own client (for comparisons)
_fallback_logged = False


def missing_internals(client_class: type[mqtt.Client] = mqtt.Client) -> list[str]:
    """The paho internals `FastClient` relies on that this paho lacks (methods on the class,
    `_sock` on an instance: constructing a client connects nothing)."""
    probe = client_class(CallbackAPIVersion.VERSION2)
    return [name for name in FAST_CLIENT_INTERNALS if not hasattr(probe, name)]


def client_class() -> type[mqtt.Client]:
    """`FastClient` when this paho has its internals, else paho's own client, said once in the
    log; also paho's own when the environment says `TRACKERDCS_INGEST_MQTT_CLIENT=plain`."""
    global _fallback_logged
    if os.environ.get(CLIENT_ENV, "") == "plain":
        return mqtt.Client
    missing = missing_internals()
    if not missing:
        return FastClient
    if not _fallback_logged:
        _fallback_logged = True
        log.warning(
            "paho-mqtt %s lacks %s: reading with paho's own client (slower ingest)",
            paho.mqtt.__version__,
            ", ".join(missing),
        )
    return mqtt.Client


def shares_connection(a: ConsumerConf, b: ConsumerConf) -> bool:
    """Two inputs that would open the same subscription on the same broker as the same user,
    neither with a client_id of its own: one connection can serve both. Each still makes its own
    metrics from every message, as two Telegraf inputs would; only the reading is done once."""
    return (
        not a.client_id
        and not b.client_id
        and (a.host, a.port, a.username, a.password, a.topics, a.qos)
        == (b.host, b.port, b.username, b.password, b.topics, b.qos)
    )


class ConsumerInput:
    """One `[[inputs.mqtt_consumer]]` past its connection: the json parser, `tagpass`, the line
    serializer and the counters."""

    def __init__(
        self, conf: ConsumerConf, agent: AgentConf, buffer: MetricBuffer, clock: UniqueClock
    ) -> None:
        self.conf = conf
        self.buffer = buffer
        self.clock = clock
        self.parser = JsonParser(conf.tag_keys, conf.string_fields, conf.time_key, conf.time_format)
        self.serializer = LineSerializer(conf.measurement)
        self.topic_filter = conf.topic_filter
        # the tags one of which a metric needs to pass `tagpass` (None: the topic tag, which
        # every metric has, or no `tagpass`); an object without any of them is not parsed
        tagpass = conf.tagpass
        self.needs: frozenset[str] | None = (
            frozenset(tagpass.filters)
            if tagpass is not None and conf.topic_tag not in tagpass.filters
            else None
        )
        self._shapes: dict[tuple[str, ...], bool] = {}  # an object's keys -> may it pass
        self.host_tag = None if agent.omit_hostname else (agent.hostname or socket.gethostname())
        self.received = 0
        self.rejected = 0
        self.errors = 0  # unexpected exceptions handling a message (also counted in rejected)

    @property
    def name(self) -> str:
        return f"{self.conf.where} ({self.conf.measurement})"

    def reads(self, topic: str) -> bool:
        """False when `topic` fails a `tagpass` on the topic tag alone: no metric could pass."""
        return self.topic_filter is None or self.topic_filter.match(topic)

    def may_pass(self, obj: dict[str, Any]) -> bool:
        """Whether a metric of `obj` could pass `tagpass`: it has one of the keys `needs`, or a
        nested value that could flatten to one (`prefix_...`). Decided once per set of keys
        (a crate's channels all have the same)."""
        keys = tuple(obj)
        hit = self._shapes.get(keys)
        if hit is None:
            needs = self.needs or ()
            hit = any(n == k or n.startswith(f"{k}_") for n in needs for k in keys)
            if len(self._shapes) < 256:
                self._shapes[keys] = hit
        return hit

    def handle(self, topic: str, payload: bytes, data: Any, error: Exception | None) -> None:
        """Buffer the lines of one decoded message (`data`; `error`: it could not be decoded).
        A payload the parser rejects is counted and skipped. The objects of an array that
        could not pass `tagpass` are not parsed (the chillers' and sensors' inputs read every
        crate's status too): their lines would be dropped anyway, and a flaw in them is counted
        by the input they are for (a crate's HV or LV input, which parses every object)."""
        if error is None and self.needs is not None and type(data) is list:
            data = [o for o in data if type(o) is not dict or self.may_pass(o)]
        if error is None:
            try:
                metrics = self.parser.metrics(data)
            except Exception as exc:  # PayloadError, or anything else: the bridge goes on
                error = exc
        if error is not None:
            self.rejected += 1
            if not isinstance(error, PayloadError):  # a payload no check foresaw: reported
                self.errors += 1
                FAULTS.fault(f"{self.name} json parser", error, (topic, payload))
            elif self.rejected <= _LOG_FIRST_REJECTS or self.rejected % 100 == 0:
                log.warning(
                    "%s: skipped a payload on %s (%d so far): %s: %.200r",
                    self.name,
                    topic,
                    self.rejected,
                    error,
                    payload,
                )
            return
        if not metrics:
            return
        received: str | None = None  # the time of reception, for metrics that carry none
        topic_tag, tagpass, host = self.conf.topic_tag, self.conf.tagpass, self.host_tag
        exclude = self.conf.tagexclude
        lines = []
        for tags, fields, when in metrics:
            if when is not None:
                timestamp = str(when)
            else:
                if received is None:
                    received = str(self.clock.now())
                timestamp = received
            if topic_tag:
                tags[topic_tag] = topic
            if tagpass is not None and not tagpass.select(tags):
                continue
            if exclude:
                for key in [k for k in tags if exclude.match(k)]:
                    del tags[key]
            if host is not None and "host" not in tags:
                tags["host"] = host
            line = self.serializer.line(tags, fields, timestamp)
            if line is not None:
                lines.append(line)
        self.buffer.add(lines)


class MqttConsumer:
    """One MQTT connection: connects, subscribes, and gives each message to its input(s) (several
    only when they `shares_connection`), which turn it into buffered lines.

    `will`: (availability topic, `offline`), the connection's last will; `online` is then
    published there, retained, at every connect (a restarted broker has lost it, and a will
    fired while the connection was lost has replaced it)."""

    def __init__(
        self,
        conf: ConsumerConf | Sequence[ConsumerConf],
        agent: AgentConf,
        buffer: MetricBuffer,
        clock: UniqueClock,
        will: tuple[str, str] | None = None,
    ) -> None:
        confs = (conf,) if isinstance(conf, ConsumerConf) else tuple(conf)
        if not all(shares_connection(confs[0], c) for c in confs[1:]):
            raise ValueError("inputs that do not share a connection need one consumer each")
        self.conf = conf = confs[0]
        self.inputs = [ConsumerInput(c, agent, buffer, clock) for c in confs]
        self.buffer = buffer
        self.undelivered_limit = min(c.max_undelivered_messages for c in confs)
        self.connected = threading.Event()
        self._stopping = False
        self._failed = 0  # messages whose handling raised outside the inputs' own checks
        client_id = conf.client_id or f"trackerdcs-ingest-{secrets.token_hex(4)}"
        self.client = client_class()(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv311,
            clean_session=True,
        )
        if conf.username:
            self.client.username_pw_set(conf.username, conf.password or None)
        self.availability = will[0] if will is not None else None
        if will is not None:
            self.client.will_set(will[0], will[1], qos=1, retain=True)
        self.client.reconnect_delay_set(1, max(1, int(agent.interval)))
        self.client.on_connect = FAULTS.guarded(f"{self.name} callbacks", self._on_connect)
        self.client.on_disconnect = FAULTS.guarded(f"{self.name} callbacks", self._on_disconnect)
        self.client.on_message = self._on_message

    @property
    def parser(self) -> JsonParser:
        """The (first) input's parser."""
        return self.inputs[0].parser

    @property
    def received(self) -> int:
        """Messages received, counted once per input (as separate connections would)."""
        return sum(i.received for i in self.inputs)

    @property
    def rejected(self) -> int:
        return sum(i.rejected for i in self.inputs) + self._failed

    @property
    def errors(self) -> int:
        """Unexpected exceptions handling a message (also counted in `rejected`)."""
        return sum(i.errors for i in self.inputs) + self._failed

    @property
    def name(self) -> str:
        return " + ".join(i.name for i in self.inputs)

    def start(self) -> None:
        log.info(
            "%s: mqtt://%s:%d %s", self.name, self.conf.host, self.conf.port, list(self.conf.topics)
        )
        self.client.connect_async(self.conf.host, self.conf.port, keepalive=60)
        self.client.loop_start()

    def stop_reading(self) -> None:
        """Unsubscribe (on stopping: what was received is still written)."""
        self._stopping = True
        if self.connected.is_set():
            self.client.unsubscribe(list(self.conf.topics))

    def stop(self) -> None:
        self._stopping = True
        self.client.disconnect()
        self.client.loop_stop()

    # -- paho callbacks (network thread) ----------------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error("%s: broker refused the connection: %s", self.name, reason_code)
            return
        client.subscribe([(t, self.conf.qos) for t in self.conf.topics])
        if self.availability is not None:
            client.publish(self.availability, ONLINE, qos=1, retain=True)
        self.connected.set()
        log.info("%s: connected, subscribed", self.name)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connected.clear()
        if not self._stopping:
            log.warning("%s: lost the broker (%s); reconnecting", self.name, reason_code)

    def _on_message(self, client, userdata, msg: mqtt.MQTTMessage) -> None:
        limit = self.undelivered_limit
        while not self.buffer.wait_undelivered_below(limit, 1.0):
            if self._stopping:
                return
        for i in self.inputs:
            i.received += 1
        try:
            self.handle(msg.topic, msg.payload)
        except Exception as exc:  # never into paho (its thread would end): counted, reported
            self._failed += 1
            FAULTS.fault(f"{self.name} message handling", exc, (msg.topic, msg.payload))
        else:
            FAULTS.ok(f"{self.name} message handling")

    def handle(self, topic: str, payload: bytes) -> None:
        """Decode one message once and give it to every input that reads its topic."""
        inputs = [i for i in self.inputs if i.reads(topic)]
        if not inputs:
            return
        try:
            data, error = decode(payload), None
        except Exception as exc:  # PayloadError, or anything else: each input counts it
            data, error = None, exc
        for i in inputs:
            i.handle(topic, payload, data, error)
