"""The MQTT contract's payloads as pydantic models, shared by the daemons that publish them and
the services that read them.

docs/topics.md is the human-readable contract; each model here is one of its
`<!-- contract:NAME -->` tables (`CONTRACT_TABLES` maps the names), and
tests/test_payload_contract.py keeps the two equal, key for key and type for type. A publisher
builds its payload through its model (`dump(Model(...))`), so a renamed or missing key fails
in the unit tests of the publisher, not in an end-to-end run; a reader names the keys it reads
through the model (`key(Model, "name")`, checked at import) or parses with `parse`, which never
raises.

Conventions of every model (docs/topics.md, "Conventions"):

- every time is a JSON number, unix seconds (UTC), a float to the millisecond (`time`,
  `since`, `fired_at`, ...); every `float` field stays a float in JSON, even `0.0` (a key keeps
  one JSON type forever: InfluxDB must never see a field-type conflict), and none is ever
  `NaN` or infinite (the models refuse them);
- a value the daemon does not know is `None` (JSON `null`), never a number passed off as a
  reading, and never a missing key: every key of a status is always present;
- field order is the order of the documented table, which is the order they are published in.

This module imports nothing of the project: both ends of every topic may import it.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

ONLINE: Literal["online"] = "online"
OFFLINE: Literal["offline"] = "offline"
Availability = Literal["online", "offline"]
"""`<prefix>/availability`: retained plain text, `ONLINE` or `OFFLINE` (the service's last will,
and its clean stop)."""


class Payload(BaseModel):
    """A published JSON object: no key beyond the documented ones, numbers finite."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def dump(payload: Payload, **kwargs: Any) -> dict[str, Any]:
    """The payload as the JSON object published: every key, in the documented order."""
    return payload.model_dump(mode="json", **kwargs)


M = TypeVar("M", bound="Payload")


def parse(model: type[M], data: Any) -> M | None:
    """`data` (a decoded JSON value) read as `model`, or None when it is not one: readers stay
    total on whatever a topic carries (a retained message of another version, garbage)."""
    try:
        return model.model_validate(data)
    except (ValidationError, TypeError, ValueError):
        return None


def key(model: type[Payload], name: str) -> str:
    """`name`, checked to be a key of `model` when the reader is imported: a reader that names
    its keys this way fails at import when the contract renames one."""
    if name not in model.model_fields:
        raise KeyError(f"{model.__name__} has no key {name!r}: {sorted(model.model_fields)}")
    return name


# -- command answers: `<prefix>/response` ----------------------------------------------------------


class CommandAnswer(Payload):
    """One answer per command on `<prefix>/response` (and the caller's MQTT 5 response topic).

    `topic`, `payload`, `ok`, `error` and `id` are in every answer; `channels`, `not_written`
    and `warning` only where they apply (dump with `exclude_unset=True`); a service adds its
    own keys (`modules`, `scans`, `acknowledged`, `run`, ...), kept after the documented ones.
    Source: `trackerdcs.mqtt.MqttLink.respond`."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    topic: str
    payload: str
    ok: bool
    error: str | None
    id: str | None
    channels: list[str] | None = None
    not_written: list[str] | None = None
    warning: str | None = None


ANSWER_KEYS = ("topic", "payload", "ok", "error", "id")
"""The keys of every answer, first, in this order."""


def answer_payload(
    topic: str, payload: str, ok: bool, error: str | None, request_id: str | None, **extra: Any
) -> dict[str, Any]:
    """The JSON object of a command's answer: `ANSWER_KEYS`, then `extra` in the order given
    (its documented keys checked for their type)."""
    answer = CommandAnswer(topic=topic, payload=payload, ok=ok, error=error, id=request_id, **extra)
    data = answer.model_dump(mode="json", exclude_unset=True)
    return {name: data[name] for name in (*ANSWER_KEYS, *extra)}


# -- power: `/hv`, `/lv` ---------------------------------------------------------------------------


class PowerChannelStatus(Payload):
    """One channel's object of `<power>/status` (a JSON array, sorted by `number`).

    Source: `trackerdcs.power.channel.PowerChannel` (readbacks of the CAEN parameters `Pw`,
    `V0Set`, `VMon`, `IMon`, `I0Set`, `Status`); `time` is stamped at publication by
    `trackerdcs.power.service.PowerService.publish_status`."""

    number: int
    name: str
    module: str
    on: int
    vreq: float  # V
    vmon: float  # V
    imon: float  # µA (HV) or A (LV)
    ilim: float  # µA (HV) or A (LV)
    status: int  # the raw CAEN Status bit field
    flags: list[str]
    state: str
    interlocks: list[str]
    time: float


class PowerState(Payload):
    """`<power>/state`: the aggregate of a prefix's channels, its fail-safe note and warnings.
    Source: `trackerdcs.power.service.PowerService._publish_state`."""

    state: str
    channels: int
    counts: dict[str, int]
    failsafe: str | None
    warnings: list[str]


# -- chillers: `/julabo` ---------------------------------------------------------------------------


class ChillerStatus(Payload):
    """`<chiller>/status`: a Julabo circulator's readings, °C and % (null when unknown).
    Source: `trackerdcs.julabo.fsm` (`as_status`), stamped by `trackerdcs.julabo.service`."""

    chiller: str
    state: str
    model: str
    status_code: int | None
    status_text: str | None
    bath_temp: float | None  # °C, IN_PV_00
    external_temp: float | None  # °C
    power: float | None  # %, negative when cooling
    setpoint: float | None  # °C
    active_setpoint: int | None  # 1..3
    high_limit: float | None  # °C
    low_limit: float | None  # °C
    running: int | None  # IN_MODE_05
    error: str | None
    time: float


# -- sensors ---------------------------------------------------------------------------------------


class SensorStatus(Payload):
    """`/<sensor>/status`: a room (temperature, humidity, dew point) or module sensor, °C and
    % RH. Source: `trackerdcs.sensors.sensor.Sensor.snapshot`, stamped by the sensor service."""

    name: str
    kind: str
    module: str
    temperature: float | None  # °C
    humidity: float | None  # % RH
    dewpoint: float | None  # °C (Magnus, Sonntag 1990)
    too_dry: bool
    humidity_clamped: bool
    max_temperature: float | None  # °C
    stale: bool
    age: float | None  # s
    error: str | None
    time: float


# -- data path: `/ingest` --------------------------------------------------------------------------


class IngestStatus(Payload):
    """`/ingest/status`: the ingest bridge's counters. Source: `trackerdcs.ingest.bridge`."""

    received: int
    rejected: int
    metrics: int
    written: int
    dropped: int
    buffered: int
    write_errors: int
    errors: int
    influxdb: str
    uptime: float  # s
    time: float


# -- interlocks: `/interlock` ----------------------------------------------------------------------


class InterlockRule(Payload):
    """One rule of `/interlock/status`. Source: `trackerdcs.safety.interlock`."""

    name: str
    kind: str
    active: bool
    reason: str | None
    modules: list[str]
    protects: list[str]
    action: str
    armed: bool
    since: float
    fired_at: float | None
    cleared_at: float | None


class InterlockStatus(Payload):
    """`/interlock/status` (retained): every rule, the active ones' names. The power daemons
    inhibit switching on from it. Source: `trackerdcs.safety.interlock.InterlockService.status`."""

    rules: list[InterlockRule]
    active: list[str]
    time: float


class InterlockAction(Payload):
    """`/interlock/action`: one automatic decision. Source: `trackerdcs.safety.interlock`."""

    time: float
    source: str
    event: str
    rule: str
    modules: list[str]
    text: str
    commands: list[str]


class SupervisionHeartbeat(Payload):
    """`<safety prefix>/supervision` (not retained, QoS 0): a live safety service's heartbeat,
    judged by `time` (when it was sent) by the power daemons' fail-safe.
    Source: `trackerdcs.safety.interlock` (publisher), `trackerdcs.power.daemon` (reader)."""

    time: float
    source: str
    interval: float  # s until the next one
    seq: int


# -- alarms: `/alarms` -----------------------------------------------------------------------------


class Alarm(Payload):
    """One listed alarm of `/alarms`. Source: `trackerdcs.safety.alarms` (its SQLite store)."""

    id: int
    severity: str
    source: str
    text: str
    time: float
    active: bool
    cleared: float | None
    count: int
    acknowledged: bool
    ack_time: float | None
    ack_by: str | None
    key: str
    last_time: float


class AlarmList(Payload):
    """`/alarms` (retained): the listed alarms and their counts.
    Source: `trackerdcs.safety.alarms.AlarmService`."""

    alarms: list[Alarm]
    active: int
    unacknowledged: int
    time: float


# -- module sequencing: `/dcs` ---------------------------------------------------------------------


class SequenceStep(Payload):
    """One step of a module sequence, in the answer's `modules.<name>.steps`.
    Source: `trackerdcs.safety.sequencer`."""

    step: str
    ok: bool
    detail: str
    time: float


class SequenceAction(Payload):
    """`/dcs/action`: a sequence's start, steps and end. Source: `trackerdcs.safety.sequencer`."""

    time: float
    source: str
    event: str
    module: str
    modules: list[str]
    direction: str
    step: str | None
    ok: bool | None
    text: str
    id: str | None


class ModuleSequence(Payload):
    """One module's object of `/dcs/status`. Source: `trackerdcs.safety.sequencer`."""

    state: str
    step: str | None
    error: str | None
    since: float


class SequencerStatus(Payload):
    """`/dcs/status` (retained): module name -> its sequence state."""

    modules: dict[str, ModuleSequence]
    time: float


# -- IV scans: `/dcs/ivscan/...` -------------------------------------------------------------------


class IvScanState(Payload):
    """One module's latest scan in `/dcs/ivscan/status`, V and µA.
    Source: `trackerdcs.ivscan.procedure.IvScan.status` (`idle_status` before the first)."""

    state: str
    scan: str | None
    channel: str | None
    operator: str | None
    step: int
    steps: int
    vset: float | None  # V
    vmon: float | None  # V
    imon: float | None  # µA
    outcome: str | None
    reason: str | None
    files: list[str]
    started: float | None
    ended: float | None
    id: str | None
    recipe: str | None


class IvScanStatus(Payload):
    """`/dcs/ivscan/status` (retained): module name -> its latest scan."""

    scans: dict[str, IvScanState]
    time: float


class IvScanPoint(Payload):
    """`/dcs/ivscan/points`: one measured step, V, µA, °C, % RH.
    Source: `trackerdcs.ivscan.procedure`."""

    scan: str
    module: str
    channel: str
    step: int
    vset: float  # V
    vmon: float  # V
    imon: float  # µA
    imon_std: float  # µA
    readings: int
    temperature: float | None  # °C
    room_temperature: float | None  # °C
    humidity: float | None  # % RH
    dewpoint: float | None  # °C
    time: float


class IvScanAction(Payload):
    """`/dcs/ivscan/action`: a scan's start, steps and end. Source: `trackerdcs.ivscan.service`."""

    time: float
    source: str
    event: str
    module: str
    modules: list[str]
    scan: str
    step: int | None
    ok: bool | None
    text: str
    id: str | None


class IvScanResult(Payload):
    """One past scan of `/dcs/ivscan/results`. Source: `trackerdcs.ivscan.index`."""

    scan: str
    module: str
    channel: str | None
    operator: str | None
    outcome: str | None
    reason: str | None
    started: float | None
    ended: float | None
    steps: int
    recipe: str | None
    csv: str
    png: str | None


class IvScanResults(Payload):
    """`/dcs/ivscan/results` (retained): the past scans, newest first."""

    scans: list[IvScanResult]
    time: float


# -- recipes: `/dcs/recipe/...` --------------------------------------------------------------------


class RecipeScan(Payload):
    """One IV scan of a recipe run, in `/dcs/recipe/status` `scans`."""

    scan: str
    module: str
    path: str
    outcome: str | None


class RecipeStatus(Payload):
    """`/dcs/recipe/status` (retained): the latest run, s for the times left.
    Source: `trackerdcs.recipe.procedure` (`status`), `trackerdcs.recipe.service`."""

    state: str
    recipe: str | None
    run: str | None
    file: str | None
    operator: str | None
    modules: list[str]
    step: int
    steps: int
    path: str | None
    text: str | None
    repetition: int | None
    repetitions: int | None
    time_left: float | None  # s
    min_time_left: float | None  # s
    waiting: str | None
    paused: str | None
    on_interlock: str | None
    outcome: str | None
    reason: str | None
    scans: list[RecipeScan]
    started: float | None
    ended: float | None
    id: str | None
    recipes: list[str]
    time: float


class RecipeAction(Payload):
    """`/dcs/recipe/action`: a run's start, steps, pauses and end.
    Source: `trackerdcs.recipe.service`."""

    time: float
    source: str
    event: str
    recipe: str
    run: str
    modules: list[str]
    path: str | None
    step: int | None
    ok: bool | None
    text: str
    id: str | None


# -- audit log: `/dcs/log`, `/audit` ---------------------------------------------------------------


class AuditRecord(Payload):
    """One record of the audit log (`/dcs/log`, the `/audit/cmd/query` answer's `records`).
    Source: `trackerdcs.safety.audit`."""

    seq: int
    time: float
    kind: str
    source: str
    event: str | None
    topic: str
    payload: str
    id: str | None
    modules: list[str]
    text: str | None
    ok: bool | None
    error: str | None


CONTRACT_TABLES: dict[str, type[Payload]] = {
    "response": CommandAnswer,
    "power-status": PowerChannelStatus,
    "power-state": PowerState,
    "julabo-status": ChillerStatus,
    "sensor-status": SensorStatus,
    "ingest-status": IngestStatus,
    "interlock-status": InterlockStatus,
    "interlock-rule": InterlockRule,
    "interlock-action": InterlockAction,
    "supervision": SupervisionHeartbeat,
    "alarms": AlarmList,
    "alarm": Alarm,
    "dcs-step": SequenceStep,
    "dcs-action": SequenceAction,
    "dcs-status": SequencerStatus,
    "dcs-module": ModuleSequence,
    "ivscan-status": IvScanStatus,
    "ivscan-scan": IvScanState,
    "ivscan-point": IvScanPoint,
    "ivscan-action": IvScanAction,
    "ivscan-results": IvScanResults,
    "ivscan-result": IvScanResult,
    "recipe-status": RecipeStatus,
    "recipe-scan": RecipeScan,
    "recipe-action": RecipeAction,
    "audit-record": AuditRecord,
}
"""docs/topics.md's `<!-- contract:NAME -->` table -> the model of that payload."""
