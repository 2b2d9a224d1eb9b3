"""How well does ``fair-edge tune``'s proxy ranking agree with the ranking on real defects?

Runs ``fair_edge.training.tune.tune`` on the normal training images of DATA (it never reads the test set),
then - only afterwards, for this measurement - scores every finished candidate on DATA's real test
set and reports Spearman's rank correlation between proxy and real catch (at the target
false-reject rate and at 5 %) and AUROC.

    python benchmarks/bench_tune_agreement.py elpv:mono --out runs/tune-elpv --width 16 --image-size 64 \
        --steps 200 --budget-min 40 [--only lgfdr patchcore]

``--only`` keeps just the named candidates of ``tune_candidates.default_candidates`` (in its order), for a bounded
run that ranks, e.g., the families against each other without the FAIR settings.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from scipy.stats import spearmanr

from fair_edge.training import metrics
from fair_edge.training.data import load_dataset
from fair_edge.training.pixels import read_image
from fair_edge.training.evaluate import score_samples
from fair_edge.preprocess import PreprocessConfig
from fair_edge.training.tune import tune
from fair_edge.training.tune_candidates import Candidate, TuneSettings, default_candidates


def real_metrics(checkpoint: str, split, rate: float) -> dict:
    scored = score_samples(Path(checkpoint), split.test, batch=32)
    return {"real_auroc": metrics.image_auroc(scored.scores, scored.labels),
            "real_catch": metrics.catch_rate(scored.scores, scored.labels, rate),
            "real_catch_5pct": metrics.catch_rate(scored.scores, scored.labels, 0.05)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--budget-min", type=float, default=40)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", nargs="+", default=None, metavar="NAME", help="candidates of tune's list to run")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    split = load_dataset(args.data)
    pre = PreprocessConfig(image_size=args.image_size, cutoff=30.0 * args.image_size / 256)
    side = min(read_image(split.train[0].path).shape[:2])
    cands = default_candidates(Candidate("base", pre, args.width, args.steps, args.lr), side)
    if args.only is not None:
        names = [c.name for c in cands]
        unknown = [n for n in args.only if n not in names]
        if unknown:
            raise SystemExit(f"--only: no candidate {', '.join(unknown)}; tune's candidates here: {', '.join(names)}.")
        cands = [c for c in cands if c.name in args.only]
    settings = TuneSettings(budget_s=args.budget_min * 60)
    rows = tune(split, cands, args.out, settings, data_name=args.data,
                on_row=lambda r: print(f"proxy {r.candidate.name}: {r.proxy_catch:.3f} {r.proxy_auroc:.3f} "
                                       f"{r.train_s:.0f}s", flush=True))
    done = [r for r in rows if r.status == "done"]
    table = []
    for r in done:  # the real test set is read only here, after tune has chosen
        entry = {"name": r.candidate.name, "proxy_auroc": r.proxy_auroc, "proxy_catch": r.proxy_catch,
                 "proxy_catch_5pct": r.proxy_catch_5pct, "train_s": r.train_s,
                 **real_metrics(r.checkpoint, split, settings.false_reject_rate)}
        print(json.dumps(entry), flush=True)
        table.append(entry)
    agreement = {}
    for key in ("auroc", "catch", "catch_5pct"):
        rho, p = spearmanr([t[f"proxy_{key}"] for t in table], [t[f"real_{key}"] for t in table])
        agreement[key] = {"spearman": float(rho), "p_value": float(p), "n": len(table)}
    result = {"data": args.data, "chosen": done[0].candidate.name, "candidates": table, "agreement": agreement}
    (args.out / "agreement.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(agreement), flush=True)


if __name__ == "__main__":
    main()
