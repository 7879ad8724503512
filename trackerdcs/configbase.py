"""The lab YAML's shared pydantic building blocks, for `trackerdcs.config` and the section
modules it imports (`trackerdcs.safety.config`).

It imports nothing of the project, so that every config module can import it and none has to
import another one back (tests/test_import_graph.py keeps the import graph free of cycles).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field


class StrictModel(BaseModel):
    """Strict base: unknown keys are errors (a typo must not be silently ignored), and every
    float, of every section and field to come, is finite: `.nan`, `.inf`, `1e400` are refused
    (a NaN limit would silence its safety rule, an infinite one let every set point through)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class UnknownChiller(LookupError):
    """No such chiller in the lab (or no name given in a lab with several); says which exist."""


PositiveFloat = Annotated[float, Field(gt=0)]
NonNegFloat = Annotated[float, Field(ge=0)]
NonNegInt = Annotated[int, Field(ge=0)]
