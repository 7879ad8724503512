"""The Julabo chiller daemon: one process per chiller of the lab YAML.

trackerdcs-julabo --config examples/lab.yml                 a lab with one chiller
trackerdcs-julabo --config lab.yml --chiller burnin         one of several (`chillers[].name`)
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from trackerdcs.clientids import client_id
from trackerdcs.config import ConfigError, JulaboConfig, LabConfig, UnknownChiller
from trackerdcs.julabo.device import Julabo
from trackerdcs.julabo.fsm import Chiller, Poll, make_machine
from trackerdcs.julabo.service import JulaboService
from trackerdcs.julabo.transport import SerialSettings
from trackerdcs.julabo.worker import LineWorker
from trackerdcs.mqtt import MqttLink
from trackerdcs.runner import daemon_main

log = logging.getLogger(__name__)


def make_device(cfg: JulaboConfig) -> Julabo:
    """The driver for the configured line (not opened)."""
    settings = SerialSettings(
        **cfg.serial.model_dump(), timeout=cfg.timeout, write_timeout=cfg.timeout
    )
    return Julabo.from_url(
        cfg.url,
        settings,
        profile=cfg.model,
        write_delay=cfg.write_delay,
        query_delay=cfg.query_delay,
        retries=cfg.retries,
        temperature_range=(cfg.setpoint_min, cfg.setpoint_max),
    )


class JulaboDaemon:
    """Wires the line worker (its own thread) to the service (the asyncio loop)."""

    def __init__(
        self, lab: LabConfig, loop: asyncio.AbstractEventLoop, name: str | None = None
    ) -> None:
        try:
            cfg = lab.chiller(name)
        except UnknownChiller as exc:
            raise ConfigError(str(exc)) from None
        self.loop = loop
        self.chiller = Chiller(cfg.url, cfg.model, cfg.name)
        self.machine = make_machine(self.chiller)
        self.link = MqttLink(
            lab.mqtt,
            cfg.prefix,
            client_id=client_id(lab, "chiller", cfg.name),
            on_command=lambda cmd: self.service.handle_command(cmd),
            command_max_age=cfg.command_max_age,
            loop=loop,
        )
        self.worker = LineWorker(
            make_device(cfg),
            self,
            poll_interval=cfg.poll_interval,
            backoff=(cfg.reconnect_min_delay, cfg.reconnect_max_delay),
        )
        self.service = JulaboService(cfg, self.chiller, self.worker, self.link, loop)
        self.cfg = cfg

    # WorkerSink, called from the worker thread
    def on_poll(self, poll: Poll) -> None:
        self.loop.call_soon_threadsafe(self.service.on_poll, poll)

    def on_line_lost(self, reason: str) -> None:
        self.loop.call_soon_threadsafe(self.service.on_line_lost, reason)

    def start(self) -> None:
        self.link.start()
        self.service.publish_status()  # DISCONNECTED until the unit answers
        self.worker.start()
        log.info(
            "serving chiller %s: %s (model %s) on %s",
            self.cfg.name,
            self.cfg.url,
            self.cfg.model,
            self.cfg.prefix,
        )

    def stop(self) -> None:
        self.worker.stop()
        self.service.stop()
        self.link.stop()


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--chiller", metavar="NAME", help="the chiller to serve (needed when the lab has several)"
    )


def _chiller_problem(lab: LabConfig, args: argparse.Namespace) -> str | None:
    """Why there is no chiller to serve (nothing, several and none named, an unknown name)."""
    try:
        lab.chiller(args.chiller)
    except UnknownChiller as exc:
        hint = ": give --chiller NAME" if lab.chillers and args.chiller is None else ""
        return f"{exc}{hint}"
    return None


def main(argv: list[str] | None = None) -> int:
    return daemon_main(
        "trackerdcs-julabo",
        __doc__,
        lambda lab, loop, args: JulaboDaemon(lab, loop, args.chiller),
        argv,
        add_arguments=_add_arguments,
        validate=_chiller_problem,
    )


if __name__ == "__main__":
    sys.exit(main())
