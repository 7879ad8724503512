"""The seam between the power service and a crate, whatever reaches it (EPICS CA, HV Wrapper).

A backend reports readbacks and connection changes to a `BackendSink` (from any thread) and takes
writes of CAEN parameters by name. The service never knows which transport is behind it.

What a backend reads and writes for a channel is its board's entry in the model table
(`trackerdcs.power.boards`): the model's `monitored` readbacks, and its writable parameters. A
parameter the configured model has but the crate does not serve is reported once through
`BackendSink.on_absent`; writing it raises `ParamAbsent`, and the rest of the channel works.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from trackerdcs.config import CrateConfig
from trackerdcs.power.boards import BoardModel


@dataclass(frozen=True, order=True)
class ChannelAddress:
    """Where a channel lives on its crate."""

    board: int
    channel: int


class BackendSink(Protocol):
    """Receives what a backend observes. Called from the backend's threads."""

    def on_readback(self, addr: ChannelAddress, param: str, value: float | int | str) -> None: ...

    def on_readbacks(self, batch: Sequence[tuple[ChannelAddress, str, float | int | str]]) -> None:
        """Readbacks taken together, `(address, parameter, value)` from one poll of the crate:
        handled as one, so no status is published with some of them and not the others."""

    def on_connection(self, addr: ChannelAddress, connected: bool) -> None: ...

    def on_absent(self, addr: ChannelAddress, param: str) -> None:
        """The crate does not serve `param` for this channel (said once per parameter)."""

    def on_invalid(self, addr: ChannelAddress, reason: str | None) -> None:
        """A readback of the channel has INVALID alarm severity (`reason`), or none has (None)."""


class BackendError(Exception):
    """A write the backend could not hand to the crate."""


class ParamAbsent(BackendError):
    """The crate does not serve this parameter for this channel: nothing is written."""


def channel_models(crate: CrateConfig, addresses: list[ChannelAddress]) -> dict:
    """Each channel's board model (`dict[ChannelAddress, BoardModel]`), from the crate's boards."""
    models: dict[ChannelAddress, BoardModel] = {}
    for addr in addresses:
        models[addr] = crate.boards[addr.board].spec
    return models


class PowerBackend(Protocol):
    """What the power service needs from a crate."""

    def start(self, sink: BackendSink) -> None:
        """Connect and start delivering readbacks; returns at once, connection is reported."""

    def stop(self) -> None:
        """Release every connection."""

    def write(self, addr: ChannelAddress, param: str, value: float | int | str) -> None:
        """Write one writable parameter of the channel's board model; raises BackendError
        (ParamAbsent when the crate does not serve it)."""

    def clear_alarm(self) -> None:
        """Clear latched alarms (trips) on the crate."""

    def reconnect(self) -> None:
        """Drop and re-establish every connection."""
