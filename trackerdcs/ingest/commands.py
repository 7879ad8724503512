"""The data subcommands of `trackerdcs`: export, backup, restore.

trackerdcs export {channel NAME | module NAME | sensor NAME | chiller | ivscan SCAN|MODULE | lab}
                  --from T [--to T] [-o F]
trackerdcs backup [DIR]          portable backup of the database (influxd backup -portable)
trackerdcs restore DIR [--new-database NAME]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from trackerdcs.cliargs import add_config
from trackerdcs.config import load_config
from trackerdcs.ingest.backup import (
    BackupError,
    backup,
    default_backup_dir,
    restore,
    wait_queryable,
)
from trackerdcs.ingest.conf import TelegrafConfError, load_telegraf_conf
from trackerdcs.ingest.export import ExportError, export, parse_time
from trackerdcs.ingest.influxdb import DATABASE, InfluxClient, InfluxError

DEFAULT_TELEGRAF_CONF = Path(__file__).resolve().parents[2] / "telegraf.conf"


def _cmd_export(args: argparse.Namespace) -> int:
    lab = load_config(args.config)
    try:
        telegraf = load_telegraf_conf(args.telegraf_conf)
        start, end = parse_time(args.start), parse_time(args.end)
        cfg = lab.influx
        client = InfluxClient(cfg.url, args.database, cfg.username, cfg.password, timeout=60)
        out = Path(args.output) if args.output else None
        rows = export(client, lab, telegraf, args.what, args.name, start, end, out, args.rp)
    except (ExportError, InfluxError, TelegrafConfError) as exc:
        print(f"trackerdcs export: {exc}", file=sys.stderr)
        return 1
    if out is not None:
        print(f"{out}: {rows} row(s)", file=sys.stderr)
    return 0


def _cmd_backup(args: argparse.Namespace) -> int:
    cfg = load_config(args.config).influx
    target = Path(args.dir) if args.dir else default_backup_dir()
    try:
        backup(cfg, target, args.database)
    except BackupError as exc:
        print(f"trackerdcs backup: {exc}", file=sys.stderr)
        return 1
    print(f"backed up database {args.database} to {target}")
    return 0


def _cmd_restore(args: argparse.Namespace) -> int:
    cfg = load_config(args.config).influx
    restored = args.new_database or args.database
    try:
        restore(cfg, Path(args.dir), args.database, args.new_database)
        wait_queryable(InfluxClient(cfg.url, restored, cfg.username, cfg.password), restored)
    except BackupError as exc:
        print(f"trackerdcs restore: {exc}", file=sys.stderr)
        return 1
    print(f"restored database {restored} from {args.dir}")
    return 0


def add_data_commands(sub: argparse._SubParsersAction) -> None:
    """Register `export`, `backup` and `restore` on the `trackerdcs` parser."""
    p = sub.add_parser("export", help="export a channel's, module's, sensor's or chiller's "
                       "history to CSV")  # fmt: skip
    p.add_argument("what", choices=("channel", "module", "sensor", "chiller", "ivscan", "lab"))
    p.add_argument(
        "name",
        nargs="?",
        help="channel, module, sensor or chiller name (none: the lab's only chiller); for ivscan "
        "a scan id or a module; lab: none (every channel, sensor and chiller)",
    )
    p.add_argument(
        "--from",
        dest="start",
        required=True,
        help="start: ISO 8601 (local time unless a zone is given), -2h, 1d, now",
    )
    p.add_argument("--to", dest="end", default="now", help="end (default: now)")
    p.add_argument("-o", "--output", help="CSV file (default: stdout)")
    p.add_argument("--rp", help="retention policy, e.g. downsampled (default: the raw data)")
    add_config(p, default="examples/lab.yml")
    p.add_argument(
        "--telegraf-conf",
        default=str(DEFAULT_TELEGRAF_CONF),
        help="the MQTT -> InfluxDB mapping (default: the repo's telegraf.conf)",
    )
    p.add_argument("--database", default=DATABASE)
    p.set_defaults(func=_cmd_export)  # fmt: skip

    p = sub.add_parser("backup", help="portable backup of the InfluxDB data")
    p.add_argument("dir", nargs="?", help="new directory (default: backups/trackerdcs-TIME)")
    p.add_argument("--config", default="examples/lab.yml", help="lab YAML file (influx section)")
    p.add_argument("--database", default=DATABASE)
    p.set_defaults(func=_cmd_backup)

    p = sub.add_parser("restore", help="restore a portable backup into InfluxDB")
    p.add_argument("dir", help="the backup directory")
    p.add_argument("--config", default="examples/lab.yml", help="lab YAML file (influx section)")
    p.add_argument("--database", default=DATABASE, help="the database in the backup")
    p.add_argument("--new-database", help="restore under this name instead")
    p.set_defaults(func=_cmd_restore)
