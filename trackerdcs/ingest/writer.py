"""The `[[outputs.influxdb]]` writer: batches from the buffer to `/write`, retried until accepted.

As Telegraf's output does: every `flush_interval` (and at once when a full batch is waiting) the
buffer is written in batches of `metric_batch_size`. A batch that fails (InfluxDB down, 5xx,
timeout) goes back to the buffer and is retried at the next flush; one that InfluxDB refuses as
bad data (HTTP 400: field type conflict, beyond the retention policy ...) is dropped and logged,
keeping the points InfluxDB reports it wrote. `database not found` creates the database first
unless `skip_database_creation` is set.

Only what can succeed later is retried (InfluxDB away, 5xx, a timeout). What never will is
dropped and counted (`dropped`), with a line in the log: a line that cannot be encoded as UTF-8
(the json parser prevents it; this is the last guard), and a batch whose writing raised an
exception no one foresaw (also counted in `errors` and reported to `trackerdcs.guard`). The
thread never ends before `stop()`; the bridge exits (status 70) if it does anyway.
"""

from __future__ import annotations

import http.client
import json
import logging
import re
import threading
import time
import urllib.parse

from trackerdcs.guard import FAULTS, clip
from trackerdcs.ingest.buffer import MetricBuffer
from trackerdcs.ingest.conf import InfluxOutputConf
from trackerdcs.ingest.influxdb import basic_auth, quote_ident

log = logging.getLogger(__name__)

_DROPPED = re.compile(r"dropped=(\d+)")


class WriteError(Exception):
    """A write to retry later."""


class InfluxWriter:
    def __init__(self, conf: InfluxOutputConf, buffer: MetricBuffer, flush_interval: float) -> None:
        self.conf = conf
        self.buffer = buffer
        self.flush_interval = flush_interval
        url = urllib.parse.urlsplit(conf.url)
        self._https = url.scheme == "https"
        self._host = url.hostname or "localhost"
        self._port = url.port or (443 if self._https else 8086)
        self._base = url.path.rstrip("/")
        params = {"db": conf.database}
        if conf.retention_policy:
            params["rp"] = conf.retention_policy
        self._write_path = f"{self._base}/write?{urllib.parse.urlencode(params)}"
        self._headers = {"Content-Type": "text/plain; charset=utf-8"}
        self._headers.update(basic_auth(conf.username, conf.password))
        self._conn: http.client.HTTPConnection | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.write_errors = 0
        self.errors = 0  # unexpected exceptions (their batches dropped)
        self.faults = FAULTS
        self.up: bool | None = None  # None until the first write
        self.last_error = ""

    # -- thread -----------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="influx-writer", daemon=True)
        self._thread.start()

    def stop(self, final_flush_timeout: float = 5.0) -> None:
        """Stop the thread, then try once more to write what is left."""
        self._stop.set()
        self.buffer.wake()
        if self._thread is not None:
            self._thread.join(self.conf.timeout + 5)
        deadline = time.monotonic() + final_flush_timeout
        while len(self.buffer) and time.monotonic() < deadline and self.flush():
            pass
        self._close()

    def alive(self) -> bool:
        """The thread runs (or has not been started, or was stopped)."""
        thread = self._thread
        return thread is None or thread.is_alive() or self._stop.is_set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._loop()
            except Exception as exc:  # the loop's own code: reported, the thread goes on
                self.errors += 1
                self.faults.fault("the InfluxDB writer", exc)
                self._stop.wait(self.flush_interval)

    def _loop(self) -> None:
        next_flush = time.monotonic() + self.flush_interval
        while not self._stop.is_set():
            timeout = max(0.0, next_flush - time.monotonic())
            if self.up is False:
                self._stop.wait(timeout)  # after a failed write: retry at the next flush only
            else:
                self.buffer.wait_batch(timeout)
            if self._stop.is_set():
                break
            now = time.monotonic()
            if now >= next_flush:
                next_flush = now + self.flush_interval
                self.flush()
            else:
                self.flush(full_batches_only=True)

    # -- writing ----------------------------------------------------------------------------------
    def flush(self, full_batches_only: bool = False) -> bool:
        """Write the buffer in batches; False when a write failed (the rest waits)."""
        batches = len(self.buffer) // self.buffer.batch_size + 1
        for _ in range(batches):
            if full_batches_only and len(self.buffer) < self.buffer.batch_size:
                return True
            batch = self.buffer.take()
            if not batch:
                return True
            try:
                written = self.write(batch)
            except WriteError as exc:
                self.buffer.reject(batch)
                self.write_errors += 1
                self._went_down(str(exc))
                return False
            except Exception as exc:  # it would fail again: dropped and counted, not retried
                self.errors += 1
                self.faults.fault("the InfluxDB writer", exc, batch[:3])
                self.buffer.accept(batch, 0)
                continue
            self.faults.ok("the InfluxDB writer")
            self.buffer.accept(batch, written)
            self._came_up()
        return True

    def write(self, batch: list[str]) -> int | None:
        """POST one batch; the number of points written when some were dropped (by InfluxDB, or
        here: a line that cannot be encoded), else None."""
        body, unencodable = _encode(batch)
        if not body:
            return 0
        status, text = self._post(self._write_path, body)
        if status == 204 or 200 <= status < 300:
            return len(batch) - unencodable if unencodable else None
        if status == 404 and "database not found" in text:
            if not self.conf.skip_database_creation:
                self._create_database()
            raise WriteError(f"HTTP 404: {text}")
        if status == 400:
            match = _DROPPED.search(text)
            sent = len(batch) - unencodable
            dropped = min(sent, int(match.group(1))) if match else sent
            log.error(
                "InfluxDB refused %d of %d points for good (not retried): %s",
                dropped,
                len(batch),
                text[:500],
            )
            return max(0, sent - dropped)
        raise WriteError(f"HTTP {status}: {text[:300]}")

    def _post(self, path: str, body: bytes) -> tuple[int, str]:
        for attempt in (1, 2):  # a kept-alive connection the server closed: one fresh retry
            conn = self._connection()
            try:
                conn.request("POST", path, body, self._headers)
                resp = conn.getresponse()
                text = resp.read().decode(errors="replace")
            except (OSError, http.client.HTTPException) as exc:
                self._close()
                if attempt == 2 or not isinstance(
                    exc, http.client.RemoteDisconnected | BrokenPipeError | ConnectionResetError
                ):
                    raise WriteError(f"{self.conf.url}: {exc or type(exc).__name__}") from None
                continue
            if resp.getheader("Connection", "").lower() == "close":
                self._close()
            return resp.status, _error_text(text)
        raise AssertionError("unreachable")

    def _create_database(self) -> None:
        q = urllib.parse.urlencode({"q": f"CREATE DATABASE {quote_ident(self.conf.database)}"})
        try:
            status, text = self._post(f"{self._base}/query?{q}", b"")
        except WriteError as exc:
            log.warning("cannot create database %s: %s", self.conf.database, exc)
            return
        if status != 200:
            log.warning("cannot create database %s: HTTP %d %s", self.conf.database, status, text)

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            self._conn = cls(self._host, self._port, timeout=self.conf.timeout)
        return self._conn

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _went_down(self, reason: str) -> None:
        self.last_error = reason
        if self.up is not False:
            log.warning(
                "cannot write to InfluxDB (%s); keeping %d metrics, retrying every %g s",
                reason,
                len(self.buffer),
                self.flush_interval,
            )
        self.up = False

    def _came_up(self) -> None:
        if self.up is False:
            log.info("InfluxDB accepts writes again; %d metrics still buffered", len(self.buffer))
        self.up = True
        self.last_error = ""


def _encode(batch: list[str]) -> tuple[bytes, int]:
    """The batch as UTF-8, and how many of its lines could not be encoded (dropped, logged)."""
    try:
        return "".join(batch).encode(), 0
    except UnicodeEncodeError:
        pass
    good, bad = [], []
    for line in batch:
        try:
            good.append(line.encode())
        except UnicodeEncodeError:
            bad.append(line)
    log.error("dropped %d line(s) that cannot be encoded as UTF-8 (not retried), e.g. %s",
              len(bad), clip(bad[0], 200))  # fmt: skip
    return b"".join(good), len(bad)


def _error_text(text: str) -> str:
    """InfluxDB's `{"error": "..."}` body as plain text."""
    try:
        data = json.loads(text)
    except ValueError:
        return text.strip()
    return str(data.get("error", text)).strip() if isinstance(data, dict) else text.strip()
