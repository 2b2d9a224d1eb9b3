"""The demo at its budget for several training seeds: how much AUROC and caught/missed vary.

    python benchmarks/demo_seeds.py --seeds 0 1 2 --out /tmp/demo_seeds [--threads 2] [--model lgfdr|fair]

Each seed trains the demo model (``demo_model`` / ``demo_train_config``: LGFDR at 128 px for 100 epochs
by default, or FAIR width 32 for 300 steps) from scratch on ELPV mono, then runs the rest of the demo (eval, bundle, conveyor replay) exactly as
``fair-edge demo`` does. Prints one line per seed and a JSON summary (min / max over seeds).
Training is repeatable only on the same machine with the same torch thread count.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("runs/demo_seeds"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=None, help="default: the demo's length for the model")
    parser.add_argument("--model", default=None, help="lgfdr or fair (default: the demo's, lgfdr)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from fair_edge.cli.evaluate import run_eval
    from fair_edge.cli.train import run_training
    from fair_edge.demo.run import run_demo
    from fair_edge.demo.config import DEMO_DATA, DEMO_FALSE_REJECT_RATE, DEMO_MODEL, demo_model, demo_train_config

    spec = demo_model(args.model or DEMO_MODEL)

    rows = []
    for seed in args.seeds:
        out = args.out / f"seed{seed}"
        cfg = replace(demo_train_config(args.steps, spec.family), seed=seed)
        t0 = time.perf_counter()
        report = run_demo(
            out, fps=10.0, backend="onnxruntime", false_reject_rate=DEMO_FALSE_REJECT_RATE, say=print,
            train=lambda: run_training(DEMO_DATA, preprocess=spec.preprocess, cfg=cfg, out=out, device="cpu",
                                       resume=False, model=spec)[0],
            evaluate=lambda final: run_eval(final, DEMO_DATA, out / "report", device="cpu", batch=32,
                                            false_reject_rate=DEMO_FALSE_REJECT_RATE))
        row = {"seed": seed, "model": spec.describe(), "image_auroc": report["eval"]["image_auroc"], "caught": report["caught"],
               "defective": report["defective"], "false_rejects": report["false_rejects"],
               "threshold": report["threshold"], "wall_s": round(time.perf_counter() - t0, 1)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    auroc = [r["image_auroc"] for r in rows]
    caught = [r["caught"] for r in rows]
    print(json.dumps({"threads": args.threads, "seeds": args.seeds, "auroc_min": min(auroc), "auroc_max": max(auroc),
                      "caught_min": min(caught), "caught_max": max(caught), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
