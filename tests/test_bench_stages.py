"""``fair-edge bench --mode stages``: per-stage CPU times for both high-pass methods."""

import json

import pytest
from typer.testing import CliRunner

from fair_edge.bench.run import synthetic_frames
from fair_edge.bench.stages import STAGE_NAMES, time_stages
from fair_edge.models.checkpoint import Checkpoint
from fair_edge.cli import app
from fair_edge.errors import ConfigError
from fair_edge.export.build import BuildOptions, build_bundle
from fair_edge.models.fair.family import FairSettings
from fair_edge.models.fair.scoring import ScoringConfig
from fair_edge.models.fair.unet import UNet
from fair_edge.models.registry import ModelSpec
from fair_edge.preprocess import PreprocessConfig


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    """Random width-4 UNet at 64 px with a cutoff that has a separable kernel (radius 24, rank 7)."""
    pre = PreprocessConfig(image_size=64, cutoff=8.0)
    model = ModelSpec("fair", pre, FairSettings(4, ScoringConfig(smooth=5)))
    ckpt = Checkpoint(model, UNet(4, pre.in_channels).state_dict(), {"source": "random"})
    return build_bundle(ckpt, tmp_path_factory.mktemp("bundle"), BuildOptions(engine=False)).bundle


def test_every_stage_is_timed_for_both_highpass_methods(tiny_bundle):
    frames = synthetic_frames(120, 160, count=3)
    rows = time_stages(tiny_bundle, "onnxruntime", frames, batch=2, seconds=0.3, threshold=0.5, threads=1)
    assert [r.highpass for r in rows] == ["fft", "separable"]
    for row in rows:
        assert row.batch == 2 and row.batches >= 1 and set(row.ms_per_frame) == set(STAGE_NAMES)
        assert all(row.ms_per_frame[s] > 0 for s in STAGE_NAMES)   # regions too: a benchmark row, not a timed test
        assert row.to_dict()["frames_per_s"] == pytest.approx(1000.0 / row.total_ms)


def test_stages_refuses_a_gpu_backend(tiny_bundle):
    with pytest.raises(ConfigError, match="backend onnxruntime"):
        time_stages(tiny_bundle, "torch-cpu", synthetic_frames(40, 40, count=1), 1, 0.1, 0.5)


def test_cli_stages_table_and_json(tmp_path):
    out = tmp_path / "stages.json"
    r = CliRunner().invoke(app, ["bench", "--synthetic-width", "32", "--image-size", "32", "--frames", "64x48",
                                 "--batches", "1", "--seconds", "0.3", "--threads", "1", "--mode", "stages",
                                 "--json", str(out)])
    assert r.exit_code == 0, r.output
    stages = json.loads(out.read_text())["stages"]
    assert [s["highpass"] for s in stages] == ["fft"]  # cutoff 30 at 32 px has no separable kernel: skipped, said
    assert "separable high-pass not timed" in r.output and "inference" in r.output
