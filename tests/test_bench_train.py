"""benchmarks/bench_train.py runs end to end on the CPU with a tiny model and writes its JSON report."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from conftest import make_normal

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_train.py"


def load_script():
    spec = importlib.util.spec_from_file_location("bench_train", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def one_thread():
    """One intra-op thread: on a shared 2-core runner, spinning threads make tiny steps take seconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_bench_train_cpu_smoke(tmp_path: Path, one_thread) -> None:
    folder = tmp_path / "normal"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        cv2.imwrite(str(folder / f"{i}.png"), make_normal(rng, 40))
    out = tmp_path / "bench.json"
    argv = ["--data", str(folder), "--widths", "8", "--image-size", "32", "--batch", "4", "--steps", "2",
            "--warmup", "1", "--device", "cpu", "--workers", "1", "--out", str(out)]

    assert load_script().main(argv) == 0

    report = json.loads(out.read_text())
    assert report["argv"][1:] == argv
    assert report["environment"]["device"] == "cpu" and report["environment"]["torch"]
    assert report["settings"]["widths"] == [8] and report["settings"]["workers"] == 1
    (row,) = report["results"]
    assert row["width"] == 8 and row["batch"] == 4
    for pipeline in ("device_side", "cpu_side", "loader_only"):   # images/s = steps x batch / the timed seconds
        timing = row[pipeline]
        assert timing["steps"] == 2 and timing["seconds"] > 0
        assert timing["images_per_s"] == pytest.approx(2 * 4 / timing["seconds"]), pipeline
    assert np.isfinite(row["device_side"]["last_loss"]) and np.isfinite(row["cpu_side"]["last_loss"])
    assert row["ratio_device_over_cpu"] == pytest.approx(row["device_side"]["images_per_s"]
                                                        / row["cpu_side"]["images_per_s"])
