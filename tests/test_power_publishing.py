"""When the power service publishes: at once on change, through deadbands, and on a heartbeat."""

from __future__ import annotations

import asyncio
import itertools
import json

import pytest

from tests.conftest import EXAMPLE_LAB, PowerLab
from trackerdcs.config import ChannelKind, load_config
from trackerdcs.power.channel import PowerChannel, make_machine
from trackerdcs.power.service import PowerService


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


def test_deadbands(service):
    ch = service.channels[0]
    for param, value in ch.readback.items():
        service.on_readback(ch.address, param, value)
    service.publish_status()
    before = settle(service)
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
    finally:
        lab.stop()
