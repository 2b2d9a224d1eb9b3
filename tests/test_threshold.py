"""Decision threshold numbers on known score lists."""

from __future__ import annotations

import numpy as np
import pytest

from fair_edge.calibration.threshold import Threshold, calibrate_threshold, f1_optimal_threshold, quantile_threshold
from fair_edge.errors import ConfigError, DataError


def test_quantile_threshold_rejects_at_most_the_target_rate():
    scores = np.arange(1, 1001, dtype=float)  # 1..1000
    assert quantile_threshold(scores, 0.005) == 995.0  # 5 of 1000 above -> 0.5 %
    assert quantile_threshold(scores, 0.01) == 990.0
    assert quantile_threshold(np.arange(1, 101), 0.005) == 100.0  # 100 normals cannot resolve 0.5 %: reject none
    assert quantile_threshold(np.arange(1, 101), 0.05) == 95.0
    assert quantile_threshold([3.0, 1.0, 2.0], 0.0) == 3.0  # order does not matter
    rng = np.random.default_rng(0)
    s = rng.normal(size=5000)
    assert (s > quantile_threshold(s, 0.005)).mean() <= 0.005


def test_f1_optimal_threshold():
    thr, f1 = f1_optimal_threshold([1, 2, 3, 4], [3.5, 5, 6])
    assert thr == 3.0 and f1 == pytest.approx(6 / 7)  # NG: 3.5, 4, 5, 6 -> tp 3, fp 1, fn 0
    thr, f1 = f1_optimal_threshold([1, 2], [5, 6])
    assert 2.0 <= thr < 5.0 and f1 == 1.0
    thr, f1 = f1_optimal_threshold([5, 6], [1, 2])  # defects score lower: best is to reject everything
    assert thr < 1.0 and f1 == pytest.approx(2 * 2 / (2 * 2 + 2))


def test_calibrate_threshold_record_round_trips():
    t = calibrate_threshold(np.arange(1, 201), [150, 300, 400], 0.005, source="held-out")
    assert (t.value, t.n_normal, t.n_defect, t.measured_false_reject_rate) == (199.0, 200, 3, 0.005)
    assert (t.f1_threshold, t.f1) == (200.0, 0.8)
    assert Threshold.from_dict(t.to_dict()) == t
    assert calibrate_threshold([1.0, 2.0]).f1 is None


def test_threshold_errors():
    with pytest.raises(DataError, match="found none"):
        quantile_threshold([])
    with pytest.raises(DataError, match="NaN"):
        quantile_threshold([1.0, float("nan")])
    with pytest.raises(ConfigError, match="false-reject rate"):
        quantile_threshold([1.0], 1.5)
