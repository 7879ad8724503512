"""The power-supply daemon: one process per crate, one MQTT service per prefix it serves.

trackerdcs-power --config examples/lab.yml [--crate NAME]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from trackerdcs.config import ConfigError, LabConfig, load_config
from trackerdcs.logs import setup_logging
from trackerdcs.mqtt import MqttLink
from trackerdcs.power.backend import ChannelAddress, PowerBackend, make_backend
from trackerdcs.power.channel import PowerChannel, make_machine
from trackerdcs.power.service import PowerService

log = logging.getLogger(__name__)


class CrateDaemon:
    """Owns a crate's backend and the services of its prefixes; routes readbacks to them.

    Backend callbacks arrive on foreign threads and are moved onto the asyncio loop here.
    """

    def __init__(
        self, cfg: LabConfig, crate_name: str, loop: asyncio.AbstractEventLoop,
        backend: PowerBackend | None = None,
    ) -> None:  # fmt: skip
        self.cfg = cfg
        self.crate = cfg.crate(crate_name)
        self.loop = loop
        channels = [PowerChannel(ch, cfg.limits_for(ch)) for ch in cfg.channels_of(self.crate.name)]
        self.machine = make_machine(channels)
        self.backend = backend or make_backend(self.crate, [c.address for c in channels])
        self.services: list[PowerService] = []
        self._route: dict[ChannelAddress, PowerService] = {}
        for kind, prefix in self.crate.prefixes.items():
            mine = [c for c in channels if c.cfg.kind == kind]
            if not mine:
                continue
            link = MqttLink(
                cfg.mqtt,
                prefix,
                client_id=f"trackerdcs-{cfg.lab}-{self.crate.name}-{kind}",
            )
            service = PowerService(kind, prefix, mine, self.backend, link, cfg.power.publish, loop)
            link._on_command = lambda cmd, s=service: loop.call_soon_threadsafe(
                s.handle_command, cmd
            )
            self.services.append(service)
            self._route.update({c.address: service for c in mine})

    # BackendSink, called from the backend's threads
    def on_readback(self, addr: ChannelAddress, param: str, value) -> None:
        service = self._route.get(addr)
        if service is not None:
            self.loop.call_soon_threadsafe(service.on_readback, addr, param, value)

    def on_connection(self, addr: ChannelAddress, connected: bool) -> None:
        service = self._route.get(addr)
        if service is not None:
            self.loop.call_soon_threadsafe(service.on_connection, addr, connected)

    def start(self) -> None:
        for service in self.services:
            service.link.start()
            service.publish_status()  # everything DISCONNECTED until the crate answers
        self.backend.start(self)
        log.info(
            "serving crate %s (%s at %s) on %s",
            self.crate.name, self.crate.system, self.crate.address,
            ", ".join(s.prefix for s in self.services),
        )  # fmt: skip

    def stop(self) -> None:
        for service in self.services:
            service.stop()
            service.link.stop()
        self.backend.stop()


async def run(cfg: LabConfig, crate_name: str) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    daemon = CrateDaemon(cfg, crate_name, loop)
    daemon.start()
    try:
        await stop.wait()
    finally:
        log.info("stopping")
        daemon.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trackerdcs-power", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="lab YAML file")
    parser.add_argument("--crate", help="crate name (default: the only crate)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    setup_logging(args.verbose, name="power")
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    names = [c.name for c in cfg.crates]
    crate = args.crate or (names[0] if len(names) == 1 else None)
    if crate not in names:
        print(f"{args.config}: choose a crate with --crate (one of {names})", file=sys.stderr)
        return 2
    asyncio.run(run(cfg, crate))
    return 0


if __name__ == "__main__":
    sys.exit(main())
