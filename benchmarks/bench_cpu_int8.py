"""CPU backends and precisions side by side, in one run: frames/s, latency and ELPV AUROC.

    python benchmarks/bench_cpu_int8.py [--checkpoint runs/demo/final.pt] [--width 32] [--image-size 256]
        [--batches 1 4 8] [--seconds 2] [--rounds 3] [--out runs/bench-cpu-int8.json]

Engines (each where installed): ONNX Runtime FP32, ONNX Runtime INT8 with the TensorRT Q/DQ graph
(``calibration.int8``), ONNX Runtime INT8 with the CPU graph (``calibration.int8_cpu``), OpenVINO FP32
and OpenVINO INT8 (the CPU Q/DQ graph). Speed: a random-weight c = ``--width`` UNet at ``--image-size``
(speed does not depend on the weights), INT8 calibrated on synthetic frames; each batch of 1080p BGR
frames goes through the CPU pre-processing (``preprocess.CpuPipeline``) and the engine. frames/s =
frames / (pre-processing + inference) time; latency = one batch, p50 / p99. Engines are timed in
interleaved rounds (``--rounds`` x ``--seconds`` each) so a shared machine's load falls on all alike;
ratios are against ONNX Runtime FP32 at the same batch, from the same rounds.
AUROC (``--checkpoint``): the trained model's graphs, INT8 calibrated on 64 training images, every
test image of ``--data`` through each engine.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from fair_edge.bench.run import environment, synthetic_bundle, synthetic_frames, synthetic_model
from fair_edge.calibration.frames import preprocess_frames
from fair_edge.errors import ConfigError
from fair_edge.models.tensors import SCORE
from fair_edge.runtime.backends import CpuPreprocessor, OnnxRuntimeBackend
from fair_edge.training.metrics import image_auroc


def graphs(bundle) -> dict[str, Path]:
    """precision -> ONNX file of an INT8 bundle: fp32, int8-trt (TensorRT Q/DQ), int8-cpu (CPU engines)."""
    return {"fp32": bundle.reference_onnx_path, "int8-trt": bundle.onnx_path, "int8-cpu": bundle.cpu_onnx_path}


def engines(bundle, threads: int) -> dict[str, object]:
    """'ENGINE PRECISION' -> backend with infer({name: array}) -> {anomaly_map, score}."""
    names, paths = bundle.model.input_names, graphs(bundle)
    out: dict[str, object] = {f"onnxruntime {p}": OnnxRuntimeBackend(path, names, threads=threads)
                              for p, path in paths.items()}
    try:
        from fair_edge.runtime.openvino import OpenVinoBackend

        out["openvino fp32"] = OpenVinoBackend(paths["fp32"], names, threads=threads)
        out["openvino int8-cpu"] = OpenVinoBackend(paths["int8-cpu"], names, threads=threads)
    except ConfigError as exc:  # openvino not installed
        print(f"openvino not timed: {exc}")
    return out


def time_round(engine, pipeline: CpuPreprocessor, frames: list[np.ndarray], batch: int, seconds: float,
               sink: dict) -> None:
    """Append per-batch (total, inference) seconds of ``seconds`` of work to ``sink``."""
    start, i = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        inputs = pipeline([frames[(i + k) % len(frames)] for k in range(batch)])
        t1 = time.perf_counter()
        engine.infer(inputs)
        t2 = time.perf_counter()
        sink.setdefault("total", []).append(t2 - t0)
        sink.setdefault("infer", []).append(t2 - t1)
        i += batch


def speed(args: argparse.Namespace, folder: Path) -> list[dict]:
    frames = synthetic_frames(1080, 1920, count=8)
    calib_frames = synthetic_frames(1080, 1920, count=16, seed=1)
    bundle = synthetic_bundle(folder / "int8", synthetic_model("fair", args.width, args.image_size), "int8",
                              max_batch=max(args.batches), calib_frames=calib_frames)
    pipeline = CpuPreprocessor(bundle.model)
    named = engines(bundle, args.threads)
    times: dict[tuple[str, int], dict] = {}
    for name, engine in named.items():  # warm-up: first calls allocate and pick kernels
        for batch in args.batches:
            time_round(engine, pipeline, frames, batch, 0.2, {})
    for r in range(args.rounds):
        for batch in args.batches:
            for name, engine in named.items():
                time_round(engine, pipeline, frames, batch, args.seconds, times.setdefault((name, batch), {}))
        print(f"round {r + 1}/{args.rounds} done", flush=True)
    return rows_from(times, args.batches)


def rows_from(times: dict, batches: list[int]) -> list[dict]:
    rows = []
    for (name, batch), t in times.items():
        total, infer = np.array(t["total"]), np.array(t["infer"])
        rows.append({"engine": name, "batch": batch, "batches_timed": len(total),
                     "fps": batch * len(total) / total.sum(), "infer_fps": batch * len(infer) / infer.sum(),
                     "p50_ms": 1000 * float(np.percentile(total, 50)), "p99_ms": 1000 * float(np.percentile(total, 99))})
    base = {r["batch"]: r for r in rows if r["engine"] == "onnxruntime fp32"}
    for r in rows:
        r["vs_ort_fp32"] = r["fps"] / base[r["batch"]]["fps"]
        r["infer_vs_ort_fp32"] = r["infer_fps"] / base[r["batch"]]["infer_fps"]
    return rows


def accuracy(args: argparse.Namespace, folder: Path) -> dict:
    """AUROC per engine of the trained checkpoint's graphs on the test split of ``args.data``."""
    from fair_edge.models.checkpoint import load_checkpoint
    from fair_edge.training.data import load_dataset
    from fair_edge.training.pixels import read_image
    from fair_edge.export.build import BuildOptions, build_bundle

    ckpt = load_checkpoint(args.checkpoint)
    split = load_dataset(args.data)
    calib_frames = [read_image(s.path) for s in split.train[:64]]
    bundle = build_bundle(ckpt, folder / "trained", BuildOptions(precision="int8", engine=False),
                          calib_frames=calib_frames).bundle
    named = engines(bundle, args.threads)
    inputs = preprocess_frames((read_image(s.path) for s in split.test), ckpt.model)
    labels = np.array([s.label for s in split.test])
    result = {}
    for name, engine in named.items():
        scores = np.concatenate([engine.infer({k: v[i : i + 8] for k, v in inputs.items()})[SCORE]
                                 for i in range(0, len(labels), 8)])
        result[name] = {"auroc": image_auroc(scores, labels), "scores": scores}
    ref = result["onnxruntime fp32"]
    for name, r in result.items():
        r["delta_points"] = 100 * (r["auroc"] - ref["auroc"])
        r["score_pearson"] = float(np.corrcoef(r.pop("scores"), ref["scores"])[0, 1]) if r is not ref else 1.0
    ref.pop("scores", None)
    print("AUROC:", {k: round(v["auroc"], 4) for k, v in result.items()})
    return {"checkpoint": str(args.checkpoint), "data": args.data, "image_size": ckpt.preprocess.image_size,
            "model": ckpt.model.describe(), "thresholds": {"int8-trt": bundle.threshold.value,
                                                           "int8-cpu": bundle.cpu_threshold.value}, "normal": int((labels == 0).sum()), "defective": int(labels.sum()), "engines": result}


def print_table(rows: list[dict]) -> None:
    print(f"{'engine':<22} {'batch':>5} {'frames/s':>9} {'vs ORT fp32':>11} {'infer/s':>8} {'vs':>6} {'p50 ms':>8} {'p99 ms':>8}")
    for r in sorted(rows, key=lambda r: (r["batch"], -r["fps"])):
        print(f"{r['engine']:<22} {r['batch']:>5} {r['fps']:>9.2f} {r['vs_ort_fp32']:>10.2f}x {r['infer_fps']:>8.2f} "
              f"{r['infer_vs_ort_fp32']:>5.2f}x {r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=None, help="trained model for the AUROC columns")
    parser.add_argument("--data", default="elpv:mono")
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="engine threads, 0 = each engine's default")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-cpu-int8.json"))
    args = parser.parse_args(argv)
    report = {"command": " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
              "environment": environment({"cpu"})}
    with tempfile.TemporaryDirectory(prefix="bench-cpu-int8-") as tmp:
        report["speed"] = speed(args, Path(tmp))
        print_table(report["speed"])
        if args.checkpoint is not None:
            report["accuracy"] = accuracy(args, Path(tmp))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
