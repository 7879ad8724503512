"""InfluxDB 1.x for the local stack and the tests: a generated config, loopback only, and the
database with its retention policies and the continuous query of the downsampled copy.

`influxd run -config FILE` binds both its HTTP API and its RPC service (used by backup and
restore) to the given loopback ports; data, WAL and metadata live under the work directory.
"""

from __future__ import annotations

import re
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from trackerdcs.config import InfluxConfig, LabConfig
from trackerdcs.ingest.bridge import READY
from trackerdcs.ingest.influxdb import (
    DATABASE,
    InfluxClient,
    InfluxError,
    quote_ident,
    quote_string,
)
from trackerdcs.stack.process import ManagedProcess
from trackerdcs.stack.ready import logged

RAW_RP = "raw"
DOWNSAMPLED_RP = "downsampled"
CQ_NAME = "downsample"


def influxd_config(datadir: Path, host: str, port: int, rpc_port: int) -> str:
    """An influxd 1.x config: loopback only, no usage reporting, no self-monitoring database."""
    return f"""\
reporting-disabled = true
bind-address = "{host}:{rpc_port}"

[meta]
  dir = "{datadir}/meta"
  logging-enabled = false

[data]
  dir = "{datadir}/data"
  wal-dir = "{datadir}/wal"
  query-log-enabled = false

[monitor]
  store-enabled = false

[subscriber]
  enabled = false

[http]
  enabled = true
  bind-address = "{host}:{port}"
  log-enabled = false
  pprof-enabled = false
  unix-socket-enabled = false

[continuous_queries]
  enabled = true
  log-enabled = false

[logging]
  level = "warn"
"""


def influxd_process(
    workdir: Path,
    host: str,
    port: int,
    rpc_port: int,
    *,
    datadir: Path | None = None,
    log_path: Path | None = None,
    ready: Callable[[ManagedProcess], bool] | None = None,
) -> ManagedProcess:
    """influxd with its config and data under `workdir` (data: `influxdb-PORT` unless `datadir`);
    ready when `/ping` answers (unless another `ready` is given)."""
    binary = shutil.which("influxd") or "/usr/bin/influxd"
    datadir = datadir or Path(workdir) / f"influxdb-{port}"
    datadir.mkdir(parents=True, exist_ok=True)
    conf = Path(workdir) / f"influxdb-{port}.conf"
    conf.write_text(influxd_config(datadir, host, port, rpc_port))
    client = InfluxClient(f"http://{host}:{port}", timeout=1.0)
    return ManagedProcess(
        "influxdb",
        [binary, "run", "-config", str(conf)],
        log_path=log_path or Path(workdir) / f"influxdb-{port}.log",
        ready=ready or (lambda _: client.ping()),
        ready_timeout=30.0,
    )


def _ident(name: str) -> str:
    """An identifier as InfluxDB itself prints it: quoted only when it must be."""
    return name if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) else quote_ident(name)


def downsample_query(every: str, database: str = DATABASE) -> str:
    """The continuous query that keeps the mean of every numeric field per `every`.

    Written the way `SHOW CONTINUOUS QUERIES` prints it, so that an unchanged query is kept.
    """
    db = _ident(database)
    return (
        f"CREATE CONTINUOUS QUERY {_ident(CQ_NAME)} ON {db} BEGIN "
        f"SELECT mean(*) INTO {db}.{_ident(DOWNSAMPLED_RP)}.:MEASUREMENT "
        f"FROM {db}.{_ident(RAW_RP)}./.*/ GROUP BY time({every}), * END"
    )


def setup_database(client: InfluxClient, cfg: InfluxConfig, database: str = DATABASE) -> None:
    """Create (or bring up to date) the database, its two retention policies and the CQ.

    Idempotent: run at every start. `raw` is the default policy (where telegraf.conf writes);
    `downsampled` keeps the continuous query's per-interval means for longer.
    """
    db = quote_ident(database)
    client.execute(f"CREATE DATABASE {db}", database="")
    existing = {
        row["name"]: row
        for s in client.series(f"SHOW RETENTION POLICIES ON {db}", database="")
        for row in s.rows()
    }
    policies = (
        (RAW_RP, cfg.raw_retention, " DEFAULT"),
        (DOWNSAMPLED_RP, cfg.downsampled_retention, ""),
    )
    for name, duration, default in policies:
        verb = "ALTER" if name in existing else "CREATE"
        client.execute(
            f"{verb} RETENTION POLICY {quote_ident(name)} ON {db} "
            f"DURATION {duration} REPLICATION 1{default}",
            database="",
        )
    wanted = downsample_query(cfg.downsample_interval, database)
    current = {
        row["name"]: row["query"]
        for s in client.series("SHOW CONTINUOUS QUERIES", database="")
        if s.name == database
        for row in s.rows()
    }
    if current.get(CQ_NAME) != wanted:
        if CQ_NAME in current:
            client.execute(f"DROP CONTINUOUS QUERY {quote_ident(CQ_NAME)} ON {db}", database="")
        client.execute(wanted, database="")


def ensure_user(
    client: InfluxClient, name: str, password: str, privilege: str, database: str = DATABASE
) -> None:
    """User `name` with `password` and only `privilege` (READ, WRITE or ALL) on `database`:
    created, or its password set again (idempotent; `client` logs in as an admin, or InfluxDB
    has no authentication)."""
    existing = {row["user"] for s in client.series("SHOW USERS", database="") for row in s.rows()}
    user, secret = quote_ident(name), quote_string(password)
    if name in existing:
        client.execute(f"SET PASSWORD FOR {user} = {secret}", database="")
    else:
        client.execute(f"CREATE USER {user} WITH PASSWORD {secret}", database="")
    client.execute(f"GRANT {privilege} ON {quote_ident(database)} TO {user}", database="")


# -- the data path of the local stack ------------------------------------------------------------
REPO = Path(__file__).resolve().parents[2]
TELEGRAF_CONF = REPO / "telegraf.conf"


@dataclass
class DataProcess:
    """A process of the data path, described for the stack's table (see `stack.local`)."""

    name: str
    make: Callable[[], ManagedProcess]
    endpoint: str
    what: str
    details: list[str] = field(default_factory=list)


def data_path_env(cfg: LabConfig) -> dict[str, str]:
    """The environment telegraf.conf reads: where the broker and InfluxDB are, credentials."""
    return {
        "TRACKERDCS_MQTT_SERVER": f"tcp://{cfg.mqtt.host}:{cfg.mqtt.port}",
        "TRACKERDCS_INFLUX_URL": cfg.influx.url,
        "TRACKERDCS_MQTT_USERNAME": cfg.mqtt.username or "",
        "TRACKERDCS_MQTT_PASSWORD": cfg.mqtt.password or "",
        "TRACKERDCS_INFLUX_USERNAME": cfg.influx.username or "",
        "TRACKERDCS_INFLUX_PASSWORD": cfg.influx.password or "",
    }


def data_path_ports(cfg: LabConfig) -> list[tuple[str, int, str]]:
    """(host, port, the lab YAML key that sets it) of what the data path listens on."""
    influx = cfg.influx
    return [
        (influx.host, influx.port, "influx.port"),
        (influx.host, influx.rpc_port, "influx.rpc_port"),
    ]


def _influx_ready(cfg: InfluxConfig) -> Callable[[ManagedProcess], bool]:
    """Ready when `/ping` answers and the database, its policies and CQ are set up."""
    client = InfluxClient(cfg.url, username=cfg.username, password=cfg.password, timeout=5.0)

    def ready(_: ManagedProcess) -> bool:
        if not client.ping():
            return False
        try:
            setup_database(client, cfg)
        except InfluxError as exc:
            raise RuntimeError(
                f"InfluxDB at {cfg.url}: setting up the database failed: {exc}"
            ) from None
        return True

    return ready


def data_path_processes(
    cfg: LabConfig, run_dir: Path, telegraf_conf: Path = TELEGRAF_CONF
) -> list[DataProcess]:
    """InfluxDB, then the real Telegraf when `telegraf` is on PATH, else `trackerdcs-ingest`,
    both on the same telegraf.conf."""
    influx = cfg.influx
    logs = run_dir / "logs"
    datadir = run_dir / "influxdb"

    def make_influxd() -> ManagedProcess:
        return influxd_process(
            run_dir, influx.host, influx.port, influx.rpc_port, datadir=datadir,
            log_path=logs / "influxdb.log", ready=_influx_ready(influx),
        )  # fmt: skip

    kept = f"raw points kept {influx.raw_retention}, {influx.downsample_interval} means kept "
    kept += influx.downsampled_retention
    processes = [
        DataProcess(
            "influxdb",
            make_influxd,
            influx.url,
            "InfluxDB 1.x (v1 API), loopback only",
            details=[
                f"database {DATABASE}: {kept}; data in {datadir}",
                f"backup/restore RPC on {influx.host}:{influx.rpc_port}",
                f"query: influx -host {influx.host} -port {influx.port} -database {DATABASE}",
            ],
        )
    ]
    env = data_path_env(cfg)
    telegraf = shutil.which("telegraf")
    if telegraf:
        argv = [telegraf, "--config", str(telegraf_conf)]
        name, what, ready = "telegraf", "Telegraf: MQTT -> InfluxDB", "Starting Telegraf"
    else:
        argv = [sys.executable, "-m", "trackerdcs.ingest.bridge", "--config", str(telegraf_conf)]
        name, what, ready = "ingest", "trackerdcs-ingest (no telegraf on PATH)", READY
    log = logs / f"{name}.log"
    processes.append(
        DataProcess(
            name,
            lambda: ManagedProcess(name, argv, log_path=log, env=env, ready=logged(ready)),
            f"MQTT -> {DATABASE}",
            what,
            details=[f"runs {telegraf_conf}"]
            + (["counters on /ingest/status"] if not telegraf else []),
        )
    )
    return processes
