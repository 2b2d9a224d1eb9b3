"""Images for the browser: a frame with its anomaly heat map, scaled down and JPEG-encoded.

Runs on the console's thread only, and only when a browser asks; the result is cached per part.
"""

from __future__ import annotations

import threading

import cv2
import numpy as np

from fair_edge.images import gray_2d
from fair_edge.plots import drawable, heat_scale, heatmap_overlay
from fair_edge.records import Verdict
from fair_edge.regions import draw_regions

MAX_SIDE = 480
JPEG_QUALITY = 80


def overlay_jpeg(image: np.ndarray, anomaly_map: np.ndarray | None, threshold: float, alpha: float = 0.5,
                 max_side: int = MAX_SIDE, verdict: Verdict | None = None, zone_outlines: list[np.ndarray] = ()) -> bytes:
    """JPEG bytes of ``image`` ((H, W, 3) BGR, or (H, W) / (H, W, 1) gray uint8: ``feed.drawable_frame``) scaled to at
    most ``max_side`` px (no side below 1 px), with ``anomaly_map`` ((S, S) float32, any size; NaN = no score there)
    blended on the recorder's scale (``plots.heat_scale``: 0 .. 2 x threshold, or for a fused bundle's map,
    ``verdict.fused``, threshold -/+ its half scale), so the threshold is the middle of the colour map and hot spots
    of NG parts show red; the verdict's defect region boxes (red: fired a rule) and the zone outlines ((K, 2) (x, y)
    frame pixels) drawn over it."""
    image = gray_2d(image)
    bgr = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else image
    scale = min(1.0, max_side / max(bgr.shape[:2]))
    if scale < 1.0:
        size = (max(1, round(bgr.shape[1] * scale)), max(1, round(bgr.shape[0] * scale)))   # a 1-px side stays 1 px
        bgr = cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)
    if anomaly_map is not None and drawable(anomaly_map):
        fused = verdict is not None and verdict.fused
        bgr = heatmap_overlay(bgr, anomaly_map, *heat_scale(anomaly_map, threshold, fused), alpha)
    if (verdict is not None and verdict.regions) or len(zone_outlines):
        regions = verdict.regions if verdict is not None else ()
        fired = {h.region for h in verdict.hits if h.region is not None} if verdict is not None else set()
        bgr = draw_regions(bgr, regions, fired, zone_outlines, scale)
    ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise ValueError(f"JPEG encoding failed for an image of shape {bgr.shape}")
    return data.tobytes()


class JpegCache:
    """The last ``size`` encoded images by key (part seq); each is encoded once, however many browsers ask."""

    def __init__(self, size: int = 64) -> None:
        self.size = size
        self._items: dict = {}
        self._lock = threading.Lock()

    def get(self, key, make) -> bytes:
        with self._lock:
            if key in self._items:
                return self._items[key]
        data = make()
        with self._lock:
            self._items[key] = data
            while len(self._items) > self.size:
                self._items.pop(next(iter(self._items)))
        return data
