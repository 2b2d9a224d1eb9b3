"""The development suite: any family and settings over many products, each product reported, then the mean
and the worst product. Defaults are chosen on this table, never on one product (issue #27).

    python benchmarks/suite.py --out runs/suite --size 256 --rows pc-default pc-plain \\
        --product elpv:mono --product stone=/data/products/stone --product concrete=/data/fx/concrete [--threads 1]

Products: ``NAME=DATA`` or ``DATA`` (then its name is the last path part), where DATA is anything ``fair-edge
train`` reads (``elpv:mono``, an MVTec folder): ELPV mono and poly, the eight real-surface products that
``../shared/products/make_products.py`` builds (stone, tile, fabric, denim, sand, wood, gravel, bark) and the
procedural fixtures (``benchmarks/hires_fixture.py``: concrete, woven). Rows: ``ROWS`` (a family and its settings).

Protocol (``bench_equal_time.run_row``): each row fits on the same 80 % of the product's normal training images
(seed 0) and scores the test split at ``--size`` px; one torch thread unless ``--threads``. Per product and row:
image AUROC, caught at 0.5 % and 5 % false rejects (share of defective test images above the threshold that
rejects at most that share of the normal test images), pixel AUROC and AUPRO (FPR <= 0.3) where masks exist, fit
CPU s, scoring CPU ms per test image (reading and resizing included), bank MB (PatchCore). Each (size, product,
row) writes OUT/SIZE/PRODUCT/ROW/row.json and is not run again, so the suite resumes after a stop; OUT/suite-SIZE.json
and OUT/suite-SIZE.md gather what is finished, the Markdown with the mean and the worst product per row.

Re-scored rows (``rescored(BASE, setting=value)`` in ``ROWS``, e.g. ``lgfdr-2000-s2``) fit nothing: they score
BASE's finished checkpoint of the same product with a setting used only in scoring changed (a blur), so a
scoring setting costs minutes, not a fit; list BASE before them in ``--rows``.

Fusions (``--fuse NAME=A+B``) are computed from finished rows, nothing fitted again: each member is ``ROW`` (this
size) or ``ROW@SIZE`` (OUT/SIZE/PRODUCT/ROW), fused by ``fair-edge fuse``'s default rule (each member's map in units
of its held-out normals' spread, then the mean, on the first member's grid). ``--fuse fuse-scales=pc-default+
pc-default@128`` is two PatchCore banks at two scales. A product lacking a member is skipped and named.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from bench_equal_time import Row, bench_data, fuse_row, run_row, score_row
from fair_edge.demo.config import DEMO_LR, DEMO_STEPS, DEMO_WIDTH
from fair_edge.models.checkpoint import load_checkpoint, save_checkpoint
from fair_edge.models.fair.family import FairSettings
from fair_edge.models.lgfdr.model import LgfdrSettings
from fair_edge.models.patchcore.model import PLAIN, PatchcoreSettings
from fair_edge.models.registry import ModelSpec
from fair_edge.preprocess import PreprocessConfig

METRICS = ("image_auroc", "catch_at_0.5%", "catch_at_5.0%", "pixel_auroc", "aupro")


def patchcore(**changes):
    """A PatchCore row maker: today's defaults with ``changes``, at the size the suite runs."""
    return lambda size: Row(ModelSpec("patchcore", PreprocessConfig(size), replace(PatchcoreSettings(), **changes)),
                            0.0, one_pass=True)


# LGFDR's rows pinned to the settings they were measured with, so each row name keeps its meaning whatever the
# defaults become (lgfdr-2000 is today's default; main had 4 layers between commits e0cb5d7 and the revert)
LGFDR_SUITE_BASE = {"layers": 2}


def lgfdr(steps: int, **changes):
    """An LGFDR row maker: ``LGFDR_SUITE_BASE`` with ``changes``, ``steps`` Adam steps at 1e-3."""
    settings = replace(LgfdrSettings(), **{**LGFDR_SUITE_BASE, **changes})
    return lambda size: Row(ModelSpec("lgfdr", PreprocessConfig(size), settings), 1e-3, steps=steps)


def fair(width: int, steps: int, lr: float):
    """A FAIR row maker: UNet width ``width``, ``steps`` Adam steps at ``lr`` (batch 8), default scoring."""
    return lambda size: Row(ModelSpec("fair", PreprocessConfig(size), FairSettings(width)), lr, steps=steps)


@dataclass(frozen=True)
class Rescore:
    """A row that fits nothing: it scores row ``base``'s finished checkpoint (same product and size) with the
    settings ``changes``, which must be used only in scoring (a blur, an image score); its fit CPU s are the base's.
    A key ``a.b`` changes field ``b`` of the nested settings ``a`` (FAIR's ``scoring.k_color``)."""

    base: str
    changes: dict


def changed(settings, changes: dict):
    """``settings`` (a frozen dataclass) with ``changes``: ``{"field": v}``, or ``{"nested.field": v}`` for a field
    of a nested dataclass (FAIR's ``scoring.k_color``)."""
    flat = {k: v for k, v in changes.items() if "." not in k}
    nested: dict[str, dict] = {}
    for key in changes.keys() - flat.keys():
        head, _, tail = key.partition(".")
        nested.setdefault(head, {})[tail] = changes[key]
    flat.update({head: replace(getattr(settings, head), **sub) for head, sub in nested.items()})
    return replace(settings, **flat)


def rescored(base: str, **changes):
    """A re-scored row maker: row ``base``'s checkpoint with the scoring settings ``changes``, at any size."""
    return lambda size: Rescore(base, changes)


# name -> row at a given image size. "pc-plain" is the bar: the paper's PatchCore on the same backbone.
ROWS = {
    "pc-default": patchcore(),
    "pc-plain": patchcore(**PLAIN),
    "pc-before": patchcore(local_pad="excluded"),  # the family's construction before issue #27
    "pc-whole": patchcore(channel_reduction="none"),  # padding counted, both taps' channels whole, Lite0 statistics
    "pc-whole-uncapped": patchcore(channel_reduction="none", bank_max=PLAIN["bank_max"]),
    "pc-imagenet": patchcore(normalisation="imagenet"),
    "pc-lite1": patchcore(backbone="efficientnet_lite1"),  # issue #27 item 4: the larger Lite backbones on PyPI
    "pc-lite2": patchcore(backbone="efficientnet_lite2"),
    "pc-s4-s8": patchcore(taps=(0, 1)),  # the finer tap at stride 4 (issue #27 item 4: small defects on textures)
    "pc-s4-s16": patchcore(taps=(0, 2)),
    "pc-s4-s8-s16": patchcore(taps=(0, 1, 2), embed_dim=192),  # all three taps, 64 channels each as the default's
    # PatchCore's own settings, one change each from pc-default (issue #27 item 3: windows, width, coreset, score)
    "pc-w1": patchcore(local_windows=(1,)),
    "pc-w13": patchcore(local_windows=(1, 3)),
    "pc-w5": patchcore(local_windows=(5,)),
    "pc-e256": patchcore(embed_dim=256),
    "pc-bank20k": patchcore(bank_max=20_000),
    "pc-top64": patchcore(score_top_k=64),
    "pc-sigma2": patchcore(smooth_sigma=2.0),
    "pc-noreweight": patchcore(reweight=False),
    "pc-flip-lr": patchcore(bank_flips="left-right"),  # the bank also fitted on mirrored normals (issue #27 item 4)
    "pc-flip-all": patchcore(bank_flips="left-right+up-down"),
    "pc-chroma25": patchcore(colour_weight=25.0),  # each patch's chromaticity beside its features (issue #27 item 4)
    "pc-chroma100": patchcore(colour_weight=100.0),
    "pc-sigma8": rescored("pc-default", smooth_sigma=8.0),  # wider blurs: pc-default's checkpoints re-scored
    "pc-sigma16": rescored("pc-default", smooth_sigma=16.0),
    "pc-shift2": rescored("pc-default", score_shifts=2),  # four views shifted by half a patch, maps averaged
    "lgfdr-2000": lgfdr(2000),
    "lgfdr-2000-n025": lgfdr(2000, noise_std=0.25),  # LGFDR's training noise, its one setting chosen on the suite
    "lgfdr-2000-n1": lgfdr(2000, noise_std=1.0),
    "lgfdr-2000-h64": lgfdr(2000, hidden=64),  # LGFDR's width and depth, chosen on the suite (issue #27 item 3)
    "lgfdr-2000-l1": lgfdr(2000, layers=1),
    "lgfdr-2000-l4": lgfdr(2000, layers=4),
    "lgfdr-2000-s2": rescored("lgfdr-2000", smooth_sigma=2.0),  # the blur changes no weight: lgfdr-2000 re-scored
    "lgfdr-2000-s8": rescored("lgfdr-2000", smooth_sigma=8.0),
    "lgfdr-2000-s16": rescored("lgfdr-2000", smooth_sigma=16.0),
    # FAIR at the settings a CPU affords: the demo's (`fair-edge demo --model fair`: c = 32, 300 Adam steps at 1e-3),
    # and its scoring settings re-scored (the colour term's weight, the map's mean filter)
    "fair-demo": fair(DEMO_WIDTH, DEMO_STEPS, DEMO_LR),
    "fair-demo-k0": rescored("fair-demo", **{"scoring.k_color": 0.0}),
    "fair-demo-k1e-3": rescored("fair-demo", **{"scoring.k_color": 1e-3}),
    "fair-demo-k3e-3": rescored("fair-demo", **{"scoring.k_color": 3e-3}),
    "fair-demo-sm11": rescored("fair-demo", **{"scoring.smooth": 11}),
    "fair-demo-sm31": rescored("fair-demo", **{"scoring.smooth": 31}),
    "fair-1500": fair(DEMO_WIDTH, 1500, DEMO_LR),  # five times the demo's steps: does FAIR's gap close with training?
    "fair-1500-k0": rescored("fair-1500", **{"scoring.k_color": 0.0}),
}


def parse_product(text: str) -> tuple[str, str]:
    name, sep, data = text.partition("=")
    if sep:
        return name, data
    return (text.replace(":", "-") if ":" in text else Path(text).name), text


def run_product(name: str, data: str, rows: list[str], size: int, out: Path) -> dict:
    """Every row of ``rows`` on one product at ``size`` px (finished rows read back): {row: row.json}."""
    results, loaded = {}, None
    for row_name in rows:
        folder = out / str(size) / name
        done = folder / row_name / "row.json"
        if not done.is_file():
            loaded = loaded or bench_data(data)
            full, split, held = loaded
            row = ROWS[row_name](size)
            if isinstance(row, Rescore):
                print(f"{size} px {name} {row_name}: re-scoring {row.base} ...", flush=True)
                info = rescore_row(row_name, row, folder, held, full.test, with_masks=full.has_masks)
            else:
                print(f"{size} px {name} {row_name}: fitting ...", flush=True)
                info = run_row(row_name, row, split, held, full.test, None, folder, with_masks=full.has_masks)
            ckpt = load_checkpoint(Path(info["checkpoint"]))
            info.update(ckpt.model.impl.facts(ckpt.state_dict), data=data)
            done.write_text(json.dumps(info, indent=2) + "\n")
        results[row_name] = json.loads(done.read_text())
    return results


def rescore_row(name: str, row: Rescore, folder: Path, held, test, with_masks: bool) -> dict:
    """Score FOLDER/BASE's checkpoint with ``row.changes`` applied: writes FOLDER/NAME/{rescored.pt,row.json}."""
    base_json = folder / row.base / "row.json"
    if not base_json.is_file():
        raise SystemExit(f"{name} re-scores {row.base}'s checkpoint, and {base_json} does not exist: "
                         f"run --rows {row.base} {name} (in that order) on {folder.name}.")
    base = json.loads(base_json.read_text())
    ckpt = load_checkpoint(Path(base["checkpoint"]))
    model = replace(ckpt.model, settings=changed(ckpt.settings, row.changes))
    model.build(ckpt.state_dict)  # raises if a change would need other weights
    path = save_checkpoint(folder / name / "rescored.pt", replace(ckpt, model=model, train_state=None))
    info = {"model": model.describe(), "image_size": model.preprocess.image_size, "rescores": row.base,
            "changes": row.changes, "settings": model.settings.to_dict(), "steps": base.get("steps"),
            "train_cpu_s": base["train_cpu_s"]}
    return score_row(info, path, held, test, folder / name, with_masks)


def parse_fusion(text: str) -> tuple[str, list[tuple[str, int | None]]]:
    """``NAME=A+B[+...]``, each member ``ROW`` or ``ROW@SIZE`` -> (NAME, [(ROW, SIZE or None), ...])."""
    name, sep, members = text.partition("=")
    parts = [m.partition("@") for m in members.split("+")]
    if not sep or not name or len(parts) < 2 or any(not row or (at and not size.isdigit()) for row, at, size in parts):
        raise SystemExit(f"--fuse {text!r}: expected NAME=ROW+ROW[@SIZE], e.g. fuse-scales=pc-default+pc-default@128.")
    return name, [(row, int(size) if at else None) for row, at, size in parts]


def fuse_product(name: str, members: list[tuple[str, int | None]], product: str, size: int, out: Path) -> None:
    """Write OUT/SIZE/PRODUCT/NAME/row.json from its members' scores (a line instead if a member is missing)."""
    folders = [out / str(s or size) / product / row for row, s in members]
    missing = [str(f) for f in folders if not (f / "scores.npz").is_file()]
    if missing:
        print(f"{size} px {product} {name}: skipped, not finished: {', '.join(missing)}", flush=True)
        return
    folder = out / str(size) / product / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "row.json").write_text(json.dumps(fuse_row(folders, "mean"), indent=2) + "\n")


def summary_table(table: dict[str, dict[str, dict]], rows: list[str]) -> str:
    """Markdown: a line per product and row, then each row's mean and worst product (by image AUROC)."""
    lines = ["| product | row | image AUROC | caught at 0.5 % | caught at 5 % | pixel AUROC | AUPRO | fit CPU s | "
             "ms / image | bank MB |", "|---|---|---|---|---|---|---|---|---|---|"]
    cell = {"image_auroc": "{:.3f}", "catch_at_0.5%": "{:.1%}", "catch_at_5.0%": "{:.1%}", "pixel_auroc": "{:.3f}",
            "aupro": "{:.3f}"}
    for product, by_row in table.items():
        for row in rows:
            r = by_row.get(row)
            if r is None:
                continue
            bank = (r.get("memory_bank") or {}).get("mb", "-")
            ms = r.get("score_cpu_s_per_image")
            lines.append(f"| {product} | {row} | " + " | ".join(cell[k].format(r[k]) if k in r else "-" for k in METRICS)
                         + f" | {r['train_cpu_s']} | {'-' if ms is None else round(1000 * ms, 1)} | {bank} |")
    lines += ["", "| row | products | mean image AUROC | mean caught at 0.5 % | mean caught at 5 % | worst product "
              "(image AUROC) |", "|---|---|---|---|---|---|"]
    for row in rows:
        got = {p: by_row[row] for p, by_row in table.items() if row in by_row}
        if not got:
            continue
        worst = min(got, key=lambda p: got[p]["image_auroc"])
        means = [np.mean([r[k] for r in got.values()]) for k in METRICS[:3]]
        lines.append(f"| {row} | {len(got)} | {means[0]:.3f} | {means[1]:.1%} | {means[2]:.1%} | "
                     f"{worst} ({got[worst]['image_auroc']:.3f}) |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--product", action="append", required=True, metavar="[NAME=]DATA")
    ap.add_argument("--rows", nargs="+", default=["pc-default", "pc-plain"], help=f"of {', '.join(ROWS)}")
    ap.add_argument("--size", type=int, default=256, help="model input px (the demo: 128; fair-edge train: 256)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--fuse", action="append", default=[], metavar="NAME=ROW+ROW[@SIZE]",
                    help="a fusion of finished rows, computed for every product given (see above)")
    args = ap.parse_args()
    fusions = [parse_fusion(f) for f in args.fuse]
    unknown = [r for r in args.rows if r not in ROWS]
    if unknown:
        raise SystemExit(f"unknown row(s) {', '.join(unknown)}; choose from {', '.join(ROWS)}.")
    torch.set_num_threads(args.threads)
    table = {}
    for name, data in map(parse_product, args.product):
        table[name] = run_product(name, data, args.rows, args.size, args.out)
        for fusion, members in fusions:
            fuse_product(fusion, members, name, args.size, args.out)
    # the report gathers every finished product of this size, from this and earlier invocations
    for folder in sorted((args.out / str(args.size)).iterdir()):
        finished = {r.parent.name: json.loads(r.read_text()) for r in sorted(folder.glob("*/row.json"))}
        table[folder.name] = {**finished, **table.get(folder.name, {})}
    names = list(ROWS) + sorted({r for by_row in table.values() for r in by_row} - set(ROWS))
    rows = [r for r in names if any(r in by_row for by_row in table.values())]
    report = {"date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "command": " ".join(sys.argv), "machine": f"{platform.machine()}, {args.threads} torch thread(s)",
              "size": args.size, "products": table}
    (args.out / f"suite-{args.size}.json").write_text(json.dumps(report, indent=2) + "\n")
    markdown = summary_table(table, rows)
    (args.out / f"suite-{args.size}.md").write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
