"""LGFDR: local and global feature denoising reconstruction (Chen et al., The Visual Computer 2024).

Only the abstract is public: a dual-tower network learns to reconstruct the features of normal
images (a local tower and a global tower), a selective reconstruction head (SRH) fuses the two
reconstructions, and noise added to the features in training improves generalisation. Everything
else here is our reading of it; docs/lgfdr.md gives each choice and its reason.

    colour (B, 3, S, S) -> normalise -> frozen backbone -> three maps (strides 4, 8, 16)
      -> resample to the stride-8 grid (h = S/8), concatenate (C channels), standardise per channel
      -> [training: + N(0, noise_std^2)]
      -> local tower (3x3 convs)  \\
      -> global tower (attention)  -> SRH: per-location gate g, fused = g * local + (1 - g) * global
      -> per scale: 1 - cos(features, fused) -> upsample to S x S -> mean over scales
      -> Gaussian smoothing -> anomaly_map (B, 1, S, S); score = max of the map (B,)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from fair_edge.errors import ConfigError
from fair_edge.models.backbones import BACKBONES
from fair_edge.models.family import refuse_unknown_settings
from fair_edge.models.kernels import GaussianBlur


@dataclass(frozen=True)
class LgfdrSettings:
    """backbone: the frozen ImageNet backbone (``backbones.BACKBONES``). hidden: channels inside both towers.
    heads: attention heads of the global tower; hidden must divide by it. layers: transformer layers of the
    global tower (4 won on eight of nine development products but lost on ELPV poly, so the default stays 2:
    BENCHMARKS.md; checkpoints keep the layers they were fitted with). noise_std: Gaussian feature noise in training, in units of each channel's standard deviation
    over the training images. smooth_sigma: Gaussian smoothing of the map, in pixels."""

    backbone: str = "efficientnet_lite0"
    hidden: int = 128
    heads: int = 4
    layers: int = 2
    noise_std: float = 0.5
    smooth_sigma: float = 4.0

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ConfigError(f"backbone must be one of {', '.join(BACKBONES)}; found {self.backbone!r}.")
        if self.heads < 1 or self.layers < 1:  # before ``hidden % heads``, which heads=0 would divide by
            raise ConfigError(f"heads and layers must be >= 1; found heads={self.heads}, layers={self.layers}.")
        if self.hidden < 8 or self.hidden % self.heads:
            raise ConfigError(f"hidden must be >= 8 and divisible by heads ({self.heads}); found {self.hidden}.")
        if not 0.0 <= self.noise_std <= 10.0:
            raise ConfigError(f"feature noise must be in [0, 10] (channel standard deviations); found {self.noise_std}.")
        if not 0.0 <= self.smooth_sigma <= 32.0:
            raise ConfigError(f"smooth_sigma must be in [0, 32] pixels; found {self.smooth_sigma}.")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "LgfdrSettings":
        """Inverse of ``to_dict``; a field the dict lacks takes the default, a key that is no field (a newer
        release's setting) is a ConfigError naming it (``refuse_unknown_settings``), never dropped."""
        fields = asdict(cls())
        refuse_unknown_settings("LGFDR", data, fields)
        return cls(**{k: data[k] for k in fields if k in data})


class LocalTower(nn.Module):
    """Small receptive field: 1x1 in, two 3x3 conv-BN-ReLU, 1x1 out. (B, C, h, w) -> (B, C, h, w)."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(channels, hidden, 1)]
        for _ in range(2):
            layers += [nn.Conv2d(hidden, hidden, 3, padding=1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU()]
        self.body = nn.Sequential(*layers, nn.Conv2d(hidden, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class AttentionLayer(nn.Module):
    """Pre-norm transformer layer over tokens (B, N, D): x + MHSA(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.scale = heads, 1.0 / math.sqrt(dim // heads)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        weights = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * self.scale, dim=-1)
        return self.proj(torch.matmul(weights, v).transpose(1, 2).reshape(b, n, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class GlobalTower(nn.Module):
    """Every location sees the whole map: 1x1 in, 2x2 average pool, convolutional position encoding,
    ``layers`` attention layers over the (h/2 * w/2) tokens, 2x bilinear upsampling, 1x1 out."""

    def __init__(self, channels: int, hidden: int, heads: int, layers: int) -> None:
        super().__init__()
        self.inp = nn.Conv2d(channels, hidden, 1)
        self.pos = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.blocks = nn.ModuleList(AttentionLayer(hidden, heads) for _ in range(layers))
        self.out = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.avg_pool2d(self.inp(x), 2)
        y = y + self.pos(y)
        b, d, h, w = y.shape
        tokens = y.flatten(2).transpose(1, 2)
        for block in self.blocks:
            tokens = block(tokens)
        y = tokens.transpose(1, 2).reshape(b, d, h, w)
        return self.out(F.interpolate(y, scale_factor=2.0, mode="bilinear", align_corners=False))


class SelectiveHead(nn.Module):
    """SRH: a per-location gate g in (0, 1) from both reconstructions; fused = g * local + (1 - g) * global."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.gate = nn.Sequential(nn.Conv2d(2 * channels, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, 1, 1), nn.Sigmoid())

    def forward(self, local: torch.Tensor, glob: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        g = self.gate(torch.cat([local, glob], dim=1))
        return g * local + (1.0 - g) * glob, g


class LgfdrScorer(nn.Module):
    """Per-scale 1 - cosine distance, upsampled to S x S, averaged, Gaussian-smoothed; score = map max.

    features, fused: (B, C, h, w) float32 split into the scale groups ``channels``.
    Returns anomaly_map (B, 1, S, S) and score (B,) float32.
    """

    def __init__(self, channels: tuple[int, ...], image_size: int, sigma: float) -> None:
        super().__init__()
        self.channels, self.size = tuple(channels), image_size
        self.blur = GaussianBlur(sigma)

    def forward(self, features: torch.Tensor, fused: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps = []
        for f, r in zip(torch.split(features, self.channels, 1), torch.split(fused, self.channels, 1)):
            d = 1.0 - F.cosine_similarity(f, r, dim=1, eps=1e-6).unsqueeze(1)
            maps.append(F.interpolate(d, size=(self.size, self.size), mode="bilinear", align_corners=False))
        amap = self.blur(torch.stack(maps, 0).mean(0))
        return amap, amap.flatten(1).amax(1)


class LgfdrDetector(nn.Module):
    """forward(colour (B, 3, S, S) float32 RGB in [0, 1]) -> (anomaly_map (B, 1, S, S), score (B,)) float32.

    Buffers ``feature_mean`` / ``feature_std`` (C,) standardise the concatenated features; the trainer sets
    them from the training images. ``net_dtype`` float16 makes the FP16 graph (network in float16,
    normalisation, standardisation and scoring in float32).
    """

    def __init__(self, settings: LgfdrSettings, image_size: int) -> None:
        super().__init__()
        spec = BACKBONES[settings.backbone]
        self.channels = spec.channels
        c = sum(spec.channels)
        self.register_buffer("pixel_mean", torch.tensor(spec.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(spec.std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("feature_mean", torch.zeros(c))
        self.register_buffer("feature_std", torch.ones(c))
        self.backbone = spec.build().eval().requires_grad_(False)
        self.local_tower = LocalTower(c, settings.hidden)
        self.global_tower = GlobalTower(c, settings.hidden, settings.heads, settings.layers)
        self.srh = SelectiveHead(c, settings.hidden)
        self.scorer = LgfdrScorer(spec.channels, image_size, settings.smooth_sigma)
        self.net_dtype = torch.float32

    def train(self, mode: bool = True) -> "LgfdrDetector":
        super().train(mode)
        self.backbone.eval()  # frozen: batch-norm statistics stay ImageNet's
        return self

    def _net(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` in the network's dtype (no Cast node in the FP32 graph)."""
        return x if x.dtype == self.net_dtype else x.to(self.net_dtype)

    @staticmethod
    def _fp32(x: torch.Tensor) -> torch.Tensor:
        return x if x.dtype == torch.float32 else x.float()

    def features(self, colour: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) RGB [0, 1] -> standardised features (B, C, S/8, S/8) float32 on the stride-8 grid."""
        x = self._net((colour - self.pixel_mean) / self.pixel_std)
        f4, f8, f16 = (self._fp32(f) for f in self.backbone(x))
        grid = f8.shape[-2:]
        f = torch.cat([F.avg_pool2d(f4, 2), f8, F.interpolate(f16, size=grid, mode="bilinear", align_corners=False)], 1)
        return (f - self.feature_mean.view(1, -1, 1, 1)) / self.feature_std.view(1, -1, 1, 1)

    def reconstruct(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, C, h, w) -> (fused, local, global) reconstructions of the clean features, float32."""
        x = self._net(features)
        local, glob = self.local_tower(x), self.global_tower(x)
        fused, _ = self.srh(local, glob)
        return self._fp32(fused), self._fp32(local), self._fp32(glob)

    def forward(self, colour: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.features(colour)
        fused, _, _ = self.reconstruct(features)
        return self.scorer(features, fused)
