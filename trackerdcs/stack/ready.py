"""When a started process is ready: the line it logs, and for a daemon its prefixes online.

A daemon logs its "serving ..." line when it has built its services, before its MQTT links have
connected: each link connects on its own, subscribes to its commands, then publishes `online` on
`<prefix>/availability` (`trackerdcs.mqtt.MqttLink`). A command published before that is lost
(MQTT delivers to the subscriptions that exist). So a daemon is ready when it has logged its line
and every prefix it serves says `online`: the check of `trackerdcs-health`, the containers'
healthcheck.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from trackerdcs import health
from trackerdcs.config import ConfigError, load_config
from trackerdcs.stack.process import ManagedProcess

Ready = Callable[[ManagedProcess], bool]
CHECK_TIMEOUT = 0.5  # s: one look at the retained availability (a live `online` ends it)
CHECK_INTERVAL = 0.2  # s between two looks (each is a connection to the broker)


def logged(text: str) -> Ready:
    """Ready when the process has logged `text` since it started."""
    return lambda proc: text in proc.output()


def serving(text: str) -> Serving:
    """Ready when the process has logged `text` and, a daemon, its prefixes are online."""
    return Serving(text)


class Serving:
    """Ready when the process has logged `text` and, when its command line runs a trackerdcs
    daemon that serves MQTT prefixes, every one of them is `online` (`trackerdcs.health.check`
    with the lab YAML and options of that command line, the process's directory for a relative
    lab YAML, and the process's environment for the login). Any other process: `line`.

    Asked again within `CHECK_INTERVAL` of a look, it answers False (not looked yet): it is
    asked until it says True. The lab YAML is read at the first look, once the process has
    logged `text` (it has read the file too). A broker that cannot be reached, or refuses the
    login, is not ready. Raises RuntimeError when the lab YAML cannot be read, or the options
    name no crate or chiller of the lab (`ManagedProcess.start` then stops the process and
    raises it).
    """

    def __init__(self, text: str) -> None:
        self.line = logged(text)  # the process's own line only, without the broker
        self._online: Callable[[], bool] | None = None  # made at the first look
        self._next_look = 0.0

    def __call__(self, proc: ManagedProcess) -> bool:
        if not self.line(proc):
            return False
        if self._online is None:
            self._online = _online_check(proc)
        if time.monotonic() < self._next_look:  # looked less than CHECK_INTERVAL ago: not yet
            return False
        ready = self._online()
        self._next_look = time.monotonic() + CHECK_INTERVAL
        return ready


def _online_check(proc: ManagedProcess) -> Callable[[], bool]:
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
    try:  # now, not at every look: it will not get better
        lab = load_config(target.config)
        served = health.prefixes(lab, target)
    except (health.HealthError, ConfigError, OSError) as exc:
        raise RuntimeError(f"cannot tell when {proc.name} is ready: {exc}") from None
    if not served:
        return lambda: True
    env = {**os.environ, **proc.env} if proc.env else None

    def online() -> bool:
        ok, _ = health.check(lab, target, CHECK_TIMEOUT, env)
        return ok

    return online
