"""The DCS supervisor daemon: module on/off sequences on `/dcs/cmd/module/{name}` and IV scans
on `/dcs/cmd/ivscan/{module|all}`.

trackerdcs-dcs --config examples/lab.yml [--results-dir DIR]

A module that is scanning refuses an `on` sequence; an `off` stops its scan first (the scan
ramps its channel down) and then switches it off. A module busy in a sequence refuses a scan.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from trackerdcs.clientids import client_id
from trackerdcs.commands import ALWAYS_EXECUTED, CommandError, parse_switch
from trackerdcs.config import LabConfig
from trackerdcs.ivscan.service import IvScanService
from trackerdcs.mqtt import Command, MqttLink, PayloadError
from trackerdcs.runner import daemon_main
from trackerdcs.safety.config import safety_problem
from trackerdcs.safety.sequencer import PREFIX, SequencerService

log = logging.getLogger(__name__)


class DcsDaemon:
    def __init__(
        self, lab: LabConfig, loop: asyncio.AbstractEventLoop, results_dir: Path | None = None
    ) -> None:
        self.link = MqttLink(
            lab.mqtt,
            PREFIX,
            client_id=client_id(lab, "dcs"),
            on_command=lambda cmd: loop.call_soon_threadsafe(
                self.link.execute, self.handle_command, cmd
            ),
            subscribe=SequencerService.subscriptions(lab),
            on_message=lambda msg: loop.call_soon_threadsafe(
                self.service.on_message, msg.topic, msg.payload, bool(msg.retain)
            ),
            command_max_age=lab.sequencer.command_max_age,
            always_executed=ALWAYS_EXECUTED["sequencer"],
        )
        self.service = SequencerService(lab, self.link, loop)
        self.ivscan = IvScanService(lab, self.link, loop, results_dir, busy=self._sequencing)

    def _sequencing(self, module: str) -> str | None:
        running = self.service.running.get(module)
        if running is None:
            return None
        return f"{module} is busy switching {'on' if running[0] else 'off'} (/dcs/cmd/module)"

    def handle_command(self, cmd: Command) -> None:
        """`ivscan/...` to the scans; `module/...` to the sequencer, after the scans had their
        say: a scanning module refuses `on`, and `off` stops its scan first."""
        parts = cmd.parts
        if parts[0] == "ivscan":
            self.ivscan.handle_command(cmd)
            return
        if parts[0] == "module" and len(parts) == 2:
            try:
                on = parse_switch(cmd.decoded()[0])
            except (CommandError, PayloadError):
                on = None  # the sequencer answers the error
            names = self.service.modules if parts[1] == "all" else [parts[1]]
            scanning = [m for m in names if self.ivscan.scanning(m)]
            if on and scanning:
                self.link.respond(cmd, False, f"{', '.join(scanning)} scanning (IV scan): stop it "
                                  "first (/dcs/cmd/ivscan/{module} stop)")  # fmt: skip
                return
            if on is False:
                for module in scanning:
                    self.ivscan.stop_module(module, f"module {module} switched off")
        self.service.handle_command(cmd)

    def start(self) -> None:
        self.link.start()
        self.service.start()
        self.ivscan.start()
        log.info(
            "serving the sequencer on %s (modules %s); IV scan results in %s",
            PREFIX,
            ", ".join(self.service.modules) or "none",
            self.ivscan.results_dir,
        )

    def stop(self) -> None:
        self.ivscan.stop()
        self.service.stop()
        self.link.stop()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results-dir", help="IV scan results (default: ivscan.results_dir)")


def build(lab: LabConfig, loop: asyncio.AbstractEventLoop, args: argparse.Namespace):
    results = getattr(args, "results_dir", None)
    return DcsDaemon(lab, loop, Path(results) if results else None)


def main(argv: list[str] | None = None) -> int:
    return daemon_main("trackerdcs-dcs", __doc__, build, argv, add_arguments=add_arguments,
                       validate=safety_problem)  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
