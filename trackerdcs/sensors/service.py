"""One sensor's MQTT service (`/<name>`), on the daemon's asyncio loop.

Lines and source errors arrive from the source's thread through `call_soon_threadsafe`.
`/<name>/status` (retained) is published every `publish_interval` s while the source's thread
runs, and at once when `stale` or `error` change (a line that fails, a reading that goes stale,
a sensor that comes back). Its `time` is when the source last reported (a line, good or bad, or
a failure of the line) while the reading it holds is fresh; a stale status (no reading) is the
daemon's judgement at publication, stamped then. A source thread that has
ended is fatal (`trackerdcs.guard`): the daemon exits to be restarted rather than republish.
`/<name>/availability` follows the service (last will); `/<name>/cmd/refresh` republishes now.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from trackerdcs.config import MqttConfig
from trackerdcs.guard import FAULTS, clip
from trackerdcs.mqtt import Command, MqttLink, unix_time
from trackerdcs.payloads import SensorStatus, dump
from trackerdcs.sensors.sensor import SensorState
from trackerdcs.topics import ServiceTopics

log = logging.getLogger(__name__)

COMMANDS = ("refresh",)


class SensorService:
    def __init__(
        self,
        state: SensorState,
        mqtt: MqttConfig,
        client_id: str,
        loop: asyncio.AbstractEventLoop,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.state = state
        self.cfg = state.cfg
        self.loop = loop
        self.link = MqttLink(
            mqtt,
            self.cfg.prefix,
            client_id=client_id,
            on_command=self.handle_command,
            loop=loop,
        )
        self.clock = clock
        self.source: Any = None  # the source (`alive()`), set by the daemon
        self.reported: float | None = None  # unix s of the source's latest line or failure
        self._flags: tuple[bool, str | None] | None = None  # (stale, error) last published
        self._periodic: asyncio.TimerHandle | None = None
        self._stale_check: asyncio.TimerHandle | None = None

    @property
    def topic(self) -> str:
        return ServiceTopics(self.cfg.prefix).status

    # -- from the source (on the loop) -----------------------------------------------------------
    def on_line(self, line: str) -> None:
        where = f"the line handling of {self.cfg.prefix}"
        self.reported = time.time()
        try:
            self.state.ingest(line, self.clock())
        except Exception as exc:  # a line no parser foresaw: an error of the sensor, reported
            self.state.error = FAULTS.fault(where, exc, line)
        else:
            FAULTS.ok(where)
        if self.state.read_at is not None and self._stale_check is None:
            self._watch_staleness()
        self._publish_if_flags_changed()

    def on_error(self, reason: str) -> None:
        self.reported = time.time()
        self.state.source_failed(reason)
        self._publish_if_flags_changed()

    # -- publishing ------------------------------------------------------------------------------
    def start(self) -> None:
        self.publish()

    def stop(self) -> None:
        for handle in (self._periodic, self._stale_check):
            if handle is not None:
                handle.cancel()

    def publish(self) -> None:
        if self._periodic is not None:  # first: a payload that fails never ends the period
            self._periodic.cancel()
        self._periodic = self.loop.call_later(self.cfg.publish_interval, self._on_period)
        snapshot = self.state.snapshot(self.clock())
        self._note_flags(snapshot)
        fresh = not snapshot["stale"] and self.reported is not None
        status = SensorStatus(**snapshot, time=unix_time(self.reported if fresh else None))
        self.link.publish_state(self.topic, json.dumps(dump(status)))

    def _on_period(self) -> None:
        """The periodic status, while the source's thread runs (see the module doc)."""
        self._periodic = None
        if self.source is not None and not self.source.alive():
            FAULTS.fatal(f"{self.cfg.prefix}: the thread reading {self.cfg.source} has ended")
            return
        self.publish()

    def _note_flags(self, snapshot: dict[str, Any]) -> None:
        flags = (snapshot["stale"], snapshot["error"])
        if self._flags is not None and flags != self._flags:
            if snapshot["error"]:
                log.warning("%s: stale=%s, %s", self.cfg.name, flags[0], snapshot["error"])
            else:
                log.info("%s: reading again", self.cfg.name)
        self._flags = flags

    def _publish_if_flags_changed(self) -> None:
        snapshot = self.state.snapshot(self.clock())
        if (snapshot["stale"], snapshot["error"]) != self._flags:
            self.publish()

    def _watch_staleness(self) -> None:
        """Check again just after the latest reading would go stale."""
        self._stale_check = None
        read_at = self.state.read_at
        if read_at is None:
            return
        due = read_at + self.cfg.stale_timeout - self.clock()
        if due < 0:
            self._publish_if_flags_changed()
            return  # stale now: the next good line restarts the watch
        self._stale_check = self.loop.call_later(due + 0.01, self._watch_staleness)

    # -- commands --------------------------------------------------------------------------------
    def handle_command(self, cmd: Command) -> None:
        if cmd.action == "refresh":
            self.publish()
            self.link.respond(cmd, True, None)
            return
        known = ", ".join(ServiceTopics(self.cfg.prefix).command(c) for c in COMMANDS)
        self.link.respond(cmd, False, f"unknown command {clip(cmd.action, 60)} (known: {known})")
