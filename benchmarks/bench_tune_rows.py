"""``fair-edge tune``'s ranking rule applied to models already trained by bench_equal_time.py /
bench_patchcore_variants.py, then checked against the real defects: no candidate is trained again.

    python benchmarks/bench_tune_rows.py elpv:mono --out runs/equal-time --rows lgfdr pc-base pc-window-1

The rows were fitted on the same 80 % of the normal training images that ``fair-edge tune`` trains its
candidates on (``tune.split_normals``, seed 0). This script writes tune's proxy set from the other 20 %
(``tune.write_proxy_set``: each held-out normal plus one copy with a planted proxy defect) to OUT/proxy,
scores every row's checkpoint on it and ranks the rows by tune's rule (``tune_results.TuneRow.rank_key``: proxy
catch at 0.5 % false rejects, then proxy AUROC). Only then are the rows' real test figures (from their
row.json, scored by the bench) put beside the ranking, with Spearman's rank correlation.
A PatchCore variant with other taps or local window is scored under those constants
(``bench_patchcore_variants.model_constants``). OUT/tune_rows.json holds the table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from scipy.stats import spearmanr

from bench_equal_time import bench_data
from fair_edge.training import metrics
from fair_edge.training.evaluate import score_samples
from fair_edge.models.checkpoint import load_checkpoint
from fair_edge.training.tune import write_proxy_set
from fair_edge.training.tune_candidates import Candidate, TuneSettings
from fair_edge.training.tune_results import TuneRow


def proxy_row(name: str, row: dict, proxy, settings: TuneSettings) -> TuneRow:
    """Score one finished bench row on the proxy set; a TuneRow so that tune's own rank_key orders it."""
    fitted = load_checkpoint(Path(row["checkpoint"])).settings
    if "local_window" in row and (tuple(row["taps"]), (int(row["local_window"]),)) != \
            (tuple(getattr(fitted, "taps", ())), tuple(getattr(fitted, "local_windows", ()))):
        raise SystemExit(f"{name}: its row.json says taps {row['taps']}, window {row['local_window']}, which its "
                         "checkpoint does not record (a row from before they were settings): fit it again.")
    scored = score_samples(Path(row["checkpoint"]), proxy, batch=32)
    labels, scores = scored.labels, scored.scores
    return TuneRow(Candidate(name, None, 0, None), "done", metrics.image_auroc(scores, labels),
                   metrics.catch_rate(scores, labels, settings.false_reject_rate),
                   metrics.catch_rate(scores, labels, 0.05), row["train_cpu_s"], row["checkpoint"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data")
    ap.add_argument("--out", type=Path, required=True, help="the bench's OUT, holding ROW/row.json")
    ap.add_argument("--rows", nargs="+", required=True)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    settings = TuneSettings()
    _, _, held = bench_data(args.data)
    proxy = write_proxy_set(held, args.out / "proxy", settings)
    rows = {name: json.loads((args.out / name / "row.json").read_text()) for name in args.rows}
    ranked = sorted((proxy_row(n, r, proxy, settings) for n, r in rows.items()), key=TuneRow.rank_key, reverse=True)
    table = []
    for rank, t in enumerate(ranked, 1):
        real = rows[t.candidate.name]
        table.append({"rank": rank, "name": t.candidate.name, "proxy_auroc": t.proxy_auroc, "proxy_catch": t.proxy_catch,
                      "proxy_catch_5pct": t.proxy_catch_5pct, "real_auroc": real["image_auroc"],
                      "real_catch": real["catch_at_0.5%"], "real_catch_5pct": real["catch_at_5.0%"]})
    agreement = {}
    if len(table) >= 3:
        for key in ("auroc", "catch", "catch_5pct"):
            rho, p = spearmanr([t[f"proxy_{key}"] for t in table], [t[f"real_{key}"] for t in table])
            agreement[key] = {"spearman": float(rho), "p_value": float(p), "n": len(table)}
    best_real = max(table, key=lambda t: (t["real_catch"], t["real_auroc"]))["name"]
    result = {"data": args.data, "held_out_normals": len(held), "chosen": table[0]["name"],
              "best_on_real_defects": best_real, "rule": "tune_results.TuneRow.rank_key", "table": table,
              "agreement": agreement}
    (args.out / "tune_rows.json").write_text(json.dumps(result, indent=2) + "\n")
    print("| rank | row | proxy AUROC | proxy caught 0.5 % | proxy caught 5 % | real AUROC | real caught 0.5 % | real caught 5 % |")
    for t in table:
        print(f"| {t['rank']} | {t['name']} | {t['proxy_auroc']:.3f} | {t['proxy_catch']:.1%} | {t['proxy_catch_5pct']:.1%} | "
              f"{t['real_auroc']:.4f} | {t['real_catch']:.1%} | {t['real_catch_5pct']:.1%} |")
    print(json.dumps({"chosen": result["chosen"], "best_on_real_defects": best_real, "agreement": agreement}))


if __name__ == "__main__":
    main()
