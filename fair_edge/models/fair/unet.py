"""The FAIR restoration UNet.

Paper: "Frequency-aware Image Restoration for Industrial Visual Anomaly Detection" (Liu et al.).
A vanilla UNet with *additive* skip connections restores the colour image from its
high-pass component. Base width c = 128 in the paper; 64 and 32 trade accuracy for speed.
Parameters: 4,322,307 (c=32), 17,270,787 (c=64), 69,046,275 (c=128) with one input channel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

WIDTHS = (32, 64, 128)


class ConvBNReLU(nn.Sequential):
    """conv3x3 (padding 1) -> BatchNorm -> ReLU. (B, c_in, H, W) -> (B, c_out, H, W)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class EncoderBlock(nn.Sequential):
    """Two ConvBNReLU: (B, c_in, H, W) -> (B, c_out, H, W)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(ConvBNReLU(c_in, c_out), ConvBNReLU(c_out, c_out))


class DecoderStage(nn.Module):
    """Upsample x2 (bilinear, align_corners=True) + ConvBNReLU, add the skip, then two ConvBNReLU.

    forward(x (B, c_in, H, W), skip (B, c_skip, 2H, 2W)) -> (B, c_out, 2H, 2W).
    """

    def __init__(self, c_in: int, c_skip: int, c_out: int) -> None:
        super().__init__()
        self.up = ConvBNReLU(c_in, c_skip)
        self.fuse = nn.Sequential(ConvBNReLU(c_skip, c_skip), ConvBNReLU(c_skip, c_out))

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=True)
        return self.fuse(self.up(x) + skip)


class UNet(nn.Module):
    """FAIR UNet. forward: high-pass image (B, in_channels, H, W) -> restored RGB (B, 3, H, W).

    H and W must be multiples of 16 (four 2x poolings). The output is not clamped: the loss
    and the score compare it with the [0, 1] colour image directly.
    """

    def __init__(self, width: int = 128, in_channels: int = 1, out_channels: int = 3) -> None:
        super().__init__()
        c = width
        widths = (c, 2 * c, 4 * c, 8 * c, 8 * c)
        self.width, self.in_channels = width, in_channels
        self.encoder = nn.ModuleList()
        prev = in_channels
        for w in widths:
            self.encoder.append(EncoderBlock(prev, w))
            prev = w
        self.decoder = nn.ModuleList(
            [DecoderStage(8 * c, 8 * c, 4 * c), DecoderStage(4 * c, 4 * c, 2 * c),
             DecoderStage(2 * c, 2 * c, c), DecoderStage(c, c, c)]
        )
        self.head = nn.Conv2d(c, out_channels, 3, padding=1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The paper's initialisation: conv N(0, 0.02), BN weight N(1, 0.02), biases 0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.encoder):
            if i > 0:
                x = F.max_pool2d(x, 2)
            x = block(x)
            skips.append(x)
        for stage, skip in zip(self.decoder, reversed(skips[:-1])):
            x = stage(x, skip)
        return self.head(x)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
