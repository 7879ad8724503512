"""Byte servers for simulated serial devices: a pty, and a TCP port behaving like ser2net.

A server moves bytes between its clients and a `Session` (the device's framing and interpreter:
`feed(bytes) -> bytes` to send back). Each runs a `select()` loop on its own thread; `stop()` ends
it.

- `PtyServer`: a pseudo-terminal. The simulator keeps the slave side open too, so clients may
  close and reopen the path; `stop()` closes the pty (clients get I/O errors), `start()` again
  makes a new one (a new /dev/pts path; `link` keeps a stable symlink to it).
- `TcpServer`: one client at a time, like ser2net: "If another user is already using the
  connection or serial port, the connection is refused with an error message" (ser2net(8)). A
  second client gets `IN_USE` and is closed at once; the first keeps the line. A client
  disconnecting leaves the server listening.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import threading
import tty
from collections.abc import Callable
from typing import Any, Protocol

log = logging.getLogger(__name__)

IN_USE = b"Port already in use\r\n"  # what a refused second client reads before the close


def listen(host: str, port: int, backlog: int = 4) -> socket.socket:
    """A listening TCP socket on `host:port` (0: a free port; the same port again after a stop,
    SO_REUSEADDR). OSError if the port is taken."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
        listener.listen(backlog)
    except OSError:
        listener.close()
        raise
    return listener


class Session(Protocol):
    def feed(self, data: bytes) -> bytes:
        """Consume received bytes; return the bytes to send back."""
        ...


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
    """A select() loop on its own thread that serves `Session`s; `stop()` ends it."""

    def __init__(self, new_session: Callable[[], Session]) -> None:
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

    def __init__(self, new_session: Callable[[], Session], link: str | None = None) -> None:
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
        self._launch("sim-pty", master, slave)
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
    """Serves one TCP client at a time; a second one is refused while the first is connected.

    `stop()` closes the client and the listening socket (connections are then refused).
    `connections` counts the clients served, `refused` those turned away.
    """

    def __init__(
        self, new_session: Callable[[], Session], host: str = "127.0.0.1", port: int = 0
    ) -> None:
        super().__init__(new_session)
        self.host = host
        self.port = port
        self.connections = 0
        self.refused = 0

    @property
    def url(self) -> str:
        return f"socket://{self.host}:{self.port}"

    def start(self) -> str:
        """Listen (on the same port again after `stop()`); returns the `socket://` URL."""
        if self._thread is not None:
            return self.url
        listener = listen(self.host, self.port)
        self.port = listener.getsockname()[1]
        self._launch("sim-tcp", listener)
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
                # the current client first: one that just closed frees the line for the next
                if client is not None and client in ready:
                    client = self._serve(client, session)
                if listener in ready:
                    connection, peer = listener.accept()
                    if client is not None:
                        self.refused += 1
                        log.warning("%s: refused %s:%d, the line is in use", self.url, *peer)
                        with contextlib.suppress(OSError):
                            connection.sendall(IN_USE)
                        connection.close()
                        continue
                    connection.settimeout(2.0)
                    client, session = connection, self._new_session()
                    self.connections += 1
        finally:
            if client is not None:
                client.close()
            listener.close()

    @staticmethod
    def _serve(client: socket.socket, session: Session) -> socket.socket | None:
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
