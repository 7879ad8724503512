"""`make run`'s stack, started as the README says, and the README's example commands as written.

This test uses the stack's standard ports (MQTT 1883, Channel Access 5064 on 127.0.0.1), because
the README's commands do: stop a running `make run` before running the tests.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT
from tests.labdata import EXAMPLE
from tests.mqttclient import TestClient
from trackerdcs import health
from trackerdcs.config import load_config
from trackerdcs.stack.process import port_open, wait_until

README = ROOT / "README.md"
# the stack starts examples/lab.yml (the Makefile's CONFIG): the README's commands name its
# channels and modules, and the tests take them from it
HV, LV, LIMITED = EXAMPLE.channel("hv", 0), EXAMPLE.channel("lv", 1), EXAMPLE.limited("hv")
BREAKDOWN = next(  # the module whose sensor breaks down below its maximum (virtual_lab.modules)
    m for m, iv in EXAMPLE.data["virtual_lab"]["modules"].items() if "breakdown_voltage" in iv
)


def status_of(channels: list[dict], name: str) -> dict:
    """The entry of channel `name` in a `/hv/status` or `/lv/status` payload."""
    return next(c for c in channels if c["name"] == name)


def readme_example(name: str) -> list[str]:
    """The command lines of the ```sh block after `<!-- readme-example: NAME -->`."""
    text = README.read_text()
    match = re.search(rf"<!-- readme-example: {name} -->\s*```sh\n(.*?)```", text, re.S)
    assert match, f"README has no example block {name!r}"
    return [line for line in match.group(1).splitlines() if line.strip()]


def readme_documented_answer() -> dict:
    line = next(
        line for line in README.read_text().splitlines() if line.startswith("/hv/response {")
    )
    return json.loads(line.split(" ", 1)[1])


class LineReader:
    """Collects a child's stdout lines on a thread; `wait` for one matching a pattern."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self._cond = threading.Condition()
        threading.Thread(target=self._read, args=(proc,), daemon=True).start()

    def _read(self, proc) -> None:
        for line in proc.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()

    def wait(self, pattern: str, timeout: float) -> str:
        with self._cond:
            ok = self._cond.wait_for(
                lambda: any(re.search(pattern, line) for line in self.lines), timeout
            )
        assert ok, f"no line matching {pattern!r}; got:\n" + "\n".join(self.lines[-30:])
        return next(line for line in self.lines if re.search(pattern, line))


@pytest.fixture
def stack(tmp_path):
    for port in (1883, 5064, 1880, 8086, 8088):
        if port_open("127.0.0.1", port):
            pytest.fail(f"127.0.0.1:{port} is in use: stop `make run` (or the other server) first")
    proc = subprocess.Popen(
        [sys.executable, "-m", "trackerdcs.cli", "stack", "--config", "examples/lab.yml",
         "--run-dir", str(tmp_path / "run")],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    out = LineReader(proc)
    try:
        out.wait(r"Ctrl-C stops everything", timeout=60)
        yield proc, out
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(20)


def test_make_run_stack_and_the_readme_commands(stack, tmp_path):
    proc, out = stack
    summary = "\n".join(out.lines)
    for name, where in (
        ("mosquitto", "mqtt://127.0.0.1:1883"),
        ("sim-lab", "ca://127.0.0.1:5064"),
        (
            f"power-{EXAMPLE.data['crates'][0]['name']}",
            " ".join(dict.fromkeys(c.prefix for c in EXAMPLE.channels())),
        ),
        ("julabo", "/julabo"),
        ("sensors", "/sensor_1 +4"),
        ("influxdb", "http://127.0.0.1:8086"),
        ("(?:ingest|telegraf)", "MQTT -> trackerdcs"),
    ):
        assert re.search(rf"{name}\s+\d+\s+{re.escape(where)}", summary), summary
    pids = [int(p) for p in re.findall(r"ok: pid (\d+)", summary)]
    assert len(pids) == 11  # the seven above, interlock, alarms, dcs and node-red
    # ready means subscribed: by the summary, every prefix of every daemon says `online`
    lab = load_config(ROOT / "examples" / "lab.yml")
    served = [prefix for service in ("power", "julabo", "sensors", "interlock", "alarms", "dcs")
              for prefix in health.prefixes(lab, health.Target(service))]  # fmt: skip
    assert set(health.availability(lab.mqtt, served, 5).values()) == {"online"}, served

    client = TestClient(1883)
    try:
        client.wait_for("/hv/status", lambda m: all(c["state"] == "OFF" for c in m.json), 10)
        commands = readme_example("power")
        assert commands[0].startswith("mosquitto_sub")
        # by number, by module, all, by name: the lab's channels
        assert [shlex.split(line)[4] for line in commands[1:]] == [
            HV.topic("setv", by="number"), HV.topic("switch", by="number"),
            LV.topic("switch", by="module"), f"{HV.prefix}/cmd/setv/all", LIMITED.topic("setv"),
        ]  # fmt: skip
        sub = subprocess.Popen(shlex.split(commands[0]), stdout=subprocess.PIPE, text=True)
        sub_out = LineReader(sub)
        try:
            sub_out.wait(r"^/hv/status \[", timeout=5)  # the retained status, at once
            since = client.mark()
            for line in commands[1:]:
                subprocess.run(line, shell=True, check=True, timeout=10)
            answers = [
                client.wait_for("/+/response", lambda m, t=topic: m.json["topic"] == t, 5, since)
                for topic in (shlex.split(line)[4] for line in commands[1:])
            ]
            assert [a.json["ok"] for a in answers] == [True] * 4 + [False]
            assert answers[3].json["id"] == "my-ramp"
            assert answers[-1].json == readme_documented_answer()

            def hv_on_at_150(m):
                ch = status_of(m.json, HV.name)
                return ch["state"] == "ON" and ch["vreq"] == 150.0 and abs(ch["vmon"] - 150) < 2

            client.wait_for(f"{HV.prefix}/status", hv_on_at_150, timeout=10, since=since)

            def lv_on(m):
                return status_of(m.json, LV.name)["state"] == "ON"

            client.wait_for(f"{LV.prefix}/status", lv_on, 5, since)
            sub_out.wait(r"^/hv/response .*my-ramp", timeout=5)
            sub_out.wait(r'"state": "RAMPING_UP"', timeout=5)
        finally:
            sub.terminate()
            sub.wait(5)
    finally:
        client.close()

    check_control_ui(summary, tmp_path / "run")

    proc.send_signal(signal.SIGINT)  # what Ctrl-C does
    assert proc.wait(20) == 0
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or _zombie(pid), f"pid {pid} still runs"
    wait_until(lambda: not port_open("127.0.0.1", 1883), 5, "port 1883 to close")
    assert "stopping the stack" in "\n".join(out.lines)


def check_control_ui(summary: str, run_dir: Path) -> None:
    """Node-RED: the dashboard answers on 127.0.0.1:1880, the editor wants the logged password."""
    url = "http://127.0.0.1:1880/"
    assert re.search(rf"node-red\s+\d+\s+{re.escape(url)}dashboard/", summary), summary
    password_file = run_dir / "node-red" / "admin-password"
    assert f"editor {url} (user admin, password in {password_file}" in summary
    assert password_file.stat().st_mode & 0o077 == 0
    with urllib.request.urlopen(url + "dashboard/", timeout=5) as reply:
        assert reply.status == 200
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url + "flows", timeout=5)
    assert refused.value.code == 401
    login = {"client_id": "node-red-admin", "grant_type": "password", "scope": "*",
             "username": "admin", "password": password_file.read_text().strip()}  # fmt: skip
    data = urllib.parse.urlencode(login).encode()
    with urllib.request.urlopen(url + "auth/token", data=data, timeout=5) as reply:
        assert reply.status == 200
    # on loopback the dashboard's login is off (TRACKERDCS_UI_LOGIN=on turns it on); the History
    # page's CSV export reads the stack's InfluxDB as the read-only user nodered
    assert "dashboard login off" in summary
    with urllib.request.urlopen(url + "dashboard/_setup", timeout=5) as reply:
        assert json.loads(reply.read())["trackerdcs"] == {"login": False, "user": None,
                                                         "logout": "/logout"}  # fmt: skip
    now = int(time.time() * 1000)
    export = f"{url}export/history.csv?from={now - 3_600_000}&to={now}"
    with urllib.request.urlopen(export, timeout=120) as reply:
        assert reply.status == 200 and reply.read().startswith(b"time,measurement,")


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True


def test_readme_cooling_commands(stack, tmp_path):
    """The README's chiller commands, run as written against `make run`'s stack; then the
    chiller daemon killed: restarted, it answers again once its `online` is back."""
    commands = readme_example("cooling")
    documented = next(
        json.loads(line.split(" ", 1)[1])
        for line in README.read_text().splitlines()
        if line.startswith("/julabo/response {")
    )
    client = TestClient(1883)
    try:
        client.wait_for("/julabo/status", lambda m: m.json["state"] == "STOPPED", 10)
        client.wait_for("/sensor_1/status", lambda m: not m.json["stale"], 10)
        since = client.mark()
        printed = []
        for line in commands:
            result = subprocess.run(
                line, shell=True, check=True, timeout=10, capture_output=True, text=True
            )
            printed.append(result.stdout)
        sent = [shlex.split(line) for line in commands if line.startswith("mosquitto_pub")]
        answers = [
            client.wait_for(
                "/julabo/response",
                lambda m, t=argv[4], p=argv[6]: (m.json["topic"], m.json["payload"]) == (t, p),
                5,
                since,
            )
            for argv in sent
        ]
        assert [a.json["ok"] for a in answers] == [True, True, False]
        assert answers[-1].json == documented
        assert json.loads(printed[0])["state"] == "STOPPED"
        room = json.loads(printed[-1])
        assert room["name"] == "sensor_1" and isinstance(room["dewpoint"], float)
        status = client.wait_for(
            "/julabo/status", lambda m: m.json["state"] == "RUNNING", 5, since
        ).json
        assert status["setpoint"] == -10.0

        _, out = stack
        state = json.loads((tmp_path / "run" / "stack.json").read_text())
        pid = next(p["pid"] for p in state["processes"] if p["name"] == "julabo")
        since = client.mark()
        os.kill(pid, signal.SIGKILL)
        out.wait(r"! julabo exited \(-9\); restart 1/5", 10)
        client.wait_for("/julabo/availability", lambda m: m.text == "offline", 10, since)  # will
        client.wait_for("/julabo/availability", lambda m: m.text == "online", 20, since)
        # subscribed once `online`: answered at once, refused while the line is not yet open
        answer = client.command("/julabo/cmd/setpoint", -12, "/julabo/response")
        assert answer["ok"] or "DISCONNECTED" in answer["error"], answer
        client.wait_for("/julabo/status", lambda m: m.json["state"] == "RUNNING", 10, since)
        assert client.command("/julabo/cmd/setpoint", -12, "/julabo/response")["ok"]
        assert not any("failed to restart" in line for line in out.lines)
    finally:
        client.close()


def test_readme_data_commands(stack):
    """`make run` keeps every status in InfluxDB; the README's data commands, as written."""
    from trackerdcs.ingest.influxdb import InfluxClient

    db = InfluxClient("http://127.0.0.1:8086")
    for measurement, field in (("hv", "vmon"), ("lv", "vmon"), ("julabo", "bath_temp"),
                               ("sensor", "dewpoint")):  # fmt: skip
        wait_until(lambda m=measurement, f=field: db.count(m, f) > 0, 15, f"{measurement} points")
    client = TestClient(1883)
    try:  # the retained counters, once they count what was written (published every 5 s)
        client.wait_for("/ingest/status", lambda m: m.json["written"] > 0, 10)
    finally:
        client.close()
    commands = readme_example("data")
    assert shlex.split(commands[2])[2:4] == ["channel", HV.name]
    printed = [
        subprocess.run(
            line, shell=True, check=True, timeout=30, capture_output=True, text=True, cwd=ROOT
        ).stdout
        for line in commands
    ]
    assert "name: hv" in printed[0] and EXAMPLE.channel("hv", -1).name in printed[0]
    counters = json.loads(printed[1])
    assert counters["written"] > 0 and counters["dropped"] == 0
    header, *rows = printed[2].splitlines()
    assert header.startswith("time,measurement,") and rows
    assert all(",hv," in row and f",{HV.name}," in row for row in rows)


def test_a_killed_stack_leaves_nothing_behind(stack, tmp_path):
    """The supervisor killed as the OOM killer would (SIGKILL: no handler runs): every process
    of the stack ends with it, mosquitto, influxd and node included, and the ports are free;
    its `run/stack.json` stays behind and a new `make run` finds nothing alive in it."""
    from trackerdcs.stack.leftovers import find_leftovers
    from trackerdcs.stack.local import stack_ports

    proc, _ = stack
    run_dir = tmp_path / "run"
    state = json.loads((run_dir / "stack.json").read_text())
    assert state["supervisor"]["pid"] == proc.pid
    pids = [p["pid"] for p in state["processes"]]
    assert len(pids) == 11 and all(Path(f"/proc/{pid}").exists() for pid in pids)
    proc.send_signal(signal.SIGKILL)
    proc.wait(5)
    for pid in pids:
        wait_until(lambda p=pid: not Path(f"/proc/{p}").exists() or _zombie(p), 30, f"pid {pid}")
    for port in (1883, 5064, 1880, 8086, 8088):
        wait_until(lambda p=port: not port_open("127.0.0.1", p), 10, f"port {port} to close")
    config = ROOT / "examples" / "lab.yml"
    ports = stack_ports(load_config(config))
    assert find_leftovers(run_dir, config, ports) == ([], [])


def test_readme_ivscan_commands(stack, tmp_path):
    """The README's IV scans, run as written against `make run`'s stack: the first module to the
    end, the one whose sensor breaks down into its breakdown, every module side by side; results in
    the run directory."""
    commands = readme_example("ivscan")
    first, modules = EXAMPLE.modules[0], EXAMPLE.modules
    assert [shlex.split(line)[2] for line in commands[:2]] == [first, BREAKDOWN]
    client = TestClient(1883)
    try:
        client.wait_for("/hv/status", lambda m: all(c["state"] == "OFF" for c in m.json), 10)
        client.wait_for("/dcs/ivscan/status", lambda m: True, 10)
        done = [
            subprocess.run(line, shell=True, timeout=120, capture_output=True, text=True, cwd=ROOT)
            for line in commands[:2]
        ]
        assert done[0].returncode == 0, done[0].stderr
        assert f"{first}: completed: completed 9 steps" in done[0].stdout
        assert f"{first} [####################] 9/9" in done[0].stderr
        csv = tmp_path / "run" / "ivscans" / first
        assert [p.suffix for p in sorted(csv.iterdir())] == [".csv", ".png"]
        broke = f"{BREAKDOWN}: breakdown: breakdown at 4"
        assert done[1].returncode == 3 and broke in done[1].stdout
        since = client.mark()
        subprocess.run(commands[2], shell=True, check=True, timeout=10, cwd=ROOT)
        answer = client.wait_for("/dcs/response", lambda m: m.json["id"] == "alice:iv", 5, since)
        assert answer.json["ok"] and sorted(answer.json["scans"]) == sorted(modules)
        scans = answer.json["scans"]
        client.wait_for("/dcs/ivscan/status", lambda m: all(
            m.json["scans"][k]["scan"] == v and m.json["scans"][k]["outcome"] == "completed"
            and m.json["scans"][k]["ended"] for k, v in scans.items()), 60, since)  # fmt: skip
        printed = subprocess.run(commands[3], shell=True, check=True, timeout=10,
                                 capture_output=True, text=True).stdout  # fmt: skip
        assert json.loads(printed)["scans"][modules[-1]]["scan"] == scans[modules[-1]]
    finally:
        client.close()


def test_readme_recipe_commands(stack):
    """The README's recipe commands, run as written against `make run`'s stack: the example
    recipe checked, started by name from `examples/recipes/`, paused, resumed and aborted; the
    Module tests page served, the past scans' index retained."""
    commands = readme_example("recipe")
    client = TestClient(1883)
    try:
        client.wait_for("/dcs/recipe/status", lambda m: True, 10)
        client.wait_for("/dcs/ivscan/results", lambda m: isinstance(m.json["scans"], list), 10)

        def run(line: str) -> subprocess.CompletedProcess:
            done = subprocess.run(line, shell=True, timeout=30, capture_output=True, text=True,
                                  cwd=ROOT)  # fmt: skip
            status = client.latest("/dcs/recipe/status")
            assert done.returncode == 0, (line, done.stdout, done.stderr, status and status.json)
            return done

        checked = shlex.split(commands[0])[3]  # the recipe's own modules, lab modules all
        recipe_modules = yaml.safe_load((ROOT / checked).read_text())["modules"]
        assert set(recipe_modules) <= set(EXAMPLE.modules)
        assert f"quick on {', '.join(recipe_modules)}: 18 steps" in run(commands[0]).stdout
        since = client.mark()
        run(commands[1])
        answer = client.wait_for("/dcs/response", lambda m: m.json["id"] == "alice:r1", 10, since)
        assert answer.json["ok"] and answer.json["recipe"] == "quick", answer.json
        client.wait_for("/dcs/recipe/status", lambda m: m.json["state"] == "RUNNING", 10, since)
        assert json.loads(run(commands[2]).stdout)["run"] == answer.json["run"]
        for line, state in zip(commands[3:], ("PAUSED", "RUNNING", "ABORTED"), strict=True):
            since = client.mark()
            run(line)
            client.wait_for("/dcs/recipe/status", lambda m, s=state: m.json["state"] == s, 30,
                            since)  # fmt: skip
        page = urllib.request.urlopen("http://127.0.0.1:1880/dashboard/moduletests", timeout=10)
        assert page.status == 200
    finally:
        client.close()
