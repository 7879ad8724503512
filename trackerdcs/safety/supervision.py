"""Supervision end to end: the safety services' heartbeat, and the power daemons' watch on it.

A power daemon's broker can stay up while what supervises it is gone: the interlock service
died, or the daemon's host is cut from the central broker while its own bridged broker keeps
running (docs/deployment.md, "Several hosts"). So the interlock service publishes a heartbeat,
`<prefix>/supervision` (not retained, QoS 0: a late heartbeat is worth nothing), every
`interlocks.supervision_interval` s, and each power daemon that lists the service in
`power.failsafe.supervisors` ramps its HV down when none fresh has arrived for
`power.failsafe.supervision_timeout` s, whatever the cause (docs/topics.md, "Supervision").

A heartbeat counts for the time it says it was sent (`time`, unix s), not for when it arrives:
one that sat in a queue (a bridge coming back, a retained copy published by mistake) is judged
by its age, so that a burst of old heartbeats never stands in for a live service.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from trackerdcs.guard import finite_number, loads, shorten
from trackerdcs.mqtt import MqttLink, unix_time
from trackerdcs.payloads import SupervisionHeartbeat, dump, key
from trackerdcs.topics import ServiceTopics

log = logging.getLogger(__name__)

SENT = key(SupervisionHeartbeat, "time")  # what a heartbeat is judged by (the rest is not read)


def supervision_topic(prefix: str) -> str:
    """`<prefix>/supervision`: the heartbeat of the supervisor at `prefix`."""
    return ServiceTopics(prefix).supervision


def heartbeat_payload(source: str, interval: float, seq: int, now: float) -> str:
    """The heartbeat's JSON (docs/topics.md, contract table `supervision`)."""
    beat = SupervisionHeartbeat(time=unix_time(now), source=source, interval=interval, seq=seq)
    return json.dumps(dump(beat))


def parse_heartbeat(payload: bytes) -> float:
    """The `time` (unix s) of a heartbeat payload. ValueError, saying why, for anything that is
    not strict JSON (`guard.loads`: no NaN, bounded nesting and numbers) or not an object with
    a finite number `time`."""
    obj: Any = loads(payload, "heartbeat")  # JsonError is a ValueError
    if not isinstance(obj, dict):
        raise ValueError("heartbeat: not a JSON object")
    sent = obj.get(SENT)
    if not finite_number(sent):
        raise ValueError(f"heartbeat: no finite number `time` (got {shorten(sent, 40)})")
    return float(sent)


class SupervisionBeacon:
    """Publishes `<prefix>/supervision` every `interval` s from the service's own loop: a
    service whose loop is stuck stops supervising."""

    def __init__(
        self, link: MqttLink, loop: asyncio.AbstractEventLoop, prefix: str, source: str,
        interval: float, clock: Callable[[], float] = time.time,
    ) -> None:  # fmt: skip
        self.link, self.loop, self.source, self.interval = link, loop, source, interval
        self.topic = supervision_topic(prefix)
        self.clock = clock
        self.seq = 0
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._beat()

    def _beat(self) -> None:
        self.seq += 1
        payload = heartbeat_payload(self.source, self.interval, self.seq, self.clock())
        self.link.publish(self.topic, payload, qos=0)
        self._handle = self.loop.call_later(self.interval, self._beat)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


class SupervisionWatch:
    """The deadline of each required supervisor; `on_lost(why)` when one passes, `on_back()`
    once every supervisor is fresh again. Runs on the daemon's loop.

    A heartbeat sent at `t` (its `time`) and arriving `age` s later supervises until
    `timeout - age` s after its arrival; one older than `timeout`, or more than `skew` s in the
    future (clocks out of step), is ignored and logged. The watch starts with every deadline
    `timeout` s away: a daemon that never hears its supervisor ramps down too.
    """

    def __init__(
        self, supervisors: list[str], timeout: float, skew: float,
        loop: asyncio.AbstractEventLoop, on_lost: Callable[[str], None],
        on_back: Callable[[], None], clock: Callable[[], float] = time.time,
    ) -> None:  # fmt: skip
        self.timeout, self.skew, self.loop, self.clock = timeout, skew, loop, clock
        self.on_lost, self.on_back = on_lost, on_back
        self.topics = {supervision_topic(p): p for p in supervisors}
        self.deadline: dict[str, float] = {}  # prefix -> loop time
        self.last: dict[str, float] = {}  # prefix -> `time` of its last fresh heartbeat
        self.lost: set[str] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._complained: set[str] = set()

    def start(self) -> None:
        until = self.loop.time() + self.timeout
        self.deadline = dict.fromkeys(self.topics.values(), until)
        self._schedule()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def on_message(self, topic: str, payload: bytes) -> bool:
        """Take a message on a supervision topic; False when `topic` is not one."""
        prefix = self.topics.get(topic)
        if prefix is None:
            return False
        if not payload:
            return True  # a retained heartbeat cleared
        try:
            sent = parse_heartbeat(payload)
        except ValueError as exc:
            self._complain(prefix, f"ignoring a malformed heartbeat on {topic}: {exc}")
            return True
        age = self.clock() - sent
        if age > self.timeout or -age > self.skew:
            self._complain(prefix, f"ignoring a heartbeat on {topic} sent {age:.1f} s ago "
                           f"(timeout {self.timeout:g} s, clock skew {self.skew:g} s)")  # fmt: skip
            return True
        self._complained.discard(prefix)
        # an older heartbeat overtaken by a newer one (reordered on its way) shortens nothing
        self.last[prefix] = max(sent, self.last.get(prefix, sent))
        until = self.loop.time() + self.timeout - max(age, 0.0)
        self.deadline[prefix] = max(until, self.deadline.get(prefix, until))
        if prefix in self.lost:
            self.lost.discard(prefix)
            log.warning("supervision by %s is back", prefix)
            if not self.lost:
                self.on_back()
        self._schedule()
        return True

    def _complain(self, prefix: str, text: str) -> None:
        if prefix not in self._complained:  # once per spell: a flood must not flood the log
            self._complained.add(prefix)
            log.warning("%s", text)

    def _schedule(self) -> None:
        pending = [d for p, d in self.deadline.items() if p not in self.lost]
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if pending:
            self._timer = self.loop.call_at(min(pending), self._expire)

    def _expire(self) -> None:
        self._timer = None
        now = self.loop.time()
        for prefix, deadline in self.deadline.items():
            if prefix not in self.lost and deadline <= now + 1e-6:
                self.lost.add(prefix)
                last = self.last.get(prefix)
                seen = "never seen" if last is None else f"last {self.clock() - last:.1f} s ago"
                why = f"no supervision heartbeat from {prefix} for {self.timeout:g} s ({seen})"
                log.error("%s", why)
                self.on_lost(why)
        self._schedule()
