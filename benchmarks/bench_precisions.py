"""Accuracy and ONNX Runtime CPU speed of FP32 / FP16 / INT8 bundles of one checkpoint.

    python benchmarks/bench_precisions.py CHECKPOINT [--data elpv:mono] [--out runs/bench-precisions]

Accuracy: image AUROC of each precision's graph on the test split (normal and defective images),
the delta against FP32, and score correlation. INT8 is calibrated on training images only.
Speed: frames/s of the FP32 and INT8 graphs on ONNX Runtime's CPU provider at batch 1 and 8,
measured in the same run (ratios against FP32 printed), pre-processing excluded.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from fair_edge.calibration.frames import preprocess_frames
from fair_edge.models.checkpoint import load_checkpoint
from fair_edge.training.data import load_dataset
from fair_edge.training.pixels import read_image
from fair_edge.export.accuracy import compare_precisions
from fair_edge.export.build import BuildOptions, build_bundle
from fair_edge.runtime.backends import OnnxRuntimeBackend


def frames_per_second(backend: OnnxRuntimeBackend, inputs: dict[str, np.ndarray], batch: int,
                      seconds: float = 5.0) -> float:
    """Images per second of ``backend.infer`` on batches of ``batch`` (after two warm-up calls)."""
    feeds = {name: array[:batch] for name, array in inputs.items()}
    for _ in range(2):
        backend.infer(feeds)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        backend.infer(feeds)
        n += batch
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--data", default="elpv:mono")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-precisions"))
    parser.add_argument("--calib-images", type=int, default=64)
    args = parser.parse_args()

    ckpt = load_checkpoint(args.checkpoint)
    split = load_dataset(args.data)
    calib = [read_image(s.path) for s in split.train[: args.calib_images]]
    test_frames = [read_image(s.path) for s in split.test]
    labels = [s.label for s in split.test]
    graphs = {}
    for precision in ("fp32", "fp16", "int8"):
        t0 = time.perf_counter()
        result = build_bundle(ckpt, args.out / precision, BuildOptions(precision=precision, engine=False),
                              calib_frames=calib if precision == "int8" else None)
        graphs[precision] = result.bundle.onnx_path
        print(f"built {precision} in {time.perf_counter() - t0:.1f} s")
    comparison = compare_precisions(graphs, test_frames, labels, ckpt.model)
    rows = {}
    for precision, c in comparison.items():
        rows[precision] = {"auroc": c.auroc, "auroc_delta_points": 100 * c.auroc_delta,
                           "score_pearson": c.delta.score_pearson, "score_spearman": c.delta.score_spearman,
                           "map_max_abs": c.delta.map_max_abs, "score_max_abs": c.delta.score_max_abs}
        print(f"{precision}: AUROC {c.auroc:.4f} (delta {100 * c.auroc_delta:+.2f} points), score Pearson "
              f"{c.delta.score_pearson:.4f}, Spearman {c.delta.score_spearman:.4f}, map max abs {c.delta.map_max_abs:.2e}")
    inputs = preprocess_frames(test_frames[:16], ckpt.model)
    speed = {}
    for precision in ("fp32", "int8"):
        backend = OnnxRuntimeBackend(graphs[precision], ckpt.model.input_names)
        speed[precision] = {b: frames_per_second(backend, inputs, b) for b in (1, 8)}
    for b in (1, 8):
        print(f"ORT CPU batch {b}: fp32 {speed['fp32'][b]:.1f} frames/s, int8 {speed['int8'][b]:.1f} frames/s "
              f"(int8/fp32 = {speed['int8'][b] / speed['fp32'][b]:.2f}x)")
    report = {"checkpoint": str(args.checkpoint), "model": ckpt.model.describe(), "data": args.data, "n_normal": labels.count(0),
              "n_defect": labels.count(1), "precisions": rows, "ort_cpu_frames_per_s": speed}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
