"""The power-supply daemon: one process per crate, one MQTT service per prefix it serves.

trackerdcs-power --config examples/lab.yml [--crate NAME]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import threading
import time
from collections.abc import Sequence

from trackerdcs.clientids import client_id
from trackerdcs.commands import ALWAYS_EXECUTED
from trackerdcs.config import ChannelKind, LabConfig
from trackerdcs.guard import FAULTS, loads, shorten
from trackerdcs.mqtt import MqttLink
from trackerdcs.power.backend import BackendError, ChannelAddress, PowerBackend
from trackerdcs.power.backends import make_backend
from trackerdcs.power.channel import ChannelCommand, ChannelState, PowerChannel, make_machine
from trackerdcs.power.service import PowerService
from trackerdcs.runner import daemon_main
from trackerdcs.safety.supervision import SupervisionWatch, supervision_topic

log = logging.getLogger(__name__)


class CrateDaemon:
    """Owns a crate's backend and the services of its prefixes; routes readbacks to them.

    Backend and MQTT callbacks arrive on foreign threads and are moved onto the asyncio loop
    here. The daemon also carries the safety duties that must hold even without supervision:
    interlock inhibits, the LV-before-HV order, and the fail-safe on losing the broker or the
    supervision heartbeat of a safety service (`power.failsafe`).
    """

    def __init__(
        self, cfg: LabConfig, crate_name: str, loop: asyncio.AbstractEventLoop,
        backend: PowerBackend | None = None,
    ) -> None:  # fmt: skip
        self.cfg = cfg
        self.crate = cfg.crate(crate_name)
        self.loop = loop
        channels = [
            PowerChannel(ch, cfg.limits_for(ch), cfg.board_of(ch).spec)
            for ch in cfg.channels_of(self.crate.name)
        ]
        for warning in cfg.warnings:
            log.warning("%s", warning)
        self.machine = make_machine(channels)
        self.backend = backend or make_backend(self.crate, [c.address for c in channels])
        self.services: list[PowerService] = []
        self._route: dict[ChannelAddress, PowerService] = {}
        self._broker_up: dict[str, bool] = {}
        self._stopping = False
        self._inbox: list[tuple[ChannelAddress, str, object]] = []
        self._inbox_lock = threading.Lock()
        self._drain_scheduled = False
        self._failsafe_timer: asyncio.TimerHandle | None = None
        # causes of a fired fail-safe still there ("broker", "supervision"): HV that comes on
        # goes off again, and switching it on is refused
        self._holds: set[str] = set()
        failsafe = cfg.power.failsafe
        supervisors = failsafe.supervisors if failsafe.enabled else []
        self._supervision_topics = tuple(supervision_topic(p) for p in supervisors)
        for kind, prefix in self.crate.prefixes.items():
            mine = [c for c in channels if c.cfg.kind == kind]
            if mine:
                self._add_service(kind, prefix, mine)
        if cfg.power.lv_off_requires_hv_off:
            for service in self.services:
                if service.kind is ChannelKind.LV:
                    service.guards.append(self._lv_off_guard)
        for service in self.services:
            if service.kind is ChannelKind.HV:
                service.guards.append(self._failsafe_guard)
        self.supervision: SupervisionWatch | None = None
        if self._supervision_topics and self._hv_channels():
            self.supervision = SupervisionWatch(
                supervisors, failsafe.supervision_timeout, cfg.mqtt.command_clock_skew, loop,
                self._unsupervised, self._supervised,
            )  # fmt: skip

    def _add_service(self, kind: ChannelKind, prefix: str, channels: list[PowerChannel]) -> None:
        hv = kind is ChannelKind.HV
        link = MqttLink(
            self.cfg.mqtt,
            prefix,
            client_id=client_id(self.cfg, self.crate.name, str(kind)),
            on_command=lambda cmd: service.handle_command(cmd),
            on_connection=lambda up: self._on_broker(prefix, up),
            subscribe=(self.cfg.power.interlock_topic, *self._supervision_topics) if hv else (),
            on_message=(lambda msg: self.on_message(msg.topic, msg.payload)) if hv else None,
            command_max_age=self.cfg.power.command_max_age,
            always_executed=ALWAYS_EXECUTED["power"],
            loop=self.loop,
        )  # fmt: skip
        service = PowerService(
            kind, prefix, channels, self.backend, link, self.cfg.power.publish, self.loop
        )
        self.services.append(service)
        self._route.update({c.address: service for c in channels})
        self._broker_up[prefix] = False

    # -- BackendSink, called from the backend's threads -------------------------------------------
    def on_readback(self, addr: ChannelAddress, param: str, value) -> None:
        """Queue a readback; one wake-up of the loop drains every readback queued meanwhile."""
        self.on_readbacks(((addr, param, value),))

    def on_readbacks(self, batch: Sequence[tuple[ChannelAddress, str, float | int | str]]) -> None:
        """Queue readbacks taken together (one poll); they are drained in the same wake-up."""
        with self._inbox_lock:
            self._inbox.extend(batch)
            wake = not self._drain_scheduled
            self._drain_scheduled = True
        if wake:
            self.loop.call_soon_threadsafe(self._drain_readbacks)

    def _drain_readbacks(self) -> None:
        with self._inbox_lock:
            batch, self._inbox = self._inbox, []
            self._drain_scheduled = False
        route = self._route
        for addr, param, value in batch:
            service = route.get(addr)
            if service is None:
                continue
            try:  # one readback no code foresaw must not lose the others, nor the fail-safe
                service.on_readback(addr, param, value)
            except Exception as exc:
                service.note_fault(FAULTS.fault(f"the readbacks of {service.prefix}", exc,
                                                (addr, param, value)))  # fmt: skip
            else:
                FAULTS.ok(f"the readbacks of {service.prefix}")
            if self._holds and param == "Pw" and value:
                self._hold_off(service, addr)

    def on_connection(self, addr: ChannelAddress, connected: bool) -> None:
        service = self._route.get(addr)
        if service is not None:
            self.loop.call_soon_threadsafe(service.on_connection, addr, connected)

    def on_absent(self, addr: ChannelAddress, param: str) -> None:
        service = self._route.get(addr)
        if service is not None:
            self.loop.call_soon_threadsafe(service.on_absent, addr, param)

    def on_invalid(self, addr: ChannelAddress, reason: str | None) -> None:
        service = self._route.get(addr)
        if service is not None:
            self.loop.call_soon_threadsafe(service.on_invalid, addr, reason)

    # -- safety -----------------------------------------------------------------------------------
    def _hv_channels(self) -> list[PowerChannel]:
        return [c for s in self.services if s.kind is ChannelKind.HV for c in s.channels]

    def _lv_off_guard(self, ch: PowerChannel, command: ChannelCommand) -> str | None:
        """Refuse LV off (or kill) while HV of the same module is on."""
        if command not in (ChannelCommand.SWITCH_OFF, ChannelCommand.KILL) or not ch.cfg.module:
            return None
        live = [
            h.name
            for h in self._hv_channels()
            if h.cfg.module == ch.cfg.module and (h.readback["Pw"] or h.state in _HV_LIVE)
        ]
        if live:
            return (
                f"LV of module {ch.cfg.module} cannot go off while its HV is on "
                f"({', '.join(live)}): switch the HV off first"
            )
        return None

    def on_message(self, topic: str, payload: bytes) -> None:
        """A supervision heartbeat, or `/interlock/status`."""
        if self.supervision is not None and self.supervision.on_message(topic, payload):
            return
        if topic == self.cfg.power.interlock_topic:
            self.apply_interlocks(payload)

    def apply_interlocks(self, payload: bytes) -> None:
        """Inhibit switching HV on for the modules of every active interlock rule.

        `/interlock/status` is `{"rules": [{"name", "active", "reason", "modules"}, ...]}`;
        `modules` lists module names, or `["*"]` for every module. An empty (deleted) retained
        status means no rules; a malformed one is ignored and the previous inhibits hold.
        """
        if not payload:
            log.warning("interlock status cleared: no interlock inhibits")
            payload = b'{"rules": []}'
        try:
            rules = loads(payload, self.cfg.power.interlock_topic)["rules"]
            active = [
                (
                    r["name"],
                    shorten(str(r.get("reason") or "active")),
                    set(r.get("modules") or ["*"]),
                )
                for r in rules
                if r.get("active")
            ]
            if not all(isinstance(n, str) and all(isinstance(m, str) for m in ms)
                       for n, _, ms in active):  # fmt: skip
                raise TypeError("rule names and modules must be strings")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            log.error("ignoring a malformed interlock status (%s): %r", shorten(str(exc)),
                      payload[:200])  # fmt: skip
            return
        for service in self.services:
            if service.kind is not ChannelKind.HV:
                continue
            changed = False
            for ch in service.channels:
                inhibits = {
                    name: reason
                    for name, reason, modules in active
                    if "*" in modules or ch.cfg.module in modules
                }
                if inhibits != ch.inhibits:
                    log.warning("%s: interlocks now %s", ch.name, sorted(inhibits) or "none")
                    ch.inhibits = inhibits
                    changed = True
            if changed:
                service.request_publish()

    def _on_broker(self, prefix: str, up: bool) -> None:
        """Start the fail-safe countdown when a link loses the broker; stop it when all are back."""
        self._broker_up[prefix] = up
        if self._stopping:
            return
        if all(self._broker_up.values()):
            self._holds.discard("broker")
            if self._failsafe_timer is not None:
                self._failsafe_timer.cancel()
                self._failsafe_timer = None
                log.info("broker connected: fail-safe countdown stopped")
        elif not up:
            self._arm_failsafe("lost the broker", logging.WARNING)

    def _arm_failsafe(self, why: str, level: int) -> None:
        """Count down to `_failsafe` (once) unless every link has the broker by then."""
        failsafe = self.cfg.power.failsafe
        if failsafe.enabled and self._failsafe_timer is None:
            log.log(level, "%s: HV ramps down in %g s unless the broker is there",
                    why, failsafe.broker_timeout)  # fmt: skip
            self._failsafe_timer = self.loop.call_later(
                failsafe.broker_timeout, self._broker_failsafe
            )

    def _broker_failsafe(self) -> None:
        self._failsafe_timer = None
        self._failsafe("broker", f"no broker for {self.cfg.power.failsafe.broker_timeout:g} s")

    def _unsupervised(self, why: str) -> None:
        """A required supervisor's heartbeat is overdue (SupervisionWatch)."""
        self._failsafe("supervision", why)

    def _supervised(self) -> None:
        """Every supervisor is back: HV may be switched on again (nothing is switched on)."""
        if "supervision" in self._holds:
            self._holds.discard("supervision")
            log.warning("supervised again: HV may be switched on (the fail-safe note stays)")

    def _failsafe_guard(self, ch: PowerChannel, command: ChannelCommand) -> str | None:
        """While a fired fail-safe holds, HV may not be switched on."""
        if command != ChannelCommand.SWITCH_ON or not self._holds:
            return None
        notes = {s.failsafe_note for s in self.services if s.failsafe_note}
        return (
            "HV may not go on while the fail-safe holds it off "
            f"({'; '.join(sorted(notes)) or ', '.join(sorted(self._holds))}; power.failsafe)"
        )

    def _failsafe(self, cause: str, why: str) -> None:
        """No supervision for too long: switch every HV channel off (ramping down at RDWn)."""
        note = f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')}: {why}: HV switched off"
        for service in self.services:
            if service.kind is not ChannelKind.HV:
                continue
            for ch in service.channels:
                if ch.readback["Pw"]:
                    self._failsafe_off(ch)
            service.failsafe_note = note
            service.request_publish()
        self._holds.add(cause)  # a crate that answers only now, or a front panel
        log.error("fail-safe: %s", note)

    def _hold_off(self, service: PowerService, addr: ChannelAddress) -> None:
        """The fail-safe has fired and its cause is still there: no HV channel may stay on."""
        if service.kind is not ChannelKind.HV:
            return
        ch = service.by_address[addr]
        log.error("fail-safe: %s is on without supervision: switching it off", ch.name)
        self._failsafe_off(ch)

    def _failsafe_off(self, ch: PowerChannel) -> None:
        try:
            self.backend.write(ch.address, "Pw", 0)
        except BackendError as exc:
            log.error("fail-safe: %s could not be switched off: %s", ch.name, exc)

    # -- life cycle -------------------------------------------------------------------------------
    def start(self) -> None:
        for service in self.services:
            service.link.start()
            service.publish_status()  # everything DISCONNECTED until the crate answers
        # a daemon (re)started while the broker is away would leave HV on unsupervised
        self._arm_failsafe("fail-safe armed until the broker connects", logging.INFO)
        if self.supervision is not None:
            self.supervision.start()
        self.backend.start(self)
        log.info(
            "serving crate %s (%s at %s) on %s",
            self.crate.name, self.crate.system, self.crate.address,
            ", ".join(s.prefix for s in self.services),
        )  # fmt: skip

    def stop(self) -> None:
        self._stopping = True  # our own disconnection must not arm the fail-safe
        if self._failsafe_timer is not None:
            self._failsafe_timer.cancel()
        if self.supervision is not None:
            self.supervision.stop()
        for service in self.services:
            service.stop()
            service.link.stop()
        self.backend.stop()


_HV_LIVE = frozenset({ChannelState.ON, ChannelState.RAMPING_UP, ChannelState.RAMPING_DOWN})


def _crate_name(cfg: LabConfig, args: argparse.Namespace) -> str | None:
    names = [c.name for c in cfg.crates]
    return args.crate or (names[0] if len(names) == 1 else None)


def _validate(cfg: LabConfig, args: argparse.Namespace) -> str | None:
    names = [c.name for c in cfg.crates]
    if _crate_name(cfg, args) not in names:
        return f"choose a crate with --crate (one of {names})"
    return None


def main(argv: list[str] | None = None) -> int:
    return daemon_main(
        "trackerdcs-power",
        __doc__,
        lambda cfg, loop, args: CrateDaemon(cfg, _crate_name(cfg, args), loop),
        argv,
        add_arguments=lambda p: p.add_argument("--crate", help="crate name (default: the only)"),
        validate=_validate,
        skip_exit_handlers=True,  # pyepics' CA context teardown is slow: see daemon_main
    )


if __name__ == "__main__":
    sys.exit(main())
