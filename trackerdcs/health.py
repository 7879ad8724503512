"""`trackerdcs-health`: is a trackerdcs daemon up? The healthcheck of every container.

A daemon is healthy when every MQTT prefix it serves says `online` on `<prefix>/availability`
(retained; the broker's last will turns it `offline` as soon as the daemon dies or loses the
broker). The check logs in with the daemon's own credentials (the lab YAML's `mqtt` section and
the environment variables it names). A simulator is healthy when its Channel Access and backdoor
ports accept connections (never its serial-line ports: each has one client, the daemon).

    trackerdcs-health                          the daemon that is PID 1 (in its container)
    trackerdcs-health --pid 1234               the daemon that is process 1234
    trackerdcs-health --config lab.yml --service power [--crate sy4527]
    trackerdcs-health --config lab.yml --service julabo [--chiller burnin]
    trackerdcs-health --config lab.yml /hv /lv these prefixes

Which daemon, lab YAML, crate, chiller and sensors: from the process's command line
(`trackerdcs-power --config /etc/trackerdcs/lab.yml --crate sy4527`, `trackerdcs-julabo ...
--chiller burnin`, or `python -m trackerdcs.power.daemon ...`), unless given. Exit status 0
healthy, 1 not, or cannot tell (one line says why).
"""

from __future__ import annotations

import argparse
import re
import socket
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path

from trackerdcs.cliargs import add_version, resolve_config
from trackerdcs.config import (
    TOPIC_LEVEL,
    ConfigError,
    LabConfig,
    MqttConfig,
    UnknownChiller,
    load_config,
)
from trackerdcs.mqtt import apply_broker_settings
from trackerdcs.payloads import ONLINE
from trackerdcs.topics import ServiceTopics

SERVICES = ("power", "julabo", "sensors", "interlock", "alarms", "dcs", "sim-lab", "sim-crate")


class HealthError(Exception):
    """The check cannot be made (usage, configuration)."""


@dataclass
class Target:
    """What to check: the daemon's service name, its lab YAML and its own options."""

    service: str
    config: str | None = None
    crate: str | None = None
    sensors: list[str] = field(default_factory=list)
    host: str | None = None
    port: int | None = None
    chiller: str | None = None


def _script_modules() -> dict[str, str]:
    """`trackerdcs.power.daemon` -> `power`, from the console scripts: the installed ones, and
    in a source checkout (an editable install not yet refreshed) pyproject.toml's."""
    scripts = {ep.name: ep.value for ep in entry_points(group="console_scripts")}
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    if pyproject.is_file():
        import tomllib

        scripts.update(tomllib.loads(pyproject.read_text())["project"].get("scripts", {}))
    return {
        value.split(":")[0]: name.removeprefix("trackerdcs-")
        for name, value in scripts.items()
        if name.startswith("trackerdcs-")
    }


def daemon_options() -> argparse.ArgumentParser:
    """The daemons' options as the check reads them: the ones it needs, and every other one
    that takes a value (so that the value is not taken for a bare lab file).
    `tests/test_deployment.py` keeps it equal to the daemons' own parsers."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--config")
    p.add_argument("file", nargs="?")  # the daemon's lab file given bare
    p.add_argument("--crate")
    p.add_argument("--sensor", action="append", default=[])
    p.add_argument("--chiller")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    for other in ("--db", "--results-dir", "--recipes-dir"):  # the other daemons' options
        p.add_argument(other)
    return p


def target_from_argv(argv: list[str]) -> Target:
    """The daemon a command line runs, and the options the check needs."""
    service, rest = None, []
    modules = _script_modules()
    for i, arg in enumerate(argv):
        name = Path(arg).name
        if name.startswith("trackerdcs-"):
            service, rest = name.removeprefix("trackerdcs-"), argv[i + 1 :]
            break
        if arg == "-m" and i + 1 < len(argv) and argv[i + 1] in modules:
            service, rest = modules[argv[i + 1]], argv[i + 2 :]
            break
    if service is None:
        raise HealthError(f"not a trackerdcs daemon: {' '.join(argv) or '(empty command line)'}")
    opts, _ = daemon_options().parse_known_args(rest)
    return Target(
        service,
        opts.config or opts.file,
        opts.crate,
        opts.sensor,
        opts.host,
        opts.port,
        chiller=opts.chiller,
    )


def process_argv(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError as exc:
        raise HealthError(f"cannot read the command line of process {pid}: {exc}") from None
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def prefixes(lab: LabConfig, target: Target) -> list[str]:
    """The MQTT prefixes the daemon serves, each with its own availability topic."""
    service = target.service
    if service == "power":
        if target.crate is None and len(lab.crates) != 1:
            raise HealthError("the lab has several crates: give --crate")
        try:
            crate = lab.crate(target.crate) if target.crate else lab.crates[0]
        except KeyError:
            raise HealthError(f"no crate named {target.crate!r}") from None
        return [p for k, p in crate.prefixes.items() if lab.channels_of(crate.name, k)]
    if service == "julabo":
        try:
            return [lab.chiller(target.chiller).prefix]
        except UnknownChiller as exc:
            hint = ": give --chiller" if lab.chillers and target.chiller is None else ""
            raise HealthError(f"{exc}{hint}") from None
    if service == "sensors":
        return [s.prefix for s in lab.sensors if not target.sensors or s.name in target.sensors]
    if service == "interlock":
        from trackerdcs.safety.interlock import interlock_prefix

        return [interlock_prefix(lab)]
    if service == "alarms":
        from trackerdcs.safety.alarms import ALARMS_PREFIX
        from trackerdcs.safety.audit import AUDIT_PREFIX

        return [ALARMS_PREFIX, AUDIT_PREFIX]
    if service == "dcs":
        from trackerdcs.safety.sequencer import PREFIX

        return [PREFIX]
    raise HealthError(f"no MQTT check for {service!r} (known: {', '.join(SERVICES)})")


def simulator_ports(lab: LabConfig, target: Target) -> list[int]:
    """The TCP ports a simulator serves (Channel Access: its TCP port), on this host."""
    from trackerdcs.sim.crate import port_of

    if target.service == "sim-crate":
        crate = lab.crate(target.crate) if target.crate else lab.crates[0]
        return [target.port or port_of(crate.address)]
    # Not the serial-line ports (chiller, sensors): a serial line has one client, and a probe
    # connection would take the line from the daemon that owns it.
    ports = []
    crate = lab.virtual_lab_crate()
    if crate is not None:
        ports.append(port_of(crate.address))
    if lab.virtual_lab and lab.virtual_lab.control_port:
        ports.append(lab.virtual_lab.control_port)
    return ports


def check_ports(host: str, ports: list[int], timeout: float) -> list[str]:
    """The problems: one per port that does not accept a TCP connection."""
    problems = []
    for port in ports:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
        except OSError as exc:
            problems.append(f"{host}:{port} {exc.strerror or exc}")
    return problems


def availability(
    cfg: MqttConfig, prefixes: list[str], timeout: float, env: Mapping[str, str] | None = None
) -> dict[str, str | None]:
    """`<prefix>/availability` of each prefix (None: nothing within `timeout`); the credentials
    from `env` (default: this process's environment).

    Raises OSError when the broker cannot be reached or refuses the login.
    """
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    topics = {ServiceTopics(p).availability: p for p in prefixes}
    seen: dict[str, str | None] = dict.fromkeys(prefixes)
    done, refused = threading.Event(), []
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="", protocol=mqtt.MQTTv5)
    apply_broker_settings(client, cfg, env)

    def on_connect(c, userdata, flags, reason, props) -> None:
        if reason.is_failure:
            refused.append(str(reason))
            done.set()
        else:
            c.subscribe([(t, 0) for t in topics])

    def on_message(c, userdata, msg) -> None:
        seen[topics[msg.topic]] = msg.payload.decode(errors="replace")
        if all(v is not None for v in seen.values()):
            done.set()

    client.on_connect = on_connect
    client.on_message = on_message
    client.connect(cfg.host, cfg.port, keepalive=max(5, int(timeout) + 2))
    client.loop_start()
    try:
        done.wait(timeout)
    finally:
        client.disconnect()
        client.loop_stop()
    if refused:
        raise PermissionError(f"login refused ({refused[0]})")
    return seen


def check(
    lab: LabConfig, target: Target, timeout: float, env: Mapping[str, str] | None = None
) -> tuple[bool, str]:
    """(healthy, one line that says so); the login's credentials from `env` (default: this
    process's environment)."""
    if target.service in ("sim-lab", "sim-crate"):
        host = target.host if target.host not in (None, "0.0.0.0", "") else "127.0.0.1"
        ports = simulator_ports(lab, target)
        problems = check_ports(host, ports, timeout)
        if problems:
            return False, f"{target.service} unhealthy: {'; '.join(problems)}"
        return True, f"{target.service} healthy: {', '.join(map(str, ports))} open on {host}"
    wanted = prefixes(lab, target)
    if not wanted:
        raise HealthError(f"{target.service} serves no prefix in this lab")
    try:
        seen = availability(lab.mqtt, wanted, timeout, env)
    except OSError as exc:
        return False, f"{target.service} unhealthy: broker {lab.mqtt.host}:{lab.mqtt.port}: {exc}"
    bad = [f"{p} {v}" if v is not None else f"{p} silent" for p, v in seen.items() if v != ONLINE]
    if bad:
        return False, f"{target.service} unhealthy: {', '.join(bad)}"
    return True, f"{target.service} healthy: {', '.join(seen)} online"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="trackerdcs-health",
        description="Exit 0 when a trackerdcs daemon is up: its prefixes are online on MQTT.",
    )
    p.add_argument(
        "prefixes",
        nargs="*",
        metavar="PREFIX",
        help="check these prefixes (`/hv`; needs the lab); one that is not a prefix is the lab "
        "file, as --config FILE",
    )
    p.add_argument("--config", metavar="FILE", help="lab YAML (default: the daemon's own)")
    add_version(p)
    p.add_argument("--service", choices=SERVICES, help="the daemon (default: from --pid)")
    p.add_argument("--crate", help="power: the crate (default: the daemon's own --crate)")
    p.add_argument("--chiller", help="julabo: the chiller (default: the daemon's own --chiller)")
    p.add_argument("--pid", type=int, default=1, help="the daemon's process (default 1)")
    p.add_argument("--timeout", type=float, default=5.0, help="s to wait (default 5)")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # the lab file may be given bare too: the positional that is not a prefix (one level, `/hv`)
    files = [a for a in args.prefixes if not re.fullmatch(f"/{TOPIC_LEVEL}", a)]
    if len(files) > 1:
        parser.error(f"one lab file, and prefixes such as /hv: got {', '.join(files)}")
    args.prefixes = [a for a in args.prefixes if a not in files]
    resolve_config(parser, args, files[0] if files else None)
    started = time.monotonic()
    try:
        if args.prefixes:
            target = Target("prefixes", args.config)
        elif args.service:
            target = Target(args.service, args.config, args.crate, chiller=args.chiller)
        else:
            target = target_from_argv(process_argv(args.pid))
            target.config = args.config or target.config
            target.crate = args.crate or target.crate
            target.chiller = args.chiller or target.chiller
        if not target.config:
            raise HealthError("no lab YAML: give --config")
        lab = load_config(target.config)
        if args.prefixes:
            seen = availability(lab.mqtt, args.prefixes, args.timeout)
            bad = [f"{p} {v or 'silent'}" for p, v in seen.items() if v != ONLINE]
            ok, line = not bad, (f"unhealthy: {', '.join(bad)}" if bad else "healthy")
        else:
            ok, line = check(lab, target, args.timeout)
    except (HealthError, ConfigError) as exc:  # unhealthy too: Docker reserves exit status 2
        print(f"trackerdcs-health: cannot check: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"trackerdcs-health: unhealthy: {exc}", file=sys.stderr)
        return 1
    print(f"{line} ({time.monotonic() - started:.2f} s)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
