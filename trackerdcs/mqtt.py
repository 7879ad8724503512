"""The one MQTT client every trackerdcs service uses.

`MqttLink` owns a paho-mqtt 2.x client (MQTT 5) for one topic prefix such as `/hv`:

- availability: a last will sets the retained `<prefix>/availability` to `offline`; `online` is
  published on every connect, `offline` on a clean stop;
- reconnect with exponential backoff (on the service's loop, `trackerdcs.mqttloop`; without
  one, paho's own thread), then subscriptions renewed and every retained state topic
  republished (a restarted broker has lost them), after what paho resends of its own;
- commands: `<prefix>/cmd/#` at QoS 1 with MQTT 5 "retain as published", so that a command
  published with the retain flag shows it even on live delivery; every command passes the
  `CommandGate` (retained, too old, from the future, expired, over the rate limit: answered with
  `ok: false`, never handed on) before the service gets it as a `Command`;
- answers: every command is answered on `<prefix>/response`, and also on an MQTT 5 response topic
  with its correlation data when the caller gave one.

Other subscriptions are plain: there the retain flag means "stored by the broker" (delivered at
subscription), as MQTT defines it, which is how the safety services tell live data from stale.

Given the service's asyncio loop (`MqttLink(loop=)`), the client's network runs on that loop
(`trackerdcs.mqttloop.LoopNetwork`: paho's external-loop API, no thread of paho's own): messages
are read there, the gate runs there, and each callback runs as a callback of its own on the
loop, so the service's state is only touched from its loop and no service writes its own
hand-off. A publish from another thread is handed to the loop. Without a loop, paho runs its own
network thread (`loop_start`) and the callbacks run there. A refused command is answered by the
gate and never reaches the service. An unexpected
exception in a callback never reaches paho (it would end the network thread): it is reported to
`trackerdcs.guard.FAULTS` (logged with its message, counted); on the loop, the daemon's loop
exception handler reports it (`trackerdcs.runner`). A command handler runs through
`MqttLink.execute` (with `loop`, the link does that itself), so that a command whose handler fails
unexpectedly is still answered (`ok: false`, `internal error ...`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from trackerdcs.commands import always_executed, sender_of
from trackerdcs.config import MqttConfig
from trackerdcs.guard import FAULTS, Faults, JsonError, clip, finite_number, loads, shorten
from trackerdcs.mqttloop import LoopNetwork
from trackerdcs.payloads import OFFLINE, ONLINE, answer_payload
from trackerdcs.topics import ServiceTopics, is_command

log = logging.getLogger(__name__)


class PayloadError(ValueError):
    """A command payload that cannot be understood."""


PAYLOAD_KEYS = ("value", "id", "time")
MAX_ID = 200  # characters of a request id


@dataclass(frozen=True)
class Command:
    """One command received on `<prefix>/cmd/...`."""

    topic: str
    action: str  # the topic below `<prefix>/cmd/`, e.g. `setv/3`
    payload: str
    response_topic: str | None = None
    correlation_data: bytes | None = None
    received: float = 0.0  # time.monotonic() when paho handed it over
    retained: bool = False  # published with the retain flag (seen through retain-as-published)
    arrived: float = 0.0  # time.time() when it arrived (0: unknown)
    expiry: int | None = None  # MQTT 5 message expiry interval left when delivered, s
    # an always-executed command whose payload has faults: read by `salvage`, faults ignored
    # and named in the answer's `warning` (CommandGate.tolerate)
    lenient: bool = False

    @property
    def parts(self) -> list[str]:
        return self.action.split("/")

    def _fields(self) -> tuple[Any, str | None, float | None]:
        if self.lenient:
            return self.salvage()[:3]
        text = self.payload.strip()
        if not text.startswith("{"):
            return text, None, None
        try:
            obj = loads(text, "JSON payload")
        except JsonError as exc:
            raise PayloadError(str(exc)) from None
        if not isinstance(obj, dict):
            raise PayloadError("a JSON payload must be an object")
        unknown = set(obj) - set(PAYLOAD_KEYS)
        if unknown:
            raise PayloadError(
                f"unknown key(s) in payload: {shorten(', '.join(sorted(unknown)), 80)} "
                f"(known: {', '.join(PAYLOAD_KEYS)})"
            )
        request_id = obj.get("id")
        if request_id is not None:
            if isinstance(request_id, bool) or not isinstance(request_id, str | int | float):
                raise PayloadError(f"id must be a string, got {clip(request_id, 40)}")
            request_id = str(request_id)
            if len(request_id) > MAX_ID:
                raise PayloadError(f"id longer than {MAX_ID} characters")
        sent = _send_time(obj.get("time"))
        return obj.get("value"), request_id, sent

    def salvage(self) -> tuple[Any, str | None, float | None, list[str]]:
        """As much of the payload as can be read, for a command that runs anyway (value, id and
        time, each None when absent or unreadable), and what was ignored, in words."""
        text = self.payload.strip()
        if not text.startswith("{"):
            return text, None, None, []
        try:  # Python's lenient reader: NaN in `time` is read, then named as ignored
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            return None, None, None, [f"the payload (malformed JSON: {exc.msg})"]
        except (RecursionError, ValueError):  # too deep, or an integer beyond the digit limit
            return None, None, None, ["the payload (nested too deep or a number too long)"]
        if not isinstance(obj, dict):
            return obj, None, None, []
        ignored = []
        unknown = sorted(set(obj) - set(PAYLOAD_KEYS))
        if unknown:
            ignored.append(f"unknown key(s) {shorten(', '.join(unknown), 80)}")
        request_id = obj.get("id")
        if request_id is not None and (
            isinstance(request_id, bool)
            or not isinstance(request_id, str | int)
            or len(str(request_id)) > MAX_ID
        ):
            ignored.append(f"id {_json_text(request_id)} (not a string)")
            request_id = None
        try:
            sent = _send_time(obj.get("time"))
        except PayloadError as exc:
            ignored.append(str(exc))
            sent = None
        return obj.get("value"), None if request_id is None else str(request_id), sent, ignored

    def decoded(self) -> tuple[Any, str | None]:
        """The command's value and the caller's request id.

        A payload is either plain text (`100`, `on`) or a JSON object
        `{"value": ..., "id": ..., "time": <unix s>}` (every key optional, no other key). A bare
        JSON number or string is taken as the value. Raises `PayloadError`.
        """
        value, request_id, _ = self._fields()
        return value, request_id

    def sent(self) -> float | None:
        """The sender's `time` (unix s), or None when it gave none. Raises `PayloadError`."""
        return self._fields()[2]

    def request_id(self) -> str | None:
        """The caller's id, or None; from a malformed payload as far as it can be read, so
        that the refusal reaches its caller too."""
        try:
            return self.decoded()[1]
        except PayloadError:
            return self.salvage()[1]


def _send_time(sent: Any) -> float | None:
    """A payload's `time`: finite unix seconds, or None when absent. Raises `PayloadError`."""
    if sent is None:
        return None
    if isinstance(sent, bool) or not isinstance(sent, int | float):
        raise PayloadError(f"time must be unix seconds (a number), got {clip(sent, 40)}")
    if not finite_number(sent):
        raise PayloadError(f"time must be finite, got {clip(sent, 40)}")
    return float(sent)


def _json_text(value: Any) -> str:
    """A JSON value as text for a message, cut to about 60 characters."""
    try:
        return shorten(json.dumps(value), 60)
    except (ValueError, TypeError, RecursionError):
        return clip(value, 60)


def command_from_message(msg: mqtt.MQTTMessage, cmd_root: str) -> Command:
    """A `Command` from a message on `<cmd_root>...` (`cmd_root` is `<prefix>/cmd/`)."""
    props = msg.properties
    try:
        payload = msg.payload.decode("utf-8")
    except UnicodeDecodeError:
        payload = msg.payload.decode("utf-8", errors="replace")
    return Command(
        topic=msg.topic,
        action=msg.topic[len(cmd_root) :],
        payload=payload,
        response_topic=getattr(props, "ResponseTopic", None) if props else None,
        correlation_data=getattr(props, "CorrelationData", None) if props else None,
        received=msg.timestamp,
        retained=bool(msg.retain),
        arrived=time.time(),
        expiry=getattr(props, "MessageExpiryInterval", None) if props else None,
    )


def internal_error(reason: str) -> str:
    """The answer to a command whose handler failed unexpectedly."""
    return f"internal error: {reason}; check the status for what was done (details in the log)"


def retained_refusal(topic: str) -> str:
    """The answer to a command published with the retain flag."""
    return (
        f"refused: {topic} was published with the retain flag; a retained command is never "
        "executed (the broker would deliver it again at every reconnection). Clear it with: "
        f"mosquitto_pub -r -t '{topic}' -n"
    )


class CommandGate:
    """What every service refuses before a command reaches it (docs/topics.md, "Commands"):

    - a command published with the retain flag, whatever it says;
    - unless it only switches something off (`always`, the service's entry of
      `trackerdcs.commands.ALWAYS_EXECUTED`): a payload `time` older than `max_age` s or more
      than `mqtt.command_clock_skew` s in the future; an MQTT 5 message whose expiry interval
      has run out; and, with `mqtt.command_rate_limit`, more commands on one topic from one
      sender (`sender_of` its id; every command without one shares a bucket) than its token
      bucket holds.

    Used from one thread. `tolerate` lets an always-executed command with a faulty payload run;
    `check` returns the refusal (the answer's error), or None.
    """

    def __init__(
        self, cfg: MqttConfig, max_age: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        always: dict[str, bool | str | None] | None = None,
    ) -> None:  # fmt: skip
        self.max_age = cfg.command_max_age if max_age is None else max_age
        self.skew = cfg.command_clock_skew
        self.limit = cfg.command_rate_limit
        self.always = always or {}
        self.clock = clock  # for the rate limit
        # (topic, sender or "") -> (tokens, at)
        self._buckets: dict[tuple[str, str], tuple[float, float]] = {}

    def tolerate(self, cmd: Command) -> Command:
        """`cmd`, or a lenient copy when its payload has faults (a bad `time`, unknown keys, a
        bad `id`) but its value makes it always executed: switching off is never blocked by
        what comes with it. A value that cannot be read as off stays refused."""
        if cmd.retained or not self.always:
            return cmd
        try:
            cmd.decoded()
            return cmd
        except PayloadError:
            pass
        if always_executed(cmd.action, cmd.salvage()[0], self.always):
            return dataclasses.replace(cmd, lenient=True)
        return cmd

    def check(self, cmd: Command) -> str | None:
        if cmd.retained:
            return retained_refusal(cmd.topic)
        try:
            value, _ = cmd.decoded()
            sent = cmd.sent()
        except PayloadError:
            return None  # the service answers the payload's error itself
        if always_executed(cmd.action, value, self.always):
            return None
        if sent is not None:
            age = (cmd.arrived or time.time()) - sent
            if age > self.max_age:
                return (
                    f"refused: sent {age:.1f} s ago (time {sent:.3f}), older than the "
                    f"{self.max_age:g} s a command may be (command_max_age): nothing was "
                    "written; send it again if it is still wanted"
                )
            if -age > self.skew:
                return (
                    f"refused: its time {sent:.3f} is {-age:.1f} s in the future, beyond the "
                    f"{self.skew:g} s clock-skew tolerance (mqtt.command_clock_skew): nothing "
                    "was written; check the sender's clock"
                )
        if cmd.expiry is not None and cmd.expiry <= 0:
            return "refused: its MQTT 5 message expiry interval ran out: nothing was written"
        return self._rate(cmd.topic, sender_of(cmd.request_id()) or "")

    def _rate(self, topic: str, sender: str) -> str | None:
        limit = self.limit
        if limit is None:
            return None
        now = self.clock()
        key = (topic, sender)
        tokens, at = self._buckets.get(key, (float(limit.burst), now))
        tokens = min(float(limit.burst), tokens + (now - at) * limit.rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            who = f"from {sender}" if sender else "from senders without a 'name:...' id"
            return (
                f"refused: more than {limit.burst} commands at once or {limit.rate:g} per second "
                f"on {topic} {who} (mqtt.command_rate_limit): nothing was written"
            )
        self._buckets[key] = (tokens - 1.0, now)
        if len(self._buckets) > 4096:  # a full bucket is the same as none
            full = [
                t
                for t, (n, a) in self._buckets.items()
                if n + (now - a) * limit.rate >= limit.burst
            ]
            for t in full:
                del self._buckets[t]
        return None


def unix_time(t: float | None = None) -> float:
    """The contract's `time` (docs/topics.md): unix seconds as a float, to the millisecond;
    now, or `t` (from `time.time()`)."""
    return round(time.time() if t is None else t, 3)


def disable_nagle(client: mqtt.Client, userdata: Any, sock: Any) -> None:
    """Disable Nagle's algorithm: a command's answer and the status it changes are small
    back-to-back writes, which Nagle would hold for the peer's delayed ACK (40 ms on Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def apply_broker_settings(
    client: mqtt.Client, cfg: MqttConfig, env: Mapping[str, str] | None = None
) -> None:
    """Credentials (from the environment variables the lab names, in `env`, by default this
    process's) and TLS of the lab's broker, for any paho client."""
    username, password = cfg.username, cfg.password
    if env is not None:
        username = env.get(cfg.username_env) or None
        password = env.get(cfg.password_env) or None
    if username:
        client.username_pw_set(username, password)
    if cfg.tls.enabled:
        client.tls_set(
            ca_certs=cfg.tls.ca_file,
            certfile=cfg.tls.cert_file,
            keyfile=cfg.tls.key_file,
            cert_reqs=ssl.CERT_REQUIRED,
        )
        client.tls_insecure_set(cfg.tls.insecure)


def subscribe_options(topic_filter: str) -> SubscribeOptions:
    """QoS 1; command topics with "retain as published" (MQTT 5), so that the retain flag of a
    live command tells how it was published; other topics plain (retain flag: stored)."""
    return SubscribeOptions(qos=1, retainAsPublished=is_command(topic_filter))


CommandHandler = Callable[[Command], None]
ConnectionHandler = Callable[[bool], None]


class MqttLink:
    """A service's connection to the broker for one topic prefix.

    `loop`: the service's asyncio loop. Given, the network runs on it (`LoopNetwork`), and
    `on_command` (through `execute`), `on_connection` and `on_message` run on it, each as a
    callback of its own; else paho runs its own network thread and they run there.
    """

    def __init__(
        self,
        cfg: MqttConfig,
        prefix: str,
        client_id: str,
        on_command: CommandHandler | None = None,
        on_connection: ConnectionHandler | None = None,
        subscribe: tuple[str, ...] = (),
        on_message: Callable[[mqtt.MQTTMessage], None] | None = None,
        command_max_age: float | None = None,
        faults: Faults | None = None,
        always_executed: dict[str, bool | str | None] | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.cfg = cfg
        self.loop = loop
        self.faults = faults or FAULTS
        self.prefix = prefix
        self.client_id = client_id
        self.topics = ServiceTopics(prefix)
        self.availability_topic = self.topics.availability
        self.response_topic = self.topics.response
        self._on_command = on_command
        self._on_connection = on_connection
        self._extra_subscriptions = subscribe
        self._on_message = on_message
        # `always_executed`: the service's entry of trackerdcs.commands.ALWAYS_EXECUTED
        self.gate = CommandGate(cfg, command_max_age, always=always_executed)
        self._retained: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._stopping = False
        self._executing: dict[int, bool] = {}  # id(cmd) -> answered, while its handler runs
        self._client = self._make_client()
        self._net: LoopNetwork | None = None
        if loop is not None:
            self._net = LoopNetwork(
                self._client, loop, min_delay=cfg.reconnect_min_delay,
                max_delay=cfg.reconnect_max_delay, name=client_id, on_socket_open=disable_nagle,
            )  # fmt: skip

    # -- set-up ---------------------------------------------------------------------------------
    def _make_client(self) -> mqtt.Client:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv5,
            reconnect_on_failure=True,
        )
        cfg = self.cfg
        apply_broker_settings(client, cfg)
        client.will_set(self.availability_topic, OFFLINE, qos=1, retain=True)
        client.reconnect_delay_set(cfg.reconnect_min_delay, cfg.reconnect_max_delay)
        client.on_socket_open = disable_nagle
        where = f"the MQTT callbacks of {self.prefix}"
        client.on_connect = self.faults.guarded(where, self._handle_connect)
        client.on_disconnect = self.faults.guarded(where, self._handle_disconnect)
        client.on_message = self._guarded_message
        return client

    def start(self) -> None:
        """Connect in the background; paho retries until the broker answers."""
        log.info("connecting to mqtt://%s:%d as %s", self.cfg.host, self.cfg.port, self.client_id)
        self._client.connect_async(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive)
        if self._net is not None:
            self._net.start()
        else:
            self._client.loop_start()

    def stop(self, timeout: float = 2.0) -> None:
        """Publish `offline`, wait up to `timeout` s for it to leave, disconnect, and stop the
        network (paho's thread, or the link's part of the service's loop). From any thread; on
        the loop's, it blocks the loop meanwhile."""
        self._stopping = True
        net = self._net
        if net is None:
            if self._connected.is_set():
                info = self._client.publish(self.availability_topic, OFFLINE, qos=1, retain=True)
                with contextlib.suppress(RuntimeError, ValueError):
                    info.wait_for_publish(timeout)
            self._client.disconnect()
            self._client.loop_stop()
            return

        def close() -> None:
            if not net.halt(timeout):
                log.warning("stopping while connecting to the broker: nothing more is sent")
                net.close()
                return
            net.release()  # what was handed over before the stop goes out before `offline`
            if self._connected.is_set():
                info = self._client.publish(self.availability_topic, OFFLINE, qos=1, retain=True)
                net.drain(lambda: _published(info), timeout)
            self._client.disconnect()
            net.drain(lambda: self._client.socket() is None, timeout)
            net.close()

        net.run(close, 3 * timeout + 1.0)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    # -- paho callbacks (network thread, or the loop) -------------------------------------------
    def _handle_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error("broker refused the connection: %s", reason_code)
            return
        log.info("connected to the broker")
        if self._net is not None:
            self._net.connected()
        topics = [self.topics.commands] if self._on_command else []
        topics += self._extra_subscriptions
        if topics:
            client.subscribe([(t, subscribe_options(t)) for t in topics])
        client.publish(self.availability_topic, ONLINE, qos=1, retain=True)
        if self._net is not None and self._net.started:
            # once paho has resent what it kept unacknowledged (after on_connect returns),
            # which may hold older states: the newest goes last
            self._net.loop.call_soon(self._republish, self._net)
        else:
            self._republish()

    def _republish(self, net: LoopNetwork | None = None) -> None:
        """Every retained state again (a restarted broker has lost them), then `connected`."""
        if net is not None:
            if not self._client.is_connected():  # lost again meanwhile: the next connect
                return
            net.release()  # publishes handed over before, ahead of the newest state
        with self._lock:  # one step with publish_state: no state is lost or overtaken
            for topic, payload in self._retained.items():
                self._client.publish(topic, payload, qos=1, retain=True)
            self._connected.set()
        if self._on_connection:
            self._deliver(self._on_connection, True, where="connection")

    def _handle_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        was = self._connected.is_set()
        self._connected.clear()
        if not self._stopping:  # paho may say it twice (paho.mqtt.python#870): logged once
            (log.warning if was else log.debug)("lost the broker (%s); reconnecting", reason_code)
        if was and self._on_connection:
            self._deliver(self._on_connection, False, where="connection")

    def _guarded_message(self, client, userdata, msg: mqtt.MQTTMessage) -> None:
        """`_handle_message`; an unexpected exception is reported, and a command answered."""
        where = f"the MQTT message callback of {self.prefix}"
        try:
            self._handle_message(client, userdata, msg)
        except Exception as exc:
            topic = bytes(getattr(msg, "_topic", b"")).decode("utf-8", errors="replace")
            reason = self.faults.fault(where, exc, f"{topic} {clip(msg.payload)}")
            cmd_root = self.topics.command_root
            if self._on_command and topic.startswith(cmd_root) and msg.payload:
                with contextlib.suppress(Exception):
                    payload = msg.payload.decode("utf-8", errors="replace")
                    cmd = Command(topic, topic[len(cmd_root) :], payload)
                    self.respond(cmd, False, internal_error(reason))
        else:
            self.faults.ok(where)

    def _handle_message(self, client, userdata, msg: mqtt.MQTTMessage) -> None:
        cmd_root = self.topics.command_root
        if self._on_command and msg.topic.startswith(cmd_root):
            cmd = self.gate.tolerate(command_from_message(msg, cmd_root))
            if self.admit(cmd):
                if self.loop is None:
                    self._on_command(cmd)
                else:
                    self._soon(self.execute, self._on_command, cmd)
        elif self._on_message:
            self._deliver(self._on_message, msg, where="message", data=msg)

    def _deliver(
        self, callback: Callable[..., Any], *args: Any, where: str | None = None, data: Any = None
    ) -> None:
        """`callback(*args)`: now (inside the paho thread's guard), or on the service's loop when
        the link has one, where an unexpected exception is reported as the link's own `where`
        callback with its input (a message's topic and payload), like on paho's thread."""
        if self.loop is None:
            callback(*args)
        elif where is None:
            self._soon(callback, *args)
        else:
            self._soon(self._run_guarded, where, data, callback, *args)

    def _soon(self, callback: Callable[..., Any], *args: Any) -> None:
        """`callback(*args)` as a callback of its own on the service's loop, from any thread
        (only for a link with a loop, which has its `LoopNetwork`)."""
        assert self._net is not None
        self._net.call_soon(callback, *args)

    def _run_guarded(self, what: str, data: Any, callback: Callable[..., Any], *args: Any) -> None:
        where = f"the MQTT {what} callback of {self.prefix}"
        try:
            callback(*args)
        except Exception as exc:
            shown = data
            if isinstance(data, mqtt.MQTTMessage):
                topic = bytes(getattr(data, "_topic", b"")).decode("utf-8", errors="replace")
                shown = f"{topic} {clip(data.payload)}"
            self.faults.fault(where, exc, shown)
        else:
            self.faults.ok(where)

    def execute(self, handler: Callable[..., Any], cmd: Command, *args: Any) -> None:
        """Run `handler(cmd, *args)` (a command handler, on the service's loop). An unexpected
        exception is reported (`trackerdcs.guard`) and, unless the handler answered already,
        the command is answered `ok: false` with the reason: a command always gets an answer."""
        key = id(cmd)
        self._executing[key] = False
        where = f"the command handler of {self.prefix}"
        try:
            handler(cmd, *args)
        except Exception as exc:
            reason = self.faults.fault(where, exc, f"{cmd.topic} {clip(cmd.payload)}")
            if not self._executing.get(key):
                try:
                    self.respond(cmd, False, internal_error(reason))
                except Exception:
                    log.exception("cannot answer %s", cmd.topic)
        else:
            self.faults.ok(where)
        finally:
            self._executing.pop(key, None)

    def execute_soon(self, handler: Callable[..., Any], cmd: Command, *args: Any) -> None:
        """From any thread: `execute(handler, cmd, *args)` on the service's loop (now, on
        this thread, for a link without one). For a command answered later, e.g. once a device
        line has run it."""
        self._deliver(self.execute, handler, cmd, *args)

    def admit(self, cmd: Command) -> bool:
        """Pass `cmd` through the gate: True to execute it; else it has been answered (a
        refusal), or it is the empty retained message that clears a retained command."""
        if cmd.retained and not cmd.payload:
            log.info("retained command on %s cleared", cmd.topic)
            return False
        refusal = self.gate.check(cmd)
        if refusal is not None:
            self.respond(cmd, False, refusal)
            return False
        return True

    # -- publishing (any thread) ----------------------------------------------------------------
    def publish(self, topic: str, payload: str | bytes, *, qos: int = 0, retain: bool = False):
        """Publish now (dropped with a debug line while disconnected, unless retained state).
        Returns paho's `MQTTMessageInfo`; None when handed to the loop from another thread."""
        return self._send(topic, payload, qos=qos, retain=retain)

    def _send(self, topic: str, payload: str | bytes, **options: Any) -> Any:
        net = self._net
        if net is not None and net.started:
            sent: list[Any] = []
            net.submit(functools.partial(self._publish, topic, payload, options, sent))
            return sent[0] if sent else None
        return self._publish(topic, payload, options)

    def _publish(
        self, topic: str, payload: str | bytes, options: dict[str, Any], sent: list | None = None
    ) -> Any:
        info = self._client.publish(topic, payload, **options)
        if sent is not None:
            sent.append(info)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            log.warning("publish to %s failed: %s", topic, mqtt.error_string(info.rc))
        return info

    def publish_state(self, topic: str, payload: str | bytes, *, qos: int = 1) -> None:
        """Publish a retained state topic and remember it for republishing after a reconnect."""
        data = payload.encode() if isinstance(payload, str) else payload
        with self._lock:  # a state stored while connecting is either republished or sent here
            self._retained[topic] = data
            if self._connected.is_set():
                self.publish(topic, data, qos=qos, retain=True)

    def respond(self, cmd: Command, ok: bool, error: str | None = None, **extra: Any) -> dict:
        """Answer a command on `<prefix>/response` and on the caller's MQTT 5 response topic."""
        if cmd.lenient:  # run despite faults in its payload: say what was ignored
            note = "ignored: " + "; ".join(cmd.salvage()[3])
            extra["warning"] = f"{extra['warning']}; {note}" if extra.get("warning") else note
        answer = answer_payload(cmd.topic, cmd.payload, ok, error, cmd.request_id(), **extra)
        data = json.dumps(answer)
        self.publish(self.response_topic, data, qos=1)
        if cmd.response_topic:
            props = Properties(PacketTypes.PUBLISH)
            if cmd.correlation_data is not None:
                props.CorrelationData = cmd.correlation_data
            self._send(cmd.response_topic, data, qos=1, properties=props)
        if id(cmd) in self._executing:  # answered: only once it is sent
            self._executing[id(cmd)] = True
        if ok:
            log.info("command %s %r: ok", cmd.topic, cmd.payload)
        else:
            reason = (error or "").removeprefix("refused: ")  # the gate's errors say it
            log.warning("command %s %r refused: %s", cmd.topic, cmd.payload, reason)
        return answer


def _published(info: mqtt.MQTTMessageInfo) -> bool:
    """Whether a publish has left (its PUBACK came, for QoS 1), or never will."""
    try:
        return info.is_published()
    except (RuntimeError, ValueError):  # not queued, or the connection went
        return True
