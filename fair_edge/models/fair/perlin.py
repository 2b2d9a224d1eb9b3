"""Batched 2D Perlin (gradient) noise in PyTorch, generated on the device of the generator passed in.

FAIR (after DRAEM) shapes its local anomalies with thresholded Perlin noise whose period is drawn
per sample and per axis and whose field is rotated by a random angle. Here the rotation is exact:
the noise is *evaluated* at rotated pixel coordinates instead of resampling a rotated image, so no
corner is left empty and no interpolation blurs the field. The gradient lattice is larger than
the span any sample's rotated coordinates cover, so the field never repeats inside an image, and
an image side need not be a multiple of the period (coordinates are continuous, not tiled).

Units: ``periods`` are noise cells per image side (DRAEM's "scale", 2^0 .. 2^5 in FAIR);
angles are degrees, positive turns the field clockwise as displayed (y axis pointing down).
"""

from __future__ import annotations

import math

import torch

from fair_edge.errors import ConfigError


def _fade(t: torch.Tensor) -> torch.Tensor:
    """Perlin's quintic 6t^5 - 15t^4 + 10t^3 (zero first and second derivatives at 0 and 1)."""
    return t * t * t * (t * (t * 6.0 - 15.0) + 10.0)


def lattice_size(shape: tuple[int, int], max_period: int) -> int:
    """Side of the periodic gradient lattice covering every rotated coordinate of a ``shape`` image.

    Coordinates reach period * (half diagonal) / (shorter side) cells from the centre on each side;
    with the centre at side / 2 they and their +1 neighbours stay inside [0, side - 1].
    """
    height, width = shape
    reach = max_period * math.hypot(height, width) / (2.0 * min(height, width))
    return 2 * int(math.ceil(reach)) + 4


def perlin_noise(
    shape: tuple[int, int],
    periods: torch.Tensor,
    angle_deg: torch.Tensor,
    generator: torch.Generator,
    max_period: int,
) -> torch.Tensor:
    """One rotated Perlin noise field per sample.

    shape: (H, W) of the output, pixels, any positive sizes.
    periods: (B, 2) float or int, cells across the image along (y, x); all <= ``max_period``.
    angle_deg: (B,) float, rotation of each field, degrees. Both on the generator's device.
    generator: torch.Generator on that device; it draws the gradient directions.
    max_period: Python int bound on ``periods`` (sizes the lattice without reading the device).
    Returns (B, 1, H, W) float32 on the generator's device, about zero mean, values in about
    [-1, 1] (DRAEM's scaling by sqrt(2)).
    """
    height, width = shape
    if periods.ndim != 2 or periods.shape[1] != 2 or angle_deg.shape != periods.shape[:1]:
        raise ConfigError(
            f"perlin_noise expects periods (B, 2) and angle_deg (B,); found {tuple(periods.shape)} and "
            f"{tuple(angle_deg.shape)}."
        )
    device, batch = periods.device, periods.shape[0]
    side = lattice_size(shape, max_period)
    theta = torch.rand(batch * side * side, generator=generator, device=device) * (2.0 * math.pi)
    grad_x, grad_y = torch.cos(theta), torch.sin(theta)  # unit gradients, flat (B * L * L,)

    # Lattice coordinates of rotated, centred pixel coordinates: the field at p is the unrotated
    # field at R(-angle) p. Built from (B, H, 1) and (B, 1, W) parts: one full-size add per axis.
    yc = (torch.arange(height, device=device, dtype=torch.float32) + 0.5 - height / 2.0).view(1, height, 1)
    xc = (torch.arange(width, device=device, dtype=torch.float32) + 0.5 - width / 2.0).view(1, 1, width)
    rad = torch.deg2rad(angle_deg.float()).view(batch, 1, 1)
    cos, sin = torch.cos(rad), torch.sin(rad)
    per_y = periods[:, 0].float().view(batch, 1, 1) / height
    per_x = periods[:, 1].float().view(batch, 1, 1) / width
    ly = (cos * per_y * yc + side / 2.0) - (sin * per_y) * xc
    lx = (sin * per_x * yc + side / 2.0) + (cos * per_x) * xc

    # The lattice is big enough that floor(l) and floor(l) + 1 stay inside it: no wrapping needed.
    y0, x0 = torch.floor(ly), torch.floor(lx)
    fy, fx = ly - y0, lx - x0
    base = (torch.arange(batch, device=device) * (side * side)).view(batch, 1, 1)
    i00 = (y0.long() * side).add_(x0.long()).add_(base)
    fx1, fy1 = fx - 1.0, fy - 1.0

    def corner(index: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
        return torch.take(grad_x, index) * dx + torch.take(grad_y, index) * dy

    n00, n01 = corner(i00, fx, fy), corner(i00 + 1, fx1, fy)
    n10, n11 = corner(i00 + side, fx, fy1), corner(i00 + (side + 1), fx1, fy1)
    u, v = _fade(fx), _fade(fy)
    top, bottom = torch.lerp(n00, n01, u), torch.lerp(n10, n11, u)
    return torch.lerp(top, bottom, v).mul_(math.sqrt(2.0)).unsqueeze(1)
