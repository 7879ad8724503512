"""The power daemon in-process on the simulated crate's physics, in simulated time.

`PowerHarness` builds the production `CrateDaemon` (its `PowerService`s, guards, interlock
handling) on the example lab with the tests' fast defaults, with two stand-ins at its two
edges:

- MQTT: every service's link is a `RecordingLink` (a real `MqttLink`, never connected, built
  with the daemon's own options). Commands and messages go in through paho's `on_message`
  callback, the path a broker's message takes (the gate, `execute` on the loop); answers and
  status are read from what the link recorded.
- the crate: `SimBackend`, a `PowerBackend` over the pure `SimCrate` model. A write goes to
  `SimCrate.write` as a Channel Access put goes to the simulated crate's server; readbacks
  reach the daemon (its `BackendSink`) only when the test lets time pass (`step(seconds)`), each
  monitored parameter when its value changed, in the form Channel Access delivers it (floats,
  enum indices, bit masks as ints), as the EPICS backend's monitors do.

No broker, no Channel Access, no wall-clock waits: the daemon's asyncio loop keeps simulated
time too (`SimTimeLoop`) and runs what is due after every delivery (`settle`); the crate moves
only when the test steps it.
"""

from __future__ import annotations

import asyncio
import copy
import json
from typing import Any
from unittest import mock

import paho.mqtt.client as mqtt

from tests.conftest import FAST_DEFAULTS
from tests.inprocess import RecordingLink, settle
from tests.labdata import EXAMPLE, EXAMPLE_LAB
from trackerdcs.config import LabConfig, parse_config
from trackerdcs.power import daemon as power_daemon
from trackerdcs.power.backend import BackendError, BackendSink, ChannelAddress, ParamAbsent
from trackerdcs.power.boards import MONITORED, BoardModel
from trackerdcs.power.service import PowerService
from trackerdcs.sim.crate import boards_of
from trackerdcs.sim.crate_model import SimChannel, SimCrate


def ca_value(model: BoardModel, param: str, reading: float | int | str) -> float | int | str:
    """A crate reading as a Channel Access monitor delivers it to the EPICS backend: an on/off
    or enum parameter as its state's index (DBR_STS_LONG), others as they are."""
    states = model.by_name[param].states
    return states.index(reading) if states else reading


class SimBackend:
    """`PowerBackend` over a `SimCrate`: writes apply at once, readbacks are delivered by
    `flush()` (called by `PowerHarness.step`): each monitored parameter whose value changed
    since it was last delivered. `down` holds (address, param) pairs whose writes fail as a
    not-connected PV's do (BackendError); `absent` those the crate does not serve
    (ParamAbsent). `writes` records every write the crate took: (address, param, value)."""

    def __init__(self, crate: SimCrate, addresses: list[ChannelAddress]) -> None:
        self.crate = crate
        self.addresses = list(addresses)
        self.sink: BackendSink | None = None
        self.delivered: dict[tuple[ChannelAddress, str], float | int | str] = {}
        self.down: set[tuple[ChannelAddress, str]] = set()
        self.writes: list[tuple[ChannelAddress | None, str, Any]] = []

    def _channel(self, addr: ChannelAddress) -> SimChannel:
        return self.crate.channel(addr.board, addr.channel)

    def start(self, sink: BackendSink) -> None:
        self.sink = sink
        self.delivered.clear()
        for addr in self.addresses:
            sink.on_connection(addr, True)
        self.flush()

    def stop(self) -> None:
        self.sink = None

    def reconnect(self) -> None:
        sink = self.sink
        if sink is not None:
            for addr in self.addresses:
                sink.on_connection(addr, False)
            self.start(sink)

    def write(self, addr: ChannelAddress, param: str, value: float | int | str) -> None:
        spec = self._channel(addr).model.by_name.get(param)
        if spec is None:
            raise ParamAbsent(f"{param} of {addr} not served")
        if not spec.writable:
            raise BackendError(f"{param} is not a writable parameter of {addr}")
        if (addr, param) in self.down:
            raise BackendError(f"{param} of {addr} not connected")
        try:
            self.crate.write(addr.board, addr.channel, param, value)
        except (KeyError, ValueError) as exc:
            raise BackendError(f"{param} of {addr}: put failed ({exc})") from None
        self.writes.append((addr, param, value))

    def invalid(self, addr: ChannelAddress, reason: str | None) -> None:
        """The IOC marks the channel's readbacks INVALID (`reason`), or valid again (None)."""
        if self.sink is not None:
            self.sink.on_invalid(addr, reason)

    def clear_alarm(self) -> None:
        self.crate.write_system("ClearAlarm", "Yes")
        self.writes.append((None, "ClearAlarm", "Yes"))

    def flush(self) -> None:
        """Deliver every monitored reading that changed since it was last delivered."""
        if self.sink is None:
            return
        for addr in self.addresses:
            ch = self._channel(addr)
            for param in MONITORED:
                value = ca_value(ch.model, param, ch.reading(param))
                if self.delivered.get((addr, param)) != value:
                    self.delivered[addr, param] = value
                    self.sink.on_readback(addr, param, value)


def harness_lab(**power: Any) -> LabConfig:
    """The example lab with the tests' fast defaults (`FAST_DEFAULTS`), no supervision
    heartbeat required, and `power` keys overridden."""
    data = copy.deepcopy(EXAMPLE.data)
    data["power"]["defaults"] = FAST_DEFAULTS
    data["power"]["failsafe"]["supervisors"] = []
    data["power"].update(power)
    return parse_config(data, EXAMPLE_LAB)


class SimTimeLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock is simulated time (`now`, s): its timers (publishing,
    heartbeats, retries, the fail-safe countdown) fire when `PowerHarness.step` passes them."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0

    def time(self) -> float:
        return self.now


class PowerHarness:
    """The power daemon of the example lab's crate, its MQTT links recording, on a `SimCrate`
    stepped in simulated time (see the module's docstring). Close it with `close()`."""

    def __init__(self, lab: LabConfig | None = None, *, dt: float = 0.05) -> None:
        self.cfg = lab or harness_lab()
        self.data = EXAMPLE  # the channels' names, numbers, modules and places
        self.dt = dt
        self.loop = SimTimeLoop()
        crate = self.cfg.crates[0]
        self.crate = SimCrate(boards_of(crate), noise=0.0)
        addresses = [ChannelAddress(c.board, c.channel) for c in self.cfg.channels_of(crate.name)]
        self.backend = SimBackend(self.crate, addresses)
        self.links: dict[str, RecordingLink] = {}
        with mock.patch.object(power_daemon, "MqttLink", self._link):
            self.daemon = power_daemon.CrateDaemon(
                self.cfg, crate.name, self.loop, backend=self.backend
            )
        self.services = {s.prefix: s for s in self.daemon.services}
        self.backend.start(self.daemon)
        self.settle()
        self.step(0)

    def _link(self, cfg: Any, prefix: str, client_id: str, **options: Any) -> RecordingLink:
        """The daemon's `MqttLink(...)`: a recording one, with the daemon's own options."""
        link = RecordingLink(self.cfg, prefix, **options)
        self.links[prefix] = link
        return link

    def close(self) -> None:
        self.daemon.stop()
        settle(self.loop)
        self.loop.close()

    # -- time -------------------------------------------------------------------------------------
    def settle(self) -> None:
        settle(self.loop)

    def step(self, seconds: float) -> None:
        """Let `seconds` of simulated time pass in steps of `dt`, delivering the readbacks that
        changed after each (`step(0)`: deliver what writes changed)."""
        left = seconds
        while True:
            dt = min(self.dt, left)
            self.crate.step(dt)
            self.loop.now += dt
            self.backend.flush()
            self.settle()
            left -= dt
            if left <= 1e-9:
                return

    def step_until(self, condition: Any, seconds: float = 30.0) -> None:
        """Step until `condition()` holds; AssertionError after `seconds` simulated seconds."""
        for _ in range(int(seconds / self.dt) + 1):
            if condition():
                return
            self.step(self.dt)
        raise AssertionError(f"not within {seconds} simulated s: {condition}")

    # -- MQTT -------------------------------------------------------------------------------------
    def message(self, topic: str, payload: str | bytes) -> None:
        """A message from the broker to every link subscribed to `topic` (paho's callback)."""
        data = payload.encode() if isinstance(payload, str) else payload
        for link in self.links.values():
            if topic.startswith(link.topics.command_root) or topic in link._extra_subscriptions:
                msg = mqtt.MQTTMessage(topic=topic.encode())
                msg.payload = data
                link._client.on_message(link._client, None, msg)
        self.settle()

    def command(self, topic: str, payload: Any = "") -> dict[str, Any]:
        """Send a command (a number or a str payload as `mosquitto_pub` would); its answer."""
        link = self.links[topic.split("/cmd")[0]]
        before = len(link.answers())
        self.message(topic, payload if isinstance(payload, str | bytes) else json.dumps(payload))
        answers = link.answers()
        assert len(answers) == before + 1, f"{topic}: {len(answers) - before} answers"
        return answers[-1]

    def service(self, prefix: str) -> PowerService:
        return self.services[prefix]

    def status(self, prefix: str) -> list[dict[str, Any]]:
        """`<prefix>/status` as the service publishes it now."""
        self.service(prefix).publish_status()
        return json.loads(self.links[prefix].published(f"{prefix}/status")[-1])

    def state(self, prefix: str) -> dict[str, Any]:
        """The last `<prefix>/state` published (after `status`: current)."""
        self.service(prefix).publish_status()
        return json.loads(self.links[prefix].published(f"{prefix}/state")[-1])

    def channel_status(self, prefix: str, name: str) -> dict[str, Any]:
        return next(c for c in self.status(prefix) if c["name"] == name)

    def mark(self, prefix: str) -> int:
        """Where the link's record stands now (for `states_seen`)."""
        return len(self.links[prefix].sent)

    def states_seen(self, prefix: str, name: str, since: int) -> list[str]:
        """The successive states of a channel in the status messages published since `since`."""
        seen: list[str] = []
        for topic, payload in self.links[prefix].sent[since:]:
            if topic == f"{prefix}/status":
                state = next(c["state"] for c in json.loads(payload) if c["name"] == name)
                if not seen or seen[-1] != state:
                    seen.append(state)
        return seen

    # -- the crate --------------------------------------------------------------------------------
    def sim(self, name: str) -> SimChannel:
        """The crate's channel of the lab channel called `name`."""
        return self.crate.channel(*self.data.named(name).place)

    def limits(self, name: str) -> Any:
        """The lab's `ChannelLimits` of the channel called `name`."""
        cfg = next(c for c in self.cfg.power.channels if c.name == name)
        return self.cfg.limits_for(cfg)
