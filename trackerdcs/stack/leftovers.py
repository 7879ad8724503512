"""Leftovers of an earlier local stack: found, named, and stopped only with the user's consent.

Every process of the stack dies with its supervisor (`ManagedProcess`: a parent-death signal),
however the supervisor dies. What can still be left over — a stack from before that, a process
that ignored its SIGTERM, a supervisor still running in another terminal — is found two ways:

- the state file `run/stack.json`, which the supervisor rewrites whenever it starts a process
  and removes on a clean stop: a recorded PID that is alive and was started when the recorded
  one was (not a recycled PID; the command line cannot tell: Node-RED renames itself
  `node-red`) is a leftover, and so is the recorded supervisor if it still runs;
- the stack's ports: a process listening on one of them whose command line names this stack's
  run directory or lab file is a leftover too. Any other process there is not ours: it is named,
  never stopped.

`check_leftovers` tells the user which processes they are and, on a terminal (and not under
`CI`), offers to stop them (SIGTERM, then SIGKILL after `STOP_TIMEOUT` s); otherwise it prints
how to stop them and the stack does not start (exit status 1). Nothing is ever killed silently.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import psutil

STATE_FILE = "stack.json"
STOP_TIMEOUT = 10.0  # s for leftovers to end on SIGTERM before SIGKILL


@dataclass(frozen=True)
class Leftover:
    pid: int
    name: str  # the stack's name for it, or the executable's
    command: str  # its command line (shortened)
    why: str  # how it was recognised

    def describe(self) -> str:
        return f"{self.name} (pid {self.pid}, {self.why}): {self.command}"


def _started(pid: int) -> float | None:
    """When process `pid` started (unix s), None if it does not run."""
    try:
        return psutil.Process(pid).create_time()
    except (psutil.Error, OSError):
        return None


def write_state(run_dir: Path, config: Path, processes: Iterable[tuple[str, int, list[str]]]):
    """Record the running stack: the supervisor and each `(name, pid, argv)`, with when each
    started (what tells a recorded PID from a recycled one)."""
    me = os.getpid()
    state = {
        "supervisor": {"pid": me, "argv": psutil.Process().cmdline(), "started": _started(me)},
        "config": str(config),
        "processes": [
            {"name": n, "pid": p, "argv": a, "started": _started(p)} for n, p, a in processes
        ],
        "time": time.time(),
    }
    path = run_dir / STATE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1))
    tmp.replace(path)


def clear_state(run_dir: Path) -> None:
    (run_dir / STATE_FILE).unlink(missing_ok=True)


def _command(proc: psutil.Process) -> list[str] | None:
    try:
        return proc.cmdline()
    except (psutil.Error, OSError):
        return None


def _short(argv: list[str], limit: int = 160) -> str:
    text = " ".join(argv)
    return text if len(text) <= limit else text[:limit] + "..."


def _alive_as(entry: Any) -> bool:
    """The recorded process (`pid`, `started`) still runs (a recycled PID started later)."""
    if not isinstance(entry, dict) or not isinstance(entry.get("argv"), list):
        return False
    pid, started = entry.get("pid"), entry.get("started")
    if not isinstance(pid, int) or pid <= 1 or pid == os.getpid():
        return False
    if not isinstance(started, int | float):
        return False
    try:
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE and abs(proc.create_time() - started) < 0.5
    except (psutil.Error, OSError):
        return False


def _from_state(run_dir: Path) -> list[Leftover]:
    try:
        state = json.loads((run_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(state, dict):
        return []
    found = []
    supervisor = state.get("supervisor")
    if _alive_as(supervisor):
        found.append(Leftover(supervisor["pid"], "supervisor", _short(supervisor["argv"]),
                              "an earlier stack, still running"))  # fmt: skip
    processes = state.get("processes")
    for entry in processes if isinstance(processes, list) else []:
        if _alive_as(entry):
            found.append(Leftover(entry["pid"], str(entry.get("name")), _short(entry["argv"]),
                                  f"in {run_dir / STATE_FILE}"))  # fmt: skip
    return found


def _listeners(ports: Iterable[int]) -> dict[int, int]:
    """Port -> PID of the process listening on it (TCP, any address), for the given ports."""
    wanted = set(ports)
    found: dict[int, int] = {}
    try:
        connections = psutil.net_connections(kind="tcp")
    except (psutil.Error, OSError):
        return found
    for conn in connections:
        listening = conn.status == psutil.CONN_LISTEN and conn.laddr and conn.pid is not None
        if listening and conn.laddr.port in wanted:
            found.setdefault(conn.laddr.port, conn.pid)
    return found


def find_leftovers(
    run_dir: Path, config: Path, ports: dict[int, str]
) -> tuple[list[Leftover], list[str]]:
    """This stack's leftovers, and what else holds one of its `ports` (port -> the lab YAML key
    that sets it), described."""
    run_dir, config = run_dir.resolve(), config.resolve()
    ours = _from_state(run_dir)
    known = {lo.pid for lo in ours}
    foreign = []
    for port, pid in sorted(_listeners(ports).items()):
        if pid in known or pid == os.getpid():
            continue
        try:
            proc = psutil.Process(pid)
            argv = _command(proc) or [proc.name()]
        except (psutil.Error, OSError):
            continue
        text = " ".join(argv)
        if str(run_dir) in text or str(config) in text:
            known.add(pid)
            ours.append(Leftover(pid, Path(argv[0]).name, _short(argv), f"on port {port}"))
        else:
            foreign.append(
                f"port {port} ({ports[port]}) is held by pid {pid}, not a process of this stack: "
                f"{_short(argv)}; stop it or set {ports[port]} in the lab YAML"
            )
    return ours, foreign


def stop_leftovers(leftovers: list[Leftover], timeout: float = STOP_TIMEOUT) -> list[int]:
    """SIGTERM each (the supervisor first: it stops its own), then SIGKILL what is left after
    `timeout` s; the PIDs that had to be killed."""
    procs = []
    for leftover in sorted(leftovers, key=lambda lo: lo.name != "supervisor"):
        try:
            proc = psutil.Process(leftover.pid)
            proc.terminate()
            procs.append(proc)
        except (psutil.Error, OSError):
            continue
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for proc in alive:
        try:
            proc.kill()
        except (psutil.Error, OSError):
            continue
    psutil.wait_procs(alive, timeout=timeout)
    return [p.pid for p in alive]


def interactive() -> bool:
    """A user at a terminal, not a CI job: the stack may ask before it stops anything."""
    ci = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")
    return sys.stdin is not None and sys.stdin.isatty() and not ci


def check_leftovers(
    run_dir: Path, config: Path, ports: dict[int, str], out: TextIO = sys.stdout,
    ask: Callable[[str], str] = input, can_ask: bool | None = None,
) -> bool:  # fmt: skip
    """Before a stack starts: True to go on; False when something must be stopped first (what
    and how has been printed). Leftovers are stopped only if the user says yes."""
    leftovers, foreign = find_leftovers(run_dir, config, ports)
    for line in foreign:
        print(f"trackerdcs: {line}", file=out)
    if not leftovers:
        return not foreign
    print("trackerdcs: processes of an earlier stack are still running:", file=out)
    for leftover in leftovers:
        print(f"  {leftover.describe()}", file=out)
    pids = " ".join(str(lo.pid) for lo in leftovers)
    if can_ask is None:
        can_ask = interactive()
    if not can_ask:
        print(f"Stop them first (kill {pids}), then run the stack again.", file=out, flush=True)
        return False
    try:
        answer = ask("Stop them now? [y/N] ")
    except EOFError:
        answer = ""
    if answer.strip().lower() not in ("y", "yes"):
        print(f"Nothing was stopped. To stop them: kill {pids}", file=out, flush=True)
        return False
    killed = stop_leftovers(leftovers)
    print(f"stopped {len(leftovers)} process(es)" + (f" (killed {killed})" if killed else ""),
          file=out, flush=True)  # fmt: skip
    clear_state(run_dir)
    return not foreign
