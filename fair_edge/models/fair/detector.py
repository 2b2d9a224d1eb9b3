"""The whole FAIR inference after pre-processing: UNet restoration + scoring, as one module.

This is the graph that eval runs and that export writes to ONNX.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from fair_edge.models.fair.scoring import AnomalyScorer, ScoringConfig
from fair_edge.models.fair.unet import UNet


class FairDetector(nn.Module):
    """forward(highpass, colour) -> (anomaly_map, score).

    highpass: (B, C, S, S) float32 network input (C = 1, or 2 for sobel_xy).
    colour: (B, 3, S, S) float32 RGB in [0, 1], the resized frame.
    Returns anomaly_map (B, 1, S, S) float32 and score (B,) float32.
    """

    def __init__(self, width: int, in_channels: int, scoring: ScoringConfig = ScoringConfig()) -> None:
        super().__init__()
        self.unet = UNet(width=width, in_channels=in_channels)
        self.scorer = AnomalyScorer(scoring)

    def forward(self, highpass: torch.Tensor, colour: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        restored = self.unet(highpass)
        return self.scorer(colour, restored)


class HalfUNetDetector(nn.Module):
    """FairDetector with a float16 UNet and float32 scoring; same inputs and outputs as FairDetector."""

    def __init__(self, detector: FairDetector) -> None:
        super().__init__()
        self.unet = copy.deepcopy(detector.unet).half()
        self.scorer = detector.scorer

    def forward(self, highpass: torch.Tensor, colour: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        restored = self.unet(highpass.to(torch.float16)).to(torch.float32)
        return self.scorer(colour, restored)
