"""The lab YAML's `recipes` section: where recipe files are found, and the recipes' limits.

Imports nothing from `trackerdcs.config`, which imports it.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class RecipesConfig(BaseModel):
    """Thermal-cycle recipes (`trackerdcs-dcs`: `/dcs/cmd/recipe/...`).

    `dir`: the folder of recipe files (`<name>.yml`), which `/dcs/cmd/recipe/start` takes by
    name; relative: to the lab YAML's folder (`examples/lab.yml` -> `examples/recipes/`).
    `dewpoint_margin`: K above the room's dew point a set point must stay, for a chiller no
    dew-point interlock rule concerns (those that do set their own `margin`).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    dir: str = "recipes"
    heartbeat: PositiveFloat = 5.0  # s between two `/dcs/recipe/status` at the latest
    max_steps: int = Field(100_000, ge=1)  # steps a run may have in all (repeats unrolled)
    dewpoint_margin: PositiveFloat = 3.0  # K (see above)
