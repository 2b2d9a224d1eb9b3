"""A calibrated threshold lies in a gap between scores, never on one: a calibration normal that another backend
scores ~1e-6 apart keeps its verdict, and "at most floor(rate * n) normals rejected" holds at the value returned."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fair_edge.calibration import threshold as rule
from fair_edge.calibration.threshold import calibrate_threshold, f1_optimal_threshold, quantile_threshold

BACKEND_DIFFERENCE = 1e-6   # ONNX Runtime vs OpenVINO / torch-cpu on one graph: ~1e-6 in score units


def demo_like_normals(n: int, seed: int) -> np.ndarray:
    """(n,) float64 normal scores spread like the demo bundle's (around 14, a few tenths apart at the top)."""
    return 14.0 + np.random.default_rng(seed).gamma(4.0, 0.25, n)


def kth_allowed(scores, rate: float) -> float:
    """By hand: the k-th smallest of n scores, k = ceil((1 - rate) * n), the highest normal allowed to pass."""
    ordered = np.sort(np.asarray(scores, np.float64))
    return float(ordered[max(1, math.ceil((1 - rate) * ordered.size - 1e-9)) - 1])


@pytest.mark.parametrize(("n", "rate"), [(59, 0.05), (200, 0.005), (10, 0.005)])   # (10, 0.5 %): too few normals
def test_a_normal_scored_1e_6_above_its_calibration_score_stays_ok(n, rate):
    """The demo bundle's case: 59 held-out normals at 5 %. Scored 1e-6 higher (another backend), the highest
    normal allowed to pass is still OK, and no calibration normal changes side: the count above stays the
    measured rate's."""
    normal = demo_like_normals(n, seed=n)
    threshold = calibrate_threshold(normal, false_reject_rate=rate)
    allowed = kth_allowed(normal, rate)
    assert not allowed + BACKEND_DIFFERENCE > threshold.value   # the station's NG rule: score > threshold
    rejected = int((normal > threshold.value).sum())
    assert rejected <= math.floor(rate * n) and threshold.measured_false_reject_rate == rejected / n
    for shift in (BACKEND_DIFFERENCE, -BACKEND_DIFFERENCE):
        assert int((normal + shift > threshold.value).sum()) == rejected
        assert int((normal * (1 + shift) > threshold.value).sum()) == rejected   # relative, as float32 rounding is


def test_the_threshold_sits_a_margin_above_the_kth_normal_or_midway_where_the_gap_is_narrower():
    """RELATIVE_MARGIN * |score| + ABSOLUTE_MARGIN above the k-th score (also with nothing higher: too few
    normals, or ties at the top); midway to the next higher score where that is nearer."""
    assert quantile_threshold([1.0, 2.0, 3.0, 4.0], 0.25) == 3.0 + rule.margin(3.0) == pytest.approx(3.003001)
    assert quantile_threshold([1.0, 2.0, 3.0, 3.002], 0.25) == pytest.approx(3.001)   # a gap narrower than 2 margins
    assert quantile_threshold(np.arange(1, 101), 0.005) == 100.0 + rule.margin(100.0) == pytest.approx(100.100001)
    assert quantile_threshold([2.0, 5.0, 5.0, 5.0], 0.5) == 5.0 + rule.margin(5.0)   # ties at the top: none above
    assert quantile_threshold([0.0, 0.0], 0.0) == 1e-6   # an absolute gap at a score of 0
    assert quantile_threshold([-4.0, -2.0], 0.0) == -2.0 + rule.margin(-2.0) > -2.0


@pytest.mark.parametrize("seed", range(6))
def test_at_most_floor_rate_n_normals_are_rejected_at_the_returned_value(seed):
    """Any n, rate, ties (integer scores) and adjacent floats: NG = score > threshold rejects exactly the
    normals above the k-th score, at most floor(rate * n), and the threshold passes the k-th score with room
    (the margin, or half the gap) whenever the gap is wider than two float steps."""
    rng = np.random.default_rng(seed)
    for _ in range(200):
        n, rate = int(rng.integers(1, 300)), float(rng.choice([0.0, 0.005, 0.01, 0.05, 0.1, 0.3]))
        normal = rng.integers(0, 20, n).astype(float) if seed % 2 else rng.normal(5.0, 1.0, n)
        if seed == 5:
            normal = 1.0 + np.arange(n) * np.finfo(float).eps   # adjacent float64 scores: a gap of one step
        value = quantile_threshold(normal, rate)
        allowed = kth_allowed(normal, rate)
        assert int((normal > value).sum()) == int((normal > allowed).sum()) <= math.floor(rate * n)
        assert not np.any(normal == value) or seed == 5   # never on a score (one-step gaps round onto one)
        above = normal[normal > allowed]
        if above.size and above.min() - allowed > 4 * np.spacing(allowed):
            assert value == pytest.approx(allowed + min(rule.margin(allowed), (above.min() - allowed) / 2))


def test_gap_thresholds_never_land_on_a_score():
    """Each threshold passes the level below its gap and rejects the one above it, adjacent floats too."""
    one = 1.0
    levels = np.array([-3.0, 0.0, one, np.nextafter(one, 2.0), 7.5])
    cuts = rule.gap_thresholds(levels)
    assert cuts.size == levels.size + 1
    assert cuts[0] < levels[0] and cuts[-1] > levels[-1]
    for i in range(1, levels.size):
        assert levels[i - 1] <= cuts[i] < levels[i]
    assert list(cuts[[1, 2, 4]]) == [-1.5, 0.5, (one + 7.5) / 2]


def test_the_f1_threshold_is_in_a_gap_so_a_backend_difference_keeps_its_f1():
    """eval's f1_threshold is meant to be used as a station threshold as it is: it is never an observed score,
    so normals and defects scored 1e-6 apart are decided as at calibration, and the F1 reached is the same."""
    normal, defect = demo_like_normals(80, seed=3), demo_like_normals(20, seed=4) + 0.6
    value, f1 = f1_optimal_threshold(normal, defect)
    assert not np.any(np.concatenate([normal, defect]) == value)
    for shift in (BACKEND_DIFFERENCE, -BACKEND_DIFFERENCE):
        tp = int((defect + shift > value).sum())
        fp = int((normal + shift > value).sum())
        assert 2 * tp / (2 * tp + fp + (defect.size - tp)) == pytest.approx(f1)
    assert f1_optimal_threshold([1, 2, 3, 4], [3.5, 5, 6]) == (3.25, pytest.approx(6 / 7))   # midway 3 | 3.5


def test_the_roi_threshold_follows_the_same_rule():
    """The station's ROI threshold (calibrated at start on the bundle's normal maps x ROI) is in the gap too."""
    from fair_edge.station.decision import calibrate_roi_threshold

    rng = np.random.default_rng(7)
    maps = rng.gamma(4.0, 0.25, (40, 8, 8)).astype(np.float32)
    roi = np.zeros((8, 8), np.float32)
    roi[2:6, 2:6] = 1
    threshold = calibrate_roi_threshold(maps, roi, 0.1)
    roi_scores = maps[:, 2:6, 2:6].reshape(40, -1).max(axis=1).astype(np.float64)
    allowed = kth_allowed(roi_scores, 0.1)
    assert allowed + BACKEND_DIFFERENCE <= threshold.value
    assert int((roi_scores + BACKEND_DIFFERENCE > threshold.value).sum()) == int((roi_scores > allowed).sum()) <= 4
