"""The recipes of the dcs daemon: `/dcs/cmd/recipe/{start|pause|resume|abort}`.

`start` takes a recipe by name (`<recipes.dir>/<name>.yml` or `.yaml`), by path (a file on the
daemon's machine: anything with a `/`, or a name not in the folder), or itself: a JSON object
`{"recipe": {...the recipe's mapping...}, "file": "burnin.yml"}` (what `trackerdcs recipe run
FILE` sends, having checked the file where it is). Before anything moves the recipe is parsed
and checked against the lab (`trackerdcs.recipe.model`), and refused with the file, the step
and the key of each problem; so is a start while a recipe runs, with a module busy (in a
sequence or an IV scan), held by an interlock, or a chiller without a status yet. An accepted
start is answered at once (`run`: the run's id, `recipe`, `steps`); the run goes on in a thread
of its own on the Python client (`trackerdcs.client.Lab`: its own MQTT connection, commands
with ids `recipe:<n>`), one recipe at a time. `pause`, `resume` and `abort` take any value;
`abort` is always executed (`trackerdcs.commands.ALWAYS_EXECUTED`).

It reports:
- `/dcs/recipe/status` (retained): the latest run (step, repetition, time left, why it waits or
  is paused, its scans), and the recipes of the folder; on change and every `recipes.heartbeat`;
- `/dcs/recipe/action`: the start, every step, pauses, interlocks and the end, for the audit log;
- `<ivscan.results_dir>/recipes/<run id>.json`: the run's record, its steps and scans.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trackerdcs.client import procedure_client, sync_or_refuse
from trackerdcs.commands import CommandError, sender_of
from trackerdcs.config import LabConfig, UnknownChiller
from trackerdcs.guard import clip
from trackerdcs.ivscan.plan import scan_id
from trackerdcs.mqtt import Command, MqttLink, PayloadError, unix_time
from trackerdcs.payloads import RecipeAction, RecipeStatus, dump
from trackerdcs.recipe.model import Recipe, RecipeError, check_recipe, load_recipe, parse_recipe
from trackerdcs.recipe.procedure import DewPoint, RecipeRun
from trackerdcs.safety.config import rule_chiller, rule_modules
from trackerdcs.topics import DCS, RECIPE, ServiceTopics

log = logging.getLogger(__name__)

COMMANDS = ("recipe/start", "recipe/pause", "recipe/resume", "recipe/abort")  # under /dcs/cmd/
SOURCE = "recipe"
STATUS_TOPIC = RECIPE.status
ACTION_TOPIC = RECIPE.action
STOP_JOIN = 3.0  # s the daemon waits at its stop for a run to switch its modules' HV off
NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
START_KEYS = {"recipe", "file"}
MAX_LISTED = 200  # recipe names listed in the status


def idle_status() -> dict[str, Any]:
    """The status before the first run (`RecipeStatus` but `recipes` and `time`)."""
    return {
        "state": "IDLE", "recipe": None, "run": None, "file": None, "operator": None,
        "modules": [], "step": 0, "steps": 0, "path": None, "text": None, "repetition": None,
        "repetitions": None, "time_left": None, "min_time_left": None, "waiting": None,
        "paused": None, "on_interlock": None, "outcome": None, "reason": None, "scans": [],
        "started": None, "ended": None, "id": None,
    }  # fmt: skip


def dewpoint_guard(lab: LabConfig, recipe: Recipe, chiller: Any | None) -> DewPoint:
    """How close to the dew point the recipe's set points may come: the margin of the lab's
    dew-point rules that concern its chiller (those that name it, or protect a module it
    cools) and their sensors; without such a rule, `recipe.dewpoint_margin` (else
    `recipes.dewpoint_margin`) above every room sensor's dew point. A recipe's own
    `dewpoint_margin` may only widen a rule's."""
    if chiller is None:
        return DewPoint(0.0, [])
    cooled = set(lab.cooled_by(chiller))
    rules = []
    for rule in lab.interlocks.rules:
        if rule.kind != "dewpoint_margin":
            continue
        try:
            watched = rule_chiller(lab, rule)
        except UnknownChiller:
            watched = None
        if (watched is not None and watched.name == chiller.name) or (
            cooled & set(rule_modules(lab, rule))
        ):
            rules.append(rule)
    prefixes = {s.name: s.prefix for s in lab.sensors}
    if rules:
        margin = max([r.margin for r in rules] + [recipe.dewpoint_margin or 0.0])
        sensors = sorted({prefixes[r.sensor] for r in rules if r.sensor in prefixes})
        return DewPoint(margin, sensors)
    rooms = [s.prefix for s in lab.sensors if s.kind.value == "room"]
    return DewPoint(recipe.dewpoint_margin or lab.recipes.dewpoint_margin, rooms)


class RecipeService:
    """The recipe runs of the dcs daemon. `busy(module)` is why a module may not start a
    recipe now (a sequence, a scan), or None."""

    def __init__(
        self, lab: LabConfig, link: MqttLink, loop: asyncio.AbstractEventLoop, recipes_dir: Path,
        results_dir: Path | None = None, busy: Callable[[str], str | None] = lambda m: None,
        clock: Callable[[], float] = time.time,
    ) -> None:  # fmt: skip
        self.lab = lab
        self.link = link
        self.loop = loop
        self.recipes_dir = recipes_dir
        self.results_dir = results_dir
        self.busy = busy
        self.clock = clock
        self.client = procedure_client(lab, SOURCE)
        self.run: RecipeRun | None = None  # the latest run
        self.thread: threading.Thread | None = None
        self._heartbeat: asyncio.TimerHandle | None = None

    # -- life -------------------------------------------------------------------------------------
    def start(self) -> None:
        self.client.connect(wait=False)
        self._publish_status()

    def stop(self) -> None:
        """Abort a running run: it switches its modules' HV off (the sequencer is stopping)."""
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        thread, run = self.thread, self.run
        if thread is not None and run is not None and thread.is_alive():
            run.abort("the dcs daemon is stopping", stopping=True)
            thread.join(STOP_JOIN)
            self.link.publish_state(STATUS_TOPIC, json.dumps(self.status()))
        self.client.close()

    def running(self) -> RecipeRun | None:
        """The run in progress, or None."""
        thread = self.thread
        return self.run if thread is not None and thread.is_alive() else None

    def holding(self, modules: list[str]) -> list[str]:
        """Those of `modules` a running recipe works on."""
        run = self.running()
        return [m for m in modules if run is not None and m in run.recipe.modules]

    def abort(self, reason: str) -> bool:
        """Abort the running run (a module of it switched off by someone else); whether one
        ran."""
        run = self.running()
        if run is not None:
            run.abort(reason)
        return run is not None

    # -- commands (on the loop) -------------------------------------------------------------------
    def handle_command(self, cmd: Command) -> None:
        parts = cmd.parts
        try:
            if len(parts) != 2 or f"{parts[0]}/{parts[1]}" not in COMMANDS:
                known = ", ".join(DCS.command(c) for c in COMMANDS)
                raise CommandError(f"unknown command {clip(cmd.action, 60)} (known: {known})")
            value, request_id = cmd.decoded()
            who = sender_of(request_id) or "unknown"
            if parts[1] == "start":
                run = self._start(value, who, request_id)
                self.link.respond(cmd, True, None, run=run.run_id, recipe=run.recipe.name,
                                  steps=run.steps)  # fmt: skip
                return
            run = self.running()
            if run is None:
                raise CommandError("no recipe is running")
            if parts[1] == "abort":
                run.abort(f"by {who}")
                self.link.respond(cmd, True, None, run=run.run_id)
                return
            if parts[1] == "resume":  # judged on the lab as new as the command
                sync_or_refuse(self.client)
            refusal = run.pause(who) if parts[1] == "pause" else run.resume(who)
            if refusal is not None:
                raise CommandError(refusal)
            self.link.respond(cmd, True, None, run=run.run_id)
        except (CommandError, PayloadError) as exc:
            self.link.respond(cmd, False, str(exc))

    def _start(self, value: Any, who: str, request_id: str | None) -> RecipeRun:
        running = self.running()
        if running is not None:
            raise CommandError(
                f"recipe {running.recipe.name} is running ({running.run_id}, {running.state}): "
                f"abort it first ({DCS.command('recipe/abort')})"
            )
        recipe = self._recipe(value)
        try:
            check_recipe(recipe, self.lab)
        except RecipeError as exc:
            raise CommandError(_one_line(exc)) from None
        if not self.client.connected:
            raise CommandError("the recipe client is not connected to the broker yet")
        sync_or_refuse(self.client)  # judged on the lab as new as the command
        for module in recipe.modules:
            if why := self.busy(module):
                raise CommandError(why)
        chiller = None  # check_recipe: the chiller it uses exists
        if recipe.uses_chiller() or recipe.chiller is not None:
            chiller = self.lab.chiller(recipe.chiller)
        if (
            recipe.uses_chiller()
            and self.client.latest(ServiceTopics(chiller.prefix).status) is None
        ):
            raise CommandError(f"no status from chiller {chiller.name} ({chiller.prefix}) yet: "
                               "is its daemon running?")  # fmt: skip
        run = RecipeRun(
            self.client, recipe, self, run_id=scan_id(recipe.name), operator=who,
            request_id=request_id, dewpoint=dewpoint_guard(self.lab, recipe, chiller),
            chiller=chiller.name if chiller is not None else None,
            results_dir=self.results_dir, clock=self.clock,
        )  # fmt: skip
        if holding := run.interlock_reason():
            raise CommandError(f"{', '.join(recipe.modules)}: {holding}")
        self.run = run
        self.thread = threading.Thread(target=self._run, args=(run,), daemon=True,
                                       name=f"recipe-{recipe.name}")  # fmt: skip
        self.thread.start()
        return run

    def _recipe(self, value: Any) -> Recipe:
        """The recipe a start command names (see the module's doc)."""
        limit = self.lab.recipes.max_steps
        try:
            if isinstance(value, dict):
                unknown = set(value) - START_KEYS
                if unknown or "recipe" not in value:
                    keys = clip(sorted(value), 60)
                    raise CommandError("start takes a recipe name, a path, or {\"recipe\": {...}, "
                                       f"\"file\": NAME}}, got keys {keys}")  # fmt: skip
                source = value.get("file") or "the start command"
                if not isinstance(source, str) or len(source) > 200:
                    raise CommandError("file: a file name (text, up to 200 characters)")
                return parse_recipe(value["recipe"], source, name=Path(source).stem,
                                    max_steps=limit)  # fmt: skip
            if not isinstance(value, str) or not value.strip():
                raise CommandError(f"start takes a recipe name or a path, got {clip(value, 40)}")
            return load_recipe(self._path(value.strip()), max_steps=limit)
        except RecipeError as exc:
            raise CommandError(_one_line(exc)) from None

    def _path(self, text: str) -> Path:
        if "/" not in text and NAME.fullmatch(text):
            for name in (f"{text}.yml", f"{text}.yaml", text):
                path = self.recipes_dir / name
                if path.suffix in (".yml", ".yaml") and path.is_file():
                    return path
        path = Path(text)
        if path.suffix not in (".yml", ".yaml"):
            known = ", ".join(self.available()) or "none"
            raise CommandError(f"no recipe {clip(text, 60)} in {self.recipes_dir} (known: "
                               f"{known}); a path must end in .yml or .yaml")  # fmt: skip
        if not path.is_file():
            raise CommandError(f"no recipe file {clip(text, 100)} (on the dcs daemon's machine)")
        return path

    def available(self) -> list[str]:
        """The recipes of the folder, by name."""
        try:
            files = list(self.recipes_dir.iterdir())
        except OSError:
            return []
        names = sorted({p.stem for p in files if p.suffix in (".yml", ".yaml")
                        and NAME.fullmatch(p.stem)})  # fmt: skip
        return names[:MAX_LISTED]

    def _run(self, run: RecipeRun) -> None:
        try:
            run.run()
        except Exception:  # run() reports its own errors; this is the last guard
            log.exception("recipe run %s: unexpected error", run.run_id)
        finally:
            self.changed(run)

    # -- the run's reports (its thread) -----------------------------------------------------------
    def changed(self, run: RecipeRun) -> None:
        self.loop.call_soon_threadsafe(self._publish_status)

    def event(self, run: RecipeRun, event: str, text: str, ok: bool | None = None) -> None:
        payload = RecipeAction(
            time=unix_time(self.clock()), source=SOURCE, event=event, recipe=run.recipe.name,
            run=run.run_id, modules=list(run.recipe.modules), path=run.path,
            step=run.step or None, ok=ok, text=text, id=run.request_id,
        )  # fmt: skip
        log.info("recipe %s: %s: %s", run.run_id, event, text)
        self.link.publish(ACTION_TOPIC, json.dumps(dump(payload)), qos=1)

    # -- status (on the loop) ---------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        status = self.run.status() if self.run is not None else idle_status()
        status = {**status, "recipes": self.available(), "time": unix_time(self.clock())}
        return dump(RecipeStatus.model_validate(status))

    def _publish_status(self) -> None:
        """`/dcs/recipe/status`, on change and every `recipes.heartbeat` s (rescheduled first:
        a payload that fails never ends the heartbeat)."""
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        self._heartbeat = self.loop.call_later(self.lab.recipes.heartbeat, self._publish_status)
        self.link.publish_state(STATUS_TOPIC, json.dumps(self.status()))


def _one_line(exc: Exception) -> str:
    """A recipe's error message (several lines) as one answer."""
    return "; ".join(line.strip() for line in str(exc).splitlines())
