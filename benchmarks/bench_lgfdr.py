"""LGFDR against FAIR on one dataset for the same training wall time, on this machine.

    python benchmarks/bench_lgfdr.py [--data elpv:mono] [--seconds 240] [--image-size 128]
        [--speed-size 256] [--out runs/bench-lgfdr]

Trains, each for ``--seconds`` of wall time (steps stop at the deadline; the learning-rate schedule is
set for far more steps, so it never decays), with the demo's settings where they apply:
  FAIR width 32 (Adam 1e-3, batch 8, Butterworth D0 scaled to the image size),
  LGFDR on the pretrained EfficientNet-Lite0 (AdamW 1e-3, batch 8, feature noise 0.5),
  LGFDR on a randomly initialised EfficientNet-Lite0 (what the pretrained features bring).
The LGFDR clock includes its one-off feature precomputation. Each model is scored on the test split
(normal and defective images) in PyTorch: image AUROC, and the share of defective images caught at
0.5 % and 5 % false rejects (thresholds = the normal test scores' quantiles, so in-sample).
Then, for FAIR and the pretrained LGFDR: FP32 and INT8 bundles (INT8 calibrated on 64 training images),
the INT8 graph's AUROC change against FP32 on the test split, and ONNX Runtime CPU time per
``--speed-size`` image (random-weight bundles; speed does not depend on the weights) at batch 1,
FP32 and INT8, measured in this run. A JSON report goes to ``--out``/report.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from fair_edge.bench.run import synthetic_bundle, synthetic_frames, synthetic_model
from fair_edge.calibration.frames import preprocess_frames
from fair_edge.calibration.threshold import quantile_threshold
from fair_edge.training.data import load_dataset
from fair_edge.training.pixels import read_image
from fair_edge.training.evaluate import score_samples
from fair_edge.export.accuracy import compare_bundle_precisions
from fair_edge.export.build import BuildOptions, build_bundle
from fair_edge.training.metrics import image_auroc
from fair_edge.models.fair.family import FairSettings
from fair_edge.models.lgfdr.model import LgfdrSettings
from fair_edge.models.registry import ModelSpec
from fair_edge.preprocess import PreprocessConfig
from fair_edge.runtime.backends import OnnxRuntimeBackend
from fair_edge.models.training_contract import check_extras, config_from_options

# each family's own training settings with these values (FAIR: width 32 comes from its model settings)
CFG = {"batch": 8, "lr": 1e-3, "steps": 1_000_000, "save_every": 1_000_000, "log_every": 10, "seed": 0}


def train_for(model: ModelSpec, split, seconds: float, out: Path, weights: str | None = None) -> tuple[Path, dict]:
    """Train ``model`` until ``seconds`` of wall time have passed; returns (final.pt, timing)."""
    start = time.perf_counter()
    training = model.impl.training()
    cfg = config_from_options(training.default_train_config(), CFG)
    extras = {} if weights is None else {"backbone_weights": weights}  # FAIR takes no backbone extras
    check_extras(training, extras, model.family, model.describe())
    trainer = training.make_trainer(split, model, cfg, out, torch.device("cpu"), **extras)
    setup = time.perf_counter() - start
    while time.perf_counter() - start < seconds:
        trainer.train_step(trainer.step)
        if hasattr(trainer, "state"):
            trainer.state.step += 1
        else:
            trainer.step += 1
    timing = {"seconds": round(time.perf_counter() - start, 1), "setup_s": round(setup, 1), "steps": trainer.step}
    if hasattr(trainer, "detector"):
        trainer.detector.eval()
    trainer.save()
    from fair_edge.models.checkpoint import save_checkpoint

    return save_checkpoint(out / "final.pt", trainer.checkpoint(with_train_state=False)), timing


def detection(scores: np.ndarray, labels: np.ndarray) -> dict:
    """Image AUROC and the defect catch rate at 0.5 % and 5 % false rejects (normal-quantile thresholds)."""
    normal, defect = scores[labels == 0], scores[labels == 1]
    caught = {f"caught_at_{r * 100:g}pct_false_rejects": float((defect > quantile_threshold(normal, r)).mean())
              for r in (0.005, 0.05)}
    return {"image_auroc": image_auroc(scores, labels), **caught}


def ort_ms_per_image(bundle, repeats: int = 20) -> float:
    """Median ONNX Runtime CPU milliseconds of one batch-1 inference (pre-processing excluded)."""
    backend = OnnxRuntimeBackend.from_bundle(bundle)
    inputs = preprocess_frames(synthetic_frames(480, 640, count=1), bundle.model)
    for _ in range(3):
        backend.infer(inputs)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        backend.infer(inputs)
        times.append((time.perf_counter() - t) * 1000)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="elpv:mono")
    parser.add_argument("--seconds", type=float, default=240.0)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--speed-size", type=int, default=256)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-lgfdr"))
    args = parser.parse_args()

    split = load_dataset(args.data)
    pre = PreprocessConfig(image_size=args.image_size, cutoff=30.0 * args.image_size / 256)
    models = {
        "fair_w32": (ModelSpec("fair", pre, FairSettings(32)), None),
        "lgfdr_pretrained": (ModelSpec("lgfdr", pre, LgfdrSettings()), None),
        "lgfdr_random_backbone": (ModelSpec("lgfdr", pre, LgfdrSettings()), "random"),
    }
    labels = np.array([s.label for s in split.test])
    report: dict = {"date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                    "command": " ".join(sys.argv), "machine": f"{platform.processor() or platform.machine()}, "
                    f"{torch.get_num_threads()} torch threads", "data": args.data, "n_normal": int((labels == 0).sum()),
                    "n_defect": int((labels == 1).sum()), "models": {}}
    finals = {}
    for name, (model, weights) in models.items():
        final, timing = train_for(model, split, args.seconds, args.out / name, weights)
        finals[name] = final
        scored = score_samples(final, split.test)
        report["models"][name] = {"model": model.describe(), **timing, **detection(scored.scores, scored.labels)}
        print(name, report["models"][name], flush=True)
    test_frames = [read_image(s.path) for s in split.test]
    calib = [read_image(s.path) for s in split.train[:64]]
    for name in ("fair_w32", "lgfdr_pretrained"):
        from fair_edge.models.checkpoint import load_checkpoint

        int8 = build_bundle(load_checkpoint(finals[name]), args.out / f"{name}-int8", BuildOptions("int8", engine=False),
                            calib_frames=calib).bundle
        c = compare_bundle_precisions(int8, test_frames, labels.tolist())
        report["models"][name].update(int8_auroc=c.auroc, int8_auroc_delta_points=100 * c.auroc_delta)
        speed_model = synthetic_model("fair" if name.startswith("fair") else "lgfdr", 32 if name.startswith("fair") else None,
                                      args.speed_size)
        speed = {}
        for precision in ("fp32", "int8"):
            b = synthetic_bundle(args.out / f"{name}-speed-{precision}", speed_model, precision, max_batch=1,
                                 calib_frames=synthetic_frames(480, 640, count=8, seed=1))
            speed[f"ort_cpu_ms_per_{args.speed_size}px_image_{precision}"] = ort_ms_per_image(b)
        report["models"][name].update(speed)
        print(name, report["models"][name], flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
