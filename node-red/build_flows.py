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
    ("History", "/history", "chart-line", "history.vue"),
]
# The History page's charts (history.js, history_reply.js): id, title, unit, what to read (the lab's
# measurements of `source`, TRACKERDCS_UI_LAB `history`), its fields (aggregate per interval,
# label), and the tags that make a series.
HISTORY_CHARTS = [
    ("hv_voltage", "HV voltage", "V", "hv", [("vmon", "mean", "")], ["name", "module"]),
    ("hv_current", "HV current (highest per interval)", "µA", "hv", [("imon", "max", "")],
     ["name", "module"]),
    ("lv_voltage", "LV voltage", "V", "lv", [("vmon", "mean", "")], ["name", "module"]),
    ("lv_current", "LV current", "A", "lv", [("imon", "mean", "")], ["name", "module"]),
    ("temperature", "Temperature: room and modules", "°C", "sensor", [("temperature", "mean", "")],
     ["name"]),
    ("humidity", "Relative humidity", "%", "sensor", [("humidity", "mean", "")], ["name"]),
    ("dewpoint", "Dew point", "°C", "sensor", [("dewpoint", "mean", "")], ["name"]),
    ("bath", "Chiller bath and set point", "°C", "chiller",
     [("bath_temp", "mean", "bath"), ("setpoint", "mean", "set point")], ["chiller"]),
]  # fmt: skip
EXPORT_PATH = "/export/history.csv"  # the History page's "Export CSV" (export.js)
EXPORT_TIMEOUT_S = 120
SUBSCRIPTIONS = ["/+/status", "/+/state", "/+/availability", "/+/response", "/+/action", "/alarms"]
TICK_PERIOD_S = 1  # the model checks every source's liveness this often


def nid(name: str) -> str:
    """A stable 16-hex-digit node id."""
    return hashlib.sha1(name.encode()).hexdigest()[:16]


def rules() -> dict[str, Any]:
    """In which states each command is accepted, the command topics of every service (the
    first level under `<prefix>/cmd/`), and what each channel status bit means: from the
    daemons' own tables."""
    from trackerdcs.ivscan.service import COMMANDS as IVSCAN_TOPICS
    from trackerdcs.julabo.fsm import COMMANDS as CHILLER_STATES
    from trackerdcs.julabo.service import COMMAND_TABLE as CHILLER_TOPICS
    from trackerdcs.power.channel import COMMANDS as POWER_STATES
    from trackerdcs.power.service import COMMAND_TABLE as POWER_TOPICS
    from trackerdcs.power.status import MEANINGS
    from trackerdcs.recipe.service import COMMANDS as RECIPE_TOPICS
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
        # the dcs daemon: module sequences, IV scans and recipes (the Module tests page)
        "sequencer": {"topics": topics(SEQUENCER_TOPICS + IVSCAN_TOPICS + RECIPE_TOPICS)},
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


def history_charts() -> list[dict[str, Any]]:
    return [
        {"id": cid, "title": title, "unit": unit, "source": source, "by": by,
         "fields": [{"field": f, "agg": agg, "label": label} for f, agg, label in fields]}
        for cid, title, unit, source, fields, by in HISTORY_CHARTS
    ]  # fmt: skip


def grafana_dashboards() -> list[dict[str, str]]:
    """The provisioned Grafana dashboards (grafana/dashboards/*.json): uid and a short title."""
    out = []
    for path in sorted((HERE.parent / "grafana" / "dashboards").glob("*.json")):
        board = json.loads(path.read_text())
        title = board["title"].removeprefix("trackerdcs: ").replace(" $module", "")
        out.append({"uid": board["uid"], "title": title})
    return out


def function_source(name: str) -> str:
    text = (SRC / name).read_text()
    for marker, value in (
        ("__RULES__", rules()),
        ("__CHARTS__", history_charts()),
        ("__GRAFANA__", grafana_dashboards()),
    ):
        text = text.replace(marker, json.dumps(value, sort_keys=True, ensure_ascii=False))
    return text


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
    for name, *_ in PAGES:
        nodes.append(
            {"id": nid(f"group {name}"), "type": "ui-group", "name": name,
             "page": nid(f"page {name}"), "width": "12", "height": "1", "order": 1,
             "showTitle": False, "className": "", "visible": "true", "disabled": "false",
             "groupType": "default"}
        )  # fmt: skip
    return nodes


def flow(tab: str) -> list[dict[str, Any]]:
    broker, model, out = nid("mqtt-broker"), nid("function model"), nid("mqtt out")
    access, history = nid("function access"), nid("function history")
    influx, history_reply = nid("http influx"), nid("function history reply")
    templates = [nid(f"template {name}") for name, *_ in PAGES]
    history_page = nid("template History")
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
        {"id": access, "type": "function", "z": tab, "name": "access: who may command",
         "func": function_source("access.js"), "outputs": 2, "timeout": 0, "noerr": 0,
         "initialize": "", "finalize": "", "libs": [], "x": 900, "y": 200,
         "outputLabels": ["allowed: to the flows", "refused: to the lab model (an answer)"],
         "wires": [[model, history], [model]]},
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
        {"id": history, "type": "function", "z": tab, "name": "history: InfluxQL query",
         "func": function_source("history.js"), "outputs": 2, "timeout": 0, "noerr": 0,
         "initialize": "", "finalize": "", "libs": [], "x": 400, "y": 480,
         "outputLabels": ["to InfluxDB", "to the asking page"],
         "wires": [[influx], [history_page]]},
        {"id": influx, "type": "http request", "z": tab, "name": "InfluxDB /query (read-only)",
         "method": "use", "ret": "obj", "paytoqs": "ignore", "url": "", "tls": "",
         "persist": False, "proxy": "", "insecureHTTPParser": False, "authType": "",
         "senderr": False, "headers": [], "x": 640, "y": 480, "wires": [[history_reply]]},
        {"id": history_reply, "type": "function", "z": tab, "name": "history: charts",
         "func": function_source("history_reply.js"), "outputs": 1, "timeout": 0, "noerr": 0,
         "initialize": "", "finalize": "", "libs": [], "x": 880, "y": 480,
         "wires": [[history_page]]},
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
             "className": "", "x": 680, "y": 100 + 60 * i, "wires": [[access]]}
        )  # fmt: skip
    return nodes + export_flow(tab)


def export_flow(tab: str) -> list[dict[str, Any]]:
    """GET EXPORT_PATH -> `trackerdcs export lab` for the range -> the CSV (export.js)."""
    http_in, check, run = nid("http in export"), nid("function export"), nid("exec export")
    reply, respond = nid("function export reply"), nid("http response export")
    return [
        {"id": http_in, "type": "http in", "z": tab, "name": "History: Export CSV",
         "url": EXPORT_PATH, "method": "get", "upload": False, "swaggerDoc": "", "x": 170,
         "y": 560, "wires": [[check]]},
        {"id": check, "type": "function", "z": tab, "name": "export: the range",
         "func": function_source("export.js"), "outputs": 2, "timeout": 0, "noerr": 0,
         "initialize": "", "finalize": "", "libs": [], "x": 400, "y": 560,
         "outputLabels": ["to trackerdcs export", "refused"], "wires": [[run], [respond]]},
        {"id": run, "type": "exec", "z": tab, "name": "trackerdcs export",
         "command": "${TRACKERDCS_UI_EXPORT}", "addpay": "payload", "append": "",
         "useSpawn": "false", "timer": str(EXPORT_TIMEOUT_S), "winHide": False, "oldrc": False,
         "x": 620, "y": 560, "wires": [[reply], [], []]},
        {"id": reply, "type": "function", "z": tab, "name": "export: the CSV",
         "func": function_source("export_reply.js"), "outputs": 1, "timeout": 0, "noerr": 0,
         "initialize": "", "finalize": "", "libs": [], "x": 840, "y": 560, "wires": [[respond]]},
        {"id": respond, "type": "http response", "z": tab, "name": "", "statusCode": "",
         "headers": {}, "x": 1040, "y": 560, "wires": []},
    ]  # fmt: skip


# -- the Module tests page: IV scans and recipes (its own tab; the page is one of PAGES) --------
PAGES.append(("Module tests", "/moduletests", "test-tube", "moduletests.vue"))
MODULE_TESTS_SUBSCRIPTIONS = ["/dcs/ivscan/status", "/dcs/ivscan/points", "/dcs/ivscan/results",
                              "/dcs/recipe/status"]  # fmt: skip
MODULE_TESTS_TICK_S = 5  # the page's data resent this often (and at once after a change)
SCAN_FILES_PATH = "/moduletests/files"  # GET .../<module>/<scan id>.csv|png: scanfiles.js


def module_tests_flow(tab: str, nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The Module tests tab: its MQTT subscriptions and model (moduletests.js) feeding the Module
    tests page, and the HTTP route serving the scans' files (scanfiles.js). The page's commands
    go through the lab model like every page's; its refresh requests also come here (the page
    template, in `nodes`, is wired to this tab's model too)."""
    tests, files = nid("function module tests"), nid("function scan files")
    read, respond = nid("file in scan file"), nid("http response scan file")
    page = nid("template Module tests")
    for node in nodes:
        if node["id"] == page:
            node["wires"] = [[*node["wires"][0], tests]]
    note = "The Module tests page's data (IV scans, recipes) and its scans' files: see docs/ui.md."
    source = (SRC / "moduletests.js").read_text().replace("__FILES_PATH__",
                                                          json.dumps(SCAN_FILES_PATH))  # fmt: skip
    out: list[dict[str, Any]] = [
        {"id": tab, "type": "tab", "label": "Module tests", "disabled": False, "info": note},
        {"id": tests, "type": "function", "z": tab, "name": "module tests", "func": source,
         "outputs": 1, "timeout": 0, "noerr": 0, "initialize": "", "finalize": "", "libs": [],
         "x": 440, "y": 160, "wires": [[page]]},
        {"id": nid("inject module tests tick"), "type": "inject", "z": tab,
         "name": f"every {MODULE_TESTS_TICK_S} s", "props": [{"p": "topic", "vt": "str"}],
         "repeat": str(MODULE_TESTS_TICK_S), "crontab": "", "once": True, "onceDelay": "1",
         "topic": "moduletests/tick", "x": 170, "y": 320, "wires": [[tests]]},
        {"id": nid("http in scan file"), "type": "http in", "z": tab, "name": "",
         "url": SCAN_FILES_PATH + "/:module/:file", "method": "get", "upload": False,
         "swaggerDoc": "", "x": 190, "y": 420, "wires": [[files]]},
        {"id": files, "type": "function", "z": tab, "name": "scan file: checked",
         "func": (SRC / "scanfiles.js").read_text(), "outputs": 2, "timeout": 0, "noerr": 0,
         "initialize": "", "finalize": "", "libs": [], "x": 440, "y": 420,
         "outputLabels": ["to read", "refused: 404"], "wires": [[read], [respond]]},
        {"id": read, "type": "file in", "z": tab, "name": "read the file", "filename": "filename",
         "filenameType": "msg", "format": "", "chunk": False, "sendError": False,
         "encoding": "none", "allProps": False, "x": 660, "y": 400, "wires": [[respond]]},
        {"id": nid("catch scan file"), "type": "catch", "z": tab, "name": "file missing",
         "scope": [read], "uncaught": False, "x": 660, "y": 460,
         "wires": [[nid("change scan file 404")]]},
        {"id": nid("change scan file 404"), "type": "change", "z": tab, "name": "404",
         "rules": [{"t": "set", "p": "statusCode", "pt": "msg", "to": "404", "tot": "num"},
                   {"t": "set", "p": "payload", "pt": "msg", "to": "no such IV scan file",
                    "tot": "str"},
                   {"t": "set", "p": "headers", "pt": "msg",
                    "to": '{"Content-Type": "text/plain; charset=utf-8"}', "tot": "json"}],
         "x": 850, "y": 460, "wires": [[respond]]},
        {"id": respond, "type": "http response", "z": tab, "name": "", "statusCode": "",
         "headers": {}, "x": 880, "y": 400, "wires": []},
    ]  # fmt: skip
    for i, topic in enumerate(MODULE_TESTS_SUBSCRIPTIONS):
        out.append(
            {"id": nid(f"mqtt in {topic}"), "type": "mqtt in", "z": tab, "name": "",
             "topic": topic, "qos": "1", "datatype": "auto-detect", "broker": nid("mqtt-broker"),
             "nl": False, "rap": False, "rh": 0, "inputs": 0, "x": 170, "y": 100 + 50 * i,
             "wires": [[tests]]}
        )  # fmt: skip
    return out


def build() -> str:
    nodes = flow(nid("tab control ui")) + dashboard()
    nodes += module_tests_flow(nid("tab module tests"), nodes)
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
