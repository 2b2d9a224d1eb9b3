"""NumPy mirror of the fused CUDA pre-processing kernel (``preprocess_kernel.cu``), in float32.

Same algorithm and arithmetic as the kernel, one frame at a time on the CPU, so the kernel's
numbers can be checked against the float64 FFT reference where no GPU exists:
  * resize coordinates in exact integer arithmetic: source row of output i is
    ((2i + 1) H - S) / (2S); floor and fraction from integer division, fraction rounded once to
    float32 (the float64 reference and this agree to ~1e-7 at any frame size),
  * pixels as float32 u8 * (1/255), bilinear taps a + f (b - a), BGR -> RGB, BT.601 gray,
  * high-pass = c0 * g - sum_k col_k (*) (row_k (*) g), circular (``HighpassPlan``), or Sobel-xy
    with reflect-101 border.
Production CPU code uses ``fair_edge.preprocess``; this mirror exists to test the kernel's design.
"""

from __future__ import annotations

import numpy as np

from fair_edge.errors import ConfigError
from fair_edge.runtime.highpass_plan import HighpassPlan

GRAY_WEIGHTS = (np.float32(0.299), np.float32(0.587), np.float32(0.114))


def source_axis(n_in: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear taps along one axis: (i0, i1) int64 indices and frac float32, each (size,)."""
    num = (2 * np.arange(size, dtype=np.int64) + 1) * n_in - size
    den = 2 * size
    i0 = np.where(num < 0, 0, num // den)
    rem = np.where(num < 0, 0, num - i0 * den)
    frac = rem.astype(np.float32) / np.float32(den)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return np.minimum(i0, n_in - 1), i1, frac


def resize_colour(frame: np.ndarray, size: int) -> np.ndarray:
    """frame: (H, W, 3) uint8 BGR or (H, W) uint8 gray. Returns (3, size, size) float32 RGB in [0, 1]."""
    if frame.dtype != np.uint8 or frame.ndim not in (2, 3) or (frame.ndim == 3 and frame.shape[2] != 3):
        raise ConfigError(f"frame must be (H, W, 3) or (H, W) uint8; found {frame.shape} {frame.dtype}.")
    img = frame.astype(np.float32) * np.float32(1.0 / 255.0)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    y0, y1, fy = source_axis(img.shape[0], size)
    x0, x1, fx = source_axis(img.shape[1], size)
    fx = fx[None, :, None]
    top = img[y0][:, x0] + fx * (img[y0][:, x1] - img[y0][:, x0])
    bottom = img[y1][:, x0] + fx * (img[y1][:, x1] - img[y1][:, x0])
    bgr = top + fy[:, None, None] * (bottom - top)
    return np.ascontiguousarray(bgr[:, :, ::-1].transpose(2, 0, 1), dtype=np.float32)


def gray_of(rgb: np.ndarray) -> np.ndarray:
    """(3, S, S) float32 RGB -> (S, S) float32 BT.601 gray."""
    return GRAY_WEIGHTS[0] * rgb[0] + GRAY_WEIGHTS[1] * rgb[1] + GRAY_WEIGHTS[2] * rgb[2]


def _circular_taps(image: np.ndarray, taps: np.ndarray, axis: int) -> np.ndarray:
    radius = (taps.shape[0] - 1) // 2
    out = np.zeros_like(image)
    for j, w in enumerate(taps):
        out += w * np.roll(image, radius - j, axis=axis)  # out[i] += w[j] * image[i + j - R]
    return out


def highpass(gray: np.ndarray, plan: HighpassPlan) -> np.ndarray:
    """(S, S) float32 gray -> (C, S, S) float32 high-pass, as the kernel computes it."""
    gray = gray.astype(np.float32)
    if plan.filter == "sobel_xy":
        p = np.pad(gray, 1, mode="reflect")  # reflect-101
        s = p.shape[0] - 2
        gx = (p[:-2, 2:] - p[:-2, :-2]) + 2 * (p[1:-1, 2:] - p[1:-1, :-2]) + (p[2:, 2:] - p[2:, :-2])
        gy = (p[2:, :-2] - p[:-2, :-2]) + 2 * (p[2:, 1:-1] - p[:-2, 1:-1]) + (p[2:, 2:] - p[:-2, 2:])
        return np.stack([gx[:s, :s], gy[:s, :s]]).astype(np.float32)
    acc = np.zeros_like(gray)
    for k in range(plan.rank):
        rows = _circular_taps(gray, plan.row_taps[k], axis=1)
        acc += _circular_taps(rows, plan.col_taps[k], axis=0)
    return (np.float32(plan.centre) * gray - acc)[None]


def mirror_input(frame: np.ndarray, plan: HighpassPlan) -> tuple[np.ndarray, np.ndarray]:
    """One frame through the kernel's algorithm. Returns (highpass (C, S, S), colour (3, S, S)) float32."""
    rgb = resize_colour(frame, plan.image_size)
    return highpass(gray_of(rgb), plan), rgb
