"""AUROC on the ELPV mono test split of an INT8 bundle's three graphs: FP32 reference, TensorRT Q/DQ INT8, CPU INT8
(QLinearConv). Usage: python benchmarks/int8_graph_auroc.py BUNDLE [BUNDLE ...]"""
import sys

import numpy as np
from sklearn.metrics import roc_auc_score
from fair_edge.calibration.frames import frame_scores
from fair_edge.training.data import load_dataset
from fair_edge.training.pixels import read_image
from fair_edge.export.bundle import load_bundle
from fair_edge.runtime.backends import OnnxRuntimeBackend


def main(bundles: list[str]) -> None:
    """Print each bundle's three AUROCs and the CPU INT8 graph's change in points."""
    split = load_dataset("elpv:mono")
    labels = np.array([s.label for s in split.test])
    test = [read_image(s.path) for s in split.test]
    for root in bundles:
        b = load_bundle(root)
        out = {}
        for what, path in (("fp32", b.root / "model.fp32.onnx"), ("int8-qdq", b.onnx_path), ("int8-cpu", b.cpu_onnx_path)):
            s = frame_scores(OnnxRuntimeBackend(path, b.model.input_names).infer_batched, test, b.model)
            out[what] = roc_auc_score(labels, s)
        print(root, {k: round(v, 4) for k, v in out.items()},
              "cpu-int8 delta points", round(100 * (out["int8-cpu"] - out["fp32"]), 2), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
