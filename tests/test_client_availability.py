"""`trackerdcs.client.Lab` follows the availability of the services it commands: a command
nobody answers says why, from what `<prefix>/availability` said last. The test plays the
daemons' retained availability on a real Mosquitto."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Broker, write_lab
from trackerdcs.client import Lab, NoAnswer
from trackerdcs.stack.process import free_port, wait_until


@pytest.fixture
def bob(tmp_path: Path, broker: Broker) -> Iterator[Lab]:
    config = write_lab(tmp_path / "lab.yml", mqtt_port=broker.port, ca_port=free_port())
    lab = Lab(config, name="bob", timeout=5.0)
    yield lab.connect()
    lab.close()


def test_a_command_nobody_answers_says_what_the_service_said_last(bob: Lab, client) -> None:
    client.publish("/hv/availability", "offline", retain=True)  # the daemon's last will
    client.publish("/dcs/availability", "online", retain=True)
    wait_until(lambda: bob.availability("/hv") == "offline", 5, "/hv offline")
    wait_until(lambda: bob.availability("/dcs") == "online", 5, "/dcs online")
    with pytest.raises(NoAnswer, match=r"no answer from /hv within 0\.2 s: /hv is offline \("):
        bob.command("/hv/cmd/refresh", "", timeout=0.2)
    with pytest.raises(NoAnswer, match=r"/julabo within 0\.2 s: /julabo has never said online"):
        bob.command("/julabo/cmd/refresh", "", timeout=0.2)
    with pytest.raises(NoAnswer, match=r"no answer from /dcs within 0\.2 s$"):
        bob.command("/dcs/cmd/module/M1", "off", timeout=0.2)  # online: no reason to give
    with pytest.raises(NoAnswer, match=r"no answer from /nobody within 0\.2 s$"):
        bob.command("/nobody/cmd/x", 1, timeout=0.2)  # not followed: nothing to say
    client.publish("/hv/availability", "online", retain=True)  # back
    wait_until(lambda: bob.availability("/hv") == "online", 5, "/hv online")
    assert bob.availability("/lv") is None and bob.availability("/nobody") is None
    for topic in ("/hv/availability", "/dcs/availability"):
        client.publish(topic, "", retain=True)
