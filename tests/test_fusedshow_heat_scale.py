"""The heat-map colour scale of a fused bundle's parts (NG images, the console's pictures) is chosen by what the map
is, not by the threshold's sign: a fused map counts its members' normal spreads (``runtime.fusion``), about -2 .. 0
on normal parts, so it is drawn on threshold -/+ ``FUSED_HALF_SCALE`` whatever the threshold. Before, a fused bundle
whose threshold was above 0 (1.149 in the audit's) got a single bundle's 0 .. 2 x threshold: 97 % of the map dark
blue. A single bundle's pictures are unchanged, pixel for pixel. The verdict says whether its model is fused
(``Verdict.fused``, set by the inspector from the scorer that scored it)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from fair_edge.console.render import JPEG_QUALITY, overlay_jpeg
from fair_edge.line.recorder import Recorder
from fair_edge.line.settings import RecordSettings
from fair_edge.plots import FUSED_HALF_SCALE, heat_scale, heatmap_overlay, heatmap_panel, threshold_mark
from fair_edge.records import Frame, Verdict

FUSED_THRESHOLD = 1.1487725   # the audit's fused bundle (fab): a fused threshold above 0
PLAIN_THRESHOLD = 0.5


def fused_like_map() -> np.ndarray:
    """(12, 16) float32 in normal spreads: -1.5 on the normal surface, a defect at +4 (over the threshold)."""
    amap = np.full((12, 16), -1.5, np.float32)
    amap[3:6, 4:8] = 4.0
    amap[8, 2] = -3.5
    return amap


def plain_map() -> np.ndarray:
    """(12, 16) float32 >= 0, a single bundle's: a hot spot of 0.9 over the threshold 0.5."""
    amap = np.zeros((12, 16), np.float32)
    amap[3:6, 4:8] = 0.9
    return amap


def frame(seq: int = 0) -> Frame:
    return Frame(seq, 1.0, np.full((48, 64, 3), 80, np.uint8), "test")


def ng_overlay(tmp_path, verdict: Verdict, amap: np.ndarray) -> np.ndarray:
    """The NG overlay image the recorder saves for ``verdict`` ((rows, cols, 3) uint8 BGR, read back)."""
    with Recorder(RecordSettings(dir=tmp_path, min_free_mb=0), run_id="R1") as rec:
        assert rec.record(frame(verdict.seq), verdict, amap)
    return cv2.imread(str(tmp_path / "ng" / f"R1_{verdict.seq:08d}_overlay.png"))


def test_a_fused_maps_scale_is_its_threshold_plus_minus_the_half_scale_whatever_the_thresholds_sign():
    amap = fused_like_map()
    for threshold in (FUSED_THRESHOLD, 0.02, -0.35, 0.0):
        assert heat_scale(amap, threshold, fused=True) == (threshold - FUSED_HALF_SCALE, threshold + FUSED_HALF_SCALE)


def test_a_single_bundles_scale_is_unchanged():
    assert heat_scale(plain_map(), PLAIN_THRESHOLD) == (0.0, 2 * PLAIN_THRESHOLD)
    assert heat_scale(plain_map(), PLAIN_THRESHOLD, fused=False) == (0.0, 2 * PLAIN_THRESHOLD)
    assert heat_scale(plain_map(), None) == (0.0, pytest.approx(0.9 + 1e-6))


def test_a_fused_parts_ng_image_is_drawn_around_its_threshold_above_zero(tmp_path):
    """Threshold 1.149: the map is coloured on -1.85 .. 4.15 (the normal surface at -1.5 cyan-blue, not all
    dark blue on 0 .. 2.3 as before)."""
    amap = fused_like_map()
    verdict = Verdict(0, 1.0, 4.0, FUSED_THRESHOLD, True, 1.01, "test", fused=True)
    overlay = ng_overlay(tmp_path, verdict, amap)
    strip = overlay.shape[0] - 48
    expected = heatmap_overlay(frame().image, amap, FUSED_THRESHOLD - FUSED_HALF_SCALE,
                               FUSED_THRESHOLD + FUSED_HALF_SCALE, alpha=0.5)
    assert np.array_equal(overlay[strip:, :64], expected)


def test_a_single_bundles_ng_image_is_the_same_image_pixel_for_pixel(tmp_path):
    """The whole NG image of a single bundle's part NG by its score (text, heat map, colour bar) is the one drawn
    before: scale 0 .. 2 x threshold, first line "NG  score S > threshold T"."""
    amap = plain_map()
    verdict = Verdict(3, 1.0, 0.9, PLAIN_THRESHOLD, True, 1.01, "test")
    overlay = ng_overlay(tmp_path, verdict, amap)
    mark, why = threshold_mark(0.9, amap, PLAIN_THRESHOLD)
    before = heatmap_panel(frame().image, amap, 0.0, 2 * PLAIN_THRESHOLD,
                           ["NG  score 0.9000 > threshold 0.5000", "seq 3  source test", *why], threshold=mark,
                           show_original=False, alpha=0.5, min_side=0)
    assert np.array_equal(overlay, before)


def jpeg(image: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])[1].tobytes()


def test_the_consoles_picture_of_a_fused_part_uses_the_fused_scale_and_a_single_bundles_the_old_one():
    image = frame().image
    fused = Verdict(0, 1.0, 4.0, FUSED_THRESHOLD, True, 1.01, "test", fused=True)
    assert overlay_jpeg(image, fused_like_map(), FUSED_THRESHOLD, verdict=fused) == jpeg(heatmap_overlay(
        image, fused_like_map(), FUSED_THRESHOLD - FUSED_HALF_SCALE, FUSED_THRESHOLD + FUSED_HALF_SCALE, 0.5))
    plain = Verdict(0, 1.0, 0.9, PLAIN_THRESHOLD, True, 1.01, "test")
    assert overlay_jpeg(image, plain_map(), PLAIN_THRESHOLD, verdict=plain) == jpeg(heatmap_overlay(
        image, plain_map(), 0.0, 2 * PLAIN_THRESHOLD, 0.5))


def test_the_inspectors_verdicts_say_whether_a_fused_bundle_scored_them(station_bundles, fused_station_bundle,
                                                                         conveyor_dir):
    """The inspector marks each verdict with its scorer's kind: a fused bundle's FusedScorer (True), a single
    bundle's scorer (False), so the recorder and the console can tell without guessing from the threshold."""
    from fair_edge.runtime.backends import close_scorer
    from fair_edge.runtime.fusion import FusedScorer
    from fair_edge.station.bundles import open_scorer
    from fair_edge.station.inspector import Inspector

    image = cv2.imread(str(sorted(conveyor_dir.iterdir())[0]))
    for scorer, fused in ((FusedScorer(fused_station_bundle, "onnxruntime"), True),
                          (open_scorer(station_bundles[0], "onnxruntime"), False)):
        try:
            inspector = Inspector(capture=None, scorer=scorer, threshold=FUSED_THRESHOLD)
            (verdict,) = inspector.inspect([Frame(0, 0.0, image)])
        finally:
            close_scorer(scorer)
        assert not verdict.error and verdict.fused is fused
