"""A test-side MQTT client: records every message and waits for the one a test expects."""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from trackerdcs.mqtt import disable_nagle

_ids = itertools.count()


@dataclass
class Message:
    topic: str
    payload: bytes
    retain: bool
    t: float  # time.monotonic() at reception
    properties: Any = None

    @property
    def text(self) -> str:
        return self.payload.decode()

    @property
    def json(self) -> Any:
        return json.loads(self.payload)


class TestClient:
    """Subscribes to `#` (or given topics) and keeps every message it sees.

    `session_expiry` (s, MQTT 5): a persistent session, resumed when it reconnects by itself
    (a broker with persistence keeps it, and the messages that arrived meanwhile, across its
    restart)."""

    __test__ = False

    def __init__(self, port: int, host: str = "127.0.0.1", topics=("#",), v5: bool = True,
                 session_expiry: int | None = None, username: str | None = None,
                 password: str | None = None):  # fmt: skip
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"test-{next(_ids)}-{time.monotonic_ns()}",
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
        )
        if username is not None:
            self.client.username_pw_set(username, password)
        self.messages: list[Message] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self._topics = topics
        self.client.on_socket_open = disable_nagle
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        if session_expiry is None:
            self.client.connect(host, port)
        else:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = session_expiry
            self.client.reconnect_delay_set(0.1, 0.5)
            self.client.connect(host, port, clean_start=False, properties=props)
        self.client.loop_start()
        if not self._subscribed.wait(5):
            raise TimeoutError("test client did not subscribe")

    def _on_connect(self, client, userdata, flags, rc, props=None):
        client.subscribe([(t, 1) for t in self._topics])

    def _on_message(self, client, userdata, msg):
        with self._cond:
            self.messages.append(
                Message(msg.topic, msg.payload, msg.retain, time.monotonic(), msg.properties)
            )
            self._cond.notify_all()

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()

    def publish(self, topic: str, payload: str | bytes | dict, qos: int = 1, **kw) -> None:
        if isinstance(payload, dict):
            payload = json.dumps(payload)
        self.client.publish(topic, payload, qos=qos, **kw).wait_for_publish(5)

    def mark(self) -> int:
        """An index: `wait_for(..., since=mark)` looks only at later messages."""
        with self._cond:
            return len(self.messages)

    def wait_for(
        self,
        topic: str,
        predicate: Callable[[Message], bool] = lambda m: True,
        timeout: float = 5.0,
        since: int = 0,
    ) -> Message:
        """The first message on `topic` (from index `since`) that satisfies `predicate`."""
        deadline = time.monotonic() + timeout
        index = since
        with self._cond:
            while True:
                while index < len(self.messages):
                    m = self.messages[index]
                    index += 1
                    if mqtt.topic_matches_sub(topic, m.topic) and predicate(m):
                        return m
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = [f"{m.topic} {m.payload[:200]!r}" for m in self.messages[since:]][-10:]
                    raise TimeoutError(
                        f"no matching message on {topic} in {timeout} s; last: {seen}"
                    )
                self._cond.wait(left)

    def latest(self, topic: str) -> Message | None:
        with self._cond:
            for m in reversed(self.messages):
                if m.topic == topic:
                    return m
        return None

    def command(
        self, topic: str, payload: Any, response: str, timeout: float = 5.0, **extra: Any
    ) -> dict[str, Any]:
        """Send a command with a fresh id (and `extra` keys: `time=...`) and return its answer
        from `response`."""
        request_id = f"req-{next(_ids)}"
        since = self.mark()
        self.publish(topic, {"value": payload, "id": request_id, **extra})
        return self.wait_for(
            response, lambda m: m.json.get("id") == request_id, timeout, since
        ).json

    def raw_command(self, topic: str, payload: str, response: str, timeout: float = 5.0) -> dict:
        """Send a payload as is and return the next answer for this topic."""
        since = self.mark()
        self.publish(topic, payload)
        return self.wait_for(
            response,
            lambda m: m.json.get("topic") == topic and m.json.get("payload") == payload,
            timeout,
            since,
        ).json
