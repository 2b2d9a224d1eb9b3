"""INT8 image-AUROC change of trained checkpoints: each is built into an INT8 bundle (the TensorRT Q/DQ
graph, calibrated on the first ``--calib`` training images) and the INT8 graph is scored on the test split
in ONNX Runtime against the FP32 graph (``export.accuracy.compare_bundle_precisions``).

    python benchmarks/bench_int8_auroc.py CKPT [CKPT ...] [--data elpv:mono] [--calib 64] [--out runs/int8-auroc]

Prints one line per checkpoint (INT8 AUROC, change in AUROC points) and writes OUT/report.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from fair_edge.models.checkpoint import load_checkpoint
from fair_edge.training.data import load_dataset
from fair_edge.training.pixels import read_image
from fair_edge.export.accuracy import compare_bundle_precisions
from fair_edge.export.build import BuildOptions, build_bundle


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", type=Path, nargs="+")
    ap.add_argument("--data", default="elpv:mono")
    ap.add_argument("--calib", type=int, default=64, help="training images that calibrate INT8")
    ap.add_argument("--out", type=Path, default=Path("runs/int8-auroc"))
    args = ap.parse_args()
    split = load_dataset(args.data)
    labels = [s.label for s in split.test]
    test = [read_image(s.path) for s in split.test]
    calib = [read_image(s.path) for s in split.train[: args.calib]]
    report = []
    for i, path in enumerate(args.checkpoints):
        start = time.perf_counter()
        ckpt = load_checkpoint(path)
        bundle = build_bundle(ckpt, args.out / f"{i}-{ckpt.model.tag}-int8", BuildOptions("int8", engine=False),
                              calib_frames=calib).bundle
        c = compare_bundle_precisions(bundle, test, labels)
        report.append({"checkpoint": str(path), "model": ckpt.model.describe(), "int8_auroc": c.auroc,
                       "auroc_delta_points": 100 * c.auroc_delta, "seconds": round(time.perf_counter() - start, 1)})
        print(json.dumps(report[-1]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
