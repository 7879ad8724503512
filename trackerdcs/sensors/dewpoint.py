"""Dew point from temperature and relative humidity: the Magnus formula.

    gamma = ln(RH / 100) + a * T / (b + T)
    Td    = b * gamma / (a - gamma)

with T in °C, RH in %, over liquid water, and the constants of Sonntag (1990), as used in the
WMO guide (CIMO) and in Sensirion's application note "Dew-point Calculation" for its SHTxx
sensors: a = 17.62, b = 243.12 °C, valid from -45 °C to 60 °C. Against the exact (Hardy 1998)
formulation the error is below 0.1 K over 0..50 °C, which is far below what a humidity sensor
delivers (±2 % RH is about ±0.3 K of dew point at room conditions).
"""

from __future__ import annotations

import math
from typing import Final

MAGNUS_A: Final = 17.62  # dimensionless (Sonntag 1990, over water)
MAGNUS_B: Final = 243.12  # °C
VALID_RANGE: Final = (-45.0, 60.0)  # °C, where the constants were fitted


def dew_point(temperature: float, humidity: float) -> float:
    """Dew point in °C from air temperature (°C) and relative humidity (%, 0 < RH <= 100)."""
    if not 0.0 < humidity <= 100.0:
        raise ValueError(f"relative humidity must be in (0, 100] %, got {humidity}")
    if not math.isfinite(temperature) or temperature <= -MAGNUS_B:
        raise ValueError(f"temperature out of range: {temperature}")
    gamma = math.log(humidity / 100.0) + MAGNUS_A * temperature / (MAGNUS_B + temperature)
    return MAGNUS_B * gamma / (MAGNUS_A - gamma)
