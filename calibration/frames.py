"""Frames for calibration and threshold/accuracy checks: uint8 BGR frames -> model tensors.

Takes any iterable of frames (folders are read with ``fair_edge.data``, the loader training uses),
so it does not depend on where they come from.
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from fair_edge.errors import DataError
from fair_edge.preprocess import HighPass, PreprocessConfig, frames_to_batch, model_input
from fair_edge.tiling import FrameTiler


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


def model_frames(frames: Iterable[np.ndarray], cfg: PreprocessConfig, limit: int | None = None) -> list[np.ndarray]:
    """Up to ``limit`` frames as the model sees them: the frames, or their tiles for a tiled model
    (``cfg.tiling``; ``limit`` then counts frames). Each item: (h, w, 3) uint8 BGR view."""
    frames = list(frames)[:limit]
    return FrameTiler(cfg.tiling, cfg.image_size).split(frames)[0]


def frame_scores(infer_batched: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]],
                 frames: Sequence[np.ndarray], cfg: PreprocessConfig) -> np.ndarray:
    """Decision scores of whole frames, (N,) float32: infer_batched(highpass, colour) ->
    (maps (B, 1, S, S), scores (B,)) scores each frame, or each tile then stitched (fair_edge.tiling)."""
    tiler = FrameTiler(cfg.tiling, cfg.image_size)
    tiles, layouts = tiler.split(list(frames))
    maps, scores = infer_batched(*preprocess_frames(tiles, cfg))
    return tiler.stitch(maps[:, 0], scores, layouts)[1]
