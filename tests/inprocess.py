"""Every service of the project in-process, on the example lab, with its real MQTT layer
(`MqttLink`: the command gate, `execute`, `respond`) recording what it would publish instead of
sending it. No broker, no device: for tests that push thousands of inputs through the real code.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from tests.labdata import EXAMPLE_LAB
from trackerdcs.config import LabConfig, load_config
from trackerdcs.mqtt import Command, MqttLink

_LAB: LabConfig | None = None


def example_lab() -> LabConfig:
    global _LAB
    if _LAB is None:
        _LAB = load_config(EXAMPLE_LAB)
    return _LAB


class RecordingLink(MqttLink):
    """A real `MqttLink` (never started: no connection) that records what it publishes."""

    def __init__(self, lab: LabConfig, prefix: str, **options: Any) -> None:
        options.setdefault("on_command", lambda c: None)
        super().__init__(lab.mqtt, prefix, client_id=f"test-{prefix}", **options)
        self.sent: list[tuple[str, Any]] = []
        self._client.publish = self._record  # an MQTT 5 response topic's copy

    def _record(self, topic: str, payload: Any = None, **_: Any) -> Any:
        self.sent.append((topic, payload))
        return _Info()

    def publish(self, topic: str, payload: Any, *, qos: int = 0, retain: bool = False) -> Any:
        return self._record(topic, payload)

    def publish_state(self, topic: str, payload: Any, *, qos: int = 1) -> None:
        self._record(topic, payload)

    def answers(self) -> list[dict[str, Any]]:
        return [json.loads(p) for t, p in self.sent if t == self.response_topic]

    def published(self, topic: str) -> list[str]:
        return [p.decode() if isinstance(p, bytes) else p for t, p in self.sent if t == topic]


class _Info:
    rc = 0

    def wait_for_publish(self, timeout: float | None = None) -> bool:
        return True

    def is_published(self) -> bool:
        return True


def command(prefix: str, action: str, payload: str) -> Command:
    return Command(topic=f"{prefix}/cmd/{action}", action=action, payload=payload, arrived=0.0)


def submit(link: MqttLink, handler: Any, cmd: Command) -> None:
    """What the daemon does with a command: the gate, then the handler through `execute`."""
    if link.admit(cmd):
        link.execute(handler, cmd)


def settle(loop: asyncio.AbstractEventLoop, rounds: int = 20) -> None:
    """Run the loop's ready callbacks and tasks a few rounds (no waiting on timers)."""
    for _ in range(rounds):
        loop.run_until_complete(asyncio.sleep(0))


class FakeBackend:
    """A crate that takes every write (`PowerBackend`)."""

    def __init__(self) -> None:
        self.writes: list[tuple[Any, str, Any]] = []

    def start(self, sink: Any) -> None: ...

    def stop(self) -> None: ...

    def write(self, addr: Any, param: str, value: Any) -> None:
        self.writes.append((addr, param, value))

    def clear_alarm(self) -> None:
        self.writes.append((None, "ClearAlarm", 1))

    def reconnect(self) -> None: ...


class FakeLine:
    """The Julabo line worker's interface: records the jobs, runs none."""

    def __init__(self) -> None:
        self.jobs: list[Any] = []

    def submit(self, fn: Any, done: Any) -> None:
        self.jobs.append((fn, done))

    def reconnect(self, done: Any) -> None:
        self.jobs.append((None, done))

    def alive(self) -> bool:
        return True
