"""docs/topics.md against the payload models of `trackerdcs/payloads.py` (in-process, fast).

Every `<!-- contract:NAME -->` table of JSON keys is one model: the same keys in the same order,
each with the documented JSON type; and each publisher's real payload, built in-process, is an
instance of its model. tests/test_topic_contract.py checks the running daemons' payloads against
the same tables.
"""

from __future__ import annotations

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
