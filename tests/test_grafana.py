"""The Grafana provisioning, proven without Grafana: the datasource points at the database
telegraf.conf writes (InfluxQL), and every dashboard panel's query, with Grafana's macros and
template variables substituted as Grafana does, runs against the InfluxDB filled by the running
lab and returns data."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT
from tests.ingestlab import TELEGRAF_CONF, DataLab, shared_data_lab
from trackerdcs.ingest.conf import load_telegraf_conf
from trackerdcs.ingest.export import rfc3339
from trackerdcs.ingest.influxdb import DATABASE

GRAFANA = ROOT / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
MACROS = {
    "$timeFilter": "time > now() - 1h",
    "$__interval_ms": "10000",
    "$__interval": "10s",
}


@pytest.fixture(scope="module")
def lab(tmp_path_factory, pytestconfig) -> DataLab:
    return shared_data_lab(tmp_path_factory, pytestconfig)


def datasource() -> dict[str, Any]:
    data = yaml.safe_load((GRAFANA / "datasources" / "influxdb.yml").read_text())
    assert data["apiVersion"] == 1
    [ds] = data["datasources"]
    return ds


def dashboard(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def targets(board: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(p["title"], t) for p in board["panels"] for t in p.get("targets", [])]


def substitute(query: str, variables: dict[str, str]) -> str:
    """Grafana's interpolation: macros, then `$var`, `${var}` and `[[var]]`."""
    for macro in sorted(MACROS, key=len, reverse=True):
        query = query.replace(macro, MACROS[macro])
    for name, value in variables.items():
        query = re.sub(rf"\$\{{{name}\}}|\[\[{name}\]\]|\${name}\b", value, query)
    left = re.search(r"\$\{?[A-Za-z_]|\[\[", query)  # (a regex's `$/` anchor is no variable)
    assert left is None, f"unsubstituted variable in {query}"
    return query


def test_the_datasource_is_the_trackerdcs_database_over_influxql():
    ds = datasource()
    assert ds["type"] == "influxdb" and ds["access"] == "proxy"
    assert ds["jsonData"]["version"] == "InfluxQL"
    assert ds["jsonData"]["dbName"] == DATABASE
    assert load_telegraf_conf(TELEGRAF_CONF, env={}).output.database == DATABASE
    assert ds["url"] == "${TRACKERDCS_INFLUX_URL}"  # the same variable as telegraf.conf's
    assert "TRACKERDCS_INFLUX_URL" in TELEGRAF_CONF.read_text()


def test_dashboards_are_provisioned_and_use_that_datasource():
    provider = yaml.safe_load((GRAFANA / "dashboards" / "dashboards.yml").read_text())
    [prov] = provider["providers"]
    assert prov["type"] == "file" and prov["options"]["path"]
    titles = {dashboard(p)["title"] for p in DASHBOARDS}
    assert len(titles) == len(DASHBOARDS) == 4
    uid = datasource()["uid"]
    uids = set()
    for path in DASHBOARDS:
        board = dashboard(path)
        uids.add(board["uid"])
        assert board["panels"], path
        for panel in board["panels"]:
            assert panel["datasource"]["uid"] == uid, (path.name, panel["title"])
            assert panel["targets"], (path.name, panel["title"])
            for t in panel["targets"]:
                assert t["datasource"]["uid"] == uid and t["rawQuery"] is True, t
        for var in board["templating"]["list"]:
            assert var["datasource"]["uid"] == uid
    assert len(uids) == len(DASHBOARDS)


def variable_values(lab: DataLab, board: dict[str, Any]) -> dict[str, str]:
    """Each template variable's query run on the lab's data (with the variables before it); the
    first value is used."""
    values: dict[str, str] = {}
    for var in board["templating"]["list"]:
        series = lab.db.series(substitute(var["query"], values))
        found = sorted(r["value"] for s in series for r in s.rows())
        assert found, f"template variable {var['name']}: no values"
        values[var["name"]] = found[0]
    return values


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_every_panel_query_returns_data(lab: DataLab, path: Path):
    board = dashboard(path)
    variables = variable_values(lab, board)
    if path.stem == "module":
        assert variables == {"module": min(lab.vlab.lab.modules)}  # the first of its values
    empty = []
    for title, target in targets(board):
        query = substitute(target["query"], variables)
        series = lab.db.series(query)
        values = [v for s in series for row in s.values for v in row[1:] if v is not None]
        if not values:
            empty.append(f"{title}: {query}")
    assert not empty, "panels without data:\n" + "\n".join(empty)


def test_the_dew_point_margin_is_the_coldest_temperature_minus_the_highest_dew_point(lab):
    board = dashboard(GRAFANA / "dashboards" / "cooling.json")
    [(_, target)] = [t for t in targets(board) if t[0] == "Margin to the dew point"]
    end = rfc3339(lab.written_until_now())
    window = f"time > '{end}' - 2m AND time <= '{end}'"
    margin = lab.db.series(substitute(target["query"], {}).replace(MACROS["$timeFilter"], window))
    parts = lab.db.series(
        f'SELECT min("temperature"), max("dewpoint") FROM "sensor" WHERE {window} '
        "GROUP BY time(10s) fill(none)"
    )
    expected = {t: lo - hi for t, lo, hi in parts[0].values if lo is not None and hi is not None}
    got = {t: v for t, v in margin[0].values if v is not None}
    assert got and got == pytest.approx(expected)


def test_the_cooling_dashboard_shows_chiller_points_stored_without_a_tag(lab):
    """Points stored before the `chiller` tag existed have none (README): every chiller panel
    shows them, as a series without a chiller name, whatever chiller is selected."""
    scratch = copy.copy(lab.db)
    scratch.database = "untagged_chillers"  # a database of its own: the lab's data stays as is
    lab.db.execute(f"CREATE DATABASE {scratch.database}")
    try:  # the InfluxDB is shared: other tests expect the lab's database alone
        fields = 'bath_temp=12.5,setpoint=12.0,external_temp=13.0,power=-20.0,state="RUNNING"'
        scratch.write(f"julabo {fields}\njulabo,chiller=coldbox {fields}\n".encode())
        board = dashboard(GRAFANA / "dashboards" / "cooling.json")
        chiller_panels = [(t, q) for t, q in targets(board) if 'FROM "julabo"' in q["query"]]
        assert len(chiller_panels) == 3
        for title, target in chiller_panels:
            series = scratch.series(substitute(target["query"], {"chiller": "coldbox"}))
            assert {s.tags.get("chiller", "") for s in series} == {"", "coldbox"}, title
    finally:
        lab.db.execute(f"DROP DATABASE {scratch.database}")
