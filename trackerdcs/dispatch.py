"""Commands declared where they are handled: a registering decorator on the handler.

    COMMANDS = CommandRegistry()

    class PowerService:
        @COMMANDS.command("setv", "setv/{ch}", per_channel=True)
        def _cmd_setv(self, targets, value): ...

`COMMANDS.table` maps a command's name (the first level below `<prefix>/cmd/`) to its
`CommandSpec`, in declaration order; the service calls `spec.handler(self, ...)`. A search for a
command's name finds its handler, and a type checker follows the handler reference.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

H = TypeVar("H", bound=Callable[..., Any])


@dataclass(frozen=True)
class CommandSpec:
    """One command of a service's topic contract."""

    name: str  # the topic level below `<prefix>/cmd/`, e.g. `setv`
    usage: str  # as documented, e.g. `setv/{ch}`
    handler: Callable[..., Any]  # the service's method (unbound: called with the service)
    per_channel: bool = False  # takes a channel level (`setv/{ch}`)
    payload: str = "anything"  # the payload, as documented


class CommandRegistry:
    """The commands of one service, registered by `command` on their handlers."""

    def __init__(self) -> None:
        self.table: dict[str, CommandSpec] = {}

    def command(
        self, name: str, usage: str | None = None, *, per_channel: bool = False,
        payload: str = "anything",
    ) -> Callable[[H], H]:  # fmt: skip
        """Register the decorated method as the handler of `name` (`usage`: as documented,
        default `name`). Raises ValueError when `name` is declared twice."""

        def register(handler: H) -> H:
            if name in self.table:
                raise ValueError(f"command {name!r} declared twice")
            self.table[name] = CommandSpec(name, usage or name, handler, per_channel, payload)
            return handler

        return register
