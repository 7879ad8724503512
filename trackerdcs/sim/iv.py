"""The leakage current of a simulated silicon sensor against its bias voltage (its IV curve).

A reverse-biased sensor's leakage current is generated in its depleted volume: it grows as the
depletion depth, `sqrt(V / V_fd)`, until the sensor is fully depleted at `V_fd`; beyond, it
stays on a plateau that rises slowly (surface and edge currents); above the breakdown voltage
`V_bd` avalanche multiplication makes it grow exponentially, by a factor e every `width` volts:

    I(V) = I_fd * sqrt(V / V_fd)                                  for V <= V_fd
    I(V) = I_fd * (1 + slope * (V - V_fd) / V_fd)                 for V >  V_fd
         + I_fd * exp((V - V_bd) / width)                         (breakdown, every V > 0)

`I_fd` is the current at full depletion at the lab's `reference_temperature`; the virtual lab
scales the whole curve with the module's temperature (doubling every `leakage_doubling` K). See
e.g. G. Lutz, "Semiconductor Radiation Detectors" (Springer), ch. 2 and 5 (bulk generation
current proportional to the depleted volume; avalanche breakdown).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

EXP_LIMIT = 50.0  # exp() argument cap: the current saturates at e^50 x I_fd (a real supply trips)


@dataclass(frozen=True)
class SensorIV:
    """One sensor's IV curve. Volts and µA; all parameters positive (`slope` >= 0)."""

    depletion_voltage: float = 200.0  # V_fd, V
    current: float = 2.0  # I_fd, µA at full depletion and the reference temperature
    plateau_slope: float = 0.1  # relative rise of the plateau per V_fd volts beyond V_fd
    breakdown_voltage: float = 800.0  # V_bd, V
    breakdown_width: float = 10.0  # V for the breakdown current to grow by a factor e

    def current_at(self, volts: float) -> float:
        """The leakage current at `volts` (the magnitude of the bias), µA; 0 at 0 V."""
        v = abs(volts)
        if v <= 0.0:
            return 0.0
        vfd, ifd = self.depletion_voltage, self.current
        if v <= vfd:
            bulk = ifd * math.sqrt(v / vfd)
        else:
            bulk = ifd * (1.0 + self.plateau_slope * (v - vfd) / vfd)
        exponent = min((v - self.breakdown_voltage) / self.breakdown_width, EXP_LIMIT)
        return bulk + ifd * math.exp(exponent)
