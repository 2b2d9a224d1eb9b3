"""``fair-edge eval``: score a labelled test set with a checkpoint and write a report.

Outputs in the report folder: metrics.json, scores.csv (one row per image), roc.png, pro.png
(when masks exist), heatmaps/ (overlays of the worst cases: the highest-scoring normal images
and the lowest-scoring defective ones), and a suggested decision threshold from normal scores.
With masks also region-level results (``region_metrics``: defects found / missed, false regions) at a
pixel threshold (given, e.g. a bundle's ``pixel_threshold``, or calibrated on the test set's normal maps
as ``fair-edge build`` does on held-out normals) in metrics.json ``regions`` and regions.csv per image.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from fair_edge import plots
from fair_edge.training import metrics
from fair_edge.calibration.threshold import DEFAULT_FALSE_REJECT_RATE, quantile_threshold
from fair_edge.models.checkpoint import load_checkpoint
from fair_edge.training.data import DatasetSplit, Sample, read_image, read_mask
from fair_edge.errors import DataError
from fair_edge.training.inference import TorchScorer
from fair_edge.preprocess import resize_frame
from fair_edge.regions import calibrate_pixel_threshold
from fair_edge.tiling import FrameTiler
from fair_edge.training.region_metrics import region_results

log = logging.getLogger(__name__)
CATCH_AT_FALSE_REJECTS = (0.005, 0.05)  # false-reject rates at which eval reports the share of defects caught


@dataclass
class ScoredSet:
    """Scores of a test set. maps: (N, S, S) float32; masks: (N, S, S) bool or None."""

    samples: list[Sample]
    scores: np.ndarray
    maps: np.ndarray
    masks: np.ndarray | None

    @property
    def labels(self) -> np.ndarray:
        return np.array([s.label for s in self.samples], dtype=np.int64)


def score_samples(checkpoint: Path, samples: list[Sample], *, device: str = "cpu", batch: int = 16,
                  with_masks: bool = False, progress=None) -> ScoredSet:
    """Score ``samples`` with the checkpoint's model; unreadable images are skipped with a warning.

    A tiled model (``preprocess.tiling``) scores each image's tiles, ``batch`` tiles at a time, and
    stitches them (fair_edge.tiling); maps are then frame maps at the model's scale."""
    ckpt = load_checkpoint(checkpoint)
    scorer = TorchScorer(ckpt, device)
    tiler = FrameTiler(ckpt.preprocess.tiling, ckpt.preprocess.image_size)
    kept, scores, maps, masks = [], [], [], []
    for start in range(0, len(samples), batch):
        images, chunk = [], []
        for sample in samples[start : start + batch]:
            try:
                images.append(read_image(sample.path))
                chunk.append(sample)
            except DataError as exc:
                log.warning("skipping %s", exc)
        if images:
            frame_maps, frame_scores, layouts = _score_frames(scorer, tiler, images, batch)
            kept.extend(chunk)
            maps.extend(frame_maps)
            scores.append(frame_scores)
        if with_masks and images:  # a bad mask is an error in the dataset, not a skippable image
            for sample, image, m, layout in zip(chunk, images, frame_maps, layouts):
                mask = np.zeros(image.shape[:2], bool) if sample.label == 0 else read_mask(sample.mask, image.shape[:2])
                masks.append(_mask_to_map(mask, layout, m.shape))
        if progress is not None:
            progress(len(samples[start : start + batch]))
    if not kept:
        raise DataError("no test image could be read.")
    return ScoredSet(kept, np.concatenate(scores), np.stack(maps), np.stack(masks) if with_masks else None)


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
    """(H, W) bool frame mask -> bool mask on the anomaly map's grid ``shape``."""
    if layout is not None:
        return layout.mask_to_map(mask)
    return cv2.resize(mask.astype(np.uint8), shape[::-1], interpolation=cv2.INTER_NEAREST) > 0


def compute_metrics(scored: ScoredSet, false_reject_rate: float = DEFAULT_FALSE_REJECT_RATE,
                    pixel_threshold: float | None = None) -> dict:
    """pixel_threshold: for the region-level results (with masks); None = calibrated on the normal test maps."""
    labels = scored.labels
    result: dict = {"images": len(labels), "normal": int((labels == 0).sum()), "defective": int((labels == 1).sum())}
    if result["normal"] and result["defective"]:
        result["image_auroc"] = metrics.image_auroc(scored.scores, labels)
        f1, thr = metrics.f1_max(scored.scores, labels)
        result.update(f1_max=f1, f1_threshold=thr)
        for rate in CATCH_AT_FALSE_REJECTS:
            result[f"catch_at_{rate:.1%}_false_rejects"] = metrics.catch_rate(scored.scores, labels, rate)
    else:
        result["note"] = "image AUROC needs both normal and defective test images; only one class was given."
    if scored.masks is not None:
        result["pixel_auroc"] = metrics.pixel_auroc(scored.maps, scored.masks)
        result["aupro"] = metrics.aupro(scored.maps, scored.masks, fpr_limit=0.3)
        result["regions"], result["regions_per_image"] = _regions(scored, labels, pixel_threshold)
    else:
        result["pixel_metrics"] = "skipped: the test set has no ground-truth masks (image metrics only)."
    if result["normal"]:
        result["suggested_threshold"] = quantile_threshold(scored.scores[labels == 0], false_reject_rate)
        result["suggested_threshold_false_reject_rate"] = false_reject_rate
    return result


def _regions(scored: ScoredSet, labels: np.ndarray, pixel_threshold: float | None) -> tuple[dict, list[dict]]:
    """Region-level totals and per-image rows (``region_metrics``); the pixel threshold given or calibrated."""
    source = "given"
    if pixel_threshold is None:
        normal = scored.maps[labels == 0]
        if not len(normal):
            return {"note": "region results need a pixel threshold: normal test images or --pixel-threshold"}, []
        pixel_threshold, source = calibrate_pixel_threshold(list(normal)).value, "test set's normal maps"
    totals, per_image = region_results(scored.maps, scored.masks, pixel_threshold, labels)
    return dict(totals, pixel_threshold_source=source), per_image


def write_report(scored: ScoredSet, result: dict, out_dir: Path, worst: int = 8) -> None:
    """metrics.json, scores.csv, regions.csv (with masks), roc.png, pro.png (with masks) and worst-case
    heatmaps into out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    per_image = result.pop("regions_per_image", None)
    (out_dir / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    if per_image:
        with (out_dir / "regions.csv").open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["path", "label", "defects", "found", "missed", "regions", "false_regions"])
            for sample, r in zip(scored.samples, per_image):
                w.writerow([str(sample.path), sample.label, r["defects"], r["found"], r["missed"], r["regions"],
                            r["false_regions"]])
    with (out_dir / "scores.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "defect_type", "score"])
        for sample, score in zip(scored.samples, scored.scores):
            w.writerow([str(sample.path), sample.label, sample.defect_type, f"{score:.6f}"])
    labels = scored.labels
    if "image_auroc" in result:
        fpr, tpr, _ = metrics.roc_curve(scored.scores, labels)
        plots.save_roc_plot(out_dir / "roc.png", fpr, tpr, result["image_auroc"], name="image ROC")
    if scored.masks is not None:
        fpr, pro, _ = metrics.pro_curve(scored.maps, scored.masks)
        plots.save_pro_plot(out_dir / "pro.png", fpr, pro, result["aupro"], fpr_limit=0.3)
    heat_dir = out_dir / "heatmaps"
    heat_dir.mkdir(exist_ok=True)
    vmin, vmax = float(np.percentile(scored.maps, 1)), float(scored.maps.max())
    normal_idx = np.where(labels == 0)[0]
    defect_idx = np.where(labels == 1)[0]
    worst_normal = normal_idx[np.argsort(-scored.scores[normal_idx])][:worst]
    worst_defect = defect_idx[np.argsort(scored.scores[defect_idx])][:worst]
    threshold = result.get("suggested_threshold")
    for tag, indices in (("normal-highest", worst_normal), ("defect-lowest", worst_defect)):
        for rank, i in enumerate(indices):
            sample = scored.samples[i]
            panel = plots.heatmap_panel(read_image(sample.path), scored.maps[i], vmin, vmax, heatmap_lines(sample, scored.scores[i], threshold),
                                        threshold=threshold, mask=None if scored.masks is None else scored.masks[i])
            cv2.imwrite(str(heat_dir / f"{tag}-{rank:02d}-{scored.scores[i]:.4f}-{sample.path.stem}.png"), panel)


def heatmap_lines(sample: Sample, score: float, threshold: float | None) -> list[str]:
    """The text above an eval heat-map panel: file, truth, score against the suggested threshold."""
    truth = "normal" if sample.label == 0 else f"defect ({sample.defect_type})"
    verdict = "" if threshold is None else (" > " if score > threshold else " <= ") + f"threshold {threshold:.4f}"
    return [f"{sample.path.name}: {truth}", f"score {score:.4f}{verdict}"]


def evaluate(checkpoint: Path, split: DatasetSplit, out_dir: Path, *, device: str = "cpu", batch: int = 16,
             false_reject_rate: float = DEFAULT_FALSE_REJECT_RATE, worst: int = 8, progress=None,
             pixel_threshold: float | None = None) -> dict:
    """Score ``split.test`` and write the report; returns the metrics dict. pixel_threshold: for the
    region-level results (None = calibrated on the normal test maps)."""
    if not split.test:
        raise DataError(
            f"dataset {split.name!r} has no test images. eval needs an MVTec-style test/ folder "
            "(test/good and test/<defect>), a VisA CSV with test rows, or 'elpv'."
        )
    scored = score_samples(checkpoint, split.test, device=device, batch=batch,
                           with_masks=split.has_masks, progress=progress)
    result = compute_metrics(scored, false_reject_rate, pixel_threshold)
    result["dataset"] = split.summary()
    result["checkpoint"] = str(checkpoint)
    write_report(scored, result, out_dir, worst)
    return result
