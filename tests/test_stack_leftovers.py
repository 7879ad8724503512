"""Nothing outlives its supervisor (issue 11): a child of `ManagedProcess` dies with the process
that started it, however that one dies, Python or not; and `make run` names what an earlier
stack left running and stops it only when the user says so (never without a terminal, never
under CI). Real processes (a supervisor killed with SIGKILL, `sleep`, a listening child) on free
ports; the full stack is killed the same way in tests/test_local_stack.py."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

from trackerdcs.stack.leftovers import (
    STATE_FILE,
    check_leftovers,
    find_leftovers,
    interactive,
    write_state,
)
from trackerdcs.stack.process import ManagedProcess, free_port, port_open, wait_until

ROOT = Path(__file__).resolve().parent.parent


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


SUPERVISOR = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    from trackerdcs.stack.process import ManagedProcess
    logs = Path(sys.argv[1])
    children = [
        ManagedProcess("sleep", ["sleep", "600"], log_path=logs / "sleep.log").start(),
        ManagedProcess("python", [sys.executable, "-c", "import time; time.sleep(600)"],
                       log_path=logs / "python.log").start(),
    ]
    print(json.dumps([c.pid for c in children]), flush=True)
    time.sleep(600)
""")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_children_die_with_their_supervisor_however_it_dies(tmp_path, sig) -> None:
    supervisor = subprocess.Popen(
        [sys.executable, "-c", SUPERVISOR, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert supervisor.stdout is not None
        pids = json.loads(supervisor.stdout.readline())
        assert len(pids) == 2 and not any(gone(p) for p in pids)
        for pid in pids:  # each in its own session (Ctrl-C reaches the supervisor only)
            assert os.getsid(pid) == pid
        supervisor.send_signal(sig)  # SIGKILL: no handler, no cleanup, as the OOM killer
        supervisor.wait(10)
        wait_until(lambda: all(gone(p) for p in pids), 10, "the children to die")
    finally:
        supervisor.kill()
        supervisor.wait()


@pytest.fixture
def leftover(tmp_path):
    """A process of an 'earlier stack' recorded in its state file, still running."""
    run_dir = tmp_path / "run"
    proc = ManagedProcess("sim-lab", ["sleep", "600"], log_path=run_dir / "sleep.log").start()
    write_state(run_dir, tmp_path / "lab.yml", [("sim-lab", proc.pid, proc.argv)])
    yield run_dir, proc
    proc.kill()


def test_leftovers_are_named_and_not_stopped_without_a_terminal(leftover, tmp_path) -> None:
    run_dir, proc = leftover
    out = io.StringIO()
    assert not check_leftovers(run_dir, tmp_path / "lab.yml", {}, out=out, can_ask=False)
    text = out.getvalue()
    assert f"sim-lab (pid {proc.pid}, in {run_dir.resolve() / STATE_FILE}): sleep 600" in text
    assert f"Stop them first (kill {proc.pid}), then run the stack again." in text
    assert proc.alive


def test_leftovers_are_stopped_when_the_user_says_yes(leftover, tmp_path) -> None:
    run_dir, proc = leftover
    out, asked = io.StringIO(), []

    def no(question: str) -> str:
        asked.append(question)
        return "n"

    assert not check_leftovers(run_dir, tmp_path / "lab.yml", {}, out=out, ask=no, can_ask=True)
    assert asked == ["Stop them now? [y/N] "] and proc.alive
    assert f"Nothing was stopped. To stop them: kill {proc.pid}" in out.getvalue()
    assert check_leftovers(run_dir, tmp_path / "lab.yml", {}, out=out, ask=lambda q: "y",
                           can_ask=True)  # fmt: skip
    assert gone(proc.pid)
    assert not (run_dir / STATE_FILE).exists()


def test_a_recycled_pid_is_not_a_leftover(tmp_path) -> None:
    run_dir = tmp_path / "run"
    proc = ManagedProcess("x", ["sleep", "600"], log_path=run_dir / "x.log").start()
    try:  # the recorded PID was started before the process that has it now
        write_state(run_dir, tmp_path / "lab.yml", [("mosquitto", proc.pid, ["mosquitto"])])
        state = json.loads((run_dir / STATE_FILE).read_text())
        state["processes"][0]["started"] -= 3600
        (run_dir / STATE_FILE).write_text(json.dumps(state))
        assert find_leftovers(run_dir, tmp_path / "lab.yml", {}) == ([], [])
    finally:
        proc.kill()


def test_a_process_that_renames_itself_is_still_recognised(tmp_path) -> None:
    """Node-RED sets its process title to `node-red`: its command line is no longer the one it
    was started with. The recorded PID and start time are what identify it."""
    run_dir = tmp_path / "run"
    proc = ManagedProcess("node-red", ["sleep", "600"], log_path=run_dir / "n.log").start()
    try:
        write_state(run_dir, tmp_path / "lab.yml", [("node-red", proc.pid, ["node", "red.js"])])
        found, _ = find_leftovers(run_dir, tmp_path / "lab.yml", {})
        assert [(lo.pid, lo.name) for lo in found] == [(proc.pid, "node-red")]
    finally:
        proc.kill()


LISTENER = "import socket, sys, time; s = socket.socket(); s.bind(('127.0.0.1', int(sys.argv[1])));"
LISTENER += " s.listen(); time.sleep(600)"


def test_a_port_held_by_our_stack_or_by_another_program(tmp_path) -> None:
    run_dir, config = tmp_path / "run", tmp_path / "lab.yml"
    ours_port, other_port = free_port(), free_port()
    ours = ManagedProcess("ours", [sys.executable, "-c", LISTENER, str(ours_port),
                                   str(run_dir.resolve())], log_path=tmp_path / "o.log",
                          ready=lambda p: port_open("127.0.0.1", ours_port)).start()  # fmt: skip
    other = ManagedProcess("other", [sys.executable, "-c", LISTENER, str(other_port)],
                           log_path=tmp_path / "x.log",
                           ready=lambda p: port_open("127.0.0.1", other_port)).start()  # fmt: skip
    try:
        ports = {ours_port: "mqtt.port", other_port: "influx.port"}
        found, foreign = find_leftovers(run_dir, config, ports)
        assert [(lo.pid, lo.why) for lo in found] == [(ours.pid, f"on port {ours_port}")]
        assert (
            len(foreign) == 1 and f"port {other_port} (influx.port) is held by pid " in foreign[0]
        )
        assert f"{other.pid}, not a process of this stack" in foreign[0]
        out = io.StringIO()
        assert not check_leftovers(run_dir, config, ports, out=out, ask=lambda q: "y",
                                   can_ask=True)  # fmt: skip
        assert other.alive and not ours.alive  # ours stopped (asked), the other never touched
        assert "stop it or set influx.port in the lab YAML" in out.getvalue()
    finally:
        ours.kill()
        other.kill()


def test_ci_or_no_terminal_never_asks(monkeypatch) -> None:
    monkeypatch.setenv("CI", "true")
    assert not interactive()
    monkeypatch.delenv("CI")
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))  # not a TTY
    assert not interactive()
