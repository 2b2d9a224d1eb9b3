"""The tune page in a real headless browser (``test_console_browser``'s) across SIGHUP reloads that turn region rules
on and off at the same threshold: the page, left open, shows on its next poll that the rules decide (the note, no
projection, no apply), then the projection again once they are removed. Before, it re-projected only when the
polled threshold changed, so the old false-reject projection stayed until the next Project or Apply."""

from __future__ import annotations

import pytest

from fair_edge.console.threshold_refusals import rules_decide_note
from inline_swaps import inline_swaps  # noqa: F401 (autouse fixtures: a reload's swap is done when it returns)
from test_console_browser import CHROMIUM, DRIVER, browser, text, wait  # noqa: F401 - the browser fixture
from test_console_ops_browser import served
from test_console_rules_decide_browser import shown
from test_console_tune_follows_reload import RULES, reload_with, reloading_console

pytest.importorskip("selenium.webdriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs Debian's chromium and chromium-driver")


def projected(driver) -> bool:
    return shown(driver, "projection") and text(driver, "frr-current").endswith("%") and not shown(driver, "rules-note")


def test_the_open_tune_page_follows_a_reload_that_turns_region_rules_on_and_off(browser, tmp_path):  # noqa: F811
    console, _, station = reloading_console(tmp_path)
    with served(console) as server:
        browser.get(server.url + "tune")
        wait(browser, projected, what="the projection")
        assert browser.find_element("id", "apply").is_enabled()

        reload_with(console, station, RULES)   # SIGHUP: the rules decide from the next batch, threshold still 1.0
        wait(browser, lambda d: shown(d, "rules-note"), what="the rules note after the reload, with no click")
        assert text(browser, "rules-note") == rules_decide_note("") and text(browser, "current") == "1.000"
        assert not shown(browser, "projection") and not shown(browser, "score-hist")
        assert not browser.find_element("id", "apply").is_enabled()

        reload_with(console, station, None)    # the rules removed: the threshold decides again
        wait(browser, projected, what="the projection after the second reload")
        assert browser.find_element("id", "apply").is_enabled()
