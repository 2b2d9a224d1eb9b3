"""Scoring colour images with a FairDetector in PyTorch (eval and the CPU/PyTorch runtime path)."""

from __future__ import annotations

import numpy as np
import torch

from fair_edge.models.fair.detector import FairDetector
from fair_edge.preprocess import HighPass, model_input


@torch.no_grad()
def score_colour(detector: FairDetector, highpass: HighPass, colour: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """colour: (B, 3, S, S) float32 RGB in [0, 1], any device (moved to the detector's device).

    Returns (anomaly maps (B, S, S) float32, scores (B,) float32) as host NumPy arrays.
    """
    device = next(detector.parameters()).device
    colour = colour.to(device, torch.float32)
    anomaly_map, score = detector(model_input(colour, highpass), colour)
    return anomaly_map[:, 0].cpu().numpy(), score.cpu().numpy()
