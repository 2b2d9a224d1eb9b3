"""The tune page in a real headless browser (``test_console_browser``'s) on a fused bundle's model, whose scores and
threshold lie below 0: the page shows the threshold in force, projects and applies one below 0 (confirmed), and an
emptied field applies nothing (it was sent as 0, a threshold a fused model takes, rejecting nearly every part)."""

from __future__ import annotations

import numpy as np
import pytest

from fair_edge.runtime.backends import close_scorer
from fair_edge.runtime.fusion import FusedScorer
from test_console_browser import CHROMIUM, DRIVER, browser, text, wait  # noqa: F401 - the browser fixture
from test_console_ops_browser import served
from test_console_units import one_camera_console, verdict

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.keys import Keys  # noqa: E402

pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs Debian's chromium and chromium-driver")
BELOW = -0.0018   # a fused bundle's calibrated threshold as the audit's fusion.json had it


def retype(driver, value: str) -> None:
    field = driver.find_element("id", "proposed")
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys(Keys.DELETE)
    if value:
        field.send_keys(value)


def apply_confirmed(driver) -> None:
    driver.find_element("id", "apply").click()
    wait(driver, lambda d: d.find_element("id", "apply-confirmed").is_displayed(), what="the confirmation")
    driver.find_element("id", "apply-confirmed").click()


def test_the_tune_page_projects_and_applies_a_fused_models_threshold_below_zero(browser, tmp_path,  # noqa: F811
                                                                                  fused_station_bundle):
    scorer = FusedScorer(fused_station_bundle, "onnxruntime")
    console, inspector = one_camera_console(tmp_path)
    inspector.scorer, inspector.threshold = scorer, BELOW
    for seq, score in enumerate(np.linspace(-2.0, 0.5, 40)):
        console.observe(None, verdict(seq, float(score), ng=bool(score > BELOW), threshold=BELOW), None)
    try:
        with served(console) as server:
            browser.get(server.url + "tune")
            wait(browser, lambda d: text(d, "current") == "-0.001800", what="the threshold in force")
            assert browser.find_element("id", "proposed").get_attribute("value") == "-0.00180000"
            retype(browser, "-0.5")
            browser.find_element("id", "project").click()
            wait(browser, lambda d: d.find_element("tag name", "body").get_attribute("data-projected") == "-0.5",
                 what="the projection at -0.5")
            assert text(browser, "frr").endswith("%") and text(browser, "frr") != "0.0 %"
            apply_confirmed(browser)
            wait(browser, lambda d: "→ -0.500000" in text(d, "message"), what="the applied threshold")
            assert inspector.switch.take().threshold == -0.5

            retype(browser, "")   # an emptied field: refused, nothing applied (was: 0)
            apply_confirmed(browser)
            wait(browser, lambda d: "threshold: expected a finite number, found None" in text(d, "message"),
                 what="the refusal")
            assert inspector.switch.take() is None
    finally:
        close_scorer(scorer)
