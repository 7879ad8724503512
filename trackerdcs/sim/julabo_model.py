"""The simulated Julabo's state and physics, without any protocol (`trackerdcs.sim.julabo` speaks
it). Thread-safe; no I/O.

Physics: when running, the bath moves toward the active set point at `rate` K/min; when stopped
it relaxes toward `ambient` with time constant `ambient_tau` (s). Heating power is `power_gain`
%/K of the remaining error plus a holding term, clipped to ±100 (negative when cooling). The
external sensor follows the bath with first-order lag `external_lag` (s); without one
(`external_sensor=False`) it has no value.

Settings every model keeps (what a model can read or write is its profile's business): three
set points, the warning limits, pump stage, the active set point, self-tuning, the external
programmer input, internal/external control, running, and the PID parameters with plausible
factory values (`FACTORY_PID`).
"""

from __future__ import annotations

import math
import threading
from typing import Final

from trackerdcs.julabo.protocol import STATUS_TABLE, StatusKind

FACTORY_PID: Final = {
    "xp_internal": 2.5, "tn_internal": 60, "tv_internal": 10,
    "xp_cascade": 5.0, "p_cascade": 1.0, "tn_cascade": 120, "tv_cascade": 20,
}  # fmt: skip
"""Plausible PID parameters (Xp K, Tn s, Tv s): values inside the manuals' ranges."""


class JulaboUnit:
    """State, physics and front panel of one unit (see the module docstring)."""

    def __init__(
        self,
        *,
        rate: float = 2.0,
        ambient: float = 20.0,
        ambient_tau: float = 600.0,
        external_lag: float = 30.0,
        power_gain: float = 25.0,
        setpoint_range: tuple[float, float] = (-50.0, 200.0),
        temperature: float | None = None,
        remote: bool = True,
        external_sensor: bool = True,
    ) -> None:
        low, high = setpoint_range
        if low >= high or rate <= 0 or ambient_tau <= 0 or external_lag <= 0:
            raise ValueError("invalid simulator parameters")
        self._lock = threading.RLock()
        self.rate = rate
        self.ambient = ambient
        self.ambient_tau = ambient_tau
        self.external_lag = external_lag
        self.power_gain = power_gain
        self.setpoint_range = (low, high)
        self.bath = ambient if temperature is None else temperature
        self.external = self.bath
        self.external_sensor = external_sensor
        self.power = 0.0
        start = min(max(20.0, low), high)
        self.setpoints = [start, start, start]
        self.high_limit = high
        self.low_limit = low
        self.excess_limit = high + 10.0
        self.pump_stage = 2
        self.active = 0
        self.selftuning = 0
        self.external_input = 0
        self.external_control = False
        self.pid: dict[str, float] = dict(FACTORY_PID)
        self.running = False
        self.remote = remote
        self.fault: int | None = None

    # -- physics -----------------------------------------------------------------------------

    def step(self, dt: float) -> None:
        """Advance the physics by `dt` simulated seconds."""
        if dt <= 0:
            return
        with self._lock:
            target = self.setpoints[self.active]
            if self.running:
                max_delta = self.rate * dt / 60.0
                self.bath += max(-max_delta, min(max_delta, target - self.bath))
                hold = 0.5 * (target - self.ambient)
                raw = self.power_gain * (target - self.bath) + hold
                self.power = max(-100.0, min(100.0, raw))
            else:
                self.bath += (self.ambient - self.bath) * -math.expm1(-dt / self.ambient_tau)
                self.power = 0.0
            self.external += (self.bath - self.external) * -math.expm1(-dt / self.external_lag)

    # -- the front panel and faults (the backdoor) ----------------------------------------------

    def set_remote(self, remote: bool) -> None:
        """Remote (status 02/03, OUT_ accepted) or manual (00/01, OUT_ refused with -09)."""
        with self._lock:
            self.remote = remote

    def set_running(self, running: bool) -> None:
        """The front panel's start/stop key (works in any mode)."""
        with self._lock:
            self.running = running

    def inject_fault(self, code: int) -> None:
        """Make STATUS report `code` (negative); an alarm stops the unit."""
        if code >= 0:
            raise ValueError(f"fault codes are negative, got {code}")
        with self._lock:
            self.fault = code
            if self.alarm_active:
                self.running = False

    def clear_fault(self) -> None:
        with self._lock:
            self.fault = None

    @property
    def alarm_active(self) -> bool:
        """Whether the injected fault is an alarm (unknown codes count as alarms)."""
        fault = self.fault
        if fault is None:
            return False
        return STATUS_TABLE.get(fault, ("", StatusKind.ALARM))[1] is StatusKind.ALARM

    def operating_code(self) -> int:
        """The status without a pending command error: fault, limit warning, or mode 00..03."""
        with self._lock:
            if self.fault is not None:
                return self.fault
            if self.running and self.bath > self.high_limit:
                return -3
            if self.running and self.bath < self.low_limit:
                return -4
            return (2 if self.remote else 0) + (1 if self.running else 0)
