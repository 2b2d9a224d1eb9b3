"""Export-test helpers: synthetic product images and a tiny, briefly trained model (width 8, 32x32).

The fixtures ``tiny_detector`` and ``tiny_ckpt_path`` (tests/conftest.py) build on ``trained_state``,
which is cached per process, so every module that uses them shares one training run.
"""

from __future__ import annotations

import functools
from pathlib import Path

import cv2
import numpy as np
import torch

from fair_edge.models.fair.detector import FairDetector
from fair_edge.models.fair.losses import restoration_loss
from fair_edge.preprocess import HighPass, PreprocessConfig, frames_to_batch, model_input
from fair_edge.models.fair.family import FairSettings
from fair_edge.models.fair.scoring import ScoringConfig
from fair_edge.models.registry import ModelSpec

SIZE = 32
WIDTH = 8
PRE = PreprocessConfig(image_size=SIZE, filter="butterworth", cutoff=4.0, order=2)
SCORING = ScoringConfig(smooth=5)
MODEL = ModelSpec("fair", PRE, FairSettings(WIDTH, SCORING))


def make_frames(n: int, seed: int, defect: bool = False, size: int = 40) -> list[np.ndarray]:
    """Synthetic parts: (size, size, 3) uint8 BGR stripes with noise; defects add a coloured blob."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    frames = []
    for _ in range(n):
        phase = rng.uniform(0, 2 * np.pi)
        base = 0.5 + 0.3 * np.sin(xx / 3.0 + phase)
        img = np.stack([base * 0.6, base * 0.8, base], axis=-1) + rng.normal(0, 0.02, (size, size, 3))
        if defect:
            cy, cx = rng.integers(8, size - 8, 2)
            r = rng.integers(3, 6)
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            img[mask] = rng.uniform(0, 1, 3)
        frames.append(np.clip(img * 255, 0, 255).astype(np.uint8))
    return frames


def write_pngs(folder: Path, frames: list[np.ndarray]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(frames):
        cv2.imwrite(str(folder / f"{i:03d}.png"), f)
    return folder


@functools.lru_cache(maxsize=None)
def trained_state(steps: int, seed: int) -> dict:
    return {k: v.clone() for k, v in train_tiny(steps, seed).unet.state_dict().items()}


def train_tiny(steps: int = 100, seed: int = 0) -> FairDetector:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: extra threads only contend on the 2-core CI machines
    try:
        return _train(steps, seed)
    finally:
        torch.set_num_threads(threads)


def _train(steps: int, seed: int) -> FairDetector:
    torch.manual_seed(seed)
    det = FairDetector(WIDTH, PRE.in_channels, SCORING)
    colour = frames_to_batch(make_frames(32, seed=100), SIZE)
    hp = model_input(colour, HighPass(PRE))
    opt = torch.optim.Adam(det.unet.parameters(), lr=3e-3)
    det.train()
    for step in range(steps):
        idx = torch.randint(0, len(colour), (8,))
        loss = restoration_loss(det.unet(hp[idx]), colour[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return det.eval()
