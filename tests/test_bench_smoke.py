"""The benchmark harness runs end to end (quick mode) and writes its JSON. No timing asserts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.common import percentile
from bench.run import BENCHMARKS, selected
from trackerdcs.stack.process import PORT_BLOCK_ENV

ROOT = Path(__file__).resolve().parent.parent
REQUIRED = {
    "command_latency_p50_ms",
    "command_latency_p99_ms",
    "broker_roundtrip_p50_ms",
    "broker_roundtrip_p99_ms",
    "scale_first_status_s",
    "scale_cpu_percent",
    "scale_rss_mb",
    "scale_crate_cpu_percent",
}


def test_percentile_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile([3.0], 99) == 3.0


def test_only_accepts_benchmark_and_figure_names():
    assert selected(None) == list(BENCHMARKS)
    assert selected(["scale_rss_mb"]) == ["scale"]
    assert selected(["command_latency", "command_latency_p99_ms"]) == ["command_latency"]
    with pytest.raises(SystemExit):
        selected(["no_such_figure"])


@pytest.mark.timeout(240)
def test_quick_run_writes_every_figure(tmp_path):
    out = tmp_path / "results.json"
    # as `make bench` starts: no port block inherited, the run claims one of its own
    env = {k: v for k, v in os.environ.items() if k != PORT_BLOCK_ENV}
    proc = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=230,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    entries = json.loads(out.read_text())
    assert isinstance(entries, list)
    names = [e["name"] for e in entries]
    assert set(names) >= REQUIRED
    assert set(names) == {f.name for _, figures in BENCHMARKS.values() for f in figures}
    for entry in entries:
        assert {"name", "value", "unit", "target"} <= set(entry)
        measured = isinstance(entry["value"], int | float)
        assert measured or entry["note"].startswith("skipped"), entry
        assert isinstance(entry["target"], str) and entry["target"], entry
    assert "command_latency_p99_ms" in proc.stdout  # the table
