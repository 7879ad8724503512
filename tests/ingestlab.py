"""The data path under test: InfluxDB on free loopback ports, the ingest bridge on the repo's
telegraf.conf, and one shared lab (broker, virtual lab and daemons, InfluxDB, bridge) whose
data the ingest, Grafana and history tests read. Everything is stopped by PID.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, Broker
from tests.mqttclient import TestClient
from trackerdcs.config import InfluxConfig
from trackerdcs.ingest.bridge import READY
from trackerdcs.ingest.influxdb import InfluxClient
from trackerdcs.stack.influx import influxd_process, setup_database
from trackerdcs.stack.process import ManagedProcess, free_port, wait_until

TELEGRAF_CONF = ROOT / "telegraf.conf"


class InfluxServer:
    """influxd on free loopback ports (HTTP and RPC), restartable on the same ports and data."""

    def __init__(self, workdir: Path) -> None:
        self.cfg = InfluxConfig(port=free_port(), rpc_port=free_port())
        self.process = influxd_process(workdir, self.cfg.host, self.cfg.port, self.cfg.rpc_port)
        self.client = InfluxClient(self.cfg.url)

    @property
    def url(self) -> str:
        return self.cfg.url

    def start(self, setup: bool = True) -> InfluxServer:
        self.process.start()
        if setup:
            setup_database(self.client, self.cfg)
        return self

    def stop(self) -> None:
        self.process.stop()


def bridge_process(
    workdir: Path,
    name: str,
    mqtt_port: int,
    influx_url: str,
    conf: Path = TELEGRAF_CONF,
    status_interval: float = 0.5,
) -> ManagedProcess:
    """`trackerdcs-ingest` on `conf`, pointed at this test's broker and InfluxDB."""
    env = {
        "TRACKERDCS_MQTT_SERVER": f"tcp://127.0.0.1:{mqtt_port}",
        "TRACKERDCS_INFLUX_URL": influx_url,
    }
    argv = [sys.executable, "-m", "trackerdcs.ingest.bridge", "--config", str(conf)]
    argv += ["--status-interval", str(status_interval)]
    return ManagedProcess(
        "ingest bridge",
        argv,
        log_path=workdir / f"{name}-ingest.log",
        env=env,
        ready=lambda proc: READY in proc.output(),
        cwd=ROOT,
    )


def counters(client: TestClient, since: int = 0, timeout: float = 5.0, predicate=None) -> dict:
    """The next `/ingest/status` (from `since`) satisfying `predicate`."""
    return client.wait_for(
        "/ingest/status", lambda m: predicate is None or predicate(m.json), timeout, since
    ).json


class DataLab:
    """Broker, InfluxDB, the bridge and the two-chiller virtual lab (tests/test_virtual_lab.py
    TWO_CHILLERS) with every daemon."""

    def __init__(self, workdir: Path) -> None:
        from tests.test_virtual_lab import VirtualLab

        self.workdir = workdir
        self.broker = Broker(workdir)
        self.influx = InfluxServer(workdir)
        self.bridge = bridge_process(workdir, "datalab", self.broker.port, self.influx.url)
        self._make_vlab = lambda: VirtualLab(workdir, self.broker, "datalab", chillers=2)
        self.vlab: Any = None
        self.client: TestClient | None = None
        self._stopped = False

    @property
    def db(self) -> InfluxClient:
        return self.influx.client

    def start(self) -> DataLab:
        self.broker.start()
        self.influx.start()
        self.bridge.start()
        self.client = self.broker.client()
        self.vlab = self._make_vlab().start()
        publish_iv_scan(self.client, self.vlab.lab.modules[0])  # the lab's first module
        for measurement, field in (
            ("hv", "vmon"),
            ("lv", "vmon"),
            ("julabo", "bath_temp"),
            ("sensor", "dewpoint"),
            ("sensor", "temperature"),
            ("ivscan", "imon"),
        ):
            wait_until(
                lambda m=measurement, f=field: self.db.count(m, f) > 0,
                10,
                f"{measurement}.{field} in InfluxDB",
                poll=0.1,
            )
        wait_until(lambda: len(self.chillers()) == 2, 10, "both chillers in InfluxDB", poll=0.1)
        return self

    def chillers(self) -> list[str]:
        """The values of the `chiller` tag of measurement `julabo`."""
        series = self.db.series('SHOW TAG VALUES FROM "julabo" WITH KEY = "chiller"')
        return sorted(r["value"] for s in series for r in s.rows())

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self.vlab is not None:
            self.vlab.stop()
        if self.client is not None:
            self.client.close()
        self.bridge.stop()
        self.influx.stop()
        self.broker.stop()

    def counters(self, since: int = 0, timeout: float = 5.0, predicate=None) -> dict:
        assert self.client is not None
        return counters(self.client, since, timeout, predicate)

    def written_until_now(self) -> datetime:
        """Now, once every point stamped until now is in InfluxDB: the second counters snapshot
        after now (surely taken after it) counts the points made so far; the writer writes them
        in order, so once `written` reaches that count, all of them are in."""
        now = datetime.now(UTC)
        assert self.client is not None
        self.counters(self.client.mark())
        made = self.counters(self.client.mark())["metrics"]
        self.counters(self.client.mark(), predicate=lambda c: c["written"] >= made)
        return now


def publish_iv_scan(client: TestClient, module: str, steps: int = 4) -> str:
    """An IV scan's points for `module`, as the dcs daemon publishes them on /dcs/ivscan/points
    (docs/topics.md, ivscan-point; tests/test_ivscan.py runs real scans): its scan id."""
    now = time.time()
    scan = f"{module}-{datetime.fromtimestamp(now, UTC).strftime('%Y%m%dT%H%M%S')}.000Z"
    for step in range(1, steps + 1):
        volts = 50.0 * (step - 1)
        client.publish("/dcs/ivscan/points", {
            "scan": scan, "module": module, "channel": f"hv_{module.lower()}", "step": step,
            "vset": volts, "vmon": volts, "imon": 0.2 * volts**0.5, "imon_std": 0.001,
            "readings": 5, "temperature": 20.0, "room_temperature": 21.0, "humidity": 45.0,
            "dewpoint": 8.6, "time": round(now - steps + step, 3),
        })  # fmt: skip
    return scan


_shared: DataLab | None = None


def shared_data_lab(tmp_path_factory: pytest.TempPathFactory, config: pytest.Config) -> DataLab:
    """One DataLab for the whole session (started on first use, stopped at the end)."""
    global _shared
    if _shared is None:
        lab = DataLab(tmp_path_factory.mktemp("datalab"))
        config.add_cleanup(lab.stop)
        try:
            lab.start()
        except Exception:
            lab.stop()
            raise
        _shared = lab
    return _shared


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=1, default=str)[:3000]
