"""Proxy defects for choosing settings from normal images only (``fair-edge tune``).

Planted in held-out normal frames, never used for training. They are deliberately NOT the kinds the
training synthesis makes (Perlin-shaped texture pastes and CutPaste, fair_edge/models/fair/synthesis.py),
so a setting is not rewarded for having seen its own proxy in training:
  scratch  a straight stroke 1-3 px wide, darker or brighter than the surface,
  smudge   an elliptical region blurred (texture wiped out, mean kept),
  stain    a soft-edged blob that shifts brightness and tint a little,
  noise    an elliptical patch of strong per-pixel noise (a rough or damaged spot).
Sizes are fractions of the frame's shorter side: small 0.03, medium 0.07, large 0.15.
"""

from __future__ import annotations

from typing import Callable

import cv2
import numpy as np

from fair_edge.errors import ConfigError

SIZES = {"small": 0.03, "medium": 0.07, "large": 0.15}


def _ellipse_mask(shape: tuple[int, int], extent: float, rng: np.random.Generator) -> np.ndarray:
    """(H, W) float32 soft elliptical mask in [0, 1], long axis ``extent`` px, random place and angle."""
    h, w = shape
    mask = np.zeros((h, w), np.float32)
    margin = int(extent) + 2
    cy = int(rng.integers(min(margin, h // 2), max(h - margin, h // 2 + 1)))
    cx = int(rng.integers(min(margin, w // 2), max(w - margin, w // 2 + 1)))
    axes = (max(1, int(extent / 2)), max(1, int(extent / 2 * rng.uniform(0.4, 1.0))))
    cv2.ellipse(mask, (cx, cy), axes, float(rng.uniform(0, 180)), 0, 360, 1.0, -1)
    return cv2.GaussianBlur(mask, (0, 0), max(0.5, extent / 12))


def scratch(img: np.ndarray, extent: float, rng: np.random.Generator) -> np.ndarray:
    """A straight stroke ``extent`` px long. img: (H, W, 3) float32 in [0, 1]; returns the mask."""
    h, w = img.shape[:2]
    y0, x0 = rng.uniform(0.1, 0.9) * h, rng.uniform(0.1, 0.9) * w
    angle = rng.uniform(0, np.pi)
    y1, x1 = y0 + extent * np.sin(angle), x0 + extent * np.cos(angle)
    mask = np.zeros((h, w), np.float32)
    cv2.line(mask, (int(x0), int(y0)), (int(x1), int(y1)), 1.0, int(rng.integers(1, 4)), cv2.LINE_AA)
    img += (rng.choice([-1.0, 1.0]) * rng.uniform(0.15, 0.35) * mask)[:, :, None]
    return mask


def smudge(img: np.ndarray, extent: float, rng: np.random.Generator) -> np.ndarray:
    """Blur an elliptical region (sigma ~ extent / 6). img: (H, W, 3) float32; returns the mask."""
    mask = _ellipse_mask(img.shape[:2], extent, rng)
    blurred = cv2.GaussianBlur(img, (0, 0), max(1.0, extent / 6))
    img += (blurred - img) * mask[:, :, None]
    return mask


def stain(img: np.ndarray, extent: float, rng: np.random.Generator) -> np.ndarray:
    """A soft blob shifting brightness by 0.06-0.15 and tint by up to 0.05 per channel."""
    mask = _ellipse_mask(img.shape[:2], extent, rng)
    shift = rng.choice([-1.0, 1.0]) * rng.uniform(0.06, 0.15) + rng.uniform(-0.05, 0.05, 3)
    img += mask[:, :, None] * shift.astype(np.float32)
    return mask


def noise(img: np.ndarray, extent: float, rng: np.random.Generator) -> np.ndarray:
    """Per-pixel noise (sigma 0.08-0.2) inside an elliptical region."""
    mask = _ellipse_mask(img.shape[:2], extent, rng)
    grain = rng.normal(0, rng.uniform(0.08, 0.2), img.shape[:2]).astype(np.float32)
    img += (mask * grain)[:, :, None]
    return mask


KINDS: dict[str, Callable[[np.ndarray, float, np.random.Generator], np.ndarray]] = {
    "scratch": scratch, "smudge": smudge, "stain": stain, "noise": noise,
}


def plant(frame: np.ndarray, kind: str, size: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Plant one proxy defect.

    frame: (H, W, 3) uint8 BGR. Returns (defective frame (H, W, 3) uint8 BGR, mask (H, W) bool)."""
    if kind not in KINDS:
        raise ConfigError(f"proxy defect kind must be one of {', '.join(KINDS)}; found {kind!r}.")
    if size not in SIZES:
        raise ConfigError(f"proxy defect size must be one of {', '.join(SIZES)}; found {size!r}.")
    img = frame.astype(np.float32) / 255.0
    extent = max(3.0, SIZES[size] * min(frame.shape[:2]))
    mask = KINDS[kind](img, extent, rng)
    return np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8), mask > 0.25
