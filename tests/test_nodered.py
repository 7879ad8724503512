"""The operators' control UI: real Node-RED with the repo's flows, real Mosquitto, the simulated
crate + power daemon, two Julabo simulators + daemons (each chiller cooling its own modules),
simulated sensors and the safety daemons (interlock, alarms and audit log, sequencer), driven
through Debian's Chromium by Playwright, on a desktop and at a phone's size. Each page's
screenshot, desktop and phone, is written to docs/screenshots/.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright

from tests.conftest import ROOT, Broker, PowerLab, python_process, serving
from tests.labdata import EXAMPLE
from tests.noderedapi import LOGIN
from tests.noderedapi import api as _http
from trackerdcs.config import load_config
from trackerdcs.power.status import ChannelStatus
from trackerdcs.sim.julabo import JulaboSimulator
from trackerdcs.stack.nodered import FLOWS, NODE_RED_DIR, NodeRed
from trackerdcs.stack.process import ManagedProcess, free_port, wait_until

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]  # fmt: skip
SCREENSHOTS = ROOT / "docs" / "screenshots"
HV, LV = EXAMPLE.channels("hv"), EXAMPLE.channels("lv")  # the UI lab starts from it
M = EXAMPLE.modules  # its modules, in the lab file's order
LOW = EXAMPLE.limited("hv")  # the HV channel with a vmax (400 V) of its own
WAIT = 10_000  # ms, for anything that crosses MQTT, the daemons and the crate
OPERATOR = "tester"  # the name every page's browser has given (localStorage), unless a test asks
DESKTOP = {"width": 1400, "height": 900}
PHONE = {"width": 390, "height": 844}
PAGES = ("overview", "alarms", "power", "chiller", "environment")
# the Module tests page's own subscriptions (tests/test_moduletests_ui.py)
MODULE_TESTS = [
    "/dcs/ivscan/points",
    "/dcs/ivscan/results",
    "/dcs/ivscan/status",
    "/dcs/recipe/status",
]
DATE_TIME = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")

JULABO_FAST = {"write_delay": 0.005, "query_delay": 0.002, "timeout": 1.0,
               "poll_interval": 0.2, "heartbeat": 1.0, "reconnect_min_delay": 0.1,
               "reconnect_max_delay": 0.5}  # fmt: skip
SENSORS = [
    {"name": "sensor_1", "kind": "room", "source": "sim"},
    *({"name": f"temp_m{i}", "kind": "module", "module": f"M{i}", "source": "sim",
       "max_temperature": 30} for i in range(1, 5)),
]  # fmt: skip
SENSOR_TIMEOUT = 6.0  # s: liveness_factor 3 x the sensors' 2 s publish interval

pytestmark = pytest.mark.skipif(
    not (NODE_RED_DIR / "node_modules" / "node-red").exists() or not Path(CHROMIUM).exists(),
    reason="needs Node-RED (npm install in node-red/) and Debian's chromium: scripts/setup.sh",
)


# Two chillers: `julabo` (/julabo) cools M1 and M2, `burnin` (/julabo_burnin) M3 and M4.
CHILLERS = {"julabo": ("/julabo", M[:2]), "burnin": ("/julabo_burnin", M[2:])}
RUNNING = {"julabo": "chiller_running", "burnin": "burnin_running"}  # each chiller's rule
# The example lab's interlock rules, made per chiller: each chiller's `chiller_running` and
# dew-point rules protect what it cools (no `modules`: its chiller's), the dew-point rules with
# their own margins; the heartbeat watches both chillers.
RULES = [
    {"name": "chiller_running", "kind": "chiller_running", "chiller": "julabo",
     "action": "ramp_down", "status_timeout": 30},
    {"name": "burnin_running", "kind": "chiller_running", "chiller": "burnin",
     "action": "ramp_down", "status_timeout": 30},
    {"name": "module_temperature", "kind": "module_temperature", "modules": "all",
     "action": "kill", "hold": 5},
    {"name": "dewpoint", "kind": "dewpoint_margin", "sensor": "sensor_1", "margin": 2.0,
     "chiller": "julabo", "action": "ramp_down", "chiller_setpoint": 20, "hold": 5},
    {"name": "dewpoint_burnin", "kind": "dewpoint_margin", "sensor": "sensor_1", "margin": 3.0,
     "chiller": "burnin", "action": "ramp_down", "chiller_setpoint": 25, "hold": 5},
    {"name": "heartbeat", "kind": "heartbeat", "action": "ramp_down",
     "sources": {"/sensor_1": 15, "/temp_m1": 15, "/temp_m2": 15, "/temp_m3": 15,
                 "/temp_m4": 15, "/julabo": 25, "/julabo_burnin": 25, "/hv": 25, "/lv": 25}},
]  # fmt: skip


class UiLab:
    """The simulated lab with every daemon (two chillers, each with its own rules), the safety
    daemons, and Node-RED serving the repo's flows. The lab's interlock rules are the example
    lab's, made per chiller (RULES)."""

    def __init__(self, workdir: Path, broker: Broker) -> None:
        self.broker = broker
        self.ports = {name: free_port() for name in CHILLERS}
        chillers = [
            {"name": name, "url": f"socket://127.0.0.1:{self.ports[name]}", "prefix": prefix,
             "modules": modules, "setpoint_min": -30, "setpoint_max": 40, **JULABO_FAST}
            for name, (prefix, modules) in CHILLERS.items()
        ]  # fmt: skip
        safety = {"alarms.db": str(workdir / "nodered-alarms.sqlite"),
                  "interlocks.startup_grace": 0.5, "interlocks.reassert_interval": 0.5}  # fmt: skip
        self.power = PowerLab(workdir, broker, "nodered", lab="nodered", julabo=None,
                              chillers=chillers, sensors=SENSORS, **safety,
                              **{"interlocks.rules": RULES})  # fmt: skip
        config = ["--config", str(self.power.config)]

        def daemon(what: str, module: str, ready: str, *args: str) -> ManagedProcess:
            log = workdir / f"nodered-{what}.log"
            return python_process(what, module, [*config, *args], log, ready=serving(ready))

        # the baths move 40 K/min: visible
        self.sims = {name: JulaboSimulator(tick=0.1, speed=20.0) for name in CHILLERS}
        self.sim = self.sims["julabo"]
        self.chillers = {
            name: daemon(f"julabo-{name}", "trackerdcs.julabo.daemon", "serving chiller",
                         "--chiller", name)
            for name in CHILLERS
        }  # fmt: skip
        self.julabo = self.chillers["julabo"]
        self.sensors = daemon("sensors", "trackerdcs.sensors.daemon", "serving")
        self.daemons: list[ManagedProcess] = [
            *self.chillers.values(),
            self.sensors,
            daemon("interlock", "trackerdcs.safety.interlock_daemon", "serving interlocks"),
            daemon("alarms", "trackerdcs.safety.alarms_daemon", "serving alarms"),
            daemon("dcs", "trackerdcs.safety.dcs_daemon", "serving the sequencer"),
        ]
        self.ui = NodeRed(load_config(self.power.config), workdir / "nodered-ui", port=free_port())
        self.node_red = self.ui.process()

    def start(self) -> UiLab:
        self.power.start()
        for name, sim in self.sims.items():
            sim.serve_tcp(port=self.ports[name])
            sim.start()
        for daemon in self.daemons:
            daemon.start()
        self.node_red.start()
        for prefix, _ in CHILLERS.values():
            self.client.wait_for(f"{prefix}/status", lambda m: m.json["state"] == "STOPPED", 10)
        self.rules(lambda r: not any(rule["active"] for rule in r.values()), since=0)
        return self

    def stop(self) -> None:
        self.node_red.stop()
        for daemon in self.daemons:
            daemon.stop()
        for sim in self.sims.values():
            sim.close()
        self.power.stop()

    @property
    def client(self):
        return self.power.client

    def url(self, page: str) -> str:
        return self.ui.dashboard_url + page

    def command(self, topic: str, payload: Any, timeout: float = 5.0) -> dict[str, Any]:
        prefix = "/" + topic.split("/")[1]
        answer = self.client.command(topic, payload, f"{prefix}/response", timeout)
        assert answer["ok"], answer
        return answer

    def rules(self, predicate, timeout: float = 10.0, since: int | None = None) -> dict:
        since = self.client.mark() if since is None else since
        status = self.client.wait_for(
            "/interlock/status", lambda m: predicate({r["name"]: r for r in m.json["rules"]}),
            timeout, since,
        ).json  # fmt: skip
        return {r["name"]: r for r in status["rules"]}

    def alarms(self, predicate, since: int = 0, timeout: float = 10.0) -> list[dict]:
        return self.client.wait_for(
            "/alarms", lambda m: predicate(m.json["alarms"]), timeout, since
        ).json["alarms"]

    def audit(self, **query: Any) -> list[dict]:
        return self.command("/audit/cmd/query", query)["records"]

    def hv_on(self, *channels: str, volts: float) -> None:
        """HV channels set to `volts` and switched on, once they are ON."""
        since = self.client.mark()
        for name in channels:
            self.command(f"/hv/cmd/setv/{name}", volts)
            self.command(f"/hv/cmd/switch/{name}", "on")
        for name in channels:
            self.power.wait_channel("/hv", name, lambda c: c["state"] == "ON", 10, since)

    def start_chiller(self, name: str = "julabo") -> None:
        """Chiller `name` running, and its rule armed (it has seen it cooling)."""
        self.command(f"{CHILLERS[name][0]}/cmd/switch", "on")
        self.rules(lambda r: r[RUNNING[name]]["armed"], since=0)

    def reset(self) -> None:
        """Power all off and cleared, the chillers stopped, no interlock active, every alarm
        acknowledged (by `test`)."""
        self.power.reset()
        for name, (prefix, _) in CHILLERS.items():
            if self.sims[name].device.running:  # stopping it fires its rule: wait, disarm it
                since = self.client.mark()
                self.command(f"{prefix}/cmd/switch", "off")
                self.rules(lambda r, rule=RUNNING[name]: r[rule]["active"], since=since)
        for rule in RUNNING.values():
            since = self.client.mark()
            self.command(f"/interlock/cmd/reset/{rule}", "")
        self.rules(lambda r: not any(rule["active"] for rule in r.values()), since=since)
        request = f"test:reset-{time.monotonic_ns()}"
        since = self.client.mark()
        self.client.publish("/alarms/cmd/ack/all", {"value": "", "id": request})
        self.client.wait_for("/alarms/response", lambda m: m.json["id"] == request, 5, since)


@pytest.fixture(scope="module")
def broker(workdir) -> Iterator[Broker]:
    """This module's broker keeps retained messages across a restart (as in production)."""
    b = Broker(workdir, persistent=True).start()
    yield b
    b.stop()


@pytest.fixture(scope="module")
def lab(workdir, broker) -> Iterator[UiLab]:
    lab = UiLab(workdir, broker).start()
    yield lab
    lab.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def new_page(browser: Browser, viewport: dict, operator: str | None = OPERATOR,
             **kw: Any) -> tuple[BrowserContext, Page, list[str]]:  # fmt: skip
    context = browser.new_context(viewport=viewport, **kw)
    if operator:  # this browser has given its name before
        context.add_init_script(f"localStorage.setItem('trackerdcs.operator', '{operator}')")
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    return context, page, errors


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context, page, errors = new_page(browser, DESKTOP)
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


@pytest.fixture
def phone(browser: Browser) -> Iterator[Page]:
    context, page, errors = new_page(browser, PHONE, is_mobile=True, has_touch=True)
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def screenshot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def open_page(page: Page, lab: UiLab, name: str) -> None:
    page.goto(lab.url(name))
    expect(page.get_by_test_id(f"{name}-page")).to_be_visible(timeout=WAIT)
    expect(page.get_by_test_id("loading")).to_have_count(0, timeout=WAIT)
    expect(page.get_by_test_id("broker")).to_have_text("broker connected", timeout=WAIT)


def confirm(page: Page, text: str | re.Pattern, *details: str) -> None:
    """The confirmation asks `text` and states each of `details`; then say yes."""
    expect(page.get_by_test_id("confirm-text")).to_have_text(text)
    for detail in details:
        expect(page.get_by_test_id("confirm")).to_contain_text(detail)
    page.get_by_test_id("confirm-yes").click()
    expect(page.get_by_test_id("confirm")).to_have_count(0)


def crate_value(lab: UiLab, name: str, param: str) -> Any:
    """A parameter of the channel called `name` in the lab file, as the crate has it."""
    return lab.power.get(lab.power.chpv(name, param))


def wait_crate(lab: UiLab, name: str, param: str, value: Any) -> None:
    wait_until(
        lambda: crate_value(lab, name, param) == value,
        5,
        f"{param} of {name} to be {value}",
        poll=0.1,
    )


def card(page: Page, module: str):
    return page.locator(f'article[data-module="{module}"]')


def no_horizontal_scroll(page: Page) -> list[str]:
    """What is wider than the window, or scrolls sideways (nothing, on a good phone page)."""
    return page.evaluate(
        """() => {
        const wide = [];
        const root = document.scrollingElement;
        if (root.scrollWidth > window.innerWidth + 1) wide.push('page ' + root.scrollWidth);
        for (const el of document.querySelectorAll('.tdcs *, .tdcs')) {
            const style = getComputedStyle(el);
            if (['auto', 'scroll'].includes(style.overflowX) && el.scrollWidth > el.clientWidth + 1)
                wide.push('scrolls: ' + el.className);
            const box = el.getBoundingClientRect();
            if (box.width && box.right > window.innerWidth + 1)
                wide.push('beyond the right edge: ' + el.tagName + '.' + el.className);
        }
        return wide.slice(0, 10);
    }"""
    )


# -- the flows ------------------------------------------------------------------------------------


def test_flows_json_is_built_from_the_sources_and_the_daemon_rules() -> None:
    done = subprocess.run(
        [sys.executable, str(NODE_RED_DIR / "build_flows.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    flows = json.loads(FLOWS.read_text())
    brokers = [n for n in flows if n["type"] == "mqtt-broker"]
    assert [(b["broker"], b["port"]) for b in brokers] == [
        ("${TRACKERDCS_MQTT_HOST}", "${TRACKERDCS_MQTT_PORT}")
    ]
    subscribed = sorted(n["topic"] for n in flows if n["type"] == "mqtt in")
    assert subscribed == ["/+/action", "/+/availability", "/+/response", "/+/state",
                          "/+/status", "/alarms", *MODULE_TESTS]  # fmt: skip
    assert {n["type"] for n in flows} >= {"ui-base", "ui-page", "ui-template", "status", "exec"}
    pages = sorted(n["path"] for n in flows if n["type"] == "ui-page")
    # history: test_ui_access; moduletests: test_moduletests_ui
    assert pages == sorted(f"/{name}" for name in (*PAGES, "history", "moduletests"))
    access = next(n for n in flows if n.get("name") == "access: who may command")
    templates = [n for n in flows if n["type"] == "ui-template" and n.get("group")]
    # every page's message is checked; the Module tests page's refresh also goes to its tab
    assert all(t["wires"][0][0] == access["id"] and len(t["wires"]) == 1 for t in templates)
    model = next(n for n in flows if n.get("name") == "lab model")
    assert not any(model["id"] in t["wires"][0] for t in templates)  # nothing past the access
    model = next(n for n in flows if n.get("name") == "lab model")["func"]
    rules = json.loads(model.split("const RULES = ", 1)[1].split("; //", 1)[0])
    assert set(rules["flags"]) == {flag.name for flag in ChannelStatus}  # every bit explained
    assert rules["sequencer"]["topics"] == ["ivscan", "module", "recipe"]  # the dcs daemon's
    assert rules["alarms"]["topics"] == ["ack"]


# -- power supplies -------------------------------------------------------------------------------


def test_switching_a_channel_from_the_page(lab: UiLab, page: Page) -> None:
    lab.reset()
    open_page(page, lab, "power")
    row = page.locator(f'tr[data-channel="{LV[1].name}"]')
    switch = row.get_by_test_id("switch")
    expect(row).to_have_attribute("data-state", "OFF")
    expect(switch).not_to_be_checked()

    switch.click()
    wait_crate(lab, LV[1].name, "Pw", 1)  # the command reached the simulated crate
    expect(row).to_have_attribute("data-state", "ON", timeout=WAIT)
    expect(switch).to_be_checked()
    expect(row.get_by_test_id("answer")).to_have_text("ok")
    expect(row.get_by_test_id("answer-time")).to_have_text(DATE_TIME)
    expect(row.get_by_test_id("vmon")).to_have_text("10.5 V")

    # HV asks for a confirmation first; cancelling sends nothing
    hv = page.locator(f'tr[data-channel="{HV[0].name}"]')
    hv.get_by_test_id("switch").click()
    expect(page.get_by_test_id("confirm-text")).to_have_text(
        f"Switch {HV[0].name} ({HV[0].module}) ON?"
    )
    expect(page.get_by_test_id("confirm-details")).to_have_text("It ramps to 0.0 V.")
    page.get_by_test_id("confirm-no").click()
    expect(page.get_by_test_id("confirm")).to_have_count(0)
    expect(hv.get_by_test_id("answer")).to_have_text("")
    hv.get_by_test_id("switch").click()
    page.get_by_test_id("confirm-yes").click()
    wait_crate(lab, HV[0].name, "Pw", 1)
    expect(hv).to_have_attribute("data-state", "ON", timeout=WAIT)
    expect(hv.get_by_test_id("answer")).to_have_text("ok")
    assert crate_value(lab, LV[1].name, "Pw") == 1

    switch.click()  # off needs no confirmation
    wait_crate(lab, LV[1].name, "Pw", 0)
    expect(row).to_have_attribute("data-state", "OFF", timeout=WAIT)
    expect(switch).not_to_be_checked()


def test_a_trip_is_explained_latched_and_the_crate_cleared(lab: UiLab, page: Page) -> None:
    lab.reset()
    lab.command(HV[2].topic("setv"), 50)
    lab.command(HV[2].topic("switch"), "on")
    open_page(page, lab, "power")
    row = page.locator(f'tr[data-channel="{HV[2].name}"]')
    expect(row).to_have_attribute("data-state", "ON", timeout=WAIT)
    expect(row.get_by_test_id("clear")).to_be_disabled()  # nothing to clear

    lab.power.put(lab.power.chpv(HV[2].name, "SimLeak"), 50.0)  # 50 µA over the 10 µA limit
    expect(row).to_have_attribute("data-state", "TRIPPED", timeout=WAIT)
    lab.power.put(lab.power.chpv(HV[2].name, "SimLeak"), 0.0)
    expect(row.get_by_test_id("flags")).to_contain_text(
        "INT_TRIP: tripped: the current stayed over its limit (I0Set) longer than the trip time"
    )
    switch = row.get_by_test_id("switch")
    expect(switch).to_be_disabled()  # the daemon refuses `on` while TRIPPED
    expect(switch).to_have_attribute("title", "the daemon refuses this in state TRIPPED")
    expect(row.get_by_test_id("setv")).to_be_disabled()  # no value typed yet
    row.get_by_test_id("setv-input").fill("20")
    expect(row.get_by_test_id("setv")).to_be_enabled()  # set_voltage is allowed when TRIPPED

    open_page(page, lab, "overview")  # the trip: the module's present state and its latched alarm
    m3 = card(page, HV[2].module)
    expect(m3.get_by_test_id("condition")).to_contain_text(f"HV {HV[2].name} TRIPPED (INT_TRIP)")
    expect(m3.get_by_test_id("alarm")).to_contain_text(
        f"{HV[2].name} ({HV[2].module}) TRIPPED: INT_TRIP", timeout=WAIT
    )
    expect(m3.get_by_test_id("alarm")).to_have_attribute("data-severity", "major")
    expect(card(page, HV[0].module).get_by_test_id("no-alarm")).to_be_visible()

    open_page(page, lab, "power")
    row.get_by_test_id("clear").click()  # the crate's ClearAlarm: the page says so first
    confirm(
        page,
        "Clear the trips of crate sy4527?",
        f"not only {HV[2].name}: {HV[2].name} ({HV[2].module})",
        "/hv, /lv",
    )
    expect(row).to_have_attribute("data-state", "OFF", timeout=WAIT)
    expect(switch).to_be_enabled()
    expect(row.get_by_test_id("clear")).to_be_disabled()
    expect(page.get_by_test_id("answers")).to_contain_text(
        f"clear trips of crate sy4527 ({HV[2].name})"
    )


def test_limits_known_to_the_page_are_checked_before_asking(lab: UiLab, page: Page) -> None:
    lab.reset()
    open_page(page, lab, "power")
    row = page.locator(f'tr[data-channel="{HV[1].name}"]')
    field, apply = row.get_by_test_id("setv-input"), row.get_by_test_id("setv")

    field.fill("150")
    apply.click()
    confirm(
        page,
        f"Set {HV[1].name} ({HV[1].module}) to 150 V?",
        "The channel is off: it ramps to 150 V when switched on.",
    )
    expect(row.get_by_test_id("answer")).to_have_text("ok", timeout=WAIT)
    expect(row.get_by_test_id("vreq")).to_have_text("150.0 V")
    expect(field).to_have_value("")  # sent: the readback shows it
    assert crate_value(lab, HV[1].name, "V0Set") == 150.0

    since = lab.client.mark()
    vmax = "(vmax in the lab configuration): not sent"
    for channel, typed, error in (
        (HV[1].name, "700", f"700 V exceeds the maximum 600 V of {HV[1].name} {vmax}"),
        (LOW.name, "500", f"500 V exceeds the maximum 400 V of {LOW.name} {vmax}"),
        (HV[1].name, "lots", "voltage must be a number, got 'lots': not sent"),
        (HV[1].name, "-5", "voltage -5 V must be 0 or more: not sent"),
    ):  # fmt: skip
        row = page.locator(f'tr[data-channel="{channel}"]')
        row.get_by_test_id("setv-input").fill(typed)
        row.get_by_test_id("setv-input").press("Enter")
        expect(page.get_by_test_id("confirm")).to_have_count(0)  # nothing asked
        expect(row.get_by_test_id("answer")).to_have_text(error)
        expect(row.get_by_test_id("answer-time")).to_have_text(DATE_TIME)
    lv = page.locator(f'tr[data-channel="{LV[0].name}"]')
    lv.get_by_test_id("seti-input").fill("5")
    lv.get_by_test_id("seti").click()
    expect(lv.get_by_test_id("answer")).to_have_text(
        f"5 A exceeds the maximum 4 A of {LV[0].name} (imax in the lab configuration): not sent"
    )
    assert not [m for m in lab.client.messages[since:] if "/cmd/set" in m.topic]  # nothing sent
    assert crate_value(lab, HV[1].name, "V0Set") == 150.0

    lv.get_by_test_id("seti-input").fill("3")  # LV: no confirmation
    lv.get_by_test_id("seti").click()
    expect(lv.get_by_test_id("ilim")).to_have_text("3.00 A", timeout=WAIT)
    expect(lv.get_by_test_id("answer")).to_have_text("ok")
    assert crate_value(lab, LV[0].name, "I0Set") == 3.0

    # the daemon's refusal of a command the page could not judge (another client's) is listed,
    # with its date and time; an older answer on the same topic fades as superseded
    assert not lab.client.command(LOW.topic("setv"), 450, "/hv/response")["ok"]
    entry = page.get_by_test_id("answer-entry").first
    expect(entry).to_contain_text(f"450 V exceeds the maximum 400 V of {LOW.name}", timeout=WAIT)
    expect(entry).to_contain_text("(not from the UI)")
    expect(entry.get_by_test_id("entry-time")).to_have_text(DATE_TIME)
    lv.get_by_test_id("seti-input").fill("2.5")
    lv.get_by_test_id("seti").click()
    expect(lv.get_by_test_id("ilim")).to_have_text("2.50 A", timeout=WAIT)
    older = page.get_by_test_id("answer-entry").filter(has_text=f"{LV[0].name}: current limit 3 A")
    expect(older).to_have_class(re.compile("tdcs-superseded"))
    expect(older).to_contain_text("(superseded)")


# -- chiller and environment ----------------------------------------------------------------------


def chiller_card(page: Page, name: str):
    return page.locator(f'[data-testid="chiller"][data-chiller="{name}"]')


def set_point_warned(page: Page, card, typed: str, warning: str, details: str) -> None:
    """A set point typed on a chiller's card asks first, with this warning and these details."""
    card.get_by_test_id("setpoint-input").fill(typed)
    card.get_by_test_id("setpoint-apply").click()
    expect(page.get_by_test_id("confirm-warning")).to_have_text(warning)
    expect(page.get_by_test_id("confirm-details")).to_have_text(details)


def test_chiller_set_point_is_checked_against_the_dew_point(lab: UiLab, page: Page) -> None:
    lab.reset()
    open_page(page, lab, "chiller")
    card = chiller_card(page, "julabo")
    state = card.get_by_test_id("chiller-state")
    expect(state).to_have_text("STOPPED", timeout=WAIT)
    expect(card.get_by_test_id("status-text")).to_have_text("2 REMOTE STOP")
    expect(card.get_by_test_id("stop")).to_be_disabled()
    dewpoint = lab.client.latest("/sensor_1/status").json["dewpoint"]  # about 8.6 °C
    expect(card.get_by_test_id("dewpoint")).to_have_text(re.compile(r"^\d+\.\d °C$"))
    shown = float(card.get_by_test_id("dewpoint").inner_text().split()[0])
    assert shown == pytest.approx(dewpoint, abs=0.2)
    expect(card.get_by_test_id("lowest-setpoint")).to_have_text(f"{shown + 2.0:.1f} °C")

    card.get_by_test_id("setpoint-input").fill("15")  # above dew point + margin: sent at once
    card.get_by_test_id("setpoint-apply").click()
    expect(card.get_by_test_id("setpoint")).to_have_text("15.00 °C", timeout=WAIT)
    expect(card.get_by_test_id("answer")).to_have_text("chiller julabo: set point 15 °C: ok")
    expect(card.get_by_test_id("answer-time")).to_have_text(DATE_TIME)

    since = lab.client.mark()
    set_point_warned(  # below it: warned first
        page, card, "-5",
        f"-5 °C is below the dew point {shown:.1f} °C + 2.0 K margin ({shown + 2:.1f} °C): "
        f"modules {M[0]}, {M[1]} cooled that far collect condensation.",
        "Interlock dewpoint fires when the coldest module is less than 2 K above the dew point: "
        f"it ramps down the HV of {M[0]}, {M[1]} and raises the set point of chiller julabo to "
        "20 °C.",
    )  # fmt: skip
    page.get_by_test_id("confirm-no").click()
    assert not [m for m in lab.client.messages[since:] if m.topic == "/julabo/cmd/setpoint"]
    card.get_by_test_id("setpoint-input").fill("-5")
    card.get_by_test_id("setpoint-apply").click()
    confirm(page, "Set the chiller julabo to -5 °C anyway?")
    expect(card.get_by_test_id("setpoint")).to_have_text("-5.00 °C", timeout=WAIT)
    device = lab.sim.device
    assert device.setpoints[device.active] == -5.0

    card.get_by_test_id("setpoint-input").fill("55")  # outside the configured range: refused here
    card.get_by_test_id("setpoint-apply").click()
    expect(card.get_by_test_id("answer")).to_have_text(
        "chiller julabo: set point 55 °C: 55 °C is outside the set point range -30 … 40 °C of "
        "/julabo: not sent"
    )
    assert device.setpoints[device.active] == -5.0
    lab.command("/julabo/cmd/setpoint", 15)

    lab.julabo.stop()  # no daemon: nothing can be sent to this unit; the other one is as it was
    try:
        expect(card.get_by_test_id("availability")).to_have_text("daemon offline", timeout=WAIT)
        for control in ("start", "stop", "setpoint-apply", "setpoint-input"):
            expect(card.get_by_test_id(control)).to_be_disabled()
        other = chiller_card(page, "burnin")
        expect(other.get_by_test_id("setpoint-input")).to_be_enabled()  # its daemon is up
    finally:
        lab.julabo.start()
    expect(card.get_by_test_id("availability")).to_have_text("daemon online", timeout=WAIT)
    expect(card.get_by_test_id("start")).to_be_enabled(timeout=WAIT)
    lab.rules(lambda r: not r["heartbeat"]["active"], since=0, timeout=15)


def test_stopping_the_chiller_states_the_consequence_and_the_interlock_says_why(
    lab: UiLab, page: Page
) -> None:
    lab.reset()
    lab.start_chiller()
    lab.hv_on(HV[0].name, volts=40)
    open_page(page, lab, "chiller")
    julabo = chiller_card(page, "julabo")
    expect(julabo.get_by_test_id("chiller-state")).to_have_text("RUNNING", timeout=WAIT)
    expect(julabo.get_by_test_id("start")).to_be_disabled()

    since = lab.client.mark()
    julabo.get_by_test_id("stop").click()
    confirm(page, "Stop the chiller julabo /julabo?",
            f"Stopping the chiller julabo ramps down the HV of {M[0]}, {M[1]} through "
            f"chiller_running (HV on now: {M[0]}).",
            "disarm chiller_running on the Alarms page")  # fmt: skip
    expect(julabo.get_by_test_id("chiller-state")).to_have_text("STOPPED", timeout=WAIT)
    assert lab.sim.device.running is False
    rules = lab.rules(lambda r: r["chiller_running"]["active"], since=since)
    assert rules["chiller_running"]["modules"] == M[:2]  # what this chiller cools
    assert not rules["burnin_running"]["active"]
    lab.power.wait_channel(
        "/hv", HV[0].name, lambda c: c["state"] == "OFF", timeout=10, since=since
    )

    open_page(page, lab, "overview")  # the module says its HV went down, when and why
    m1 = card(page, HV[0].module)
    expect(m1.get_by_test_id("interlock-action")).to_contain_text(
        "HV ramped down by interlock chiller_running at", timeout=WAIT
    )
    expect(m1.get_by_test_id("interlock-action")).to_contain_text(
        "chiller julabo STOPPED (REMOTE STOP)"
    )
    expect(m1.get_by_test_id("interlock")).to_contain_text(
        f"interlock chiller_running holds the HV off since {time.strftime('%Y-%m-%d')}"
    )
    expect(m1.get_by_test_id("interlock")).to_contain_text(rules["chiller_running"]["reason"])
    expect(card(page, HV[1].module).get_by_test_id("interlock")).to_contain_text("chiller_running")
    expect(card(page, HV[3].module).get_by_test_id("interlock")).to_have_count(
        0
    )  # the other chiller's
    expect(m1.get_by_test_id("alarm").first).to_contain_text("interlock chiller_running fired")
    expect(m1.get_by_test_id("module-on")).to_be_enabled()  # the sequencer would fail: it says so
    m1.get_by_test_id("module-on").click()
    expect(page.get_by_test_id("confirm-warning")).to_contain_text(
        f"Interlock chiller_running holds the HV of {M[0]} off"
    )
    page.get_by_test_id("confirm-no").click()

    open_page(page, lab, "power")  # a channel names the rule that holds it, and why
    hv = page.locator(f'tr[data-channel="{HV[0].name}"]')
    expect(hv.get_by_test_id("interlocks")).to_have_text(
        f"interlock chiller_running ({rules['chiller_running']['reason']}) holds the HV off"
    )
    expect(hv.get_by_test_id("switch")).to_be_disabled()

    open_page(page, lab, "alarms")  # every rule, its state, and the documented disarm
    rule = page.locator('tr[data-rule="chiller_running"]')
    expect(rule).to_have_attribute("data-active", "yes")
    expect(rule.get_by_test_id("armed")).to_have_text("armed")
    expect(rule.get_by_test_id("reason")).to_have_text(rules["chiller_running"]["reason"])
    expect(rule.get_by_test_id("effect")).to_have_text(f"ramps down the HV of {M[0]}, {M[1]}")
    expect(rule.get_by_test_id("rule-chiller")).to_have_text("(chiller julabo)")
    expect(rule.get_by_test_id("last-action")).to_have_text(
        re.compile(rf"^fired \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d: sent /hv/cmd/switch/{M[0]}$")
    )
    expect(page.locator('tr[data-rule="burnin_running"]')).to_have_attribute("data-active", "no")
    expect(page.locator('tr[data-rule="dewpoint"]').get_by_test_id("effect")).to_have_text(
        f"ramps down the HV of {M[0]}, {M[1]} and raises the set point of chiller julabo to 20 °C"
    )
    expect(
        page.locator('tr[data-rule="module_temperature"]').get_by_test_id("disarm")
    ).to_have_count(0)
    rule.get_by_test_id("disarm").click()
    confirm(page, "Disarm interlock chiller_running?",
            f"It clears the rule now: the HV of {M[0]}, {M[1]} may be switched on again.",
            "Until chiller julabo cools again")  # fmt: skip
    expect(rule).to_have_attribute("data-active", "no", timeout=WAIT)
    expect(rule.get_by_test_id("armed")).to_have_text("disarmed")
    expect(rule.get_by_test_id("disarm")).to_be_disabled()
    expect(rule.get_by_test_id("last-action")).to_contain_text("cleared ")  # reset, then cleared
    expect(page.get_by_test_id("answers")).to_contain_text("disarm interlock chiller_running")
    reset = lab.audit(since="1m", source=OPERATOR, kind="command")
    assert any(r["topic"] == "/interlock/cmd/reset/chiller_running" and r["ok"] for r in reset)


def test_the_chiller_page_shows_and_commands_each_unit(lab: UiLab, page: Page) -> None:
    """Each chiller on its own card: its own dew-point margin and warning, its own commands, and
    stopping it ramps down what it cools, through its own rule."""
    lab.reset()
    open_page(page, lab, "chiller")
    cards = page.get_by_test_id("chiller")
    expect(cards).to_have_count(2, timeout=WAIT)
    burnin = chiller_card(page, "burnin")
    expect(burnin).to_have_attribute("data-prefix", "/julabo_burnin")
    expect(burnin.get_by_test_id("cools")).to_have_text(f"Cools {M[2]}, {M[3]}")
    expect(burnin.get_by_test_id("chiller-state")).to_have_text("STOPPED", timeout=WAIT)
    expect(burnin.get_by_test_id("age")).to_have_attribute("title", re.compile("^/julabo_burnin: "))
    shown = float(burnin.get_by_test_id("dewpoint").inner_text().split()[0])
    expect(burnin.get_by_test_id("lowest-setpoint")).to_have_text(f"{shown + 3.0:.1f} °C")

    since = lab.client.mark()
    set_point_warned(  # below its own rule's 3 K margin: warned
        page, burnin, "5",
        f"5 °C is below the dew point {shown:.1f} °C + 3.0 K margin ({shown + 3:.1f} °C): "
        f"modules {M[2]}, {M[3]} cooled that far collect condensation.",
        "Interlock dewpoint_burnin fires when the coldest module is less than 3 K above the dew "
        f"point: it ramps down the HV of {M[2]}, {M[3]} and raises the set point of chiller "
        "burnin to 25 °C.",
    )  # fmt: skip
    page.get_by_test_id("confirm-no").click()
    assert not [m for m in lab.client.messages[since:] if m.topic.endswith("/cmd/setpoint")]

    burnin.get_by_test_id("setpoint-input").fill("16")
    burnin.get_by_test_id("setpoint-apply").click()
    expect(burnin.get_by_test_id("setpoint")).to_have_text("16.00 °C", timeout=WAIT)
    burnin.get_by_test_id("start").click()
    expect(burnin.get_by_test_id("chiller-state")).to_have_text("RUNNING", timeout=WAIT)
    expect(burnin.get_by_test_id("answer")).to_have_text("chiller burnin: start: ok")
    unit, other = lab.sims["burnin"].device, lab.sims["julabo"].device
    assert unit.running and unit.setpoints[unit.active] == 16.0
    assert not other.running and other.setpoints[other.active] != 16.0  # the other unit: as it was
    julabo = chiller_card(page, "julabo")
    expect(julabo.get_by_test_id("chiller-state")).to_have_text("STOPPED")

    page.goto(lab.url("overview"))  # one summary item per chiller
    item = page.locator('[data-chiller="burnin"]').get_by_test_id("chiller-state")
    expect(item).to_have_text("RUNNING", timeout=WAIT)
    expect(page.locator('[data-chiller="julabo"]').get_by_test_id("chiller-state")).to_have_text(
        "STOPPED"
    )
    for prefix in ("/julabo", "/julabo_burnin"):  # the age of each chiller's data
        age = page.locator(f'[data-testid=source-age][data-prefix="{prefix}"]')
        expect(age).to_have_text(re.compile(f"^{prefix} " + r"\d+(\.\d)? s$"))
    open_page(page, lab, "environment")  # each bath against the dew point
    expect(page.locator('tr[data-sensor="chiller-bath"]')).to_have_count(2, timeout=WAIT)
    expect(page.locator('tr[data-chiller="burnin"]')).to_contain_text("/julabo_burnin")

    lab.rules(lambda r: r["burnin_running"]["armed"], since=0)
    lab.hv_on(HV[2].name, volts=40)
    open_page(page, lab, "chiller")
    since = lab.client.mark()
    burnin.get_by_test_id("stop").click()
    confirm(page, "Stop the chiller burnin /julabo_burnin?",
            f"Stopping the chiller burnin ramps down the HV of {M[2]}, {M[3]} through "
            f"burnin_running (HV on now: {M[2]}).")  # fmt: skip
    rules = lab.rules(lambda r: r["burnin_running"]["active"], since=since)
    assert rules["burnin_running"]["modules"] == M[2:]
    assert not rules["chiller_running"]["active"]  # the other chiller's rule: untouched
    lab.power.wait_channel(
        "/hv", HV[2].name, lambda c: c["state"] == "OFF", timeout=10, since=since
    )
    open_page(page, lab, "overview")
    expect(card(page, HV[2].module).get_by_test_id("interlock")).to_contain_text("burnin_running")
    expect(card(page, HV[0].module).get_by_test_id("interlock")).to_have_count(0)


def test_environment_shows_the_sensors_and_the_dew_point_margin(lab: UiLab, page: Page) -> None:
    since = lab.client.mark()
    open_page(page, lab, "environment")
    row = page.locator('tr[data-sensor="sensor_1"]')
    expect(row.get_by_test_id("sensor-state")).to_have_text("ok", timeout=WAIT)

    def published(topic: str, key: str, digits: int) -> set[str]:
        """Every value of `key` published on `topic` since the test began, as the page shows it."""
        seen = [m.json for m in lab.client.messages[since:] if m.topic == topic]
        return {f"{s[key]:.{digits}f}" for s in seen if s[key] is not None}

    def shows_published(cell: str, key: str, digits: int, unit: str) -> bool:
        text = row.get_by_test_id(cell).inner_text()
        return text in {f"{v} {unit}" for v in published("/sensor_1/status", key, digits)}

    for cell, key, digits, unit in (("humidity", "humidity", 1, "%"),
                                    ("sensor-dewpoint", "dewpoint", 2, "°C"),
                                    ("temperature", "temperature", 2, "°C")):  # fmt: skip
        wait_until(
            lambda c=cell, k=key, d=digits, u=unit: shows_published(c, k, d, u),
            10,
            f"{cell} as published",
        )

    dewpoint = lab.client.latest("/sensor_1/status").json["dewpoint"]
    module = lab.client.latest("/temp_m1/status").json["temperature"]
    margin = page.locator(f'tr[data-module="{M[0]}"]').get_by_test_id("margin")
    expect(margin).to_have_text(re.compile(r"^-?\d+\.\d K$"), timeout=WAIT)
    assert float(margin.inner_text().split()[0]) == pytest.approx(module - dewpoint, abs=0.3)
    expect(page.get_by_test_id("dewpoint")).to_have_text(re.compile(r"^\d+\.\d °C$"))
    expect(page.locator('tr[data-sensor="chiller-bath"][data-chiller="julabo"]')).to_be_visible()


# -- honest data age ------------------------------------------------------------------------------


def test_a_frozen_source_is_greyed_within_its_timeout_on_the_servers_clock(
    lab: UiLab, browser: Browser
) -> None:
    """The browser's clock is an hour behind: ages are counted on the server's clock all the
    same; a frozen sensor daemon (its connection up: still `online`) is greyed once its data is
    older than 3 x its 2 s heartbeat, counted from its last status's `time`."""
    context, page, errors = new_page(browser, DESKTOP)
    page.clock.install(time=time.time() - 3600)
    try:
        open_page(page, lab, "environment")
        row = page.locator('tr[data-sensor="sensor_1"]')
        expect(row.get_by_test_id("sensor-state")).to_have_text("ok", timeout=WAIT)
        expect(row).not_to_have_class(re.compile("tdcs-old"))
        age = float(row.get_by_test_id("age").inner_text().split()[0])
        assert age < SENSOR_TIMEOUT  # not an hour: the server's clock
        expect(page.get_by_test_id("data-as-of")).to_contain_text(time.strftime("%Y-%m-%d %H:"))

        last = lab.client.latest("/sensor_1/status").json["time"]
        lab.sensors.freeze()
        try:
            expect(row).to_have_class(re.compile("tdcs-old"), timeout=(SENSOR_TIMEOUT + 3) * 1000)
            greyed = time.time()
            expect(row.get_by_test_id("sensor-state")).to_have_text("no live data")
            last = max(m.json["time"] for m in lab.client.messages if m.topic == "/sensor_1/status")
            assert greyed - last <= SENSOR_TIMEOUT + 1.5  # within its timeout (and a tick)
            expect(page.locator(f'tr[data-module="{M[1]}"]')).to_have_class(re.compile("tdcs-old"))
            open_page(page, lab, "overview")
            expect(card(page, HV[1].module).get_by_test_id("temperature")).to_have_class(
                re.compile("tdcs-old")
            )
            ages = page.locator('[data-testid=source-age][data-prefix="/sensor_1"]')
            expect(ages).to_have_class(re.compile("tdcs-old"))
            expect(page.get_by_test_id("lab-alarms")).to_contain_text(
                "sensor sensor_1: no live data for 6 s", timeout=WAIT
            )
        finally:
            lab.sensors.thaw()
        open_page(page, lab, "environment")
        expect(row.get_by_test_id("sensor-state")).to_have_text("ok", timeout=WAIT)
        expect(row).not_to_have_class(re.compile("tdcs-old"))
    finally:
        context.close()
    assert not errors, errors


# -- alarms, interlocks, acknowledgement ----------------------------------------------------------


def test_alarms_appear_in_the_banner_and_list_and_are_acknowledged_from_the_ui(
    lab: UiLab, page: Page
) -> None:
    """A trip, an interlock, a daemon going offline: in the banner of every page and in the
    list; acknowledged from the page, with the operator's name in `/alarms` and the audit log."""
    lab.reset()
    lab.hv_on(HV[1].name, volts=30)
    open_page(page, lab, "power")
    expect(page.get_by_test_id("banner-newest")).to_have_text(
        re.compile("^(no alarms|every alarm acknowledged)$")
    )

    since = lab.client.mark()
    lab.power.put(lab.power.chpv(HV[1].name, "SimLeak"), 50.0)  # it trips
    lab.alarms(
        lambda a: any(x["key"] == f"channel:/hv:{HV[1].name}" and x["active"] for x in a), since
    )
    lab.power.put(lab.power.chpv(HV[1].name, "SimLeak"), 0.0)
    lab.julabo.stop()  # the chiller daemon goes offline: its alarm, and the heartbeat interlock
    try:
        # offline at once (its last will), silent 3 x its 1 s heartbeat later
        down = {"offline:/julabo", "interlock:heartbeat", "silent:/julabo"}
        alarms = lab.alarms(lambda a: down <= {x["key"] for x in a if not x["acknowledged"]}, since)
        keys = {f"channel:/hv:{HV[1].name}", "offline:/julabo", "interlock:heartbeat"}
        mine = {a["key"]: a for a in alarms if a["key"] in keys}
        banner = page.get_by_test_id("banner")
        for sev in ("critical", "major"):  # the banner of every page counts them
            count = sum(a["severity"] == sev for a in alarms)
            expect(banner.get_by_test_id(f"banner-{sev}")).to_have_text(f"{count} {sev}")
        newest = max(alarms, key=lambda a: a["id"])
        expect(banner.get_by_test_id("banner-newest")).to_contain_text(newest["text"])
        for name in ("chiller", "overview"):
            open_page(page, lab, name)
            expect(page.get_by_test_id("banner-critical")).to_have_text(
                re.compile(r"^[1-9]\d* critical$")
            )
        expect(page.get_by_test_id("lab-alarms")).to_contain_text("/julabo daemon offline")
        expect(
            card(page, HV[1].module)
            .get_by_test_id("alarm")
            .filter(has_text=f"{HV[1].name} ({HV[1].module}) TRIPPED")
        ).to_be_visible()

        page.get_by_test_id("banner-newest").click()  # to the alarms page
        expect(page.get_by_test_id("alarms-page")).to_be_visible(timeout=WAIT)
        for key, a in mine.items():
            row = page.locator(f'tr[data-key="{key}"]')
            expect(row.get_by_test_id("severity")).to_have_text(a["severity"])
            expect(row.get_by_test_id("text")).to_contain_text(a["text"])
            expect(row).to_contain_text(time.strftime("%Y-%m-%d", time.localtime(a["time"])))
            expect(row.get_by_test_id("ack")).to_have_text("no")
        expect(
            page.locator('tr[data-key="interlock:heartbeat"]').get_by_test_id("severity")
        ).to_have_text("critical")

        since = lab.client.mark()
        trip = page.locator(f'tr[data-key="channel:/hv:{HV[1].name}"]')
        trip.get_by_test_id("ack-button").click()
        expect(trip.get_by_test_id("ack")).to_contain_text(f"by {OPERATOR}, ", timeout=WAIT)
        key = f"channel:/hv:{HV[1].name}"
        listed = lab.alarms(lambda a: any(x["key"] == key and x["acknowledged"] for x in a), since)
        assert (
            next(a for a in listed if a["key"] == f"channel:/hv:{HV[1].name}")["ack_by"] == OPERATOR
        )
        records = lab.audit(since="1m", source=OPERATOR)
        acked = mine[f"channel:/hv:{HV[1].name}"]["id"]
        assert any(r["topic"] == f"/alarms/cmd/ack/{acked}" and r["ok"] for r in records), records

        page.get_by_test_id("ack-all").click()
        confirm(page, re.compile(r"^Acknowledge all \d+ unacknowledged alarms\?$"),
                f"They are acknowledged as {OPERATOR}")  # fmt: skip
        expect(
            page.locator('tr[data-key="offline:/julabo"]').get_by_test_id("ack")
        ).to_contain_text(f"by {OPERATOR}", timeout=WAIT)
        expect(page.get_by_test_id("banner-unacknowledged")).to_have_text("0 unacknowledged")
        page.get_by_test_id("history-load").click()  # the history from the audit log
        expect(page.get_by_test_id("history-row").filter(has_text="/alarms/cmd/ack/all").first
               ).to_contain_text(OPERATOR, timeout=WAIT)  # fmt: skip
        expect(page.get_by_test_id("history-row").filter(has_text="fired").first).to_be_visible()
    finally:
        lab.julabo.start()
    lab.rules(lambda r: not r["heartbeat"]["active"], since=0, timeout=15)


def test_broker_loss_is_shown_and_nothing_is_sent(lab: UiLab, page: Page) -> None:
    lab.reset()
    open_page(page, lab, "chiller")
    julabo = chiller_card(page, "julabo")
    broker = page.get_by_test_id("broker")
    lab.broker.stop()
    try:
        lost = re.compile(r"^broker lost since \d\d:\d\d:\d\d: values frozen$")
        expect(broker).to_have_text(lost, timeout=WAIT)
        expect(page.get_by_test_id("banner")).to_have_class(re.compile("tdcs-banner-frozen"))
        expect(julabo.get_by_test_id("chiller-values")).to_have_class(re.compile("tdcs-old"))
        expect(page.get_by_test_id("banner-all-off")).to_be_disabled()
        expect(julabo.get_by_test_id("start")).to_be_disabled()
    finally:
        lab.broker.start()
    expect(broker).to_have_text("broker connected", timeout=20_000)
    expect(julabo.get_by_test_id("chiller-values")).not_to_have_class(re.compile("tdcs-old"),
                                                                    timeout=20_000)  # fmt: skip
    expect(julabo.get_by_test_id("start")).to_be_enabled(timeout=WAIT)


def test_a_page_cut_off_from_node_red_says_so_and_greys_everything(lab: UiLab, page: Page) -> None:
    open_page(page, lab, "overview")
    bath = page.locator('.tdcs-summary-item[data-chiller="julabo"]')
    expect(bath).not_to_have_class(re.compile("tdcs-old"))
    page.context.set_offline(True)  # the browser's link to Node-RED (its websocket) is gone
    try:
        expect(page.get_by_test_id("link")).to_contain_text(
            "no update from Node-RED for", timeout=WAIT
        )
        expect(bath).to_have_class(re.compile("tdcs-old"))
        expect(page.get_by_test_id("banner-all-off")).to_be_disabled()
    finally:
        page.context.set_offline(False)
    expect(page.get_by_test_id("link")).to_have_count(0, timeout=20_000)
    expect(bath).not_to_have_class(re.compile("tdcs-old"))


# -- the sequencer, "All off", and who did it -----------------------------------------------------


def test_a_module_switched_on_and_off_from_the_overview_through_the_sequencer(
    lab: UiLab, page: Page
) -> None:
    lab.reset()
    lab.command(HV[1].topic("setv"), 60)
    open_page(page, lab, "overview")
    m2 = card(page, HV[1].module)
    since = lab.client.mark()
    m2.get_by_test_id("module-on").click()
    confirm(page, f"Switch module {M[1]} on?",
            f"LV {LV[1].name} (10.5 V) on; the sequencer waits until it is at its set point,",
            f"then HV {HV[1].name} (60.0 V) on, ramping to its set voltage.")  # fmt: skip
    done = lab.client.wait_for("/dcs/response", lambda m: m.json["ok"], 30, since).json
    assert done["id"].startswith(f"{OPERATOR}:ui-")
    expect(m2.get_by_test_id("sequence")).to_have_text("ON", timeout=WAIT)
    expect(m2.locator("[data-testid=hv] [data-testid=state]")).to_have_text("ON")
    expect(m2.locator("[data-testid=lv] [data-testid=state]")).to_have_text("ON")
    steps = [m.json["step"] for m in lab.client.messages[since:]
             if m.topic == "/dcs/action" and m.json["event"] == "step"]  # fmt: skip
    assert steps == ["lv_on", "lv_ready", "hv_on", "hv_ready"]

    since = lab.client.mark()
    m2.get_by_test_id("module-off").click()
    confirm(
        page,
        f"Switch module {M[1]} off?",
        f"HV {HV[1].name} ramps down to 0 V,",
        f"then LV {LV[1].name} switches off.",
    )
    lab.client.wait_for("/dcs/response", lambda m: m.json["ok"], 30, since)
    expect(m2.get_by_test_id("sequence")).to_have_text("OFF", timeout=WAIT)
    expect(m2.locator("[data-testid=lv] [data-testid=state]")).to_have_text("OFF")
    records = lab.audit(since="1m", module=M[1], source=OPERATOR)
    assert [
        (r["topic"], json.loads(r["payload"])["value"])
        for r in records
        if r["topic"].startswith("/dcs/")
    ] == [(f"/dcs/cmd/module/{M[1]}", "on"), (f"/dcs/cmd/module/{M[1]}", "off")]


def test_all_off_is_reachable_from_every_page(lab: UiLab, page: Page) -> None:
    lab.reset()
    lab.command(HV[0].topic("setv", by="module"), 30)
    lab.command(f"/dcs/cmd/module/{M[0]}", "on", timeout=30)
    for name in PAGES:
        open_page(page, lab, name)
        expect(page.get_by_test_id("banner-all-off")).to_be_enabled()
    since = lab.client.mark()
    page.get_by_test_id("banner-all-off").click()  # from the environment page
    confirm(page, "Switch every module off?",
            f"Through the sequencer: the HV of {M[0]}-{M[-1]} ramps down to 0 V, then their LV "
            "switches off.",
            f"HV on now: {M[0]}.")  # fmt: skip
    sent = lab.client.wait_for("/dcs/cmd/module/all", timeout=5, since=since).json
    assert sent["value"] == "off" and sent["id"].startswith(f"{OPERATOR}:")
    lab.client.wait_for("/dcs/response", lambda m: m.json["ok"], 30, since)
    lab.power.wait_channel("/lv", LV[0].name, lambda c: c["state"] == "OFF", since=since)


def test_the_operators_name_is_asked_once_and_in_the_audit_log(
    lab: UiLab, browser: Browser
) -> None:
    lab.reset()
    context, page, errors = new_page(browser, DESKTOP, operator=None)
    try:
        open_page(page, lab, "power")
        expect(page.get_by_test_id("name-dialog")).to_be_visible()  # a new browser is asked
        page.get_by_test_id("name-later").click()  # only looking
        expect(page.get_by_test_id("operator")).to_have_text("not set")
        since = lab.client.mark()
        page.locator(f'tr[data-channel="{LV[2].name}"]').get_by_test_id("switch").click()
        expect(page.get_by_test_id("name-dialog")).to_be_visible()  # a command needs a name
        assert not [m for m in lab.client.messages[since:] if "/cmd/" in m.topic]
        page.get_by_test_id("name-input").fill("Night Owl")
        page.get_by_test_id("name-save").click()  # and then it goes out
        sent = lab.client.wait_for(LV[2].topic("switch"), timeout=5, since=since)
        assert sent.json["id"].startswith("Night_Owl:ui-") and sent.json["value"] == "on"
        assert abs(sent.json["time"] - time.time()) < 5  # unix s: the daemon judges its age
        wait_crate(lab, LV[2].name, "Pw", 1)
        expect(page.get_by_test_id("operator")).to_have_text("Night_Owl")
        expect(page.get_by_test_id("answer-entry").first).to_contain_text("by Night_Owl")
        page.reload()  # asked once per browser
        expect(page.get_by_test_id("power-page")).to_be_visible(timeout=WAIT)
        expect(page.get_by_test_id("operator")).to_have_text("Night_Owl", timeout=WAIT)
        expect(page.get_by_test_id("name-dialog")).to_have_count(0)
        records = lab.audit(since="1m", source="Night_Owl")
        assert [r["topic"] for r in records] == [LV[2].topic("switch")] and records[0]["ok"]
    finally:
        context.close()
    assert not errors, errors


# -- security -------------------------------------------------------------------------------------


def test_editor_and_admin_api_need_credentials(lab: UiLab, page: Page) -> None:
    base = lab.ui.url
    assert _http(base + "flows")[0] == 401
    assert _http(base + "settings")[0] == 401
    assert _http(base + "auth/token", {**LOGIN, "password": "wrong"})[0] == 403
    status, token = _http(base + "auth/token", {**LOGIN, "password": lab.ui.password})
    assert status == 200, token
    status, flows = _http(base + "flows", token=token["access_token"])
    assert status == 200 and any(n["type"] == "ui-base" for n in flows)
    assert lab.ui.password not in (lab.ui.state_dir / "node-red.log").read_text()

    page.goto(base)  # the editor asks to log in before it shows anything
    expect(page.locator("#node-dialog-login-username")).to_be_visible(timeout=WAIT)
    page.locator("#node-dialog-login-username").fill("admin")
    page.locator("#node-dialog-login-password").fill(lab.ui.password)
    page.locator("#node-dialog-login-submit").click()
    expect(page.locator("#red-ui-workspace-tabs")).to_contain_text("Control UI", timeout=WAIT)


# -- screenshots ----------------------------------------------------------------------------------


def lab_at_work(lab: UiLab) -> None:
    """LV on, HV on at 100-150 V, both chillers cooling; a trip latched; a refused command."""
    lab.reset()
    for cmd, value in (("/lv/cmd/switch/all", "on"), ("/julabo/cmd/setpoint", 12),
                       ("/julabo_burnin/cmd/setpoint", 15)):  # fmt: skip
        lab.command(cmd, value)
    for name in CHILLERS:
        lab.start_chiller(name)
    lab.hv_on(HV[0].name, volts=100)
    lab.hv_on(HV[1].name, volts=150)
    lab.hv_on(HV[2].name, volts=40)
    since = lab.client.mark()
    lab.power.put(lab.power.chpv(HV[2].name, "SimLeak"), 50.0)
    lab.alarms(lambda a: any(x["key"] == f"channel:/hv:{HV[2].name}" for x in a), since)
    lab.power.put(lab.power.chpv(HV[2].name, "SimLeak"), 0.0)
    assert not lab.client.command(LOW.topic("setv"), 450, "/hv/response")["ok"]


def chiller_stopped(lab: UiLab) -> None:
    """Then chiller julabo stops: chiller_running ramps the HV of M1 and M2 (what it cools)
    down; burnin keeps cooling M3 and M4."""
    since = lab.client.mark()
    lab.command("/julabo/cmd/switch", "off")
    lab.rules(lambda r: r["chiller_running"]["active"], since=since)
    for name in (HV[0].name, HV[1].name):
        lab.power.wait_channel("/hv", name, lambda c: c["state"] == "OFF", 10, since)


# the pages at work first, then (the chiller stopped) the alarms and the overview
BEFORE, AFTER = ("power", "chiller", "environment"), ("alarms", "overview")


def show(page: Page, lab: UiLab, name: str) -> None:
    """A page of the lab at work, once its data are in."""
    open_page(page, lab, name)
    if name == "overview":
        expect(card(page, HV[1].module).get_by_test_id("interlock-action")).to_contain_text(
            "chiller_running", timeout=WAIT
        )
        expect(card(page, HV[3].module).get_by_test_id("temperature")).to_have_text(
            re.compile(r"^\d+\.\d °C$"), timeout=WAIT
        )
        expect(card(page, HV[2].module).get_by_test_id("alarm").first).to_be_visible()
    elif name == "alarms":
        expect(page.get_by_test_id("alarm-row").first).to_be_visible(timeout=WAIT)
        expect(page.locator('tr[data-rule="chiller_running"]')).to_have_attribute(
            "data-active", "yes", timeout=WAIT
        )
        expect(page.get_by_test_id("history-row").first).to_be_visible(timeout=WAIT)
    elif name == "power":
        expect(page.locator(f'tr[data-channel="{HV[1].name}"]')).to_have_attribute(
            "data-state", "ON", timeout=WAIT
        )
    elif name == "chiller":
        expect(page.get_by_test_id("chiller-state")).to_have_text(["RUNNING"] * len(CHILLERS),
                                                                  timeout=WAIT)  # fmt: skip
    else:
        expect(page.get_by_test_id("lowest-margin")).to_have_text(re.compile(r" K$"), timeout=WAIT)


def test_screenshots_of_every_page(lab: UiLab, page: Page) -> None:
    """A lab at work, then its chiller stopped: one desktop screenshot per page."""
    lab_at_work(lab)
    for name in BEFORE:
        show(page, lab, name)
        screenshot(page, name)
    chiller_stopped(lab)
    for name in AFTER:  # (the History page's: test_ui_access, which writes its points)
        show(page, lab, name)
        screenshot(page, name)
    for name in PAGES:
        assert (SCREENSHOTS / f"{name}.png").stat().st_size > 10_000


def test_on_a_phone_every_module_shows_state_temperature_and_alarms_without_scrolling_sideways(
    lab: UiLab, phone: Page
) -> None:
    """390 x 844: one card per module, alarms and interlocks first; no page scrolls sideways."""
    lab_at_work(lab)
    for name in BEFORE:
        show(phone, lab, name)
        assert no_horizontal_scroll(phone) == [], name
        screenshot(phone, f"phone-{name}")
    chiller_stopped(lab)
    for name in AFTER:
        show(phone, lab, name)
        assert no_horizontal_scroll(phone) == [], name
        screenshot(phone, f"phone-{name}")
    for module in M:  # the overview: every module's card, all of it
        m = card(phone, module)
        for what in ("alarms", "lv", "hv", "temperature", "margin"):
            box = m.get_by_test_id(what).first.bounding_box()
            inside = box and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"]
            assert inside, (module, what, box)
        expect(m.get_by_test_id("temperature")).to_have_text(re.compile(r"^\d+\.\d °C$"))
        expect(m.locator("[data-testid=hv] [data-testid=state]")).not_to_have_text("")
        if module in CHILLERS["julabo"][1]:  # the stopped chiller's modules: held by its rule
            expect(m.get_by_test_id("interlock")).to_contain_text("chiller_running")
        else:  # burnin's: still cooled
            expect(m.get_by_test_id("interlock")).to_have_count(0)
        alarms, body = (
            m.get_by_test_id("alarms").bounding_box(),
            m.get_by_test_id("hv").bounding_box(),
        )
        assert alarms["y"] + alarms["height"] <= body["y"]  # alarms and interlocks first
    m3 = card(phone, HV[2].module).get_by_test_id("alarm")
    expect(m3.filter(has_text=f"{HV[2].name} ({HV[2].module}) TRIPPED")).to_be_visible()
