"""When a started process counts as ready (`trackerdcs.stack.ready`): a daemon's "serving"
line comes before its MQTT links have subscribed, so a daemon is ready once every prefix it
serves says `online` too. The test plays the daemon (its log line, its retained availability)
on a real broker; `make run`, the benchmarks and every test lab start their daemons so."""

from __future__ import annotations

import sys

import pytest

from tests.conftest import write_lab
from trackerdcs.stack.process import ManagedProcess, free_port
from trackerdcs.stack.ready import logged, serving


def not_started(workdir, name: str, argv: list[str], line: str = "") -> ManagedProcess:
    """A process as the ready check sees it: its command line, its directory, what it has
    logged."""
    proc = ManagedProcess(name, argv, log_path=workdir / f"ready-{name}.log")
    proc.log_path.write_text(line)
    return proc


def test_a_daemon_is_ready_when_it_has_logged_its_line_and_every_prefix_is_online(
    workdir, broker, client
) -> None:
    config = write_lab(workdir / "ready.yml", mqtt_port=broker.port, ca_port=free_port())
    argv = [sys.executable, "-m", "trackerdcs.safety.alarms_daemon", "--config", str(config)]

    def ready(proc: ManagedProcess) -> bool:  # a first look each time: looks are spaced
        return serving("serving alarms")(proc)

    for topic in ("/alarms/availability", "/audit/availability"):
        client.publish(topic, "online", retain=True)  # an earlier run's, before its line
    assert not ready(not_started(workdir, "alarms-quiet", argv))  # no line: not yet
    proc = not_started(workdir, "alarms", argv, "... serving alarms on /alarms ...\n")
    assert ready(proc)
    client.publish("/audit/availability", "offline", retain=True)  # one of its two links
    assert not ready(proc)
    client.publish("/audit/availability", "online", retain=True)
    assert ready(proc)
    relative = not_started(workdir, "alarms-here", [*argv[:-1], config.name], "serving alarms\n")
    relative.cwd = config.parent  # the lab YAML named from the process's own directory
    assert serving("serving alarms")(relative)
    for topic in ("/alarms/availability", "/audit/availability"):
        client.publish(topic, "", retain=True)  # cleared: the retained copies gone
    assert not ready(proc)  # silent is not online


def test_a_process_that_serves_no_prefix_is_ready_on_its_line(workdir) -> None:
    config = write_lab(workdir / "ready-sim.yml", mqtt_port=free_port(), ca_port=free_port())
    for module in ("trackerdcs.sim.lab", "trackerdcs.sim.crate"):  # no broker asked
        argv = [sys.executable, "-m", module, "--config", str(config)]
        proc = not_started(workdir, module, argv, "virtual lab serving\n")
        assert logged("serving")(proc) and serving("serving")(proc)
    mosquitto = not_started(workdir, "mosquitto", ["mosquitto", "-c", "x.conf"], "serving\n")
    assert serving("serving")(mosquitto)


def test_a_daemon_whose_options_name_nothing_is_an_error_not_a_wait(workdir) -> None:
    config = write_lab(workdir / "ready-bad.yml", mqtt_port=free_port(), ca_port=free_port())
    argv = [sys.executable, "-m", "trackerdcs.power.daemon", "--config", str(config),
            "--crate", "nosuch"]  # fmt: skip
    proc = not_started(workdir, "power-bad", argv, "serving crate\n")
    with pytest.raises(RuntimeError, match="no crate named 'nosuch'"):
        serving("serving crate")(proc)
