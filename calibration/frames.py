"""Frames for calibration and threshold/accuracy checks: folder -> uint8 BGR frames -> model tensors.

``read_folder`` is a stop-gap until ``fair_edge.data`` (list_images / read_image) lands on main;
everything else takes an iterable of frames, so it does not depend on where they come from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator

import cv2
import numpy as np
import torch

from fair_edge.errors import DataError
from fair_edge.preprocess import HighPass, PreprocessConfig, frames_to_batch, model_input

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def list_folder(folder: str | Path) -> list[Path]:
    """Image files directly or recursively under ``folder``, sorted; DataError if none or no folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"image folder {folder} does not exist. Pass a folder of normal images (e.g. data/train/good).")
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise DataError(f"image folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)}). Point it at normal images.")
    return paths


def read_frames(paths: Iterable[Path]) -> Iterator[np.ndarray]:
    """Yield each image as (H, W, 3) uint8 BGR, host memory; DataError naming an unreadable file."""
    for path in paths:
        frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if frame is None:
            raise DataError(f"cannot read image {path} (corrupt or not an image). Remove it from the folder.")
        yield frame


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
