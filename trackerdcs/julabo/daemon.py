"""The Julabo chiller daemon: one process per chiller.

trackerdcs-julabo --config examples/lab.yml
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from trackerdcs.config import ConfigError, JulaboConfig, LabConfig, load_config
from trackerdcs.julabo.device import Julabo
from trackerdcs.julabo.fsm import Chiller, Poll, make_machine
from trackerdcs.julabo.service import JulaboService
from trackerdcs.julabo.transport import SerialSettings
from trackerdcs.julabo.worker import LineWorker
from trackerdcs.logs import setup_logging
from trackerdcs.mqtt import MqttLink

log = logging.getLogger(__name__)


def make_device(cfg: JulaboConfig) -> Julabo:
    """The driver for the configured line (not opened)."""
    settings = SerialSettings(
        **cfg.serial.model_dump(), timeout=cfg.timeout, write_timeout=cfg.timeout
    )
    return Julabo.from_url(
        cfg.url,
        settings,
        write_delay=cfg.write_delay,
        query_delay=cfg.query_delay,
        temperature_range=(cfg.setpoint_min, cfg.setpoint_max),
    )


class JulaboDaemon:
    """Wires the line worker (its own thread) to the service (the asyncio loop)."""

    def __init__(self, lab: LabConfig, loop: asyncio.AbstractEventLoop) -> None:
        if lab.julabo is None:
            raise ConfigError("the lab YAML has no 'julabo' section")
        cfg = lab.julabo
        self.loop = loop
        self.chiller = Chiller(cfg.url)
        self.machine = make_machine(self.chiller)
        self.link = MqttLink(
            lab.mqtt,
            cfg.prefix,
            client_id=f"trackerdcs-{lab.lab}-julabo",
            on_command=lambda cmd: loop.call_soon_threadsafe(self.service.handle_command, cmd),
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
        log.info("serving chiller %s on %s", self.cfg.url, self.cfg.prefix)

    def stop(self) -> None:
        self.worker.stop()
        self.service.stop()
        self.link.stop()


async def run(lab: LabConfig) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    daemon = JulaboDaemon(lab, loop)
    daemon.start()
    try:
        await stop.wait()
    finally:
        log.info("stopping")
        daemon.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trackerdcs-julabo", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="lab YAML file")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    setup_logging(args.verbose, name="julabo")
    try:
        lab = load_config(args.config)
        if lab.julabo is None:
            raise ConfigError(f"{args.config}: no 'julabo' section: nothing to serve")
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    asyncio.run(run(lab))
    return 0


if __name__ == "__main__":
    sys.exit(main())
