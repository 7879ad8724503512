"""The seam between the power service and a crate, whatever reaches it (EPICS CA, HV Wrapper).

A backend reports readbacks and connection changes to a `BackendSink` (from any thread) and takes
writes of CAEN parameters by name. The service never knows which transport is behind it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from trackerdcs.config import CrateConfig

# The readbacks every backend delivers for every channel, by their CAEN names.
MONITORED_PARAMS = ("V0Set", "I0Set", "Pw", "VMon", "IMon", "Status")
# Parameters the service writes: set points, power, and the protection settings from the lab YAML.
WRITABLE_PARAMS = ("V0Set", "I0Set", "Pw", "RUp", "RDWn", "Trip", "SVMax", "PDwn")


@dataclass(frozen=True, order=True)
class ChannelAddress:
    """Where a channel lives on its crate."""

    board: int
    channel: int


class BackendSink(Protocol):
    """Receives what a backend observes. Called from the backend's threads."""

    def on_readback(self, addr: ChannelAddress, param: str, value: float | int | str) -> None: ...

    def on_connection(self, addr: ChannelAddress, connected: bool) -> None: ...


class BackendError(Exception):
    """A write the backend could not hand to the crate."""


class PowerBackend(Protocol):
    """What the power service needs from a crate."""

    def start(self, sink: BackendSink) -> None:
        """Connect and start delivering readbacks; returns at once, connection is reported."""

    def stop(self) -> None:
        """Release every connection."""

    def write(self, addr: ChannelAddress, param: str, value: float | int | str) -> None:
        """Write one channel parameter (a name of WRITABLE_PARAMS); raises BackendError."""

    def clear_alarm(self) -> None:
        """Clear latched alarms (trips) on the crate."""

    def reconnect(self) -> None:
        """Drop and re-establish every connection."""


def make_backend(crate: CrateConfig, addresses: list[ChannelAddress]) -> PowerBackend:
    """The backend the crate's configuration names; imports its library only when chosen."""
    if crate.backend == "epics":
        from trackerdcs.power.epics_backend import EpicsBackend

        return EpicsBackend(crate, addresses)
    if crate.backend == "caenwrapper":
        from trackerdcs.power.caenwrapper_backend import CaenWrapperBackend

        return CaenWrapperBackend(crate, addresses)
    raise ValueError(f"unknown backend {crate.backend!r}")
