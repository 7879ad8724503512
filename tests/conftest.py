"""Fixtures: real Mosquitto, the simulated crate over real Channel Access, the real daemons.

Everything listens on free 127.0.0.1 ports and is stopped by PID at the end.
"""

from __future__ import annotations

import itertools
import os
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, settings

from tests.labdata import EXAMPLE, EXAMPLE_LAB, LabData
from tests.mqttclient import TestClient
from tests.simca import SimCrateProcess
from trackerdcs.guard import FAULTS
from trackerdcs.stack.mosquitto import mosquitto_process
from trackerdcs.stack.portblocks import claim_block
from trackerdcs.stack.process import PORT_BLOCK_ENV, ManagedProcess, free_port
from trackerdcs.stack.ready import serving

pytest_plugins = ["tests.pyramid"]  # the in-process / real-process counts at the end of a run

# Property-based tests (hypothesis): a fixed, derandomized search of bounded size, so the suite
# stays quick and gives the same result on every run; HYPOTHESIS_PROFILE=fuzz searches at random
# and much longer (a local hunt for new failing inputs, not for CI).
settings.register_profile(
    "trackerdcs", max_examples=150, derandomize=True, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)  # fmt: skip
settings.register_profile("fuzz", max_examples=20_000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "trackerdcs"))

ROOT = Path(__file__).resolve().parent.parent
# EPICS system names (the PV prefix) are unique per test run and per pytest-xdist worker, so that
# no two simulated crates on this machine serve the same PV names
_systems = (f"{os.environ.get('PYTEST_XDIST_WORKER', '')}n{n}" for n in itertools.count())


class Broker:
    """A Mosquitto on a free loopback port; restartable on the same port. `persistent`: retained
    messages survive a restart (as in production); `extra`: more mosquitto.conf lines."""

    def __init__(self, workdir: Path, persistent: bool = False, extra: str = "") -> None:
        self.port = free_port()
        store = workdir / f"mosquitto-{self.port}-data" if persistent else None
        self.process = mosquitto_process(workdir, self.port, extra=extra, persistence=store)

    def start(self) -> Broker:
        self.process.start()
        return self

    def stop(self) -> None:
        self.process.stop()

    def client(self, **kw) -> TestClient:
        return TestClient(self.port, **kw)


def pytest_configure(config: pytest.Config) -> None:
    """This test process draws its free ports from a block of its own
    (trackerdcs/stack/portblocks.py); the pytest-xdist controller, which runs no test, claims
    none."""
    if getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput"):
        return
    os.environ[PORT_BLOCK_ENV] = claim_block()


# The groups that take minutes (about 4, 2.5, 2 and 1.5 on this 2-core machine, serially) start
# first, one per worker, so that no worker is left with one of them at the end of a run; the
# others follow in file order (`make test` passes --no-loadscope-reorder). Only the run's length
# depends on this list.
LONGEST_FIRST = (
    "podman",
    "tests/test_safety_scenarios.py",
    "tests/test_local_stack.py",
    "tests/test_nodered.py",
)


def _group(item: pytest.Item) -> str:
    marker = item.get_closest_marker("xdist_group")
    return str(marker.args[0]) if marker else item.nodeid.split("::")[0]


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """`make test` runs the suite in pytest-xdist workers with `--dist loadgroup`: each test
    module is one group, so its module-scoped labs start once, on one worker. Modules that share
    a machine-wide resource name one group (`pytestmark = pytest.mark.xdist_group("podman")`) and
    run one after the other on one worker."""
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))
    rank = {group: n for n, group in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(_group(item), len(rank)))


@pytest.fixture(autouse=True)
def _fresh_faults():
    """Each test starts with no unexpected errors counted in this process (trackerdcs.guard)."""
    FAULTS.reset()
    yield
    FAULTS.reset()


@pytest.fixture(scope="session")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("stack")


@pytest.fixture(scope="module")
def broker(workdir):
    b = Broker(workdir).start()
    yield b
    b.stop()


@pytest.fixture
def client(broker):
    c = broker.client()
    yield c
    c.close()


EXAMPLE_SLOTS = EXAMPLE.slots  # kind -> the slot of its first board in examples/lab.yml


CLEANROOM_SLOTS = {"hv": 12, "lv": 3}


def cleanroom_layout(data: dict) -> dict:
    """The example lab as a real lab lays it out: another system name, HV boards in a high slot
    (12), LV boards in a low one (3): CLEANROOM_SLOTS."""
    moved = {EXAMPLE_SLOTS[kind]: slot for kind, slot in CLEANROOM_SLOTS.items()}
    crate = data["crates"][0]
    crate["boards"] = {moved[slot]: board for slot, board in crate["boards"].items()}
    crate["system"] = f"cleanroom{next(_systems)}"
    for ch in data["power"]["channels"]:
        ch["board"] = moved[ch["board"]]
    return data


LAYOUTS = {"example": lambda data: data, "cleanroom": cleanroom_layout}


def write_lab(path: Path, *, mqtt_port: int, ca_port: int, system: str | None = None,
              layout: str = "example", **overrides) -> Path:  # fmt: skip
    """The example lab with this test's ports and a unique EPICS system name (`layout`
    `cleanroom`: its boards in other slots, under another system name)."""
    data = yaml.safe_load(EXAMPLE_LAB.read_text())
    data["mqtt"]["port"] = mqtt_port
    data["mqtt"]["reconnect_max_delay"] = 0.5
    crate = data["crates"][0]
    crate["address"] = f"127.0.0.1:{ca_port}"
    crate["system"] = system or f"test{next(_systems)}"
    data = LAYOUTS[layout](data)
    for key, value in overrides.items():
        target = data
        *parents, last = key.split(".")
        for p in parents:
            target = target[int(p)] if isinstance(target, list) else target[p]
        target[last] = value
    # no interlock service runs beside most test labs: supervision only where a test asks for it
    if not {"power", "power.failsafe"} & set(overrides):
        data["power"].setdefault("failsafe", {})["supervisors"] = []
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def python_process(name: str, module: str, args: list[str], log: Path, **kw) -> ManagedProcess:
    return ManagedProcess(name, [sys.executable, "-m", module, *args], log_path=log, **kw)


class PowerLab:
    """Broker (shared), a simulated crate and the power daemon, with a test client."""

    def __init__(self, workdir: Path, broker: Broker, name: str, *,
                 crate_args: tuple[str, ...] = (), **overrides) -> None:  # fmt: skip
        self.workdir = workdir
        self.broker = broker
        self.ca_port = free_port()
        overrides.setdefault("power.defaults", FAST_DEFAULTS)
        self.config = write_lab(
            workdir / f"{name}.yml", mqtt_port=broker.port, ca_port=self.ca_port, **overrides
        )
        data = yaml.safe_load(self.config.read_text())
        self.system = data["crates"][0]["system"]
        self.lab = LabData(data)  # what the tests address: channels, slots, modules
        self.places = self.lab.places
        self.slots = self.lab.slots
        self.crate = SimCrateProcess(
            self.config,
            self.ca_port,
            ["--noise", "0", "--tick", "0.05", *crate_args],
            log_path=workdir / f"{name}-crate.log",
        )
        self.daemon = python_process(
            "power daemon",
            "trackerdcs.power.daemon",
            ["--config", str(self.config)],
            workdir / f"{name}-daemon.log",
            ready=serving("serving crate"),
        )
        self.client: TestClient | None = None

    def start(self) -> PowerLab:
        self.client = self.broker.client()
        self.crate.start()
        self.daemon.start()
        # up, and configured: I0Set is the last setting written at the first connection, and the
        # lab's `iset` differs from the simulator's default, so `ilim` shows it has landed
        for prefix, iset in (("/hv", FAST_DEFAULTS["hv"]["iset"]),
                             ("/lv", FAST_DEFAULTS["lv"]["iset"])):  # fmt: skip
            self.wait_status(prefix, lambda chs, i=iset: all(c["ilim"] == i for c in chs))
        return self

    def stop(self) -> None:
        self.daemon.stop()
        self.crate.stop()
        if self.client:
            self.client.close()

    # simulator side (Channel Access, as a crate client would see it)
    def pv(self, board: int, channel: int, param: str) -> str:
        return self.crate.pv(board, channel, param)

    def channel(self, kind: str, index: int = 0):
        """The `index`-th channel of this kind in this lab's file (tests.labdata.Channel)."""
        return self.lab.channel(kind, index)

    def chpv(self, name: str, param: str) -> str:
        """The PV of a parameter of the channel called `name` in the lab file."""
        return self.crate.pv(*self.places[name], param)

    def get(self, pv: str):
        return self.crate.get(pv)

    def put(self, pv: str, value) -> None:
        self.crate.put(pv, value)

    def writes(self) -> int:
        return self.crate.writes()

    # MQTT side
    def command(self, topic: str, payload, timeout: float = 5.0) -> dict:
        prefix = "/" + topic.split("/")[1]
        return self.client.command(topic, payload, f"{prefix}/response", timeout)

    def wait_status(self, prefix: str, predicate, timeout: float = 5.0, since: int = 0):
        """The first live `<prefix>/status` (from `since`) whose channels satisfy `predicate`.

        Retained copies are skipped: on a shared broker they may come from an earlier lab.
        """
        return self.client.wait_for(
            f"{prefix}/status", lambda m: not m.retain and predicate(m.json), timeout, since
        ).json

    def wait_channel(self, prefix: str, name: str, predicate, timeout: float = 5.0, since=0):
        def match(channels):
            return any(c["name"] == name and predicate(c) for c in channels)

        channels = self.wait_status(prefix, match, timeout, since)
        return next(c for c in channels if c["name"] == name)

    def reset(self) -> None:
        """All channels off and at rest, trips cleared, no injected leakage."""
        for name in self.places:
            self.put(self.chpv(name, "SimLeak"), 0.0)
        for prefix in ("/hv", "/lv"):
            self.command(f"{prefix}/cmd/switch/all", "off")
        self.command("/hv/cmd/clear", "")
        for prefix in ("/hv", "/lv"):
            self.wait_status(
                prefix,
                lambda chs: all(c["state"] == "OFF" for c in chs),
                timeout=10,
                since=0,
            )


# Fast ramps keep the tests short; the physics is the same.
FAST_DEFAULTS = {
    "hv": {"vset": 0, "vmax": 600, "iset": 10, "imax": 100, "rup": 200, "rdwn": 400, "trip": 0.2,
           "pdwn": "Kill"},
    "lv": {"vset": 10.5, "vmax": 12, "iset": 2.0, "imax": 4, "ruptime": 500, "rdwtime": 250,
           "trip": 0.5},
}  # fmt: skip


@pytest.fixture(scope="module")
def power_lab_module(workdir, broker, request):
    name = request.module.__name__.rsplit(".", 1)[-1]
    lab = PowerLab(workdir, broker, name).start()
    yield lab
    lab.stop()


@pytest.fixture
def power_lab(power_lab_module):
    """The module's lab, reset to all-off before each test."""
    power_lab_module.reset()
    return power_lab_module
