"""Region-level results of ``fair-edge eval`` on a test set with masks: defects found, missed, false regions.

On the anomaly map's grid: the predicted regions are the 8-connected components of ``map > pixel
threshold`` (as the station finds them, ``fair_edge.regions``), the defects the ground truth's regions: the
8-connected components of the mask (nonzero = defect, whatever its dtype), or, given explicit ``regions=`` labels
(``fair_edge.masks.labels_on_map_grid``: each region of the full-size mask keeps its label on the map's grid), each
distinct positive label, so a thin scratch that the smaller grid breaks into pieces is one defect, as at mask
resolution. A defect is found when a predicted region overlaps it by at least one pixel; a predicted region that
overlaps no defect is a false region (on normal images every region is).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from fair_edge.errors import DataError
from fair_edge.regions import EIGHT_CONNECTED
from fair_edge.training.metrics import truth_regions


def image_regions(amap: np.ndarray, mask: np.ndarray, pixel_threshold: float,
                  regions: np.ndarray | None = None) -> dict[str, int]:
    """One image: amap (h, w) float32, mask (h, w) defect mask on the same grid (nonzero = defect); regions: None
    = the mask's 8-connected components, or (h, w) integer region labels with ``regions > 0`` equal to the mask
    (``metrics.truth_regions``). Returns {defects, found, missed, regions, false_regions}."""
    pred, n_pred = ndimage.label(amap > pixel_threshold, structure=EIGHT_CONNECTED)
    truth, n_truth = truth_regions(mask, regions)
    both = (pred > 0) & (truth > 0)
    found = len(np.unique(truth[both]))
    true_regions = len(np.unique(pred[both]))
    return {"defects": int(n_truth), "found": found, "missed": int(n_truth) - found, "regions": int(n_pred),
            "false_regions": int(n_pred) - true_regions}


def region_results(maps: np.ndarray, masks: np.ndarray, pixel_threshold: float, labels: np.ndarray,
                   regions: np.ndarray | None = None) -> tuple[dict, list[dict[str, int]]]:
    """maps: (N, h, w) float32; masks: (N, h, w) defect masks (nonzero = defect); labels: (N,) 0 normal /
    1 defective; regions: None = each mask's 8-connected components, or (N, h, w) integer region labels, each
    image's ``regions > 0`` equal to its mask (``image_regions``).

    Returns (totals: pixel_threshold, defects, defects_found, defects_missed, region_recall, false_regions,
    false_regions_per_image, normal_images_with_regions; one ``image_regions`` dict per image)."""
    if maps.shape != masks.shape:
        raise DataError(f"region results need maps and masks on one grid; found {maps.shape} and {masks.shape}.")
    if regions is not None and np.shape(regions) != masks.shape:
        raise DataError(f"region results need regions on the masks' grid; found {np.shape(regions)} and "
                        f"{masks.shape}.")
    rows = [None] * len(masks) if regions is None else regions
    per_image = [image_regions(m, k, pixel_threshold, r) for m, k, r in zip(maps, masks, rows)]
    defects = sum(r["defects"] for r in per_image)
    found = sum(r["found"] for r in per_image)
    false = sum(r["false_regions"] for r in per_image)
    normal_with = sum(1 for r, y in zip(per_image, labels) if y == 0 and r["regions"] > 0)
    totals = {"pixel_threshold": float(pixel_threshold), "defects": defects, "defects_found": found,
              "defects_missed": defects - found, "region_recall": found / defects if defects else None,
              "false_regions": false, "false_regions_per_image": false / max(len(per_image), 1),
              "normal_images_with_regions": normal_with}
    return totals, per_image
