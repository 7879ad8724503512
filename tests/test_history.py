"""Users' tools on the running lab's data: `trackerdcs export` (CSV of a channel, a module, a
sensor or a chiller for a time range) and `trackerdcs backup` / `restore` (portable), run as
the README shows them."""

from __future__ import annotations

import csv
import io
import re
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT
from tests.ingestlab import DataLab, InfluxServer, shared_data_lab
from tests.labdata import EXAMPLE
from trackerdcs.ingest.export import rfc3339
from trackerdcs.ingest.influxdb import DATABASE, InfluxClient

HV, LV = EXAMPLE.channels("hv"), EXAMPLE.channels("lv")  # the lab below starts from it


@pytest.fixture(scope="module")
def lab(tmp_path_factory, pytestconfig) -> DataLab:
    return shared_data_lab(tmp_path_factory, pytestconfig)


def lab_yaml(lab: DataLab, path: Path, influx: InfluxServer | None = None) -> Path:
    """The running lab's YAML with the `influx` section of this test's InfluxDB."""
    influx = influx or lab.influx
    data = yaml.safe_load(lab.vlab.config.read_text())
    data["influx"] = {"port": influx.cfg.port, "rpc_port": influx.cfg.rpc_port}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def trackerdcs(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "trackerdcs.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


def export_rows(config: Path, *args: str) -> list[dict[str, str]]:
    proc = trackerdcs("export", *args, "--config", str(config))
    assert proc.returncode == 0, proc.stderr
    return list(csv.DictReader(io.StringIO(proc.stdout)))


def count_between(db: InfluxClient, measurement: str, where: str, start: str, end: str) -> int:
    """Points of `measurement` matching `where` in [start, end]."""
    q = f"SELECT * FROM \"{measurement}\" WHERE {where} AND time >= '{start}' AND time <= '{end}'"
    return sum(len(s.values) for s in db.series(q))


def test_export_a_channel(lab: DataLab, tmp_path: Path):
    config = lab_yaml(lab, tmp_path / "lab.yml")
    end = lab.written_until_now()
    start = rfc3339(end - timedelta(minutes=10))
    out = tmp_path / f"{HV[0].name}.csv"
    proc = trackerdcs(
        "export", "channel", HV[0].name, "--from", start, "--to", rfc3339(end), "-o", str(out),
        "--config", str(config),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    header, *_ = out.read_text().splitlines()
    assert header.startswith("time,measurement,") and "vmon" in header and "state" in header
    rows = list(csv.DictReader(out.open()))
    expected = count_between(lab.db, "hv", f"\"name\" = '{HV[0].name}'", start, rfc3339(end))
    assert len(rows) == expected > 0
    assert f"{out}: {expected} row(s)" in proc.stderr
    assert {(r["measurement"], r["name"], r["module"], r["number"]) for r in rows} == {
        ("hv", HV[0].name, HV[0].module, str(HV[0].number))
    }
    assert [r["time"] for r in rows] == sorted(r["time"] for r in rows)
    float(rows[-1]["vmon"])  # numbers as numbers


def test_export_a_module_the_chiller_and_a_sensor(lab: DataLab, tmp_path: Path):
    config = lab_yaml(lab, tmp_path / "lab.yml")
    module = export_rows(config, "module", HV[1].module, "--from", "10m")
    assert {r["measurement"] for r in module} == {"hv", "lv", "sensor"}
    assert {r["module"] for r in module} == {HV[1].module}
    assert {r["name"] for r in module} == {HV[1].name, LV[1].name, "temp_m2"}
    for name in ("coldbox", "burnin"):  # the lab's two chillers, each by its tag
        chiller = export_rows(config, "chiller", name, "--from", "10m")
        assert chiller and {(r["measurement"], r["chiller"]) for r in chiller} == {("julabo", name)}
        assert {"bath_temp", "setpoint", "state"} <= set(chiller[0])
    room = export_rows(config, "sensor", "sensor_1", "--from", "10m", "--to", "now")
    assert room and {r["kind"] for r in room} == {"room"} and "dewpoint" in room[0]


@pytest.mark.parametrize(
    "args,message",
    [
        (("channel", "hv_m9", "--from", "1h"), "no channel 'hv_m9'"),
        (("module", "M9", "--from", "1h"), "no module 'M9'"),
        (("channel", HV[0].name, "--from", "yesterday"), "bad time 'yesterday'"),
        (("channel", HV[0].name, "--from", "1h", "--to", "2h"), "ends .* before it starts"),
        (("channel", "--from", "1h"), "needs a name"),
        (("chiller", "--from", "1h"), r"several chillers \(coldbox, burnin\): name one"),
        (("chiller", "coldbox2", "--from", "1h"), "no chiller named 'coldbox2'"),
    ],
)
def test_export_errors_say_what_is_wrong(lab: DataLab, tmp_path: Path, args, message):
    proc = trackerdcs("export", *args, "--config", str(lab_yaml(lab, tmp_path / "lab.yml")))
    assert proc.returncode == 1
    assert proc.stderr.startswith("trackerdcs export: ")
    assert re.search(message, proc.stderr), proc.stderr


def test_backup_and_restore_round_trip(lab: DataLab, tmp_path: Path):
    config = lab_yaml(lab, tmp_path / "lab.yml")
    end = rfc3339(lab.written_until_now())
    backup_dir = tmp_path / "backup"
    proc = trackerdcs("backup", str(backup_dir), "--config", str(config))
    assert proc.returncode == 0, proc.stderr
    assert list(backup_dir.glob("*.manifest"))

    fresh = InfluxServer(tmp_path).start(setup=False)  # another InfluxDB, empty
    try:
        fresh_config = lab_yaml(lab, tmp_path / "fresh.yml", fresh)
        proc = trackerdcs("restore", str(backup_dir), "--config", str(fresh_config))
        assert proc.returncode == 0, proc.stderr
        for measurement in ("hv", "lv", "julabo", "sensor"):
            before = count_between(lab.db, measurement, "true", "1970-01-01T00:00:00Z", end)
            after = count_between(fresh.client, measurement, "true", "1970-01-01T00:00:00Z", end)
            assert after == before > 0, (measurement, before, after)
        policies = {r["name"]: r for s in fresh.client.series("SHOW RETENTION POLICIES")
                    for r in s.rows()}  # fmt: skip
        assert policies["raw"]["default"] is True and "downsampled" in policies
        # the same backup again into the same server: refused, or under another name
        proc = trackerdcs("restore", str(backup_dir), "--config", str(fresh_config))
        assert proc.returncode == 1 and "trackerdcs restore: " in proc.stderr
        proc = trackerdcs(
            "restore", str(backup_dir), "--new-database", "copy", "--config", str(fresh_config)
        )
        assert proc.returncode == 0, proc.stderr
        copy = InfluxClient(fresh.url, database="copy")
        assert count_between(copy, "hv", "true", "1970-01-01T00:00:00Z", end) == count_between(
            lab.db, "hv", "true", "1970-01-01T00:00:00Z", end
        )
    finally:
        fresh.stop()
    names = [r["name"] for s in lab.db.series("SHOW DATABASES", database="") for r in s.rows()]
    assert names == [DATABASE]  # the backup did not touch the lab's InfluxDB
