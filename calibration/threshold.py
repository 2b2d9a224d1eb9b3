"""Decision threshold from scores: a part is rejected (NG) when its score is > threshold.

From held-out normal images only: the smallest order statistic of the normal scores that rejects at
most the target false-reject rate (default 0.5 %). With n normal scores and rate r the threshold is
the k-th smallest score, k = ceil((1 - r) * n) (1-based), so at most floor(r * n) normal images
score above it. If defect scores are given too, the F1-optimal threshold (defects = positives) is
reported alongside; the normal-quantile threshold stays the one in force unless the caller chooses.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from fair_edge.errors import ConfigError, DataError

DEFAULT_FALSE_REJECT_RATE = 0.005


@dataclass(frozen=True)
class Threshold:
    """value: the threshold in force (score units). method: 'normal-quantile'.
    false_reject_rate: target rate; measured_false_reject_rate: on the normal scores used.
    n_normal / n_defect: how many scores it was calibrated on. f1_threshold / f1: best F1 over
    the defect + normal scores (None without defects). source: where the normal images came from.
    normal_quantiles: the calibration distribution, the 0th, 1st, ..., 100th percentile of the
    normal scores (101 values, linear interpolation; empty in bundles built before it was stored);
    the station's drift watch compares recent scores with it (fair_edge.console.drift)."""

    value: float
    method: str
    false_reject_rate: float
    measured_false_reject_rate: float
    n_normal: int
    n_defect: int = 0
    f1_threshold: float | None = None
    f1: float | None = None
    source: str = ""
    normal_quantiles: tuple[float, ...] = ()

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Threshold":
        opt = lambda v: None if v is None else float(v)  # noqa: E731
        return cls(
            value=float(data["value"]), method=str(data["method"]),
            false_reject_rate=float(data["false_reject_rate"]),
            measured_false_reject_rate=float(data["measured_false_reject_rate"]),
            n_normal=int(data["n_normal"]), n_defect=int(data.get("n_defect", 0)),
            f1_threshold=opt(data.get("f1_threshold")), f1=opt(data.get("f1")), source=str(data.get("source", "")),
            normal_quantiles=tuple(float(v) for v in data.get("normal_quantiles") or ()),
        )


def _scores(values, what: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).ravel()
    if arr.size == 0:
        raise DataError(f"threshold calibration needs {what} scores; found none.")
    if not np.all(np.isfinite(arr)):
        raise DataError(f"{what} scores contain NaN or inf ({int((~np.isfinite(arr)).sum())} of {arr.size}).")
    return arr


def quantile_threshold(normal_scores, false_reject_rate: float = DEFAULT_FALSE_REJECT_RATE) -> float:
    """The k-th smallest normal score, k = ceil((1 - rate) * n): rejects at most floor(rate * n) normals."""
    if not 0.0 <= false_reject_rate < 1.0:
        raise ConfigError(f"false-reject rate must be in [0, 1); found {false_reject_rate}.")
    scores = np.sort(_scores(normal_scores, "normal"))
    k = max(1, math.ceil((1.0 - false_reject_rate) * scores.size - 1e-9))
    return float(scores[k - 1])


def f1_optimal_threshold(normal_scores, defect_scores) -> tuple[float, float]:
    """(threshold, F1) maximising F1 with defects positive and NG = score > threshold.

    Candidates: every observed score and one just below the smallest (reject everything). Ties in
    F1 go to the larger threshold (fewer false rejects).
    """
    normal, defect = _scores(normal_scores, "normal"), _scores(defect_scores, "defect")
    candidates = np.unique(np.concatenate([normal, defect]))
    candidates = np.concatenate([[np.nextafter(candidates[0], -np.inf)], candidates])
    normal_sorted, defect_sorted = np.sort(normal), np.sort(defect)
    tp = defect.size - np.searchsorted(defect_sorted, candidates, side="right")
    fp = normal.size - np.searchsorted(normal_sorted, candidates, side="right")
    fn = defect.size - tp
    f1 = 2 * tp / np.maximum(2 * tp + fp + fn, 1)
    best = np.flatnonzero(f1 == f1.max())[-1]
    return float(candidates[best]), float(f1[best])


def calibrate_threshold(normal_scores, defect_scores=None, false_reject_rate: float = DEFAULT_FALSE_REJECT_RATE,
                        source: str = "") -> Threshold:
    """Threshold from held-out normal scores (and optional defect scores); see the module docstring."""
    normal = _scores(normal_scores, "normal")
    value = quantile_threshold(normal, false_reject_rate)
    f1_thr = f1 = None
    n_defect = 0
    if defect_scores is not None and np.asarray(defect_scores).size:
        f1_thr, f1 = f1_optimal_threshold(normal, defect_scores)
        n_defect = int(np.asarray(defect_scores).size)
    return Threshold(
        value=value, method="normal-quantile", false_reject_rate=false_reject_rate,
        measured_false_reject_rate=float((normal > value).mean()), n_normal=int(normal.size),
        n_defect=n_defect, f1_threshold=f1_thr, f1=f1, source=source,
        normal_quantiles=tuple(float(q) for q in np.percentile(normal, np.arange(101))),
    )
