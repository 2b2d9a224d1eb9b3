"""The live page's rate in a real headless browser (Debian's chromium + chromedriver) over stand-in stations: its label
says what it counts, frames with one camera and parts with cameras viewing one part (was a fixed "parts / s" over
every view kept, three per part on a three-camera cell)."""

from types import SimpleNamespace

import numpy as np
import pytest

from fair_edge.console.actions import StationActions
from fair_edge.console.feed import StationFeed
from fair_edge.console.settings import ConsoleSettings
from fair_edge.records import Frame
from test_console_browser import browser, text, wait  # noqa: F401 - the browser fixture
from test_console_ops_browser import served
from test_console_units import TwoCameras, one_camera_console, verdict

pytest.importorskip("selenium.webdriver")


def label_and_title(driver) -> tuple[str, str]:
    return text(driver, "rate-label"), driver.find_element("id", "rate-label").find_element("xpath", "..") \
        .get_attribute("title")


def test_the_live_page_says_frames_per_second_with_one_camera_and_parts_with_a_cell(browser, tmp_path):  # noqa: F811
    one, _ = one_camera_console(tmp_path / "one", port=0)
    one.observe(Frame(1, 0.0, np.zeros((8, 8, 3), np.uint8)), verdict(1, 0.5), None)
    with served(one) as server:
        browser.get(server.url)
        wait(browser, lambda d: text(d, "rate-label") == "frames / s", what="the one-camera rate's label")
        assert "Inspected frames per second over the last 5" in label_and_title(browser)[1]
        assert text(browser, "rate") == "0.0"   # its one verdict is at t 0.01, long before the last 5 s

    feed = StationFeed(ConsoleSettings(port=0), tmp_path / "cell")   # cameras a and b viewing one part
    feed.attach_cell(TwoCameras(), {"a": tmp_path / "a", "b": tmp_path / "b"})
    with served(SimpleNamespace(feed=feed, actions=StationActions(feed, None))) as server:
        browser.get(server.url)
        wait(browser, lambda d: text(d, "rate-label") == "parts / s", what="the cell's rate label")
        assert "each part once" in label_and_title(browser)[1]
