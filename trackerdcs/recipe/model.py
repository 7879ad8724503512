"""A recipe file: the steps of a thermal-cycle (burn-in) run, validated before anything runs.

    name: burnin                 # default: the file's name without .yml
    modules: [M1, M2]            # the modules it powers and scans
    chiller: coldbox             # a lab with several chillers (default: the lab's only one)
    on_interlock: abort          # or pause: what an interlock holding a module does to it
    dewpoint: wait               # or fail: a set point too close to the dew point
    steps:
      - setpoint: 20             # the chiller's set point, °C (started if it is stopped)
      - wait_stable: {tolerance: 0.5, stable_for: 2m}
      - module: on               # the recipe's modules on, through the sequencer (LV, then HV)
      - repeat: 10
        steps:
          - setpoint: -20
          - wait_stable: {}
          - hold: 1h             # wall time
          - ivscan: {stop: 300, step: 10}
          - setpoint: 20
          - wait_stable: {}
          - hold: 30m
      - module: off

Steps (each a mapping with exactly one of these keys, and that kind's options):

- `setpoint: °C` (`chiller` in a lab of several): checked against the chiller's range and, when
  the recipe runs, against the room's dew point plus the margin (the dew-point interlock rules'
  `margin` for that chiller, else `recipes.dewpoint_margin`): too close, the recipe waits for
  drier air (`dewpoint: wait`, up to `dewpoint_timeout`) or fails (`dewpoint: fail`);
- `wait_stable: {tolerance: K (0.5), stable_for: duration (60 s), timeout: duration}`: until
  the bath has stayed within `tolerance` of the set point for `stable_for`;
- `module: on|off` (`modules: [...]`, default the recipe's): through the sequencer;
- `hold: duration` (a number of seconds, or `90s`, `10m`, `2h`, `1d`): wall time;
- `ivscan: {parameters}` (`modules: [...]`): an IV scan of each module side by side, with the
  scan command's parameters (docs/topics.md); each scan's id is linked to the run;
- `repeat: N` with `steps: [...]`: those steps N times.

`parse_recipe` (any data) and `load_recipe` (a file) return a `Recipe` or raise `RecipeError`
naming the file, the step (`step 4.2`: the 2nd step of the 4th, counted from 1, and its place
in the file, `steps.3.steps.1`) and the key of every problem; nothing else escapes them.
`check_recipe` checks a parsed recipe against the lab (modules, chiller, set point range, each
scan's parameters as the scan command would check them).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from trackerdcs.commands import CommandError, parse_switch
from trackerdcs.guard import clip, shorten
from trackerdcs.ivscan.plan import ScanParams
from trackerdcs.labyaml import YamlFileError, parse_yaml, read_yaml

MAX_PROBLEMS = 20  # lines of one error message
MAX_DURATION = 30 * 86400.0  # s: a hold, a wait's timeout
MAX_REPEAT = 10_000
KINDS = ("setpoint", "wait_stable", "module", "hold", "ivscan", "repeat")
_UNITS = {"": 1.0, "s": 1.0, "min": 60.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(s|min|m|h|d)?\s*", re.ASCII)


class RecipeError(ValueError):
    """A recipe that is refused: its message names the file, the step and the key."""


def parse_duration(value: Any) -> float:
    """Seconds from a number of seconds or `<number><unit>` (`s`, `m`/`min`, `h`, `d`)."""
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {clip(value, 40)} (seconds, or 90s, 10m, 2h, 1d)")
    if isinstance(value, int | float):
        seconds = float(value) if not isinstance(value, int) or abs(value) < 2**53 else math.inf
    elif isinstance(value, str) and (match := _DURATION.fullmatch(value)) and len(value) < 40:
        seconds = float(match.group(1)) * _UNITS[match.group(2) or ""]
    else:
        raise ValueError(f"not a duration: {clip(value, 40)} (seconds, or 90s, 10m, 2h, 1d)")
    if not math.isfinite(seconds) or not 0 <= seconds <= MAX_DURATION:
        raise ValueError(f"{clip(value, 40)}: a duration is 0 s to 30 days")
    return seconds


def _switch(value: Any) -> bool:
    try:
        return parse_switch(value)
    except CommandError:
        raise ValueError(f"on or off, got {clip(value, 40)}") from None


Duration = Annotated[float, BeforeValidator(parse_duration)]
Celsius = Annotated[float, Field(ge=-273.15, le=1000.0, allow_inf_nan=False)]
Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.\-]{1,64}$")]
ModuleName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.\-]{1,64}$")]
ModuleList = Annotated[list[ModuleName], Field(min_length=1, max_length=1000)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class SetpointStep(_Strict):
    """The chiller's set point (°C); the chiller is started when it is stopped."""

    setpoint: Celsius
    chiller: Name | None = None

    def describe(self) -> str:
        return f"chiller set point {self.setpoint:g} °C"


class Stability(_Strict):
    """When the bath counts as stable: within `tolerance` K for `stable_for` s; `timeout` s in
    all (default: `stable_for` + 300 s + 120 s per K to go, as the client's `set_chiller`)."""

    tolerance: Annotated[float, Field(gt=0, le=50, allow_inf_nan=False)] = 0.5
    stable_for: Duration = 60.0
    timeout: Duration | None = None


class WaitStableStep(_Strict):
    wait_stable: Stability | None = None
    chiller: Name | None = None

    @property
    def stability(self) -> Stability:
        return self.wait_stable or Stability()

    def describe(self) -> str:
        s = self.stability
        return f"wait until the bath is stable within {s.tolerance:g} K for {_human(s.stable_for)}"


class ModuleStep(_Strict):
    """Modules on or off through the sequencer (`modules`: default the recipe's)."""

    module: Annotated[bool, BeforeValidator(_switch)]
    modules: ModuleList | None = None

    def describe(self, modules: list[str]) -> str:
        return f"{', '.join(modules)} {'on' if self.module else 'off'}"


class HoldStep(_Strict):
    hold: Duration

    def describe(self) -> str:
        return f"hold {_human(self.hold)}"


class IvScanStep(_Strict):
    """An IV scan of each module (`modules`: default the recipe's), side by side."""

    ivscan: ScanParams
    modules: ModuleList | None = None

    def describe(self, modules: list[str]) -> str:
        p = self.ivscan
        return f"IV scan of {', '.join(modules)}: {p.start:g} -> {p.stop:g} V by {p.step:g} V"


class RepeatHead(_Strict):
    repeat: Annotated[int, Field(ge=1, le=MAX_REPEAT)]
    steps: Any = None


@dataclass(frozen=True)
class RepeatStep:
    repeat: int
    steps: tuple[Step, ...]

    def describe(self) -> str:
        return f"repeat {self.repeat} times: {len(self.steps)} step(s)"


Step = SetpointStep | WaitStableStep | ModuleStep | HoldStep | IvScanStep | RepeatStep
_MODELS: dict[str, type[_Strict]] = {
    "setpoint": SetpointStep, "wait_stable": WaitStableStep, "module": ModuleStep,
    "hold": HoldStep, "ivscan": IvScanStep,
}  # fmt: skip


class RecipeHead(_Strict):
    """A recipe's keys but its steps."""

    name: Name | None = None
    description: Annotated[str, Field(max_length=2000)] | None = None
    modules: ModuleList
    chiller: Name | None = None
    on_interlock: Literal["abort", "pause"] = "abort"
    dewpoint: Literal["wait", "fail"] = "wait"
    dewpoint_timeout: Duration = 3600.0
    dewpoint_margin: Annotated[float, Field(gt=0, le=50, allow_inf_nan=False)] | None = None
    safe_setpoint: Celsius | None = None  # °C the chiller is set to when the run is aborted


@dataclass(frozen=True)
class Recipe:
    """A validated recipe. `source` says where it came from (a file, a command)."""

    name: str
    modules: tuple[str, ...]
    steps: tuple[Step, ...]
    source: str
    description: str | None = None
    chiller: str | None = None
    on_interlock: str = "abort"
    dewpoint: str = "wait"
    dewpoint_timeout: float = 3600.0
    dewpoint_margin: float | None = None
    safe_setpoint: float | None = None

    def step_modules(self, step: Step) -> list[str]:
        """The modules a module or scan step concerns (its `modules`, else the recipe's)."""
        given = getattr(step, "modules", None)
        return list(given if given else self.modules)

    def describe(self, step: Step) -> str:
        if isinstance(step, ModuleStep | IvScanStep):
            return step.describe(self.step_modules(step))
        return step.describe()

    def uses_chiller(self) -> bool:
        """It sets or waits for the chiller (or sets it when aborted)."""
        return self.safe_setpoint is not None or any(
            isinstance(s, SetpointStep | WaitStableStep) for _, s in self.leaves()
        )

    def leaves(self) -> Iterator[tuple[tuple[int, ...], Step]]:
        """Every step but the repeats, once each, with its place (0-based indices)."""
        yield from _leaves(self.steps, ())

    def total_steps(self, limit: float = math.inf) -> float:
        """The steps a run takes, repeats unrolled (at most `limit` + 1 counted)."""
        return _count(self.steps, limit)

    def hold_time(self, steps: tuple[Step, ...] | None = None) -> float:
        """The holds of `steps` (default: the whole recipe), repeats unrolled, s."""
        total = 0.0
        for step in self.steps if steps is None else steps:
            if isinstance(step, HoldStep):
                total += step.hold
            elif isinstance(step, RepeatStep):
                total += step.repeat * self.hold_time(step.steps)
        return total


def _leaves(steps: tuple[Step, ...], at: tuple[int, ...]):
    for i, step in enumerate(steps):
        if isinstance(step, RepeatStep):
            yield from _leaves(step.steps, (*at, i))
        else:
            yield (*at, i), step


def _count(steps: tuple[Step, ...], limit: float) -> float:
    total = 0.0
    for step in steps:
        total += step.repeat * _count(step.steps, limit) if isinstance(step, RepeatStep) else 1
        if total > limit:
            return total
    return total


def human_path(at: tuple[int, ...] | list[int]) -> str:
    """`4.2`: the place of a step, counted from 1."""
    return ".".join(str(i + 1) for i in at)


def file_path(at: tuple[int, ...] | list[int]) -> str:
    """`steps.3.steps.1`: the place of a step in the file (0-based, as the lab YAML's keys)."""
    return ".".join(f"steps.{i}" for i in at)


def _human(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g} h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"


# -- parsing --------------------------------------------------------------------------------------


class _Problems:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, at: tuple[int, ...] | None, key: str, message: str) -> None:
        where = f"step {human_path(at)} ({file_path(at)})" if at else ""
        key = shorten(key, 80)
        head = f"{where}, {key}" if where and key else where or key or "(top level)"
        self.lines.append(f"{head}: {shorten(message, 300)}")

    def validation(self, at: tuple[int, ...] | None, exc: ValidationError, prefix: str = ""):
        for err in exc.errors(include_url=False, include_input=False):
            loc = [str(p) for p in err["loc"] if p not in ("function-after", "function-before")]
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            elif err["type"] == "missing":
                msg = "required"
            self.add(at, ".".join([prefix, *loc] if prefix else loc), msg)

    def raise_for(self, source: str) -> None:
        if self.lines:
            shown = self.lines[:MAX_PROBLEMS]
            if len(self.lines) > MAX_PROBLEMS:
                shown.append(f"... and {len(self.lines) - MAX_PROBLEMS} more")
            raise RecipeError(f"{source}: invalid recipe\n  " + "\n  ".join(shown))


def _step(item: Any, at: tuple[int, ...], problems: _Problems, depth: int) -> Step | None:
    if not isinstance(item, dict):
        problems.add(at, "", f"a step is a mapping with one of {', '.join(KINDS)}, got "
                     f"{clip(item, 40)}")  # fmt: skip
        return None
    kinds = [k for k in KINDS if k in item]
    if len(kinds) != 1:
        keys = ", ".join(shorten(str(k), 30) for k in list(item)[:6]) or "nothing"
        why = f"says both {' and '.join(kinds)}" if kinds else f"has {keys}"
        problems.add(at, "", f"a step has exactly one of {', '.join(KINDS)}: this one {why}")
        return None
    if kinds[0] == "repeat":
        try:
            head = RepeatHead.model_validate(item)
        except ValidationError as exc:
            problems.validation(at, exc)
            return None
        children = _steps(head.steps, at, problems, depth + 1)
        return None if children is None else RepeatStep(head.repeat, children)
    try:
        return _MODELS[kinds[0]].model_validate(item)  # type: ignore[return-value]
    except ValidationError as exc:
        problems.validation(at, exc)
        return None


def _steps(
    raw: Any, at: tuple[int, ...], problems: _Problems, depth: int = 0
) -> tuple[Step, ...] | None:
    key = f"{file_path(at)}.steps" if at else "steps"
    if not isinstance(raw, list) or not raw:
        problems.add(None, key, f"a list of steps, got {clip(raw, 40)}")
        return None
    if depth > 16:
        problems.add(None, key, "repeats nested deeper than 16 levels")
        return None
    out = [_step(item, (*at, i), problems, depth) for i, item in enumerate(raw)]
    return None if any(s is None for s in out) else tuple(out)  # type: ignore[arg-type]


def parse_recipe(
    data: Any, source: str = "<recipe>", name: str | None = None, max_steps: int = 100_000
) -> Recipe:
    """A `Recipe` from loaded YAML (or JSON) data; `RecipeError` naming every problem (the
    source, the step, the key). `name`: the default name (a file's stem). Total: any data gives
    a recipe or a `RecipeError`."""
    problems = _Problems()
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: a recipe is a mapping (name, modules, steps, ...), got "
                          f"{clip(data, 40)}")  # fmt: skip
    rest = {k: v for k, v in data.items() if k != "steps"}
    head = None
    try:
        head = RecipeHead.model_validate(rest)
    except ValidationError as exc:
        problems.validation(None, exc)
    steps = _steps(data.get("steps"), (), problems)
    if head is not None and steps is not None:
        _check_modules(head, steps, problems)
    problems.raise_for(source)
    assert head is not None and steps is not None
    recipe = Recipe(
        name=head.name or _default_name(name), modules=tuple(head.modules), steps=steps,
        source=source, description=head.description, chiller=head.chiller,
        on_interlock=head.on_interlock, dewpoint=head.dewpoint,
        dewpoint_timeout=head.dewpoint_timeout, dewpoint_margin=head.dewpoint_margin,
        safe_setpoint=head.safe_setpoint,
    )  # fmt: skip
    if (count := recipe.total_steps(max_steps)) > max_steps:
        what = f"more than {max_steps}" if math.isinf(count) or count > 10 * max_steps else (
            f"{count:.0f}")  # fmt: skip
        raise RecipeError(
            f"{source}: invalid recipe\n  steps: {what} steps in all, repeats unrolled, beyond "
            f"the {max_steps} a run may have (recipes.max_steps)"
        )
    return recipe


def _default_name(name: str | None) -> str:
    if name and re.fullmatch(r"[A-Za-z0-9_.\-]{1,64}", name):
        return name
    return "recipe"


def _check_modules(head: RecipeHead, steps: tuple[Step, ...], problems: _Problems) -> None:
    """A step's `modules` are some of the recipe's; `ivscan.recipe` is the run's to set."""
    for at, step in _leaves(steps, ()):
        given = getattr(step, "modules", None) or []
        other = [m for m in given if m not in head.modules]
        if other:
            problems.add(at, "modules", f"{', '.join(other)} not among the recipe's modules "
                         f"({', '.join(head.modules)})")  # fmt: skip
        if isinstance(step, IvScanStep) and step.ivscan.recipe is not None:
            problems.add(at, "ivscan.recipe", "set by the recipe run itself")


def load_recipe(path: Path | str, max_steps: int = 100_000) -> Recipe:
    """Read and parse a recipe file (UTF-8 YAML, no key given twice); `RecipeError` naming the
    file otherwise."""
    path = Path(path)
    try:
        data = read_yaml(path)
    except YamlFileError as exc:
        raise RecipeError(str(exc)) from None
    return parse_recipe(data, str(path), name=path.stem, max_steps=max_steps)


def recipe_from_text(text: str, source: str, max_steps: int = 100_000) -> Recipe:
    """A recipe from YAML text (`source` names it in errors)."""
    try:
        data = parse_yaml(text, source)
    except YamlFileError as exc:
        raise RecipeError(str(exc)) from None
    return parse_recipe(data, source, name=Path(source).stem, max_steps=max_steps)


# -- against the lab ------------------------------------------------------------------------------


def check_recipe(recipe: Recipe, lab: Any) -> None:
    """`RecipeError` for anything the lab (a `LabConfig`) does not allow: unknown modules, no
    such chiller or one that does not cool the recipe's modules, set points outside its range,
    scan parameters the scan command would refuse (`trackerdcs.ivscan.plan.plan_scan`)."""
    from trackerdcs.config import UnknownChiller
    from trackerdcs.ivscan.plan import plan_scan

    problems = _Problems()
    known = lab.modules()
    unknown = [m for m in recipe.modules if m not in known]
    if unknown:
        problems.add(None, "modules", f"no power channel powers {', '.join(unknown)} (known: "
                     f"{', '.join(known) or 'none'})")  # fmt: skip
    chiller = None
    if recipe.uses_chiller() or recipe.chiller is not None:
        try:
            chiller = lab.chiller(recipe.chiller)
        except UnknownChiller as exc:
            problems.add(None, "chiller", str(exc))
    if chiller is not None and recipe.uses_chiller():
        cooled = lab.cooled_by(chiller)
        warm = [m for m in recipe.modules if m in known and m not in cooled]
        if warm:
            problems.add(None, "modules", f"{', '.join(warm)} not cooled by chiller "
                         f"{chiller.name} (it cools {', '.join(cooled) or 'nothing'})")  # fmt: skip
        low, high = chiller.setpoint_min, chiller.setpoint_max
        if recipe.safe_setpoint is not None and not low <= recipe.safe_setpoint <= high:
            problems.add(None, "safe_setpoint", f"{recipe.safe_setpoint:g} °C is outside "
                         f"chiller {chiller.name}'s range {low:g}..{high:g} °C")  # fmt: skip
    seen: set[int] = set()
    for at, step in recipe.leaves():
        if id(step) in seen:
            continue
        seen.add(id(step))
        step_chiller = getattr(step, "chiller", None)
        if step_chiller is not None and chiller is not None and step_chiller != chiller.name:
            problems.add(at, "chiller", f"the recipe's chiller is {chiller.name}")
        if isinstance(step, SetpointStep) and chiller is not None:
            low, high = chiller.setpoint_min, chiller.setpoint_max
            if not low <= step.setpoint <= high:
                problems.add(at, "setpoint", f"{step.setpoint:g} °C is outside chiller "
                             f"{chiller.name}'s range {low:g}..{high:g} °C "
                             "(setpoint_min/setpoint_max)")  # fmt: skip
        if isinstance(step, IvScanStep):
            for module in recipe.step_modules(step):
                if module not in known:
                    continue
                try:
                    plan_scan(lab, module, step.ivscan, operator="recipe", request_id=None)
                except CommandError as exc:
                    problems.add(at, "ivscan", f"{module}: {exc}")
    problems.raise_for(recipe.source)
