# The trackerdcs images (docker-compose.yml builds both; with podman: podman build --format docker,
# which keeps the HEALTHCHECKs):
#
#   docker build -t localhost/trackerdcs .                                   (the default target)
#   docker build -t localhost/trackerdcs-node-red --target node-red .
#
# trackerdcs: every daemon and simulator as a console script (pyproject.toml), run as the
#   unprivileged user `trackerdcs`; the lab YAML is mounted at /etc/trackerdcs/lab.yml; state
#   (the alarms' SQLite file) lives in /var/lib/trackerdcs. `trackerdcs-health` is the healthcheck
#   of every daemon: it finds out which daemon PID 1 is and checks that its MQTT prefixes are
#   online (docs/deployment.md).
# node-red: the control UI, Node-RED and FlowFuse Dashboard as pinned by node-red/package-lock.json,
#   with the repo's settings.js and flows.json, started by `python -m trackerdcs.deploy node-red`
#   (the flows' settings from the lab YAML, as the local stack does).
#
# Not in the image: CAEN's proprietary HV Wrapper library (the `caenwrapper` backend). Use the
# EPICS backend, or build an image FROM this one that adds the library.

ARG PYTHON_IMAGE=docker.io/library/python:3.11-slim-bookworm
ARG NODE_IMAGE=docker.io/library/node:22-bookworm-slim

# -- Node-RED's modules, from the lock file ---------------------------------------------------------
FROM ${NODE_IMAGE} AS node-red-modules
WORKDIR /opt/node-red
COPY node-red/package.json node-red/package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund && npm cache clean --force

# -- trackerdcs: Python, the runtime requirements, the package ---------------------------------------
FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /opt/trackerdcs
# requirements.txt pins everything; only what comes before its "# test and lint" line is runtime.
COPY requirements.txt ./
RUN sed '/^# test and lint/,$d' requirements.txt > requirements-runtime.txt \
    && pip install -r requirements-runtime.txt
COPY pyproject.toml README.md ./
COPY trackerdcs ./trackerdcs
RUN pip install --no-deps . && rm -rf build trackerdcs.egg-info \
    && trackerdcs-health --help >/dev/null
# The unprivileged user every container runs as; dialout: serial lines (devices: in compose).
RUN useradd --system --uid 10001 --user-group --groups dialout --no-create-home \
        --home-dir /var/lib/trackerdcs trackerdcs \
    && mkdir -p /etc/trackerdcs /var/lib/trackerdcs /data \
    && chown trackerdcs:trackerdcs /var/lib/trackerdcs /data
# State is in named volumes mounted there (docker-compose.yml): /var/lib/trackerdcs (alarms),
# /data (Node-RED); a new volume takes this ownership.
WORKDIR /var/lib/trackerdcs

# -- node-red: the UI, with Node.js copied from the official image (same Debian release) -----------
FROM base AS node-red
RUN apt-get update && apt-get install -y --no-install-recommends libstdc++6 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=node-red-modules /usr/local/bin/node /usr/local/bin/node
COPY --from=node-red-modules /opt/node-red/node_modules /opt/node-red/node_modules
COPY node-red/settings.js node-red/flows.json telegraf.conf /opt/node-red/
COPY node-red/login /opt/node-red/login
USER trackerdcs
EXPOSE 1880
# the dashboard's login is on (Node-RED listens on 0.0.0.0): the healthcheck shows the token the
# login writes at start (node-red/login/health.js)
ENV TRACKERDCS_UI_HEALTH_TOKEN_FILE=/tmp/trackerdcs-healthcheck-token
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["node", "/opt/node-red/login/health.js"]
ENTRYPOINT ["python", "-m", "trackerdcs.deploy", "node-red", "--config", "/etc/trackerdcs/lab.yml", "--home", "/opt/node-red", "--user-dir", "/data"]

# -- trackerdcs (the default target) -------------------------------------------------------------------
FROM base AS trackerdcs
USER trackerdcs
# Every daemon: its prefixes online on MQTT; a simulator: its ports open (trackerdcs/health.py).
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 CMD ["trackerdcs-health"]
CMD ["trackerdcs", "--help"]
