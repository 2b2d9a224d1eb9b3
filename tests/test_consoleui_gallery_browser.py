"""The gallery in a real headless browser (Debian's chromium through Selenium, as ``test_console_browser``): a passed
view's miss button is greyed, its tooltip naming console.keep_frames, exactly when the gallery API says its frame
is no longer kept; the others stay usable and one of them records its miss. A stand-in station (no bundle)."""

from __future__ import annotations

import json

import pytest

from fair_edge.console.server import ConsoleServer
from test_console_browser import CHROMIUM, DRIVER, browser, wait  # noqa: F401 - browser: the fixture
from test_console_gallery import ng_parts

pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs Debian's chromium and chromium-driver "
                                "(apt-get install chromium chromium-driver)")


def test_the_gallery_greys_the_miss_button_of_a_view_whose_frame_has_left_memory(browser, tmp_path):  # noqa: F811
    feed, actions = ng_parts(tmp_path, 6, cameras=("top", "left", "right"))   # the last 4 frames kept
    with ConsoleServer(feed, actions) as server:
        browser.get(server.url + "gallery")
        buttons = wait(browser, lambda d: len(d.find_elements("css selector", "button[data-label=miss]")) == 12
                       and d.find_elements("css selector", "button[data-label=miss]"), what="the miss buttons")
        shown = {}
        for button in buttons:
            view = button.find_element("xpath", "ancestor::div[contains(concat(' ', @class, ' '), ' view ')][1]")
            shown[(view.get_attribute("data-camera"), int(view.get_attribute("data-seq")))] = (
                button.is_enabled(), button.get_attribute("title") or "")
        usable = {key for key, (enabled, _) in shown.items() if enabled}
        assert usable == {("left", 5), ("right", 5), ("right", 4)}, shown
        for key, (enabled, title) in shown.items():
            if enabled:
                assert title == "", (key, title)
            else:
                assert "no longer kept" in title and "the last 4 frames" in title and "console.keep_frames" in title
        browser.find_element("css selector", ".view[data-camera=right][data-seq='4'] button[data-label=miss]").click()
        wait(browser, lambda d: d.find_element("css selector", ".view[data-camera=right][data-seq='4']")
             .get_attribute("data-review") == "miss", what="the miss to be recorded")
    (entry,) = [json.loads(line) for line in (tmp_path / "reviews.jsonl").read_text().splitlines()]
    assert (entry["camera"], entry["seq"], entry["label"]) == ("right", 4, "miss")
