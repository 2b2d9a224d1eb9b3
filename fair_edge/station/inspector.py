"""The inspection loop: frames from a capture thread -> batches -> pre-process -> infer -> verdicts.

Threads: the camera reads in its own ``CaptureThread`` (bounded queue, drop policy counted there);
this loop runs in the caller's thread, so inference never blocks capture. Each verdict goes to
the ``on_verdict`` callbacks (verdict log, reject scheduler, metrics), whose failures are logged
and counted but never stop inspection.

Fail-safe rules (documented in the README):
- a malformed frame (an image of the wrong type, dtype or shape, None included, or smaller than a tiled model's
  tiles or ``tiling.roi`` need) is counted (``malformed``) and gets an NG verdict with ``error`` set; it is logged
  once per camera and refusal (type, dtype, shape or size found), not per frame;
- an inference failure gives every frame of that batch an NG verdict with ``error`` set; so does inference output
  that decides nothing (a NaN or -inf score, a map holding NaN or -inf: ``unusable_output``) for its frames, and
  the batch counts as failed; ``max_consecutive_errors`` failed batches in a row end the run as a fault (exit code 3);
- a frame whose anomaly map has another grid than the maps its calibrated threshold came from (a tiled
  model on frames of another size) gets an NG verdict with ``error`` naming both grids and the fixes, and is
  counted ``malformed`` (a frame of the wrong size for the model, as one smaller than its tiles), unless region
  rules decide the verdict;
- a frame whose defect regions cannot be judged (a frame of another size than ``regions.frame``, the size its
  scale and zones are for; or judging failed) is counted (``region_errors``) and logged (a size once per camera
  and frame size); when region rules decide the verdict it is a frame the station cannot judge: NG with
  ``error`` set (the reject gate's ``fail_safe`` decides its part), else its score decides, without regions;
- stopping (stop event, SIGINT, SIGTERM, end of stream): the ``on_stop`` hook first (the PLC handshake drops
  Ready and takes no more triggers), then capture stops, the frames already queued are inspected, then the summary
  is returned.
"""

from __future__ import annotations

import itertools
import logging
import math
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import cv2
import numpy as np

from fair_edge import fields as f
from fair_edge.cameras import EndOfStream
from fair_edge.cameras.capture import PIXEL_FORMAT_FIX
from fair_edge.errors import ConfigError
from fair_edge.runtime.hotswap import (ModelSwitch, frame_tilers, fused_members, map_off_grid, off_grid_reason,
                                       retire_unused)
from fair_edge.preprocess import check_frame
from fair_edge.records import Frame, Verdict, json_file_text
from fair_edge.station.zones import judge_for_bundle, settings_change
from fair_edge.tiling import FrameTiler, TilingConfig, place_on_frame

if TYPE_CHECKING:  # typing only: the loop needs no backend or camera code to import
    from fair_edge.cameras import CaptureThread
    from fair_edge.runtime.backends import FrameScorer
    from fair_edge.station.zones import RegionJudge

log = logging.getLogger(__name__)
VerdictCallback = Callable[[Frame, Verdict, "np.ndarray | None"], None]


@dataclass(frozen=True)
class LoopSettings:
    """max_batch: frames per inference. max_wait_ms: how long a partial batch waits for more frames, ms, finite
    in [0, ``fields.DAY_MS``]. max_consecutive_errors: failed inference batches in a row before the station faults.

    Checked when made, as the station file checks them: ``run --max-wait-ms`` / ``bench --max-wait-ms`` replace the
    file's value, and inf or 1e20 crashed the loop (OverflowError from the wait) while NaN was taken silently."""

    max_batch: int = 1
    max_wait_ms: float = 2.0
    max_consecutive_errors: int = 10

    def __post_init__(self) -> None:
        f.integer("batching", "max_batch (--max-batch)", self.max_batch, minimum=1, maximum=MAX_BATCH)
        f.number("batching", "max_wait_ms (--max-wait-ms)", self.max_wait_ms, minimum=0, maximum=f.DAY_MS)


MAX_BATCH = 256           # the most frames per inference call (batching.max_batch, --max-batch)
LATENCY_KEYS = ("p50_ms", "p99_ms", "max_ms")
LIVE_WINDOW = 2000        # latencies kept, newest last: the live view's window (``fair-edge run``'s table)
RUN_REL_ERROR = 0.005     # a long run's p50 / p99 are within this share of the exact value (``LogBuckets``)
RUN_LOW_MS = 1e-3         # latencies at or under this (ms) share one bucket
RUN_HIGH_MS = 1e8         # latencies over this (ms, 27.8 h) share one bucket


def exact_percentiles(values) -> dict[str, float | None]:
    """p50 / p99 (numpy's linear interpolation) and max of ``values`` (ms, any iterable); each None when there
    are none (JSON null: a bare NaN is no JSON for strict parsers)."""
    data = np.fromiter(values, dtype=np.float64)
    if data.size == 0:
        return dict.fromkeys(LATENCY_KEYS)
    return {"p50_ms": float(np.percentile(data, 50)), "p99_ms": float(np.percentile(data, 99)),
            "max_ms": float(data.max())}


class LogBuckets:
    """Counts of values (ms) in fixed log-spaced buckets: O(1) per value, fixed memory (2,535 buckets, ~20 KB).

    Bucket i >= 1 holds (RUN_LOW_MS g^(i-1), RUN_LOW_MS g^i] with g = (1 + e) / (1 - e), e = RUN_REL_ERROR, and
    stands for 2 RUN_LOW_MS g^i / (g + 1): within e of every value in it. Bucket 0 holds values <= RUN_LOW_MS, the
    last those over RUN_HIGH_MS."""

    GROWTH = (1 + RUN_REL_ERROR) / (1 - RUN_REL_ERROR)
    _LOG_GROWTH = math.log(GROWTH)
    SIZE = math.ceil(math.log(RUN_HIGH_MS / RUN_LOW_MS) / _LOG_GROWTH) + 2
    VALUES = np.concatenate([[RUN_LOW_MS], 2 * RUN_LOW_MS * GROWTH ** np.arange(1, SIZE - 1) / (GROWTH + 1), [np.inf]])

    def __init__(self) -> None:
        self.counts = [0] * self.SIZE   # a list: one increment per value is cheaper than a numpy item

    def add(self, ms: float) -> None:
        if ms <= RUN_LOW_MS:
            self.counts[0] += 1
        elif ms < RUN_HIGH_MS:
            self.counts[min(math.ceil(math.log(ms / RUN_LOW_MS) / self._LOG_GROWTH), self.SIZE - 2)] += 1
        else:   # also inf and NaN: never an exception in the inspection loop
            self.counts[-1] += 1

    def percentile(self, q: float, low: float, high: float) -> float:
        """The q-th percentile (0..100) as ``np.percentile`` interpolates it, from the buckets' values clamped to
        [low, high] (the exact min and max); within RUN_REL_ERROR of the exact one for values over RUN_LOW_MS."""
        cum = np.cumsum(self.counts)
        rank = (int(cum[-1]) - 1) * q / 100.0
        below = math.floor(rank)
        at = np.searchsorted(cum, [below, min(below + 1, int(cum[-1]) - 1)], side="right")
        a, b = np.clip(self.VALUES[at], low, high)
        return float(a + (rank - below) * (b - a))


class LatencyStats:
    """Capture -> verdict latencies (ms) of one run, in fixed memory: the last ``window`` exactly (the live view)
    and the whole run's count, min, max and ``LogBuckets``.

    ``percentiles()`` (the run summary) is exact while the run has at most ``window`` latencies; beyond, p50 / p99
    come from the buckets, within 0.5 % (RUN_REL_ERROR) of the exact value (0.001 ms for latencies under 0.001 ms)
    and max stays exact. ``percentiles(window=n)``: the last n, exact."""

    def __init__(self, window: int = LIVE_WINDOW) -> None:
        if window < 1:
            raise ValueError(f"LatencyStats window must be >= 1 latency; found {window}.")
        self.window, self.recent, self.count = window, deque(maxlen=window), 0
        self.min_ms, self.max_ms = math.inf, -math.inf
        self.buckets = LogBuckets()

    def add(self, ms: float) -> None:
        self.recent.append(ms)
        self.buckets.add(ms)
        self.count += 1
        if ms > self.max_ms:
            self.max_ms = ms
        if ms < self.min_ms:
            self.min_ms = ms

    @property
    def exact(self) -> bool:
        """Whether ``percentiles()`` is exact: every latency of the run is still kept."""
        return self.count <= len(self.recent)

    def percentiles(self, window: int | None = None) -> dict[str, float | None]:
        """p50 / p99 / max (ms) over the last ``window`` latencies (exact; at most the ``window`` kept), or with
        None over the whole run (see the class doc); each None when there are none."""
        if window is not None:
            if not 1 <= window <= self.window:
                raise ValueError(f"latency window: between 1 and the {self.window} latencies kept; found {window}. "
                                 f"Make LatencyStats(window={window}) to keep more.")
            return exact_percentiles(itertools.islice(reversed(self.recent), window))
        if self.exact:
            return exact_percentiles(self.recent)
        return {"p50_ms": self.buckets.percentile(50, self.min_ms, self.max_ms),
                "p99_ms": self.buckets.percentile(99, self.min_ms, self.max_ms), "max_ms": float(self.max_ms)}


@dataclass
class RunSummary:
    """What a run did. frames_in/dropped/lost come from the capture thread: every frame read is
    inspected, dropped by the queue policy, or left queued when a run stops early (``not_inspected``);
    ``lost`` counts parts the camera never delivered (outages, sequence gaps); ``unreadable``, files a replay
    skipped because it could not decode them (no frame, no verdict: a folder's files = frames_in + unreadable).
    malformed: frames that cannot be inspected, each also NG (``ng``): an image of the wrong type, dtype or shape,
    one smaller than a tiled model's tiles, or one whose map lies on another grid than the threshold's calibration.
    region_errors: frames whose defect regions could not be judged: of another size than ``regions.frame`` (the
    size its scale and zones are for; logged once per camera and frame size) or judging failed unexpectedly (a
    bug, logged); NG with ``error`` set when region rules decide (fail-safe), else decided by their score without
    regions.
    rejects: the reject gate's counters (``RejectScheduler.stats``) and ``sinks``, per reject sink.
    recorder: the recorder's counters (rows logged, images saved, drops, write errors).
    latency: p50_ms / p99_ms / max_ms of capture -> verdict over the run (``LatencyStats.percentiles``): each None
    when no frame was inspected; exact up to LIVE_WINDOW frames, beyond p50 / p99 within 0.5 % (max exact).
    cameras: with several cameras, each camera's counters by name; parts: the part counters
    (``fair_edge.station.parts``), both empty with one camera."""

    backend: str = ""
    run_id: str = ""
    frames_in: int = 0
    inspected: int = 0
    ng: int = 0
    malformed: int = 0
    inference_errors: int = 0
    callback_errors: int = 0
    region_errors: int = 0
    dropped: int = 0
    lost: int = 0
    unreadable: int = 0
    duration_s: float = 0.0
    fault: str = ""
    latency: dict = field(default_factory=dict)
    rejects: dict = field(default_factory=dict)
    recorder: dict = field(default_factory=dict)
    mqtt: dict = field(default_factory=dict)
    cameras: dict = field(default_factory=dict)
    parts: dict = field(default_factory=dict)

    @property
    def fps(self) -> float:
        return self.inspected / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def not_inspected(self) -> int:
        """Frames read but neither inspected nor dropped (still queued when the run stopped)."""
        return max(0, self.frames_in - self.inspected - self.dropped)

    def to_dict(self) -> dict:
        return dict(self.__dict__, fps=round(self.fps, 2), not_inspected=self.not_inspected)

    def to_json(self) -> str:
        """summary.json's text: strict JSON (a NaN or infinite number written as null, never a bare NaN that
        JavaScript's JSON.parse refuses), indented, one trailing newline."""
        return json_file_text(self.to_dict())


def unusable_output(anomaly_map: np.ndarray, score: float) -> str:
    """Why one frame's inference output decides nothing ('' when it decides): a score (the decided one, float) that
    is NaN or -inf, or an anomaly map ((h, w) float32) holding NaN or -inf. Such output is a backend fault (an FP16
    overflow, a corrupt engine); compared with the threshold it would pass the part (NaN > t is False). +inf is a
    score above every threshold: NG as scored."""
    if math.isnan(score) or score == -math.inf:
        what = f"an anomaly score of {score}"
    else:
        low = float(anomaly_map.min())   # NaN when any pixel is NaN
        if not (math.isnan(low) or low == -math.inf):
            return ""
        what = f"an anomaly map holding {low}"
    return (f"the backend returned {what} (expected finite numbers; a broken output such as an FP16 overflow or a "
            "corrupt engine). Try another backend (`fair-edge run --backend`) or rebuild the bundle")


def _call_stop_hook(on_stop: Callable[[], None] | None) -> None:
    """``Inspector.run``'s ``on_stop`` at the loop's end; one that raises is logged, and capture still stops."""
    if on_stop is None:
        return
    try:
        on_stop()
    except Exception:   # the stop goes on: capture must stop and the queued frames be inspected
        log.exception("the stop hook %r failed; stopping capture all the same", on_stop)


def _on_camera(name: str) -> str:
    """' on camera NAME' for a log line about one camera's decider; '' for a station's one camera."""
    return f" on camera {name}" if name else ""


def _of_camera(name: str) -> str:
    """' of camera NAME' for a log line about one camera's frame; '' for a station's one camera."""
    return f" of camera {name}" if name else ""


def _region_error_outcome(decider: ViewDecider) -> str:
    """What becomes of a frame whose regions cannot be judged (the fail-safe rule in the module doc)."""
    if decider.regions is not None and decider.regions.decides:
        return ("region rules decide this camera's verdicts, so each such frame is NG with this error, not inspected "
                "(fail-safe: the reject gate's fail_safe decides its part)")
    return "regions only report on this camera, so each such frame is decided by its score, without regions"


def smallest_frame(tiling: TilingConfig) -> tuple[int, int]:
    """(height, width) px of the smallest frame ``tiling`` fits: one tile, or its ``roi`` (x + width, y + height)."""
    if tiling.roi is None:
        return tiling.tile, tiling.tile
    x, y, width, height = tiling.roi
    return y + height, x + width


def roi_on_map(roi: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """ROI weights (H, W) float32 (nonzero = inspected) -> (h, w) float32 0/1 on an anomaly map's grid: a map
    pixel is inside when any part of the mask under it is (area-averaged when shrinking, so a thin region
    is never lost; nearest when enlarging)."""
    h, w = shape
    shrink = h < roi.shape[0] or w < roi.shape[1]
    grid = cv2.resize(roi.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_NEAREST)
    return (grid > 0).astype(np.float32)


def max_inside(anomaly_map: np.ndarray, inside: np.ndarray) -> float:
    """The image score with an ROI: the largest pixel of ``anomaly_map`` ((h, w) float32) where ``inside`` ((h, w)
    bool, the ROI on the map's grid) is True; a NaN there gives NaN (``unusable_output`` refuses it). The pixels
    outside count for nothing: neither a hot spot there nor a 0 put in their place (a fused bundle's map, in its
    members' normal-spread units, is below 0 on normal parts and its threshold can be too: 0-filled, every part
    scored at least 0 and was NG). On a map >= 0 (every single bundle's) it is max(map x ROI), bit for bit. -inf
    for an ROI with no pixel on the grid, which ``roi_on_map`` never makes of a mask ``load_roi`` takes."""
    return float(np.max(anomaly_map, where=inside, initial=-np.inf))


def outside_dropped(anomaly_map: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """``anomaly_map`` ((h, w) float32) with its pixels outside the ROI (``inside``: (h, w) bool) set to -inf: above
    no pixel threshold, whatever its sign, so no defect region forms there ((h, w) float32, a new array)."""
    kept = np.full(anomaly_map.shape, -np.inf, np.float32)
    np.copyto(kept, anomaly_map, where=inside)
    return kept


class ViewDecider:
    """How one camera's frames are decided: its frame scorer (shared by the cameras of one bundle), threshold,
    ROI ((H, W) float32 weights at the mask image's resolution, nonzero = inspected, or None), model id and
    region rules (None = off); ``switch.request()`` changes its model or threshold at the next batch boundary.
    grid: (h, w) of the maps the threshold was calibrated on (``DecisionThreshold.grid``), None = not checked.
    map_area: the frame rectangle (x, y, width, height) the model's map covers (a tiled bundle's ``tiling.roi``),
    None = the whole frame; the verdict callbacks then get the map placed on the frame (``shown_map``)."""

    def __init__(self, scorer: FrameScorer, threshold: float, roi: np.ndarray | None = None, model: str = "",
                 regions: RegionJudge | None = None, grid: tuple[int, int] | None = None,
                 map_area: tuple[int, ...] | None = None) -> None:
        if not math.isfinite(threshold):
            raise ConfigError(f"threshold must be a finite number; found {threshold}.")
        self.scorer, self.threshold, self.roi, self.model, self.regions = scorer, float(threshold), roi, model, regions
        self.grid, self.map_area = grid, map_area
        self._roi_grid: tuple[np.ndarray, ...] | None = None   # (mask, its weights and bool on the last map grid)
        # (camera, calibrated grid, live grid) of the off-grid frames logged: once each
        self._warned_grids: set[tuple[str, tuple[int, int], tuple[int, ...]]] = set()
        self.switch = ModelSwitch(shared=True)   # its replaced scorers: the loop retires them

    @property
    def scorer(self) -> FrameScorer:
        """The frame scorer in force."""
        return self._scorer

    @scorer.setter
    def scorer(self, scorer: FrameScorer) -> None:
        """Set at the start and at a swap, with ``fused``: whether it is a fused bundle's (``hotswap.fused_members``,
        read here, not per frame): its verdicts say so (``Verdict.fused``), and their pictures are drawn around the
        threshold in normal spreads."""
        self._scorer = scorer
        self.fused = bool(fused_members(scorer))

    def off_grid(self, frame_hw: tuple[int, int], map_hw: tuple[int, int], camera: str = "") -> str:
        """Empty when this frame's map (map_hw) has the grid the threshold was calibrated on (or none is recorded);
        else why the frame cannot be decided against it (the verdict's error: NG, fail-safe), logged once per camera
        and pair of grids, naming ``camera`` (the camera that took the frame, as a malformed frame's line names it; ""
        names none). A tiled model's map grows with the frame, and its maximum over more pixels is another quantity. A
        fused scorer's map lies on its first member's grid, so each tiled member's own map is checked against its own
        recorded grid, whatever its place (``hotswap.map_off_grid``, the rule a console swap checks by too). Region
        rules that decide the verdict use the pixel threshold, which holds on any grid: then nothing is checked."""
        if self.regions is not None and self.regions.decides or self.grid is None:
            return ""
        if self._whole_frame() and tuple(map_hw) == tuple(self.grid):
            return ""   # a whole-frame bundle's map on its grid: the frame path does not enter hotswap per frame
        found = map_off_grid(self.scorer, self.grid, frame_hw, tuple(map_hw))
        if found is None:
            return ""
        _, calibrated, live = found
        reason = off_grid_reason(found, f"this {frame_hw[1]} x {frame_hw[0]} frame")
        if (camera, calibrated, live) not in self._warned_grids:   # once per pair: a swap may bring another grid
            self._warned_grids.add((camera, calibrated, live))
            log.error("%sframes rejected: %s", f"camera {camera}: " if camera else "", reason)
        return reason

    def _whole_frame(self) -> bool:
        """True for a bundle scorer that scores whole frames (its ``tiler`` has no tiling); a fused scorer has no
        tiler of its own (its members may be tiled)."""
        tiler = getattr(self.scorer, "tiler", None)
        return tiler is not None and tiler.tiling is None

    def check_fits(self, frame_hw: tuple[int, int]) -> None:
        """Raise ConfigError when a frame of ``frame_hw`` (H, W) px is smaller than a tiling of this view's scorer
        takes (one tile, or its ``tiling.roi``): a camera switched to binning or a smaller sensor ROI. Checked with
        the frame (a malformed frame, NG), not left to the tiler inside inference, where it counted as a backend
        failure and faulted the station."""
        if self._whole_frame():
            return   # no tiler to fit (and the frame path does not enter hotswap per frame: docs/architecture.md)
        for whose, tiler, grid in frame_tilers(self.scorer, self.grid):
            need_h, need_w = smallest_frame(tiler.tiling)
            if frame_hw[0] >= need_h and frame_hw[1] >= need_w:
                continue
            tiles = (f"{tiler.tiling.tile} px tiles" if tiler.tiling.roi is None
                     else f"tiling.roi {list(tiler.tiling.roi)} (x, y, width, height)")
            raise ConfigError(
                f"this {frame_hw[1]} x {frame_hw[0]} px frame is smaller than {whose} tiled model takes: its "
                f"{tiles} need frames of at least {need_w} x {need_h} px{self._calibrated_frames(tiler, grid)}. "
                "Set the camera back to the resolution the bundle was built for (binning, decimation or sensor ROI "
                "changed?), or build a bundle from frames of this size.")

    @staticmethod
    def _calibrated_frames(tiler: FrameTiler, grid: tuple[int, int] | None) -> str:
        """'; it was calibrated on frames of about W x H px': the frame size a calibration grid (``grid``, (h, w) map
        pixels of that tiled model's maps) comes from, at ``tiler``'s scale (image_size / tile map pixels per frame
        pixel); '' when no grid is recorded or the map covers only ``tiling.roi``."""
        if grid is None or tiler.tiling.roi is not None:
            return ""
        per_px = tiler.image_size / tiler.tiling.tile
        return f"; it was calibrated on frames of about {round(grid[1] / per_px)} x {round(grid[0] / per_px)} px"

    def shown_map(self, anomaly_map: np.ndarray | None, frame_hw: tuple[int, int]) -> np.ndarray | None:
        """The map as the verdict callbacks show it (console, NG images): as scored, or, when the map covers only
        ``map_area``, placed on the frame with NaN around it (``tiling.place_on_frame``), so a hot spot is drawn
        where it is, beside the region boxes."""
        if anomaly_map is None or self.map_area is None:
            return anomaly_map
        return place_on_frame(anomaly_map, frame_hw, self.map_area)

    def roi_on(self, shape: tuple[int, int]) -> np.ndarray:
        """The ROI weights ((h, w) float32 0/1) on the anomaly map's grid (a tiled bundle's frame map is not S x S),
        made from the mask itself, once per grid."""
        return self._roi_on_grid(shape)[1]

    def roi_inside(self, shape: tuple[int, int]) -> np.ndarray:
        """The ROI on the anomaly map's grid as (h, w) bool, True = inspected (``roi_on`` > 0), once per grid."""
        return self._roi_on_grid(shape)[2]

    def _roi_on_grid(self, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(mask, its weights on the grid ``shape``, those as bool), made again when the mask or the grid changed."""
        if self._roi_grid is None or self._roi_grid[0] is not self.roi or self._roi_grid[1].shape != tuple(shape):
            weights = roi_on_map(self.roi, tuple(shape))
            self._roi_grid = (self.roi, weights, weights > 0)
        return self._roi_grid

    def score(self, anomaly_map: np.ndarray, family_score: float) -> float:
        """The image score: the family's own, or with an ROI the largest map pixel inside it (``max_inside``)."""
        if self.roi is None:
            return float(family_score)
        return max_inside(anomaly_map, self.roi_inside(anomaly_map.shape))

    def roi_map(self, anomaly_map: np.ndarray) -> np.ndarray:
        """The map regions are cut from: as scored, or with an ROI its pixels outside dropped (``outside_dropped``)."""
        if self.roi is None:
            return anomaly_map
        return outside_dropped(anomaly_map, self.roi_inside(anomaly_map.shape))


class Inspector:
    """Runs the loop over one capture thread (or a ``CaptureMux`` of several cameras) with frame scorers
    (see selection.select_backend).

    threshold: score > threshold is NG. roi: (H, W) float32 weights at the mask image's resolution (1 inside
    the region of interest, 0 outside), mapped onto each anomaly map's grid (``roi_on_map``): the score is the
    map's maximum inside it (``max_inside``) and regions are cut from the map inside it, or None for the whole
    image.
    model: the model's id, written into every verdict. ``switch.request()`` (from any thread)
    changes model or threshold at the next batch boundary (see fair_edge.runtime.hotswap).
    regions: finds defect regions in every scored map and applies the station's rules
    (``fair_edge.station.zones``); with rules, an inspected frame is NG exactly when one fires. None = off.
    views: camera name -> its own ``ViewDecider`` (several cameras); frames of other cameras use the one made
    from scorer, threshold, roi, model, regions, grid and map_area (``ViewDecider``).
    The frames of one batch that share a scorer and a frame size go to it in one inference call, whichever camera
    took them.
    """

    def __init__(self, capture: CaptureThread, scorer: FrameScorer, threshold: float, *, roi: np.ndarray | None = None,
                 settings: LoopSettings = LoopSettings(), on_verdict: list[VerdictCallback] | None = None,
                 model: str = "", regions: RegionJudge | None = None,
                 views: dict[str, ViewDecider] | None = None, grid: tuple[int, int] | None = None,
                 map_area: tuple[int, ...] | None = None) -> None:
        self.capture, self.settings = capture, settings
        self.decider = ViewDecider(scorer, threshold, roi, model, regions, grid, map_area)
        self.views = dict(views or {})
        self.on_verdict = list(on_verdict or [])
        self.latency = LatencyStats()
        self.summary = RunSummary(backend=scorer.reason)
        self._consecutive_errors = 0
        # (camera, frame (H, W), regions.frame) whose zone size mismatch was logged: once each, again after a reload
        self._zone_sizes_logged: set[tuple[str, tuple[int, int], tuple[int, int] | None]] = set()
        self._malformed_logged: set[tuple[str, str]] = set()   # (camera, why) of malformed frames logged: once each
        self._camera = getattr(getattr(capture, "source", None), "name", "")   # one camera's name, for the log

    # the default view's decision (one camera: the station's), as the console reads and changes it
    scorer = property(lambda self: self.decider.scorer)
    threshold = property(lambda self: self.decider.threshold)
    roi = property(lambda self: self.decider.roi)
    model = property(lambda self: self.decider.model)
    regions = property(lambda self: self.decider.regions)
    switch = property(lambda self: self.decider.switch)

    def decider_for(self, frame: Frame) -> ViewDecider:
        return self.views.get(frame.camera, self.decider)

    # ------------------------------------------------------------------ batching
    def _next_batch(self, timeout: float, room: int | None = None) -> list[Frame] | None:
        """Up to max_batch frames (and at most ``room``: what ``--max-frames`` leaves); [] when none came within
        ``timeout``; None at end of stream."""
        try:
            batch = [self.capture.get(timeout=timeout)]
        except queue.Empty:
            return []
        except EndOfStream:
            return None
        deadline = time.monotonic() + self.settings.max_wait_ms / 1000.0
        most = self.settings.max_batch if room is None else min(self.settings.max_batch, room)
        while len(batch) < most:
            try:
                batch.append(self.capture.get(timeout=max(deadline - time.monotonic(), 0.0)))
            except (queue.Empty, EndOfStream):
                break
        return batch

    # ------------------------------------------------------------------ one batch
    def _judge_regions(self, decider: ViewDecider, frame: Frame, frame_hw: tuple[int, int],
                       anomaly_map: np.ndarray) -> tuple[tuple, tuple, str]:
        """(regions, rule hits, why they could not be judged or '') of one scored frame of ``frame_hw`` (H, W) px;
        with an ROI, from the map inside it only, like its score (``ViewDecider.roi_map``). A frame they cannot be
        judged on is counted (``region_errors``) and logged."""
        amap = decider.roi_map(anomaly_map)
        try:
            return (*decider.regions.judge(frame_hw, amap), "")
        except ConfigError as exc:   # a frame of another size than the zones were drawn for
            self.summary.region_errors += 1
            self._log_zone_size(decider, frame, frame_hw, exc)
            return (), (), f"regions: {exc}"
        except Exception as exc:  # noqa: BLE001 - a bug in judging must not end the run: fail safe (NG), logged
            log.error("regions: judging frame %d%s failed (%s: %s); %s", frame.seq, _of_camera(frame.camera),
                      type(exc).__name__, exc, _region_error_outcome(decider), exc_info=not self.summary.region_errors)
            self.summary.region_errors += 1
            return (), (), f"regions: judging failed: {type(exc).__name__}: {exc}"

    def _log_zone_size(self, decider: ViewDecider, frame: Frame, frame_hw: tuple[int, int], exc: ConfigError) -> None:
        """Log a frame size (``frame_hw``, (H, W) px) other than ``regions.frame``, as an error, once per camera, frame
        size and zone frame (every such frame is counted in ``region_errors``; a reload to another frame logs again)."""
        key = (frame.camera, tuple(frame_hw), decider.regions.settings.frame)
        if key in self._zone_sizes_logged:
            return
        self._zone_sizes_logged.add(key)
        where = f"camera {frame.camera}: " if frame.camera else ""
        outcome = _region_error_outcome(decider)
        log.error("%sregions cannot be judged on this camera's frames: %s. %s (counted in region_errors; logged once "
                  "per camera and frame size)", where, exc, outcome[0].upper() + outcome[1:])

    def _emit(self, frame: Frame, score: float | None, error: str = "", anomaly_map: np.ndarray | None = None) -> Verdict:
        """The verdict of one frame, counted and handed to the ``on_verdict`` callbacks. anomaly_map: (h, w) float32,
        None for a frame not scored (malformed, inference failed): only a scored frame's image is read (its (H, W)),
        since a malformed frame's may be no array at all (None, a list: ``check_frame`` refused it)."""
        decider = self.decider_for(frame)
        frame_hw = None if anomaly_map is None else frame.image.shape[:2]   # scored: it passed check_frame
        regions, hits = (), ()
        if decider.regions is not None and anomaly_map is not None and not error:
            regions, hits, unjudged = self._judge_regions(decider, frame, frame_hw, anomaly_map)
            if decider.regions.decides:   # rules cannot decide this frame: NG, not inspected (fail-safe)
                error = unjudged
        if decider.regions is not None and decider.regions.decides and not error and score is not None:
            ng = bool(hits)
        else:
            ng = bool(error) or score is None or score > decider.threshold
        verdict = Verdict(frame.seq, frame.t_capture, score, decider.threshold, ng, time.monotonic(), frame.source,
                          error, decider.model, regions, hits, frame.camera, decider.fused)
        shown = None if anomaly_map is None else decider.shown_map(anomaly_map, frame_hw)
        self.summary.inspected += 1
        self.summary.ng += int(ng)
        self.latency.add((verdict.t_verdict - frame.t_capture) * 1000.0)  # ms, as Verdict.latency_ms
        for callback in self.on_verdict:
            try:
                callback(frame, verdict, shown)
            except Exception:  # a sink or recorder failure must not stop inspection; logged and counted
                self.summary.callback_errors += 1
                log.exception("verdict callback %r failed for frame %d", callback, frame.seq)
        return verdict

    def inspect(self, frames: list[Frame]) -> list[Verdict]:
        """Pre-process, infer and decide one batch (one inference call per scorer and frame size); returns its
        verdicts in frame order."""
        # (scorer, frame shape) -> (index in batch, frame, image): a tiled model's frame maps, and the fused
        # kernel's one upload, need frames of one size per call (cameras of a cell may differ in resolution)
        by_call: dict[tuple[int, tuple[int, ...]], list[tuple[int, Frame, np.ndarray]]] = {}
        verdicts: dict[int, Verdict] = {}
        for i, frame in enumerate(frames):
            decider = self.decider_for(frame)
            image = None   # the checked image, once check_frame took it
            try:
                image = check_frame(frame.image)
                decider.check_fits(image.shape[:2])
                by_call.setdefault((id(decider.scorer), image.shape), []).append((i, frame, image))
            except ConfigError as exc:
                verdicts[i] = self._malformed(frame, image, exc)
        for group in by_call.values():
            scorer = self.decider_for(group[0][1]).scorer
            try:
                maps, scores = scorer.infer_frames([image for _, _, image in group])
            except Exception as exc:  # any backend failure: fail safe (NG) and count
                self._count_failed_batch(f"inference failed for {len(group)} frame(s): {exc}")
                for i, frame, _ in group:
                    verdicts[i] = self._emit(frame, None, f"inference failed: {exc}")
            else:
                verdicts.update(self._decide_scored(group, maps, scores))
        return [verdicts[i] for i in range(len(frames))]

    def _malformed(self, frame: Frame, checked: np.ndarray | None, exc: ConfigError) -> Verdict:
        """The verdict of a frame that cannot be inspected (``exc``: why): NG with ``error`` set, counted ``malformed``
        and logged once per camera and refusal (``_log_malformed``). checked: its image as ``check_frame`` took it,
        None when check_frame refused it (wrong type, dtype or shape: the log adds the fix, the camera's pixel
        format); else the frame is smaller than its tiled model takes (``ViewDecider.check_fits``, whose refusal
        names its fix)."""
        self.summary.malformed += 1
        self._log_malformed(frame, str(exc) if checked is not None else f"{exc} {PIXEL_FORMAT_FIX}")
        return self._emit(frame, None, f"malformed frame: {exc}")

    def _log_malformed(self, frame: Frame, why: str) -> None:
        """Log a malformed frame as an error once per camera and refusal (``why`` names the type, dtype, shape or
        size found, so: once per camera and frame format), not once per frame: a camera switched to 16-bit would
        log a line per frame. Named by the station's camera (a cell's camera, else the capture's source), not by
        the frame's ``source`` (a replay's file name: another per frame)."""
        camera = frame.camera or self._camera
        if (camera, why) in self._malformed_logged:
            return
        self._malformed_logged.add((camera, why))
        where = f"camera {camera}: " if camera else ""
        log.error("%sframes rejected as malformed: %s Each such frame is NG, not inspected (the reject gate's "
                  "fail_safe decides its part), counted in malformed; logged once per camera and frame format",
                  where, why)

    def _count_failed_batch(self, why: str) -> None:
        """One failed inference batch (an exception, or output that decides nothing): counted, logged, and one more
        towards ``max_consecutive_errors``."""
        self.summary.inference_errors += 1
        self._consecutive_errors += 1
        log.error("%s", why)

    def _decide_scored(self, group: list[tuple[int, Frame, np.ndarray]], maps: np.ndarray,
                       scores: np.ndarray) -> dict[int, Verdict]:
        """The verdicts (by index in the batch) of one inference call's frames, from its maps (N, h, w) float32 and
        scores (N,) float32. A frame whose output decides nothing (``unusable_output``) is NG with ``error`` set, as
        a failed inference, and makes its batch a failed one; a batch without one ends a run of failed batches."""
        decided = []   # (index in batch, frame, map, decided score, why the output is unusable or '')
        for (i, frame, _), amap, family_score in zip(group, maps, scores):
            score = self.decider_for(frame).score(amap, family_score)
            decided.append((i, frame, amap, score, unusable_output(amap, score)))
        unusable = [why for *_, why in decided if why]
        if unusable:
            self._count_failed_batch(f"inference gave unusable output for {len(unusable)} of {len(group)} "
                                     f"frame(s): {unusable[0]}")
        else:
            self._consecutive_errors = 0
        verdicts = {}
        for i, frame, amap, score, why in decided:
            if why:
                verdicts[i] = self._emit(frame, None, f"inference failed: {why}")
            else:
                off_grid = self.decider_for(frame).off_grid(frame.image.shape[:2], amap.shape,
                                                            frame.camera or self._camera)
                if off_grid:   # scored, but on another grid than calibrated: cannot be decided, as a malformed frame
                    self.summary.malformed += 1
                verdicts[i] = self._emit(frame, score, off_grid, anomaly_map=amap)
        return verdicts

    def _deciders(self) -> list[ViewDecider]:
        """Every camera's decider (the default one first; a cell's first camera may be both)."""
        return [self.decider, *self.views.values()]

    def _named_deciders(self) -> list[tuple[str, ViewDecider]]:
        """(camera name, decider) of every camera, each decider once: the views by name, and the default decider
        as "" only when it is none of them (one camera; in a cell it is the first camera's view, named so)."""
        named = list(self.views.items())
        if not any(decider is self.decider for _, decider in named):
            named.insert(0, ("", self.decider))
        return named

    def _in_use(self) -> list[FrameScorer | None]:
        """The scorers a camera runs or a pending change holds: none of them may be closed."""
        return [s for d in self._deciders() for s in (d.scorer, d.switch.holds())]

    def apply_switch(self) -> None:
        """Take pending model / threshold changes (between batches: the last batch finished on the
        old model). Then the replaced backends (the cameras' previous ones, and those of changes replaced
        before they ran) are closed, after their last batch, unless a camera still runs one or a change
        still waiting holds it (a cell's cameras share one scorer per bundle)."""
        done: list[FrameScorer] = []
        taken = False
        for name, decider in self._named_deciders():
            if decider.switch.pending is None:
                continue
            taken = True
            change = decider.switch.take()
            if change is None:
                continue
            if change.scorer is not None:
                done.append(decider.scorer)
                self._swap_model(name, decider, change)
            if change.threshold is not None:
                if decider.threshold != change.threshold:
                    log.warning("threshold changed%s: %.6g -> %.6g", _on_camera(name), decider.threshold,
                                change.threshold)
                decider.threshold = float(change.threshold)
        if taken:   # replaced scorers exist only while a change is pending: nothing to do on a batch without one
            self.retire_replaced(done)

    def _swap_model(self, name: str, decider: ViewDecider, change) -> None:
        """``decider`` runs the model of ``change`` from its next frame (its old scorer is the caller's to retire),
        judging regions with the change's re-read ``regions:`` (a SIGHUP reload's; logged when they changed), else
        with the rules in force, at the new bundle's pixel threshold and map area. Logged at the switch (not per
        frame): "model swapped" for another model, "model reloaded (same model ...)" for the one it ran (a reload of
        an unchanged bundle)."""
        same = bool(change.model) and change.model == decider.model   # "": a model id not known
        decider.scorer, decider.roi, decider.model = change.scorer, change.roi, change.model
        decider.grid, decider.map_area = change.grid, change.map_area
        if decider is self.decider:
            self.summary.backend = change.scorer.reason
        log.warning("model reloaded%s (same model %s) from %s" if same else "model swapped%s: now %s from %s",
                    _on_camera(name), change.model, getattr(change.bundle, "root", "?"))
        if change.bundle is not None:
            self._swap_regions(name, decider, change)

    @staticmethod
    def _swap_regions(name: str, decider: ViewDecider, change) -> None:
        """``decider``'s region judge for the swapped bundle: the change's ``regions`` settings (a reload's), else the
        rules in force (none stay none); what changed in the settings is logged, naming the camera."""
        old = decider.regions
        if change.regions is None and old is None:
            return
        graph = getattr(change.scorer, "graph_threshold", None)   # pixel threshold: of the graph the scorer runs
        if old is None:
            decider.regions = judge_for_bundle(change.regions, change.bundle, camera=name, graph_threshold=graph)
        else:
            decider.regions = old.for_bundle(change.bundle, change.regions, camera=name,   # its pixel threshold, tiling
                                             graph_threshold=graph)
        if change.regions is not None:
            what = settings_change(None if old is None else old.settings, change.regions)
            if what:
                log.warning("regions changed%s: %s", _on_camera(name), what)

    def retire_replaced(self, done: list[FrameScorer] | None = None) -> None:
        """Close ``done`` (scorers cameras stopped running) and the scorers of changes replaced before they ran,
        unless a camera runs one or a change still waiting holds it. Also called at the end of a run (whoever
        opened the cameras' own scorers closes those)."""
        done = [*(done or ()), *(s for d in self._deciders() for s in d.switch.take_replaced())]
        if done:
            retire_unused(done, self._in_use())

    def _pending(self) -> bool:
        """Whether a camera's switch holds a change not yet taken (read as a plain attribute, as ``_parked``): on a
        line at rest the loop takes it at once, so a swapped bundle or an applied threshold never waits for a part."""
        return any(d.switch.pending is not None for d in self._deciders())

    def _parked(self) -> bool:
        """Whether a camera's switch holds scorers of changes replaced before they ran (``ModelSwitch.parked``, read
        as a plain attribute: an idle iteration calls nothing of the swap's module unless there is something)."""
        return any(d.switch.parked for d in self._deciders())

    # ------------------------------------------------------------------ the loop
    def run(self, stop: threading.Event, *, max_frames: int | None = None, duration_s: float | None = None,
            on_tick: Callable[["Inspector"], None] | None = None,
            on_iteration: Callable[[], None] | None = None,
            on_stop: Callable[[], None] | None = None) -> RunSummary:
        """Inspect until ``stop`` is set, the stream ends, ``max_frames`` or ``duration_s`` is reached,
        or the backend keeps failing. Returns the summary (also on ``self.summary``).
        on_iteration: called at the top of every loop iteration (the systemd watchdog's ``alive``).
        on_stop: called once when the loop ends, before capture stops (``LineSide.stopping``: the PLC handshake
        takes no more triggers while the cameras still run for the parts it took)."""
        t0 = time.monotonic()
        last_tick = t0
        try:
            while not stop.is_set():
                if on_iteration is not None:
                    on_iteration()
                if duration_s is not None and time.monotonic() - t0 >= duration_s:
                    break
                if max_frames is not None and self.summary.inspected >= max_frames:
                    break
                batch = self._next_batch(timeout=0.05, room=self._room(max_frames))
                if batch is None:
                    break
                if batch:
                    self.apply_switch()
                    self.inspect(batch)
                elif self._pending():   # the line at rest: a swap or threshold takes effect now, not at the next part
                    self.apply_switch()
                elif self._parked():   # the line at rest: swaps replaced while no frame came close now, not later
                    self.retire_replaced()
                if self._consecutive_errors >= self.settings.max_consecutive_errors:
                    self.summary.fault = f"{self._consecutive_errors} inference failures in a row"
                    log.error("station fault: %s; stopping", self.summary.fault)
                    break
                if on_tick is not None and time.monotonic() - last_tick >= 0.5:
                    on_tick(self)
                    last_tick = time.monotonic()
        finally:
            _call_stop_hook(on_stop)
            self.capture.stop()
            self._drain(max_frames)
            self.retire_replaced()
            self.summary.duration_s = time.monotonic() - t0
            self._fill_capture_stats()
        return self.summary

    def _drain(self, max_frames: int | None) -> None:
        """After capture stopped: inspect the frames already queued (frames in flight)."""
        while max_frames is None or self.summary.inspected < max_frames:
            batch = self._next_batch(timeout=0.0, room=self._room(max_frames))
            if not batch:
                return
            self.apply_switch()
            self.inspect(batch)

    def _room(self, max_frames: int | None) -> int | None:
        """Frames ``--max-frames`` still allows (None: no limit)."""
        return None if max_frames is None else max(1, max_frames - self.summary.inspected)

    def _fill_capture_stats(self) -> None:
        stats = self.capture.stats()
        self.summary.frames_in = stats.frames_in
        self.summary.dropped = stats.dropped_queue_full
        self.summary.lost = stats.frames_lost_estimate
        self.summary.unreadable = getattr(stats, "unreadable", 0)   # a capture that reads no files has none
        self.summary.latency = self.latency.percentiles()
