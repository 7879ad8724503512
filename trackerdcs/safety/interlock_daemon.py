"""The interlock daemon: the lab YAML's `interlocks` rules, evaluated on every message.

trackerdcs-interlock --config examples/lab.yml
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from trackerdcs.clientids import client_id
from trackerdcs.config import LabConfig
from trackerdcs.mqtt import MqttLink
from trackerdcs.runner import daemon_main
from trackerdcs.safety.config import safety_problem
from trackerdcs.safety.interlock import SOURCE, InterlockService, interlock_prefix, subscriptions
from trackerdcs.safety.supervision import SupervisionBeacon

log = logging.getLogger(__name__)


class InterlockDaemon:
    def __init__(self, lab: LabConfig, loop: asyncio.AbstractEventLoop) -> None:
        prefix = interlock_prefix(lab)
        self.link = MqttLink(
            lab.mqtt,
            prefix,
            client_id=client_id(lab, "interlock"),
            on_command=lambda cmd: self.service.handle_command(cmd),
            subscribe=subscriptions(lab),
            on_message=lambda msg: self.service.on_message(
                msg.topic, msg.payload, bool(msg.retain)
            ),
            command_max_age=lab.interlocks.command_max_age,
            loop=loop,
        )
        self.service = InterlockService(lab, self.link, loop)
        self.prefix = prefix
        self.loop = loop
        self.grace = lab.interlocks.startup_grace
        # the power daemons that require it ramp their HV down when it stops (supervision.py)
        self.beacon = SupervisionBeacon(
            self.link, loop, prefix, SOURCE, lab.interlocks.supervision_interval
        )
        self._beacon_start: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self.link.start()
        self.service.start()
        # supervising once the retained statuses are in (the start-up grace)
        self._beacon_start = self.loop.call_later(self.grace, self.beacon.start)
        log.info("serving interlocks on %s (%d rule(s))", self.prefix, len(self.service.states))

    def stop(self) -> None:
        if self._beacon_start is not None:
            self._beacon_start.cancel()
        self.beacon.stop()
        self.service.stop()
        self.link.stop()


def build(lab: LabConfig, loop: asyncio.AbstractEventLoop, args: argparse.Namespace):
    return InterlockDaemon(lab, loop)


def main(argv: list[str] | None = None) -> int:
    return daemon_main("trackerdcs-interlock", __doc__, build, argv, validate=safety_problem)


if __name__ == "__main__":
    sys.exit(main())
