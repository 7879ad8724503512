#!/usr/bin/env bash
# Install whatever is missing for trackerdcs on Debian/Ubuntu: apt packages, then a virtualenv
# with the pinned requirements. Idempotent: a second run with everything present takes ~1 s.
#   scripts/setup.sh          runtime + test dependencies
set -euo pipefail
cd "$(dirname "$0")/.."

# mosquitto: the broker; influxdb: the time-series store (v1 API); chromium: the UI tests' browser;
# docker-compose (v1): the compose files, validated without an engine and run through podman's
# socket; podman, runc, the dnsname plugin (containers find each other by service name) and
# debootstrap (base images without a registry): the container stack of tests/test_containers.py.
APT_PACKAGES=(mosquitto mosquitto-clients socat python3-venv influxdb influxdb-client chromium
              docker-compose podman runc golang-github-containernetworking-plugin-dnsname
              debootstrap)
VENV=${TRACKERDCS_VENV:-.venv}
PYTHON=${PYTHON:-python3}

say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

sudo_cmd() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo -n "$@"; fi
}

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
# Node.js for Node-RED: any node >= 18 on PATH will do (Debian's packages otherwise).
command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)
if [ ${#missing[@]} -gt 0 ]; then
    say "installing apt packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    sudo_cmd apt-get update -qq
    sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian starts system-wide mosquitto and influxdb services (on all interfaces) after installing
# them; the local stack runs its own, on 127.0.0.1, so stop the packaged ones where systemd runs.
for service in mosquitto influxdb; do
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$service" 2>/dev/null; then
        say "stopping the packaged $service service (the stack runs its own)"
        sudo_cmd systemctl disable --now "$service" >/dev/null 2>&1 || true
    fi
done

if [ ! -x "$VENV/bin/python" ]; then
    say "creating virtualenv $VENV"
    "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.requirements.sha256"
want=$(cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    say "installing Python requirements into $VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check -r requirements.txt
    "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps -e .
    echo "$want" > "$stamp"
fi
# Node-RED and its dashboard, pinned by node-red/package.json (and its lock file, when present).
if [ -f node-red/package.json ]; then
    nstamp=node-red/node_modules/.package.sha256
    nwant=$(cat node-red/package.json node-red/package-lock.json 2>/dev/null | sha256sum | cut -d' ' -f1)
    if [ ! -f "$nstamp" ] || [ "$(cat "$nstamp")" != "$nwant" ]; then
        say "installing Node-RED packages (npm)"
        (cd node-red && npm install --no-audit --no-fund --loglevel=error >/dev/null)
        echo "$nwant" > "$nstamp"
    fi
fi
say "ready"
