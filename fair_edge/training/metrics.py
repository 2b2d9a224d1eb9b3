"""Evaluation metrics: image AUROC, pixel AUROC, AUPRO (to FPR 0.3, normalised) and best F1.

Pure NumPy/SciPy, exact (every distinct score is a threshold; ties are handled like
scikit-learn: average ranks for AUROC, a straight segment across a tie group on a curve).

Convention everywhere: a sample or pixel is predicted anomalous when ``score >= threshold``
(the station's rule is NG when score > threshold: ``calibration.threshold.f1_optimal_threshold`` gives
the best-F1 threshold under that rule).

Pixel metrics take (N, H, W) arrays, or lists of N (H_i, W_i) arrays for images of several sizes (a
tiled model's stitched maps): pixel AUROC pools all pixels, AUPRO takes regions per image.
Their ground truth is a bool (or 0/1, any dtype) mask; anything else is refused. AUPRO labels the mask's defect
regions itself (8-connected), unless given them explicitly: ``regions=`` per-image integer region labels (0 =
normal, each positive value one defect region of that image; ``regions > 0`` must equal the mask).
``fair_edge.masks.labels_on_map_grid`` brings a mask's regions to a smaller map's grid that way, so a thin
scratch nearest sampling breaks into pieces stays one region, as MVTec AD's AUPRO counts it at mask resolution.
A mask's dtype never makes it region labels: an int64 0/1 mask is a mask.

Memory: the curves are built from ONE sorted copy of the normal scores plus the anomalous
scores, so 200 x 256 x 256 float32 maps need a few hundred MB at most, not a dense
threshold x pixel table.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from fair_edge.errors import ConfigError, DataError

# 8-connectivity for the ground-truth regions of AUPRO.
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


# ---------------------------------------------------------------- input checks


def _as_binary(values: np.ndarray, name: str) -> np.ndarray:
    """Any-shape bool, or numbers that are all 0 or 1 -> bool array of the same shape."""
    values = np.asarray(values)
    if values.dtype == bool:
        return values
    if values.dtype.kind not in "biuf":
        raise DataError(f"{name} must be bool or 0/1 numbers; found dtype {values.dtype}.")
    bad = (values != 0) & (values != 1)
    if bad.any():
        raise DataError(
            f"{name} must hold only 0 and 1; found {np.unique(values[bad])[:5].tolist()}. "
            f"Binarise it first, e.g. {name} > 0."
        )
    return values.astype(bool)


def region_labels(regions: np.ndarray, mask: np.ndarray, name: str = "regions") -> np.ndarray:
    """Explicit region labels checked against their mask -> integer array as given.

    regions: integer array (any integer dtype), 0 = normal pixel, k > 0 = defect region k of its image;
    mask: the bool defect mask of the same pixels. Raises DataError unless regions is integer, >= 0, of the
    mask's shape and ``regions > 0`` equals the mask, naming what was found and the fix."""
    regions, mask = np.asarray(regions), np.asarray(mask, bool)
    if regions.dtype.kind not in "iu":
        raise DataError(f"{name} must be integer region labels (0 = normal pixel, k > 0 = defect region k); found "
                        f"dtype {regions.dtype}. Label the mask with scipy.ndimage.label, or leave {name} out.")
    if regions.shape != mask.shape:
        raise DataError(f"{name} and its mask must have the same shape; found {regions.shape} and {mask.shape}.")
    if regions.size and regions.min() < 0:
        raise DataError(f"{name} must be >= 0 (0 = normal pixel, k > 0 = defect region k); found "
                        f"{int(regions.min())}. Label the mask with scipy.ndimage.label, or leave {name} out.")
    differ = int(np.count_nonzero((regions > 0) != mask))
    if differ:
        raise DataError(f"{name} > 0 must be exactly the defect mask; found {differ} pixel(s) where they differ. "
                        f"Pass the mask as {name} > 0 (e.g. fair_edge.masks.labels_on_map_grid's labels > 0).")
    return regions


def _as_scores(values: np.ndarray, name: str) -> np.ndarray:
    """Any-shape real numbers without NaN -> float array (float32 kept, others become float64)."""
    values = np.asarray(values)
    if values.dtype.kind not in "biuf":
        raise DataError(f"{name} must be real numbers; found dtype {values.dtype}.")
    if values.dtype != np.float32:
        values = values.astype(np.float64)
    if np.isnan(values).any():
        raise DataError(f"{name} holds {int(np.isnan(values).sum())} NaN value(s); fix the scorer output first.")
    return values


def _check_pair(scores: np.ndarray, labels: np.ndarray, names: tuple[str, str], ndim: int | None) -> None:
    if scores.shape != labels.shape:
        raise DataError(f"{names[0]} and {names[1]} must have the same shape; found {scores.shape} and {labels.shape}.")
    if ndim is not None and scores.ndim != ndim:
        hint = "(N,)" if ndim == 1 else "(N, H, W); for (N, 1, H, W) pass maps[:, 0]"
        raise DataError(f"{names[0]} must be {hint}; found shape {scores.shape}.")
    if scores.size == 0:
        raise DataError(f"{names[0]} is empty; need at least one normal and one anomalous sample.")


def _split(scores, labels, names: tuple[str, str], ndim: int | None, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Validate and return (negative scores, positive scores), both 1-D."""
    scores = _as_scores(scores, names[0])
    labels = _as_binary(labels, names[1])
    _check_pair(scores, labels, names, ndim)
    positive = scores[labels]
    negative = scores[~labels]
    if positive.size == 0 or negative.size == 0:
        missing = "anomalous (1)" if positive.size == 0 else "normal (0)"
        raise DataError(
            f"{what} is undefined with one class only: {names[1]} has {positive.size} anomalous and "
            f"{negative.size} normal {'pixels' if ndim == 3 else 'samples'}; found no {missing} one. "
            f"Evaluate on a set that holds both."
        )
    return negative, positive


def _check_fpr_limit(fpr_limit: float) -> float:
    if not 0.0 < fpr_limit <= 1.0:
        raise ConfigError(f"fpr_limit must be in (0, 1]; found {fpr_limit}. The paper uses 0.3.")
    return float(fpr_limit)


def _ragged(maps) -> bool:
    """True for a list or tuple of per-image maps whose shapes differ (images of several sizes)."""
    return isinstance(maps, (list, tuple)) and len({np.shape(m) for m in maps}) > 1


def _image_pairs(maps, masks) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per-image maps (h_i, w_i) real and masks (h_i, w_i) of images of several sizes, each pair checked
    as (N, H, W) arrays are: same shape, 2-D, no NaN, 0/1 masks. Returns (maps, masks bool) as lists."""
    if len(maps) != len(masks):
        raise DataError(f"maps and masks must hold one entry per image; found {len(maps)} maps and {len(masks)} masks.")
    out_maps, out_masks = [], []
    for i, (image_map, mask) in enumerate(zip(maps, masks)):
        image_map, mask = _as_scores(image_map, f"maps[{i}]"), _as_binary(mask, f"masks[{i}]")
        if image_map.shape != mask.shape or image_map.ndim != 2:
            raise DataError(f"maps[{i}] and masks[{i}] must be (H, W) of one shape; found {image_map.shape} and "
                            f"{mask.shape}.")
        out_maps.append(image_map)
        out_masks.append(mask)
    return out_maps, out_masks


def _image_regions(masks: list[np.ndarray], regions) -> list[np.ndarray]:
    """Per-image region labels ``regions`` (a list, or an (N, H, W) array) checked against the per-image bool
    ``masks`` (``region_labels``). Returns them as a list."""
    if len(regions) != len(masks):
        raise DataError(f"regions and masks must hold one entry per image; found {len(regions)} regions and "
                        f"{len(masks)} masks.")
    return [region_labels(r, k, f"regions[{i}]") for i, (r, k) in enumerate(zip(regions, masks))]


def _pooled(maps, masks) -> tuple[np.ndarray, np.ndarray]:
    """Every pixel of images of several sizes as one (1, 1, P) map and mask (pixel AUROC ignores where a pixel is)."""
    maps, masks = _image_pairs(maps, masks)
    flat = lambda arrays: np.concatenate([a.ravel() for a in arrays])[None, None]  # noqa: E731
    return flat(maps), flat(masks)


# ---------------------------------------------------------------- the exact staircase curve


def _staircase(negative: np.ndarray, positive: np.ndarray, weights: np.ndarray | None):
    """Exact curve (x, y, thresholds), descending thresholds, from (0, 0) to (1, 1).

    x(t) = fraction of ``negative`` with score >= t; y(t) = summed ``weights`` (default 1/P each,
    summing to 1) of ``positive`` with score >= t. Between two distinct positive scores the curve
    only moves in x, so its vertices are, per distinct positive score t, the point just above t and
    the point at t; points on straight horizontal/vertical runs are dropped. thresholds[i] is the
    lowest threshold giving point i (inf for the first point).
    """
    neg = np.sort(negative)
    n_neg = neg.size
    order = np.argsort(positive, kind="stable")[::-1]
    pos = positive[order]
    last = np.r_[np.flatnonzero(pos[1:] != pos[:-1]), pos.size - 1]  # last index of each tie group
    levels = pos[last]  # distinct positive scores, descending
    if weights is None:  # counts, not summed 1/P, so the values match sklearn to the last bit
        y_ge = (last + 1) / pos.size
    else:
        y_ge = np.cumsum(np.asarray(weights, np.float64)[order])[last]
        y_ge[-1] = 1.0  # every positive is >= the lowest level; no rounding residue at the end
    y_ge = np.minimum(y_ge, 1.0)
    y_gt = np.r_[0.0, y_ge[:-1]]
    left = np.searchsorted(neg, levels, side="left")
    right = np.searchsorted(neg, levels, side="right")
    x_ge = (n_neg - left) / n_neg
    x_gt = (n_neg - right) / n_neg
    # Lowest threshold of the point "just above t": the next score above t, positive or negative.
    above_pos = np.r_[np.inf, levels[:-1]]
    above_neg = np.where(right < n_neg, neg[np.minimum(right, n_neg - 1)], np.inf)
    t_gt = np.minimum(above_pos, above_neg)
    x = np.r_[0.0, np.column_stack([x_gt, x_ge]).ravel(), 1.0]
    y = np.r_[0.0, np.column_stack([y_gt, y_ge]).ravel(), 1.0]
    t = np.r_[np.inf, np.column_stack([t_gt, levels]).ravel(), min(neg[0], levels[-1])]
    return _drop_redundant(x, y, t)


def _drop_redundant(x: np.ndarray, y: np.ndarray, t: np.ndarray):
    """Drop repeated points and interior points of horizontal or vertical runs (area unchanged).

    A repeated point carries the same threshold each time it appears in ``_staircase``.
    """
    keep = np.r_[True, (x[1:] != x[:-1]) | (y[1:] != y[:-1])]
    x, y, t = x[keep], y[keep], t[keep]
    if x.size > 2:
        flat = (y[:-2] == y[1:-1]) & (y[1:-1] == y[2:])
        upright = (x[:-2] == x[1:-1]) & (x[1:-1] == x[2:])
        keep = np.r_[True, ~(flat | upright), True]
        x, y, t = x[keep], y[keep], t[keep]
    return x, y, t


def _area(x: np.ndarray, y: np.ndarray, x_max: float = 1.0) -> float:
    """Trapezoid area under the polyline (x ascending) on [0, x_max], interpolating at x_max."""
    stop = int(np.searchsorted(x, x_max, side="right"))  # points [0, stop) have x <= x_max
    xs, ys = x[:stop], y[:stop]
    if stop < x.size and xs[-1] < x_max:
        frac = (x_max - x[stop - 1]) / (x[stop] - x[stop - 1])
        xs = np.r_[xs, x_max]
        ys = np.r_[ys, y[stop - 1] + frac * (y[stop] - y[stop - 1])]
    return float(np.sum(np.diff(xs) * (ys[1:] + ys[:-1]) / 2.0))


# ---------------------------------------------------------------- AUROC


def _auroc(negative: np.ndarray, positive: np.ndarray) -> float:
    """Mann-Whitney: P(pos > neg) + P(pos == neg) / 2, from one sorted copy of the negatives."""
    neg = np.sort(negative)
    less = np.searchsorted(neg, positive, side="left").astype(np.int64)
    less_equal = np.searchsorted(neg, positive, side="right").astype(np.int64)
    wins = 2 * int(less.sum()) + int((less_equal - less).sum())  # twice the rank statistic, exact
    return wins / (2.0 * neg.size * positive.size)


def image_auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve of image scores.

    scores: (N,) real (any units, higher = more anomalous). labels: (N,) bool or 0/1, 1 = anomalous.
    Returns a float in [0, 1]; ties count one half, exactly as sklearn's ``roc_auc_score``.
    Raises DataError on shape mismatch, NaN scores, non-0/1 labels or a single class.
    """
    return _auroc(*_split(scores, labels, ("scores", "labels"), 1, "Image AUROC"))


def pixel_auroc(maps: np.ndarray, masks: np.ndarray) -> float:
    """Area under the per-pixel ROC curve over all pixels of all images.

    maps: (N, H, W) float anomaly maps. masks: (N, H, W) bool (or 0/1) ground truth, True = defect pixel.
    Images of several sizes: lists of N (H_i, W_i) maps and masks, their pixels pooled (concatenated, flattened).
    Returns a float in [0, 1], equal to sklearn's ``roc_auc_score(masks.ravel(), maps.ravel())``.
    Raises DataError on shape mismatch, masks not 0/1, or when the masks hold no defect pixel (or only defects).
    """
    if _ragged(maps) or _ragged(masks):
        maps, masks = _pooled(maps, masks)
    return _auroc(*_split(maps, masks, ("maps", "masks"), 3, "Pixel AUROC"))


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve for plotting: (fpr, tpr, thresholds), 1-D float64 of equal length K.

    scores, labels: any equal shape (image scores (N,) or maps/masks (N, H, W)), labels bool or 0/1.
    Points go from (0, 0) (threshold inf) to (1, 1); thresholds[i] is the lowest score still
    predicted anomalous (score >= threshold) at point i. Collinear points are dropped, so
    np.trapezoid(tpr, fpr) equals the AUROC.
    """
    fpr, tpr, thresholds = _staircase(*_split(scores, labels, ("scores", "labels"), None, "The ROC curve"), None)
    return fpr, tpr, thresholds.astype(np.float64)


# ---------------------------------------------------------------- AUPRO


def truth_regions(mask: np.ndarray, regions: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """One image's ground truth -> (region ids (h, w) int, 0 = normal and 1..count the regions, count).

    mask: (h, w) defect mask (nonzero = defect). regions: None = the mask's 8-connected components (labelled
    here); else that image's explicit region labels (checked with ``region_labels``; e.g.
    ``fair_edge.masks.labels_on_map_grid``), each distinct positive label one region however its pixels lie on
    this grid. The mask's dtype never decides this."""
    if regions is None:
        ids, count = ndimage.label(mask, structure=_EIGHT_CONNECTED)
        return ids, int(count)
    regions = region_labels(regions, mask)
    values, ids = np.unique(regions, return_inverse=True)
    ids = ids.reshape(regions.shape)
    if values[0] != 0:  # no normal pixel: every label is a region
        return ids + 1, int(values.size)
    return ids, int(values.size) - 1


def _region_pixels(maps, masks, regions) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> (normal-pixel scores, defect-pixel scores, defect-pixel weights summing to 1).

    A defect pixel of region r (``truth_regions``: an 8-connected component of one image's mask, or one of its
    explicit ``regions`` labels) weighs 1 / (number of regions * area of r), so the summed weight above a
    threshold is the PRO. regions: None, or one label array per image.
    """
    scores, weights, n_regions = [], [], 0
    normal = [image_map[~mask] for image_map, mask in zip(maps, masks)]
    for i, (image_map, mask) in enumerate(zip(maps, masks)):
        regions_i, count = truth_regions(mask, None if regions is None else regions[i])
        if count == 0:
            continue
        defect = regions_i > 0
        ids = regions_i[defect]
        area = np.bincount(ids, minlength=count + 1)[1:].astype(np.float64)
        scores.append(image_map[defect])
        weights.append(1.0 / area[ids - 1])
        n_regions += count
    return np.concatenate(normal), np.concatenate(scores), np.concatenate(weights) / n_regions


def _quantise(maps, num_thresholds: int):
    """Replace every score by the largest of ``num_thresholds`` evenly spaced thresholds below it.
    maps: (N, H, W) array, or a list of (H_i, W_i) arrays (returned as a list)."""
    if int(num_thresholds) != num_thresholds or num_thresholds < 2:
        raise ConfigError(f"num_thresholds must be an integer >= 2, or None for the exact curve; found {num_thresholds}.")
    low, high = min(m.min() for m in maps), max(m.max() for m in maps)
    thresholds = np.linspace(low, high, int(num_thresholds))
    out = [None] * len(maps) if isinstance(maps, list) else np.empty(maps.shape, dtype=np.float64)
    for i, image_map in enumerate(maps):  # one image at a time keeps the index array small
        out[i] = thresholds[np.searchsorted(thresholds, image_map, side="right") - 1]
    return out


def pro_curve(
    maps: np.ndarray, masks: np.ndarray, num_thresholds: int | None = None, *, regions=None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-region-overlap curve: (fpr, pro, thresholds), 1-D float64 of equal length K.

    maps: (N, H, W) float anomaly maps. masks: (N, H, W) bool (or 0/1), True = defect pixel. regions: None =
    each image's regions are its mask's 8-connected components; else (N, H, W) integer region labels (0 = normal,
    each distinct positive label one region of its image; ``regions > 0`` must equal masks, else DataError), e.g.
    ``fair_edge.masks.labels_on_map_grid`` for masks bigger than the maps. Images of several sizes: lists of N
    (H_i, W_i) maps, masks (and regions); regions are per image, normal pixels pooled.
    At threshold t (pixel predicted defective when map >= t): PRO = mean over all ground-truth
    regions (see ``truth_regions``) of the fraction of the region predicted
    defective; FPR = predicted-defective normal pixels / all normal pixels (pixels outside the
    masks, all images pooled). Points go from (0, 0) to (1, 1) with falling thresholds.
    num_thresholds: None = exact (every distinct score); K = K thresholds evenly spaced from the
    lowest to the highest score (scores are rounded down to them), as many public evaluators do.
    """
    if _ragged(maps) or _ragged(masks) or _ragged(regions):
        maps, masks = _image_pairs(maps, masks)
    else:
        maps = _as_scores(maps, "maps")
        masks = _as_binary(masks, "masks")
        _check_pair(maps, masks, ("maps", "masks"), 3)
    if regions is not None:
        regions = _image_regions(masks, regions)
    defects, pixels = sum(int(k.sum()) for k in masks), sum(k.size for k in masks)
    if defects == 0 or defects == pixels:
        raise DataError(
            f"AUPRO needs both defect and normal pixels; masks hold {defects} defect pixel(s) of {pixels}. "
            f"Evaluate on a set that includes anomalous images with their masks and normal pixels."
        )
    if num_thresholds is not None:
        maps = _quantise(maps, num_thresholds)
    fpr, pro, thresholds = _staircase(*_region_pixels(maps, masks, regions))
    return fpr, pro, thresholds.astype(np.float64)


def aupro(maps: np.ndarray, masks: np.ndarray, fpr_limit: float = 0.3, num_thresholds: int | None = None, *,
          regions=None) -> float:
    """Area under the PRO curve for FPR in [0, fpr_limit], divided by fpr_limit (so 1.0 is perfect).

    maps: (N, H, W) float anomaly maps. masks: (N, H, W) bool (or 0/1), True = defect pixel. regions: None =
    the masks' 8-connected components, or explicit integer region labels with ``regions > 0 == masks`` (see
    ``pro_curve``). Images of several sizes: lists of N (H_i, W_i) arrays. The curve (see ``pro_curve``) is
    integrated with the trapezoid rule and linearly interpolated exactly at fpr_limit. A random map scores about
    fpr_limit / 2 (0.15 at the paper's 0.3).
    Raises ConfigError for fpr_limit outside (0, 1]; DataError for bad shapes, masks not 0/1, empty masks, or
    regions that are not labels of the masks.
    """
    fpr_limit = _check_fpr_limit(fpr_limit)
    fpr, pro, _ = pro_curve(maps, masks, num_thresholds, regions=regions)
    return _area(fpr, pro, fpr_limit) / fpr_limit


# ---------------------------------------------------------------- best F1


def f1_max(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Best F1 over all thresholds, and the threshold reaching it: (f1 in [0, 1], threshold).

    scores, labels: any equal shape (image level (N,) or pixel level (N, H, W)); labels bool or 0/1.
    Predicted anomalous means score >= threshold. The returned threshold is the score of an
    anomalous sample (the best F1 always falls on one); of equal F1 values the highest threshold wins.
    Not a station threshold (the station rejects when score > threshold, so at this one it passes that
    sample): for that use ``calibration.threshold.f1_optimal_threshold``, as ``fair-edge eval`` and
    ``fair-edge build`` do.
    Raises DataError on shape mismatch, NaN scores or a single class.
    """
    negative, positive = _split(scores, labels, ("scores", "labels"), None, "F1")
    neg = np.sort(negative)
    pos = np.sort(positive)[::-1]
    last = np.r_[np.flatnonzero(pos[1:] != pos[:-1]), pos.size - 1]
    levels = pos[last]
    true_pos = last + 1
    false_pos = neg.size - np.searchsorted(neg, levels, side="left")
    f1 = 2.0 * true_pos / (true_pos + false_pos + pos.size)
    best = int(np.argmax(f1))
    return float(f1[best]), float(levels[best])


def catch_rate(scores: np.ndarray, labels: np.ndarray, false_reject_rate: float) -> float:
    """Share of anomalous samples rejected at the threshold that rejects at most ``false_reject_rate``
    of the normal ones (the line's rule: NG when score > the normal-score quantile threshold).

    scores: (N,) real; labels: (N,) 0/1 with both classes. Returns a float in [0, 1]."""
    from fair_edge.calibration.threshold import quantile_threshold

    negative, positive = _split(scores, labels, ("scores", "labels"), 1, "Catch rate")
    return float((positive > quantile_threshold(negative, false_reject_rate)).mean())


def line_summary(scores: np.ndarray, labels: np.ndarray, rates: tuple[float, ...] = (0.005, 0.05)) -> dict[str, float]:
    """Image AUROC and ``catch_rate`` at each false-reject rate: {"image_auroc", "catch_at_0.5%", "catch_at_5.0%"}."""
    out = {"image_auroc": image_auroc(scores, labels)}
    out.update({f"catch_at_{r:.1%}": catch_rate(scores, labels, r) for r in rates})
    return out
