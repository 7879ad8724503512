"""The index of past IV scans, from the results folder: `/dcs/ivscan/results` (retained).

Each scan's entry comes from the metadata header of its CSV
(`<results_dir>/<module>/<scan id>.csv`, `trackerdcs.ivscan.results`), so the index is what is
on disk: built when the dcs daemon starts, an entry added as each scan's files are written.
A file that is not a scan's CSV (unreadable, no `scan` key, a foreign name) is left out with a
warning; it never stops the index. Newest first (by start time), at most `LIMIT` entries.

Entry: `scan`, `module`, `channel`, `operator`, `outcome`, `reason` (strings or null),
`started`, `ended` (unix s or null), `steps` (int), `recipe` (the run id or null), `csv` and
`png` (paths relative to the results folder; `png` null when the plot is missing).
"""

from __future__ import annotations

import logging
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from trackerdcs.ivscan.results import read_metadata

log = logging.getLogger(__name__)

LIMIT = 200  # entries in `/dcs/ivscan/results`


def _time(text: str | None) -> float | None:
    """An ISO 8601 time of the CSV header (`iso()`), as unix s; None when empty or bad."""
    if not text:
        return None
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return round(t.timestamp(), 3)


def _steps(text: str | None) -> int:
    try:
        value = float(text or 0)
    except ValueError:
        return 0
    return int(value) if math.isfinite(value) and value >= 0 else 0


def result_entry(csv_path: Path, results_dir: Path) -> dict[str, Any] | None:
    """The index entry of one results CSV; None (with a warning) when it is not a scan's."""
    try:
        meta = read_metadata(csv_path)
    except (OSError, UnicodeDecodeError) as exc:
        log.warning("IV scan results: cannot read %s: %s", csv_path, exc)
        return None
    if meta.get("scan") != csv_path.stem or meta.get("module") != csv_path.parent.name:
        log.warning("IV scan results: %s is not an IV scan's CSV (no matching scan, module)",
                    csv_path)  # fmt: skip
        return None
    png = csv_path.with_suffix(".png")
    return {
        "scan": meta["scan"], "module": meta["module"],
        "channel": meta.get("channel") or None, "operator": meta.get("operator") or None,
        "outcome": meta.get("outcome") or None, "reason": meta.get("reason") or None,
        "started": _time(meta.get("start_time")), "ended": _time(meta.get("end_time")),
        "steps": _steps(meta.get("steps")), "recipe": meta.get("recipe") or None,
        "csv": csv_path.relative_to(results_dir).as_posix(),
        "png": png.relative_to(results_dir).as_posix() if png.exists() else None,
    }  # fmt: skip


def newest_first(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Sorted by start time (unknown last), cut to `LIMIT`."""
    ordered = sorted(entries, key=lambda e: (e["started"] is not None, e["started"] or 0.0,
                                             e["scan"]), reverse=True)  # fmt: skip
    return ordered[:LIMIT]


def scan_index(results_dir: Path) -> list[dict[str, Any]]:
    """Every scan in `results_dir` (`<module>/<scan>.csv`), newest first, at most `LIMIT`."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        return []
    entries = [result_entry(p, results_dir) for p in sorted(results_dir.glob("*/*.csv"))]
    return newest_first([e for e in entries if e is not None])
