"""The Gaussian blur the families smooth their anomaly maps with (LGFDR and PatchCore)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def gaussian_taps(sigma: float) -> torch.Tensor:
    """(k,) float32 normalised 1-D Gaussian, k = 2 * ceil(2 sigma) + 1 (k = 1 for sigma 0)."""
    if sigma <= 0:
        return torch.ones(1)
    radius = int(math.ceil(2 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    g = torch.exp(-0.5 * (x / sigma) ** 2)
    return (g / g.sum()).float()


class GaussianBlur(nn.Module):
    """forward(maps (B, 1, H, W) float32) -> (B, 1, H, W): the 2-D Gaussian of ``sigma`` pixels with replicate
    padding, as two 1-D Convs (columns, then rows): the same sums as the k x k kernel outer(g, g), 2k instead
    of k^2 multiplies per pixel (k = 65 at sigma 16). sigma 0 returns the maps."""

    def __init__(self, sigma: float) -> None:
        super().__init__()
        taps = gaussian_taps(sigma)
        self.pad = len(taps) // 2
        self.register_buffer("column", taps.view(1, 1, -1, 1), persistent=False)
        self.register_buffer("row", taps.view(1, 1, 1, -1), persistent=False)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        if not self.pad:
            return maps
        p = self.pad
        return F.conv2d(F.conv2d(F.pad(maps, (p, p, p, p), mode="replicate"), self.column), self.row)
