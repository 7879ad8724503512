"""Simulated environmental sensors: lines like an Arduino/ESP prints, served on TCP.

`SensorLineServer(reading)` listens on a TCP port and, every `interval` s, sends the line
`reading()` returns (`T=21.50 RH=45.0`, see `trackerdcs.sensors.lineformat`) to every connected
client, like an ESP printing on a socket or an Arduino behind ser2net. Backdoor `mode`:

- `ok`: real readings;
- `garbage`: `Failed to read from DHT sensor!` instead (what the DHT library prints on failure);
- `silent`: nothing (the sensor hangs; clients stay connected).

Run standalone: `python -m trackerdcs.sim.sensors --tcp 127.0.0.1:5051 [--humidity 45]`.
"""

from __future__ import annotations

import argparse
import contextlib
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Final, Literal, cast

from trackerdcs.sensors.lineformat import format_line
from trackerdcs.sim.lineservers import listen

Mode = Literal["ok", "garbage", "silent"]
MODES: Final = ("ok", "garbage", "silent")
GARBAGE_LINE: Final = "Failed to read from DHT sensor!"


class SensorLineServer:
    """One simulated sensor on one TCP port; any number of clients."""

    def __init__(
        self,
        reading: Callable[[], str],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        interval: float = 1.0,
    ) -> None:
        self.reading = reading
        self.host = host
        self.port = port
        self.interval = interval
        self.mode: Mode = "ok"
        self.lines_sent = 0
        self._clients: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def url(self) -> str:
        return f"socket://{self.host}:{self.port}"

    @property
    def clients(self) -> int:
        return len(self._clients)

    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.mode = cast(Mode, mode)

    def start(self) -> str:
        """Listen (OSError if the port is taken); returns the `socket://` URL."""
        listener = listen(self.host, self.port, backlog=8)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"sensor {self.port}", daemon=True)
        self._thread.start()
        return self.url

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)
            self._thread = None

    def _run(self) -> None:
        assert self._listener is not None
        next_line = time.monotonic()
        try:
            while not self._stop.is_set():
                wait = max(0.0, min(next_line - time.monotonic(), 0.1))
                ready, _, _ = select.select([self._listener, *self._clients], [], [], wait)
                for sock in ready:
                    if sock is self._listener:
                        client, _ = self._listener.accept()
                        client.settimeout(1.0)
                        self._clients.append(client)
                    elif not _still_open(sock):
                        self._drop(sock)
                if time.monotonic() >= next_line:
                    next_line += self.interval
                    if next_line < time.monotonic():
                        next_line = time.monotonic() + self.interval
                    self._emit()
        finally:
            for client in list(self._clients):
                self._drop(client)
            self._listener.close()

    def _emit(self) -> None:
        if self.mode == "silent":
            return
        line = self.reading() if self.mode == "ok" else GARBAGE_LINE
        data = (line + "\r\n").encode("ascii")
        for client in list(self._clients):
            try:
                client.sendall(data)
            except OSError:
                self._drop(client)
        self.lines_sent += 1

    def _drop(self, client: socket.socket) -> None:
        with contextlib.suppress(ValueError):
            self._clients.remove(client)
        client.close()


def _still_open(sock: socket.socket) -> bool:
    """A readable client: discard what it sent; False when it has closed."""
    try:
        return bool(sock.recv(1024))
    except OSError:
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m trackerdcs.sim.sensors", description="A simulated T/RH sensor on TCP."
    )
    parser.add_argument("--tcp", default="127.0.0.1:0", metavar="HOST:PORT")
    parser.add_argument("--temperature", type=float, default=21.0, help="°C")
    parser.add_argument("--humidity", type=float, help="% RH (omit for a temperature sensor)")
    parser.add_argument("--interval", type=float, default=1.0, help="s between lines")
    args = parser.parse_args(argv)
    host, _, port = args.tcp.rpartition(":")
    server = SensorLineServer(
        lambda: format_line(args.temperature, args.humidity),
        host=host or "127.0.0.1",
        port=int(port),
        interval=args.interval,
    )
    done = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        url = server.start()
    except OSError as exc:
        print(f"sensor-sim: cannot serve {args.tcp}: {exc}", file=sys.stderr)
        return 1
    print(f"sensor-sim: serving {url}", file=sys.stderr, flush=True)
    done.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
