"""The alarm and audit daemon: latching alarms on `/alarms`, the audit log on `/dcs/log`.

Both are kept in one SQLite file (`alarms.db` of the lab YAML, or `--db`).

trackerdcs-alarms --config examples/lab.yml [--db PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from trackerdcs.clientids import client_id
from trackerdcs.config import LabConfig
from trackerdcs.mqtt import MqttLink
from trackerdcs.runner import daemon_main
from trackerdcs.safety.alarms import ALARMS_PREFIX, AlarmService
from trackerdcs.safety.audit import AUDIT_PREFIX, AuditService
from trackerdcs.safety.config import safety_problem
from trackerdcs.safety.store import Store

log = logging.getLogger(__name__)

PRUNE_INTERVAL = 3600.0  # s between two deletions of old audit records


class AlarmsDaemon:
    def __init__(self, lab: LabConfig, loop: asyncio.AbstractEventLoop, db: str) -> None:
        self.loop = loop
        self.store = Store(db)
        max_age = lab.alarms.command_max_age
        self.alarm_link = MqttLink(
            lab.mqtt,
            ALARMS_PREFIX,
            client_id=client_id(lab, "alarms"),
            on_command=lambda cmd: self.alarms.handle_command(cmd),
            on_connection=lambda up: self.alarms.connection(up),
            subscribe=AlarmService.subscriptions(lab),
            on_message=lambda msg: self.alarms.on_message(msg.topic, msg.payload, bool(msg.retain)),
            command_max_age=max_age,
            loop=loop,
        )
        self.alarms = AlarmService(lab, self.store, self.alarm_link, loop=loop)
        self.audit_link = MqttLink(
            lab.mqtt,
            AUDIT_PREFIX,
            client_id=client_id(lab, "audit"),
            on_connection=lambda up: self.audit.connection(up),
            subscribe=AuditService.subscriptions(),  # /+/cmd/# includes its own commands
            on_message=lambda msg: self.audit.on_message(
                msg.topic, msg.payload, msg.properties, bool(msg.retain)
            ),
            command_max_age=max_age,
            loop=loop,
        )
        self.audit = AuditService(lab, self.store, self.audit_link, loop=loop)
        self.audit.on_retained = self.alarms.retained_command
        self._prune: asyncio.TimerHandle | None = None
        self.db = db

    def _prune_now(self) -> None:
        self.audit.prune()
        self._prune = self.loop.call_later(PRUNE_INTERVAL, self._prune_now)

    def start(self) -> None:
        self.alarms.start()
        self._prune_now()
        self.alarm_link.start()
        self.audit_link.start()
        log.info(
            "serving alarms on %s and the audit log on %s (%s); %d alarm(s) listed",
            ALARMS_PREFIX,
            AUDIT_PREFIX,
            self.db,
            len(self.alarms.book.listed),
        )

    def stop(self) -> None:
        if self._prune is not None:
            self._prune.cancel()
        self.alarms.stop()
        self.audit.stop()
        self.audit_link.stop()
        self.alarm_link.stop()
        self.store.close()


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", help="SQLite file (default: alarms.db of the lab YAML)")


def build(lab: LabConfig, loop: asyncio.AbstractEventLoop, args: argparse.Namespace):
    return AlarmsDaemon(lab, loop, args.db or lab.alarms.db)


def main(argv: list[str] | None = None) -> int:
    return daemon_main("trackerdcs-alarms", __doc__, build, argv, add_arguments=_arguments,
                       validate=safety_problem)  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
