"""The bridge's pieces against Telegraf's documented behaviour: the telegraf.conf subset (and its
refusals), the json parser, the line protocol, the buffer, the writer against a real InfluxDB,
and the buffered paho client against a real Mosquitto."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from hypothesis import given
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion

from tests.conftest import ROOT, Broker
from tests.ingestlab import TELEGRAF_CONF, InfluxServer
from trackerdcs.config import ConfigError, influx_seconds, parse_config
from trackerdcs.ingest import consumer as consumer_module
from trackerdcs.ingest.bridge import Bridge
from trackerdcs.ingest.buffer import MetricBuffer
from trackerdcs.ingest.conf import (
    InfluxOutputConf,
    TelegrafConfError,
    load_telegraf_conf,
    parse_duration,
    parse_telegraf_conf,
    substitute_env,
)
from trackerdcs.ingest.consumer import FastClient, MqttConsumer, UniqueClock, shares_connection
from trackerdcs.ingest.filters import GlobFilter
from trackerdcs.ingest.jsonparse import (
    UNIX_FORMATS,
    JsonParser,
    PayloadError,
    go_format_float,
    unix_timestamp,
)
from trackerdcs.ingest.lineproto import LineSerializer
from trackerdcs.ingest.writer import InfluxWriter, WriteError
from trackerdcs.stack.process import free_port


# -- telegraf.conf ------------------------------------------------------------------------------
def test_the_repo_telegraf_conf_is_what_the_bridge_runs():
    conf = load_telegraf_conf(TELEGRAF_CONF, env={"TRACKERDCS_MQTT_SERVER": "tcp://10.0.0.5:1884"})
    assert [c.measurement for c in conf.inputs] == ["hv", "lv", "julabo", "sensor", "ivscan"]
    assert {(c.host, c.port) for c in conf.inputs} == {("10.0.0.5", 1884)}
    # retained statuses at QoS 0 (a lost one is sent again); the IV scans' points, events sent
    # once, at QoS 1
    assert [c.qos for c in conf.inputs] == [0, 0, 0, 0, 1]
    # every crate's HV and LV prefixes (several crates, several hosts) by their topic alone
    hv, lv, _, sensor, _ = conf.inputs
    for topic, measurement in {"/hv/status": "hv", "/hv1/status": "hv", "/hv-stand2/status": "hv",
                               "/lv/status": "lv", "/lv12/status": "lv", "/lv_b/status": "lv",
                               "/hvac/status": None, "/sensor_1/status": None,
                               "/julabo/status": None}.items():  # fmt: skip
        assert [c.measurement for c in (hv, lv) if c.topic_filter.match(topic)] == (
            [measurement] if measurement else []
        ), topic
    assert (hv.topic_tag, hv.tagexclude.patterns, lv.topic_tag) == ("topic", ("topic",), "topic")
    assert all(c.topic_tag == "" for c in conf.inputs[2:])
    assert sensor.topic_filter is None  # its tagpass looks at `kind`: every message is read
    assert conf.output == InfluxOutputConf(
        url="http://127.0.0.1:8086", database="trackerdcs", skip_database_creation=True
    )
    assert conf.agent.omit_hostname and conf.agent.flush_interval == 1.0
    assert conf.agent.metric_buffer_limit >= 100_000


def test_environment_substitution_follows_telegraf():
    env = {"SET": "x", "EMPTY": ""}
    commented = "# ${NOPE:?not here}\n"  # comments are left alone
    assert substitute_env(f'a = "${{SET}}" {commented}', env) == f'a = "x" {commented}'
    assert substitute_env('a = "${UNSET}"', env) == 'a = ""'
    assert substitute_env('a = "${EMPTY:-d}|${EMPTY-d}|${UNSET-d}"', env) == 'a = "d||d"'
    assert substitute_env('a = "# ${SET}"', env) == 'a = "# x"'  # not a comment: inside quotes
    with pytest.raises(TelegrafConfError, match="NEEDED: give it"):
        substitute_env('a = "${NEEDED:?give it}"', env)


def test_durations():
    assert parse_duration("10s") == 10 and parse_duration("1m30s") == 90
    assert parse_duration("500ms") == 0.5 and parse_duration(2) == 2.0
    for bad in ("10", "1 s", "s", True):
        with pytest.raises(ValueError):
            parse_duration(bad)


MINIMAL = """
[agent]
  flush_interval = "1s"
[[inputs.mqtt_consumer]]
  servers = ["tcp://127.0.0.1:1883"]
  topics = ["/hv/status"]
  data_format = "json"
[[outputs.influxdb]]
  urls = ["http://127.0.0.1:8086"]
"""


def test_a_minimal_file_takes_telegrafs_defaults():
    conf = parse_telegraf_conf(MINIMAL, "t.conf", env={})
    c = conf.inputs[0]
    assert (c.measurement, c.topic_tag, c.qos, c.max_undelivered_messages) == (
        "mqtt_consumer",
        "topic",
        0,
        1000,
    )
    assert conf.agent.metric_batch_size == 1000 and conf.agent.metric_buffer_limit == 10000
    assert conf.output.database == "telegraf" and conf.output.timeout == 5.0
    assert not conf.agent.omit_hostname


@pytest.mark.parametrize(
    "edit,message",
    [
        (("[agent]", '[agent]\n  precision = "1s"'), r"\[agent\]: option 'precision': not impl"),
        (('data_format = "json"', 'data_format = "json"\n  json_query = "a"'), "'json_query'"),
        (('data_format = "json"', 'data_format = "influx"'), "'data_format': .* 'json' only"),
        (('data_format = "json"', 'data_format = "json"\n  persistent_session = true'), "'persis"),
        (("tcp://127.0.0.1:1883\"]", 'tcp://a:1", "tcp://b:2"]'), "exactly one server"),
        (("tcp://127.0.0.1:1883", "ssl://127.0.0.1:8883"), "no TLS"),
        (('data_format = "json"', 'data_format = "json"\n  tag_keys = ["{a,b}"]'), "braces"),
        (('data_format = "json"', 'data_format = "json"\n  qos = 3'), "'qos': expected 0, 1"),
        (('flush_interval = "1s"', 'flush_interval = "soon"'), "'flush_interval'"),
        (("[[outputs.influxdb]]", '[[outputs.file]]\n  files = ["x"]\n[[outputs.influxdb]]'),
         r"\[\[outputs.file\]\] is not implemented"),
        (("[[outputs.influxdb]]", '[[inputs.cpu]]\n[[outputs.influxdb]]'), r"inputs.cpu"),
        (("[agent]", '[global_tags]\n  lab = "x"\n[agent]'), r"\[global_tags\] is not impl"),
        (('urls = ["http://127.0.0.1:8086"]', 'urls = ["http://127.0.0.1:8086"]\n  gzip = 1'),
         r"\[\[outputs.influxdb\]\]: option 'gzip'"),
        (("[[outputs.influxdb]]", "[[outputs.influxdb]\n"), "not valid TOML"),
    ],
)  # fmt: skip
def test_options_the_bridge_does_not_implement_are_refused(edit, message):
    old, new = edit
    assert old in MINIMAL
    with pytest.raises(TelegrafConfError, match=message) as info:
        parse_telegraf_conf(MINIMAL.replace(old, new, 1), "lab/telegraf.conf", env={})
    assert str(info.value).startswith("lab/telegraf.conf: ")


def test_the_first_problem_of_a_table_is_the_one_reported():
    """The first invalid option (`data_format` before the others: it decides what they mean),
    before an option the bridge does not implement; the latter's message lists the options."""
    bad = MINIMAL.replace('data_format = "json"', 'foo = 1\n  qos = 3\n  data_format = "influx"')
    with pytest.raises(TelegrafConfError, match="option 'data_format': the bridge implements"):
        parse_telegraf_conf(bad, env={})
    with pytest.raises(TelegrafConfError, match="option 'qos': expected 0, 1 or 2, got 3"):
        parse_telegraf_conf(bad.replace('"influx"', '"json"'), env={})
    with pytest.raises(TelegrafConfError, match=r"'foo': .*\(it implements: servers, topics, qos,"):
        parse_telegraf_conf(bad.replace('"influx"', '"json"').replace("qos = 3", ""), env={})


def test_the_bridge_refuses_to_start_on_such_a_file(tmp_path: Path):
    bad = tmp_path / "telegraf.conf"
    bad.write_text(MINIMAL.replace('data_format = "json"', 'data_format = "json"\n  foo = 1'))
    proc = subprocess.run(
        [sys.executable, "-m", "trackerdcs.ingest.bridge", "--config", str(bad)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert proc.returncode == 2
    assert f"{bad}: [[inputs.mqtt_consumer]] #1: option 'foo': not implemented" in proc.stderr


# -- the json parser (cases from Telegraf's parser documentation) -----------------------------
def parser(tag_keys=(), string_fields=()) -> JsonParser:
    return JsonParser(GlobFilter(tag_keys), GlobFilter(string_fields))


def test_json_flattens_keeps_numbers_as_floats_and_drops_strings():
    [(tags, fields, when)] = parser().parse(b'{"a": 5, "b": {"c": 6}, "ignored": "I\'m a string"}')
    assert tags == {} and fields == {"a": 5.0, "b_c": 6.0} and when is None  # no time key
    assert all(type(v) is float for v in fields.values())


def test_json_tags_and_string_fields():
    doc = {"a": 5, "b": {"c": 6, "my_field": "description"}, "my_tag_1": "foo", "on": True}
    [(tags, fields, _)] = parser(["my_tag_1"], ["b_my_field", "on"]).parse(json.dumps(doc))
    assert tags == {"my_tag_1": "foo"}
    assert fields == {"a": 5.0, "b_c": 6.0, "b_my_field": "description", "on": True}


def test_json_array_of_objects_is_one_metric_each():
    doc = [{"number": 0, "name": "a", "flags": ["ON", "RAMP_UP"]}, {"number": 1, "name": "b"}]
    metrics = parser(["number", "name"]).parse(json.dumps(doc))
    assert metrics == [
        ({"number": "0", "name": "a"}, {}, None),
        ({"number": "1", "name": "b"}, {}, None),
    ]
    [(_, fields, _)] = parser([], ["flags_*"]).parse(json.dumps(doc[:1]))
    assert fields == {"number": 0.0, "flags_0": "ON", "flags_1": "RAMP_UP"}  # arrays: key_N


def test_json_tag_values_are_formatted_like_go():
    doc = {"i": 3, "f": 0.5, "big": 1e21, "small": 1e-7, "neg": -0.0, "t": True, "s": "x"}
    [(tags, _, _)] = parser(["*"]).parse(json.dumps(doc))
    assert tags == {"i": "3", "f": "0.5", "big": "1000000000000000000000", "small": "0.0000001",
                    "neg": "-0", "t": "true", "s": "x"}  # fmt: skip
    assert go_format_float(100.0) == "100" and go_format_float(123.456) == "123.456"


def test_json_nulls_are_skipped():
    [(_, fields, _)] = parser().parse(b'{"a": null, "b": 1.5, "c": {"d": null}}')
    assert fields == {"b": 1.5}


@pytest.mark.parametrize(
    "payload",
    [b"not json", b'{"a": 1', b"[1, 2]", b'"text"', b"42", b'{"a": NaN}', b'{"a": Infinity}',
     b"\xff\xfe", b'[{"a": 1}, 3]', b'{"a": 1e999}', b'{"a": 1} {"b": 2}', b"true"],
)  # fmt: skip
def test_json_payloads_rejected_as_a_whole(payload):
    with pytest.raises(PayloadError):
        parser().parse(payload)


@pytest.mark.parametrize("payload", [b"", b"  \n", b"null", b"[]", b"\xef\xbb\xbf"])
def test_json_payloads_without_metrics(payload):
    assert parser().parse(payload) == []


# -- json_time_key / json_time_format (Telegraf 1.36: parsers/json, internal.ParseTimestamp) ----
def timed(format: str = "unix", tag_keys=()) -> JsonParser:
    return JsonParser(GlobFilter(tag_keys), GlobFilter(()), "time", format)


@pytest.mark.parametrize(
    ("value", "format", "ns"),
    [
        (1700000000, "unix", 1_700_000_000_000_000_000),
        # the float's exact binary value x 1e9, truncated: not the decimal's 1700000000100000000
        (1700000000.1, "unix", 1_700_000_000_099_999_904),
        (1717171717.123, "unix", 1_717_171_717_122_999_906),
        (0.5, "unix", 500_000_000),
        (-1.5, "unix", -1_500_000_000),  # Euclidean division: toward minus infinity
        (1e-10, "unix", 0),
        (1700000000123.0, "unix_ms", 1_700_000_000_123_000_000),
        (1700000000123456, "unix_us", 1_700_000_000_123_456_000),
        (1.5, "unix_ns", 1),
        ("1700000000.1", "unix", 1_700_000_000_100_000_000),  # a string is exact decimal
        ("1700000000,25", "unix", 1_700_000_000_250_000_000),  # `,` is a decimal point too
        (" 17 00000000 ", "unix", 1_700_000_000_000_000_000),  # spaces removed
        ("3/2", "unix", 1_500_000_000),
        ("1.7e9", "unix", 1_700_000_000_000_000_000),
    ],
)  # fmt: skip
def test_time_key_gives_telegrafs_exact_nanoseconds(value, format, ns):
    [(_, fields, when)] = timed(format).parse(json.dumps({"time": value, "v": 1.0}))
    assert when == ns and fields == {"v": 1.0}  # the time key is no field
    assert unix_timestamp(value, UNIX_FORMATS[format]) == ns


def test_time_key_equals_the_exact_rational_floor_for_any_float():
    from fractions import Fraction

    @given(st.floats(min_value=-9e9, max_value=9e9))
    def check(t: float) -> None:
        assert unix_timestamp(t, 10**9) == math.floor(Fraction(t) * 10**9)

    check()


def test_time_key_is_neither_tag_nor_field_and_may_be_nested():
    [metric] = timed(tag_keys=["*"]).parse(b'{"time": 2.0, "name": "a"}')
    assert metric == ({"name": "a"}, {}, 2_000_000_000)
    parser = JsonParser(GlobFilter(()), GlobFilter(()), "meta_t", "unix")
    [metric] = parser.parse(b'{"meta": {"t": 3}, "v": 1}')
    assert metric == ({}, {"v": 1.0}, 3_000_000_000)


def test_every_object_of_an_array_needs_the_time_key():
    ok = [{"time": 1.0, "v": 1}, {"time": 2.0, "v": 2}]
    assert [when for _, _, when in timed().parse(json.dumps(ok))] == [10**9, 2 * 10**9]
    for doc in ([{"time": 1.0}, {"v": 2}], {"v": 1}, {"time": None}, {"time": {"a": 1}}):
        with pytest.raises(PayloadError, match="JSON time key could not be found"):
            timed().parse(json.dumps(doc))  # json_strict (Telegraf's default): all or nothing


@pytest.mark.parametrize("value", [True, "2024-05-01T08:00:00Z", "1.5.5", "1/0", "", "٣", 1e300])
def test_unusable_times_reject_the_message(value):
    with pytest.raises(PayloadError):
        timed().parse(json.dumps({"time": value, "v": 1}))


def test_time_options_are_checked_when_the_file_is_read():
    base = 'data_format = "json"\ntopics = ["/x"]\n'
    table = "[[inputs.mqtt_consumer]]\n{}[[outputs.influxdb]]\n"
    conf = parse_telegraf_conf(table.format(base + 'json_time_key = "time"\n'
                                            'json_time_format = "unix_ms"\n'), env={})  # fmt: skip
    assert (conf.inputs[0].time_key, conf.inputs[0].time_format) == ("time", "unix_ms")
    with pytest.raises(TelegrafConfError, match="requires 'json_time_format'"):
        parse_telegraf_conf(table.format(base + 'json_time_key = "time"\n'), env={})
    with pytest.raises(TelegrafConfError, match="not Go time layouts"):
        parse_telegraf_conf(table.format(base + 'json_time_key = "t"\n'
                                         'json_time_format = "2006-01-02"\n'), env={})  # fmt: skip


# -- line protocol ------------------------------------------------------------------------------
def test_line_protocol_as_telegraf_serializes():
    s = LineSerializer("hv")
    line = s.line(
        {"name": "hv m,1", "module": "", "number": "0", "k=": "v\\"},
        {"vmon": 100.0, "imon": 1e-7, "state": 'say "hi"\n', "ok": True, "": 1.0},
        "17",
    )
    assert line == (
        'hv,k\\==v,name=hv\\ m\\,1,number=0 vmon=100,imon=0.0000001,state="say \\"hi\\"\\n",'
        "ok=true 17\n"
    )
    assert s.line({"a": "b"}, {}, "1") is None  # no fields: no line
    assert LineSerializer("my meas,x").line({}, {"v": 1.5}, "1") == "my\\ meas\\,x v=1.5 1\n"


def test_unique_clock_never_repeats():
    clock = UniqueClock()
    stamps = [clock.now() for _ in range(10000)]
    assert stamps == sorted(set(stamps))


# -- the buffer ---------------------------------------------------------------------------------
def test_buffer_drops_the_oldest_beyond_its_limit():
    b = MetricBuffer(limit=5, batch_size=2)
    for i in range(4):
        b.add([f"m{i}a\n", f"m{i}b\n"])
    assert b.snapshot() == {"metrics": 8, "written": 0, "dropped": 3, "buffered": 5}
    assert b.take() == ["m1b\n", "m2a\n"]
    assert b.undelivered_messages == 3  # m1 (half dropped, half in flight), m2, m3


def test_buffer_retries_a_rejected_batch_first_and_tracks_delivery():
    b = MetricBuffer(limit=100, batch_size=3)
    b.add(["a\n", "b\n"])
    b.add(["c\n", "d\n"])
    batch = b.take()
    b.reject(batch)
    assert b.take() == ["a\n", "b\n", "c\n"]
    b.accept(["a\n", "b\n", "c\n"], written=2)  # InfluxDB kept 2 of 3
    assert b.snapshot() == {"metrics": 4, "written": 2, "dropped": 1, "buffered": 1}
    assert b.undelivered_messages == 1
    assert not b.wait_undelivered_below(1, 0.01)
    b.accept(b.take())
    assert b.wait_undelivered_below(1, 0.01)


# -- the writer against a real InfluxDB --------------------------------------------------------
@pytest.fixture(scope="module")
def influx(workdir):
    server = InfluxServer(workdir).start()
    yield server
    server.stop()


def test_writer_keeps_what_influxdb_refuses_for_good_out_and_retries_the_rest(influx):
    conf = InfluxOutputConf(url=influx.url, database="trackerdcs", skip_database_creation=True)
    buffer = MetricBuffer(limit=1000, batch_size=10)
    writer = InfluxWriter(conf, buffer, flush_interval=1.0)
    now = time.time_ns()
    buffer.add([f"wtest,name=a v=1 {now}\n", f"wtest,name=a v=2 {now + 1}\n"])
    assert writer.flush() and buffer.snapshot()["written"] == 2
    buffer.add([f'wtest,name=a v="text" {now + 2}\n', f"wtest,name=a v=4 {now + 3}\n"])
    assert writer.flush()  # a field type conflict: InfluxDB writes what it can, the rest is gone
    assert buffer.snapshot() == {"metrics": 4, "written": 3, "dropped": 1, "buffered": 0}
    buffer.add(["wtest,name=a v=5 1000000000\n"])  # 1970: beyond the retention policy
    assert writer.flush()
    assert buffer.snapshot() == {"metrics": 5, "written": 3, "dropped": 2, "buffered": 0}
    assert influx.client.count("wtest", "v") == 3

    down = InfluxOutputConf(url=f"http://127.0.0.1:{free_port()}", database="trackerdcs")
    buffer2 = MetricBuffer(limit=1000, batch_size=10)
    buffer2.add(["wtest v=5 5\n"])
    assert not InfluxWriter(down, buffer2, 1.0).flush()  # nobody listens: kept for a retry
    assert buffer2.snapshot()["buffered"] == 1
    with pytest.raises(WriteError):
        InfluxWriter(down, buffer2, 1.0).write(["wtest v=5 5\n"])


def test_writer_creates_a_missing_database_unless_told_not_to(influx):
    for skip, exists in ((True, False), (False, True)):
        conf = InfluxOutputConf(url=influx.url, database="fresh", skip_database_creation=skip)
        with pytest.raises(WriteError, match="database not found"):
            InfluxWriter(conf, MetricBuffer(10, 10), 1.0).write(["x v=1 1\n"])
        names = [r["name"] for s in influx.client.series("SHOW DATABASES") for r in s.rows()]
        assert ("fresh" in names) is exists
    influx.client.execute('DROP DATABASE "fresh"', database="")


# -- the buffered paho client -------------------------------------------------------------------
@pytest.mark.parametrize("client_class", [FastClient, mqtt.Client], ids=["fast", "plain"])
def test_the_client_receives_every_message_whatever_its_size(broker, client_class):
    """Both clients the consumer may read with: `FastClient`, and paho's own (its fallback)."""
    sizes = [10, 1000, 70_000, 300_000, 5, 200_000] + [64] * 3000
    got: list[bytes] = []
    done = threading.Event()
    subscribed = threading.Event()

    def on_message(client, userdata, msg):
        got.append(msg.payload)
        if len(got) == len(sizes):
            done.set()

    sub = client_class(CallbackAPIVersion.VERSION2, client_id="fast-test", protocol=mqtt.MQTTv311)
    sub.on_message = on_message
    sub.on_connect = lambda c, *a: c.subscribe("/fast/#", 0)
    sub.on_subscribe = lambda *a: subscribed.set()
    sub.connect("127.0.0.1", broker.port)
    sub.loop_start()
    pub = broker.client()
    try:
        assert subscribed.wait(5)
        payloads = [bytes([65 + i % 26]) * n for i, n in enumerate(sizes)]
        for p in payloads:
            pub.client.publish("/fast/x", p, qos=0)
        assert done.wait(20), f"got {len(got)} of {len(sizes)}"
        assert got == payloads
    finally:
        pub.close()
        sub.disconnect()
        sub.loop_stop()


def test_the_consumer_falls_back_to_paho_s_client_without_its_internals(monkeypatch, caplog):
    """A paho without one of the internals `FastClient` uses (simulated: one more name to need):
    the consumer reads with paho's own client, said once in the log; this paho has them all."""
    conf = parse_telegraf_conf(MINIMAL, env={})
    buffer = MetricBuffer(100, 10)
    assert consumer_module.missing_internals() == []
    assert type(MqttConsumer(conf.inputs[0], conf.agent, buffer, UniqueClock()).client) is (
        FastClient
    )
    monkeypatch.setattr(
        consumer_module,
        "FAST_CLIENT_INTERNALS",
        (*consumer_module.FAST_CLIENT_INTERNALS, "_gone_in_paho_3"),
    )
    monkeypatch.setattr(consumer_module, "_fallback_logged", False)
    with caplog.at_level("WARNING", logger=consumer_module.__name__):
        clients = [MqttConsumer(conf.inputs[0], conf.agent, buffer, UniqueClock()).client
                   for _ in range(2)]  # fmt: skip
    assert [type(c) for c in clients] == [mqtt.Client, mqtt.Client]
    [record] = caplog.records
    assert "lacks _gone_in_paho_3: reading with paho's own client" in record.getMessage()


def test_the_environment_can_choose_paho_s_client(monkeypatch):
    monkeypatch.setenv(consumer_module.CLIENT_ENV, "plain")
    assert consumer_module.client_class() is mqtt.Client
    monkeypatch.setenv(consumer_module.CLIENT_ENV, "")
    assert consumer_module.client_class() is FastClient


# -- the lab YAML's influx section --------------------------------------------------------------
@pytest.mark.parametrize(
    "influx,message",
    [
        ({"raw_retention": "30 days"}, "expected an InfluxQL duration"),
        ({"raw_retention": "30m"}, "at least 1h"),
        ({"downsample_interval": "2d", "raw_retention": "1d"}, "shorter than raw_retention"),
        ({"downsampled_retention": "1d"}, "at least raw_retention"),
        ({"rpc_port": 8086}, "must differ"),
        ({"bucket": "x"}, "influx.bucket: unknown key"),
    ],
)
def test_influx_section_is_validated(influx, message):
    with pytest.raises(ConfigError, match=message):
        parse_config({"influx": influx}, "lab.yml")


def test_influx_section_defaults_and_durations():
    cfg = parse_config({"influx": {"raw_retention": "2w", "downsampled_retention": "520w"}}).influx
    assert (cfg.url, cfg.rpc_port, cfg.downsample_interval) == ("http://127.0.0.1:8086", 8088, "1m")
    assert influx_seconds("1h30m") == 5400 and influx_seconds("INF") == float("inf")


# -- the consumer's delivery limit ----------------------------------------------------------------
def test_no_message_is_read_while_max_undelivered_messages_wait_for_influxdb():
    conf = parse_telegraf_conf(
        MINIMAL.replace(
            'data_format = "json"', 'data_format = "json"\n  max_undelivered_messages = 2'
        ),
        env={},
    )
    buffer = MetricBuffer(limit=100, batch_size=10)
    consumer = MqttConsumer(conf.inputs[0], conf.agent, buffer, UniqueClock())
    msg = mqtt.MQTTMessage(topic=b"/hv/status")
    msg.payload = b'{"v": 1}'
    for _ in range(2):
        consumer._on_message(None, None, msg)
    third = threading.Thread(target=consumer._on_message, args=(None, None, msg), daemon=True)
    third.start()
    third.join(0.3)
    assert third.is_alive() and consumer.received == 2  # held back: two undelivered
    buffer.accept(buffer.take())  # InfluxDB took them
    third.join(5)
    assert not third.is_alive() and consumer.received == 3
    [line] = buffer.take()
    assert line.startswith("mqtt_consumer,host=") and ",topic=/hv/status v=1 " in line


def test_a_payload_that_breaks_the_parser_is_skipped_not_fatal(monkeypatch):
    conf = parse_telegraf_conf(MINIMAL, env={})
    consumer = MqttConsumer(conf.inputs[0], conf.agent, MetricBuffer(100, 10), UniqueClock())
    deep = b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    consumer.handle("/hv/status", deep)

    def broken(payload):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(consumer.parser, "metrics", broken)
    consumer.handle("/hv/status", b"{}")
    assert consumer.rejected == 2


def test_a_status_delivered_again_makes_the_same_point():
    """The repo's telegraf.conf: a retained status re-delivered (the bridge restarted) gives the
    same line, timestamp included, which InfluxDB overwrites instead of adding a point."""
    conf = load_telegraf_conf(TELEGRAF_CONF, env={})
    hv = next(c for c in conf.inputs if c.measurement == "hv")
    buffer = MetricBuffer(limit=100, batch_size=100)
    consumer = MqttConsumer(hv, conf.agent, buffer, UniqueClock())
    status = [{"number": 0, "name": "hv_m1", "module": "M1", "on": 1, "vmon": 99.5,
               "state": "ON", "time": 1717171717.123}]  # fmt: skip
    for _ in range(2):
        consumer.handle("/hv/status", json.dumps(status).encode())
    first, second = buffer.take()
    assert (
        first
        == second
        == ('hv,module=M1,name=hv_m1,number=0 on=1,vmon=99.5,state="ON" 1717171717122999906\n')
    )
    consumer.handle("/hv/status", json.dumps([{**status[0], "time": None}]).encode())
    assert consumer.rejected == 1 and buffer.take() == []  # no time: rejected, as Telegraf


def test_the_topic_picks_the_crates_and_is_no_tag_of_the_points(monkeypatch):
    """The repo's telegraf.conf: every crate's `/hvN/status` lands in `hv`, selected by the topic
    (tagpass) and without it as a tag (tagexclude); another topic is not even parsed."""
    conf = load_telegraf_conf(TELEGRAF_CONF, env={})
    hv = next(c for c in conf.inputs if c.measurement == "hv")
    buffer = MetricBuffer(limit=100, batch_size=100)
    consumer = MqttConsumer(hv, conf.agent, buffer, UniqueClock())
    status = [{"number": 0, "name": "hv1_m1", "module": "M1", "vmon": 9.5, "time": 1.5}]
    consumer.handle("/hv1/status", json.dumps(status).encode())
    assert buffer.take() == ["hv,module=M1,name=hv1_m1,number=0 vmon=9.5 1500000000\n"]
    monkeypatch.setattr(consumer.parser, "metrics", lambda data: pytest.fail("parsed"))
    monkeypatch.setattr("trackerdcs.ingest.consumer.decode", lambda p: pytest.fail("decoded"))
    for topic in ("/lv1/status", "/sensor_1/status", "/hvac/status"):
        consumer.handle(topic, json.dumps(status).encode())
    assert buffer.take() == [] and consumer.rejected == 0


def test_inputs_reading_the_same_topics_share_one_connection():
    """telegraf.conf's crates, chillers and sensors all read /+/status: one connection, each
    message decoded once, every input's own metrics and counts, as with a connection each."""
    conf = load_telegraf_conf(ROOT / "telegraf.conf", env={})
    shared = [c for c in conf.inputs if c.topics == ("/+/status",)]
    assert [c.measurement for c in shared] == ["hv", "lv", "julabo", "sensor"]
    assert shares_connection(*shared[2:]) and not shares_connection(conf.inputs[-1], shared[0])
    consumers = Bridge(conf, status_prefix=None).consumers
    assert [[i.conf.measurement for i in c.inputs] for c in consumers] == [
        ["hv", "lv", "julabo", "sensor"], ["ivscan"]
    ]  # fmt: skip
    buffer = MetricBuffer(100, 10)
    consumer = MqttConsumer(shared, conf.agent, buffer, UniqueClock())
    chiller = {"chiller": "burnin", "state": "RUNNING", "bath_temp": -5.0, "running": 1,
               "time": 1717171717.0}  # fmt: skip
    sensor = {"name": "temp_m3", "kind": "module", "module": "M3", "temperature": -4.5,
              "time": 1717171717.0}  # fmt: skip
    for status in (chiller, sensor):
        msg = mqtt.MQTTMessage(topic=b"/x/status")
        msg.payload = json.dumps(status).encode()
        consumer._on_message(None, None, msg)
    consumer.handle("/x/status", b"not json")
    lines = sorted(buffer.take())
    assert [line.split(" ")[0] for line in lines] == [
        "julabo,chiller=burnin", "sensor,kind=module,module=M3,name=temp_m3"
    ]  # fmt: skip
    # once per input, as Telegraf; `/x/status` is neither a crate's HV nor its LV: hv and lv
    # neither parse it nor count it rejected
    assert consumer.received == 8 and consumer.rejected == 2
    with pytest.raises(ValueError, match="one consumer each"):
        MqttConsumer([conf.inputs[-1], shared[0]], conf.agent, buffer, UniqueClock())


def test_objects_that_cannot_pass_tagpass_are_not_parsed(monkeypatch):
    """The chillers' and sensors' inputs read every crate's status: its channel objects have no
    `chiller` or `kind` key and are not even parsed (a lone object is, so that a flaw in it is
    counted); what lands is what Telegraf would store, a nested value that flattens to a
    tagpass key included."""
    conf = parse_telegraf_conf(
        MINIMAL.replace('flush_interval = "1s"', 'flush_interval = "1s"\n  omit_hostname = true')
        .replace('data_format = "json"', 'data_format = "json"\n  topic_tag = ""\n'
                 '  tag_keys = ["kind", "where_room"]\n'
                 '  [inputs.mqtt_consumer.tagpass]\n    kind = ["room"]\n'
                 '    where_room = ["*"]'),
        env={},
    )  # fmt: skip
    [c] = conf.inputs
    buffer = MetricBuffer(limit=100, batch_size=100)
    consumer = MqttConsumer(c, conf.agent, buffer, UniqueClock())
    [i] = consumer.inputs
    assert i.needs == {"kind", "where_room"}
    channel = {"number": 0, "name": "hv_m1", "flags": ["ON"], "vmon": 1.0}
    room = {"kind": "room", "t": 20.5}
    nested = {"where": {"room": "b40"}, "t": 21.5}
    consumer.handle("/x/status", json.dumps([channel, room, nested, channel]).encode())
    assert [line.rsplit(" ", 1)[0] for line in buffer.take()] == [
        "mqtt_consumer,kind=room t=20.5", "mqtt_consumer,where_room=b40 t=21.5"
    ]  # fmt: skip
    parsed = []
    monkeypatch.setattr(i.parser, "_metric", lambda obj: parsed.append(obj) or ({}, {}, None))
    consumer.handle("/hv/status", json.dumps([channel] * 3).encode())
    assert parsed == [] and i.rejected == 0
    consumer.handle("/x/status", json.dumps(channel).encode())  # a lone object: parsed
    assert parsed == [channel]
    consumer.handle("/x/status", json.dumps([channel, 5]).encode())  # not an array of objects
    assert i.rejected == 1


def test_the_availability_is_online_again_after_the_broker_restarts(workdir):
    """The consumer with the last will publishes `online` at every connect: a broker restarted
    without persistence has lost it (found by a user: `/ingest/availability` was missing after
    a broker restart while every daemon's was back)."""
    broker = Broker(workdir).start()
    conf = parse_telegraf_conf(
        MINIMAL.replace("tcp://127.0.0.1:1883", f"tcp://127.0.0.1:{broker.port}"), env={}
    )
    will = ("/ingest/availability", "offline")
    consumer = MqttConsumer(conf.inputs[0], conf.agent, MetricBuffer(100, 10), UniqueClock(),
                            will=will)  # fmt: skip
    try:
        consumer.start()
        assert consumer.connected.wait(10)
        for restart in range(2):
            watcher = broker.client(topics=(will[0],))
            try:
                watcher.wait_for(will[0], lambda m: m.text == "online", timeout=10)
            finally:
                watcher.close()
            if restart == 0:
                broker.stop()
                broker.start()  # nothing retained now: the consumer says it again
    finally:
        consumer.stop()
        broker.stop()
