"""The Module tests page of the control UI: real Node-RED with the repo's flows on the virtual lab
(the simulated crate and chiller, every daemon, the dcs daemon running IV scans and recipes,
Mosquitto), driven through Debian's Chromium by Playwright.

An IV scan started from the page on a chosen module, its curve building up live, then listed
with its plot and CSV served by Node-RED (and nothing else of the disk); a recipe started from
the page, paused, resumed and aborted (everything left off), its progress shown.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from playwright.sync_api import Browser, Page, expect

from tests.conftest import Broker
from tests.labdata import EXAMPLE
from tests.test_nodered import (
    DESKTOP,
    OPERATOR,
    PHONE,
    browser,  # noqa: F401 (a fixture)
    confirm,
    new_page,
    no_horizontal_scroll,
    pytestmark,  # noqa: F401 (skipped without Node-RED or Chromium)
    screenshot,
)
from tests.test_recipe import RecipeLab
from trackerdcs.config import load_config
from trackerdcs.safety.dcs_daemon import recipes_dir
from trackerdcs.stack.nodered import NodeRed
from trackerdcs.stack.process import free_port

MODULE = EXAMPLE.modules[0]  # the module these tests scan and power: the lab's first
WAIT = 20_000  # ms: a scan's steps and a recipe's, through every daemon and the crate
HOLD = 30  # s: the recipe's hold, long enough to be paused, resumed and aborted in
RECIPE = {
    "name": "uihold", "modules": [MODULE], "on_interlock": "abort",
    "steps": [{"module": "on"}, {"repeat": 2, "steps": [{"hold": HOLD}]}, {"module": "off"}],
}  # fmt: skip


class UiTestsLab(RecipeLab):
    """The recipe lab (IV scans, recipes) with a recipe file in its recipes folder, and Node-RED
    serving the repo's flows, listing the lab's IV scan results."""

    def __init__(self, workdir: Path, broker: Broker) -> None:
        super().__init__(workdir, broker, "moduletests")
        folder = recipes_dir(load_config(self.config), self.config)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "uihold.yml").write_text(yaml.safe_dump(RECIPE, sort_keys=False))
        self.ui = NodeRed(load_config(self.config), workdir / "moduletests-ui", port=free_port(),
                          results_dir=self.results)  # fmt: skip
        self.node_red = self.ui.process()

    def start(self) -> UiTestsLab:
        super().start()
        self.node_red.start()
        return self

    def stop(self) -> list[int | None]:
        self.node_red.stop()
        return super().stop()


@pytest.fixture(scope="module")
def lab(workdir: Path, broker: Broker) -> Iterator[UiTestsLab]:
    lab = UiTestsLab(workdir, broker).start()
    lab.rules(lambda r: not any(rule["active"] for rule in r.values()), since=0)
    yield lab
    lab.stop()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:  # noqa: F811
    context, page, errors = new_page(browser, DESKTOP)
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def open_tests(page: Page, lab: UiTestsLab) -> None:
    page.goto(lab.ui.dashboard_url + "moduletests")
    expect(page.get_by_test_id("moduletests-page")).to_be_visible(timeout=WAIT)
    expect(page.get_by_test_id("loading")).to_have_count(0, timeout=WAIT)
    expect(page.get_by_test_id("broker")).to_have_text("broker connected", timeout=WAIT)


def test_a_scan_started_from_the_page_builds_its_curve_live_and_is_listed(
    lab: UiTestsLab, page: Page
) -> None:
    lab.reset()
    since = lab.client.mark()
    open_tests(page, lab)
    row = page.locator(f"[data-testid=scan-row][data-module={MODULE}]")
    expect(row.get_by_test_id("scan-state")).to_have_text("IDLE", timeout=WAIT)

    # numbers only, and the last voltage given, before anything is asked
    page.get_by_test_id(f"choose-{MODULE}").check()
    page.get_by_test_id("param-stop").fill("sixty")
    page.get_by_test_id("scan-start").click()
    expect(page.get_by_test_id("scan-refused")).to_contain_text("not a number: sixty")
    expect(page.get_by_test_id("confirm")).to_have_count(0)

    for key, value in {"stop": "60", "step": "10", "settle": "0.4", "readings": "1"}.items():
        page.get_by_test_id(f"param-{key}").fill(value)
    page.get_by_test_id("scan-start").click()
    confirm(page, f"Start an IV scan of {MODULE}?", f"{MODULE}: HV",
            "from 0 V to 60 V in 10 V steps")  # fmt: skip

    # the curve builds up while the scan runs: a line with some points, then all seven
    curve = page.locator(f"[data-testid=curve-line][data-module={MODULE}]")
    expect(curve).to_have_attribute("data-points", re.compile("^[2-5]$"), timeout=WAIT)
    expect(row.get_by_test_id("scan-state")).to_have_text("RUNNING")
    expect(row.get_by_test_id("scan-state")).to_have_text("COMPLETED", timeout=WAIT)
    expect(curve).to_have_attribute("data-points", "7")
    ended = lab.client.wait_for("/dcs/ivscan/status",
                                lambda m: m.json["scans"][MODULE]["ended"],
                                10, since)  # fmt: skip
    status = ended.json
    scan = status["scans"][MODULE]
    assert scan["operator"] == OPERATOR and scan["id"].startswith(f"{OPERATOR}:ui-"), scan
    assert len(curve.get_attribute("points").split()) == 7  # one vertex per point

    # listed afterwards, newest first, with its plot and its CSV, served from the results folder
    listed = page.locator("[data-testid=result-row]").first
    expect(listed).to_have_attribute("data-scan", scan["scan"], timeout=WAIT)
    expect(listed.get_by_test_id("result-outcome")).to_have_text("completed")
    listed.get_by_test_id("result-plot").click()
    image = page.get_by_test_id("result-image")
    expect(image).to_be_visible()
    loaded = "img => img.complete && img.naturalWidth > 100"
    page.wait_for_function(loaded, arg=image.element_handle())
    root = lab.ui.url.rstrip("/")
    csv = page.request.get(root + listed.get_by_test_id("result-csv").get_attribute("href"))
    assert csv.ok and f"# scan: {scan['scan']}" in csv.text()
    assert csv.text() == (lab.results / MODULE / f"{scan['scan']}.csv").read_text()
    png = page.request.get(root + listed.get_by_test_id("result-png").get_attribute("href"))
    assert png.ok and png.headers["content-type"] == "image/png" and png.body()[:4] == b"\x89PNG"
    base = lab.ui.url + "moduletests/files/"
    for path in (f"{MODULE}/..%2F..%2Fetc.csv", "M9/x.csv", f"{MODULE}/.hidden.csv",
                 f"{MODULE}/notes.txt", f"{MODULE}/{scan['scan']}-none.csv"):  # fmt: skip
        refused = page.request.get(base + path)
        assert refused.status == 404, (path, refused.status, refused.text())
    screenshot(page, "moduletests")


def test_a_recipe_is_followed_paused_resumed_and_aborted_from_the_page(
    lab: UiTestsLab, page: Page
) -> None:
    lab.reset()
    open_tests(page, lab)
    expect(page.get_by_test_id("recipe-select")).to_have_value("uihold", timeout=WAIT)
    page.get_by_test_id("recipe-start").click()
    confirm(page, "Start the recipe uihold?", "checks it against the lab first")
    state = page.get_by_test_id("recipe-state")
    expect(state).to_have_text("RUNNING", timeout=WAIT)
    expect(page.get_by_test_id("recipe-name")).to_have_text("uihold")
    expect(page.get_by_test_id("recipe-step")).to_have_text("2 / 4", timeout=WAIT)
    expect(page.get_by_test_id("recipe-repetition")).to_have_text("1 / 2")
    expect(page.get_by_test_id("recipe-time-left")).not_to_have_text("—")
    expect(page.get_by_test_id("recipe-start")).to_be_disabled()
    run = lab.status(lambda s: s["state"] == "RUNNING", since=0)
    assert run["operator"] == OPERATOR and run["recipe"] == "uihold", run

    page.get_by_test_id("recipe-pause").click()
    expect(state).to_have_text("PAUSED", timeout=WAIT)
    expect(page.get_by_test_id("recipe-paused")).to_contain_text(f"paused by {OPERATOR}")
    expect(page.get_by_test_id("recipe-pause")).to_be_disabled()
    page.get_by_test_id("recipe-resume").click()
    expect(state).to_have_text("RUNNING", timeout=WAIT)

    page.get_by_test_id("recipe-abort").click()
    confirm(page, "Abort the recipe uihold?", f"{MODULE} switched off through the sequencer")
    expect(state).to_have_text("ABORTED", timeout=WAIT)
    expect(page.get_by_test_id("recipe-outcome")).to_contain_text("aborted")
    lab.modules_off([MODULE])
    answers = page.locator("[data-testid=answer-entry]")
    expect(answers.filter(has_text="recipe uihold: abort")).to_have_attribute("data-state", "ok")
    expect(page.get_by_test_id("recipe-start")).to_be_enabled()


def test_the_page_fits_a_phone(lab: UiTestsLab, browser: Browser) -> None:  # noqa: F811
    context, page, errors = new_page(browser, PHONE, is_mobile=True, has_touch=True)
    try:
        open_tests(page, lab)
        expect(page.get_by_test_id("results")).to_be_visible()
        wide = no_horizontal_scroll(page)
        assert wide == [], wide
        screenshot(page, "phone-moduletests")
    finally:
        context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"
