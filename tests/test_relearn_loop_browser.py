"""The live page's miss button in a real headless browser (Debian's chromium + chromedriver) over a stand-in
station: a passed part whose frame has left the console's memory (``console.keep_frames``) cannot be marked a miss
(the review would be saved without its image and dropped at export, ``test_relearn_loop``): its button is greyed
with a tooltip saying why, in a Recent parts table held still under the pointer too."""

import pytest

from test_console_browser import CHROMIUM, DRIVER, browser, wait  # noqa: F401 - the browser fixture (skips without selenium)
from test_console_ops_browser import RUN_A, frame, served, stand_in
from test_console_units import verdict

from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402 - after the skip above

pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs Debian's chromium and chromium-driver "
                                "(apt-get install chromium chromium-driver)")


def miss_buttons(driver) -> dict[int, tuple[bool, str]]:
    """Part number -> (its miss button enabled, its tooltip) for each row of the Recent parts table."""
    rows = driver.execute_script("return [...document.querySelectorAll('#recent button[data-seq]')]"
                                 ".map(b => [+b.dataset.seq, !b.disabled, b.title])")
    return {seq: (enabled, title) for seq, enabled, title in rows}


def test_the_miss_button_of_a_part_whose_frame_is_no_longer_kept_is_greyed_saying_why(browser, tmp_path):  # noqa: F811
    """8 frames kept, 12 parts passed: parts 1..4 have no frame in memory: their miss buttons are greyed, the tooltip
    naming console.keep_frames (was: enabled, and the miss was saved without its image). With the table held still
    under the pointer, 4 more parts come: parts 5..8 lose their frames and their buttons grey where they stand."""
    console, _ = stand_in(tmp_path, RUN_A)   # keep_frames 8
    for seq in range(1, 13):
        console.observe(frame(seq, 100), verdict(seq, 0.5), None)
    with served(console) as server:
        browser.get(server.url)
        wait(browser, lambda d: len(miss_buttons(d)) == 12, what="the recent parts")
        buttons = miss_buttons(browser)
        assert [seq for seq, (enabled, _) in buttons.items() if not enabled] == [4, 3, 2, 1], buttons
        assert "console.keep_frames" in buttons[1][1] and "no longer kept" in buttons[1][1]
        assert buttons[5] == (True, "")
        table = browser.find_element("css selector", "#recent").find_element("xpath", "..")
        ActionChains(browser).move_to_element(table).perform()
        wait(browser, lambda d: d.find_element("id", "recent-held").is_displayed(), what="the table held")
        for seq in range(13, 17):
            console.observe(frame(seq, 100), verdict(seq, 0.5), None)
        wait(browser, lambda d: not miss_buttons(d)[8][0], what="part 8's button greyed")
        held = miss_buttons(browser)
        assert sorted(held) == list(range(1, 13))   # the rows stayed put
        assert [seq for seq, (enabled, _) in held.items() if enabled] == [12, 11, 10, 9], held
