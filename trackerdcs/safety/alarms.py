"""Latching alarms: detectors per topic, the alarm book, and the `/alarms` service.

Detectors (one table) turn a topic's latest message into the conditions present on it. The
book raises an alarm for a new condition and marks it cleared when its topic no longer shows it;
an alarm stays listed (latched) until it is both cleared and acknowledged. A condition that
comes back while its alarm is still listed reactivates it (`count` + 1) instead of adding one.
Every change goes to SQLite first, so alarms and acknowledgements survive a restart.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from trackerdcs.commands import sender_of
from trackerdcs.config import LabConfig
from trackerdcs.guard import FAULTS, JsonError, clip, loads, shorten
from trackerdcs.julabo.protocol import STATUS_TABLE, StatusKind
from trackerdcs.mqtt import Command, MqttLink, PayloadError, unix_time
from trackerdcs.payloads import OFFLINE, AlarmList, dump
from trackerdcs.safety.liveness import Liveness, heartbeats
from trackerdcs.safety.store import Alarm, Store
from trackerdcs.topics import ALARMS, AUDIT, EVERY_SERVICE, ServiceTopics, prefix_of, split_command

log = logging.getLogger(__name__)

ALARMS_PREFIX = ALARMS.prefix  # the retained list is `/alarms` itself
SEVERITIES = ("critical", "major", "minor")
COMMANDS = ("ack/{id}", "ack/all")  # under /alarms/cmd/


@dataclass(frozen=True)
class Condition:
    key: str
    severity: str
    source: str
    text: str


Detector = Callable[[str, Any], list[Condition]]


def channel_faults(prefix: str, status: Any) -> list[Condition]:
    """`<power>/status`: a channel TRIPPED or in ERROR."""
    found = []
    for ch in status if isinstance(status, list) else []:
        if isinstance(ch, dict) and ch.get("state") in ("TRIPPED", "ERROR"):
            name, module = shorten(ch.get("name")), shorten(ch.get("module") or "")
            flags = ch.get("flags") if isinstance(ch.get("flags"), list) else []
            flags = shorten(", ".join(f for f in flags if isinstance(f, str))) or "no flags"
            where = f"{name} ({module})" if module else name
            found.append(
                Condition(
                    f"channel:{prefix}:{name}", "major", prefix, f"{where} {ch['state']}: {flags}"
                )
            )
    return found


def crate_faults(prefix: str, state: Any) -> list[Condition]:
    """`<power>/state`: the crate disconnected; the daemon's fail-safe switched HV off."""
    if not isinstance(state, dict):
        return []
    found = []
    if state.get("state") == "DISCONNECTED":
        found.append(
            Condition(f"disconnected:{prefix}", "major", prefix, f"crate of {prefix} disconnected")
        )
    if state.get("failsafe"):
        found.append(
            Condition(
                f"failsafe:{prefix}",
                "critical",
                prefix,
                f"{prefix} fail-safe: {shorten(state['failsafe'])}",
            )
        )
    return found


def chiller_faults(prefix: str, status: Any) -> list[Condition]:
    """`<chiller>/status` (one per chiller prefix): an error code (a warning major, an alarm or an
    unknown code critical: `trackerdcs.julabo.protocol.STATUS_TABLE`), or the chiller
    disconnected."""
    if not isinstance(status, dict):
        return []
    state = status.get("state")
    why = shorten(status.get("error") or status.get("status_text"))
    if state == "ERROR":
        code = status.get("status_code")
        kind = STATUS_TABLE.get(code, ("", StatusKind.ALARM))[1] if type(code) is int else None
        if kind is StatusKind.WARNING:  # the unit keeps running (Julabo manuals' warnings)
            return [Condition(f"chiller_warning:{prefix}", "major", prefix,
                              f"chiller warning: {why}")]  # fmt: skip
        return [Condition(f"chiller_error:{prefix}", "critical", prefix, f"chiller error: {why}")]
    if state == "DISCONNECTED":
        return [
            Condition(f"disconnected:{prefix}", "major", prefix, f"chiller disconnected: {why}")
        ]
    return []


def sensor_faults(prefix: str, status: Any) -> list[Condition]:
    """`/<sensor>/status`: no good reading (silent, garbled or lost)."""
    if isinstance(status, dict) and status.get("stale"):
        return [
            Condition(
                f"stale:{prefix}",
                "minor",
                prefix,
                f"sensor {prefix[1:]} stale: {shorten(status.get('error'))}",
            )
        ]
    return []


def interlocks_fired(prefix: str, status: Any) -> list[Condition]:
    """`/interlock/status`: every active rule."""
    rules = status.get("rules") if isinstance(status, dict) else None
    return (
        [
            Condition(
                f"interlock:{shorten(r.get('name'), 80)}",
                "critical",
                prefix,
                f"interlock {shorten(r.get('name'), 80)} fired: {shorten(r.get('reason'))}",
            )
            for r in rules
            if isinstance(rules, list) and isinstance(r, dict) and r.get("active")
        ]
        if isinstance(rules, list)
        else []
    )


def service_offline(prefix: str, payload: Any) -> list[Condition]:
    """`<prefix>/availability`: the daemon is gone (last will) or stopped."""
    if payload == OFFLINE:
        return [Condition(f"offline:{prefix}", "major", prefix, f"{prefix} daemon offline")]
    return []


# role -> (detector, whether the payload is JSON)
DETECTORS: dict[str, tuple[Detector, bool]] = {
    "channels": (channel_faults, True),
    "crate": (crate_faults, True),
    "chiller": (chiller_faults, True),
    "sensor": (sensor_faults, True),
    "interlock": (interlocks_fired, True),
    "availability": (service_offline, False),
}


def alarm_routes(lab: LabConfig) -> dict[str, tuple[str, str]]:
    """Topic -> (detector role, source prefix) for the lab's topics. Availability topics are
    matched by `/+/availability`."""
    routes: dict[str, tuple[str, str]] = {}
    for crate in lab.crates:
        for prefix in crate.prefixes.values():
            routes[ServiceTopics(prefix).status] = ("channels", prefix)
            routes[ServiceTopics(prefix).state] = ("crate", prefix)
    for chiller in lab.chillers:
        routes[ServiceTopics(chiller.prefix).status] = ("chiller", chiller.prefix)
    for sensor in lab.sensors:
        routes[ServiceTopics(sensor.prefix).status] = ("sensor", sensor.prefix)
    interlock = lab.power.interlock_topic
    routes[interlock] = ("interlock", prefix_of(interlock))
    return routes


class AlarmBook:
    """The listed alarms (active or unacknowledged), kept in step with the store."""

    def __init__(self, store: Store, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock
        self.listed: dict[str, Alarm] = {a.key: a for a in store.listed_alarms()}
        self._owned: dict[str, set[str]] = {}  # topic -> keys of its active alarms
        for alarm in self.listed.values():
            if alarm.active:
                self._owned.setdefault(alarm.topic, set()).add(alarm.key)

    def observe(self, topic: str, conditions: list[Condition]) -> bool:
        """The conditions a topic shows now; True when the listed alarms changed."""
        now = self.clock()
        present = {c.key: c for c in conditions}
        changed = False
        for key, cond in present.items():
            alarm = self.listed.get(key)
            if alarm is None:
                alarm = Alarm(0, key, topic, cond.severity, cond.source, cond.text, now)
                alarm.id = self.store.add_alarm(alarm)
                self.listed[key] = alarm
                log.warning("alarm %d raised (%s): %s", alarm.id, cond.severity, cond.text)
                changed = True
            elif not alarm.active:
                alarm.active, alarm.cleared, alarm.text = True, None, cond.text
                alarm.count, alarm.last_raised = alarm.count + 1, now
                self.store.update_alarm(alarm)
                log.warning("alarm %d active again: %s", alarm.id, cond.text)
                changed = True
        for key in self._owned.get(topic, set()) - present.keys():
            alarm = self.listed.get(key)
            if alarm is None or not alarm.active:
                continue
            alarm.active, alarm.cleared = False, now
            self.store.update_alarm(alarm)
            log.info("alarm %d cleared: %s", alarm.id, alarm.text)
            if not alarm.listed:
                del self.listed[key]
            changed = True
        self._owned[topic] = set(present)
        return changed

    def acknowledge(self, target: str, by: str | None) -> list[int]:
        """Acknowledge alarm `target` (an id) or `all`; the ids acknowledged now.
        KeyError for an id that is not listed."""
        if target == "all":
            chosen = [a for a in self.listed.values() if not a.acknowledged]
        else:
            chosen = [a for a in self.listed.values() if str(a.id) == target]
            if not chosen:
                raise KeyError(target)
        now = self.clock()
        done = []
        for alarm in chosen:
            if alarm.acknowledged:
                continue
            alarm.acknowledged, alarm.ack_time, alarm.ack_by = True, now, by
            self.store.update_alarm(alarm)
            log.info("alarm %d acknowledged by %s", alarm.id, by or "?")
            if not alarm.listed:
                del self.listed[alarm.key]
            done.append(alarm.id)
        return done

    def summary(self) -> dict[str, Any]:
        alarms = sorted(self.listed.values(), key=lambda a: a.id)
        """`/alarms` (`AlarmList`)."""
        summary = AlarmList(
            alarms=[a.as_payload() for a in alarms],
            active=sum(a.active for a in alarms),
            unacknowledged=sum(not a.acknowledged for a in alarms),
            time=unix_time(self.clock()),
        )
        return dump(summary)


class AlarmService:
    """`/alarms` (retained list) and `/alarms/cmd/ack/{id|all}`.

    Besides the detectors, two kinds of alarm come from outside a topic's content:
    - `silent:<prefix>` (major): no live status from a source for `alarms.liveness_factor` x its
      heartbeat (trackerdcs.safety.liveness); cleared by its next live status;
    - `retained:<topic>` (minor): a command published with the retain flag sits on the broker
      (reported by the audit service, which sees commands); cleared when it is cleared.
    """

    def __init__(
        self, lab: LabConfig, store: Store, link: MqttLink, clock: Callable[[], float] = time.time,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:  # fmt: skip
        self.link = link
        self.book = AlarmBook(store, clock)
        self.routes = alarm_routes(lab)
        self._own = {ALARMS_PREFIX, AUDIT.prefix}
        self.loop = loop
        self.liveness = Liveness(heartbeats(lab), lab.alarms.liveness_factor)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf

    @staticmethod
    def subscriptions(lab: LabConfig) -> tuple[str, ...]:
        watched = (ServiceTopics(prefix).status for prefix in heartbeats(lab))
        return tuple(dict.fromkeys((*alarm_routes(lab), *watched, EVERY_SERVICE.availability)))

    def on_message(self, topic: str, payload: bytes, retained: bool = False) -> None:
        """A message of `subscriptions()`; `retained`: stored by the broker (not live)."""
        prefix, _, leaf = topic.rpartition("/")
        if leaf == "status" and not retained and self.liveness.live(prefix, time.monotonic()):
            self._judge(prefix)
        route = self.routes.get(topic)
        if route is None and topic.endswith("/availability"):
            prefix = topic.rsplit("/", 1)[0]
            route = None if prefix in self._own else ("availability", prefix)
        if route is None:
            return
        role, prefix = route
        detector, is_json = DETECTORS[role]
        text = payload.decode(errors="replace")
        if is_json:
            try:
                value = loads(text, topic) if text else None
            except JsonError as exc:
                log.error("ignoring a malformed message: %s", exc)
                return
        else:
            value = text.strip()
        where = f"the alarm detector of {topic}"
        try:
            conditions = detector(prefix, value)
        except Exception as exc:  # a message no detector foresaw: an alarm of its own
            reason = FAULTS.fault(where, exc, text)
            conditions = [Condition(f"fault:{topic}", "major", prefix, f"{topic}: {reason}")]
        else:
            FAULTS.ok(where)
        if self.book.observe(topic, conditions):
            self.publish()

    # -- liveness ---------------------------------------------------------------------------------
    def connection(self, up: bool) -> None:
        """The link (re)connected: every source's deadline starts now; lost: none is judged."""
        now = time.monotonic()
        if up:
            self.liveness.restart(now)
        else:
            self.liveness.suspend()
        self._schedule(now)

    def _judge(self, prefix: str) -> None:
        now = time.monotonic()
        silent = self.liveness.silent(prefix, now)
        found = [Condition(f"silent:{prefix}", "major", prefix, self.liveness.why(prefix))]
        if self.book.observe(f"{ServiceTopics(prefix).status} (live)", found if silent else []):
            self.publish()
        self._schedule(now)

    def _on_timer(self) -> None:
        self._timer, self._timer_at = None, math.inf
        for prefix in self.liveness.timeouts:
            self._judge(prefix)

    def _schedule(self, now: float) -> None:
        """One timer, at the next deadline (kept when an earlier one is set: it re-judges)."""
        due = self.liveness.next_due(now)
        if self.loop is None or (due is not None and self._timer_at <= due):
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._timer_at = None, math.inf
        if due is not None:
            self._timer = self.loop.call_later(due - now, self._on_timer)
            self._timer_at = due

    # -- retained commands ------------------------------------------------------------------------
    def retained_command(self, topic: str, payload: str | None) -> None:
        """A command published with the retain flag sits on `topic` (None: it was cleared)."""
        prefix, _ = split_command(topic)
        found = []
        if payload:
            found = [Condition(
                f"retained:{topic}", "minor", prefix,
                f"retained command on {topic} ({payload[:60]!r}) refused, never executed; "
                f"clear it: mosquitto_pub -r -t '{topic}' -n",
            )]  # fmt: skip
        if self.book.observe(topic, found):
            self.publish()

    def publish(self) -> None:
        self.link.publish_state(ALARMS_PREFIX, json.dumps(self.book.summary()))

    def handle_command(self, cmd: Command) -> None:
        parts = cmd.parts
        try:
            _, request_id = cmd.decoded()
        except PayloadError as exc:
            self.link.respond(cmd, False, str(exc))
            return
        if len(parts) != 2 or parts[0] != "ack" or not parts[1]:
            self.link.respond(
                cmd,
                False,
                f"unknown command {clip(cmd.action, 60)} (known: "
                + ", ".join(ALARMS.command(c) for c in COMMANDS)
                + ")",
            )
            return
        try:
            acked = self.book.acknowledge(parts[1], sender_of(request_id))
        except KeyError:
            listed = ", ".join(str(a.id) for a in self.book.listed.values()) or "none"
            self.link.respond(
                cmd, False, f"no listed alarm {clip(parts[1], 40)} (listed: {shorten(listed)})"
            )
            return
        self.publish()
        self.link.respond(cmd, True, None, acknowledged=acked)

    def start(self) -> None:
        self.publish()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
