"""Heat-map panels a person can read: image beside its heat map, colour scale, mask outline, text."""

import cv2
import numpy as np
import pytest

from fair_edge.plots import colour_bar, heatmap_overlay, heatmap_panel, threshold_mark


def scene():
    rng = np.random.default_rng(0)
    image = rng.integers(60, 200, (40, 50, 3), dtype=np.uint8)
    amap = np.zeros((40, 50), np.float32)
    amap[10:20, 20:30] = 1.0
    mask = np.zeros((40, 50), np.uint8)
    mask[12:18, 22:28] = 255
    return image, amap, mask


def split(panel, side, width):
    strip = panel.shape[0] - side
    return panel[:strip], panel[strip:, :width], panel[strip:, width:2 * width], panel[strip:, 2 * width:]


def test_panel_layout_original_overlay_and_scale():
    image, amap, _ = scene()
    panel = heatmap_panel(image, amap, 0.0, 1.0, ["a.png: normal", "score 0.9000 > threshold 0.5000"],
                          threshold=0.5, min_side=80)
    strip, left, middle, bar = split(panel, 80, 100)  # enlarged x2 (nearest neighbour) to 80 x 100
    big = cv2.resize(image, (100, 80), interpolation=cv2.INTER_NEAREST)
    assert np.array_equal(left, big)  # the image as captured
    assert np.array_equal(middle, cv2.resize(heatmap_overlay(image, amap, 0.0, 1.0), (100, 80),
                                             interpolation=cv2.INTER_NEAREST))
    assert np.array_equal(bar, colour_bar(80, 0.0, 1.0, 0.5))
    assert strip.shape[0] >= 2 * 20 and (strip < 100).any()


def test_colour_bar_runs_blue_to_red_and_marks_the_threshold():
    bar = colour_bar(100, 0.0, 2.0, threshold=1.0)
    top, bottom = bar[1, 8].astype(int), bar[-2, 8].astype(int)
    assert top[2] > top[0] and bottom[0] > bottom[2]  # BGR: red at the top (vmax), blue at the bottom (vmin)
    assert (bar[49:52, :16] == 0).all(axis=-1).any()  # a black threshold line half way up
    assert not (colour_bar(100, 0.0, 2.0)[45:55, :16] == 0).all(axis=-1).any()


def test_mask_outline_on_both_panels_only_when_masks_exist():
    image, amap, mask = scene()
    with_mask = heatmap_panel(image, amap, 0.0, 1.0, ["x"], mask=mask, min_side=0)
    without = heatmap_panel(image, amap, 0.0, 1.0, ["x"], min_side=0)
    _, left_m, mid_m, _ = split(with_mask, 40, 50)
    _, left, mid, _ = split(without, 40, 50)
    changed = np.argwhere((left_m != left).any(axis=-1))
    assert len(changed) > 0 and (left_m[tuple(changed.T)] == 255).all()  # white outline pixels
    ys, xs = changed[:, 0], changed[:, 1]
    assert ys.min() >= 11 and ys.max() <= 18 and xs.min() >= 21 and xs.max() <= 28  # around the mask
    assert ((mid_m != mid).any(axis=-1) == (left_m != left).any(axis=-1)).all()


def test_text_changes_with_the_score():
    image, amap, _ = scene()
    a = heatmap_panel(image, amap, 0.0, 1.0, ["score 0.1000"], min_side=0)
    b = heatmap_panel(image, amap, 0.0, 1.0, ["score 0.9000"], min_side=0)
    assert a.shape == b.shape and not np.array_equal(a, b)


@pytest.mark.parametrize("lines", [[], ["one"], ["one", "two", "three"]])
def test_strip_height_follows_the_lines(lines):
    image, amap, _ = scene()
    assert heatmap_panel(image, amap, 0.0, 1.0, lines, min_side=0).shape[0] == 40 + 22 * len(lines) + 6


def test_the_threshold_is_marked_on_the_map_scale_only_when_the_score_is_the_map_maximum():
    """PatchCore's re-weighted score (weight x map max) or a top-k score is not on the map's scale: a map pixel
    above a mark there does not mean a score above the threshold, so the panel says so instead of marking it."""
    _, amap, _ = scene()  # map max 1.0
    assert threshold_mark(1.0, amap, 0.5) == (0.5, [])
    mark, why = threshold_mark(0.6, amap, 0.5)  # re-weighted: 0.6 x max
    assert mark is None and why == ["map max 1.0000; score != map max, thr not marked"]
    assert threshold_mark(0.6, amap, None) == (None, [])
