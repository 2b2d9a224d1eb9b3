"""Which decision threshold a station uses, and why; with an ROI, one calibrated on the ROI's own score.

A station without an ROI decides on the family's image score, against (in this order) the station file's
threshold (``decision.threshold`` / ``--threshold``), the one calibrated on the graph its backend runs (an
INT8 bundle's CPU graph; the FP32 reference graph for the PyTorch backends on an FP16/INT8 bundle), or the
bundle's. With an ROI (``decision.roi``) it decides on
max(anomaly map x ROI) instead (``station.inspector``), a different quantity: the bundle's threshold does
not apply. Unless the station file sets one, the threshold is then calibrated here, when the station (or
a hot-swapped bundle) opens: the same rule as the build's (``calibration.threshold.calibrate_threshold``,
the k-th smallest of n normal scores, k = ceil((1 - rate) * n), at the bundle's recorded false-reject rate)
on max(normal map x ROI) of the held-out normal maps the bundle keeps (``export.normal_maps``), the ROI
mapped onto their grid by ``roi_on_map``, the inspector's own mapping. A bundle built before it kept those
maps (or a fused bundle) cannot be calibrated so: with an ROI and no threshold the station refuses to start.

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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fair_edge.calibration.threshold import Threshold, calibrate_threshold
from fair_edge.errors import ConfigError
from fair_edge.station.inspector import roi_on_map

if TYPE_CHECKING:  # typing only
    from fair_edge.export.bundle import Bundle
    from fair_edge.runtime.fusion import FusedBundle

log = logging.getLogger(__name__)
ROI_SOURCE = "held-out normal maps x decision.roi, calibrated when the station opened"


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


def roi_scores(maps: np.ndarray, roi: np.ndarray) -> np.ndarray:
    """maps: (N, h, w) float32 anomaly maps; roi: (H, W) float32 mask weights (``station.bundles.load_roi``).
    Returns (N,) float64: max(map x ROI on the maps' grid) per map, as ``Inspector.inspect`` scores a frame."""
    grid = roi_on_map(roi, tuple(maps.shape[1:]))
    return (maps * grid).reshape(len(maps), -1).max(axis=1).astype(np.float64)


def calibrate_roi_threshold(maps: np.ndarray, roi: np.ndarray, false_reject_rate: float, source: str = ROI_SOURCE) -> Threshold:
    """The build's threshold rule (``calibrate_threshold``) on ``roi_scores(maps, roi)``."""
    return calibrate_threshold(roi_scores(maps, roi), false_reject_rate=false_reject_rate, source=source)


def normal_maps_path(bundle: Bundle | FusedBundle, graph_threshold: Threshold | None) -> Path | None:
    """The normal maps of the graph the backend runs, told by the threshold it carries
    (``FrameScorer.graph_threshold``): the FP32 reference graph's when that is the bundle's ``fp32_threshold``
    (the PyTorch backends on an FP16/INT8 bundle), the CPU graph's for any other, else the bundle's; None when
    the bundle keeps none (older, or fused)."""
    if graph_threshold is None:
        return getattr(bundle, "normal_maps_path", None)
    if graph_threshold == getattr(bundle, "fp32_threshold", None):
        return getattr(bundle, "fp32_normal_maps_path", None)
    return getattr(bundle, "cpu_normal_maps_path", None)


def _family_threshold(bundle: Bundle | FusedBundle, graph_threshold: Threshold | None) -> tuple[Threshold | None, str]:
    if graph_threshold is not None:
        return graph_threshold, "calibrated at build on the graph this backend runs"
    return bundle.threshold, "the bundle's, calibrated at build on the family's image score"


def _roi_calibration(bundle: Bundle | FusedBundle, roi: np.ndarray, graph_threshold: Threshold | None) -> Threshold | None:
    """The ROI score's threshold from the bundle's normal maps, None without maps."""
    from fair_edge.export.normal_maps import read_normal_maps

    path = normal_maps_path(bundle, graph_threshold)
    family, _ = _family_threshold(bundle, graph_threshold)
    if path is None or family is None:
        return None
    return calibrate_roi_threshold(read_normal_maps(path), roi, family.false_reject_rate)


def _calibration_grid(bundle: Bundle | FusedBundle, graph_threshold: Threshold | None) -> tuple[int, int] | None:
    """(h, w) of the held-out normal maps the bundle's thresholds were calibrated on: read from the maps it keeps,
    or a fused bundle's recorded ``grid``; None when it keeps neither (built before either was kept)."""
    from fair_edge.export.normal_maps import normal_maps_grid

    path = normal_maps_path(bundle, graph_threshold)
    return getattr(bundle, "grid", None) if path is None else normal_maps_grid(path)


def decide_threshold(explicit: float | None, bundle: Bundle | FusedBundle, roi: np.ndarray | None,
                     graph_threshold: Threshold | None = None) -> DecisionThreshold:
    """The station's threshold (see the module docstring). explicit: ``decision.threshold`` / ``--threshold``
    (None = calibrated); roi: (H, W) float32 mask weights or None. Raises ConfigError when there is no
    threshold to use, naming the fixes. Logs which threshold is used and why."""
    family, family_reason = _family_threshold(bundle, graph_threshold)
    calibration = family if roi is None else _roi_calibration(bundle, roi, graph_threshold)
    grid = None if explicit is not None else _calibration_grid(bundle, graph_threshold)
    if explicit is not None:
        decided = DecisionThreshold(float(explicit), "set by decision.threshold / --threshold", calibration)
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
            f"false-reject rate {calibration.false_reject_rate:g} (measured {calibration.measured_false_reject_rate:.4g});"
            f" the bundle's image-score threshold {family.value:.6g} is for the whole-image score"), calibration, grid)
    # the default level shows it where it replaces the bundle's threshold (start and hot swap alike)
    log.log(logging.WARNING if roi is not None and explicit is None else logging.INFO,
            "decision threshold %.6g: %s", decided.value, decided.reason)
    return decided
