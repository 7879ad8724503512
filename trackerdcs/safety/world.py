"""The lab as the safety services see it on MQTT: every source's latest status, whether its
daemon is online, and when the status arrived. Pure state: the caller passes the time.

A source is a service prefix of the lab YAML: a power prefix (`/hv`, `/lv`: a JSON array of
channels), a chiller (`/julabo`) or a sensor (`/temp_m1`), each with `<prefix>/status` and
`<prefix>/availability` (docs/topics.md).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from trackerdcs.config import ChannelKind, LabConfig
from trackerdcs.guard import JsonError, clip, finite_number, loads
from trackerdcs.payloads import OFFLINE
from trackerdcs.topics import ServiceTopics

log = logging.getLogger(__name__)

LIVE_STATES = frozenset({"ON", "RAMPING_UP", "RAMPING_DOWN"})

# The keys the safety services read from each kind of status, with the JSON types they may have
# (docs/topics.md): a status with a key of another type, or a number that is not finite, is
# malformed and ignored as a whole (logged), so that no rule compares a string with a limit.
# `number`: int or float, not bool, finite; `None` in a tuple: null allowed; `required`: present.
_N, _S, _B, _I, _L = "number", str, bool, "integer", list
SCHEMAS: dict[str, dict[str, tuple[Any, ...]]] = {
    "power": {"name": (_S,), "state": (_S,), "on": (_I,), "vmon": (_N,), "vreq": (_N,),
              "module": (_S,), "flags": (_L,)},
    "chiller": {"state": (_S,), "status_code": (_I, None), "running": (_I, None),
                "setpoint": (_N, None), "bath_temp": (_N, None), "error": (_S, None),
                "status_text": (_S, None)},
    "sensor": {"temperature": (_N, None), "humidity": (_N, None), "dewpoint": (_N, None),
               "age": (_N, None), "stale": (_B,), "too_dry": (_B,), "error": (_S, None)},
}  # fmt: skip
REQUIRED = {"power": ("name", "state", "on", "vmon", "vreq")}


def _type_ok(value: Any, allowed: tuple[Any, ...]) -> bool:
    for kind in allowed:
        if kind is None and value is None:
            return True
        if kind == _N and finite_number(value):
            return True
        if kind == _I and finite_number(value) and not isinstance(value, float):
            return True
        if (
            isinstance(kind, type)
            and isinstance(value, kind)
            and not (kind is not bool and isinstance(value, bool))
        ):
            return True
    return False


def status_problem(kind: str, status: Any) -> str | None:
    """Why a decoded status of a source of `kind` cannot be used, or None."""
    entries = status if kind == "power" else [status]
    schema, required = SCHEMAS[kind], REQUIRED.get(kind, ())
    for i, entry in enumerate(entries):
        where = f"channel {i}: " if kind == "power" else ""
        if not isinstance(entry, dict):
            return f"{where}not a JSON object"
        for key in required:
            if key not in entry:
                return f"{where}no {key!r}"
        for key, allowed in schema.items():
            if key in entry and not _type_ok(entry[key], allowed):
                return f"{where}{key} is {clip(entry[key], 40)}"
    return None


@dataclass
class Source:
    prefix: str
    kind: str  # "power", "chiller" or "sensor"
    status: Any = None  # the latest status (dict, or list of channels for power)
    received: float | None = None  # monotonic time the latest live (not stored) status arrived
    online: bool | None = None  # from `<prefix>/availability`; None before the first

    @property
    def age(self) -> float:
        """Age of the reading when it was published (sensors say; others: 0)."""
        if self.kind == "sensor" and isinstance(self.status, dict):
            age = self.status.get("age")
            if isinstance(age, int | float) and not isinstance(age, bool):
                return float(age)
        return 0.0


class World:
    def __init__(self, lab: LabConfig) -> None:
        self.lab = lab
        self.sources: dict[str, Source] = {}
        self._power_kind: dict[str, ChannelKind] = {}
        for crate in lab.crates:
            for kind, prefix in crate.prefixes.items():
                self.sources[prefix] = Source(prefix, "power")
                self._power_kind[prefix] = kind
        self._cooled: dict[str, set[str] | None] = {}  # chiller prefix -> the modules it cools
        self._chiller_names: dict[str, str] = {}  # chiller prefix -> its name
        for chiller in lab.chillers:
            self.sources[chiller.prefix] = Source(chiller.prefix, "chiller")
            self._cooled[chiller.prefix] = (
                None if chiller.modules == "all" else set(lab.cooled_by(chiller))
            )
            self._chiller_names[chiller.prefix] = chiller.name
        for sensor in lab.sensors:
            self.sources[sensor.prefix] = Source(sensor.prefix, "sensor")
        self.modules: list[str] = list(lab.modules())
        # (module, kind) -> [(prefix, channel name)]
        self._channels: dict[tuple[str, ChannelKind], list[tuple[str, str]]] = {}
        for module, channels in lab.modules().items():
            for ch in channels:
                prefix = lab.crate_of(ch).prefixes[ch.kind]
                self._channels.setdefault((module, ch.kind), []).append((prefix, ch.name))
        self.module_sensors: dict[str, list[str]] = {}  # module -> its sensors' prefixes
        for sensor in lab.sensors:
            if sensor.module:
                self.module_sensors.setdefault(sensor.module, []).append(sensor.prefix)
        self.sensor_limits = {s.prefix: s.max_temperature for s in lab.sensors}
        self._by_name: dict[str, dict[str, dict[str, Any]]] = {}  # power prefix -> name -> entry

    # -- input ------------------------------------------------------------------------------------
    def topics(self) -> list[str]:
        sources = [ServiceTopics(p) for p in self.sources]
        return [t for s in sources for t in (s.status, s.availability)]

    def update(
        self, topic: str, payload: bytes, now: float, retained: bool = False
    ) -> Source | None:
        """Take a message; the source it updated, or None (not a source's topic, or unusable).

        A `retained` status (stored by the broker, delivered at subscription: possibly from a
        daemon that died long ago) is taken as the latest data but does not count as received:
        only a live one shows the daemon alive."""
        prefix, _, leaf = topic.rpartition("/")
        source = self.sources.get(prefix)
        if source is None:
            return None
        if leaf == "availability":
            source.online = payload.decode(errors="replace").strip() != OFFLINE
            return source
        if leaf != "status":
            return None
        if not payload:  # a deleted retained status
            source.status, source.received = None, None
            self._by_name.pop(prefix, None)
            return source
        try:
            status = loads(payload, topic)
        except JsonError as exc:
            log.error("ignoring a malformed status: %s", exc)
            return None
        expected = list if source.kind == "power" else dict
        if not isinstance(status, expected):
            log.error("ignoring %s: expected a JSON %s", topic, expected.__name__)
            return None
        problem = status_problem(source.kind, status)
        if problem is not None:
            log.error("ignoring a malformed %s: %s", topic, problem)
            return None
        source.status = status
        if not retained:
            source.received = now
        if source.kind == "power":
            self._by_name[prefix] = {c.get("name"): c for c in status if isinstance(c, dict)}
        return source

    # -- queries ----------------------------------------------------------------------------------
    def chiller(self, prefix: str | None) -> dict[str, Any] | None:
        """The latest status of the chiller on `prefix` (None: none yet, or no such chiller)."""
        source = self.sources.get(prefix or "")
        return source.status if source and source.kind == "chiller" else None

    def chiller_label(self, prefix: str | None) -> str:
        """`chiller`, or `chiller <name>` in a lab of several: how reasons name it."""
        if len(self._chiller_names) > 1 and prefix in self._chiller_names:
            return f"chiller {self._chiller_names[prefix]}"
        return "chiller"

    def sensor(self, prefix: str) -> dict[str, Any] | None:
        source = self.sources.get(prefix)
        return source.status if source and source.kind == "sensor" else None

    def channel_names(self, module: str, kind: ChannelKind) -> list[tuple[str, str]]:
        """(prefix, channel name) of the module's channels of this kind."""
        return list(self._channels.get((module, kind), []))

    def prefixes(self, module: str, kind: ChannelKind) -> list[str]:
        return sorted({prefix for prefix, _ in self._channels.get((module, kind), [])})

    def channels(self, module: str, kind: ChannelKind) -> list[dict[str, Any] | None]:
        """The module's channels' status entries (None for one not seen yet)."""
        return [
            self._by_name.get(prefix, {}).get(name)
            for prefix, name in self._channels.get((module, kind), [])
        ]

    def hv_off(self, module: str) -> bool:
        """Every HV channel of the module is known to be switched off and at rest."""
        entries = self.channels(module, ChannelKind.HV)
        return all(c is not None and not c.get("on") and c.get("state") == "OFF" for c in entries)

    def hv_on(self, module: str) -> bool:
        """Some HV channel of the module is known to be switched on (`Pw`)."""
        return any(c is not None and c.get("on") for c in self.channels(module, ChannelKind.HV))

    def modules_of(self, prefix: str) -> set[str] | None:
        """The modules a source concerns: a power prefix its modules', a module sensor its
        module, a chiller those it cools; None for a source of every module (a room sensor, the
        chiller of a lab with one)."""
        if prefix in self._cooled:
            return self._cooled[prefix]
        if prefix in self._power_kind:
            return {
                module
                for (module, _), channels in self._channels.items()
                if any(p == prefix for p, _ in channels)
            }
        for module, prefixes in self.module_sensors.items():
            if prefix in prefixes:
                return {module}
        return None
