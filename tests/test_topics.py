"""trackerdcs/topics.py: the topics it builds, and every topic each service of the example lab
uses, byte for byte as before the topics were built in one place (in-process, no broker)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any
from unittest import mock

from hypothesis import given
from hypothesis import strategies as st

from tests.inprocess import RecordingLink, example_lab, settle
from trackerdcs.topics import (
    EVERY_SERVICE,
    ServiceTopics,
    is_command,
    prefix_of,
    split_command,
)


def test_a_prefix_gives_the_vocabulary_of_docs_topics_md() -> None:
    hv = ServiceTopics("/hv")
    assert (hv.status, hv.state, hv.availability, hv.response, hv.action, hv.supervision) == (
        "/hv/status", "/hv/state", "/hv/availability", "/hv/response", "/hv/action",
        "/hv/supervision",
    )  # fmt: skip
    assert (hv.command_root, hv.commands) == ("/hv/cmd/", "/hv/cmd/#")
    assert hv.command("setv", 3) == "/hv/cmd/setv/3" == hv.command("setv/3")
    assert hv.command("setv/{ch}") == "/hv/cmd/setv/{ch}"
    assert hv.command("clear") == "/hv/cmd/clear"
    assert ServiceTopics("/dcs").below("ivscan").leaf("points") == "/dcs/ivscan/points"
    assert ServiceTopics("/dcs").below("+").action == "/dcs/+/action"
    assert (EVERY_SERVICE.availability, EVERY_SERVICE.commands) == ("/+/availability", "/+/cmd/#")
    assert prefix_of("/interlock/status") == "/interlock"


LEVEL = st.text(st.characters(codec="utf-8", exclude_characters="/+#\x00"), min_size=1)


@given(LEVEL, LEVEL, st.none() | LEVEL | st.integers())
def test_a_command_topic_splits_back_into_prefix_and_action(name, command, argument) -> None:
    topics = ServiceTopics(f"/{name}")
    topic = topics.command(command, argument)
    action = command if argument is None else f"{command}/{argument}"
    assert is_command(topic) and split_command(topic) == (f"/{name}", action)
    assert not is_command(topics.status) and split_command(topics.status) == (topics.status, "")


# -- every topic of the example lab, as each service builds it ----------------------------------
class _Client:
    """paho's client as `MqttLink._handle_connect` uses it: records subscriptions, publishes."""

    def __init__(self) -> None:
        self.topics: list[str] = []

    def subscribe(self, topics: list[tuple[str, Any]]) -> None:
        self.topics += [t for t, _ in topics]

    def publish(self, topic: str, *args: Any, **kwargs: Any) -> None:
        self.topics.append(topic)


class _Accepted:
    is_failure = False


def lab_topics() -> dict[str, list[str]]:
    """What each service of the example lab subscribes to, publishes and names in its answers
    (by its own code: links, subscriptions, status publishers, command senders, help texts)."""
    from tests.test_parsers_total import Services
    from trackerdcs import client
    from trackerdcs.ingest import export
    from trackerdcs.ivscan import service as ivscan
    from trackerdcs.mqtt import MqttLink
    from trackerdcs.recipe import service as recipe
    from trackerdcs.safety import alarms, audit, interlock, sequencer, supervision
    from trackerdcs.safety.world import World

    lab = example_lab()
    out: dict[str, list[str]] = {}
    sensors = [s.prefix for s in lab.sensors]
    for prefix in ("/hv", "/lv", "/julabo", *sensors, "/interlock", "/alarms", "/audit", "/dcs"):
        link = MqttLink(lab.mqtt, prefix, "test", on_command=lambda c: None, subscribe=("/x",))
        paho = _Client()
        link._handle_connect(paho, None, None, _Accepted(), None)
        out[f"link {prefix}"] = [link.availability_topic, link.response_topic, *paho.topics]
    out["interlock subscriptions"] = list(interlock.subscriptions(lab))
    out["interlock prefix"] = [interlock.interlock_prefix(lab)]
    out["alarms subscriptions"] = list(alarms.AlarmService.subscriptions(lab))
    routes = alarms.alarm_routes(lab)
    out["alarm routes"] = list(routes)
    out["alarm route sources"] = [prefix for _, prefix in routes.values()]
    out["audit subscriptions"] = list(audit.AuditService.subscriptions())
    out["audit"] = [audit.AUDIT_PREFIX, audit.LOG_TOPIC]
    out["sequencer subscriptions"] = list(sequencer.SequencerService.subscriptions(lab))
    out["supervision"] = [supervision.supervision_topic("/interlock")]
    out["world"] = World(lab).topics()
    out["ivscan"] = [ivscan.STATUS_TOPIC, ivscan.POINTS_TOPIC, ivscan.ACTION_TOPIC,
                     ivscan.RESULTS_TOPIC]  # fmt: skip
    out["recipe"] = [recipe.STATUS_TOPIC, recipe.ACTION_TOPIC]
    out["client"] = client.Lab(lab).topics()
    with mock.patch.object(export, "measurement_for", lambda conf, topic, tags: topic):
        out["export"] = [t for ts in export.lab_measurements(lab, None).values() for t in ts]
        out["export chiller"] = [export.selections(lab, None, "chiller", None)[0].measurement]
    with tempfile.TemporaryDirectory() as tmp:
        services = Services(Path(tmp))
        try:
            out.update(_service_topics(services))
            loop = services.loop
            dcs = RecordingLink(lab, "/dcs")
            scans = ivscan.IvScanService(lab, dcs, loop, Path(tmp))
            runs = recipe.RecipeService(lab, dcs, loop, Path(tmp), Path(tmp))
            for name, handler in (
                ("ivscan", scans.handle_command),
                ("recipe", runs.handle_command),
            ):
                out[f"unknown {name}"] = _answers(services, dcs, handler, "nosuch")
        finally:
            services.close()
    return out


def _answers(services: Any, link: RecordingLink, handler: Any, action: str) -> list[str]:
    from tests.inprocess import command, submit

    link.sent.clear()
    submit(link, handler, command(link.prefix, action, "1"))
    settle(services.loop)
    return [a["error"] for a in link.answers()]


def _service_topics(services: Any) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for prefix, (link, handler) in services.handlers.items():
        out[f"unknown {prefix}"] = [a["error"] for a in services.run(prefix, "nosuch", "1")]
        service = handler.__self__
        link.sent.clear()
        for name in ("publish_status", "publish", "_publish_status"):
            if hasattr(service, name) and prefix != "/audit":
                getattr(service, name)()
                break
        settle(services.loop)
        out[f"published {prefix}"] = sorted({t for t, _ in link.sent})
        if hasattr(service, "topic"):
            out[f"topic {prefix}"] = [service.topic]
    for prefix, action in (("/hv", "setv"), ("/hv", "setv/1/2"), ("/alarms", "ack")):
        out[f"malformed {prefix} {action}"] = [
            a["error"] for a in services.run(prefix, action, "1")
        ]
    link, handler = services.handlers["/interlock"]
    interlocks = handler.__self__
    link.sent.clear()
    for state in interlocks.states:
        if state.rule.chiller_setpoint is not None:
            interlocks._raise_setpoint(state, 0.0)
        interlocks._switch_off(state, "M1", 0.0)
    out["interlock sends"] = sorted({t for t, _ in link.sent})
    out["interlock action"] = [interlocks.action_topic]
    return out


# every topic of the example lab as each service built it before trackerdcs/topics.py (strings
# separated by spaces, in the order the service gives them)
TODAYS_TOPICS = {
    "link /hv": "/hv/availability /hv/response /hv/cmd/# /x /hv/availability",
    "link /lv": "/lv/availability /lv/response /lv/cmd/# /x /lv/availability",
    "link /julabo": "/julabo/availability /julabo/response /julabo/cmd/# /x /julabo/availability",
    "link /sensor_1": (
        "/sensor_1/availability /sensor_1/response /sensor_1/cmd/# /x /sensor_1/availability"
    ),
    "link /temp_m1": (
        "/temp_m1/availability /temp_m1/response /temp_m1/cmd/# /x /temp_m1/availability"
    ),
    "link /temp_m2": (
        "/temp_m2/availability /temp_m2/response /temp_m2/cmd/# /x /temp_m2/availability"
    ),
    "link /temp_m3": (
        "/temp_m3/availability /temp_m3/response /temp_m3/cmd/# /x /temp_m3/availability"
    ),
    "link /temp_m4": (
        "/temp_m4/availability /temp_m4/response /temp_m4/cmd/# /x /temp_m4/availability"
    ),
    "link /interlock": (
        "/interlock/availability /interlock/response /interlock/cmd/# /x /interlock/availability"
    ),
    "link /alarms": "/alarms/availability /alarms/response /alarms/cmd/# /x /alarms/availability",
    "link /audit": "/audit/availability /audit/response /audit/cmd/# /x /audit/availability",
    "link /dcs": "/dcs/availability /dcs/response /dcs/cmd/# /x /dcs/availability",
    "interlock subscriptions": (
        "/hv/status /hv/availability /lv/status /lv/availability /julabo/status "
        "/julabo/availability /sensor_1/status /sensor_1/availability /temp_m1/status "
        "/temp_m1/availability /temp_m2/status /temp_m2/availability /temp_m3/status "
        "/temp_m3/availability /temp_m4/status /temp_m4/availability /interlock/status "
        "/hv/response /julabo/response /lv/response"
    ),
    "interlock prefix": "/interlock",
    "alarms subscriptions": (
        "/hv/status /hv/state /lv/status /lv/state /julabo/status /sensor_1/status "
        "/temp_m1/status /temp_m2/status /temp_m3/status /temp_m4/status /interlock/status "
        "/dcs/status /+/availability"
    ),
    "alarm routes": (
        "/hv/status /hv/state /lv/status /lv/state /julabo/status /sensor_1/status "
        "/temp_m1/status /temp_m2/status /temp_m3/status /temp_m4/status /interlock/status"
    ),
    "alarm route sources": (
        "/hv /hv /lv /lv /julabo /sensor_1 /temp_m1 /temp_m2 /temp_m3 /temp_m4 /interlock"
    ),
    "audit subscriptions": "/+/cmd/# /+/response /+/action /dcs/+/action",
    "audit": "/audit /dcs/log",
    "sequencer subscriptions": "/hv/status /hv/response /lv/status /lv/response",
    "supervision": "/interlock/supervision",
    "world": (
        "/hv/status /hv/availability /lv/status /lv/availability /julabo/status "
        "/julabo/availability /sensor_1/status /sensor_1/availability /temp_m1/status "
        "/temp_m1/availability /temp_m2/status /temp_m2/availability /temp_m3/status "
        "/temp_m3/availability /temp_m4/status /temp_m4/availability"
    ),
    "ivscan": "/dcs/ivscan/status /dcs/ivscan/points /dcs/ivscan/action /dcs/ivscan/results",
    "recipe": "/dcs/recipe/status /dcs/recipe/action",
    "client": (
        "/hv/status /hv/response /hv/availability /lv/status /lv/response /lv/availability "
        "/julabo/status /julabo/response /julabo/availability "
        "/sensor_1/status /temp_m1/status /temp_m2/status /temp_m3/status /temp_m4/status "
        "/dcs/status /dcs/response /dcs/availability /dcs/ivscan/status /dcs/recipe/status "
        "/interlock/status"
    ),
    "export": (
        "/hv/status /lv/status /sensor_1/status /temp_m1/status /temp_m2/status "
        "/temp_m3/status /temp_m4/status /julabo/status"
    ),
    "export chiller": "/julabo/status",
    "published /hv": "/hv/state /hv/status",
    "published /lv": "/lv/state /lv/status",
    "published /julabo": "/julabo/status",
    "published /sensor_1": "/sensor_1/status",
    "topic /sensor_1": "/sensor_1/status",
    "published /interlock": "/interlock/status",
    "published /alarms": "/alarms",
    "published /audit": "",
    "published /dcs": "/dcs/status",
    "interlock sends": "/hv/cmd/kill/M1 /hv/cmd/switch/M1 /julabo/cmd/setpoint",
    "interlock action": "/interlock/action",
}
# what the services' answers say about their command topics
TODAYS_ANSWERS = {
    "unknown /hv": (
        "unknown command 'nosuch' (known: setv/{ch}, seti/{ch}, switch/{ch}, kill/{ch}, "
        "clear, refresh, reconnect)"
    ),
    "unknown /lv": (
        "unknown command 'nosuch' (known: setv/{ch}, seti/{ch}, switch/{ch}, kill/{ch}, "
        "clear, refresh, reconnect)"
    ),
    "unknown /julabo": (
        "unknown command 'nosuch' (known: /julabo/cmd/setpoint, /julabo/cmd/switch, "
        "/julabo/cmd/refresh, /julabo/cmd/reconnect)"
    ),
    "unknown /sensor_1": "unknown command 'nosuch' (known: /sensor_1/cmd/refresh)",
    "unknown /interlock": (
        "unknown command 'nosuch' (known: /interlock/cmd/refresh, /interlock/cmd/reset/{rule})"
    ),
    "unknown /alarms": (
        "unknown command 'nosuch' (known: /alarms/cmd/ack/{id}, /alarms/cmd/ack/all)"
    ),
    "unknown /audit": "unknown command 'nosuch' (known: /audit/cmd/query)",
    "unknown /dcs": "unknown command 'nosuch' (known: /dcs/cmd/module/{name} with on or off)",
    "malformed /hv setv": "malformed command topic '/hv/cmd/setv': use /hv/cmd/setv/{ch}",
    "malformed /hv setv/1/2": "malformed command topic '/hv/cmd/setv/1/2': use /hv/cmd/setv/{ch}",
    "malformed /alarms ack": (
        "unknown command 'ack' (known: /alarms/cmd/ack/{id}, /alarms/cmd/ack/all)"
    ),
    "unknown ivscan": (
        "unknown command 'nosuch' (known: /dcs/cmd/ivscan/{module} with parameters or stop)"
    ),
    "unknown recipe": (
        "unknown command 'nosuch' (known: /dcs/cmd/recipe/start, /dcs/cmd/recipe/pause, "
        "/dcs/cmd/recipe/resume, /dcs/cmd/recipe/abort)"
    ),
}


def test_every_topic_of_the_example_lab_is_byte_identical_to_todays() -> None:
    found = lab_topics()
    expected = {key: value.split() for key, value in TODAYS_TOPICS.items()}
    expected |= {key: [text] for key, text in TODAYS_ANSWERS.items()}
    assert found.keys() == expected.keys()
    for key, topics in expected.items():
        assert found[key] == topics, key
