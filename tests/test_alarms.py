"""Latching alarms and the audit log: the book and the SQLite store, then the real
`trackerdcs-alarms` on a real broker (fed by the test), restarted with its acknowledgements."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.conftest import ROOT, Broker, python_process, serving, write_lab
from tests.labdata import EXAMPLE
from trackerdcs.safety.alarms import DETECTORS, AlarmBook, Condition
from trackerdcs.safety.cli import format_record
from trackerdcs.safety.store import Store
from trackerdcs.stack.process import free_port


class Clock:
    def __init__(self) -> None:
        self.t = 1_700_000_000.0

    def __call__(self) -> float:
        self.t += 1.0
        return self.t


def trip(name: str = "hv_m2") -> Condition:
    return Condition(f"channel:/hv:{name}", "major", "/hv", f"{name} (M2) TRIPPED: OVC")


def test_alarm_latches_until_cleared_and_acknowledged(tmp_path):
    store = Store(tmp_path / "a.sqlite")
    book = AlarmBook(store, Clock())
    assert book.observe("/hv/status", [trip()])
    (alarm,) = book.listed.values()
    assert (alarm.active, alarm.acknowledged, alarm.count) == (True, False, 1)
    assert not book.observe("/hv/status", [trip()])  # still there: nothing new
    assert book.observe("/hv/status", [])  # cleared, but latched: still listed
    assert list(book.listed.values()) == [alarm] and not alarm.active and alarm.cleared
    first = alarm.as_json()["time"]
    assert alarm.as_json()["last_time"] == first  # raised once: last = first
    assert book.observe("/hv/status", [trip()])  # back before anyone looked: the same alarm
    assert alarm.active and alarm.count == 2 and len(book.listed) == 1
    assert alarm.as_json()["time"] == first and alarm.as_json()["last_time"] > first
    assert book.acknowledge(str(alarm.id), "alice") == [alarm.id]
    assert alarm.acknowledged and alarm.ack_by == "alice" and alarm.key in book.listed
    assert book.observe("/hv/status", [])  # cleared and acknowledged: gone from the list
    assert book.listed == {}
    book.observe("/hv/status", [trip()])  # a new occurrence is a new alarm
    assert [a.id for a in book.listed.values()] == [alarm.id + 1]
    with pytest.raises(KeyError):
        book.acknowledge("999", None)
    store.close()


def test_alarms_and_acknowledgements_survive_reopening(tmp_path):
    path = tmp_path / "a.sqlite"
    store = Store(path)
    book = AlarmBook(store, Clock())
    book.observe("/hv/status", [trip("hv_m1"), trip("hv_m2")])
    book.observe("/julabo/status", [Condition("chiller_error:/julabo", "critical", "/julabo",
                                              "chiller error: -01 LOW LEVEL ALARM")])  # fmt: skip
    first = book.listed["channel:/hv:hv_m1"].id
    book.acknowledge(str(first), "bob")
    store.close()

    store = Store(path)
    book = AlarmBook(store, Clock())
    listed = {a.key: a for a in book.listed.values()}
    assert set(listed) == {"channel:/hv:hv_m1", "channel:/hv:hv_m2", "chiller_error:/julabo"}
    assert listed["channel:/hv:hv_m1"].acknowledged and listed["channel:/hv:hv_m1"].ack_by == "bob"
    assert not listed["channel:/hv:hv_m2"].acknowledged
    book.observe("/hv/status", [trip("hv_m2")])  # the topic after the restart: hv_m1 cleared
    assert "channel:/hv:hv_m1" not in book.listed  # (acknowledged, and now cleared)
    assert book.acknowledge("all", "carol") == [
        listed[k].id for k in ("channel:/hv:hv_m2", "chiller_error:/julabo")
    ]
    summary = book.summary()
    assert summary["unacknowledged"] == 0 and summary["active"] == 2
    store.close()


def test_an_alarm_file_from_before_last_time_is_migrated(tmp_path):
    path = tmp_path / "old.sqlite"
    old_schema = Store(path)  # make it, then drop the new column as an older version had none
    old_schema.db.execute("ALTER TABLE alarms DROP COLUMN last_raised")
    old_schema.db.execute(
        "INSERT INTO alarms (key, topic, severity, source, text, raised, active) "
        "VALUES ('offline:/hv', '/hv/availability', 'major', '/hv', 'gone', 1700000000.5, 1)"
    )
    old_schema.close()
    book = AlarmBook(Store(path), Clock())
    (alarm,) = book.listed.values()
    assert alarm.as_json()["time"] == alarm.as_json()["last_time"] == 1700000000.5
    book.observe("/hv/availability", [])
    book.observe("/hv/availability", [Condition("offline:/hv", "major", "/hv", "gone")])
    assert alarm.as_json()["last_time"] > 1700000000.5 and alarm.count == 2


@pytest.mark.parametrize(
    ("role", "payload", "texts"),
    [
        ("channels", [{"name": "hv_m2", "module": "M2", "state": "TRIPPED", "flags": ["INT_TRIP"]},
                      {"name": "hv_m1", "module": "M1", "state": "ON", "flags": ["ON"]}],
         ["hv_m2 (M2) TRIPPED: INT_TRIP"]),
        ("crate", {"state": "DISCONNECTED", "failsafe": "no broker for 30 s: HV switched off"},
         ["crate of /x disconnected", "/x fail-safe: no broker for 30 s: HV switched off"]),
        ("chiller", {"state": "ERROR", "error": "-01 LOW LEVEL ALARM"},
         ["chiller error: -01 LOW LEVEL ALARM"]),
        ("chiller", {"state": "ERROR", "status_code": -1, "error": "-01 LOW LEVEL ALARM"},
         ["chiller error: -01 LOW LEVEL ALARM"]),
        ("chiller", {"state": "ERROR", "status_code": -40, "error": "-40 LOW LEVEL WARNING"},
         ["chiller warning: -40 LOW LEVEL WARNING"]),
        ("chiller", {"state": "DISCONNECTED", "error": "no answer"},
         ["chiller disconnected: no answer"]),
        ("sensor", {"stale": True, "error": "no good reading within 10 s"},
         ["sensor x stale: no good reading within 10 s"]),
        ("interlock", {"rules": [{"name": "dewpoint", "active": True, "reason": "0.5 K"},
                                 {"name": "heartbeat", "active": False, "reason": None}]},
         ["interlock dewpoint fired: 0.5 K"]),
        ("availability", "offline", ["/x daemon offline"]),
        ("availability", "online", []),
    ],
)  # fmt: skip
def test_detectors(role, payload, texts):
    detector, _ = DETECTORS[role]
    assert [c.text for c in detector("/x", payload)] == texts


def test_a_chiller_warning_is_major_an_alarm_or_unknown_code_critical():
    """Julabo warnings keep the unit running; its alarms stop it (the manuals' status table)."""
    detector, _ = DETECTORS["chiller"]

    def severity(code: object) -> list[str]:
        return [c.severity for c in detector("/x", {"state": "ERROR", "status_code": code})]

    assert severity(-40) == severity(-3) == ["major"]  # LOW LEVEL, EXCESS TEMPERATURE WARNING
    assert severity(-1) == severity(-99) == severity(True) == severity(None) == ["critical"]


def test_audit_queries_by_time_module_source_and_kind(tmp_path):
    store = Store(tmp_path / "a.sqlite")
    t0 = 1_700_000_000.0
    store.add_record(t=t0, kind="command", source="alice", topic="/hv/cmd/switch/M1",
                     payload="on", modules=["M1"])  # fmt: skip
    store.add_record(t=t0 + 10, kind="command", source="interlock", topic="/hv/cmd/switch/all",
                     payload="off", modules=["*"])  # fmt: skip
    seq = store.add_record(t=t0 + 20, kind="action", source="interlock", event="fired",
                           topic="/interlock/action", payload="{}", modules=["M2"],
                           text="interlock x fired")  # fmt: skip
    store.set_answer(1, False, "refused")

    def query(**kw):
        records, truncated = store.records(**kw)
        return [r["seq"] for r in records], truncated

    assert query() == ([1, 2, seq], False)
    assert query(module="M1") == ([1, 2], False)  # `all` concerns every module
    assert query(module="M2", source="interlock") == ([2, 3], False)
    assert query(kind="action") == ([3], False)
    assert query(since=t0 + 5, until=t0 + 15) == ([2], False)
    assert query(limit=2) == ([2, 3], True)  # the newest, oldest first
    assert query(module="M_") == ([2], False)  # no LIKE wildcards from the caller
    first = store.record(1)
    assert first["ok"] is False and first["error"] == "refused" and first["modules"] == ["M1"]
    assert format_record(first).endswith("alice        M1       /hv/cmd/switch/M1 on -> refused: "
                                         "refused")  # fmt: skip
    assert store.prune(t0 + 15) == 2 and query() == ([3], False)
    store.close()


# -- the daemon on a real broker --------------------------------------------------------------


class AlarmsLab:
    def __init__(self, workdir: Path, broker: Broker, name: str = "alarms") -> None:
        self.db = workdir / f"{name}.sqlite"
        # the test plays the daemons: liveness (no live status -> alarm) has its own tests
        self.config = write_lab(workdir / f"{name}.yml", mqtt_port=broker.port,
                                ca_port=free_port(), lab=name,
                                **{"alarms.liveness_factor": 1000})  # fmt: skip
        self.daemon = python_process(
            "alarms", "trackerdcs.safety.alarms_daemon",
            ["--config", str(self.config), "--db", str(self.db)],
            workdir / f"{name}-alarms.log", ready=serving("serving alarms"),
        )  # fmt: skip
        self.client = broker.client()

    def alarms(self, predicate, since: int, timeout: float = 5.0) -> list[dict]:
        return self.client.wait_for("/alarms", lambda m: predicate(m.json["alarms"]), timeout,
                                    since).json["alarms"]  # fmt: skip

    def log(self, predicate, since: int, timeout: float = 5.0) -> dict:
        return self.client.wait_for("/dcs/log", lambda m: predicate(m.json), timeout, since).json


@pytest.fixture(scope="module")
def alab(workdir, broker):
    lab = AlarmsLab(workdir, broker)
    lab.daemon.start()
    yield lab
    lab.daemon.stop()
    lab.client.close()


def by_source(alarms: list[dict], source: str) -> list[dict]:
    return [a for a in alarms if a["source"] == source]


def test_chiller_error_alarm_ack_and_restart(alab):
    lab = alab
    since = lab.client.mark()
    lab.client.publish("/julabo/status", {"state": "ERROR", "error": "-01 LOW LEVEL ALARM"},
                       retain=True)  # fmt: skip
    lab.client.publish("/temp_m3/status", {"stale": True, "error": "silent"}, retain=True)
    alarms = lab.alarms(lambda a: len(by_source(a, "/julabo")) == 1 and
                        by_source(a, "/temp_m3"), since)  # fmt: skip
    chiller = by_source(alarms, "/julabo")[0]
    assert chiller["severity"] == "critical" and chiller["text"] == (
        "chiller error: -01 LOW LEVEL ALARM"
    )
    assert chiller["active"] and not chiller["acknowledged"] and isinstance(chiller["time"], float)
    sensor = by_source(alarms, "/temp_m3")[0]

    answer = lab.client.command(f"/alarms/cmd/ack/{chiller['id']}", "", "/alarms/response")
    assert answer["ok"] and answer["acknowledged"] == [chiller["id"]]
    alarms = lab.alarms(lambda a: any(x["acknowledged"] for x in by_source(a, "/julabo")), since)
    assert by_source(alarms, "/julabo")[0]["active"]  # acknowledged, still active: listed
    answer = lab.client.command("/alarms/cmd/ack/12345", "", "/alarms/response")
    assert not answer["ok"] and "no listed alarm '12345'" in answer["error"]

    # a restart keeps both, with the acknowledgement
    lab.daemon.stop()
    since = lab.client.mark()
    lab.daemon.start()
    alarms = lab.alarms(lambda a: a, since)
    kept = {a["id"]: a for a in alarms}
    assert kept[chiller["id"]]["acknowledged"] and kept[chiller["id"]]["ack_time"]
    assert not kept[sensor["id"]]["acknowledged"]

    since = lab.client.mark()
    lab.client.publish("/julabo/status", {"state": "RUNNING", "error": None}, retain=True)
    alarms = lab.alarms(lambda a: not by_source(a, "/julabo"), since)  # cleared + acked: gone
    lab.client.publish("/temp_m3/status", {"stale": False, "error": None}, retain=True)
    alarms = lab.alarms(lambda a: any(not x["active"] for x in by_source(a, "/temp_m3")), since)
    assert by_source(alarms, "/temp_m3")[0]["cleared"]  # latched until acknowledged
    assert lab.client.command("/alarms/cmd/ack/all", "", "/alarms/response")["ok"]
    lab.alarms(lambda a: not by_source(a, "/temp_m3"), since)


def test_every_command_and_action_is_audited(alab, tmp_path):
    lab = alab
    hv, lv = EXAMPLE.channel("hv", 0), EXAMPLE.channel("lv", 1)  # the lab starts from it
    other = EXAMPLE.channel("lv", 2).module  # a second module the interlock action names
    since = lab.client.mark()
    props = Properties(PacketTypes.PUBLISH)
    props.UserProperty = ("client_id", "alice")
    lab.client.publish(hv.topic("switch"), "on", properties=props)
    record = lab.log(lambda r: r["topic"] == hv.topic("switch"), since)
    assert (record["source"], record["modules"], record["ok"]) == ("alice", [hv.module], None)
    lab.client.publish("/hv/response", {"topic": hv.topic("switch"), "payload": "on",
                                        "ok": False, "error": "TRIPPED", "id": None})  # fmt: skip
    answered = lab.log(lambda r: r["seq"] == record["seq"] and r["ok"] is not None, since)
    assert answered["ok"] is False and answered["error"] == "TRIPPED"

    lab.client.publish(
        lv.topic("switch", by="number"), {"value": "off", "id": "interlock:dewpoint:7"}
    )
    record = lab.log(lambda r: r["topic"] == lv.topic("switch", by="number"), since)
    assert record["source"] == "interlock" and record["modules"] == [lv.module]
    assert record["id"] == "interlock:dewpoint:7"
    event = {"time": 1714550400.0, "source": "interlock", "event": "fired",  # 2024-05-01T08Z
             "rule": "dewpoint", "modules": [lv.module, other], "text": "0.5 K from the dew point",
             "commands": []}  # fmt: skip
    lab.client.publish("/interlock/action", event)
    action = lab.log(lambda r: r["kind"] == "action", since)
    assert action["time"] == event["time"] and action["event"] == "fired"
    assert action["modules"] == [lv.module, other] and action["text"] == event["text"]

    answer = lab.client.command(
        "/audit/cmd/query",
        {"since": "2024-05-01T07:00:00Z", "module": lv.module},
        "/audit/response",
    )
    assert answer["ok"], answer
    assert [(r["kind"], r["topic"]) for r in answer["records"]] == [
        ("action", "/interlock/action"),
        ("command", lv.topic("switch", by="number")),
    ]  # time order
    answer = lab.client.command("/audit/cmd/query", {"sinse": "1h"}, "/audit/response")
    assert not answer["ok"] and "unknown query key(s) sinse" in answer["error"]
    answer = lab.client.command("/audit/cmd/query", {"since": "1m", "source": "unknown"},
                                "/audit/response")  # fmt: skip
    queries = [r for r in answer["records"] if r["topic"] == "/audit/cmd/query"]
    assert [r["ok"] for r in queries] == [True, False, None]  # each once; this one unanswered
    assert len({r["id"] for r in queries}) == 3

    # the command line, through the service and straight from the file
    base = [sys.executable, "-m", "trackerdcs.cli", "audit", "--config", str(lab.config)]
    out = subprocess.run([*base, "--since", "10m", "--source", "alice"], cwd=ROOT,
                         capture_output=True, text=True, timeout=30)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "alice" in out.stdout and f"{hv.topic('switch')} on -> refused: TRIPPED" in out.stdout
    out = subprocess.run([*base, "--db", str(lab.db), "--since", "2024-05-01T07:00:00Z",
                          "--kind", "action", "--json"], cwd=ROOT, capture_output=True,
                         text=True, timeout=30)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert [json.loads(line)["event"] for line in out.stdout.splitlines()] == ["fired"]


def test_offline_daemons_raise_alarms(alab):
    lab = alab
    since = lab.client.mark()
    lab.client.publish("/sensor_9/availability", "offline", retain=True)
    alarms = lab.alarms(lambda a: by_source(a, "/sensor_9"), since)
    assert by_source(alarms, "/sensor_9")[0]["text"] == "/sensor_9 daemon offline"
    lab.client.publish("/sensor_9/availability", "online", retain=True)
    lab.alarms(lambda a: any(not x["active"] for x in by_source(a, "/sensor_9")), since)
    assert lab.client.command("/alarms/cmd/ack/all", "", "/alarms/response")["ok"]
    lab.client.publish("/sensor_9/availability", b"", retain=True)
