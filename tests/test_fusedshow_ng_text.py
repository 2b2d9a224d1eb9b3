"""What an NG part's image and its NG review card say about its score: "> threshold" only when the score is over
it. A part NG by a region rule at or under the threshold (regions.default.min_area_px: 1 on the audit's fused bundle:
score 0.4306, threshold 1.1488) said "score 0.4306 > threshold 1.1488"; it now says "<= threshold 1.1488, NG by
rule", its rule's reason on the line below, as before."""

from __future__ import annotations

import numpy as np
import pytest

import fair_edge.line.ng_images as ng_images
from fair_edge.line.recorder import Recorder
from fair_edge.line.settings import RecordSettings
from fair_edge.records import Frame, Region, RuleHit, Verdict
from test_console_browser import CHROMIUM, DRIVER, browser, wait  # noqa: F401 - browser: the fixture
from test_console_ops_browser import card_text, served
from test_console_units import one_camera_console

THRESHOLD = 1.1488
RULE_HIT = RuleHit("min_area_px", "default", 0, 1700.0, 1.0, "px²", region=0)
REGION = Region(bbox=(10, 10, 20, 20), centroid=(20.0, 20.0), area_px=1700.0, length_px=30.0, peak=0.43, mean=0.35)


def rule_ng(seq: int, score: float) -> Verdict:
    """A part NG by a region rule (its hit) whatever its score against the threshold."""
    return Verdict(seq, 1.0, score, THRESHOLD, True, 1.01, f"{seq:03d}.png", regions=(REGION,), hits=(RULE_HIT,))


def first_lines(tmp_path, monkeypatch, verdicts: list[Verdict]) -> list[str]:
    """The first text line of each verdict's NG image, as the recorder draws it (``heatmap_panel``'s lines)."""
    drawn: list[list[str]] = []
    real = ng_images.heatmap_panel

    def spy(image, amap, vmin, vmax, lines, **kw):
        drawn.append(list(lines))
        return real(image, amap, vmin, vmax, lines, **kw)

    monkeypatch.setattr(ng_images, "heatmap_panel", spy)
    amap = np.full((12, 16), -1.0, np.float32)
    with Recorder(RecordSettings(dir=tmp_path, min_free_mb=0), run_id="R1") as rec:
        for v in verdicts:
            assert rec.record(Frame(v.seq, 1.0, np.full((48, 64, 3), 80, np.uint8), v.source), v, amap)
    assert rec.stats()["images"] == len(verdicts)
    return [lines[0] for lines in drawn]


def test_an_ng_image_says_over_the_threshold_only_when_the_score_is(tmp_path, monkeypatch):
    lines = first_lines(tmp_path, monkeypatch, [rule_ng(0, 0.4306), rule_ng(1, THRESHOLD), rule_ng(2, 4.7)])
    assert lines == ["NG  score 0.4306 <= threshold 1.1488, NG by rule",
                     "NG  score 1.1488 <= threshold 1.1488, NG by rule",
                     "NG  score 4.7000 > threshold 1.1488"]


def test_an_ng_image_of_a_frame_that_could_not_be_judged_says_not_inspected(tmp_path, monkeypatch):
    failed = Verdict(0, 1.0, 0.2, THRESHOLD, True, 1.01, "000.png", error="regions: judging failed")
    assert first_lines(tmp_path, monkeypatch, [failed]) == ["NG  score 0.2000 <= threshold 1.1488, NG: not inspected"]


@pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs Debian's chromium and chromium-driver")
def test_the_review_card_of_a_part_ng_by_a_rule_under_the_threshold_says_so(browser, tmp_path):  # noqa: F811
    console, _ = one_camera_console(tmp_path)
    for v in (rule_ng(0, 0.4306), rule_ng(1, 4.7)):
        console.observe(None, v, None)
    with served(console) as server:
        browser.get(server.url + "gallery")
        under = wait(browser, lambda d: card_text(d, 0), what="part 0's card")
        over = wait(browser, lambda d: card_text(d, 1), what="part 1's card")
    assert "score 0.4306 ≤ threshold 1.149, NG by rule" in under and ">" not in under.split("·")[1], under
    assert "score 4.700 > 1.149" in over, over
