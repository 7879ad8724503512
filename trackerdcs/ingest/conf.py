"""`telegraf.conf`: the subset of Telegraf's configuration the bridge implements.

The file is read the way Telegraf reads it: environment variables (`${VAR}`, `${VAR:-default}`,
`${VAR-default}`, `${VAR:?error}`, `${VAR?error}`) are substituted first (outside comments), then
it is parsed as TOML, and options left out take Telegraf's defaults. Any plugin, table or option
not listed below is refused with an error naming the file, the plugin and the option, so that the
bridge and the real Telegraf can never read the same file differently.

Implemented:

- `[agent]`: interval, flush_interval, metric_batch_size, metric_buffer_limit, omit_hostname,
  hostname;
- `[[inputs.mqtt_consumer]]`: servers (one `tcp://` or `mqtt://` URL), topics, qos, client_id,
  username, password, topic_tag, max_undelivered_messages, name_override, data_format (`json`),
  tag_keys, json_string_fields, json_time_key, json_time_format (`unix`, `unix_ms`, `unix_us`,
  `unix_ns`; not Go layouts), the metric filter `[inputs.mqtt_consumer.tagpass]` and the tag
  modifier `tagexclude` (applied after `tagpass`, as Telegraf does);
- `[[outputs.influxdb]]` (exactly one): urls (one `http://` or `https://` URL), database,
  retention_policy, skip_database_creation, timeout, username, password.

Each input is its own MQTT connection: two inputs on one broker with the same `client_id` would
knock each other off (the broker keeps one connection per id), so that is refused too; an empty
`client_id` (the default) is a random one per input, as in Telegraf.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from trackerdcs.guard import clip, shorten
from trackerdcs.ingest.filters import GlobFilter, TagPass
from trackerdcs.ingest.jsonparse import UNIX_FORMATS


class TelegrafConfError(Exception):
    """A telegraf.conf the bridge cannot run: unreadable, invalid, or using an option it lacks."""


# -- values -----------------------------------------------------------------------------------
_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_GO_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)", re.ASCII)


MAX_DURATION = (2**63 - 1) / 1e9  # s: Go's time.Duration is an int64 of nanoseconds (~292 y)


def parse_duration(value: Any) -> float:
    """Seconds in a Telegraf duration: a Go duration string (`10s`, `1m30s`, `500ms`) or a
    number of seconds; finite and within Go's `time.Duration` (`inf`, `nan`, `1e400` and
    `9999999999h` are refused, as Telegraf refuses them)."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration such as '10s', got {clip(value, 40)}")
    if isinstance(value, int | float):
        seconds = float(value) if abs(value) < 1e308 else math.inf
    elif isinstance(value, str):
        parts = _GO_DURATION.findall(value)
        if not parts or "".join(n + u for n, u in parts) != value:
            raise ValueError(f"expected a duration such as '10s' or '1m30s', got {clip(value, 40)}")
        seconds = sum(float(n) * _GO_UNITS[u] for n, u in parts)
    else:
        raise ValueError(f"expected a duration such as '10s', got {clip(value, 40)}")
    if not math.isfinite(seconds) or abs(seconds) > MAX_DURATION:
        raise ValueError(f"duration {clip(value, 40)} is out of range (at most about 292 years)")
    return seconds


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def substitute_env(text: str, env: Mapping[str, str]) -> str:
    """Telegraf's `${...}` expansion, applied to every line outside its comment."""

    def expand(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        value = env.get(name)
        if op is None:
            return value or ""
        empty_counts = op.startswith(":")
        missing = value is None or (empty_counts and value == "")
        if op.endswith("-"):
            return arg if missing else value or ""
        if missing:
            raise TelegrafConfError(f"environment variable {name}: {arg or 'not set'}")
        return value or ""

    lines = []
    for line in text.splitlines(keepends=True):
        code, comment = _split_comment(line)
        lines.append(_ENV.sub(expand, code) + comment)
    return "".join(lines)


def _split_comment(line: str) -> tuple[str, str]:
    """The line before its `#` comment (a `#` inside a quoted string does not count), and the
    comment."""
    quote: str | None = None
    i = 0
    while i < len(line):
        c = line[i]
        if quote:
            if c == "\\" and quote == '"':
                i += 1
            elif c == quote:
                quote = None
        elif c in "\"'":
            quote = c
        elif c == "#":
            return line[:i], line[i:]
        i += 1
    return line, ""


# -- the model ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class AgentConf:
    """`[agent]`, with Telegraf's defaults."""

    interval: float = 10.0  # service inputs: how often a lost broker connection is retried
    flush_interval: float = 10.0
    metric_batch_size: int = 1000
    metric_buffer_limit: int = 10000
    omit_hostname: bool = False
    hostname: str = ""


@dataclass(frozen=True)
class ConsumerConf:
    """One `[[inputs.mqtt_consumer]]` with `data_format = "json"`."""

    where: str  # "[[inputs.mqtt_consumer]] #1" (for messages)
    host: str
    port: int
    topics: tuple[str, ...]
    qos: int = 0
    client_id: str = ""
    username: str = ""
    password: str = ""
    topic_tag: str = "topic"
    max_undelivered_messages: int = 1000
    measurement: str = "mqtt_consumer"
    tag_keys: GlobFilter = field(default_factory=lambda: GlobFilter(()))
    string_fields: GlobFilter = field(default_factory=lambda: GlobFilter(()))
    time_key: str = ""  # json_time_key: "" for the time of reception
    time_format: str = ""  # json_time_format
    tagpass: TagPass | None = None
    tagexclude: GlobFilter = field(default_factory=lambda: GlobFilter(()))

    @property
    def topic_filter(self) -> GlobFilter | None:
        """The `tagpass` patterns of the topic tag, when that is all `tagpass` looks at: then a
        message whose topic fails them yields no metric, and need not be parsed."""
        tagpass = self.tagpass
        if tagpass is None or not self.topic_tag or set(tagpass.filters) != {self.topic_tag}:
            return None
        return tagpass.filters[self.topic_tag]


@dataclass(frozen=True)
class InfluxOutputConf:
    """The one `[[outputs.influxdb]]`, with Telegraf's defaults."""

    url: str = "http://localhost:8086"
    database: str = "telegraf"
    retention_policy: str = ""
    skip_database_creation: bool = False
    timeout: float = 5.0
    username: str = ""
    password: str = ""


@dataclass(frozen=True)
class TelegrafConf:
    path: Path
    agent: AgentConf
    inputs: tuple[ConsumerConf, ...]
    output: InfluxOutputConf


# -- option validation (pydantic) ---------------------------------------------------------------
# One model per table, its fields the table's options by their Telegraf names and defaults, in the
# order their errors are reported (the first invalid option, then the first unknown one).
def _string(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError(f"expected a string, got {clip(v, 40)}")
    return v


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"expected true or false, got {clip(v, 40)}")
    return v


def _positive_int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 0 < v < 2**63:
        raise ValueError(f"expected a positive integer (64-bit), got {clip(v, 40)}")
    return v


def _strings(v: Any) -> tuple[str, ...]:
    if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
        raise ValueError(f"expected a list of strings, got {clip(v, 40)}")
    return tuple(v)


def _globs(v: Any) -> GlobFilter:
    return GlobFilter(_strings(v))


def _positive_duration(v: Any) -> float:
    seconds = parse_duration(v)
    if seconds <= 0:
        raise ValueError(f"must be positive, got {clip(v, 40)}")
    return seconds


def _qos(v: Any) -> int:
    if v not in (0, 1, 2) or isinstance(v, bool):
        raise ValueError(f"expected 0, 1 or 2, got {clip(v, 40)}")
    return v


def _broker(v: Any) -> tuple[str, int]:
    servers = _strings(v)
    if len(servers) != 1:
        raise ValueError(f"the bridge implements exactly one server, got {len(servers)}")
    url = urllib.parse.urlsplit(servers[0])
    if url.scheme not in ("tcp", "mqtt") or not url.hostname:
        raise ValueError(
            f"expected tcp://HOST:PORT (the bridge has no TLS), got {clip(servers[0], 60)}"
        )
    return url.hostname, url.port or 1883


def _influx_url(v: Any) -> str:
    urls = _strings(v)
    if len(urls) != 1:
        raise ValueError(f"the bridge implements exactly one URL, got {len(urls)}")
    url = urllib.parse.urlsplit(urls[0])
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ValueError(f"expected http://HOST:PORT, got {clip(urls[0], 60)}")
    return urls[0].rstrip("/")


def _time_format(v: Any) -> str:
    text = _string(v)
    if text not in UNIX_FORMATS:
        raise ValueError(
            f"the bridge implements {', '.join(UNIX_FORMATS)} (not Go time layouts), "
            f"got {clip(text, 40)}"
        )
    return text


def _tagpass(v: Any) -> TagPass:
    if not isinstance(v, dict):
        raise ValueError(f"expected a table of tag -> patterns, got {clip(v, 40)}")
    return TagPass({key: _strings(patterns) for key, patterns in v.items()})


def _json_format(v: Any) -> str:
    text = _string(v)
    if text != "json":
        raise ValueError(f"the bridge implements 'json' only, got {clip(text, 40)}")
    return text


def _some_topics(v: Any) -> tuple[str, ...]:
    topics = _strings(v)
    if not topics:
        raise ValueError("at least one topic is needed")
    return topics


String = Annotated[str, BeforeValidator(_string)]
Bool = Annotated[bool, BeforeValidator(_bool)]
PositiveInt = Annotated[int, BeforeValidator(_positive_int)]
PositiveDuration = Annotated[float, BeforeValidator(_positive_duration)]
Globs = Annotated[GlobFilter, BeforeValidator(_globs)]


class _Options(BaseModel):
    """A table's options: unknown ones are errors (see `_validate`)."""

    reported_first: ClassVar[tuple[str, ...]] = ()  # options whose error comes before the others'

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)


class _AgentOptions(_Options):
    interval: PositiveDuration = AgentConf.interval
    flush_interval: PositiveDuration = AgentConf.flush_interval
    metric_batch_size: PositiveInt = AgentConf.metric_batch_size
    metric_buffer_limit: PositiveInt = AgentConf.metric_buffer_limit
    omit_hostname: Bool = AgentConf.omit_hostname
    hostname: String = AgentConf.hostname


class _ConsumerOptions(_Options):
    reported_first: ClassVar[tuple[str, ...]] = ("data_format",)  # it decides what the rest mean

    servers: Annotated[tuple[str, int], BeforeValidator(_broker)] = ("127.0.0.1", 1883)
    topics: Annotated[tuple[str, ...], BeforeValidator(_some_topics)] = Field(
        [], validate_default=True
    )
    qos: Annotated[int, BeforeValidator(_qos)] = ConsumerConf.qos
    client_id: String = ConsumerConf.client_id
    username: String = ConsumerConf.username
    password: String = ConsumerConf.password
    topic_tag: String = ConsumerConf.topic_tag
    max_undelivered_messages: PositiveInt = ConsumerConf.max_undelivered_messages
    name_override: String = ""
    data_format: Annotated[str, BeforeValidator(_json_format)] = Field(
        "influx", validate_default=True
    )
    tag_keys: Globs = GlobFilter(())
    json_string_fields: Globs = GlobFilter(())
    json_time_key: String = ConsumerConf.time_key
    json_time_format: Annotated[str, BeforeValidator(_time_format)] = ConsumerConf.time_format
    tagpass: Annotated[TagPass | None, BeforeValidator(_tagpass)] = None
    tagexclude: Globs = GlobFilter(())


class _OutputOptions(_Options):
    urls: Annotated[str, BeforeValidator(_influx_url)] = InfluxOutputConf.url
    database: String = InfluxOutputConf.database
    retention_policy: String = InfluxOutputConf.retention_policy
    skip_database_creation: Bool = InfluxOutputConf.skip_database_creation
    timeout: PositiveDuration = InfluxOutputConf.timeout
    username: String = InfluxOutputConf.username
    password: String = InfluxOutputConf.password


_OptionsT = TypeVar("_OptionsT", bound=_Options)


def _error(path: Path, where: str, key: str, reason: str) -> TelegrafConfError:
    return TelegrafConfError(f"{path}: {where}: option '{key}': {reason}")


def _validate(model: type[_OptionsT], path: Path, where: str, table: dict[str, Any]) -> _OptionsT:
    """The table's options; `TelegrafConfError` naming the file, table and option otherwise:
    the first invalid option (`reported_first`, then in the model's order), else the first one
    not implemented."""
    try:
        return model.model_validate(table)
    except ValidationError as exc:
        first = {(name,) for name in model.reported_first}
        error = min(exc.errors(), key=lambda e: tuple(e["loc"][:1]) not in first)
        key = str(error["loc"][0]) if error["loc"] else "?"
        if error["type"] == "extra_forbidden":
            implemented = ", ".join(model.model_fields)
            raise _error(
                path,
                where,
                _short(key),
                f"not implemented by the trackerdcs bridge (it implements: {implemented}); "
                "remove it or run the real Telegraf",
            ) from None
        cause = error.get("ctx", {}).get("error")
        reason = str(cause) if isinstance(cause, Exception) else error["msg"]
        raise _error(path, where, key, shorten(reason, 200)) from None


# -- the tables -------------------------------------------------------------------------------


def _agent(path: Path, table: dict[str, Any]) -> AgentConf:
    return AgentConf(**_validate(_AgentOptions, path, "[agent]", table).model_dump())


def _consumer(path: Path, index: int, table: dict[str, Any]) -> ConsumerConf:
    where = f"[[inputs.mqtt_consumer]] #{index}"
    o = _validate(_ConsumerOptions, path, where, table)
    conf = ConsumerConf(
        where=where,
        host=o.servers[0],
        port=o.servers[1],
        topics=o.topics,
        qos=o.qos,
        client_id=o.client_id,
        username=o.username,
        password=o.password,
        topic_tag=o.topic_tag,
        max_undelivered_messages=o.max_undelivered_messages,
        measurement=o.name_override or "mqtt_consumer",
        tag_keys=o.tag_keys,
        string_fields=o.json_string_fields,
        time_key=o.json_time_key,
        time_format=o.json_time_format,
        tagpass=o.tagpass,
        tagexclude=o.tagexclude,
    )
    if conf.time_key and not conf.time_format:
        raise _error(
            path, where, "json_time_key", "use of 'json_time_key' requires 'json_time_format'"
        )
    return conf


def _output(path: Path, table: dict[str, Any]) -> InfluxOutputConf:
    where = "[[outputs.influxdb]]"
    o = _validate(_OutputOptions, path, where, table)
    out = InfluxOutputConf(url=o.urls, **o.model_dump(exclude={"urls"}))
    if not out.database:
        raise _error(path, where, "database", "must not be empty")
    return out


def parse_telegraf_conf(text: str, path: Path | str = "telegraf.conf", env=None) -> TelegrafConf:
    """Validate telegraf.conf text (environment from `env`, default `os.environ`).
    `TelegrafConfError` for anything the bridge cannot run, with a bounded message."""
    path = Path(path)
    text = substitute_env(text, os.environ if env is None else env)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TelegrafConfError(f"{path}: not valid TOML: {shorten(str(exc), 200)}") from None
    except (ValueError, RecursionError) as exc:  # a 5000-digit integer, nesting too deep
        why = "nested too deeply" if isinstance(exc, RecursionError) else shorten(str(exc), 120)
        raise TelegrafConfError(f"{path}: not valid TOML: {why}") from None
    return conf_from_data(data, path)


def _short(name: str, limit: int = 60) -> str:
    return name if len(name) <= limit else f"{name[:limit]}..."


def _table(path: Path, where: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TelegrafConfError(f"{path}: {where} must be a table, got {clip(value, 40)}")
    return value


def conf_from_data(data: dict[str, Any], path: Path | str = "telegraf.conf") -> TelegrafConf:
    """Validate telegraf.conf already parsed as TOML (see `parse_telegraf_conf`)."""
    path = Path(path)
    top = dict(_table(path, "the file", data))
    agent = _agent(path, _table(path, "[agent]", top.pop("agent", {})))
    inputs_table = dict(_table(path, "[inputs]", top.pop("inputs", {})))
    outputs_table = dict(_table(path, "[outputs]", top.pop("outputs", {})))
    for key in top:
        raise TelegrafConfError(
            f"{path}: [{_short(key)}] is not implemented by the trackerdcs bridge "
            "(it implements [agent], [[inputs.mqtt_consumer]] and [[outputs.influxdb]])"
        )
    consumers = inputs_table.pop("mqtt_consumer", [])
    outputs = outputs_table.pop("influxdb", [])
    for kind, rest in (("inputs", inputs_table), ("outputs", outputs_table)):
        for plugin in rest:
            raise TelegrafConfError(
                f"{path}: [[{kind}.{_short(plugin)}]] is not implemented by the trackerdcs bridge"
            )
    if not isinstance(consumers, list) or not consumers:
        raise TelegrafConfError(f"{path}: no [[inputs.mqtt_consumer]]")
    if not isinstance(outputs, list) or len(outputs) != 1:
        raise TelegrafConfError(f"{path}: the bridge implements exactly one [[outputs.influxdb]]")
    inputs = tuple(
        _consumer(path, i, _table(path, f"[[inputs.mqtt_consumer]] #{i}", t))
        for i, t in enumerate(consumers, 1)
    )
    _check_client_ids(path, inputs)
    return TelegrafConf(
        path=path,
        agent=agent,
        inputs=inputs,
        output=_output(path, _table(path, "[[outputs.influxdb]]", outputs[0])),
    )


def _check_client_ids(path: Path, inputs: tuple[ConsumerConf, ...]) -> None:
    """No two inputs on one broker with the same (non-empty) client_id."""
    seen: dict[tuple[str, int, str], str] = {}
    for conf in inputs:
        if not conf.client_id:
            continue
        key = (conf.host, conf.port, conf.client_id)
        if key in seen:
            raise TelegrafConfError(
                f"{path}: {conf.where}: client_id {conf.client_id!r} is {seen[key]}'s too: the "
                "broker keeps one connection per client id (leave it empty for a random one)"
            )
        seen[key] = conf.where


def load_telegraf_conf(path: Path | str, env: Mapping[str, str] | None = None) -> TelegrafConf:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise TelegrafConfError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:  # TOML is UTF-8 (a Latin-1 `°` in a comment is not)
        line = raw.count(b"\n", 0, exc.start) + 1
        raise TelegrafConfError(
            f"{path}: not UTF-8 at line {line} (byte {raw[exc.start]:#04x}): save it as UTF-8"
        ) from None
    return parse_telegraf_conf(text, path, env)
