"""History export to CSV: one channel, one module, one sensor, a chiller or IV scans, for a time
range.

trackerdcs export channel hv_m1 --from -2h [--to now] [-o hv_m1.csv]
trackerdcs export module M1 --from 2024-05-01T08:00 --to 2024-05-01T18:00
trackerdcs export chiller --from -1d --rp downsampled      (a lab with one chiller)
trackerdcs export chiller burnin --from -1d                (one of several: its `chiller` tag)
trackerdcs export ivscan M1-20240501T080000.000Z --from 7d (an IV scan: a scan id or a module)
trackerdcs export lab --from -8h                           (every channel, sensor and chiller)

Which measurement holds which topic is read from telegraf.conf (the one place of that mapping):
a channel's `<prefix>/status` (prefix from the lab YAML), a chiller's `<prefix>/status`,
`/<name>/status` for a sensor, `/dcs/ivscan/points` for IV scans (by tag `scan`, or `module`);
the input is the first one whose topics match and whose `tagpass` lets the point's tags through.
A module is every power channel powering it plus its module sensors; the lab is every point of the
measurements its channels, sensors and chillers are stored in (what the control UI's History page
shows, and exports with this code). The CSV has one row per
point: `time` (RFC 3339, UTC), `measurement`, the tags, then the fields, columns sorted by name;
an empty cell is a field the point did not have.
"""

from __future__ import annotations

import csv
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import paho.mqtt.client as mqtt

from trackerdcs.config import ChannelConfig, LabConfig, SensorConfig, UnknownChiller
from trackerdcs.ingest.conf import TelegrafConf
from trackerdcs.ingest.influxdb import InfluxClient, quote_ident, quote_string
from trackerdcs.topics import IVSCAN, ServiceTopics

IVSCAN_POINTS = IVSCAN.leaf("points")  # trackerdcs.ivscan.service.POINTS_TOPIC
_RELATIVE = re.compile(r"^-?(\d+(?:\.\d+)?)([smhdw])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class ExportError(Exception):
    """Nothing to export: an unknown channel, module or sensor, or a bad time."""


def parse_time(text: str, now: datetime | None = None) -> datetime:
    """`now`, a span back from now (`-2h`, `30m`, `1d`), or ISO 8601 (local time if no zone)."""
    now = now or datetime.now(UTC)
    if text == "now":
        return now
    match = _RELATIVE.match(text)
    if match:
        return now - timedelta(seconds=float(match.group(1)) * _UNIT_SECONDS[match.group(2)])
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise ExportError(
            f"bad time {text!r}: use now, a span such as -2h / 30m / 1d, or ISO 8601 "
            "such as 2024-05-01T08:00 (local) or 2024-05-01T06:00Z"
        ) from None
    if value.tzinfo is None:
        value = value.astimezone()  # local time
    return value.astimezone(UTC)


def rfc3339(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class Selection:
    """One measurement and the InfluxQL condition picking the points to export."""

    measurement: str
    where: str  # "" for every point


def measurement_for(telegraf: TelegrafConf, topic: str, tags: dict[str, str]) -> str:
    """The measurement of a point with `tags` from `topic`: that of the first input whose topics
    match and whose `tagpass` (if any) lets the point through, with the input's topic tag."""
    for consumer in telegraf.inputs:
        seen = {**tags, consumer.topic_tag: topic} if consumer.topic_tag else tags
        passes = consumer.tagpass is None or consumer.tagpass.select(seen)
        if passes and any(mqtt.topic_matches_sub(sub, topic) for sub in consumer.topics):
            return consumer.measurement
    raise ExportError(f"{telegraf.path}: no [[inputs.mqtt_consumer]] stores {topic} {tags}")


def lab_measurements(lab: LabConfig, telegraf: TelegrafConf) -> dict[str, list[str]]:
    """The measurements the lab's data is stored in, by source: `hv` and `lv` (its channels of
    each kind), `sensor`, `chiller` (each list without repeats, in the lab's order)."""
    found: dict[str, list[str]] = {"hv": [], "lv": [], "sensor": [], "chiller": []}
    for ch in lab.power.channels:
        found[str(ch.kind)].append(_channel_measurement(lab, telegraf, ch))
    found["sensor"] = [_sensor_measurement(telegraf, s) for s in lab.sensors]
    found["chiller"] = [
        measurement_for(telegraf, ServiceTopics(c.prefix).status, {"chiller": c.name})
        for c in lab.chillers
    ]
    return {source: list(dict.fromkeys(names)) for source, names in found.items()}


def selections(lab: LabConfig, telegraf: TelegrafConf, what: str, name: str | None) -> list:
    """What to query for `channel NAME`, `module NAME`, `sensor NAME`, `chiller [NAME]`, `ivscan
    SCAN|MODULE` or `lab`."""
    if what == "lab":  # every point of every measurement the lab's data is in
        every = [m for names in lab_measurements(lab, telegraf).values() for m in names]
        return [Selection(m, "") for m in dict.fromkeys(every)]
    if what == "chiller":
        try:
            chiller = lab.chiller(name)
        except UnknownChiller as exc:
            raise ExportError(str(exc)) from None
        tags = {"chiller": chiller.name}
        measurement = measurement_for(telegraf, ServiceTopics(chiller.prefix).status, tags)
        # the lab's only chiller, unnamed: every point (those stored before the tag was, too)
        return [Selection(measurement, "" if name is None else _tag_is("chiller", name))]
    if not name:
        raise ExportError(f"export {what} needs a name")
    if what == "channel":
        channel = next((c for c in lab.power.channels if c.name == name), None)
        if channel is None:
            known = ", ".join(c.name for c in lab.power.channels)
            raise ExportError(f"no channel {name!r} in the lab (known: {known})")
        return [Selection(_channel_measurement(lab, telegraf, channel), _tag_is("name", name))]
    if what == "sensor":
        sensor = next((s for s in lab.sensors if s.name == name), None)
        if sensor is None:
            known = ", ".join(s.name for s in lab.sensors)
            raise ExportError(f"no sensor {name!r} in the lab (known: {known})")
        return [Selection(_sensor_measurement(telegraf, sensor), _tag_is("name", name))]
    if what == "module":
        channels = lab.modules().get(name, [])
        sensors = [s for s in lab.sensors if s.module == name]
        if not channels and not sensors:
            known = ", ".join(sorted(lab.modules()))
            raise ExportError(f"no module {name!r} in the lab (known: {known})")
        found = [_channel_measurement(lab, telegraf, c) for c in channels]
        found += [_sensor_measurement(telegraf, s) for s in sensors]
        return [Selection(m, _tag_is("module", name)) for m in dict.fromkeys(found)]
    if what == "ivscan":  # a scan id, or a module: every IV scan of it in the range
        measurement = measurement_for(telegraf, IVSCAN_POINTS, {})
        tag = "module" if name in lab.modules() else "scan"
        return [Selection(measurement, _tag_is(tag, name))]
    raise ExportError(f"unknown export {what!r}: channel, module, sensor, chiller, ivscan or lab")


def _channel_measurement(lab: LabConfig, telegraf: TelegrafConf, ch: ChannelConfig) -> str:
    tags = {"number": str(ch.number), "name": ch.name, "module": ch.module or ""}
    topics = ServiceTopics(lab.crate_of(ch).prefixes[ch.kind])
    return measurement_for(telegraf, topics.status, tags)


def _sensor_measurement(telegraf: TelegrafConf, sensor: SensorConfig) -> str:
    tags = {"name": sensor.name, "kind": sensor.kind.value, "module": sensor.module or ""}
    return measurement_for(telegraf, ServiceTopics(sensor.prefix).status, tags)


def _tag_is(tag: str, value: str) -> str:
    return f"{quote_ident(tag)} = {quote_string(value)}"


def fetch(
    client: InfluxClient,
    wanted: Iterable[Selection],
    start: datetime,
    end: datetime,
    rp: str | None = None,
) -> list[dict[str, Any]]:
    """Every point of the selections in [start, end], oldest first."""
    rows: list[dict[str, Any]] = []
    span = f"time >= '{rfc3339(start)}' AND time <= '{rfc3339(end)}'"
    for sel in wanted:
        source = (
            f"{quote_ident(rp)}.{quote_ident(sel.measurement)}"
            if rp
            else quote_ident(sel.measurement)
        )
        where = f"({sel.where}) AND {span}" if sel.where else span
        for series in client.series(f"SELECT * FROM {source} WHERE {where}"):
            for row in series.rows():
                rows.append({"measurement": sel.measurement, **row})
    rows.sort(key=lambda r: r["time"])
    return rows


def write_csv(rows: list[dict[str, Any]], out: IO[str]) -> int:
    """The rows as CSV (`time`, `measurement`, then every other column sorted); rows written."""
    columns = sorted({key for row in rows for key in row} - {"time", "measurement"})
    writer = csv.DictWriter(out, ["time", "measurement", *columns], lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return len(rows)


def export(
    client: InfluxClient,
    lab: LabConfig,
    telegraf: TelegrafConf,
    what: str,
    name: str | None,
    start: datetime,
    end: datetime,
    out_path: Path | None,
    rp: str | None = None,
) -> int:
    """Write the CSV to `out_path` (stdout when None); the number of rows."""
    if end < start:
        raise ExportError(f"the range ends ({rfc3339(end)}) before it starts ({rfc3339(start)})")
    rows = fetch(client, selections(lab, telegraf, what, name), start, end, rp)
    if out_path is None:
        return write_csv(rows, sys.stdout)
    with out_path.open("w", newline="") as f:
        return write_csv(rows, f)
