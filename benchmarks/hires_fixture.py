"""A generated high-resolution textured product with small defects, in the MVTec layout.

Normal frames: a fine woven texture (two crossed sinusoid gratings of period ~9-11 px with random
phase and a slight random rotation), brushed-metal grain (noise smeared along x), slow illumination
falloff and sensor noise, gray, ``size`` x ``size`` px.
Defects (the "real" defects of the evidence; NOT the kinds ``fair-edge tune`` plants):
  pit    a dark disc of radius 1.5-3 px (contrast -0.18..-0.30),
  fleck  a bright disc of radius 1.5-3 px (contrast +0.18..+0.30),
each at a random place away from the border, with its ground-truth mask.

    python benchmarks/hires_fixture.py OUT [--size 512] [--train 60] [--good 60] [--bad 60]
"""

from __future__ import annotations

import argparse
from pathlib import Path

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


def write_fixture(root: Path, size: int = 512, n_train: int = 60, n_good: int = 60, n_bad: int = 60,
                  seed: int = 0) -> Path:
    """Write train/good, test/good, test/{pit,fleck} and ground_truth/ under ``root``; returns root."""
    rng = np.random.default_rng(seed)
    for d in ("train/good", "test/good", "test/pit", "test/fleck", "ground_truth/pit", "ground_truth/fleck"):
        (root / d).mkdir(parents=True, exist_ok=True)

    def save(path: Path, img: np.ndarray) -> None:
        cv2.imwrite(str(path), np.round(img * 255).astype(np.uint8))

    for i in range(n_train):
        save(root / f"train/good/{i:03d}.png", normal_frame(size, rng))
    for i in range(n_good):
        save(root / f"test/good/{i:03d}.png", normal_frame(size, rng))
    for i in range(n_bad):
        kind, sign = ("pit", -1.0) if i % 2 == 0 else ("fleck", 1.0)
        img = normal_frame(size, rng)
        mask = plant_disc(img, rng, sign)
        save(root / f"test/{kind}/{i:03d}.png", img)
        cv2.imwrite(str(root / f"ground_truth/{kind}/{i:03d}_mask.png"), mask.astype(np.uint8) * 255)
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--train", type=int, default=60)
    ap.add_argument("--good", type=int, default=60)
    ap.add_argument("--bad", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    write_fixture(a.out, a.size, a.train, a.good, a.bad, a.seed)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
