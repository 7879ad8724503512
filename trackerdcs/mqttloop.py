"""A paho-mqtt client's network run on the service's asyncio loop, not on a thread of its own.

paho 2.x can be driven by an external event loop (its "external event loop" API, as in paho's
`examples/loop_asyncio.py`): the client tells when its socket opens, closes, and has bytes to
write (`on_socket_open`, `on_socket_close`, `on_socket_register_write`,
`on_socket_unregister_write`), and the loop calls `loop_read`, `loop_write` and, about once a
second, `loop_misc` (keepalive). `LoopNetwork` does that on an asyncio loop, so that:

- a message is read, and its callbacks run, on the service's loop: no hand-over from paho's
  thread to the loop (about 0.2 ms measured on the command path);
- a publish from the loop is written at once (from inside one of paho's own callbacks, where
  paho must not write, at the loop's next turn): no wake-up of paho's thread through its socket
  pair (0.4 to 0.5 ms each), and an interlock's kill leaves before the status it then builds;
- paho is used from one thread at a time, as its client expects (it is not thread-safe,
  eclipse/paho.mqtt.python#358): a publish from another thread is queued and made on the loop
  (`submit`), in the order submitted.

What paho's own thread did besides, `LoopNetwork` does here:

- connect and reconnect with exponential backoff (`reconnect_delay_set`'s minimum and maximum,
  doubled after each failure, back to the minimum once the broker accepted the connection).
  `client.reconnect()` blocks (TCP connect, TLS handshake: up to paho's connect timeout, 5 s,
  for an unreachable host), so each attempt runs on a short-lived thread while the loop goes
  on. Meanwhile the loop leaves the client alone: publishes wait in the queue, the keepalive
  pauses, and the new socket is watched, and CONNECT written, once the attempt has returned;
- TLS: bytes that the TLS layer has decrypted already are not seen by the loop's selector, so
  a read that leaves some is followed by another at once;
- stop (`halt`, `drain`, `close`), from inside a loop callback: the queue is emptied, then the
  network runs synchronously until the last messages have left.

One difference from paho's own thread: a loop blocked for longer than the keepalive and a half
(a bug in the service) now loses the connection, and the broker publishes the last will
(`offline`); paho's thread used to answer the broker's pings meanwhile.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import logging
import selectors
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt

log = logging.getLogger(__name__)

MISC_INTERVAL = 1.0  # s between loop_misc calls, as paho's own loop (its select timeout)


class LoopNetwork:
    """Runs `client`'s network on `loop` (see the module's doc); `client.connect_async` has
    given it the broker's address.

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
        self._started = False
        self._stopping = False
        self._attempt: threading.Thread | None = None  # a connect in progress
        self._outcome: Exception | None = None  # the last attempt's error, None if it connected
        self._abandoned = False  # the stop did not wait for the attempt to end
        self._retry: asyncio.TimerHandle | None = None
        self._misc: asyncio.TimerHandle | None = None
        self._sock: Any = None  # the socket watched on the loop, and its fd
        self._fd = -1
        self._failures = 0  # connect attempts failed in a row
        self._in_paho = False  # inside loop_read/loop_misc: paho's callbacks may run
        self._draining = False  # drain writes what paho queues
        self._held: collections.deque[Callable[[], Any]] = collections.deque()
        self._held_lock = threading.Lock()
        client.on_socket_open = self._opened
        client.on_socket_close = self._closed
        client.on_socket_register_write = self._want_write
        client.on_socket_unregister_write = self._wrote

    # -- threads --------------------------------------------------------------------------------
    @property
    def started(self) -> bool:
        return self._started

    def on_loop(self) -> bool:
        """True on the loop's thread while it runs."""
        try:
            return asyncio.get_running_loop() is self.loop
        except RuntimeError:  # no loop runs on this thread
            return False

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """`fn(*args)` as a callback of its own on the loop, from any thread (dropped with a
        debug line once the loop is closed)."""
        if self.on_loop():
            self.loop.call_soon(fn, *args)
        else:
            self._threadsafe(fn, *args)

    def _threadsafe(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop is closed: the service has stopped
            log.debug("%s: loop closed, %s not run", self.name, getattr(fn, "__name__", fn))

    def submit(self, publish: Callable[[], Any]) -> None:
        """`publish()` on the loop, from any thread, in the order submitted: now when on the
        loop with nothing waiting; else queued until the loop is free of a connect attempt."""
        if self.on_loop() and self._attempt is None and not self._held:
            publish()
            return
        with self._held_lock:
            self._held.append(publish)
        if not self.on_loop():
            self._threadsafe(self.release)

    def release(self) -> None:
        """On the loop: the queued publishes, in order, now (none while an attempt is
        running); a stop calls it before `offline`."""
        while self._attempt is None:
            with self._held_lock:
                if not self._held:
                    return
                publish = self._held.popleft()
            try:
                publish()
            except Exception:  # one bad publish (e.g. a payload paho refuses) stops no other
                log.exception("%s: a queued publish failed", self.name)

    def run(self, fn: Callable[[], None], timeout: float) -> None:
        """`fn()` on the loop's thread, waiting for it up to `timeout` s (its exception is
        raised here); here when the loop is not running (nothing else touches the client)."""
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
        except RuntimeError:  # the loop has closed meanwhile
            fn()
            return
        try:
            done.result(timeout)
        except concurrent.futures.TimeoutError:
            if not self.loop.is_running() and not done.done():  # it stopped meanwhile
                fn()
                return
            log.warning("%s: the loop did not run %s within %.1f s", self.name, fn, timeout)

    # -- connecting -----------------------------------------------------------------------------
    def start(self) -> None:
        """Connect, from any thread: the first attempt is made at once on the loop. From now
        on, publishes go through the loop (`submit`)."""
        self._started = True
        self.loop.call_soon_threadsafe(self._begin)

    def _begin(self) -> None:
        if self._stopping:
            return
        self._misc = self.loop.call_later(MISC_INTERVAL, self._keepalive)
        self._connect()
        self.release()  # anything published before the start

    def _connect(self) -> None:
        self._retry = None
        if self._stopping or self._attempt is not None or self.client.socket() is not None:
            return
        attempt = threading.Thread(name=f"mqtt-connect {self.name}", daemon=True)
        attempt.run = lambda: self._attempt_connect(attempt)  # type: ignore[method-assign]
        self._attempt = attempt
        attempt.start()

    def _attempt_connect(self, attempt: threading.Thread) -> None:
        """On the attempt's thread: paho's blocking (re)connect; the outcome to the loop."""
        try:
            self.client.reconnect()
        except Exception as exc:  # OSError, ssl.SSLError, socket.timeout: the broker's reach
            self._outcome = exc
        else:
            self._outcome = None
        self._threadsafe(self._attempted, attempt)

    def _attempted(self, attempt: threading.Thread) -> None:
        """On the loop, once an attempt has returned: watch its socket and write its CONNECT,
        or try again later."""
        if self._attempt is not attempt:  # settled already, by `halt`
            return
        self._attempt = None
        error, sock = self._outcome, self.client.socket()
        if self._stopping:
            if self._abandoned and sock is not None:  # the stop has gone on without it
                sock.close()
            return
        if error is not None:
            self._failures += 1
            say = log.warning if self._failures == 1 else log.debug
            say(
                "%s: cannot reach the broker at %s:%d (%s: %s); retrying, at most every %g s",
                self.name, self.client.host, self.client.port, type(error).__name__, error,
                self.max_delay,
            )  # fmt: skip
        if sock is not None:
            self._watch(sock)
            self._flush()  # CONNECT, queued by the attempt
        self.release()  # without a connection, as paho does: QoS 0 dropped, QoS 1 kept
        if sock is None:
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

    # -- paho's socket callbacks (on the loop, or on a connect attempt's thread) ----------------
    def _opened(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        if self._on_socket_open is not None:
            self._on_socket_open(client, userdata, sock)
        # watched by `_attempted`, on the loop

    def _closed(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        if self.on_loop() and sock is self._sock:  # called before the socket is closed
            self._unwatch()
            if not self._stopping:
                self.loop.call_soon(self.lost)  # once paho has called on_disconnect

    def _want_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        if not self.on_loop() or sock is not self._sock or self._draining:
            return  # an attempt's CONNECT (`_attempted` writes it), or `drain` writes
        if self._in_paho:  # paho holds its callback lock: write once its call has returned
            self.loop.call_soon(self._flush)
        else:
            self._flush()

    def _wrote(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        if self.on_loop() and sock is self._sock:
            self.loop.remove_writer(self._fd)

    # -- on the loop ----------------------------------------------------------------------------
    def _watch(self, sock: Any) -> None:
        fd = sock.fileno()
        self.loop.add_reader(fd, self._readable)
        self._sock, self._fd = sock, fd

    def _unwatch(self) -> None:
        if self._sock is None:
            return
        fd, self._sock, self._fd = self._fd, None, -1
        with contextlib.suppress(ValueError, OSError):
            self.loop.remove_reader(fd)
            self.loop.remove_writer(fd)

    def _flush(self) -> None:
        """Write what paho has queued, now; the rest once the socket takes more. paho keeps
        its "write wanted" flag set meanwhile: it is cleared when all has been written."""
        if self._sock is None:
            return
        self.client.loop_write()
        if self._sock is not None and self.client.want_write():
            self.loop.add_writer(self._fd, self._writable)

    def _writable(self) -> None:
        self.client.loop_write()

    def _readable(self) -> None:
        if self._sock is None or self._attempt is not None:
            return
        self._in_paho = True
        try:
            self.client.loop_read()
        finally:
            self._in_paho = False
        sock = self._sock
        if isinstance(sock, ssl.SSLSocket) and sock.pending():  # decrypted, unseen by epoll
            self.loop.call_soon(self._readable)

    def _keepalive(self) -> None:
        if self._stopping:
            return
        try:
            if self._attempt is None and self._sock is not None:
                self._in_paho = True
                self.client.loop_misc()  # pings; a broker silent past the keepalive is lost
            else:
                self.lost()  # a no-op unless a loss went unnoticed
        finally:
            self._in_paho = False
            self._misc = self.loop.call_later(MISC_INTERVAL, self._keepalive)

    # -- stopping (on the loop's thread, or with the loop stopped) ------------------------------
    def halt(self, timeout: float) -> bool:
        """No more connect attempts nor keepalive. An attempt in progress is waited for up to
        `timeout` s; False when it is still running, or was at an earlier stop (the client
        must not be used: the attempt closes its socket when it ends)."""
        self._stopping = True
        for handle in (self._retry, self._misc):
            if handle is not None:
                handle.cancel()
        self._retry = self._misc = None
        attempt = self._attempt
        if attempt is None:
            return not self._abandoned
        attempt.join(timeout)
        if attempt.is_alive():
            self._abandoned = True
            return False
        self._attempt = None  # its socket, if any, is the stop's to close
        return True

    def drain(self, until: Callable[[], bool], timeout: float) -> bool:
        """Run the network here until `until()` holds, the socket is closed, or `timeout` s
        have passed; True when `until()` held."""
        deadline = time.monotonic() + timeout
        self._draining = True
        try:
            while not until():
                sock, left = self.client.socket(), deadline - time.monotonic()
                if sock is None or left <= 0:
                    return until()
                self._drain_once(sock, min(left, 0.05))
            return True
        finally:
            self._draining = False

    def _drain_once(self, sock: Any, timeout: float) -> None:
        events = selectors.EVENT_READ
        if self.client.want_write():
            events |= selectors.EVENT_WRITE
        pending = isinstance(sock, ssl.SSLSocket) and sock.pending() > 0  # decrypted already
        with selectors.DefaultSelector() as selector:
            selector.register(sock, events)
            ready = [mask for _, mask in selector.select(0.0 if pending else timeout)]
        if pending and not ready:
            ready = [selectors.EVENT_READ]
        self._in_paho = True
        try:
            for mask in ready:
                if mask & selectors.EVENT_READ:
                    self.client.loop_read()
                if mask & selectors.EVENT_WRITE and self.client.socket() is not None:
                    self.client.loop_write()
            if self.client.socket() is not None:
                self.client.loop_misc()
        finally:
            self._in_paho = False

    def close(self) -> None:
        """Stop watching the socket, and close it if the broker did not (a drain that timed
        out)."""
        self._unwatch()
        sock = self.client.socket()
        if sock is not None and not self._abandoned:
            sock.close()
