"""A Julabo chiller simulator speaking the real RS-232 protocol on a pty and/or a TCP port.

Layers (lewis-style): `SimulatedJulabo` holds the state, the physics (`step(dt)`, driven by
simulated time) and the command interpreter (`handle(line)`); `LineSession` does the framing;
`PtyServer` and `TcpServer` move bytes; `JulaboSimulator` ties them together with a physics
tick thread and a backdoor for tests.

Behaviour where the manual leaves a choice (documented here, relied upon by the tests):

- Commands are case-insensitive, end with CR; LF, XON and XOFF bytes from the client are ignored.
  Replies end with CR LF; with `xon=True` every reply carries XON/XOFF bytes (start, middle,
  between CR and LF) to exercise the client's stripping.
- An unknown or malformed command (unknown name, missing or non-numeric value, a query with an
  argument) gets no reply; STATUS then reports `-08 INVALID COMMAND`.
- `OUT_` commands get no reply. In manual mode (status 00/01) they are not executed and STATUS
  reports `-09`. Out-of-range values are not applied: `-10 VALUE TOO SMALL` /
  `-11 VALUE TOO LARGE` against the unit's set point range (pump stage 1..4, active set point
  0..2, modes 0/1); a set point outside the warning limits gives `-13`. Starting while an alarm
  is active gives `-09`.
- Command errors (-08..-13) are reported by the next STATUS only (reading it clears them).
  Injected faults persist until `clear_fault()`; an alarm stops the unit. While running, a bath
  above the high / below the low warning limit reports `-03` / `-04`.
  Priority: pending command error, then injected fault, then limit warning, then mode 00..03.
- TCP: one client at a time; a new client takes the line over (the previous one is closed), a
  client disconnecting leaves the server listening.
- Pty: the simulator keeps the slave side open too, so clients may close and reopen the path;
  `drop_line()` closes the pty (clients get I/O errors) and `restore_line()` makes a new one
  (a new /dev/pts path; `--pty-link` keeps a stable symlink to it).

Run standalone: `python -m trackerdcs.sim.julabo --tcp 127.0.0.1:5050 --pty`.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import select
import signal
import socket
import sys
import threading
import time
import tty
from collections import deque
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import Any, Final, Self

from trackerdcs.julabo.protocol import STATUS_TABLE, StatusKind, format_status_code

DEFAULT_VERSION: Final = "JULABO CF31 VERSION 1.0 (trackerdcs simulator)"
CR, LF, XON, XOFF = b"\r", b"\n", b"\x11", b"\x13"
_NUMBER_RE: Final = re.compile(r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)$")


class SimulatedJulabo:
    """State, physics and command interpreter of one unit. Thread-safe; no I/O.

    Physics: when running, the bath moves toward the active set point at `rate` K/min; when
    stopped it relaxes toward `ambient` with time constant `ambient_tau` (s). Heating power is
    `power_gain` %/K of the remaining error plus a holding term, clipped to ±100 (negative when
    cooling). The external sensor follows the bath with first-order lag `external_lag` (s).
    """

    def __init__(
        self,
        *,
        rate: float = 2.0,
        ambient: float = 20.0,
        ambient_tau: float = 600.0,
        external_lag: float = 30.0,
        power_gain: float = 25.0,
        setpoint_range: tuple[float, float] = (-50.0, 200.0),
        temperature: float | None = None,
        remote: bool = True,
        version: str = DEFAULT_VERSION,
    ) -> None:
        low, high = setpoint_range
        if low >= high or rate <= 0 or ambient_tau <= 0 or external_lag <= 0:
            raise ValueError("invalid simulator parameters")
        self._lock = threading.RLock()
        self.rate = rate
        self.ambient = ambient
        self.ambient_tau = ambient_tau
        self.external_lag = external_lag
        self.power_gain = power_gain
        self.setpoint_range = (low, high)
        self.version = version
        self.bath = ambient if temperature is None else temperature
        self.external = self.bath
        self.power = 0.0
        start = min(max(20.0, low), high)
        self.setpoints = [start, start, start]
        self.high_limit = high
        self.low_limit = low
        self.excess_limit = high + 10.0
        self.pump_stage = 2
        self.active = 0
        self.external_control = False
        self.running = False
        self.remote = remote
        self.fault: int | None = None
        self._command_error: int | None = None
        self.out_count = 0
        self.history: deque[str] = deque(maxlen=1000)

    # -- physics -----------------------------------------------------------------------------

    def step(self, dt: float) -> None:
        """Advance the physics by `dt` simulated seconds."""
        if dt <= 0:
            return
        with self._lock:
            target = self.setpoints[self.active]
            if self.running:
                max_delta = self.rate * dt / 60.0
                self.bath += max(-max_delta, min(max_delta, target - self.bath))
                hold = 0.5 * (target - self.ambient)
                raw = self.power_gain * (target - self.bath) + hold
                self.power = max(-100.0, min(100.0, raw))
            else:
                self.bath += (self.ambient - self.bath) * -math.expm1(-dt / self.ambient_tau)
                self.power = 0.0
            self.external += (self.bath - self.external) * -math.expm1(-dt / self.external_lag)

    # -- backdoor ------------------------------------------------------------------------------

    def set_remote(self, remote: bool) -> None:
        """Remote (status 02/03, OUT_ accepted) or manual (00/01, OUT_ refused with -09)."""
        with self._lock:
            self.remote = remote

    def set_running(self, running: bool) -> None:
        """The front panel's start/stop key (works in any mode)."""
        with self._lock:
            self.running = running

    def inject_fault(self, code: int) -> None:
        """Make STATUS report `code` (negative); an alarm stops the unit."""
        if code >= 0:
            raise ValueError(f"fault codes are negative, got {code}")
        with self._lock:
            self.fault = code
            if self.alarm_active:
                self.running = False

    def clear_fault(self) -> None:
        with self._lock:
            self.fault = None

    @property
    def alarm_active(self) -> bool:
        """Whether the injected fault is an alarm (unknown codes count as alarms)."""
        fault = self.fault
        if fault is None:
            return False
        return STATUS_TABLE.get(fault, ("", StatusKind.ALARM))[1] is StatusKind.ALARM

    @property
    def status_code(self) -> int:
        """What STATUS would report now (without clearing a pending command error)."""
        with self._lock:
            if self._command_error is not None:
                return self._command_error
            if self.fault is not None:
                return self.fault
            if self.running and self.bath > self.high_limit:
                return -3
            if self.running and self.bath < self.low_limit:
                return -4
            return (2 if self.remote else 0) + (1 if self.running else 0)

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
            reader = self._readers().get(name)
            if reader is None or args:
                self._command_error = -8
                return None
            return reader()

    def invalid_command(self) -> None:
        """Record an unparseable line (garbage, overlong) as -08."""
        with self._lock:
            self._command_error = -8

    def _status_line(self) -> str:
        code = self.status_code
        self._command_error = None
        text = STATUS_TABLE.get(code, ("UNKNOWN STATUS", StatusKind.ALARM))[0]
        return f"{format_status_code(code)} {text}"

    def _readers(self) -> dict[str, Callable[[], str]]:
        return {
            "VERSION": lambda: self.version,
            "STATUS": self._status_line,
            "IN_PV_00": lambda: f"{self.bath:.2f}",
            "IN_PV_01": lambda: f"{self.power:.1f}",
            "IN_PV_02": lambda: f"{self.external:.2f}",
            "IN_PV_03": lambda: f"{self.bath:.2f}",
            "IN_PV_04": lambda: f"{self.excess_limit:.2f}",
            "IN_SP_00": lambda: f"{self.setpoints[0]:.2f}",
            "IN_SP_01": lambda: f"{self.setpoints[1]:.2f}",
            "IN_SP_02": lambda: f"{self.setpoints[2]:.2f}",
            "IN_SP_03": lambda: f"{self.high_limit:.2f}",
            "IN_SP_04": lambda: f"{self.low_limit:.2f}",
            "IN_SP_07": lambda: str(self.pump_stage),
            "IN_MODE_01": lambda: str(self.active),
            "IN_MODE_04": lambda: str(int(self.external_control)),
            "IN_MODE_05": lambda: str(int(self.running)),
        }

    def _writers(self) -> dict[str, Callable[[float], int | None]]:
        """OUT_ name -> apply(value), returning an error code or None when applied."""
        return {
            "OUT_SP_00": lambda v: self._set_setpoint(0, v),
            "OUT_SP_01": lambda v: self._set_setpoint(1, v),
            "OUT_SP_02": lambda v: self._set_setpoint(2, v),
            "OUT_SP_03": lambda v: self._set_limit("high_limit", v),
            "OUT_SP_04": lambda v: self._set_limit("low_limit", v),
            "OUT_SP_07": lambda v: self._set_int("pump_stage", v, 1, 4),
            "OUT_MODE_01": lambda v: self._set_int("active", v, 0, 2),
            "OUT_MODE_04": lambda v: self._set_flag("external_control", v),
            "OUT_MODE_05": self._set_running,
        }

    def _execute(self, name: str, args: list[str]) -> None:
        writer = self._writers().get(name)
        if writer is None or len(args) != 1 or not _NUMBER_RE.match(args[0]):
            self._command_error = -8
        elif not self.remote:
            self._command_error = -9
        else:
            self._command_error = writer(float(args[0]))

    @staticmethod
    def _range_error(value: float, low: float, high: float) -> int | None:
        if value < low:
            return -10
        if value > high:
            return -11
        return None

    def _set_setpoint(self, index: int, value: float) -> int | None:
        error = self._range_error(value, *self.setpoint_range)
        if error is None and not self.low_limit <= value <= self.high_limit:
            error = -13
        if error is None:
            self.setpoints[index] = round(value, 2)
        return error

    def _set_limit(self, attribute: str, value: float) -> int | None:
        error = self._range_error(value, *self.setpoint_range)
        if error is None:
            setattr(self, attribute, round(value, 2))
        return error

    def _set_int(self, attribute: str, value: float, low: int, high: int) -> int | None:
        if not value.is_integer():
            return -8
        error = self._range_error(value, low, high)
        if error is None:
            setattr(self, attribute, int(value))
        return error

    def _set_flag(self, attribute: str, value: float) -> int | None:
        error = self._set_int(attribute, value, 0, 1)
        if error is None:
            setattr(self, attribute, bool(value))
        return error

    def _set_running(self, value: float) -> int | None:
        if value == 1 and self.alarm_active:
            return -9
        return self._set_flag("running", value)


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


class _Wakeup:
    """A pipe to interrupt a select() loop from another thread with one-byte messages."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)

    def send(self, message: bytes) -> None:
        os.write(self.write_fd, message)

    def receive(self) -> bytes:
        try:
            return os.read(self.read_fd, 64)
        except BlockingIOError:
            return b""

    def close(self) -> None:
        os.close(self.read_fd)
        os.close(self.write_fd)


class _LineServer:
    """A select() loop on its own thread that serves `LineSession`s; `stop()` ends it."""

    def __init__(self, new_session: Callable[[], LineSession]) -> None:
        self._new_session = new_session
        self._thread: threading.Thread | None = None
        self._wakeup: _Wakeup | None = None

    def _launch(self, name: str, *args: object) -> None:
        """Run `_run(*args, wakeup)` on a new thread."""
        self._wakeup = _Wakeup()
        self._thread = threading.Thread(
            target=self._run, args=(*args, self._wakeup), name=name, daemon=True
        )
        self._thread.start()

    def _run(self, *args: Any, **kwargs: Any) -> None:  # the loop; its last argument: wakeup
        raise NotImplementedError

    def stop(self) -> bool:
        """End the loop (it closes what it serves); False if it was not running."""
        thread, wakeup = self._thread, self._wakeup
        if thread is None or wakeup is None:
            return False
        wakeup.send(b"q")
        thread.join()
        wakeup.close()
        self._thread = self._wakeup = None
        return True


class PtyServer(_LineServer):
    """Serves sessions on a pseudo-terminal; `start()` returns the slave path clients open."""

    def __init__(self, new_session: Callable[[], LineSession], link: str | None = None) -> None:
        super().__init__(new_session)
        self.link = link
        self.path: str | None = None

    def start(self) -> str:
        if self._thread is not None:
            assert self.path is not None
            return self.path
        master, slave = os.openpty()
        tty.setraw(slave)
        os.set_blocking(master, False)
        self.path = os.ttyname(slave)
        if self.link:
            temporary = f"{self.link}.tmp{os.getpid()}"
            os.symlink(self.path, temporary)
            os.replace(temporary, self.link)
        self._launch("julabo-sim-pty", master, slave)
        return self.path

    def stop(self) -> bool:
        """Close the pty (clients see the line drop) and remove the symlink."""
        stopped = super().stop()
        if stopped and self.link and os.path.islink(self.link):
            os.unlink(self.link)
        return stopped

    def _run(self, master: int, slave: int, wakeup: _Wakeup) -> None:
        session = self._new_session()
        try:
            while True:
                ready, _, _ = select.select([master, wakeup.read_fd], [], [])
                if wakeup.read_fd in ready and b"q" in wakeup.receive():
                    return
                if master not in ready:
                    continue
                try:
                    data = os.read(master, 4096)
                except BlockingIOError:
                    continue
                except OSError:
                    return
                reply = session.feed(data)
                if reply:
                    # if nobody reads the line and its buffer is full, the reply is lost
                    with contextlib.suppress(BlockingIOError):
                        os.write(master, reply)
        finally:
            os.close(master)
            os.close(slave)


class TcpServer(_LineServer):
    """Serves one TCP client at a time; a new client takes over, the server keeps listening.

    `stop()` closes the client and the listening socket (connections are then refused).
    """

    def __init__(
        self, new_session: Callable[[], LineSession], host: str = "127.0.0.1", port: int = 0
    ) -> None:
        super().__init__(new_session)
        self.host = host
        self.port = port
        self.connections = 0

    @property
    def url(self) -> str:
        return f"socket://{self.host}:{self.port}"

    def start(self) -> str:
        """Listen (on the same port again after `stop()`); returns the `socket://` URL."""
        if self._thread is not None:
            return self.url
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind((self.host, self.port))
            listener.listen(4)
        except OSError:
            listener.close()
            raise
        self.port = listener.getsockname()[1]
        self._launch("julabo-sim-tcp", listener)
        return self.url

    def disconnect_client(self) -> None:
        """Close the current client's connection; keep listening."""
        if self._wakeup is not None:
            self._wakeup.send(b"d")

    def _run(self, listener: socket.socket, wakeup: _Wakeup) -> None:
        client: socket.socket | None = None
        session = self._new_session()
        try:
            while True:
                watched: list[socket.socket | int] = [listener, wakeup.read_fd]
                if client is not None:
                    watched.append(client)
                ready, _, _ = select.select(watched, [], [])
                if wakeup.read_fd in ready:
                    message = wakeup.receive()
                    if b"q" in message:
                        return
                    if b"d" in message and client is not None:
                        client.close()
                        client = None
                if listener in ready:
                    connection, _ = listener.accept()
                    connection.settimeout(2.0)
                    if client is not None:
                        client.close()
                    client, session = connection, self._new_session()
                    self.connections += 1
                if client is not None and client in ready:
                    client = self._serve(client, session)
        finally:
            if client is not None:
                client.close()
            listener.close()

    @staticmethod
    def _serve(client: socket.socket, session: LineSession) -> socket.socket | None:
        """Handle readable data; the client, or None once it is gone."""
        try:
            data = client.recv(4096)
            if data:
                reply = session.feed(data)
                if reply:
                    client.sendall(reply)
                return client
        except OSError:
            pass
        client.close()
        return None


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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.tcp is None and not args.pty:
        build_parser().error("give --tcp HOST:PORT and/or --pty")
    device = SimulatedJulabo(
        rate=args.rate,
        ambient=args.ambient,
        temperature=args.temperature,
        setpoint_range=tuple(args.setpoint_range),
        remote=not args.manual,
    )
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
