"""The INT8 quality gate on a real model: what `fair-edge build --int8 --max-drop D` keeps, which layers its fallback
leaves float32, and (for the record, not used by the gate unless --defects) the test AUROC of the graphs it kept.

    python benchmarks/bench_int8_gate.py CKPT [--data elpv:mono] [--scope default|network] [--max-drop 0.5]
                                         [--defects] [--out runs/int8-gate]

--scope network quantises the whole LGFDR network, frozen backbone included (its INT8 scope before issue #14:
1.74 normal-score spreads, -6.9 AUROC points), to see the gate's fallback find the sensitive layers itself.
Calibration: the first 64 training images; held out: the test split's normal images (and, with --defects, its
defective ones). Every build is timed in process CPU seconds.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from fair_edge.calibration.int8 import Int8Settings
from fair_edge.calibration.int8_gate import QualityGate
from fair_edge.models.checkpoint import load_checkpoint
from fair_edge.training.data import load_dataset
from fair_edge.training.pixels import read_image
from fair_edge.export.accuracy import compare_precisions
from fair_edge.export.build import BuildOptions, build_bundle
from fair_edge.models.registry import get_family


def whole_network(family, settings) -> tuple[str, ...]:
    """``--scope network``: every convolution of the network quantised, whatever the settings."""
    return family.network_scope


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--data", default="elpv:mono")
    ap.add_argument("--scope", choices=("default", "network"), default="default")
    ap.add_argument("--max-drop", type=float, default=0.5)
    ap.add_argument("--defects", action="store_true", help="gate on image AUROC (test defects) instead of normal scores")
    ap.add_argument("--out", type=Path, default=Path("runs/int8-gate"))
    args = ap.parse_args()
    ckpt = load_checkpoint(args.checkpoint)
    split = load_dataset(args.data)
    calib = [read_image(s.path) for s in split.train[:64]]
    normal = [read_image(s.path) for s in split.test if s.label == 0]
    defects = [read_image(s.path) for s in split.test if s.label == 1]
    family = type(get_family(ckpt.model.family))
    default = family.int8_scope_for
    try:
        if args.scope == "network":
            family.int8_scope_for = whole_network  # a study of the scope, as bench_int8_scope.py does
        t0 = time.process_time()
        result = build_bundle(ckpt, args.out, BuildOptions("int8", int8=Int8Settings(num_images=64), engine=False,
                                                           quality=QualityGate(args.max_drop)),
                              calib, normal, defects if args.defects else None, on_gate_step=print)
        cpu_s = time.process_time() - t0
    finally:
        family.int8_scope_for = default
    b = result.bundle
    graphs = {"fp32": b.reference_onnx_path, "int8": b.onnx_path, "int8-cpu": b.cpu_onnx_path}
    test = compare_precisions(graphs, normal + defects, [0] * len(normal) + [1] * len(defects), b.model)
    gate = result.quality_gate.to_dict()
    for g in gate["graphs"].values():
        g["sensitivity"] = g["sensitivity"][:10]  # the ten most sensitive layers
    report = {"checkpoint": str(args.checkpoint), "scope": args.scope, "build_cpu_s": round(cpu_s, 1),
              "quality_gate": gate, "test_auroc": {k: v.auroc for k, v in test.items()}}
    (args.out.parent / f"{args.out.name}-report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
