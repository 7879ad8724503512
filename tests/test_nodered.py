"""The operators' control UI: real Node-RED with the repo's flows, real Mosquitto, the simulated
crate + power daemon, the Julabo simulator + daemon and simulated sensors, driven through Debian's
Chromium by Playwright. Each page's screenshot is written to docs/screenshots/.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.conftest import EXAMPLE_SLOTS, ROOT, Broker, PowerLab, _logged, python_process
from tests.noderedapi import LOGIN
from tests.noderedapi import api as _http
from trackerdcs.config import load_config
from trackerdcs.sim.julabo import JulaboSimulator
from trackerdcs.stack.nodered import FLOWS, NODE_RED_DIR, NodeRed
from trackerdcs.stack.process import ManagedProcess, free_port, wait_until

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]  # fmt: skip
SCREENSHOTS = ROOT / "docs" / "screenshots"
HV, LV = EXAMPLE_SLOTS["hv"], EXAMPLE_SLOTS["lv"]  # boards of the example crate
WAIT = 10_000  # ms, for anything that crosses MQTT, the daemons and the crate

JULABO_FAST = {"write_delay": 0.005, "query_delay": 0.002, "timeout": 0.3,
               "poll_interval": 0.2, "heartbeat": 1.0, "reconnect_min_delay": 0.1,
               "reconnect_max_delay": 0.5}  # fmt: skip
SENSORS = [
    {"name": "sensor_1", "kind": "room", "source": "sim"},
    *({"name": f"temp_m{i}", "kind": "module", "module": f"M{i}", "source": "sim",
       "max_temperature": 30} for i in range(1, 5)),
]  # fmt: skip

pytestmark = pytest.mark.skipif(
    not (NODE_RED_DIR / "node_modules" / "node-red").exists() or not Path(CHROMIUM).exists(),
    reason="needs Node-RED (npm install in node-red/) and Debian's chromium: scripts/setup.sh",
)


# Two chillers: `julabo` (/julabo) cools M1 and M2, `burnin` (/julabo_burnin) M3 and M4.
CHILLERS = {"julabo": ("/julabo", ["M1", "M2"]), "burnin": ("/julabo_burnin", ["M3", "M4"])}


class UiLab:
    """The simulated lab with every daemon (two chillers), and Node-RED serving the repo's
    flows."""

    def __init__(self, workdir: Path, broker: Broker) -> None:
        self.ports = {name: free_port() for name in CHILLERS}
        chillers = [
            {"name": name, "url": f"socket://127.0.0.1:{self.ports[name]}", "prefix": prefix,
             "modules": modules, "setpoint_min": -30, "setpoint_max": 40, **JULABO_FAST}
            for name, (prefix, modules) in CHILLERS.items()
        ]  # fmt: skip
        self.power = PowerLab(workdir, broker, "nodered", lab="nodered", julabo=None,
                              chillers=chillers, sensors=SENSORS)  # fmt: skip
        config = str(self.power.config)
        # the baths move 40 K/min: visible
        self.sims = {name: JulaboSimulator(tick=0.1, speed=20.0) for name in CHILLERS}
        self.sim = self.sims["julabo"]
        self.daemons: list[ManagedProcess] = [
            *(python_process(f"julabo daemon {name}", "trackerdcs.julabo.daemon",
                             ["--config", config, "--chiller", name],
                             workdir / f"nodered-julabo-{name}.log",
                             ready=_logged("serving chiller")) for name in CHILLERS),
            python_process("sensor daemon", "trackerdcs.sensors.daemon", ["--config", config],
                           workdir / "nodered-sensors.log", ready=_logged("serving")),
        ]  # fmt: skip
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

    def reset(self) -> None:
        """Power all off and cleared, the chillers stopped."""
        self.power.reset()
        for name, (prefix, _) in CHILLERS.items():
            if self.sims[name].device.running:
                answer = self.client.command(f"{prefix}/cmd/switch", "off", f"{prefix}/response")
                assert answer["ok"], answer


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


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
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


def crate_value(lab: UiLab, board: int, channel: int, param: str) -> Any:
    return lab.power.get(lab.power.pv(board, channel, param))


def wait_crate(lab: UiLab, board: int, channel: int, param: str, value: Any) -> None:
    wait_until(
        lambda: crate_value(lab, board, channel, param) == value,
        5,
        f"{param} of board {board} channel {channel} to be {value}",
        poll=0.1,
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
    assert subscribed == ["/+/availability", "/+/response", "/+/state", "/+/status"]
    assert {n["type"] for n in flows} >= {"ui-base", "ui-page", "ui-template", "ui-chart"}


# -- power supplies -------------------------------------------------------------------------------


def test_switching_a_channel_from_the_page(lab: UiLab, page: Page) -> None:
    lab.reset()
    open_page(page, lab, "power")
    row = page.locator('tr[data-channel="lv_m2"]')
    switch = row.get_by_test_id("switch")
    expect(row).to_have_attribute("data-state", "OFF")
    expect(switch).not_to_be_checked()

    switch.click()
    wait_crate(lab, LV, 1, "Pw", 1)  # the command reached the simulated crate
    expect(row).to_have_attribute("data-state", "ON", timeout=WAIT)
    expect(switch).to_be_checked()
    expect(row.get_by_test_id("answer")).to_have_text("ok")
    expect(row.get_by_test_id("vmon")).to_have_text("10.5 V")

    # HV asks for a confirmation first; cancelling sends nothing
    hv = page.locator('tr[data-channel="hv_m1"]')
    hv.get_by_test_id("switch").click()
    expect(page.get_by_test_id("confirm-text")).to_contain_text("Switch hv_m1 (M1) ON?")
    page.get_by_test_id("confirm-no").click()
    expect(page.get_by_test_id("confirm")).to_have_count(0)
    expect(hv.get_by_test_id("answer")).to_have_text("")
    hv.get_by_test_id("switch").click()
    page.get_by_test_id("confirm-yes").click()
    wait_crate(lab, HV, 0, "Pw", 1)
    expect(hv).to_have_attribute("data-state", "ON", timeout=WAIT)
    expect(hv.get_by_test_id("answer")).to_have_text("ok")
    assert crate_value(lab, LV, 1, "Pw") == 1

    switch.click()  # off needs no confirmation
    wait_crate(lab, LV, 1, "Pw", 0)
    expect(row).to_have_attribute("data-state", "OFF", timeout=WAIT)
    expect(switch).not_to_be_checked()


def test_controls_follow_the_channel_state_and_clear_a_trip(lab: UiLab, page: Page) -> None:
    lab.reset()
    assert lab.power.command("/hv/cmd/setv/hv_m3", 50)["ok"]
    assert lab.power.command("/hv/cmd/switch/hv_m3", "on")["ok"]
    open_page(page, lab, "power")
    row = page.locator('tr[data-channel="hv_m3"]')
    expect(row).to_have_attribute("data-state", "ON", timeout=WAIT)
    expect(row.get_by_test_id("clear")).to_be_disabled()  # nothing to clear

    lab.power.put(lab.power.pv(HV, 2, "SimLeak"), 50.0)  # 50 µA over the 10 µA limit
    expect(row).to_have_attribute("data-state", "TRIPPED", timeout=WAIT)
    lab.power.put(lab.power.pv(HV, 2, "SimLeak"), 0.0)
    switch = row.get_by_test_id("switch")
    expect(switch).to_be_disabled()  # the daemon refuses `on` while TRIPPED
    expect(switch).to_have_attribute("title", "the daemon refuses this in state TRIPPED")
    expect(row.get_by_test_id("setv")).to_be_disabled()  # no value typed yet
    row.get_by_test_id("setv-input").fill("20")
    expect(row.get_by_test_id("setv")).to_be_enabled()  # set_voltage is allowed when TRIPPED

    page.goto(lab.url("overview"))  # the trip is an active alarm of module M3
    alarms = page.locator('tr[data-module="M3"]').get_by_test_id("alarms")
    expect(alarms).to_contain_text("HV hv_m3 TRIPPED (INT_TRIP)", timeout=WAIT)
    expect(page.locator('tr[data-module="M1"]').get_by_test_id("alarms")).to_have_text("none")

    open_page(page, lab, "power")
    row.get_by_test_id("clear").click()
    expect(row).to_have_attribute("data-state", "OFF", timeout=WAIT)
    expect(switch).to_be_enabled()
    expect(row.get_by_test_id("clear")).to_be_disabled()
    expect(page.get_by_test_id("answers")).to_contain_text("clear trips (hv_m3)")


def test_setting_a_voltage_and_the_daemons_error_text(lab: UiLab, page: Page) -> None:
    lab.reset()
    open_page(page, lab, "power")
    row = page.locator('tr[data-channel="hv_m2"]')
    field, apply = row.get_by_test_id("setv-input"), row.get_by_test_id("setv")

    field.fill("150")
    apply.click()
    expect(page.get_by_test_id("confirm-text")).to_have_text("Set hv_m2 (M2) to 150 V?")
    page.get_by_test_id("confirm-yes").click()
    expect(row.get_by_test_id("answer")).to_have_text("ok", timeout=WAIT)
    expect(row.get_by_test_id("vreq")).to_have_text("150.0 V")
    assert crate_value(lab, HV, 1, "V0Set") == 150.0

    field.fill("700")  # above the channel's vmax: the daemon refuses it
    apply.click()
    page.get_by_test_id("confirm-yes").click()
    error = "700 V exceeds the maximum 600 V of hv_m2"
    expect(row.get_by_test_id("answer")).to_have_text(error, timeout=WAIT)
    entry = page.get_by_test_id("answer-entry").first
    expect(entry).to_have_attribute("data-state", "error")
    expect(entry).to_contain_text("hv_m2: set 700 V")
    expect(entry).to_contain_text(error)
    assert crate_value(lab, HV, 1, "V0Set") == 150.0  # nothing written

    field.fill("lots")
    field.press("Enter")
    page.get_by_test_id("confirm-yes").click()
    expect(row.get_by_test_id("answer")).to_have_text(
        "voltage must be a number, got 'lots'", timeout=WAIT
    )

    lv = page.locator('tr[data-channel="lv_m1"]')  # LV: no confirmation
    lv.get_by_test_id("seti-input").fill("3")
    lv.get_by_test_id("seti").click()
    expect(lv.get_by_test_id("ilim")).to_have_text("3.00 A", timeout=WAIT)
    expect(lv.get_by_test_id("answer")).to_have_text("ok")
    assert crate_value(lab, LV, 0, "I0Set") == 3.0
    assert lab.power.command("/lv/cmd/seti/lv_m1", 2.5)["ok"]


# -- chiller and environment ----------------------------------------------------------------------


def test_chiller_set_point_start_and_stop(lab: UiLab, page: Page) -> None:
    lab.reset()
    open_page(page, lab, "chiller")
    card = page.locator('[data-testid="chiller"][data-chiller="julabo"]')
    state = card.get_by_test_id("chiller-state")
    expect(state).to_have_text("STOPPED", timeout=WAIT)
    expect(card.get_by_test_id("status-text")).to_have_text("2 REMOTE STOP")
    expect(card.get_by_test_id("stop")).to_be_disabled()

    card.get_by_test_id("setpoint-input").fill("-5")
    card.get_by_test_id("setpoint-apply").click()
    expect(card.get_by_test_id("setpoint")).to_have_text("-5.00 °C", timeout=WAIT)
    expect(card.get_by_test_id("answer")).to_have_text("chiller julabo: set point -5 °C: ok")
    device = lab.sim.device
    assert device.setpoints[device.active] == -5.0

    card.get_by_test_id("start").click()
    expect(state).to_have_text("RUNNING", timeout=WAIT)
    expect(card.get_by_test_id("status-text")).to_have_text("3 REMOTE START")
    assert device.running is True
    expect(card.get_by_test_id("start")).to_be_disabled()

    since = lab.client.mark()
    card.get_by_test_id("setpoint-input").fill("55")
    card.get_by_test_id("setpoint-apply").click()
    refused = lab.client.wait_for("/julabo/response", lambda m: not m.json["ok"], 5, since).json
    assert "55" in refused["error"]
    expect(card.get_by_test_id("answer")).to_have_text(
        f"chiller julabo: set point 55 °C: {refused['error']}", timeout=WAIT
    )
    assert device.setpoints[device.active] == -5.0

    card.get_by_test_id("stop").click()
    expect(state).to_have_text("STOPPED", timeout=WAIT)
    assert device.running is False

    julabo = lab.daemons[0]  # no daemon: nothing can be sent
    julabo.stop()
    expect(card.get_by_test_id("availability")).to_have_text("daemon offline", timeout=WAIT)
    for control in ("start", "stop", "setpoint-apply", "setpoint-input"):
        expect(card.get_by_test_id(control)).to_be_disabled()
    other = page.locator('[data-testid="chiller"][data-chiller="burnin"]')
    expect(other.get_by_test_id("setpoint-input")).to_be_enabled()  # its daemon is up
    julabo.start()
    expect(card.get_by_test_id("availability")).to_have_text("daemon online", timeout=WAIT)
    expect(card.get_by_test_id("start")).to_be_enabled(timeout=WAIT)


def test_the_chiller_page_shows_and_commands_each_unit(lab: UiLab, page: Page) -> None:
    lab.reset()
    open_page(page, lab, "chiller")
    cards = page.get_by_test_id("chiller")
    expect(cards).to_have_count(2, timeout=WAIT)
    burnin = page.locator('[data-testid="chiller"][data-chiller="burnin"]')
    expect(burnin).to_have_attribute("data-prefix", "/julabo_burnin")
    expect(burnin.get_by_test_id("cools")).to_have_text("Cools M3, M4")
    expect(burnin.get_by_test_id("chiller-state")).to_have_text("STOPPED", timeout=WAIT)

    burnin.get_by_test_id("setpoint-input").fill("12")
    burnin.get_by_test_id("setpoint-apply").click()
    expect(burnin.get_by_test_id("setpoint")).to_have_text("12.00 °C", timeout=WAIT)
    burnin.get_by_test_id("start").click()
    expect(burnin.get_by_test_id("chiller-state")).to_have_text("RUNNING", timeout=WAIT)
    expect(burnin.get_by_test_id("answer")).to_have_text("chiller burnin: start: ok")
    unit, other = lab.sims["burnin"].device, lab.sims["julabo"].device
    assert unit.running and unit.setpoints[unit.active] == 12.0
    assert not other.running and other.setpoints[other.active] != 12.0  # the other unit: as it was
    julabo = page.locator('[data-testid="chiller"][data-chiller="julabo"]')
    expect(julabo.get_by_test_id("chiller-state")).to_have_text("STOPPED")

    page.goto(lab.url("overview"))  # one summary item per chiller
    item = page.locator('[data-chiller="burnin"]').get_by_test_id("chiller-state")
    expect(item).to_have_text("RUNNING", timeout=WAIT)
    expect(page.locator('[data-chiller="julabo"]').get_by_test_id("chiller-state")).to_have_text(
        "STOPPED"
    )
    open_page(page, lab, "environment")  # each bath against the dew point
    expect(page.locator('tr[data-sensor="chiller-bath"]')).to_have_count(2, timeout=WAIT)
    expect(page.locator('tr[data-chiller="burnin"]')).to_contain_text("/julabo_burnin")


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
    margin = page.locator('tr[data-module="M1"]').get_by_test_id("margin")
    expect(margin).to_have_text(re.compile(r"^-?\d+\.\d K$"), timeout=WAIT)
    assert float(margin.inner_text().split()[0]) == pytest.approx(module - dewpoint, abs=0.3)
    expect(page.get_by_test_id("dewpoint")).to_have_text(re.compile(r"^\d+\.\d °C$"))
    expect(page.locator('tr[data-sensor="chiller-bath"][data-chiller="julabo"]')).to_be_visible()


# -- security -------------------------------------------------------------------------------------


def test_commands_carry_their_time_and_a_silent_daemon_shows_stale(lab: UiLab, page: Page) -> None:
    lab.reset()
    open_page(page, lab, "power")
    since = lab.client.mark()
    page.locator('tr[data-channel="lv_m3"]').get_by_test_id("switch").click()
    sent = lab.client.wait_for("/lv/cmd/switch/+", timeout=5, since=since)
    assert abs(sent.json["time"] - time.time()) < 5 and sent.json["value"] == "on"  # unix s
    wait_crate(lab, LV, 2, "Pw", 1)
    lab.reset()

    # the sensor daemon frozen: still `online` (its connection is up), but no live status
    open_page(page, lab, "environment")
    state = page.locator('tr[data-sensor="sensor_1"]').get_by_test_id("sensor-state")
    expect(state).to_have_text("ok", timeout=WAIT)
    sensors = next(d for d in lab.daemons if d.name == "sensor daemon")
    sensors.signal(signal.SIGSTOP)
    try:  # 3 x its 2 s heartbeat
        expect(state).to_have_text("no live data", timeout=15_000)
        open_page(page, lab, "overview")
        expect(page.get_by_test_id("lab-alarms")).to_contain_text(
            "sensor sensor_1: no live data for 6 s"
        )
    finally:
        sensors.signal(signal.SIGCONT)
    open_page(page, lab, "environment")
    expect(state).to_have_text("ok", timeout=WAIT)


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


def test_screenshots_of_every_page(lab: UiLab, page: Page) -> None:
    """A lab at work: LV on, HV on at 100-150 V, the chiller cooling; one screenshot per page."""
    lab.reset()
    for cmd, value in (("/lv/cmd/switch/all", "on"), ("/hv/cmd/setv/M1", 100),
                       ("/hv/cmd/setv/M2", 150), ("/hv/cmd/switch/M1", "on"),
                       ("/hv/cmd/switch/M2", "on"), ("/julabo/cmd/setpoint", -10),
                       ("/julabo/cmd/switch", "on")):  # fmt: skip
        prefix = "/" + cmd.split("/")[1]
        answer = lab.client.command(cmd, value, f"{prefix}/response")
        assert answer["ok"], answer

    open_page(page, lab, "power")
    expect(page.locator('tr[data-channel="hv_m2"]')).to_have_attribute(
        "data-state", "ON", timeout=WAIT
    )
    page.locator('tr[data-channel="hv_m3"]').get_by_test_id("setv-input").fill("700")
    page.locator('tr[data-channel="hv_m3"]').get_by_test_id("setv").click()
    page.get_by_test_id("confirm-yes").click()
    expect(page.locator('tr[data-channel="hv_m3"]').get_by_test_id("answer")).to_contain_text(
        "exceeds the maximum", timeout=WAIT
    )
    screenshot(page, "power")

    open_page(page, lab, "chiller")
    card = page.locator('[data-testid="chiller"][data-chiller="julabo"]')
    expect(card.get_by_test_id("chiller-state")).to_have_text("RUNNING", timeout=WAIT)
    screenshot(page, "chiller")

    open_page(page, lab, "environment")
    expect(page.get_by_test_id("lowest-margin")).to_have_text(re.compile(r" K$"), timeout=WAIT)
    screenshot(page, "environment")

    open_page(page, lab, "overview")  # last: the trends have had time for a few points
    expect(page.locator('tr[data-module="M2"] [data-testid=hv] [data-testid=state]')).to_have_text(
        "ON", timeout=WAIT
    )
    expect(page.locator('[data-chiller="julabo"] [data-testid=chiller-state]')).to_have_text(
        "RUNNING", timeout=WAIT
    )
    expect(page.locator('tr[data-module="M4"] [data-testid=temperature]')).to_have_text(
        re.compile(r"^\d+\.\d °C$"), timeout=WAIT
    )
    expect(page.locator("canvas").first).to_be_visible()
    screenshot(page, "overview")

    for name in ("overview", "power", "chiller", "environment"):
        assert (SCREENSHOTS / f"{name}.png").stat().st_size > 10_000
