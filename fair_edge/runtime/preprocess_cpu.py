"""The CPU runtime pre-processing: camera frames -> (highpass, colour) batches, in NumPy and OpenCV.

Same numbers as the float64 reference (``fair_edge.preprocess``); no torch ops, so it never fights
PyTorch's thread pool for a loaded CPU (a 256 x 256 torch FFT took 74 ms with two threads on a busy
2-core machine and 1 ms with one: BENCHMARKS.md). Stages, each timed by ``fair-edge bench --mode stages``:

  copy      uint8 frame -> float32 BGR in [0, 1] (``scale_frame``; frames checked once, by the inspection loop),
  resize    OpenCV INTER_LINEAR to S x S, BGR -> RGB planes,
  highpass  BT.601 gray, then one of ``HIGHPASS_METHODS``:
            fft        real FFT x the filter's transfer function (``highpass_transfer``), exact,
            separable  the fused CUDA kernel's taps (``export/highpass_plan.py``): circular
                       ``cv2.sepFilter2D`` per separable term, c0 * g - sum_k col_k (*) (row_k (*) g);
                       within the plan's error budget (about 2e-4 relative) of the reference.
The default is the faster one on our CPUs, measured in BENCHMARKS.md (``DEFAULT_HIGHPASS``).
``sobel_xy`` is spatial for both methods (OpenCV Sobel, reflect-101 border).
"""

from __future__ import annotations

import time
from typing import Callable

import cv2
import numpy as np

from fair_edge.errors import ConfigError
from fair_edge.preprocess import GRAY_WEIGHTS_RGB, PreprocessConfig, highpass_transfer, resize_float, scale_frame

HIGHPASS_METHODS = ("fft", "separable")
DEFAULT_HIGHPASS = "fft"  # measured faster than "separable" at 256 x 256 (BENCHMARKS.md, per-stage table)
STAGES = ("copy", "resize", "highpass")


class StageClock:
    """Accumulates seconds per named stage; ``lap(name)`` charges the time since the previous lap."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._t = time.perf_counter()

    def start(self) -> None:
        self._t = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = self.seconds.get(name, 0.0) + now - self._t
        self._t = now


def gray_batch(rgb: np.ndarray) -> np.ndarray:
    """(B, 3, S, S) float32 RGB -> (B, S, S) float32 BT.601 gray."""
    r, g, b = (np.float32(w) for w in GRAY_WEIGHTS_RGB)
    return r * rgb[:, 0] + g * rgb[:, 1] + b * rgb[:, 2]


def _sobel(gray: np.ndarray) -> np.ndarray:
    out = np.empty((len(gray), 2, *gray.shape[1:]), np.float32)
    for i, g in enumerate(gray):
        out[i, 0] = cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3, borderType=cv2.BORDER_REFLECT_101)
        out[i, 1] = cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3, borderType=cv2.BORDER_REFLECT_101)
    return out


def fft_highpass(cfg: PreprocessConfig) -> Callable[[np.ndarray], np.ndarray]:
    """The exact frequency-domain high-pass: (B, S, S) float32 gray -> (B, 1, S, S) float32."""
    size = cfg.image_size
    half = np.fft.ifftshift(highpass_transfer(cfg))[:, : size // 2 + 1]  # rfft2 keeps columns 0..S/2

    def run(gray: np.ndarray) -> np.ndarray:
        return np.fft.irfft2(np.fft.rfft2(gray) * half, s=(size, size)).astype(np.float32)[:, None]

    return run


def separable_highpass(cfg: PreprocessConfig) -> Callable[[np.ndarray], np.ndarray]:
    """The fused kernel's circular separable filter: (B, S, S) float32 gray -> (B, 1, S, S) float32.

    Raises ConfigError (from ``plan_highpass``) for filters with no compact kernel, e.g. 'ideal'."""
    from fair_edge.export.highpass_plan import plan_highpass

    plan = plan_highpass(cfg)
    r, centre = plan.radius, np.float32(plan.centre)

    def one(g: np.ndarray) -> np.ndarray:
        padded = cv2.copyMakeBorder(g, r, r, r, r, cv2.BORDER_WRAP)  # circular, as the FFT reference
        acc = np.zeros_like(g)
        for row, col in zip(plan.row_taps, plan.col_taps):  # correlation: out[i] += w[j] * g[i + j - R]
            acc += cv2.sepFilter2D(padded, cv2.CV_32F, row, col, borderType=cv2.BORDER_CONSTANT)[r:-r, r:-r]
        return centre * g - acc

    def run(gray: np.ndarray) -> np.ndarray:
        return np.stack([one(g) for g in gray])[:, None]

    return run


HIGHPASS_BUILDERS: dict[str, Callable[[PreprocessConfig], Callable[[np.ndarray], np.ndarray]]] = {
    "fft": fft_highpass,
    "separable": separable_highpass,
}


def highpass_function(cfg: PreprocessConfig, method: str = DEFAULT_HIGHPASS) -> Callable[[np.ndarray], np.ndarray]:
    """The CPU high-pass of ``cfg`` by ``method``: (B, S, S) float32 gray -> (B, C, S, S) float32."""
    if method not in HIGHPASS_BUILDERS:
        raise ConfigError(f"CPU high-pass method must be one of {', '.join(HIGHPASS_METHODS)}; found {method!r}.")
    if cfg.filter == "sobel_xy":
        return _sobel
    return HIGHPASS_BUILDERS[method](cfg)


class CpuPipeline:
    """frames -> (highpass (B, C, S, S), colour (B, 3, S, S)) float32 host arrays, stage by stage.

    frames: list of (H, W, 3) uint8 BGR or (H, W) uint8 gray, host memory, any sizes, checked by
    ``preprocess.check_frame`` (the inspection loop checks each frame once; other callers check theirs).
    """

    def __init__(self, cfg: PreprocessConfig, method: str = DEFAULT_HIGHPASS) -> None:
        self.cfg, self.method = cfg, method
        self.highpass = highpass_function(cfg, method)

    def __call__(self, frames: list[np.ndarray], clock: StageClock | None = None) -> tuple[np.ndarray, np.ndarray]:
        clock = clock or StageClock()
        colour = self.colour(frames, clock)
        return self.highpass_of(colour, clock), colour

    def colour(self, frames: list[np.ndarray], clock: StageClock | None = None) -> np.ndarray:
        """The resized RGB images (B, 3, S, S) float32 in [0, 1]; charges 'copy' and 'resize' to ``clock``."""
        size = self.cfg.image_size
        clock = clock or StageClock()
        clock.start()
        colour = np.empty((len(frames), 3, size, size), np.float32)
        for i, frame in enumerate(frames):
            bgr = scale_frame(frame)
            clock.lap("copy")
            colour[i] = resize_float(bgr, size)
            clock.lap("resize")
        return colour

    def highpass_of(self, colour: np.ndarray, clock: StageClock | None = None) -> np.ndarray:
        """(B, 3, S, S) RGB -> (B, C, S, S) float32 high-pass of its gray image; charges 'highpass'."""
        clock = clock or StageClock()
        clock.start()
        highpass = self.highpass(gray_batch(colour))
        clock.lap("highpass")
        return highpass

