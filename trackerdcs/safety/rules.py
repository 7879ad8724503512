"""Interlock rule kinds: one table, kind -> evaluator. Pure functions of the world and the time.

An evaluator returns the modules it finds unsafe now, each with why (`{"M1": "M1 at 31.2 C
..."}`); an empty dict means safe. Unknown data (no status yet, a null reading) is not judged by
the value rules: telling that data is missing or old is the `heartbeat` kind's job. A value rule's
`hold` (the time a condition must persist) is applied by the interlock service on top of the
verdict (`RuleState.pending`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from trackerdcs.julabo.protocol import JulaboStatus, StatusKind
from trackerdcs.safety.world import World

EPSILON = 0.001  # s: a deadline timer may fire this early


@dataclass
class RuleState:
    """One rule's state in the interlock service."""

    rule: Any  # a rule model of trackerdcs.safety.config
    protects: frozenset[str]  # the modules the rule protects
    started: float  # monotonic time the service started (heartbeats count from there)
    since: float  # wall time of the last change of `active`
    chiller: str | None = None  # the prefix of the chiller it watches or acts on (None: none)
    armed: bool = True  # chiller_running: armed once the chiller was seen cooling
    invalid_since: float | None = None  # chiller_running: when its status stopped being valid
    pending: dict[str, float] = field(default_factory=dict)  # hold: module -> unsafe since
    active: bool = False
    affected: frozenset[str] = frozenset()  # modules it holds unsafe while active
    reason: str | None = None  # why it fired (the last firing's, once cleared)
    fired_at: float | None = None  # wall time
    cleared_at: float | None = None  # wall time
    clear_pending: float | None = None  # monotonic time the condition cleared (clear_delay)
    last_sent: dict[str, float] = field(default_factory=dict)  # target -> monotonic time


Verdict = dict[str, str]  # unsafe module -> why
Evaluator = Callable[[Any, World, RuleState, float], Verdict]
Deadline = Callable[[Any, World, RuleState, float], float | None]


def _every(state: RuleState, why: str) -> Verdict:
    return dict.fromkeys(sorted(state.protects), why)


COOLING_STATES = frozenset({"RUNNING", "STOPPED", "ERROR", "MANUAL"})  # a status from the unit


def chiller_cooling(status: dict[str, Any], label: str = "chiller") -> tuple[bool | None, str]:
    """Whether a `/julabo/status` shows the unit cooling (None: no valid status), and why not
    (starting with `label`: `chiller`, or `chiller burnin` in a lab of several).

    Running (`03 REMOTE START`, and `01 MANUAL START`: operated from the front panel, still
    cooling) is cooling; so is a warning code (-03 excess temperature, -20 check cooling water,
    ...) while `running` is 1: the unit goes on. A STOP status, an alarm code (the unit stops;
    an unknown negative code counts as one) or `running` 0 is not."""
    state = status.get("state")
    if state not in COOLING_STATES:
        return None, f"{label} {state}"
    code, running = status.get("status_code"), status.get("running")
    detail = status.get("error") or status.get("status_text")
    why = f"{label} {state}" + (f" ({detail})" if detail else "")
    if isinstance(code, int) and code < 0:
        kind = JulaboStatus(code, "").kind
        if kind is StatusKind.ALARM:
            return False, why
    return running == 1, why


def chiller_not_running(rule: Any, world: World, state: RuleState, now: float) -> Verdict:
    """Unsafe when the chiller has stopped cooling once it has been cooling (`chiller_cooling`):
    a chiller that never ran leaves the lab warm on purpose. No valid status (DISCONNECTED) counts
    as stopped only `status_timeout` s after the status stopped being valid (the first such status
    arrived); until then an active rule stays active (not knowing is not safe).
    `/interlock/cmd/reset/{rule}` disarms it again."""
    status = world.chiller(state.chiller)
    if status is None:
        return {}
    cooling, why = chiller_cooling(status, world.chiller_label(state.chiller))
    if cooling is not None:
        state.invalid_since = None
        if cooling:
            state.armed = True
            return {}
        return _every(state, why) if state.armed else {}
    if state.invalid_since is None:
        state.invalid_since = world.sources[state.chiller or ""].received or now
    if not state.armed:
        return {}
    silent = now - state.invalid_since
    if silent + EPSILON >= rule.status_timeout:
        error = status.get("error")
        return _every(
            state,
            f"{why}: no valid status for {silent:.0f} s (status_timeout {rule.status_timeout:g} s)"
            + (f"; {error}" if error else ""),
        )
    return _every(state, state.reason or why) if state.active else {}


def chiller_deadline(rule: Any, world: World, state: RuleState, now: float) -> float | None:
    """When a DISCONNECTED chiller counts as stopped, if no valid status comes before."""
    status = world.chiller(state.chiller)
    if status is None or not state.armed or state.invalid_since is None:
        return None
    if chiller_cooling(status)[0] is not None:
        return None
    return state.invalid_since + rule.status_timeout


def module_too_hot(rule: Any, world: World, state: RuleState, now: float) -> Verdict:
    """Unsafe: a module whose temperature is above its limit (`limit`, else its sensor's
    `max_temperature`); safe again `hysteresis` K below it."""
    verdict: Verdict = {}
    for module in sorted(state.protects):
        for prefix in world.module_sensors.get(module, []):
            status = world.sensor(prefix) or {}
            temperature = status.get("temperature")
            limit = rule.limit if rule.limit is not None else world.sensor_limits.get(prefix)
            if not isinstance(temperature, int | float) or limit is None:
                continue
            threshold = limit - rule.hysteresis if module in state.affected else limit
            if temperature > threshold:
                verdict[module] = f"{module} at {temperature:.1f} C (limit {limit:g} C)"
    return verdict


def dewpoint_too_close(rule: Any, world: World, state: RuleState, now: float) -> Verdict:
    """Unsafe for every protected module: the coldest of their temperatures less than `margin`
    K above the room's dew point; safe again at `margin + hysteresis`."""
    room = world.sensor(f"/{rule.sensor}") or {}
    dewpoint = room.get("dewpoint")
    if room.get("too_dry") is True or not isinstance(dewpoint, int | float):
        return {}  # RH 0: no dew point, nothing can condense (null: the heartbeat's business)
    temperatures = [
        (t, prefix[1:])
        for module in state.protects
        for prefix in world.module_sensors.get(module, [])
        if isinstance(t := (world.sensor(prefix) or {}).get("temperature"), int | float)
    ]
    if not temperatures:
        return {}
    coldest, where = min(temperatures)
    margin = coldest - dewpoint
    threshold = rule.margin + rule.hysteresis if state.active else rule.margin
    if margin >= threshold:
        return {}
    return _every(
        state,
        f"{margin:.1f} K from the dew point {dewpoint:.1f} C ({where} at {coldest:.1f} C; "
        f"needs {rule.margin:g} K)",
    )


def _staleness(world: World, prefix: str, timeout: float, state: RuleState, now: float):
    """Why a source's data is unusable now, or None."""
    source = world.sources[prefix]
    if source.online is False:
        return f"{prefix} offline"
    if source.received is None:
        waited = now - state.started
        return f"no data from {prefix} for {waited:.1f} s" if waited + EPSILON >= timeout else None
    age = now - source.received + source.age
    if age + EPSILON >= timeout:
        return f"no data from {prefix} for {age:.1f} s (timeout {timeout:g} s)"
    if source.kind == "sensor" and source.status.get("stale"):
        return f"{prefix} stale: {source.status.get('error') or 'no good reading'}"
    return None


def sources_stale(rule: Any, world: World, state: RuleState, now: float) -> Verdict:
    """Unsafe: the modules a stale source concerns (a module sensor: its module; a power
    prefix: its modules; the chiller or a room sensor: every protected module)."""
    reasons: dict[str, list[str]] = {}
    for prefix, timeout in rule.sources.items():
        why = _staleness(world, prefix, timeout, state, now)
        if why is None:
            continue
        concerned = world.modules_of(prefix)
        for module in sorted(state.protects if concerned is None else concerned & state.protects):
            reasons.setdefault(module, []).append(why)
    return {module: "; ".join(whys) for module, whys in reasons.items()}


def heartbeat_deadline(rule: Any, world: World, state: RuleState, now: float) -> float | None:
    """The next time a watched source's data gets too old, if no message comes before."""
    times = []
    for prefix, timeout in rule.sources.items():
        source = world.sources[prefix]
        if source.received is None:
            times.append(state.started + timeout)
        else:
            times.append(source.received + timeout - source.age)
    future = [t for t in times if t > now]
    return min(future) if future else None


@dataclass(frozen=True)
class RuleKind:
    evaluate: Evaluator
    deadline: Deadline | None = None  # when the verdict may change without a message
    summary: str = ""
    # `/interlock/cmd/reset/{rule}` disarms it (the other kinds clear by themselves)
    resettable: bool = False


RULE_KINDS: dict[str, RuleKind] = {
    "chiller_running": RuleKind(
        chiller_not_running,
        chiller_deadline,
        summary="the chiller stopped cooling (once it has cooled), or gave no status too long",
        resettable=True,
    ),
    "module_temperature": RuleKind(
        module_too_hot, summary="a module's temperature is above its limit"
    ),
    "dewpoint_margin": RuleKind(
        dewpoint_too_close, summary="the coldest module is too close to the dew point"
    ),
    "heartbeat": RuleKind(
        sources_stale,
        heartbeat_deadline,
        summary="a source's data is older than its timeout, its daemon offline, a sensor stale",
    ),
}


def reason_of(verdict: Verdict) -> str:
    """One text for the rule: the distinct reasons, in module order."""
    return "; ".join(dict.fromkeys(verdict[m] for m in sorted(verdict)))
