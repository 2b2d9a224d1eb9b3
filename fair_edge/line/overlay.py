"""Heatmap overlays: an anomaly map blended over the frame it was computed from."""

from __future__ import annotations

import cv2
import numpy as np

from ..errors import RecorderError


def heatmap_overlay(image: np.ndarray, anomaly_map: np.ndarray, alpha: float = 0.5,
                    vmin: float | None = None, vmax: float | None = None,
                    colormap: int = cv2.COLORMAP_JET) -> np.ndarray:
    """Blend a colour-mapped anomaly map over ``image``.

    image: (H, W, 3) uint8 BGR or (H, W) uint8 gray, host memory.
    anomaly_map: (h, w) float32 (any size; resized bilinearly to (H, W)), host memory.
    vmin, vmax: map values drawn as the coldest / hottest colour (default: the map's min / max;
        pass fixed values, e.g. 0 and 2 * threshold, to compare images with each other).
    alpha: heatmap weight, 0..1. Returns (H, W, 3) uint8 BGR.
    """
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
        raise RecorderError(f"image: expected (H, W, 3) or (H, W) uint8, found {image.shape} {image.dtype}")
    if anomaly_map.ndim != 2:
        raise RecorderError(f"anomaly_map: expected (H, W) float32, found shape {anomaly_map.shape}")
    bgr = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else image
    h, w = bgr.shape[:2]
    amap = np.asarray(anomaly_map, dtype=np.float32)
    lo = float(np.min(amap)) if vmin is None else float(vmin)
    hi = float(np.max(amap)) if vmax is None else float(vmax)
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    u8 = np.clip((amap - lo) * scale, 0, 255).astype(np.uint8)
    u8 = cv2.resize(u8, (w, h), interpolation=cv2.INTER_LINEAR)
    heat = cv2.applyColorMap(u8, colormap)
    return cv2.addWeighted(heat, float(alpha), bgr, 1.0 - float(alpha), 0.0)
