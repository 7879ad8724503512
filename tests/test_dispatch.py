"""Commands declared on their handlers (trackerdcs.dispatch) and the shared state-machine
pattern (trackerdcs.statemachine): in-process, no broker."""

from __future__ import annotations

from enum import StrEnum

import pytest

from trackerdcs.dispatch import CommandRegistry
from trackerdcs.julabo import service as julabo_service
from trackerdcs.julabo.fsm import Chiller, ChillerCommand, ChillerState, make_machine
from trackerdcs.power import service as power_service
from trackerdcs.power.channel import COMMANDS as CHANNEL_COMMANDS
from trackerdcs.power.channel import ChannelCommand
from trackerdcs.statemachine import Observed, observing_machine


def test_the_decorator_registers_the_handler_in_declaration_order() -> None:
    registry = CommandRegistry()

    class Service:
        @registry.command("setv", "setv/{ch}", per_channel=True)
        def _setv(self, targets: list[int], value: float) -> tuple:
            return ("setv", targets, value)

        @registry.command("refresh", payload="anything")
        def _refresh(self, value: object) -> str:
            return "refreshed"

    assert list(registry.table) == ["setv", "refresh"]
    setv, refresh = registry.table["setv"], registry.table["refresh"]
    assert (setv.usage, setv.per_channel, refresh.usage, refresh.per_channel) == (
        "setv/{ch}", True, "refresh", False,
    )  # fmt: skip
    assert setv.handler is Service._setv  # the method itself, not its name
    assert setv.handler(Service(), [1], 5.0) == ("setv", [1], 5.0)
    assert Service()._refresh(None) == "refreshed"  # the decorator leaves the method as it is


def test_a_command_declared_twice_is_refused() -> None:
    registry = CommandRegistry()
    registry.command("kill")(lambda self, value: None)
    with pytest.raises(ValueError, match="'kill' declared twice"):
        registry.command("kill")(lambda self, value: None)


def test_the_services_handlers_are_their_methods() -> None:
    """Every entry of the power and chiller tables is a method of its service, found by
    reference; the documented usages stay as they were."""
    power = power_service.COMMAND_TABLE
    assert [s.usage for s in power.values()] == [
        "setv/{ch}", "seti/{ch}", "switch/{ch}", "kill/{ch}", "clear", "refresh", "reconnect",
    ]  # fmt: skip
    for spec in power.values():
        assert getattr(power_service.PowerService, spec.handler.__name__) is spec.handler
    chiller = julabo_service.COMMAND_TABLE
    assert {n: s.payload for n, s in chiller.items()} == {
        "setpoint": "°C", "switch": "`on` / `off`", "refresh": "anything",
        "reconnect": "anything",
    }  # fmt: skip
    for spec in chiller.values():
        assert getattr(julabo_service.JulaboService, spec.handler.__name__) is spec.handler


def test_the_channel_commands_are_the_machines_triggers() -> None:
    assert set(CHANNEL_COMMANDS) == set(ChannelCommand)


class Light(StrEnum):
    OFF = "OFF"
    ON = "ON"
    BROKEN = "BROKEN"


class Switch(StrEnum):
    TURN_ON = "turn_on"
    TURN_OFF = "turn_off"


class Lamp(Observed):
    OBSERVATIONS = {Light.OFF: "see_off", Light.ON: "see_on", Light.BROKEN: "see_broken"}
    state: Light


def test_an_observed_model_follows_its_device_and_guards_its_commands() -> None:
    lamps = [Lamp(), Lamp()]
    commands = {Switch.TURN_ON: [Light.OFF, Light.ON], Switch.TURN_OFF: list(Light)}
    observing_machine(lamps, Light, Lamp.OBSERVATIONS, commands, Light.OFF)
    lamp = lamps[0]
    assert lamp.state is Light.OFF and lamp.allows(Switch.TURN_ON)
    assert lamp.follow(Light.BROKEN) and lamp.state is Light.BROKEN
    assert not lamp.follow(Light.BROKEN)  # no change: no trigger
    assert not lamp.allows(Switch.TURN_ON) and lamp.allows(Switch.TURN_OFF)
    assert lamps[1].state is Light.OFF  # one machine, a state per model
    assert lamp.follow(Light.ON) and lamp.state is Light.ON  # observations from any state


def test_the_chiller_refuses_as_before() -> None:
    chiller = Chiller("sim://")
    make_machine(chiller)
    assert chiller.state is ChillerState.DISCONNECTED
    assert chiller.refusal(ChillerCommand.SWITCH_OFF) == (
        "the chiller is DISCONNECTED (not connected yet): nothing was sent"
    )
