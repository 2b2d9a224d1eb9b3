"""benchmarks/gpu_evidence.py --dry-run: every step of the GPU run, on the CPU with tiny sizes, parses."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from sklearn.metrics import roc_auc_score

from conftest import gpu_available
from fair_edge.models.registry import FAMILIES

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_evidence.py"


def load_script():
    """benchmarks/gpu_evidence.py as a module (its CPU-side pieces: commands and parsers)."""
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import gpu_evidence
    finally:
        sys.path.pop(0)
    return gpu_evidence


def test_dry_run_completes_every_step(mvtec_dir, tmp_path):
    out = tmp_path / "evidence"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(out), "--data", str(mvtec_dir),
                           "--budget", "1200"],  # the caps, not the 9-minute budget, bound a loaded CI machine
                          capture_output=True, text=True, timeout=900)
    report = json.loads((out / "gpu_evidence.json").read_text())
    status = {s["name"]: s["status"] for s in report["steps"]}
    assert proc.returncode == 0, f"{status}\n{proc.stdout[-3000:]}\n{proc.stderr[-2000:]}"
    assert list(status) == ["gpu_tests", "preprocess", "station", "station_compile", "train_speed", "elpv", "families",
                            "family_engines", "cameras"]
    results = {s["name"]: s["result"] for s in report["steps"]}
    assert results["gpu_tests"]["passed"] == 0 and results["gpu_tests"]["skipped"] > 0  # no GPU here: skipped, not passed
    assert results["station"]["32"]["results"] and results["station_compile"]["32"]["compile_seconds"]["1"] > 0
    # each reported AUROC is the one of the scores its eval wrote, recomputed here
    runs = {"elpv": out / "elpv-w32", **{f: out / f"family-{f}" for f in results["families"]}}
    reported = {"elpv": results["elpv"], **results["families"]}
    for name, run in runs.items():
        rows = list(csv.DictReader((run / "eval" / "scores.csv").open()))
        labels, scores = [int(r["label"]) for r in rows], [float(r["score"]) for r in rows]
        one_tie = 0.5 / (sum(labels) * (len(labels) - sum(labels)))  # scores.csv keeps 6 decimals: a tie at most
        assert reported[name]["image_auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=one_tie), name
    others = sorted(set(FAMILIES) - {"fair"})
    assert others == sorted(results["families"]) == sorted(results["family_engines"])  # every registered family
    assert results["families"]["patchcore"]["image_auroc"] > 0.9  # red blobs on a gray plate, one-pass fit
    assert results["family_engines"]["patchcore"]["bundle"]["facts"]["memory_bank"]["rows"] > 0
    markdown = (out / "gpu_evidence.md").read_text()
    assert "| station loop c=32 backend torch-cpu" in markdown and "image AUROC" in markdown
    assert report["dry_run"] and report["total_s"] < report["budget_s"]
    assert all(f"family {f}" in markdown for f in others) and "none registered besides FAIR" not in markdown
    assert "family patchcore fp16 (no engine) onnxruntime batch 1" in markdown
    # step 9: the cell against the stations, on the synthetic FAIR bundle and on step 8's PatchCore bundle
    for key in ("torch", "engine"):
        rows = results["cameras"][key]["cameras"]["rows"]
        assert [(r["cameras"], r["arrangement"]) for r in rows] == [(2, "cell"), (2, "stations")]
    assert "| 2 cameras FAIR c=32 torch-cpu eager cell (1 model(s), max batch 2" in markdown
    assert "| 2 cameras PatchCore engine onnxruntime stations (2 model(s), max batch 1" in markdown


@pytest.mark.skipif(gpu_available(), reason="with a GPU this would start the 9-minute run")
def test_refuses_to_run_without_a_gpu(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2 and "--dry-run" in proc.stderr


def test_the_tiled_preprocessing_row_is_reported_beside_the_whole_frame_one(tmp_path):
    gpu_evidence = load_script()
    row = {"batch": 16, "unfused_us": 900.0, "fused_host_us": 120.0, "fused_device_us": 30.0,
           "tiled": {"tile": 512, "tiles": 12, "host_cut_us": 400.0, "in_launch_us": 100.0}}
    (tmp_path / "preprocess.json").write_text(json.dumps({"frames": "1920x1080", "rows": [row]}))
    _, rows = gpu_evidence.collect_preprocess(gpu_evidence.Context(False, tmp_path, {}))
    assert rows[1] == ("| tiled pre-processing 1920x1080 batch 16, 12 tiles of 512 px | host-cut 400.0 us/frame, "
                       "cropped in the launch 100.0 us/frame (4.0x) |")


def test_the_camera_rows_give_the_cell_its_ratio_to_the_stations(tmp_path):
    gpu_evidence = load_script()
    row = {"cameras": 4, "backend": "tensorrt", "models": 1, "max_batch": 4, "mean_batch": 3.5, "fps": 900.0,
           "p50_ms": 4.0, "p99_ms": 6.0}
    rows = [dict(row, arrangement="cell", vs_stations=1.5),
            dict(row, arrangement="stations", models=4, max_batch=1, mean_batch=1.0, fps=600.0, vs_stations=None)]
    (tmp_path / "cameras_engine.json").write_text(json.dumps({"cameras": {"backend": "TensorRT", "rows": rows}}))
    results, lines = gpu_evidence.collect_cameras(gpu_evidence.Context(False, tmp_path, {}))
    assert list(results) == ["engine"]   # the torch-cuda run left no file: no row, no error
    assert lines == ["| 4 cameras PatchCore engine tensorrt cell (1 model(s), max batch 4, mean 3.50) | 900.0 "
                     "frames/s, 1.50x the stations, p50 4.00 / p99 6.00 ms |",
                     "| 4 cameras PatchCore engine tensorrt stations (4 model(s), max batch 1, mean 1.00) | 600.0 "
                     "frames/s, p50 4.00 / p99 6.00 ms |"]


def test_the_camera_step_runs_four_cameras_on_torch_cuda_then_on_the_engine(tmp_path):
    gpu_evidence = load_script()
    ctx = gpu_evidence.Context(False, tmp_path, {})
    [torch_cuda] = gpu_evidence.cameras(ctx)   # step 8 built no engine bundle: torch-cuda only
    (tmp_path / "engine-patchcore").mkdir()
    (tmp_path / "engine-patchcore" / "bundle.json").write_text("{}")
    _, engine = gpu_evidence.cameras(ctx)
    for cmd in (torch_cuda, engine):
        flags = dict(zip(cmd, cmd[1:]))
        assert flags["--mode"] == "cameras" and flags["--cameras"] == "4" and flags["--frames"] == "1920x1080"
    assert dict(zip(torch_cuda, torch_cuda[1:]))["--backend"] == "torch-cuda"
    assert dict(zip(engine, engine[1:]))["--backend"] == "tensorrt" and str(tmp_path / "engine-patchcore") in engine
