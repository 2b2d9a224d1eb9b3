"""Decision threshold numbers on known score lists."""

from __future__ import annotations

import numpy as np
import pytest

from fair_edge.calibration.threshold import Threshold, calibrate_threshold, f1_optimal_threshold, quantile_threshold
from fair_edge.errors import ConfigError, DataError


def test_quantile_threshold_rejects_at_most_the_target_rate():
    scores = np.arange(1, 1001, dtype=float)  # 1..1000; the threshold: 1e-3 x the k-th score + 1e-6 above it, at most halfway to the next
    assert quantile_threshold(scores, 0.005) == 995.5  # 5 of 1000 above -> 0.5 %; the gap's half is nearer
    assert quantile_threshold(scores, 0.01) == 990.5
    # 100 normals cannot resolve 0.5 %: reject none, 1e-3 x 100 + 1e-6 above the highest
    assert quantile_threshold(np.arange(1, 101), 0.005) == pytest.approx(100.100001, abs=1e-12)
    assert quantile_threshold(np.arange(1, 101), 0.05) == pytest.approx(95.095001, abs=1e-12)
    assert quantile_threshold([3.0, 1.0, 2.0], 0.0) == pytest.approx(3.003001, abs=1e-12)  # order does not matter
    rng = np.random.default_rng(0)
    s = rng.normal(size=5000)
    assert (s > quantile_threshold(s, 0.005)).mean() <= 0.005


def test_f1_optimal_threshold():
    thr, f1 = f1_optimal_threshold([1, 2, 3, 4], [3.5, 5, 6])
    assert thr == 3.25 and f1 == pytest.approx(6 / 7)  # midway 3 | 3.5; NG: 3.5, 4, 5, 6 -> tp 3, fp 1, fn 0
    thr, f1 = f1_optimal_threshold([1, 2], [5, 6])
    assert 2.0 <= thr < 5.0 and f1 == 1.0
    thr, f1 = f1_optimal_threshold([5, 6], [1, 2])  # defects score lower: best is to reject everything
    assert thr < 1.0 and f1 == pytest.approx(2 * 2 / (2 * 2 + 2))


def test_calibrate_threshold_record_round_trips():
    t = calibrate_threshold(np.arange(1, 201), [150, 300, 400], 0.005, source="held-out")
    assert (t.value, t.n_normal, t.n_defect, t.measured_false_reject_rate) == (pytest.approx(199.199001, abs=1e-12), 200, 3, 0.005)
    assert (t.f1_threshold, t.f1) == (250.0, 0.8)   # midway between the highest normal, 200, and the defect 300
    assert Threshold.from_dict(t.to_dict()) == t
    assert calibrate_threshold([1.0, 2.0]).f1 is None


def test_threshold_errors():
    with pytest.raises(DataError, match="found none"):
        quantile_threshold([])
    with pytest.raises(DataError, match="NaN"):
        quantile_threshold([1.0, float("nan")])
    with pytest.raises(ConfigError, match="false-reject rate"):
        quantile_threshold([1.0], 1.5)


def test_the_build_scores_held_out_frames_once_with_the_stations_own_pre_processing(tmp_path, monkeypatch):
    """One pre-processing for build and station: the build's threshold is calibrated on exactly the
    scores the station's CPU backend gives the same frames, and each held-out frame (normal or defect)
    is pre-processed once per build, by the station's pipeline."""
    from export_fixtures import MODEL, make_frames, trained_state

    from fair_edge.export.build import BuildOptions, build_bundle
    from fair_edge.models.checkpoint import Checkpoint
    from fair_edge.preprocess import CpuPipeline
    from fair_edge.runtime.selection import select_backend

    normal, defects = make_frames(10, seed=1), make_frames(4, seed=2, defect=True)
    seen = []
    real_colour = CpuPipeline.colour

    def counted(self, frames, clock=None):
        seen.extend(id(f) for f in frames)
        return real_colour(self, frames, clock)

    monkeypatch.setattr(CpuPipeline, "colour", counted)
    result = build_bundle(Checkpoint(MODEL, trained_state(100, 0), {}), tmp_path / "b", BuildOptions(engine=False),
                          calib_frames=make_frames(6, seed=3), normal_frames=normal, defect_frames=defects)
    assert sorted(seen) == sorted(id(f) for f in [*normal, *defects])   # each once, nothing else
    monkeypatch.setattr(CpuPipeline, "colour", real_colour)
    choice = select_backend(result.bundle, "onnxruntime")
    try:
        station_normal = choice.infer_frames(normal)[1]
        station_defects = choice.infer_frames(defects)[1]
    finally:
        choice.backend.close()
    again = calibrate_threshold(station_normal, station_defects, BuildOptions().false_reject_rate)
    assert result.bundle.threshold.value == again.value
    assert result.bundle.threshold.to_dict()["normal_quantiles"] == again.to_dict()["normal_quantiles"]
