"""Batched image augmentations for anomaly textures: (B, 3, H, W) float in [0, 1], on any device.

FAIR's "strong augmentation" (DRAEM's imgaug list, restated in torch) gives each texture a random
subset of three operations from ``AUGMENTATIONS``: gamma, hue, brightness, sharpness, solarize,
posterize, invert, autocontrast, equalize, rotate. Every op works on the whole batch on the
images' device and draws its per-sample parameters from the ``torch.Generator`` passed in, so a
seeded generator on that device reproduces the result and nothing is copied to the host.

Differences from the reference, on purpose: the chosen ops run in table order (the reference runs
its three picks in random order), and the PIL-style 8-bit ops (posterize, autocontrast, equalize)
quantise to 256 levels, as PIL does, but compute in float. Gray images (three equal channels)
stay gray: hue and saturation changes are no-ops on them.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from fair_edge.preprocess import GRAY_WEIGHTS_RGB

Op = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
_SMOOTH = ((1.0, 1.0, 1.0), (1.0, 5.0, 1.0), (1.0, 1.0, 1.0))  # PIL ImageFilter.SMOOTH, / 13


# ----------------------------------------------------------------------------- helpers
def uniform(lo: float, hi: float, shape: tuple[int, ...], generator: torch.Generator, device) -> torch.Tensor:
    """float32 tensor of ``shape`` drawn from U[lo, hi) with ``generator`` on ``device``."""
    return lo + (hi - lo) * torch.rand(shape, generator=generator, device=device)


def _per_sample(t: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, 1, 1), to broadcast a per-sample value over an image batch."""
    return t.view(-1, 1, 1, 1)


def affine_source(matrix: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Source points of an affine map, in centred pixel coordinates (pixels from the image centre, y down).

    matrix: (B, 2, 3) float; row 0 gives source x, row 1 source y, from an output pixel's centred
    (x, y, 1). Returns (source_x, source_y), each (B, H, W) float32 on the matrix's device.
    """
    device, b = matrix.device, matrix.shape[0]
    xc = (torch.arange(width, device=device, dtype=torch.float32) + 0.5 - width / 2.0).view(1, 1, width)
    yc = (torch.arange(height, device=device, dtype=torch.float32) + 0.5 - height / 2.0).view(1, height, 1)
    m = matrix.float().view(b, 6, 1, 1)
    source_x = (m[:, 0] * xc) + (m[:, 1] * yc + m[:, 2])  # (B, 1, W) + (B, H, 1): one full-size add
    source_y = (m[:, 3] * xc) + (m[:, 4] * yc + m[:, 5])
    return source_x, source_y


def sample_at(
    images: torch.Tensor, source_x: torch.Tensor, source_y: torch.Tensor, padding_mode: str = "zeros"
) -> torch.Tensor:
    """Bilinear samples of images (B, C, H, W) at centred pixel coordinates (B, H, W) each.
    padding_mode: grid_sample's ("zeros", "border", "reflection"). Returns (B, C, H, W), same dtype."""
    _, _, height, width = images.shape
    grid = torch.stack([source_x * (2.0 / width), source_y * (2.0 / height)], dim=-1)  # align_corners=False
    out = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode=padding_mode, align_corners=False)
    return out.to(images.dtype)


def warp_affine(images: torch.Tensor, matrix: torch.Tensor, padding_mode: str = "zeros") -> torch.Tensor:
    """Bilinear affine resampling in pixel units.

    images: (B, C, H, W) float. matrix: (B, 2, 3) float on the same device; it maps an output
    pixel's centred coordinates (x, y, 1) to the source point's centred coordinates.
    padding_mode: grid_sample's ("zeros", "border", "reflection"). Returns (B, C, H, W), same
    dtype and device.
    """
    return sample_at(images, *affine_source(matrix, *images.shape[2:]), padding_mode)


def rotate_images(images: torch.Tensor, angle_deg: torch.Tensor, padding_mode: str = "zeros") -> torch.Tensor:
    """Rotate each image about its centre. images: (B, C, H, W); angle_deg: (B,) degrees, positive
    turns the content clockwise as displayed. Corners are filled per ``padding_mode``."""
    rad = torch.deg2rad(angle_deg.float())
    cos, sin = torch.cos(rad), torch.sin(rad)
    zero = torch.zeros_like(cos)
    # output p shows the source at R(-angle) p
    matrix = torch.stack([torch.stack([cos, sin, zero], -1), torch.stack([-sin, cos, zero], -1)], dim=1)
    return warp_affine(images, matrix, padding_mode)


def _levels(images: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) in [0, 1] -> same shape int64 8-bit levels 0..255."""
    return (images * 255.0).round().clamp(0, 255).long()


def _histogram(levels: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) int64 levels -> (B, C, 256) int64 counts per channel (integer scatter: deterministic)."""
    b, c = levels.shape[:2]
    offset = (torch.arange(b * c, device=levels.device) * 256).view(b, c, 1, 1)
    counts = torch.zeros(b * c * 256, dtype=torch.int64, device=levels.device)
    counts.scatter_add_(0, (levels + offset).flatten(), torch.ones_like(levels).flatten())
    return counts.view(b, c, 256)


def _apply_lut(levels: torch.Tensor, lut: torch.Tensor) -> torch.Tensor:
    """levels (B, C, H, W) int64, lut (B, C, 256) float in [0, 1] -> (B, C, H, W) float32."""
    b, c, h, w = levels.shape
    return torch.gather(lut.float(), 2, levels.view(b, c, h * w)).view(b, c, h, w)


# ----------------------------------------------------------------------------- the ops
def gamma(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """x ** g, g ~ U(0.5, 2.0) per sample and channel (imgaug GammaContrast, per_channel)."""
    b, c = images.shape[:2]
    g = uniform(0.5, 2.0, (b, c), generator, images.device).view(b, c, 1, 1)
    return images.clamp_min(0.0) ** g


def hue(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Rotate hue about the gray axis by U(-70, 70) degrees and scale saturation by U(0.6, 1.4).

    (imgaug AddToHueAndSaturation((-50, 50)): +-50 of 255 hue steps is about +-70 degrees.)
    """
    b = images.shape[0]
    rad = torch.deg2rad(uniform(-70.0, 70.0, (b,), generator, images.device))
    sat = _per_sample(uniform(0.6, 1.4, (b,), generator, images.device))
    cos, sin = torch.cos(rad).view(b, 1, 1), torch.sin(rad).view(b, 1, 1)
    k = 1.0 / math.sqrt(3.0)
    cross = torch.tensor([[0.0, -k, k], [k, 0.0, -k], [-k, k, 0.0]], device=images.device)
    eye = torch.eye(3, device=images.device)
    matrix = cos * eye + (1.0 - cos) / 3.0 + sin * cross  # Rodrigues rotation about (1, 1, 1)
    rotated = torch.einsum("bij,bjhw->bihw", matrix, images)
    mean = rotated.mean(dim=1, keepdim=True)
    return mean + sat * (rotated - mean)


def brightness(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Y' = m Y + a with chroma kept (imgaug MultiplyAndAddToBrightness): m ~ U(0.8, 1.2), a ~ U(-30, 30)/255."""
    b = images.shape[0]
    mul = _per_sample(uniform(0.8, 1.2, (b,), generator, images.device))
    add = _per_sample(uniform(-30.0 / 255.0, 30.0 / 255.0, (b,), generator, images.device))
    r, g, bl = GRAY_WEIGHTS_RGB
    luma = r * images[:, 0:1] + g * images[:, 1:2] + bl * images[:, 2:3]
    return images + (mul - 1.0) * luma + add


def sharpness(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """PIL ImageEnhance.Sharpness, factor ~ U(0, 2): blend of the SMOOTH-filtered image and the image."""
    b, c = images.shape[:2]
    factor = _per_sample(uniform(0.0, 2.0, (b,), generator, images.device))
    kernel = torch.tensor(_SMOOTH, device=images.device) / 13.0
    smooth = F.conv2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), kernel.expand(c, 1, 3, 3), groups=c)
    return smooth + factor * (images - smooth)


def solarize(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """With probability 0.5 per sample, invert values >= t, t ~ U(32, 128)/255 (imgaug Solarize(0.5))."""
    b = images.shape[0]
    threshold = _per_sample(uniform(32.0 / 255.0, 128.0 / 255.0, (b,), generator, images.device))
    active = _per_sample(torch.rand(b, generator=generator, device=images.device) < 0.5)
    return torch.where(active & (images >= threshold), 1.0 - images, images)


def posterize(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Keep the top n of 8 bits per value, n ~ integer U{1..8} per sample (PIL posterize)."""
    b = images.shape[0]
    bits = torch.randint(1, 9, (b,), generator=generator, device=images.device)
    step = _per_sample(2.0 ** (8 - bits).float())
    levels = torch.floor(images * 255.0 + 0.5)
    return torch.floor(levels / step).mul_(step / 255.0)


def invert(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """1 - x (draws nothing)."""
    return 1.0 - images


def autocontrast(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """PIL autocontrast per channel, cutting U(0, 20)% of pixels off each end of the histogram."""
    levels = _levels(images)
    b, c, h, w = levels.shape
    cut = uniform(0.0, 0.2, (b,), generator, images.device).view(b, 1, 1) * (h * w)
    counts = _histogram(levels)
    below = torch.cumsum(counts, dim=2)  # pixels at or below each level
    above = torch.flip(torch.cumsum(torch.flip(counts, [2]), dim=2), [2])  # at or above
    lo = (below <= cut).sum(dim=2, keepdim=True).clamp(max=255)  # first level past the low cut
    hi = 255 - (above <= cut).sum(dim=2, keepdim=True).clamp(max=255)
    scale = 1.0 / (hi - lo).clamp_min(1).float()
    ramp = torch.arange(256, device=images.device).view(1, 1, 256)
    lut = ((ramp - lo).float() * scale).clamp(0.0, 1.0)
    lut = torch.where(hi > lo, lut, ramp.float() / 255.0)  # flat channel: unchanged
    return _apply_lut(levels, lut)


def equalize(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """PIL ImageOps.equalize per channel (histogram LUT on 256 levels; draws nothing)."""
    levels = _levels(images)
    counts = _histogram(levels)
    total = counts.sum(dim=2, keepdim=True)
    ramp = torch.arange(256, device=images.device).view(1, 1, 256)
    last = torch.where(counts > 0, ramp, torch.zeros_like(ramp)).amax(dim=2, keepdim=True)
    step = torch.div(total - torch.gather(counts, 2, last), 255, rounding_mode="floor")
    before = torch.cumsum(counts, dim=2) - counts
    lut = torch.div(before + torch.div(step, 2, rounding_mode="floor"), step.clamp_min(1), rounding_mode="floor")
    lut = torch.where(step > 0, lut.clamp(max=255), ramp).float() / 255.0
    return _apply_lut(levels, lut)


def rotate(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Rotate by U(-45, 45) degrees about the centre, black corners (imgaug Affine(rotate=(-45, 45)))."""
    angle = uniform(-45.0, 45.0, (images.shape[0],), generator, images.device)
    return rotate_images(images, angle, "zeros")


AUGMENTATIONS: dict[str, Op] = {
    "gamma": gamma,
    "hue": hue,
    "brightness": brightness,
    "sharpness": sharpness,
    "solarize": solarize,
    "posterize": posterize,
    "invert": invert,
    "autocontrast": autocontrast,
    "equalize": equalize,
    "rotate": rotate,
}


def random_augment(images: torch.Tensor, generator: torch.Generator, n_ops: int = 3) -> torch.Tensor:
    """Give each sample ``n_ops`` distinct ops from ``AUGMENTATIONS`` (uniformly chosen), in table order.

    images: (B, 3, H, W) float32 in [0, 1] on the generator's device. Returns the same shape,
    dtype and device, clamped to [0, 1]. Every op runs on the whole batch and ``torch.where``
    keeps it only for the samples that chose it: no host synchronisation, fixed random draws.
    """
    b = images.shape[0]
    scores = torch.rand(b, len(AUGMENTATIONS), generator=generator, device=images.device)
    chosen = scores.argsort(dim=1).argsort(dim=1) < n_ops  # (B, K): the n_ops lowest scores
    out = images.float()
    for k, op in enumerate(AUGMENTATIONS.values()):
        out = torch.where(_per_sample(chosen[:, k]), op(out, generator).clamp(0.0, 1.0), out)
    return out.to(images.dtype)
