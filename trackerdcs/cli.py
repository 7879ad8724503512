"""The `trackerdcs` command: the local stack and users' tools.

trackerdcs stack --config examples/lab.yml     start the local stack (what `make run` does)
trackerdcs check-config --config FILE           validate a lab YAML (a bare FILE too)
trackerdcs export|backup|restore ...            history to CSV, InfluxDB backups
trackerdcs audit [--since 1h] [--module M1] ...  the audit log (commands, automatic actions)
trackerdcs iv-scan M1 --stop 300 --step 10      an IV scan on the dcs daemon, with a progress bar
trackerdcs recipe run FILE                      a thermal-cycle recipe on the dcs daemon
trackerdcs influx-setup --config F --user telegraf:write   InfluxDB users and database
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from trackerdcs.cliargs import add_config, add_version, resolve_config
from trackerdcs.config import ConfigError, load_config
from trackerdcs.deploy import add_deploy_commands
from trackerdcs.ingest.commands import add_data_commands
from trackerdcs.ivscan.cli import add_ivscan_commands
from trackerdcs.recipe.cli import add_recipe_commands
from trackerdcs.safety.cli import add_safety_commands
from trackerdcs.safety.config import check_safety


def _cmd_stack(args: argparse.Namespace) -> int:
    from trackerdcs.stack.local import run_stack

    cfg = load_config(args.config)
    return run_stack(cfg, Path(args.config), Path(args.run_dir))


def _cmd_check_config(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    try:
        check_safety(cfg)  # the safety sections against the rest of the lab
    except ValueError as exc:
        print(f"{args.config}: invalid configuration\n  {exc}", file=sys.stderr)
        return 2
    for warning in cfg.warnings:
        print(f"{args.config}: warning: {warning}", file=sys.stderr)
    print(f"{args.config}: ok ({len(cfg.crates)} crate(s), {len(cfg.power.channels)} channel(s))")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trackerdcs", description="trackerdcs lab tools")
    add_version(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("stack", help="start the local stack on simulated hardware")
    add_config(p, default="examples/lab.yml")
    p.add_argument("--run-dir", default="run", help="where logs and generated files go")
    p.set_defaults(func=_cmd_stack)
    p = sub.add_parser("check-config", help="validate a lab YAML file")
    add_config(p)
    p.set_defaults(func=_cmd_check_config)
    add_data_commands(sub)  # export, backup, restore
    add_safety_commands(sub)  # audit
    add_deploy_commands(sub)  # influx-setup (the container stack)
    add_ivscan_commands(sub)  # iv-scan
    add_recipe_commands(sub)  # recipe run|check|start|pause|resume|abort|status
    args = parser.parse_args(argv)
    if hasattr(args, "_config_required"):  # a command of add_config's
        resolve_config(parser, args)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
