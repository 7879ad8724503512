"""`trackerdcs recipe ...`: check a recipe file, run it on the dcs daemon with its progress, and
pause, resume, abort or watch the running one.

trackerdcs recipe check FILE [--config lab.yml]   validate it against the lab, nothing sent
trackerdcs recipe run FILE [--no-wait]            check it here, send it, follow it (Ctrl-C aborts)
trackerdcs recipe start NAME                      a recipe of the lab's folder (recipes.dir)
trackerdcs recipe pause|resume|abort
trackerdcs recipe status [--follow]

Exit status: 0 completed (or done), 3 aborted (by someone, or an interlock), 1 refused or
failed, 2 a bad recipe file or arguments.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, TextIO

from trackerdcs.config import load_config
from trackerdcs.topics import RECIPE


def _minutes(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def describe(status: dict[str, Any]) -> str:
    """One line of a run's progress."""
    rep = ""
    if status.get("repetition"):
        rep = f" (repetition {status['repetition']}/{status['repetitions']})"
    line = (f"[{status.get('step')}/{status.get('steps')}] step {status.get('path') or '-'}{rep}: "
            f"{status.get('text') or '-'} {status.get('state')}")  # fmt: skip
    if status.get("time_left") is not None:
        line += f", {_minutes(status['time_left'])} left of this hold"
    if status.get("min_time_left"):
        line += f", {_minutes(status['min_time_left'])} of holds to go"
    for key in ("waiting", "paused"):
        if status.get(key):
            line += f"; {key}: {status[key]}"
    return line


class Progress:
    """A run's progress: redrawn in place on a terminal, one line per change of step or state
    otherwise."""

    def __init__(self, out: TextIO) -> None:
        self.out, self.tty, self.last = out, out.isatty(), None

    def __call__(self, status: dict[str, Any]) -> None:
        key = tuple(status.get(k) for k in ("step", "state", "waiting", "paused"))
        if self.tty:
            self.out.write(f"\r{describe(status)}\033[K")
        elif key != self.last:
            self.out.write(describe(status) + "\n")
        self.last = key
        self.out.flush()

    def done(self) -> None:
        if self.tty and self.last is not None:
            self.out.write("\n")


def _check(args: argparse.Namespace) -> tuple[Any, Any]:
    """The recipe file, checked against the lab, and its data; `RecipeError` otherwise."""
    from trackerdcs.labyaml import YamlFileError, read_yaml
    from trackerdcs.recipe.model import RecipeError, check_recipe, parse_recipe

    lab = load_config(args.config)
    try:
        data = read_yaml(args.file)
    except YamlFileError as exc:
        raise RecipeError(str(exc)) from None
    stem = os.path.splitext(os.path.basename(args.file))[0]
    recipe = parse_recipe(data, args.file, name=stem, max_steps=lab.recipes.max_steps)
    check_recipe(recipe, lab)
    return recipe, data


def _cmd_check(args: argparse.Namespace) -> int:
    from trackerdcs.recipe.model import RecipeError

    try:
        recipe, _ = _check(args)
    except RecipeError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(f"{args.file}: ok (recipe {recipe.name} on {', '.join(recipe.modules)}: "
          f"{recipe.total_steps():.0f} steps, holds {recipe.hold_time():g} s in all)")  # fmt: skip
    return 0


def _report(status: dict[str, Any]) -> int:
    print(f"{status.get('recipe')} {status.get('run')}: {status.get('outcome')}: "
          f"{status.get('reason')}")  # fmt: skip
    for scan in status.get("scans") or []:
        print(f"  IV scan {scan.get('scan')} ({scan.get('module')}, step {scan.get('path')}): "
              f"{scan.get('outcome')}")  # fmt: skip
    return {"completed": 0, "failed": 1}.get(str(status.get("outcome")), 3)


def _follow(lab: Any, run: str, abort_on_interrupt: bool) -> int:
    progress = Progress(sys.stderr)
    try:
        final = lab.wait_recipe(run, progress)
    except KeyboardInterrupt:
        progress.done()
        if not abort_on_interrupt:
            return 0
        print("aborting the recipe (its scans stopped, its modules switched off) ...",
              file=sys.stderr)  # fmt: skip
        lab.abort_recipe()
        final = lab.wait_recipe(run, progress)
    progress.done()
    return _report(final)


def _cmd_run(args: argparse.Namespace) -> int:
    from trackerdcs.client import DcsError, Lab
    from trackerdcs.recipe.model import RecipeError

    try:
        recipe, data = _check(args)  # the daemon checks it again
    except RecipeError as exc:
        print(exc, file=sys.stderr)
        return 2
    try:
        with Lab(args.config, name=args.name, timeout=args.timeout) as lab:
            answer = lab.start_recipe(data, file=os.path.basename(args.file))
            print(f"recipe {recipe.name}: run {answer['run']} started ({answer['steps']} steps)",
                  file=sys.stderr)  # fmt: skip
            if args.no_wait:
                return 0
            return _follow(lab, answer["run"], abort_on_interrupt=True)
    except DcsError as exc:
        print(f"trackerdcs recipe: {exc}", file=sys.stderr)
        return 1


def _cmd_start(args: argparse.Namespace) -> int:
    from trackerdcs.client import DcsError, Lab

    try:
        with Lab(args.config, name=args.name, timeout=args.timeout) as lab:
            answer = lab.start_recipe(args.file)
            print(f"recipe {answer['recipe']}: run {answer['run']} started ({answer['steps']} "
                  "steps)", file=sys.stderr)  # fmt: skip
            if args.no_wait:
                return 0
            return _follow(lab, answer["run"], abort_on_interrupt=True)
    except DcsError as exc:
        print(f"trackerdcs recipe: {exc}", file=sys.stderr)
        return 1


def _cmd_control(args: argparse.Namespace) -> int:
    from trackerdcs.client import DcsError, Lab

    try:
        with Lab(args.config, name=args.name, timeout=args.timeout) as lab:
            if args.command == "status":
                status = lab.wait_until(lab.recipe_status, args.timeout, RECIPE.status)
                if args.follow and status.get("run") and status.get("ended") is None:
                    return _follow(lab, status["run"], abort_on_interrupt=False)
                print(describe(status) if status.get("run") else "no recipe has run yet")
                if status.get("ended") is not None:
                    _report(status)
                return 0
            verb = {"pause": lab.pause_recipe, "resume": lab.resume_recipe,
                    "abort": lab.abort_recipe}[args.command]  # fmt: skip
            answer = verb()
            print(f"{args.command}: {answer.get('run')}")
            return 0
    except DcsError as exc:
        print(f"trackerdcs recipe: {exc}", file=sys.stderr)
        return 1


def add_recipe_commands(sub: argparse._SubParsersAction) -> None:
    """Register `recipe` on the `trackerdcs` parser."""
    p = sub.add_parser("recipe", help="thermal-cycle recipes on the dcs daemon")
    verbs = p.add_subparsers(dest="command", required=True)

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--config", default="examples/lab.yml", help="lab YAML file")
        q.add_argument("--name", default=os.environ.get("USER") or "operator",
                       help="sender in the audit log")  # fmt: skip
        q.add_argument("--timeout", type=float, default=10.0, help="s for the daemon's answer")

    q = verbs.add_parser("check", help="validate a recipe file against the lab (nothing sent)")
    q.add_argument("file")
    common(q)
    q.set_defaults(func=_cmd_check)
    q = verbs.add_parser("run", help="check a recipe file, run it, follow it (Ctrl-C aborts)")
    q.add_argument("file")
    q.add_argument("--no-wait", action="store_true", help="start it and return")
    common(q)
    q.set_defaults(func=_cmd_run)
    q = verbs.add_parser("start", help="run a recipe of the lab's folder by name (or a path on "
                         "the daemon's machine)")  # fmt: skip
    q.add_argument("file", metavar="NAME")
    q.add_argument("--no-wait", action="store_true", help="start it and return")
    common(q)
    q.set_defaults(func=_cmd_start)
    for verb, text in (("pause", "pause the running recipe"), ("resume", "resume it"),
                       ("abort", "abort it: scans stopped, modules off"),
                       ("status", "the latest run's progress")):  # fmt: skip
        q = verbs.add_parser(verb, help=text)
        if verb == "status":
            q.add_argument("--follow", action="store_true", help="until the running one ends")
        common(q)
        q.set_defaults(func=_cmd_control)
