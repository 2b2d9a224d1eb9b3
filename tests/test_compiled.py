"""torch.compile of the PyTorch backend (inductor on the CPU, C++ built with g++): same numbers as eager,
compile time per batch size, and ``fair-edge bench --compile``. Both tests compile the same graph, so the
second reuses inductor's on-disk cache (a cold compile takes minutes on a busy 2-core machine)."""

import json
import os
import tempfile
import time
from pathlib import Path

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


NO_HOME = """
import os, pwd
os.environ.pop("HOME", None)
os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
def no_entry(uid):
    raise KeyError(f"getpwuid(): uid not found: {uid}")
pwd.getpwuid = no_entry          # a uid without a passwd entry (a container run with --user 54321)
import fair_edge.runtime.pytorch   # the PyTorch backends import fair_edge.runtime.compiled
from fair_edge.runtime.compiled import cache_dir
print(cache_dir())
"""


def test_without_a_home_folder_the_pytorch_backends_import_and_cache_under_tempdir():
    """HOME unset and a uid without a passwd entry: importing the PyTorch backends raised "Could not determine home
    directory" (Path.home() at import), so torch-cpu and bench crashed and `auto` recorded TensorRT as unavailable
    for that reason (a GPU station on the CPU). Now the cache folder is worked out at the first compile, falling back
    to <tempdir>/fair-edge-<uid>/inductor."""
    import os
    import subprocess
    import sys
    import tempfile

    env = {k: v for k, v in os.environ.items() if k not in ("HOME", CACHE_ENV)}
    result = subprocess.run([sys.executable, "-c", NO_HOME], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    expected = os.path.join(tempfile.gettempdir(), f"fair-edge-{os.getuid()}", "inductor")
    assert result.stdout.strip().splitlines()[-1] == expected


def test_the_cache_folder_is_the_homes_or_the_one_given(monkeypatch, tmp_path):
    from fair_edge.runtime.compiled import default_cache

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "given"))
    assert cache_dir() == tmp_path / "given"
    monkeypatch.delenv(CACHE_ENV)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_cache() == tmp_path / ".cache" / "fair-edge" / "inductor" == cache_dir()


def test_without_a_home_folder_compiled_kernels_cache_under_tempdir(monkeypatch, tmp_path):
    """The CUDA kernel's NVRTC cache had the same import-free but call-time Path.home() that raises without a home
    folder: it now falls back to this account's temp cache, as the inductor cache does."""
    from fair_edge.runtime import nvrtc_build

    def no_home():
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.delenv("FAIR_EDGE_CACHE", raising=False)
    monkeypatch.setattr(Path, "home", staticmethod(no_home))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert nvrtc_build.cache_dir() == tmp_path / f"fair-edge-{os.getuid()}" / "kernels"
