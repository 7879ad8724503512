"""A paho-mqtt client's network run on the service's asyncio loop, not on a thread of its own.

paho 2.x can be driven by an external event loop (its "external event loop" API, as in paho's
`examples/loop_asyncio.py`): the client tells when its socket opens, closes, and has bytes to
write (`on_socket_open`, `on_socket_close`, `on_socket_register_write`,
`on_socket_unregister_write`), and the loop calls `loop_read`, `loop_write` and, about once a
second, `loop_misc` (keepalive). `LoopNetwork` does that on an asyncio loop, so that:

- a message is read, and its callbacks run, on the service's loop: no hand-over from paho's
  thread to the loop (about 0.2 ms measured on the command path);
- a publish from the loop is written at once (inside one of paho's own callbacks, where paho
  must not write, at the loop's next turn): no wake-up of paho's thread through its socket
  pair (0.4 to 0.5 ms each), and an interlock's kill leaves before the status it then builds;
- paho is used from one thread, as its client expects (it is not thread-safe,
  eclipse/paho.mqtt.python#358); a call from another thread is handed to the loop (`call`).

What paho's own thread did besides, `LoopNetwork` does here:

- connect and reconnect with exponential backoff (`reconnect_delay_set`'s minimum and maximum,
  doubled after each failure, back to the minimum once the broker accepted the connection).
  `client.reconnect()` blocks (TCP connect, TLS handshake: up to the connect timeout, 5 s, for
  an unreachable host), so each attempt runs on a short-lived thread while the loop goes on.
  The client is not touched from the loop meanwhile: its socket is watched only once the
  attempt has opened it;
- TLS: bytes that the TLS layer has decrypted already are not seen by the loop's selector, so
  a read that leaves some is followed by another at once;
- stop: `drain` runs the network synchronously (paho's `loop`) until a condition holds, for a
  stop that publishes `offline` and disconnects from inside a loop callback.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt

log = logging.getLogger(__name__)

MISC_INTERVAL = 1.0  # s between loop_misc calls, as paho's own loop (its select timeout)


class LoopNetwork:
    """Runs `client`'s network on `loop`, connecting to `host:port` (see the module's doc).

    `on_socket_open(client, userdata, sock)`: called for each new socket (e.g. TCP_NODELAY),
    on the thread that opened it. `name`: for the log (the client id).
    """

    def __init__(
        self,
        client: mqtt.Client,
        loop: asyncio.AbstractEventLoop,
        *,
        min_delay: float,
        max_delay: float,
        name: str,
        on_socket_open: Callable[[mqtt.Client, Any, Any], None] | None = None,
    ) -> None:
        self.client = client
        self.loop = loop
        self.name = name
        self.min_delay = min_delay
        self.max_delay = max_delay
        self._delay = min_delay
        self._on_socket_open = on_socket_open
        self._thread_id: int | None = None  # the loop's thread, once started
        self._stopping = False
        self._attempt: threading.Thread | None = None  # a connect in progress
        self._retry: asyncio.TimerHandle | None = None
        self._misc: asyncio.TimerHandle | None = None
        self._fds: set[int] = set()  # sockets watched on the loop
        self._failures = 0  # connect attempts failed in a row
        self._in_paho = False  # inside loop_read/loop_misc/loop: paho's callbacks may run
        client.on_socket_open = self._opened
        client.on_socket_close = self._closed
        client.on_socket_register_write = self._want_write
        client.on_socket_unregister_write = self._wrote

    # -- threads --------------------------------------------------------------------------------
    @property
    def started(self) -> bool:
        return self._thread_id is not None

    def on_loop(self) -> bool:
        """True on the loop's thread, once started."""
        return self._thread_id == threading.get_ident()

    def call(self, fn: Callable[..., Any], *args: Any) -> None:
        """`fn(*args)` on the loop: now on its thread, else handed over (dropped with a debug
        line once the loop is closed)."""
        if self.on_loop():
            fn(*args)
            return
        try:
            self.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop is closed: the service has stopped
            log.debug("%s: loop closed, %s not run", self.name, getattr(fn, "__name__", fn))

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """`fn(*args)` as a callback of its own on the loop, from any thread."""
        if self.on_loop():
            self.loop.call_soon(fn, *args)
            return
        try:
            self.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:
            log.debug("%s: loop closed, %s not run", self.name, getattr(fn, "__name__", fn))

    def run(self, fn: Callable[[], None], timeout: float) -> None:
        """`fn()` on the loop's thread, waiting for it up to `timeout` s; here when the loop is
        not running (nothing else then touches the client)."""
        if self.on_loop() or not self.loop.is_running():
            fn()
            return
        done: concurrent.futures.Future[None] = concurrent.futures.Future()

        def step() -> None:
            try:
                fn()
            except BaseException as exc:
                done.set_exception(exc)
            else:
                done.set_result(None)

        try:
            self.loop.call_soon_threadsafe(step)
            done.result(timeout)
        except RuntimeError:  # the loop closed before: run it here
            fn()
        except concurrent.futures.TimeoutError:
            log.warning("%s: the loop did not run the stop within %.1f s", self.name, timeout)

    # -- connecting -----------------------------------------------------------------------------
    def start(self) -> None:
        """Connect, from any thread: the first attempt is made at once on the loop."""
        self.loop.call_soon_threadsafe(self._begin)

    def _begin(self) -> None:
        self._thread_id = threading.get_ident()
        if self._stopping:
            return
        self._misc = self.loop.call_later(MISC_INTERVAL, self._keepalive)
        self._connect()

    def _connect(self) -> None:
        self._retry = None
        if self._stopping or self._attempt is not None or self.client.socket() is not None:
            return
        self._attempt = threading.Thread(
            target=self._attempt_connect, name=f"mqtt-connect {self.name}", daemon=True
        )
        self._attempt.start()

    def _attempt_connect(self) -> None:
        """On the attempt's thread: paho's blocking (re)connect; the outcome to the loop."""
        try:
            self.client.reconnect()
        except Exception as exc:  # OSError, ssl.SSLError, socket.timeout: the broker's reach
            self.call(self._attempted, exc)
        else:
            self.call(self._attempted, None)

    def _attempted(self, error: Exception | None) -> None:
        self._attempt = None
        if error is None:  # CONNECT sent: paho's on_connect tells the broker's answer
            return
        self._failures += 1
        host, port = self.client.host, self.client.port
        say = log.warning if self._failures == 1 else log.debug
        say(
            "%s: cannot reach the broker at %s:%d (%s: %s); retrying, at most every %g s",
            self.name, host, port, type(error).__name__, error, self.max_delay,
        )  # fmt: skip
        self.lost()

    def lost(self) -> None:
        """On the loop: no connection (its socket closed, or an attempt failed), none being
        made: try again after the backoff delay. A service learns of the loss from paho's
        `on_disconnect`, called on the loop too."""
        busy = self._retry is not None or self._attempt is not None
        if self._stopping or not self.started or busy or self.client.socket() is not None:
            return
        delay, self._delay = self._delay, min(self._delay * 2, self.max_delay)
        self._retry = self.loop.call_later(delay, self._connect)

    def connected(self) -> None:
        """The broker accepted the connection (paho's `on_connect`): backoff back to minimum."""
        self._delay = self.min_delay
        if self._failures > 1:
            log.info("%s: reached the broker after %d failed attempts", self.name, self._failures)
        self._failures = 0

    # -- paho's socket callbacks (any thread: the loop's, or a connect attempt's) ---------------
    def _opened(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        if self._on_socket_open is not None:
            self._on_socket_open(client, userdata, sock)
        self.call(self._watch, sock.fileno())

    def _closed(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self.call(self._unwatch, sock.fileno())  # called before the socket is closed
        self.call_soon(self.lost)  # once paho has closed it and called on_disconnect

    def _want_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        fd = sock.fileno()
        if not self.on_loop():
            self.call(self._add_writer, fd)
        elif self._in_paho:  # paho holds its callback lock: write once its call has returned
            self.loop.call_soon(self._flush, fd)
        else:
            self._flush(fd)

    def _wrote(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        fd = sock.fileno()
        self.call(self._remove_writer, fd)

    # -- on the loop ----------------------------------------------------------------------------
    def _watch(self, fd: int) -> None:
        self._fds.add(fd)
        self.loop.add_reader(fd, self._readable)

    def _unwatch(self, fd: int) -> None:
        self._fds.discard(fd)
        with contextlib.suppress(ValueError, OSError):
            self.loop.remove_reader(fd)
            self.loop.remove_writer(fd)

    def _add_writer(self, fd: int) -> None:
        if fd in self._fds:  # not a socket closed meanwhile
            self.loop.add_writer(fd, self._writable)

    def _remove_writer(self, fd: int) -> None:
        with contextlib.suppress(ValueError, OSError):
            self.loop.remove_writer(fd)

    def _flush(self, fd: int) -> None:
        """Write what paho has queued, now; the rest once the socket takes more."""
        if fd not in self._fds:  # closed meanwhile
            return
        self.client.loop_write()
        if self.client.want_write() and fd in self._fds:
            self.loop.add_writer(fd, self._writable)

    def _readable(self) -> None:
        self._in_paho = True
        try:
            self.client.loop_read()
        finally:
            self._in_paho = False
        sock = self.client.socket()
        if isinstance(sock, ssl.SSLSocket) and sock.pending():  # decrypted, unseen by epoll
            self.loop.call_soon(self._readable)

    def _writable(self) -> None:
        self.client.loop_write()

    def _keepalive(self) -> None:
        if self._stopping:
            return
        if self._attempt is None and self.client.socket() is not None:
            self._in_paho = True
            try:
                self.client.loop_misc()  # pings; a broker silent past the keepalive is lost
            finally:
                self._in_paho = False
        else:
            self.lost()  # a no-op unless a loss went unnoticed
        self._misc = self.loop.call_later(MISC_INTERVAL, self._keepalive)

    # -- stopping (on the loop's thread, or with the loop stopped) ------------------------------
    def halt(self, timeout: float) -> None:
        """No more connect attempts nor keepalive; an attempt in progress is waited for up to
        `timeout` s (its socket is then the one to close)."""
        self._stopping = True
        for handle in (self._retry, self._misc):
            if handle is not None:
                handle.cancel()
        self._retry = self._misc = None
        attempt = self._attempt
        if attempt is not None:
            attempt.join(timeout)

    def drain(self, until: Callable[[], bool], timeout: float) -> bool:
        """Run the network here (paho's `loop`) until `until()` holds, the socket is closed, or
        `timeout` s have passed; True when `until()` held."""
        deadline = time.monotonic() + timeout
        while not until():
            left = deadline - time.monotonic()
            if left <= 0 or self.client.socket() is None:
                return until()
            self._in_paho = True
            try:
                self.client.loop(min(left, 0.05))
            finally:
                self._in_paho = False
        return True

    def close(self) -> None:
        """Stop watching every socket (after the client's disconnect)."""
        for fd in list(self._fds):
            self._unwatch(fd)
