"""docs/topics.md against the payload models of `trackerdcs/payloads.py` (in-process, fast).

Every `<!-- contract:NAME -->` table of JSON keys is one model: the same keys in the same order,
each with the documented JSON type; and each publisher's real payload, built in-process, is an
instance of its model. tests/test_topic_contract.py checks the running daemons' payloads against
the same tables.
"""

from __future__ import annotations

import ast
import json
import re
import types
import typing
from typing import Any, Union

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.test_topic_contract import TOPICS_MD, contract_table
from trackerdcs import payloads as P

SCALARS = {int: "integer", float: "number", str: "string", bool: "boolean"}


def json_type(annotation: Any) -> str:
    """The docs' name for the JSON type of a field's annotation (`number or null`, ...)."""
    args = typing.get_args(annotation)
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType) and type(None) in args:
        (inner,) = [a for a in args if a is not type(None)]
        return f"{json_type(inner)} or null"
    if origin is list:
        (item,) = args
        return "array of object" if isinstance(item, type) and issubclass(item, P.Payload) else (
            f"array of {json_type(item)}"
        )  # fmt: skip
    if origin is dict or (isinstance(annotation, type) and issubclass(annotation, P.Payload)):
        return "object"
    return SCALARS[annotation]


def documented_tables() -> set[str]:
    """Every contract table of JSON keys (not the command tables) in docs/topics.md."""
    text = TOPICS_MD.read_text()
    return {
        m.group(1) for m in re.finditer(r"<!-- contract:([\w-]+) -->\n\| key \| JSON type \|", text)
    }


def test_every_table_of_keys_has_a_model_and_every_model_a_table():
    assert documented_tables() == set(P.CONTRACT_TABLES)


@pytest.mark.parametrize("table", sorted(P.CONTRACT_TABLES))
def test_model_keys_and_types_are_the_documented_ones(table):
    model = P.CONTRACT_TABLES[table]
    documented = [(row[0], row[1]) for row in contract_table(table)]
    modelled = []
    for name, field in model.model_fields.items():
        kind = json_type(field.annotation)
        if not field.is_required():  # an answer's optional key: present only where it applies
            assert field.default is None and kind.endswith(" or null"), (table, name)
            kind = kind.removesuffix(" or null")
        modelled.append((name, kind))
    assert modelled == documented, f"{table}: {model.__name__} differs from docs/topics.md"


def test_key_refuses_a_name_the_contract_does_not_have():
    assert P.key(P.SensorStatus, "dewpoint") == "dewpoint"
    with pytest.raises(KeyError, match="dew_point"):
        P.key(P.SensorStatus, "dew_point")


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(),
    lambda c: st.lists(c) | st.dictionaries(st.text(), c),
    max_leaves=20,
)


@given(JSON_VALUES)
def test_parse_is_total(data):
    for model in P.CONTRACT_TABLES.values():
        parsed = P.parse(model, data)
        assert parsed is None or isinstance(parsed, model)


def test_models_refuse_non_finite_numbers_and_unknown_keys():
    beat = {"time": 1.0, "source": "interlock", "interval": 1.0, "seq": 1}
    assert P.parse(P.SupervisionHeartbeat, beat) is not None
    assert P.parse(P.SupervisionHeartbeat, {**beat, "interval": float("nan")}) is None
    assert P.parse(P.SupervisionHeartbeat, {**beat, "extra": 1}) is None
    assert P.parse(P.SupervisionHeartbeat, {k: v for k, v in beat.items() if k != "seq"}) is None


def test_answer_keeps_the_keys_in_order_and_only_the_given_optional_ones():
    answer = P.answer_payload("/hv/cmd/switch/0", "on", True, None, "alice:1", channels=["hv_m1"],
                              modules={"M1": {"ok": True}})  # fmt: skip
    assert list(answer) == ["topic", "payload", "ok", "error", "id", "channels", "modules"]
    assert json.loads(json.dumps(answer)) == answer
    with pytest.raises(ValueError, match="channels"):
        P.answer_payload("/hv/cmd/switch/0", "on", True, None, None, channels="hv_m1")


# -- readers: the keys they read are the models' keys -----------------------------------------

ROOT_DIR = TOPICS_MD.parent.parent
PowerReaders = [P.PowerChannelStatus]
RuleReaders = [P.InterlockStatus, P.InterlockRule]
READERS: dict[tuple[str, str], list[type[P.Payload]]] = {
    ("trackerdcs/safety/alarms.py", "channel_faults"): PowerReaders,
    ("trackerdcs/safety/alarms.py", "crate_faults"): [P.PowerState],
    ("trackerdcs/safety/alarms.py", "chiller_faults"): [P.ChillerStatus],
    ("trackerdcs/safety/alarms.py", "sensor_faults"): [P.SensorStatus],
    ("trackerdcs/safety/alarms.py", "interlocks_fired"): RuleReaders,
    ("trackerdcs/safety/rules.py", "chiller_cooling"): [P.ChillerStatus],
    ("trackerdcs/safety/rules.py", "chiller_not_running"): [P.ChillerStatus],
    ("trackerdcs/safety/rules.py", "module_too_hot"): [P.SensorStatus],
    ("trackerdcs/safety/rules.py", "dewpoint_too_close"): [P.SensorStatus],
    ("trackerdcs/safety/rules.py", "_staleness"): [P.SensorStatus],
    ("trackerdcs/safety/world.py", "Source.age"): [P.SensorStatus],
    ("trackerdcs/safety/world.py", "World.update"): PowerReaders,
    ("trackerdcs/safety/world.py", "World.hv_off"): PowerReaders,
    ("trackerdcs/safety/world.py", "World.hv_on"): PowerReaders,
    ("trackerdcs/safety/interlock.py", "InterlockService._restore"): RuleReaders,
    ("trackerdcs/safety/interlock.py", "InterlockService.on_message"): [P.CommandAnswer],
    ("trackerdcs/safety/sequencer.py", "SequencerService._command"): [P.CommandAnswer],
    ("trackerdcs/safety/sequencer.py", "SequencerService._settle"): PowerReaders,
    ("trackerdcs/safety/sequencer.py", "SequencerService._ramp_time"): PowerReaders,
    ("trackerdcs/safety/sequencer.py", "SequencerService._describe"): PowerReaders,
    ("trackerdcs/power/daemon.py", "CrateDaemon.apply_interlocks"): RuleReaders,
    ("trackerdcs/client.py", "Channel.from_status"): PowerReaders,
    ("trackerdcs/client.py", "Lab._entry"): PowerReaders,
    ("trackerdcs/ivscan/plan.py", "check_channel"): PowerReaders,
    ("trackerdcs/recipe/procedure.py", "_running"): [P.ChillerStatus],
    ("trackerdcs/recipe/procedure.py", "DewPoint.problem"): [P.SensorStatus],
    ("trackerdcs/recipe/procedure.py", "RecipeRun.interlock_reason"): RuleReaders,
    ("trackerdcs/recipe/procedure.py", "RecipeRun._scan_progress"): [P.IvScanState, P.RecipeScan],
}
"""Functions that read a payload -> the models of what they read (by their keys)."""


def _function(path: str, qualname: str) -> ast.AST:
    node: ast.AST = ast.parse((ROOT_DIR / path).read_text())
    for part in qualname.split("."):
        node = next(
            n
            for n in ast.iter_child_nodes(node)
            if isinstance(n, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            and n.name == part
        )
    return node


def keys_read(function: ast.AST) -> set[str]:
    """The string keys `function` reads: `x.get("key")` and `x["key"]` (nested functions too)."""
    found = set()
    for node in ast.walk(function):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "get"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.add(node.args[0].value)
        if (
            isinstance(node, ast.Subscript)
            and isinstance(node.slice, ast.Constant)
            and isinstance(node.slice.value, str)
        ):
            found.add(node.slice.value)
    return found


@pytest.mark.parametrize("reader", sorted(READERS), ids=lambda r: f"{r[0]}:{r[1]}")
def test_readers_read_only_the_keys_of_their_payload_models(reader):
    keys = keys_read(_function(*reader))
    assert keys, f"{reader}: reads no key (moved? update READERS)"
    known = {name for model in READERS[reader] for name in model.model_fields}
    assert keys <= known, f"{reader} reads {sorted(keys - known)}, not in {READERS[reader]}"


def test_the_safety_services_schemas_are_the_models_types():
    """`trackerdcs.safety.world.SCHEMAS`: the keys the safety services take from each status
    and the JSON types they accept, which must be the published ones."""
    from trackerdcs.safety.world import SCHEMAS

    models = {"power": P.PowerChannelStatus, "chiller": P.ChillerStatus, "sensor": P.SensorStatus}
    names = {"number": "number", "integer": "integer", str: "string", bool: "boolean",
             list: "array of string", None: "null"}  # fmt: skip
    for kind, schema in SCHEMAS.items():
        fields = models[kind].model_fields
        for name, allowed in schema.items():
            assert name in fields, f"{kind}: {name} is no key of {models[kind].__name__}"
            accepted = {names[a] for a in allowed}
            published = json_type(fields[name].annotation)
            base = published.removesuffix(" or null")
            assert base in accepted or (base == "integer" and "number" in accepted), (
                f"{kind}.{name}: published {published}, read as {accepted}"
            )
            if published.endswith(" or null"):  # else the reader drops a good status whole
                assert "null" in accepted, f"{kind}.{name}: published {published}, no null read"


# -- publishers: what they really publish is their model, byte for byte --------------------------

STATE_MODELS: dict[str, Any] = {
    "/hv/status": list[P.PowerChannelStatus],
    "/lv/status": list[P.PowerChannelStatus],
    "/hv/state": P.PowerState,
    "/lv/state": P.PowerState,
    "/julabo/status": P.ChillerStatus,
    "/sensor_1/status": P.SensorStatus,
    "/interlock/status": P.InterlockStatus,
    "/alarms": P.AlarmList,
    "/dcs/status": P.SequencerStatus,
}


def test_in_process_publishers_publish_their_models(tmp_path):
    """Every service of the example lab in-process (tests/inprocess.py) publishes its status;
    each payload validates against its model and is the model's own JSON, key order and number
    formatting included; every command answer is a `CommandAnswer`."""
    from pydantic import TypeAdapter

    from tests.test_parsers_total import Services

    services = Services(tmp_path)
    try:
        service = {prefix: handler.__self__ for prefix, (_, handler) in services.handlers.items()}
        service["/hv"].publish_status()
        service["/lv"].publish_status()
        service["/julabo"].publish_status()
        service["/sensor_1"].publish()
        service["/interlock"].publish_status()
        service["/alarms"].on_message("/hv/availability", b"offline")
        service["/alarms"].publish()
        service["/dcs"].start()
        published, answers = {}, []
        for link, _ in services.handlers.values():
            for topic, payload in link.sent:
                if topic in STATE_MODELS:
                    published[topic] = payload.decode() if isinstance(payload, bytes) else payload
        for prefix, action, payload in [
            ("/hv", "setv/hv_m1", '{"value": 10, "id": "alice:1"}'),
            ("/hv", "switch/M1", '{"value": "off", "id": "alice:2"}'),  # off: never refused
            ("/hv", "refresh", ""),
            ("/julabo", "setpoint", "99999"),
            ("/alarms", "ack/all", ""),
            ("/dcs", "module/M1", "sideways"),
        ]:
            answers += services.run(prefix, action, payload)
        assert set(published) == set(STATE_MODELS)
        for topic, text in published.items():
            adapter = TypeAdapter(STATE_MODELS[topic])
            model = adapter.validate_json(text)
            assert json.dumps(adapter.dump_python(model, mode="json")) == text, topic
        assert len(answers) == 6 and {a["ok"] for a in answers} == {True, False}
        assert any(a["ok"] and "channels" in a for a in answers)
        for answer in answers:
            assert P.CommandAnswer.model_validate(answer), answer
            assert list(answer)[:5] == list(P.ANSWER_KEYS)
    finally:
        services.close()


def test_idle_scan_and_recipe_statuses_are_their_models():
    from trackerdcs.ivscan.service import idle_status as idle_scan
    from trackerdcs.recipe.service import idle_status as idle_recipe

    assert P.dump(P.IvScanState.model_validate(idle_scan())) == idle_scan()
    recipe = {**idle_recipe(), "recipes": ["quick"], "time": 1.5}
    assert P.dump(P.RecipeStatus.model_validate(recipe)) == recipe


def test_availability_values_are_the_documented_ones():
    line = next(
        line
        for line in TOPICS_MD.read_text().splitlines()
        if line.startswith("- `<prefix>/availability`")
    )
    documented = re.findall(r"`(\w+)`", line.split("—", 1)[1].split(".")[0])
    assert documented == list(typing.get_args(P.Availability)) == [P.ONLINE, P.OFFLINE]


def test_the_client_channel_holds_every_key_of_a_channel_status():
    """`trackerdcs.client.Channel` (the Python client's view of a channel) has a field per
    published key, of the same name (`status`, the raw bit field, is read as its `flags`)."""
    import dataclasses

    from trackerdcs.client import Channel

    own = {f.name for f in dataclasses.fields(Channel)} - {"kind", "prefix"}
    assert own == set(P.PowerChannelStatus.model_fields) - {"status"}
