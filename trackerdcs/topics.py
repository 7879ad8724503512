"""The MQTT topics of a service, built in one place from its prefix (docs/topics.md).

Vocabulary (MQTT 5.0, section 4.7): a *topic* is levels joined by `/`; a *topic filter*, what a
client subscribes to, may hold the single-level wildcard `+` and the multi-level wildcard `#`
(last level only). A service's *prefix* is one topic level, `/` and a name (`/hv`, `/julabo`,
`/temp_m1`; the lab YAML refuses any other), and every topic of the service lies below it:

    <prefix>/status         retained JSON status            `/hv/status`
    <prefix>/state          retained JSON state (power)     `/hv/state`
    <prefix>/availability   retained `online` / `offline`   `/hv/availability`
    <prefix>/response       one answer per command          `/hv/response`
    <prefix>/action         events of a safety service      `/interlock/action`
    <prefix>/supervision    heartbeat of a supervisor       `/interlock/supervision`
    <prefix>/cmd/<command>[/<argument>]                     `/hv/cmd/setv/3`, `/julabo/cmd/switch`

`ServiceTopics("/+")` (`EVERY_SERVICE`) gives the same names as filters over every service
(`/+/status`, `/+/cmd/#`). A sub-service is one more level (`/dcs/ivscan/status`:
`ServiceTopics("/dcs").below("ivscan").status`).

This module imports nothing of the project (tests/test_import_graph.py): every layer may use it.
"""

from __future__ import annotations

from dataclasses import dataclass

SEPARATOR = "/"
SINGLE_LEVEL = "+"  # matches exactly one level
MULTI_LEVEL = "#"  # matches the rest of the topic, any number of levels
COMMAND_LEVEL = "cmd"  # the level between a prefix and a command: `<prefix>/cmd/...`
COMMAND_INFIX = f"{SEPARATOR}{COMMAND_LEVEL}{SEPARATOR}"  # `/cmd/`: in every command topic


@dataclass(frozen=True)
class ServiceTopics:
    """The topics below one prefix (`/hv`, or `/+` for filters over every service)."""

    prefix: str

    def leaf(self, name: str) -> str:
        """`<prefix>/<name>`: `leaf("points")` of `/dcs/ivscan` is `/dcs/ivscan/points`."""
        return f"{self.prefix}{SEPARATOR}{name}"

    def below(self, name: str) -> ServiceTopics:
        """The topics of a sub-service one level down: `/dcs` -> `/dcs/ivscan`."""
        return ServiceTopics(self.leaf(name))

    @property
    def status(self) -> str:
        """`<prefix>/status`: the retained JSON status."""
        return self.leaf("status")

    @property
    def state(self) -> str:
        """`<prefix>/state`: the retained JSON state of a power service (the crate's)."""
        return self.leaf("state")

    @property
    def availability(self) -> str:
        """`<prefix>/availability`: retained `online`, or `offline` (also the last will)."""
        return self.leaf("availability")

    @property
    def response(self) -> str:
        """`<prefix>/response`: one JSON answer per command, not retained."""
        return self.leaf("response")

    @property
    def action(self) -> str:
        """`<prefix>/action`: the events of a safety service or procedure (JSON)."""
        return self.leaf("action")

    @property
    def supervision(self) -> str:
        """`<prefix>/supervision`: the heartbeat of a supervising service."""
        return self.leaf("supervision")

    def reply(self, name: str) -> str:
        """`<prefix>/reply/<name>`: a topic a client of the service's own answers on (an MQTT 5
        response topic, a `Lab.sync` marker); the service's user may publish below it."""
        return f"{self.leaf('reply')}{SEPARATOR}{name}"

    @property
    def command_root(self) -> str:
        """`<prefix>/cmd/`: what every command topic of the service starts with."""
        return f"{self.prefix}{COMMAND_INFIX}"

    @property
    def commands(self) -> str:
        """`<prefix>/cmd/#`: the filter of every command of the service."""
        return f"{self.command_root}{MULTI_LEVEL}"

    def command(self, name: str, argument: object = None) -> str:
        """`<prefix>/cmd/<name>`, or `<prefix>/cmd/<name>/<argument>` (e.g. a channel, a
        module, `all`; `str()` of it). `name` may be a usage with a placeholder (`setv/{ch}`)."""
        topic = f"{self.command_root}{name}"
        return topic if argument is None else f"{topic}{SEPARATOR}{argument}"


EVERY_SERVICE = ServiceTopics(SEPARATOR + SINGLE_LEVEL)  # `/+`: filters over every service

# the services whose prefix is fixed (the others' come from the lab YAML)
DCS = ServiceTopics("/dcs")  # the sequencer; its procedures below it, its audit log `/dcs/log`
IVSCAN = DCS.below("ivscan")  # `/dcs/ivscan/status`, `points`, `action`, `results`
RECIPE = DCS.below("recipe")  # `/dcs/recipe/status`, `action`
ALARMS = ServiceTopics("/alarms")  # the retained list is the prefix itself, `/alarms`
AUDIT = ServiceTopics("/audit")
INGEST = ServiceTopics("/ingest")  # the ingest bridge's counters (its default prefix)


def is_command(topic: str) -> bool:
    """Whether a topic (or filter) is a command one: it has a `cmd` level below a prefix."""
    return topic.find(COMMAND_INFIX, 1) >= 0


def split_command(topic: str) -> tuple[str, str]:
    """(prefix, action) of any service's command topic: `/hv/cmd/setv/3` -> (`/hv`, `setv/3`);
    (`topic`, ``) when it has no `/cmd/` level. A prefix has a name: `/cmd/cmd/x` is
    (`/cmd`, `x`)."""
    at = topic.find(COMMAND_INFIX, 1)
    return (topic, "") if at < 0 else (topic[:at], topic[at + len(COMMAND_INFIX) :])


def prefix_of(topic: str) -> str:
    """The prefix of a `<prefix>/<leaf>` topic: `/interlock/status` -> `/interlock`."""
    return topic.rsplit(SEPARATOR, 1)[0]
