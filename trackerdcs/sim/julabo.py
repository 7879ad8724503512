"""A Julabo chiller simulator speaking the real RS-232 protocol on a pty and/or a TCP port.

Layers (as lewis splits a simulated device): `JulaboUnit` (`julabo_model`) holds the state and
the physics; `SimulatedJulabo` adds the command interpreter of one model family (`handle(line)`,
from the profile table `trackerdcs.julabo.models.PROFILES`); `LineSession` does the framing;
`PtyServer` and `TcpServer` (`lineservers`) move bytes; `JulaboSimulator` ties them together
with a physics tick thread and a backdoor for tests.

What it does, from the manuals where they say (see `trackerdcs.julabo.models` for the command
sets), and the simulator's choice where they do not (relied upon by the tests):

- It answers exactly its profile's commands: an FL unit knows `VERSION`, `STATUS`, `IN_PV_00`,
  `IN_SP_00`, `IN_MODE_05`, `OUT_SP_00` and `OUT_MODE_05`; the FP50-MH reads its external sensor
  on `IN_PV_01` and its limits on `IN_SP_01`/`IN_SP_02`; a full unit answers the PID parameters
  (`IN_PAR_06`..`12`, `OUT_PAR_...`) and `MODE_02`/`MODE_03` with plausible values and read-back.
  Without an external sensor (`external_sensor=False`) the external reading is `---.--`.
- Commands are case-insensitive, end with CR; LF, XON and XOFF bytes from the client are ignored.
  Replies end with CR LF; with `xon=True` every reply carries XON/XOFF bytes (start, middle,
  between CR and LF) to exercise the client's stripping.
- An unknown or malformed command (unknown name, missing or non-numeric value, a query with an
  argument) gets no reply; STATUS then reports `-08 INVALID COMMAND`.
- `OUT_` commands get no reply. In manual mode (status 00/01) they are not executed and STATUS
  reports `-09` ("the out commands are valid only in remote control mode"). Out-of-range values
  are not applied: `-10 VALUE TOO SMALL` / `-11 VALUE TOO LARGE` against the unit's set point
  range and the parameter ranges (pump stage 1..4, active set point 0..2, PID: Xp 0.1..99.9,
  Tn 3..9999, Tv 0..999). A set point outside the warning limits is stored and reported as `-13`
  ("Value lies outside the adjusted range for the high and low temperature warning limits. But
  the value is stored.", Presto manual). Starting while an alarm is active gives `-09`.
- A command error describes "the most recently received command" (Presto, Magio manuals): every
  `OUT_` command replaces the pending one (an accepted command clears it), so a refusal followed
  by another accepted `OUT_` before `STATUS` is no longer reported. Queries leave it alone; an
  unknown line sets `-08`. STATUS reports it once (reading it clears it: the simulator's choice).
  Injected faults persist until `clear_fault()`; an alarm stops the unit. While running, a bath
  above the high / below the low warning limit reports `-03` / `-04`. Priority: pending command
  error, then injected fault, then limit warning, then mode 00..03.
- Transients on request: `drop_replies(n)` loses the next `n` replies (`drop_replies(n,
  "IN_MODE_01")`: the next `n` replies to that query only), `drop_every = k` every k-th (the
  command is executed, its answer never arrives), as a long RS-232 or ser2net line does.
- TCP: one client at a time, a second one is refused while the first is connected (as ser2net).

Run standalone: `python -m trackerdcs.sim.julabo --tcp 127.0.0.1:5050 --pty [--model fl]`.
"""

from __future__ import annotations

import argparse
import re
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import Any, Final, Self

from trackerdcs.julabo.models import DEFAULT_PROFILE, PARAMETERS, PROFILES, Profile, profile
from trackerdcs.julabo.protocol import STATUS_TABLE, StatusKind, format_status_code
from trackerdcs.sim.julabo_model import JulaboUnit
from trackerdcs.sim.lineservers import PtyServer, TcpServer

CR, LF, XON, XOFF = b"\r", b"\n", b"\x11", b"\x13"
PLACEHOLDER: Final = "---.--"  # what a unit without an external Pt100 answers (IN_PV_02)
_NUMBER_RE: Final = re.compile(r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)$")
VERSIONS: Final = {
    "full": "JULABO CF31 VERSION 1.0 (trackerdcs simulator)",
    "fl": "JULABO FL601 VERSION 1.0 (trackerdcs simulator)",
    "fp50-mh": "JULABO FP50-MH VERSION 1.0 (trackerdcs simulator)",
    "big": "JULABO BIG VERSION 1.0 (trackerdcs simulator)",
    "generic": "JULABO VERSION 1.0 (trackerdcs simulator)",
}
DEFAULT_VERSION: Final = VERSIONS[DEFAULT_PROFILE]

Reader = Callable[[], str]
Writer = Callable[[float], int | None]  # the error code, or None when applied


class SimulatedJulabo(JulaboUnit):
    """A `JulaboUnit` that speaks the command set of one model family. Thread-safe; no I/O."""

    def __init__(
        self, *, model: Profile | str = DEFAULT_PROFILE, version: str | None = None, **unit: Any
    ) -> None:
        super().__init__(**unit)
        self.profile = model if isinstance(model, Profile) else profile(model)
        self.version = version or VERSIONS.get(self.profile.name, DEFAULT_VERSION)
        self._command_error: int | None = None
        self.out_count = 0
        self.history: deque[str] = deque(maxlen=1000)
        self.drop_every = 0  # lose every n-th reply (0: none)
        self.dropped = 0  # replies lost so far
        self._drop_next = 0
        self._drop_for: dict[str, int] = {}  # query -> replies to it still to lose
        self._replies = 0
        accessors = self._accessors()
        self._readers: dict[str, Reader] = {"VERSION": lambda: self.version,
                                            "STATUS": self._status_line}  # fmt: skip
        self._writers: dict[str, Writer] = {}
        for name, register in self.profile.registers.items():
            read, write = accessors[name]
            self._readers[register.query] = read
            if register.write is not None and write is not None:
                self._writers[register.write] = write

    # -- backdoor ------------------------------------------------------------------------------

    @property
    def status_code(self) -> int:
        """What STATUS would report now (without clearing a pending command error)."""
        with self._lock:
            if self._command_error is not None:
                return self._command_error
            return self.operating_code()

    def drop_replies(self, count: int = 1, command: str | None = None) -> None:
        """Lose the next `count` replies (the commands are executed, the answers never arrive);
        with `command` (`IN_MODE_01`), the next `count` replies to that query only."""
        with self._lock:
            if command is None:
                self._drop_next += count
            else:
                key = command.upper()
                self._drop_for[key] = self._drop_for.get(key, 0) + count

    @property
    def commands(self) -> frozenset[str]:
        """Every command name this model answers or takes."""
        return frozenset(self._readers) | frozenset(self._writers)

    # -- protocol ------------------------------------------------------------------------------

    def handle(self, line: str) -> str | None:
        """Execute one command line (without its CR); the reply text, or None for no reply."""
        with self._lock:
            self.history.append(line)
            parts = line.split()
            if not parts:
                return None
            name, args = parts[0].upper(), parts[1:]
            if name.startswith("OUT_"):
                self.out_count += 1
                self._execute(name, args)
                return None
            reader = self._readers.get(name)
            if reader is None or args:
                self._command_error = -8
                return None
            return self._deliver(reader(), name)

    def invalid_command(self) -> None:
        """Record an unparseable line (garbage, overlong) as -08."""
        with self._lock:
            self._command_error = -8

    def _deliver(self, reply: str, name: str) -> str | None:
        """The reply, unless the line is to lose it."""
        self._replies += 1
        if self._drop_for.get(name, 0) > 0:
            self._drop_for[name] -= 1
            self.dropped += 1
            return None
        lose = self._drop_next > 0 or (self.drop_every > 0 and self._replies % self.drop_every == 0)
        if not lose:
            return reply
        self._drop_next = max(0, self._drop_next - 1)
        self.dropped += 1
        return None

    def _status_line(self) -> str:
        code = self.status_code
        self._command_error = None
        text = STATUS_TABLE.get(code, ("UNKNOWN STATUS", StatusKind.ALARM))[0]
        return f"{format_status_code(code)} {text}"

    def _external_text(self) -> str:
        return f"{self.external:.2f}" if self.external_sensor else PLACEHOLDER

    def _accessors(self) -> dict[str, tuple[Reader, Writer | None]]:
        """Parameter name -> (its reply text, apply(value)); the profile picks the registers."""
        table: dict[str, tuple[Reader, Writer | None]] = {
            "bath_temperature": (lambda: f"{self.bath:.2f}", None),
            "heating_power": (lambda: f"{self.power:.1f}", None),
            "external_temperature": (self._external_text, None),
            "safety_temperature": (lambda: f"{self.bath:.2f}", None),
            "excess_temperature_limit": (lambda: f"{self.excess_limit:.2f}", None),
            "high_limit": (lambda: f"{self.high_limit:.2f}",
                           lambda v: self._set_limit("high_limit", v)),
            "low_limit": (lambda: f"{self.low_limit:.2f}",
                          lambda v: self._set_limit("low_limit", v)),
            "pump_stage": (lambda: str(self.pump_stage), lambda v: self._set_int("pump_stage", v)),
            "active_setpoint": (lambda: str(self.active),
                                lambda v: self._set_int("active", v, "active_setpoint")),
            "selftuning": (lambda: str(self.selftuning), lambda v: self._set_int("selftuning", v)),
            "external_input": (lambda: str(self.external_input),
                               lambda v: self._set_int("external_input", v)),
            "external_control": (lambda: str(int(self.external_control)),
                                 lambda v: self._set_flag("external_control", v)),
            "running": (lambda: str(int(self.running)), self._set_running),
        }  # fmt: skip
        for index in range(3):
            table[f"setpoint_{index + 1}"] = (
                lambda i=index: f"{self.setpoints[i]:.2f}",
                lambda v, i=index: self._set_setpoint(i, v),
            )
        for name in self.pid:
            table[name] = (lambda n=name: self._pid_text(n), lambda v, n=name: self._set_pid(n, v))
        return table

    def _execute(self, name: str, args: list[str]) -> None:
        """An `OUT_` command: its outcome replaces the pending command error."""
        writer = self._writers.get(name)
        if writer is None or len(args) != 1 or not _NUMBER_RE.match(args[0]):
            self._command_error = -8
        elif not self.remote:
            self._command_error = -9
        else:
            self._command_error = writer(float(args[0]))

    @staticmethod
    def _range_error(value: float, low: float | None, high: float | None) -> int | None:
        if low is not None and value < low:
            return -10
        if high is not None and value > high:
            return -11
        return None

    def _set_setpoint(self, index: int, value: float) -> int | None:
        error = self._range_error(value, *self.setpoint_range)
        if error is not None:
            return error
        self.setpoints[index] = round(value, 2)
        if not self.low_limit <= value <= self.high_limit:
            return -13  # stored all the same (Presto manual)
        return None

    def _set_limit(self, attribute: str, value: float) -> int | None:
        error = self._range_error(value, *self.setpoint_range)
        if error is None:
            setattr(self, attribute, round(value, 2))
        return error

    def _set_int(self, attribute: str, value: float, parameter: str | None = None) -> int | None:
        if not value.is_integer():
            return -8
        spec = PARAMETERS[parameter or attribute]
        error = self._range_error(value, spec.minimum, spec.maximum)
        if error is None:
            setattr(self, attribute, int(value))
        return error

    def _set_flag(self, attribute: str, value: float) -> int | None:
        if not value.is_integer():
            return -8
        error = self._range_error(value, 0, 1)
        if error is None:
            setattr(self, attribute, bool(value))
        return error

    def _set_running(self, value: float) -> int | None:
        if value == 1 and self.alarm_active:
            return -9
        return self._set_flag("running", value)

    def _pid_text(self, name: str) -> str:
        spec = PARAMETERS[name]
        value = self.pid[name]
        return f"{value:.{spec.decimals}f}" if spec.kind is float else str(int(value))

    def _set_pid(self, name: str, value: float) -> int | None:
        spec = PARAMETERS[name]
        if spec.kind is int and not value.is_integer():
            return -8
        error = self._range_error(value, spec.minimum, spec.maximum)
        if error is None:
            self.pid[name] = round(value, spec.decimals) if spec.kind is float else int(value)
        return error


class LineSession:
    """Framing for one connection: bytes in, CR-terminated commands to the device, replies out."""

    MAX_LINE: Final = 256

    def __init__(self, device: SimulatedJulabo, sprinkle_xon: Callable[[], bool]) -> None:
        self._device = device
        self._sprinkle_xon = sprinkle_xon
        self._buffer = bytearray()

    def feed(self, data: bytes) -> bytes:
        """Consume received bytes; return the framed replies to send back."""
        self._buffer += data.replace(LF, b"").replace(XON, b"").replace(XOFF, b"")
        out = bytearray()
        while CR in self._buffer:
            raw, _, rest = bytes(self._buffer).partition(CR)
            self._buffer = bytearray(rest)
            try:
                line = raw.decode("ascii")
            except UnicodeDecodeError:
                self._device.invalid_command()
                continue
            reply = self._device.handle(line)
            if reply is not None:
                out += self._frame(reply.encode("ascii"))
        if len(self._buffer) > self.MAX_LINE:
            self._buffer.clear()
            self._device.invalid_command()
        return bytes(out)

    def _frame(self, body: bytes) -> bytes:
        if not self._sprinkle_xon():
            return body + CR + LF
        return XON + body[:1] + XOFF + XON + body[1:] + CR + XON + LF


class JulaboSimulator:
    """A `SimulatedJulabo` served on a pty and/or TCP, with a physics tick and a test backdoor.

    `tick=None` disables the tick thread: tests then advance time with `step(dt)`. `speed`
    scales simulated time against wall time in the tick thread.
    """

    def __init__(
        self,
        device: SimulatedJulabo | None = None,
        *,
        tick: float | None = 0.5,
        speed: float = 1.0,
        xon: bool = False,
    ) -> None:
        self.device = device or SimulatedJulabo()
        self.tick = tick
        self.speed = speed
        self.xon = xon
        self.pty: PtyServer | None = None
        self.tcp: TcpServer | None = None
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    # -- serving -------------------------------------------------------------------------------

    def _session(self) -> LineSession:
        return LineSession(self.device, lambda: self.xon)

    def serve_pty(self, link: str | None = None) -> str:
        """Open a pty and serve it; returns the slave path (the device path clients open)."""
        if self.pty is None:
            self.pty = PtyServer(self._session, link)
        return self.pty.start()

    def serve_tcp(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on `host:port` (0: any free port); returns `socket://host:port`."""
        if self.tcp is None:
            self.tcp = TcpServer(self._session, host, port)
        return self.tcp.start()

    @property
    def pty_path(self) -> str | None:
        return self.pty.path if self.pty else None

    @property
    def tcp_url(self) -> str | None:
        return self.tcp.url if self.tcp else None

    def start(self) -> Self:
        """Start the physics tick thread (if `tick` is set)."""
        if self.tick is not None and self._ticker is None:
            self._stop.clear()
            self._ticker = threading.Thread(target=self._tick_loop, name="julabo-sim-tick")
            self._ticker.daemon = True
            self._ticker.start()
        return self

    def close(self) -> None:
        """Stop the tick thread and every server."""
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
            self._ticker = None
        self.drop_line()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _tick_loop(self) -> None:
        assert self.tick is not None
        last = time.monotonic()
        while not self._stop.wait(self.tick):
            now = time.monotonic()
            self.device.step((now - last) * self.speed)
            last = now

    # -- backdoor ------------------------------------------------------------------------------

    def step(self, dt: float) -> None:
        """Advance the physics by `dt` simulated seconds."""
        self.device.step(dt)

    def set_remote(self, remote: bool) -> None:
        self.device.set_remote(remote)

    def set_running(self, running: bool) -> None:
        """The front panel's start/stop key."""
        self.device.set_running(running)

    def drop_replies(self, count: int = 1, command: str | None = None) -> None:
        """Lose the next `count` replies (to `command` only, when given)."""
        self.device.drop_replies(count, command)

    def inject_fault(self, code: int) -> None:
        self.device.inject_fault(code)

    def clear_fault(self) -> None:
        self.device.clear_fault()

    @property
    def out_count(self) -> int:
        """How many `OUT_` commands were received (accepted or refused)."""
        return self.device.out_count

    def drop_line(self) -> None:
        """Unplug: close the pty and the TCP server (with its client)."""
        for server in (self.pty, self.tcp):
            if server is not None:
                server.stop()

    def restore_line(self) -> None:
        """Plug back in: TCP on the same port, a new pty (same symlink, if any)."""
        if self.pty is not None:
            self.pty.start()
        if self.tcp is not None:
            self.tcp.start()

    def disconnect_clients(self) -> None:
        """Close the TCP client's connection, keep listening."""
        if self.tcp is not None:
            self.tcp.disconnect_client()


def _parse_tcp(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    try:
        return host or "127.0.0.1", int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m trackerdcs.sim.julabo",
        description="Julabo chiller simulator speaking the RS-232 protocol on a pty and/or TCP.",
    )
    parser.add_argument("--tcp", type=_parse_tcp, metavar="HOST:PORT", help="TCP address")
    parser.add_argument("--pty", action="store_true", help="serve a pty (path on stderr)")
    parser.add_argument("--pty-link", metavar="PATH", help="stable symlink to the pty")
    parser.add_argument("--rate", type=float, default=2.0, help="ramp rate, K/min")
    parser.add_argument("--ambient", type=float, default=20.0, help="ambient temperature, °C")
    parser.add_argument("--temperature", type=float, help="initial bath temperature, °C")
    parser.add_argument("--tick", type=float, default=0.5, help="physics tick, s")
    parser.add_argument("--speed", type=float, default=1.0, help="simulated s per wall s")
    parser.add_argument(
        "--setpoint-range", type=float, nargs=2, default=(-50.0, 200.0), metavar=("MIN", "MAX")
    )
    parser.add_argument("--manual", action="store_true", help="start in manual mode")
    parser.add_argument("--xon", action="store_true", help="sprinkle XON/XOFF in replies")
    parser.add_argument("--model", choices=list(PROFILES), default=DEFAULT_PROFILE,
                        help="the model family it impersonates (default: %(default)s)")  # fmt: skip
    parser.add_argument("--no-external-sensor", action="store_true",
                        help="no Pt100 plugged in: the external reading is ---.--")  # fmt: skip
    parser.add_argument("--drop-every", type=int, default=0, metavar="N",
                        help="lose every N-th reply (0: none)")  # fmt: skip
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.tcp is None and not args.pty:
        build_parser().error("give --tcp HOST:PORT and/or --pty")
    device = SimulatedJulabo(
        model=args.model,
        rate=args.rate,
        ambient=args.ambient,
        temperature=args.temperature,
        setpoint_range=tuple(args.setpoint_range),
        remote=not args.manual,
        external_sensor=not args.no_external_sensor,
    )
    device.drop_every = max(0, args.drop_every)
    sim = JulaboSimulator(device, tick=args.tick, speed=args.speed, xon=args.xon)
    done = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    with sim:
        try:
            if args.pty:
                path = sim.serve_pty(args.pty_link)
                print(f"julabo-sim: pty {path}", file=sys.stderr, flush=True)
            if args.tcp is not None:
                url = sim.serve_tcp(*args.tcp)
                print(f"julabo-sim: tcp {url}", file=sys.stderr, flush=True)
        except OSError as exc:
            print(f"julabo-sim: cannot serve: {exc}", file=sys.stderr, flush=True)
            return 1
        while not done.wait(1.0):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
