"""Training loss: MSE + (1 - SSIM), SSIM with an 11x11 Gaussian window (sigma 1.5)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _gaussian_window(size: int, sigma: float, channels: int, device, dtype) -> torch.Tensor:
    x = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2.0
    g = torch.exp(-(x * x) / (2 * sigma * sigma))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()


def ssim(x: torch.Tensor, y: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Mean SSIM of two (B, C, H, W) images with values in [0, 1] (constants for data range 1)."""
    c = x.shape[1]
    w = _gaussian_window(window, sigma, c, x.device, x.dtype)
    pad = window // 2
    mu_x = F.conv2d(x, w, padding=pad, groups=c)
    mu_y = F.conv2d(y, w, padding=pad, groups=c)
    var_x = F.conv2d(x * x, w, padding=pad, groups=c) - mu_x * mu_x
    var_y = F.conv2d(y * y, w, padding=pad, groups=c) - mu_y * mu_y
    cov = F.conv2d(x * y, w, padding=pad, groups=c) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2))
    return s.mean()


def restoration_loss(restored: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MSE + (1 - SSIM) between (B, 3, H, W) restored and clean colour images; a scalar tensor."""
    restored, target = restored.float(), target.float()
    return F.mse_loss(restored, target) + (1.0 - ssim(restored, target))
