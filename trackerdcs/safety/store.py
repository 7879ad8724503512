"""The alarms and the audit log in one SQLite file (stdlib `sqlite3`, WAL journal).

One connection, used from one thread (the alarm service's loop). Every change is committed at
once: alarms, acknowledgements and audit records survive a restart or a crash.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trackerdcs import payloads
from trackerdcs.mqtt import unix_time

SCHEMA = """
CREATE TABLE IF NOT EXISTS alarms (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL,              -- what condition: one listed alarm per key
    topic TEXT NOT NULL,            -- the topic whose messages raise and clear it
    severity TEXT NOT NULL,
    source TEXT NOT NULL,
    text TEXT NOT NULL,
    raised REAL NOT NULL,           -- epoch s
    active INTEGER NOT NULL,
    cleared REAL,
    count INTEGER NOT NULL DEFAULT 1,
    acknowledged INTEGER NOT NULL DEFAULT 0,
    ack_time REAL,
    ack_by TEXT,
    last_raised REAL                -- epoch s it was last raised (made active again)
);
CREATE INDEX IF NOT EXISTS alarms_listed ON alarms (active, acknowledged);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    t REAL NOT NULL,                -- epoch s
    kind TEXT NOT NULL,             -- command | action
    source TEXT NOT NULL,
    event TEXT,
    topic TEXT NOT NULL,
    payload TEXT NOT NULL,
    request_id TEXT,
    modules TEXT NOT NULL,          -- ',M1,M2,' ('' for none, ',*,' for all)
    text TEXT,
    ok INTEGER,
    error TEXT
);
CREATE INDEX IF NOT EXISTS audit_t ON audit (t);
CREATE TABLE IF NOT EXISTS retained_commands (
    topic TEXT PRIMARY KEY,         -- a command topic holding a retained message
    payload TEXT NOT NULL,
    seen REAL NOT NULL              -- epoch s it was first seen
);
"""


@dataclass
class Alarm:
    id: int
    key: str
    topic: str
    severity: str
    source: str
    text: str
    raised: float
    active: bool = True
    cleared: float | None = None
    count: int = 1
    acknowledged: bool = False
    ack_time: float | None = None
    ack_by: str | None = None
    last_raised: float | None = None  # when it was last raised (None: only once, at `raised`)

    @property
    def listed(self) -> bool:
        """Shown on `/alarms`: still active, or not acknowledged yet (latched)."""
        return self.active or not self.acknowledged

    def as_payload(self) -> payloads.Alarm:
        """The alarm as listed on `/alarms`."""
        return payloads.Alarm(
            id=self.id,
            severity=self.severity,
            source=self.source,
            text=self.text,
            time=unix_time(self.raised),
            active=self.active,
            cleared=_unix(self.cleared),
            count=self.count,
            acknowledged=self.acknowledged,
            ack_time=_unix(self.ack_time),
            ack_by=self.ack_by,
            key=self.key,
            last_time=unix_time(self.last_raised or self.raised),
        )

    def as_json(self) -> dict[str, Any]:
        return payloads.dump(self.as_payload())


def _unix(t: float | None) -> float | None:
    return None if t is None else unix_time(t)


_ALARM_COLUMNS = (
    "key",
    "topic",
    "severity",
    "source",
    "text",
    "raised",
    "active",
    "cleared",
    "count",
    "acknowledged",
    "ack_time",
    "ack_by",
    "last_raised",
)


def record_json(row: sqlite3.Row) -> dict[str, Any]:
    """An audit record as `/dcs/log` and the audit query give it."""
    modules = [m for m in row["modules"].split(",") if m]
    record = payloads.AuditRecord(
        seq=row["seq"],
        time=unix_time(row["t"]),
        kind=row["kind"],
        source=row["source"],
        event=row["event"],
        topic=row["topic"],
        payload=row["payload"],
        id=row["request_id"],
        modules=modules,
        text=row["text"],
        ok=None if row["ok"] is None else bool(row["ok"]),
        error=row["error"],
    )
    return payloads.dump(record)


class Store:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(path), isolation_level=None)  # autocommit
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        columns = {r["name"] for r in self.db.execute("PRAGMA table_info(alarms)")}
        if "last_raised" not in columns:  # a file from before `last_time` was published
            self.db.execute("ALTER TABLE alarms ADD COLUMN last_raised REAL")

    def close(self) -> None:
        self.db.close()

    # -- alarms -----------------------------------------------------------------------------------
    def listed_alarms(self) -> list[Alarm]:
        rows = self.db.execute(
            "SELECT * FROM alarms WHERE active = 1 OR acknowledged = 0 ORDER BY id"
        ).fetchall()
        return [Alarm(id=r["id"], **{c: r[c] for c in _ALARM_COLUMNS}) for r in rows]

    def _alarm_values(self, alarm: Alarm) -> list[Any]:
        values = [getattr(alarm, c) for c in _ALARM_COLUMNS]
        return [int(v) if isinstance(v, bool) else v for v in values]

    def add_alarm(self, alarm: Alarm) -> int:
        cursor = self.db.execute(
            f"INSERT INTO alarms ({', '.join(_ALARM_COLUMNS)}) "
            f"VALUES ({', '.join('?' * len(_ALARM_COLUMNS))})",
            self._alarm_values(alarm),
        )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def update_alarm(self, alarm: Alarm) -> None:
        self.db.execute(
            f"UPDATE alarms SET {', '.join(f'{c} = ?' for c in _ALARM_COLUMNS)} WHERE id = ?",
            [*self._alarm_values(alarm), alarm.id],
        )

    # -- audit ------------------------------------------------------------------------------------
    def add_record(
        self,
        *,
        t: float,
        kind: str,
        source: str,
        topic: str,
        payload: str,
        event: str | None = None,
        request_id: str | None = None,
        modules: Sequence[str] = (),
        text: str | None = None,
        ok: bool | None = None,
        error: str | None = None,
    ) -> int:
        cursor = self.db.execute(
            "INSERT INTO audit (t, kind, source, event, topic, payload, request_id, modules, "
            "text, ok, error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                t,
                kind,
                source,
                event,
                topic,
                payload,
                request_id,
                f",{','.join(modules)}," if modules else "",
                text,
                None if ok is None else int(ok),
                error,
            ),
        )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def set_answer(self, seq: int, ok: bool, error: str | None) -> None:
        self.db.execute("UPDATE audit SET ok = ?, error = ? WHERE seq = ?", (int(ok), error, seq))

    def record(self, seq: int) -> dict[str, Any]:
        return record_json(self.db.execute("SELECT * FROM audit WHERE seq = ?", (seq,)).fetchone())

    def records(
        self,
        *,
        since: float | None = None,
        until: float | None = None,
        module: str | None = None,
        source: str | None = None,
        kind: str | None = None,
        limit: int = 1000,
    ) -> tuple[list[dict[str, Any]], bool]:
        """The newest `limit` records matching, oldest first; and whether more matched.

        `module` also matches records for every module (`*`)."""
        where, args = [], []
        if since is not None:
            where.append("t >= ?")
            args.append(since)
        if until is not None:
            where.append("t <= ?")
            args.append(until)
        if module is not None:
            where.append("(modules LIKE ? ESCAPE '\\' OR modules = ',*,')")
            args.append("%," + module.replace("%", r"\%").replace("_", r"\_") + ",%")
        if source is not None:
            where.append("source = ?")
            args.append(source)
        if kind is not None:
            where.append("kind = ?")
            args.append(kind)
        sql = "SELECT * FROM audit" + (f" WHERE {' AND '.join(where)}" if where else "")
        rows = self.db.execute(sql + " ORDER BY t DESC, seq DESC LIMIT ?", [*args, limit + 1])
        found = rows.fetchall()
        return [record_json(r) for r in reversed(found[:limit])], len(found) > limit

    # -- retained commands (audited once) ----------------------------------------------------------
    def retained_commands(self) -> dict[str, str]:
        rows = self.db.execute("SELECT topic, payload FROM retained_commands").fetchall()
        return {r["topic"]: r["payload"] for r in rows}

    def remember_retained(self, topic: str, payload: str, t: float) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO retained_commands (topic, payload, seen) VALUES (?, ?, ?)",
            (topic, payload, t),
        )

    def forget_retained(self, topic: str) -> bool:
        """True when a retained command was remembered for `topic`."""
        return (
            self.db.execute("DELETE FROM retained_commands WHERE topic = ?", (topic,)).rowcount > 0
        )

    def prune(self, before: float) -> int:
        """Delete audit records older than `before`; how many."""
        return self.db.execute("DELETE FROM audit WHERE t < ?", (before,)).rowcount
