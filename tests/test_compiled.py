"""torch.compile of the PyTorch backend (inductor on the CPU, C++ built with g++): same numbers as eager,
compile time per batch size, and ``fair-edge bench --compile``. Both tests compile the same graph, so the
second reuses inductor's on-disk cache (a cold compile takes minutes on a busy 2-core machine)."""

import json
import time

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fair_edge.bench.run import synthetic_bundle, synthetic_frames, synthetic_model
from fair_edge.cli import app
from fair_edge.runtime.compiled import CACHE_ENV, cache_dir
from fair_edge.runtime.backends import CpuPreprocessor
from fair_edge.runtime.pytorch import TorchBackend


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return synthetic_bundle(tmp_path_factory.mktemp("bundle"), synthetic_model("fair", 32, 32), max_batch=2)


def test_compiled_backend_matches_eager_and_times_each_shape(bundle, monkeypatch):
    monkeypatch.delenv(CACHE_ENV, raising=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        check_compiled_backend(bundle)
    finally:
        torch.set_num_threads(threads)


def check_compiled_backend(bundle):
    inputs = CpuPreprocessor(bundle.model)(synthetic_frames(48, 64, count=1))
    compiled = TorchBackend(bundle.weights_path, torch.device("cpu"), compile=True)
    eager = TorchBackend(bundle.weights_path, torch.device("cpu"))
    start = time.perf_counter()
    out = compiled.infer(inputs)
    first_s = time.perf_counter() - start
    timed = compiled.compile_seconds
    compiled.infer(inputs)
    ref = eager.infer(inputs)
    assert list(timed) == [1] and 0 < timed[1] <= first_s   # the first call of the shape, inside our clock
    assert compiled.compile_seconds == timed                 # timed once per shape: the second call adds nothing
    assert eager.compile_seconds == {}
    for name in ("anomaly_map", "score"):
        np.testing.assert_allclose(out[name], ref[name], atol=1e-5)
    assert str(cache_dir()).endswith("fair-edge/inductor") and any(cache_dir().iterdir())


def test_bench_compile_flag(tmp_path):
    out = tmp_path / "bench.json"
    r = CliRunner().invoke(app, ["bench", "--synthetic-width", "32", "--image-size", "32", "--frames", "64x48",
                                 "--batches", "1", "--seconds", "0.3", "--warmup", "0", "--threads", "1",
                                 "--backend", "torch-cpu", "--mode", "compute", "--compile", "--json", str(out)])
    assert r.exit_code == 0, r.output
    report = json.loads(out.read_text())
    assert report["settings"]["compile"] is True and report["compile_seconds"]["1"] > 0
    backend = next(row for row in report["results"] if row["role"] == "backend")
    assert backend["backend"] == "torch-cpu eager compiled" and "torch.compile" in backend["detail"]
    assert next(row for row in report["results"] if row["role"] == "baseline")["backend"] == "torch-cpu eager"
    assert "torch.compile batch 1" in r.output
