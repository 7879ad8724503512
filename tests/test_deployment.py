"""The container stack against the code: compose files, Dockerfile, lab YAMLs, secrets, podman,
backups, the healthcheck and the InfluxDB set-up.

Without a container engine: Debian's docker-compose v1 validates and merges the files
(`config`), and what the containers would run is run directly where it can be (InfluxDB with
authentication and `trackerdcs influx-setup`, the Node-RED launcher's files, `trackerdcs-health`).
tests/test_mosquitto_security.py runs the production Mosquitto configuration and the daemons;
tests/test_containers.py builds the images and runs the stack under podman.
"""

from __future__ import annotations

import atexit
import fnmatch
import functools
import importlib.util
import os
import re
import secrets
import shutil
import stat
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT
from trackerdcs import health
from trackerdcs.config import load_config, loopback_port
from trackerdcs.deploy import BCRYPT, broker_credentials, influx_setup, node_red_environment
from trackerdcs.ingest.influxdb import InfluxClient, InfluxError
from trackerdcs.safety.config import check_safety

COMPOSE = shutil.which("docker-compose")
PROD = ["docker-compose.yml"]
DEV = [*PROD, "docker-compose.dev.yml"]
DUMMY = [*DEV, "docker-compose.dummy.yml"]
EXTRAS = [[*PROD, "deploy/docker-compose.tls.yml"], [*PROD, "deploy/docker-compose.serial.yml"]]
LAB_IN_CONTAINER = "/etc/trackerdcs/lab.yml"
SCRIPTS: dict[str, str] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
# console scripts that are not deployed as a service of their own, and why
NOT_SERVICES = {
    "trackerdcs": "the users' command (influxdb-setup runs `trackerdcs influx-setup`)",
    "trackerdcs-health": "the healthcheck inside every trackerdcs container",
    "trackerdcs-ingest": "production runs the real Telegraf on telegraf.conf",
    "trackerdcs-sim-crate": "the dummy stack runs the coupled sim-lab instead",
    "trackerdcs-sim-lab": "dummy stack only",
}
ONE_SHOTS = {"influxdb-setup"}
NO_HEALTHCHECK = {"telegraf": "no endpoint without changing telegraf.conf (see the comment)"}
UIS = {"grafana": 3000, "nodered": 1880}


def compose_env(**extra: str) -> dict[str, str]:
    """The environment compose interpolates: every variable of .env.example, set to a test
    value (shell variables take precedence over any developer's .env)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MQTT_", "INFLUXDB_"))}
    for key in env_example():
        env[key] = "test-" + key.lower()
    env["NODE_RED_PASSWORD_HASH"] = "$2b$10$" + "a" * 53
    env.pop("TRACKERDCS_UI_BIND", None)
    env.update(extra)
    return env


def env_example() -> dict[str, str]:
    out = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.lstrip().startswith("#"):
            out[key.strip()] = value
    return out


@functools.cache
def no_env_file() -> str:
    """An empty env file: compose must not read a developer's .env in the tests."""
    fd, path = tempfile.mkstemp(prefix="trackerdcs-empty-", suffix=".env")
    os.close(fd)
    atexit.register(os.unlink, path)
    return path


def compose_config(files: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """The merged configuration as Debian's docker-compose v1 computes it (with `env`, else
    compose_env()'s test values)."""
    if COMPOSE is None:
        pytest.skip("docker-compose (v1) is not installed: scripts/setup.sh installs it")
    if env is None:
        return yaml.safe_load(_merged(tuple(files)))
    return yaml.safe_load(_compose_output(files, env))


@functools.cache
def _merged(files: tuple[str, ...]) -> str:
    return _compose_output(list(files), compose_env())


def _compose_output(files: list[str], env: dict[str, str]) -> str:
    argv = [COMPOSE, "--env-file", no_env_file(), *(a for f in files for a in ("-f", f)), "config"]
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"{' '.join(argv)}:\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def configs() -> dict[str, dict[str, Any]]:
    return {
        "prod": compose_config(PROD),
        "dev": compose_config(DEV),
        "dummy": compose_config(DUMMY),
    }


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """target -> source of a service's volumes (v1 `config` syntax: SOURCE:TARGET:MODE)."""
    out = {}
    for vol in service.get("volumes", []):
        source, target, *_ = vol.split(":")
        out[target] = source
    return out


def written_mounts(service: dict[str, Any]) -> dict[str, str]:
    """target -> source of the volumes a service may write (not `:ro`): a volume is backed up
    from the service that writes it (the Node-RED container reads the IV scan results too)."""
    out = {}
    for vol in service.get("volumes", []):
        source, target, *mode = vol.split(":")
        if "ro" not in mode:
            out[target] = source
    return out


def lab_of(service: dict[str, Any]) -> Path | None:
    source = mounts(service).get(LAB_IN_CONTAINER)
    return Path(source) if source else None


def healthcheck_of(service: dict[str, Any]) -> list[str] | None:
    """The healthcheck's test, None when there is none (v1 writes `disable: true` as NONE)."""
    test = (service.get("healthcheck") or {}).get("test")
    return None if not test or test[0] == "NONE" else test


def argv_of(service: dict[str, Any]) -> list[str]:
    return list(service.get("entrypoint") or []) + list(service.get("command") or [])


def trackerdcs_services(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services of the trackerdcs image (the daemons, sim-lab, influxdb-setup)."""
    return {
        name: s
        for name, s in config["services"].items()
        if s["image"].startswith("localhost/trackerdcs:")
    }


# -- compose: the files validate, merge, and the dev and dummy files do only their job ----------
@pytest.mark.parametrize("files", [PROD, DEV, DUMMY, *EXTRAS], ids=lambda f: "+".join(f))
def test_compose_files_validate_and_merge(files: list[str]) -> None:
    assert compose_config(files)["services"]


def test_compose_refuses_to_start_without_a_secret() -> None:
    if COMPOSE is None:
        pytest.skip("docker-compose (v1) is not installed")
    for missing in ("MQTT_PASSWORD_VIEWER", "GRAFANA_ADMIN_PASSWORD", "NODE_RED_PASSWORD_HASH"):
        env = compose_env(**{missing: ""})
        done = subprocess.run(
            [COMPOSE, "--env-file", no_env_file(), "config", "-q"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode != 0 and missing in done.stderr, done.stderr


def test_env_example_lists_every_variable_and_holds_no_secret() -> None:
    example = env_example()
    used: set[str] = set()
    for name in [
        "docker-compose.yml",
        "docker-compose.dev.yml",
        "docker-compose.dummy.yml",
        "deploy/docker-compose.tls.yml",
        "deploy/docker-compose.serial.yml",
    ]:
        text = re.sub(r"(?m)^\s*#.*$", "", (ROOT / name).read_text())  # not commented examples
        used |= set(re.findall(r"(?<!\$)\$\{([A-Z_][A-Z0-9_]*)", text))
    optional = {"TRACKERDCS_TAG", "TRACKERDCS_MQTT_TLS_BIND", "TRACKERDCS_JULABO_DEVICE"}
    optional |= {
        f"TRACKERDCS_{s}_HOST_PORT" for s in ("MQTT", "INFLUX", "NODE_RED", "GRAFANA", "MQTT_TLS")
    }
    assert used - optional == set(example), "compose and .env.example disagree"
    for key, value in example.items():
        if "PASSWORD" in key or "SECRET" in key:
            assert value == "", f".env.example: {key} must be empty (init-env.py fills it)"
    ignored = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=ROOT, check=False)
    assert ignored.returncode == 0, ".env must be ignored by git"


def test_dev_file_only_publishes_ports_on_loopback() -> None:
    dev = yaml.safe_load((ROOT / "docker-compose.dev.yml").read_text())
    assert set(dev) == {"services"}
    for name, service in dev["services"].items():
        assert set(service) == {"ports"}, f"{name}: the dev file maps ports, and only that"
        assert all(str(p).startswith("127.0.0.1:") for p in service["ports"]), name


def test_production_publishes_only_the_uis_on_loopback_by_default(configs) -> None:
    published = {
        name: s["ports"] for name, s in configs["prod"]["services"].items() if s.get("ports")
    }
    assert set(published) == set(UIS)
    for name, port in UIS.items():
        assert published[name] == [f"127.0.0.1:{port}:{port}/tcp"]
    bound = compose_config(PROD, compose_env(TRACKERDCS_UI_BIND="0.0.0.0"))
    assert bound["services"]["grafana"]["ports"] == ["0.0.0.0:3000:3000/tcp"]


def test_dummy_replaces_the_hardware_with_the_simulators(configs) -> None:
    dummy = configs["dummy"]["services"]
    assert argv_of(dummy["sim-lab"])[0] == "trackerdcs-sim-lab"
    for name, service in trackerdcs_services(configs["dummy"]).items():
        lab = lab_of(service)
        assert lab == ROOT / "deploy" / "lab.dummy.yml", f"{name} reads {lab}"
    for name, service in trackerdcs_services(configs["prod"]).items():
        if lab_of(service) is not None:
            assert lab_of(service) == ROOT / "deploy" / "lab.yml", name
    lab = load_config(ROOT / "deploy" / "lab.dummy.yml")
    # the crate over the compose network, by service name; the lines on sim-lab's loopback
    assert lab.crates[0].address.split(":")[0] == "sim-lab"
    assert lab.virtual_lab_crate() is lab.crates[0]
    assert "--host" in argv_of(dummy["sim-lab"])  # CA on every interface of sim-lab
    lines = [*(c.url for c in lab.chillers), *(s.source for s in lab.sensors)]
    assert all(loopback_port(url) for url in lines)
    for name in ("julabo", "sensors"):
        assert dummy[name]["network_mode"] == "service:sim-lab"
        assert dummy[name]["depends_on"]["sim-lab"]["condition"] == "service_healthy"


def test_lab_yamls_are_valid_and_use_the_service_names() -> None:
    for name in ("lab.yml", "lab.dummy.yml"):
        lab = load_config(ROOT / "deploy" / name)
        check_safety(lab)
        assert lab.mqtt.host == "mosquitto" and lab.influx.host == "influxdb"
        assert lab.alarms.db.startswith("/var/lib/trackerdcs/")  # the alarms-data volume
    prod, dummy = (load_config(ROOT / "deploy" / n) for n in ("lab.yml", "lab.dummy.yml"))
    assert prod.virtual_lab is None
    assert [c.prefixes for c in prod.crates] == [c.prefixes for c in dummy.crates]
    assert [s.name for s in prod.sensors] == [s.name for s in dummy.sensors]


# -- compose against the code ------------------------------------------------------------------
def test_every_command_and_healthcheck_program_exists(configs) -> None:
    for config in configs.values():
        for name, service in trackerdcs_services(config).items():
            argv = argv_of(service)
            program = argv[0]
            assert program in SCRIPTS, f"{name}: {program} is not a console script"
            assert importlib.util.find_spec(SCRIPTS[program].split(":")[0]), program
            test = healthcheck_of(service)
            if test:
                assert test[0] == "CMD" and test[1] in SCRIPTS, f"{name}: {test}"


def test_every_daemon_is_deployed(configs) -> None:
    """A new daemon (pyproject's console scripts) must get its service in docker-compose.yml."""
    deployed = {argv_of(s)[0] for s in trackerdcs_services(configs["prod"]).values()}
    for script in SCRIPTS:
        assert script in deployed or script in NOT_SERVICES, f"{script}: no service deploys it"
    for name in ("power", "julabo", "sensors", "interlock", "alarms", "dcs"):
        assert argv_of(configs["prod"]["services"][name])[0] == f"trackerdcs-{name}"


def test_every_mounted_path_exists_in_the_repository(configs) -> None:
    for config in configs.values():
        for name, service in config["services"].items():
            for target, source in mounts(service).items():
                if source.startswith("/"):
                    assert Path(source).exists(), f"{name}: {source} -> {target} is missing"
                    assert Path(source).is_relative_to(ROOT), f"{name}: {source} outside the repo"
                else:
                    assert source in config["volumes"], f"{name}: volume {source} not declared"
    mosquitto = configs["prod"]["services"]["mosquitto"]
    config_dir = Path(mounts(mosquitto)["/mosquitto/config"])
    for arg in argv_of(mosquitto):
        if arg.startswith("/mosquitto/config/"):
            assert (config_dir / arg.removeprefix("/mosquitto/config/")).is_file(), arg
    conf = (config_dir / "mosquitto.conf").read_text()
    include = re.search(r"^include_dir /mosquitto/config/(\S+)", conf, re.M).group(1)
    assert (config_dir / include).is_dir()


def test_every_named_volume_is_used_and_backed_up(configs) -> None:
    config = configs["prod"]
    used = {
        source: (name, target)
        for name, service in config["services"].items()
        for target, source in written_mounts(service).items()
        if not source.startswith("/")
    }
    assert set(used) == set(config["volumes"])
    table = (ROOT / "deploy" / "volumes.sh").read_text().split('STACK_VOLUMES="', 1)[1]
    rows = [line.split() for line in table.split('"', 1)[0].strip().splitlines()]
    assert {row[0] for row in rows} == set(config["volumes"]), "deploy/volumes.sh"
    for volume, service, path, method in rows:
        assert used[volume] == (service, path), f"{volume}: deploy/volumes.sh says {service}:{path}"
        assert method in ("influx", "sqlite", "tar")
    for script in ("backup.sh", "restore.sh"):
        done = subprocess.run(["bash", "-n", str(ROOT / "deploy" / script)], check=False)
        assert done.returncode == 0, script


def test_backup_reads_every_volume_from_its_service(tmp_path: Path) -> None:
    """deploy/backup.sh against a stand-in for `docker compose` that answers each
    `exec -T SERVICE CMD...` with the command line it was asked to run, reading its stdin as
    the real one does."""
    fake = tmp_path / "compose"
    fake.write_text(
        '#!/bin/sh\n[ "$1" = exec ] && [ "$2" = -T ] || exit 3\n'
        'shift 2\ncat >/dev/null\necho "$*"\n'
    )
    fake.chmod(0o755)
    dest = tmp_path / "backup"
    env = {**os.environ, "COMPOSE": str(fake)}
    done = subprocess.run(
        ["bash", str(ROOT / "deploy" / "backup.sh"), str(dest)],
        env=env,
        input="",
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    volumes = compose_config(PROD)["volumes"]
    files = {p.name.split(".")[0]: p for p in dest.iterdir()}
    assert set(files) == {*volumes, "lab", "MANIFEST"}
    for name, service in compose_config(PROD)["services"].items():
        for target, source in written_mounts(service).items():
            if source in volumes:
                ran = files[source].read_text()
                assert ran.startswith(f"{name} "), ran  # run in the container that mounts it
                assert target in ran or "influxd backup" in ran or "sqlite3" in ran, ran
    assert stat.S_IMODE(dest.stat().st_mode) == 0o700
    again = subprocess.run(
        ["bash", str(ROOT / "deploy" / "backup.sh"), str(dest)],
        env=env,
        input="",
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert again.returncode == 1, "a backup never overwrites another"


def test_healthchecks_restart_policies_and_dependencies(configs) -> None:
    for config in configs.values():
        services = config["services"]
        for name, service in services.items():
            if name in ONE_SHOTS:
                assert service["restart"] == "no" and healthcheck_of(service) is None
                continue
            assert service["restart"] == "unless-stopped", name
            if name not in NO_HEALTHCHECK:
                check = service["healthcheck"]
                assert check["test"] and check["interval"] and check["retries"], name
            for other, how in (service.get("depends_on") or {}).items():
                wanted = (
                    "service_completed_successfully" if other in ONE_SHOTS else "service_healthy"
                )
                assert how["condition"] == wanted, f"{name} -> {other}"
                assert other in ONE_SHOTS or healthcheck_of(services[other]), other


def test_healthcheck_arguments_hold_no_whitespace(configs) -> None:
    """Podman's Docker API joins a CMD healthcheck's arguments with spaces and splits them again
    (containers/podman#26519: podman 4.3 of Debian 12, and later ones): an argument with a space
    breaks the check there. Such a check is a CMD-SHELL command line instead."""
    for config in configs.values():
        for name, service in config["services"].items():
            test = healthcheck_of(service)
            if test and test[0] == "CMD":
                spaced = [arg for arg in test[1:] if re.search(r"\s", arg)]
                assert not spaced, f"{name}: {spaced} (use CMD-SHELL)"


def test_down_removes_the_containers_sharing_a_network_namespace_first(tmp_path: Path) -> None:
    """deploy/down.sh against a stand-in for `docker-compose` that answers `config` with the
    merged dummy stack and records every other call (tests/test_containers.py runs it for real)."""
    merged = tmp_path / "merged.yml"
    merged.write_text(_merged(tuple(DUMMY)))
    calls = tmp_path / "calls"
    fake = tmp_path / "compose"
    fake.write_text(
        f'#!/bin/sh\nif [ "$1" = config ]; then cat {merged}; else echo "$*" >>{calls}; fi\n'
    )
    fake.chmod(0o755)
    done = subprocess.run(
        ["bash", str(ROOT / "deploy" / "down.sh"), "-v"],
        env={**os.environ, "COMPOSE": str(fake)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert calls.read_text().splitlines() == ["rm --stop --force julabo sensors", "down -v"]


def test_images_are_pinned(configs) -> None:
    for name, service in configs["dummy"]["services"].items():
        image = service["image"]
        if image.startswith("localhost/"):
            assert "build" in service, name
            continue
        repo, _, tag = image.rpartition(":")
        assert re.fullmatch(r"\d+\.\d+\.\d+", tag), f"{name}: pin a version, not {tag!r}"
        assert repo.startswith("docker.io/"), f"{name}: a fully qualified name (podman)"
    influx = configs["prod"]["services"]["influxdb"]["image"]
    assert influx.split(":")[1].startswith("1.8."), "InfluxDB 1.8: the v1 API and InfluxQL"


def test_mqtt_users_and_secrets_flow_from_env_to_the_containers(configs) -> None:
    acl_users = re.findall(r"^user (\S+)", (ROOT / "mosquitto" / "acl").read_text(), re.M)
    services = configs["prod"]["services"]
    broker_env = services["mosquitto"]["environment"]
    assert set(broker_env) == {f"MQTT_PASSWORD_{u.upper()}" for u in acl_users}
    for name, service in services.items():
        env = service.get("environment") or {}
        user = env.get("TRACKERDCS_MQTT_USERNAME")
        if user is not None:
            assert user in acl_users, name
            # the client's password is the one the broker's password file is made from
            assert env["TRACKERDCS_MQTT_PASSWORD"] == broker_env[f"MQTT_PASSWORD_{user.upper()}"]
        elif name in trackerdcs_services(configs["prod"]) and name not in ONE_SHOTS:
            pytest.fail(f"{name}: no MQTT user")
    # Telegraf and Grafana get every variable their files read
    for name, path in (
        ("telegraf", "telegraf.conf"),
        ("grafana", "grafana/datasources/influxdb.yml"),
    ):
        lines = (ROOT / path).read_text().splitlines()
        text = "\n".join(line for line in lines if not line.lstrip().startswith("#"))
        wanted = set(re.findall(r"\$\{([A-Z_]+)", text))
        assert wanted <= set(services[name]["environment"]), f"{name}: {path}"
    assert services["telegraf"]["environment"]["TRACKERDCS_MQTT_USERNAME"] == "telegraf"
    setup = argv_of(services["influxdb-setup"])
    assert {"telegraf:write", "grafana:read", "nodered:read"} <= set(setup)


def test_node_red_needs_a_login_and_reads_influxdb_as_the_read_only_user(configs) -> None:
    """In the container Node-RED listens beyond loopback: the dashboard's login is on (nothing may
    turn it off), its healthcheck shows the login's token, and the History page reads InfluxDB as
    the read-only `nodered` that influxdb-setup creates with the same password."""
    for config in configs.values():
        services = config["services"]
        env = services["nodered"]["environment"]
        assert env["TRACKERDCS_NODE_RED_HOST"] == "0.0.0.0" and "TRACKERDCS_UI_LOGIN" not in env
        setup = services["influxdb-setup"]["environment"]
        assert env["TRACKERDCS_INFLUX_USERNAME"] == "nodered"
        assert env["TRACKERDCS_INFLUX_PASSWORD"] == setup["TRACKERDCS_INFLUX_PASSWORD_NODERED"]
        assert env["TRACKERDCS_UI_HEALTH_TOKEN_FILE"].startswith("/tmp/")
        assert {"TRACKERDCS_UI_USERS", "TRACKERDCS_UI_GRAFANA_URL"} <= set(env)
        test = healthcheck_of(services["nodered"])
        assert test[:2] == ["CMD", "node"], test
        assert (ROOT / "node-red" / test[2].removeprefix("/opt/node-red/")).exists(), test
        mounts = {v.split(":")[1] if isinstance(v, str) else v["target"]
                  for v in services["nodered"]["volumes"]}  # fmt: skip
        assert "/opt/node-red/telegraf.conf" in mounts  # as Telegraf writes


def test_every_trackerdcs_healthcheck_resolves_the_daemon_and_its_prefixes(configs) -> None:
    """`trackerdcs-health` finds out, from each container's command line, what to check."""
    for config in configs.values():
        for name, service in trackerdcs_services(config).items():
            if name in ONE_SHOTS or name == "nodered":
                continue
            argv = ["/usr/local/bin/python3", "/usr/local/bin/" + argv_of(service)[0]]
            argv += argv_of(service)[1:]
            target = health.target_from_argv(argv)
            assert target.config == LAB_IN_CONTAINER
            lab = load_config(lab_of(service))
            if target.service.startswith("sim-"):
                assert health.simulator_ports(lab, target), name
            else:
                assert health.prefixes(lab, target), name


def test_health_reads_console_scripts_and_python_m() -> None:
    target = health.target_from_argv(
        [
            "/usr/local/bin/python3",
            "/usr/local/bin/trackerdcs-power",
            "--config",
            "/x.yml",
            "--crate",
            "sy4527",
            "-v",
        ]
    )
    assert (target.service, target.config, target.crate) == ("power", "/x.yml", "sy4527")
    target = health.target_from_argv(
        [sys.executable, "-m", "trackerdcs.sensors.daemon", "--config", "l.yml", "--sensor", "a"]
    )
    assert (target.service, target.sensors) == ("sensors", ["a"])
    with pytest.raises(health.HealthError, match="not a trackerdcs daemon"):
        health.target_from_argv(["/bin/sh", "-c", "sleep 1"])
    lab = load_config(ROOT / "deploy" / "lab.yml")
    assert health.prefixes(lab, health.Target("power")) == ["/hv", "/lv"]
    assert health.prefixes(lab, health.Target("alarms")) == ["/alarms", "/audit"]
    assert health.prefixes(lab, health.Target("interlock")) == ["/interlock"]
    assert health.prefixes(lab, health.Target("dcs")) == ["/dcs"]
    sensors = health.prefixes(lab, health.Target("sensors", sensors=["temp_m1"]))
    assert sensors == ["/temp_m1"]


# -- Dockerfile ---------------------------------------------------------------------------------
def dockerignore_allows(path: str) -> bool:
    """Docker's rule: the last matching pattern wins (a `!pattern` re-includes)."""
    allowed = True
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatchcase(p, pattern) for p in prefixes):
            allowed = negate
    return allowed


def test_dockerfile_against_the_repository(configs) -> None:
    text = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM \S+ AS (\S+)", text, re.M)
    for config in configs.values():
        for name, service in config["services"].items():
            if "build" in service:
                assert service["build"]["target"] in stages, name
    assert stages[-1] == "trackerdcs", "the default target is the daemons' image"
    for sources in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.M):
        for source in sources.split():
            assert (ROOT / source).exists(), f"COPY {source}: missing"
            assert dockerignore_allows(source), f"COPY {source}: excluded by .dockerignore"
    assert not dockerignore_allows("node-red/node_modules/x.js")
    assert not dockerignore_allows(".env")
    assert re.findall(r"^USER (\S+)", text, re.M) == ["trackerdcs", "trackerdcs"]  # not root
    assert "HEALTHCHECK" in text and '"trackerdcs-health"' in text
    entry = re.search(r'^ENTRYPOINT \["python", "-m", "([\w.]+)"', text, re.M).group(1)
    assert importlib.util.find_spec(entry)
    # only the runtime part of requirements.txt goes into the image
    requirements = (ROOT / "requirements.txt").read_text()
    assert "\n# test and lint" in requirements
    runtime = requirements.split("\n# test and lint")[0]
    for package in (
        "paho-mqtt",
        "pyepics",
        "caproto",
        "transitions",
        "pydantic",
        "pyserial",
        "PyYAML",
        "psutil",
    ):
        assert f"\n{package}==" in runtime, package
    assert "pytest" not in runtime and "playwright" not in runtime


# -- secrets: .env from init-env.py; the Node-RED launcher -------------------------------------
def test_init_env_writes_every_secret_and_compose_accepts_it(tmp_path: Path) -> None:
    out = tmp_path / ".env"
    done = subprocess.run(
        [sys.executable, str(ROOT / "deploy" / "init-env.py"), "-o", str(out)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    values = dict(
        line.split("=", 1)
        for line in out.read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    assert set(values) == set(env_example())
    for key, value in values.items():
        if "PASSWORD" in key or "SECRET" in key:
            assert value and value != "change-me", key
    assert len({v for k, v in values.items() if k.startswith("MQTT_")}) == 10  # all different
    assert BCRYPT.match(values["NODE_RED_PASSWORD_HASH"].strip("'"))
    password = re.search(r"password (\S+)", done.stdout).group(1)
    bcryptjs = ROOT / "node-red" / "node_modules" / "bcryptjs"
    if shutil.which("node") and bcryptjs.exists():  # the hash is one Node-RED accepts
        check = subprocess.run(
            [
                "node",
                "-e",
                "process.exit(require(process.argv[1]).compareSync(process.argv[2], "
                "process.argv[3]) ? 0 : 1)",
                str(bcryptjs),
                password,
                values["NODE_RED_PASSWORD_HASH"].strip("'"),
            ],
            check=False,
        )
        assert check.returncode == 0
    again = subprocess.run(
        [sys.executable, str(ROOT / "deploy" / "init-env.py"), "-o", str(out)],
        capture_output=True,
        text=True,
    )
    assert again.returncode == 1, "an existing .env is never overwritten"
    if COMPOSE:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MQTT_", "INFLUXDB_"))}
        argv = [COMPOSE, "--env-file", str(out), *DUMMY_ARGS, "config"]
        merged = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True)
        assert merged.returncode == 0, merged.stderr
        power = yaml.safe_load(merged.stdout)["services"]["power"]["environment"]
        assert power["TRACKERDCS_MQTT_PASSWORD"] == values["MQTT_PASSWORD_POWER"]


DUMMY_ARGS = [a for f in DUMMY for a in ("-f", f)]


def test_node_red_gets_its_mqtt_login_from_the_environment(monkeypatch, tmp_path) -> None:
    import json

    flows = json.loads((ROOT / "node-red" / "flows.json").read_text())
    lab = load_config(ROOT / "deploy" / "lab.yml")
    creds = broker_credentials(flows, lab)
    brokers = [n["id"] for n in flows if n["type"] == "mqtt-broker"]
    assert brokers and set(creds) == set(brokers)
    for login in creds.values():  # references, never a value
        assert login == {
            "user": "${TRACKERDCS_MQTT_USERNAME}",
            "password": "${TRACKERDCS_MQTT_PASSWORD}",
        }
    monkeypatch.setenv("TRACKERDCS_NODE_RED_PASSWORD_HASH", "change-me")
    monkeypatch.setenv("TRACKERDCS_NODE_RED_SECRET", secrets.token_hex(8))
    from trackerdcs.deploy import DeployError

    with pytest.raises(DeployError, match="TRACKERDCS_NODE_RED_PASSWORD_HASH"):
        node_red_environment(lab, 1880)
    monkeypatch.setenv("TRACKERDCS_NODE_RED_PASSWORD_HASH", "$2b$10$" + "a" * 53)
    monkeypatch.setenv("TRACKERDCS_MQTT_USERNAME", "nodered")
    monkeypatch.setenv("TRACKERDCS_MQTT_PASSWORD", secrets.token_hex(8))
    env = node_red_environment(lab, 1880)
    assert (env["TRACKERDCS_MQTT_HOST"], env["TRACKERDCS_MQTT_PORT"]) == ("mosquitto", "1883")
    assert json.loads(env["TRACKERDCS_UI_LAB"])["power"].keys() == {"/hv", "/lv"}
    # the History page: InfluxDB as the lab YAML's credential variables say (nodered, in compose)
    home = tmp_path / "home"
    home.mkdir()
    shutil.copyfile(ROOT / "telegraf.conf", home / "telegraf.conf")
    config = ROOT / "deploy" / "lab.yml"
    with pytest.raises(DeployError, match="no InfluxDB login for the history"):
        node_red_environment(lab, 1880, config, home)
    monkeypatch.setenv("TRACKERDCS_INFLUX_USERNAME", "nodered")
    monkeypatch.setenv("TRACKERDCS_INFLUX_PASSWORD", "reader-secret")
    env = node_red_environment(lab, 1880, config, home)
    assert env["TRACKERDCS_UI_INFLUX_URL"] == "http://influxdb:8086"
    assert (env["TRACKERDCS_UI_INFLUX_USERNAME"], env["TRACKERDCS_UI_INFLUX_PASSWORD"]) == (
        "nodered", "reader-secret")  # fmt: skip
    history = json.loads(env["TRACKERDCS_UI_LAB"])["history"]
    assert history["measurements"]["hv"] and history["raw_retention"] == 30 * 86400
    export = env["TRACKERDCS_UI_EXPORT"]
    assert export.endswith(f"--config {config} --telegraf-conf {home}/telegraf.conf")


# -- InfluxDB with authentication: what influxdb-setup does ----------------------------------------
@pytest.mark.skipif(shutil.which("influxd") is None, reason="influxd is not installed")
def test_influx_setup_creates_users_with_least_privilege(tmp_path: Path, monkeypatch) -> None:
    from trackerdcs.config import InfluxConfig
    from trackerdcs.stack.influx import influxd_process
    from trackerdcs.stack.process import free_port

    port, rpc = free_port(), free_port()
    proc = influxd_process(tmp_path, "127.0.0.1", port, rpc)
    conf = tmp_path / f"influxdb-{port}.conf"
    conf.write_text(conf.read_text().replace("[http]\n", "[http]\n  auth-enabled = true\n"))
    passwords = {name: secrets.token_hex(8) for name in ("admin", "telegraf", "grafana")}
    monkeypatch.setenv("TRACKERDCS_INFLUX_USERNAME", "admin")
    monkeypatch.setenv("TRACKERDCS_INFLUX_PASSWORD", passwords["admin"] + "'\\")  # quoting
    monkeypatch.setenv("TRACKERDCS_INFLUX_PASSWORD_TELEGRAF", passwords["telegraf"])
    monkeypatch.setenv("TRACKERDCS_INFLUX_PASSWORD_GRAFANA", passwords["grafana"])
    cfg = InfluxConfig(host="127.0.0.1", port=port, rpc_port=rpc)
    users = [("telegraf", "WRITE"), ("grafana", "READ")]
    with proc:
        said: list[str] = []
        influx_setup(cfg, users, wait=10, say=said.append)
        assert any("created the admin user" in s for s in said)
        influx_setup(cfg, users, wait=10, say=said.append)  # idempotent, at every start
        telegraf = InfluxClient(cfg.url, username="telegraf", password=passwords["telegraf"])
        telegraf.write(b"hv vmon=1\n")
        with pytest.raises(InfluxError, match="403"):
            telegraf.series("SELECT * FROM hv")
        grafana = InfluxClient(cfg.url, username="grafana", password=passwords["grafana"])
        assert grafana.series("SELECT * FROM hv")[0].values[0][1] == 1
        with pytest.raises(InfluxError, match="403"):
            grafana.write(b"hv vmon=2\n")
        for client in (
            InfluxClient(cfg.url),
            InfluxClient(cfg.url, username="grafana", password="wrong"),
        ):
            with pytest.raises(InfluxError, match="401"):
                client.series("SELECT * FROM hv")
        policies = {
            r["name"]
            for s in grafana.series('SHOW RETENTION POLICIES ON "trackerdcs"')
            for r in s.rows()
        }
        assert {"raw", "downsampled"} <= policies
        monkeypatch.setenv("TRACKERDCS_INFLUX_PASSWORD_GRAFANA", "change-me")
        from trackerdcs.deploy import DeployError

        with pytest.raises(DeployError, match="TRACKERDCS_INFLUX_PASSWORD_GRAFANA"):
            influx_setup(cfg, users, wait=10, say=said.append)


def test_health_knows_every_option_of_the_daemons_that_takes_a_value(monkeypatch) -> None:
    """`trackerdcs-health` reads a daemon's command line with `health.daemon_options`: an
    option it did not know would have its value taken for the lab file. Each daemon's parser,
    as its `main` builds it (through `daemon_main`), against that list."""
    import argparse
    import importlib

    known = {s for a in health.daemon_options()._actions for s in a.option_strings}
    daemons = {module: service for module, service in health._script_modules().items()
               if service in health.SERVICES and not service.startswith("sim-")}  # fmt: skip
    assert set(daemons.values()) == {s for s in health.SERVICES if not s.startswith("sim-")}
    for module_name, service in daemons.items():
        module = importlib.import_module(module_name)
        seen: list[Any] = []
        monkeypatch.setattr(module, "daemon_main", lambda *a, seen=seen, **kw: seen.append(kw) or 0)
        module.main([])
        parser = argparse.ArgumentParser(add_help=False)
        if seen[0].get("add_arguments"):
            seen[0]["add_arguments"](parser)
        taking = {s for a in parser._actions if a.nargs != 0 for s in a.option_strings}
        assert taking <= known, f"{service}: {sorted(taking - known)} unknown to health"
