"""The backend a crate's configuration names (`backend: epics | caenwrapper`).

Apart from the protocol (`trackerdcs.power.backend`), which the backends import: the factory
imports them, so the two in one module would import each other.
"""

from __future__ import annotations

from trackerdcs.config import CrateConfig
from trackerdcs.power.backend import ChannelAddress, PowerBackend


def make_backend(crate: CrateConfig, addresses: list[ChannelAddress]) -> PowerBackend:
    """The backend the crate's configuration names; imports its library only when chosen.
    ValueError for an unknown backend name."""
    if crate.backend == "epics":
        from trackerdcs.power.epics_backend import EpicsBackend

        return EpicsBackend(crate, addresses)
    if crate.backend == "caenwrapper":
        from trackerdcs.power.caenwrapper_backend import CaenWrapperBackend

        return CaenWrapperBackend(crate, addresses)
    raise ValueError(f"unknown backend {crate.backend!r}")
