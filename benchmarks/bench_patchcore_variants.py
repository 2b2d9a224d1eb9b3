"""PatchCore variants on one dataset: feature taps, local neighbourhood, coreset ratio, image size,
embedding width, map blur, re-weighting, and fusions of variants with each other or with LGFDR.

    python benchmarks/bench_patchcore_variants.py elpv:mono --out runs/equal-time [--variants pc-base ...]
        [--fuse pc-base+lgfdr pc-base+pc-256px] [--threads 1]

Same protocol as ``bench_equal_time.py`` (and the same OUT, so its rows can be fused with these): every
variant fits on the same 80 % of the normal training images (``tune.split_normals``, seed 0), the other
20 % give the fusion's normal statistics, the test split is read only to score. A variant is PatchCore's
defaults with one change or a named combination (``VARIANTS``); each writes OUT/NAME/row.json and is skipped when finished.
Reported per variant: fit CPU s, scoring CPU s per test image, image AUROC, caught at 0.5 % / 5 % false
rejects, and pixel AUROC / AUPRO where the dataset has masks. OUT/variants.json gathers them.

Every variant is a ``PatchcoreSettings`` (taps, local windows and the image score's top-k are settings
since issue #19 item 4), so its checkpoint records all it needs and scores anywhere. row.json also gives
the bank the fit got: rows, training patches and the effective coreset ratio (``bank_max`` caps it).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from dataclasses import replace
from pathlib import Path

import torch

from bench_equal_time import Row, bench_data, fusion_rows, run_row
from fair_edge.demo.config import DEMO_IMAGE_SIZE
from fair_edge.models.checkpoint import load_checkpoint
from fair_edge.models.patchcore.model import PatchcoreSettings
from fair_edge.models.registry import ModelSpec
from fair_edge.preprocess import PreprocessConfig


def pc(size: int = DEMO_IMAGE_SIZE, **changes) -> Row:
    """A PatchCore row: the default settings with ``changes``, at ``size`` px."""
    return Row(ModelSpec("patchcore", PreprocessConfig(size), replace(PatchcoreSettings(), **changes)), 0.0,
               one_pass=True)


VARIANTS: dict[str, Row] = {
    "pc-base": pc(),
    "pc-taps-s4-s8": pc(taps=(0, 1)),
    "pc-taps-s4-s16": pc(taps=(0, 2)),
    "pc-window-1": pc(local_windows=(1,)),
    "pc-window-5": pc(local_windows=(5,)),
    "pc-coreset-0.01": pc(coreset_ratio=0.01),
    "pc-coreset-0.25": pc(coreset_ratio=0.25, bank_max=40_000),
    "pc-no-reweight": pc(reweight=False),
    "pc-sigma-2": pc(smooth_sigma=2.0),
    "pc-embed-256": pc(embed_dim=256),
    "pc-embed-64": pc(embed_dim=64),
    "pc-256px": pc(256),
    "pc-256px-sigma-8": pc(256, smooth_sigma=8.0),
    # issue #19 item 4: fine and coarse detail in one bank, and a less single-pixel image score
    "pc-windows-1-3": pc(local_windows=(1, 3)),  # 32 channels per tap and window: the default's width
    "pc-windows-1-3-e256": pc(local_windows=(1, 3), embed_dim=256),  # the window-1 and window-3 features side by side
    "pc-top-64": pc(score_top_k=64),  # mean of the 64 highest map pixels (one 8 x 8 patch's area at 128 px)
    "pc-windows-1-3-e256-top-64": pc(local_windows=(1, 3), embed_dim=256, score_top_k=64),
    # round 2: a finer input with its bank not capped (10 % of 576 patches x the training images), two small movers together
    "pc-192px": pc(192, bank_max=25_000),
    "pc-sigma-2-top-64": pc(smooth_sigma=2.0, score_top_k=64),
    # round 3: each patch's grid position as two more feature channels (the weight from a sweep on mono)
    "pc-position-100": pc(position_weight=100.0),
}


def run_variant(name: str, row: Row, split, held, test, out: Path, with_masks: bool) -> dict:
    """Fit and score one variant (bench_equal_time.run_row); adds the fitted bank's size to row.json."""
    info = run_row(name, row, split, held, test, None, out, with_masks=with_masks)
    fit = load_checkpoint(Path(info["checkpoint"])).data_summary
    info.update(bank_rows=fit.get("bank_rows"), train_patches=(fit.get("fit_seconds") or {}).get("patches"),
                coreset_ratio_effective=fit.get("coreset_ratio_effective"), bank_capped=fit.get("bank_capped"))
    (out / name / "row.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), help=f"of {', '.join(VARIANTS)}")
    ap.add_argument("--fuse", nargs="*", default=[], metavar="A+B",
                    help="fusions of finished rows in OUT (variants or bench_equal_time rows), e.g. pc-base+lgfdr")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}.")
    torch.set_num_threads(args.threads)
    full, split, held = bench_data(args.data)
    results = {}
    for name in args.variants:
        done = args.out / name / "row.json"
        if not done.is_file():
            print(f"{name}: fitting ...", flush=True)
            run_variant(name, VARIANTS[name], split, held, full.test, args.out, full.has_masks)
        results[name] = json.loads(done.read_text())
    results.update(fusion_rows(args.out, {f"fusion-{pair}": tuple(pair.split("+")) for pair in args.fuse}))
    report = {"date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "command": " ".join(sys.argv), "data": args.data, "train_images": len(split.train),
              "held_out_normals": len(held), "rows": results}
    (args.out / "variants.json").write_text(json.dumps(report, indent=2) + "\n")
    print("| variant | fit CPU s | score CPU s / image | image AUROC | caught at 0.5 % | caught at 5 % | pixel AUROC | AUPRO |")
    for name, r in results.items():
        pixel = " | ".join(f"{r[k]:.4f}" if k in r else "-" for k in ("pixel_auroc", "aupro"))
        print(f"| {name} | {r['train_cpu_s']} | {r.get('score_cpu_s_per_image')} | {r['image_auroc']:.4f} | "
              f"{r['catch_at_0.5%']:.1%} | {r['catch_at_5.0%']:.1%} | {pixel} |")


if __name__ == "__main__":
    main()
