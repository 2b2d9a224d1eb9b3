"""Decision threshold from scores: a part is rejected (NG) when its score is > threshold.

From held-out normal images only: a threshold that rejects at most the target false-reject rate
(default 0.5 %) of the normal scores. With n normal scores and rate r, k = ceil((1 - r) * n) (1-based)
normals are to stay OK: the threshold lies in the gap above the k-th smallest score, a small ``margin``
above it (at most halfway to the next higher normal score: ``threshold_in_gap``), so at most floor(r * n)
normal images score above it, and the false-reject rate reported is measured at that value. If defect scores are given
too, the F1-optimal threshold (defects = positives) is reported alongside, also placed midway in the
gap between two scores; the normal-quantile threshold stays the one in force unless the caller chooses.

A threshold never equals a calibration score: a normal image at exactly the threshold passes on the graph
it was calibrated on, but another backend of the same graph (OpenVINO, PyTorch vs ONNX Runtime) scores it
~1e-6 apart, which would reject it there and break "at most floor(r * n)". A calibration score now changes
side only when a backend moves it by the margin (1e-3 relative) or half the gap, whichever is less.

The margin covers float differences between engines, not int8 kernels: OpenVINO scores an INT8 bundle's CPU graph
up to 0.9 % apart from ONNX Runtime (a normal 0.1 % under the threshold was NG there), so the build calibrates a
threshold on each engine's own scores of that graph (``export.build._openvino_thresholds``); on FP32 and FP16
graphs the two agree within 2.1e-6 relative and share one.

Bundles built before the margin (fair-edge ``MARGIN_COMMIT``) hold thresholds exactly on the k-th normal score;
``margin_at_load`` gives what the rule makes of such a threshold from the normal scores it records, and
``export.bundle`` applies it when it loads one.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from fair_edge.errors import ConfigError, DataError

DEFAULT_FALSE_REJECT_RATE = 0.005
# With no score above (or below) to bound the gap: the threshold is this far from the outermost score,
# RELATIVE_MARGIN * |score| + ABSOLUTE_MARGIN (score units); see ``margin``.
RELATIVE_MARGIN = 1e-3
ABSOLUTE_MARGIN = 1e-6
MARGIN_COMMIT = "9850f8b"   # the fair-edge commit from which the build keeps ``margin`` above the k-th normal score
QUANTILES_COMMIT = "0f7ffeb"   # the one from which a Threshold records its normal scores (``normal_quantiles``)
SPREAD_FLOOR = 1e-6   # least std of normal scores, as a share of their mean (float32 keeps ~7 digits); see check_spread


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


def check_spread(scores, what: str, why: str, fix: str, images: str = "held-out normal images") -> tuple[float, float]:
    """(mean, std) (ddof 0, score units) of ``scores`` ((N,) finite, one per normal image), when they spread: std over
    SPREAD_FLOOR of |mean|. The one spread rule of the calibrations that take normal images (a fused member's unit,
    ``runtime.fusion.NormalStats.fit``; the build's threshold, ``export.build``): copies of one image all score the
    same (std 0, or float32 rounding apart), which gives a fused map no unit and a threshold that sits on one
    image's score.

    Raises DataError "{what} on the N {images} do not spread (mean, std; expected ...), {why}; {fix}"."""
    values = np.asarray(scores, np.float64).ravel()
    mean, std = float(values.mean()), float(values.std())
    if not std > SPREAD_FLOOR * abs(mean):
        raise DataError(f"{what} on the {values.size} {images} do not spread (mean {mean:.6g}, std {std:.3g}; expected "
                        f"a std over {SPREAD_FLOOR:g} of the mean), {why}; {fix}")
    return mean, std


def margin(score: float) -> float:
    """How far past ``score`` (the highest, or lowest, calibration score) a threshold goes when no other score
    bounds the gap: RELATIVE_MARGIN * |score| + ABSOLUTE_MARGIN, in score units.

    1e-3 relative is about 1000 times the FP32 difference between backends running one graph (~1e-6 relative)
    and about one FP16 step (2^-10 relative), yet small against the spread of normal scores, so the threshold
    is still where the normals end and the catch rate barely moves; the 1e-6 absolute term keeps a gap at a
    score of 0. Not enough for two engines' int8 kernels (OpenVINO vs ONNX Runtime: up to 9e-3 relative on one
    INT8 graph): those get a threshold each (see the module docstring)."""
    return RELATIVE_MARGIN * abs(score) + ABSOLUTE_MARGIN


def gap_thresholds(levels: np.ndarray) -> np.ndarray:
    """One threshold in each gap of the distinct sorted scores ``levels`` (m,) float64: (m + 1,) float64.

    [0]: ``margin`` below levels[0] (rejects every score); [i], 0 < i < m: midway between levels[i - 1] and
    levels[i] (passes levels[i - 1], rejects levels[i]); [m]: ``margin`` above levels[m - 1] (rejects none).
    Where two levels are adjacent floats the midpoint rounds onto one of them: it is then levels[i - 1], so
    each threshold t[i] keeps levels[i - 1] <= t[i] < levels[i] and NG = score > t[i] splits them as intended."""
    low, high = levels[:-1], levels[1:]
    middle = low + (high - low) / 2
    middle = np.where((middle >= low) & (middle < high), middle, low)
    first, last = float(levels[0]), float(levels[-1])
    return np.concatenate([[first - margin(first)], middle, [last + margin(last)]])


def threshold_in_gap(sorted_scores: np.ndarray, allowed: float) -> float:
    """The threshold that passes ``allowed`` (one of ``sorted_scores``, (n,) float64 ascending) and every
    score up to it, and rejects every higher one: ``margin(allowed)`` above it, or midway to the next higher
    distinct score where that is nearer. Kept near ``allowed`` (not midway in a wide gap): the calibrated
    threshold and the defects it catches stay where the normals end; the margin only keeps another backend's
    ~1e-6 from moving a calibration normal across it. Where the two scores are adjacent floats it is
    ``allowed`` itself (still passed: NG = score > threshold)."""
    above = int(np.searchsorted(sorted_scores, allowed, side="right"))
    if above == sorted_scores.size:
        return float(allowed + margin(allowed))
    upper = float(sorted_scores[above])
    threshold = allowed + min(margin(allowed), (upper - allowed) / 2)
    return float(threshold if allowed <= threshold < upper else allowed)


@dataclass(frozen=True)
class LoadMargin:
    """What today's rule makes of a threshold a build wrote (``margin_at_load``). value: the threshold to decide with
    (score units): ``margin`` above the top recorded normal score where the threshold sat on it, else the one written.
    moved: value differs from the one written. unresolved: why the rule cannot be applied exactly to a threshold that
    may sit on a normal score ("" when it could, or needs none); value is then the one written."""

    value: float
    moved: bool = False
    unresolved: str = ""


def margin_at_load(threshold: Threshold) -> LoadMargin:
    """Today's threshold for a 'normal-quantile' ``threshold`` read from a bundle, judged on the normal scores it records
    (``normal_quantiles``: its 0th..100th percentiles, the 100th the highest normal score exactly).

    A build before ``MARGIN_COMMIT`` put it exactly on the k-th normal score, where another backend's ~1e-6 rejects
    that normal. On the top recorded score (k = n: every build at the default rate with up to 200 normals) the rule
    (``threshold_in_gap``) gives ``margin`` above it, exactly the value today's build writes: moved. On no recorded
    score (today's, in a gap; or another method's): kept. Unresolved, kept: no scores recorded (built before
    ``QUANTILES_COMMIT``, so also before the margin), or on an inner recorded score, whose next higher normal, which
    bounds the rule's gap, bundle.json does not keep. A threshold on an inner normal score that falls between
    recorded percentiles (k < n, 100 (k - 1) / (n - 1) not whole: 400 normals at the default rate) cannot be told
    from a newer one: kept, unsaid."""
    value, recorded = threshold.value, threshold.normal_quantiles
    if threshold.method != "normal-quantile":
        return LoadMargin(value)
    if not recorded:
        return LoadMargin(value, unresolved=f"its calibration records no normal scores (built before fair-edge "
                                            f"{QUANTILES_COMMIT}, so before {MARGIN_COMMIT} put a margin above them)")
    if value == recorded[-1]:
        return LoadMargin(threshold_in_gap(np.asarray([value], np.float64), value), moved=True)
    if value in recorded:
        return LoadMargin(value, unresolved=(
            f"it sits on its recorded normal score at percentile {recorded.index(value)}, not the top one, and the "
            "margin rule needs the next higher normal score, which the bundle does not record"))
    return LoadMargin(value)


def quantile_threshold(normal_scores, false_reject_rate: float = DEFAULT_FALSE_REJECT_RATE) -> float:
    """The threshold in the gap above the k-th smallest normal score, k = ceil((1 - rate) * n)
    (``threshold_in_gap``): ``margin`` above it, or midway to the next higher normal score where that is
    nearer (also when the normals are too few to resolve the rate, n * rate < 1: then above the highest).
    NG = score > threshold rejects exactly the normals above the k-th score, at most floor(rate * n).

    Why a margin and not the midpoint of the gap: any value in the gap rejects the same calibration normals,
    but with few normals the gap is wide (3 % of the score on the demo's 59 cells), and defects scoring in it
    would pass; the margin (1e-3 relative) is about 1000 times the difference between FP32 backends."""
    if not 0.0 <= false_reject_rate < 1.0:
        raise ConfigError(f"false-reject rate must be in [0, 1); found {false_reject_rate}.")
    scores = np.sort(_scores(normal_scores, "normal"))
    k = max(1, math.ceil((1.0 - false_reject_rate) * scores.size - 1e-9))
    return threshold_in_gap(scores, float(scores[k - 1]))


def f1_optimal_threshold(normal_scores, defect_scores) -> tuple[float, float]:
    """(threshold, F1) maximising F1 with defects positive and NG = score > threshold.

    Candidates: one threshold in each gap between the distinct observed scores (midway), one ``margin``
    below the smallest (reject everything) and one above the largest (reject nothing): ``gap_thresholds``,
    never a score itself. Ties in F1 go to the larger threshold (fewer false rejects).
    """
    normal, defect = _scores(normal_scores, "normal"), _scores(defect_scores, "defect")
    candidates = gap_thresholds(np.unique(np.concatenate([normal, defect])))
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
