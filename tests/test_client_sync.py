"""`Lab.sync` against a real Mosquitto: after it, the client has every message the broker had
sent it (what a dcs daemon's recipe and IV-scan checks rely on, their commands coming by another
connection), and a broker that does not answer is a clear refusal."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import Broker
from tests.labdata import EXAMPLE_LAB
from trackerdcs.client import Lab, NoAnswer, NotConnected, sync_or_refuse
from trackerdcs.commands import CommandError
from trackerdcs.config import load_config
from trackerdcs.topics import DCS

SYNC = DCS.reply("test-sync/sync")


def lab_file(tmp_path: Path, port: int) -> Path:
    data = yaml.safe_load(Path(EXAMPLE_LAB).read_text())
    data["mqtt"]["port"] = port
    path = tmp_path / "lab.yml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def lab(tmp_path: Path, broker: Broker) -> Iterator[Lab]:
    client = Lab(lab_file(tmp_path, broker.port), name="sync", timeout=5.0, sync_topic=SYNC)
    yield client.connect()
    client.close()


def test_after_sync_the_client_has_what_was_published_before(lab: Lab, broker: Broker) -> None:
    """Each interlock status is acknowledged by the broker, then `sync`: the client reads it at
    once, with no wait of its own (without `sync`, its network thread is often behind)."""
    topic = lab.lab.power.interlock_topic
    module = load_config(EXAMPLE_LAB).power.channels[0].module
    publisher = broker.client(topics=("test/none",))
    try:
        for n in range(50):
            rule = {"name": "r", "active": True, "modules": [module], "reason": f"n={n}"}
            publisher.publish(topic, {"rules": [rule]}, qos=1)  # returns on the PUBACK
            lab.sync()
            assert [r["reason"] for r in lab.interlocks(module)] == [f"n={n}"]
    finally:
        publisher.close()


def test_sync_without_a_topic_returns_and_a_closed_client_says_so(tmp_path, broker) -> None:
    plain = Lab(lab_file(tmp_path, broker.port), name="plain", timeout=5.0)
    plain.sync()  # nothing to sync with: at once, even unconnected
    synced = Lab(lab_file(tmp_path, broker.port), name="closed", sync_topic=SYNC)
    with pytest.raises(NotConnected):
        synced.sync()


def test_forged_markers_count_for_nothing_and_a_silent_broker_refuses(tmp_path, workdir) -> None:
    frozen = Broker(workdir).start()
    client = Lab(lab_file(tmp_path, frozen.port), name="frozen", timeout=5.0, sync_topic=SYNC)
    forger = frozen.client(topics=(SYNC,))
    try:
        # a marker retained before the client subscribed (even with its own token), and
        # another client's live one
        forger.publish(SYNC, json.dumps(f"{client._nonce}:999"), retain=True)
        client.connect()
        forger.publish(SYNC, json.dumps("someone-else:999"))
        forger.wait_for(SYNC, lambda m: m.text == '"someone-else:999"', timeout=5.0)
        client.sync(5.0)  # its own marker, after both: they did not count
        assert client._synced == 1
        frozen.process.freeze()
        try:
            with pytest.raises(NoAnswer, match=r"did not send the marker back within 0\.2 s"):
                client.sync(0.2)
            with pytest.raises(CommandError, match="cannot bring the lab's state up to date"):
                sync_or_refuse(client, 0.2)
        finally:
            frozen.process.thaw()
    finally:
        forger.close()
        client.close()
        frozen.stop()
