"""What the container stack needs besides the daemons (docker-compose.yml, docs/deployment.md).

- `influx_setup`: InfluxDB with authentication: the admin user (if InfluxDB has none yet), the
  database, its retention policies and continuous query (`trackerdcs.stack.influx`), and one
  user per client with only the privilege it needs (Telegraf writes, Grafana reads). Idempotent:
  the `influxdb-setup` service runs it (`trackerdcs influx-setup`) at every start, and after a
  restore. Passwords come from the environment, never from a file.
- `node-red`: the Node-RED container's entry point (`python -m trackerdcs.deploy node-red`):
  the flows' settings from the lab YAML, as the local stack gives them (`trackerdcs.stack.
  nodered`), the MQTT login and the History page's read-only InfluxDB login from the
  environment, then Node-RED itself.
- `hash-password`: the bcrypt hash of a password (stdin), for `.env`: the Node-RED editor's,
  a dashboard user's (`NODE_RED_USERS`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from trackerdcs.cliargs import add_config
from trackerdcs.config import ConfigError, InfluxConfig, LabConfig, load_config
from trackerdcs.ingest.conf import TelegrafConfError
from trackerdcs.ingest.influxdb import DATABASE, InfluxClient, InfluxError, quote_ident

PLACEHOLDERS = {"", "change-me"}  # .env.example's values: never accepted as a secret
PRIVILEGES = ("READ", "WRITE", "ALL")
USER_PASSWORD_ENV = "TRACKERDCS_INFLUX_PASSWORD_{}"  # of the user NAME (upper case)
BCRYPT = re.compile(r"^\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}$")


class DeployError(Exception):
    """A setting the stack cannot start with (missing secret, unreachable service)."""


def _secret(name: str) -> str:
    value = os.environ.get(name, "")
    if value in PLACEHOLDERS:
        raise DeployError(f"{name} is not set (.env: see .env.example and docs/deployment.md)")
    return value


# -- InfluxDB --------------------------------------------------------------------------------------
def quote_string(value: str) -> str:
    """An InfluxQL string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def parse_user(spec: str) -> tuple[str, str]:
    """`telegraf:write` -> ("telegraf", "WRITE")."""
    name, _, privilege = spec.partition(":")
    privilege = privilege.upper()
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) or privilege not in PRIVILEGES:
        raise argparse.ArgumentTypeError(f"expected NAME:read|write|all, got {spec!r}")
    return name, privilege


def _wait(what: str, attempt: Callable[[], bool], deadline: float, say: Callable[[str], None]):
    while not attempt():
        if time.monotonic() > deadline:
            raise DeployError(f"{what}: gave up")
        say(f"waiting for {what}")
        time.sleep(1.0)


def influx_setup(
    cfg: InfluxConfig,
    users: list[tuple[str, str]],
    wait: float = 60.0,
    say: Callable[[str], None] = print,
) -> None:
    """Users, database, retention policies and continuous query; see the module's docstring."""
    from trackerdcs.stack.influx import ensure_user, setup_database

    deadline = time.monotonic() + wait
    admin = cfg.username
    if not admin:
        raise DeployError(f"no InfluxDB admin: set {cfg.username_env} and {cfg.password_env}")
    password = _secret(cfg.password_env)
    anonymous = InfluxClient(cfg.url, timeout=5.0)
    client = InfluxClient(cfg.url, username=admin, password=password, timeout=5.0)
    _wait(f"InfluxDB at {cfg.url}", anonymous.ping, deadline, say)

    def ready() -> bool:
        try:
            client.series("SHOW USERS", database="")
        except InfluxError as exc:
            if "create admin user first" in str(exc):  # authentication on, no user yet
                anonymous.execute(
                    f"CREATE USER {quote_ident(admin)} WITH PASSWORD {quote_string(password)} "
                    "WITH ALL PRIVILEGES",
                    database="",
                )
                say(f"created the admin user {admin}")
                return True
            if "cannot reach" in str(exc):
                return False
            raise DeployError(f"InfluxDB refused {admin}: {exc}") from None
        return True

    _wait(f"InfluxDB at {cfg.url} (login)", ready, deadline, say)
    setup_database(client, cfg)
    for name, privilege in users:
        ensure_user(client, name, _secret(USER_PASSWORD_ENV.format(name.upper())), privilege)
    done = ", ".join(f"{n} ({p.lower()})" for n, p in users) or "none"
    say(f"InfluxDB {cfg.url}: database {DATABASE} ready; users {done}")


def cmd_influx_setup(args: argparse.Namespace) -> int:
    """`trackerdcs influx-setup` (registered in trackerdcs.cli)."""
    cfg = load_config(args.config)
    try:
        influx_setup(cfg.influx, args.user, args.wait, say=lambda s: print(s, flush=True))
    except (DeployError, InfluxError) as exc:
        print(f"influx-setup: {exc}", file=sys.stderr)
        return 1
    return 0


def add_deploy_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "influx-setup",
        help="InfluxDB with authentication: users, database, retention policies (idempotent)",
    )
    add_config(p, what="lab YAML (influx section)")
    p.add_argument(
        "--user", type=parse_user, action="append", default=[], metavar="NAME:PRIVILEGE",
        help="a user with read, write or all on the database; password from "
        "$TRACKERDCS_INFLUX_PASSWORD_<NAME> (repeatable)",
    )  # fmt: skip
    p.add_argument("--wait", type=float, default=60.0, help="s to wait for InfluxDB (60)")
    p.set_defaults(func=cmd_influx_setup)


# -- Node-RED --------------------------------------------------------------------------------------
def hash_password(password: str, home: Path) -> str:
    """A bcrypt hash of `password`, made by the bcryptjs of Node-RED's modules in `home`."""
    from trackerdcs.stack.nodered import hash_password as bcrypt_hash

    return bcrypt_hash(password, home)


def broker_credentials(flows: list[dict], lab: LabConfig) -> dict[str, dict[str, str]]:
    """flows_cred.json: each MQTT broker node logs in with `${<the lab's username_env>}`.

    Node-RED expands `${VAR}` in credentials from its environment when it starts, so the file
    holds no secret; it is written at every start, before Node-RED encrypts it.
    """
    login = {"user": f"${{{lab.mqtt.username_env}}}", "password": f"${{{lab.mqtt.password_env}}}"}
    return {node["id"]: dict(login) for node in flows if node.get("type") == "mqtt-broker"}


def node_red_environment(
    lab: LabConfig, port: int, config: Path | None = None, home: Path | None = None
) -> dict[str, str]:
    """What settings.js and the flows read, from the lab YAML (see node-red/settings.js); with
    the lab YAML's path and Node-RED's `home` (its telegraf.conf), the History page's InfluxDB,
    read as the user of the lab's credential variables (the read-only `nodered` in compose),
    and its CSV export."""
    from trackerdcs.ingest.conf import load_telegraf_conf
    from trackerdcs.stack.nodered import export_command, ui_lab

    for name in ("TRACKERDCS_NODE_RED_PASSWORD_HASH", "TRACKERDCS_NODE_RED_SECRET"):
        _secret(name)
    if not BCRYPT.match(os.environ["TRACKERDCS_NODE_RED_PASSWORD_HASH"]):
        raise DeployError(
            "TRACKERDCS_NODE_RED_PASSWORD_HASH is not a bcrypt hash ($2b$10$...): make one with "
            "deploy/init-env.py or `python -m trackerdcs.deploy hash-password`"
        )
    if not lab.mqtt.username or not lab.mqtt.password:
        raise DeployError(f"no MQTT login: set {lab.mqtt.username_env} and {lab.mqtt.password_env}")
    env = {
        "TRACKERDCS_NODE_RED_HOST": os.environ.get("TRACKERDCS_NODE_RED_HOST", "0.0.0.0"),
        "TRACKERDCS_MQTT_HOST": lab.mqtt.host,
        "TRACKERDCS_MQTT_PORT": str(lab.mqtt.port),
        "TRACKERDCS_UI_LAB": json.dumps(ui_lab(lab)),
        "PORT": str(port),
    }
    if config is None or home is None:
        return env
    influx = lab.influx
    if not influx.username or not influx.password:
        raise DeployError(
            f"no InfluxDB login for the history: set {influx.username_env} and "
            f"{influx.password_env} (the read-only user nodered: INFLUXDB_NODERED_PASSWORD)"
        )
    telegraf = home / "telegraf.conf"
    env.update({
        "TRACKERDCS_UI_LAB": json.dumps(ui_lab(lab, load_telegraf_conf(telegraf))),
        "TRACKERDCS_UI_INFLUX_URL": influx.url,
        "TRACKERDCS_UI_INFLUX_USERNAME": influx.username,
        "TRACKERDCS_UI_INFLUX_PASSWORD": influx.password,
        "TRACKERDCS_UI_EXPORT": export_command(config, telegraf),
    })  # fmt: skip
    return env


def node_red_argv(home: Path, user_dir: Path, port: int) -> list[str]:
    red = home / "node_modules" / "node-red" / "red.js"
    argv = [shutil.which("node") or "node", str(red), "--settings", str(home / "settings.js")]
    return [*argv, "--userDir", str(user_dir), "--port", str(port), str(user_dir / "flows.json")]


def prepare_node_red(lab: LabConfig, home: Path, user_dir: Path) -> None:
    """A fresh copy of the flows (the UI's sources are node-red/src/) and their MQTT login."""
    user_dir.mkdir(parents=True, exist_ok=True)
    flows = json.loads((home / "flows.json").read_text())
    shutil.copyfile(home / "flows.json", user_dir / "flows.json")
    creds = user_dir / "flows_cred.json"
    creds.write_text(json.dumps(broker_credentials(flows, lab), indent=2) + "\n")
    creds.chmod(0o600)


def cmd_node_red(args: argparse.Namespace) -> int:
    home, user_dir = Path(args.home), Path(args.user_dir)
    try:
        lab = load_config(args.config)
        env = {**os.environ, **node_red_environment(lab, args.port, Path(args.config), home)}
        prepare_node_red(lab, home, user_dir)
    except (ConfigError, DeployError, TelegrafConfError, OSError) as exc:
        print(f"node-red: {exc}", file=sys.stderr)
        return 2
    argv = node_red_argv(home, user_dir, args.port)
    print(f"node-red: MQTT {lab.mqtt.host}:{lab.mqtt.port} as {lab.mqtt.username}", flush=True)
    os.chdir(home)
    os.execve(argv[0], argv, env)
    return 1  # not reached


def cmd_hash_password(args: argparse.Namespace) -> int:
    password = sys.stdin.read().rstrip("\n")
    if not password:
        print("hash-password: give the password on stdin", file=sys.stderr)
        return 2
    try:
        print(hash_password(password, Path(args.home)))
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        print(f"hash-password: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trackerdcs.deploy")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("node-red", help="the Node-RED container's entry point")
    p.add_argument("--config", default=os.environ.get("TRACKERDCS_CONFIG"), required=False)
    p.add_argument("--home", default="/opt/node-red", help="settings.js, flows.json, node_modules")
    p.add_argument("--user-dir", default="/data", help="Node-RED's user directory (a volume)")
    p.add_argument("--port", type=int, default=1880)
    p.set_defaults(func=cmd_node_red)
    p = sub.add_parser("hash-password", help="bcrypt hash of the password on stdin")
    p.add_argument("--home", default="/opt/node-red", help="where node_modules/bcryptjs is")
    p.set_defaults(func=cmd_hash_password)
    add_deploy_commands(sub)
    args = parser.parse_args(argv)
    if getattr(args, "config", "") is None:
        parser.error("--config (or TRACKERDCS_CONFIG) is required")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
