"""fair_edge.training.metrics against independent computations: sklearn, brute force and hand-worked cases."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import f1_score, precision_recall_curve, roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from fair_edge.training import metrics
from fair_edge.errors import ConfigError, DataError

# NumPy 2 renamed trapz to trapezoid; JetPack 6 keeps NumPy < 2 (pyproject: numpy>=1.24)
trapezoid = getattr(np, "trapezoid", None) or np.trapz

# ---------------------------------------------------------------- independent references


def brute_pro_points(maps, masks, thresholds):
    """(fpr, pro) for each threshold in the given (descending) order, by looping and counting."""
    regions = []
    for i, mask in enumerate(masks):
        labelled, count = ndimage.label(mask, structure=np.ones((3, 3)))
        regions += [(i, labelled == r) for r in range(1, count + 1)]
    normal = ~masks
    fprs, pros = [], []
    for t in thresholds:
        predicted = maps >= t
        fprs.append((predicted & normal).sum() / normal.sum())
        pros.append(np.mean([(predicted[i] & region).sum() / region.sum() for i, region in regions]))
    return fprs, pros


def brute_area(fprs, pros, limit):
    """Trapezoid area of the polyline for x in [0, limit], one segment at a time."""
    area = 0.0
    for (x0, y0), (x1, y1) in zip(zip(fprs, pros), zip(fprs[1:], pros[1:])):
        if x0 >= limit:
            break
        if x1 > limit:
            y1 = y0 + (limit - x0) / (x1 - x0) * (y1 - y0)
            x1 = limit
        area += (x1 - x0) * (y0 + y1) / 2
    return area


def brute_aupro_exact(maps, masks, limit):
    thresholds = [np.inf] + sorted(np.unique(maps).tolist(), reverse=True)
    return brute_area(*brute_pro_points(maps, masks, thresholds), limit) / limit


def brute_aupro_binned(maps, masks, limit, k):
    thresholds = np.linspace(maps.min(), maps.max(), k)[::-1]
    fprs, pros = brute_pro_points(maps, masks, thresholds)
    return brute_area([0.0] + fprs, [0.0] + pros, limit) / limit


def random_maps_and_masks(rng, n=3, size=14, levels=7):
    """Maps with many ties (few levels) and blobby masks with several regions per image."""
    masks = ndimage.binary_opening(rng.random((n, size, size)) > 0.6, structure=np.ones((1, 2, 2)))
    masks[0, 1:4, 1:4] = True  # at least one region
    maps = rng.integers(0, levels, masks.shape).astype(np.float32) + 2.0 * masks * rng.random(masks.shape)
    return np.round(maps, 1).astype(np.float32), masks


# ---------------------------------------------------------------- AUROC and ROC curve


@pytest.mark.parametrize("seed", range(20))
def test_image_auroc_equals_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 50)
    labels[:2] = (0, 1)
    scores = rng.integers(0, 5, 50).astype(float)  # heavy ties
    assert metrics.image_auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_pixel_auroc_equals_sklearn_with_ties():
    rng = np.random.default_rng(1)
    maps = np.round(rng.random((4, 32, 32)), 2).astype(np.float32)
    masks = np.zeros(maps.shape, bool)
    masks[:2, 8:20, 5:15] = True
    maps[masks] += 0.2
    expected = roc_auc_score(masks.ravel(), maps.ravel())
    assert metrics.pixel_auroc(maps, masks) == pytest.approx(expected, abs=1e-12)


def test_auroc_extremes():
    assert metrics.image_auroc([0.1, 0.2, 0.9], [0, 0, 1]) == 1.0
    assert metrics.image_auroc([0.9, 0.2, 0.1], [0, 0, 1]) == 0.0
    assert metrics.image_auroc([0.5, 0.5, 0.5], [0, 1, 1]) == 0.5


@pytest.mark.parametrize("seed", range(5))
def test_roc_curve_points_lie_on_sklearn_curve(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 80)
    labels[:2] = (0, 1)
    scores = rng.integers(0, 12, 80).astype(float)
    fpr, tpr, thresholds = metrics.roc_curve(scores, labels)
    sk_fpr, sk_tpr, sk_thr = sk_roc_curve(labels, scores, drop_intermediate=False)
    sk_points = {(x, y): t for x, y, t in zip(sk_fpr, sk_tpr, sk_thr)}
    for x, y, t in zip(fpr, tpr, thresholds):
        assert sk_points[(x, y)] == t
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0) and np.all(np.diff(thresholds) < 0)
    assert trapezoid(tpr, fpr) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


# ---------------------------------------------------------------- F1


@pytest.mark.parametrize("seed", range(10))
def test_f1_max_equals_sklearn(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 60)
    labels[:2] = (0, 1)
    scores = np.round(rng.random(60) + 0.3 * labels, 1)
    precision, recall, _ = precision_recall_curve(labels, scores)
    with np.errstate(invalid="ignore", divide="ignore"):
        expected = np.nanmax(2 * precision * recall / (precision + recall))
    f1, threshold = metrics.f1_max(scores, labels)
    assert f1 == pytest.approx(expected, abs=1e-12)
    assert f1_score(labels, scores >= threshold) == pytest.approx(f1, abs=1e-12)
    assert threshold in scores[labels == 1]


def test_f1_max_perfect_separation_and_pixel_shape():
    masks = np.zeros((2, 4, 4), bool)
    masks[1, :2, :2] = True
    maps = np.where(masks, 0.9, 0.1).astype(np.float32)
    f1, threshold = metrics.f1_max(maps, masks)
    assert f1 == 1.0 and threshold == pytest.approx(0.9)


# ---------------------------------------------------------------- AUPRO by hand


def one_region_case():
    """A normal 20x20 image and one with a 10x10 defect; the map fires on 50 of its 100 pixels."""
    masks = np.zeros((2, 20, 20), bool)
    masks[1, 5:15, 5:15] = True
    maps = np.zeros(masks.shape, np.float32)
    maps[1, 5:10, 5:15] = 1.0  # exactly 50 defect pixels, 0 normal pixels
    return maps, masks


def test_pro_half_detected_region_by_hand():
    maps, masks = one_region_case()
    fpr, pro, thresholds = metrics.pro_curve(maps, masks)
    # PRO is 0.5 with FPR 0 for every threshold in (0, 1]; at 0 everything is predicted.
    np.testing.assert_array_equal(fpr, [0.0, 0.0, 1.0])
    np.testing.assert_allclose(pro, [0.0, 0.5, 1.0], atol=1e-12)
    np.testing.assert_array_equal(thresholds, [np.inf, 1.0, 0.0])
    # Segment (0, 0.5) -> (1, 1): PRO(0.3) = 0.65, area = 0.3 * (0.5 + 0.65) / 2 = 0.1725.
    assert metrics.aupro(maps, masks) == pytest.approx(0.1725 / 0.3, abs=1e-12)
    assert metrics.aupro(maps, masks, fpr_limit=1.0) == pytest.approx(0.75, abs=1e-12)


def test_pro_averages_over_regions_not_pixels():
    masks = np.zeros((1, 30, 30), bool)
    masks[0, 2:12, 2:12] = True  # region of 100 px, fully detected
    masks[0, 20:22, 20:22] = True  # region of 4 px, missed
    maps = np.zeros(masks.shape, np.float32)
    maps[0, 2:12, 2:12] = 1.0
    fpr, pro, _ = metrics.pro_curve(maps, masks)
    assert (fpr[1], pro[1]) == (0.0, pytest.approx(0.5))  # pixel-wise overlap would be 100/104


def test_regions_are_8_connected():
    masks = np.zeros((1, 10, 10), bool)
    masks[0, 1:4, 1:4] = True  # 9 px
    masks[0, 4, 4] = True  # 1 px touching diagonally -> same region under 8-connectivity
    maps = np.zeros(masks.shape, np.float32)
    maps[0, 1:4, 1:4] = 1.0
    _, pro, _ = metrics.pro_curve(maps, masks)
    assert pro[1] == pytest.approx(0.9)  # 4-connectivity would give mean(1, 0) = 0.5


def test_aupro_perfect_constant_and_inverted_maps():
    _, masks = one_region_case()
    perfect = masks.astype(np.float32)
    assert metrics.aupro(perfect, masks) == pytest.approx(1.0)
    constant = np.full(masks.shape, 0.7, np.float32)  # curve is the diagonal: PRO = FPR
    assert metrics.aupro(constant, masks) == pytest.approx(0.15)  # 0.3 * 0.3 / 2 / 0.3
    assert metrics.aupro(constant, masks, fpr_limit=1.0) == pytest.approx(0.5)
    assert metrics.aupro(1.0 - perfect, masks) == pytest.approx(0.0)


# ---------------------------------------------------------------- AUPRO against brute force


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("limit", [0.05, 0.3, 1.0])
def test_aupro_exact_equals_brute_force(seed, limit):
    maps, masks = random_maps_and_masks(np.random.default_rng(seed))
    expected = brute_aupro_exact(maps, masks, limit)
    assert metrics.aupro(maps, masks, fpr_limit=limit) == pytest.approx(expected, abs=1e-10)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("k", [2, 5, 50])
def test_aupro_binned_equals_brute_force(seed, k):
    maps, masks = random_maps_and_masks(np.random.default_rng(100 + seed), levels=1000)
    expected = brute_aupro_binned(maps, masks, 0.3, k)
    assert metrics.aupro(maps, masks, num_thresholds=k) == pytest.approx(expected, abs=1e-10)


def test_binned_converges_to_exact():
    rng = np.random.default_rng(7)
    maps, masks = random_maps_and_masks(rng, n=4, size=32, levels=1000)
    maps = maps + rng.random(maps.shape).astype(np.float32)  # few ties
    exact = metrics.aupro(maps, masks)
    assert metrics.aupro(maps, masks, num_thresholds=5000) == pytest.approx(exact, abs=2e-3)


# ---------------------------------------------------------------- errors


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(DataError, match=r"\(3,\) and \(4,\)"):
        metrics.image_auroc(np.zeros(3), np.array([0, 1, 0, 1]))
    with pytest.raises(DataError, match="same shape"):
        metrics.pixel_auroc(np.zeros((2, 4, 4)), np.zeros((2, 4, 5), bool))


def test_single_class_is_undefined():
    with pytest.raises(DataError, match="undefined"):
        metrics.image_auroc([0.1, 0.2, 0.3], [1, 1, 1])
    with pytest.raises(DataError, match="undefined"):
        metrics.f1_max([0.1, 0.2], [0, 0])


def test_masks_without_defect_pixels():
    maps = np.random.default_rng(0).random((2, 8, 8))
    empty = np.zeros((2, 8, 8), bool)
    with pytest.raises(DataError, match="undefined"):
        metrics.pixel_auroc(maps, empty)
    with pytest.raises(DataError, match="0 defect pixel"):
        metrics.aupro(maps, empty)


def test_bad_inputs_and_settings():
    maps, masks = one_region_case()
    with pytest.raises(DataError, match=r"maps\[:, 0\]"):
        metrics.aupro(maps[:, None], masks[:, None])
    with pytest.raises(DataError, match="only 0 and 1"):
        metrics.image_auroc([0.1, 0.2], [0, 2])
    with pytest.raises(DataError, match="NaN"):
        metrics.image_auroc([np.nan, 0.2], [0, 1])
    with pytest.raises(ConfigError, match="fpr_limit"):
        metrics.aupro(maps, masks, fpr_limit=0.0)
    with pytest.raises(ConfigError, match="num_thresholds"):
        metrics.aupro(maps, masks, num_thresholds=1)


def test_catch_rate_uses_the_lines_normal_quantile_threshold():
    from fair_edge.training.metrics import catch_rate

    scores = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 5.0, 20.0, 8.0])
    labels = np.array([0] * 10 + [1, 1, 1])
    assert catch_rate(scores, labels, 0.1) == pytest.approx(1 / 3)  # threshold 8: only 20 is above it
    assert catch_rate(scores, labels, 0.0) == pytest.approx(1 / 3)  # threshold 9 (the max normal)
    assert catch_rate(scores, labels, 0.5) == pytest.approx(1.0)  # threshold 4


def test_line_summary_names_each_rate_and_agrees_with_its_parts():
    from fair_edge.training.metrics import catch_rate, image_auroc, line_summary

    scores = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 5.0, 20.0, 8.0])
    labels = np.array([0] * 10 + [1, 1, 1])
    out = line_summary(scores, labels, rates=(0.005, 0.5))
    assert list(out) == ["image_auroc", "catch_at_0.5%", "catch_at_50.0%"]
    assert out["image_auroc"] == image_auroc(scores, labels)
    assert out["catch_at_50.0%"] == catch_rate(scores, labels, 0.5) == pytest.approx(1.0)


# ---------------------------------------------------------------- images of several sizes (tiled models)


def ragged_maps_and_masks(rng):
    """Two images of other sizes (14 x 14 and 10 x 12), each with defect regions."""
    big_maps, big_masks = random_maps_and_masks(rng, n=1, size=14)
    small_masks = np.zeros((10, 12), bool)
    small_masks[2:4, 3:6] = small_masks[7, 9:11] = True
    small_maps = (rng.integers(0, 7, (10, 12)) + 2.0 * small_masks * rng.random((10, 12))).astype(np.float32)
    return [big_maps[0], small_maps], [big_masks[0], small_masks]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pixel_metrics_of_images_of_several_sizes_pool_pixels_and_label_regions_per_image(seed):
    """Lists of (H_i, W_i) maps: pixel AUROC over the concatenated flattened pixels, AUPRO with each image's
    own regions and all normal pixels pooled (checked by counting, threshold by threshold)."""
    maps, masks = ragged_maps_and_masks(np.random.default_rng(seed))
    flat_maps = np.concatenate([m.ravel() for m in maps])
    flat_masks = np.concatenate([k.ravel() for k in masks])
    assert metrics.pixel_auroc(maps, masks) == pytest.approx(roc_auc_score(flat_masks, flat_maps), abs=1e-12)
    regions = [(i, labelled == r) for i, mask in enumerate(masks)
               for labelled, count in [ndimage.label(mask, structure=np.ones((3, 3)))] for r in range(1, count + 1)]
    fprs, pros = [], []
    for t in [np.inf] + sorted(np.unique(flat_maps).tolist(), reverse=True):
        fprs.append(sum(((m >= t) & ~k).sum() for m, k in zip(maps, masks)) / (~flat_masks).sum())
        pros.append(np.mean([((maps[i] >= t) & region).sum() / region.sum() for i, region in regions]))
    assert metrics.aupro(maps, masks, fpr_limit=0.3) == pytest.approx(brute_area(fprs, pros, 0.3) / 0.3, abs=1e-9)
    binned = metrics.aupro(maps, masks, num_thresholds=5)
    assert 0.0 <= binned <= 1.0
    with pytest.raises(DataError, match=r"maps\[1\] and masks\[1\]"):
        metrics.pixel_auroc(maps, [masks[0], masks[1][:, :5]])


# ---------------------------------------------------------------- region labels (masks brought to a smaller map grid)


def scratch_and_blob_case():
    """Three 64 px images on a 32 px map grid (map pixel = 2 x 2 mask pixels, maps constant over each, so nearest
    upsampling gives the full-size map exactly): a block-aligned blob the map finds (score 10), a 1 px scratch it
    misses (score -1 on every map pixel the scratch touches), a normal image; background scores 0.0 .. 0.6."""
    import cv2

    rng = np.random.default_rng(3)
    full = np.zeros((3, 64, 64), np.uint8)
    full[0, 20:40, 12:30] = 1
    cv2.line(full[1], (2, 5), (60, 35), 1, 1)
    full = full > 0
    maps = (rng.integers(0, 7, (3, 32, 32)) / 10).astype(np.float32)
    touched = full.reshape(3, 32, 2, 32, 2).any(axis=(2, 4))
    maps[0][touched[0]] = 10.0
    maps[1][touched[1]] = -1.0
    return maps, full


def test_aupro_of_grid_region_labels_equals_the_full_size_reference_for_a_broken_scratch():
    """MVTec AD's AUPRO counts the 8-connected regions of the mask itself: here 2 (the blob found, the scratch
    missed), so PRO is 0.5 up to FPR 0.3 and AUPRO 0.5 with the map upsampled to the mask's 64 px. On the 32 px
    grid nearest sampling breaks the scratch into 14 pieces; labelled again there it would count 15 regions (AUPRO
    1/15); carried as explicit labels (``labels_on_map_grid``, ``regions=``) it is one region and AUPRO equals the
    reference."""
    from fair_edge.masks import labels_on_map_grid, mask_on_map_grid

    maps, full = scratch_and_blob_case()
    labels = np.stack([labels_on_map_grid(k, (32, 32)) for k in full])
    grid = np.stack([mask_on_map_grid(k, (32, 32)) for k in full])
    assert ((labels > 0) == grid).all() and ndimage.label(grid[1], structure=np.ones((3, 3)))[1] > 1
    upsampled = maps.repeat(2, axis=1).repeat(2, axis=2)
    reference = brute_aupro_exact(upsampled, full, 0.3)
    assert reference == pytest.approx(0.5, abs=1e-12)
    assert metrics.aupro(maps, grid, regions=labels) == pytest.approx(reference, abs=1e-12)
    assert metrics.aupro(list(maps), list(grid), regions=list(labels)) == pytest.approx(reference, abs=1e-12)
    assert metrics.aupro(maps, grid) < 0.1  # a mask alone is labelled on its own grid, as before
    assert metrics.aupro(maps, grid.astype(np.int32)) == metrics.aupro(maps, grid)  # its dtype changes nothing


@pytest.mark.parametrize("seed", [0, 1])
def test_region_labels_are_the_regions_and_a_bool_mask_is_labelled_as_before(seed):
    """Explicit ``regions=`` labels: each distinct positive label one region of its image (checked by brute
    force with two regions merged under one label), 0 normal; a mask's own 8-connected labels give exactly the
    bool mask's curve. Negative labels are refused naming the fix; 0/255 masks are still refused as before, and
    labels passed as the mask are a mask that is not 0/1."""
    maps, masks = random_maps_and_masks(np.random.default_rng(seed))
    labelled = np.stack([ndimage.label(k, structure=np.ones((3, 3)))[0] for k in masks]).astype(np.int32)
    for a, b in zip(metrics.pro_curve(maps, masks, regions=labelled), metrics.pro_curve(maps, masks)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(DataError, match="only 0 and 1"):
        metrics.pixel_auroc(maps, labelled)
    merged = labelled.copy()
    merged[0][merged[0] == 2] = 1  # image 0's regions 1 and 2 now count as one
    regions = [(i, merged[i] == r) for i in range(len(merged)) for r in np.unique(merged[i][merged[i] > 0])]
    fprs, pros = [], []
    for t in [np.inf] + sorted(np.unique(maps).tolist(), reverse=True):
        fprs.append(((maps >= t) & ~masks).sum() / (~masks).sum())
        pros.append(np.mean([((maps[i] >= t) & region).sum() / region.sum() for i, region in regions]))
    assert metrics.aupro(maps, masks, regions=merged) == pytest.approx(brute_area(fprs, pros, 0.3) / 0.3, abs=1e-9)
    with pytest.raises(DataError, match="must be >= 0.*scipy.ndimage.label"):
        metrics.aupro(maps, masks, regions=-labelled)
    with pytest.raises(DataError, match="only 0 and 1"):
        metrics.aupro(maps, masks.astype(np.uint8) * 255)


def two_blobs_one_found():
    """One 32 px image with two separate defects: blob A (4 x 4) scored high (found), blob B (10 x 10) missed."""
    rng = np.random.default_rng(0)
    maps = rng.random((1, 32, 32)).astype(np.float32)
    mask = np.zeros((1, 32, 32), bool)
    mask[0, 2:6, 2:6] = True
    mask[0, 20:30, 20:30] = True
    maps[0, 2:6, 2:6] += 5
    return maps, mask


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.int8, np.uint8, np.float32])
def test_an_integer_0_1_mask_is_a_mask_whatever_its_dtype(dtype):
    """A 0/1 mask of any dtype (``mask.astype(int)``, torch ``.long()``) is the bool mask: two separate blobs are
    two regions (AUPRO counts the missed one), never one region label."""
    maps, mask = two_blobs_one_found()
    expected = metrics.aupro(maps, mask)
    assert metrics.aupro(maps, mask.astype(dtype)) == expected
    assert metrics.aupro(list(maps), list(mask.astype(dtype))) == expected
    for a, b in zip(metrics.pro_curve(maps, mask.astype(dtype)), metrics.pro_curve(maps, mask)):
        np.testing.assert_array_equal(a, b)
    assert metrics.pixel_auroc(maps, mask.astype(dtype)) == metrics.pixel_auroc(maps, mask)


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint8])
def test_an_integer_0_255_mask_is_refused_naming_the_fix(dtype):
    """A 0/255 mask (a PNG read as it is) is refused as before, signed integer ones too (never read as labels)."""
    maps, mask = two_blobs_one_found()
    for call in (metrics.aupro, metrics.pro_curve, metrics.pixel_auroc):
        with pytest.raises(DataError, match=r"only 0 and 1; found \[255\]. Binarise it first, e.g. masks > 0"):
            call(maps, mask.astype(dtype) * 255)


def test_explicit_regions_must_be_integer_labels_of_the_mask():
    """``regions=`` is what makes labels: one label over both blobs makes them one region (the found one then
    covers 16 of 116 pixels); labels whose > 0 differs from the mask, float labels, or the wrong shape are refused."""
    maps, mask = two_blobs_one_found()
    one = mask.astype(np.int32)
    two = ndimage.label(mask[0], structure=np.ones((3, 3)))[0][None]
    assert metrics.aupro(maps, mask, regions=two) == metrics.aupro(maps, mask)
    assert metrics.aupro(maps, mask, regions=one) < metrics.aupro(maps, mask)
    with pytest.raises(DataError, match=r"regions\[0\] > 0 must be exactly the defect mask; found 100 pixel"):
        metrics.aupro(maps, mask, regions=np.where(two == 2, 0, two))
    with pytest.raises(DataError, match=r"must be integer region labels.*float32"):
        metrics.aupro(maps, mask, regions=one.astype(np.float32))
    with pytest.raises(DataError, match="one entry per image; found 2 regions and 1 masks"):
        metrics.pro_curve(maps, mask, regions=np.concatenate([two, two]))
