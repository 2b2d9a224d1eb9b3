"""Frames for calibration and threshold/accuracy checks: uint8 BGR frames -> a model's named inputs.

Takes any iterable of frames (folders are read with ``fair_edge.data``, the loader training uses),
so it does not depend on where they come from; the inputs are made by the model family's own
input maker, exactly as at run time on the CPU.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import torch

from fair_edge.errors import DataError
from fair_edge.models.registry import ModelSpec
from fair_edge.preprocess import frames_to_batch


def preprocess_frames(frames: Iterable[np.ndarray], model: ModelSpec, limit: int | None = None) -> dict[str, np.ndarray]:
    """Pre-process up to ``limit`` frames exactly as at run time.

    frames: iterable of (H, W, 3) uint8 BGR (or (H, W) gray) host arrays.
    Returns {input name: (N, C, S, S) float32 array} for ``model.input_names``; DataError if N = 0.
    """
    make_inputs = model.input_maker("cpu")
    parts: dict[str, list[np.ndarray]] = {name: [] for name in model.input_names}
    for i, frame in enumerate(frames):
        if limit is not None and i >= limit:
            break
        with torch.no_grad():
            inputs = make_inputs(frames_to_batch([frame], model.preprocess.image_size))
        for name in parts:
            parts[name].append(inputs[name].numpy())
    if not parts[model.input_names[0]]:
        raise DataError("no images to pre-process; pass a folder of normal images.")
    return {name: np.concatenate(arrays) for name, arrays in parts.items()}
