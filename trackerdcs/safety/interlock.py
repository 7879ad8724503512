"""The interlock service: every rule evaluated on every incoming message, on one asyncio loop.

- Input: the status and availability of every source (power prefixes, chiller, sensors); a
  per-source deadline timer (not a poll) notices data that stops coming.
- A rule fires when its evaluator finds modules unsafe: the service sends the rule's action
  (`/hv/cmd/switch/{module}` off, or `/hv/cmd/kill/{module}`) for each of them whose HV is not
  known to be off, and `<chiller>/cmd/setpoint` when the rule raises its chiller; then publishes
  `/interlock/status` (retained: the power daemons inhibit switching on from it) and an event on
  `/interlock/action` (for the audit log).
- While a rule holds, an action whose effect is undone (HV seen on again, the set point seen
  lower) is sent again, at most every `reassert_interval` s.
- A value rule with a `hold` fires for a module only once its condition has held `hold` s
  without a break (a timer, not a poll, notices the end of the hold): one glitched sample does
  not act. Modules the rule already holds are not held again.
- A rule clears by itself when its condition has cleared (for `clear_delay` s); nothing is
  switched back on. Its alarm stays latched in the alarm service until acknowledged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Callable
from typing import Any

from trackerdcs.config import ChannelKind, LabConfig
from trackerdcs.guard import FAULTS, JsonError, clip, loads
from trackerdcs.mqtt import Command, MqttLink, PayloadError, unix_time
from trackerdcs.payloads import InterlockAction, InterlockRule, InterlockStatus, dump
from trackerdcs.safety.config import Action, rule_chiller, rule_modules
from trackerdcs.safety.rules import EPSILON, RULE_KINDS, RuleState, Verdict, reason_of
from trackerdcs.safety.sender import CommandSender
from trackerdcs.safety.world import World
from trackerdcs.topics import ServiceTopics, prefix_of

log = logging.getLogger(__name__)

SOURCE = "interlock"
COMMANDS = ("refresh", "reset/{rule}")  # under /interlock/cmd/
SETPOINT_TOLERANCE = 0.05  # K: a chiller set point this close to the safe one counts as it


def interlock_prefix(lab: LabConfig) -> str:
    """`/interlock` from `power.interlock_topic` (`/interlock/status`)."""
    return prefix_of(lab.power.interlock_topic)


def subscriptions(lab: LabConfig) -> tuple[str, ...]:
    """What the interlock service listens to, besides its commands."""
    world = World(lab)
    answers = {ServiceTopics(p).response for p, s in world.sources.items() if s.kind != "sensor"}
    return (*world.topics(), lab.power.interlock_topic, *sorted(answers))


class InterlockService:
    def __init__(
        self,
        lab: LabConfig,
        link: MqttLink,
        loop: asyncio.AbstractEventLoop,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.lab = lab
        self.cfg = lab.interlocks
        self.link = link
        self.loop = loop
        self.clock = clock
        self.world = World(lab)
        self.status_topic = lab.power.interlock_topic
        self.action_topic = ServiceTopics(interlock_prefix(lab)).action
        self.sender = CommandSender(link, SOURCE, stamp_time=False)  # run whenever they arrive
        now, wall = loop.time(), clock()
        self.states = [
            RuleState(
                rule,
                frozenset(rule_modules(lab, rule)),
                chiller=chiller.prefix if (chiller := rule_chiller(lab, rule)) else None,
                started=now,
                since=wall,
                armed=rule.kind != "chiller_running",
            )
            for rule in self.cfg.rules
        ]
        self._by_name = {s.rule.name: s for s in self.states}
        self._grace_until = now + self.cfg.startup_grace
        self._restored = False  # the retained status of an earlier run was read (or too late)
        self._published: tuple | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self._heartbeat: asyncio.TimerHandle | None = None

    # -- input (on the loop) ----------------------------------------------------------------------
    def on_message(self, topic: str, payload: bytes, retained: bool) -> None:
        if topic == self.status_topic:
            if retained and not self._restored and self.loop.time() < self._grace_until:
                self._restore(payload)
            self._restored = True  # anything later is our own
            return
        if topic.endswith("/response"):
            answer = self.sender.on_response(payload)
            if answer is not None and not answer.get("ok"):
                # refused, or an off not written on every channel (reasserted while HV is on)
                what = "did not do all of" if answer.get("not_written") else "refused"
                log.error("%s %s %s: %s", answer.get("topic"), what, answer.get("id"),
                          answer.get("error"))  # fmt: skip
            return
        if self.world.update(topic, payload, self.loop.time(), retained) is not None:
            self.evaluate()

    def _restore(self, payload: bytes) -> None:
        """Keep the arming of an earlier run: a restarted service must not forget that the
        chiller was running."""
        self._restored = True
        try:
            rules = loads(payload, self.status_topic)["rules"]
        except (JsonError, KeyError, TypeError):
            return
        for old in rules if isinstance(rules, list) else []:
            state = self._by_name.get(old.get("name")) if isinstance(old, dict) else None
            if state is not None and (old.get("armed") or old.get("active")):
                state.armed = True
        log.info("restored the arming of the previous run")
        self.evaluate()

    # -- evaluation -------------------------------------------------------------------------------
    def evaluate(self) -> None:
        """Every rule against the world now; act, publish, and set the next deadline."""
        now, wall = self.loop.time(), self.clock()
        for state in self.states:
            verdict, failed = self._verdict(state, now)
            self._apply(state, verdict if failed else self._held(state, verdict, now), now, wall)
            if state.active:
                self._reassert(state, now)
        if self._key() != self._published:
            self._maybe_publish(now)
        self._schedule(now)

    def _verdict(self, state: RuleState, now: float) -> tuple[Verdict, bool]:
        """The rule's verdict, and whether it could not be evaluated. A rule that cannot be
        evaluated (an unexpected exception: a bug, data no check foresaw) is reported
        (`trackerdcs.guard`) and holds every module it protects unsafe at once, without its
        `hold`, until it can be evaluated again: not knowing is not safe."""
        where = f"interlock rule {state.rule.name}"
        try:
            verdict = RULE_KINDS[state.rule.kind].evaluate(state.rule, self.world, state, now)
        except Exception as exc:
            data = {p: s.status for p, s in self.world.sources.items()}
            reason = FAULTS.fault(where, exc, data)
            why = f"cannot evaluate the rule: {reason}"
            return dict.fromkeys(sorted(state.protects), why), True
        FAULTS.ok(where)
        return verdict, False

    def _held(self, state: RuleState, verdict: Verdict, now: float) -> Verdict:
        """The part of `verdict` that has held for the rule's `hold` s (all of it without one)."""
        hold = getattr(state.rule, "hold", 0.0)
        if hold <= 0:
            return verdict
        for module in [m for m in state.pending if m not in verdict]:
            del state.pending[module]
        ready: Verdict = {}
        for module, why in verdict.items():
            if module not in state.pending and module not in state.affected:
                state.pending[module] = now
                log.warning("interlock %s: %s; acting if it holds %g s", state.rule.name, why,
                            hold)  # fmt: skip
            if module in state.affected or now + EPSILON >= state.pending[module] + hold:
                ready[module] = why
        return ready

    def _apply(self, state: RuleState, verdict: Verdict, now: float, wall: float) -> None:
        """Update one rule from its verdict: fire, extend or clear it."""
        name = state.rule.name
        if verdict:
            state.clear_pending = None
            state.reason = reason_of(verdict)
            unsafe = frozenset(verdict)
            if not state.active:
                state.active, state.affected = True, unsafe
                state.fired_at = state.since = wall
                state.last_sent.clear()  # a module seen on from now on is acted on at once
                log.error("interlock %s fired: %s", name, state.reason)
                sent = self._act(state, unsafe, now)
                self._event(state, "fired", unsafe, state.reason, sent, wall)
                return
            if unsafe != state.affected:
                added = unsafe - state.affected
                state.affected = unsafe
                if added:
                    log.error(
                        "interlock %s now also holds %s: %s",
                        name,
                        ", ".join(sorted(added)),
                        state.reason,
                    )
                    sent = self._act(state, added, now)
                    self._event(state, "extended", added, state.reason, sent, wall)
            return
        if not state.active:
            return
        if state.rule.clear_delay > 0:
            if state.clear_pending is None:
                state.clear_pending = now
            if now + EPSILON < state.clear_pending + state.rule.clear_delay:
                return
        state.active, state.clear_pending = False, None
        cleared = state.affected
        state.affected = frozenset()
        state.cleared_at = state.since = wall
        log.warning("interlock %s cleared (was: %s)", name, state.reason)
        self._event(state, "cleared", cleared, f"condition cleared (was: {state.reason})", [], wall)

    # -- actions ----------------------------------------------------------------------------------
    def _act(self, state: RuleState, modules: frozenset[str], now: float) -> list[str]:
        """The rule's action for `modules` (those whose HV is not known to be off already:
        one seen on later is acted on by `_reassert`), and the chiller's safe set point; the
        topics sent."""
        sent = []
        if state.rule.action is not Action.NONE:
            for module in sorted(modules):
                if not self.world.hv_off(module):
                    sent += self._switch_off(state, module, now)
        if state.rule.chiller_setpoint is not None and self._setpoint_low(state):
            sent.append(self._raise_setpoint(state, now))
        return sent

    def _switch_off(self, state: RuleState, module: str, now: float) -> list[str]:
        verb = "kill" if state.rule.action is Action.KILL else "switch"
        topics = []
        for prefix in self.world.prefixes(module, ChannelKind.HV):
            topic = ServiceTopics(prefix).command(verb, module)
            request_id = self.sender.send(topic, "off", state.rule.name)
            state.last_sent[topic] = now
            log.warning("interlock %s: %s (id %s)", state.rule.name, topic, request_id)
            topics.append(topic)
        return topics

    def _setpoint_low(self, state: RuleState) -> bool:
        """The chiller's set point is below the rule's safe one, or unknown."""
        setpoint = (self.world.chiller(state.chiller) or {}).get("setpoint")
        target = state.rule.chiller_setpoint
        return not isinstance(setpoint, int | float) or setpoint < target - SETPOINT_TOLERANCE

    def _raise_setpoint(self, state: RuleState, now: float) -> str:
        topic = ServiceTopics(state.chiller).command("setpoint")
        request_id = self.sender.send(topic, state.rule.chiller_setpoint, state.rule.name)
        state.last_sent[topic] = now
        log.warning(
            "interlock %s: %s %g (id %s)",
            state.rule.name,
            topic,
            state.rule.chiller_setpoint,
            request_id,
        )
        return topic

    def _reassert(self, state: RuleState, now: float) -> None:
        """Send an action again when its effect is seen undone (not more often than
        `reassert_interval`)."""
        interval = self.cfg.reassert_interval
        decided = self.clock()

        def due(topic: str) -> bool:
            return now - state.last_sent.get(topic, -math.inf) >= interval

        sent: list[str] = []
        modules = []
        if state.rule.action is not Action.NONE:
            verb = "kill" if state.rule.action is Action.KILL else "switch"
            for module in sorted(state.affected):
                topics = [
                    ServiceTopics(p).command(verb, module)
                    for p in self.world.prefixes(module, ChannelKind.HV)
                ]
                if self.world.hv_on(module) and any(due(t) for t in topics):
                    sent += self._switch_off(state, module, now)
                    modules.append(module)
        if state.rule.chiller_setpoint is not None and self._setpoint_low(state):
            topic = ServiceTopics(state.chiller).command("setpoint")
            if self.world.chiller(state.chiller) is not None and due(topic):
                sent.append(self._raise_setpoint(state, now))
        if sent:
            self._event(state, "reasserted", frozenset(modules), state.reason or "", sent, decided)

    def _event(
        self, state: RuleState, event: str, modules: frozenset[str], text: str, sent: list[str],
        when: float | None = None,
    ) -> None:  # fmt: skip
        """One automatic action on `/interlock/action` (the audit log keeps it). `when`: the
        time of the decision, before any command of it went out."""
        payload = InterlockAction(
            time=unix_time(self.clock() if when is None else when),
            source=SOURCE,
            event=event,
            rule=state.rule.name,
            modules=sorted(modules),
            text=text,
            commands=sent,
        )
        self.link.publish(self.action_topic, json.dumps(dump(payload)), qos=1)

    # -- status -----------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """`/interlock/status` (`InterlockStatus`)."""
        rules = [
            InterlockRule(
                name=s.rule.name,
                kind=s.rule.kind,
                active=s.active,
                reason=s.reason,
                modules=sorted(s.affected),
                protects=sorted(s.protects),
                action=s.rule.action.value,
                armed=s.armed,
                since=unix_time(s.since),
                fired_at=None if s.fired_at is None else unix_time(s.fired_at),
                cleared_at=None if s.cleared_at is None else unix_time(s.cleared_at),
            )
            for s in self.states
        ]
        status = InterlockStatus(
            rules=rules, active=[r.name for r in rules if r.active], time=unix_time(self.clock())
        )
        return dump(status)

    def _key(self) -> tuple:
        return tuple((s.active, s.affected, s.armed) for s in self.states)

    def _maybe_publish(self, now: float) -> None:
        """Publish on change; during the start-up grace only to add inhibits (retained
        statuses are still arriving: an early all-clear would lift an earlier run's)."""
        if now < self._grace_until and not any(s.active for s in self.states):
            return
        self.publish_status()

    def publish_status(self) -> None:
        self._published = self._key()
        self.link.publish_state(self.status_topic, json.dumps(self.status()))
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        self._heartbeat = self.loop.call_later(self.cfg.heartbeat, self.publish_status)

    def _schedule(self, now: float) -> None:
        """One timer, at the earliest time a verdict may change without a message."""
        times = [self._grace_until] if self._published is None else []
        for state in self.states:
            deadline = RULE_KINDS[state.rule.kind].deadline
            if deadline is not None:
                try:
                    due = deadline(state.rule, self.world, state, now)
                except Exception as exc:  # evaluated again soon (and reported by `_verdict`)
                    FAULTS.fault(f"interlock rule {state.rule.name}", exc)
                    due = now + self.cfg.reassert_interval
                if due is not None:
                    times.append(due)
            if state.clear_pending is not None:
                times.append(state.clear_pending + state.rule.clear_delay)
            hold = getattr(state.rule, "hold", 0.0)
            times += [since + hold for since in state.pending.values()]
        future = [t for t in times if t > now]
        when = min(future) if future else math.inf
        if when >= self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = self.loop.call_at(when, self._on_timer) if when < math.inf else None

    def _on_timer(self) -> None:
        self._timer, self._timer_at = None, math.inf
        self.evaluate()

    # -- life cycle and commands ------------------------------------------------------------------
    def start(self) -> None:
        log.info(
            "rules: %s",
            ", ".join(f"{s.rule.name} ({s.rule.kind}, {s.rule.action})" for s in self.states)
            or "none",
        )
        self.evaluate()

    def stop(self) -> None:
        for handle in (self._timer, self._heartbeat):
            if handle is not None:
                handle.cancel()

    def handle_command(self, cmd: Command) -> None:
        """`refresh`, or `reset/{rule}`: disarm a chiller_running rule (the chiller was stopped
        on purpose: the lab runs warm until it runs again)."""
        parts = cmd.parts
        try:
            cmd.decoded()
        except PayloadError as exc:
            self.link.respond(cmd, False, str(exc))
            return
        if parts == ["refresh"]:
            self.publish_status()
            self.link.respond(cmd, True, None)
            return
        if len(parts) == 2 and parts[0] == "reset":
            state = self._by_name.get(parts[1])
            if state is None:
                known = ", ".join(self._by_name) or "none"
                self.link.respond(cmd, False, f"no rule {clip(parts[1], 60)} (known: {known})")
                return
            if not RULE_KINDS[state.rule.kind].resettable:
                self.link.respond(
                    cmd,
                    False,
                    f"rule {state.rule.name} clears by itself when "
                    "its condition clears: nothing to reset",
                )
                return
            state.armed = False
            log.warning("interlock %s disarmed by %s", state.rule.name, cmd.request_id())
            self._event(state, "reset", frozenset(), "disarmed until the chiller runs again", [])
            self.evaluate()
            self.publish_status()
            self.link.respond(cmd, True, None)
            return
        prefix = interlock_prefix(self.lab)
        self.link.respond(
            cmd,
            False,
            f"unknown command {clip(cmd.action, 60)} (known: "
            + ", ".join(ServiceTopics(prefix).command(c) for c in COMMANDS)
            + ")",
        )
