"""The production Mosquitto configuration, run by a real Mosquitto, with real clients and the
real daemons.

The broker runs mosquitto/mosquitto.conf adapted only in its listener (a free port on 127.0.0.1),
its paths (a temporary directory) and include_dir; the ACL is the repository's, and the password
file is made by the container's own entry point (mosquitto/entrypoint.sh, `mosquitto_passwd -b`)
from MQTT_PASSWORD_<USER> variables, as docker-compose.yml gives them. MQTT 5 at QoS 1, so a
publish the ACL denies is answered with reason code 135 (not authorized); a reader with every
read right then proves it never got through (a round-trip marker, no sleeps).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import secrets
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from tests.conftest import ROOT
from tests.labdata import LabData
from tests.mqttclient import Message
from tests.test_deployment import DUMMY, SCRIPTS, argv_of, compose_config
from trackerdcs.config import load_config
from trackerdcs.safety.interlock import interlock_prefix
from trackerdcs.stack.process import ManagedProcess, free_port, port_open, wait_until
from trackerdcs.stack.ready import serving

MOSQUITTO_DIR = ROOT / "mosquitto"
ACL = MOSQUITTO_DIR / "acl"
USERS = re.findall(r"^user (\S+)", ACL.read_text(), re.M)
DAEMONS = ("power", "julabo", "sensors", "interlock", "alarms", "dcs")
NOT_AUTHORIZED = 135
LAB = load_config(ROOT / "deploy" / "lab.yml")
_ids = itertools.count()

pytestmark = pytest.mark.skipif(
    shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists(),
    reason="mosquitto is not installed",
)


def own_prefixes(user: str, lab=LAB) -> set[str]:
    """The prefixes each daemon serves, from the lab YAML: the ACL must grant exactly these."""
    if user == "power":
        return {p for c in lab.crates for p in c.prefixes.values()}
    if user == "julabo":  # the lab's one chiller (a lab of several: a user per chiller)
        return {c.prefix for c in lab.chillers}
    if user == "sensors":
        return {s.prefix for s in lab.sensors}
    if user == "interlock":
        return {interlock_prefix(lab)}
    if user == "alarms":
        return {"/alarms", "/audit"}
    if user == "dcs":
        return {"/dcs"}
    return set()


ALL_PREFIXES = sorted(set().union(*(own_prefixes(u) for u in DAEMONS)))
# The commands a daemon's actions send (the only topics outside its own prefixes it may publish)
COMMANDS = [
    "/hv/cmd/switch/M1",
    "/hv/cmd/kill/M1",
    "/hv/cmd/setv/0",
    "/hv/cmd/seti/M1",
    "/lv/cmd/switch/M1",
    "/lv/cmd/kill/M1",
    "/julabo/cmd/setpoint",
    "/julabo/cmd/switch",
    "/sensor_1/cmd/refresh",
    "/interlock/cmd/reset/dewpoint",
    "/alarms/cmd/ack/all",
    "/audit/cmd/query",
    "/dcs/cmd/module/M1",
    "/dcs/cmd/ivscan/M1",
    "/dcs/cmd/recipe/start",
]
SENDS = {
    "interlock": {"/hv/cmd/switch/M1", "/hv/cmd/kill/M1", "/julabo/cmd/setpoint"},
    "dcs": {
        "/hv/cmd/switch/M1",
        "/lv/cmd/switch/M1",
        "/hv/cmd/setv/0",
        "/hv/cmd/seti/M1",
        "/julabo/cmd/setpoint",
        "/julabo/cmd/switch",
        "/dcs/cmd/module/M1",
        "/dcs/cmd/ivscan/M1",
    },  # the recipes' commands
}
# What a daemon publishes under its prefix besides status, availability, response and replies
OWN_EXTRA = {"dcs": {"/dcs/ivscan/status", "/dcs/ivscan/points", "/dcs/ivscan/action",
                     "/dcs/ivscan/results", "/dcs/recipe/status",
                     "/dcs/recipe/action"}}  # fmt: skip


def allowed_topics(user: str) -> set[str]:
    """What `user` may publish among `probe_topics()`: the documented policy."""
    if user in ("operator", "nodered"):
        return set(COMMANDS)
    own = own_prefixes(user)
    topics = {f"{p}/{leaf}" for p in own for leaf in ("status", "availability", "response")}
    topics |= {f"{p}/reply/x1" for p in own} | SENDS.get(user, set()) | OWN_EXTRA.get(user, set())
    if user == "alarms":
        topics |= {"/alarms", "/dcs/log"}  # the alarm list itself, the audit log
    return topics


def probe_topics() -> list[str]:
    topics = [
        f"{p}/{leaf}"
        for p in ALL_PREFIXES
        for leaf in ("status", "availability", "response", "reply/x1")
    ]
    extra = sorted(set().union(*OWN_EXTRA.values()))
    return [*topics, *COMMANDS, *extra, "/alarms", "/dcs/log", "/other/status"]


# -- the broker -----------------------------------------------------------------------------------
def adapt(conf: str, port: int, run: Path, data: Path, confd: Path) -> str:
    """The production configuration with only its listener, paths and include_dir changed."""
    changes = [
        ("\nlistener 1883\n", f"\nlistener {port} 127.0.0.1\n"),
        ("/mosquitto/run/", f"{run}/"),
        ("/mosquitto/data/", f"{data}/"),
        ("include_dir /mosquitto/config/conf.d", f"include_dir {confd}"),
    ]
    for old, new in changes:
        assert old in conf, f"mosquitto.conf no longer has {old.strip()!r}: update this test"
        conf = conf.replace(old, new)
    return conf


def directives(conf: str) -> dict[str, str]:
    out = {}
    for line in conf.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.strip().partition(" ")
            out.setdefault(key, value)
    return out


class SecureBroker:
    """The production configuration on free loopback ports: plain, and TLS (tls/tls.conf)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.port, self.tls_port = free_port(), free_port()
        self.passwords = {user: secrets.token_urlsafe(12) for user in USERS}
        self.config_dir = tmp / "config"  # as /mosquitto/config: the ACL and the certificates
        self.config_dir.mkdir()
        shutil.copyfile(ACL, self.config_dir / "acl")
        self.certs = self.config_dir / "certs"
        subprocess.run(
            ["sh", str(MOSQUITTO_DIR / "make-certs.sh"), "localhost", "127.0.0.1"],
            env={**os.environ, "CERT_DIR": str(self.certs)},
            check=True,
            capture_output=True,
        )
        self.run, data, confd = tmp / "run", tmp / "data", tmp / "conf.d"
        data.mkdir()
        confd.mkdir()
        tls = (MOSQUITTO_DIR / "tls" / "tls.conf").read_text()
        assert "\nlistener 8883\n" in tls
        tls = tls.replace("\nlistener 8883\n", f"\nlistener {self.tls_port} 127.0.0.1\n")
        (confd / "tls.conf").write_text(tls.replace("/mosquitto/run/", f"{self.run}/"))
        production = (MOSQUITTO_DIR / "mosquitto.conf").read_text()
        self.conf = tmp / "mosquitto.conf"
        self.conf.write_text(adapt(production, self.port, self.run, data, confd))
        self.process = ManagedProcess(
            "mosquitto",
            [
                "sh",
                str(MOSQUITTO_DIR / "entrypoint.sh"),
                shutil.which("mosquitto") or "/usr/sbin/mosquitto",
                "-c",
                str(self.conf),
            ],
            log_path=tmp / "mosquitto.log",
            env=self.env(),
            ready=lambda _: (
                port_open("127.0.0.1", self.port) and port_open("127.0.0.1", self.tls_port)
            ),
        )

    def env(self) -> dict[str, str]:
        return {
            "MOSQUITTO_CONFIG_DIR": str(self.config_dir),
            "MOSQUITTO_RUN_DIR": str(self.run),
            "MOSQUITTO_DATA_DIR": str(self.tmp / "data"),
            **{f"MQTT_PASSWORD_{u.upper()}": pw for u, pw in self.passwords.items()},
        }

    def client(self, user: str | None, password: str | None = None, **kw: Any) -> AuthClient:
        if user is not None and password is None:
            password = self.passwords[user]
        return AuthClient(self.port, user, password, **kw)


class AuthClient:
    """An MQTT 5 client that logs in, keeps what it reads, and reports each PUBACK's reason."""

    def __init__(
        self,
        port: int,
        user: str | None,
        password: str | None,
        subscribe: tuple[str, ...] = (),
        ca: Path | None = None,
    ) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"sec-{next(_ids)}",
            protocol=mqtt.MQTTv5,
            reconnect_on_failure=False,
        )
        if user is not None:
            self.client.username_pw_set(user, password)
        if ca is not None:
            self.client.tls_set(ca_certs=str(ca))
        self.connack: Any = None
        self.messages: list[Message] = []
        self.acks: dict[int, int] = {}
        self._cond = threading.Condition()
        self._subscribe = subscribe
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self._set_ready()
        self.client.on_publish = self._on_publish
        self.client.on_message = self._on_message
        self._ready = threading.Event()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not self._ready.wait(5):
            raise TimeoutError("no CONNACK/SUBACK within 5 s")

    @property
    def refused(self) -> bool:
        return self.connack is None or self.connack.is_failure

    def _set_ready(self) -> None:
        self._ready.set()

    def _on_connect(self, client, userdata, flags, reason, props) -> None:
        self.connack = reason
        if reason.is_failure or not self._subscribe:
            self._ready.set()
        else:
            client.subscribe([(t, 1) for t in self._subscribe])

    def _on_publish(self, client, userdata, mid, reason, props) -> None:
        with self._cond:
            self.acks[mid] = reason.value
            self._cond.notify_all()

    def _on_message(self, client, userdata, msg) -> None:
        with self._cond:
            self.messages.append(Message(msg.topic, msg.payload, msg.retain, time.monotonic()))
            self._cond.notify_all()

    def publish(self, topic: str, payload: str | bytes = "x", retain: bool = False) -> int:
        """The reason code of the broker's PUBACK: 0 accepted (also when no one subscribes:
        16), 135 not authorized."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        with self._cond:
            if not self._cond.wait_for(lambda: info.mid in self.acks, 5):
                raise TimeoutError(f"no PUBACK for {topic}")
            rc = self.acks[info.mid]
            return 0 if rc < 0x80 else rc

    def wait_for(self, topic: str, predicate=lambda m: True, timeout: float = 10.0) -> Message:
        def found() -> Message | None:
            return next(
                (
                    m
                    for m in self.messages
                    if mqtt.topic_matches_sub(topic, m.topic) and predicate(m)
                ),
                None,
            )

        with self._cond:
            if not self._cond.wait_for(found, timeout):
                seen = [f"{m.topic} {m.payload[:120]!r}" for m in self.messages[-8:]]
                raise TimeoutError(f"nothing on {topic} within {timeout} s; last: {seen}")
            return found()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture(scope="module")
def broker() -> Iterator[SecureBroker]:
    # Not under pytest's (mode 0700) directory: as root, Mosquitto reads the password file and
    # the ACL as the user `mosquitto` (entrypoint.sh gives them to it), as in the container.
    tmp = Path(tempfile.mkdtemp(prefix="trackerdcs-mosquitto-"))
    tmp.chmod(0o755)
    b = SecureBroker(tmp)
    try:
        b.process.start()
        yield b
    finally:
        b.process.stop()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def reader(broker: SecureBroker) -> Iterator[AuthClient]:
    """A viewer subscribed to everything: what reaches a client with every read right."""
    c = broker.client("viewer", subscribe=("#",))
    yield c
    c.close()


def delivered(broker: SecureBroker, reader: AuthClient) -> set[str]:
    """Every topic the reader got, once a marker sent after them has come back."""
    marker = f"/marker/cmd/{secrets.token_hex(4)}"
    operator = broker.client("operator")
    try:
        assert operator.publish(marker) == 0
        reader.wait_for(marker)
    finally:
        operator.close()
    return {m.topic for m in reader.messages if not m.topic.startswith("/marker/")}


# -- the production configuration itself -----------------------------------------------------------
def test_the_test_broker_keeps_the_production_auth_settings(broker: SecureBroker) -> None:
    production = directives((MOSQUITTO_DIR / "mosquitto.conf").read_text())
    tested = directives(broker.conf.read_text())
    assert production["allow_anonymous"] == tested["allow_anonymous"] == "false"
    assert production["per_listener_settings"] == tested["per_listener_settings"] == "false"
    for key in ("password_file", "acl_file"):
        assert Path(production[key]).name == Path(tested[key]).name
    assert (broker.run / "acl").read_text() == ACL.read_text()
    passwd = (broker.run / "passwd").read_text()
    assert sorted(line.split(":")[0] for line in passwd.splitlines()) == sorted(USERS)
    assert not any(pw in passwd for pw in broker.passwords.values())  # hashed
    assert oct((broker.run / "passwd").stat().st_mode)[-3:] == "600"


def test_entrypoint_refuses_a_missing_or_placeholder_password(broker, tmp_path) -> None:
    for value in ("", "change-me"):
        env = {
            **os.environ,
            **broker.env(),
            "MOSQUITTO_RUN_DIR": str(tmp_path),
            "MQTT_PASSWORD_TELEGRAF": value,
        }
        done = subprocess.run(
            ["sh", str(MOSQUITTO_DIR / "entrypoint.sh"), "true"],
            env=env,
            capture_output=True,
            text=True,
        )
        assert done.returncode == 1 and "MQTT_PASSWORD_TELEGRAF is not set" in done.stderr


@pytest.mark.parametrize("lab_file", ["lab.yml", "lab.dummy.yml"])
def test_the_acl_grants_the_prefixes_of_the_lab(lab_file: str) -> None:
    """Each daemon's write rules are its prefixes in the lab YAML (a new sensor needs a line)."""
    lab = load_config(ROOT / "deploy" / lab_file)
    rules: dict[str, set[str]] = {}
    user = None
    for line in ACL.read_text().splitlines():
        if line.startswith("user "):
            user = line.split()[1]
        elif line.startswith("topic write ") and user:
            rules.setdefault(user, set()).add(line.split()[2])
    for daemon in ("power", "julabo", "sensors", "interlock"):  # prefixes from the lab YAML
        for prefix in own_prefixes(daemon, lab):
            assert {f"{prefix}/+", f"{prefix}/reply/#"} <= rules[daemon], (daemon, prefix)
    assert set(USERS) == {*DAEMONS, "operator", "nodered", "viewer", "telegraf"}


# -- logins ---------------------------------------------------------------------------------------
def test_anonymous_and_wrong_passwords_are_refused(broker: SecureBroker) -> None:
    for user, password in (
        (None, None),
        ("operator", "wrong"),
        ("operator", ""),
        ("nobody", "x"),
        ("viewer", broker.passwords["operator"]),
    ):
        client = broker.client(user, password)
        try:
            assert client.refused, f"{user} with a wrong password got in"
            assert client.connack.value in (134, 135)  # bad user name or password, not authorized
        finally:
            client.close()
    for user in USERS:
        client = broker.client(user)
        assert not client.refused, user
        client.close()


def test_the_tls_listener(broker: SecureBroker) -> None:
    ca = broker.certs / "ca.crt"
    client = AuthClient(broker.tls_port, "operator", broker.passwords["operator"], ca=ca)
    try:
        assert not client.refused
        assert client.publish("/hv/cmd/refresh") == 0
        assert client.publish("/hv/status") == NOT_AUTHORIZED  # same ACL
    finally:
        client.close()
    wrong = AuthClient(broker.tls_port, "operator", "wrong", ca=ca)
    assert wrong.refused
    wrong.close()
    with socket.create_connection(("127.0.0.1", broker.tls_port)) as raw:  # plain MQTT: no
        context = ssl.create_default_context(cafile=str(ca))
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            assert tls.version() in ("TLSv1.2", "TLSv1.3")


def test_the_compose_healthcheck_logs_in_as_viewer(broker: SecureBroker) -> None:
    test = compose_config(DUMMY)["services"]["mosquitto"]["healthcheck"]["test"]
    assert test[0] == "CMD-SHELL"
    command = test[1].replace("$$", "$").replace("-p 1883", f"-p {broker.port}")
    env = {**os.environ, "MQTT_PASSWORD_VIEWER": broker.passwords["viewer"]}
    assert subprocess.run(["sh", "-c", command], env=env, timeout=10).returncode == 0
    env["MQTT_PASSWORD_VIEWER"] = "wrong"
    assert subprocess.run(["sh", "-c", command], env=env, timeout=10).returncode != 0


# -- who may publish what --------------------------------------------------------------------------
@pytest.mark.parametrize("user", USERS)
def test_each_user_publishes_only_what_its_role_allows(broker, reader, user: str) -> None:
    """Daemons: their own prefixes (and the interlock's and sequencer's actions); operator and
    Node-RED: commands; viewer and Telegraf: nothing."""
    client = broker.client(user)
    try:
        answers = {topic: client.publish(topic) for topic in probe_topics()}
    finally:
        client.close()
    allowed = allowed_topics(user)
    assert allowed <= set(answers), "the probe misses an allowed topic"
    wrong = {t: rc for t, rc in answers.items() if (rc == 0) != (t in allowed)}
    assert not wrong, f"{user}: {wrong}"
    assert set(answers.values()) <= {0, NOT_AUTHORIZED}
    assert delivered(broker, reader) == allowed  # a denied message reaches nobody


def test_viewer_reads_everything_but_cannot_command(broker, reader) -> None:
    operator, viewer = broker.client("operator"), broker.client("viewer", subscribe=("/hv/#",))
    try:
        assert viewer.publish("/hv/cmd/switch/0", "on") == NOT_AUTHORIZED
        assert operator.publish("/hv/cmd/switch/0", "on") == 0
        viewer.wait_for("/hv/cmd/switch/0")
    finally:
        operator.close()
        viewer.close()
    assert delivered(broker, reader) == {"/hv/cmd/switch/0"}


# -- the real daemons, Node-RED and the healthcheck under the production ACL ----------------------
def dummy_lab(tmp: Path, broker: SecureBroker) -> Path:
    """deploy/lab.dummy.yml with this test's free ports and files (and a fast sensor cadence)."""
    data = yaml.safe_load((ROOT / "deploy" / "lab.dummy.yml").read_text())
    data["mqtt"].update(host="127.0.0.1", port=broker.port, reconnect_max_delay=0.5)
    crate = data["crates"][0]
    crate["address"] = f"localhost:{free_port()}"  # a host name, as sim-lab:5064 in compose
    crate["system"] = f"deploy{secrets.token_hex(3)}"
    data["julabo"]["url"] = f"socket://127.0.0.1:{free_port()}"
    for sensor in data["sensors"]:
        sensor["source"] = f"socket://127.0.0.1:{free_port()}"
        sensor["publish_interval"] = 0.5
    data["virtual_lab"].update(control_port=free_port(), line_interval=0.2)
    data["alarms"]["db"] = str(tmp / "alarms.sqlite")
    data["ivscan"]["results_dir"] = str(tmp / "ivscans")
    path = tmp / "lab.yml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def module_argv(argv: list[str], lab: Path) -> list[str]:
    """A compose command line, run here: the console script as `python -m` its module, the lab
    YAML at its path here, and loopback instead of every interface."""
    args = [str(lab) if a == "/etc/trackerdcs/lab.yml" else a for a in argv[1:]]
    args = ["127.0.0.1" if a == "0.0.0.0" else a for a in args]
    return [sys.executable, "-m", SCRIPTS[argv[0]].split(":")[0], *args]


def run_module(module: str, args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args.split()], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=30)  # fmt: skip


class Stack:
    """sim-lab and every daemon, each with the command and MQTT user docker-compose gives it."""

    def __init__(self, tmp: Path, broker: SecureBroker) -> None:
        self.tmp, self.broker = tmp, broker
        self.lab = dummy_lab(tmp, broker)
        services = compose_config(DUMMY)["services"]
        self.processes: dict[str, ManagedProcess] = {}
        self.envs: dict[str, dict[str, str]] = {}
        for name in ("sim-lab", *DAEMONS):
            env = {}
            user = (services[name].get("environment") or {}).get("TRACKERDCS_MQTT_USERNAME")
            if user:
                env = {
                    "TRACKERDCS_MQTT_USERNAME": user,
                    "TRACKERDCS_MQTT_PASSWORD": broker.passwords[user],
                }
            self.envs[name] = env
            self.processes[name] = ManagedProcess(
                name,
                module_argv(argv_of(services[name]), self.lab),
                log_path=tmp / f"{name}.log",
                env=env,
                cwd=tmp,
                # online on every prefix, as checked with the login in its own environment
                ready=serving("serving"),
            )

    def start(self) -> Stack:
        sim = self.processes["sim-lab"]
        sim.ready = lambda p: "virtual lab" in p.output()
        sim.start()
        for name in DAEMONS:
            self.processes[name].start()
        return self

    def stop(self) -> None:
        for process in reversed(self.processes.values()):
            process.stop()

    def health(self, name: str) -> subprocess.CompletedProcess:
        """`trackerdcs-health` as the container runs it, for this daemon's process."""
        pid = self.processes[name].pid
        return run_module("trackerdcs.health", f"--pid {pid} --timeout 2", self.envs[name])


@pytest.fixture(scope="module")
def stack(broker, tmp_path_factory) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("secure-stack"), broker).start()
    yield s
    s.stop()


def test_every_daemon_works_under_the_production_acl(broker, stack: Stack) -> None:
    """Each daemon logs in as its user, comes online (healthcheck), answers an operator's
    command; an interlock fires and its commands are obeyed; the audit log is written."""
    viewer = broker.client("viewer", subscribe=("#",))
    operator = broker.client("operator", subscribe=("/+/response", "/audit/reply/#"))
    try:

        def healthy(name: str) -> subprocess.CompletedProcess:
            check = lambda: (r := stack.health(name)).returncode == 0 and r  # noqa: E731
            return wait_until(check, 20, f"{name} healthy")

        with ThreadPoolExecutor() as pool:  # every container's healthcheck, at once
            for done in pool.map(healthy, ("sim-lab", *DAEMONS)):
                assert " healthy: " in done.stdout, done.stdout
        for name in DAEMONS:
            for prefix in own_prefixes(name):
                viewer.wait_for(f"{prefix}/availability", lambda m: m.payload == b"online")
        viewer.wait_for("/interlock/status")
        viewer.wait_for("/alarms")
        viewer.wait_for("/dcs/status")

        # availability says the daemon runs; its device may still be connecting: wait for it
        def connected(m: Message) -> bool:
            states = [c["state"] for c in m.json] if isinstance(m.json, list) else [m.json["state"]]
            return bool(states) and "DISCONNECTED" not in states

        viewer.wait_for("/hv/status", connected, timeout=20)
        viewer.wait_for("/julabo/status", connected, timeout=20)
        # an operator's command, answered by the power daemon; the audit log records it
        hv = LabData.load(stack.lab).channel("hv", 0)  # the stack's first HV channel
        scanned = LabData.load(stack.lab).channel("hv", 1).module  # a module the scan takes
        command = {"value": "on", "id": "op-1"}
        assert operator.publish(hv.topic("switch"), json.dumps(command)) == 0
        answer = operator.wait_for("/hv/response", lambda m: m.json.get("id") == "op-1").json
        assert answer["ok"], answer
        viewer.wait_for("/dcs/log", lambda m: m.json.get("id") == "op-1")
        command = {"value": 10, "id": "op-2"}
        assert operator.publish("/julabo/cmd/setpoint", json.dumps(command)) == 0
        answer = operator.wait_for("/julabo/response", lambda m: m.json.get("id") == "op-2").json
        assert answer["ok"], answer
        # an IV scan by an operator: the dcs daemon sets the voltage and limit under its user
        scan = {"value": {"stop": 20, "step": 10, "settle": 0, "readings": 1}, "id": "op-3"}
        assert operator.publish(f"/dcs/cmd/ivscan/{scanned}", json.dumps(scan)) == 0
        answer = operator.wait_for("/dcs/response", lambda m: m.json.get("id") == "op-3").json
        assert answer["ok"], answer
        ended = viewer.wait_for("/dcs/ivscan/status",
                                lambda m: m.json["scans"][scanned]["ended"],
                                timeout=30).json["scans"][scanned]  # fmt: skip
        assert ended["outcome"] == "completed", ended
        viewer.wait_for("/dcs/ivscan/points", lambda m: m.json["step"] == 3)
        # humid air: the dew point rule fires; the interlock switches M1's HV off and raises the
        # chiller's set point to 20 C; both daemons obey it
        port = yaml.safe_load(stack.lab.read_text())["virtual_lab"]["control_port"]
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"set room_humidity=97\n")
            assert json.loads(s.makefile().readline())

        def from_dewpoint_rule(m: Message) -> bool:
            return str(m.json.get("id")).startswith("interlock:dewpoint") and m.json["ok"]

        viewer.wait_for("/interlock/action")
        viewer.wait_for("/hv/response", from_dewpoint_rule, timeout=15)
        viewer.wait_for("/julabo/response", from_dewpoint_rule)
        # `trackerdcs audit` as an operator: the alarm service answers on /audit/reply/...
        login = {"TRACKERDCS_MQTT_USERNAME": "operator",
                 "TRACKERDCS_MQTT_PASSWORD": broker.passwords["operator"]}  # fmt: skip
        done = run_module("trackerdcs.cli", f"audit --config {stack.lab} --since 10m", login)
        assert done.returncode == 0 and hv.topic("switch") in done.stdout, done.stderr
    finally:
        viewer.close()
        operator.close()
    for name, process in stack.processes.items():
        assert process.alive, f"{name} died: {process.tail()}"


def test_health_reports_a_stopped_daemon_silence_and_a_refused_login(stack: Stack) -> None:
    lab = stack.lab
    probe = run_module(
        "trackerdcs.health", f"--config {lab} --timeout 1 /nothing", stack.envs["dcs"]
    )
    assert probe.returncode == 1 and "/nothing silent" in probe.stdout
    wrong = {**stack.envs["dcs"], "TRACKERDCS_MQTT_PASSWORD": "wrong"}
    probe = run_module("trackerdcs.health", f"--config {lab} --service dcs --timeout 1", wrong)
    assert probe.returncode == 1 and "login refused (Not authorized)" in probe.stdout
    stack.processes["dcs"].stop()  # a clean stop, or the broker's last will: offline
    probe = run_module("trackerdcs.health", f"--config {lab} --service dcs", stack.envs["dcs"])
    assert probe.returncode == 1 and "dcs unhealthy: /dcs offline" in probe.stdout, probe.stdout


NODE_RED = ROOT / "node-red"


@pytest.mark.skipif(
    not (NODE_RED / "node_modules" / "node-red").exists() or not shutil.which("node"),
    reason="Node-RED is not installed",
)
def test_node_red_logs_in_as_nodered(broker, stack: Stack, tmp_path: Path) -> None:
    """The Node-RED container's entry point, run here: the flows log in with the credentials
    from the environment (no secret in any file) and the dashboard comes up."""
    from trackerdcs.deploy import hash_password

    home = tmp_path / "home"  # as /opt/node-red in the image
    home.mkdir()
    for name in ("settings.js", "flows.json", "node_modules", "login"):
        (home / name).symlink_to(NODE_RED / name)
    (home / "telegraf.conf").symlink_to(ROOT / "telegraf.conf")  # where the History page reads
    port = free_port()
    env = {
        "TRACKERDCS_NODE_RED_PASSWORD_HASH": hash_password(secrets.token_hex(8), home),
        "TRACKERDCS_NODE_RED_SECRET": secrets.token_hex(16),
        "TRACKERDCS_NODE_RED_HOST": "127.0.0.1",
        "TRACKERDCS_MQTT_USERNAME": "nodered",
        "TRACKERDCS_MQTT_PASSWORD": broker.passwords["nodered"],
        # the History page's read-only InfluxDB user (no InfluxDB here: the page is not opened)
        "TRACKERDCS_INFLUX_USERNAME": "nodered",
        "TRACKERDCS_INFLUX_PASSWORD": secrets.token_hex(8),
    }
    url = f"http://127.0.0.1:{port}/dashboard/"

    def answers(_: ManagedProcess) -> bool:
        try:
            with urllib.request.urlopen(url, timeout=1) as reply:
                return reply.status == 200
        except OSError:
            return False

    node_red = ManagedProcess(
        "node-red",
        [
            sys.executable,
            "-m",
            "trackerdcs.deploy",
            "node-red",
            "--config",
            str(stack.lab),
            "--home",
            str(home),
            "--user-dir",
            str(tmp_path / "data"),
            "--port",
            str(port),
        ],
        log_path=tmp_path / "node-red.log",
        env=env,
        ready=answers,
        ready_timeout=60,
    )
    with node_red:
        creds = (tmp_path / "data" / "flows_cred.json").read_text()
        assert broker.passwords["nodered"] not in creds and "${TRACKERDCS_MQTT_PASSWORD}" in creds
        # the broker refuses anonymous clients: connected means logged in, as nodered
        wait_until(lambda: "Connected to broker" in node_red.output(), 15, "Node-RED's login")
        assert "u'nodered'" in broker.process.output()
