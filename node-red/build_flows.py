"""Build node-red/flows.json from node-red/src/ and the daemons' own command tables.

    .venv/bin/python node-red/build_flows.py          # (re)write flows.json
    .venv/bin/python node-red/build_flows.py --check  # exit 1 when flows.json is out of date

The pages' enable/disable rules are the daemons' tables (`trackerdcs.power.channel.COMMANDS`,
`trackerdcs.julabo.fsm.COMMANDS`), the command topics every service takes (the power and
chiller services' tables, the safety services' `COMMANDS`) and the status bits' meanings
(`trackerdcs.power.status.MEANINGS`), copied into the flows here, so the UI cannot drift from
them unnoticed: the tests run `--check`. Node ids are derived from names, so a rebuild is stable.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SRC = HERE / "src"
FLOWS = HERE / "flows.json"

PAGES = [  # name, path, icon, source file
    ("Overview", "/overview", "view-dashboard", "overview.vue"),
    ("Alarms", "/alarms", "alarm-light", "alarms.vue"),
    ("Power supplies", "/power", "flash", "power.vue"),
    ("Chiller", "/chiller", "snowflake", "chiller.vue"),
    ("Environment", "/environment", "thermometer", "environment.vue"),
]
CHARTS = [  # label, y-axis unit
    ("HV current per module (last 15 min)", "µA"),
    ("HV voltage per module (last 15 min)", "V"),
    ("Module temperature (last 15 min)", "°C"),
]
SUBSCRIPTIONS = ["/+/status", "/+/state", "/+/availability", "/+/response", "/+/action", "/alarms"]
TREND_PERIOD_S = 5
TICK_PERIOD_S = 1  # the model checks every source's liveness this often


def nid(name: str) -> str:
    """A stable 16-hex-digit node id."""
    return hashlib.sha1(name.encode()).hexdigest()[:16]


def rules() -> dict[str, Any]:
    """In which states each command is accepted, the command topics of every service (the
    first level under `<prefix>/cmd/`), and what each channel status bit means: from the
    daemons' own tables."""
    from trackerdcs.julabo.fsm import COMMANDS as CHILLER_STATES
    from trackerdcs.julabo.service import COMMAND_TABLE as CHILLER_TOPICS
    from trackerdcs.power.channel import COMMANDS as POWER_STATES
    from trackerdcs.power.service import COMMAND_TABLE as POWER_TOPICS
    from trackerdcs.power.status import MEANINGS
    from trackerdcs.safety.alarms import COMMANDS as ALARMS_TOPICS
    from trackerdcs.safety.audit import COMMANDS as AUDIT_TOPICS
    from trackerdcs.safety.interlock import COMMANDS as INTERLOCK_TOPICS
    from trackerdcs.safety.sequencer import COMMANDS as SEQUENCER_TOPICS

    def states(table: dict) -> dict[str, list[str]]:
        return {cmd: [str(s) for s in allowed] for cmd, allowed in sorted(table.items())}

    def topics(commands: tuple[str, ...]) -> list[str]:
        return sorted({c.split("/")[0] for c in commands})

    return {
        "power": {"states": states(POWER_STATES), "topics": sorted(POWER_TOPICS)},
        "chiller": {"states": states(CHILLER_STATES), "topics": sorted(CHILLER_TOPICS)},
        "sequencer": {"topics": topics(SEQUENCER_TOPICS)},
        "interlock": {"topics": topics(INTERLOCK_TOPICS)},
        "alarms": {"topics": topics(ALARMS_TOPICS)},
        "audit": {"topics": topics(AUDIT_TOPICS)},
        "flags": dict(MEANINGS),
    }


def _script_snippet(name: str) -> str:
    """A shared piece of a page's options object, without its comment line."""
    return (SRC / name).read_text().split("\n", 1)[1].strip()


def page_source(name: str) -> str:
    """A page's Vue component with the shared snippets put in."""
    text = (SRC / name).read_text()
    for marker, snippet in (
        ("/*@data*/", _script_snippet("data.js")),
        ("/*@lifecycle*/", _script_snippet("lifecycle.js")),
        ("/*@common*/", _script_snippet("common.js")),
        ("<!--@banner-->", (SRC / "banner.html").read_text().strip()),
        ("<!--@answers-->", (SRC / "answers.html").read_text().strip()),
        ("<!--@confirm-->", (SRC / "confirm.html").read_text().strip()),
    ):
        text = text.replace(marker, snippet)
    return text


def function_source(name: str) -> str:
    text = (SRC / name).read_text()
    return text.replace("__RULES__", json.dumps(rules(), sort_keys=True))


def dashboard() -> list[dict[str, Any]]:
    base, theme = nid("ui-base"), nid("ui-theme")
    nodes: list[dict[str, Any]] = [
        {"id": base, "type": "ui-base", "name": "trackerdcs", "path": "/dashboard",
         "appIcon": "", "includeClientData": True,
         "acceptsClientConfig": ["ui-notification", "ui-control", "ui-template"],
         "showPathInSidebar": False,
         "headerContent": "page", "navigationStyle": "default", "titleBarStyle": "default",
         "showReconnectNotification": True, "notificationDisplayTime": 1,
         "showDisconnectNotification": True, "allowInstall": False},
        {"id": theme, "type": "ui-theme", "name": "trackerdcs",
         "colors": {"surface": "#1d3557", "primary": "#0d74ce", "bgPage": "#f2f3f6",
                    "groupBg": "#ffffff", "groupOutline": "#d9d9e0"},
         "sizes": {"density": "compact", "pagePadding": "10px", "groupGap": "10px",
                   "groupBorderRadius": "6px", "widgetGap": "8px"}},
    ]  # fmt: skip
    for order, (name, path, icon, _) in enumerate(PAGES, 1):
        nodes.append(
            {"id": nid(f"page {name}"), "type": "ui-page", "name": name, "ui": base,
             "path": path, "icon": icon, "layout": "grid", "theme": theme, "order": order,
             "className": "", "visible": "true", "disabled": "false",
             "breakpoints": [{"name": "Default", "px": "0", "cols": "3"},
                             {"name": "Tablet", "px": "576", "cols": "6"},
                             {"name": "Small Desktop", "px": "768", "cols": "9"},
                             {"name": "Desktop", "px": "1024", "cols": "12"}]}
        )  # fmt: skip
    groups = [(name, name) for name, *_ in PAGES] + [("Trends", "Overview")]
    for name, page in groups:
        nodes.append(
            {"id": nid(f"group {name}"), "type": "ui-group", "name": name,
             "page": nid(f"page {page}"), "width": "12", "height": "1",
             "order": 2 if name == "Trends" else 1, "showTitle": name == "Trends",
             "className": "", "visible": "true", "disabled": "false", "groupType": "default"}
        )  # fmt: skip
    return nodes


def flow(tab: str) -> list[dict[str, Any]]:
    broker, model, out = nid("mqtt-broker"), nid("function model"), nid("mqtt out")
    trends = nid("function trends")
    templates = [nid(f"template {name}") for name, *_ in PAGES]
    charts = [nid(f"chart {label}") for label, _ in CHARTS]
    note = (
        "Generated by node-red/build_flows.py from node-red/src/ (see docs/ui.md): change the "
        "sources and rebuild. Deploying from this editor changes this run's copy only."
    )
    nodes: list[dict[str, Any]] = [
        {"id": tab, "type": "tab", "label": "Control UI", "disabled": False, "info": note},
        {"id": nid("comment"), "type": "comment", "z": tab, "name": "Generated: edit node-red/src/",
         "info": note, "x": 170, "y": 40, "wires": []},
        {"id": broker, "type": "mqtt-broker", "name": "trackerdcs broker",
         "broker": "${TRACKERDCS_MQTT_HOST}", "port": "${TRACKERDCS_MQTT_PORT}", "clientid": "",
         "autoConnect": True, "usetls": False, "protocolVersion": "4", "keepalive": "15",
         "cleansession": True, "autoUnsubscribe": True, "birthTopic": "", "birthQos": "0",
         "birthRetain": "false", "birthPayload": "", "birthMsg": {}, "closeTopic": "",
         "closeQos": "0", "closeRetain": "false", "closePayload": "", "closeMsg": {},
         "willTopic": "", "willQos": "0", "willRetain": "false", "willPayload": "",
         "willMsg": {}, "userProps": "", "sessionExpiry": ""},
    ]  # fmt: skip
    # "rap" (retain as published) off: `msg.retain` then means "the broker's stored copy", which
    # the model's liveness needs (a live status counts, a retained one does not)
    for i, topic in enumerate(SUBSCRIPTIONS):
        nodes.append(
            {"id": nid(f"mqtt in {topic}"), "type": "mqtt in", "z": tab, "name": "",
             "topic": topic, "qos": "1", "datatype": "auto-detect", "broker": broker,
             "nl": False, "rap": False, "rh": 0, "inputs": 0, "x": 150, "y": 100 + 50 * i,
             "wires": [[model]]}
        )  # fmt: skip
    nodes += [
        {"id": model, "type": "function", "z": tab, "name": "lab model",
         "func": function_source("model.js"), "outputs": 2, "timeout": 0, "noerr": 0,
         "initialize": "", "finalize": "", "libs": [], "x": 420, "y": 200,
         "outputLabels": ["snapshot to the pages", "commands to MQTT"],
         "wires": [templates, [out]]},
        {"id": out, "type": "mqtt out", "z": tab, "name": "commands", "topic": "", "qos": "1",
         "retain": "false", "respTopic": "", "contentType": "", "userProps": "", "correl": "",
         "expiry": "", "broker": broker, "x": 650, "y": 400, "wires": []},
        {"id": nid("status broker"), "type": "status", "z": tab,
         "name": "broker connection", "scope": [nid(f"mqtt in {SUBSCRIPTIONS[0]}")],
         "x": 160, "y": 380, "wires": [[model]]},
        {"id": nid("inject tick"), "type": "inject", "z": tab,
         "name": f"every {TICK_PERIOD_S} s: liveness", "props": [{"p": "topic", "vt": "str"}],
         "repeat": str(TICK_PERIOD_S), "crontab": "", "once": True, "onceDelay": "1",
         "topic": "ui/tick", "x": 160, "y": 320, "wires": [[model]]},
        {"id": nid("inject trends"), "type": "inject", "z": tab,
         "name": f"every {TREND_PERIOD_S} s", "props": [], "repeat": str(TREND_PERIOD_S),
         "crontab": "", "once": True, "onceDelay": "2", "topic": "", "x": 160, "y": 480,
         "wires": [[trends]]},
        {"id": trends, "type": "function", "z": tab, "name": "trend points",
         "func": function_source("trends.js"), "outputs": len(CHARTS), "timeout": 0, "noerr": 0,
         "initialize": "", "finalize": "", "libs": [], "x": 380, "y": 480,
         "wires": [[c] for c in charts]},
        {"id": nid("template style"), "type": "ui-template", "z": tab, "group": "", "page": "",
         "ui": nid("ui-base"), "name": "trackerdcs style", "order": 0, "width": 0, "height": 0,
         "head": "", "format": (SRC / "style.css").read_text(), "storeOutMessages": True,
         "passthru": True, "resendOnRefresh": True, "templateScope": "site:style",
         "className": "", "x": 170, "y": 620, "wires": [[]]},
    ]  # fmt: skip
    for i, ((name, _, _, source), tid) in enumerate(zip(PAGES, templates, strict=True)):
        nodes.append(
            {"id": tid, "type": "ui-template", "z": tab, "group": nid(f"group {name}"),
             "page": "", "ui": "", "name": f"{name} page", "order": 1, "width": 0, "height": 0,
             "head": "", "format": page_source(source), "storeOutMessages": True,
             "passthru": False, "resendOnRefresh": True, "templateScope": "local",
             "className": "", "x": 680, "y": 100 + 60 * i, "wires": [[model]]}
        )  # fmt: skip
    for i, ((label, unit), cid) in enumerate(zip(CHARTS, charts, strict=True)):
        nodes.append(
            {"id": cid, "type": "ui-chart", "z": tab, "group": nid("group Trends"),
             "name": label, "label": label, "order": i + 1, "chartType": "line",
             "category": "topic", "categoryType": "msg", "xAxisLabel": "", "xAxisProperty": "",
             "xAxisPropertyType": "timestamp", "xAxisType": "time", "xAxisFormat": "",
             "xAxisFormatType": "auto", "xmin": "", "xmax": "", "yAxisLabel": unit,
             "yAxisProperty": "payload", "yAxisPropertyType": "msg", "ymin": "", "ymax": "",
             "bins": 10, "action": "append", "stackSeries": False, "pointShape": "circle",
             "pointRadius": 2, "showLegend": True, "removeOlder": 15, "removeOlderUnit": "60",
             "removeOlderPoints": "", "colors": ["#0095FF", "#FF0000", "#FF7F0E", "#2CA02C",
             "#A347E1", "#D62728", "#FF9896", "#9467BD", "#C5B0D5"],
             "textColor": ["#666666"], "textColorDefault": True, "gridColor": ["#e5e5e5"],
             "gridColorDefault": True, "width": 4, "height": 5, "className": "",
             "interpolation": "linear", "x": 650, "y": 460 + 40 * i, "wires": [[]]}
        )  # fmt: skip
    return nodes


def build() -> str:
    nodes = flow(nid("tab control ui")) + dashboard()
    return json.dumps(nodes, indent=4, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="only check flows.json is current")
    args = parser.parse_args(argv)
    text = build()
    if args.check:
        if not FLOWS.exists() or FLOWS.read_text() != text:
            print(f"{FLOWS} is out of date: run {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    FLOWS.write_text(text)
    print(f"wrote {FLOWS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
