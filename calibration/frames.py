"""Frames for calibration and threshold/accuracy checks: folder -> uint8 BGR frames -> model tensors.

Folders are read with ``fair_edge.data`` (the loader training uses); everything else takes an
iterable of frames, so it does not depend on where they come from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from fair_edge.data import list_images, read_image
from fair_edge.errors import DataError
from fair_edge.preprocess import HighPass, PreprocessConfig, frames_to_batch, model_input


def list_folder(folder: str | Path) -> list[Path]:
    """Sorted image files directly inside ``folder`` (``fair_edge.data.list_images``); DataError if none."""
    return list_images(folder)


def read_frames(paths: Iterable[Path]) -> Iterator[np.ndarray]:
    """Yield each image as (H, W, 3) uint8 BGR, host memory (``fair_edge.data.read_image``)."""
    for path in paths:
        yield read_image(path)


def preprocess_frames(frames: Iterable[np.ndarray], cfg: PreprocessConfig, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Pre-process up to ``limit`` frames exactly as at run time.

    frames: iterable of (H, W, 3) uint8 BGR (or (H, W) gray) host arrays.
    Returns (highpass (N, C, S, S), colour (N, 3, S, S) RGB in [0, 1]) float32 arrays; DataError if N = 0.
    """
    highpass = HighPass(cfg)
    hp_list, col_list = [], []
    for i, frame in enumerate(frames):
        if limit is not None and i >= limit:
            break
        colour = frames_to_batch([frame], cfg.image_size)
        with torch.no_grad():
            hp_list.append(model_input(colour, highpass).numpy())
        col_list.append(colour.numpy())
    if not hp_list:
        raise DataError("no images to pre-process; pass a folder of normal images.")
    return np.concatenate(hp_list), np.concatenate(col_list)
