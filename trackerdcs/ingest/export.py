"""History export to CSV: one channel, one module, one sensor or the chiller, for a time range.

trackerdcs export channel hv_m1 --from -2h [--to now] [-o hv_m1.csv]
trackerdcs export module M1 --from 2024-05-01T08:00 --to 2024-05-01T18:00
trackerdcs export chiller --from -1d --rp downsampled

Which measurement holds which topic is read from telegraf.conf (the one place of that mapping):
a channel's `<prefix>/status` (prefix from the lab YAML), `/julabo/status` for the chiller,
`/<name>/status` for a sensor. A module is every power channel powering it plus its module
sensors. The CSV has one row per point: `time` (RFC 3339, UTC), `measurement`, the tags, then the
fields, columns sorted by name; an empty cell is a field the point did not have.
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

from trackerdcs.config import LabConfig
from trackerdcs.ingest.conf import TelegrafConf
from trackerdcs.ingest.influxdb import InfluxClient, quote_ident, quote_string

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


def measurement_for(telegraf: TelegrafConf, topic: str) -> str:
    """The measurement the input consuming `topic` writes (the first input that matches: its
    topics, and its `tagpass` on the topic tag)."""
    for consumer in telegraf.inputs:
        by_topic = consumer.topic_filter
        if by_topic is not None and not by_topic.match(topic):
            continue
        if any(mqtt.topic_matches_sub(sub, topic) for sub in consumer.topics):
            return consumer.measurement
    raise ExportError(f"{telegraf.path}: no [[inputs.mqtt_consumer]] reads {topic}")


def selections(lab: LabConfig, telegraf: TelegrafConf, what: str, name: str | None) -> list:
    """What to query for `channel NAME`, `module NAME`, `sensor NAME` or `chiller`."""
    if what == "chiller":
        if lab.julabo is None:
            raise ExportError("the lab has no chiller (no `julabo` section)")
        return [Selection(measurement_for(telegraf, f"{lab.julabo.prefix}/status"), "")]
    if not name:
        raise ExportError(f"export {what} needs a name")
    if what == "channel":
        channel = next((c for c in lab.power.channels if c.name == name), None)
        if channel is None:
            known = ", ".join(c.name for c in lab.power.channels)
            raise ExportError(f"no channel {name!r} in the lab (known: {known})")
        prefix = lab.crate_of(channel).prefixes[channel.kind]
        return [Selection(measurement_for(telegraf, f"{prefix}/status"), _tag_is("name", name))]
    if what == "sensor":
        if name not in {s.name for s in lab.sensors}:
            known = ", ".join(s.name for s in lab.sensors)
            raise ExportError(f"no sensor {name!r} in the lab (known: {known})")
        return [Selection(measurement_for(telegraf, f"/{name}/status"), _tag_is("name", name))]
    if what == "module":
        channels = lab.modules().get(name, [])
        sensors = [s for s in lab.sensors if s.module == name]
        if not channels and not sensors:
            known = ", ".join(sorted(lab.modules()))
            raise ExportError(f"no module {name!r} in the lab (known: {known})")
        topics = [f"{lab.crate_of(c).prefixes[c.kind]}/status" for c in channels]
        topics += [f"{s.prefix}/status" for s in sensors]
        measurements = dict.fromkeys(measurement_for(telegraf, t) for t in topics)
        return [Selection(m, _tag_is("module", name)) for m in measurements]
    raise ExportError(f"unknown export {what!r}: channel, module, sensor or chiller")


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
