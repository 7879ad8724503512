"""InfluxDB stopped for 60 s while status messages keep coming: the bridge buffers them and, once
InfluxDB is back, writes every one. Points written == points received; none lost.

This test takes about 70 s: the outage is real (influxd stopped by PID, restarted on the same
ports and data).
"""

from __future__ import annotations

import json
import threading
import time

import pytest

from tests.conftest import Broker
from tests.ingestlab import InfluxServer, bridge_process, counters
from trackerdcs.stack.process import wait_until

OUTAGE_S = 60.0
RATE = 100.0  # /hv/status messages per second, 4 channels each: 400 points/s
CHANNELS = 4


class PacedPublisher(threading.Thread):
    """Publishes /hv/status arrays (channels out_0..3) at RATE per second until stopped."""

    def __init__(self, client) -> None:
        super().__init__(name="paced-publisher", daemon=True)
        self.client = client
        self.sent = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        start = time.monotonic()
        while not self.stopping.is_set():
            now = time.time()  # each message its own time, as a daemon stamps it
            channels = [
                {"number": n, "name": f"out_{n}", "module": f"O{n}", "on": 1, "vreq": 100.0,
                 "vmon": 100.0 + self.sent * 1e-3, "imon": 0.5, "ilim": 10.0, "status": 1,
                 "flags": ["ON"], "state": "ON", "time": now}
                for n in range(CHANNELS)
            ]  # fmt: skip
            self.client.publish("/hv/status", json.dumps(channels), qos=1)
            self.sent += 1
            # pacing, not synchronisation: the next message is due at sent / RATE
            self.stopping.wait(max(0.0, start + self.sent / RATE - time.monotonic()))


@pytest.mark.timeout(240)
def test_an_influxdb_outage_of_60_s_loses_nothing(tmp_path):
    broker = Broker(tmp_path).start()
    influx = InfluxServer(tmp_path).start()
    bridge = bridge_process(tmp_path, "outage", broker.port, influx.url).start()
    client = broker.client(topics=("/ingest/#",))
    publisher = PacedPublisher(client)
    db = influx.client
    try:
        publisher.start()
        wait_until(lambda: db.count("hv", "vmon") >= 200, 10, "the first points", poll=0.1)

        influx.stop()
        down_at = publisher.sent
        # The outage itself: a deliberate wait while the publisher goes on (not a sync point).
        threading.Event().wait(OUTAGE_S)
        during = publisher.sent - down_at
        assert bridge.alive
        status = counters(client, client.mark(), timeout=5)
        assert status["influxdb"] == "unreachable"
        assert status["buffered"] >= (during - RATE) * CHANNELS  # all but the last second's
        influx.start(setup=False)

        wait_until(lambda: publisher.sent >= down_at + during + 2 * RATE, 10, "2 s more")
        publisher.stopping.set()
        publisher.join(5)
        sent_points = publisher.sent * CHANNELS

        final = counters(
            client,
            client.mark(),
            timeout=30,
            predicate=lambda c: c["metrics"] == sent_points and c["buffered"] == 0,
        )
        assert final["written"] == final["metrics"] == sent_points
        assert final["dropped"] == 0 and final["rejected"] == 0
        assert final["influxdb"] == "ok"
        # retried once per flush interval (1 s), not in a storm
        assert 0 < final["write_errors"] <= OUTAGE_S + 5
        assert db.count("hv", "vmon", '"name" =~ /^out_/') == sent_points
        assert during >= OUTAGE_S * RATE * 0.9  # the publisher really kept going
        log = bridge.output()
        assert "cannot write to InfluxDB" in log and "accepts writes again" in log
    finally:
        publisher.stopping.set()
        client.close()
        bridge.stop()
        influx.stop()
        broker.stop()
