"""Every status carries its time (docs/topics.md): the archive stamps points with it, so a
retained status delivered again adds nothing; and liveness is judged by live statuses, so a
daemon that died together with the broker shows as silent once the broker is back from its
persistence with the dead daemon's retained `online`. Real Mosquitto, InfluxDB and daemons."""

from __future__ import annotations

import json
import time
from pathlib import Path

import yaml

from tests.conftest import EXAMPLE_LAB, Broker, python_process, serving, write_lab
from tests.ingestlab import InfluxServer, bridge_process, counters
from trackerdcs.safety.liveness import Liveness, heartbeats
from trackerdcs.stack.process import free_port, wait_until


def sim_sensors(interval: float) -> list[dict]:
    example = yaml.safe_load(EXAMPLE_LAB.read_text())["sensors"]
    return [{**s, "source": "sim", "publish_interval": interval} for s in example]


def test_liveness_deadlines():
    live = Liveness({"/hv": 10.0, "/temp_m1": 2.0}, factor=3)
    assert not live.silent("/hv", 0.0) and live.next_due(0.0) is None  # not watching yet
    live.restart(100.0)
    assert live.next_due(100.0) == 106.0
    assert live.live("/temp_m1", 105.0) and not live.live("/other", 105.0)
    assert live.silent("/hv", 130.0) and not live.silent("/temp_m1", 110.0)
    assert live.silent("/temp_m1", 111.0)
    assert live.why("/hv").startswith("/hv: no live status for 30 s (3 x its 10 s heartbeat)")
    live.suspend()  # no broker: nothing judged
    assert not live.silent("/hv", 1000.0)


def test_the_watched_sources_come_from_the_lab():
    from trackerdcs.config import load_config

    lab = load_config(EXAMPLE_LAB)
    assert heartbeats(lab) == {
        "/hv": 10.0, "/lv": 10.0, "/julabo": 10.0, "/sensor_1": 2.0, "/temp_m1": 2.0,
        "/temp_m2": 2.0, "/temp_m3": 2.0, "/temp_m4": 2.0, "/interlock": 10.0, "/dcs": 10.0,
    }  # fmt: skip


class SensorsAndAlarms:
    """A broker, the sensor daemon (simulated sensors, a status every 0.3 s: silent after
    0.9 s) and the alarm daemon, with a test client."""

    def __init__(self, workdir: Path, name: str, **broker: object) -> None:
        self.broker = Broker(workdir, **broker)
        config = write_lab(workdir / f"{name}.yml", mqtt_port=self.broker.port,
                           ca_port=free_port(), lab=name, sensors=sim_sensors(0.3),
                           alarms={"db": str(workdir / f"{name}.sqlite")})  # fmt: skip
        args = ["--config", str(config)]
        self.sensors = python_process(
            "sensor daemon",
            "trackerdcs.sensors.daemon",
            args,
            workdir / f"{name}-sensors.log",
            ready=serving("serving"),
        )
        self.alarms = python_process("alarms", "trackerdcs.safety.alarms_daemon", args,
                                     workdir / f"{name}-alarms.log",
                                     ready=serving("serving alarms"))  # fmt: skip
        self.client = None

    def __enter__(self) -> SensorsAndAlarms:
        self.broker.start()
        self.client = self.broker.client(session_expiry=600)
        self.alarms.start()
        self.sensors.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.close()
        self.alarms.stop()
        self.sensors.stop()
        self.broker.stop()

    def silent(self, prefix: str, active: bool, since: int) -> dict:
        """The silent:<prefix> alarm once it is (in)active."""

        def check(m) -> bool:
            found = [a for a in m.json["alarms"] if a["key"] == f"silent:{prefix}"]
            return bool(found) and found[0]["active"] is active

        alarms = self.client.wait_for("/alarms", check, 10, since).json["alarms"]
        return next(a for a in alarms if a["key"] == f"silent:{prefix}")


def test_a_daemon_killed_with_the_broker_shows_silent_with_an_alarm(workdir: Path):
    with SensorsAndAlarms(workdir, "liveness", persistent=True,
                          extra="autosave_interval 1\n") as lab:  # fmt: skip
        client, broker = lab.client, lab.broker
        client.wait_for("/sensor_1/availability", lambda m: m.text == "online", 5)
        client.wait_for("/sensor_1/status", lambda m: not m.retain, 5)
        seen = time.time()
        # the broker's store holds the daemon's `online` and a status once it saved after now
        data = workdir / f"mosquitto-{broker.port}-data"
        wait_until(lambda: any(f.stat().st_mtime > seen for f in data.glob("*.db")), 10,
                   "an autosave of the broker's store")  # fmt: skip
        assert not any(a["key"] == "silent:/sensor_1" and a["active"]
                       for a in client.latest("/alarms").json["alarms"])  # fmt: skip
        # a crash of both: no last will is ever sent
        broker.process.kill()
        lab.sensors.kill()
        since = client.mark()
        broker.start()  # alone, from its persistence
        availability = client.wait_for("/sensor_1/availability", timeout=10, since=since)
        assert availability.retain and availability.text == "online"  # the broker believes it
        found = lab.silent("/sensor_1", True, since)
        assert found["severity"] == "major" and "no live status for 0.9 s" in found["text"]
        # the daemon is back: its first live status clears the alarm (latched until acknowledged)
        since = client.mark()
        lab.sensors.start()
        lab.silent("/sensor_1", False, since)


def test_restarting_the_ingest_path_twice_adds_no_points(workdir: Path):
    broker = Broker(workdir).start()
    influx = InfluxServer(workdir).start()
    bridge = bridge_process(workdir, "restarts", broker.port, influx.url)
    config = write_lab(workdir / "restarts.yml", mqtt_port=broker.port, ca_port=free_port(),
                       lab="restarts", sensors=sim_sensors(0.2))  # fmt: skip
    sensors = python_process("sensor daemon", "trackerdcs.sensors.daemon",
                             ["--config", str(config)], workdir / "restarts-sensors.log",
                             ready=serving("serving"))  # fmt: skip
    client = broker.client()
    db = influx.client
    try:
        bridge.start()
        sensors.start()
        # a power daemon's retained array too, one point per channel, with its time
        channels = [{"number": n, "name": f"hv_m{n}", "module": f"M{n}", "on": 0, "vmon": 0.0,
                     "state": "OFF", "time": round(time.time() - 60, 3)}
                    for n in (1, 2)]  # fmt: skip
        client.publish("/hv/status", json.dumps(channels), retain=True)
        wait_until(lambda: db.count("sensor", "temperature") >= 10, 10, "sensor points")
        sensors.stop()  # the daemon is gone: only its retained statuses remain

        def settled() -> dict:
            # a counters snapshot taken after everything received so far is written
            return counters(
                client,
                client.mark(),
                10,
                lambda c: c["metrics"] > 0 and c["written"] == c["metrics"],
            )

        settled()
        before = {m: db.count(m, f) for m, f in (("sensor", "temperature"), ("hv", "vmon"))}
        assert before["hv"] == 2
        for _ in range(2):
            bridge.stop()
            since = client.mark()
            bridge.start()
            # it received the retained statuses again (5 sensors, the hv array) and wrote them
            counters(client, since, 10, lambda c: c["received"] >= 6 and c["metrics"] >= 7
                     and c["written"] == c["metrics"])  # fmt: skip
            after = {m: db.count(m, f) for m, f in (("sensor", "temperature"), ("hv", "vmon"))}
            assert after == before  # overwritten in place: no point invented
    finally:
        client.close()
        sensors.stop()
        bridge.stop()
        influx.stop()
        broker.stop()


def test_a_paused_daemon_is_silent_even_while_online(workdir: Path):
    """SIGSTOP: the connection stays up (no last will for a while), nothing is published."""
    with SensorsAndAlarms(workdir, "paused") as lab:
        lab.client.wait_for("/temp_m2/status", lambda m: not m.retain, 5)
        since = lab.client.mark()
        lab.sensors.freeze()
        try:
            lab.silent("/temp_m2", True, since)
            assert lab.client.latest("/temp_m2/availability").text == "online"
        finally:
            lab.sensors.thaw()
