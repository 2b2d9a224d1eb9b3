"""Scoring colour images with a checkpoint's module in PyTorch (eval and quick checks), any family."""

from __future__ import annotations

import numpy as np
import torch

from fair_edge.models.checkpoint import Checkpoint


class TorchScorer:
    """A checkpoint's module and input maker on ``device``; call with a colour batch.

    __call__(colour (B, 3, S, S) float32 RGB in [0, 1], any device) ->
    (anomaly maps (B, S, S) float32, scores (B,) float32) host NumPy arrays.
    """

    def __init__(self, ckpt: Checkpoint, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.names = ckpt.model.input_names
        self.detector = ckpt.build_detector(self.device)
        self.make_inputs = ckpt.model.input_maker(self.device)

    @torch.no_grad()
    def __call__(self, colour: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        inputs = self.make_inputs(colour.to(self.device, torch.float32))
        anomaly_map, score = self.detector(*(inputs[n] for n in self.names))
        return anomaly_map[:, 0].float().cpu().numpy(), score.float().cpu().numpy()
