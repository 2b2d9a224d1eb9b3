"""Defect regions from an anomaly map: where a defect is and how big, in frame pixels (and mm).

A pixel threshold is calibrated from normal images only (``calibrate_pixel_threshold``: a high
quantile of all normal map pixels, pooled; recorded in ``bundle.json`` as ``pixel_threshold`` beside
the image threshold). At run time the map pixels above it are grouped into 8-connected components
(``extract_regions``), each one a ``Region`` with its bounding box, centroid, area and length in
frame pixels, its peak and mean score, and the same sizes in millimetres when the camera scale is
known. A tiled bundle's map is already stitched into frame coordinates (``fair_edge.tiling``), so a
defect across a tile seam is one component and one region.

Map -> frame: a map pixel (i, j) covers frame pixels ``x0 + j * sx .. x0 + (j + 1) * sx`` (and y
alike): ``MapGeometry``. Areas count map pixels times ``sx * sy``; the length is the longest side of
the minimum-area rotated rectangle around the component's pixel squares, in frame pixels.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable

import cv2
import numpy as np

from fair_edge.errors import ConfigError, DataError

DEFAULT_PIXEL_QUANTILE = 0.9999   # of pooled normal map pixels; ~0.4 pixel per normal 64 x 64 map above it
EIGHT_CONNECTED = np.ones((3, 3), bool)
LOGGED_DECIMALS, LOGGED_SIGNIFICANT = 4, 4   # a size in the logs: this many decimals, or significant figures if more


def logged_size(value: float) -> float:
    """A region size or a rule hit's value (mm², mm, px², px, a count) as the logs write it (``verdicts.jsonl``,
    MQTT, `rules check --json`): rounded to 4 decimals, or to 4 significant figures where that keeps more (a value
    under 0.1: a 0.00008 mm² region at 2 um/px, which 4 decimals wrote as 0.0001, the same as a 0.00014 mm² one and
    its 0.0001 mm² limit), so sizes keep their order and their comparison with a limit. 0, inf and NaN as given."""
    if value == 0 or not math.isfinite(value):
        return value
    significant = LOGGED_SIGNIFICANT - 1 - math.floor(math.log10(abs(value)))
    return round(value, max(LOGGED_DECIMALS, significant))


@dataclass(frozen=True)
class PixelThreshold:
    """value: map pixels > value belong to a region (score units). quantile: of the pooled normal map
    pixels it was taken at. n_images / n_pixels: how many normal maps / pixels it came from.
    source: where the normal images came from."""

    value: float
    quantile: float
    n_images: int
    n_pixels: int
    source: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "PixelThreshold":
        return cls(value=float(data["value"]), quantile=float(data["quantile"]), n_images=int(data["n_images"]),
                   n_pixels=int(data["n_pixels"]), source=str(data.get("source", "")))


def calibrate_pixel_threshold(normal_maps, quantile: float = DEFAULT_PIXEL_QUANTILE, source: str = "") -> PixelThreshold:
    """The pixel threshold from normal anomaly maps only.

    normal_maps: a sequence of (h, w) float32 maps (sizes may differ: stitched frame maps), host memory.
    Returns the ``quantile`` of all their pixels pooled (linear interpolation)."""
    if not 0.5 <= quantile < 1.0:
        raise ConfigError(f"pixel quantile must be in [0.5, 1); found {quantile}.")
    maps = [np.asarray(m, np.float32).ravel() for m in normal_maps]
    if not maps:
        raise DataError("pixel threshold calibration needs normal anomaly maps; found none.")
    pixels = np.concatenate(maps)
    if not np.all(np.isfinite(pixels)):
        raise DataError(f"normal anomaly maps contain NaN or inf ({int((~np.isfinite(pixels)).sum())} pixels).")
    return PixelThreshold(float(np.quantile(pixels, quantile)), quantile, len(maps), int(pixels.size), source)


@dataclass(frozen=True)
class MapGeometry:
    """Where a map lies in its frame: map pixel (i, j) covers frame x in [x0 + j * sx, x0 + (j + 1) * sx),
    y in [y0 + i * sy, y0 + (i + 1) * sy). x0, y0: frame pixels; sx, sy: frame pixels per map pixel."""

    x0: float
    y0: float
    sx: float
    sy: float

    @classmethod
    def of(cls, frame_hw: tuple[int, int], map_hw: tuple[int, int],
           roi: tuple[int, ...] | None = None) -> "MapGeometry":
        """frame_hw: the frame's (H, W); map_hw: the map's (h, w); roi: (x, y, width, height) frame pixels
        the map covers (a tiled bundle's ``tiling.roi``), None = the whole frame."""
        x0, y0, w, h = roi if roi is not None else (0, 0, frame_hw[1], frame_hw[0])
        return cls(float(x0), float(y0), w / map_hw[1], h / map_hw[0])


@dataclass(frozen=True)
class Region:
    """One defect region (a connected component of map pixels above the pixel threshold).

    bbox: (x, y, width, height) frame pixels (float: a map pixel covers several frame pixels).
    centroid: (x, y) frame pixels. area_px: frame pixels². length_px: longest side of the rotated
    minimum-area box, frame pixels. peak / mean: the map's max / mean over the region (score units).
    area_mm2 / length_mm: the same in mm² / mm with a camera scale, else None.
    zone / zone_id: the zone its centroid lies in (``default`` / 0 outside every named zone; "" before
    zones are applied). ignored: that zone is an ``ignore: true`` one (its regions fire nothing and are not counted
    on the line: ``Verdict.counted_regions``); False before zones are applied.
    """

    bbox: tuple[float, float, float, float]
    centroid: tuple[float, float]
    area_px: float
    length_px: float
    peak: float
    mean: float
    area_mm2: float | None = None
    length_mm: float | None = None
    zone: str = ""
    zone_id: int = 0
    ignored: bool = False

    def to_json_dict(self) -> dict:
        out = {"bbox": [round(v, 2) for v in self.bbox], "centroid": [round(v, 2) for v in self.centroid],
               "area_px": round(self.area_px, 2), "length_px": round(self.length_px, 2),
               "peak": round(self.peak, 6), "mean": round(self.mean, 6)}
        if self.area_mm2 is not None:
            out["area_mm2"] = logged_size(self.area_mm2)
            out["length_mm"] = logged_size(self.length_mm)
        if self.zone:
            out["zone"], out["zone_id"] = self.zone, self.zone_id
        if self.ignored:
            out["ignored"] = True
        return out


def _length(mask: np.ndarray, geo: MapGeometry) -> float:
    """Longest side of the min-area rotated box around the pixel squares of ``mask`` ((h, w) bool, one
    component), in frame pixels."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    pts = np.concatenate([c.reshape(-1, 2) for c in contours]).astype(np.float32)
    corners = (pts[:, None, :] + np.array([[0, 0], [1, 0], [0, 1], [1, 1]], np.float32)[None]).reshape(-1, 2)
    corners *= np.array([geo.sx, geo.sy], np.float32)   # pixel squares in frame pixels (x, y)
    (_, _), (w, h), _ = cv2.minAreaRect(corners)
    return float(max(w, h))


def extract_regions(anomaly_map: np.ndarray, pixel_threshold: float, geometry: MapGeometry,
                    mm_per_px: float | None = None, max_regions: int = 64,
                    group: Callable[[np.ndarray], np.ndarray] | None = None) -> tuple[Region, ...]:
    """Connected components (8-connected, ``cv2.connectedComponentsWithStats``) of ``anomaly_map >
    pixel_threshold``, largest first.

    anomaly_map: (h, w) float32, host memory (a model map, or a tiled bundle's stitched frame map).
    geometry: the map's place in the frame. mm_per_px: millimetres per frame pixel, None = no mm sizes.
    max_regions: at most this many regions (per group with ``group``), the largest (a map all above threshold
    is still one region). group: (N, 2) frame centroids (x, y) -> (N,) int group ids (a station's zones): each
    region's ``zone_id`` is its group, and the limit applies per group, so the regions of one zone (an ignored
    texture, say) never crowd out another zone's."""
    amap = np.asarray(anomaly_map, np.float32)
    if amap.ndim != 2:
        raise ConfigError(f"extract_regions expects an (h, w) map; found shape {tuple(amap.shape)}.")
    count, labels, stats, centres = cv2.connectedComponentsWithStats((amap > pixel_threshold).astype(np.uint8),
                                                                     connectivity=8, ltype=cv2.CV_32S)
    if count <= 1:
        return ()
    order = np.argsort(-stats[1:, cv2.CC_STAT_AREA], kind="stable") + 1   # largest first
    groups = np.zeros(count, np.int64)
    if group is not None:
        frame_xy = np.stack([geometry.x0 + (centres[:, 0] + 0.5) * geometry.sx,
                             geometry.y0 + (centres[:, 1] + 0.5) * geometry.sy], axis=1)
        groups = np.asarray(group(frame_xy), np.int64)
    taken: dict[int, int] = {}
    keep = []
    for label in order:
        g = int(groups[label])
        if taken.get(g, 0) < max_regions:
            taken[g] = taken.get(g, 0) + 1
            keep.append(label)
    cell = geometry.sx * geometry.sy
    out = []
    for label in keep:
        x, y, w, h, n = (int(v) for v in stats[label])
        mask = labels[y : y + h, x : x + w] == label
        values = amap[y : y + h, x : x + w][mask]
        cx, cy = centres[label]   # mean of the pixel indices
        bbox = (geometry.x0 + x * geometry.sx, geometry.y0 + y * geometry.sy, w * geometry.sx, h * geometry.sy)
        area, length = n * cell, _length(mask, geometry)
        mm = mm_per_px
        out.append(Region(bbox, (geometry.x0 + (cx + 0.5) * geometry.sx, geometry.y0 + (cy + 0.5) * geometry.sy),
                          area, length, float(values.max()), float(values.mean()),
                          None if mm is None else area * mm * mm, None if mm is None else length * mm,
                          zone_id=int(groups[label])))
    return tuple(out)


def scale_from_points(p1: tuple[float, float], p2: tuple[float, float], distance_mm: float) -> float:
    """mm per frame pixel from two points (frame pixels) a known distance (mm) apart."""
    dist = math.dist(p1, p2)
    if dist <= 0 or distance_mm <= 0:
        raise ConfigError(f"a scale calibration needs two different points and a distance > 0 mm; found points "
                          f"{list(p1)}, {list(p2)} and {distance_mm} mm.")
    return distance_mm / dist


REGION_COLOUR = (0, 255, 255)     # BGR yellow: a region
FIRED_COLOUR = (0, 0, 255)        # BGR red: a region that fired a rule
ZONE_COLOUR = (255, 255, 0)       # BGR cyan: zone outlines


def draw_regions(image: np.ndarray, regions, fired: set[int] = frozenset(),
                 zone_outlines: list[np.ndarray] = (), scale: float = 1.0) -> np.ndarray:
    """Zone outlines and region boxes drawn on a copy of ``image``.

    image: (H, W, 3) uint8 BGR, the frame scaled by ``scale`` (image pixels per frame pixel). regions:
    ``Region``s (frame pixels). fired: indices of the regions that fired a rule (drawn red, the others
    yellow). zone_outlines: (K, 2) int32 (x, y) point arrays in frame pixels. Returns (H, W, 3) uint8 BGR."""
    out = np.array(image, np.uint8, copy=True)
    thick = max(1, round(max(out.shape[:2]) / 400))
    for pts in zone_outlines:
        pts = np.round(np.asarray(pts, np.float64) * scale).astype(np.int32)
        cv2.polylines(out, [pts.reshape(-1, 1, 2)], True, ZONE_COLOUR, thick)
    for i, r in enumerate(regions):
        x, y, w, h = (v * scale for v in r.bbox)
        cv2.rectangle(out, (int(x), int(y)), (int(math.ceil(x + w)) - 1, int(math.ceil(y + h)) - 1),
                      FIRED_COLOUR if i in fired else REGION_COLOUR, thick)
    return out
