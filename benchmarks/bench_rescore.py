"""Re-score trained checkpoints with other scoring settings (no retraining): mean-filter size and colour weight.

Scoring is applied after the UNet, so a checkpoint can be scored with any ScoringConfig. For each
checkpoint and each ``--smooth`` value, reports image AUROC and catch at 0.5 % / 5 % false rejects on
DATA's test set and, with ``--proxy DIR`` (a `fair-edge tune` proxy folder: good/ + one folder per
planted kind), on the proxy defects too, so a default can be chosen without the test defects.

    python benchmarks/bench_rescore.py elpv:mono --checkpoints runs/tune/candidates/base/final.pt \
        --smooth 21 9 5 --proxy runs/tune/proxy
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import replace
from pathlib import Path

import torch

from fair_edge.training import metrics
from fair_edge.models.checkpoint import load_checkpoint, save_checkpoint
from fair_edge.training.data import Sample, list_images, load_dataset
from fair_edge.training.evaluate import score_samples


def proxy_samples(root: Path) -> list[Sample]:
    out = [Sample(p) for p in list_images(root / "good")]
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and p.name != "good"):
        out += [Sample(p, 1, folder.name) for p in list_images(folder)]
    return out


def measure(ckpt: Path, samples: list[Sample]) -> dict:
    scored = score_samples(ckpt, samples, batch=32)
    return {"auroc": round(metrics.image_auroc(scored.scores, scored.labels), 4),
            "catch_0.5%": round(metrics.catch_rate(scored.scores, scored.labels, 0.005), 4),
            "catch_5%": round(metrics.catch_rate(scored.scores, scored.labels, 0.05), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data")
    ap.add_argument("--checkpoints", type=Path, nargs="+", required=True)
    ap.add_argument("--smooth", type=int, nargs="+", default=[21, 9, 5])
    ap.add_argument("--proxy", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    split = load_dataset(args.data)
    proxy = proxy_samples(args.proxy) if args.proxy else None
    with tempfile.TemporaryDirectory() as tmp:
        for path in args.checkpoints:
            ckpt = load_checkpoint(path)
            for smooth in args.smooth:
                settings = replace(ckpt.settings, scoring=replace(ckpt.settings.scoring, smooth=smooth))
                variant = replace(ckpt, model=replace(ckpt.model, settings=settings))
                tmp_ckpt = save_checkpoint(Path(tmp) / "rescored.pt", variant)
                row = {"checkpoint": str(path), "smooth": smooth, "real": measure(tmp_ckpt, split.test)}
                if proxy:
                    row["proxy"] = measure(tmp_ckpt, proxy)
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
