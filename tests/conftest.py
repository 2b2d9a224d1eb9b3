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


_SESSION_LOCK_DIR: list[str] = []   # the lock folder this session made (removed at its end), if it made one


def pytest_configure(config):
    """The PLC-output locks of every station a test runs go to a folder of this session's own (FAIR_EDGE_LOCK_DIR,
    inherited by the stations tests start as processes), never the machine's /run/lock/fair-edge."""
    import os
    import tempfile

    if "FAIR_EDGE_LOCK_DIR" not in os.environ:
        _SESSION_LOCK_DIR.append(tempfile.mkdtemp(prefix="fair-edge-test-locks-"))
        os.environ["FAIR_EDGE_LOCK_DIR"] = _SESSION_LOCK_DIR[0]


def pytest_unconfigure(config):
    """Remove the session's lock folder (each run used to leave one in the temporary folder)."""
    import shutil

    for folder in _SESSION_LOCK_DIR:
        shutil.rmtree(folder, ignore_errors=True)


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
    from fair_edge.models.fair.family import FairSettings
    from fair_edge.models.fair.train import TrainConfig, Trainer

    out = tmp_path_factory.mktemp("run")
    cfg = TrainConfig(batch=4, lr=1e-3, steps=60, save_every=3, log_every=1)
    trainer = Trainer(load_dataset(mvtec_dir), PreprocessConfig(image_size=32, cutoff=4.0), FairSettings(width=8), cfg,
                      out, torch.device("cpu"))
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
    from fair_edge.training.data import load_dataset
    from fair_edge.training.pixels import read_image
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
    from fair_edge.training.data import load_dataset
    from fair_edge.training.pixels import read_image

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


@pytest.fixture(scope="session")
def scored(station_bundles, conveyor_dir):
    """The plate's 12 images sorted by the fp32 station bundle's score, and a threshold between the lowest 8 and
    the highest (images[11] is NG, images[:8] pass): the multi-camera station and console tests' parts."""
    from fair_edge.station.bundles import open_scorer

    images = [cv2.imread(str(p)) for p in sorted(conveyor_dir.iterdir())]
    scorer = open_scorer(station_bundles[0], "onnxruntime")
    try:
        _, scores = scorer.infer_frames(images)
    finally:
        scorer.backend.close()
    order = np.argsort(scores)
    assert scores[order[-1]] > scores[order[7]]
    return [images[i] for i in order], float((scores[order[7]] + scores[order[-1]]) / 2)


# ----------------------------------------------------------------------------- one tiny fitted model per family
# tests/test_family_checks.py runs the same checks on every family of the registry through these fixtures,
# named "<family>_run" and "<family>_bundles"; a family added to the registry needs its pair here.
LGFDR_MODEL_KW = dict(hidden=16, heads=2, layers=1, noise_std=0.5, smooth_sigma=1.0)
PATCHCORE_MODEL_KW = dict(embed_dim=32, coreset_ratio=0.25, smooth_sigma=1.0)


def _family_bundles(final: Path, root: Path, precisions=("fp32", "fp16", "int8")) -> dict:
    """BuildResults of ``final`` per precision, calibrated on 12 synthetic frames, threshold from 12 others."""
    from fair_edge.export.build import BuildOptions, build_bundle
    from fair_edge.models.checkpoint import load_checkpoint

    from export_fixtures import make_frames

    ckpt = load_checkpoint(final)
    calib, normal = make_frames(12, seed=100), make_frames(12, seed=5)
    return {p: build_bundle(ckpt, root / p, BuildOptions(p, max_batch=4, engine=False), calib_frames=calib,
                            normal_frames=normal) for p in precisions}


@pytest.fixture(scope="session")
def fair_run(trained):
    return trained


@pytest.fixture(scope="session")
def fair_bundles(fair_run, tmp_path_factory):
    return _family_bundles(fair_run[0], tmp_path_factory.mktemp("fair-bundles"))


@pytest.fixture(scope="session")
def lgfdr_run(mvtec_dir, tmp_path_factory):
    """LGFDR (16 hidden, 1 layer, 32 px) trained 40 steps on the plate: (final.pt, run folder)."""
    import torch

    from fair_edge.models.lgfdr.model import LgfdrSettings
    from fair_edge.models.lgfdr.train import LgfdrTrainer
    from fair_edge.models.registry import ModelSpec
    from fair_edge.preprocess import PreprocessConfig
    from fair_edge.training.data import load_dataset
    from fair_edge.models.lgfdr.train import LgfdrTrainConfig

    out = tmp_path_factory.mktemp("lgfdr")
    model = ModelSpec("lgfdr", PreprocessConfig(image_size=32), LgfdrSettings(**LGFDR_MODEL_KW))
    cfg = LgfdrTrainConfig(batch=4, lr=3e-3, steps=40, save_every=20, log_every=5, seed=0)
    trainer = LgfdrTrainer(load_dataset(mvtec_dir), model, cfg, out, torch.device("cpu"))
    return trainer.run(), out


@pytest.fixture(scope="session")
def lgfdr_bundles(lgfdr_run, tmp_path_factory):
    return _family_bundles(lgfdr_run[0], tmp_path_factory.mktemp("lgfdr-bundles"))


@pytest.fixture(scope="session")
def patchcore_run(mvtec_dir, tmp_path_factory):
    """PatchCore (32-d, 25 % coreset, 32 px) fitted in one pass over the plate: (final.pt, run folder, the
    (step, total) of each progress call)."""
    import torch

    from fair_edge.models.patchcore.model import PatchcoreSettings
    from fair_edge.models.patchcore.train import FitConfig, PatchcoreFitter
    from fair_edge.models.registry import ModelSpec
    from fair_edge.preprocess import PreprocessConfig
    from fair_edge.training.data import load_dataset

    out = tmp_path_factory.mktemp("patchcore")
    model = ModelSpec("patchcore", PreprocessConfig(image_size=32), PatchcoreSettings(**PATCHCORE_MODEL_KW))
    fitter = PatchcoreFitter(load_dataset(mvtec_dir), model, FitConfig(batch=4, seed=0), out, torch.device("cpu"))
    steps = []
    final = fitter.run(lambda step, total, loss, rate: steps.append((step, total)))
    return final, out, steps


@pytest.fixture(scope="session")
def patchcore_bundles(patchcore_run, tmp_path_factory):
    return _family_bundles(patchcore_run[0], tmp_path_factory.mktemp("patchcore-bundles"))


class StalledDisk:
    """``disk_usage`` of a disk that stalls: a recorder's image writer waits in it, in its first NG image, until
    ``release`` is set, so every image recorded meanwhile waits in its queue (rows do not: they have their own
    writer; the order is fixed, no timing luck)."""

    def __init__(self) -> None:
        import threading

        self.entered, self.release = threading.Event(), threading.Event()

    def __call__(self, _path):
        from collections import namedtuple

        self.entered.set()
        assert self.release.wait(30), "the test never released the disk"
        return namedtuple("Usage", "total used free")(10**12, 0, 10**12)


def held_recorder(tmp_path: Path, queue_size: int = 64, **kw):
    """(a Recorder whose writer is held in its first NG image, seq 0, logged, until ``disk.release`` is set; disk)."""
    from fair_edge.line.recorder import Recorder
    from fair_edge.line.settings import RecordSettings
    from fair_edge.records import Frame, Verdict

    disk = StalledDisk()
    rec = Recorder(RecordSettings(dir=tmp_path, min_free_mb=1, queue_size=queue_size), disk_usage=disk, **kw)
    assert rec.record(Frame(0, 1.0, np.zeros((8, 8, 3), np.uint8), "t"), Verdict(0, 1.0, 0.9, 0.5, True, 0.0, "t"),
                      np.ones((4, 4), np.float32))
    assert disk.entered.wait(10), "the recorder's writer never took the first NG image"
    return rec, disk
