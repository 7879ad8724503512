"""When a started process is ready: the line it logs, and for a daemon its prefixes online.

A daemon logs its "serving ..." line when it has built its services, before its MQTT links have
connected: each link connects on its own, subscribes to its commands, then publishes `online` on
`<prefix>/availability` (`trackerdcs.mqtt.MqttLink`). A command published before that is lost
(MQTT delivers to the subscriptions that exist). So a daemon is ready when it has logged its line
and every prefix it serves says `online`: the check of `trackerdcs-health`, the containers'
healthcheck.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from trackerdcs import health
from trackerdcs.stack.process import ManagedProcess

Ready = Callable[[ManagedProcess], bool]
CHECK_TIMEOUT = 0.5  # s per look at the retained availability; the look is repeated


def logged(text: str) -> Ready:
    """Ready when the process has logged `text` since it started."""
    return lambda proc: text in proc.output()


def serving(text: str) -> Ready:
    """Ready when the process has logged `text` and, when its command line runs a trackerdcs
    daemon that serves MQTT prefixes, every one of them is `online` (`trackerdcs.health.check`,
    with the lab YAML and options of that command line). Any other process: `logged(text)`.

    The lab YAML is read at the first look, after the process has logged `text` (so it had
    read the file too). A broker that cannot be reached, or refuses the login, is not ready.
    Raises RuntimeError when the options name no crate, chiller or sensor of the lab
    (`ManagedProcess.start` then stops the process and raises it).
    """
    seen_line = logged(text)
    check: list[Callable[[], bool]] = []  # made at the first look

    def ready(proc: ManagedProcess) -> bool:
        if not seen_line(proc):
            return False
        if not check:
            check.append(_daemon_check(proc))
        return check[0]()

    return ready


def _daemon_check(proc: ManagedProcess) -> Callable[[], bool]:
    try:
        target = health.target_from_argv(proc.argv)
    except health.HealthError:  # not a daemon: a simulator, the ingest, Node-RED
        return lambda: True
    if target.service not in health.SERVICES or target.service.startswith("sim-"):
        return lambda: True
    if not target.config:  # a daemon needs one: it has exited, which `start` reports
        return lambda: True
    if proc.cwd is not None:  # a relative lab YAML is the process's, from its directory
        target.config = str(Path(proc.cwd) / target.config)
    lab = health.load_config(target.config)
    try:  # now, not at every look: options that name nothing will never be ready
        served = health.prefixes(lab, target)
    except health.HealthError as exc:
        raise RuntimeError(f"cannot tell when {proc.name} is ready: {exc}") from None
    if not served:
        return lambda: True

    def online() -> bool:
        ok, _ = health.check(lab, target, CHECK_TIMEOUT)
        return ok

    return online
