"""The tune page in a real headless browser (``test_console_browser``'s) while region rules decide the verdict: it
shows why the threshold changes no verdict and what to tune instead, draws no projection and offers no apply (it
showed false-reject rates counted as score > t, and applied a threshold that changed nothing); once the rules no
longer decide, the projection and the apply are back."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from fair_edge.console.threshold_refusals import rules_decide_note
from fair_edge.station.zones import RegionSettings, ZoneRules
from test_console_browser import CHROMIUM, DRIVER, browser, text, wait  # noqa: F401 - the browser fixture
from test_console_ops_browser import served
from test_console_units import one_camera_console, verdict

pytest.importorskip("selenium.webdriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs Debian's chromium and chromium-driver")


def shown(driver, element_id: str) -> bool:
    return driver.find_element("id", element_id).is_displayed()


def test_the_tune_page_shows_that_rules_decide_instead_of_a_projection(browser, tmp_path):  # noqa: F811
    console, inspector = one_camera_console(tmp_path)
    inspector.regions = SimpleNamespace(settings=RegionSettings(default=ZoneRules(limits=(("min_area_px", 1.0),))))
    for seq, score in enumerate(np.linspace(0.0, 2.0, 40)):
        console.observe(None, verdict(seq, float(score)), None)   # the rules passed every part, half above 1.0
    with served(console) as server:
        browser.get(server.url + "tune")
        wait(browser, lambda d: shown(d, "rules-note"), what="the rules note")
        assert text(browser, "rules-note") == rules_decide_note("")
        assert text(browser, "current") == "1.000"
        assert not shown(browser, "projection") and not shown(browser, "score-hist")
        assert not browser.find_element("id", "apply").is_enabled()

        inspector.regions = None   # the rules gone (a reload): the score decides again
        browser.find_element("id", "project").click()
        wait(browser, lambda d: shown(d, "projection"), what="the projection")
        assert not shown(browser, "rules-note") and browser.find_element("id", "apply").is_enabled()
        assert text(browser, "frr-current").endswith("%")
