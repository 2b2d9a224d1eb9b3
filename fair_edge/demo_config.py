"""The built-in demo's settings: small enough to train on a 2-core CPU in a few minutes.

Data: ELPV mono solar cells (package `elpv-dataset`, CC BY-NC-SA 4.0, Deitsch et al.), probability-0
cells for training and the good test split, probability-1 cells as defects.
Model: width 32 at 128 x 128 pixels; the Butterworth cutoff is scaled with the image (D0 = 30 at
256 px keeps the same spatial frequency as D0 = 15 at 128 px).
"""

from __future__ import annotations

from fair_edge.preprocess import PreprocessConfig
from fair_edge.train import TrainConfig

DEMO_DATA = "elpv:mono"
DEMO_WIDTH = 32
DEMO_IMAGE_SIZE = 128
DEMO_STEPS = 300
DEMO_LR = 1e-3


def demo_preprocess() -> PreprocessConfig:
    return PreprocessConfig(image_size=DEMO_IMAGE_SIZE, filter="butterworth", cutoff=15.0, order=2)


def demo_train_config(steps: int) -> TrainConfig:
    return TrainConfig(width=DEMO_WIDTH, batch=8, lr=DEMO_LR, steps=steps, save_every=100, log_every=10, seed=0)
