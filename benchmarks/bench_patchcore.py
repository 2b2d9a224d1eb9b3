"""PatchCore in one run: coreset time, the fit on ELPV, INT8 AUROC change, and CPU speed per image vs LGFDR and FAIR.

    python benchmarks/bench_patchcore.py [--data elpv:mono] [--fit-size 128] [--speed-size 256] [--calib 64]
        [--seconds 2] [--rounds 3] [--out runs/bench-patchcore]

1. coreset: ``greedy_coreset`` of 50 000 random 128-d patches to 10 % (5 000), wall and process seconds.
2. fit: PatchCore (default settings) on the normal training cells of ``--data`` at ``--fit-size``: backbone
   pass, coreset and neighbour-table seconds, patches, bank rows and MB.
3. INT8: the fitted model (or ``--checkpoint``) built as an INT8 bundle (calibrated on the first ``--calib``
   training images): image AUROC on the test split of the FP32 graph, the bundle's CPU INT8 graph and the
   TensorRT Q/DQ graph of each variant (``SCOPES`` x ``METHODS``), all in ONNX Runtime; the change in AUROC
   points and the shift of the normal test images' scores in FP32 normal-score spreads.
4. speed: ONNX Runtime on one thread, batch 1, prepared inputs at ``--speed-size``: random-weight bundles of
   FAIR c = 32, LGFDR and PatchCore with ImageNet backbones (PatchCore's random bank has ``bank_max`` rows,
   the largest the settings allow)
   in FP32, PatchCore also its CPU INT8 graph; interleaved rounds so a shared machine's load falls on all
   alike; ms per image and the ratio against FAIR c = 32 from the same rounds.
Writes OUT/report.json and prints one line per result.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from fair_edge.bench.run import environment, synthetic_frames, synthetic_model
from fair_edge.calibration.frames import preprocess_frames
from fair_edge.calibration.int8 import Int8Settings, quantize_int8
from fair_edge.models.checkpoint import Checkpoint, load_checkpoint
from fair_edge.training.data import load_dataset
from fair_edge.training.pixels import read_image
from fair_edge.export.accuracy import compare_precisions
from fair_edge.export.build import BuildOptions, build_bundle
from fair_edge.models.weights import load_backbone_weights
from fair_edge.models.patchcore.coreset import greedy_coreset
from fair_edge.models.patchcore.train import FitConfig, PatchcoreFitter
from fair_edge.models.registry import ModelSpec, get_family
from fair_edge.preprocess import PreprocessConfig
from fair_edge.models.tensors import SCORE
from fair_edge.runtime.backends import OnnxRuntimeBackend


def coreset_time() -> dict:
    x = torch.randn(50_000, 128, generator=torch.Generator().manual_seed(0))
    wall, cpu = time.perf_counter(), time.process_time()
    idx = greedy_coreset(x, 5_000)
    return {"patches": 50_000, "dim": 128, "chosen": int(idx.numel()), "wall_s": round(time.perf_counter() - wall, 2),
            "process_s": round(time.process_time() - cpu, 2), "torch_threads": torch.get_num_threads()}


def fit(args: argparse.Namespace) -> Path:
    impl = get_family("patchcore")
    model = ModelSpec(impl.key, PreprocessConfig(image_size=args.fit_size), impl.default_settings())
    fitter = PatchcoreFitter(load_dataset(args.data), model, FitConfig(), args.out / "fit", torch.device("cpu"))
    return fitter.run()


# INT8 variants: which backbone convolutions get Q/DQ, and the calibration method
SCOPES = {"backbone": ("/backbone/",), "backbone-late": tuple(f"/backbone/_blocks.{i}/" for i in range(5, 11))}
METHODS = ("percentile", "max")


def int8_auroc(final: Path, args: argparse.Namespace) -> dict:
    """Image AUROC of the FP32 graph and of each INT8 variant (TensorRT Q/DQ graph, ONNX Runtime), with the
    normal-score shift: median (INT8 - FP32) score of the normal test images in FP32 normal-score spreads."""
    ckpt = load_checkpoint(final)
    split = load_dataset(args.data)
    calib_frames = [read_image(s.path) for s in split.train[: args.calib]]
    bundle = build_bundle(ckpt, args.out / "int8", BuildOptions("int8", engine=False), calib_frames=calib_frames).bundle
    calib = preprocess_frames(calib_frames, ckpt.model)
    graphs = {"fp32": bundle.reference_onnx_path, "int8-cpu (bundle)": bundle.cpu_onnx_path}
    for scope_name, scope in SCOPES.items():
        for method in METHODS:
            path = args.out / "int8" / f"variant-{scope_name}-{method}.onnx"
            quantize_int8(bundle.reference_onnx_path, path, calib, scope, Int8Settings(method=method),
                          path.with_suffix(".calib.json"))
            graphs[f"int8-trt {scope_name} {method}"] = path
    frames, labels = [read_image(s.path) for s in split.test], [s.label for s in split.test]
    found = compare_precisions(graphs, frames, labels, ckpt.model)
    inputs = preprocess_frames(frames, ckpt.model)
    normal = np.asarray(labels) == 0
    ref = OnnxRuntimeBackend(graphs["fp32"], ckpt.model.input_names).infer_batched(inputs)[SCORE]
    out = {}
    for name, c in found.items():
        scores = OnnxRuntimeBackend(graphs[name], ckpt.model.input_names).infer_batched(inputs)[SCORE]
        shift = float(np.median(scores[normal] - ref[normal]) / ref[normal].std())
        out[name] = {"auroc": round(c.auroc, 4), "delta_points": round(100 * c.auroc_delta, 2),
                     "normal_shift_spreads": round(shift, 3)}
    return out


def speed_bundle(out: Path, family: str, width: int | None, precision: str, size: int):
    """A bundle of ``family`` at ``size`` px: random weights, but the backbone (where the family has one) with its
    ImageNet weights, so INT8 calibrates on real activation ranges; PatchCore's bank is random (``bank_max`` rows)."""
    model = synthetic_model(family, width, size)
    torch.manual_seed(0)
    module = model.build()
    if hasattr(module, "backbone"):
        load_backbone_weights(module.backbone, model.settings.backbone, None)
    ckpt = Checkpoint(model, model.impl.weights(module), {"source": "speed benchmark: random weights"})
    calib = synthetic_frames(size * 2, size * 2, count=8, seed=1) if precision == "int8" else None
    return build_bundle(ckpt, out, BuildOptions(precision, max_batch=1, engine=False), calib_frames=calib).bundle


def speed(args: argparse.Namespace) -> list[dict]:
    frames = synthetic_frames(args.speed_size * 2, args.speed_size * 2, count=4)
    engines = {}
    for name, family, width, precision in (("FAIR c=32 fp32", "fair", 32, "fp32"), ("LGFDR fp32", "lgfdr", None, "fp32"),
                                           ("PatchCore fp32", "patchcore", None, "fp32"),
                                           ("PatchCore int8-cpu", "patchcore", None, "int8")):
        bundle = speed_bundle(args.out / "speed" / name.replace(" ", "-"), family, width, precision, args.speed_size)
        path = bundle.cpu_onnx_path if precision == "int8" else bundle.onnx_path
        inputs = preprocess_frames(frames[:1], bundle.model)
        engines[name] = (OnnxRuntimeBackend(path, bundle.model.input_names, threads=1), inputs, dict(bundle.facts))
    times: dict[str, list[float]] = {name: [] for name in engines}
    for engine, inputs, _ in engines.values():
        engine.infer(inputs)  # warm-up
    for _ in range(args.rounds):
        for name, (engine, inputs, _) in engines.items():
            start = time.perf_counter()
            while time.perf_counter() - start < args.seconds:
                t = time.perf_counter()
                engine.infer(inputs)
                times[name].append(time.perf_counter() - t)
    base = float(np.median(times["FAIR c=32 fp32"]))
    return [{"engine": name, "image_size": args.speed_size, "ms_per_image": round(1000 * float(np.median(t)), 2),
             "vs_fair_c32": round(float(np.median(t)) / base, 3), "calls": len(t), "facts": engines[name][2]}
            for name, t in times.items()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="elpv:mono")
    ap.add_argument("--fit-size", type=int, default=128)
    ap.add_argument("--speed-size", type=int, default=256)
    ap.add_argument("--calib", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--parts", nargs="+", choices=("coreset", "fit", "int8", "speed"),
                    default=["coreset", "fit", "int8", "speed"], help="what to run")
    ap.add_argument("--checkpoint", type=Path, help="int8 without fit: this fitted PatchCore checkpoint")
    ap.add_argument("--out", type=Path, default=Path("runs/bench-patchcore"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"environment": environment({"cpu"}), "args": {k: str(v) for k, v in vars(args).items()}}
    if "coreset" in args.parts:
        report["coreset"] = coreset_time()
        print(json.dumps({"coreset": report["coreset"]}), flush=True)
    final = args.checkpoint
    if "fit" in args.parts:
        final = fit(args)
        summary = load_checkpoint(final).data_summary
        report["fit"] = {"seconds": summary["fit_seconds"], "bank_rows": summary["bank_rows"],
                         "train_images": summary["train_images_used"]}
        print(json.dumps({"fit": report["fit"]}), flush=True)
    if "int8" in args.parts:
        report["int8"] = int8_auroc(final, args)
        print(json.dumps({"int8": report["int8"]}), flush=True)
    if "speed" in args.parts:
        report["speed"] = speed(args)
        for row in report["speed"]:
            print(json.dumps(row), flush=True)
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
