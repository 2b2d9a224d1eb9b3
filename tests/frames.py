"""Test frames shared by the kernel tests: random and real (ELPV solar-cell photos), any size."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np

from fair_edge.preprocess import PreprocessConfig

SIZES = ((256, 256), (640, 480), (1920, 1080), (1001, 777))  # (width, height)
# The settings the fused kernel is checked at, on the GPU and in the CPU emulation.
KERNEL_CONFIGS = (PreprocessConfig(), PreprocessConfig(cutoff=30.0, order=3), PreprocessConfig(cutoff=10.0),
                  PreprocessConfig(filter="gaussian", cutoff=30.0), PreprocessConfig(filter="sobel_xy"))


def random_frame(width: int, height: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    """(H, W, 3) or (H, W) uint8 uniform noise."""
    rng = np.random.default_rng(seed + width * 7 + height)
    shape = (height, width, 3) if channels == 3 else (height, width)
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


def elpv_dir() -> Path | None:
    """Folder of the ELPV images (the ``elpv-dataset`` test dependency), or None if not installed."""
    spec = importlib.util.find_spec("elpv_dataset")
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).parent / "data" / "images"
    return folder if folder.is_dir() else None


def real_frame(width: int, height: int, channels: int = 3) -> np.ndarray:
    """(H, W, 3) BGR (three different real cells as B, G, R) or (H, W) gray, resized to width x height."""
    folder = elpv_dir()
    cells = [cv2.imread(str(folder / f"cell{i:04d}.png"), cv2.IMREAD_GRAYSCALE) for i in (1, 300, 1000)]
    cells = [cv2.resize(c, (width, height), interpolation=cv2.INTER_CUBIC) for c in cells]
    return np.stack(cells, axis=2) if channels == 3 else cells[0]


def errors(found: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """(relative L2, max abs) of found vs reference."""
    diff = found.astype(np.float64) - reference
    return float(np.linalg.norm(diff) / np.linalg.norm(reference)), float(np.abs(diff).max())
