"""What a station decides with, loaded from its settings: the bundle (plain or fused) and the scorer that runs it,
the ROI mask, the decision threshold, the defect-region rules, and the change a hot swap hands the loop.

A station opens these once (``station.run``, ``station.cell``); the console's bundle swap calls ``load_change`` off
the inspection loop. Errors are ours (ConfigError, BundleError), raised before anything changes.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fair_edge.console.journal import AUDIT, Journal
from fair_edge.console.reload_scope import CameraBundle
from fair_edge.console.threshold_refusals import applied_thresholds, threshold_pair_refusal
from fair_edge.errors import ConfigError, DataError
from fair_edge.images import DRAWN_MASK_RULE, read_mask_pixels
from fair_edge.runtime.backends import FrameScorer, close_scorer
from fair_edge.runtime.hotswap import ModelChange, files_model_id, model_id
from fair_edge.runtime.selection import select_backend
from fair_edge.station.config import StationConfig
from fair_edge.station.decision import DecisionThreshold, decide_threshold
from fair_edge.station.zones import RegionJudge, RegionSettings, bundle_pixel_threshold, pixel_threshold_fix

if TYPE_CHECKING:  # typing only
    from fair_edge.calibration.threshold import Threshold
    from fair_edge.export.bundle import Bundle
    from fair_edge.runtime.fusion import FusedBundle

log = logging.getLogger(__name__)


def load_roi(path: Path | None, bundle: Bundle | FusedBundle | None) -> np.ndarray | None:
    """Region-of-interest mask image -> (H, W) float32 weights at the image's own resolution (nonzero
    pixels = inspected); the inspector maps it onto each anomaly map's grid (``roi_on_map``).

    With a tiled bundle whose tiles cover only ``tiling.roi`` (x, y, width, height frame pixels), the anomaly map
    covers that rectangle, not the frame: the mask is then read in frame pixels (drawn on a whole camera frame)
    and cropped to the rectangle. Read as every drawn mask is (``images.read_mask_pixels(drawn=True)``): a pixel is
    inspected when it is white (8-bit: 128 or more, so a JPEG's ringing around the white area stays out; 16-bit or
    float: nonzero; a colour mask by its luminance) and not transparent (alpha 0), and an orientation tag (EXIF or
    TIFF) is ignored, as for the frames it is laid on.
    ConfigError when the mask is unreadable, all black, or does not reach it."""
    if path is None:
        return None
    if not Path(path).is_file():
        raise ConfigError(f"decision.roi: {path} is missing or not an image; give a black/white mask image.")
    try:
        mask = read_mask_pixels(path, "ROI mask", drawn=True)
    except DataError as exc:
        raise ConfigError(f"decision.roi: {exc} Give a black/white mask image.") from exc
    covered = bundle.map_area if bundle is not None else None
    if covered is not None:
        x, y, w, h = covered
        if mask.shape[0] < y + h or mask.shape[1] < x + w:
            raise ConfigError(f"decision.roi: {path} is {mask.shape[1]} x {mask.shape[0]} pixels, but the bundle's tiles "
                              f"cover tiling.roi {list(covered)} in frame pixels, which reaches ({x + w}, {y + h}); with "
                              "a tiled bundle's tiling.roi the mask is read in frame pixels: draw it on a whole frame.")
        mask = mask[y : y + h, x : x + w]
    if not mask.any():
        inside = "" if covered is None else f" inside the bundle's tiling.roi {list(covered)}"
        raise ConfigError(f"decision.roi: {path} is all black{inside}, so nothing would be inspected; draw the "
                          f"inspected area in white ({DRAWN_MASK_RULE}), or set roi: null to inspect the whole frame.")
    return mask.astype(np.float32)


def resolve_threshold(cfg: StationConfig, bundle: Bundle | FusedBundle, graph_threshold: Threshold | None = None,
                      roi: np.ndarray | None = None) -> DecisionThreshold:
    """The station's threshold and why (``station.decision.decide_threshold``): the station file's, else with an
    ROI one calibrated on max(normal map x ROI), else the one calibrated on the graph the backend runs, else the
    bundle's. roi: (H, W) float32 mask weights (``load_roi``) or None. ConfigError when there is none."""
    return decide_threshold(cfg.threshold, bundle, roi, graph_threshold)


def check_applied_threshold(cfg: StationConfig, bundle: Bundle | FusedBundle, camera: str = "") -> None:
    """At start, before anything opens: ConfigError when the threshold the station file sets for ``camera``
    (``cfg.threshold``) is the one last applied to it from the console (``OUTPUT/audit.jsonl``'s row for the camera,
    naming the model it was applied on) and ``bundle`` (loaded from ``cfg.bundle``) holds another model: ``bundle:``
    edited since, or its folder rebuilt with another model. The error names the threshold (and the camera), the
    model and bundle it was applied on, the bundle named now and the fix (set ``decision.threshold``, or the
    camera's ``cameras[].threshold``, for it, or null: its own calibrated one). The check a reload makes
    (``StationActions.check_threshold_pairs``). camera: "" for a station of one camera; else the name of one of
    several, with ``cfg`` the station as that camera sees it (``config.view_config``: its bundle and threshold, else
    the station's; ``cell_models.CellModels`` checks each camera so)."""
    if cfg.source_file is None or cfg.threshold is None:
        return
    row = applied_thresholds(Journal(cfg.output / AUDIT).read(), cfg.source_file).get(camera)
    named = CameraBundle(camera, Path(cfg.bundle), False, cfg.threshold)
    refusal = threshold_pair_refusal(cfg.source_file, row, named, (model_id(bundle), files_model_id(bundle)), "start")
    if refusal:
        raise ConfigError(refusal)


def open_regions(cfg: StationConfig, bundle: Bundle | FusedBundle,
                 graph_threshold: Threshold | None = None) -> RegionJudge | None:
    """The station's region finder and rules (``regions:``), None when off. The pixel threshold is the
    station file's, else the bundle's calibrated on the graph the backend runs (``graph_threshold``: the scorer's,
    ``region_pixel_threshold``); a bundle built before regions has none: regions are then off
    (a logged note), or, when the file sets rules, the station refuses to start (ConfigError)."""
    settings = cfg.regions
    if not settings.enabled:
        return None
    value = region_pixel_threshold(settings, bundle, graph_threshold)
    if value is None:
        log.warning("defect regions off: bundle %s has no calibrated pixel threshold; %s", bundle.root,
                    pixel_threshold_fix(bundle))
        return None
    return RegionJudge(settings, value, bundle.map_area)


def region_pixel_threshold(settings: RegionSettings, bundle: Bundle | FusedBundle,
                           graph_threshold: Threshold | None = None) -> float | None:
    """The pixel threshold regions use with ``bundle``: the station file's, else the bundle's calibrated on the graph
    the backend runs, told by the threshold its scorer carries (``graph_threshold``, None: the bundle's own graph;
    ``Bundle.graph_pixel_threshold``: the CPU graph's for the CPU engines on an INT8 bundle, the FP32 reference
    graph's for the PyTorch backends on an FP16/INT8 one, as their image threshold and normal maps); None when
    neither has one. ConfigError when rules decide the verdict and there is none (at start, and for a swap: a bundle
    of another scale, a fused one among them, must not be judged by the old model's pixel threshold)."""
    value = settings.pixel_threshold
    if value is None:
        calibrated = bundle_pixel_threshold(bundle, graph_threshold)   # a fused bundle has none
        value = calibrated.value if calibrated is not None else None
    if value is None and settings.enabled and settings.has_rules:
        raise ConfigError(f"regions: the station file sets rules but bundle {bundle.root} has no calibrated pixel "
                          f"threshold (built before defect regions, fused, or without normal images); "
                          f"{pixel_threshold_fix(bundle)}.")
    return value


def read_bundle(path: Path) -> Bundle | FusedBundle:
    """Load and verify a bundle folder from `fair-edge build`, or a fused one from `fair-edge fuse`."""
    from fair_edge.export.bundle import load_bundle
    from fair_edge.runtime.fusion import is_fused, load_fused_bundle

    return load_fused_bundle(path) if is_fused(path) else load_bundle(path)


def open_scorer(bundle: Bundle | FusedBundle, backend: str) -> FrameScorer:
    """What scores frames with ``bundle``: its backend (``select_backend``), or every member's, fused."""
    from fair_edge.runtime.fusion import FusedBundle, FusedScorer

    return FusedScorer(bundle, backend) if isinstance(bundle, FusedBundle) else select_backend(bundle, backend)


def load_change(bundle_path: Path, backend: str, roi_path: Path | None,
                threshold: float | None = None, regions: RegionSettings | None = None) -> ModelChange:
    """Load and verify a bundle (plain or fused) and open its backend (slow: call it off the inspection loop).

    threshold: the threshold to use with it; None = calibrated by the station's rule
    (``station.decision.decide_threshold``: with an ROI, on the bundle's normal maps x ROI; else the one
    calibrated on the graph the backend runs, else the bundle's; ConfigError when there is none). Raises our
    errors for a bad bundle; nothing changes then. regions: the station's ``regions:``; a bundle its rules cannot
    judge (no pixel threshold) is refused (``region_pixel_threshold``).
    """
    bundle = read_bundle(bundle_path)
    if regions is not None:
        region_pixel_threshold(regions, bundle)
    roi = load_roi(roi_path, bundle)
    scorer = open_scorer(bundle, backend)
    try:
        return change_for(bundle, scorer, roi, threshold)
    except BaseException:
        close_scorer(scorer)   # its backend and its pre-processing (a GPU kernel's device memory)
        raise


def change_for(bundle: Bundle | FusedBundle, scorer: FrameScorer, roi: np.ndarray | None,
               threshold: float | None = None) -> ModelChange:
    """The change to a loaded bundle and its opened scorer for a view with this ROI ((H, W) float32 weights or
    None): the threshold given, else decided by the station's rule (``load_change``). Several cameras that
    share a bundle share its scorer: one backend, their frames in one inference call."""
    decided = decide_threshold(threshold, bundle, roi, scorer.graph_threshold)
    return ModelChange(scorer, decided.value, roi, model_id(bundle), bundle, decided.calibration, decided.grid,
                       bundle.map_area)
