"""Command safety (docs/topics.md, "Command safety"): no retained, stale, future or expired
command reaches hardware, switching off always does, and the optional rate limit. The gate
in-process first, then every command topic family on the real daemons and a real Mosquitto with
persistence on, as in production."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.conftest import Broker, PowerLab
from tests.test_safety_scenarios import HV, LV, M, SafetyLab
from trackerdcs.commands import ALWAYS_EXECUTED, always_executed
from trackerdcs.config import MqttConfig, RateLimitConfig
from trackerdcs.mqtt import Command, CommandGate, PayloadError


# -- the gate, in-process -------------------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def command(action: str, payload: str, **kw) -> Command:
    return Command(topic=f"/hv/cmd/{action}", action=action, payload=payload,
                   arrived=kw.pop("arrived", 1_717_171_717.0), **kw)  # fmt: skip


def stamped(value, sent: float) -> str:
    return json.dumps({"value": value, "id": "alice:1", "time": sent})


NOW = 1_717_171_717.0


def test_the_payload_time_key():
    cmd = command("setv/0", stamped(100, NOW - 1))
    assert cmd.decoded() == (100, "alice:1") and cmd.sent() == NOW - 1
    assert command("setv/0", "100").sent() is None
    for bad, message in (
        ('{"value": 1, "time": "yesterday"}', "time must be unix seconds"),
        ('{"value": 1, "time": true}', "time must be unix seconds"),
        ('{"value": 1, "time": Infinity}', "Infinity is not a number"),
        ('{"value": 1, "when": 5}', "unknown key(s) in payload: when (known: value, id, time)"),
    ):
        with pytest.raises(PayloadError, match=message.replace("(", r"\(").replace(")", r"\)")):
            command("setv/0", bad).sent()


@pytest.mark.parametrize(
    ("service", "action", "value", "always"),
    [("power", "kill/3", "", True), ("power", "kill/all", "on", True),
     ("power", "switch/M1", "off", True), ("power", "switch/0", "0", True),
     ("sequencer", "module/M2", "off", True), ("power", "switch/0", "on", False),
     ("sequencer", "module/all", "on", False), ("power", "setv/0", "0", False),
     ("power", "switch/0", "banana", False), ("power", "clear", "off", False),
     ("power", "module/M2", "off", False),  # another service's command
     ("sequencer", "ivscan/M1", "stop", True), ("sequencer", "ivscan/all", " Stop ", True),
     ("sequencer", "ivscan/M1", {"start": 0, "stop": 100}, False),  # a scan: judged
     # stopping a chiller warms powered modules: not a safe direction (docs/topics.md)
     ("chiller", "switch", "off", False), ("chiller", "setpoint", "off", False)],
)  # fmt: skip
def test_what_always_runs(service, action, value, always):
    assert always_executed(action, value, ALWAYS_EXECUTED.get(service, {})) is always


def test_the_gate_refuses_retained_old_future_and_expired_commands():
    gate = CommandGate(MqttConfig(), max_age=5.0, always=ALWAYS_EXECUTED["power"])
    fresh = command("switch/0", stamped("on", NOW - 4.9))
    assert gate.check(fresh) is None
    assert gate.check(command("switch/0", "on")) is None  # no time: not judged by age
    refusal = gate.check(command("switch/0", "on", retained=True))
    assert "published with the retain flag" in refusal
    assert "mosquitto_pub -r -t '/hv/cmd/switch/0' -n" in refusal
    assert "retain flag" in gate.check(command("switch/0", "off", retained=True))  # even off
    old = gate.check(command("switch/0", stamped("on", NOW - 6)))
    assert old.startswith("refused: sent 6.0 s ago") and "command_max_age" in old
    future = gate.check(command("setv/0", stamped(10, NOW + 3)))
    assert "3.0 s in the future" in future and "mqtt.command_clock_skew" in future
    assert gate.check(command("setv/0", stamped(10, NOW + 1.5))) is None  # within the skew
    assert "expiry" in gate.check(command("setv/0", "10", expiry=0))
    assert gate.check(command("setv/0", "10", expiry=1)) is None
    assert gate.check(command("setv/0", '{"value": 1, "when": 5}')) is None  # the service says
    for off in ("switch/0", "kill/0"):  # switching off runs whatever its age or expiry
        assert gate.check(command(off, stamped("off", NOW - 3600), expiry=0)) is None


def test_the_rate_limit_is_per_command_topic_and_never_stops_switching_off():
    clock = Clock()
    cfg = MqttConfig(command_rate_limit=RateLimitConfig(rate=2.0, burst=3))
    gate = CommandGate(cfg, clock=clock, always=ALWAYS_EXECUTED["power"])
    assert [gate.check(command("setv/0", "5")) for _ in range(3)] == [None] * 3
    refusal = gate.check(command("setv/0", "5"))
    assert refusal == (
        "refused: more than 3 commands at once or 2 per second on /hv/cmd/setv/0 from senders "
        "without a 'name:...' id (mqtt.command_rate_limit): nothing was written"
    )
    assert gate.check(command("setv/1", "5")) is None  # another topic, another bucket
    assert all(gate.check(command("switch/0", "off")) is None for _ in range(20))
    clock.t += 0.5  # one token back
    assert gate.check(command("setv/0", "5")) is None
    assert gate.check(command("setv/0", "5")) is not None


def test_a_flooding_client_does_not_starve_the_interlock():
    """Buckets per topic and sender (the id's part before `:`): a UI echoing every status back
    as a set point empties its own bucket, not the interlock's on the same topic."""
    cfg = MqttConfig(command_rate_limit=RateLimitConfig(rate=1.0, burst=5))
    gate = CommandGate(cfg, clock=Clock())

    def setpoint(payload: str) -> Command:
        return Command(topic="/julabo/cmd/setpoint", action="setpoint", payload=payload,
                       arrived=NOW)  # fmt: skip

    flood = [gate.check(setpoint("18")) for _ in range(50)]  # no id: the anonymous bucket
    assert flood[:5] == [None] * 5 and all(flood[5:])
    echo = [gate.check(setpoint(json.dumps({"value": 18, "id": f"echo:{i}"}))) for i in range(9)]
    assert echo[:5] == [None] * 5 and all(echo[5:]) and "from echo " in echo[-1]
    raise_it = setpoint(json.dumps({"value": 20, "id": "interlock:dewpoint:7"}))
    assert gate.check(raise_it) is None  # the interlock's own bucket is full


@pytest.mark.parametrize(
    ("action", "payload", "ignored"),
    [("kill/hv_m1", '{"value": "", "time": "yesterday"}',
      "time must be unix seconds (a number), got 'yesterday'"),
     ("switch/0", '{"value": "off", "source": "ui"}', "unknown key(s) source"),
     ("switch/0", '{"value": "off", "id": "a:1", "time": NaN}', "time must be finite, got nan"),
     ("switch/0", '{"value": "off", "id": {"who": "me"}, "via": 1}',
      'unknown key(s) via; id {"who": "me"} (not a string)'),
     ("kill/all", "{not json", "the payload (malformed JSON: Expecting property name"),
     ("switch/0", '{"value": "0", "when": 5, "time": true}',
      "unknown key(s) when; time must be unix seconds (a number), got True")],
)  # fmt: skip
def test_a_faulty_off_still_runs_and_says_what_was_ignored(action, payload, ignored):
    gate = CommandGate(MqttConfig(), always=ALWAYS_EXECUTED["power"])
    cmd = gate.tolerate(command(action, payload))
    assert cmd.lenient and gate.check(cmd) is None
    assert cmd.decoded()[0] in ("", "off", "0", None)
    assert "; ".join(cmd.salvage()[3]).startswith(ignored)


def test_a_refusal_is_logged_once_as_such_and_answered_to_its_id(caplog):
    from trackerdcs.mqtt import MqttLink

    link = MqttLink(MqttConfig(), "/julabo", "test-refusal-log")  # never connected
    cmd = Command(topic="/julabo/cmd/setpoint", action="setpoint",
                  payload='{"value": 5, "id": "alice:3", "when": 1}')  # fmt: skip
    with caplog.at_level("WARNING", logger="trackerdcs.mqtt"):
        answer = link.respond(cmd, False, "refused: sent 6.0 s ago")
    assert "refused: sent 6.0 s ago" in caplog.text and "refused: refused" not in caplog.text
    assert answer["id"] == "alice:3"  # read from a payload the service will refuse


@pytest.mark.parametrize(
    ("service", "action", "payload"),
    [("power", "switch/0", '{"value": "of", "source": "ui"}'),  # not readable as off
     ("power", "switch/0", '{"value": "on", "time": "yesterday"}'),
     ("power", "setv/0", '{"value": 0, "time": "yesterday"}'),
     ("chiller", "switch", '{"value": "off", "time": "yesterday"}')],
)  # fmt: skip
def test_only_an_off_is_run_despite_a_faulty_payload(service, action, payload):
    gate = CommandGate(MqttConfig(), always=ALWAYS_EXECUTED.get(service, {}))
    cmd = gate.tolerate(command(action, payload))
    assert not cmd.lenient
    with pytest.raises(PayloadError):
        cmd.decoded()


# -- every command topic family, on the real daemons ----------------------------------------------
# (topic, a payload that would act, the state that shows it did not)
FAMILIES = [
    (HV[0].topic("switch", by="number"), "on"),
    (LV[0].topic("switch", by="module"), "on"),
    ("/julabo/cmd/switch", "on"),
    (f"/dcs/cmd/module/{M[1]}", "on"),
    ("/interlock/cmd/reset/chiller_running", "yes"),
    ("/alarms/cmd/ack/all", "all"),
    ("/sensor_1/cmd/refresh", "now"),
    ("/audit/cmd/query", '{"value": {"since": "1m"}}'),
]


@pytest.fixture(scope="module")
def persistent(workdir: Path) -> Iterator[Broker]:
    broker = Broker(workdir, persistent=True).start()  # retained messages survive a restart
    yield broker
    broker.stop()


@pytest.fixture(scope="module")
def lab(workdir: Path, persistent: Broker) -> Iterator[SafetyLab]:
    lab = SafetyLab(workdir, persistent, "commands")
    lab.client.close()  # one that resumes its session: it misses no answer across a restart
    lab.client = persistent.client(session_expiry=600)
    lab.start()
    lab.rules(lambda r: not any(rule["active"] for rule in r.values()), since=0)
    yield lab
    for topic, _ in FAMILIES:  # leave nothing retained behind
        lab.client.publish(topic, b"", retain=True)
    assert lab.stop() == [0] * 7


def response_topic(topic: str) -> str:
    return "/" + topic.split("/")[1] + "/response"


def refusals(lab: SafetyLab, since: int) -> dict[str, dict]:
    """The answer to each family's retained command, from `since`."""
    return {
        topic: lab.client.wait_for(
            response_topic(topic),
            lambda m, t=topic, p=payload: m.json["topic"] == t and m.json["payload"] == p,
            10,
            since,
        ).json
        for topic, payload in FAMILIES
    }


def retained_records(lab: SafetyLab) -> dict[str, list[dict]]:
    records = lab.audit(since="10m", kind="command", limit=1000)
    found: dict[str, list[dict]] = {}
    for r in records:
        if (r["text"] or "").startswith("retained"):
            found.setdefault(r["topic"], []).append(r)
    return found


def assert_nothing_ran(lab: SafetyLab) -> None:
    assert lab.crate(HV[0].name, "Pw") == 0
    lv = lab.client.latest("/lv/status").json
    assert not any(c["on"] for c in lv if c["module"] == M[0])
    assert lab.client.latest("/julabo/status").json["state"] == "STOPPED"
    assert lab.client.latest("/dcs/status").json["modules"][M[1]]["state"] == "IDLE"


def test_a_retained_command_is_never_executed_answered_audited_once_and_alarmed(lab, persistent):
    since = lab.client.mark()
    for topic, payload in FAMILIES:
        lab.client.publish(topic, payload, retain=True)
    lab.client.publish(
        HV[0].topic("switch", by="number"), "off"
    )  # the reproduction: then a live off
    for topic, answer in refusals(lab, since).items():
        assert answer["ok"] is False, answer
        assert "published with the retain flag" in answer["error"]
        assert f"mosquitto_pub -r -t '{topic}' -n" in answer["error"]
    alarms = lab.alarms(lambda a: {f"retained:{t}" for t, _ in FAMILIES}
                        <= {x["key"] for x in a}, since)  # fmt: skip
    retained = [a for a in alarms if a["key"].startswith("retained:")]
    assert {a["severity"] for a in retained} == {"minor"} and len(retained) == len(FAMILIES)
    assert_nothing_ran(lab)
    assert {t: len(r) for t, r in retained_records(lab).items()} == dict.fromkeys(
        (t for t, _ in FAMILIES), 1
    )

    # the broker restarts with its persistence: every retained command is delivered again
    since = lab.client.mark()
    persistent.stop()
    persistent.start()
    for answer in refusals(lab, since).values():  # refused again, by every daemon
        assert answer["ok"] is False and "retain flag" in answer["error"]
    # and a power daemon restarted with its crate connected
    power = lab.processes[1]
    power.stop()
    since = lab.client.mark()
    power.start()
    switch = HV[0].topic("switch", by="number")
    answer = lab.client.wait_for("/hv/response", lambda m: m.json["topic"] == switch, 10,
                                 since).json  # fmt: skip
    assert answer["ok"] is False
    lab.wait("/hv/status", lambda chs: all(c["state"] == "OFF" for c in chs), 10, since=since)
    assert_nothing_ran(lab)
    # audited once, alarmed once: not again at every reconnection
    assert all(len(r) == 1 for r in retained_records(lab).values())
    listed = lab.alarms(lambda a: True, since=0)
    assert all(a["count"] == 1 for a in listed if a["key"].startswith("retained:"))

    # cleared as the answer said: the alarm clears; the clearing is no command
    since = lab.client.mark()
    for topic, _ in FAMILIES:
        lab.client.publish(topic, b"", retain=True)
    lab.alarms(lambda a: not any(x["active"] for x in a if x["key"].startswith("retained:")),
               since)  # fmt: skip
    after = lab.command(
        HV[0].topic("switch", by="number"), "off"
    )  # ordered after the clearing, same topic
    assert after["ok"]
    answers = [m.json for m in lab.client.messages[since:] if m.topic == "/hv/response"]
    assert not any(a["payload"] == "" for a in answers)
    assert lab.client.command("/alarms/cmd/ack/all", "", "/alarms/response")["ok"]


def test_old_and_future_commands_are_refused_switching_off_always_runs(lab):
    now = time.time()
    topic = HV[0].topic("switch")
    since = lab.client.mark()
    old_on = lab.client.command(topic, "on", "/hv/response", time=now - 60)
    assert old_on["ok"] is False and "older than the 5 s" in old_on["error"]
    future = lab.client.command("/julabo/cmd/setpoint", 15, "/julabo/response", time=now + 60)
    assert future["ok"] is False and "in the future" in future["error"]
    late_on = lab.client.command(f"/dcs/cmd/module/{M[0]}", "on", "/dcs/response", time=now - 60)
    assert late_on["ok"] is False and "older than" in late_on["error"]
    assert lab.crate(HV[0].name, "Pw") == 0
    # switching off: whatever its age
    assert lab.client.command(topic, "off", "/hv/response", time=now - 3600)["ok"]
    assert lab.client.command(
        HV[0].topic("kill", by="module"), "", "/hv/response", time=now - 3600
    )["ok"]
    off = lab.client.command(f"/dcs/cmd/module/{M[0]}", "off", "/dcs/response", 30, time=now - 3600)
    assert off["ok"], off
    # fresh: executed
    assert lab.client.command(HV[0].topic("setv"), 12, "/hv/response", time=time.time())["ok"]
    assert lab.crate(HV[0].name, "V0Set") == 12.0
    # the audit log has them, refusals with their reason
    records = {r["topic"]: r for r in lab.audit(since="1m", kind="command")
               if r["topic"] in (topic, "/julabo/cmd/setpoint")}  # fmt: skip
    assert records["/julabo/cmd/setpoint"]["ok"] is False
    assert "in the future" in records["/julabo/cmd/setpoint"]["error"]
    assert lab.client.mark() > since


def test_a_faulty_off_runs_on_the_daemons_a_chiller_stop_is_judged(lab):
    """Switching power off runs despite a bad `time` or an unknown key (answered with a
    warning); an unreadable value is no off; a chiller stop is judged like any command."""
    kill = lab.client.command(HV[0].topic("kill"), "", "/hv/response", time="yesterday")
    assert kill["ok"], kill
    assert kill["warning"] == "ignored: time must be unix seconds (a number), got 'yesterday'"
    off = lab.client.command(HV[0].topic("switch"), "off", "/hv/response", source="ui")
    assert off["ok"] and off["warning"] == "ignored: unknown key(s) source"
    typo = lab.client.command(HV[0].topic("switch"), "of", "/hv/response", source="ui")
    assert not typo["ok"] and "unknown key(s) in payload: source" in typo["error"]
    module = lab.client.command(f"/dcs/cmd/module/{M[1]}", "off", "/dcs/response", 30,
                                time=float("nan"))  # fmt: skip
    assert module["ok"] and module["warning"] == "ignored: time must be finite, got nan"
    stale = lab.client.command("/julabo/cmd/switch", "off", "/julabo/response",
                               time=time.time() - 3600)  # fmt: skip
    assert not stale["ok"] and "older than the 5 s" in stale["error"]
    faulty = lab.client.command("/julabo/cmd/switch", "off", "/julabo/response", source="ui")
    assert not faulty["ok"] and "unknown key(s) in payload: source" in faulty["error"]
    assert lab.crate(HV[0].name, "Pw") == 0


def test_a_command_stuck_with_a_frozen_daemon_is_refused_by_its_time(workdir, broker):
    """A daemon frozen (a loaded machine, a stopped process): the broker has already delivered
    the commands into its socket, their MQTT 5 expiry still looks fresh when it reads them; the
    payload time is what refuses them. A command without time cannot be judged and runs."""
    lab = PowerLab(workdir, broker, "frozen", **{"power.command_max_age": 1.0}).start()
    try:
        props = Properties(PacketTypes.PUBLISH)
        props.MessageExpiryInterval = 1
        sent = time.time()
        since = lab.client.mark()
        lab.daemon.freeze()
        try:
            lab.client.publish(
                HV[0].topic("switch"),
                {"value": "on", "id": "late-on", "time": sent},
                properties=props,
            )
            lab.client.publish(HV[1].topic("setv"), {"value": 7, "id": "late-setv", "time": sent})
            lab.client.publish(HV[2].topic("setv"), "9")  # no time: nothing to judge
            lab.client.publish(HV[3].topic("switch"), {"value": "off", "id": "late-off",
                                                        "time": sent})  # fmt: skip
            threading.Event().wait(1.5)  # the scenario: frozen longer than command_max_age
        finally:
            lab.daemon.thaw()

        def answer(match) -> dict:
            return lab.client.wait_for("/hv/response", lambda m: match(m.json), 10, since).json

        late_on = answer(lambda a: a["id"] == "late-on")
        assert late_on["ok"] is False and "older than the 1 s" in late_on["error"]
        assert answer(lambda a: a["id"] == "late-setv")["ok"] is False
        assert answer(lambda a: a["topic"] == HV[2].topic("setv"))["ok"]
        assert answer(lambda a: a["id"] == "late-off")["ok"]
        assert (
            lab.get(lab.chpv(HV[0].name, "Pw")) == 0 and lab.get(lab.chpv(HV[1].name, "V0Set")) != 7
        )
        assert lab.get(lab.chpv(HV[2].name, "V0Set")) == 9
        # with an expiry that has time left, a fresh command runs
        props.MessageExpiryInterval = 60
        since = lab.client.mark()
        lab.client.publish(HV[1].topic("setv"), {"value": 8, "id": "fresh", "time": time.time()},
                           properties=props)  # fmt: skip
        assert answer(lambda a: a["id"] == "fresh")["ok"]
    finally:
        lab.stop()


def test_the_rate_limit_on_a_real_daemon(workdir, broker):
    lab = PowerLab(workdir, broker, "ratelimit",
                   **{"mqtt.command_rate_limit": {"rate": 0.2, "burst": 2}}).start()  # fmt: skip
    try:
        answers = [lab.command(HV[0].topic("setv"), v) for v in (1, 2, 3)]
        assert [a["ok"] for a in answers] == [True, True, False]
        assert "mqtt.command_rate_limit" in answers[2]["error"]
        assert lab.get(lab.chpv(HV[0].name, "V0Set")) == 2.0  # the refused one wrote nothing
        assert lab.command(HV[1].topic("setv"), 4)["ok"]  # per topic
        assert all(lab.command(HV[0].topic("switch"), "off")["ok"] for _ in range(5))
        # per sender: the anonymous bucket of setv/hv_m1 is empty, the interlock's is not
        raised = {"value": 5, "id": "interlock:dewpoint:1"}
        answer = lab.client.raw_command(HV[0].topic("setv"), json.dumps(raised), "/hv/response")
        assert answer["ok"] and lab.get(lab.chpv(HV[0].name, "V0Set")) == 5.0
    finally:
        lab.stop()


def test_the_readme_commands_that_are_refused(lab):
    from tests.test_local_stack import readme_example

    retained, old, clear = readme_example("refused")
    port = f"-h 127.0.0.1 -p {lab.broker.port}"

    def run(line: str) -> None:
        done = subprocess.run(["bash", "-c", line.replace("-h 127.0.0.1", port)],
                              capture_output=True, text=True, timeout=10)  # fmt: skip
        assert done.returncode == 0, done.stderr

    def answer(since: int, payload) -> dict:
        return lab.client.wait_for("/hv/response", lambda m: payload(m.json["payload"]), 10,
                                   since).json  # fmt: skip

    since = lab.client.mark()
    run(retained)
    assert "retain flag" in answer(since, lambda p: p == "on")["error"]
    run(old)
    assert "older than" in answer(since, lambda p: p.startswith("{"))["error"]
    run(clear)
    key = "retained:" + HV[0].topic("switch", by="number")
    lab.alarms(lambda a: any(x["key"] == key and not x["active"] for x in a), since)
    assert lab.crate(HV[0].name, "Pw") == 0
    assert lab.client.command("/alarms/cmd/ack/all", "", "/alarms/response")["ok"]


class RecordingLink:
    """Stands in for the audit service's MqttLink: what it publishes and answers."""

    def __init__(self) -> None:
        self.published: list[tuple[str, str]] = []
        self.refused: list[str] = []

    def publish(self, topic: str, payload: str, *, qos: int = 0, retain: bool = False) -> None:
        self.published.append((topic, payload))

    def admit(self, cmd: Command) -> bool:
        if cmd.retained:
            self.refused.append(cmd.topic)
        return not cmd.retained


def test_the_audit_records_a_retained_command_once_and_sees_it_cleared(tmp_path):
    from tests.conftest import EXAMPLE_LAB
    from trackerdcs.config import load_config
    from trackerdcs.safety.audit import AuditService
    from trackerdcs.safety.store import Store

    lab, path = load_config(EXAMPLE_LAB), tmp_path / "a.sqlite"
    told: list[tuple[str, str | None]] = []

    def service() -> AuditService:
        audit = AuditService(lab, Store(path), RecordingLink())
        audit.on_retained = lambda topic, payload: told.append((topic, payload))
        return audit

    audit = service()
    switch = HV[0].topic("switch", by="number")
    for _ in range(2):  # delivered, then delivered again after a reconnection
        audit.on_message(switch, b"on", retained=True)
    audit.on_message(switch, b"off")  # a live command is recorded as ever
    audit.on_message("/audit/cmd/query", b"{}", retained=True)  # its own: refused by the gate
    records, _ = audit.store.records(kind="command")
    assert [(r["topic"], r["payload"], (r["text"] or "")[:8]) for r in records] == [
        (switch, "on", "retained"), (switch, "off", ""),
        ("/audit/cmd/query", "{}", "retained"),
    ]  # fmt: skip
    assert told == [(switch, "on"), ("/audit/cmd/query", "{}")]
    assert audit.link.refused == ["/audit/cmd/query"]
    audit.store.close()

    audit = service()  # restarted: still known, not recorded again
    audit.on_message(HV[0].topic("switch", by="number"), b"on", retained=True)
    audit.on_message(HV[0].topic("switch", by="number"), b"", retained=True)  # cleared
    assert told[2:] == [(HV[0].topic("switch", by="number"), None)]
    # /audit/cmd/query was cleared while the service was away: not delivered after connecting
    audit._retained_seen = set()
    audit._sweep_retained()
    assert told[3:] == [("/audit/cmd/query", None)] and audit.store.retained_commands() == {}
    assert len(audit.store.records(kind="command")[0]) == 3
    audit.store.close()
