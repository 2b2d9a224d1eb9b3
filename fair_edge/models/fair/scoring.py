"""The anomaly map and image score: 1 - MSGMS plus a weighted CIELAB (a, b) colour difference.

Written once in PyTorch with ONNX-exportable ops (conv2d, avg_pool2d, interpolate, pow, where);
``fair-edge eval`` and the exported graph both use this module.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fair_edge.errors import ConfigError

# sRGB (D65) -> XYZ, and the D65 white point used to normalise XYZ before f(t).
_RGB_TO_XYZ = ((0.412453, 0.357580, 0.180423), (0.212671, 0.715160, 0.072169), (0.019334, 0.119193, 0.950227))
_WHITE_D65 = (0.950456, 1.0, 1.088754)


@dataclass(frozen=True)
class ScoringConfig:
    """k_color: weight of the colour term (paper 3e-4). gms_c: GMS stability constant (0.0026).
    smooth: side of the mean filter applied to the map, pixels (21). scales: MSGMS scales (2)."""

    k_color: float = 3e-4
    gms_c: float = 0.0026
    smooth: int = 21
    scales: int = 2

    def __post_init__(self) -> None:
        if self.smooth < 1 or self.smooth % 2 == 0:
            raise ConfigError(f"scoring.smooth must be an odd number of pixels >= 1; found {self.smooth}.")
        if self.scales < 1:
            raise ConfigError(f"scoring.scales must be >= 1; found {self.scales}.")
        if self.k_color < 0:
            raise ConfigError(f"scoring.k_color must be >= 0; found {self.k_color}.")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ScoringConfig":
        return cls(float(data["k_color"]), float(data["gms_c"]), int(data["smooth"]), int(data["scales"]))


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) sRGB in [0, 1] -> (B, 3, H, W) CIELAB (L in [0, 100], a and b roughly +-110)."""
    rgb = rgb.clamp(0.0, 1.0)
    linear = torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055).pow(2.4), rgb / 12.92)
    matrix = torch.tensor(_RGB_TO_XYZ, dtype=rgb.dtype, device=rgb.device)
    white = torch.tensor(_WHITE_D65, dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)
    xyz = torch.einsum("ij,bjhw->bihw", matrix, linear) / white
    eps = 216.0 / 24389.0
    f = torch.where(xyz > eps, xyz.clamp_min(eps).pow(1.0 / 3.0), (24389.0 / 27.0 * xyz + 16.0) / 116.0)
    fx, fy, fz = f[:, 0:1], f[:, 1:2], f[:, 2:3]
    return torch.cat([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], dim=1)


class AnomalyScorer(nn.Module):
    """forward(original, restored): both (B, 3, H, W) RGB, float32 in [0, 1] (restored unclamped).

    Returns (anomaly_map (B, 1, H, W) float32, score (B,) float32 = max of the map).
    """

    def __init__(self, cfg: ScoringConfig = ScoringConfig()) -> None:
        super().__init__()
        self.cfg = cfg
        prewitt = torch.tensor([[1.0, 0.0, -1.0]] * 3) / 3.0
        kernels = torch.stack([prewitt, prewitt.T])[:, None].repeat(3, 1, 1, 1)  # (6, 1, 3, 3)
        self.register_buffer("prewitt", kernels, persistent=False)

    def gradient_magnitude(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, 3, H, W) Prewitt gradient magnitude per channel (zero padding)."""
        g = F.conv2d(x, self.prewitt, padding=1, groups=3)
        gx, gy = g[:, 0::2], g[:, 1::2]
        return torch.sqrt(gx * gx + gy * gy + 1e-12)

    def gradient_term(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """1 - MSGMS, (B, 1, H, W): GMS averaged over channels and scales (full, /2, /4, ...)."""
        size = x.shape[-2:]
        total = torch.zeros_like(x[:, :1])
        for s in range(self.cfg.scales):
            xs = F.avg_pool2d(x, 2**s) if s else x
            ys = F.avg_pool2d(y, 2**s) if s else y
            gx, gy = self.gradient_magnitude(xs), self.gradient_magnitude(ys)
            gms = (2.0 * gx * gy + self.cfg.gms_c) / (gx * gx + gy * gy + self.cfg.gms_c)
            gms = gms.mean(dim=1, keepdim=True)
            if s:
                gms = F.interpolate(gms, size=size, mode="bilinear", align_corners=False)
            total = total + gms
        return 1.0 - total / self.cfg.scales

    def colour_term(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) squared CIELAB (a, b) distance."""
        diff = rgb_to_lab(x)[:, 1:] - rgb_to_lab(y)[:, 1:]
        return (diff * diff).sum(dim=1, keepdim=True)

    def forward(self, original: torch.Tensor, restored: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        original, restored = original.float(), restored.float()
        raw = self.gradient_term(original, restored) + self.cfg.k_color * self.colour_term(original, restored)
        pad = self.cfg.smooth // 2
        anomaly_map = F.avg_pool2d(raw, self.cfg.smooth, stride=1, padding=pad, count_include_pad=True)
        return anomaly_map, anomaly_map.flatten(1).amax(dim=1)
