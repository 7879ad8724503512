"""The coupled virtual lab (crate + chiller + sensors in one process, accelerated time) with the
real daemons over real Channel Access, TCP and Mosquitto: a stopped chiller warms the modules
and their HV leakage current rises; the room's humidity sets the dew point."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import EXAMPLE_LAB, FAST_DEFAULTS, Broker, python_process, serving, write_lab
from tests.labdata import EXAMPLE, LabData
from trackerdcs.sensors.dewpoint import dew_point
from trackerdcs.stack.process import ManagedProcess, free_port

HV, LV = EXAMPLE.channels("hv"), EXAMPLE.channels("lv")  # the lab below starts from it
M = EXAMPLE.modules  # its modules, in the lab file's order

SPEED = 300.0  # simulated s per wall s: a 10 K/min chiller ramp takes 2 wall s per 100 K
JULABO_FAST = {"write_delay": 0.005, "query_delay": 0.002, "timeout": 1.0, "poll_interval": 0.2,
               "heartbeat": 2, "reconnect_min_delay": 0.1, "reconnect_max_delay": 0.5}  # fmt: skip


# The two-chiller lab (`chillers=2`): the example's chiller becomes `coldbox` (still /julabo),
# cooling M1 and M2; `burnin` on /julabo_burnin cools M3 and M4.
TWO_CHILLERS = {"coldbox": ("/julabo", M[:2]), "burnin": ("/julabo_burnin", M[2:])}


class VirtualLab:
    """`trackerdcs-sim-lab` and the power, chiller and sensor daemons, on free ports; with
    `chillers=2`, the two-chiller lab of TWO_CHILLERS (a chiller daemon each)."""

    def __init__(self, workdir: Path, broker: Broker, name: str = "vlab", chillers: int = 1,
                 **overrides: Any) -> None:  # fmt: skip
        example = yaml.safe_load(EXAMPLE_LAB.read_text())
        self.control_port = free_port()
        julabo = {**example["julabo"], **JULABO_FAST,
                  "url": f"socket://127.0.0.1:{free_port()}"}  # fmt: skip
        if chillers == 2:
            cooling = {"julabo": None, "chillers": [
                {**julabo, "name": chiller, "prefix": prefix, "modules": modules,
                 "url": f"socket://127.0.0.1:{free_port()}"}
                for chiller, (prefix, modules) in TWO_CHILLERS.items()
            ]}  # fmt: skip
        else:
            cooling = {"julabo": julabo}
        sensors = [
            {**s, "source": f"socket://127.0.0.1:{free_port()}", "stale_timeout": 1.0,
             "publish_interval": 0.2}
            for s in example["sensors"]
        ]  # fmt: skip
        virtual_lab = {**example["virtual_lab"], "chiller_rate": 10.0, "line_interval": 0.1,
                       "control_port": self.control_port}  # fmt: skip
        self.config = write_lab(
            workdir / f"{name}.yml", mqtt_port=broker.port, ca_port=free_port(), lab=name,
            sensors=sensors, virtual_lab=virtual_lab,
            **{"power.defaults": FAST_DEFAULTS, **cooling, **overrides},
        )  # fmt: skip
        self.lab = LabData.load(self.config)  # the channels, modules and slots it was given
        config = ["--config", str(self.config)]

        def process(
            what: str, module: str, ready: str, *args: str, log: str = ""
        ) -> ManagedProcess:
            log = log or module.rsplit(".", 2)[-2]
            return python_process(what, module, [*config, *args], workdir / f"{name}-{log}.log",
                                  ready=serving(ready))  # fmt: skip

        if chillers == 2:
            self.chiller_prefixes = [prefix for prefix, _ in TWO_CHILLERS.values()]
            julabos = [
                process(f"julabo daemon {c}", "trackerdcs.julabo.daemon", "serving chiller",
                        "--chiller", c, log=f"julabo-{c}")
                for c in TWO_CHILLERS
            ]  # fmt: skip
        else:
            self.chiller_prefixes = ["/julabo"]
            julabos = [process("julabo daemon", "trackerdcs.julabo.daemon", "serving chiller")]
        self.processes = [
            process("virtual lab", "trackerdcs.sim.lab", "virtual lab", "--speed", str(SPEED),
                    "--noise", "0"),
            process("power daemon", "trackerdcs.power.daemon", "serving crate"),
            *julabos,
            process("sensor daemon", "trackerdcs.sensors.daemon", "serving"),
        ]  # fmt: skip
        self.client = broker.client()

    def start(self) -> VirtualLab:
        for proc in self.processes:
            proc.start()
        self.wait("/hv/status", lambda chs: all(c["state"] == "OFF" for c in chs), 10, since=0)
        for prefix in self.chiller_prefixes:
            self.wait(f"{prefix}/status", lambda s: s["state"] == "STOPPED", 10, since=0)
        for name in ("sensor_1", "temp_m1"):
            self.wait(f"/{name}/status", lambda s: not s["stale"], 10, since=0)
        return self

    def stop(self) -> list[int | None]:
        codes = [proc.stop() for proc in reversed(self.processes)]
        self.client.close()
        return codes

    def wait(self, topic: str, predicate: Callable[[Any], bool], timeout: float = 5.0,
             since: int | None = None) -> Any:  # fmt: skip
        """The first live (not retained) message on `topic` whose JSON satisfies `predicate`."""
        since = self.client.mark() if since is None else since
        return self.client.wait_for(
            topic, lambda m: not m.retain and predicate(m.json), timeout, since
        ).json

    def command(self, topic: str, payload: Any) -> dict[str, Any]:
        prefix = "/" + topic.split("/")[1]
        return self.client.command(topic, payload, f"{prefix}/response")

    def backdoor(self, line: str) -> dict[str, Any]:
        with socket.create_connection(("127.0.0.1", self.control_port), timeout=5) as sock:
            sock.sendall(line.encode() + b"\n")
            return json.loads(sock.makefile().readline())


@pytest.fixture(scope="module")
def vlab(workdir: Path, broker: Broker) -> Iterator[VirtualLab]:
    lab = VirtualLab(workdir, broker).start()
    yield lab
    assert lab.stop() == [0, 0, 0, 0]  # every process exits cleanly on SIGTERM


def first_hv(channels: list[dict]) -> dict:
    """The lab's first HV channel in a `/hv/status`."""
    return next(c for c in channels if c["name"] == HV[0].name)


def test_stopped_chiller_warms_the_modules_and_raises_the_hv_current(vlab: VirtualLab) -> None:
    assert vlab.command(HV[0].topic("setv"), 100)["ok"]
    assert vlab.command(HV[0].topic("switch"), "on")["ok"]
    warm = first_hv(vlab.wait("/hv/status", lambda chs: first_hv(chs)["state"] == "ON"))

    assert vlab.command("/julabo/cmd/setpoint", -10)["ok"]
    assert vlab.command("/julabo/cmd/switch", "on")["ok"]
    running = vlab.wait("/julabo/status", lambda s: s["state"] == "RUNNING")
    assert running["external_temp"] is None  # the example's unit has no Pt100 plugged in
    assert running["model"] == "full" and isinstance(running["bath_temp"], float)
    cold = vlab.wait("/temp_m1/status", lambda s: (s["temperature"] or 99) < -7, timeout=10)
    cold_hv = first_hv(
        vlab.wait("/hv/status", lambda chs: first_hv(chs)["imon"] < warm["imon"] / 8, timeout=15)
    )
    assert cold_hv["state"] == "ON"

    # the physics: leakage scale 2 ** ((T - 20) / 7), seen through the backdoor
    state = vlab.backdoor("get")
    m1 = state["modules"][M[0]]
    assert m1["leakage_scale"] == pytest.approx(2 ** ((m1["temperature"] - 20) / 7), rel=1e-4)
    assert state["chiller_running"] is True and state["bath"] < -9

    since = vlab.client.mark()
    assert vlab.command("/julabo/cmd/switch", "off")["ok"]
    stopped = vlab.wait("/julabo/status", lambda s: s["state"] == "STOPPED", since=since)
    assert stopped["running"] == 0
    warmer = vlab.wait(
        "/temp_m1/status", lambda s: s["temperature"] > cold["temperature"] + 8, 10, since
    )
    rising = first_hv(
        vlab.wait("/hv/status", lambda chs: first_hv(chs)["imon"] > 2 * cold_hv["imon"], 10, since)
    )
    assert rising["state"] == "ON" and warmer["module"] == M[0]
    temps = [m.json["temperature"] for m in vlab.client.messages[since:]
             if m.topic == "/temp_m1/status"]  # fmt: skip
    assert temps[-1] > temps[0]  # the module warms up steadily, as the bath does
    assert vlab.command(HV[0].topic("switch"), "off")["ok"]


def test_room_humidity_sets_the_dew_point(vlab: VirtualLab) -> None:
    room = vlab.wait("/sensor_1/status", lambda s: True)
    assert room["dewpoint"] == round(dew_point(room["temperature"], room["humidity"]), 2)
    answer = vlab.backdoor("set room_temperature=25 room_humidity=70")
    assert answer["ok"] is True and answer["room_humidity"] == 70.0
    room = vlab.wait("/sensor_1/status", lambda s: s["humidity"] == 70.0)
    assert room["temperature"] == 25.0 and room["dewpoint"] == round(dew_point(25.0, 70.0), 2)
    assert vlab.backdoor("set room_humidity=140")["ok"] is False
    vlab.backdoor("set room_temperature=21 room_humidity=45")


def test_backdoor_faults_reach_the_daemons(vlab: VirtualLab) -> None:
    assert vlab.backdoor("julabo fault -14")["ok"]
    status = vlab.wait("/julabo/status", lambda s: s["state"] == "ERROR")
    assert status["status_text"] == "EXCESS TEMPERATURE PROTECTOR ALARM"
    vlab.backdoor("julabo clear")
    vlab.wait("/julabo/status", lambda s: s["state"] == "STOPPED")

    assert vlab.backdoor("sensor temp_m2 silent")["ok"]
    stale = vlab.wait("/temp_m2/status", lambda s: s["stale"], timeout=3)
    assert stale["temperature"] is None and stale["module"] == M[1]
    vlab.backdoor("sensor temp_m2 ok")
    vlab.wait("/temp_m2/status", lambda s: not s["stale"])
    answer = vlab.backdoor("sensor nope ok")
    assert answer["ok"] is False and "sensor NAME MODE" in answer["error"]
    answer = vlab.backdoor("julabo drop-every -1")
    assert answer["ok"] is False and "a count >= 0" in answer["error"]
    answer = vlab.backdoor("julabo slow")
    assert answer["ok"] is False and "drop N | drop-every N" in answer["error"]
    dropped = vlab.backdoor("julabo drop 1")["chiller_replies_dropped"]
    vlab.wait("/julabo/status", lambda s: vlab.backdoor("get")["chiller_replies_dropped"]
              > dropped, timeout=5)  # fmt: skip
    assert vlab.wait("/julabo/status", lambda s: True)["state"] == "STOPPED"  # retried


def test_the_backdoor_takes_the_ranges_its_doc_gives() -> None:
    """`set` accepts exactly the documented ranges (room_humidity: an unclipped sensor's
    -6..119 % RH, so the sensors' edges can be played), in-process."""
    from trackerdcs.config import VirtualLabConfig
    from trackerdcs.sim.lab import LabControl, LabPhysics

    control = LabControl(LabPhysics(VirtualLabConfig(), {}, {}), {}, {})
    assert LabControl.__doc__ is not None
    for key, (low, high) in LabControl.SETTABLE.items():
        assert f"`{key}` ({low:g}..{high:g} " in LabControl.__doc__, key
        assert control.execute(f"set {key}={low:g}")["ok"]
        assert control.execute(f"set {key}={high:g}")["ok"]
        refused = control.execute(f"set {key}={high + 1:g}")
        assert not refused["ok"] and f"within [{low:g}, {high:g}]" in refused["error"]
