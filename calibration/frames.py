"""Frames for calibration and threshold/accuracy checks: uint8 BGR frames -> a model's named inputs.

Takes any iterable of frames (folders are read with ``fair_edge.training.data``, the loader training uses),
so it does not depend on where they come from; the inputs are made by the code the station's CPU
backends run (``fair_edge.preprocess.ModelInputs``), so a threshold is calibrated on the numbers the station
sees.
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

import numpy as np

from fair_edge.models.registry import ModelSpec
from fair_edge.models.tensors import ANOMALY_MAP, SCORE
from fair_edge.preprocess import PreprocessConfig, host_inputs
from fair_edge.tiling import FrameTiler


def preprocess_frames(frames: Iterable[np.ndarray], model: ModelSpec, limit: int | None = None) -> dict[str, np.ndarray]:
    """Pre-process up to ``limit`` frames as the station's CPU backends do (``preprocess.host_inputs``: the same
    code, not a copy of it).

    frames: iterable of (H, W, 3) uint8 BGR (or (H, W) gray) host arrays.
    Returns {input name: (N, C, S, S) float32 array} for ``model.input_names``; DataError if N = 0.
    """
    return host_inputs(frames, model, limit)


def model_frames(frames: Iterable[np.ndarray], cfg: PreprocessConfig, limit: int | None = None) -> list[np.ndarray]:
    """Up to ``limit`` frames as the model sees them: the frames, or their tiles for a tiled model
    (``cfg.tiling``; ``limit`` then counts frames). Each item: (h, w, 3) uint8 BGR view."""
    frames = list(frames)[:limit]
    return FrameTiler(cfg.tiling, cfg.image_size).split(frames)[0]


def frame_scores(infer_batched: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
                 frames: Sequence[np.ndarray], model: ModelSpec) -> np.ndarray:
    """Decision scores of whole frames, (N,) float32: ``infer_batched(named inputs) -> named outputs``
    scores each frame, or each tile of a tiled model, then stitched (fair_edge.tiling)."""
    tiler = FrameTiler(model.preprocess.tiling, model.preprocess.image_size)
    tiles, layouts = tiler.split(list(frames))
    outputs = infer_batched(preprocess_frames(tiles, model))
    return tiler.stitch(outputs[ANOMALY_MAP][:, 0], outputs[SCORE], layouts)[1]
