"""An IV scan command's parameters, and the plan of each module's scan, checked against the lab
before anything moves.

The payload's value is a JSON object (`/dcs/cmd/ivscan/{module|all}`), every key but `stop`
and `step` optional (the lab YAML's `ivscan` section has the defaults):

- `start`, `stop`, `step` (V): the voltages, `start` (0) to `stop` by `step` (> 0; the last step
  may be shorter; `stop` below `start`: the scan goes down);
- `settle` (s), `readings`, `interval` (s): the wait at each step, the readings of `imon`
  averaged per step and the time between two;
- `compliance` (µA, default the channel's `iset`): the scan stops at it; it is also the
  channel's current limit (I0Set) meanwhile, so the supply trips beyond it;
- `end`: after a completed scan, `ramp_down` (off, at 0 V) or `previous` (back to its voltage
  and on/off state before the scan);
- `breakdown_slope`, `breakdown_min_current` (µA): the breakdown criterion (null: off), see
  `trackerdcs.ivscan.config`;
- `channel`: the HV channel, for a module with several; `operator`: who runs it (default: the
  sender of the command's id).

The value `stop` (plain or `{"value": "stop"}`) stops the scan instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from trackerdcs.commands import CommandError
from trackerdcs.config import ChannelKind, LabConfig
from trackerdcs.ivscan.config import EndAction, IvScanConfig, NonNegFloat, PositiveFloat

Volts = Annotated[float, Field(ge=0, allow_inf_nan=False)]
FAULT_STATES = frozenset({"TRIPPED", "ERROR", "DISCONNECTED"})


class ScanParams(BaseModel):
    """The parameters of one scan command (table above); unknown keys are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    start: Volts = 0.0
    stop: Volts
    step: PositiveFloat
    settle: NonNegFloat | None = None
    readings: int | None = Field(None, ge=1, le=1000)
    interval: PositiveFloat | None = None
    compliance: PositiveFloat | None = None
    end: EndAction | None = None
    breakdown_slope: PositiveFloat | None = None
    breakdown_min_current: NonNegFloat | None = None
    channel: str | None = None
    operator: str | None = Field(None, pattern=r"^[A-Za-z0-9_.@\- ]{1,64}$")


def parse_params(value: Any) -> ScanParams:
    """`ScanParams` from a command's value; `CommandError` naming every bad key."""
    if not isinstance(value, dict):
        raise CommandError(
            "an IV scan takes a JSON object of parameters (start, stop, step, settle, readings, "
            f"interval, compliance, end, ...) or 'stop', got {value!r}"
        )
    try:
        return ScanParams.model_validate(value)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"]) or "(parameters)"
            msg = "unknown parameter" if err["type"] == "extra_forbidden" else err["msg"]
            problems.append(f"{key}: {msg.removeprefix('Value error, ')}")
        raise CommandError("bad IV scan parameters: " + "; ".join(problems)) from None


def step_count(start: float, stop: float, step: float) -> int:
    """How many voltages `voltages(start, stop, step)` has (computed without making them)."""
    count = math.floor(abs(stop - start) / step + 1e-9) + 1
    last = start + math.copysign((count - 1) * step, stop - start)
    return count + (abs(last - stop) > 1e-6)


def voltages(start: float, stop: float, step: float) -> list[float]:
    """start, start ± step, ... up to and including stop (the last step may be shorter)."""
    span = stop - start
    sign = 1.0 if span >= 0 else -1.0
    count = math.floor(abs(span) / step + 1e-9)
    out = [round(start + sign * i * step, 6) for i in range(count + 1)]
    if abs(out[-1] - stop) > 1e-6:
        out.append(stop)
    return out


@dataclass
class ScanPlan:
    """One module's scan, fully resolved: what the procedure runs."""

    module: str
    channel: str
    scan_id: str
    voltages: list[float]
    settle: float
    readings: int
    interval: float
    compliance: float  # µA
    end: str
    breakdown_slope: float | None
    breakdown_min_current: float
    operator: str
    request_id: str | None
    parameters: dict[str, Any] = field(default_factory=dict)  # as resolved, for the results


def scan_id(module: str, now: datetime | None = None) -> str:
    """`M1-20240501T080000.123Z`: the module and the UTC start, to the millisecond."""
    now = now or datetime.now(UTC)
    return f"{module}-{now.strftime('%Y%m%dT%H%M%S')}.{now.microsecond // 1000:03d}Z"


def plan_scan(
    lab: LabConfig, module: str, params: ScanParams, *, operator: str, request_id: str | None,
    now: datetime | None = None,
) -> ScanPlan:  # fmt: skip
    """The plan of `module`'s scan; `CommandError` for anything the lab does not allow."""
    cfg: IvScanConfig = lab.ivscan
    hv = [c for c in lab.modules().get(module, []) if c.kind is ChannelKind.HV]
    if not hv:
        known = ", ".join(m for m, chs in lab.modules().items()
                          if any(c.kind is ChannelKind.HV for c in chs))  # fmt: skip
        raise CommandError(f"no module {module!r} with an HV channel (known: {known or 'none'})")
    if params.channel is not None:
        chosen = [c for c in hv if c.name == params.channel]
        if not chosen:
            names = ", ".join(c.name for c in hv)
            raise CommandError(
                f"channel: {params.channel!r} is no HV channel of {module} ({names})"
            )
    elif len(hv) > 1:
        names = ", ".join(c.name for c in hv)
        raise CommandError(f"{module} has several HV channels ({names}): say which (channel)")
    else:
        chosen = hv
    channel = chosen[0]
    limits = lab.limits_for(channel)
    for key in ("start", "stop"):
        volts = getattr(params, key)
        if volts > limits.vmax:
            raise CommandError(
                f"{key}: {volts:g} V exceeds the maximum {limits.vmax:g} V of {channel.name}"
            )
    compliance = params.compliance if params.compliance is not None else limits.iset
    if compliance > limits.imax:
        raise CommandError(
            f"compliance: {compliance:g} uA exceeds the maximum {limits.imax:g} uA of "
            f"{channel.name} (imax)"
        )
    count = step_count(params.start, params.stop, params.step)
    if count > cfg.max_steps:  # refused before the list is made (a step of 1e-9 V ...)
        raise CommandError(
            f"{count} steps exceed the {cfg.max_steps} a scan may have (ivscan.max_steps)"
        )
    steps = voltages(params.start, params.stop, params.step)
    slope = params.breakdown_slope if "breakdown_slope" in params.model_fields_set else (
        cfg.breakdown_slope
    )  # fmt: skip
    plan = ScanPlan(
        module=module, channel=channel.name, scan_id=scan_id(module, now), voltages=steps,
        settle=cfg.settle if params.settle is None else params.settle,
        readings=params.readings or cfg.readings,
        interval=params.interval or cfg.interval,
        compliance=compliance, end=params.end or cfg.end, breakdown_slope=slope,
        breakdown_min_current=(cfg.breakdown_min_current if params.breakdown_min_current is None
                               else params.breakdown_min_current),
        operator=params.operator or operator, request_id=request_id,
    )  # fmt: skip
    plan.parameters = {
        "start": params.start, "stop": params.stop, "step": params.step,
        "settle": plan.settle, "readings": plan.readings, "interval": plan.interval,
        "compliance": plan.compliance, "end": plan.end, "breakdown_slope": plan.breakdown_slope,
        "breakdown_min_current": plan.breakdown_min_current,
    }  # fmt: skip
    return plan


def check_channel(plan: ScanPlan, status: dict[str, Any] | None) -> None:
    """Refuse a scan whose channel is unknown yet, or TRIPPED, in ERROR or DISCONNECTED."""
    if status is None:
        raise CommandError(f"{plan.channel}: no status from its power daemon yet")
    if status.get("state") in FAULT_STATES:
        raise CommandError(
            f"{plan.channel} is {status.get('state')}: clear it before scanning"
        )  # fmt: skip
