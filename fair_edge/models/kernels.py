"""Blur kernels the families smooth their anomaly maps with (LGFDR and PatchCore: a Gaussian)."""

from __future__ import annotations

import math

import torch


def gaussian_kernel(sigma: float) -> torch.Tensor:
    """(1, 1, k, k) float32 normalised Gaussian, k = 2 * ceil(2 sigma) + 1 (k = 1 for sigma 0)."""
    if sigma <= 0:
        return torch.ones(1, 1, 1, 1)
    radius = int(math.ceil(2 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    g = torch.exp(-0.5 * (x / sigma) ** 2)
    k = torch.outer(g, g)
    return (k / k.sum()).float()[None, None]
