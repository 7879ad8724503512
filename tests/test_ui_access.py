"""The control UI's login, roles and history, for real: Node-RED with the repo's flows and the
dashboard's login on (as beyond loopback), Mosquitto, the simulated crate and power daemon, the
alarm and audit service, and InfluxDB with authentication on, driven through Debian's Chromium by
Playwright and by plain HTTP and Socket.IO requests.

- Without a login every dashboard route, its Socket.IO connection and the CSV export refuse;
  wrong passwords are refused; the login is required beyond loopback (settings.js refuses
  `off` there).
- A viewer sees the lab, but every command is refused by the flows (sent straight from the page,
  past its greyed-out controls, even with a forged user): nothing reaches MQTT.
- An operator commands; the command id, the answers and the audit log carry the login's name,
  whatever the page claims. The editor takes admins only. Logging out ends the session.
- The History page reads InfluxDB (as the read-only user `nodered`) for 1 h / 8 h / 24 h and a
  custom range, showing points written hours back; "Export CSV" gives exactly what
  `trackerdcs export lab` gives for the range shown.

Screenshots: docs/screenshots/login.png, viewer.png, history.png, phone-history.png.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright

from tests.conftest import ROOT, Broker, PowerLab, python_process, serving
from tests.labdata import EXAMPLE
from tests.noderedapi import LOGIN, api, request
from tests.test_nodered import CHROMIUM, CHROMIUM_ARGS, DESKTOP, PHONE, SCREENSHOTS, WAIT
from trackerdcs.config import InfluxConfig, load_config
from trackerdcs.deploy import influx_setup
from trackerdcs.ingest.influxdb import InfluxClient, InfluxError
from trackerdcs.stack.influx import influxd_process
from trackerdcs.stack.nodered import FLOWS, NODE_RED_DIR, NodeRed, node_binary
from trackerdcs.stack.process import free_port, wait_until

HV, LV = EXAMPLE.channels("hv"), EXAMPLE.channels("lv")  # the lab below starts from it
HV0, LV0 = (f"{c.name} ({c.module})" for c in (HV[0], LV[0]))  # as the charts name them

pytestmark = pytest.mark.skipif(
    not (NODE_RED_DIR / "node_modules" / "node-red").exists() or not Path(CHROMIUM).exists(),
    reason="needs Node-RED (npm install in node-red/) and Debian's chromium: scripts/setup.sh",
)

GRAFANA_DASHBOARDS = ROOT / "grafana" / "dashboards"
PASSWORD = {"olivia": secrets.token_urlsafe(12), "victor": secrets.token_urlsafe(12)}
USERS = [("olivia", "operator", PASSWORD["olivia"]), ("victor", "viewer", PASSWORD["victor"])]
ADMIN_ENV = ("UIACCESS_INFLUX_USER", "UIACCESS_INFLUX_PASSWORD")  # the lab YAML's InfluxDB admin
GRAFANA = "http://127.0.0.1:3000"


class AccessLab:
    """Broker, crate and power daemon, alarm and audit service, InfluxDB with authentication,
    and Node-RED with the dashboard's login on, two users (an operator, a viewer) and its admin."""

    def __init__(self, workdir: Path, broker: Broker) -> None:
        influx_port, rpc_port = free_port(), free_port()
        self.influx_cfg = InfluxConfig(
            port=influx_port, rpc_port=rpc_port, username_env=ADMIN_ENV[0],
            password_env=ADMIN_ENV[1],
        )  # fmt: skip
        self.influxd = influxd_process(workdir, "127.0.0.1", influx_port, rpc_port)
        self.influxd.env = {"INFLUXDB_HTTP_AUTH_ENABLED": "true"}
        overrides = {"influx": self.influx_cfg.model_dump(mode="json"),
                     "alarms.db": str(workdir / "uiaccess-alarms.sqlite")}  # fmt: skip
        self.power = PowerLab(workdir, broker, "uiaccess", **overrides)
        self.alarms = python_process(
            "alarms", "trackerdcs.safety.alarms_daemon", ["--config", str(self.power.config)],
            workdir / "uiaccess-alarms.log", ready=serving("serving alarms"),
        )  # fmt: skip
        self.ui = NodeRed(load_config(self.power.config), workdir / "uiaccess-ui", port=free_port(),
                          login=True, users=USERS, config_path=self.power.config,
                          grafana_url=GRAFANA)  # fmt: skip
        self.admin_db: InfluxClient | None = None
        self.health_token = workdir / "uiaccess-health-token"  # the container's healthcheck

    def start(self) -> AccessLab:
        os.environ[ADMIN_ENV[0]] = "admin"
        os.environ[ADMIN_ENV[1]] = secrets.token_hex(12)
        self.influxd.start()
        influx_setup(self.influx_cfg, [], say=lambda _: None)  # the admin, database, policies
        self.admin_db = InfluxClient(self.influx_cfg.url, username="admin",
                                     password=os.environ[ADMIN_ENV[1]])  # fmt: skip
        self.power.start()
        self.alarms.start()
        self.node_red = self.ui.process()  # creates the read-only user `nodered`
        self.node_red.env["TRACKERDCS_UI_HEALTH_TOKEN_FILE"] = str(self.health_token)
        self.node_red.start()
        return self

    def stop(self) -> None:
        for proc in (getattr(self, "node_red", None), self.alarms):
            if proc is not None:
                proc.stop()
        self.power.stop()
        self.influxd.stop()
        for name in ADMIN_ENV:
            os.environ.pop(name, None)

    @property
    def client(self):
        return self.power.client

    def url(self, path: str = "") -> str:
        return self.ui.url + path.lstrip("/")

    def audit(self, **query: Any) -> list[dict]:
        answer = self.power.command("/audit/cmd/query", query)
        assert answer["ok"], answer
        return answer["records"]


@pytest.fixture(scope="module")
def broker(workdir) -> Iterator[Broker]:
    b = Broker(workdir).start()
    yield b
    b.stop()


@pytest.fixture(scope="module")
def lab(workdir, broker) -> Iterator[AccessLab]:
    lab = AccessLab(workdir, broker)
    try:
        yield lab.start()
    finally:
        lab.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def log_in(page: Page, user: str, password: str) -> None:
    """Fill the login form the dashboard sent this page to."""
    expect(page.get_by_test_id("login-form")).to_be_visible(timeout=WAIT)
    page.locator("#username").fill(user)
    page.locator("#password").fill(password)
    page.get_by_test_id("login-submit").click()


def session(
    browser: Browser, lab: AccessLab, user: str, page_name: str = "overview",
    viewport: dict = DESKTOP, **kw: Any,
) -> tuple[BrowserContext, Page, list[str]]:  # fmt: skip
    """A new browser, logged in as `user`, on the dashboard page `page_name`."""
    context = browser.new_context(viewport=viewport, accept_downloads=True, **kw)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(lab.ui.dashboard_url + page_name)
    log_in(page, user, PASSWORD.get(user) or lab.ui.password)
    expect(page.get_by_test_id(f"{page_name}-page")).to_be_visible(timeout=WAIT)
    expect(page.get_by_test_id("loading")).to_have_count(0, timeout=WAIT)
    expect(page.get_by_test_id("user-name")).to_have_text(user)
    return context, page, errors


@pytest.fixture
def viewer(browser: Browser, lab: AccessLab) -> Iterator[Page]:
    context, page, errors = session(browser, lab, "victor")
    yield page
    context.close()
    assert not errors, errors


@pytest.fixture
def operator(browser: Browser, lab: AccessLab) -> Iterator[Page]:
    context, page, errors = session(browser, lab, "olivia", "power")
    yield page
    context.close()
    assert not errors, errors


class DashboardSocket:
    """The dashboard's Socket.IO, spoken here over engine.io v4 HTTP polling with a browser's
    session cookie: what any script could send, with no page in between."""

    PATH = "dashboard/socket.io/?EIO=4&transport=polling"

    def __init__(self, base: str, cookie: str | None = None) -> None:
        self.base, self.cookie = base, cookie
        self.sid = json.loads(self._call(self.PATH)[1:])["sid"]
        self._call(f"{self.PATH}&sid={self.sid}", b"40")  # CONNECT to the namespace
        self.connected = self._call(f"{self.PATH}&sid={self.sid}")  # 40... or 44 (refused)

    def _call(self, url: str, data: bytes | None = None) -> str:
        req = urllib.request.Request(self.base + url, data=data)
        if self.cookie:
            req.add_header("Cookie", self.cookie)
        with urllib.request.urlopen(req, timeout=10) as reply:
            return reply.read().decode()

    def send(self, page: str, msg: dict) -> None:
        """`msg` as the ui-template of `page` sends it (its `widget-send` event)."""
        event = ["widget-send", template_id(page), msg]
        packet = ("42" + json.dumps(event)).encode()  # EVENT
        assert self._call(f"{self.PATH}&sid={self.sid}", packet) == "ok"


def template_id(page: str) -> str:
    flows = json.loads(FLOWS.read_text())
    return next(n["id"] for n in flows if n.get("name") == f"{page} page")


def socketio_connect(base: str, cookie: str | None = None) -> str:
    """The dashboard's answer to a Socket.IO CONNECT: `40...` connected, `44...` refused."""
    return DashboardSocket(base, cookie).connected


def cookie_of(page: Page) -> str:
    return "; ".join(f"{c['name']}={c['value']}" for c in page.context.cookies())


def screenshot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


# -- the login itself ---------------------------------------------------------------------------


def login_config(env: dict[str, str], host: str) -> dict[str, Any]:
    """node-red/login's configure() (what settings.js runs) in Node.js: {login, users} or
    {error}."""
    script = (
        "const l = require(process.argv[1]); try { const r = l.configure("
        "JSON.parse(process.argv[2]), process.argv[3]); console.log(JSON.stringify({login: "
        "r.login, users: [...r.users.values()].map(u => [u.name, u.role])})) } catch (e) { "
        "console.log(JSON.stringify({error: e.message})) }"
    )
    module = str(NODE_RED_DIR / "login" / "index.js")
    done = subprocess.run(
        [node_binary(), "-e", script, module, json.dumps(env), host],
        capture_output=True, text=True, timeout=30, check=True, cwd=NODE_RED_DIR,
    )  # fmt: skip
    return json.loads(done.stdout)


HASH = "$2b$10$" + "a" * 53


@pytest.mark.parametrize(
    ("env", "host", "expected"),
    [
        ({}, "127.0.0.1", {"login": False}),  # the local stack: open on loopback
        ({}, "0.0.0.0", {"login": True}),  # beyond loopback: always a login
        ({}, "192.0.2.7", {"login": True}),
        ({"TRACKERDCS_UI_LOGIN": "on"}, "127.0.0.1", {"login": True}),
        ({"TRACKERDCS_UI_LOGIN": "off"}, "0.0.0.0",
         {"error": "TRACKERDCS_UI_LOGIN=off while listening on 0.0.0.0"}),
        ({"TRACKERDCS_UI_LOGIN": "maybe"}, "127.0.0.1", {"error": "on, off, or unset"}),
        ({"TRACKERDCS_UI_USERS": f"bob:boss:{HASH}"}, "0.0.0.0",
         {"error": 'entry 1 (bob): unknown role "boss"'}),
        ({"TRACKERDCS_UI_USERS": f"bob:viewer:{HASH} bob:operator:{HASH}"}, "0.0.0.0",
         {"error": "user bob is given twice"}),
        ({"TRACKERDCS_UI_USERS": "bob:viewer:secret"}, "0.0.0.0",
         {"error": "entry 1 (bob): not a bcrypt hash"}),
        ({"TRACKERDCS_UI_USERS": f"a:b:viewer:{HASH}"}, "0.0.0.0",
         {"error": "expected name:role:bcrypt-hash"}),
        ({"TRACKERDCS_UI_USERS": f"admin:viewer:{HASH}"}, "0.0.0.0",
         {"error": "user admin is given twice"}),  # the editor's admin
    ],
)  # fmt: skip
def test_the_login_is_on_beyond_loopback_and_bad_users_stop_node_red(env, host, expected) -> None:
    base = {"TRACKERDCS_NODE_RED_SECRET": "s", "TRACKERDCS_NODE_RED_PASSWORD_HASH": HASH}
    got = login_config({**base, **env}, host)
    if "error" in expected:
        assert expected["error"] in got.get("error", ""), got
        assert HASH not in got["error"]  # a hash is never printed
    else:
        assert got["login"] is expected["login"], got
        assert ["admin", "admin"] in got["users"]  # the editor's user is an admin of the dashboard


def test_without_a_login_the_dashboard_refuses(lab: AccessLab, browser: Browser) -> None:
    base = lab.url()
    for path in ("dashboard/", "dashboard/overview", "dashboard/_setup",
                 "export/history.csv?from=0&to=1000"):  # fmt: skip
        status, body = request(base + path)
        assert status == 401 and b"/login" in body, (path, status)
    # a page is sent to the login form, and comes back to where it was going
    req = urllib.request.Request(base + "dashboard/alarms", headers={"Accept": "text/html"})
    opener = urllib.request.build_opener(NoRedirect)
    with pytest.raises(urllib.error.HTTPError) as refused:
        opener.open(req, timeout=10)
    assert refused.value.code == 302
    assert refused.value.headers["Location"] == "/login?next=%2Fdashboard%2Falarms"
    # the dashboard's Socket.IO: no connection without a session, nor with a forged cookie
    assert socketio_connect(base).startswith('44{"message":"log in first')
    forged = "trackerdcs_session=eyJ1Ijoib2xpdmlhIn0.AAAA"
    assert socketio_connect(base, forged).startswith("44")
    assert request(base + "dashboard/", token=None)[0] == 401

    context = browser.new_context(viewport=DESKTOP)
    try:
        page = context.new_page()
        page.goto(lab.ui.dashboard_url + "overview")
        expect(page.get_by_test_id("login-form")).to_be_visible(timeout=WAIT)
        assert "/login?next=" in page.url
        screenshot(page, "login")
    finally:
        context.close()


def test_the_containers_healthcheck_passes_with_the_login_on(lab: AccessLab) -> None:
    """node-red/login/health.js, as the container runs it: the token the login wrote at start
    (0600) opens the dashboard's page shell, and nothing else."""
    token = lab.health_token.read_text().strip()
    assert len(token) == 48 and oct(lab.health_token.stat().st_mode)[-3:] == "600"

    def health(token_file: Path) -> int:
        env = {**os.environ, "TRACKERDCS_UI_HEALTH_TOKEN_FILE": str(token_file),
               "TRACKERDCS_UI_HEALTH_PORT": str(lab.ui.port)}  # fmt: skip
        script = NODE_RED_DIR / "login" / "health.js"
        return subprocess.run([node_binary(), str(script)], env=env, timeout=30).returncode

    assert health(lab.health_token) == 0
    wrong = lab.health_token.with_name("uiaccess-wrong-token")
    wrong.write_text("0" * 48 + "\n")
    assert health(wrong) == 1
    assert health(lab.health_token.with_name("uiaccess-no-token")) == 1
    header = {"x-trackerdcs-health": token}
    for path in ("dashboard/_setup", "dashboard/overview", "export/history.csv?from=0&to=1000"):
        req = urllib.request.Request(lab.url(path), headers=header)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(req, timeout=10)
        assert refused.value.code == 401, path
    assert socketio_connect(lab.url()).startswith("44")


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kw: Any) -> None:
        return None


def test_wrong_passwords_are_refused(lab: AccessLab, browser: Browser) -> None:
    for user, password in (("olivia", "wrong"), ("nobody", PASSWORD["olivia"]),
                           ("olivia", ""), ("victor", PASSWORD["olivia"])):  # fmt: skip
        body = urllib.parse.urlencode({"username": user, "password": password}).encode()
        req = urllib.request.Request(lab.url("login"), data=body)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(req, timeout=10)
        assert refused.value.code == 401, (user, password)
        assert "Set-Cookie" not in refused.value.headers
        assert b"Wrong user name or password." in refused.value.read()
    context = browser.new_context(viewport=DESKTOP)
    try:
        page = context.new_page()
        page.goto(lab.ui.dashboard_url + "power")
        log_in(page, "olivia", "not her password")
        expect(page.get_by_test_id("login-message")).to_have_text("Wrong user name or password.")
        assert not context.cookies()
        log_in(page, "olivia", PASSWORD["olivia"])  # the form remembers where she was going
        expect(page.get_by_test_id("power-page")).to_be_visible(timeout=WAIT)
    finally:
        context.close()


# -- roles --------------------------------------------------------------------------------------

COMMANDS = [  # every kind of command a page can send, as the lab model takes them
    {"prefix": "/hv", "action": "switch", "target": HV[0].name, "value": "on"},
    {"prefix": "/hv", "action": "setv", "target": HV[0].name, "value": 100},
    {"prefix": "/lv", "action": "switch", "target": LV[0].name, "value": "on"},
    {"prefix": "/hv", "action": "switch", "target": "all", "value": "off"},
    {"prefix": "/julabo", "action": "setpoint", "target": None, "value": -5},
    {"prefix": "/dcs", "action": "module", "target": HV[0].module, "value": "on"},
    {"prefix": "/alarms", "action": "ack", "target": "all", "value": ""},
    {"prefix": "/interlock", "action": "reset", "target": "chiller_running", "value": ""},
]


def test_a_viewer_sees_but_every_command_is_refused_by_the_flows(
    lab: AccessLab, viewer: Page, browser: Browser
) -> None:
    page = viewer
    expect(page.get_by_test_id("user-role")).to_have_text("viewer")
    expect(page.get_by_test_id("look-only")).to_be_visible()
    card = page.locator(f'article[data-module="{HV[0].module}"]')
    expect(card.get_by_test_id("hv").get_by_test_id("state")).to_have_text("OFF", timeout=WAIT)
    expect(card.get_by_test_id("module-on")).to_be_disabled()
    expect(page.get_by_test_id("banner-all-off")).to_be_disabled()
    expect(page.get_by_test_id("name-dialog")).to_have_count(0)  # the login is the name
    screenshot(page, "viewer")
    page.goto(lab.ui.dashboard_url + "power")
    expect(page.get_by_test_id("power-page")).to_be_visible(timeout=WAIT)
    row = page.locator(f'tr[data-channel="{LV[0].name}"]')
    expect(row.get_by_test_id("switch")).to_be_disabled()
    expect(page.get_by_test_id("all-off").first).to_be_disabled()

    since = lab.client.mark()
    socket = DashboardSocket(lab.url(), cookie_of(page))  # the viewer's session, no page
    for c in COMMANDS:
        socket.send("Power supplies", {"topic": "ui/command", "payload": {**c, "label": "try"}})
    # a forged user: the session decides, not the message
    forged = {"user": {"username": "olivia", "role": "operator"}}
    socket.send("Power supplies", {"topic": "ui/command", "_client": forged,
                                   "payload": {**COMMANDS[2], "label": "forged"}})  # fmt: skip
    socket.send("Overview", {"topic": "ui/whatever", "payload": {}})  # not read-only
    # every one refused by the flows (their log says so), and listed among the answers (the
    # power page lists its own prefixes')
    wait_until(lambda: lab.node_red.output().count("from victor: victor is a viewer") == 10,
               WAIT / 1000, "the flows to refuse all ten")  # fmt: skip
    refused = page.get_by_test_id("answer-entry").filter(has_text="refused: victor is a viewer")
    expect(refused).to_have_count(5)  # the /hv and /lv ones, the forged one among them
    expect(refused.first).to_contain_text("by victor")

    # an operator's command after them reaches the daemon; none of the viewer's ever did
    context, other, errors = session(browser, lab, "olivia", "power")
    try:
        DashboardSocket(lab.url(), cookie_of(other)).send(
            "Power supplies", {"topic": "ui/command", "payload": COMMANDS[3]}
        )
        lab.client.wait_for("/hv/cmd/switch/all", timeout=WAIT / 1000, since=since)
        sent = [m.topic for m in lab.client.messages[since:] if "/cmd/" in m.topic]
        assert sent == ["/hv/cmd/switch/all"], sent
        assert lab.power.get(lab.power.chpv(LV[0].name, "Pw")) == 0
    finally:
        context.close()
    assert not errors, errors


def test_an_operator_commands_and_the_audit_log_shows_the_name(
    lab: AccessLab, operator: Page
) -> None:
    page = operator
    lab.power.reset()
    expect(page.get_by_test_id("user-role")).to_have_text("operator")
    expect(page.get_by_test_id("look-only")).to_have_count(0)
    row = page.locator(f'tr[data-channel="{LV[0].name}"]')
    since = lab.client.mark()
    row.get_by_test_id("switch").click()
    sent = lab.client.wait_for(LV[0].topic("switch"), timeout=5, since=since).json
    assert sent["id"].startswith("olivia:ui-") and sent["value"] == "on"
    wait_until(
        lambda: lab.power.get(lab.power.chpv(LV[0].name, "Pw")) == 1,
        5,
        f"{LV[0].name} on",
        poll=0.1,
    )
    expect(row.get_by_test_id("answer")).to_have_text("ok", timeout=WAIT)
    expect(page.get_by_test_id("answer-entry").first).to_contain_text("by olivia")
    # whatever the page claims, the session's name goes out
    since = lab.client.mark()
    DashboardSocket(lab.url(), cookie_of(page)).send("Power supplies", {
        "topic": "ui/command", "_client": {"user": {"username": "admin", "role": "admin"}},
        "payload": {**COMMANDS[2], "value": "off", "operator": "Somebody_Else"}})  # fmt: skip
    sent = lab.client.wait_for(LV[0].topic("switch"), timeout=5, since=since).json
    assert sent["id"].startswith("olivia:ui-")

    def answered() -> list[dict]:  # both commands, each with the daemon's answer
        records = [r for r in lab.audit(since="5m", source="olivia") if LV[0].name in r["topic"]]
        return records if len(records) == 2 and all(r["ok"] for r in records) else []

    wait_until(answered, 10, "both answers in the audit log", poll=0.2)
    assert not lab.audit(since="5m", source="admin")
    assert not lab.audit(since="5m", source="Somebody_Else")


def test_the_editor_needs_an_admin(lab: AccessLab, operator: Page) -> None:
    base = lab.url()
    assert api(base + "flows")[0] == 401
    for user, password in (("olivia", PASSWORD["olivia"]), ("victor", PASSWORD["victor"]),
                           ("admin", "wrong")):  # fmt: skip
        assert api(base + "auth/token", {**LOGIN, "username": user, "password": password})[0] == 403
    # the dashboard's session is no key to the editor
    req = urllib.request.Request(base + "flows", headers={"Cookie": cookie_of(operator)})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(req, timeout=10)
    assert refused.value.code == 401
    status, token = api(base + "auth/token", {**LOGIN, "password": lab.ui.password})
    assert status == 200
    assert api(base + "flows", token=token["access_token"])[0] == 200


def test_the_admin_reaches_the_dashboard_too_and_logging_out_ends_the_session(
    lab: AccessLab, browser: Browser
) -> None:
    context, page, errors = session(browser, lab, "admin", "alarms")
    try:
        expect(page.get_by_test_id("user-role")).to_have_text("admin")
        expect(page.get_by_test_id("look-only")).to_have_count(0)
        cookie = cookie_of(page)
        assert socketio_connect(lab.url(), cookie).startswith("40")
        page.get_by_test_id("logout").click()
        expect(page.get_by_test_id("login-message")).to_have_text("You are logged out.")
        # the old cookie, kept by someone, opens nothing any more
        assert socketio_connect(lab.url(), cookie).startswith("44")
        req = urllib.request.Request(lab.url("dashboard/_setup"), headers={"Cookie": cookie})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(req, timeout=10)
        assert refused.value.code == 401
    finally:
        context.close()
    assert not errors, errors


# -- history ------------------------------------------------------------------------------------

MINUTE = 60_000


def write_history(lab: AccessLab, now_ms: int) -> dict[str, int]:
    """Points written hours back, as Telegraf stores the statuses; the times (ms) by name."""
    at = {"40min": now_ms - 40 * MINUTE, "30min": now_ms - 30 * MINUTE, "2h": now_ms - 120 * MINUTE,
          "20h": now_ms - 1200 * MINUTE}  # fmt: skip
    room = "sensor,kind=room,name=sensor_1"
    hv, lv = (f"{c.kind},module={c.module},name={c.name},number={c.number}" for c in (HV[0], LV[0]))
    lines = [
        f"{hv} vmon=123.4,imon=1.25,vreq=123.4 {at['40min']}",
        f"{hv} vmon=123.4,imon=1.5,vreq=123.4 {at['30min']}",
        f"{hv} vmon=77.7,imon=0.5,vreq=77.7 {at['2h']}",
        f"{hv} vmon=55.5,imon=0.25,vreq=55.5 {at['20h']}",
        f"{lv} vmon=10.5,imon=1.2 {at['40min']}",
        f"{lv} vmon=10.5,imon=1.25 {at['30min']}",
        f"{room} temperature=21.5,humidity=45.5,dewpoint=9.25 {at['40min']}",
        f"{room} temperature=21.75,humidity=46.5,dewpoint=9.5 {at['30min']}",
        f"sensor,kind=module,module={HV[0].module},name=temp_m1 temperature=-5.5 {at['40min']}",
        f"julabo,chiller=julabo bath_temp=-10.25,setpoint=-10 {at['40min']}",
        f"julabo,chiller=julabo bath_temp=-10.5,setpoint=-10 {at['30min']}",
    ]
    assert lab.admin_db is not None
    lab.admin_db.write("\n".join(lines).encode(), rp="raw", precision="ms")
    return at


def chart(page: Page, cid: str):
    return page.locator(f'[data-testid="chart"][data-chart="{cid}"]')


def test_a_range_reads_influxdb_beyond_15_minutes_and_exports_it(
    lab: AccessLab, browser: Browser, tmp_path: Path
) -> None:
    at = write_history(lab, int(time.time() * 1000))
    # the read-only user of the page reads, and can write nothing
    reader = InfluxClient(lab.influx_cfg.url, username="nodered",
                          password=lab.ui.reader_password)  # fmt: skip
    with pytest.raises(InfluxError, match="403"):
        reader.write(b"hv,name=x vmon=1", rp="raw")
    context, page, errors = session(browser, lab, "victor", "history")  # viewers read history
    try:
        expect(page.get_by_test_id("shown-range")).to_be_visible(timeout=WAIT)  # 1 h at first
        hv = chart(page, "hv_voltage")
        series = hv.locator(f'[data-testid="series"][data-series="{HV0}"]')
        expect(series).to_contain_text("123.4", timeout=WAIT)
        assert int(hv.get_attribute("data-oldest")) <= at["40min"] + 5000  # 40 min back
        assert int(hv.get_attribute("data-oldest")) < time.time() * 1000 - 15 * MINUTE
        for cid, name, value in (("hv_current", HV0, "1.50"),
                                 ("lv_voltage", LV0, "10.50"),
                                 ("lv_current", LV0, "1.25"),
                                 ("temperature", "temp_m1", "-5.50"),
                                 ("temperature", "sensor_1", "21.75"),
                                 ("humidity", "sensor_1", "46.50"),
                                 ("dewpoint", "sensor_1", "9.50"),
                                 ("bath", "julabo bath", "-10.50"),
                                 ("bath", "julabo set point", "-10.00")):  # fmt: skip
            line = chart(page, cid).locator(f'[data-testid="series"][data-series="{name}"]')
            expect(line).to_contain_text(f"last {value}")
        # two points 10 min apart, each alone in the 5-s intervals of 1 h: a dot each, no line
        expect(hv.locator("circle")).to_have_count(2)
        links = page.get_by_test_id("grafana-link")
        expect(links).to_have_count(len(list(GRAFANA_DASHBOARDS.glob("*.json"))))
        shown = page.get_by_test_id("export")
        href = shown.get_attribute("href")
        frm, to = (int(v) for v in re.findall(r"=(\d+)", href))
        assert to - frm == 3600_000
        assert f"{GRAFANA}/d/trackerdcs-overview?from={frm}&to={to}" in [
            links.nth(i).get_attribute("href") for i in range(3)
        ]

        page.get_by_test_id("range-8h").click()  # 2 h back
        expect(series).to_contain_text("77.70", timeout=WAIT)
        page.get_by_test_id("range-24h").click()  # 20 h back
        expect(series).to_contain_text("55.50", timeout=WAIT)
        screenshot(page, "history")

        # a custom range: 3 h to 1 h ago holds only the point 2 h back
        page.get_by_test_id("custom-from").fill(local_input(at["2h"] - 60 * MINUTE))
        page.get_by_test_id("custom-to").fill(local_input(at["2h"] + 60 * MINUTE))
        page.get_by_test_id("custom-show").click()
        expect(series).to_contain_text("last 77.70, 77.70 … 77.70", timeout=WAIT)
        expect(chart(page, "lv_voltage").get_by_test_id("no-data")).to_be_visible()

        page.get_by_test_id("range-8h").click()

        def eight_hours() -> tuple[int, int] | None:  # the answer to this click, not the last one
            href = page.get_by_test_id("export").get_attribute("href") or ""
            frm, to = (int(v) for v in re.findall(r"=(\d+)", href))
            return (frm, to) if to - frm == 8 * 3_600_000 else None

        frm, to = wait_until(eight_hours, WAIT / 1000, "the 8 h range shown", poll=0.1)
        expect(series).to_contain_text("77.70", timeout=WAIT)
        with page.expect_download() as download:
            page.get_by_test_id("export").click()
        got = Path(download.value.path()).read_text()
        assert download.value.suggested_filename == f"trackerdcs-{stamp(frm)}-{stamp(to)}.csv"
        expected = export_lab(lab, frm, to)
        assert got == expected
        rows = list(csv.DictReader(io.StringIO(got)))
        found = {(r["measurement"], r["name"]) for r in rows}
        assert found >= {("hv", HV[0].name), ("lv", LV[0].name), ("sensor", "sensor_1")}
        assert "77.7" in {r["vmon"] for r in rows}  # the point 2 h back
    finally:
        context.close()
    assert not errors, errors


def test_the_export_refuses_what_is_not_a_range(lab: AccessLab, operator: Page) -> None:
    cookie = cookie_of(operator)
    for query, why in (("from=abc&to=1", b"unix ms"), ("from=5&to=5", b"end after"),
                       ("from=1;rm%20-rf&to=2", b"unix ms"),
                       ("from=0&to=99999999999999", b"366 days")):  # fmt: skip
        req = urllib.request.Request(
            lab.url(f"export/history.csv?{query}"), headers={"Cookie": cookie}
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(req, timeout=30)
        assert refused.value.code == 400 and why in refused.value.read(), query


def test_history_on_a_phone(lab: AccessLab, browser: Browser) -> None:
    write_history(lab, int(time.time() * 1000))
    context, page, errors = session(browser, lab, "victor", "history", viewport=PHONE,
                                    is_mobile=True, has_touch=True)  # fmt: skip
    try:
        expect(chart(page, "hv_voltage").get_by_test_id("series").first).to_be_visible(timeout=WAIT)
        width = page.evaluate("document.scrollingElement.scrollWidth")
        assert width <= PHONE["width"] + 1
        screenshot(page, "phone-history")
    finally:
        context.close()
    assert not errors, errors


def local_input(ms: int) -> str:
    """A datetime-local input's value for `ms` in this machine's (and the browser's) zone."""
    return datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%dT%H:%M")


def stamp(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y%m%dT%H%M%SZ")


def export_lab(lab: AccessLab, frm: int, to: int) -> str:
    """`trackerdcs export lab` for [frm, to] (ms), run here as the admin."""

    def iso(ms: int) -> str:
        return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"

    done = subprocess.run(
        [sys.executable, "-m", "trackerdcs.cli", "export", "lab", "--from", iso(frm), "--to",
         iso(to), "--config", str(lab.power.config)],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout
