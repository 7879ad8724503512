"""The output's metric buffer: bounded, oldest dropped first, with Telegraf's delivery tracking.

Metrics (line-protocol lines) wait here until InfluxDB has accepted them. When the buffer holds
`limit` metrics, each new one pushes out the oldest (counted as dropped), as Telegraf's
`metric_buffer_limit` does. A batch taken by the writer stays accounted for until it is either
accepted (written), refused for good (dropped) or handed back for a retry.

Messages are tracked too, as for Telegraf's `max_undelivered_messages`: a message is delivered
when every metric made from it has been written or dropped; `wait_undelivered_below` lets the
consumer stop reading while too many are outstanding.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass


@dataclass
class Counters:
    """Metric counts since start: made = written + dropped + buffered (+ in flight)."""

    metrics: int = 0  # metrics added
    written: int = 0  # accepted by InfluxDB
    dropped: int = 0  # pushed out by a full buffer, or refused by InfluxDB


class MetricBuffer:
    def __init__(self, limit: int, batch_size: int) -> None:
        self.limit = limit
        self.batch_size = batch_size
        self.counters = Counters()
        self._lines: deque[str] = deque()
        self._inflight = 0
        self._settled = 0  # metrics written or dropped, ever (the delivery frontier)
        self._message_ends: deque[int] = deque()  # per undelivered message: its last metric's no.
        self._cond = threading.Condition()
        self._batch_ready = threading.Event()

    # -- producer side (consumer threads) --------------------------------------------------------
    def add(self, lines: list[str]) -> None:
        """The metrics of one message (a message without any is delivered at once)."""
        if not lines:
            return
        with self._cond:
            c = self.counters
            c.metrics += len(lines)
            self._lines.extend(lines)
            self._message_ends.append(c.metrics)
            overflow = len(self._lines) + self._inflight - self.limit
            if overflow > 0:
                overflow = min(overflow, len(self._lines))
                for _ in range(overflow):
                    self._lines.popleft()
                c.dropped += overflow
                self._settle(overflow)
            if len(self._lines) >= self.batch_size:
                self._batch_ready.set()

    def wait_undelivered_below(self, limit: int, timeout: float) -> bool:
        """Block while `limit` messages or more are undelivered; False on timeout."""
        if len(self._message_ends) < limit:  # the usual case, without the lock
            return True
        with self._cond:
            return self._cond.wait_for(lambda: len(self._message_ends) < limit, timeout)

    # -- writer side ------------------------------------------------------------------------------
    def wait_batch(self, timeout: float) -> None:
        """Return when a full batch is waiting, or after `timeout` s."""
        self._batch_ready.wait(timeout)

    def wake(self) -> None:
        """End a `wait_batch` now (on stopping)."""
        self._batch_ready.set()

    def take(self) -> list[str]:
        """Up to `batch_size` of the oldest metrics, now in flight."""
        with self._cond:
            n = min(self.batch_size, len(self._lines))
            batch = [self._lines.popleft() for _ in range(n)]
            self._inflight += n
            if len(self._lines) < self.batch_size:
                self._batch_ready.clear()
            return batch

    def accept(self, batch: list[str], written: int | None = None) -> None:
        """InfluxDB took the batch (`written` of them; the rest it refused for good)."""
        with self._cond:
            n = len(batch)
            ok = n if written is None else written
            self._inflight -= n
            self.counters.written += ok
            self.counters.dropped += n - ok
            self._settle(n)

    def reject(self, batch: list[str]) -> None:
        """The write failed: the batch goes back to the front, to be retried first."""
        with self._cond:
            self._inflight -= len(batch)
            self._lines.extendleft(reversed(batch))
            overflow = len(self._lines) - self.limit
            if overflow > 0:  # metrics arrived meanwhile: the oldest give way, as always
                for _ in range(overflow):
                    self._lines.popleft()
                self.counters.dropped += overflow
                self._settle(overflow)

    def _settle(self, n: int) -> None:
        """`n` more metrics written or dropped, oldest first (called with the lock held)."""
        self._settled += n
        ends = self._message_ends
        while ends and ends[0] <= self._settled:
            ends.popleft()
        self._cond.notify_all()

    # -- state ------------------------------------------------------------------------------------
    def __len__(self) -> int:
        with self._cond:
            return len(self._lines) + self._inflight

    @property
    def undelivered_messages(self) -> int:
        with self._cond:
            return len(self._message_ends)

    def snapshot(self) -> dict[str, int]:
        with self._cond:
            c = self.counters
            return {
                "metrics": c.metrics,
                "written": c.written,
                "dropped": c.dropped,
                "buffered": len(self._lines) + self._inflight,
            }
