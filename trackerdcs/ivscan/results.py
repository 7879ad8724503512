"""An IV scan's results: a CSV file with a metadata header, and a PNG plot (|I| on a log scale
against V), per module and scan, in `<results_dir>/<module>/<scan id>.csv|.png`.

The CSV: lines starting with `# ` hold the metadata (`# key: value`: scan, module, channel,
operator, start and end time, outcome and reason, the recipe run it belongs to, the module's
temperature and the room's temperature, humidity and dew point at the start and the end, every
parameter as `parameter.<name>`); then one header row and one row per step:

    step,time,vset,vmon,imon,imon_std,readings,temperature,room_temperature,humidity,dewpoint

Volts, µA, °C, % RH; `time` in unix seconds (UTC); an empty cell is a value unknown then.
`read_results(path)` reads one back. matplotlib (Agg backend) is imported only to plot.
"""

from __future__ import annotations

import csv
import io
import math
import textwrap
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from trackerdcs.ivscan.plan import ScanPlan


class ScanRecord(Protocol):
    """What the results are written from: `trackerdcs.ivscan.procedure.IvScan` is one (this
    module does not import it: the procedure imports this one to write its results)."""

    plan: ScanPlan
    points: list[dict[str, Any]]  # one per step, keys: COLUMNS
    step: int
    outcome: str | None
    reason: str | None
    started: float  # unix s
    end_time: float | None
    environment_start: dict[str, Any]
    environment_end: dict[str, Any]


# matplotlib is not thread-safe, even through its object API: text rendering shares cached
# FreeType font objects, so two scans ending together must not draw at the same time
_PLOT_LOCK = threading.Lock()
COLUMNS = ("step", "time", "vset", "vmon", "imon", "imon_std", "readings", "temperature",
           "room_temperature", "humidity", "dewpoint")  # fmt: skip


def iso(t: float | None) -> str:
    if t is None:
        return ""
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def metadata(scan: ScanRecord) -> dict[str, Any]:
    plan = scan.plan
    meta: dict[str, Any] = {
        "scan": plan.scan_id, "module": plan.module, "channel": plan.channel,
        "operator": plan.operator, "request_id": plan.request_id or "",
        "start_time": iso(scan.started), "end_time": iso(scan.end_time),
        "outcome": scan.outcome, "reason": scan.reason, "steps": scan.step,
        "recipe": plan.recipe or "",
    }  # fmt: skip
    for when, env in (("start", scan.environment_start), ("end", scan.environment_end)):
        for key in ("temperature", "room_temperature", "humidity", "dewpoint"):
            value = env.get(key)
            meta[f"{key}_{when}"] = "" if value is None else value
    for key, value in plan.parameters.items():
        meta[f"parameter.{key}"] = "" if value is None else value
    return meta


def csv_text(scan: ScanRecord) -> str:
    out = io.StringIO()
    out.write("# trackerdcs IV scan (units: V, uA, C, % RH; time: unix s)\n")
    for key, value in metadata(scan).items():
        text = str(value).replace("\n", " ")
        out.write(f"# {key}: {text}\n")
    writer = csv.DictWriter(out, COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for point in scan.points:
        writer.writerow({k: "" if point.get(k) is None else point[k] for k in COLUMNS})
    return out.getvalue()


def _header(lines: list[str]) -> dict[str, str]:
    meta: dict[str, str] = {}
    for line in lines:
        if line.startswith("# "):
            key, sep, value = line[2:].partition(": ")
            if sep:
                meta[key] = value
    return meta


def read_metadata(path: Path) -> dict[str, str]:
    """A results CSV's metadata only (`# key: value` lines before the table)."""
    head = []
    with Path(path).open(encoding="utf-8") as f:
        for line in f:
            if not line.startswith("#"):
                break
            head.append(line.rstrip("\n"))
    return _header(head)


def read_results(path: Path) -> tuple[dict[str, str], list[dict[str, float | None]]]:
    """A results CSV: its metadata and its rows (numbers, None for empty cells)."""
    text = Path(path).read_text().splitlines()
    meta = _header(text)
    lines = [line for line in text if not line.startswith("# ")]
    rows = [
        {k: (float(v) if v != "" else None) for k, v in row.items()}
        for row in csv.DictReader(lines)
    ]
    return meta, rows


def plot(scan: ScanRecord, path: Path) -> None:
    """The PNG: |I| (µA, log scale) against the voltage readback, with the readings' spread."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    plan = scan.plan
    points = [p for p in scan.points if p.get("imon") and math.isfinite(p["imon"])]
    fig = Figure(figsize=(7, 4.5), dpi=100)
    ax = fig.subplots()
    if points:
        volts = [p["vmon"] for p in points]
        amps = [abs(p["imon"]) for p in points]
        spread = [
            min(p.get("imon_std") or 0.0, 0.999 * a) for p, a in zip(points, amps, strict=True)
        ]
        ax.errorbar(volts, amps, yerr=spread, fmt="o-", markersize=3, capsize=2,
                    label=f"{plan.module} ({plan.channel})")  # fmt: skip
        ax.set_yscale("log")
    ax.axhline(plan.compliance, color="tab:red", linestyle="--", linewidth=1,
               label=f"compliance {plan.compliance:g} uA")  # fmt: skip
    ax.set_yscale("log")
    ax.set_xlabel("bias voltage |V| (V)")
    ax.set_ylabel("leakage current |I| (uA)")
    temperature = scan.environment_start.get("temperature")
    at = f", {temperature:.1f} C" if temperature is not None else ""
    ax.set_title(f"IV scan {plan.scan_id}{at}", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    note = textwrap.wrap(f"{scan.outcome}: {scan.reason or ''}", 140)
    fig.text(0.01, 0.01, "\n".join(note[:3]), fontsize=7)
    fig.tight_layout(rect=(0, 0.02 + 0.025 * min(len(note), 3), 1, 1))
    fig.savefig(path, format="png")


def write_results(scan: ScanRecord, results_dir: Path) -> list[Path]:
    """Write `<results_dir>/<module>/<scan id>.csv` and `.png`; their paths."""
    folder = Path(results_dir) / scan.plan.module
    folder.mkdir(parents=True, exist_ok=True)
    csv_path = folder / f"{scan.plan.scan_id}.csv"
    csv_path.write_text(csv_text(scan))
    png_path = folder / f"{scan.plan.scan_id}.png"
    with _PLOT_LOCK:
        plot(scan, png_path)
    return [csv_path, png_path]
