"""The audit log: every command seen on the broker with its answer, and every automatic action
the safety services report, kept in SQLite and published on `/dcs/log`.

- commands: `/+/cmd/#` (subscribed "retain as published", trackerdcs.mqtt); the sender is the
  MQTT 5 user property `client_id` when the caller set one, else the part of the request id
  before `:` (`interlock:chiller_running:3`), else `unknown`. MQTT gives subscribers no client
  id of their own. A command published with the retain flag is recorded once (text
  `retained: ...`), not again each time the broker delivers it anew; the table of retained
  commands seen lives in the store, so a restart does not record it again either. Whoever
  wants to know (the alarm service) is told through `on_retained`.
- answers: `/+/response`, matched to the oldest unanswered command with the same topic and
  payload; the record is published again with `ok` and `error`.
- actions: `/+/action` (`/interlock/action`, `/dcs/action`) and `/dcs/+/action` (the IV
  scans' and the recipes' steps), JSON objects with `time`, `source`, `event`, `modules`,
  `text`.

`/audit/cmd/query` lists records by time range, module, source and kind.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from trackerdcs.commands import sender_of
from trackerdcs.config import LabConfig
from trackerdcs.guard import JsonError, clip, loads, shorten
from trackerdcs.mqtt import Command, MqttLink, PayloadError
from trackerdcs.safety.clock import parse_when
from trackerdcs.safety.store import Store
from trackerdcs.topics import AUDIT, DCS, EVERY_SERVICE, SINGLE_LEVEL, is_command, split_command

log = logging.getLogger(__name__)

AUDIT_PREFIX = AUDIT.prefix
LOG_TOPIC = DCS.leaf("log")
PENDING_FOR = 60.0  # s a command waits for its answer before it is no longer matched
# s after (re)connecting by which the broker has delivered its retained commands: one not seen
# again by then was cleared while we were away
RETAINED_SWEEP = 3.0
RETAINED_NOTE = "retained: never executed (clear it with an empty retained message)"
COMMANDS = ("query",)  # under /audit/cmd/
# the dcs daemon's procedures' steps: /dcs/ivscan/action, /dcs/recipe/action
PROCEDURE_ACTIONS = DCS.below(SINGLE_LEVEL).action
QUERY_KEYS = {"since", "until", "module", "source", "kind", "limit"}


class ModuleResolver:
    """The modules a command concerns, from its topic (`/hv/cmd/switch/hv_m1` -> M1)."""

    def __init__(self, lab: LabConfig) -> None:
        self.power: dict[str, dict[str, str]] = {}  # prefix -> channel number or name -> module
        for ch in lab.power.channels:
            prefix = lab.crate_of(ch).prefixes[ch.kind]
            names = self.power.setdefault(prefix, {})
            if ch.module:
                names[str(ch.number)] = names[ch.name] = names[ch.module] = ch.module
        self.modules = set(lab.modules())

    def __call__(self, topic: str) -> list[str]:
        prefix, action = split_command(topic)
        parts = action.split("/")
        if prefix in self.power and len(parts) == 2:
            if parts[1] == "all":
                return ["*"]
            module = self.power[prefix].get(parts[1])
            return [module] if module else []
        if prefix == DCS.prefix and len(parts) == 2 and parts[0] in ("module", "ivscan"):
            return ["*"] if parts[1] == "all" else [parts[1]] if parts[1] in self.modules else []
        return []


def user_property(properties: Any, name: str) -> str | None:
    for key, value in getattr(properties, "UserProperty", None) or []:
        if key == name:
            return value
    return None


def request_id_of(payload: str) -> str | None:
    if not payload.lstrip().startswith("{"):
        return None
    try:
        obj = loads(payload)
    except JsonError:
        return None
    return _text(obj.get("id")) if isinstance(obj, dict) else None


def _text(value: Any, limit: int = 1000) -> str | None:
    """A string field of a message as the log keeps it: a string or a number as text (at
    most `limit` characters), None otherwise."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    text = value if isinstance(value, str) else clip(value, 60)
    return text[:limit]


def _epoch(value: Any, default: float) -> float:
    """An action's `time` (unix s), or `default` when it has none."""
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return default


class AuditService:
    def __init__(
        self, lab: LabConfig, store: Store, link: MqttLink, clock: Callable[[], float] = time.time,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:  # fmt: skip
        self.cfg = lab.alarms
        self.store = store
        self.link = link
        self.clock = clock
        self.loop = loop
        self.modules_of = ModuleResolver(lab)
        self._pending: dict[tuple[str, str], deque[tuple[int, float]]] = {}
        # told about retained commands: (topic, payload), payload None once cleared
        self.on_retained: Callable[[str, str | None], None] | None = None
        self._retained_seen: set[str] = set()  # topics delivered retained since connecting
        self._sweep: asyncio.TimerHandle | None = None

    @staticmethod
    def subscriptions() -> tuple[str, ...]:
        every = EVERY_SERVICE
        return (every.commands, every.response, every.action, PROCEDURE_ACTIONS)

    # -- input (on the loop) ----------------------------------------------------------------------
    def on_message(
        self, topic: str, payload: bytes, properties: Any = None, retained: bool = False
    ) -> None:
        """Every message of `subscriptions()`; `retained`: the retain flag as published. The
        service's own commands come this way too (its link has no command subscription:
        Mosquitto would deliver them twice), through the same gate as every command."""
        text = payload.decode(errors="replace")
        if is_command(topic):
            client = user_property(properties, "client_id")
            if retained:
                self._retained_command(topic, text, client)
            else:
                self.record_command(topic, text, client)
            own = AUDIT.command_root
            if topic.startswith(own):
                cmd = Command(
                    topic=topic, action=topic[len(own):], payload=text,
                    response_topic=getattr(properties, "ResponseTopic", None),
                    correlation_data=getattr(properties, "CorrelationData", None),
                    retained=retained, arrived=self.clock(),
                    expiry=getattr(properties, "MessageExpiryInterval", None),
                )  # fmt: skip
                if self.link.admit(cmd):
                    self.link.execute(self.handle_command, cmd)
        elif topic.endswith("/response"):
            self._answer(text)
        elif topic.endswith("/action"):
            self._action(topic, text)

    def record_command(
        self, topic: str, payload: str, client: str | None = None, text: str | None = None
    ) -> int:
        now = self.clock()
        request_id = request_id_of(payload)
        seq = self.store.add_record(
            t=now,
            kind="command",
            source=client or sender_of(request_id) or "unknown",
            topic=topic,
            payload=payload,
            request_id=request_id,
            modules=self.modules_of(topic),
            text=text,
        )
        self._pending.setdefault((topic, payload), deque()).append((seq, now))
        self._expire(now)
        self._publish(seq)
        return seq

    # -- retained commands ------------------------------------------------------------------------
    def _retained_command(self, topic: str, payload: str, client: str | None) -> None:
        """A command with the retain flag: recorded the first time it is seen; an empty one
        clears it (`mosquitto_pub -r -t TOPIC -n`)."""
        if not payload:
            self._retained_seen.discard(topic)
            if self.store.forget_retained(topic):
                log.info("retained command on %s cleared", topic)
                self._tell(topic, None)
            return
        self._retained_seen.add(topic)
        if self.store.retained_commands().get(topic) == payload:
            return  # delivered again (a reconnection, a restart): recorded already
        log.warning("retained command on %s: %r (refused by its daemon)", topic, payload[:200])
        self.store.remember_retained(topic, payload, self.clock())
        self.record_command(topic, payload, client, RETAINED_NOTE)
        self._tell(topic, payload)

    def _tell(self, topic: str, payload: str | None) -> None:
        if self.on_retained is not None:
            self.on_retained(topic, payload)

    def connection(self, up: bool) -> None:
        """(Re)connected: retained commands not delivered again soon were cleared meanwhile."""
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        if up and self.loop is not None:
            self._retained_seen = set()
            self._sweep = self.loop.call_later(RETAINED_SWEEP, self._sweep_retained)

    def _sweep_retained(self) -> None:
        self._sweep = None
        for topic in set(self.store.retained_commands()) - self._retained_seen:
            self.store.forget_retained(topic)
            log.info("retained command on %s was cleared while we were away", topic)
            self._tell(topic, None)

    def _answer(self, text: str) -> None:
        try:
            answer = loads(text)
            key = (answer["topic"], answer["payload"])
            hash(key)
        except (ValueError, KeyError, TypeError):
            return
        waiting = self._pending.get(key)
        if not waiting:
            return
        seq, _ = waiting.popleft()
        if not waiting:
            del self._pending[key]
        self.store.set_answer(seq, answer.get("ok") is True, _text(answer.get("error")))
        self._publish(seq)

    def _action(self, topic: str, text: str) -> None:
        try:
            event = loads(text, topic)
        except JsonError as exc:
            event = str(exc)
        if not isinstance(event, dict):
            log.error("ignoring a malformed %s: %s", topic, clip(event, 200))
            return
        modules = event.get("modules")
        ok = event.get("ok")
        seq = self.store.add_record(
            t=_epoch(event.get("time"), self.clock()),
            kind="action",
            source=_text(event.get("source"), 100) or topic.split("/")[1],
            topic=topic,
            payload=text,
            event=_text(event.get("event"), 100),
            request_id=_text(event.get("id"), 200),
            modules=[m for m in modules if isinstance(m, str)] if isinstance(modules, list) else [],
            text=_text(event.get("text")),
            ok=ok if isinstance(ok, bool) else None,
        )
        self._publish(seq)

    def _expire(self, now: float) -> None:
        for key in [k for k, q in self._pending.items() if q and now - q[0][1] > PENDING_FOR]:
            queue = self._pending[key]
            while queue and now - queue[0][1] > PENDING_FOR:
                queue.popleft()
            if not queue:
                del self._pending[key]

    def _publish(self, seq: int) -> None:
        self.link.publish(LOG_TOPIC, json.dumps(self.store.record(seq)), qos=1)

    # -- queries ----------------------------------------------------------------------------------
    def query(self, spec: Any) -> tuple[list[dict[str, Any]], bool]:
        """Records for a query object (`since`, `until`, `module`, `source`, `kind`, `limit`);
        ValueError for a bad one. Default: the last hour."""
        if spec in (None, ""):
            spec = {}
        if not isinstance(spec, dict):
            raise ValueError("a query is a JSON object: since, until, module, source, kind, limit")
        unknown = set(spec) - QUERY_KEYS
        if unknown:
            raise ValueError(
                f"unknown query key(s) {shorten(', '.join(sorted(unknown)), 80)} "
                f"(known: {', '.join(sorted(QUERY_KEYS))})"
            )
        for key in ("module", "source", "kind"):
            if spec.get(key) is not None and not isinstance(spec[key], str):
                raise ValueError(f"{key} must be a string, got {clip(spec[key], 40)}")
        now = self.clock()
        limit = spec.get("limit", self.cfg.query_limit)
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise ValueError(f"limit must be a positive integer, got {clip(limit, 40)}")
        return self.store.records(
            since=parse_when(spec.get("since", "1h"), now),
            until=None if spec.get("until") is None else parse_when(spec["until"], now),
            module=spec.get("module"),
            source=spec.get("source"),
            kind=spec.get("kind"),
            limit=min(limit, self.cfg.query_limit),
        )

    def handle_command(self, cmd: Command) -> None:
        """`/audit/cmd/query`: answered with the records."""
        if cmd.action != "query":
            self.link.respond(
                cmd,
                False,
                f"unknown command {clip(cmd.action, 60)} (known: {AUDIT.command(COMMANDS[0])})",
            )
            return
        try:
            value, _ = cmd.decoded()
            if isinstance(value, str) and value.strip().startswith("{"):
                value = loads(value, "query")
            records, truncated = self.query(value)
        except (PayloadError, ValueError) as exc:
            self.link.respond(cmd, False, str(exc))
            return
        self.link.respond(cmd, True, None, records=records, count=len(records), truncated=truncated)

    def prune(self) -> None:
        removed = self.store.prune(self.clock() - self.cfg.audit_keep_days * 86400)
        if removed:
            log.info(
                "removed %d audit record(s) older than %g days", removed, self.cfg.audit_keep_days
            )

    def start(self) -> None:
        self.prune()

    def stop(self) -> None:
        if self._sweep is not None:
            self._sweep.cancel()
