"""Recipes in-process: the file format (every problem named by file, step and key; the parser
total, property-based), the checks against the lab, the dew-point margin, the command handler
(every command one answer; `abort` always executed). End to end: tests/test_recipe.py."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import example, given
from hypothesis import strategies as st

from tests.inprocess import RecordingLink, command, example_lab, settle, submit
from tests.test_parsers_total import bounded, json_values, payloads
from trackerdcs.commands import ALWAYS_EXECUTED
from trackerdcs.config import parse_config
from trackerdcs.guard import FAULTS
from trackerdcs.mqtt import CommandGate
from trackerdcs.recipe.model import (
    KINDS,
    HoldStep,
    Recipe,
    RecipeError,
    RepeatStep,
    check_recipe,
    load_recipe,
    parse_duration,
    parse_recipe,
    recipe_from_text,
)
from trackerdcs.recipe.procedure import DewPoint
from trackerdcs.recipe.service import RecipeService, dewpoint_guard

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "recipes"
MESSAGE_LIMIT = 12_000  # 20 problems of a few hundred characters, and a file name


# -- the format -----------------------------------------------------------------------------------
@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yml")), ids=lambda p: p.stem)
def test_the_example_recipes_are_valid_for_the_example_lab(path: Path) -> None:
    recipe = load_recipe(path)
    check_recipe(recipe, example_lab())
    assert recipe.name == path.stem and recipe.on_interlock == "pause"


@pytest.mark.parametrize("text, seconds", [
    (90, 90.0), (1.5, 1.5), ("90s", 90.0), ("10m", 600.0), ("10min", 600.0), ("2h", 7200.0),
    ("1d", 86400.0), (" .5h ", 1800.0), ("0", 0.0),
])  # fmt: skip
def test_durations(text: Any, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", [True, -1, "ten minutes", "10 m s", "1e3s", "nan", "inf",
                                  float("nan"), 10**400, "31d", "", None, [1]])  # fmt: skip
def test_what_is_not_a_duration(text: Any) -> None:
    with pytest.raises(ValueError) as refused:
        parse_duration(text)
    bounded(str(refused.value))


def test_every_problem_names_the_file_the_step_and_the_key(tmp_path: Path) -> None:
    path = tmp_path / "night.yml"
    path.write_text(
        "modules: M1\n"
        "on_interlock: ignore\n"
        "steps:\n"
        "  - setpoint: .nan\n"
        "  - repeat: 3\n"
        "    steps:\n"
        "      - hold: 2h\n"
        "      - wait_stable: {tolerance: 0.2, stable: 60}\n"
        "      - {module: on, modules: [M3]}\n"
        "      - ivscan: {stop: 300}\n"
        "  - hold: 1h\n"
        "    module: off\n"
        "  - 42\n"
    )
    with pytest.raises(RecipeError) as refused:
        load_recipe(path)
    assert str(refused.value).splitlines() == [
        f"{path}: invalid recipe",
        "  modules: Input should be a valid list",
        "  on_interlock: Input should be 'abort' or 'pause'",
        "  step 1 (steps.0), setpoint: Input should be a finite number",
        "  step 2.2 (steps.1.steps.1), wait_stable.stable: unknown key",
        "  step 2.4 (steps.1.steps.3), ivscan.step: required",
        "  step 3 (steps.2): a step has exactly one of setpoint, wait_stable, module, hold, "
        "ivscan, repeat: this one says both module and hold",
        "  step 4 (steps.3): a step is a mapping with one of setpoint, wait_stable, module, "
        "hold, ivscan, repeat, got 42",
    ]


def test_a_step_may_name_only_the_recipes_modules_and_never_the_scans_recipe() -> None:
    with pytest.raises(RecipeError) as refused:
        parse_recipe({"modules": ["M1"], "steps": [
            {"module": True, "modules": ["M1", "M2"]},
            {"ivscan": {"stop": 10, "step": 5, "recipe": "other"}},
        ]}, "r.yml")  # fmt: skip
    assert str(refused.value).splitlines()[1:] == [
        "  step 1 (steps.0), modules: M2 not among the recipe's modules (M1)",
        "  step 2 (steps.1), ivscan.recipe: set by the recipe run itself",
    ]


def test_yaml_on_and_off_are_switches_and_the_counts_unroll_the_repeats() -> None:
    recipe = recipe_from_text(
        "modules: [M1]\nsteps:\n  - module: on\n  - repeat: 3\n    steps:\n"
        "      - hold: 1m\n      - repeat: 2\n        steps: [{hold: 10}]\n  - module: off\n",
        "lab/burn.yml",
    )
    assert recipe.name == "burn" and recipe.source == "lab/burn.yml"
    assert [getattr(s, "module", None) for s in recipe.steps] == [True, None, False]
    assert recipe.total_steps() == 2 + 3 * 3
    assert recipe.hold_time() == 3 * (60 + 2 * 10)
    assert [".".join(str(i + 1) for i in at) for at, _ in recipe.leaves()] == [
        "1", "2.1", "2.2.1", "3"]  # fmt: skip


def test_too_many_steps_are_refused_before_they_are_counted_out() -> None:
    nested: dict[str, Any] = {"hold": 1}
    for _ in range(6):
        nested = {"repeat": 10_000, "steps": [nested]}
    with pytest.raises(RecipeError, match="more than 100000 steps in all"):
        parse_recipe({"modules": ["M1"], "steps": [nested]}, "big.yml")


# -- total: any input is a recipe or a RecipeError with a bounded message -----------------------
def step_values() -> st.SearchStrategy[Any]:
    values = st.one_of(json_values, st.sampled_from([
        "on", "off", True, 15, -20.5, "10m", "2h", 1e400, float("nan"), "M1", ["M1"], ["M9"],
        {"stop": 100, "step": 10}, {"tolerance": 0.2}, {}, None,
    ]))  # fmt: skip
    keys = st.sampled_from([*KINDS, "modules", "chiller", "steps", "stable_for", "x"])
    return st.recursive(
        st.dictionaries(keys, values, max_size=3),
        lambda inner: st.fixed_dictionaries(
            {"repeat": st.integers(-2, 20_000), "steps": st.lists(inner, max_size=3)}
        ),
        max_leaves=8,
    )


recipes = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {"modules": st.one_of(st.just(["M1", "M2"]), json_values),
         "steps": st.one_of(st.lists(step_values(), max_size=5), json_values)},
        optional={"name": st.text(max_size=70), "on_interlock": st.sampled_from(["abort", "x"]),
                  "dewpoint_timeout": st.one_of(st.just("1h"), json_values),
                  "safe_setpoint": st.floats()},
    ),
)  # fmt: skip


@given(recipes)
@example({"modules": ["M1"], "steps": [{"repeat": 10**30, "steps": [{"hold": 1}]}]})
@example({"modules": ["M1"], "steps": [{"hold": "1" * 5000 + "s"}]})
def test_a_recipe_parses_or_is_refused_with_a_bounded_message(data: Any) -> None:
    try:
        recipe = parse_recipe(data, "fuzz.yml")
    except RecipeError as exc:
        assert str(exc).startswith("fuzz.yml: ")
        assert len(str(exc)) <= MESSAGE_LIMIT
        return
    assert isinstance(recipe, Recipe) and recipe.modules and recipe.steps
    assert math.isfinite(recipe.hold_time()) and recipe.total_steps() <= 100_000
    for _, step in recipe.leaves():
        assert not isinstance(step, RepeatStep)
        if isinstance(step, HoldStep):
            assert 0 <= step.hold <= 30 * 86400
    try:
        check_recipe(recipe, example_lab())
    except RecipeError as exc:
        assert len(str(exc)) <= MESSAGE_LIMIT


@given(st.text(max_size=200))
@example("modules: [M1]\nsteps: [{hold: 1}]\nsteps: [{hold: 2}]\n")
@example("modules: [M1]\nsteps:\n" + "  " * 70 + "- a\n")
def test_recipe_text_parses_or_is_refused(text: str) -> None:
    try:
        recipe_from_text(text, "text.yml")
    except RecipeError as exc:
        bounded(str(exc))


# -- against the lab ------------------------------------------------------------------------------
TWO_CHILLERS = {
    "julabo": None,
    "chillers": [
        {"name": "coldbox", "url": "socket://127.0.0.1:5050", "modules": ["M1", "M2"]},
        {"name": "burnin", "url": "socket://127.0.0.1:5060", "prefix": "/julabo_burnin",
         "modules": ["M3", "M4"], "setpoint_min": -10},
    ],
}  # fmt: skip


def lab_with(**changes: Any):
    data = yaml.safe_load((Path(__file__).resolve().parent.parent / "examples" / "lab.yml")
                          .read_text())  # fmt: skip
    data.update(changes)
    return parse_config(data)


def test_the_chiller_must_exist_cool_the_modules_and_take_the_set_points() -> None:
    lab = lab_with(**TWO_CHILLERS, interlocks={"rules": []})
    recipe = parse_recipe({"modules": ["M2", "M3"], "chiller": "burnin", "safe_setpoint": 60,
                           "steps": [{"setpoint": -20}]}, "r.yml")  # fmt: skip
    with pytest.raises(RecipeError) as refused:
        check_recipe(recipe, lab)
    assert str(refused.value).splitlines()[1:] == [
        "  modules: M2 not cooled by chiller burnin (it cools M3, M4)",
        "  safe_setpoint: 60 °C is outside chiller burnin's range -10..40 °C",
        "  step 1 (steps.0), setpoint: -20 °C is outside chiller burnin's range -10..40 °C "
        "(setpoint_min/setpoint_max)",
    ]
    unnamed = parse_recipe({"modules": ["M1"], "steps": [{"wait_stable": None}]}, "u.yml")
    several = r"chiller: the lab has several chillers \(coldbox, burnin\): name one"
    with pytest.raises(RecipeError, match=several):
        check_recipe(unnamed, lab)
    check_recipe(parse_recipe({"modules": ["M1"], "steps": [{"hold": 1}]}, "h.yml"), lab)


def test_the_dew_point_margin_is_the_rules_for_that_chiller() -> None:
    lab = example_lab()  # dewpoint: margin 2 K, sensor_1, every module
    recipe = parse_recipe({"modules": ["M1"], "steps": [{"setpoint": 5}]}, "r.yml")
    guard = dewpoint_guard(lab, recipe, lab.chiller())
    assert (guard.margin, guard.sensors) == (2.0, ["/sensor_1"])
    wider = parse_recipe({"modules": ["M1"], "dewpoint_margin": 4, "steps": [{"hold": 1}]}, "w")
    assert dewpoint_guard(lab, wider, lab.chiller()).margin == 4.0
    bare = lab_with(interlocks={"rules": []})
    guard = dewpoint_guard(bare, recipe, bare.chiller())
    assert (guard.margin, guard.sensors) == (bare.recipes.dewpoint_margin, ["/sensor_1"])
    two = lab_with(**TWO_CHILLERS, interlocks={"rules": [
        {"name": "dp_cold", "kind": "dewpoint_margin", "sensor": "sensor_1", "margin": 2.5,
         "chiller": "coldbox", "chiller_setpoint": 20},
        {"name": "dp_burn", "kind": "dewpoint_margin", "sensor": "sensor_1", "margin": 4.0,
         "chiller": "burnin", "chiller_setpoint": 20}]})  # fmt: skip
    assert dewpoint_guard(two, recipe, two.chiller("coldbox")).margin == 2.5
    assert dewpoint_guard(two, recipe, two.chiller("burnin")).margin == 4.0


class Statuses:
    """The client's `latest` over fixed statuses."""

    def __init__(self, **statuses: Any) -> None:
        self.statuses = statuses

    def latest(self, topic: str) -> Any:
        return self.statuses.get(topic.split("/")[1])


@pytest.mark.parametrize("room, setpoint, problem", [
    ({"dewpoint": 8.6, "stale": False}, 10.6, None),
    ({"dewpoint": 8.6, "stale": False}, 10.5, "set point 10.5 °C is below the dew point 8.6 °C "
     "+ 2 K margin (10.6 °C): the air is too humid"),
    ({"dewpoint": None, "too_dry": True, "stale": False}, -40, None),  # 0 % RH
    ({"dewpoint": None, "stale": True}, 25, "the dew point is unknown (no fresh reading of "
     "sensor_1)"),
    (None, 25, "the dew point is unknown (no fresh reading of sensor_1)"),
])  # fmt: skip
def test_the_dew_point_check(room: Any, setpoint: float, problem: str | None) -> None:
    guard = DewPoint(2.0, ["/sensor_1"])
    assert guard.problem(Statuses(sensor_1=room), setpoint) == problem  # type: ignore[arg-type]
    assert DewPoint(2.0, []).problem(Statuses(), -80) is None  # type: ignore[arg-type]


# -- commands -------------------------------------------------------------------------------------
def test_abort_is_always_executed_pause_and_resume_are_judged_by_age() -> None:
    gate = CommandGate(example_lab().mqtt, 5.0, always=ALWAYS_EXECUTED["sequencer"])
    stale = '{"value": "", "time": 1000.0}'
    assert gate.check(command("/dcs", "recipe/abort", stale)) is None
    for verb in ("pause", "resume", "start"):
        assert "older than" in (gate.check(command("/dcs", f"recipe/{verb}", stale)) or "")


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    loop = asyncio.new_event_loop()
    lab = example_lab()
    link = RecordingLink(lab, "/dcs")
    folder = tmp_path_factory.mktemp("recipes")
    (folder / "quick.yml").write_text("modules: [M1]\nsteps: [{hold: 1}]\n")
    yield RecipeService(lab, link, loop, folder), link, loop  # its client never connects
    loop.close()


@given(st.sampled_from(["recipe/start", "recipe/pause", "recipe/resume", "recipe/abort",
                        "recipe", "recipe/start/x", "recipe/stop"]), payloads())  # fmt: skip
@example("recipe/start", '{"value": {"recipe": {"modules": ["M1"], "steps": [{"hold": 1}]}}}')
@example("recipe/start", "quick")
@example("recipe/start", "../../etc/passwd")
def test_every_recipe_command_gets_one_answer_and_none_starts_unconnected(
    service, action: str, payload: str
) -> None:
    svc, link, loop = service
    link.sent.clear()
    FAULTS.reset()
    submit(link, svc.handle_command, command("/dcs", action, payload))
    settle(loop)
    answers = link.answers()
    assert len(answers) == 1, answers
    assert not answers[0]["ok"] and answers[0]["error"]
    bounded(answers[0]["error"])
    assert svc.run is None and FAULTS.total == 0, FAULTS.last


def test_a_start_names_what_it_cannot_find(service) -> None:
    svc, link, _ = service
    link.sent.clear()
    for payload, error in (
        ("nothere", "no recipe 'nothere' in "),
        ("nothere.yml", "no recipe file 'nothere.yml' (on the dcs daemon's machine)"),
        ("/etc/passwd", "no recipe '/etc/passwd' in "),
        ("quick", "the recipe client is not connected to the broker yet"),
    ):
        submit(link, svc.handle_command, command("/dcs", "recipe/start", payload))
        assert link.answers()[-1]["error"].startswith(error), (payload, link.answers()[-1])
    assert svc.available() == ["quick"]
