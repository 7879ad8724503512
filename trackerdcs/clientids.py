"""MQTT client ids: one per broker connection of a lab's daemons, never two alike.

A broker that accepts a connection with a client id already connected closes the older one
(MQTT 3.1.1 section 3.1.4, MQTT 5.0 section 3.1.4 "session takeover"): two processes sharing one
id knock each other off, and with automatic reconnects both flap online/offline for as long as
they run. So every long-lived connection of a lab has its own id, built here:

    trackerdcs-<lab>-<role>[-<name>]

- a chiller daemon (`trackerdcs-julabo --chiller NAME`): `trackerdcs-<lab>-chiller-<name>`;
- a sensor (one connection each): `trackerdcs-<lab>-sensor-<name>`;
- the interlock, sequencer, alarm and audit services: `trackerdcs-<lab>-interlock`, `-dcs`,
  `-alarms`, `-audit`, and the IV scans' and the recipes' clients in the dcs daemon,
  `-ivscan` and `-recipe`;
- a power daemon, per prefix: `trackerdcs-<lab>-<crate>-<kind>`.

Short-lived and many-instance clients take ids nobody else has: the broker assigns one
(`trackerdcs-health`, MQTT 5 with an empty id), or a random suffix (`trackerdcs audit`,
`trackerdcs-ingest` inputs without `client_id`, Node-RED's broker node). The lab name keeps two
labs on one broker apart. `check_client_ids` refuses a lab whose names would make two of the
ids above equal (a crate named `sensor` with a sensor named `hv`, say).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol


class LabNames(Protocol):
    """What the ids are built from (`trackerdcs.config.LabConfig` is one; this module does not
    import it, since `trackerdcs.config` checks a lab's ids with `check_client_ids`)."""

    @property
    def lab(self) -> str: ...

    @property
    def crates(self) -> Sequence[Any]: ...

    @property
    def chillers(self) -> Sequence[Any]: ...

    @property
    def sensors(self) -> Sequence[Any]: ...


# one connection each per lab
SERVICES = ("interlock", "dcs", "alarms", "audit", "ivscan", "recipe")


def client_id(lab: LabNames, role: str, name: str | None = None) -> str:
    """`trackerdcs-<lab>-<role>[-<name>]`."""
    return f"trackerdcs-{lab.lab}-{role}" + (f"-{name}" if name else "")


def lab_client_ids(lab: LabNames) -> dict[str, list[str]]:
    """Every long-lived connection of the lab's daemons: client id -> what uses it (a list, so
    that a clash shows both)."""
    ids: dict[str, list[str]] = {}
    for crate in lab.crates:
        for kind, prefix in crate.prefixes.items():
            ids.setdefault(client_id(lab, crate.name, str(kind)), []).append(
                f"crate {crate.name} ({prefix})"
            )
    for chiller in lab.chillers:
        ids.setdefault(client_id(lab, "chiller", chiller.name), []).append(
            f"chiller {chiller.name}"
        )
    for sensor in lab.sensors:
        ids.setdefault(client_id(lab, "sensor", sensor.name), []).append(f"sensor {sensor.name}")
    for service in SERVICES:
        ids.setdefault(client_id(lab, service), []).append(f"the {service} service")
    return ids


def check_client_ids(lab: LabNames) -> None:
    """ValueError when two connections of the lab would share a client id."""
    for cid, users in lab_client_ids(lab).items():
        if len(users) > 1:
            raise ValueError(
                f"MQTT client id {cid!r} would be used by {' and by '.join(users)}: the broker "
                "lets only one connect at a time; rename one of them"
            )
