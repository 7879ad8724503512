"""The Julabo chiller daemon: one process per chiller.

trackerdcs-julabo --config examples/lab.yml
"""

from __future__ import annotations

import asyncio
import logging
import sys

from trackerdcs.config import ConfigError, JulaboConfig, LabConfig
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

    def __init__(self, lab: LabConfig, loop: asyncio.AbstractEventLoop) -> None:
        if lab.julabo is None:
            raise ConfigError("the lab YAML has no 'julabo' section")
        cfg = lab.julabo
        self.loop = loop
        self.chiller = Chiller(cfg.url, cfg.model)
        self.machine = make_machine(self.chiller)
        self.link = MqttLink(
            lab.mqtt,
            cfg.prefix,
            client_id=f"trackerdcs-{lab.lab}-julabo",
            on_command=lambda cmd: loop.call_soon_threadsafe(
                self.link.execute, self.service.handle_command, cmd
            ),
            command_max_age=cfg.command_max_age,
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
            "serving chiller %s (model %s) on %s", self.cfg.url, self.cfg.model, self.cfg.prefix
        )

    def stop(self) -> None:
        self.worker.stop()
        self.service.stop()
        self.link.stop()


def main(argv: list[str] | None = None) -> int:
    return daemon_main(
        "trackerdcs-julabo",
        __doc__,
        lambda lab, loop, args: JulaboDaemon(lab, loop),
        argv,
        validate=lambda lab, args: None if lab.julabo else "no 'julabo' section: nothing to serve",
    )


if __name__ == "__main__":
    sys.exit(main())
