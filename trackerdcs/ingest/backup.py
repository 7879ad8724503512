"""Backup and restore of the InfluxDB data: `influxd backup -portable`, `influxd restore -portable`.

Both talk to influxd's RPC service (`influx.host`:`influx.rpc_port` of the lab YAML, 8088 by
default), so they run on the InfluxDB machine (the local stack binds it to 127.0.0.1). A portable
backup holds the database's metadata (retention policies, continuous queries) and its shards; it
can be restored into InfluxDB 1.5+ OSS or Enterprise. Restore refuses a database that exists:
restore into a fresh InfluxDB, or under another name (`new_database`) and copy from there.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

from trackerdcs.config import InfluxConfig
from trackerdcs.ingest.influxdb import DATABASE, InfluxClient, InfluxError, quote_ident


class BackupError(Exception):
    """influxd backup or restore failed (its own message included)."""


def _influxd() -> str:
    binary = shutil.which("influxd")
    if binary is None:
        raise BackupError("influxd is not on PATH (scripts/setup.sh installs InfluxDB)")
    return binary


def _run(argv: list[str], what: str, timeout: float) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BackupError(f"{what} did not finish within {timeout:g} s") from None
    output = (proc.stdout + proc.stderr).strip()
    if proc.returncode != 0:
        raise BackupError(f"{what} failed (exit {proc.returncode}): {output[-2000:]}")
    return output


def default_backup_dir(root: Path = Path("backups")) -> Path:
    return root / f"{DATABASE}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}"


def backup(cfg: InfluxConfig, target: Path, database: str = DATABASE, timeout=600.0) -> Path:
    """A portable backup of `database` into the new (or empty) directory `target`."""
    if target.exists() and any(target.iterdir()):
        raise BackupError(f"{target}: not empty; give a new directory")
    target.mkdir(parents=True, exist_ok=True)
    host = f"{cfg.host}:{cfg.rpc_port}"
    argv = [_influxd(), "backup", "-portable", "-host", host, "-db", database, str(target)]
    _run(argv, f"influxd backup from {host}", timeout)
    if not any(target.glob("*.manifest")):
        raise BackupError(f"{target}: influxd backup wrote no manifest")
    return target


def restore(
    cfg: InfluxConfig,
    source: Path,
    database: str = DATABASE,
    new_database: str | None = None,
    timeout: float = 600.0,
) -> str:
    """Restore `database` from the portable backup in `source` (as `new_database` if given)."""
    if not source.is_dir() or not any(source.glob("*.manifest")):
        raise BackupError(f"{source}: not a portable backup (no *.manifest file)")
    host = f"{cfg.host}:{cfg.rpc_port}"
    argv = [_influxd(), "restore", "-portable", "-host", host, "-db", database]
    if new_database:
        argv += ["-newdb", new_database]
    argv.append(str(source))
    return _run(argv, f"influxd restore to {host}", timeout)


_TRANSIENT = ("shard is disabled", "engine is closed")


def wait_queryable(client: InfluxClient, database: str, timeout: float = 15.0) -> None:
    """Return once every shard of `database` answers queries, three rounds in a row.

    InfluxDB 1.6 opens the shards of a live restore shortly after `influxd restore` returned: a
    query meanwhile fails with "shard is disabled" or "engine is closed". Each round reads one
    point from every shard (its retention policy and time range), so none is missed.
    """
    deadline = time.monotonic() + timeout
    good = 0
    while good < 3:
        try:
            shards = [
                row
                for series in client.series("SHOW SHARDS", database="")
                if series.name == database
                for row in series.rows()
            ]
            for shard in shards:
                client.series(
                    f"SELECT * FROM {quote_ident(shard['retention_policy'])}./.*/ "
                    f"WHERE time >= '{shard['start_time']}' AND time < '{shard['end_time']}' "
                    "LIMIT 1",
                    database=database,
                )
            good += 1
        except InfluxError as exc:
            good = 0
            if not any(t in str(exc) for t in _TRANSIENT) or time.monotonic() > deadline:
                raise BackupError(f"restored database {database} does not answer: {exc}") from None
        time.sleep(0.1)
