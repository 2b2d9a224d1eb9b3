"""The console's pages in a real headless browser (Debian's chromium + chromedriver) over a stand-in station (no
bundle, no camera: verdicts handed to the console by the test), for what an operator meets on a running line: a page
left open across a station restart, a Recent parts table that moves while aimed at, a second operator's threshold
page, the browser's own time zone, a gallery that cannot list every NG part. A restart is one console server closed
and another opened on its port, of another run whose part numbers start again."""

import json
import socket
from contextlib import contextmanager

import numpy as np
import pytest

from fair_edge.console.settings import ConsoleSettings
from fair_edge.records import Frame
from test_console_browser import browser, text, wait  # noqa: F401 - the browser fixture
from test_console_units import one_camera_console, verdict

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support import expected_conditions  # noqa: E402

MARKER = "css selector", "#score-hist line.cur"   # the tune page's "in force" line
RUN_A, RUN_B = "20260101T080000Z-aaaa", "20260101T080500Z-bbbb"
# the mean brightness (0..255) of the loaded <img> a CSS selector finds, drawn on a canvas (same origin); null while
# none is loaded (one query in the page: a list rebuilt meanwhile leaves no stale element behind)
IMAGE_MEAN = """const img = document.querySelector(arguments[0]);
if (!img || !img.complete || !img.naturalWidth) return null;
const c = document.createElement("canvas"); c.width = img.naturalWidth; c.height = img.naturalHeight;
const g = c.getContext("2d"); g.drawImage(img, 0, 0); const d = g.getImageData(0, 0, c.width, c.height).data;
let s = 0; for (let i = 0; i < d.length; i += 4) s += d[i] + d[i + 1] + d[i + 2]; return s / (d.length / 4 * 3);"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def frame(seq: int, value: int) -> Frame:
    """A flat (16, 16, 3) frame of brightness ``value``: each part's picture is told apart by its mean."""
    return Frame(seq, 0.0, np.full((16, 16, 3), value, np.uint8))


def stand_in(tmp_path, run: str, port: int = 0):
    """A one-camera console of run ``run`` over a stand-in inspector (model m1 at threshold 1.0), served on ``port``
    (the same port for a restarted station) with 8 frames kept and 20 live updates a second. Returns (console,
    inspector)."""
    console, inspector = one_camera_console(tmp_path, keep_frames=8)
    console.feed.run_id = run
    console.feed.settings = ConsoleSettings(port=port, keep_frames=8, live_fps=20)
    return console, inspector


@contextmanager
def served(console):
    from fair_edge.console.server import ConsoleServer

    with ConsoleServer(console.feed, console.actions) as server:
        yield server


def card_text(driver, seq: int) -> str:
    """The text of the gallery's card of part ``seq`` ("" while there is none)."""
    return driver.execute_script("const c = document.querySelector(arguments[0]); return c ? c.textContent : ''",
                                 f".part[data-seq='{seq}']")


def reviews(folder) -> list[dict]:
    path = folder / "reviews.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def test_a_review_from_a_gallery_left_open_across_a_restart_is_refused_saying_so(browser, tmp_path):  # noqa: F811
    """Run A's gallery lists part 1 (score 2.0); the station restarts (run B, whose part 1 scored 0.6 is another
    part): 'false reject' on the open page records nothing and says the station restarted and to reload (was:
    recorded as run B's part 1, whose image collect then exported into train/good); after Refresh it is recorded
    under run B."""
    port = free_port()
    a, _ = stand_in(tmp_path, RUN_A, port)
    a.observe(frame(1, 40), verdict(1, 2.0, ng=True), None)
    with served(a) as server:
        browser.get(server.url + "gallery")
        wait(browser, lambda d: d.find_elements("css selector", ".part[data-seq='1'] button"), what="run A's part 1")
    b, _ = stand_in(tmp_path, RUN_B, port)
    b.observe(frame(1, 220), verdict(1, 0.6, ng=True, threshold=0.5), None)
    with served(b):
        browser.find_element("css selector", ".part[data-seq='1'] button[data-label=false_reject]").click()
        wait(browser, lambda d: "the station restarted" in text(d, "message"), what="the refusal")
        message = browser.find_element("id", "message")
        assert "reload the page" in message.text and "bad" in message.get_attribute("class")
        assert reviews(tmp_path) == []
        browser.find_element("id", "refresh").click()
        wait(browser, lambda d: "0.6000" in card_text(d, 1), what="run B's part 1")
        browser.find_element("css selector", ".part[data-seq='1'] button[data-label=false_reject]").click()
        wait(browser, lambda d: reviews(tmp_path), what="the review")
    (entry,) = reviews(tmp_path)
    assert (entry["run"], entry["seq"], entry["score"], entry["label"]) == (RUN_B, 1, 0.6, "false_reject")


def test_a_gallery_refreshed_after_a_restart_shows_the_new_runs_picture(browser, tmp_path):  # noqa: F811
    """Run A's part 1 is dark, run B's part 1 bright: after the restart, Refresh shows the bright one (was: the dark
    one, cached 10 minutes under the same URL, beside run B's verdict)."""
    port = free_port()
    a, _ = stand_in(tmp_path, RUN_A, port)
    a.observe(frame(1, 30), verdict(1, 2.0, ng=True), None)
    image = ".part[data-seq='1'] img"
    with served(a) as server:
        browser.get(server.url + "gallery")
        dark = wait(browser, lambda d: d.execute_script(IMAGE_MEAN, image), what="run A's picture")
        assert dark < 60
    b, _ = stand_in(tmp_path, RUN_B, port)
    b.observe(frame(1, 220), verdict(1, 0.6, ng=True, threshold=0.5), None)
    with served(b):
        browser.find_element("id", "refresh").click()
        wait(browser, lambda d: "0.6000" in card_text(d, 1), what="run B's part 1")
        bright = wait(browser, lambda d: d.execute_script(IMAGE_MEAN, image), what="the picture")
        assert bright > 180, f"expected run B's bright part 1 (mean ~220), found mean {bright:.0f}: run A's picture"


def test_a_live_page_left_open_across_a_restart_follows_the_new_run(browser, tmp_path):  # noqa: F811
    """Run A's page saw 8 parts (snapshot versions past 8); the restarted station (run B, 2 parts) counts versions
    from 1 again: the page shows run B's numbers and says the station restarted (was: frozen on run A's numbers with
    the 'connection lost' message cleared, as though live)."""
    port = free_port()
    a, _ = stand_in(tmp_path, RUN_A, port)
    with served(a) as server:
        browser.get(server.url)
        for seq in range(1, 9):
            a.observe(frame(seq, 100), verdict(seq, 0.5), None)
            wait(browser, lambda d: d.find_element("tag name", "body").get_attribute("data-count") == str(seq),
                 what=f"run A's part {seq}")
    b, _ = stand_in(tmp_path, RUN_B, port)
    for seq in (0, 1):
        b.observe(frame(seq, 100), verdict(seq, 0.25), None)
    with served(b):
        wait(browser, lambda d: d.find_element("tag name", "body").get_attribute("data-count") == "2",
             what="run B's count")
        wait(browser, lambda d: (text(d, "latest-seq"), text(d, "score")) == ("1", "0.2500"), what="run B's latest")
        wait(browser, lambda d: f"restarted: run {RUN_B}" in text(d, "message"), what="the restart said")


def test_recent_parts_hold_still_under_the_pointer_and_a_miss_names_its_part(browser, tmp_path):  # noqa: F811
    """With the pointer over the Recent parts table its rows stay put while parts come (was: rebuilt newest first on
    every snapshot, the aimed-at button moved to another part); 'miss' asks first, naming the part; the table
    catches up once the pointer leaves."""
    console, _ = stand_in(tmp_path, RUN_A)
    for seq in range(1, 6):
        console.observe(frame(seq, 100), verdict(seq, 0.5), None)
    shown = lambda d: d.execute_script(  # noqa: E731 - the part numbers of the table's rows, top first
        "return [...document.querySelectorAll('#recent tr td:first-child')].map(td => td.textContent)")
    with served(console) as server:
        browser.get(server.url)
        wait(browser, lambda d: shown(d)[:1] == ["5"], what="the recent parts")
        table = browser.find_element("css selector", "#recent").find_element("xpath", "..")
        ActionChains(browser).move_to_element(table).perform()
        for seq in (6, 7):
            console.observe(frame(seq, 100), verdict(seq, 0.5), None)
        wait(browser, lambda d: d.find_element("tag name", "body").get_attribute("data-count") == "7",
             what="parts 6 and 7")
        assert shown(browser) == ["5", "4", "3", "2", "1"]   # what the pointer was over, not parts 7 and 6 on top
        assert browser.find_element("id", "recent-held").is_displayed()
        button = browser.find_element("css selector", "#recent button[data-seq='3']")
        for accept in (False, True):
            ActionChains(browser).move_to_element(button).click().perform()
            alert = wait(browser, expected_conditions.alert_is_present(), what="the confirmation")
            assert "part 3" in alert.text and "miss" in alert.text
            alert.accept() if accept else alert.dismiss()
            if not accept:
                assert reviews(tmp_path) == []
        wait(browser, lambda d: "part 3 marked as a miss" in text(d, "message"), what="the miss recorded")
        (entry,) = reviews(tmp_path)
        assert (entry["run"], entry["seq"], entry["label"]) == (RUN_A, 3, "miss")
        ActionChains(browser).move_to_element(browser.find_element("id", "top")).perform()
        wait(browser, lambda d: shown(d)[:2] == ["7", "6"], what="the table to catch up")
        assert not browser.find_element("id", "recent-held").is_displayed()


def tune_page(tmp_path):
    """A stand-in console (threshold 1.0) with 40 parts scored 0.1 .. 1.6, for the tune page. Returns (console,
    inspector)."""
    console, inspector = stand_in(tmp_path, RUN_A)
    for seq, score in enumerate(np.linspace(0.1, 1.6, 40)):
        console.observe(None, verdict(seq, float(score), ng=bool(score > 1.0)), None)
    return console, inspector


def test_a_threshold_page_follows_one_applied_elsewhere_and_says_it_changed(browser, tmp_path):  # noqa: F811
    """A second operator's tune page shows the threshold applied elsewhere as in force, its marker moved, and says it
    changed since the page loaded (was: the old one as in force, though the page polls the state every second)."""
    console, inspector = tune_page(tmp_path)
    marker = lambda d: d.find_element(*MARKER).get_attribute("x1")  # noqa: E731
    with served(console) as server:
        browser.get(server.url + "tune")
        wait(browser, lambda d: text(d, "current") == "1.000" and d.find_elements(*MARKER), what="the marker in force")
        before = marker(browser)
        inspector.threshold = 0.45   # another operator applied 0.45 and the loop switched to it
        wait(browser, lambda d: text(d, "current") == "0.4500", what="the threshold applied elsewhere")
        assert "changed since this page loaded (was 1.00000)" in text(browser, "current-changed")
        wait(browser, lambda d: marker(d) != before, what="the in-force marker to move")


def test_an_applied_threshold_is_said_in_the_browsers_local_time(browser, tmp_path):  # noqa: F811
    """An apply's message gives its time in the browser's zone (Asia/Kolkata, UTC+5:30), UTC in its tooltip (was: the
    UTC ISO string, an hour or more off the clock on the wall)."""
    console, _ = tune_page(tmp_path)
    with served(console) as server:
        browser.execute_cdp_cmd("Emulation.setTimezoneOverride", {"timezoneId": "Asia/Kolkata"})
        browser.get(server.url + "tune")
        wait(browser, lambda d: text(d, "current") == "1.000", what="the threshold in force")
        field = browser.find_element("id", "proposed")
        field.send_keys(Keys.CONTROL, "a")
        field.send_keys("0.5")
        browser.find_element("id", "apply").click()
        wait(browser, lambda d: d.find_element("id", "apply-confirmed").is_displayed(), what="the confirmation")
        browser.find_element("id", "apply-confirmed").click()
        wait(browser, lambda d: "→ 0.500000" in text(d, "message"), what="the applied threshold")
    (row,) = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    local = browser.execute_script("return new Date(arguments[0]).toLocaleString()", row["time"])
    message = text(browser, "message")
    assert f"at {local};" in message and row["time"] not in message, message
    assert browser.find_element("id", "message").get_attribute("title") == f"{row['time']} (UTC)"


def test_the_gallery_says_how_many_older_ng_parts_it_no_longer_lists(browser, tmp_path):  # noqa: F811
    """recent_parts 10, 15 NG parts: the gallery lists 10 and says 5 older ones are not listed, and why (was: '10 NG
    parts', read as every NG part of the run)."""
    console, inspector = one_camera_console(tmp_path, recent_parts=10)
    console.feed.settings = ConsoleSettings(port=0, recent_parts=10)
    for seq in range(15):
        console.observe(None, verdict(seq, 2.0, ng=True), None)
    inspector.summary.ng = 15
    with served(console) as server:
        browser.get(server.url + "gallery")
        wait(browser, lambda d: len(d.find_elements("css selector", ".part")) == 10, what="the listed NG parts")
        counts = text(browser, "review-counts")
        assert "10 NG parts · 5 older NG parts of this run not listed" in counts and "console.recent_parts" in counts
