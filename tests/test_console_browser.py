"""The console in a real headless browser (Debian's chromium + chromedriver through Selenium), during
a replayed run: counters move, an NG part is reviewed, a threshold is applied and the next verdicts
use it, a bundle is swapped mid-run with no frame lost; a station of two cameras shows a tile per camera and a view of
an NG part is reviewed on its own.

FAIR_EDGE_SCREENSHOTS=DIR also saves the live page and the gallery as PNG there (docs/ holds them)."""

import json
import os
import shutil
import time
from pathlib import Path

import pytest
import yaml

from console_station import RunningStation, station_config
from fair_edge.runtime.hotswap import model_id

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.keys import Keys  # noqa: E402
CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs Debian's chromium and chromium-driver "
                                "(apt-get install chromium chromium-driver)")


@pytest.fixture
def browser(tmp_path):
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'chromium-profile'}",
                 "--window-size=1280,900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def wait(driver, predicate, timeout=60.0, what="condition"):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(lambda d: predicate(d), message=f"waiting for {what}")


def text(driver, element_id: str) -> str:
    return driver.find_element("id", element_id).text


def screenshot(driver, name: str) -> None:
    folder = os.environ.get("FAIR_EDGE_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(folder) / name))


def test_operator_session_in_a_browser(browser, station_bundles, conveyor_dir, tmp_path):
    first, second = station_bundles
    station_file = tmp_path / "station.yaml"
    station_file.write_text(yaml.safe_dump({"bundle": str(first.root)}))
    out = tmp_path / "out"
    cfg = station_config(first.root, conveyor_dir, out, fps=8, source_file=station_file)
    with RunningStation(cfg) as st:
        # live page: counters move, the model in use is shown
        browser.get(st.url)
        start = int(wait(browser, lambda d: int(text(d, "inspected") or 0) > 0 and text(d, "inspected"), what="counters"))
        wait(browser, lambda d: int(text(d, "inspected")) >= start + 5, what="counters to move")
        assert text(browser, "model-id") == model_id(first)
        assert text(browser, "verdict") in ("OK", "NG") and text(browser, "p50") != "–"
        assert text(browser, "rows-failed") == "0"          # every verdict row written (a full disk: counted, red)
        wait(browser, lambda d: d.execute_script("return document.getElementById('live-image').naturalWidth") > 0,
             what="the live image")
        wait(browser, lambda d: len(d.find_elements("css selector", "#strip img")) >= 3, what="the latest frames")
        time.sleep(1.0)
        screenshot(browser, "console-live.png")

        # NG gallery: review the first NG part as a confirmed defect
        browser.get(st.url + "gallery")
        card = wait(browser, lambda d: d.find_elements("css selector", ".part"), what="NG parts")[0]
        seq = int(card.get_attribute("data-seq"))
        card.find_element("css selector", "button[data-label=defect]").click()
        wait(browser, lambda d: d.find_element("css selector", f".part[data-seq='{seq}']").get_attribute("data-review")
             == "defect", what="the review to be recorded")
        reviews = [json.loads(x) for x in (out / "reviews.jsonl").read_text().splitlines()]
        assert (reviews[-1]["seq"], reviews[-1]["label"], reviews[-1]["who"]) == (seq, "defect", "operator")
        screenshot(browser, "console-gallery.png")

        # threshold: propose, confirm, and the next verdicts use it
        browser.get(st.url + "tune")
        wait(browser, lambda d: text(d, "current") not in ("", "–"), what="the threshold in force")
        field = browser.find_element("id", "proposed")
        field.send_keys(Keys.CONTROL, "a")
        field.send_keys(f"{first.threshold.value * 1.5:.4f}")
        browser.find_element("id", "project").click()
        wait(browser, lambda d: abs(float(d.find_element("tag name", "body").get_attribute("data-projected") or 0)
                                    - first.threshold.value * 1.5) < 1e-3, what="the projection")
        assert text(browser, "frr").endswith("%") and text(browser, "catch").endswith("%")
        screenshot(browser, "console-tune.png")
        field.send_keys(Keys.CONTROL, "a")
        field.send_keys("1000")
        browser.find_element("id", "apply").click()
        wait(browser, lambda d: d.find_element("id", "confirm-box").is_displayed(), what="the confirmation")
        assert text(browser, "confirm-new") == "1000"
        seen = len(st.verdicts())
        browser.find_element("id", "apply-confirmed").click()
        wait(browser, lambda d: "1000" in text(d, "message"), what="the applied threshold")
        st.wait_for(lambda: any(v["threshold"] == 1000 for v in st.verdicts()[seen:]), what="verdicts at 1000")
        assert not any(v["ng"] for v in st.verdicts()[seen:] if v["threshold"] == 1000)
        assert yaml.safe_load(station_file.read_text())["decision"]["threshold"] == 1000

        # hot swap mid-run
        browser.find_element("id", "bundle-path").send_keys(str(second.root))
        browser.find_element("id", "swap-btn").click()
        wait(browser, lambda d: "done" in text(d, "swap-status"), what="the swap")
        wait(browser, lambda d: model_id(second) in text(d, "model-id"), what="the new model id")
        st.wait_for(lambda: sum(v.get("model") == model_id(second) for v in st.verdicts()) >= 3, what="new verdicts")
    verdicts = st.verdicts()
    seqs = [v["seq"] for v in verdicts]
    # no frame skipped: every seq the camera gave was inspected; a replay slot the paced reader missed on a loaded
    # machine (more than CATCH_UP_S late) is a seq the camera never gave, counted lost (full50: one, seq 5)
    assert seqs == sorted(set(seqs)) and seqs[-1] - seqs[0] + 1 == len(seqs) + st.summary.lost
    assert st.summary.dropped == 0 and st.summary.inspected == st.summary.frames_in == len(verdicts)
    models = [v["model"] for v in verdicts]
    switch = models.index(model_id(second))
    assert set(models[:switch]) == {model_id(first)} and set(models[switch:]) == {model_id(second)}


def test_acknowledge_alarm_button(browser, station_bundles, conveyor_dir, tmp_path):
    from fair_edge.line.settings import RejectSettings

    reject = RejectSettings(sinks=("log://",), fail_safe="alarm", delay_ms=3000.0)  # real parts: verdicts in time
    out = tmp_path / "out"
    cfg = station_config(station_bundles[0].root, conveyor_dir, out, fps=5, threshold=1e9, reject=reject)
    with RunningStation(cfg) as st:
        scheduler = st.console.feed.scheduler
        browser.get(st.url)
        wait(browser, lambda d: int(text(d, "inspected") or 0) > 0, what="counters")
        button = browser.find_element("id", "ack-alarm")
        assert not button.is_displayed()  # nothing latched: no button
        scheduler.note_capture(10**9, t_capture=time.monotonic() - 60.0)  # a part long past the gate, never inspected
        wait(browser, lambda d: "ALARM" in text(d, "plc-state") and button.is_displayed(), what="the alarm and its button")
        alarm = scheduler.alarm
        assert "passed the gate uninspected" in alarm and "passed the gate uninspected" in text(browser, "plc-state")
        button.click()
        wait(browser, lambda d: "alarm acknowledged" in text(d, "message"), what="the acknowledgement")
        assert scheduler.alarm is None and scheduler.fault_reason is None
        wait(browser, lambda d: "ALARM" not in text(d, "plc-state") and not button.is_displayed(), what="the pill to clear")
        assert text(browser, "fault-state") == "fault: none"
    audit = [json.loads(x) for x in (out / "audit.jsonl").read_text().splitlines()]
    assert [(a["action"], a["who"], a["old"]) for a in audit] == [("acknowledge_alarm", "operator", alarm)]


def test_cell_live_tiles_and_a_view_reviewed_in_the_gallery(browser, station_bundles, tmp_path, request):
    """Two cameras (colliding seqs 0..3; part 1 NG by its left view): the live page shows a tile per camera and each
    camera's counters; the gallery shows part 1 with both views, and the left view's button labels that view only."""
    from test_console_cell import HeldLine, cell
    from fair_edge.station.views import ViewSettings

    images, threshold = request.getfixturevalue("scored")
    sources = {"top": HeldLine([images[i] for i in (0, 1, 2, 3)], loop=False, name="top"),
               "left": HeldLine([images[i] for i in (4, 11, 5, 6)], loop=False, name="left")}
    out = tmp_path / "out"
    cfg = cell(station_bundles[0].root, out, [ViewSettings(c, c, queue_size=16) for c in sources], threshold=threshold)
    with RunningStation(cfg, sources=sources) as st:
        browser.get(st.url)
        rows = lambda d: {r.get_attribute("data-camera"): r.find_element("css selector", ".inspected").text  # noqa: E731
                          for r in d.find_elements("css selector", "#camera-rows tr")}
        wait(browser, lambda d: rows(d) == {"top": "4", "left": "4"}, what="each camera's counters")
        tiles = wait(browser, lambda d: len(d.find_elements("css selector", "#tiles figure")) == 2
                     and d.find_elements("css selector", "#tiles figure"), what="a tile per camera")
        assert [t.get_attribute("data-camera") for t in tiles] == ["top", "left"]
        assert "3 · OK" in text(browser, "part-head") and "parts: 4 · NG 1" in text(browser, "part-counters")
        screenshot(browser, "console-cell-live.png")

        st.wait_for(lambda: list((out / "ng").glob("*_left_00000001_overlay.*")), what="the NG view's overlay")
        browser.get(st.url + "gallery")
        part = wait(browser, lambda d: d.find_elements("css selector", ".part.group"), what="the NG part")[0]
        assert part.get_attribute("data-part") == "1" and "decided by left" in part.text
        views = part.find_elements("css selector", ".view")
        assert [(v.get_attribute("data-camera"), v.get_attribute("data-seq")) for v in views] == [("top", "1"), ("left", "1")]
        views[1].find_element("css selector", "button[data-label=defect]").click()
        wait(browser, lambda d: d.find_element("css selector", ".view[data-camera=left]").get_attribute("data-review")
             == "defect", what="the review to be recorded")
        assert browser.find_element("css selector", ".view[data-camera=top]").get_attribute("data-review") == ""
        screenshot(browser, "console-cell-gallery.png")
        for source in sources.values():
            source.release()
    (entry,) = [json.loads(x) for x in (out / "reviews.jsonl").read_text().splitlines()]
    assert (entry["camera"], entry["seq"], entry["label"]) == ("left", 1, "defect")


def test_confirming_the_threshold_shown_unedited_applies_it_exactly(browser, tmp_path):
    """The tune page shows the threshold in force rounded (6 digits); confirming it without an edit applies the
    exact value (was: the rounded text), an edited field what was typed. A stand-in station, no bundle."""
    from fair_edge.console.server import ConsoleServer
    from test_console_units import one_camera_console, verdict

    console, inspector = one_camera_console(tmp_path)
    inspector.threshold = exact = 0.123456789012
    console.observe(None, verdict(1, 0.05, threshold=exact), None)
    console.feed.settings = console.feed.settings.__class__(port=0)
    with ConsoleServer(console.feed, console.actions) as server:
        browser.get(server.url + "tune")
        wait(browser, lambda d: text(d, "current") not in ("", "–"), what="the threshold in force")
        assert browser.find_element("id", "proposed").get_attribute("value") == "0.123457"
        for typed, applied in ((None, exact), ("0.25", 0.25)):
            if typed is not None:
                field = browser.find_element("id", "proposed")
                field.send_keys(Keys.CONTROL, "a")
                field.send_keys(typed)
            browser.find_element("id", "apply").click()
            wait(browser, lambda d: d.find_element("id", "apply-confirmed").is_displayed(), what="the confirmation")
            browser.find_element("id", "apply-confirmed").click()
            wait(browser, lambda d: "threshold" in text(d, "message"), what="the applied threshold")
            assert inspector.switch.take().threshold == applied
            browser.execute_script("document.getElementById('message').textContent = ''")
