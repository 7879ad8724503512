"""A bare pyepics client that opens every CA channel the power daemon opens, and times it.

python -m bench.ca_connect --config LAB [--timeout S]

One channel per configured channel and parameter the daemon reads or writes (plus ClearAlarm),
a monitor on each read-back. Prints one JSON line: how many channels, the seconds until all were
connected and until every monitor delivered its first value. That is the floor under the
daemon's time to a complete status, whatever the daemon does. Reaches the crate's address only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from typing import Any

from trackerdcs.config import load_config
from trackerdcs.power.epics_backend import channel_params
from trackerdcs.power.pvnames import channel_pv, system_pv


class Tally:
    """Counts distinct channels connected and monitors heard from; sets `done` at the totals."""

    def __init__(self, channels: int, monitors: int) -> None:
        self.want = (channels, monitors)
        self.connected: set[str] = set()
        self.valued: set[str] = set()
        self.times: dict[str, float] = {}
        self.done = threading.Event()
        self._lock = threading.Lock()

    def on_connection(self, pvname: str = "", conn: bool = False, **_: Any) -> None:
        if conn:
            self._add(self.connected, pvname, 0, "connect_s")

    def on_value(self, pvname: str = "", **_: Any) -> None:
        self._add(self.valued, pvname, 1, "first_values_s")

    def _add(self, seen: set[str], pvname: str, index: int, key: str) -> None:
        with self._lock:
            seen.add(pvname)
            if len(seen) == self.want[index] and key not in self.times:
                self.times[key] = time.perf_counter()
                if len(self.times) == 2:
                    self.done.set()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.ca_connect", description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True)
    p.add_argument("--timeout", type=float, default=60.0)
    args = p.parse_args(argv)
    cfg = load_config(args.config)
    crate = cfg.crates[0]
    os.environ.update(EPICS_CA_ADDR_LIST=crate.address, EPICS_CA_AUTO_ADDR_LIST="NO")
    from epics import ca, dbr  # after the environment: libca reads it once

    names = [
        (channel_pv(crate.system, ch.board, ch.channel, p.name), p.monitor is not None)
        for ch in cfg.channels_of(crate.name)
        for p in channel_params(cfg.board_of(ch).spec)
    ]
    names.append((system_pv(crate.system, "ClearAlarm"), False))
    tally = Tally(len(names), sum(monitored for _, monitored in names))
    keep = []  # pyepics needs the subscription references alive
    start = time.perf_counter()
    for name, monitored in names:
        chid = ca.create_channel(name, connect=False, auto_cb=False, callback=tally.on_connection)
        if monitored:
            keep.append(ca.create_subscription(chid, ftype=dbr.DOUBLE, callback=tally.on_value))
    ok = tally.done.wait(args.timeout)
    report = {"channels": len(names), "complete": ok}
    report.update({k: round(t - start, 3) for k, t in tally.times.items()})
    print(json.dumps(report), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
