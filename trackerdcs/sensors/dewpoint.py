"""Dew point from temperature and relative humidity: the Magnus formula.

    gamma = ln(RH / 100) + a * T / (b + T)
    Td    = b * gamma / (a - gamma)

with T in °C, RH in %, over liquid water, and the constants of Sonntag (1990), as used in the
WMO guide (CIMO) and in Sensirion's application note "Dew-point Calculation" for its SHTxx
sensors: a = 17.62, b = 243.12 °C. The note gives the constants' validity range as -45 °C to
60 °C of air temperature (`VALID_RANGE`), where they were fitted to the saturation vapour
pressure over water; against the exact (Hardy 1998) formulation the error is below 0.1 K over
0..50 °C, far below what a humidity sensor delivers (±2 % RH is about ±0.3 K of dew point at
room conditions).

The edges (the sensor reading is clamped to 0..100 % first, see `lineformat`):

- RH = 100 %: saturated air, ln(1) = 0, so Td = T exactly: the dew point equals the temperature.
- RH = 0 %: no water vapour, no dew point at all: ln(0) is -inf. `dew_point` returns None, never
  a non-finite number; the status says so with `too_dry`.
- Just above 0 % the dew point is very low (RH 0.1 % at 21 °C: about -60 °C), finite, and outside
  the constants' fitted range: it is still far below any module, which is all a margin needs.
"""

from __future__ import annotations

import math
from typing import Final

MAGNUS_A: Final = 17.62  # dimensionless (Sonntag 1990, over water)
MAGNUS_B: Final = 243.12  # °C
VALID_RANGE: Final = (-45.0, 60.0)  # °C, where the constants were fitted (Sensirion's note)


def dew_point(temperature: float, humidity: float) -> float | None:
    """Dew point in °C from air temperature (°C) and relative humidity (%, 0 <= RH <= 100);
    None at RH 0 (dry air has no dew point). ValueError outside those ranges."""
    if not 0.0 <= humidity <= 100.0:
        raise ValueError(f"relative humidity must be in [0, 100] %, got {humidity}")
    if not math.isfinite(temperature) or temperature <= -MAGNUS_B:
        raise ValueError(f"temperature out of range: {temperature}")
    if humidity == 0.0:
        return None
    gamma = math.log(humidity / 100.0) + MAGNUS_A * temperature / (MAGNUS_B + temperature)
    return MAGNUS_B * gamma / (MAGNUS_A - gamma)
