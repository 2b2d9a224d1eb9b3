"""Fusion of already trained models on a labelled test set: each member alone vs the fused score.

Each member's normal statistics come from held-out NORMAL images only (``--normal``, e.g. the
``proxy/good`` folder that ``fair-edge tune`` held out of the training split); the test set is used
only to measure. The rule is fair_edge.runtime.fusion.fuse_maps (the one the station runs).

    python benchmarks/bench_fusion.py elpv:mono --normal runs/tune/proxy/good \
        --checkpoints runs/tune/candidates/base/final.pt runs/tune/candidates/sobel-xy/final.pt
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from fair_edge.training import metrics
from fair_edge.training.data import Sample, list_images, load_dataset
from fair_edge.training.evaluate import score_samples
from fair_edge.runtime.fusion import RULES, NormalStats, fuse_maps


def summarise(name: str, scores, labels) -> dict:
    return {"model": name, **metrics.line_summary(scores, labels)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data")
    ap.add_argument("--normal", type=Path, required=True)
    ap.add_argument("--checkpoints", type=Path, nargs="+", required=True)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    split = load_dataset(args.data)
    normal = [Sample(p) for p in list_images(args.normal)]
    stats, test_maps, rows = [], [], []
    for ckpt in args.checkpoints:
        held = score_samples(ckpt, normal, batch=32)
        stats.append(NormalStats.fit(held.scores))
        scored = score_samples(ckpt, split.test, batch=32)
        test_maps.append(scored.maps)
        rows.append(summarise(ckpt.parent.name, scored.scores, scored.labels))
        print(json.dumps(rows[-1]), flush=True)
    for rule in RULES:
        _, fused = fuse_maps(test_maps, stats, rule)
        rows.append(summarise(f"fusion-{rule}", fused, scored.labels))
        print(json.dumps(rows[-1]), flush=True)
    if args.out is not None:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
