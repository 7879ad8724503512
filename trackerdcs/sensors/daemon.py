"""The environmental-sensor daemon: every sensor of the lab YAML, one MQTT topic each.

trackerdcs-sensors --config examples/lab.yml [--sensor NAME ...]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from trackerdcs.clientids import client_id
from trackerdcs.config import LabConfig, SensorConfig, SensorKind
from trackerdcs.runner import daemon_main
from trackerdcs.sensors.sensor import SensorState
from trackerdcs.sensors.service import SensorService
from trackerdcs.sensors.sources import LineSource, SimSource, Source

log = logging.getLogger(__name__)

SIM_MODULE_TEMPERATURE = 20.0  # °C, a `sim` module sensor without a virtual lab


def make_source(lab: LabConfig, cfg: SensorConfig, service: SensorService) -> Source:
    """The sensor's source; its callbacks are moved onto the service's loop."""
    loop = service.loop

    def on_line(line: str) -> None:
        loop.call_soon_threadsafe(service.on_line, line)

    def on_error(reason: str) -> None:
        loop.call_soon_threadsafe(service.on_error, reason)

    if cfg.source != "sim":
        return LineSource(cfg.source, on_line, on_error, baudrate=cfg.baudrate)
    room = lab.virtual_lab
    room_temperature = room.room_temperature if room else 21.0
    if cfg.kind is SensorKind.ROOM:
        humidity: float | None = room.room_humidity if room else 45.0
        temperature = room_temperature
    else:
        humidity, temperature = None, SIM_MODULE_TEMPERATURE
    interval = min(1.0, cfg.publish_interval, cfg.stale_timeout / 4)
    return SimSource(on_line, temperature=temperature, humidity=humidity, interval=interval)


class SensorDaemon:
    def __init__(
        self, lab: LabConfig, loop: asyncio.AbstractEventLoop, names: list[str] | None = None
    ) -> None:
        chosen = [s for s in lab.sensors if not names or s.name in names]
        self.services: list[SensorService] = []
        self.sources: list[Source] = []
        for cfg in chosen:
            cid = client_id(lab, "sensor", cfg.name)
            service = SensorService(SensorState(cfg), lab.mqtt, cid, loop)
            self.services.append(service)
            service.source = make_source(lab, cfg, service)
            self.sources.append(service.source)

    def start(self) -> None:
        for service, source in zip(self.services, self.sources, strict=True):
            service.link.start()
            service.start()  # stale until the first reading
            source.start()
        log.info(
            "serving %d sensor(s): %s",
            len(self.services),
            ", ".join(f"{s.cfg.prefix} ({s.cfg.source})" for s in self.services),
        )

    def stop(self) -> None:
        for source in self.sources:
            source.stop()
        for source in self.sources:
            source.join()
        for service in self.services:
            service.stop()
            service.link.stop()


def _validate(lab: LabConfig, args: argparse.Namespace) -> str | None:
    known = {s.name for s in lab.sensors}
    unknown = sorted(set(args.sensor or ()) - known)
    if unknown:
        return f"no sensor named {', '.join(unknown)}: nothing to serve"
    if not lab.sensors:
        return "no 'sensors' section: nothing to serve"
    return None


def main(argv: list[str] | None = None) -> int:
    return daemon_main(
        "trackerdcs-sensors",
        __doc__,
        lambda lab, loop, args: SensorDaemon(lab, loop, args.sensor),
        argv,
        add_arguments=lambda p: p.add_argument(
            "--sensor", action="append", help="serve only this sensor (repeatable)"
        ),
        validate=_validate,
    )


if __name__ == "__main__":
    sys.exit(main())
