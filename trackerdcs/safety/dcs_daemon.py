"""The DCS supervisor daemon: module on/off sequences on `/dcs/cmd/module/{name}`, IV scans
on `/dcs/cmd/ivscan/{module|all}` and thermal-cycle recipes on `/dcs/cmd/recipe/...`.

trackerdcs-dcs --config examples/lab.yml [--results-dir DIR] [--recipes-dir DIR]

A module that is scanning refuses an `on` sequence; an `off` stops its scan first (the scan
ramps its channel down) and then switches it off. A module busy in a sequence refuses a scan.
A module a recipe works on refuses `on` and scans from anyone but the recipe (its commands'
ids are `recipe:<n>`); an `off` of it aborts the recipe. A recipe does not start on a module
that is busy.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from trackerdcs.clientids import client_id
from trackerdcs.commands import ALWAYS_EXECUTED, CommandError, parse_switch, sender_of
from trackerdcs.config import LabConfig
from trackerdcs.ivscan.service import IvScanService
from trackerdcs.mqtt import Command, MqttLink, PayloadError
from trackerdcs.recipe.service import SOURCE as RECIPE
from trackerdcs.recipe.service import RecipeService
from trackerdcs.runner import daemon_main
from trackerdcs.safety.config import safety_problem
from trackerdcs.safety.sequencer import PREFIX, SequencerService

log = logging.getLogger(__name__)


class DcsDaemon:
    def __init__(
        self, lab: LabConfig, loop: asyncio.AbstractEventLoop, results_dir: Path | None = None,
        recipes_dir: Path | None = None,
    ) -> None:  # fmt: skip
        self.link = MqttLink(
            lab.mqtt,
            PREFIX,
            client_id=client_id(lab, "dcs"),
            on_command=self.handle_command,
            subscribe=SequencerService.subscriptions(lab),
            on_message=lambda msg: self.service.on_message(
                msg.topic, msg.payload, bool(msg.retain)
            ),
            command_max_age=lab.sequencer.command_max_age,
            always_executed=ALWAYS_EXECUTED["sequencer"],
            loop=loop,
        )
        self.service = SequencerService(lab, self.link, loop)
        self.ivscan = IvScanService(lab, self.link, loop, results_dir, busy=self._sequencing)
        self.recipes = RecipeService(lab, self.link, loop, recipes_dir or Path(lab.recipes.dir),
                                     self.ivscan.results_dir, busy=self._busy)  # fmt: skip

    def _sequencing(self, module: str) -> str | None:
        running = self.service.running.get(module)
        if running is None:
            return None
        return f"{module} is busy switching {'on' if running[0] else 'off'} (/dcs/cmd/module)"

    def _busy(self, module: str) -> str | None:
        if self.ivscan.scanning(module):
            return f"{module} is scanning (IV scan): stop it first (/dcs/cmd/ivscan/{module} stop)"
        return self._sequencing(module)

    def _recipe_holds(self, cmd: Command, names: list[str]) -> list[str]:
        """Those of `names` a running recipe works on, for a command not from the recipe."""
        try:
            sender = sender_of(cmd.decoded()[1])
        except PayloadError:
            sender = None
        return [] if sender == RECIPE else self.recipes.holding(names)

    def handle_command(self, cmd: Command) -> None:
        """`recipe/...` to the recipes, `ivscan/...` to the scans; `module/...` to the
        sequencer, after the scans and the recipe had their say: a scanning module refuses
        `on`, and `off` stops its scan first; a module in a recipe refuses `on` and scans from
        others, and their `off` aborts the recipe."""
        parts = cmd.parts
        if parts[0] == "recipe":
            self.recipes.handle_command(cmd)
            return
        if parts[0] == "ivscan":
            stop = cmd.payload.strip().lower() == "stop" or '"stop"' in cmd.payload
            names = self.ivscan.modules if len(parts) == 2 and parts[1] == "all" else parts[1:2]
            held = [] if stop else self._recipe_holds(cmd, names)
            if held:
                self.link.respond(cmd, False, self._in_recipe(held))
                return
            self.ivscan.handle_command(cmd)
            return
        if parts[0] == "module" and len(parts) == 2:
            try:
                on = parse_switch(cmd.decoded()[0])
            except (CommandError, PayloadError):
                on = None  # the sequencer answers the error
            names = self.service.modules if parts[1] == "all" else [parts[1]]
            held = self._recipe_holds(cmd, names)
            if on and held:
                self.link.respond(cmd, False, self._in_recipe(held))
                return
            scanning = [m for m in names if self.ivscan.scanning(m)]
            if on and scanning:
                self.link.respond(cmd, False, f"{', '.join(scanning)} scanning (IV scan): stop it "
                                  "first (/dcs/cmd/ivscan/{module} stop)")  # fmt: skip
                return
            if on is False:
                if held:
                    who = sender_of(cmd.request_id()) or "unknown"
                    self.recipes.abort(f"{', '.join(held)} switched off by {who}")
                for module in scanning:
                    self.ivscan.stop_module(module, f"module {module} switched off")
        self.service.handle_command(cmd)

    def _in_recipe(self, modules: list[str]) -> str:
        run = self.recipes.running()
        name = f"recipe {run.recipe.name} ({run.run_id})" if run else "a recipe"
        return (f"{', '.join(modules)} in {name}: pause or abort it first "
                "(/dcs/cmd/recipe/abort)")  # fmt: skip

    def start(self) -> None:
        self.link.start()
        self.service.start()
        self.ivscan.start()
        self.recipes.start()
        log.info(
            "serving the sequencer on %s (modules %s); IV scan results in %s; recipes from %s",
            PREFIX,
            ", ".join(self.service.modules) or "none",
            self.ivscan.results_dir,
            self.recipes.recipes_dir,
        )

    def stop(self) -> None:
        self.recipes.stop()  # first: it stops its scans and switches its modules' HV off
        self.ivscan.stop()
        self.service.stop()
        self.link.stop()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results-dir", help="IV scan results (default: ivscan.results_dir)")
    parser.add_argument("--recipes-dir", help="recipe files (default: recipes.dir, relative to "
                        "the lab YAML's folder)")  # fmt: skip


def recipes_dir(lab: LabConfig, config_path: str | Path) -> Path:
    """`recipes.dir`; relative: to the lab YAML's folder."""
    path = Path(lab.recipes.dir)
    return path if path.is_absolute() else Path(config_path).parent / path


def build(lab: LabConfig, loop: asyncio.AbstractEventLoop, args: argparse.Namespace):
    results = getattr(args, "results_dir", None)
    recipes = getattr(args, "recipes_dir", None)
    return DcsDaemon(lab, loop, Path(results) if results else None,
                     Path(recipes) if recipes else recipes_dir(lab, args.config))  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    return daemon_main("trackerdcs-dcs", __doc__, build, argv, add_arguments=add_arguments,
                       validate=safety_problem)  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
