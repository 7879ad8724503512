"""The DCS supervisor daemon: module on/off sequences on `/dcs/cmd/module/{name}`.

trackerdcs-dcs --config examples/lab.yml
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from trackerdcs.clientids import client_id
from trackerdcs.commands import ALWAYS_EXECUTED
from trackerdcs.config import LabConfig
from trackerdcs.mqtt import MqttLink
from trackerdcs.runner import daemon_main
from trackerdcs.safety.config import safety_problem
from trackerdcs.safety.sequencer import PREFIX, SequencerService

log = logging.getLogger(__name__)


class DcsDaemon:
    def __init__(self, lab: LabConfig, loop: asyncio.AbstractEventLoop) -> None:
        self.link = MqttLink(
            lab.mqtt,
            PREFIX,
            client_id=client_id(lab, "dcs"),
            on_command=lambda cmd: loop.call_soon_threadsafe(self.service.handle_command, cmd),
            subscribe=SequencerService.subscriptions(lab),
            on_message=lambda msg: loop.call_soon_threadsafe(
                self.service.on_message, msg.topic, msg.payload, bool(msg.retain)
            ),
            command_max_age=lab.sequencer.command_max_age,
            always_executed=ALWAYS_EXECUTED["sequencer"],
        )
        self.service = SequencerService(lab, self.link, loop)

    def start(self) -> None:
        self.link.start()
        self.service.start()
        log.info(
            "serving the sequencer on %s (modules %s)",
            PREFIX,
            ", ".join(self.service.modules) or "none",
        )

    def stop(self) -> None:
        self.service.stop()
        self.link.stop()


def build(lab: LabConfig, loop: asyncio.AbstractEventLoop, args: argparse.Namespace):
    return DcsDaemon(lab, loop)


def main(argv: list[str] | None = None) -> int:
    return daemon_main("trackerdcs-dcs", __doc__, build, argv, validate=safety_problem)


if __name__ == "__main__":
    sys.exit(main())
