#!/usr/bin/env python3
r"""The compose stack as one rootless podman pod: a Kubernetes Pod YAML for `podman play kube`.

The compose files stay the one source of truth: this script asks compose itself to merge them
(`docker-compose config`, or `docker compose config`: both work without an engine), then writes
the same services as the containers of one pod.

    deploy/podman-kube.py                                  production (docker-compose.yml)
    deploy/podman-kube.py -f docker-compose.yml -f docker-compose.dev.yml \
        -f docker-compose.dummy.yml                        the simulated lab
    podman build -t localhost/trackerdcs --target trackerdcs .
    podman build -t localhost/trackerdcs-node-red --target node-red .
    podman play kube deploy/trackerdcs-pod.yml                   start; --down to stop

What changes in a pod: the containers share one network namespace, so every service name
resolves to 127.0.0.1 (hostAliases) and the lab YAMLs work unchanged; network_mode is moot;
`depends_on` has no equivalent (every trackerdcs service retries until what it needs is up);
the restart policy is the pod's (OnFailure: a daemon that dies is restarted, the one-shot
influxdb-setup is not); named volumes become podman volumes `<pod>-<name>`; tmpfs mounts are
in-memory emptyDirs; healthchecks become liveness probes (podman runs them as healthchecks).
`devices`/`group_add` (deploy/docker-compose.serial.yml) are not translated: the script says so.

The output holds the values of .env (the secrets): it is written with mode 0600 and ignored by
git (deploy/.gitignore). Standard library and PyYAML only.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s|us|ns)")
_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}


def seconds(value: str | int | float) -> int:
    """A compose duration (`1m30s`, `10s`) in whole seconds (at least 1)."""
    if isinstance(value, int | float):
        return max(1, int(value))
    parts = _DURATION.findall(value)
    if not parts or "".join(n + u for n, u in parts) != value:
        raise ValueError(f"not a duration: {value!r}")
    return max(1, round(sum(float(n) * _UNITS[u] for n, u in parts)))


def k8s_name(text: str) -> str:
    """A DNS-1123 label from any text."""
    name = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return name[:63] or "x"


def _unescape(value: Any) -> str:
    """Compose's `config` output writes a literal `$` as `$$`."""
    return str(value).replace("$$", "$")


def _argv(value: Any) -> list[str]:
    if value is None:
        return []
    return [_unescape(v) for v in value] if isinstance(value, list) else shlex.split(value)


def _ports(service: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for port in service.get("ports", []):
        if isinstance(port, dict):  # compose v2: long syntax
            host_ip, published = port.get("host_ip", ""), port.get("published")
            target, protocol = port["target"], port.get("protocol", "tcp")
        else:  # compose v1: [HOST_IP:]PUBLISHED:TARGET[/PROTOCOL]
            spec, _, protocol = str(port).partition("/")
            parts = spec.split(":")
            target, published = parts[-1], parts[-2] if len(parts) > 1 else ""
            host_ip = ":".join(parts[:-2])
        entry: dict[str, Any] = {
            "containerPort": int(target),
            "protocol": (protocol or "tcp").upper(),
        }
        if published:
            entry["hostPort"] = int(published)
        if host_ip:
            entry["hostIP"] = host_ip
        out.append(entry)
    return out


def _mounts(service: dict[str, Any]) -> list[tuple[str, str, str, bool]]:
    """(kind bind|volume, source, target, read only) of a service's volumes."""
    out = []
    for vol in service.get("volumes", []):
        if isinstance(vol, dict):  # compose v2: long syntax
            kind = "bind" if vol.get("type") == "bind" else "volume"
            out.append((kind, vol["source"], vol["target"], bool(vol.get("read_only"))))
            continue
        source, target, *mode = str(vol).split(":")
        kind = "bind" if source.startswith(("/", ".")) else "volume"
        out.append((kind, source, target, "ro" in (mode[0].split(",") if mode else [])))
    return out


def _probe(health: dict[str, Any] | None) -> dict[str, Any] | None:
    if not health or health.get("disable") or not health.get("test"):
        return None
    test = health["test"]
    test = test if isinstance(test, list) else ["CMD-SHELL", test]
    if test[0] == "NONE":
        return None
    command = ["/bin/sh", "-c", _unescape(test[1])] if test[0] == "CMD-SHELL" else _argv(test[1:])
    probe: dict[str, Any] = {"exec": {"command": command}}
    for key, name in (("interval", "periodSeconds"), ("timeout", "timeoutSeconds"),
                      ("start_period", "initialDelaySeconds")):  # fmt: skip
        if key in health:
            probe[name] = seconds(health[key])
    if "retries" in health:
        probe["failureThreshold"] = int(health["retries"])
    return probe


def kube_pod(config: dict[str, Any], pod: str = "trackerdcs") -> tuple[dict[str, Any], list[str]]:
    """(the Pod, warnings) for a merged compose configuration."""
    services: dict[str, dict[str, Any]] = config["services"]
    warnings: list[str] = []
    volumes: dict[str, dict[str, Any]] = {}  # pod volume name -> its definition
    containers = []
    grace = 10
    for name in sorted(services):
        service = services[name]
        if "image" not in service:
            raise ValueError(f"service {name}: no image (build it and name it with image:)")
        container: dict[str, Any] = {"name": k8s_name(name), "image": service["image"]}
        if service.get("entrypoint") is not None:
            container["command"] = _argv(service["entrypoint"])
        if service.get("command") is not None:
            container["args"] = _argv(service["command"])
        env = service.get("environment") or {}
        if isinstance(env, list):
            env = dict(item.split("=", 1) for item in env)
        if env:
            container["env"] = [{"name": k, "value": _unescape(v)} for k, v in sorted(env.items())]
        if ports := _ports(service):
            container["ports"] = ports
        mounts = []
        for kind, source, target, read_only in _mounts(service):
            if kind == "bind":
                vname = k8s_name(f"host-{Path(source).name}-{len(volumes)}")
                for existing, spec in volumes.items():
                    if spec.get("hostPath", {}).get("path") == source:
                        vname = existing
                kind_of = "Directory" if Path(source).is_dir() else "File"
                volumes.setdefault(vname, {"hostPath": {"path": source, "type": kind_of}})
            else:
                vname = k8s_name(source)
                claim = {"claimName": k8s_name(f"{pod}-{source}")}
                volumes.setdefault(vname, {"persistentVolumeClaim": claim})
            mounts.append(
                {"name": vname, "mountPath": target, **({"readOnly": True} if read_only else {})}
            )
        for i, path in enumerate(service.get("tmpfs") or []):
            vname = k8s_name(f"{name}-tmpfs-{i}")
            volumes[vname] = {"emptyDir": {"medium": "Memory"}}
            mounts.append({"name": vname, "mountPath": str(path).split(":")[0]})
        if mounts:
            container["volumeMounts"] = mounts
        if probe := _probe(service.get("healthcheck")):
            container["livenessProbe"] = probe
        if service.get("user") is not None:
            user = str(service["user"]).split(":")[0]
            if user.isdigit():
                container["securityContext"] = {"runAsUser": int(user)}
        if service.get("stop_grace_period"):
            grace = max(grace, seconds(service["stop_grace_period"]))
        for key in ("devices", "group_add", "cap_add", "privileged"):
            if service.get(key):
                warnings.append(f"{name}: {key} is not translated; add it to the pod by hand")
        containers.append(container)
    pod_spec = {
        "restartPolicy": "OnFailure",
        "terminationGracePeriodSeconds": grace,
        "hostAliases": [{"ip": "127.0.0.1", "hostnames": sorted(services)}],
        "containers": containers,
        "volumes": [{"name": n, **spec} for n, spec in sorted(volumes.items())],
    }
    document = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": pod, "labels": {"app": pod}},
        "spec": pod_spec,
    }
    return document, warnings


def compose_config(files: list[str], compose: str | None) -> dict[str, Any]:
    """The merged configuration, as compose itself computes it (with .env interpolated)."""
    if compose:
        cmd = shlex.split(compose)
    elif shutil.which("docker-compose"):
        cmd = ["docker-compose"]
    elif shutil.which("docker"):
        cmd = ["docker", "compose"]
    else:
        raise SystemExit(
            "podman-kube: needs docker-compose (v1, no engine needed) or docker compose"
        )
    argv = [*cmd, *(a for f in files for a in ("-f", f)), "config"]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"podman-kube: {' '.join(argv)} failed:\n{done.stderr.strip()}")
    return yaml.safe_load(done.stdout)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="the compose stack as a podman pod (kube YAML)")
    p.add_argument("-f", "--file", action="append", dest="files", help="compose files, in order")
    p.add_argument("-o", "--output", type=Path, default=ROOT / "deploy" / "trackerdcs-pod.yml")
    p.add_argument("--pod", default="trackerdcs", help="the pod's name")
    p.add_argument(
        "--compose", help="the compose command (default: docker-compose, docker compose)"
    )
    p.add_argument("--from-config", type=Path, help="a merged `compose config` output instead")
    args = p.parse_args(argv)
    files = args.files or ["docker-compose.yml"]
    if args.from_config:
        config = yaml.safe_load(args.from_config.read_text())
    else:
        config = compose_config(files, args.compose)
    document, warnings = kube_pod(config, args.pod)
    header = (
        f"# Generated by deploy/podman-kube.py from {' '.join(files)}: do not edit, regenerate.\n"
        "# Holds the secrets of .env: keep it private (mode 0600), never commit it.\n"
        f"#   podman play kube {args.output.name}    (--down to stop)\n"
    )
    text = header + yaml.safe_dump(document, sort_keys=False, width=100)
    fd = os.open(args.output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(args.output, 0o600)
    for line in warnings:
        print(f"podman-kube: warning: {line}", file=sys.stderr)
    names = ", ".join(c["name"] for c in document["spec"]["containers"])
    print(f"podman-kube: wrote {args.output}: pod {args.pod} with {names}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
