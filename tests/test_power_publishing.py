"""When the power service publishes: at once on change, through deadbands, and on a heartbeat."""

from __future__ import annotations

import asyncio
import itertools
import json
import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.conftest import EXAMPLE_LAB, PowerLab
from tests.labdata import EXAMPLE
from tests.simca import CAMonitor
from trackerdcs.config import ChannelKind, load_config
from trackerdcs.power.channel import PowerChannel, make_machine
from trackerdcs.power.service import PowerService

HV, LV = EXAMPLE.channels("hv"), EXAMPLE.channels("lv")  # the lab below starts from it


class RecordingLink:
    """Stands in for MqttLink in unit tests of the service's publishing logic."""

    def __init__(self) -> None:
        self.published: list[tuple[str, str]] = []

    def publish_state(self, topic: str, payload: str) -> None:
        self.published.append((topic, payload))


class RecordingBackend:
    def __init__(self) -> None:
        self.writes: list[tuple] = []

    def write(self, addr, param, value) -> None:
        self.writes.append((addr, param, value))


@pytest.fixture
def service():
    cfg = load_config(EXAMPLE_LAB)
    channels = [PowerChannel(c, cfg.limits_for(c)) for c in cfg.power.channels if c.kind == "hv"]
    make_machine(channels)
    loop = asyncio.new_event_loop()
    svc = PowerService(
        ChannelKind.HV, "/hv", channels, backend=RecordingBackend(), link=RecordingLink(),
        publish=cfg.power.publish, loop=loop,
    )  # fmt: skip
    for ch in channels:
        svc.on_connection(ch.address, True)
    yield svc
    loop.close()


def settle(svc: PowerService) -> int:
    """Run what is due on the loop; return how many status messages went out."""
    svc.loop.call_soon(svc.loop.stop)
    svc.loop.run_forever()
    return sum(1 for topic, _ in svc.link.published if topic == "/hv/status")


def published_once(svc: PowerService, ch: PowerChannel) -> int:
    """Every readback of `ch` in, its status published: the count of status messages."""
    for param, value in ch.readback.items():
        svc.on_readback(ch.address, param, value)
    svc.publish_status()
    return settle(svc)


def test_deadbands(service):
    ch = service.channels[0]
    before = published_once(service, ch)
    service.on_readback(ch.address, "IMon", 0.04)  # below the 0.05 uA deadband: no publish
    service.on_readback(ch.address, "VMon", 0.4)  # below the 0.5 V deadband
    assert service._publish_handle is None
    assert settle(service) == before
    service.on_readback(ch.address, "IMon", 0.2)  # beyond it: published
    pending = service._publish_handle
    assert pending is not None
    service.on_readback(ch.address, "V0Set", 0.1)  # set points: every change, coalesced
    assert service._publish_handle is pending
    pending.cancel()
    service.publish_status()
    assert settle(service) == before + 1
    last = [payload for topic, payload in service.link.published if topic == "/hv/status"][-1]
    assert json.loads(last)[0]["imon"] == 0.2


def test_heartbeat_republishes_an_unchanged_status(workdir, broker):
    lab = PowerLab(workdir, broker, "heartbeat", **{"power.publish": {"heartbeat": 0.3}}).start()
    try:
        # the readbacks of the settings written at start-up may still be arriving: start at
        # the first quiet gap (a heartbeat); from then on nothing changes, only heartbeats come
        times = [lab.client.wait_for("/hv/status", since=lab.client.mark(), timeout=3).t]
        while len(times) < 5:
            t = lab.client.wait_for("/hv/status", since=lab.client.mark(), timeout=3).t
            times = [*times, t] if t - times[-1] > 0.2 or len(times) > 1 else [t]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert all(0.2 < gap < 1.5 for gap in gaps), gaps
        # a heartbeat of unchanged values gets a new time: the daemon's clock at publishing
        stamps = [m.json[0]["time"] for m in lab.client.messages if m.topic == "/hv/status"]
        assert stamps[-5:] == sorted(set(stamps[-5:]))
    finally:
        lab.stop()


def test_an_unchanged_readback_publishes_nothing(service):
    ch = service.channels[0]
    before = published_once(service, ch)
    for param in ("V0Set", "I0Set", "Pw", "Status"):  # a monitor repeating the same value
        service.on_readback(ch.address, param, ch.readback[param])
    assert service._publish_handle is None and settle(service) == before
    service.on_readback(ch.address, "V0Set", ch.readback["V0Set"] + 1.0)  # a change: published
    assert service._publish_handle is not None


def test_every_channel_object_carries_the_publish_time(service):
    service.publish_status()
    channels = json.loads(next(p for t, p in reversed(service.link.published) if t == "/hv/status"))
    times = {c["time"] for c in channels}
    assert len(times) == 1 and isinstance(times.pop(), float)
    assert [set(c) - {"time"} for c in channels] == [set(ch.as_status()) for ch in service.channels]


class EchoClient:
    """The Node-RED pattern that fed on itself: a slider wired to `/hv/status` and back to
    `/hv/cmd/setv/0`, answering every status with the set point it shows (MQTT 3.1.1)."""

    def __init__(self, port: int) -> None:
        self.echoes = 0
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"echo-{port}",
                                  protocol=mqtt.MQTTv311)  # fmt: skip
        self.client.on_connect = lambda c, *_: c.subscribe("/hv/status", 1)
        self.client.on_message = self._echo
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _echo(self, client, userdata, msg) -> None:
        if msg.retain:
            return
        vreq = next(c["vreq"] for c in json.loads(msg.payload) if c["number"] == 0)
        self.echoes += 1
        client.publish(HV[0].topic("setv", by="number"), f"{vreq:g}", qos=1)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def quiet(client, topic: str, gap: float, timeout: float) -> int:
    """Wait until `topic` has been silent for `gap` s; how many messages came meanwhile.
    TimeoutError when it never falls silent within `timeout` s."""
    deadline, count = time.monotonic() + timeout, 0
    while True:
        since = client.mark()
        try:
            client.wait_for(topic, since=since, timeout=gap)
        except TimeoutError:
            return count
        count += 1
        if time.monotonic() > deadline:
            raise TimeoutError(f"{topic} still busy after {timeout} s ({count} messages)")


def settled_writes(lab, gap: float, timeout: float) -> int:
    """The crate's write count once no write came for `gap` s (the daemon may still be writing
    settings a crate PV connected late to), from a monitor on the counter: TimeoutError if
    writes never stop."""
    with CAMonitor(lab.crate.port, f"{lab.crate.system}:Sim:Writes") as writes:
        return int(writes.quiet(gap, timeout))


def test_a_client_echoing_the_status_back_as_a_set_point_dies_out(power_lab):
    lab = power_lab
    echo = EchoClient(lab.broker.port)
    try:
        writes = settled_writes(lab, gap=1.0, timeout=10)
        assert lab.command(HV[0].topic("setv", by="number"), 50)[
            "ok"
        ]  # one change: one status, one echo
        quiet(lab.client, "/hv/status", gap=1.0, timeout=10)
        # (before: each echo made a same-value put, a monitor and a status: ~130 commands/s)
        assert echo.echoes <= 3, echo.echoes
        assert lab.writes() - writes <= 1 + echo.echoes
        assert lab.client.latest("/hv/status").json[0]["vreq"] == 50.0
    finally:
        echo.close()
