"""``fair-edge eval``: score a labelled test set with a checkpoint and write a report.

Outputs in the report folder: metrics.json, scores.csv (one row per image), roc.png, pro.png
(when masks exist), heatmaps/ (overlays of the worst cases: the highest-scoring normal images
and the lowest-scoring defective ones), and a suggested decision threshold from normal scores.
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

from fair_edge import metrics, plots
from fair_edge.calibration.threshold import DEFAULT_FALSE_REJECT_RATE, quantile_threshold
from fair_edge.checkpoint import load_checkpoint
from fair_edge.data import DatasetSplit, Sample, read_image, read_mask
from fair_edge.errors import DataError
from fair_edge.inference import TorchScorer
from fair_edge.preprocess import resize_frame

log = logging.getLogger(__name__)


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
    """Score ``samples`` with the checkpoint's model; unreadable images are skipped with a warning."""
    ckpt = load_checkpoint(checkpoint)
    scorer = TorchScorer(ckpt, device)
    size = ckpt.preprocess.image_size
    kept, scores, maps, masks = [], [], [], []
    for start in range(0, len(samples), batch):
        colours = []
        for sample in samples[start : start + batch]:
            try:
                image = read_image(sample.path)
            except DataError as exc:
                log.warning("skipping %s", exc)
                continue
            mask = None
            if with_masks:  # a bad mask is an error in the dataset, not a skippable image
                mask = np.zeros(image.shape[:2], bool) if sample.label == 0 else read_mask(sample.mask, image.shape[:2])
            colours.append(resize_frame(image, size))
            kept.append(sample)
            if mask is not None:
                masks.append(cv2.resize(mask.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST) > 0)
        if colours:
            m, s = scorer(torch.from_numpy(np.stack(colours)))
            maps.append(m)
            scores.append(s)
        if progress is not None:
            progress(len(samples[start : start + batch]))
    if not kept:
        raise DataError("no test image could be read.")
    return ScoredSet(kept, np.concatenate(scores), np.concatenate(maps), np.stack(masks) if with_masks else None)


def compute_metrics(scored: ScoredSet, false_reject_rate: float = DEFAULT_FALSE_REJECT_RATE) -> dict:
    labels = scored.labels
    result: dict = {"images": len(labels), "normal": int((labels == 0).sum()), "defective": int((labels == 1).sum())}
    if result["normal"] and result["defective"]:
        result["image_auroc"] = metrics.image_auroc(scored.scores, labels)
        f1, thr = metrics.f1_max(scored.scores, labels)
        result.update(f1_max=f1, f1_threshold=thr)
    else:
        result["note"] = "image AUROC needs both normal and defective test images; only one class was given."
    if scored.masks is not None:
        result["pixel_auroc"] = metrics.pixel_auroc(scored.maps, scored.masks)
        result["aupro"] = metrics.aupro(scored.maps, scored.masks, fpr_limit=0.3)
    else:
        result["pixel_metrics"] = "skipped: the test set has no ground-truth masks (image metrics only)."
    if result["normal"]:
        result["suggested_threshold"] = quantile_threshold(scored.scores[labels == 0], false_reject_rate)
        result["suggested_threshold_false_reject_rate"] = false_reject_rate
    return result


def write_report(scored: ScoredSet, result: dict, out_dir: Path, worst: int = 8) -> None:
    """metrics.json, scores.csv, roc.png, pro.png (with masks) and worst-case heatmaps into out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
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
             false_reject_rate: float = DEFAULT_FALSE_REJECT_RATE, worst: int = 8, progress=None) -> dict:
    """Score ``split.test`` and write the report; returns the metrics dict."""
    if not split.test:
        raise DataError(
            f"dataset {split.name!r} has no test images. eval needs an MVTec-style test/ folder "
            "(test/good and test/<defect>), a VisA CSV with test rows, or 'elpv'."
        )
    scored = score_samples(checkpoint, split.test, device=device, batch=batch,
                           with_masks=split.has_masks, progress=progress)
    result = compute_metrics(scored, false_reject_rate)
    result["dataset"] = split.summary()
    result["checkpoint"] = str(checkpoint)
    write_report(scored, result, out_dir, worst)
    return result
