"""``fair-edge eval``: score a labelled test set with a checkpoint and write a report.

Outputs in the report folder: metrics.json, scores.csv (one row per image), roc.png, pro.png
(when masks exist), heatmaps/ (overlays of the worst cases: the highest-scoring normal images
and the lowest-scoring defective ones), and a suggested decision threshold from normal scores.
With masks also region-level results (``region_metrics``: defects found / missed, false regions) at a
pixel threshold (given, e.g. a bundle's ``pixel_threshold``, or calibrated on the test set's normal maps
as ``fair-edge build`` does on held-out normals) in metrics.json ``regions`` and regions.csv per image.
A defective image without a mask takes part in the image metrics only: the pixel and region metrics are computed
on the normal images and the defective images that have masks, and metrics.json says how many defective images
lack one and names the first few (``masks_missing``), as the printed report does.
The report is written whole or not at all (an earlier one stays as it was when writing fails or is stopped; a Ctrl-C
or SIGTERM that comes while the new report replaces it waits until it has: ``disk.stops_deferred``), except that a
heat-map panel that cannot be written is a logged warning, not a failed report; file names are written as UTF-8, a
byte that is not UTF-8 as \\xNN (``report_name``); a panel's name takes the image's stem, shortened with a hash
when the name would pass 255 bytes (``panel_name``).
"""

from __future__ import annotations

import csv
import hashlib
import logging
import math
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from fair_edge import plots
from fair_edge.training import metrics
from fair_edge.calibration.threshold import DEFAULT_FALSE_REJECT_RATE, f1_optimal_threshold, quantile_threshold
from fair_edge.models.checkpoint import load_checkpoint
from fair_edge.image_folders import NAMED_AT_MOST
from fair_edge.images import write_png
from fair_edge.training.data import DatasetSplit, Sample
from fair_edge.training.pixels import read_frames, read_image, read_mask
from fair_edge.disk import stops_deferred, write_failure
from fair_edge.errors import ConfigError, DataError, FairEdgeError
from fair_edge.records import json_file_text
from fair_edge.training.inference import TorchScorer
from fair_edge.preprocess import resize_frame
from fair_edge.regions import calibrate_pixel_threshold
from fair_edge.masks import labels_on_map_grid
from fair_edge.tiling import FrameTiler
from fair_edge.training.region_metrics import region_results

log = logging.getLogger(__name__)
CATCH_AT_FALSE_REJECTS = (0.005, 0.05)  # false-reject rates at which eval reports the share of defects caught


@dataclass
class ScoredSet:
    """Scores of a test set. maps: (N, S, S) float32; masks: (N, S, S) bool defect masks on the map grid, or None.
    regions: None (each mask's 8-connected components are its defects), or (N, S, S) int32 region labels on the
    map grid: 0 = normal, k > 0 = the k-th defect region (8-connected, at mask resolution) of that image's mask
    (``fair_edge.masks.labels_on_map_grid``; ``regions > 0`` equals ``masks``), so AUPRO and the region results
    count a thin scratch as the one defect it is. A tiled model on images of several sizes gives maps of several
    sizes: maps (and masks, regions) are then lists of N (h_i, w_i) arrays (``metrics`` pools their pixels for
    pixel AUROC and takes AUPRO's regions per image).

    mask_known: (N,) bool, which rows of ``masks`` are ground truth (normal images, and defective ones with a
    mask file); a defective image without a mask has an all-False placeholder row. None = all known.
    """

    samples: list[Sample]
    scores: np.ndarray
    maps: np.ndarray | list[np.ndarray]
    masks: np.ndarray | list[np.ndarray] | None
    mask_known: np.ndarray | None = None
    regions: np.ndarray | list[np.ndarray] | None = None

    @property
    def labels(self) -> np.ndarray:
        return np.array([s.label for s in self.samples], dtype=np.int64)

    def with_masks_only(self) -> "ScoredSet":
        """The images whose mask is known (all of them when ``mask_known`` is None): what pixel metrics use."""
        if self.masks is None or self.mask_known is None or self.mask_known.all():
            return self
        keep = np.flatnonzero(self.mask_known)
        return ScoredSet([self.samples[i] for i in keep], self.scores[keep], _take(self.maps, keep),
                         _take(self.masks, keep), None, None if self.regions is None else _take(self.regions, keep))

    def pixels(self) -> np.ndarray:
        """Every map pixel of every image, flattened: (sum of h_i * w_i,) float32."""
        return np.concatenate([np.ravel(m) for m in self.maps]) if isinstance(self.maps, list) else self.maps.ravel()

    def missing_masks(self) -> list[Sample]:
        """The scored defective images without a mask (empty when masks were not read)."""
        if self.masks is None or self.mask_known is None:
            return []
        return [s for s, known in zip(self.samples, self.mask_known) if not known]


def _take(arrays: np.ndarray | list[np.ndarray], keep: np.ndarray) -> np.ndarray | list[np.ndarray]:
    """Rows ``keep`` of an (N, h, w) array, or entries of a list of per-image arrays."""
    return [arrays[i] for i in keep] if isinstance(arrays, list) else arrays[keep]


def _stack(arrays: list[np.ndarray]) -> np.ndarray | list[np.ndarray]:
    """Per-image (h, w) arrays as one (N, h, w) array when they share a shape, else the list itself (a tiled
    model's stitched maps of images of several sizes; see ``ScoredSet``)."""
    return np.stack(arrays) if len({a.shape for a in arrays}) == 1 else list(arrays)


def score_samples(checkpoint: Path, samples: list[Sample], *, device: str = "cpu", batch: int = 16,
                  with_masks: bool = False, progress=None) -> ScoredSet:
    """Score ``samples`` with the checkpoint's model; unreadable images, and images too small to be a model
    input or to hold one tile, are skipped with a warning naming each, and counted (``pixels.read_frames``, the
    skip rule of training; DataError naming the first file when none is readable).

    A tiled model (``preprocess.tiling``) scores each image's tiles, ``batch`` tiles at a time, and
    stitches them (fair_edge.tiling); maps are then frame maps at the model's scale, a list of them when the
    images come in several sizes (``ScoredSet``).
    with_masks: read each defective image's mask; one without a mask gets a placeholder row, marked in
    ``ScoredSet.mask_known`` (pixel metrics leave it out)."""
    if batch < 1:
        raise ConfigError(f"batch must be >= 1 image (or tile) per forward pass; found {batch}.")
    ckpt = load_checkpoint(checkpoint)
    scorer = TorchScorer(ckpt, device)
    tiler = FrameTiler(ckpt.preprocess.tiling, ckpt.preprocess.image_size)
    kept, scores, maps, masks, regions, known = [], [], [], [], [], []
    for passed, read in _read_in_runs(samples, ckpt.preprocess.tiling, batch):
        chunk, images = [sample for sample, _ in read], [frame for _, frame in read]
        if images:
            frame_maps, frame_scores, layouts = _score_frames(scorer, tiler, images, batch)
            kept.extend(chunk)
            maps.extend(frame_maps)
            scores.append(frame_scores)
        if with_masks and images:  # a bad mask is an error in the dataset, not a skippable image
            for sample, image, m, layout in zip(chunk, images, frame_maps, layouts):
                has_mask = sample.label == 0 or sample.mask is not None
                mask = read_mask(sample.mask, image.shape[:2]) if sample.label and has_mask else None
                labels = _labels_to_map(np.zeros(image.shape[:2], bool) if mask is None else mask, layout, m.shape)
                masks.append(labels > 0)
                regions.append(labels)
                known.append(has_mask)
        if progress is not None:
            progress(passed)
    if not with_masks:
        return ScoredSet(kept, np.concatenate(scores), _stack(maps), None)
    return ScoredSet(kept, np.concatenate(scores), _stack(maps), _stack(masks), np.array(known, bool),
                     _stack(regions))


def _read_in_runs(samples: list[Sample], tiling, size: int) -> Iterator[tuple[int, list[tuple[Sample, np.ndarray]]]]:
    """``samples`` in consecutive runs of ``size`` (the last one shorter), as (samples in the run, [(sample, frame)]
    of those read), frame (H, W, 3) uint8 BGR. Read by training's one skip rule (``pixels.read_frames``): an
    unreadable image, or one too small to be a model input or to hold one ``tiling`` tile, is skipped with a
    warning naming it, the count once all were read; DataError naming the first file when none is readable."""
    position = 0  # samples read or skipped so far; read_frames counts one only after the consumer is done with it

    def passed() -> None:
        nonlocal position
        position += 1

    run, end = [], size
    for sample, frame in read_frames(samples, tiling, what="test images", progress=passed):
        while position >= end:  # this sample (index ``position``) starts a later run
            yield size, run
            run, end = [], end + size
        run.append((sample, frame))
    for start in range(end - size, len(samples), size):  # the last run, and runs after it that were all skipped
        yield min(size, len(samples) - start), run
        run = []


def _score_frames(scorer: TorchScorer, tiler: FrameTiler, images: list[np.ndarray], batch: int):
    """(H, W, 3) uint8 BGR images -> (maps [(h, w) float32], scores (N,) float32, layouts), ``batch`` tiles
    (or whole images) per forward pass."""
    tiles, layouts = tiler.split(images)
    size = tiler.image_size
    tile_maps, tile_scores = [], []
    for start in range(0, len(tiles), batch):
        colour = torch.from_numpy(np.stack([resize_frame(t, size) for t in tiles[start : start + batch]]))
        m, s = scorer(colour)
        tile_maps.append(m)
        tile_scores.append(s)
    frame_maps, frame_scores = tiler.stitch(np.concatenate(tile_maps), np.concatenate(tile_scores), layouts)
    return frame_maps, frame_scores, layouts


def _mask_to_map(mask: np.ndarray, layout, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) bool frame mask -> bool mask on the anomaly map's grid ``shape`` (h, w).

    Rule (``fair_edge.masks.mask_on_map_grid``; a tiled model's ``TileLayout.mask_to_map`` crops to its ROI first):
    the map pixels nearest sampling marks, as published benchmark numbers use, plus, for each 8-connected
    defect region (at mask resolution) nearest sampling would lose entirely, the one map pixel it covers
    most (largest overlap area). Every defect keeps at least one map pixel; masks whose regions all
    survive nearest sampling are unchanged."""
    return _labels_to_map(mask, layout, shape) > 0


def _labels_to_map(mask: np.ndarray, layout, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) bool frame mask -> int32 region labels on the anomaly map's grid ``shape`` (h, w): the pixels of
    ``_mask_to_map`` (``labels > 0`` equals it), each holding the label of its defect region at mask resolution
    (``fair_edge.masks.labels_on_map_grid``), so a scratch that the grid breaks into pieces stays one region."""
    if layout is not None:
        return layout.labels_to_map(mask)
    return labels_on_map_grid(mask, shape)


F1_THRESHOLD_RULE = "NG when score > f1_threshold (the station's rule; fair-edge build's F1-optimal threshold)"


def compute_metrics(scored: ScoredSet, false_reject_rate: float = DEFAULT_FALSE_REJECT_RATE,
                    pixel_threshold: float | None = None) -> dict:
    """pixel_threshold: for the region-level results (with masks); None = calibrated on the normal test maps.

    f1_max / f1_threshold: the best image-level F1 and the threshold reaching it under the station's rule (NG
    when score > threshold; ``calibration.threshold.f1_optimal_threshold``, as ``fair-edge build`` reports it),
    so it can be used as a station threshold as it is. Pixel metrics that cannot be computed (e.g. the masks
    mark no defect pixel) are reported as skipped in ``pixel_metrics``, with the reason; the image metrics stay."""
    labels = scored.labels
    result: dict = {"images": len(labels), "normal": int((labels == 0).sum()), "defective": int((labels == 1).sum())}
    if result["normal"] and result["defective"]:
        result["image_auroc"] = metrics.image_auroc(scored.scores, labels)
        thr, f1 = f1_optimal_threshold(scored.scores[labels == 0], scored.scores[labels == 1])
        result.update(f1_max=f1, f1_threshold=thr, f1_threshold_rule=F1_THRESHOLD_RULE)
        normal = scored.scores[labels == 0]
        for rate in CATCH_AT_FALSE_REJECTS:
            result[f"catch_at_{rate:.1%}_false_rejects"] = metrics.catch_rate(scored.scores, labels, rate)
            result[f"catch_at_{rate:.1%}_false_rejects_achieved"] = achieved_false_rejects(normal, rate)
    else:
        result["note"] = "image AUROC needs both normal and defective test images; only one class was given."
    if scored.masks is not None:
        pixel = scored.with_masks_only()
        notes = _pixel_metrics(pixel, result)
        result["regions"], result["regions_per_image"] = _regions(pixel, pixel.labels, pixel_threshold)
        missing = scored.missing_masks()
        if missing:
            result["masks_missing"] = _missing_masks_entry(missing)
            notes.append(_missing_masks_note(missing, int(pixel.labels.sum())))
        if notes:
            result["pixel_metrics"] = " ".join(notes)
            log.warning(result["pixel_metrics"])
    else:
        result["pixel_metrics"] = ("skipped: no defective test image has a ground-truth mask (MVTec: "
                                   "ground_truth/<type>/<stem>_mask.png; VisA: the mask column); image metrics only.")
    if result["normal"]:
        result["suggested_threshold"] = quantile_threshold(scored.scores[labels == 0], false_reject_rate)
        result["suggested_threshold_false_reject_rate"] = false_reject_rate
    return result


def achieved_false_rejects(normal: np.ndarray, rate: float) -> dict:
    """The false rejects a catch figure was measured at: the normal scores ``normal`` ((n,) float) above the
    threshold ``metrics.catch_rate`` sets for the target ``rate`` (a share): {"false_rejects": k, "normal": n,
    "rate": k / n, "text": "k of n normals (r %)"}. The text adds the build's note when 0 < n x rate < 1: no
    normal image may then be rejected, so the catch figure is the one at 0 false rejects, not at ``rate``."""
    threshold = quantile_threshold(normal, rate)
    k, n = int((normal > threshold).sum()), int(normal.size)
    few = (f" - too few normals to resolve the target rate {rate:.1%} ({n} x {rate:.1%} < 1; "
           f"{math.ceil(1 / rate - 1e-9)} or more resolve it)") if 0 < n * rate < 1 else ""
    return {"false_rejects": k, "normal": n, "rate": k / n, "text": f"{k} of {n} normals ({k / n:.2%}){few}"}


def _pixel_metrics(pixel: ScoredSet, result: dict) -> list[str]:
    """Put pixel AUROC and AUPRO (FPR to 0.3) of ``pixel`` (the images with known masks) into ``result``; when
    they cannot be computed, return the line saying so and why (else [])."""
    try:
        result["pixel_auroc"] = metrics.pixel_auroc(pixel.maps, pixel.masks)
        result["aupro"] = metrics.aupro(pixel.maps, pixel.masks, fpr_limit=0.3, regions=pixel.regions)
    except DataError as exc:
        result.pop("pixel_auroc", None)
        return [f"pixel metrics skipped: {exc} Image metrics are computed; check the ground-truth masks "
                "(MVTec: ground_truth/<type>/<stem>_mask.png, white = defect)."]
    return []


def _missing_masks_entry(missing: list[Sample]) -> dict:
    """metrics.json ``masks_missing``: how many defective images have no mask, the first few by path."""
    return {"count": len(missing), "first": [report_name(s.path) for s in missing[:NAMED_AT_MOST]]}


def _missing_masks_note(missing: list[Sample], with_mask: int) -> str:
    """The report line when some defective images have no mask: what the pixel metrics cover, which lack one, the fix."""
    names = ", ".join(report_name(s.path.name) for s in missing[:NAMED_AT_MOST])
    more = f" and {len(missing) - NAMED_AT_MOST} more" if len(missing) > NAMED_AT_MOST else ""
    return (f"pixel metrics computed on {with_mask} of {with_mask + len(missing)} defective images: "
            f"{len(missing)} {'has' if len(missing) == 1 else 'have'} no ground-truth mask ({names}{more}; all in metrics.json masks_missing); they count "
            "in the image metrics only. Add their masks (MVTec: ground_truth/<type>/<stem>_mask.png) to include them.")


def _regions(scored: ScoredSet, labels: np.ndarray, pixel_threshold: float | None) -> tuple[dict, list[dict]]:
    """Region-level totals and per-image rows (``region_metrics``); the pixel threshold given or calibrated."""
    source = "given"
    if pixel_threshold is None:
        normal = [m for m, label in zip(scored.maps, labels) if label == 0]
        if not len(normal):
            return {"note": "region results need a pixel threshold: normal test images or --pixel-threshold"}, []
        pixel_threshold, source = calibrate_pixel_threshold(normal).value, "test set's normal maps"
    maps, masks, regions = _on_one_grid(scored.maps, scored.masks, scored.regions)
    totals, per_image = region_results(maps, masks, pixel_threshold, labels, regions=regions)
    return dict(totals, pixel_threshold_source=source), per_image


def _on_one_grid(maps, masks, regions=None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(N, h, w) maps, masks and regions (None: none) as they are; lists of them of several sizes padded at the
    bottom and right to one (N, h_max, w_max) grid: maps with -inf (never above a pixel threshold), masks with
    False, regions with label 0, so the padding adds no region to any image and joins none."""
    if not isinstance(maps, list):
        return maps, masks, regions
    h, w = max(m.shape[0] for m in maps), max(m.shape[1] for m in maps)
    grid_maps = np.full((len(maps), h, w), -np.inf, np.float32)
    grid_masks = np.zeros((len(maps), h, w), bool)
    grid_regions = None if regions is None else np.zeros((len(maps), h, w), np.int32)
    for i, (m, k) in enumerate(zip(maps, masks)):
        grid_maps[i, : m.shape[0], : m.shape[1]] = m
        grid_masks[i, : k.shape[0], : k.shape[1]] = k
        if regions is not None:
            grid_regions[i, : k.shape[0], : k.shape[1]] = regions[i]
    return grid_maps, grid_masks, grid_regions


REPORT_FILES = ("metrics.json", "scores.csv", "regions.csv", "roc.png", "pro.png")  # what write_report writes
HEATMAP_TAGS = ("normal-highest", "defect-lowest")  # heatmaps/TAG-RANK-SCORE-STEM.png (panel_name)


STAGING_PREFIX = ".eval-partial-"  # write_report's staging folder: .eval-partial-PID-xxxxxxxx inside the report folder
_STAGING_NAME = re.compile(rf"{re.escape(STAGING_PREFIX)}(?:(\d+)-)?[a-z0-9_]{{8}}")  # no PID: an older fair-edge's


def clear_report(out_dir: Path, keep: Path | None = None) -> list[Path]:
    """Delete what an earlier ``write_report`` wrote into ``out_dir`` (REPORT_FILES and the heat-map panels
    under heatmaps/), so the folder holds one evaluation only: a run without masks leaves no earlier
    regions.csv or pro.png, a smaller test set no earlier panels; and the staging folders of evals killed while
    writing (``abandoned_staging``; ``keep``: the one being written now). Other files are kept; returns those
    deleted."""
    out_dir = Path(out_dir)
    found = [out_dir / name for name in REPORT_FILES if (out_dir / name).is_file()]
    if (out_dir / "heatmaps").is_dir():
        found += [p for tag in HEATMAP_TAGS for p in sorted((out_dir / "heatmaps").glob(f"{tag}-*.png")) if p.is_file()]
    for path in found:
        path.unlink()
    for folder, why in abandoned_staging(out_dir, keep):
        log.warning("eval: removing %s, the unfinished report of an earlier eval (%s)", folder, why)
        shutil.rmtree(folder, ignore_errors=True)
        found.append(folder)
    return found


def abandoned_staging(out_dir: Path, keep: Path | None = None, now: float | None = None) -> list[tuple[Path, str]]:
    """(folder, why) for each staging folder of ``write_report`` in ``out_dir`` (``.eval-partial-PID-xxxxxxxx``)
    that no running eval writes: its process no longer runs (a SIGKILL, a power cut: no cleanup ran), or, for one of
    an older fair-edge (``.eval-partial-xxxxxxxx``, no PID), it is unchanged for ``STALE_AGE_S``; the rule of
    ``fair_edge.export.build.clear_leftovers``. ``keep``: a folder never listed (this process's own, being written);
    now: time.time(), s."""
    try:
        names = sorted(n for n in os.listdir(out_dir) if n.startswith(STAGING_PREFIX))
    except OSError:
        return []
    if not names:
        return []
    from fair_edge.export.build import STALE_AGE_S, pid_alive  # here: export.build imports onnx, which eval needs not

    now = time.time() if now is None else now
    found = []
    for name in names:
        folder, match = out_dir / name, _STAGING_NAME.fullmatch(name)
        if not match or folder == keep or folder.is_symlink() or not folder.is_dir():
            continue
        if match.group(1) is not None:
            why = None if pid_alive(int(match.group(1))) else f"process {match.group(1)} no longer runs"
        else:
            idle = now - _newest_change(folder)
            why = f"unchanged for {idle / 60:.0f} min" if idle > STALE_AGE_S else None
        if why:
            found.append((folder, why))
    return found


def _newest_change(folder: Path) -> float:
    """The latest modification time (s since the epoch) of ``folder`` and what it holds; +inf when unreadable."""
    try:
        return max([folder.stat().st_mtime] + [p.lstat().st_mtime for p in folder.rglob("*")])
    except OSError:
        return float("inf")


def report_name(path: str | Path) -> str:
    """A file name as the report writes it (scores.csv, regions.csv, metrics.json, panel text): its bytes read as
    UTF-8, each byte that is not UTF-8 as \\xNN (a Latin-1 ``dégât.png`` from a Windows share:
    ``d\\xe9g\\xe2t.png``).
    So the CSV files stay valid UTF-8 that a spreadsheet or pandas opens, a UTF-8 name reads as it is, and an
    odd name shows which byte is odd (writing the raw bytes back would make the whole CSV unreadable as UTF-8)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def write_report(scored: ScoredSet, result: dict, out_dir: Path, worst: int = 8) -> None:
    """metrics.json, scores.csv, regions.csv (with masks), roc.png, pro.png (with masks) and worst-case
    heatmaps into out_dir, replacing an earlier report's (``clear_report``). The files are written into a
    temporary folder inside out_dir first (``.eval-partial-PID-xxxxxxxx``) and moved in when all are written: a
    report that fails or is interrupted halfway (Ctrl-C; SIGTERM where the command turns it into an interrupt)
    leaves the earlier report as it was (and no temporary folder); one interrupted while it replaces the earlier
    one finishes that first (``_replace_report``), so out_dir holds the earlier report or the whole new one; one
    left by an eval killed outright is removed by the next report into out_dir (``clear_report``). A write that
    fails (a read-only or full disk, a folder this account cannot write) raises ReportWriteError naming out_dir,
    the cause and the fix; a heat-map panel that cannot be written is a logged warning only (``_write_heatmaps``)."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=out_dir))
    except OSError as exc:
        raise ReportWriteError(report_write_failure(out_dir, exc, "nothing was written")) from exc
    try:
        try:
            _write_report_files(scored, result, staging, worst)
        except OSError as exc:
            raise ReportWriteError(report_write_failure(out_dir, exc, "an earlier report there is left as it "
                                                                      "was")) from exc
        try:
            _replace_report(staging, out_dir)
        except OSError as exc:
            raise ReportWriteError(report_write_failure(out_dir, exc, "the report there is incomplete")) from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)


class ReportWriteError(FairEdgeError, OSError):
    """The eval report could not be written (``write_report``); an OSError still, for callers that catch one."""


def report_write_failure(out_dir: Path, exc: OSError, left: str) -> str:
    """The message of a report write into ``out_dir`` that failed with ``exc``: the file and the error, the
    cause and its fix by errno (read-only, full or over-quota disk, no permission), and what ``left`` there."""
    where = f"{exc.filename}: " if exc.filename else ""
    fix = write_failure(out_dir, exc)
    return (f"the evaluation report was not written to {out_dir} ({where}{exc.strerror or exc}); {left}: {fix}, "
            "then run eval again.")


def _replace_report(staging: Path, out_dir: Path) -> None:
    """Replace the report in ``out_dir`` by the one written into ``staging`` (``clear_report``, ``_move_report``)
    with Ctrl-C and SIGTERM held (``disk.stops_deferred``): one that comes meanwhile stops eval once the new report
    is whole, and its KeyboardInterrupt (or ``Terminated``) then carries ``report_written`` = out_dir, so the stop
    message can say the new report is complete. Raises OSError as the system does (the report is incomplete then)."""
    moved = False
    try:
        with stops_deferred():
            clear_report(out_dir, keep=staging)
            _move_report(staging, out_dir)
            moved = True
    except KeyboardInterrupt as exc:
        if moved:
            exc.report_written = out_dir
        raise


def _move_report(staging: Path, out_dir: Path) -> None:
    """Move a report written into ``staging`` into ``out_dir`` (renames within one file system)."""
    for name in REPORT_FILES:
        if (staging / name).is_file():
            os.replace(staging / name, out_dir / name)
    (out_dir / "heatmaps").mkdir(exist_ok=True)
    for path in sorted((staging / "heatmaps").iterdir()):
        os.replace(path, out_dir / "heatmaps" / path.name)


def _write_report_files(scored: ScoredSet, result: dict, out_dir: Path, worst: int) -> None:
    """Every report file into the (empty) folder out_dir; file names in text as ``report_name`` gives them."""
    per_image = result.pop("regions_per_image", None)
    (out_dir / "metrics.json").write_text(json_file_text(result), encoding="utf-8")
    pixel = scored.with_masks_only()  # the images the pixel and region metrics cover
    if per_image:
        with (out_dir / "regions.csv").open("w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["path", "label", "defects", "found", "missed", "regions", "false_regions"])
            for sample, r in zip(pixel.samples, per_image):
                w.writerow([report_name(sample.path), sample.label, r["defects"], r["found"], r["missed"],
                            r["regions"], r["false_regions"]])
    with (out_dir / "scores.csv").open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "defect_type", "score"])
        for sample, score in zip(scored.samples, scored.scores):
            w.writerow([report_name(sample.path), sample.label, report_name(sample.defect_type), f"{score:.6f}"])
    labels = scored.labels
    if "image_auroc" in result:
        fpr, tpr, _ = metrics.roc_curve(scored.scores, labels)
        plots.save_roc_plot(out_dir / "roc.png", fpr, tpr, result["image_auroc"], name="image ROC")
    if scored.masks is not None and "aupro" in result:
        fpr, pro, _ = metrics.pro_curve(pixel.maps, pixel.masks, regions=pixel.regions)
        plots.save_pro_plot(out_dir / "pro.png", fpr, pro, result["aupro"], fpr_limit=0.3)
    _write_heatmaps(scored, result, out_dir / "heatmaps", worst)


def _write_heatmaps(scored: ScoredSet, result: dict, heat_dir: Path, worst: int) -> None:
    """The worst cases' panels (``HEATMAP_TAGS``): the ``worst`` highest-scoring normal images and lowest-scoring
    defective ones, as heat_dir/TAG-RANK-SCORE-STEM.png (``panel_name``: STEM the image's own, shortened to fit a
    file name). A panel that cannot be made or written is a warning naming it, never a failed report: the metrics,
    scores and plots are written already, and the other panels still are."""
    heat_dir.mkdir(exist_ok=True)
    labels = scored.labels
    pixels = scored.pixels()
    vmin, vmax = float(np.percentile(pixels, 1)), float(pixels.max())
    normal_idx = np.where(labels == 0)[0]
    defect_idx = np.where(labels == 1)[0]
    worst_normal = normal_idx[np.argsort(-scored.scores[normal_idx])][:worst]
    worst_defect = defect_idx[np.argsort(scored.scores[defect_idx])][:worst]
    threshold = result.get("suggested_threshold")
    for tag, indices in zip(HEATMAP_TAGS, (worst_normal, worst_defect)):
        for rank, i in enumerate(indices):
            sample = scored.samples[i]
            path = heat_dir / panel_name(tag, rank, float(scored.scores[i]), sample.path.stem)
            try:
                write_png(path, _heatmap_panel(scored, i, vmin, vmax, threshold))
            except (OSError, DataError) as exc:
                log.warning("eval: heat-map panel %s of %s not written (%s); the rest of the report is.",
                            report_name(path.name), report_name(sample.path), exc)


def _heatmap_panel(scored: ScoredSet, i: int, vmin: float, vmax: float, threshold: float | None) -> np.ndarray:
    """The heat-map panel of test image ``i`` ((H, W, 3) uint8 BGR; ``plots.heatmap_panel``); vmin, vmax: the
    colour scale in map units, shared by every panel of the report."""
    sample = scored.samples[i]
    known = scored.masks is not None and (scored.mask_known is None or scored.mask_known[i])
    mark, why = plots.threshold_mark(float(scored.scores[i]), scored.maps[i], threshold)
    return plots.heatmap_panel(read_image(sample.path), scored.maps[i], vmin, vmax,
                               [*heatmap_lines(sample, scored.scores[i], threshold), *why],
                               threshold=mark, mask=scored.masks[i] if known else None)


NAME_MAX_BYTES = 255  # the longest file name (one path component) Linux file systems take, in bytes
WRITE_SUFFIX = ".tmp"  # images.write_png writes PATH.tmp first: a panel's name leaves room for it
HASH_CHARS = 8  # hex digits of the full stem's SHA-1 that keep two shortened stems apart


def panel_name(tag: str, rank: int, score: float, stem: str) -> str:
    """The heat-map panel's file name ``TAG-RANK-SCORE-STEM.png``, e.g. ``defect-lowest-03-0.4521-000.png``. A stem
    too long for the name (and the writer's ``.tmp``) to fit NAME_MAX_BYTES bytes (80 x '日' is 240 bytes) is cut
    at a whole character, and ``~`` and HASH_CHARS hex digits of its SHA-1 keep two such stems apart:
    ``...-日日日~1a2b3c4d.png``. stem: as ``Path.stem`` gives it (a byte that is not UTF-8 as a surrogate)."""
    head, tail = f"{tag}-{rank:02d}-{score:.4f}-", ".png"
    room = NAME_MAX_BYTES - len(os.fsencode(head + tail + WRITE_SUFFIX))
    if len(os.fsencode(stem)) <= room:
        return head + stem + tail
    digest = hashlib.sha1(os.fsencode(stem)).hexdigest()[:HASH_CHARS]
    return head + _cut_to_bytes(stem, room - 1 - HASH_CHARS) + "~" + digest + tail


def _cut_to_bytes(text: str, limit: int) -> str:
    """The longest start of ``text`` whose file-name bytes (``os.fsencode``) are at most ``limit``, cut between
    characters (a UTF-8 character is never split; a non-UTF-8 byte, a surrogate, is one character)."""
    used = 0
    for n, char in enumerate(text):
        used += len(os.fsencode(char))
        if used > limit:
            return text[:n]
    return text


def heatmap_lines(sample: Sample, score: float, threshold: float | None) -> list[str]:
    """The text above an eval heat-map panel: file, truth, score against the suggested threshold."""
    truth = "normal" if sample.label == 0 else f"defect ({sample.defect_type})"
    verdict = "" if threshold is None else (" > " if score > threshold else " <= ") + f"threshold {threshold:.4f}"
    return [f"{report_name(sample.path.name)}: {truth}", f"score {score:.4f}{verdict}"]


def evaluate(checkpoint: Path, split: DatasetSplit, out_dir: Path, *, device: str = "cpu", batch: int = 16,
             false_reject_rate: float = DEFAULT_FALSE_REJECT_RATE, worst: int = 8, progress=None,
             pixel_threshold: float | None = None) -> dict:
    """Score ``split.test`` and write the report; returns the metrics dict. pixel_threshold: for the
    region-level results (None = calibrated on the normal test maps)."""
    if pixel_threshold is not None and not np.isfinite(pixel_threshold):
        raise ConfigError(f"pixel_threshold must be a finite map value, or None to calibrate it; found "
                          f"{pixel_threshold}.")
    if not split.test:
        raise DataError(
            f"dataset {split.name!r} has no test images. eval needs an MVTec-style test/ folder "
            "(test/good and test/<defect>), a VisA CSV with test rows, or 'elpv'."
        )
    scored = score_samples(checkpoint, split.test, device=device, batch=batch,
                           with_masks=split.has_any_masks, progress=progress)
    result = compute_metrics(scored, false_reject_rate, pixel_threshold)
    result["dataset"] = split.summary()
    result["checkpoint"] = str(checkpoint)
    write_report(scored, result, out_dir, worst)
    return result
