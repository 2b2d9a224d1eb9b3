"""The live page's score bar for a fused bundle's parts: the threshold mark is the bar's middle, and a part fills
0.5 + (score - threshold) / (2 x scale) of it, clamped to [0, 1]; scale = the threshold for a single bundle (score /
(2 x threshold), as before), the heat map's half scale (``plots.FUSED_HALF_SCALE`` normal spreads) for a fused one,
which the page learns from the part's ``fused`` and the state's ``fused_half_scale``. Before, score / (2 x threshold):
with a fused threshold -0.35 an OK part at -1.6 filled the bar past the mark and an NG part at -0.2 stopped short of
it; a negative width (a fused OK part under a threshold above 0) was refused by the browser, so the bar kept the
previous part's width; a threshold 0 gave -Infinity %."""

from __future__ import annotations

import pytest

from fair_edge.plots import FUSED_HALF_SCALE
from fair_edge.records import Verdict
from test_console_browser import CHROMIUM, DRIVER, browser, wait  # noqa: F401 - browser: the fixture
from test_console_ops_browser import served
from test_console_units import api, one_camera_console

needs_chromium = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs Debian's chromium and chromium-driver")


def fused_ok(seq: int = 0) -> Verdict:
    """A fused bundle's OK part: score -1.6 normal spreads under its threshold -0.35."""
    return Verdict(seq, 0.0, -1.6, -0.35, False, 0.01, "000.png", model="m1", fused=True)


def test_the_live_state_says_which_parts_a_fused_bundle_scored_and_its_half_scale(tmp_path):
    console, _ = one_camera_console(tmp_path)
    console.observe(None, fused_ok(0), None)
    console.observe(None, Verdict(1, 0.0, 0.43, 0.668, False, 0.01, "001.png", model="m1"), None)
    state = api(console).get("/api/state").json()
    assert state["fused_half_scale"] == FUSED_HALF_SCALE
    assert state["latest"]["fused"] is False
    assert [row["fused"] for row in state["recent"]] == [False, True]


def part(score, threshold, ng, fused, seq=0) -> dict:
    """A part as /api/state's ``latest`` holds it."""
    return {"seq": seq, "score": score, "threshold": threshold, "ng": ng, "fused": fused, "source": "x.png",
            "latency_ms": 5.0, "model": "m1", "error": "", "review": "", "regions": 0, "reason": ""}


def bar_width(driver, v: dict) -> float:
    """The score bar's width in percent once the live page shows part ``v``."""
    return float(driver.execute_script(
        "showLatest(arguments[0], arguments[1]); return parseFloat(document.getElementById('score-fill').style.width)",
        v, FUSED_HALF_SCALE))


@needs_chromium
def test_the_score_bar_places_a_fused_part_against_its_threshold_mark(browser, tmp_path):  # noqa: F811
    console, _ = one_camera_console(tmp_path)
    console.observe(None, fused_ok(), None)
    with served(console) as server:
        browser.get(server.url)
        wait(browser, lambda d: d.find_element("id", "score").text == "-1.600", what="the fused part")
        shown = float(browser.execute_script("return parseFloat(document.getElementById('score-fill').style.width)"))
        assert shown == pytest.approx(100 * (0.5 + (-1.6 + 0.35) / (2 * FUSED_HALF_SCALE)), abs=1e-3)   # was 100 %
        half = FUSED_HALF_SCALE
        cases = [   # (part, width %): each follows a part whose bar differs, so a refused width shows
            (part(0.98, 0.668, True, False), 100 * 0.98 / (2 * 0.668)),          # single bundle: as before
            (part(-0.99, 1.149, False, True), 100 * (0.5 + (-0.99 - 1.149) / (2 * half))),   # was -43 %: kept 73 %
            (part(-0.2, -0.35, True, True), 100 * (0.5 + 0.15 / (2 * half))),    # NG just over: past the mark
            (part(-1.6, -0.35, False, True), 100 * (0.5 - 1.25 / (2 * half))),   # OK: short of the mark
            (part(4.0, -0.35, True, True), 100.0),                                # clamped at the end
            (part(-0.5, 0.0, False, True), 100 * (0.5 - 0.5 / (2 * half))),      # threshold 0: was -Infinity %
            (part(-20.0, 1.149, False, True), 0.0),                               # clamped at 0
            (part(0.43, 0.668, False, False), 100 * 0.43 / (2 * 0.668)),          # single bundle: as before
            (part(None, 0.668, True, False), 100.0),                              # not scored: full
        ]
        for v, width in cases:
            assert bar_width(browser, v) == pytest.approx(width, abs=1e-3), v
        for v, _ in cases[2:5]:   # a fused NG part fills past the middle (the mark), an OK one stops short of it
            assert (bar_width(browser, v) > 50) == v["ng"], v
