"""Benchmarks of the interlock service (`trackerdcs.safety.interlock_daemon`).

Real Mosquitto, the simulated crate, the power daemon and the interlock daemon on free loopback
ports. The bench client plays the sensor daemon: it publishes `/temp_m1/status` and
`/temp_m2/status` as that daemon would (retained, QoS 1).

- `interlock_reaction`: M1's temperature above its limit (rule `module_temperature`, action
  `kill`) is published; the time to the kill's `Pw` write reaching the simulated crate, as the
  crate stamps it (`Sim:LastWriteAt`, on the machine's monotonic clock, which the bench's clock
  is too). `interlock_reaction_seen_*` is the same write as the bench's Channel Access monitor
  on that PV delivers it (the monitor's own delay included). Each trial first re-arms: the
  temperature back in range, the rule cleared, the power daemon's inhibit lifted, `hv_m1`
  switched on again (its `Pw` write seen by the crate). The clock starts when the breaching
  message is handed to the client library; the broker has it about one broker hop later
  (`interlock_broker_hop_p50_ms`, publish -> receive through the same broker, measured beside).
  `interlock_command_p50_ms` is the part up to the kill command seen on MQTT (the interlock's
  share; the rest is the power daemon and Channel Access).
- `stale_detection`: `/temp_m2/status` comes every 50 ms, then stops; from its last message
  to the bench client seeing `/interlock/status` with the `heartbeat` rule active, minus the
  rule's timeout for that source.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import yaml

from bench.common import (
    EXAMPLE_LAB,
    LOOPBACK,
    Figure,
    Options,
    Probe,
    Result,
    broker,
    crate_process,
    daemon_process,
    percentile,
    python_process,
    results,
    running,
    start_all,
)
from trackerdcs.config import load_config
from trackerdcs.power.pvnames import channel_pv, system_pv
from trackerdcs.stack.process import free_port
from trackerdcs.stack.ready import serving

STALE_TIMEOUT = 0.3  # s: the heartbeat rule's timeout for /temp_m2
FEED_INTERVAL = 0.05  # s between two /temp_m2 messages while it is alive
SYSTEM = "benchsafety"

FIGURES = (
    Figure("interlock_reaction_p50_ms", "ms", 50.0),  # breaching message -> Pw write at the crate
    Figure("interlock_reaction_p99_ms", "ms", 5.0),  # issue 21 (was 50)
    Figure("interlock_reaction_max_ms", "ms"),
    # the same, up to the bench's CA monitor delivering the crate's record of the write
    Figure("interlock_reaction_seen_p50_ms", "ms"),
    Figure("interlock_reaction_seen_p99_ms", "ms"),
    Figure("interlock_broker_hop_p50_ms", "ms"),  # bare publish -> receive, same broker
    Figure("interlock_command_p50_ms", "ms"),  # breaching message -> the kill command on MQTT
    # breaching message -> the power daemon's answer to the kill on MQTT (its writes issued):
    # the reaction without the simulated crate's put handling and its CA monitor back
    Figure("interlock_answered_p50_ms", "ms"),
    Figure("interlock_answered_p99_ms", "ms"),
    Figure("stale_detection_ms", "ms", 100.0),  # worst trial: last message -> fired - timeout
    Figure("stale_detection_p50_ms", "ms"),
)


def safety_lab(path: Path, mqtt_port: int, ca_port: int) -> Path:
    """The example crate and channels, two module sensors (fed by the bench) and two rules."""
    data = yaml.safe_load(EXAMPLE_LAB.read_text())
    data = {key: data[key] for key in ("lab", "mqtt", "crates", "power")}
    data["mqtt"].update(host=LOOPBACK, port=mqtt_port)
    data["crates"][0].update(address=f"{LOOPBACK}:{ca_port}", system=SYSTEM)
    data["sensors"] = [
        {"name": f"temp_m{i}", "kind": "module", "module": f"M{i}", "source": "sim",
         "max_temperature": 30} for i in (1, 2)
    ]  # fmt: skip
    data["interlocks"] = {
        "reassert_interval": 1.0,
        "startup_grace": 0.2,
        "rules": [
            {"name": "module_temperature", "kind": "module_temperature", "modules": ["M1"],
             "action": "kill"},
            {"name": "heartbeat", "kind": "heartbeat", "modules": ["M2"], "action": "none",
             "sources": {"/temp_m2": STALE_TIMEOUT}},
        ],
    }  # fmt: skip
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def sensor_status(name: str, module: str, temperature: float) -> str:
    return json.dumps(
        {
            "name": name,
            "kind": "module",
            "module": module,
            "temperature": temperature,
            "humidity": None,
            "dewpoint": None,
            "max_temperature": 30.0,
            "stale": False,
            "age": 0.0,
            "error": None,
        }
    )


@contextlib.contextmanager
def _ca_environment(port: int) -> Iterator[None]:
    settings = {
        "EPICS_CA_ADDR_LIST": f"{LOOPBACK}:{port}",
        "EPICS_CA_AUTO_ADDR_LIST": "NO",
        "EPICS_CA_SERVER_PORT": str(port),
        "EPICS_CA_REPEATER_PORT": str(free_port()),
    }
    with mock.patch.dict(os.environ, settings):
        yield


class CrateWrites:
    """A Channel Access monitor on the crate's `Sim:LastWriteAt`: every write, with when it
    reached the crate (its stamp, `time.monotonic()`) and when the monitor delivered it here
    (`time.perf_counter()`): one clock on Linux, checked in `interlock`."""

    def __init__(self, port: int, pv: str) -> None:
        from caproto.threading.client import Context, SharedBroadcaster

        self.writes: list[tuple[float, float, str]] = []  # (at the crate, seen here, PV=value)
        self._cond = threading.Condition()
        with _ca_environment(port):
            self._broadcaster = SharedBroadcaster()
            self._context = Context(self._broadcaster)
            (self._pv,) = self._context.get_pvs(pv, timeout=5)
            self._pv.wait_for_connection(timeout=5)
        self._sub = self._pv.subscribe()
        self._sub.add_callback(self._on_update)

    def _on_update(self, sub: Any, response: Any) -> None:
        seen = time.perf_counter()
        chars = bytes(response.data).split(b"\0", 1)[0].decode("latin-1")
        if not chars:  # the PV's initial value, before any write
            return
        stamp, _, text = chars.partition(" ")
        try:
            at = float(stamp)
        except ValueError:  # caproto's callback thread would swallow it: say it, and go on
            print(f"CrateWrites: a Sim:LastWriteAt without a stamp: {chars!r}", file=sys.stderr)
            return
        with self._cond:
            self.writes.append((at, seen, text))
            self._cond.notify_all()

    def mark(self) -> int:
        with self._cond:
            return len(self.writes)

    def wait(self, value: str, since: int, timeout: float = 5.0) -> tuple[float, float]:
        """When `value` (`PV=value`), first written at or after index `since`, reached the crate
        and when it was seen here."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for at, seen, text in self.writes[since:]:
                    if text == value:
                        return at, seen
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"the crate saw no {value} within {timeout:g} s")
                self._cond.wait(left)

    def close(self) -> None:
        self._sub.clear()
        self._context.disconnect()
        self._broadcaster.disconnect()


class Inbox:
    """The bench client's messages, each with its arrival time; wait for one that matches."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes, float]] = []
        self._cond = threading.Condition()

    def handler(self, topic: str, payload: bytes, t: float) -> None:
        with self._cond:
            self.messages.append((topic, payload, t))
            self._cond.notify_all()

    def mark(self) -> int:
        with self._cond:
            return len(self.messages)

    def find(self, topic: str, test: Callable[[Any], bool], since: int) -> tuple[Any, float] | None:
        """(payload as JSON, arrival time) of the first match at or after index `since`."""
        with self._cond:
            found = list(self.messages[since:])
        for got, payload, t in found:
            if got == topic:
                value = json.loads(payload) if payload[:1] in (b"{", b"[") else payload
                if test(value):
                    return value, t
        return None

    def wait(self, topic: str, test: Callable[[Any], bool], since: int, timeout: float = 5.0):
        """As `find`, waiting up to `timeout` s."""
        deadline = time.monotonic() + timeout
        while (found := self.find(topic, test, since)) is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no matching {topic} within {timeout:g} s")
            with self._cond:
                self._cond.wait(left)
        return found


def connected(channels: list[dict]) -> bool:
    return len(channels) == 4 and all(c["state"] != "DISCONNECTED" for c in channels)


def rule(name: str, active: bool) -> Callable[[Any], bool]:
    return lambda status: any(r["name"] == name and r["active"] == active for r in status["rules"])


def hv_m1(test: Callable[[dict], bool]) -> Callable[[Any], bool]:
    return lambda channels: any(c["name"] == "hv_m1" and test(c) for c in channels)


def interlock(opts: Options) -> list[Result]:
    trials, warmup, stale_trials = (20, 3, 5) if opts.quick else (200, 10, 20)
    clocks = {time.get_clock_info(c).implementation for c in ("perf_counter", "monotonic")}
    if len(clocks) != 1:  # the crate's stamps and the bench's times must share a clock
        raise RuntimeError(f"perf_counter and monotonic are different clocks here: {clocks}")
    wd = opts.workdir / "safety"
    wd.mkdir(parents=True, exist_ok=True)
    mosquitto, mqtt_port = broker(wd)
    ca_port = free_port()
    lab = safety_lab(wd / "lab.yml", mqtt_port, ca_port)
    crate = crate_process(wd, lab, ca_port, "--tick", "0.05")
    power = daemon_process(wd, lab)
    guard = python_process(
        "interlock daemon", "trackerdcs.safety.interlock_daemon", ["--config", str(lab)],
        wd / "interlock.log", ready=serving("serving interlocks"),
    )  # fmt: skip
    inbox = Inbox()
    topics = ["/hv/status", "/hv/response", "/interlock/status", "bench/echo", "/hv/cmd/kill/M1"]
    m1 = next(c for c in load_config(lab).power.channels if c.name == "hv_m1")
    pw = channel_pv(SYSTEM, m1.board, m1.channel, "Pw")
    with running(mosquitto, crate, power, guard):
        start_all(mosquitto, crate)
        with Probe(mqtt_port, topics, inbox.handler) as client:
            client.publish(
                "/temp_m1/status", sensor_status("temp_m1", "M1", 20.0)
            ).wait_for_publish()
            power.start()
            inbox.wait("/hv/status", connected, 0, 30)
            start_all(guard)
            writes = CrateWrites(ca_port, system_pv(SYSTEM, "Sim:LastWriteAt"))
            try:
                _command(client, inbox, "/hv/cmd/setv/hv_m1", "20")
                reactions, seen, hops, decisions, answered = _reaction_trials(
                    client, inbox, writes, pw, warmup + trials
                )
                stale = _stale_trials(client, inbox, stale_trials + 1)
            finally:
                writes.close()
    reactions, decisions, stale = reactions[warmup:], decisions[warmup:], stale[1:]
    seen = seen[warmup:]
    answered = answered[warmup:]
    opts.log(f"  {len(reactions)} reaction trials, {len(stale)} stale-detection trials "
             f"(timeout {STALE_TIMEOUT:g} s)")  # fmt: skip
    return results(
        FIGURES,
        {
            "interlock_reaction_p50_ms": percentile(reactions, 50),
            "interlock_reaction_p99_ms": percentile(reactions, 99),
            "interlock_reaction_max_ms": max(reactions),
            "interlock_reaction_seen_p50_ms": percentile(seen, 50),
            "interlock_reaction_seen_p99_ms": percentile(seen, 99),
            "interlock_broker_hop_p50_ms": percentile(hops, 50),
            "interlock_command_p50_ms": percentile(decisions, 50),
            "interlock_answered_p50_ms": percentile(answered, 50),
            "interlock_answered_p99_ms": percentile(answered, 99),
            "stale_detection_ms": max(stale),
            "stale_detection_p50_ms": percentile(stale, 50),
        },
    )


def _command(client: Probe, inbox: Inbox, topic: str, payload: str) -> dict:
    since = inbox.mark()
    client.publish(topic, payload)
    answer, _ = inbox.wait("/hv/response", lambda a: a["topic"] == topic
                           and a["payload"] == payload, since)  # fmt: skip
    return answer


def _reaction_trials(
    client: Probe, inbox: Inbox, writes: CrateWrites, pw: str, count: int
) -> tuple[list[float], list[float], list[float], list[float], list[float]]:
    """Milliseconds per trial from the breaching message: the kill's write at the crate (its
    stamp), the same seen here, a bare broker hop, the kill command, the daemon's answer. The
    crate stamps with `time.monotonic()`, the bench times with `time.perf_counter()`: on Linux
    both read CLOCK_MONOTONIC (checked in `interlock`)."""
    reactions, seen, hops, decisions, answered = [], [], [], [], []
    for i in range(count):
        # re-arm: the temperature in range, the rule cleared, the inhibit lifted, HV on again
        since = inbox.mark()
        client.publish("/temp_m1/status", sensor_status("temp_m1", "M1", 20.0))
        inbox.wait("/interlock/status", rule("module_temperature", False), 0 if i == 0 else since)
        inbox.wait("/hv/status", hv_m1(lambda c: c["interlocks"] == []), 0 if i == 0 else since)
        mark, since = writes.mark(), inbox.mark()
        answer = _command(client, inbox, "/hv/cmd/switch/hv_m1", "on")
        if not answer["ok"]:
            raise RuntimeError(f"switching hv_m1 on was refused: {answer['error']}")
        writes.wait(f"{pw}=On", mark)
        inbox.wait("/hv/status", hv_m1(lambda c: c["on"] == 1), since)  # the interlock sees it

        token = str(i).encode()
        since = inbox.mark()
        t0 = time.perf_counter()
        client.publish("bench/echo", token)
        _, t1 = inbox.wait("bench/echo", lambda p, token=token: p == token, since)
        hops.append((t1 - t0) * 1e3)

        mark, since = writes.mark(), inbox.mark()
        t0 = time.perf_counter()
        client.publish("/temp_m1/status", sensor_status("temp_m1", "M1", 35.0))
        at_crate, seen_here = writes.wait(f"{pw}=Off", mark)
        if not t0 <= at_crate <= seen_here:  # the crate's clock is not the bench's
            raise RuntimeError(f"the crate's stamp {at_crate} is outside [{t0}, {seen_here}]")
        reactions.append((at_crate - t0) * 1e3)
        seen.append((seen_here - t0) * 1e3)
        _, t2 = inbox.wait("/hv/cmd/kill/M1", lambda p: True, since)
        decisions.append((t2 - t0) * 1e3)
        _, t3 = inbox.wait("/hv/response", lambda a: a["topic"] == "/hv/cmd/kill/M1", since)
        answered.append((t3 - t0) * 1e3)
    return reactions, seen, hops, decisions, answered


def _stale_trials(client: Probe, inbox: Inbox, count: int) -> list[float]:
    late = []
    payload = sensor_status("temp_m2", "M2", 20.0)
    for _ in range(count):
        since = inbox.mark()
        deadline = time.monotonic() + 10
        while inbox.find("/interlock/status", rule("heartbeat", False), since) is None:
            if time.monotonic() > deadline:  # a live source, until the rule has cleared
                raise TimeoutError("the heartbeat rule did not clear with its source alive")
            client.publish("/temp_m2/status", payload)
            time.sleep(FEED_INTERVAL)  # the source's pace
        for _ in range(3):
            client.publish("/temp_m2/status", payload)
            time.sleep(FEED_INTERVAL)
        since = inbox.mark()
        last = time.perf_counter()
        client.publish("/temp_m2/status", payload).wait_for_publish()
        _, fired = inbox.wait("/interlock/status", rule("heartbeat", True), since, 10)
        late.append((fired - last - STALE_TIMEOUT) * 1e3)
    return late
