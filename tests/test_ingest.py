"""The data path end to end: the virtual lab and the real daemons publish, the bridge runs the
repo's telegraf.conf, InfluxDB stores. Checked against the topic contract (docs/topics.md):
every consumed status topic lands with its measurement, tags and field types."""

from __future__ import annotations

import json
import re
import time

import paho.mqtt.client as mqtt
import pytest

from tests.conftest import ROOT
from tests.ingestlab import TELEGRAF_CONF, DataLab, dump, shared_data_lab
from tests.labdata import EXAMPLE
from trackerdcs.ingest.conf import load_telegraf_conf
from trackerdcs.ingest.influxdb import DATABASE, InfluxClient
from trackerdcs.stack.influx import DOWNSAMPLED_RP, RAW_RP, downsample_query
from trackerdcs.stack.process import wait_until

HV, LV = EXAMPLE.channels("hv"), EXAMPLE.channels("lv")  # the lab below starts from it

TOPICS_MD = ROOT / "docs" / "topics.md"
# contract table -> (a topic it describes, the measurement telegraf.conf should write)
CONTRACTS = {
    "power-status": [("/hv/status", "hv"), ("/lv/status", "lv")],
    "julabo-status": [("/julabo/status", "julabo"), ("/julabo_burnin/status", "julabo")],
    "sensor-status": [("/sensor_1/status", "sensor"), ("/temp_m1/status", "sensor")],
}


@pytest.fixture(scope="module")
def lab(tmp_path_factory, pytestconfig) -> DataLab:
    return shared_data_lab(tmp_path_factory, pytestconfig)


def contract(name: str) -> dict[str, str]:
    """key -> JSON type, from the `<!-- contract:NAME -->` table of docs/topics.md."""
    text = TOPICS_MD.read_text()
    match = re.search(rf"<!-- contract:{name} -->(.*?)<!-- /contract -->", text, re.S)
    assert match, f"docs/topics.md has no contract table {name}"
    rows = re.findall(r"^\| `(\w+)` \| ([^|]+) \|", match.group(1), re.M)
    return {key: kind.strip() for key, kind in rows}


def expected_schema(topic: str, measurement: str, name: str):
    """What Telegraf's json parser makes of the contract's keys with this input's options:
    (tags, fields that must be there, fields that may be there (nullable), field types)."""
    conf = load_telegraf_conf(TELEGRAF_CONF, env={})
    consumer = next(c for c in conf.inputs if c.measurement == measurement)
    assert any(mqtt.topic_matches_sub(sub, topic) for sub in consumer.topics)
    tags, required, types = set(), set(), {}
    for key, kind in contract(name).items():
        if key == consumer.time_key:
            continue  # the point's timestamp (json_time_key), no field
        nullable = "null" in kind
        if consumer.tag_keys.match(key):
            tags.add(key)
            continue
        if kind.startswith(("integer", "number")):
            types[key] = "float"  # every JSON number is a float
        elif kind.startswith(("string", "boolean")) and consumer.string_fields.match(key):
            types[key] = "string" if kind.startswith("string") else "boolean"
        else:
            continue  # strings/booleans not listed, arrays: left out by the parser
        if not nullable:
            required.add(key)
    return tags, required, types


@pytest.mark.parametrize(
    "name,topic,measurement",
    [(name, t, m) for name, pairs in CONTRACTS.items() for t, m in pairs],
)
def test_every_consumed_status_topic_lands_with_its_tags_and_field_types(
    lab: DataLab, name: str, topic: str, measurement: str
) -> None:
    tags, required, types = expected_schema(topic, measurement, name)
    db = lab.db
    stored = {
        row["fieldKey"]: row["fieldType"]
        for s in db.series(f'SHOW FIELD KEYS FROM "{measurement}"')
        for row in s.rows()
    }
    assert required <= set(stored), dump(stored)
    assert set(stored) <= set(types), f"unexpected fields: {set(stored) - set(types)}"
    assert {k: types[k] for k in stored} == stored
    tag_series = db.series(f'SHOW TAG KEYS FROM "{measurement}"')
    tag_keys = {r["tagKey"] for s in tag_series for r in s.rows()}
    assert tag_keys == tags
    if measurement in ("hv", "lv"):
        assert not any(k.startswith("flags") for k in stored)  # the array is left out
        numbers = db.series(f'SHOW TAG VALUES FROM "{measurement}" WITH KEY = "number"')
        assert sorted(r["value"] for r in numbers[0].rows()) == ["0", "1", "2", "3"]
    if measurement == "sensor":
        sensor = topic.split("/")[1]
        q = f'SELECT last("temperature") FROM "sensor" WHERE "name" = \'{sensor}\''
        last = db.series(q)  # (InfluxDB's JSON writes the float 21.0 as 21)
        assert last and isinstance(last[0].values[0][1], int | float)
        kinds = db.series('SHOW TAG VALUES FROM "sensor" WITH KEY = "kind"')
        assert sorted(r["value"] for r in kinds[0].rows()) == ["module", "room"]
    if measurement == "julabo":  # one series per chiller, by its name
        assert lab.chillers() == ["burnin", "coldbox"]


def test_each_chillers_points_are_told_apart_by_its_tag(lab: DataLab) -> None:
    """Each chiller commanded on its own: InfluxDB has each one's set point under its name."""
    vlab = lab.vlab
    for prefix, setpoint in (("/julabo", -5.0), ("/julabo_burnin", 12.5)):
        assert vlab.command(f"{prefix}/cmd/setpoint", setpoint)["ok"]
        vlab.wait(f"{prefix}/status", lambda s, v=setpoint: s["setpoint"] == v, timeout=10)

    def stored() -> dict[str, float] | None:
        q = 'SELECT last("setpoint") FROM "julabo" GROUP BY "chiller"'
        found = {s.tags["chiller"]: s.values[0][1] for s in lab.db.series(q)}
        return found if found == {"coldbox": -5.0, "burnin": 12.5} else None

    wait_until(stored, 5, "each chiller's set point in InfluxDB", poll=0.1)
    rows = lab.db.series('SELECT "chiller", "bath_temp" FROM "julabo" WHERE "chiller" = \'burnin\'')
    assert rows and {r["chiller"] for r in rows[0].rows()} == {"burnin"}


def test_a_command_reaches_influxdb(lab: DataLab) -> None:
    """The first HV channel to 120 V and on: the stored channel follows what the daemon
    published."""
    vlab = lab.vlab
    assert vlab.command(HV[0].topic("setv"), 120)["ok"]
    assert vlab.command(HV[0].topic("switch"), "on")["ok"]
    published = vlab.wait("/hv/status", lambda chs: chs[0]["state"] == "ON", timeout=10)[0]
    q = (
        'SELECT last("vreq") AS vreq, last("state") AS state, last("on") AS "on" FROM "hv" '
        f"WHERE \"name\" = '{HV[0].name}' AND \"module\" = '{HV[0].module}' "
        f"AND \"number\" = '{HV[0].number}'"
    )

    def stored():
        rows = lab.db.series(q)[0].rows()[0]
        return rows if rows["state"] == "ON" else None

    row = wait_until(stored, 5, f"{HV[0].name} ON in InfluxDB", poll=0.1)
    assert row["vreq"] == published["vreq"] == 120.0
    assert row["on"] == 1
    assert vlab.command(HV[0].topic("switch"), "off")["ok"]


def test_counters_are_published_and_add_up(lab: DataLab) -> None:
    since = lab.client.mark()
    status = lab.counters(since)
    types = {"integer": int, "string": str, "number": float}
    assert {k: types[v] for k, v in contract("ingest-status").items()} == {
        k: type(v) for k, v in status.items()
    }
    assert status["influxdb"] == "ok"
    assert status["metrics"] == status["written"] + status["dropped"] + status["buffered"]
    assert status["dropped"] == 0 and status["written"] > 0
    avail = lab.client.wait_for("/ingest/availability", lambda m: m.retain, 5)
    assert avail.text == "online"


BAD_PAYLOADS = [
    b"not json",
    b'{"bath_temp": 1',
    b"[1, 2]",
    b'"a string"',
    b"42",
    b'{"bath_temp": NaN}',
    b"\xff\xfe garbage",
    b'[{"bath_temp": 1}, 3]',
    b'{"bath_temp": 1e999}',
    b'{"bath_temp": 1}',  # no `time` (json_time_key): "JSON time key could not be found"
    b'{"bath_temp": 1, "time": "yesterday"}',
]
EMPTY_PAYLOADS = [b"", b"null", b"[]", b'{"time": 1717171717.0}',
                  b'{"note": "strings only", "time": 1717171717.0}']  # fmt: skip


def test_malformed_payloads_are_counted_and_skipped(lab: DataLab) -> None:
    """Each bad payload on /julabo/status is rejected by both inputs reading it (the chiller's and
    the sensors' /+/status); payloads with nothing to store are no error; the bridge goes on."""
    client = lab.client
    before = lab.counters(client.mark())
    for payload in BAD_PAYLOADS + EMPTY_PAYLOADS:
        client.publish("/julabo/status", payload)
    probe = {"name": "ingest_probe", "kind": "room", "module": "", "temperature": 12.25,
             "humidity": 40.0, "dewpoint": -1.5, "stale": False, "error": None,
             "time": time.time()}  # fmt: skip
    client.publish("/ingest_probe/status", json.dumps(probe))
    after = lab.counters(
        client.mark(),
        predicate=lambda c: c["rejected"] >= before["rejected"] + 2 * len(BAD_PAYLOADS),
    )
    assert after["rejected"] == before["rejected"] + 2 * len(BAD_PAYLOADS)
    q = 'SELECT "temperature", "stale" FROM "sensor" WHERE "name" = \'ingest_probe\''
    rows = wait_until(lambda: lab.db.series(q), 5, "the probe in InfluxDB", poll=0.1)[0].rows()
    assert [(r["temperature"], r["stale"]) for r in rows] == [(12.25, False)]
    assert lab.bridge.alive
    assert "skipped a payload on /julabo/status" in lab.bridge.output()


def test_retention_policies_and_the_downsampled_copy(lab: DataLab) -> None:
    db = lab.db
    policies = {r["name"]: r for s in db.series("SHOW RETENTION POLICIES") for r in s.rows()}
    assert policies[RAW_RP]["default"] is True and policies[RAW_RP]["duration"] == "720h0m0s"
    assert policies[DOWNSAMPLED_RP]["duration"] == "0s"  # INF
    queries = {
        r["name"]: r["query"]
        for s in db.series("SHOW CONTINUOUS QUERIES", database="")
        if s.name == DATABASE
        for r in s.rows()
    }
    assert queries["downsample"] == downsample_query("1m")
    # what the CQ runs every minute, run now over the last hour (a backfill)
    select = downsample_query("1m").split(" BEGIN ", 1)[1].removesuffix(" END")
    select = select.replace(" GROUP BY", " WHERE time > now() - 1h GROUP BY")
    db.execute(select)
    assert db.count("hv", "mean_vmon", f"\"name\" = '{HV[1].name}'", rp=DOWNSAMPLED_RP) > 0
    fields = db.series(f'SHOW FIELD KEYS FROM "{DOWNSAMPLED_RP}"."hv"')[0].rows()
    assert {"fieldKey": "mean_vmon", "fieldType": "float"} in fields
    assert not any(f["fieldKey"] == "mean_state" for f in fields)  # strings have no mean


def test_points_are_only_in_the_trackerdcs_database(lab: DataLab) -> None:
    other = InfluxClient(lab.influx.url, database="")
    names = [r["name"] for s in other.series("SHOW DATABASES") for r in s.rows()]
    assert names == [DATABASE]
