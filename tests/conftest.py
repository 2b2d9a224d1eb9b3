"""Shared fixtures: a small generated product in MVTec layout, the tiny export model, GPU detection."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from fair_edge.models.checkpoint import Checkpoint, save_checkpoint
from fair_edge.models.fair.detector import FairDetector

from export_fixtures import MODEL, PRE, SCORING, WIDTH, trained_state  # tests/ is on sys.path (pyproject: pythonpath)


def gpu_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def pytest_collection_modifyitems(config, items):
    if gpu_available():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU with a working driver; none here")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def make_normal(rng: np.random.Generator, size: int = 48) -> np.ndarray:
    """A 'product': a bright plate with a regular grid of dark lines and mild noise (uint8 BGR)."""
    img = np.full((size, size, 3), 170, np.float32)
    img[:, ::8] -= 60
    img[::8, :] -= 60
    img += rng.normal(0, 4, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_defect(rng: np.random.Generator, size: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """A normal plate with a dark blob; returns (image, mask uint8 0/255)."""
    img = make_normal(rng, size)
    mask = np.zeros((size, size), np.uint8)
    cy, cx = rng.integers(12, size - 12, 2)
    cv2.circle(mask, (int(cx), int(cy)), int(rng.integers(5, 9)), 255, -1)
    img[mask > 0] = (30, 30, 200)
    return img, mask


@pytest.fixture(scope="session")
def mvtec_dir(tmp_path_factory) -> Path:
    """MVTec-layout product: 16 train/good, 6 test/good, 6 test/blob with masks."""
    root = tmp_path_factory.mktemp("data") / "plate"
    rng = np.random.default_rng(0)
    for sub in ("train/good", "test/good", "test/blob", "ground_truth/blob"):
        (root / sub).mkdir(parents=True)
    for i in range(16):
        cv2.imwrite(str(root / "train/good" / f"{i:03d}.png"), make_normal(rng))
    for i in range(6):
        cv2.imwrite(str(root / "test/good" / f"{i:03d}.png"), make_normal(rng))
        img, mask = make_defect(rng)
        cv2.imwrite(str(root / "test/blob" / f"{i:03d}.png"), img)
        cv2.imwrite(str(root / "ground_truth/blob" / f"{i:03d}_mask.png"), mask)
    return root


@pytest.fixture(scope="session")
def trained(mvtec_dir, tmp_path_factory):
    """A width-8, 32 x 32 model trained 60 steps on the plate: (final.pt path, run folder)."""
    import torch

    from fair_edge.training.data import load_dataset
    from fair_edge.preprocess import PreprocessConfig
    from fair_edge.models.fair.train import TrainConfig, Trainer

    out = tmp_path_factory.mktemp("run")
    cfg = TrainConfig(width=8, batch=4, lr=1e-3, steps=60, save_every=3, log_every=1)
    trainer = Trainer(load_dataset(mvtec_dir), PreprocessConfig(image_size=32, cutoff=4.0), cfg, out, torch.device("cpu"))
    return trainer.run(), out


# ----------------------------------------------------------------------------- export tests
@pytest.fixture(scope="module")
def tiny_detector() -> FairDetector:
    det = FairDetector(WIDTH, PRE.in_channels, SCORING)
    det.unet.load_state_dict(trained_state(100, 0))
    return det.eval()


@pytest.fixture(scope="module")
def tiny_ckpt_path(tmp_path_factory, tiny_detector) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "final.pt"
    ckpt = Checkpoint(MODEL, tiny_detector.unet.state_dict(), {"images": 32, "source": "synthetic stripes"})
    return save_checkpoint(path, ckpt)


# ----------------------------------------------------------------------------- station / console tests
@pytest.fixture(scope="session")
def station_bundles(trained, mvtec_dir, tmp_path_factory):
    """Two bundles of the tiny trained model (fp32 and fp16: different files, so different model ids),
    each with a threshold and calibration distribution from the held-out normal plates."""
    from fair_edge.models.checkpoint import load_checkpoint
    from fair_edge.training.data import load_dataset, read_image
    from fair_edge.export.build import BuildOptions, build_bundle

    normals = [read_image(s.path) for s in load_dataset(mvtec_dir).test if s.label == 0]
    root = tmp_path_factory.mktemp("bundles")
    return [build_bundle(load_checkpoint(trained[0]), root / precision, BuildOptions(precision=precision, engine=False),
                         normal_frames=normals).bundle for precision in ("fp32", "fp16")]


@pytest.fixture(scope="session")
def fused_station_bundle(station_bundles, mvtec_dir, tmp_path_factory):
    """The two station bundles fused into one (fair_edge.runtime.fusion), its threshold from the plate's
    held-out normals: what a hot swap to a fused bundle loads."""
    from fair_edge.runtime.fusion import build_fused_bundle
    from fair_edge.training.data import load_dataset, read_image

    normals = [read_image(s.path) for s in load_dataset(mvtec_dir).test if s.label == 0]
    return build_fused_bundle([b.root for b in station_bundles], tmp_path_factory.mktemp("fused") / "fused", normals)


@pytest.fixture(scope="session")
def conveyor_dir(mvtec_dir, tmp_path_factory) -> Path:
    """The plate's 12 test images (6 good, 6 with a blob) as a replay folder, in a fixed order."""
    from fair_edge.training.data import load_dataset

    folder = tmp_path_factory.mktemp("conveyor")
    for i, sample in enumerate(load_dataset(mvtec_dir).test):
        (folder / f"{i:03d}_{'defect' if sample.label else 'good'}.png").write_bytes(sample.path.read_bytes())
    return folder
