"""The container stack, really built and run: both images, the lab without hardware, backups.

As docs/deployment.md tells podman users (tests/containerstack.py: podman's socket, docker-compose
v1, the compose files unchanged): `podman build` of the Dockerfile's targets, then
`docker-compose -f docker-compose.yml -f docker-compose.dev.yml -f docker-compose.dummy.yml up -d`
of every service but Grafana (`containerstack.LEFT_OUT` says why), then, through the published
ports on 127.0.0.1 and the containers' own network:

- every service reaches `healthy` through its own healthcheck (`trackerdcs-health` in the
  trackerdcs containers), `influxdb-setup` exits 0, Telegraf's stand-in runs;
- the operator sets and switches a channel of the simulated crate with `mosquitto_pub`, over
  Channel Access between containers, and the status says so; the viewer cannot command;
  anonymous clients and wrong passwords cannot connect;
- points reach InfluxDB through Telegraf's stand-in, with authentication on;
- the Node-RED dashboard and its editor refuse requests without a login (the container's
  healthcheck passes with the login on); the editor's admin logs into the dashboard, whose CSV
  export reads InfluxDB as the read-only user `nodered`;
- a daemon container whose process dies is restarted by its restart policy, back online;
- deploy/backup.sh, deploy/down.sh -v, deploy/restore.sh bring back the points, the alarms and
  the audit log;
- the bind mounts can be read by the containers' users in a user namespace (rootless podman);
- deploy/down.sh -v leaves nothing behind (containers, networks, volumes, the podman service),
  and the fixture makes sure of it when a test fails.

Third-party images are stand-ins built from Debian's packages: `containerstack.STAND_INS` says,
for each, what it reproduces of the official image and what it cannot.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests import containerstack as cs
from tests.labdata import LabData
from tests.mqttclient import TestClient
from tests.noderedapi import LOGIN, api, request
from trackerdcs.ingest.influxdb import InfluxClient, InfluxError
from trackerdcs.stack.process import wait_until

ROOT = Path(__file__).resolve().parent.parent
# the lab file the stack runs (docker-compose.dummy.yml mounts it): its first two HV channels
HV0, HV1 = LabData.load(ROOT / "deploy" / "lab.dummy.yml").channels("hv")[:2]
# A cold store (debootstrap, every image) takes several minutes; from cache, about a minute.
pytestmark = [pytest.mark.timeout(1800), pytest.mark.xdist_group("podman")]

# Node-RED paths that must refuse a request without a login (the editor's, or the dashboard's:
# Node-RED listens beyond loopback in its container, so the dashboard's login is on).
LOGIN_REQUIRED = {"/flows": "the editor's admin API (adminAuth)", "/settings/user": "the editor"}
DASHBOARD = {"/dashboard/": "the dashboard", "/dashboard/_setup": "the dashboard's setup",
             "/export/history.csv?from=0&to=1000": "the History page's CSV export"}  # fmt: skip


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[cs.ComposeStack]:
    if lacks := cs.missing():
        why = f"the container stack needs {', '.join(lacks)} (scripts/setup.sh installs them)"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    with cs.running(tmp_path_factory.mktemp("containers")) as stack:
        yield stack


def mqtt_port(stack: cs.ComposeStack) -> int:
    return stack.ports["TRACKERDCS_MQTT_HOST_PORT"]


def viewer(stack: cs.ComposeStack, *topics: str) -> TestClient:
    return TestClient(
        mqtt_port(stack),
        topics=topics or ("#",),
        username="viewer",
        password=stack.secrets["MQTT_PASSWORD_VIEWER"],
    )


def mosquitto(
    stack: cs.ComposeStack, program: str, user: str | None, *args: str, password: str | None = None
) -> subprocess.CompletedProcess:
    """mosquitto_pub/_sub on the host, to the published port, as `user` (None: anonymous)."""
    argv = [program, "-h", "127.0.0.1", "-p", str(mqtt_port(stack))]
    if user is not None:
        argv += ["-u", user, "-P", password or stack.secrets[f"MQTT_PASSWORD_{user.upper()}"]]
    return subprocess.run([*argv, *args], capture_output=True, text=True, timeout=30)


def influx(stack: cs.ComposeStack, user: str | None) -> InfluxClient:
    url = f"http://127.0.0.1:{stack.ports['TRACKERDCS_INFLUX_HOST_PORT']}"
    if user is None:
        return InfluxClient(url)
    password = stack.secrets[f"INFLUXDB_{user.upper()}_PASSWORD"]
    return InfluxClient(url, username=user, password=password)


def channel(status: list[dict], number: int) -> dict:
    return next(c for c in status if c["number"] == number)


# -- up --------------------------------------------------------------------------------------------
def test_every_service_turns_healthy(stack) -> None:
    states = stack.states()
    assert set(states) == set(stack.services), "every service but the left-out ones runs"
    for name, state in states.items():
        assert state == ("exited(0)" if name in cs.ONE_SHOT else "healthy") or (
            name == "telegraf" and state == "running"  # no healthcheck (docker-compose.yml)
        ), f"{name}: {state}"
    # what down must remove is found by its compose labels (test_down_leaves_nothing_behind)
    volumes = set(stack.podman.labelled("volumes", stack.project))
    assert f"{stack.project}_alarms-data" in volumes and len(volumes) == 6, volumes
    assert stack.podman.labelled("networks", stack.project) == [f"{stack.project}_default"]
    # the admin user comes from InfluxDB's first start (INFLUXDB_ADMIN_*), not influx-setup
    setup_log = stack.compose("logs", "--no-color", "influxdb-setup").stdout
    assert "database trackerdcs ready" in setup_log and "created the admin" not in setup_log
    containers = stack.containers()
    for name in ("power", "julabo", "sensors", "interlock", "alarms", "dcs", "sim-lab"):
        test = containers[name]["Config"]["Healthcheck"]["Test"]
        assert "trackerdcs-health" in test, f"{name}: {test}"
    sizes = {what: round(stack.images.size_mb(what)) for what in ("trackerdcs", "node-red")}
    figures = {
        "up_to_healthy_s": round(stack.up_seconds, 1),
        "image_mb": sizes,
        "build_s": {k: round(v, 1) for k, v in stack.images.build_seconds.items()},
        "healthchecks_run": stack.health.runs,
    }
    (stack.podman.logs / "figures.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(f"container stack: {figures}")


# -- MQTT: the operator commands, the viewer reads, nobody else gets in ----------------------------
def test_operator_sets_and_switches_a_channel(stack) -> None:
    client = viewer(stack, "/hv/#")
    try:
        since = client.mark()
        setv, switch = HV0.topic("setv", by="number"), HV0.topic("switch", by="number")
        for topic, payload in ((setv, "50"), (switch, "on")):
            done = mosquitto(stack, "mosquitto_pub", "operator", "-t", topic, "-m", payload)
            assert done.returncode == 0, done.stderr
            answer = client.wait_for(
                "/hv/response", lambda m, t=topic: m.json["topic"] == t, 15, since
            ).json
            assert answer["ok"], answer
        status = client.wait_for(
            "/hv/status",
            lambda m: (
                channel(m.json, HV0.number)["vreq"] == 50 and channel(m.json, HV0.number)["on"]
            ),
            30,
            since,
        ).json
        on = channel(status, HV0.number)
        assert on["state"] in ("RAMPING_UP", "ON"), on
        client.wait_for(
            "/hv/status", lambda m: channel(m.json, HV0.number)["state"] == "ON", 30, since
        )
    finally:
        client.close()


def test_the_viewer_cannot_command_and_strangers_cannot_connect(stack) -> None:
    client = viewer(stack, "/hv/#")
    try:
        since = client.mark()
        denied = mosquitto(
            stack,
            "mosquitto_pub",
            "viewer",
            "-V",
            "mqttv5",
            "-q",
            "1",
            "-t",
            HV1.topic("setv", by="number"),
            "-m",
            "77",
        )
        assert "not authori" in (denied.stdout + denied.stderr).lower(), denied
        # the operator's command after it is answered; the viewer's never was
        done = mosquitto(
            stack, "mosquitto_pub", "operator", "-t", HV1.topic("setv", by="number"), "-m", "33"
        )
        assert done.returncode == 0, done.stderr
        client.wait_for("/hv/response", lambda m: m.json["payload"] == "33", 15, since)
        answered = [m.json["payload"] for m in client.messages[since:] if m.topic == "/hv/response"]
        assert "77" not in answered
    finally:
        client.close()
    for user, password in ((None, None), ("viewer", "wrong"), ("operator", "wrong")):
        refused = mosquitto(
            stack, "mosquitto_sub", user, "-t", "#", "-C", "1", "-W", "5", password=password
        )
        assert refused.returncode != 0, (user, refused)
        assert "not authori" in refused.stderr.lower(), (user, refused.stderr)


# -- InfluxDB: Telegraf's stand-in writes, with authentication on ----------------------------------
def test_points_reach_influxdb_with_authentication(stack) -> None:
    grafana = influx(stack, "grafana")
    query = f'SELECT last("vreq") FROM "hv" WHERE "name" = \'{HV0.name}\''

    def landed():
        series = grafana.series(query)
        return series and series[0].values[0][1] == 50

    wait_until(landed, 30, f"{HV0.name}'s set point of 50 V in InfluxDB", poll=0.5)
    for user, code in ((None, "401"), ("telegraf", "403")):  # anonymous; write-only user
        with pytest.raises(InfluxError, match=code):
            influx(stack, user).series(query)


# -- Node-RED --------------------------------------------------------------------------------------
def test_node_red_dashboard_and_its_editor_need_a_login(stack) -> None:
    base = f"http://127.0.0.1:{stack.ports['TRACKERDCS_NODE_RED_HOST_PORT']}"
    for path, what in {**LOGIN_REQUIRED, **DASHBOARD}.items():
        assert request(base + path)[0] == 401, f"{path} ({what}) answered without a login"
    # the editor's admin logs into the dashboard too; the History page reads InfluxDB as nodered
    form = urllib.parse.urlencode({"username": "admin", "password": stack.node_red_password})
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
    with opener.open(f"{base}/login", data=form.encode(), timeout=30) as page:
        assert page.status == 200 and b"<html" in page.read().lower()
    with opener.open(f"{base}/dashboard/_setup", timeout=30) as setup:
        user = json.loads(setup.read())["trackerdcs"]["user"]
    assert user == {"username": "admin", "role": "admin"}
    now = int(time.time() * 1000)
    export = f"{base}/export/history.csv?from={now - 3_600_000}&to={now}"
    with opener.open(export, timeout=150) as reply:  # trackerdcs export lab, in the container
        assert reply.status == 200 and reply.headers["Content-Type"].startswith("text/csv")
        assert reply.read().startswith(b"time,measurement,")
    assert api(f"{base}/auth/token", {**LOGIN, "password": "wrong"})[0] == 403
    status, token = api(f"{base}/auth/token", {**LOGIN, "password": stack.node_red_password})
    assert status == 200, token
    for path in LOGIN_REQUIRED:
        assert request(base + path, token=token["access_token"])[0] == 200, path


# -- restart policy --------------------------------------------------------------------------------
def test_a_daemon_that_dies_is_restarted_and_comes_back_online(stack) -> None:
    client = viewer(stack, "/hv/availability", "/alarms")
    try:
        before = stack.containers()["power"]
        since = client.mark()
        os.kill(before["State"]["Pid"], signal.SIGKILL)  # the daemon dies (PID 1 of power)
        client.wait_for("/hv/availability", lambda m: m.text == "offline", 30, since)
        online = client.wait_for("/hv/availability", lambda m: m.text == "online", 90, since)
        assert not online.retain
        after = stack.containers()["power"]
        assert after["RestartCount"] > before["RestartCount"]
        assert after["State"]["Pid"] != before["State"]["Pid"]
        stack.wait_healthy(["power"], timeout=120)
        # the alarm service saw it (kept for the backup test)
        client.wait_for("/alarms", lambda m: "/hv" in json.dumps(m.json), 30, since)
    finally:
        client.close()


# -- backups ---------------------------------------------------------------------------------------
def host_lab(stack: cs.ComposeStack, path: Path) -> Path:
    """deploy/lab.dummy.yml for tools on the host (docs/deployment.md): the published broker."""
    lab = yaml.safe_load((ROOT / "deploy" / "lab.dummy.yml").read_text())
    lab["mqtt"].update(host="127.0.0.1", port=mqtt_port(stack))
    path.write_text(yaml.safe_dump(lab))
    return path


def operator_env(stack: cs.ComposeStack) -> dict[str, str]:
    return {
        **os.environ,
        "TRACKERDCS_MQTT_USERNAME": "operator",
        "TRACKERDCS_MQTT_PASSWORD": stack.secrets["MQTT_PASSWORD_OPERATOR"],
    }


def audit_log(stack: cs.ComposeStack, lab: Path) -> list[dict]:
    env = operator_env(stack)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "trackerdcs.cli",
            "audit",
            "--config",
            str(lab),
            "--since",
            "1h",
            "--json",
            "--timeout",
            "15",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def alarms(stack: cs.ComposeStack) -> set[tuple]:
    """The listed alarms (retained /alarms): id, source, time raised (the text follows the
    condition when it comes back)."""
    client = viewer(stack, "/alarms")
    try:
        listed = client.wait_for("/alarms", lambda m: m.retain, 30).json["alarms"]
        return {(a["id"], a["source"], a["time"]) for a in listed}
    finally:
        client.close()


def ivscan_files(stack: cs.ComposeStack) -> list[str]:
    """The IV scan results in the dcs container's ivscan-data volume."""
    done = stack.compose("exec", "-T", "dcs", "find", "/var/lib/trackerdcs/ivscans", "-type", "f")
    return sorted(done.stdout.split())


def test_an_iv_scan_keeps_its_results_in_its_volume(stack, tmp_path) -> None:
    """`trackerdcs iv-scan` on the host, as an operator: the dcs container scans (under its own
    broker user) and writes the CSV and PNG to the ivscan-data volume (the backup test below
    brings them back)."""
    lab = host_lab(stack, tmp_path / "lab.yml")
    module = HV1.module  # the lab's second HV channel's module
    done = subprocess.run(
        [sys.executable, "-m", "trackerdcs.cli", "iv-scan", module, "--stop", "40", "--step", "20",
         "--settle", "0", "--readings", "1", "--config", str(lab), "--name", "operator"],
        env=operator_env(stack), capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"{module}: completed: completed 3 steps" in done.stdout
    written = [line.strip() for line in done.stdout.splitlines() if line.startswith("  /")]
    assert [Path(f).suffix for f in written] == [".csv", ".png"]
    assert set(written) <= set(ivscan_files(stack))


def test_backup_down_and_restore_bring_the_data_back(stack, tmp_path) -> None:
    grafana, lab = influx(stack, "grafana"), host_lab(stack, tmp_path / "lab.yml")
    cut = time.time()
    count = f'SELECT count("vmon") FROM "hv" WHERE time <= {int(cut * 1e9)}'
    wait_until(
        lambda: grafana.series(
            f'SELECT count("vmon") FROM "hv" WHERE time > {int((cut + 2) * 1e9)}'
        ),
        30,
        "points after the cut",
    )
    points = grafana.series(count)[0].values[0][1]
    listed = alarms(stack)
    scans = ivscan_files(stack)
    commands = {(r["topic"], r["payload"]) for r in audit_log(stack, lab)}
    assert points > 0 and listed and (HV0.topic("setv", by="number"), "50") in commands

    services = " ".join(stack.services)
    backup = tmp_path / "backup"
    stack.script("backup.sh", str(backup), SERVICES=services)
    manifest = (backup / "MANIFEST").read_text()
    assert "grafana-data" not in manifest and "influxdb-data" in manifest
    stack.script("down.sh", "-v")
    assert stack.podman.labelled("volumes", stack.project) == [], "down -v removes the volumes"
    assert stack.podman.labelled("containers", stack.project) == []

    stack.script("restore.sh", str(backup), input="y\n", SERVICES=services)
    stack.wait_healthy(stack.services)
    assert grafana.series(count)[0].values[0][1] == points
    assert listed <= alarms(stack)
    assert commands <= {(r["topic"], r["payload"]) for r in audit_log(stack, lab)}
    assert scans and ivscan_files(stack) == scans


# -- rootless podman: the containers' users read the bind mounts -----------------------------------
def test_bind_mounts_are_readable_by_the_containers_users_in_a_user_namespace(stack) -> None:
    """Rootless podman runs each container in a user namespace: its users are not the owner of
    the repository's files, so they read them as `other`. Here, as root, the same with a uid
    map (the files' owner, root, is not mapped at all): every bind-mounted file must be readable
    by the image's user."""
    config = yaml.safe_load(stack.compose("config").stdout)["services"]
    for name in stack.services:
        binds = [v.split(":") for v in config[name].get("volumes", []) if v.startswith("/")]
        if not binds:
            continue
        argv = [
            "run",
            "--rm",
            "--uidmap",
            "0:200000:65536",
            "--gidmap",
            "0:200000:65536",
            "--entrypoint",
            "find",
        ]
        for source, target, *_ in binds:
            argv += ["-v", f"{source}:{target}:ro"]
        targets = [target for _, target, *_ in binds]
        done = stack.podman(
            *argv, config[name]["image"], *targets, "!", "-readable", check=False, timeout=300
        )
        assert done.returncode == 0 and not done.stdout.strip(), (name, done.stdout, done.stderr)


# -- down ------------------------------------------------------------------------------------------
def test_down_leaves_nothing_behind(stack) -> None:
    problems = stack.down()
    assert not problems, problems
    for kind in ("containers", "networks", "volumes"):
        assert stack.podman.labelled(kind, stack.project) == [], kind
    assert not stack.service.alive and not stack.socket.exists()
    assert not stack.podman.processes(), "no conmon, no podman left working on the store"
