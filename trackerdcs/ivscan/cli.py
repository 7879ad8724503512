"""`trackerdcs iv-scan MODULE ...`: start an IV scan on the dcs daemon and follow it with a
progress bar (Ctrl-C stops the scan: the channel is ramped down).

trackerdcs iv-scan M1 --stop 300 --step 10 [--start 0] [--settle 2] [--readings 5]
                   [--compliance 10] [--end ramp_down|previous] [--config lab.yml]
trackerdcs iv-scan all --stop 200 --step 20          every module side by side
trackerdcs iv-scan M1 --cancel                        stop a running scan

Exit status: 0 completed, 3 ended early (compliance, breakdown, interlock, stopped), 1 refused
or failed, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, TextIO

PARAMS = ("start", "stop", "step", "settle", "readings", "interval", "compliance", "end",
          "breakdown_slope", "channel", "operator")  # fmt: skip


class Progress:
    """One line per update: a bar per module (redrawn in place on a terminal)."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.scans: dict[str, dict[str, Any]] = {}
        self.tty = out.isatty()

    def __call__(self, module: str, scan: dict[str, Any]) -> None:
        self.scans[module] = scan
        line = "  ".join(self.bar(m, s) for m, s in sorted(self.scans.items()))
        self.out.write(f"\r{line}\033[K" if self.tty else f"{line}\n")
        self.out.flush()

    @staticmethod
    def bar(module: str, scan: dict[str, Any], width: int = 20) -> str:
        steps, step = scan.get("steps") or 0, scan.get("step") or 0
        filled = int(width * step / steps) if steps else 0
        reading = ""
        if scan.get("vmon") is not None and scan.get("imon") is not None:
            reading = f" {scan['vmon']:.0f} V {scan['imon']:.4g} uA"
        state = "" if scan.get("state") == "RUNNING" else f" {scan.get('state')}"
        return f"{module} [{'#' * filled}{'.' * (width - filled)}] {step}/{steps}{reading}{state}"

    def done(self) -> None:
        if self.tty and self.scans:
            self.out.write("\n")


def _cmd_iv_scan(args: argparse.Namespace) -> int:
    from trackerdcs.client import DcsError, Lab  # paho only when the command runs

    params = {k: getattr(args, k) for k in PARAMS if getattr(args, k) is not None}
    if not args.cancel and ("stop" not in params or "step" not in params):
        print("trackerdcs iv-scan: --stop and --step are required", file=sys.stderr)
        return 2
    try:
        with Lab(args.config, name=args.name, timeout=args.timeout) as lab:
            if args.cancel:
                answer = lab.stop_iv_scan(args.module)
                print(f"stopping the IV scan of {', '.join(answer.get('stopped') or [])}")
                return 0
            answer = lab.iv_scan(args.module, wait=False, **params)
            scans: dict[str, str] = answer.get("scans") or {}
            for module, scan in scans.items():
                print(f"{module}: IV scan {scan} started", file=sys.stderr)
            if args.no_wait:
                return 0
            progress = Progress(sys.stderr)
            try:
                ended = lab.wait_iv_scans(scans, progress)
            except KeyboardInterrupt:
                progress.done()
                print("stopping (the channel is ramped down) ...", file=sys.stderr)
                lab.stop_iv_scan(args.module)
                ended = lab.wait_iv_scans(scans, progress)
            progress.done()
    except DcsError as exc:
        print(f"trackerdcs iv-scan: {exc}", file=sys.stderr)
        return 1
    for module, scan in ended.items():
        print(f"{module}: {scan['outcome']}: {scan['reason']}")
        for path in scan.get("files") or []:
            print(f"  {path}")
    outcomes = {scan["outcome"] for scan in ended.values()}
    return 1 if "error" in outcomes else 0 if outcomes <= {"completed"} else 3


def add_ivscan_commands(sub: argparse._SubParsersAction) -> None:
    """Register `iv-scan` on the `trackerdcs` parser."""
    p = sub.add_parser("iv-scan", help="run an IV scan of a module (or all) on the dcs daemon")
    p.add_argument("module", help="module name, or all")
    p.add_argument("--start", type=float, help="first voltage, V (default 0)")
    p.add_argument("--stop", type=float, help="last voltage, V")
    p.add_argument("--step", type=float, help="voltage step, V")
    p.add_argument("--settle", type=float, help="s at each step before reading")
    p.add_argument("--readings", type=int, help="imon readings averaged per step")
    p.add_argument("--interval", type=float, help="s between two readings")
    p.add_argument("--compliance", type=float, help="uA at which the scan stops")
    p.add_argument("--end", choices=("ramp_down", "previous"), help="after a completed scan")
    p.add_argument("--breakdown-slope", type=float, help="breakdown criterion: dlnI/dlnV above")
    p.add_argument("--channel", help="the HV channel, for a module with several")
    p.add_argument("--operator", help="who runs it (default: --name)")
    p.add_argument("--cancel", action="store_true", help="stop the running scan instead")
    p.add_argument("--no-wait", action="store_true", help="start it and return")
    p.add_argument(
        "--name", default=os.environ.get("USER") or "operator", help="sender in the audit log"
    )
    p.add_argument("--timeout", type=float, default=10.0, help="s for the daemon's answer")
    p.add_argument("--config", default="examples/lab.yml", help="lab YAML file")
    p.set_defaults(func=_cmd_iv_scan)
