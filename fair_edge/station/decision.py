"""Which decision threshold a station uses, and why; with an ROI, one calibrated on the ROI's own score.

A station without an ROI decides on the family's image score, against (in this order) the station file's
threshold (``decision.threshold`` / ``--threshold``; checked by the console's rule, ``checked_explicit``: above 0,
or any finite number on a fused bundle, whose scores can be below 0), the one calibrated on the graph its backend
runs (an INT8 bundle's CPU graph; the FP32 reference graph for the PyTorch backends on an FP16/INT8 bundle), or the
bundle's; the reason names the scores it was calibrated on (``graph_calibration``: ONNX Runtime's, not OpenVINO's,
where OpenVINO runs an INT8 CPU graph without a threshold of its own) and a margin applied at load to a bundle built
before fair-edge 9850f8b (``load_margin_note``, ``export.bundle.apply_load_margins``). With an ROI
(``decision.roi``) it decides on max(anomaly map x ROI) instead (``station.inspector``), a different quantity:
the bundle's threshold does not apply. Unless the station file sets one, the threshold is then calibrated here, when the station (or
a hot-swapped bundle) opens: the same rule as the build's (``calibration.threshold.calibrate_threshold``,
a small margin above the k-th smallest of n normal scores, k = ceil((1 - rate) * n), at most halfway to the
next higher one, at the bundle's recorded false-reject rate)
on max(normal map x ROI) of the held-out normal maps the bundle keeps (``export.normal_maps``), the ROI
mapped onto their grid by ``roi_on_map``, the inspector's own mapping. A bundle built before it kept those
maps (or a fused bundle) cannot be calibrated so: with an ROI and no threshold the station refuses to start.

Maps too large to keep in full (a tiled 20 MP bundle's) are stored max-pooled by an integer factor f
(``export.normal_maps``); the ROI is then pooled alike, a cell counting as inside when any of its pixels is, so
each normal map's score is at or above its full map's max(map x ROI) and the threshold is conservative: at or
slightly above the full maps' one, never below (said in the log line). With fewer maps n than ceil(1 / rate)
(bundles built before pooling kept 64 MiB of full maps: 3 of a 20 MP tiled bundle's), the rule takes a
margin (``calibration.threshold.margin``) above the highest of the n scores, which about 1 / (n + 1) of normal
parts exceed: the station warns, naming n, the rate it resolves and the fixes (rebuild, or set
``decision.threshold``).

The ``Threshold`` of the score in force (``DecisionThreshold.calibration``) also feeds the console's drift
watch and threshold tuning, so they compare live scores with a distribution in the same units.

A calibrated threshold also records the grid of the maps it was calibrated on (``DecisionThreshold.grid``, the
held-out normal maps' (h, w), or the fused maps' a fused bundle records). A tiled model's frame map grows with the frame (more tiles), and its maximum over
more map pixels is another quantity: a frame whose map has another grid is not decided against that threshold
(``ViewDecider.off_grid``: NG with the reason, the documented fail-safe, unless region rules decide the verdict).
A whole-frame model's map is always S x S, so it never differs there. A threshold the station file sets has no
grid: it is the operator's.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fair_edge.calibration.threshold import MARGIN_COMMIT, Threshold, calibrate_threshold
from fair_edge.console.tuning import bundle_scores_below_zero, check_threshold
from fair_edge.errors import ConfigError
from fair_edge.export.normal_maps import NormalMaps, max_pool, normal_maps_grid, read_normal_maps
from fair_edge.runtime.selection import openvino_without_maps, uncalibrated_openvino, warn_openvino_without_maps
from fair_edge.station.inspector import roi_on_map

if TYPE_CHECKING:  # typing only
    from fair_edge.export.bundle import Bundle
    from fair_edge.runtime.fusion import FusedBundle

log = logging.getLogger(__name__)
ROI_SOURCE = "held-out normal maps x decision.roi, calibrated when the station opened"
EXPLICIT = "decision.threshold / --threshold"   # where a station's own threshold is set, named in its messages


@dataclass(frozen=True)
class DecisionThreshold:
    """value: the threshold in force (units of the station's score: the family's image score, or
    max(map x ROI) with an ROI). reason: where it came from, in words (logged and shown at start).
    calibration: the calibration of that score (its ``normal_quantiles`` feed the drift watch), None when
    there is none in the station's units (an ROI on a bundle without normal maps). grid: (h, w) of the held-out
    normal maps the threshold was calibrated on, None when the station file set it or the bundle keeps no maps."""

    value: float
    reason: str
    calibration: Threshold | None
    grid: tuple[int, int] | None = None


def roi_scores(maps: np.ndarray | NormalMaps, roi: np.ndarray) -> np.ndarray:
    """maps: (N, h, w) float32 anomaly maps, or a bundle's ``NormalMaps`` (maybe max-pooled); roi: (H, W) float32
    mask weights (``station.bundles.load_roi``). Returns (N,) float64: max(map x ROI on the maps' grid) per map, as
    ``Inspector.inspect`` scores a frame. Pooled maps (factor f): the ROI is mapped onto the full grid, then each
    f x f cell weighs its pixels' largest ROI weight (any pixel inside counts; their smallest where the cell's max
    is negative), so each score is an upper bound of the full map's: at or above it, never below."""
    if not isinstance(maps, NormalMaps):
        maps = NormalMaps(maps, 1, (int(maps.shape[1]), int(maps.shape[2])))
    grid = roi_on_map(roi, maps.grid)
    if maps.pool == 1:
        return (maps.maps * grid).reshape(len(maps), -1).max(axis=1).astype(np.float64)
    inside, least = max_pool(grid, maps.pool), -max_pool(-grid, maps.pool)
    scores = np.empty(len(maps), np.float64)
    for start in range(0, len(maps), 64):   # 64 maps at a time: the temporaries stay a fraction of the maps
        cells = maps.maps[start : start + 64]
        bound = np.where(cells >= 0, cells * inside, cells * least)   # max over the cell of map x ROI <= this
        scores[start : start + len(cells)] = bound.reshape(len(cells), -1).max(axis=1)
    return scores


def calibrate_roi_threshold(maps: np.ndarray | NormalMaps, roi: np.ndarray, false_reject_rate: float,
                            source: str = ROI_SOURCE) -> Threshold:
    """The build's threshold rule (``calibrate_threshold``) on ``roi_scores(maps, roi)``; on pooled maps at or
    slightly above the full maps' threshold, never below (the source says so)."""
    if isinstance(maps, NormalMaps) and maps.pool > 1:
        source = f"{source}; maps max-pooled {maps.pool} x {maps.pool}: at or above the full maps' threshold"
    return calibrate_threshold(roi_scores(maps, roi), false_reject_rate=false_reject_rate, source=source)


def few_maps_warning(n: int, false_reject_rate: float) -> str:
    """Empty when n normal scores resolve ``false_reject_rate`` (n >= ceil(1 / rate); a rate of 0 asks for their
    maximum at any n); else the warning: what the threshold then is, the rate n maps resolve, and the fixes."""
    if false_reject_rate <= 0 or n >= math.ceil(1 / false_reject_rate - 1e-9):
        return ""
    need = math.ceil(1 / false_reject_rate - 1e-9)
    return (f"decision.roi: the bundle keeps only {n} held-out normal maps, fewer than the {need} its false-reject "
            f"rate {false_reject_rate:g} needs: {n} maps resolve false-reject rates of 1/{n} = {1 / n:.3g} at best, "
            f"so the threshold is just above the highest of their {n} ROI scores, which about 1/{n + 1} = "
            f"{100 / (n + 1):.2g} % of normal parts exceed, against the {100 * false_reject_rate:.2g} % asked. "
            "Rebuild the bundle with this fair-edge (it keeps every held-out normal map, pooled to fit) and at least "
            f"{math.ceil(2 / false_reject_rate - 1e-9)} held-out normal images (`fair-edge build --normal HELD_OUT_NORMALS`), or set decision.threshold in the station "
            "file (or pass --threshold) in the ROI score's units.")


def normal_maps_path(bundle: Bundle | FusedBundle, graph_threshold: Threshold | None,
                     for_roi: bool = False) -> Path | None:
    """The normal maps of the graph the backend runs, told by the threshold it carries
    (``FrameScorer.graph_threshold``): the FP32 reference graph's when that is the bundle's ``fp32_threshold``
    (the PyTorch backends on an FP16/INT8 bundle), OpenVINO's own of the CPU graph when it is the one calibrated on
    OpenVINO's scores (``Bundle.cpu_openvino``: its int8 kernels score that graph up to ~1 % off ONNX Runtime's), ONNX
    Runtime's of the CPU graph for any other, else the bundle's; None when the bundle keeps none (older, or fused).
    A bundle keeping OpenVINO's thresholds but not its maps gives ONNX Runtime's, warned on where they calibrate an
    ROI's threshold (``for_roi``: ``selection.warn_openvino_without_maps``; ``auto`` does not pick OpenVINO there)."""
    if graph_threshold is None:
        return getattr(bundle, "normal_maps_path", None)
    if graph_threshold == getattr(bundle, "fp32_threshold", None):
        return getattr(bundle, "fp32_normal_maps_path", None)
    openvino = getattr(bundle, "cpu_openvino", None)
    if openvino is not None and openvino.threshold is not None and graph_threshold == openvino.threshold:
        if openvino.normal_maps_path is not None:
            return openvino.normal_maps_path
        why = openvino_without_maps(bundle)
        if why and for_roi:
            warn_openvino_without_maps(bundle, why)
    return getattr(bundle, "cpu_normal_maps_path", None)


def _family_threshold(bundle: Bundle | FusedBundle, graph_threshold: Threshold | None) -> tuple[Threshold | None, str]:
    """(the family's image-score threshold in force: the graph's the backend runs, else the bundle's; where it came
    from, in words: ``graph_calibration`` and ``load_margin_note``)."""
    threshold = graph_threshold if graph_threshold is not None else bundle.threshold
    told = (graph_calibration(bundle, graph_threshold) if graph_threshold is not None else
            "the bundle's, calibrated at build on the family's image score")
    return threshold, told + load_margin_note(bundle, threshold)


def graph_calibration(bundle: Bundle | FusedBundle, graph_threshold: Threshold) -> str:
    """Which scores ``graph_threshold`` (a scorer's: ``FrameScorer.graph_threshold``) was calibrated on, in words.
    An INT8 bundle's CPU graph: ONNX Runtime's, or OpenVINO's own (``Bundle.cpu_openvino``); ONNX Runtime's where the
    bundle keeps none on OpenVINO (``selection.uncalibrated_openvino``), with which OpenVINO then runs it too, so the
    words say so for either engine. The FP32 reference graph's for the PyTorch backends' FP32 weights."""
    openvino = getattr(bundle, "cpu_openvino", None)
    if openvino is not None and openvino.threshold is not None and graph_threshold == openvino.threshold:
        engine = f"OpenVINO {openvino.version}" if openvino.version else "OpenVINO"
        return f"calibrated at build on {engine}'s scores of the int8 CPU graph this backend runs"
    if graph_threshold == getattr(bundle, "cpu_threshold", None):
        why = uncalibrated_openvino(bundle)
        if why:
            return ("calibrated at build on ONNX Runtime's scores of the int8 CPU graph, not OpenVINO's, whose int8 "
                    f"kernels score it up to about 1 % apart; the bundle keeps none calibrated on OpenVINO: {why}")
        return "calibrated at build on ONNX Runtime's scores of the int8 CPU graph this backend runs"
    if graph_threshold == getattr(bundle, "fp32_threshold", None):
        return "calibrated at build on the FP32 reference graph, whose FP32 weights this backend runs"
    return "calibrated at build on the graph this backend runs"


def load_margin_note(bundle: Bundle | FusedBundle, threshold: Threshold | None) -> str:
    """"; margin applied at load ..." when ``threshold`` is one the bundle moved at load (``Bundle.margin_move``:
    built before fair-edge 9850f8b, it sat exactly on the top held-out normal score), naming the value bundle.json
    holds and the rebuild; "" otherwise (a fused bundle's, a newer one's)."""
    move = bundle.margin_move(threshold) if hasattr(bundle, "margin_move") else None
    if move is None:
        return ""
    return (f"; margin applied at load to a bundle built before fair-edge {MARGIN_COMMIT}: 1e-3 relative + 1e-6 above its "
            f"{move.key} {move.old:.9g}, which sat exactly on its top held-out normal's score; rebuild it to record this")


def _roi_calibration(bundle: Bundle | FusedBundle, roi: np.ndarray, graph_threshold: Threshold | None,
                     in_force: bool) -> tuple[Threshold, str] | None:
    """The ROI score's threshold from the bundle's normal maps and how they were kept, in words (pooled, few);
    None without maps. Logs ``few_maps_warning`` when they are too few for the rate and the threshold is
    ``in_force`` (not when the station file sets one)."""
    path = normal_maps_path(bundle, graph_threshold, for_roi=True)
    family, _ = _family_threshold(bundle, graph_threshold)
    if path is None or family is None:
        return None
    maps = read_normal_maps(path)
    calibration = calibrate_roi_threshold(maps, roi, family.false_reject_rate)
    measured = f"measured {calibration.measured_false_reject_rate:.4g}"
    warning = few_maps_warning(len(maps), family.false_reject_rate)
    if warning:
        if in_force:
            log.warning("%s", warning)
        measured += f" on only {len(maps)} maps, which resolve rates of {1 / len(maps):.3g} at best: see the warning"
    if maps.pool > 1:
        h, w = maps.grid
        measured += (f"; maps stored max-pooled {maps.pool} x {maps.pool} (of {h} x {w}), an ROI cell counting when "
                     "any pixel is inside: the threshold is at or slightly above the full maps', never below")
    return calibration, measured


def _calibration_grid(bundle: Bundle | FusedBundle, graph_threshold: Threshold | None) -> tuple[int, int] | None:
    """(h, w) of the held-out normal maps the bundle's thresholds were calibrated on: read from the maps it keeps,
    or a fused bundle's recorded ``grid``; None when it keeps neither (built before either was kept)."""
    path = normal_maps_path(bundle, graph_threshold)
    return getattr(bundle, "grid", None) if path is None else normal_maps_grid(path)


def checked_explicit(explicit: float, bundle: Bundle | FusedBundle, calibration: Threshold | None) -> float:
    """The threshold the station file or --threshold sets for ``bundle``, by the console's rule
    (``console.tuning.check_threshold``): a finite number > 0, any finite number on a fused bundle, whose scores are
    in its members' normal spread and often below 0 (``tuning.bundle_scores_below_zero``). A single bundle's scores
    never are, so a threshold <= 0 would make every part NG: ConfigError naming the bundle, the threshold calibrated
    for it (``calibration``, None: none) and the fix. Checked wherever a threshold meets its bundle: the start, a
    console swap and a SIGHUP reload (a --threshold set for a fused bundle kept over a reload onto a single one)."""
    below_zero = bundle_scores_below_zero(bundle)
    try:
        return check_threshold(float(explicit), below_zero, EXPLICIT)
    except ConfigError as exc:
        if below_zero or not math.isfinite(explicit):   # NaN or infinite: the message says so
            raise
        calibrated = "" if calibration is None else f" (its calibrated one: {calibration.value:.6g})"
        raise ConfigError(f"{exc}: bundle {bundle.root} is a single model's, whose scores are never below 0, so a "
                          f"threshold <= 0 would reject every part. Set {EXPLICIT} above 0 in its score's units"
                          f"{calibrated}, or leave it unset for the bundle's own; a threshold <= 0 is for a fused "
                          "bundle (`fair-edge fuse`), whose scores are in its members' normal spread.") from exc


def decide_threshold(explicit: float | None, bundle: Bundle | FusedBundle, roi: np.ndarray | None,
                     graph_threshold: Threshold | None = None) -> DecisionThreshold:
    """The station's threshold (see the module docstring). explicit: ``decision.threshold`` / ``--threshold``
    (None = calibrated); roi: (H, W) float32 mask weights or None. Raises ConfigError when there is no
    threshold to use, naming the fixes, and for an ``explicit`` <= 0 on a single bundle (``checked_explicit``). Logs
    which threshold is used and why."""
    family, family_reason = _family_threshold(bundle, graph_threshold)
    roi_calibration = None if roi is None else _roi_calibration(bundle, roi, graph_threshold, explicit is None)
    calibration = family if roi is None else (roi_calibration[0] if roi_calibration else None)
    grid = None if explicit is not None else _calibration_grid(bundle, graph_threshold)
    if explicit is not None:
        decided = DecisionThreshold(checked_explicit(explicit, bundle, calibration), f"set by {EXPLICIT}",
                                    calibration)
    elif roi is None:
        if family is None:
            raise ConfigError(f"bundle {bundle.root} has no calibrated threshold; set decision.threshold in the station "
                              "file, pass --threshold, or rebuild with `fair-edge build --calib NORMAL_IMAGES`.")
        decided = DecisionThreshold(family.value, family_reason, family, grid)
    elif calibration is None:
        raise ConfigError(
            f"decision.roi: the station scores max(anomaly map x ROI), but bundle {bundle.root} keeps no held-out "
            "normal maps to calibrate that score's threshold on (built before they were stored, fused, or without "
            "normal images), and its threshold is for the family's image score, another quantity. Rebuild the bundle "
            "with normal images (`fair-edge build --normal HELD_OUT_NORMALS`), or set decision.threshold in the "
            "station file (or pass --threshold) in the ROI score's units.")
    else:
        decided = DecisionThreshold(calibration.value, (
            f"calibrated on max(map x ROI) of {calibration.n_normal} held-out normal maps at the bundle's "
            f"false-reject rate {calibration.false_reject_rate:g} ({roi_calibration[1]});"
            f" the bundle's image-score threshold {family.value:.6g} is for the whole-image score"), calibration, grid)
    # the default level shows it where it replaces the bundle's threshold (start and hot swap alike)
    log.log(logging.WARNING if roi is not None and explicit is None else logging.INFO,
            "decision threshold %.6g: %s", decided.value, decided.reason)
    return decided
