"""benchmarks/gpu_evidence.py --dry-run: every step of the GPU run, on the CPU with tiny sizes, parses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import gpu_available

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_evidence.py"


def test_dry_run_completes_every_step(mvtec_dir, tmp_path):
    out = tmp_path / "evidence"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(out), "--data", str(mvtec_dir),
                           "--budget", "1200"],  # the caps, not the 9-minute budget, bound a loaded CI machine
                          capture_output=True, text=True, timeout=900)
    report = json.loads((out / "gpu_evidence.json").read_text())
    status = {s["name"]: s["status"] for s in report["steps"]}
    assert proc.returncode == 0, f"{status}\n{proc.stdout[-3000:]}\n{proc.stderr[-2000:]}"
    assert list(status) == ["gpu_tests", "preprocess", "station", "station_compile", "train_speed", "elpv", "families",
                            "family_engines"]
    results = {s["name"]: s["result"] for s in report["steps"]}
    assert results["gpu_tests"]["passed"] == 0 and results["gpu_tests"]["skipped"] > 0  # no GPU here: skipped, not passed
    assert results["station"]["32"]["results"] and results["station_compile"]["32"]["compile_seconds"]["1"] > 0
    assert 0.0 <= results["elpv"]["image_auroc"] <= 1.0
    assert set(results["families"]) == {"lgfdr", "patchcore"} == set(results["family_engines"])
    assert results["families"]["patchcore"]["image_auroc"] > 0.9  # red blobs on a gray plate, one-pass fit
    assert results["family_engines"]["patchcore"]["bundle"]["facts"]["memory_bank"]["rows"] > 0
    markdown = (out / "gpu_evidence.md").read_text()
    assert "| station loop c=32 backend torch-cpu" in markdown and "image AUROC" in markdown
    assert report["dry_run"] and report["total_s"] < report["budget_s"]
    assert "family lgfdr" in markdown and "family patchcore fp16 (no engine) onnxruntime batch 1" in markdown


@pytest.mark.skipif(gpu_available(), reason="with a GPU this would start the 9-minute run")
def test_refuses_to_run_without_a_gpu(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2 and "--dry-run" in proc.stderr


def test_the_tiled_preprocessing_row_is_reported_beside_the_whole_frame_one(tmp_path):
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import gpu_evidence
    finally:
        sys.path.pop(0)
    row = {"batch": 16, "unfused_us": 900.0, "fused_host_us": 120.0, "fused_device_us": 30.0,
           "tiled": {"tile": 512, "tiles": 12, "host_cut_us": 400.0, "in_launch_us": 100.0}}
    (tmp_path / "preprocess.json").write_text(json.dumps({"frames": "1920x1080", "rows": [row]}))
    _, rows = gpu_evidence.collect_preprocess(gpu_evidence.Context(False, tmp_path, {}))
    assert rows[1] == ("| tiled pre-processing 1920x1080 batch 16, 12 tiles of 512 px | host-cut 400.0 us/frame, "
                       "cropped in the launch 100.0 us/frame (4.0x) |")
