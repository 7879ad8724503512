"""Every parser is total (issue 11): for any input it returns a valid value or raises the
project's own error with a bounded message, and no number it yields is NaN or infinite.

Property-based (hypothesis, the suite's fixed derandomized profile in conftest.py), in-process;
the inputs the issue reports are kept as explicit examples. Parsers: command payloads and topics
(every service's handlers: each command gets exactly one answer, no unexpected exception), Julabo
replies, sensor lines, the lab YAML, telegraf.conf, status payloads through the ingest, the
statuses the safety services read, the alarm detectors, the audit query times, board-model and
Julabo settings.
"""

from __future__ import annotations

import asyncio
import json
import math
import string
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import example, given
from hypothesis import strategies as st
from pydantic import BaseModel

from tests.inprocess import (
    EXAMPLE_LAB,
    FakeBackend,
    FakeLine,
    RecordingLink,
    command,
    example_lab,
    settle,
    submit,
)
from trackerdcs import labyaml
from trackerdcs.commands import CommandError, parse_number, parse_switch
from trackerdcs.config import ConfigError, LabConfig, load_config, parse_config
from trackerdcs.guard import CLIP, FAULTS, JsonError, loads
from trackerdcs.ingest.conf import TelegrafConfError, conf_from_data, parse_telegraf_conf
from trackerdcs.ingest.filters import GlobFilter
from trackerdcs.ingest.jsonparse import JsonParser, PayloadError
from trackerdcs.ingest.lineproto import LineSerializer
from trackerdcs.julabo.device import decode
from trackerdcs.julabo.models import PARAMETERS
from trackerdcs.julabo.protocol import JulaboProtocol, JulaboStatus, ProtocolError
from trackerdcs.labyaml import LabLoader, YamlFileError, parse_yaml
from trackerdcs.mqtt import Command
from trackerdcs.mqtt import PayloadError as CommandPayloadError
from trackerdcs.power.boards import BOARD_MODELS
from trackerdcs.safety.alarms import DETECTORS
from trackerdcs.safety.clock import parse_when
from trackerdcs.safety.world import World
from trackerdcs.sensors.lineformat import LineError, parse_line

MESSAGE_LIMIT = 1200  # characters: no error message echoes a big input

# -- inputs --------------------------------------------------------------------------------------
json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)  # fmt: skip
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)  # fmt: skip
lone_surrogates = st.integers(0xD800, 0xDFFF).map(chr)
numberish = st.one_of(
    st.integers().map(str), st.floats().map(repr), st.sampled_from([
        "1" * 309, "1" * 4300, "9" * 5001, "1e400", "-1e400", "NaN", "nan", "inf", "Infinity",
        "²", "\u0661\u0660\u0660", "1_000", "0x10", " 12 ", "", "-", ".", "1e", "+.5",
    ]),
)  # fmt: skip


def payloads() -> st.SearchStrategy[str]:
    """What a command payload may be: text, JSON of any shape, the edge cases of numbers."""
    wrapped = st.fixed_dictionaries(
        {}, optional={"value": json_values | numberish, "id": json_values, "time": json_values}
    ).map(json.dumps)
    return st.one_of(st.text(max_size=40), numberish, wrapped, json_values.map(json.dumps))


EXAMPLE_PAYLOADS = [
    "1" * 309, "1" * 4300, "[" * 1000 + "]" * 1000, '{"value": ' + "1" * 309 + "}",
    '{"value": ' + "1" * 4300 + "}", '{"value": ' + "[" * 1000 + "]" * 1000 + "}",
    '{"value": 1, "time": 1e400}', '{"value": 1, "time": ' + "9" * 400 + "}",
    '{"value": NaN}', '{"value": "\\ud800", "id": "\\udfff"}', '{"id": {"a": [1]}}', "x" * 100_000,
]  # fmt: skip


def short_id(value: Any) -> str:
    """A readable test id for a big input."""
    text = str(value)
    return text if len(text) <= 24 else f"{text[:12]}..{len(text)}"


def bounded(message: str) -> None:
    assert len(message) <= MESSAGE_LIMIT, message[:200]


def finite_everywhere(value: Any) -> None:
    """No float anywhere in `value` (a model, a dict, a list) is NaN or infinite."""
    if isinstance(value, float):
        assert math.isfinite(value), value
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            finite_everywhere(getattr(value, name))
    elif isinstance(value, dict):
        for v in value.values():
            finite_everywhere(v)
    elif isinstance(value, list | tuple):
        for v in value:
            finite_everywhere(v)


# -- commands: the payload and the value parsers -------------------------------------------------
@given(payloads())
@example("\u0661\u0662")
def test_a_command_payload_decodes_or_is_refused(payload: str) -> None:
    cmd = Command("/hv/cmd/setv/0", "setv/0", payload)
    try:
        value, request_id = cmd.decoded()
        sent = cmd.sent()
    except CommandPayloadError as exc:
        bounded(str(exc))
        return
    assert request_id is None or (isinstance(request_id, str) and len(request_id) <= 200)
    assert sent is None or math.isfinite(sent)
    finite_everywhere(value)
    try:
        number = parse_number(value, "voltage")
    except CommandError as exc:
        bounded(str(exc))
    else:
        assert math.isfinite(number)
    try:
        assert parse_switch(value) in (True, False)
    except CommandError as exc:
        bounded(str(exc))


@pytest.mark.parametrize(
    "text",
    ["\u0663", "²", "\u0661\u0660\u0660", "1_000", "nan", "-inf", "1e400", "9" * 400],
    ids=short_id,
)
def test_non_ascii_digits_and_non_finite_text_are_not_numbers(text: str) -> None:
    with pytest.raises(CommandError):
        parse_number(text, "voltage")
    with pytest.raises(CommandError):
        parse_number(int("9" * 400), "voltage")  # a JSON integer beyond any float


# -- commands: every service's handlers, end to end in-process -----------------------------------
class Services:
    """Every command-taking service of the example lab, in-process (tests/inprocess.py)."""

    def __init__(self, tmp: Path) -> None:
        from trackerdcs.julabo.fsm import Chiller
        from trackerdcs.julabo.fsm import make_machine as chiller_machine
        from trackerdcs.julabo.service import JulaboService
        from trackerdcs.power.channel import PowerChannel, make_machine
        from trackerdcs.power.service import PowerService
        from trackerdcs.safety.alarms import AlarmService
        from trackerdcs.safety.audit import AuditService
        from trackerdcs.safety.interlock import InterlockService
        from trackerdcs.safety.sequencer import SequencerService
        from trackerdcs.safety.store import Store
        from trackerdcs.sensors.sensor import SensorState
        from trackerdcs.sensors.service import SensorService

        lab = example_lab()
        self.loop = asyncio.new_event_loop()
        self.handlers: dict[str, tuple[RecordingLink, Any]] = {}
        crate = lab.crates[0]
        channels = [PowerChannel(ch, lab.limits_for(ch), lab.board_of(ch).spec)
                    for ch in lab.channels_of(crate.name)]  # fmt: skip
        make_machine(channels)
        self.backend = FakeBackend()
        for kind, prefix in crate.prefixes.items():
            link = RecordingLink(lab, prefix)
            service = PowerService(kind, prefix, [c for c in channels if c.cfg.kind == kind],
                                   self.backend, link, lab.power.publish, self.loop)  # fmt: skip
            self.handlers[prefix] = (link, service.handle_command)
        assert lab.julabo is not None
        chiller = Chiller(lab.julabo.url)
        chiller_machine(chiller)
        link = RecordingLink(lab, lab.julabo.prefix)
        self.line = FakeLine()
        julabo = JulaboService(lab.julabo, chiller, self.line, link, self.loop)
        self.handlers[lab.julabo.prefix] = (link, julabo.handle_command)
        sensor = SensorService(SensorState(lab.sensors[0]), lab.mqtt, "test", self.loop)
        link = RecordingLink(lab, lab.sensors[0].prefix)
        sensor.link = link
        self.handlers[lab.sensors[0].prefix] = (link, sensor.handle_command)
        link = RecordingLink(lab, "/interlock")
        self.handlers["/interlock"] = (link, InterlockService(lab, link, self.loop).handle_command)
        self.store = Store(str(tmp / "alarms.sqlite"))
        link = RecordingLink(lab, "/alarms")
        self.handlers["/alarms"] = (link, AlarmService(lab, self.store, link).handle_command)
        link = RecordingLink(lab, "/audit")
        self.handlers["/audit"] = (link, AuditService(lab, self.store, link).handle_command)
        link = RecordingLink(lab, "/dcs")
        self.sequencer = SequencerService(lab, link, self.loop)
        self.handlers["/dcs"] = (link, self.sequencer.handle_command)

    def run(self, prefix: str, action: str, payload: str) -> list[dict[str, Any]]:
        """The answers to one command (the sequences it starts cancelled at once)."""
        link, handler = self.handlers[prefix]
        link.sent.clear()
        submit(link, handler, command(prefix, action, payload))
        for _, task in list(self.sequencer.running.values()):
            task.cancel()
        settle(self.loop)
        return link.answers()

    def close(self) -> None:
        self.sequencer.stop()
        settle(self.loop)
        self.loop.close()
        self.store.close()


@pytest.fixture(scope="module")
def services():
    with tempfile.TemporaryDirectory() as tmp:
        s = Services(Path(tmp))
        yield s
        s.close()


PREFIXES = ["/hv", "/lv", "/julabo", "/sensor_1", "/interlock", "/alarms", "/audit", "/dcs"]
ACTIONS = st.one_of(
    st.sampled_from(["setv/0", "setv/all", "seti/M1", "switch/hv_m1", "kill/M2", "clear",
                     "refresh", "reconnect", "setpoint", "switch", "reset/chiller_running",
                     "ack/all", "ack/1", "query", "module/M1", "module/all", "setv/²",
                     "setv/" + "1" * 4301, "switch/" + "9" * 20]),
    st.lists(st.text(alphabet=string.printable + "²\u0661é", max_size=12), min_size=1,
             max_size=3).map("/".join),
)  # fmt: skip


@given(st.sampled_from(PREFIXES), ACTIONS, payloads())
def test_every_command_gets_exactly_one_answer(services, prefix, action, payload) -> None:
    answers = services.run(prefix, action, payload)
    assert len(answers) == 1, answers
    answer = answers[0]
    assert answer["ok"] or (isinstance(answer["error"], str) and answer["error"])
    bounded(answer["error"] or "")
    assert FAULTS.total == 0, FAULTS.last  # nothing raised but the project's own errors


@pytest.mark.parametrize("payload", EXAMPLE_PAYLOADS, ids=short_id)
@pytest.mark.parametrize("prefix, action", [
    ("/hv", "setv/0"), ("/hv", "setv/²"), ("/hv", "setv/" + "1" * 4301), ("/julabo", "setpoint"),
    ("/dcs", "module/M1"), ("/audit", "query"), ("/alarms", "ack/1"), ("/interlock", "refresh"),
], ids=short_id)  # fmt: skip
def test_the_issue_commands_get_an_answer(services, prefix, action, payload) -> None:
    answers = services.run(prefix, action, payload)
    assert len(answers) == 1 and FAULTS.total == 0, (answers, FAULTS.last)
    bounded(answers[0]["error"] or "")


def test_refused_commands_write_nothing(services) -> None:
    services.backend.writes.clear()
    for payload in [*EXAMPLE_PAYLOADS, "nan", "inf", "1e400", "²", "\u0661\u0660\u0660"]:
        (answer,) = services.run("/hv", "setv/0", payload)
        assert not answer["ok"]
    (answer,) = services.run("/hv", "setv/²", "10")
    assert not answer["ok"] and "unknown channel" in answer["error"]
    assert services.backend.writes == []


# -- Julabo replies ------------------------------------------------------------------------------
replies = st.one_of(
    st.text(max_size=30), numberish, st.sampled_from(["---.--", "-08 INVALID COMMAND", "3", "-1"]),
    st.from_regex(r"-?[0-9]{1,20}(\.[0-9]{0,20})?", fullmatch=True),
)  # fmt: skip


@given(st.sampled_from(sorted(PARAMETERS)), replies)
@example("active_setpoint", "3")  # IN_MODE_01 answering 3 (a flipped bit in 1)
@example("bath_temperature", "9" * 400)
def test_a_julabo_reply_decodes_or_is_a_protocol_error(name: str, reply: str) -> None:
    parameter = PARAMETERS[name]
    try:
        value = decode(parameter, "IN_XX", reply)
    except ProtocolError as exc:
        bounded(str(exc))
        return
    if value is not None:
        low, high = parameter.reading_range
        assert math.isfinite(value) and low <= value <= high


def test_in_mode_01_answering_3_is_garbled_not_set_point_4() -> None:
    with pytest.raises(ProtocolError, match=r"outside 0\.\.2"):
        decode(PARAMETERS["active_setpoint"], "IN_MODE_01", "3")


@given(st.binary(max_size=300))
def test_a_julabo_line_decodes_or_is_a_protocol_error(raw: bytes) -> None:
    try:
        text = JulaboProtocol._decode("IN_PV_00", raw)
    except ProtocolError as exc:
        bounded(str(exc))
        return
    try:
        status = JulaboStatus.parse(text)
    except ProtocolError as exc:
        bounded(str(exc))
    else:
        assert -999 <= status.code <= 999 and str(status)


# -- sensor lines --------------------------------------------------------------------------------
lines = st.one_of(
    st.text(max_size=300),
    st.builds(lambda t, h: f"T={t} RH={h}", numberish, numberish),
    st.sampled_from(["T=\u0662\u0661 RH=\u0664\u0665", "T=²", "T=21.5 RH=100.2",
                     "T=21.5 RH=-0.1", "T=1e400"]),
)  # fmt: skip


@given(lines, st.booleans())
def test_a_sensor_line_parses_or_is_a_line_error(line: str, humidity: bool) -> None:
    try:
        reading = parse_line(line, humidity=humidity)
    except LineError as exc:
        bounded(str(exc))
        return
    assert math.isfinite(reading.temperature) and -80 <= reading.temperature <= 150
    if humidity:
        assert reading.humidity is not None and 0 <= reading.humidity <= 100


# -- the lab YAML --------------------------------------------------------------------------------
@given(st.text(max_size=200))
@example("a: 1\na: 2\n")
@example("[" * 200 + "]" * 200)
@example("x: " + "9" * 5001)
@example("when: 2024-02-31\n")
def test_any_yaml_text_parses_or_is_a_yaml_file_error(text: str) -> None:
    try:
        parse_yaml(text, "lab.yml")
    except YamlFileError as exc:
        bounded(str(exc))
        assert str(exc).startswith("lab.yml: ")


EXAMPLE_DATA = yaml.safe_load(EXAMPLE_LAB.read_text())
SPECIAL = st.one_of(
    json_scalars, st.sampled_from([float("nan"), float("inf"), -float("inf"), "1e400", "nan",
                                   "²", 10**400, "x" * 10_000, [], {}]),
)  # fmt: skip


def _paths(data: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path of the example lab's data."""
    out = [prefix] if prefix else []
    if isinstance(data, dict):
        for k, v in data.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            out += _paths(v, (*prefix, i))
    return out


EXAMPLE_PATHS = _paths(EXAMPLE_DATA)


def _replace(data: Any, path: tuple, value: Any) -> Any:
    if not path:
        return value
    copy = dict(data) if isinstance(data, dict) else list(data)
    copy[path[0]] = _replace(copy[path[0]], path[1:], value)
    return copy


@given(st.sampled_from(EXAMPLE_PATHS), SPECIAL)
def test_a_lab_with_any_value_anywhere_loads_finite_or_is_a_config_error(path, value) -> None:
    try:
        cfg = parse_config(_replace(EXAMPLE_DATA, path, value), "lab.yml")
    except ConfigError as exc:
        bounded(str(exc))
        return
    finite_everywhere(cfg)


def _float_fields(model: type[BaseModel], seen: set) -> list[type[BaseModel]]:
    out = [model]
    seen.add(model)
    for field in model.model_fields.values():
        for arg in _types(field.annotation):
            if isinstance(arg, type) and issubclass(arg, BaseModel) and arg not in seen:
                out += _float_fields(arg, seen)
    return out


def _types(annotation: Any) -> list[Any]:
    args = getattr(annotation, "__args__", None)
    if not args:
        return [annotation]
    return [t for a in args for t in _types(a)]


def test_every_float_of_every_config_model_is_finite_by_construction() -> None:
    """A property of the models' base classes (`allow_inf_nan=False`), so new fields get it."""
    from trackerdcs.safety import config as safety

    models = _float_fields(LabConfig, set())
    models += [safety.ChillerRunningRule, safety.ModuleTemperatureRule,
               safety.DewpointMarginRule, safety.HeartbeatRule]  # fmt: skip
    assert len(models) > 15
    for model in models:
        assert model.model_config.get("allow_inf_nan") is False, model


@pytest.mark.parametrize("edit, key", [
    (("max_temperature: 30", "max_temperature: .nan"), "sensors.1.max_temperature"),
    (("vmax: 400}", "vmax: .inf}"), "power.channels.3.vmax"),
    (("vmax: 400}", "vmax: 1e400}"), "power.channels.3.vmax"),
    (("vmax: 400}", "vmax: .nan}"), "power.channels.3.vmax"),
    (("setpoint_max: 40", "setpoint_max: .nan"), "julabo.setpoint_max"),
    (("setpoint_min: -30", "setpoint_min: -.inf"), "julabo.setpoint_min"),
])  # fmt: skip
def test_the_issue_non_finite_values_are_refused(tmp_path, edit, key) -> None:
    text = EXAMPLE_LAB.read_text()
    assert edit[0] in text
    path = tmp_path / "lab.yml"
    path.write_text(text.replace(edit[0], edit[1], 1))
    with pytest.raises(ConfigError, match=f"{key}: Input should be a finite number"):
        load_config(path)


@pytest.mark.parametrize("extra, match", [
    ("\njulabo:\n  url: socket://127.0.0.1:5050\n", r"key 'julabo' given twice .*first at line"),
    ("\nlab: other\n", r"key 'lab' given twice"),
    ("\nx:\n  a: 1\n  a: 2\n", r"key 'a' given twice"),
    ("\nx: " + "[" * 1000 + "]" * 1000 + "\n", r"nested deeper than 64 levels"),
    ("\nx: " + "9" * 5001 + "\n", r"an integer of 5001 characters is out of range"),
], ids=short_id)  # fmt: skip
def test_the_issue_yaml_files_get_a_file_line_reason_message(tmp_path, extra, match) -> None:
    path = tmp_path / "lab.yml"
    path.write_text(EXAMPLE_LAB.read_text() + extra)
    with pytest.raises(ConfigError, match=rf"^{path}: not valid YAML at line \d+.*{match}") as exc:
        load_config(path)
    bounded(str(exc.value))


def test_a_latin1_degree_sign_names_the_file_and_line(tmp_path) -> None:
    path = tmp_path / "lab.yml"
    text = EXAMPLE_LAB.read_text()
    path.write_bytes(text.encode() + "# cooled to 20 °C\n".encode("latin-1"))
    line = text.count("\n") + 1
    with pytest.raises(ConfigError, match=rf"^{path}: not UTF-8 at line {line} \(byte 0xb0"):
        load_config(path)


@pytest.mark.parametrize(
    "loader", [LabLoader, getattr(labyaml, "LabCLoader", None)], ids=["pyyaml", "libyaml"]
)
def test_both_loaders_read_the_lab_and_refuse_the_same(monkeypatch, loader) -> None:
    """libyaml's events (`LabCLoader`, what PyYAML's wheels give) and PyYAML's own parser: the
    same data, the same checks; a nesting libyaml's own composer would crash on is refused."""
    if loader is None:
        pytest.skip("PyYAML without libyaml")
    monkeypatch.setattr(labyaml, "_LOADER", loader)
    assert parse_yaml(EXAMPLE_LAB.read_text()) == yaml.safe_load(EXAMPLE_LAB.read_text())
    for text, match in [
        ("a: 1\nb:\n  c: 2\na: 3\n", r"at line 4, column 1: key 'a' given twice .*line 1"),
        ("x: " + "[" * 100_000 + "]" * 100_000, "nested deeper than 64 levels"),
        ("x: " + "9" * 5001, "an integer of 5001 characters is out of range"),
        ("when: 2024-02-31\n", "cannot read this value: day is out of range"),
    ]:
        with pytest.raises(YamlFileError, match=match):
            parse_yaml(text, "lab.yml")


def test_merge_keys_may_override_what_they_merge() -> None:
    data = parse_yaml("base: &b {a: 1, b: 2}\nx:\n  <<: *b\n  a: 3\n")
    assert data["x"] == {"a": 3, "b": 2}


@given(st.binary(max_size=200))
def test_any_bytes_as_a_lab_file(raw: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "lab.yml"
        path.write_bytes(raw)
        try:
            load_config(path)
        except ConfigError as exc:
            bounded(str(exc))


# -- board models and Julabo settings ------------------------------------------------------------
@given(json_scalars | st.sampled_from([10**400, float("nan")]))
def test_board_model_parameters_check_any_value(value: Any) -> None:
    for model in BOARD_MODELS.values():
        for param in model.params:
            why = param.check(value)
            assert why is None or isinstance(why, str)
            if isinstance(value, float) and not math.isfinite(value):
                assert why is not None
            problem = param.readback_problem(value)
            assert problem is None or len(problem) < 200


@given(st.sampled_from(["rup", "rdwn", "vmax", "trip", "ruptime", "imrange", "tripint", "pdwn"]),
       SPECIAL)  # fmt: skip
def test_board_settings_in_the_lab_file(key: str, value: Any) -> None:
    data = json.loads(json.dumps(EXAMPLE_DATA))
    slot = next(iter(data["crates"][0]["boards"]))
    data["crates"][0]["boards"][slot]["settings"] = {key: value}
    try:
        cfg = parse_config(data, "lab.yml")
    except ConfigError as exc:
        bounded(str(exc))
        return
    finite_everywhere(cfg)


@given(st.fixed_dictionaries({}, optional={
    "model": json_scalars, "retries": SPECIAL, "timeout": SPECIAL, "setpoint_min": SPECIAL,
    "poll_interval": SPECIAL, "heartbeat": SPECIAL, "serial": json_values,
}))  # fmt: skip
def test_julabo_model_and_profile_settings(settings: dict[str, Any]) -> None:
    data = json.loads(json.dumps(EXAMPLE_DATA))
    data["julabo"].update(settings)
    try:
        cfg = parse_config(data, "lab.yml")
    except ConfigError as exc:
        bounded(str(exc))
        return
    finite_everywhere(cfg)


# -- telegraf.conf -------------------------------------------------------------------------------
@given(st.text(max_size=200))
@example("[agent]\nflush_interval = inf\n")
@example("[agent]\nflush_interval = nan\n")
@example('[agent]\nflush_interval = "9999999999999h"\n')
@example("[agent]\nmetric_buffer_limit = " + "9" * 5001 + "\n")
@example("x = " + "[" * 3000 + "]" * 3000)
def test_any_telegraf_conf_text_is_taken_or_refused(text: str) -> None:
    try:
        conf = parse_telegraf_conf(text, "telegraf.conf", env={})
    except TelegrafConfError as exc:
        bounded(str(exc))
        return
    assert math.isfinite(conf.agent.flush_interval) and math.isfinite(conf.agent.interval)


def _repo_conf() -> dict[str, Any]:
    import tomllib

    return tomllib.loads((EXAMPLE_LAB.parent.parent / "telegraf.conf").read_text())


@given(st.sampled_from(_paths(_repo_conf())), SPECIAL | st.lists(st.text(max_size=8), max_size=3))
def test_telegraf_conf_with_any_value_anywhere(path: tuple, value: Any) -> None:
    try:
        conf = conf_from_data(_replace(_repo_conf(), path, value))
    except TelegrafConfError as exc:
        bounded(str(exc))
        return
    for seconds in (conf.agent.interval, conf.agent.flush_interval, conf.output.timeout):
        assert math.isfinite(seconds) and seconds > 0


def test_an_infinite_flush_interval_is_refused() -> None:
    with pytest.raises(TelegrafConfError, match=r"flush_interval.*out of range"):
        parse_telegraf_conf("[agent]\nflush_interval = inf\n", env={})


# -- status payloads through the ingest ----------------------------------------------------------
def _ingest_parser() -> JsonParser:
    return JsonParser(GlobFilter(["name", "kind", "module"]), GlobFilter(["state", "error"]),
                      "time", "unix")  # fmt: skip


surrogate_text = st.lists(st.one_of(st.characters(), lone_surrogates), max_size=6).map("".join)
statuses = st.recursive(
    json_scalars | surrogate_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(surrogate_text, inner, max_size=4),
    max_leaves=10,
).map(lambda v: {"kind": "room", "time": 1.7e9, "v": v})  # fmt: skip


@given(st.one_of(statuses.map(json.dumps), st.binary(max_size=200).map(bytes.hex),
                 st.binary(max_size=100)))  # fmt: skip
@example(json.dumps({"kind": "room", "error": "\ud800", "time": 1.7e9}))
def test_a_status_through_the_ingest_is_a_point_or_rejected(payload: Any) -> None:
    parser, serializer = _ingest_parser(), LineSerializer("sensor")
    raw = payload if isinstance(payload, bytes) else payload.encode()
    try:
        metrics = parser.parse(raw)
    except PayloadError as exc:
        bounded(str(exc))
        return
    for tags, fields, when in metrics:
        finite_everywhere(fields)
        line = serializer.line(tags, fields, str(when))
        if line is not None:
            line.encode()  # never a UnicodeEncodeError in the writer


def test_a_lone_surrogate_is_kept_as_u_fffd_like_telegraf() -> None:
    (metric,) = _ingest_parser().parse(b'{"kind": "room", "error": "\\ud800", "time": 1}')
    assert metric[1]["error"] == "\ufffd"
    line = LineSerializer("sensor").line(*metric[:2], "1")
    assert line is not None and line.encode()


# -- what the safety services read ---------------------------------------------------------------
@given(
    st.sampled_from(
        [
            "/hv/status",
            "/julabo/status",
            "/sensor_1/status",
            "/temp_m1/status",
            "/julabo/availability",
        ]
    ),
    st.one_of(json_values.map(json.dumps), st.text(max_size=50), st.just("[" * 2000)),
)
def test_a_status_for_the_safety_services_is_taken_or_ignored(topic: str, payload: str) -> None:
    from trackerdcs.safety.interlock import InterlockService

    lab = example_lab()
    world = World(lab)
    source = world.update(topic, payload.encode(), 1.0)
    if source is not None and source.status is not None:
        finite_everywhere(source.status)
    loop = asyncio.new_event_loop()
    try:
        service = InterlockService(lab, RecordingLink(lab, "/interlock"), loop, clock=lambda: 1.0)
        service.on_message(topic, payload.encode(), False)
    finally:
        loop.close()
    assert FAULTS.total == 0, FAULTS.last  # every rule evaluated without an unexpected error


interlock_statuses = st.one_of(
    json_values.map(lambda v: {"rules": v}),
    st.lists(st.fixed_dictionaries({"name": json_values, "active": json_values},
                                   optional={"reason": json_values, "modules": json_values}),
             max_size=3).map(lambda rules: {"rules": rules}),
).map(json.dumps)  # fmt: skip


@given(st.one_of(interlock_statuses, st.text(max_size=40)))
@example('{"rules": [{"name": ["a"], "active": true}]}')
def test_the_power_daemon_takes_any_interlock_status(payload: str) -> None:
    from trackerdcs.power.daemon import CrateDaemon

    lab, loop = example_lab(), asyncio.new_event_loop()
    try:
        daemon = CrateDaemon(lab, lab.crates[0].name, loop, backend=FakeBackend())
        daemon.apply_interlocks(payload.encode())
        for service in daemon.services:
            for ch in service.channels:
                assert all(isinstance(k, str) and isinstance(v, str)
                           for k, v in ch.inhibits.items())  # fmt: skip
    finally:
        loop.close()


@given(st.sampled_from(sorted(DETECTORS)), json_values)
def test_the_alarm_detectors_take_any_message(role: str, value: Any) -> None:
    detector, _ = DETECTORS[role]
    for condition in detector("/x", value):
        assert len(condition.text) < 2 * MESSAGE_LIMIT


@given(json_values | numberish)
@example("9" * 400 + "d")
@example("\u0663h")
def test_an_audit_time_parses_or_is_a_value_error(value: Any) -> None:
    try:
        when = parse_when(value, 1.7e9)
    except ValueError as exc:
        bounded(str(exc))
    else:
        assert math.isfinite(when)


# -- the project's own strict JSON ---------------------------------------------------------------
@given(st.one_of(json_values.map(json.dumps), st.text(max_size=60), numberish))
def test_strict_json_gives_finite_values_or_a_json_error(text: str) -> None:
    try:
        value = loads(text)
    except JsonError as exc:
        bounded(str(exc))
    else:
        finite_everywhere(value)
        json.dumps(value).encode()  # encodable: no lone surrogate left


def test_clip_bounds_every_echo() -> None:
    from trackerdcs.guard import clip

    assert len(clip("x" * 100_000)) < CLIP + 40
    assert len(clip(10**5000)) < CLIP + 40  # repr() of it would raise
