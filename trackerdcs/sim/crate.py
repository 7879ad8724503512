"""A simulated CAEN SY4527 crate serving the real Channel Access PVs (caproto asyncio server).

PVs, named exactly as the crate's own EPICS server names them (`channel_pv` / `board_pv` /
`system_pv`), from each board's model (`trackerdcs.power.boards`):

- per channel `<SYS>:<SS>:<CCC>:<Param>` for every parameter of the board's model: floats as
  DBR_DOUBLE with their unit and precision, on/off and enum parameters as enums with their
  states (`Pw` Off/On, `PDwn` Kill/Ramp, `ImRange` High/Low), bit masks (`Status`, `TripInt`,
  `TripExt`) as DBR_LONG, `ChName` as a string; settings writable, readbacks read-only;
- per board `<SYS>:<SS>:BdStatus` (int, read-only) on models that have it;
- `<SYS>:ClearAlarm` (enum No/Yes): writing Yes (or 1) clears every latched trip; reads No.

A client put goes to `SimCrate.write`; the value read back is what the crate stored (V0Set
capped at SVMax, Pw still Off on a tripped channel). An invalid value is rejected with a put error.
Monitors are posted like an EPICS record's with a zero deadband: only when the value (or its
alarm) changes; a put of the value a PV already holds posts nothing.

Backdoor PVs (simulator only, never on a real crate; puts to them are not counted):

- `<SYS>:Sim:Writes` (int): client puts to real crate parameters (V0Set, I0Set, Pw, RUp, RDWn,
  Trip, SVMax, PDwn, ClearAlarm), counted even when the value is unchanged or rejected.
  Writable: put 0 to reset.
- `<SYS>:Sim:LastWrite` (string, read-only): `PVNAME=value` of the last such put.
- `<SYS>:Sim:LastWriteAt` (char array, read-only, as a long string): `<t> PVNAME=value` of the
  last such put, `t` the `time.monotonic()` seconds when it reached the simulator. Linux's
  CLOCK_MONOTONIC is one clock for every process of the machine, so a benchmark times a
  reaction up to the crate itself, without the delay of its own monitor on the crate.
- `<SYS>:<SS>:<CCC>:SimLeak` (double, writable): extra load current (µA HV, A LV), fault injection.
- `<SYS>:Sim:TempFactor` (double, writable): crate-wide HV leakage multiplier.
- `<SYS>:<SS>:<CCC>:SimInvalid` (int, writable): 1 gives the channel's VMon and IMon INVALID
  alarm severity (status COMM), as an IOC that lost its data; 0 clears it.

Run: `trackerdcs-sim-crate --config examples/lab.yml [--crate NAME] [--host 127.0.0.1]
[--port N] [--tick 0.1] [--noise 0.005] [--churn] [--board SLOT=MODEL] [--omit SLOT:P1,P2]`.
`--board` serves another model in a slot than the lab YAML says, `--omit` a board without some
of its model's parameters: a real crate that differs from its configuration. Prints one ready
line on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from caproto import (
    AccessRights,
    AlarmSeverity,
    AlarmStatus,
    ChannelChar,
    ChannelData,
    ChannelDouble,
    ChannelEnum,
    ChannelInteger,
    ChannelString,
)
from caproto._data import SkipWrite
from caproto.asyncio.server import Context
from caproto.server import common as caproto_server_common

from trackerdcs.cliargs import add_config, add_version, resolve_config
from trackerdcs.config import ConfigError, CrateConfig, load_config
from trackerdcs.power.boards import BoardModel, Param, ParamType, board_model
from trackerdcs.power.pvnames import board_pv, channel_pv, system_pv
from trackerdcs.sim.crate_model import (
    NO_YES,
    PHYSICS_PARAMS,
    BoardSpec,
    SimChannel,
    SimCrate,
    enum_state,
    without,
)

log = logging.getLogger("trackerdcs.sim.crate")

DEFAULT_CA_PORT = 5064
LAST_WRITE_AT_LENGTH = 256  # chars of `Sim:LastWriteAt`: a stamp and the longest PV=value
PutHook = Callable[[Any], Awaitable[Any]]


class _Hooked:
    """Mixin: a client put calls `on_put(value)`, whose return value is stored and published.

    Without an `on_put` the PV is read-only to clients. Server-side updates must use
    `write(value, verify_value=False)` so that they bypass the hook.
    """

    on_put: PutHook | None = None

    def check_access(self, hostname: str, username: str) -> AccessRights:
        if self.on_put is None:
            return AccessRights.READ
        return AccessRights.READ | AccessRights.WRITE

    async def verify_value(self, value: Any) -> Any:
        if self.on_put is None:
            raise PermissionError("read-only PV")
        stored = await self.on_put(value)
        if stored == self.value and self.alarm.severity == AlarmSeverity.NO_ALARM:
            raise SkipWrite  # zero deadband: an unchanged value posts no monitor
        self.status = AlarmStatus.NO_ALARM  # clear a WRITE alarm left by an earlier bad put
        self.severity = AlarmSeverity.NO_ALARM
        return stored


class SimDouble(_Hooked, ChannelDouble):
    pass


class SimEnum(_Hooked, ChannelEnum):
    pass


class SimInteger(_Hooked, ChannelInteger):
    pass


class SimString(_Hooked, ChannelString):
    pass


class SimChar(_Hooked, ChannelChar):
    pass


def _make_pv(param: Param, value: Any, on_put: PutHook | None) -> ChannelData:
    """A PV for one parameter of a board model, holding `value`."""
    if param.type is ParamType.FLOAT:
        pv: ChannelData = SimDouble(value=float(value), units=param.unit, precision=param.precision)
    elif param.states:
        pv = SimEnum(value=value, enum_strings=param.states)
    elif param.type is ParamType.BITMASK:
        pv = SimInteger(value=int(value))
    else:
        pv = SimString(value=str(value))
    pv.on_put = on_put if param.writable else None
    return pv


def _format(value: Any, choices: tuple[str, ...] = ()) -> str:
    """A put value as text for `Sim:LastWrite` (enum indices as their state names)."""
    if choices:
        with contextlib.suppress(ValueError):
            return enum_state("", value, choices)
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if hasattr(value, "item"):  # numpy scalar
        value = value.item()
    return str(value)


def _finite(name: str, value: Any) -> float:
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name}: not finite: {value!r}")
    return number


class CrateServer:
    """The PV database around a `SimCrate`, and the task that steps its physics."""

    def __init__(self, system: str, model: SimCrate) -> None:
        self.system = system
        self.model = model
        self.pvdb: dict[str, ChannelData] = {}
        self.channel_pvs: dict[tuple[int, int], dict[str, ChannelData]] = {}
        for key, ch in model.channels.items():
            self.channel_pvs[key] = self._add_channel(ch)
        for slot, board in model.models.items():
            if any(p.name == "BdStatus" for p in board.board_params):
                bd = SimInteger(value=model.board_status[slot])
                self.pvdb[board_pv(system, slot, "BdStatus")] = bd
        self.writes_pv = SimInteger(value=0)
        self.writes_pv.on_put = self._put_writes
        self.last_write_pv = SimString(value="")
        self.last_write_at_pv = SimChar(value="", max_length=LAST_WRITE_AT_LENGTH)
        self.temp_pv = SimDouble(value=model.temperature_factor, precision=3)
        self.temp_pv.on_put = self._put_temperature
        clear = SimEnum(value="No", enum_strings=NO_YES)
        clear.on_put = self._put_clear_alarm
        self.pvdb[system_pv(system, "ClearAlarm")] = clear
        self.pvdb[system_pv(system, "Sim:Writes")] = self.writes_pv
        self.pvdb[system_pv(system, "Sim:LastWrite")] = self.last_write_pv
        self.pvdb[system_pv(system, "Sim:LastWriteAt")] = self.last_write_at_pv
        self.pvdb[system_pv(system, "Sim:TempFactor")] = self.temp_pv

    def _add_channel(self, ch: SimChannel) -> dict[str, ChannelData]:
        pvs: dict[str, ChannelData] = {}
        for param in ch.model.params:
            name = channel_pv(self.system, ch.board, ch.channel, param.name)
            hook = self._channel_hook(ch, param, name)
            pv = _make_pv(param, ch.reading(param.name), hook)
            pvs[param.name] = self.pvdb[name] = pv
        leak = SimDouble(value=ch.leak_extra, precision=4)
        leak.on_put = self._leak_hook(ch)
        self.pvdb[channel_pv(self.system, ch.board, ch.channel, "SimLeak")] = leak
        invalid = SimInteger(value=0)
        invalid.on_put = self._invalid_hook(ch, pvs)
        self.pvdb[channel_pv(self.system, ch.board, ch.channel, "SimInvalid")] = invalid
        return pvs

    def _channel_hook(self, ch: SimChannel, param: Param, pvname: str) -> PutHook:
        async def on_put(value: Any) -> Any:
            arrived = time.monotonic()
            try:
                stored = self.model.write(ch.board, ch.channel, param.name, value)
            finally:
                await self._record_write(pvname, _format(value, param.states), arrived)
            await self.sync([ch], skip=param.name)
            return stored

        return on_put

    def _invalid_hook(self, ch: SimChannel, pvs: dict[str, ChannelData]) -> PutHook:
        async def on_put(value: Any) -> int:
            invalid = bool(int(value))
            status = AlarmStatus.COMM if invalid else AlarmStatus.NO_ALARM
            severity = AlarmSeverity.INVALID_ALARM if invalid else AlarmSeverity.NO_ALARM
            for name in ("VMon", "IMon"):
                await pvs[name].alarm.write(status=status, severity=severity)
            return int(invalid)

        return on_put

    def _leak_hook(self, ch: SimChannel) -> PutHook:
        async def on_put(value: Any) -> float:
            self.model.set_leak(ch.board, ch.channel, _finite("SimLeak", value))
            return ch.leak_extra

        return on_put

    async def _put_clear_alarm(self, value: Any) -> str:
        arrived = time.monotonic()
        try:
            changed = self.model.write_system("ClearAlarm", value)
        finally:
            await self._record_write(
                system_pv(self.system, "ClearAlarm"), _format(value, NO_YES), arrived
            )
        await self.sync(changed)
        return "No"  # a momentary command: it reads No once done

    async def _put_writes(self, value: Any) -> int:
        self.model.writes = int(value)
        return self.model.writes

    async def _put_temperature(self, value: Any) -> float:
        factor = _finite("TempFactor", value)
        if factor < 0:
            raise ValueError("TempFactor must be >= 0")
        self.model.temperature_factor = factor
        return factor

    async def _record_write(self, pvname: str, text: str, arrived: float) -> None:
        """Count a put and name it in `Sim:LastWrite`, and with `arrived` (monotonic s) in
        `Sim:LastWriteAt`."""
        await _post(self.writes_pv, self.model.writes)
        await _post(self.last_write_pv, f"{pvname}={text}"[:39])  # DBR_STRING: 40 bytes
        stamped = f"{arrived:.6f} {pvname}={text}"[: LAST_WRITE_AT_LENGTH - 1]
        await self.last_write_at_pv.write(stamped, verify_value=False)  # posted on every put

    async def sync(
        self,
        channels: Iterable[SimChannel],
        params: Iterable[str] | None = None,
        skip: str | None = None,
    ) -> int:
        """Publish every reading of `channels` that differs from its PV; return how many."""
        posted = 0
        for ch in channels:
            pvs = self.channel_pvs[ch.board, ch.channel]
            for name in params if params is not None else pvs:
                pv = pvs.get(name)
                if pv is not None and name != skip and await _post(pv, ch.reading(name)):
                    posted += 1
        return posted

    async def run_physics(self, tick: float) -> None:
        """Step the model every `tick` seconds of wall time, publishing what changed."""
        loop = asyncio.get_running_loop()
        last = loop.time()
        deadline = last + tick
        while True:
            await asyncio.sleep(max(0.0, deadline - loop.time()))
            now = loop.time()
            changed = self.model.step(min(now - last, 1.0))
            last = now
            await self.sync(changed, PHYSICS_PARAMS)
            deadline += tick
            if deadline < now:  # fell behind: don't try to catch up with a burst
                deadline = now + tick


async def _post(pv: ChannelData, value: Any) -> bool:
    """Write `value` to `pv` (firing monitors) if it differs from the PV's value."""
    if pv.value == value:
        return False
    await pv.write(value, verify_value=False)
    return True


class _QuietCaproto(logging.Filter):
    """Keep caproto's log readable: no tracebacks for routine events.

    Beacons bounce when no CA repeater listens (ICMP unreachable): dropped. A put the crate
    rejects is one line with the reason, not a traceback.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage().startswith("Failed to send beacon"):
            return False
        if record.exc_info and str(record.msg).startswith("Invalid write request"):
            exc = record.exc_info[1]
            record.msg = f"{record.getMessage()}: {type(exc).__name__}: {exc}"
            record.args = ()
            record.exc_info = record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def boards_of(
    crate: CrateConfig,
    models: dict[int, str] | None = None,
    omit: dict[int, set[str]] | None = None,
) -> dict[int, BoardSpec]:
    """The simulated crate's boards from the lab configuration: each slot's model and channel
    count; `models` serves another model in a slot, `omit` drops parameters of a slot's model
    (ValueError for a slot or parameter that is not there; KeyError for an unknown model)."""
    models, omit = models or {}, omit or {}
    for slot in (*models, *omit):
        if slot not in crate.boards:
            raise ValueError(f"crate {crate.name} has no board in slot {slot}")
    boards: dict[int, BoardSpec] = {}
    for slot, b in crate.boards.items():
        assert b.kind is not None and b.channels is not None
        spec: BoardModel = board_model(models[slot], b.kind.value) if slot in models else b.spec
        boards[slot] = (without(spec, omit.get(slot, ())), b.channels)
    return boards


def _slot_value(text: str, sep: str) -> tuple[int, str]:
    slot, found, value = text.partition(sep)
    if not found or not slot.isdigit() or not value:
        raise argparse.ArgumentTypeError(f"expected SLOT{sep}VALUE, got {text!r}")
    return int(slot), value


def port_of(address: str) -> int:
    """The port in a `host[:port]` address, 5064 when absent."""
    host, sep, port = address.rpartition(":")
    return int(port) if sep and host and port.isdigit() else DEFAULT_CA_PORT


def configure_environment(host: str, port: int, beacon_port: int) -> None:
    """caproto reads its settings from the environment: bind `host:port` only."""
    os.environ.update(
        EPICS_CA_SERVER_PORT=str(port),
        EPICS_CAS_SERVER_PORT=str(port),
        EPICS_CAS_INTF_ADDR_LIST=host,
        EPICS_CAS_BEACON_PORT=str(beacon_port),
        EPICS_CAS_AUTO_BEACON_ADDR_LIST="NO",
        EPICS_CAS_BEACON_ADDR_LIST=host,
    )


# caproto batches monitor updates for up to 10 ms to save packets under load; a crate answers a
# set point within a millisecond or two, so the simulator should too.
MONITOR_BATCH_LATENCY = 0.001


async def serve(server: CrateServer, host: str, port: int, tick: float, ready_line: str) -> int:
    """Serve until cancelled (SIGTERM/SIGINT); return the exit status."""
    caproto_server_common.HIGH_LOAD_TIMEOUT = MONITOR_BATCH_LATENCY
    ctx = Context(server.pvdb, [host])
    main = asyncio.current_task()
    assert main is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, main.cancel)
    failure: list[str] = []

    async def startup(_async_lib: Any) -> None:
        if ctx.port != port:  # caproto silently falls back to a random TCP port
            failure.append(f"TCP port {host}:{port} is in use")
            main.cancel()
            return
        print(ready_line, file=sys.stderr, flush=True)
        await server.run_physics(tick)

    with contextlib.suppress(asyncio.CancelledError):
        await ctx.run(startup_hook=startup)
    if failure:
        print(f"trackerdcs-sim-crate: {failure[0]}", file=sys.stderr, flush=True)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="trackerdcs-sim-crate",
        description="Simulated CAEN SY4527 crate serving Channel Access PVs.",
    )
    add_config(p)
    add_version(p)
    p.add_argument("--crate", help="crate name (default: the first crate)")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="CA server port (default: from the crate address)")
    p.add_argument("--beacon-port", type=int, help="CA beacon port (default: port + 1)")
    p.add_argument("--tick", type=float, default=0.1, help="physics step, s (default 0.1)")
    p.add_argument("--noise", type=float, default=0.005, help="relative IMon noise (0.005)")
    p.add_argument("--seed", type=int, default=0, help="noise random seed (default 0)")
    p.add_argument("--churn", action="store_true", help="benchmark: readings change every second")
    p.add_argument(
        "--board",
        action="append",
        default=[],
        metavar="SLOT=MODEL",
        type=lambda t: _slot_value(t, "="),
        help="serve MODEL in SLOT instead of the lab YAML's model",
    )
    p.add_argument(
        "--omit",
        action="append",
        default=[],
        metavar="SLOT:PARAM[,PARAM]",
        type=lambda t: _slot_value(t, ":"),
        help="the board in SLOT does not serve these parameters",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = resolve_config(parser, parser.parse_args(argv))
    try:
        lab = load_config(args.config)
        crate = lab.crate(args.crate) if args.crate else lab.crates[0]
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    except (KeyError, IndexError):
        print(f"{args.config}: no crate {args.crate or ''}".rstrip(), file=sys.stderr)
        return 2
    if args.tick <= 0 or args.noise < 0:
        print("--tick must be > 0 and --noise >= 0", file=sys.stderr)
        return 2
    port = args.port or port_of(crate.address)
    beacon_port = args.beacon_port or (port + 1 if port < 65535 else port)
    configure_environment(args.host, port, beacon_port)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    for name in ("caproto.ctx", "caproto.circ"):
        logging.getLogger(name).addFilter(_QuietCaproto())
    try:
        boards = boards_of(
            crate, dict(args.board),
            {slot: set(names.split(",")) for slot, names in args.omit},
        )  # fmt: skip
    except (KeyError, ValueError) as exc:
        print(f"trackerdcs-sim-crate: {exc.args[0]}", file=sys.stderr)
        return 2
    model = SimCrate(boards, args.seed, noise=args.noise, churn=args.churn)
    server = CrateServer(crate.system, model)
    ready = (
        f"sim crate {crate.name} ({crate.system}) serving {len(server.pvdb)} PVs "
        f"on {args.host}:{port}"
    )
    try:
        return asyncio.run(serve(server, args.host, port, args.tick, ready))
    except OSError as exc:
        print(f"trackerdcs-sim-crate: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
