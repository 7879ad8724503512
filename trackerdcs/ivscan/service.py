"""The IV scans of the dcs daemon: `/dcs/cmd/ivscan/{module|all}`.

A command with a JSON object of parameters (`trackerdcs.ivscan.plan`) starts a scan of the
module (of every module with an HV channel for `all`, side by side, each on its own channel);
`stop` stops it. The parameters are checked against the lab before anything moves: an unknown
key, a voltage above the channel's `vmax`, a compliance above its `imax`, too many steps, a
channel TRIPPED or unknown, an active interlock, a module busy (scanning, or switching in the
sequencer) are refused with the reason on `/dcs/response`. An accepted command is answered at
once with the scan ids (`scans`: module -> id); the scan runs in a thread of its own on the
Python client (`trackerdcs.client.Lab`, its own MQTT connection, commands with ids
`ivscan:<n>`), and reports:

- `/dcs/ivscan/status` (retained): every module's latest scan, on change and every
  `ivscan.heartbeat` s;
- `/dcs/ivscan/points`: one JSON object per step (telegraf.conf: measurement `ivscan`, tagged
  with the scan id);
- `/dcs/ivscan/action`: start, every step, and the end, for the audit log;
- `/dcs/ivscan/results` (retained): the past scans in the results folder, newest first
  (`trackerdcs.ivscan.index`), at the start and as each scan's files are written.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trackerdcs.client import procedure_client, sync_or_refuse
from trackerdcs.commands import CommandError
from trackerdcs.config import ChannelKind, LabConfig
from trackerdcs.ivscan.index import newest_first, result_entry, scan_index
from trackerdcs.ivscan.plan import ScanPlan, check_channel, parse_params, plan_scan
from trackerdcs.ivscan.procedure import IvScan
from trackerdcs.mqtt import Command, MqttLink, PayloadError, unix_time
from trackerdcs.payloads import (
    IvScanAction,
    IvScanPoint,
    IvScanResults,
    IvScanState,
    IvScanStatus,
    dump,
)
from trackerdcs.topics import DCS, IVSCAN

log = logging.getLogger(__name__)

COMMANDS = ("ivscan/{module}",)  # under /dcs/cmd/
SOURCE = "ivscan"
STATUS_TOPIC = IVSCAN.status
POINTS_TOPIC = IVSCAN.leaf("points")
ACTION_TOPIC = IVSCAN.action
RESULTS_TOPIC = IVSCAN.leaf("results")
STOP_JOIN = 10.0  # s the daemon waits at its stop for scans to leave their channels safe


def idle_status() -> dict[str, Any]:
    """A module's entry before its first scan."""
    return dump(IvScanState(
        state="IDLE", scan=None, channel=None, operator=None, step=0, steps=0, vset=None,
        vmon=None, imon=None, outcome=None, reason=None, files=[], started=None, ended=None,
        id=None, recipe=None,
    ))  # fmt: skip


def _sender(request_id: str | None) -> str:
    if request_id and ":" in request_id:
        return request_id.split(":", 1)[0] or "unknown"
    return "unknown"


class IvScanService:
    """Scans per module, their threads, and what they publish. `busy(module)` is the reason a
    module may not scan now (the sequencer switching it), or None."""

    def __init__(
        self, lab: LabConfig, link: MqttLink, loop: asyncio.AbstractEventLoop,
        results_dir: Path | None = None, busy: Callable[[str], str | None] = lambda m: None,
        clock: Callable[[], float] = time.time,
    ) -> None:  # fmt: skip
        self.lab = lab
        self.link = link
        self.loop = loop
        self.results_dir = Path(results_dir or lab.ivscan.results_dir)
        self.busy = busy
        self.clock = clock
        self.client = procedure_client(lab, SOURCE)
        self.modules = [
            m for m, chs in lab.modules().items() if any(c.kind is ChannelKind.HV for c in chs)
        ]
        self.scans: dict[str, IvScan] = {}  # module -> its latest scan
        self.threads: dict[str, threading.Thread] = {}  # module -> its running scan
        self._lock = threading.Lock()
        self._heartbeat: asyncio.TimerHandle | None = None
        self.results: list[dict[str, Any]] = []  # the index of past scans (on the loop)

    # -- life -------------------------------------------------------------------------------------
    def start(self) -> None:
        self.client.connect(wait=False)
        self._publish_status()
        self.results = scan_index(self.results_dir)
        self._publish_results()

    def stop(self) -> None:
        """Stop every running scan (each leaves its channel safe, up to `STOP_JOIN` s)."""
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        with self._lock:
            running = list(self.threads.items())
        for module, _ in running:
            self.scans[module].stop("the dcs daemon is stopping")
        deadline = time.monotonic() + STOP_JOIN
        for _, thread in running:
            thread.join(max(0.0, deadline - time.monotonic()))
        if running:  # their last reports are for a loop that no longer runs
            self.link.publish_state(STATUS_TOPIC, json.dumps(self.status()))
        self.client.close()

    def scanning(self, module: str) -> bool:
        """A scan of `module` runs: its thread is alive and it has not published its end (once
        `ended` is set, its thread only hands the scan back)."""
        with self._lock:
            return module in self.threads and self.scans[module].ended is None

    def stop_module(self, module: str, reason: str) -> bool:
        """Stop `module`'s running scan (the sequencer switches it off); whether one ran."""
        running = self.scanning(module)
        if running:
            self.scans[module].stop(reason)
        return running

    # -- commands (on the loop) -------------------------------------------------------------------
    def handle_command(self, cmd: Command) -> None:
        try:
            modules, value, request_id = self._parse(cmd)
            if isinstance(value, str) and value.strip().lower() == "stop":
                stopped = [
                    m for m in modules if self.stop_module(m, f"stopped by {_sender(request_id)}")
                ]
                if not stopped:
                    raise CommandError(f"no IV scan running on {cmd.parts[1]}")
                self.link.respond(cmd, True, None, stopped=stopped)
                return
            plans = self._plans(cmd.parts[1], modules, value, request_id)
        except (CommandError, PayloadError) as exc:
            self.link.respond(cmd, False, str(exc))
            return
        for plan in plans:
            self._launch(plan)
        self.link.respond(cmd, True, None, scans={p.module: p.scan_id for p in plans})

    def _parse(self, cmd: Command) -> tuple[list[str], Any, str | None]:
        parts = cmd.parts
        if len(parts) != 2 or parts[0] != "ivscan" or not parts[1]:
            raise CommandError(f"unknown command {cmd.action!r} (known: "
                               f"{DCS.command(COMMANDS[0])} with parameters or stop)")  # fmt: skip
        value, request_id = cmd.decoded()
        if parts[1] == "all":
            return list(self.modules), value, request_id
        if parts[1] not in self.modules:
            known = ", ".join(self.modules) or "none"
            raise CommandError(f"unknown module {parts[1]!r} (known: {known}, or all)")
        return [parts[1]], value, request_id

    def _plans(self, target: str, modules: list[str], value: Any, request_id: str | None):
        params = parse_params(value)
        if target == "all" and params.channel is not None:
            raise CommandError("channel: only for a scan of one module")
        if not self.client.connected:
            raise CommandError("the IV scan client is not connected to the broker yet")
        sync_or_refuse(self.client)  # judged on the lab as new as the command
        plans: list[ScanPlan] = []
        for module in modules:
            if self.scanning(module):
                raise CommandError(
                    f"{module} is already scanning ({self.scans[module].plan.scan_id})"
                )
            if why := self.busy(module):
                raise CommandError(why)
            plan = plan_scan(self.lab, module, params, operator=_sender(request_id),
                             request_id=request_id)  # fmt: skip
            channel = self.client.peek(plan.channel)
            check_channel(plan, None if channel is None else {"state": channel.state})
            rules = self.client.interlocks(module)
            if rules:
                names = ", ".join(f"{r.get('name')} ({r.get('reason')})" for r in rules)
                raise CommandError(f"{module}: interlock active: {names}")
            plans.append(plan)
        return plans

    def _launch(self, plan: ScanPlan) -> None:
        scan = IvScan(self.client, plan, self, self.results_dir, self.clock)
        thread = threading.Thread(target=self._run, args=(scan,), name=f"ivscan-{plan.module}",
                                  daemon=True)  # fmt: skip
        with self._lock:
            self.scans[plan.module] = scan
            self.threads[plan.module] = thread
        thread.start()

    def _run(self, scan: IvScan) -> None:
        try:
            scan.run()
        except Exception:  # run() reports its own errors; this is the last guard
            log.exception("IV scan %s: unexpected error", scan.plan.scan_id)
        finally:
            with self._lock:  # a new scan of the module may have started once this one ended
                if self.threads.get(scan.plan.module) is threading.current_thread():
                    del self.threads[scan.plan.module]
            self.changed(scan)
            self.loop.call_soon_threadsafe(self._indexed, scan)

    # -- the scans' reports (their threads) -------------------------------------------------------
    def changed(self, scan: IvScan) -> None:
        self.loop.call_soon_threadsafe(self._publish_status)

    def point(self, scan: IvScan, point: dict[str, Any]) -> None:
        self.link.publish(POINTS_TOPIC, json.dumps(dump(IvScanPoint(**point))), qos=1)
        text = (f"step {point['step']}/{len(scan.plan.voltages)}: {point['vset']:g} V, vmon "
                f"{point['vmon']:g} V, imon {point['imon']:.4g} +- {point['imon_std']:.2g} uA "
                f"({point['readings']} readings)")  # fmt: skip
        self.event(scan, "step", text, True)

    def event(self, scan: IvScan, event: str, text: str, ok: bool | None = None) -> None:
        payload = IvScanAction(
            time=unix_time(self.clock()), source=SOURCE, event=event, module=scan.plan.module,
            modules=[scan.plan.module], scan=scan.plan.scan_id,
            step=scan.step if event == "step" else None, ok=ok, text=text,
            id=scan.plan.request_id,
        )  # fmt: skip
        self.link.publish(ACTION_TOPIC, json.dumps(dump(payload)), qos=1)

    # -- status (on the loop) ---------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        scans = {m: self.scans[m].status() if m in self.scans else idle_status()
                 for m in self.modules}  # fmt: skip
        return dump(IvScanStatus.model_validate({"scans": scans, "time": unix_time(self.clock())}))

    def _indexed(self, scan: IvScan) -> None:
        """A scan's files written: its entry first in `/dcs/ivscan/results`."""
        path = self.results_dir / scan.plan.module / f"{scan.plan.scan_id}.csv"
        entry = result_entry(path, self.results_dir) if path.exists() else None
        if entry is not None:
            others = [e for e in self.results if e["csv"] != entry["csv"]]
            self.results = newest_first([entry, *others])
            self._publish_results()

    def _publish_results(self) -> None:
        payload = {"scans": self.results, "time": unix_time(self.clock())}
        self.link.publish_state(
            RESULTS_TOPIC, json.dumps(dump(IvScanResults.model_validate(payload)))
        )

    def _publish_status(self) -> None:
        """`/dcs/ivscan/status`, on change and every `ivscan.heartbeat` s (rescheduled first: a
        payload that fails never ends the heartbeat)."""
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        self._heartbeat = self.loop.call_later(self.lab.ivscan.heartbeat, self._publish_status)
        self.link.publish_state(STATUS_TOPIC, json.dumps(self.status()))
