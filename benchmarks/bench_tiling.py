"""Tiled vs whole-frame inspection on the generated high-resolution fixture (benchmarks/hires_fixture.py).

Both models have the same width, model input size, training steps and batch (so the same training
cost per step); the whole-frame model sees each frame shrunk to ``--image-size``, the tiled one sees
``--tile`` px tiles (overlap ``--overlap``) resized to ``--image-size``. Reports image AUROC and the
share of defects caught at 0.5 % and 5 % false rejects, measured on the fixture's test set.

    python benchmarks/bench_tiling.py --fixture /tmp/fix --out runs/tiling --steps 400 --width 16 \
        --image-size 64 --tile 128 --overlap 16
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from fair_edge.training import metrics
from fair_edge.training.data import load_dataset
from fair_edge.training.evaluate import score_samples
from fair_edge.models.fair.family import FairSettings
from fair_edge.models.fair.scoring import ScoringConfig
from fair_edge.preprocess import PreprocessConfig
from fair_edge.tiling import TilingConfig
from fair_edge.models.fair.train import TrainConfig, Trainer


def run_variant(name: str, pre: PreprocessConfig, args, split) -> dict:
    cfg = TrainConfig(batch=args.batch, steps=args.steps, lr=args.lr, seed=args.seed, save_every=10**9)
    settings = FairSettings(width=args.width, scoring=ScoringConfig(smooth=args.smooth))
    start = time.perf_counter()
    final = Trainer(split, pre, settings, cfg, args.out / name, torch.device("cpu")).run()
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    scored = score_samples(final, split.test, batch=32)
    row = {"variant": name, "preprocess": pre.to_dict(), "train_s": round(train_s, 1),
           "eval_s": round(time.perf_counter() - start, 1),
           "image_auroc": metrics.image_auroc(scored.scores, scored.labels)}
    for rate in (0.005, 0.05):
        row[f"catch_at_{rate:.1%}"] = metrics.catch_rate(scored.scores, scored.labels, rate)
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fixture", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--cutoff", type=float, default=None, help="D0; default 30 * image_size / 256")
    ap.add_argument("--tile", type=int, default=128)
    ap.add_argument("--overlap", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lr", type=float, default=TrainConfig.lr)
    ap.add_argument("--smooth", type=int, default=ScoringConfig.smooth, help="scoring mean filter, map pixels")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    split = load_dataset(args.fixture)
    whole = PreprocessConfig(image_size=args.image_size, cutoff=args.cutoff or 30.0 * args.image_size / 256)
    tiled = replace(whole, tiling=TilingConfig(args.tile, args.overlap))
    rows = [run_variant("whole", whole, args, split), run_variant("tiled", tiled, args, split)]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tiling.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
