"""A synchronous Python client for lab scripts and notebooks, over MQTT (paho-mqtt 2.x).

    from trackerdcs.client import Lab

    with Lab("examples/lab.yml", name="alice") as lab:       # connects here, not at import
        lab.module_on("M1")                                   # the sequencer: LV, then HV
        lab.set_voltage("hv_m1", 150)                         # returns at 150 V (within tolerance)
        print(lab.channel("hv_m1").imon, "uA")
        lab.set_chiller(-20, tolerance=0.3, stable_for=120)   # returns once the bath is stable
        lab.module_off("M1")

What it talks to is the lab YAML's: the broker (`mqtt`: host, port, TLS, credentials from the
environment), the power prefixes and channels (`crates`, `power.channels`), the chiller
(each chiller's prefix), the sensors and the sequencer (`/dcs`). Channels are addressed by name
(`hv_m1`), modules by name (`M1`: its HV channels for voltage commands).

Every command goes out as `{"value": ..., "id": "<name>:<n>", "time": <unix s>}` at QoS 1: the
audit log shows `<name>` as its sender, and a command that sat too long somewhere is refused by
the daemon (docs/topics.md, "Command safety"). Every call waits at most its timeout.

Errors (all `DcsError`):
- `CommandRefused` — the daemon said no; `error` is its text (`450 V exceeds the maximum 400 V
  of hv_m4`), nothing was written;
- `NoAnswer` — no answer within the timeout (the daemon or the broker is away; the text says
  what the service's `<prefix>/availability` said last: `offline`, or never `online`);
- `WaitTimeout` — the command was accepted but the readback did not get there in time;
- `ChannelFault` — a channel tripped, failed or disconnected while waited for;
- `Aborted` — the caller's `abort` callable asked to stop waiting;
- `NotConnected`, `UnknownName`.

Units: volts, µA for HV currents (A for LV), °C, seconds.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from trackerdcs.clientids import client_id
from trackerdcs.commands import CommandError
from trackerdcs.config import (
    ChannelConfig,
    ChannelKind,
    LabConfig,
    SensorKind,
    UnknownChiller,
    load_config,
)
from trackerdcs.mqtt import apply_broker_settings, disable_nagle, unix_time
from trackerdcs.payloads import ONLINE
from trackerdcs.topics import DCS, IVSCAN, RECIPE, ServiceTopics

T = TypeVar("T")
FAULT_STATES = frozenset({"TRIPPED", "ERROR", "DISCONNECTED"})
OFF_STATES = frozenset({"OFF", "TRIPPED", "ERROR"})
IVSCAN_STATUS = IVSCAN.status
RECIPE_STATUS = RECIPE.status
POLL = 0.2  # s: a wait re-checks its condition at least this often (time-based conditions)
_client_numbers = itertools.count(1)


class DcsError(Exception):
    """Base of every error this client raises."""


class NotConnected(DcsError):
    """The broker could not be reached (within the timeout), or the client is closed."""


class UnknownName(DcsError, LookupError):
    """No such channel, module or sensor in the lab YAML."""


class CommandRefused(DcsError):
    """The daemon refused the command: `error` is its answer's text; nothing was written."""

    def __init__(self, topic: str, error: str, answer: dict[str, Any]) -> None:
        super().__init__(f"{topic}: {error}")
        self.topic, self.error, self.answer = topic, error, answer


class NoAnswer(DcsError, TimeoutError):
    """No answer to a command within its timeout."""


class WaitTimeout(DcsError, TimeoutError):
    """A condition waited for did not come true within the timeout."""


class ChannelFault(DcsError):
    """A channel waited for is TRIPPED, in ERROR or DISCONNECTED: `channel` is its state."""

    def __init__(self, message: str, channel: Channel) -> None:
        super().__init__(message)
        self.channel = channel


class Aborted(DcsError):
    """The caller's `abort` callable returned a reason (its text) while waiting."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Channel:
    """One power channel as its daemon last published it (`<prefix>/status`).

    Volts; `imon`/`ilim` in µA (HV) or A (LV); `time` is when the daemon published it (unix s).
    """

    name: str
    number: int
    kind: ChannelKind
    prefix: str
    module: str
    on: bool
    vreq: float
    vmon: float
    imon: float
    ilim: float
    state: str
    flags: tuple[str, ...]
    interlocks: tuple[str, ...]
    time: float

    @classmethod
    def from_status(cls, entry: dict[str, Any], kind: ChannelKind, prefix: str) -> Channel:
        return cls(
            name=str(entry["name"]), number=int(entry["number"]), kind=kind, prefix=prefix,
            module=str(entry.get("module") or ""), on=bool(entry["on"]),
            vreq=float(entry["vreq"]), vmon=float(entry["vmon"]), imon=float(entry["imon"]),
            ilim=float(entry["ilim"]), state=str(entry["state"]),
            flags=tuple(entry.get("flags") or ()), interlocks=tuple(entry.get("interlocks") or ()),
            time=float(entry.get("time") or 0.0),
        )  # fmt: skip

    def describe(self) -> str:
        flags = f" ({', '.join(self.flags)})" if self.flags else ""
        return f"{self.name} {self.state}{flags} {self.vmon:g}/{self.vreq:g} V"


class Lab:
    """A connection to a running trackerdcs lab. Thread-safe; one network thread of its own.

    `config`: the lab YAML (a path) or a loaded `LabConfig`. `name` is the sender the audit log
    shows (the part of every command id before `:`). `timeout` (s) bounds the waits that have no
    timeout of their own: connecting, a daemon's answer, the first status of a source.
    `sync_topic`: a topic of this client's own that it may publish to, for `sync`.
    Nothing connects before `connect()` (or `with Lab(...) as lab:`).
    """

    def __init__(
        self, config: LabConfig | str | Path, *, name: str = "script", timeout: float = 10.0,
        client_id: str | None = None, sync_topic: str | None = None,
    ) -> None:  # fmt: skip
        if not name or ":" in name:
            raise ValueError(f"name must be a non-empty word without ':', got {name!r}")
        self.lab = config if isinstance(config, LabConfig) else load_config(config)
        self.name = name
        self.timeout = timeout
        self.client_id = client_id or f"trackerdcs-{name}-{os.getpid()}-{next(_client_numbers)}"
        self._channels: dict[str, tuple[ChannelConfig, str]] = {}  # name -> (config, prefix)
        for ch in self.lab.power.channels:
            self._channels[ch.name] = (ch, self.lab.crate_of(ch).prefixes[ch.kind])
        self._power_prefixes = {p: k for c in self.lab.crates for k, p in c.prefixes.items()}
        self._cond = threading.Condition()
        self._status: dict[str, Any] = {}  # topic -> latest JSON
        self._availability: dict[str, str] = {}  # prefix -> latest `online` / `offline`
        commanded = [*self._service_prefixes(), DCS.prefix]  # whose availability it follows
        self._availability_topics = {ServiceTopics(p).availability: p for p in commanded}
        self._answers: dict[str, dict[str, Any]] = {}  # request id -> answer
        self._waiting: set[str] = set()
        self._numbers = itertools.count(1)
        self._subscribed = threading.Event()
        self.sync_topic = sync_topic
        self._marks = itertools.count(1)
        self._nonce = os.urandom(8).hex()  # this client's markers: "<nonce>:<n>"
        self._synced = 0  # the last of this client's sync markers received
        self._closed = False
        self._client: mqtt.Client | None = None

    # -- connection -------------------------------------------------------------------------------
    def _service_prefixes(self) -> list[str]:
        """The power prefixes and the chillers' (the services besides `/dcs` it commands)."""
        return [*sorted(self._power_prefixes), *(c.prefix for c in self.lab.chillers)]

    def topics(self) -> list[str]:
        """What the client follows: every status and answer it reads."""
        services = [ServiceTopics(p) for p in self._service_prefixes()]
        topics = [t for s in services for t in (s.status, s.response, s.availability)]
        topics += [ServiceTopics(s.prefix).status for s in self.lab.sensors]
        topics += [DCS.status, DCS.response, DCS.availability, IVSCAN_STATUS, RECIPE_STATUS]
        topics.append(self.lab.power.interlock_topic)
        if self.sync_topic is not None:
            topics.append(self.sync_topic)
        return topics

    def connect(self, timeout: float | None = None, wait: bool = True) -> Lab:
        """Connect to the lab's broker and subscribe; with `wait`, return once subscribed
        (`NotConnected` after `timeout` s, default the client's). paho reconnects by itself."""
        if self._client is not None:
            return self
        cfg = self.lab.mqtt
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv5,
            reconnect_on_failure=True,
        )  # fmt: skip
        apply_broker_settings(client, cfg)
        client.reconnect_delay_set(cfg.reconnect_min_delay, cfg.reconnect_max_delay)
        client.on_socket_open = disable_nagle
        client.on_connect = self._on_connect
        client.on_subscribe = lambda *args: self._subscribed.set()
        client.on_message = self._on_message
        self._client = client
        client.connect_async(cfg.host, cfg.port, keepalive=cfg.keepalive)
        client.loop_start()
        limit = self.timeout if timeout is None else timeout
        if wait and not self._subscribed.wait(limit):
            self.close()
            raise NotConnected(f"no broker at mqtt://{cfg.host}:{cfg.port} within {limit:g} s")
        return self

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.is_connected() and not self._closed

    def close(self) -> None:
        """Disconnect and stop the network thread. Waits in progress end with `NotConnected`."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()

    def __enter__(self) -> Lab:
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if not reason_code.is_failure:
            client.subscribe([(t, 1) for t in self.topics()])

    def _on_message(self, client, userdata, msg: mqtt.MQTTMessage) -> None:
        prefix = self._availability_topics.get(msg.topic)
        if prefix is not None:  # plain text, not JSON
            with self._cond:
                if msg.payload:
                    self._availability[prefix] = msg.payload.decode(errors="replace")
                else:  # the retained copy cleared: nothing known
                    self._availability.pop(prefix, None)
                self._cond.notify_all()
            return
        try:
            data = json.loads(msg.payload) if msg.payload else None
        except ValueError:
            return
        with self._cond:
            if msg.topic == self.sync_topic:
                self._marker(data, msg.retain)
            elif msg.topic.endswith("/response"):
                rid = data.get("id") if isinstance(data, dict) else None
                if rid in self._waiting:
                    self._answers[rid] = data
            else:
                self._status[msg.topic] = data
            self._cond.notify_all()

    def availability(self, prefix: str) -> str | None:
        """What `<prefix>/availability` said last (`online`, `offline`), for the services this
        client commands (power prefixes, chillers, `/dcs`); None before anything came."""
        with self._cond:
            return self._availability.get(prefix)

    def _why_silent(self, prefix: str) -> str:
        """Why a service may not have answered, from its availability: '' when unknown."""
        if prefix not in self._availability_topics.values():
            return ""
        said = self.availability(prefix)
        if said is None:
            return f": {prefix} has never said online (is its daemon running on this broker?)"
        if said != ONLINE:
            return f": {prefix} is {said} (its daemon stopped, or lost the broker)"
        return ""

    def sync(self, timeout: float | None = None) -> None:
        """Return once this client has received every message the broker had sent it when
        `sync` was called: a marker published to the client's `sync_topic` comes back after
        them (Mosquitto sends a connection its messages in the order it handled them). For a
        decision from what this client has seen, on a command that came by another
        connection (a daemon's), which may be ahead of it. At once without a `sync_topic`.
        `NoAnswer` after `timeout` s (default: the client's), `NotConnected`."""
        if self.sync_topic is None:
            return
        if self._client is None or self._closed:
            raise NotConnected("not connected: call connect() first")
        mark = next(self._marks)
        limit = self.timeout if timeout is None else timeout
        self._client.publish(self.sync_topic, json.dumps(f"{self._nonce}:{mark}"), qos=1)
        try:
            self.wait_until(lambda: True if self._synced >= mark else None, limit,
                            f"the marker on {self.sync_topic}")  # fmt: skip
        except WaitTimeout as exc:
            raise NoAnswer(f"{self.sync_topic}: the broker did not send the marker back "
                           f"within {limit:g} s") from exc  # fmt: skip

    def _marker(self, data: Any, retained: bool) -> None:
        """A sync marker (under `_cond`): only this client's own, live (a retained one, or
        anyone else's, says nothing about this client's messages)."""
        nonce, _, number = data.partition(":") if isinstance(data, str) else ("", "", "")
        if not retained and nonce == self._nonce and number.isdigit():
            self._synced = max(self._synced, int(number))

    def wake(self) -> None:
        """Make every wait re-check its condition now (e.g. after an abort flag was set)."""
        with self._cond:
            self._cond.notify_all()

    # -- waiting ----------------------------------------------------------------------------------
    def wait_until(
        self, check: Callable[[], T | None], timeout: float, what: str = "the condition",
        abort: Callable[[], str | None] | None = None,
    ) -> T:  # fmt: skip
        """The first non-None result of `check()`, asked after every message received and at
        least every 0.2 s. `WaitTimeout` after `timeout` s (naming `what`); `Aborted` as soon as
        `abort()` returns a reason; `NotConnected` when the client is closed."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if self._closed:
                    raise NotConnected("the client is closed")
                if abort is not None and (reason := abort()) is not None:
                    raise Aborted(reason)
                result = check()
                if result is not None:
                    return result
                left = deadline - time.monotonic()
                if left <= 0:
                    raise WaitTimeout(f"{what} not reached within {timeout:g} s")
                self._cond.wait(min(left, POLL))

    def hold(self, seconds: float, abort: Callable[[], str | None] | None = None) -> None:
        """Wait `seconds` s; `Aborted` as soon as `abort()` returns a reason."""
        end = time.monotonic() + seconds
        with contextlib.suppress(WaitTimeout):  # the end comes first
            self.wait_until(lambda: True if time.monotonic() >= end else None, seconds + 1.0,
                            f"{seconds:g} s", abort)  # fmt: skip

    def latest(self, topic: str) -> Any:
        """The latest JSON received on a followed `topic` (see `topics()`), or None: no wait."""
        with self._cond:
            return self._status.get(topic)

    def peek(self, name: str) -> Channel | None:
        """Channel `name`'s latest status, or None before the first one: no wait."""
        self.channel_config(name)
        with self._cond:
            return self._snapshot(name)

    def _latest(self, topic: str, what: str) -> Any:
        """The latest JSON on `topic`, waiting up to the client's timeout for the first."""
        return self.wait_until(lambda: self._status.get(topic), self.timeout, what)

    # -- reading ----------------------------------------------------------------------------------
    def channel_config(self, name: str) -> tuple[ChannelConfig, str]:
        """A channel's lab-YAML entry and its prefix; `UnknownName` if the lab has none."""
        try:
            return self._channels[name]
        except KeyError:
            known = ", ".join(self._channels) or "none"
            raise UnknownName(f"no channel {name!r} in the lab (known: {known})") from None

    def channels_of(self, target: str, kind: ChannelKind | None = ChannelKind.HV) -> list[str]:
        """Channel names for `target`: a channel name, or a module's channels of `kind` (its HV
        by default; None: all)."""
        if target in self._channels:
            return [target]
        modules = self.lab.modules()
        if target not in modules:
            raise UnknownName(
                f"no channel or module {target!r} in the lab (modules: "
                f"{', '.join(modules) or 'none'}; channels: {', '.join(self._channels)})"
            )
        names = [c.name for c in modules[target] if kind is None or c.kind == kind]
        if not names:
            raise UnknownName(f"module {target!r} has no {kind} channel")
        return names

    def _entry(self, name: str) -> dict[str, Any] | None:
        _, prefix = self._channels[name]
        status = self._status.get(ServiceTopics(prefix).status)
        if not isinstance(status, list):
            return None
        return next((c for c in status if isinstance(c, dict) and c.get("name") == name), None)

    def _snapshot(self, name: str) -> Channel | None:
        cfg, prefix = self._channels[name]
        entry = self._entry(name)
        return None if entry is None else Channel.from_status(entry, cfg.kind, prefix)

    def channel(self, name: str) -> Channel:
        """A channel's latest status (waits up to the client's timeout for the first one)."""
        self.channel_config(name)
        return self.wait_until(lambda: self._snapshot(name), self.timeout, f"a status of {name}")

    def channels(self, target: str, kind: ChannelKind | None = ChannelKind.HV) -> list[Channel]:
        """The latest status of a channel, or of a module's channels of `kind`."""
        return [self.channel(n) for n in self.channels_of(target, kind)]

    def sensor(self, name: str) -> dict[str, Any]:
        """A sensor's latest status (`/<name>/status`: temperature, humidity, dewpoint, stale,
        ...; docs/topics.md)."""
        if name not in {s.name for s in self.lab.sensors}:
            known = ", ".join(s.name for s in self.lab.sensors) or "none"
            raise UnknownName(f"no sensor {name!r} in the lab (known: {known})")
        return self._latest(ServiceTopics(f"/{name}").status, f"a status of sensor {name}")

    def room(self) -> dict[str, Any] | None:
        """The first room sensor's latest status (None if the lab has none)."""
        room = next((s for s in self.lab.sensors if s.kind is SensorKind.ROOM), None)
        return None if room is None else self.sensor(room.name)

    def module_temperature(self, module: str) -> float | None:
        """The module's temperature, °C: its first module sensor's reading (None if it has no
        sensor or the reading is stale)."""
        sensor = next((s for s in self.lab.sensors if s.module == module), None)
        return None if sensor is None else self.sensor(sensor.name).get("temperature")

    def chiller(self, name: str | None = None) -> dict[str, Any]:
        """The chiller's latest status (`/julabo/status`: state, bath_temp, setpoint, ...);
        `name`: which one, in a lab with several (the chiller's prefix without `/`)."""
        return self._latest(ServiceTopics(self._chiller_prefix(name)).status, "a chiller status")

    def interlocks(self, module: str | None = None) -> list[dict[str, Any]]:
        """The active interlock rules (`/interlock/status`), those holding `module` unsafe when
        given; [] before the interlock service has published."""
        with self._cond:
            status = self._status.get(self.lab.power.interlock_topic)
        rules = status.get("rules", []) if isinstance(status, dict) else []
        active = [r for r in rules if isinstance(r, dict) and r.get("active")]
        if module is None:
            return active
        return [r for r in active if {module, "*"} & set(r.get("modules") or [])]

    def module_state(self, module: str) -> dict[str, Any] | None:
        """The sequencer's state of a module (`/dcs/status`), None before it published."""
        with self._cond:
            status = self._status.get(DCS.status)
        return (status.get("modules") or {}).get(module) if isinstance(status, dict) else None

    # -- commands ---------------------------------------------------------------------------------
    def command(self, topic: str, value: Any, timeout: float | None = None) -> dict[str, Any]:
        """Send `value` to a command topic as `{"value", "id", "time"}` and return the daemon's
        answer (a dict with `ok` true). `CommandRefused` carrying the daemon's error text,
        `NoAnswer` after `timeout` s (default: the client's)."""
        if self._client is None or self._closed:
            raise NotConnected("not connected: call connect() first")
        prefix = "/" + topic.split("/")[1]
        request_id = f"{self.name}:{next(self._numbers)}"
        payload = json.dumps({"value": value, "id": request_id, "time": unix_time()})
        limit = self.timeout if timeout is None else timeout
        with self._cond:
            self._waiting.add(request_id)
        try:
            self._client.publish(topic, payload, qos=1)
            answer = self.wait_until(
                lambda: self._answers.pop(request_id, None), limit,
                f"an answer to {topic} on {ServiceTopics(prefix).response}",
            )  # fmt: skip
        except WaitTimeout as exc:
            raise NoAnswer(f"{topic}: no answer from {prefix} within {limit:g} s"
                           f"{self._why_silent(prefix)}") from exc  # fmt: skip
        finally:
            with self._cond:
                self._waiting.discard(request_id)
                self._answers.pop(request_id, None)
        if not answer.get("ok"):
            raise CommandRefused(topic, str(answer.get("error")), answer)
        return answer

    def _power_command(self, verb: str, target: str, value: Any) -> list[str]:
        """`<prefix>/cmd/<verb>/<target>` for each prefix of the target's channels (a channel,
        or a module's HV channels); their names."""
        names = self.channels_of(target)
        prefixes = dict.fromkeys(self._channels[n][1] for n in names)
        for prefix in prefixes:
            self.command(ServiceTopics(prefix).command(verb, target), value)
        return names

    def _tolerance(self, name: str) -> float:
        if self.lab.sequencer.tolerance is not None:
            return self.lab.sequencer.tolerance
        return self.lab.limits_for(self._channels[name][0]).on_tolerance

    def ramp_timeout(self, name: str, dv: float, up: bool) -> float:
        """How long a ramp of `dv` V of channel `name` may take, s: `sequencer.ramp_factor` x its
        ramp time (`|dV| / rup` or `rdwn` on boards that ramp by rate, `ruptime` / `rdwtime` on
        boards that ramp by time) + `sequencer.settle_time` — the sequencer's rule."""
        limits = self.lab.limits_for(self._channels[name][0])
        seq = self.lab.sequencer
        return seq.ramp_factor * limits.ramp_seconds(dv, up=up) + seq.settle_time

    def set_voltage(
        self, target: str, volts: float, *, wait: bool = True, tolerance: float | None = None,
        timeout: float | None = None, abort: Callable[[], str | None] | None = None,
    ) -> list[Channel]:  # fmt: skip
        """Set the voltage (V0Set, volts) of a channel, or of a module's HV channels.

        With `wait`, returns once every channel's set-point readback is `volts` and, for a
        channel that is on, it is `ON` with `vmon` within `tolerance` V of it (default
        `sequencer.tolerance`, else the channel's `on_tolerance`). A channel that is off only
        needs the readback (a TRIPPED channel too: its set point can be changed while off).
        `timeout` (s) defaults to the ramp's: see `ramp_timeout`. Raises `CommandRefused`
        (above `vmax`, an interlock, ...), `ChannelFault` (a channel that was on tripped or
        failed, or one disconnected), `WaitTimeout`, `Aborted`.
        """
        before = self.channels(target)
        names = self._power_command("setv", target, volts)
        if not wait:
            return [self.channel(n) for n in names]
        if timeout is None:
            timeout = max(
                self.ramp_timeout(c.name, abs(volts - c.vmon), up=volts > c.vmon) for c in before
            )
        tol = {n: self._tolerance(n) if tolerance is None else tolerance for n in names}
        live = {c.name for c in before if c.on}  # a fault of these is one; an off one's is not

        def check() -> list[Channel] | None:
            snaps = [self._snapshot(n) for n in names]
            if any(s is None for s in snaps):
                return None
            done = True
            for c in snaps:
                assert c is not None
                if c.state in FAULT_STATES and (c.name in live or c.state == "DISCONNECTED"):
                    raise ChannelFault(f"{c.describe()} while ramping to {volts:g} V", c)
                done &= abs(c.vreq - volts) <= 1e-3 and (
                    not c.on or (c.state == "ON" and abs(c.vmon - volts) <= tol[c.name])
                )
            return snaps if done else None  # type: ignore[return-value]

        return self.wait_until(check, timeout, f"{target} at {volts:g} V", abort)

    def set_current_limit(
        self, target: str, limit: float, *, timeout: float | None = None
    ) -> list[Channel]:
        """Set the current limit (I0Set: µA for HV, A for LV) of a channel or of a module's HV
        channels; returns once the readback `ilim` shows it. `CommandRefused` above `imax`."""
        names = self._power_command("seti", target, limit)

        def check() -> list[Channel] | None:
            snaps = [self._snapshot(n) for n in names]
            ok = all(s is not None and math.isclose(s.ilim, limit, abs_tol=1e-6) for s in snaps)
            return snaps if ok else None  # type: ignore[return-value]

        return self.wait_until(check, self.timeout if timeout is None else timeout,
                               f"{target} limit {limit:g}")  # fmt: skip

    def switch(
        self, target: str, on: bool, *, wait: bool = True, tolerance: float | None = None,
        timeout: float | None = None, abort: Callable[[], str | None] | None = None,
    ) -> list[Channel]:  # fmt: skip
        """Switch a channel (or a module's HV channels) on or off.

        With `wait`, returns once `on`: `ON` within tolerance of its set point; off: off and
        at 0 V within tolerance. `timeout` defaults to the ramp's (`ramp_timeout`). Raises
        `CommandRefused` (an interlock, a TRIPPED channel, ...), `ChannelFault` (switching on),
        `WaitTimeout`, `Aborted`. Use `module_on` / `module_off` to switch whole modules.
        """
        before = self.channels(target)
        names = self._power_command("switch", target, "on" if on else "off")
        if not wait:
            return [self.channel(n) for n in names]
        if timeout is None:
            timeout = max(
                self.ramp_timeout(c.name, c.vreq - c.vmon if on else c.vmon, up=on) for c in before
            )
        tol = {n: self._tolerance(n) if tolerance is None else tolerance for n in names}

        def check() -> list[Channel] | None:
            snaps = [self._snapshot(n) for n in names]
            if any(s is None for s in snaps):
                return None
            done = True
            for c in snaps:
                assert c is not None
                if on:
                    if c.state in FAULT_STATES:
                        raise ChannelFault(f"{c.describe()} while switching on", c)
                    done &= c.state == "ON" and abs(c.vmon - c.vreq) <= tol[c.name]
                else:
                    done &= not c.on and c.state in OFF_STATES and abs(c.vmon) <= tol[c.name]
            return snaps if done else None  # type: ignore[return-value]

        return self.wait_until(check, timeout, f"{target} {'on' if on else 'off'}", abort)

    def _sequence_timeout(self, module: str, on: bool) -> float:
        """The longest a module's sequence may take: every step's answer and ramp waits."""
        total = 5.0
        seq = self.lab.sequencer
        for ch in self.lab.modules().get(module, []):
            entry = self._entry(ch.name) or {}
            vreq, vmon = float(entry.get("vreq", 0.0)), float(entry.get("vmon", 0.0))
            dv = abs(vreq - vmon) if on else abs(vmon)
            total += seq.answer_timeout + self.ramp_timeout(ch.name, max(dv, vreq), up=on)
        return total

    def module_on(self, module: str, *, timeout: float | None = None) -> dict[str, Any]:
        """Switch a module on through the sequencer (LV on and at its set point, then HV on and
        at its set point); returns the sequence's outcome (`ok`, `steps`). `CommandRefused` with
        the sequencer's error (the failed step; the module is rolled back off) — or `NoAnswer`
        after `timeout` s (default: the module's ramps, as the sequencer bounds them)."""
        return self._module(module, True, timeout)

    def module_off(self, module: str, *, timeout: float | None = None) -> dict[str, Any]:
        """Switch a module off through the sequencer (HV off and at 0 V, then LV off); as
        `module_on`."""
        return self._module(module, False, timeout)

    def _module(self, module: str, on: bool, timeout: float | None) -> dict[str, Any]:
        if module not in self.lab.modules():
            raise UnknownName(f"no module {module!r} (known: {', '.join(self.lab.modules())})")
        limit = self._sequence_timeout(module, on) if timeout is None else timeout
        answer = self.command(DCS.command("module", module), "on" if on else "off", limit)
        return answer["modules"][module]

    def _chiller_prefix(self, name: str | None = None) -> str:
        """The prefix of chiller `name` (`chillers[].name`; none: the lab's only one):
        `UnknownName` for no chiller, several and no name, or an unknown name."""
        try:
            return self.lab.chiller(name).prefix
        except UnknownChiller as exc:
            raise UnknownName(str(exc)) from None

    def start_chiller(self, chiller: str | None = None) -> dict[str, Any]:
        """Start temperature control (`/julabo/cmd/switch on`); the daemon's answer."""
        return self.command(ServiceTopics(self._chiller_prefix(chiller)).command("switch"), "on")

    def stop_chiller(self, chiller: str | None = None) -> dict[str, Any]:
        """Stop temperature control (`/julabo/cmd/switch off`); the daemon's answer. The
        interlock's `chiller_running` rule ramps the HV down when a running chiller stops."""
        return self.command(ServiceTopics(self._chiller_prefix(chiller)).command("switch"), "off")

    def set_chiller(
        self, setpoint: float, *, wait: bool = True, tolerance: float = 0.2,
        stable_for: float = 60.0, timeout: float | None = None, chiller: str | None = None,
        abort: Callable[[], str | None] | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        """Set the chiller's set point (°C) and, with `wait`, return once the bath has stayed
        within `tolerance` K of it for `stable_for` s without a break (the chiller's status).

        The chiller must be running to get there (`start_chiller`); a stopped one raises
        `DcsError` at once. `chiller`: which one, in a lab with several. `timeout` defaults to
        `stable_for` + 120 s per K to go + 300 s (a slow 0.5 K/min unit). Returns the last
        status. `CommandRefused` outside the lab's
        `setpoint_min`..`setpoint_max`, `WaitTimeout`, `NoAnswer`, `Aborted` (see `wait_until`).
        """
        prefix = self._chiller_prefix(chiller)
        start = self._latest(ServiceTopics(prefix).status, "a chiller status")
        self.command(ServiceTopics(prefix).command("setpoint"), setpoint)
        if not wait:
            return self._latest(ServiceTopics(prefix).status, "a chiller status")
        return self.wait_chiller_stable(
            setpoint, tolerance=tolerance, stable_for=stable_for, chiller=chiller, abort=abort,
            timeout=timeout, bath=start.get("bath_temp") if isinstance(start, dict) else None,
        )  # fmt: skip

    def wait_chiller_stable(
        self, setpoint: float | None = None, *, tolerance: float = 0.2, stable_for: float = 60.0,
        timeout: float | None = None, chiller: str | None = None,
        abort: Callable[[], str | None] | None = None, bath: Any = None,
    ) -> dict[str, Any]:  # fmt: skip
        """Wait until the bath has stayed within `tolerance` K of `setpoint` (°C; default the
        chiller's set point now) for `stable_for` s without a break; the last status.

        `DcsError` at once for a chiller that is not running; `timeout` as `set_chiller`'s
        (from `bath`, the bath temperature to start from, default now's); `WaitTimeout`,
        `Aborted` when `abort()` returns a reason."""
        prefix = self._chiller_prefix(chiller)
        topic = ServiceTopics(prefix).status
        now = self._latest(topic, "a chiller status")
        now = now if isinstance(now, dict) else {}
        if setpoint is None:
            setpoint = now.get("setpoint")
            if not isinstance(setpoint, int | float) or isinstance(setpoint, bool):
                raise DcsError(f"{prefix}: the chiller's set point is not known")
        target = float(setpoint)
        if timeout is None:
            start = bath if bath is not None else now.get("bath_temp")
            start = start if isinstance(start, int | float) else target
            timeout = stable_for + 300.0 + 120.0 * abs(target - start)
        since: list[float | None] = [None]

        def check() -> dict[str, Any] | None:
            status = self._status.get(topic) or {}
            if status.get("state") not in ("RUNNING", "MANUAL", "ERROR") and not status.get(
                "running"
            ):
                raise DcsError(f"the chiller is {status.get('state')}: start it first")
            temp = status.get("bath_temp")
            at = time.monotonic()
            if not isinstance(temp, int | float) or abs(temp - target) > tolerance:
                since[0] = None
                return None
            if since[0] is None:
                since[0] = at
            return status if at - since[0] >= stable_for else None

        return self.wait_until(
            check, timeout, f"the bath within {tolerance:g} K of {target:g} C for "
            f"{stable_for:g} s", abort,
        )  # fmt: skip

    # -- IV scans ---------------------------------------------------------------------------------
    def iv_scan(
        self, module: str, *, wait: bool = True, timeout: float | None = None,
        progress: Callable[[str, dict[str, Any]], None] | None = None, **params: Any,
    ) -> dict[str, Any]:  # fmt: skip
        """Start an IV scan of `module` (or `all`) on the dcs daemon (`/dcs/cmd/ivscan/...`);
        `params` are the scan's (docs/topics.md: `start`, `stop`, `step`, `settle`, `readings`,
        `compliance`, `end`, ...). Bad parameters raise `CommandRefused` before anything moves.

        With `wait`, follows `/dcs/ivscan/status`, calling `progress(module, scan)` on every
        update of a module's scan, and returns the module's final scan status (`outcome`, `reason`,
        `files`) once it has ended; `timeout` defaults to 24 h. Without, returns the answer.
        """
        answer = self.command(DCS.command("ivscan", module), params)
        if not wait:
            return answer
        ended = self.wait_iv_scans(answer.get("scans") or {}, progress, timeout)
        return ended.get(module, ended)  # type: ignore[return-value]  # `all`: every module's

    def wait_iv_scans(
        self, scans: dict[str, str], progress: Callable[[str, dict[str, Any]], None] | None = None,
        timeout: float | None = None, abort: Callable[[], str | None] | None = None,
    ) -> dict[str, dict[str, Any]]:  # fmt: skip
        """Follow the scans `scans` (module -> scan id, as `iv_scan(wait=False)` answers) on
        `/dcs/ivscan/status` until every one has ended; module -> its final scan status.
        `progress(module, scan)` is called with a module's scan status on every change of it;
        `Aborted` as soon as `abort()` returns a reason (the scans go on: `stop_iv_scan`)."""
        seen: dict[str, Any] = {}

        def check() -> dict[str, dict[str, Any]] | None:
            status = self._status.get(IVSCAN_STATUS) or {}
            current = {m: (status.get("scans") or {}).get(m) or {} for m in scans}
            for m, scan in current.items():
                if scan.get("scan") == scans[m] and scan != seen.get(m):
                    seen[m] = scan
                    if progress is not None:
                        progress(m, scan)
            ended = all(
                s.get("scan") == scans[m] and s.get("ended") is not None for m, s in current.items()
            )
            return current if ended else None

        names = ", ".join(scans) or "no module"
        return self.wait_until(check, 86400.0 if timeout is None else timeout,
                               f"the end of the IV scan(s) of {names}", abort)  # fmt: skip

    def stop_iv_scan(self, module: str) -> dict[str, Any]:
        """Stop the IV scan of `module` (or `all`): the channel is ramped down and the reason
        recorded; the daemon's answer."""
        return self.command(DCS.command("ivscan", module), "stop")

    # -- recipes ----------------------------------------------------------------------------------
    def start_recipe(
        self, recipe: str | Path | dict[str, Any], *, file: str | None = None, wait: bool = False,
        progress: Callable[[dict[str, Any]], None] | None = None, timeout: float | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        """Start a thermal-cycle recipe on the dcs daemon (`/dcs/cmd/recipe/start`): `recipe`
        is a name from the lab's recipe folder or a path on the daemon's machine (text), or the
        recipe itself (a mapping, as a recipe file holds it; `file` names it in errors).

        A recipe the daemon refuses (a bad file, a module busy or held by an interlock, one
        already running) raises `CommandRefused` before anything moves. Without `wait`, returns
        the answer (`run`: the run's id); with, follows `/dcs/recipe/status` (calling
        `progress(status)` on every change) and returns the final status once it has ended
        (`outcome`, `reason`, `scans`); `timeout` defaults to 30 days."""
        value: Any = str(recipe) if not isinstance(recipe, dict) else {
            "recipe": recipe, "file": file or "a script"}  # fmt: skip
        answer = self.command(DCS.command("recipe/start"), value)
        if not wait:
            return answer
        return self.wait_recipe(answer["run"], progress, timeout)

    def recipe_status(self) -> dict[str, Any] | None:
        """The latest `/dcs/recipe/status` (the latest run), None before it came: no wait."""
        status = self.latest(RECIPE_STATUS)
        return status if isinstance(status, dict) else None

    def wait_recipe(
        self, run: str, progress: Callable[[dict[str, Any]], None] | None = None,
        timeout: float | None = None, abort: Callable[[], str | None] | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        """Follow the run `run` on `/dcs/recipe/status` until it has ended; its final status.
        `progress(status)` is called on every change of it (but its `time`)."""
        seen: list[Any] = [None]

        def check() -> dict[str, Any] | None:
            status = self._status.get(RECIPE_STATUS)
            if not isinstance(status, dict) or status.get("run") != run:
                return None
            shown = {k: v for k, v in status.items() if k != "time"}
            if shown != seen[0]:
                seen[0] = shown
                if progress is not None:
                    progress(status)
            return status if status.get("ended") is not None else None

        return self.wait_until(check, 30 * 86400.0 if timeout is None else timeout,
                               f"the end of recipe run {run}", abort)  # fmt: skip

    def pause_recipe(self) -> dict[str, Any]:
        """Pause the running recipe (at once in a hold or a wait, else after the step)."""
        return self.command(DCS.command("recipe/pause"), "")

    def resume_recipe(self) -> dict[str, Any]:
        """Resume the paused recipe; `CommandRefused` while an interlock holds its modules."""
        return self.command(DCS.command("recipe/resume"), "")

    def abort_recipe(self) -> dict[str, Any]:
        """Abort the running recipe: its scans stopped, its modules switched off."""
        return self.command(DCS.command("recipe/abort"), "")


SYNC_TIMEOUT = 2.0  # s a daemon's loop waits for `Lab.sync` before it judges a command


def procedure_client(lab: LabConfig, source: str) -> Lab:
    """The client a dcs daemon's procedures (`source`: `recipe`, `ivscan`) run on: their
    sender name, their own connection (`clientids.client_id`), waits of at least 5 s (or the
    sequencer's answer timeout), and a `sync_topic` below `/dcs/reply/`."""
    own_id = client_id(lab, source)
    return Lab(lab, name=source, timeout=max(lab.sequencer.answer_timeout, 5.0),
               client_id=own_id, sync_topic=DCS.reply(f"{own_id}/sync"))  # fmt: skip


def sync_or_refuse(client: Lab, timeout: float = SYNC_TIMEOUT) -> None:
    """`client.sync(timeout)` in a daemon (its loop waits), before a command is judged on what
    `client` has seen: the command came by the daemon's own connection, and a state published
    just before it (an interlock cleared) may not have reached `client` yet. `CommandError`
    (the refusal) when the broker does not send the marker back."""
    try:
        client.sync(timeout)
    except DcsError as exc:
        raise CommandError(f"cannot bring the lab's state up to date: {exc}") from None
