"""Run the benchmarks, print a table and write the results as JSON.

python -m bench.run [--only NAME ...] [--quick] [--out FILE] [--profile] [--keep-logs]

NAME is a benchmark (`command_latency`, `scale`) or one of its figures (`scale_rss_mb`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from bench import containers, ingest, power, safety, tracker
from bench.common import Figure, Options, Result
from trackerdcs.stack.portblocks import claim_block
from trackerdcs.stack.process import PORT_BLOCK_ENV

Benchmark = Callable[[Options], list[Result]]

# name -> (function, the figures it reports: what --only accepts besides the name)
BENCHMARKS: dict[str, tuple[Benchmark, tuple[Figure, ...]]] = {
    "command_latency": (power.command_latency, power.LATENCY_FIGURES),
    "scale": (power.scale, power.SCALE_FIGURES),
    "ingest": (ingest.ingest, ingest.INGEST_FIGURES),
    "interlock": (safety.interlock, safety.FIGURES),
    "containers": (containers.containers, containers.FIGURES),
    "tracker": (tracker.tracker, tracker.FIGURES),
}
DEFAULT_OUT = Path(__file__).resolve().parent / "results.json"


def selected(only: list[str] | None) -> list[str]:
    """Benchmark names to run for `--only` values (benchmark or figure names)."""
    if not only:
        return list(BENCHMARKS)
    chosen = []
    for name in only:
        match = [
            b for b, (_, figures) in BENCHMARKS.items() if name in (b, *(f.name for f in figures))
        ]
        if not match:
            known = ", ".join(
                f"{b} ({', '.join(f.name for f in figures)})"
                for b, (_, figures) in BENCHMARKS.items()
            )
            raise SystemExit(f"unknown benchmark {name!r}; known: {known}")
        chosen += [b for b in match if b not in chosen]
    return chosen


def run_one(name: str, opts: Options) -> list[Result]:
    """One benchmark; on failure, its figures without values (and the error printed)."""
    function, figures = BENCHMARKS[name]
    opts.log(f"== {name} (load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores)")
    start = time.monotonic()
    try:
        results = function(opts)
    except Exception as exc:
        opts.log(f"  FAILED: {type(exc).__name__}: {exc}")
        traceback.print_exc()
        return [f.result(None, note="error") for f in figures]
    opts.log(f"  ({time.monotonic() - start:.1f} s; load average {os.getloadavg()[0]:.2f})")
    return results


def table(results: list[Result]) -> str:
    rows = [("name", "value", "unit", "target", "result")]
    for r in results:
        verdict = {True: "pass", False: "FAIL", None: "info"}[r.passed]
        value = ("-" if r.skipped else "error") if r.value is None else f"{r.value:.3f}"
        rows.append((r.name, value, r.unit, r.target, r.note or verdict))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench.run", description=__doc__.split("\n")[0])
    p.add_argument("--only", action="append", metavar="NAME", help="run this benchmark only")
    p.add_argument("--quick", action="store_true", help="fewer iterations (smoke test)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON file ({DEFAULT_OUT})")
    p.add_argument(
        "--profile", action="store_true", help="scale: run the daemon under cProfile, print top"
    )
    p.add_argument("--keep-logs", action="store_true", help="keep the process logs and files")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = selected(args.only)
    # ports of its own, handed out in turn (a run inside a test process uses the test's block):
    # the kernel's pick gave two simulated crates of the tracker lab one port
    if not os.environ.get(PORT_BLOCK_ENV):
        try:
            os.environ[PORT_BLOCK_ENV] = claim_block()
        except (RuntimeError, OSError) as exc:  # still runs, on the kernel's picks
            print(f"bench: no port block of its own ({exc}); ports picked by the kernel")
    workdir = Path(tempfile.mkdtemp(prefix="trackerdcs-bench-"))
    opts = Options(workdir=workdir, quick=args.quick, profile=args.profile)
    results: list[Result] = []
    for name in names:
        results += run_one(name, opts)
    print()
    print(table(results))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps([r.as_json() for r in results], indent=2) + "\n")
    print(f"\nwrote {args.out}")
    failed = any(r.value is None and not r.skipped for r in results)
    if args.keep_logs or args.profile or failed:
        print(f"logs and files kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
