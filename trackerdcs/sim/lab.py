"""The coupled virtual lab: crate, chiller and sensors in one process, sharing their physics.

What it serves, from the lab YAML (everything on 127.0.0.1):

- the crate of `virtual_lab.crate` (default: the first EPICS crate on loopback) over Channel
  Access, as
  `trackerdcs-sim-crate` does (`trackerdcs.sim.crate`);
- a Julabo simulator per chiller of the lab (`chillers`, or the `julabo` shorthand) on the TCP
  port of its `url` (a loopback `socket://`), or on a pty whose symlink is its `url` when that
  is a path outside /dev (and `--julabo-pty LINK`: the first chiller), impersonating
  `virtual_lab.chiller.model` (default: the chiller's own `model`), with or without an external
  sensor (`virtual_lab.chiller.external_sensor`), losing every n-th reply if asked
  (`virtual_lab.chiller.drop_every`);
- one line server per sensor whose source is a loopback `socket://` (`trackerdcs.sim.sensors`):
  room sensors print the room's T and RH, module sensors their module's temperature;
- a backdoor on `virtual_lab.control_port` (see `LabControl`).

The physics (`LabPhysics`), in simulated time (`speed` simulated s per wall s):

- each chiller's bath as `SimulatedJulabo` computes it, its ambient being the room temperature;
- each module's temperature follows the bath of the chiller that cools it (`modules` of the
  chiller; the room for a module no chiller cools) with a first-order lag (time constant
  `module_lag`): dT/dt = (T_bath - T_module) / module_lag;
- each module's HV channels get `leakage_scale = 2 ** ((T_module - reference_temperature) /
  leakage_doubling)`: silicon leakage current doubles about every 7 K, so a stopped chiller shows
  up as a rising HV current. Modules are the `module` of the power channels;
- each module's HV channels load the crate with its sensor's IV curve (`trackerdcs.sim.iv`:
  `virtual_lab.iv`, with `virtual_lab.modules.<name>` over it): sqrt(V) up to full depletion, a
  plateau, an exponential breakdown above the module's `breakdown_voltage`.

Run: `trackerdcs-sim-lab --config examples/lab.yml [--speed 60]`. One ready line on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from trackerdcs.cliargs import add_config, add_version, resolve_config
from trackerdcs.config import (
    ConfigError,
    LabConfig,
    SensorKind,
    VirtualLabConfig,
    load_config,
    loopback_port,
)
from trackerdcs.julabo.models import DEFAULT_PROFILE
from trackerdcs.sensors.lineformat import format_line
from trackerdcs.sim.crate import CrateServer, boards_of, configure_environment, port_of, serve
from trackerdcs.sim.crate_model import SimChannel, SimCrate
from trackerdcs.sim.iv import SensorIV
from trackerdcs.sim.julabo import JulaboSimulator, SimulatedJulabo
from trackerdcs.sim.sensors import SensorLineServer

log = logging.getLogger("trackerdcs.sim.lab")


def leakage_scale(temperature: float, reference: float, doubling: float) -> float:
    """Silicon leakage current relative to its value at `reference` °C."""
    return 2.0 ** ((temperature - reference) / doubling)


@dataclass
class Module:
    name: str
    temperature: float  # °C
    hv_channels: list[SimChannel] = field(default_factory=list)
    leakage_scale: float = 1.0
    chiller: str | None = None  # the chiller that cools it (None: it follows the room)


class LabPhysics:
    """Room -> chiller baths -> module temperatures -> HV leakage. Pure state, simulated time."""

    def __init__(
        self,
        cfg: VirtualLabConfig,
        chillers: dict[str, SimulatedJulabo],
        modules: dict[str, Module],
    ) -> None:
        self.cfg = cfg
        self.chillers = chillers
        self.modules = modules
        self.room_temperature = cfg.room_temperature
        self.room_humidity = cfg.room_humidity
        self.speed = cfg.speed
        self.time = 0.0
        self._apply_leakage()

    def step(self, dt: float) -> None:
        """Advance `dt` simulated seconds."""
        if dt <= 0:
            return
        self.time += dt
        for chiller in self.chillers.values():
            chiller.ambient = self.room_temperature
            chiller.step(dt)
        follow = -math.expm1(-dt / self.cfg.module_lag)
        for module in self.modules.values():
            unit = self.chillers.get(module.chiller or "")
            target = unit.bath if unit is not None else self.room_temperature
            module.temperature += (target - module.temperature) * follow
        self._apply_leakage()

    def _apply_leakage(self) -> None:
        for module in self.modules.values():
            module.leakage_scale = leakage_scale(
                module.temperature, self.cfg.reference_temperature, self.cfg.leakage_doubling
            )
            for ch in module.hv_channels:
                ch.leakage_scale = module.leakage_scale

    def snapshot(self) -> dict[str, Any]:
        """The state: room, every chiller (`chillers`; the first one's also as `bath`,
        `chiller_running`, `chiller_replies_dropped`, null without one), every module."""
        chillers = {
            name: {"bath": round(unit.bath, 4), "running": unit.running,
                   "replies_dropped": unit.dropped}
            for name, unit in self.chillers.items()
        }  # fmt: skip
        first = next(iter(chillers.values()), {})
        return {
            "time": round(self.time, 3),
            "speed": self.speed,
            "room_temperature": self.room_temperature,
            "room_humidity": self.room_humidity,
            "bath": first.get("bath"),
            "chiller_running": first.get("running"),
            "chiller_replies_dropped": first.get("replies_dropped"),
            "chillers": chillers,
            "modules": {
                m.name: {"temperature": round(m.temperature, 4),
                         "leakage_scale": round(m.leakage_scale, 6), "chiller": m.chiller}
                for m in self.modules.values()
            },
        }  # fmt: skip


class LabControl:
    """The backdoor: one command per line on TCP, one JSON object per answer line.

    - `get` -> the physics snapshot (room, bath, modules' temperatures and leakage scales);
    - `set KEY=VALUE ...` with `room_temperature` (-50..60 °C), `room_humidity` (-6..119 % RH:
      an unclipped sensor's span, so the edges 0 and 100 and beyond can be played) or
      `speed` (0.001..100000 simulated s per wall s): the ranges of `SETTABLE`;
    - `sensor NAME ok|garbage|silent` -> a sensor line server's mode;
    - `julabo [NAME] fault CODE` | `clear` | `manual` | `remote` | `start` | `stop` (the front
      panel's keys) | `unplug` | `plug` | `drop N` (lose the next N replies) | `drop-every N`
      (every N-th; 0: none): NAME is the chiller's, needed when the lab has several.

    Every answer has `ok` (and `error` when false) and the snapshot. Try it with
    `nc 127.0.0.1 5059` and type `get`.
    """

    # room_humidity is what the room sensors print: an unclipped SHT4x spans -6..119 % RH
    # (Sensirion SHT4x datasheet, RH = -6 + 125 * S / 65535), so a sensor's edges can be played
    SETTABLE = {"room_temperature": (-50.0, 60.0), "room_humidity": (-6.0, 119.0),
                "speed": (1e-3, 1e5)}  # fmt: skip

    def __init__(
        self,
        physics: LabPhysics,
        chillers: dict[str, JulaboSimulator],
        sensors: dict[str, SensorLineServer],
    ) -> None:
        self.physics = physics
        self.chillers = chillers
        self.sensors = sensors

    def execute(self, line: str) -> dict[str, Any]:
        words = line.split()
        try:
            if not words:
                raise ValueError("empty command")
            handler = {"get": self._get, "set": self._set, "sensor": self._sensor,
                       "julabo": self._julabo}.get(words[0])  # fmt: skip
            if handler is None:
                raise ValueError(f"unknown command {words[0]!r}: get, set, sensor, julabo")
            handler(words[1:])
        except ValueError as exc:
            return {"ok": False, "error": str(exc), **self.physics.snapshot()}
        return {"ok": True, **self.physics.snapshot()}

    def _get(self, args: list[str]) -> None:
        if args:
            raise ValueError("get takes no argument")

    def _set(self, args: list[str]) -> None:
        if not args:
            raise ValueError("set KEY=VALUE ...")
        values = {}
        for arg in args:
            key, _, raw = arg.partition("=")
            if key not in self.SETTABLE:
                raise ValueError(f"cannot set {key!r}: {', '.join(self.SETTABLE)}")
            value = float(raw)
            low, high = self.SETTABLE[key]
            if not low <= value <= high:
                raise ValueError(f"{key} must be within [{low:g}, {high:g}]")
            values[key] = value
        for key, value in values.items():
            setattr(self.physics, key, value)
            log.info("backdoor: %s = %g", key, value)

    def _sensor(self, args: list[str]) -> None:
        if len(args) != 2 or args[0] not in self.sensors:
            raise ValueError(f"sensor NAME MODE, NAME one of {', '.join(self.sensors)}")
        self.sensors[args[0]].set_mode(args[1])
        log.info("backdoor: sensor %s %s", *args)

    def _julabo(self, args: list[str]) -> None:
        if args and args[0] in self.chillers and (len(args) > 1 or len(self.chillers) > 1):
            name, args = args[0], args[1:]
        elif len(self.chillers) == 1:
            name = next(iter(self.chillers))
        else:
            known = ", ".join(self.chillers) or "none"
            raise ValueError(f"julabo NAME ACTION: name the chiller (known: {known})")
        chiller = self.chillers[name]
        actions: dict[str, Callable[[], None]] = {
            "clear": chiller.clear_fault,
            "manual": lambda: chiller.set_remote(False),
            "remote": lambda: chiller.set_remote(True),
            "start": lambda: chiller.set_running(True),
            "stop": lambda: chiller.set_running(False),
            "unplug": chiller.drop_line,
            "plug": chiller.restore_line,
        }
        counted: dict[str, Callable[[int], None]] = {
            "fault": chiller.inject_fault,
            "drop": chiller.drop_replies,
            "drop-every": lambda n: setattr(chiller.device, "drop_every", n),
        }
        if len(args) == 2 and args[0] in counted:
            number = int(args[1])
            if args[0] != "fault" and number < 0:
                raise ValueError(f"julabo {args[0]} takes a count >= 0")
            counted[args[0]](number)
        elif len(args) == 1 and args[0] in actions:
            actions[args[0]]()
        else:
            raise ValueError(f"julabo fault CODE | drop N | drop-every N | {' | '.join(actions)}")
        log.info("backdoor: julabo %s %s", name, " ".join(args))


class VirtualLab:
    """Builds the simulators of a lab YAML and runs them on one asyncio loop."""

    def __init__(
        self, lab: LabConfig, *, speed: float | None = None, noise: float = 0.005,
        seed: int = 0, julabo_pty: str | None = None,
    ) -> None:  # fmt: skip
        self.lab = lab
        self.cfg = lab.virtual_lab or VirtualLabConfig()
        if speed is not None:
            self.cfg = self.cfg.model_copy(update={"speed": speed})
        self.crate = lab.virtual_lab_crate()
        self.model = SimCrate(boards_of(self.crate), seed, noise=noise) if self.crate else None
        self.crate_server = CrateServer(self.crate.system, self.model) if self.crate else None
        self.chillers = {
            c.name: JulaboSimulator(self._chiller_unit(c.model), tick=None) for c in lab.chillers
        }
        units = {name: sim.device for name, sim in self.chillers.items()}
        self.physics = LabPhysics(self.cfg, units, self._modules(self.cfg.room_temperature))
        self.julabo_pty = julabo_pty
        self.sensor_servers: dict[str, SensorLineServer] = {}
        self.control = LabControl(self.physics, self.chillers, self.sensor_servers)
        self.endpoints: list[str] = []

    def _chiller_unit(self, model: str | None) -> SimulatedJulabo:
        """A simulated Julabo: the chiller's model (or `virtual_lab.chiller.model`), its
        faults."""
        settings = self.cfg.chiller
        unit = SimulatedJulabo(
            model=settings.model or model or DEFAULT_PROFILE,
            rate=self.cfg.chiller_rate,
            ambient=self.cfg.room_temperature,
            external_sensor=settings.external_sensor,
        )
        unit.drop_every = settings.drop_every
        return unit

    def _modules(self, temperature: float) -> dict[str, Module]:
        """Every module of the power channels and of the module sensors, at `temperature`."""
        names = list(self.lab.modules())
        names += [s.module for s in self.lab.sensors if s.module and s.module not in names]
        modules = {}
        for name in names:
            chiller = self.lab.chiller_of(name)
            modules[name] = Module(name, temperature, chiller=chiller.name if chiller else None)
        if self.model is not None and self.crate is not None:
            for name, channels in self.lab.modules().items():
                modules[name].hv_channels = [
                    self.model.channel(ch.board, ch.channel)
                    for ch in channels
                    if ch.kind.value == "hv" and self.lab.crate_of(ch).name == self.crate.name
                ]
                iv = SensorIV(**self.cfg.sensor_iv(name))
                for channel in modules[name].hv_channels:
                    channel.iv = iv
        return modules

    # -- the line servers (threads) ----------------------------------------------------------------
    def start_servers(self) -> None:
        """Julabo and sensor lines. OSError if a port is taken."""
        for i, julabo in enumerate(self.lab.chillers):
            sim = self.chillers[julabo.name]
            pty = self.julabo_pty if i == 0 else None
            port = loopback_port(julabo.url)
            if port is not None:
                self.endpoints.append(f"julabo {julabo.name} {sim.serve_tcp('127.0.0.1', port)}")
            elif julabo.url.startswith("/") and not julabo.url.startswith("/dev/"):
                pty = pty or julabo.url
            if pty:
                path = sim.serve_pty(pty)
                self.endpoints.append(f"julabo {julabo.name} pty {pty} -> {path}")
        for sensor in self.lab.sensors:
            port = loopback_port(sensor.source)
            if port is None:
                continue
            server = SensorLineServer(
                self._reading(sensor.kind, sensor.module), port=port,
                interval=self.cfg.line_interval,
            )  # fmt: skip
            server.start()
            self.sensor_servers[sensor.name] = server
            self.endpoints.append(f"sensor {sensor.name} {server.url}")

    def _reading(self, kind: SensorKind, module: str | None) -> Callable[[], str]:
        physics = self.physics
        if kind is SensorKind.ROOM:
            return lambda: format_line(physics.room_temperature, physics.room_humidity)
        assert module is not None
        return lambda: format_line(physics.modules[module].temperature)

    def stop_servers(self) -> None:
        for server in self.sensor_servers.values():
            server.stop()
        for chiller in self.chillers.values():
            chiller.close()

    # -- the loop ----------------------------------------------------------------------------------
    async def run_physics(self) -> None:
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            await asyncio.sleep(self.cfg.tick)
            now = loop.time()
            self.physics.step(min(now - last, 1.0) * self.physics.speed)
            last = now

    async def _control_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        with contextlib.suppress(ConnectionError):
            while line := await reader.readline():
                answer = self.control.execute(line.decode("utf-8", errors="replace"))
                writer.write((json.dumps(answer) + "\n").encode())
                await writer.drain()
        writer.close()

    async def run(self, host: str, ready: str) -> int:
        """Serve until SIGTERM/SIGINT; the exit status."""
        tasks = [asyncio.create_task(self.run_physics())]
        control = None
        if self.cfg.control_port is not None:
            control = await asyncio.start_server(
                self._control_client, "127.0.0.1", self.cfg.control_port
            )
            self.endpoints.append(f"control 127.0.0.1:{self.cfg.control_port}")
        line = f"{ready}; {', '.join(self.endpoints)}"
        try:
            if self.crate_server is not None and self.crate is not None:
                return await serve(self.crate_server, host, port_of(self.crate.address), 0.1, line)
            return await _serve_without_crate(line)
        finally:
            for task in tasks:
                task.cancel()
            if control is not None:
                control.close()


async def _serve_without_crate(ready: str) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(ready, file=sys.stderr, flush=True)
    await stop.wait()
    return 0


class _QuietBeacons(logging.Filter):
    """No CA repeater listens on loopback: beacons bounce; don't log each one."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Failed to send beacon")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="trackerdcs-sim-lab", description="The coupled virtual lab: crate, chiller, sensors."
    )
    add_config(p)
    add_version(p)
    p.add_argument("--host", default="127.0.0.1", help="CA interface (default 127.0.0.1)")
    p.add_argument("--speed", type=float, help="simulated s per wall s (default: virtual_lab)")
    p.add_argument("--julabo-pty", metavar="LINK", help="also serve the (first) chiller on a pty")
    p.add_argument("--noise", type=float, default=0.005, help="relative IMon noise (0.005)")
    p.add_argument("--seed", type=int, default=0, help="noise random seed")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = resolve_config(parser, parser.parse_args(argv))
    if (args.speed is not None and args.speed <= 0) or args.noise < 0:
        print("trackerdcs-sim-lab: --speed must be > 0 and --noise >= 0", file=sys.stderr)
        return 2
    try:
        lab = load_config(args.config)
        vlab = VirtualLab(lab, speed=args.speed, noise=args.noise, seed=args.seed,
                          julabo_pty=args.julabo_pty)  # fmt: skip
    except (ConfigError, KeyError, ValueError) as exc:
        print(f"trackerdcs-sim-lab: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("caproto").setLevel(logging.WARNING)
    for name in ("caproto.ctx", "caproto.circ"):
        logging.getLogger(name).addFilter(_QuietBeacons())
    ready = f"virtual lab {lab.lab} serving"
    if vlab.crate is not None:
        port = port_of(vlab.crate.address)
        configure_environment(args.host, port, port + 1 if port < 65535 else port)
        ready += f" crate {vlab.crate.name} ({vlab.crate.system}) on {args.host}:{port}"
    try:
        vlab.start_servers()
    except OSError as exc:
        print(f"trackerdcs-sim-lab: cannot serve: {exc}", file=sys.stderr, flush=True)
        vlab.stop_servers()
        return 1
    log.info("speed %g simulated s per wall s, modules %s", vlab.physics.speed,
             ", ".join(vlab.physics.modules) or "none")  # fmt: skip
    try:
        return asyncio.run(vlab.run(args.host, ready))
    except OSError as exc:
        print(f"trackerdcs-sim-lab: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        vlab.stop_servers()


if __name__ == "__main__":
    sys.exit(main())
