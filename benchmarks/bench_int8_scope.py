"""Which part of an LGFDR model INT8 may quantise: for each scope, INT8 minus FP32 frame scores on held-out
NORMAL images (the selection signal, in units of the FP32 normal-score spread) and, for the record only,
the image-AUROC change on the labelled test split.

    python benchmarks/bench_int8_scope.py CKPT [--data elpv:mono] [--scopes all backbone towers] [--out runs/int8-scope]

The held-out normals are the 20 % that ``fair-edge tune`` holds out (``tune.split_normals``, seed 0); the
first 64 of the other 80 % calibrate. Scopes: all (backbone + towers + SRH), backbone, towers (+ SRH).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from fair_edge.calibration.frames import preprocess_frames
from fair_edge.models.checkpoint import load_checkpoint
from fair_edge.training.data import load_dataset
from fair_edge.training.pixels import read_image
from fair_edge.export.accuracy import compare_bundle_precisions
from fair_edge.export.build import BuildOptions, build_bundle
from fair_edge.models.lgfdr.family import NETWORK_SCOPE, LgfdrFamily
from fair_edge.models.tensors import SCORE
from fair_edge.runtime.backends import OnnxRuntimeBackend
from fair_edge.training.tune import split_normals

SCOPES = {"all": NETWORK_SCOPE, "backbone": ("/backbone/",),
          "towers": tuple(s for s in NETWORK_SCOPE if s != "/backbone/")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--data", default="elpv:mono")
    ap.add_argument("--scopes", nargs="+", choices=list(SCOPES), default=list(SCOPES))
    ap.add_argument("--out", type=Path, default=Path("runs/int8-scope"))
    args = ap.parse_args()
    split = load_dataset(args.data)
    train, held = split_normals(split.train, 0.2, 0)
    labels = [s.label for s in split.test]
    test = [read_image(s.path) for s in split.test]
    calib = [read_image(s.path) for s in train[:64]]
    normals = [read_image(s.path) for s in held]
    ckpt = load_checkpoint(args.checkpoint)
    default, rows = LgfdrFamily.int8_scope, []
    try:
        for name in args.scopes:
            LgfdrFamily.int8_scope = SCOPES[name]  # what build_bundle's INT8 step quantises
            bundle = build_bundle(ckpt, args.out / name, BuildOptions("int8", engine=False), calib_frames=calib).bundle
            inputs = preprocess_frames(normals, bundle.model)
            fp32 = OnnxRuntimeBackend(bundle.reference_onnx_path, bundle.model.input_names).infer_batched(inputs)[SCORE]
            int8 = OnnxRuntimeBackend(bundle.onnx_path, bundle.model.input_names).infer_batched(inputs)[SCORE]
            test_change = compare_bundle_precisions(bundle, test, labels)
            rows.append({"scope": name, "normal_score_shift_in_spreads": float((int8 - fp32).mean() / fp32.std()),
                         "normal_score_abs_error_in_spreads": float(np.abs(int8 - fp32).mean() / fp32.std()),
                         "fp32_auroc": test_change.auroc_reference, "int8_auroc": test_change.auroc,
                         "auroc_change_points": 100 * test_change.auroc_delta})
            print(json.dumps(rows[-1]), flush=True)
    finally:
        LgfdrFamily.int8_scope = default
    (args.out / "report.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
