"""A bare pyepics client that times put -> monitor round trips to the crate, and nothing else.

python -m bench.ca_roundtrip --config LAB [--count N] [--warmup N] [--pace S]

Puts to the simulated crate's `Sim:TempFactor` (a backdoor PV: not counted as a crate write,
and with every channel off it changes no reading), alternating two values, and times each put
until its monitor update arrives. Prints one JSON line: the round trips in ms. That is about the
crate's part of a command's latency (a `V0Set` put costs the simulator a little more), which the
power daemon cannot go below: the `setv` path holds this round trip plus two broker hops.
Reaches the crate's address only.
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
from trackerdcs.power.pvnames import system_pv

VALUES = (1.0, 1.001)  # TempFactor: leakage multiplier, 1.0 as the crate starts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.ca_roundtrip", description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True)
    p.add_argument("--count", type=int, default=500)
    p.add_argument("--warmup", type=int, default=10, help="round trips timed but not reported")
    p.add_argument("--pace", type=float, default=0.007, help="s between round trips")
    args = p.parse_args(argv)
    crate = load_config(args.config).crates[0]
    os.environ.update(EPICS_CA_ADDR_LIST=crate.address, EPICS_CA_AUTO_ADDR_LIST="NO")
    from epics import ca, dbr  # after the environment: libca reads it once

    arrived = threading.Condition()
    seen: list[tuple[float, float]] = []  # (when, value)

    def on_value(value: Any = None, **_: Any) -> None:
        with arrived:
            seen.append((time.perf_counter(), float(value)))
            arrived.notify_all()

    chid = ca.create_channel(system_pv(crate.system, "Sim:TempFactor"), connect=True)
    keep = ca.create_subscription(chid, ftype=dbr.DOUBLE, callback=on_value)  # noqa: F841
    trips: list[float] = []
    total = args.warmup + args.count
    value = VALUES[0]
    for i in range(total):
        value = VALUES[(i + 1) % 2]  # the crate posts changes only: every put changes it
        with arrived:
            mark = len(seen)
        t0 = time.perf_counter()
        ca.put(chid, value)
        with arrived:
            done = arrived.wait_for(lambda m=mark, v=value: any(x == v for _, x in seen[m:]), 5)
            if not done:
                print(json.dumps({"error": f"no monitor of {value} within 5 s"}), flush=True)
                return 1
            t1 = next(t for t, x in seen[mark:] if x == value)
        if i >= args.warmup:
            trips.append((t1 - t0) * 1e3)
        time.sleep(args.pace)
    if value != VALUES[0]:
        ca.put(chid, VALUES[0], wait=True)  # the crate as it was
    print(json.dumps({"roundtrips_ms": trips}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
