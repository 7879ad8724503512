"""What an IV scan computes from its readings: each step's mean and spread, and the breakdown
criterion (documented in `trackerdcs.ivscan.config.IvScanConfig`)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence


def mean_and_spread(values: Sequence[float]) -> tuple[float, float]:
    """The mean and the sample standard deviation (0 for one value)."""
    if not values:
        raise ValueError("no readings")
    mean = statistics.fmean(values)
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return mean, spread


def log_slope(v1: float, i1: float, v2: float, i2: float) -> float | None:
    """k = ln(|I2| / |I1|) / ln(|V2| / |V1|): the current grows as V^k between two steps.

    None where it is undefined: a voltage or current of 0, or the same voltage twice."""
    v1, i1, v2, i2 = abs(v1), abs(i1), abs(v2), abs(i2)
    if min(v1, v2, i1, i2) <= 0.0 or v1 == v2:
        return None
    return math.log(i2 / i1) / math.log(v2 / v1)


def breakdown(
    v1: float, i1: float, v2: float, i2: float, slope: float | None, min_current: float
) -> float | None:
    """The slope k when the step from (v1, i1) to (v2, i2), going up in |V|, shows breakdown:
    k > `slope` with |i2| >= `min_current`; else None (also with `slope` None: off)."""
    if slope is None or abs(v2) <= abs(v1) or abs(i2) < min_current:
        return None
    k = log_slope(v1, i1, v2, i2)
    return k if k is not None and k > slope else None
