"""Ground-truth masks on an anomaly map's grid: ``mask_on_map_grid`` shrinks a defect mask to the map's
resolution without losing a defect smaller than a map pixel (eval's pixel AUROC), and ``labels_on_map_grid`` brings
its defect regions there as integer labels, each region keeping the identity it has at mask resolution (eval's
AUPRO and region results: a thin scratch that nearest sampling breaks into pieces stays one defect)."""

from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def mask_on_map_grid(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) bool ground-truth mask -> (h, w) bool on an anomaly map's grid ``shape`` = (h, w); map pixel (i, j)
    covers mask rows [i * H / h, (i + 1) * H / h) and columns [j * W / w, (j + 1) * W / w).

    Rule: the map pixels nearest sampling marks (cv2.INTER_NEAREST, what published benchmark numbers use) are
    kept as they are; in addition, each defect region (8-connected component of the mask, at mask resolution)
    of which nearest sampling keeps no pixel gets the one map pixel it covers most (largest overlap area, in
    mask pixels; of equal ones the first in row-major order). So every defect keeps at least one map pixel,
    and a mask whose regions all survive nearest sampling comes out exactly as before.
    Equal to ``labels_on_map_grid(mask, shape) > 0``.
    """
    return labels_on_map_grid(mask, shape) > 0


def labels_on_map_grid(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) bool ground-truth mask -> (h, w) int32 region labels on an anomaly map's grid ``shape`` = (h, w):
    0 = normal, k > 0 = the mask's k-th defect region (8-connected component at mask resolution, as MVTec AD's
    AUPRO counts them; ``scipy.ndimage.label`` order).

    The map pixels are those of ``mask_on_map_grid`` (``labels > 0`` equals it exactly), each holding the label of
    the region that marks it: nearest sampling of the label image, and each region nearest sampling loses gets the
    map pixel it covers most, with its own label. So a 1 px scratch that nearest sampling leaves as scattered map
    pixels is still one region. A map pixel holds one label: a lost region whose best map pixel already holds
    another region (two defects inside one map pixel) is counted with that one. When ``shape`` is the mask's own
    size the labels are the mask's components.
    """
    mask = np.asarray(mask, bool)
    regions, count = ndimage.label(mask, structure=_EIGHT_CONNECTED)
    out = cv2.resize(regions.astype(np.int32), (int(shape[1]), int(shape[0])), interpolation=cv2.INTER_NEAREST)
    lost = np.setdiff1d(np.arange(1, count + 1), out)
    boxes = ndimage.find_objects(regions)
    for label in lost:
        box = boxes[label - 1]
        area = _area_in_cells(regions[box] == label, (box[0].start, box[1].start), mask.shape, out.shape)
        cell = np.unravel_index(int(np.argmax(area)), area.shape)
        if out[cell] == 0:
            out[cell] = label
    return out


def _area_in_cells(region: np.ndarray, origin: tuple[int, int], mask_hw: tuple[int, ...],
                   grid: tuple[int, ...]) -> np.ndarray:
    """Area, in mask pixels, of ``region`` inside each map pixel of ``grid`` (h, w): (h, w) float64.

    region: a bool crop of an (H, W) = ``mask_hw`` mask whose top-left is mask pixel ``origin`` (row, column).
    Exact: the crop's summed-area table, linear between whole pixels, is the area below and left of any point."""
    table = np.zeros((region.shape[0] + 1, region.shape[1] + 1))
    table[1:, 1:] = region.cumsum(axis=0).cumsum(axis=1)
    ys = np.clip(np.arange(grid[0] + 1) * (mask_hw[0] / grid[0]) - origin[0], 0, region.shape[0])
    xs = np.clip(np.arange(grid[1] + 1) * (mask_hw[1] / grid[1]) - origin[1], 0, region.shape[1])
    corners = _linear(_linear(table, ys, 0), xs, 1)  # (h + 1, w + 1): region area above and left of each corner
    return np.diff(np.diff(corners, axis=0), axis=1)


def _linear(table: np.ndarray, points: np.ndarray, axis: int) -> np.ndarray:
    """``table`` sampled at fractional indices ``points`` (0 <= p <= n - 1) along ``axis``, linearly."""
    low = np.minimum(points.astype(np.int64), table.shape[axis] - 2)
    frac = np.expand_dims(points - low, 1 - axis)
    return (1.0 - frac) * np.take(table, low, axis) + frac * np.take(table, low + 1, axis)
