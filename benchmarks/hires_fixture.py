"""Generated products with small defects, in the MVTec layout (``--product``, table ``PRODUCTS``).

woven (default). Normal frames: a fine woven texture (two crossed sinusoid gratings of period ~9-11 px with random
phase and a slight random rotation), brushed-metal grain (noise smeared along x), slow illumination
falloff and sensor noise, gray, ``size`` x ``size`` px.
Defects (the "real" defects of the evidence; NOT the kinds ``fair-edge tune`` plants):
  pit    a dark disc of radius 1.5-3 px (contrast -0.18..-0.30),
  fleck  a bright disc of radius 1.5-3 px (contrast +0.18..+0.30),
each at a random place away from the border, with its ground-truth mask.

concrete. Normal frames: a stochastic cement texture (noise at three scales), aggregate stones (soft
ellipses of radius 3-10 px, each its own gray), dark pores (radius 0.7-1.5 px, part of the normal
surface, so a small dark spot alone is no defect), illumination gradient and sensor noise.
Defects (not kinds ``fair-edge tune`` plants):
  crack  a dark random-walk polyline, 40-120 px long (at 256 px; scaled with ``size``), 1-2 px wide,
  spall  an irregular blob (3-5 overlapping discs of radius 5-14 px) whose texture is replaced by a
         smoother surface 0.08-0.15 darker or brighter with a soft, rough edge.

    python benchmarks/hires_fixture.py OUT [--product woven|concrete] [--size 512] [--train 60] [--good 60] [--bad 60]
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np


def normal_frame(size: int, rng: np.random.Generator) -> np.ndarray:
    """(size, size) float32 in [0, 1]: one normal surface."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    angle = rng.uniform(-0.03, 0.03)
    u = xx * np.cos(angle) + yy * np.sin(angle)
    v = -xx * np.sin(angle) + yy * np.cos(angle)
    period = rng.uniform(9.0, 11.0)
    weave = np.sin(2 * np.pi * u / period + rng.uniform(0, 6.3)) * np.sin(2 * np.pi * v / period + rng.uniform(0, 6.3))
    grain = cv2.GaussianBlur(rng.normal(0, 1, (size, size)).astype(np.float32), (0, 0), sigmaX=4.0, sigmaY=0.6)
    cy, cx = rng.uniform(0, size, 2)
    light = 1.0 - 0.15 * ((yy - cy) ** 2 + (xx - cx) ** 2) / size**2
    img = light * (0.5 + 0.07 * weave + 0.12 * grain) + rng.normal(0, 0.012, (size, size))
    return np.clip(img, 0, 1).astype(np.float32)


def plant_disc(img: np.ndarray, rng: np.random.Generator, sign: float) -> np.ndarray:
    """Plant a pit (sign -1) or fleck (+1) in ``img`` in place; returns its (H, W) bool mask."""
    size = img.shape[0]
    r = rng.uniform(1.5, 3.0)
    cy, cx = rng.uniform(24, size - 24, 2)
    yy, xx = np.mgrid[0:size, 0:size]
    dist = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
    soft = np.clip(r + 0.5 - dist, 0, 1)  # anti-aliased disc edge
    img += sign * rng.uniform(0.18, 0.30) * soft
    np.clip(img, 0, 1, out=img)
    return soft > 0.5


def _blurred_noise(size: int, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """(size, size) float32 Gaussian noise blurred with ``sigma`` px, rescaled to unit spread."""
    n = cv2.GaussianBlur(rng.normal(0, 1, (size, size)).astype(np.float32), (0, 0), sigmaX=sigma)
    return n / max(float(n.std()), 1e-6)


def concrete_frame(size: int, rng: np.random.Generator) -> np.ndarray:
    """(size, size) float32 in [0, 1]: one normal concrete surface (see the module docstring)."""
    scale = size / 256
    img = 0.55 + 0.035 * _blurred_noise(size, 1.0 * scale, rng) + 0.03 * _blurred_noise(size, 3.0 * scale, rng) \
        + 0.04 * _blurred_noise(size, 8.0 * scale, rng)
    stones = np.zeros((size, size), np.float32)
    weight = np.zeros((size, size), np.float32)
    for _ in range(int(rng.integers(30, 60) * scale**2)):
        layer = np.zeros((size, size), np.uint8)
        axes = (int(rng.uniform(3, 10) * scale), int(rng.uniform(3, 10) * scale))
        centre = (int(rng.uniform(0, size)), int(rng.uniform(0, size)))
        cv2.ellipse(layer, centre, axes, float(rng.uniform(0, 180)), 0, 360, 255, -1)
        soft = cv2.GaussianBlur(layer.astype(np.float32) / 255, (0, 0), sigmaX=0.8 * scale)
        stones += soft * rng.uniform(-0.09, 0.09)
        weight = np.maximum(weight, soft)
    img = img * (1 - 0.4 * weight) + 0.4 * weight * img.mean() + stones
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    for _ in range(int(rng.integers(20, 50) * scale**2)):
        cy, cx, r = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(0.7, 1.5) * scale
        img -= rng.uniform(0.1, 0.2) * np.clip(r + 0.5 - np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2), 0, 1)
    angle = rng.uniform(0, 2 * np.pi)
    img *= 1.0 - 0.08 * ((xx * np.cos(angle) + yy * np.sin(angle)) / size - 0.5)
    return np.clip(img + rng.normal(0, 0.01, (size, size)), 0, 1).astype(np.float32)


def plant_crack(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Plant a crack in ``img`` in place; returns its (H, W) bool mask."""
    size = img.shape[0]
    scale = size / 256
    length = rng.uniform(40, 120) * scale
    step = 3.0 * scale
    point = rng.uniform(0.25 * size, 0.75 * size, 2)
    heading = rng.uniform(0, 2 * np.pi)
    points = [point.copy()]
    for _ in range(int(length / step)):
        heading += rng.normal(0, 0.35)
        point = np.clip(point + step * np.array([np.cos(heading), np.sin(heading)]), 8, size - 9)
        points.append(point.copy())
    layer = np.zeros((size, size), np.uint8)
    cv2.polylines(layer, [np.round(np.array(points)).astype(np.int32)], False, 255,
                  int(round(rng.uniform(1, 2) * scale)), cv2.LINE_AA)
    soft = layer.astype(np.float32) / 255
    img -= rng.uniform(0.15, 0.3) * soft
    np.clip(img, 0, 1, out=img)
    return soft > 0.5


def plant_spall(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Plant a spall in ``img`` in place; returns its (H, W) bool mask."""
    size = img.shape[0]
    scale = size / 256
    layer = np.zeros((size, size), np.uint8)
    centre = rng.uniform(0.25 * size, 0.75 * size, 2)
    for _ in range(int(rng.integers(3, 6))):
        c = centre + rng.normal(0, 6 * scale, 2)
        cv2.circle(layer, (int(c[0]), int(c[1])), int(rng.uniform(5, 14) * scale), 255, -1)
    base = cv2.GaussianBlur(layer.astype(np.float32) / 255, (0, 0), sigmaX=2.0 * scale)
    rough = base + 0.25 * _blurred_noise(size, 1.5 * scale, rng) * (base > 0.05)  # a ragged edge, nothing outside
    soft = np.clip((rough - 0.5) * 4 + 0.5, 0, 1)
    surface = float(img[soft > 0.5].mean()) + rng.choice([-1.0, 1.0]) * rng.uniform(0.08, 0.15) \
        + 0.01 * _blurred_noise(size, 2.0 * scale, rng)
    img[:] = (1 - soft) * img + soft * surface
    np.clip(img, 0, 1, out=img)
    return soft > 0.5


@dataclass(frozen=True)
class Product:
    """A generated product: its normal frame and its defect kinds (name -> planter returning the mask)."""

    normal: Callable[[int, np.random.Generator], np.ndarray]
    defects: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]]


PRODUCTS: dict[str, Product] = {
    "woven": Product(normal_frame, {"pit": lambda img, rng: plant_disc(img, rng, -1.0),
                                    "fleck": lambda img, rng: plant_disc(img, rng, 1.0)}),
    "concrete": Product(concrete_frame, {"crack": plant_crack, "spall": plant_spall}),
}


def write_fixture(root: Path, size: int = 512, n_train: int = 60, n_good: int = 60, n_bad: int = 60,
                  seed: int = 0, product: str = "woven") -> Path:
    """Write train/good, test/good, test/KIND and ground_truth/KIND under ``root`` (KIND cycling over the
    product's defects); returns root."""
    spec = PRODUCTS[product]
    kinds = list(spec.defects)
    rng = np.random.default_rng(seed)
    for d in ["train/good", "test/good"] + [f"{top}/{k}" for k in kinds for top in ("test", "ground_truth")]:
        (root / d).mkdir(parents=True, exist_ok=True)

    def save(path: Path, img: np.ndarray) -> None:
        cv2.imwrite(str(path), np.round(img * 255).astype(np.uint8))

    for i in range(n_train):
        save(root / f"train/good/{i:03d}.png", spec.normal(size, rng))
    for i in range(n_good):
        save(root / f"test/good/{i:03d}.png", spec.normal(size, rng))
    for i in range(n_bad):
        kind = kinds[i % len(kinds)]
        img = spec.normal(size, rng)
        mask = spec.defects[kind](img, rng)
        save(root / f"test/{kind}/{i:03d}.png", img)
        cv2.imwrite(str(root / f"ground_truth/{kind}/{i:03d}_mask.png"), mask.astype(np.uint8) * 255)
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--product", choices=list(PRODUCTS), default="woven")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--train", type=int, default=60)
    ap.add_argument("--good", type=int, default=60)
    ap.add_argument("--bad", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    write_fixture(a.out, a.size, a.train, a.good, a.bad, a.seed, a.product)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
