"""The device daemons' state-machine pattern (a `transitions` `Machine`), shared by the power
channel (`trackerdcs.power.channel`) and the chiller (`trackerdcs.julabo.fsm`).

The state follows the device: every reading is classified into the state it shows, and that
state's observation trigger fires (allowed from every state: the device is the truth). Commands
are internal triggers (no change of state: the next reading moves it) whose sources list the
states in which the command is allowed, so `Observed.allows(command)` is the guard a service
asks before it writes anything. Commands are members of a `StrEnum`, used by reference.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from enum import StrEnum
from typing import Any

from transitions import Machine


def observing_transitions(
    observations: Mapping[Any, str], commands: Mapping[Any, Iterable[Any]]
) -> list[dict[str, Any]]:
    """`transitions` declarations: each observation trigger from every state (`*`) to its
    state; each command an internal transition (`dest` None) from the states that allow it."""
    return [
        *({"trigger": t, "source": "*", "dest": s} for s, t in observations.items()),
        *(
            {"trigger": str(cmd), "source": list(src), "dest": None}
            for cmd, src in commands.items()
        ),
    ]


def observing_machine(
    models: Any,
    states: type[StrEnum],
    observations: Mapping[Any, str],
    commands: Mapping[Any, Iterable[Any]],
    initial: StrEnum,
) -> Machine:
    """One `Machine` for `models` (one model, or a list sharing the machine: cheaper than a
    machine per model), with `observing_transitions`; no auto transitions."""
    return Machine(
        model=models,
        states=states,
        transitions=observing_transitions(observations, commands),
        initial=initial,
        auto_transitions=False,
        send_event=False,
    )


class Observed:
    """A model of an `observing_machine`: `follow` fires an observation, `allows` asks the
    guard of a command. `OBSERVATIONS` (state -> trigger) is the subclass's declaration."""

    OBSERVATIONS: Mapping[Any, str]
    state: Any
    # bound on the model by the `Machine` (transitions' `trigger` and `may_trigger`)
    trigger: Callable[[str], bool]
    may_trigger: Callable[[str], bool]

    def follow(self, seen: Any) -> bool:
        """Move to `seen` through its observation trigger; True when the state changed."""
        if seen == self.state:
            return False
        self.trigger(self.OBSERVATIONS[seen])
        return True

    def allows(self, command: StrEnum) -> bool:
        """True when `command` is allowed in the current state."""
        return self.may_trigger(str(command))
