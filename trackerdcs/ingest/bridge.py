"""`trackerdcs-ingest`: MQTT -> InfluxDB as `telegraf.conf` says, where Telegraf cannot run.

trackerdcs-ingest --config telegraf.conf [--status-prefix /ingest] [--status-interval 5]

Counters are logged and published (retained JSON) on `<status-prefix>/status`, with the last-will
availability on `<status-prefix>/availability`, through the first input's connection:

  received   MQTT messages received (every input)
  rejected   messages skipped: the json parser refused the payload
  metrics    metrics (points) made from the messages
  written    points InfluxDB accepted
  dropped    points lost: pushed out of a full buffer, or refused by InfluxDB as bad data
  buffered   points waiting to be written
  write_errors  failed write attempts (each retried)
  errors     unexpected errors (a message or a batch no code foresaw: rejected or dropped)

Exit status: 0 after a clean stop, 1 without a broker, 2 for a bad telegraf.conf, 70 when the
writer thread has ended or too many unexpected errors came in a row (`trackerdcs.guard`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from trackerdcs.cliargs import add_config, add_version, parse
from trackerdcs.guard import EXIT_FAULTS, FAULTS
from trackerdcs.ingest.buffer import MetricBuffer
from trackerdcs.ingest.conf import (
    ConsumerConf,
    TelegrafConf,
    TelegrafConfError,
    load_telegraf_conf,
)
from trackerdcs.ingest.consumer import MqttConsumer, UniqueClock, shares_connection
from trackerdcs.ingest.writer import InfluxWriter
from trackerdcs.logs import setup_logging
from trackerdcs.mqtt import unix_time
from trackerdcs.payloads import OFFLINE, IngestStatus, dump
from trackerdcs.topics import INGEST, ServiceTopics

log = logging.getLogger(__name__)

READY = "ingest bridge running"  # logged once every input is connected (the stack waits for it)


class Bridge:
    def __init__(
        self, conf: TelegrafConf, status_prefix: str | None = INGEST.prefix, status_interval=5.0
    ) -> None:
        self.conf = conf
        self.status_prefix = status_prefix
        self.status_interval = status_interval
        agent = conf.agent
        self.buffer = MetricBuffer(agent.metric_buffer_limit, agent.metric_batch_size)
        self.writer = InfluxWriter(conf.output, self.buffer, agent.flush_interval)
        clock = UniqueClock()
        will = (ServiceTopics(status_prefix).availability, OFFLINE) if status_prefix else None
        groups: list[list[ConsumerConf]] = []  # inputs that share a connection
        for c in conf.inputs:
            group = next((g for g in groups if shares_connection(g[0], c)), None)
            if group is None:
                groups.append([c])
            else:
                group.append(c)
        self.consumers = [
            MqttConsumer(g, agent, self.buffer, clock, will=will if i == 0 else None)
            for i, g in enumerate(groups)
        ]
        self.started = time.monotonic()
        self._stop = threading.Event()

    def counters(self) -> dict[str, Any]:
        """The counters; every key keeps its JSON type (integers, one string, one float)."""
        snap = self.buffer.snapshot()
        up = self.writer.up
        return {
            "received": sum(c.received for c in self.consumers),
            "rejected": sum(c.rejected for c in self.consumers),
            "metrics": snap["metrics"],
            "written": snap["written"],
            "dropped": snap["dropped"],
            "buffered": snap["buffered"],
            "write_errors": self.writer.write_errors,
            "errors": self.writer.errors + sum(c.errors for c in self.consumers),
            "influxdb": {None: "unknown", True: "ok", False: "unreachable"}[up],
            "uptime": round(time.monotonic() - self.started, 1),
            "time": unix_time(),
        }

    def start(self, timeout: float = 30.0) -> None:
        self.writer.start()
        for c in self.consumers:
            c.start()
        for c in self.consumers:
            if not c.connected.wait(timeout):
                raise TimeoutError(f"{c.name}: no connection to the broker in {timeout:g} s")
        self._publish_online()
        log.info(
            "%s: %d input(s) -> %s database %s (batch %d, buffer %d, flush every %g s)",
            READY,
            len(self.conf.inputs),
            self.conf.output.url,
            self.conf.output.database,
            self.conf.agent.metric_batch_size,
            self.conf.agent.metric_buffer_limit,
            self.conf.agent.flush_interval,
        )

    def run(self) -> None:
        """Publish and log the counters until `request_stop` (or the writer thread is gone:
        `FAULTS.fatal`, whose `on_fatal` asks to stop)."""
        last_log = 0.0
        while not self._stop.wait(self.status_interval):
            if not self.writer.alive():
                FAULTS.fatal("the InfluxDB writer thread has ended")
                continue
            counters = self.counters()
            self._publish_status(counters)
            if time.monotonic() - last_log >= 60:
                last_log = time.monotonic()
                log.info("counters %s", json.dumps(counters))

    def request_stop(self, *_: object) -> None:
        self._stop.set()

    def stop(self) -> None:
        for c in self.consumers:
            c.stop_reading()
        self.writer.stop()
        counters = self.counters()
        log.info("stopped; counters %s", json.dumps(counters))
        if self.status_prefix and self.consumers:
            first = self.consumers[0].client
            first.publish(
                ServiceTopics(self.status_prefix).status, json.dumps(counters), qos=1, retain=True
            )
            info = first.publish(
                ServiceTopics(self.status_prefix).availability, OFFLINE, qos=1, retain=True
            )
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(2.0)
        for c in self.consumers:
            c.stop()

    def _publish_online(self) -> None:
        """The first status; `online` is the first consumer's, at each of its connects."""
        if self.status_prefix:
            self._publish_status(self.counters())

    def _publish_status(self, counters: dict[str, Any]) -> None:
        if self.status_prefix:
            self.consumers[0].client.publish(
                ServiceTopics(self.status_prefix).status,
                json.dumps(dump(IngestStatus(**counters))),
                qos=1,
                retain=True,
            )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="trackerdcs-ingest", description=__doc__.split("\n")[0])
    add_config(p, what="telegraf.conf", default="telegraf.conf")
    p.add_argument("--status-prefix", default=INGEST.prefix, help="'' to publish no counters")
    p.add_argument("--status-interval", type=float, default=5.0, help="s between counters")
    p.add_argument("-v", "--verbose", action="store_true")
    add_version(p)
    return parse(p, argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose, "ingest")
    try:
        conf = load_telegraf_conf(Path(args.config))
    except TelegrafConfError as exc:
        print(f"trackerdcs-ingest: {exc}", file=sys.stderr)
        return 2
    bridge = Bridge(conf, args.status_prefix or None, args.status_interval)
    signal.signal(signal.SIGTERM, bridge.request_stop)
    signal.signal(signal.SIGINT, bridge.request_stop)
    FAULTS.on_fatal = bridge.request_stop
    try:
        bridge.start()
        bridge.run()
    except TimeoutError as exc:
        log.error("%s", exc)
        return 1
    finally:
        bridge.stop()
    return EXIT_FAULTS if FAULTS.fatal_reason else 0


if __name__ == "__main__":
    sys.exit(main())
