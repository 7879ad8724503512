"""The lab YAML's `ivscan` section: where IV scan results go and the scans' defaults.

Imports nothing from `trackerdcs.config`, which imports it.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNegFloat = Annotated[float, Field(ge=0, allow_inf_nan=False)]
EndAction = Literal["ramp_down", "previous"]


class IvScanConfig(BaseModel):
    """IV scans (`trackerdcs-dcs`): results folder and the defaults of a scan's parameters.

    The breakdown criterion: between two steps at V1 < V2 (both > 0) with mean currents I1, I2,
    the logarithmic slope k = ln(I2 / I1) / ln(V2 / V1) (the current grows as V^k; k = 0.5
    below full depletion, about 0 on the plateau, tens in avalanche breakdown). The scan stops
    at breakdown when k > `breakdown_slope` and I2 >= `breakdown_min_current` µA (below it,
    noise decides the ratio). `breakdown_slope` null: no breakdown criterion.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    results_dir: str = "ivscans"  # CSV and PNG per module and scan (relative: the working dir)
    settle: NonNegFloat = 2.0  # s at each step before the readings
    readings: int = Field(5, ge=1, le=1000)  # readings of imon averaged per step
    interval: PositiveFloat = 0.5  # s between two readings
    end: EndAction = "ramp_down"  # after a completed scan: ramp down (off), or the previous V
    breakdown_slope: PositiveFloat | None = 4.0  # k above which the scan stops (see above)
    breakdown_min_current: NonNegFloat = 0.05  # µA: smaller currents are not judged
    max_steps: int = Field(1000, ge=1)  # more voltage steps than this are refused
    heartbeat: PositiveFloat = 10.0  # s between two `/dcs/ivscan/status` at the latest
