"""Detection at equal CPU training time: FAIR at the demo's and the paper's settings, LGFDR, PatchCore,
a tuned setting, and fusions (FAIR + LGFDR, PatchCore + LGFDR), on one dataset with a labelled test split.

    python benchmarks/bench_equal_time.py elpv:mono --out runs/equal-time [--rows fair-demo lgfdr ...]
        [--tuned runs/tune/tune.json] [--threads 1]

Budget: the CPU seconds (process time, so other jobs on the machine do not shorten it) that the FAIR
demo settings (width 32, 128 px, Butterworth D0 15, Adam 1e-3, batch 8) spend on the demo's 300 steps,
setup included, measured by the ``fair-demo`` row (run it first; later runs read it back). Every other
row trains for as many steps as fit its share of that budget: a probe trainer (not counted) times a few
steps, then the real run is given steps = (budget - setup) / CPU s per step, so its learning-rate
schedule completes. Its CPU time as run is reported next to the budget.

PatchCore has no steps: it fits in one pass (backbone over the training images, coreset, neighbour
table), so it gets no budget; its fit CPU time is reported, and the ``lgfdr-at-patchcore-time`` row
gives LGFDR exactly that fit time (budget taken from the ``patchcore`` row), the other fair comparison.
Every row also reports its scoring CPU time per test image (reading and resizing included).

Data: every row trains on the same 80 % of the normal training images (``tune.split_normals``, seed 0);
the held-out 20 % give the fusion's per-model normal statistics (``fusion.NormalStats`` of the map
maxima, as ``fair-edge fuse`` fits them); the test split is read only to score. Where the dataset has
masks, pixel AUROC and AUPRO (FPR <= 0.3) are reported too, for fusions as well. "Caught at r" = share of
defective test images scored above the threshold that rejects at most r of the normal test images
(``metrics.catch_rate``, the line's rule).

Each row writes OUT/ROW/final.pt and OUT/ROW/row.json, and a finished row is not run again, so the
rows can be run in several invocations and an interrupted run loses only the row in flight. Fusion rows
(pairs in FUSIONS) are computed whenever both members are finished. OUT/report.json gathers them all.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fair_edge.training import metrics
from fair_edge.training.data import DatasetSplit, load_dataset
from fair_edge.demo.config import DEMO_IMAGE_SIZE, DEMO_LR, DEMO_STEPS, DEMO_WIDTH
from fair_edge.training.evaluate import score_samples
from fair_edge.runtime.fusion import RULES, NormalStats, fuse_maps
from fair_edge.models.fair.family import FairSettings
from fair_edge.models.lgfdr.model import LgfdrSettings
from fair_edge.models.patchcore.model import PatchcoreSettings
from fair_edge.models.registry import ModelSpec, get_family
from fair_edge.models.training_contract import config_from_options
from fair_edge.preprocess import PreprocessConfig
from fair_edge.training.tune import split_normals

SEED, HOLDOUT, PROBE_STEPS = 0, 0.2, 4
# PreprocessConfig(S): Butterworth, cutoff scaled from the paper's 30 at 256 px (15 at 128 px)


@dataclass(frozen=True)
class Row:
    """One model to train: its spec, learning rate, and either fixed steps or a share of the budget
    (the training CPU s of row ``budget_from``). ``one_pass``: the family fits in one pass (PatchCore),
    no steps and no budget."""

    model: ModelSpec
    lr: float
    steps: int | None = None
    budget_share: float = 1.0
    budget_from: str = "fair-demo"
    one_pass: bool = False


ROWS: dict[str, Row] = {
    "fair-demo": Row(ModelSpec("fair", PreprocessConfig(DEMO_IMAGE_SIZE), FairSettings(DEMO_WIDTH)), DEMO_LR, steps=DEMO_STEPS),
    "lgfdr": Row(ModelSpec("lgfdr", PreprocessConfig(DEMO_IMAGE_SIZE), LgfdrSettings()), 1e-3),
    "fair-demo-half": Row(ModelSpec("fair", PreprocessConfig(DEMO_IMAGE_SIZE), FairSettings(DEMO_WIDTH)), DEMO_LR, budget_share=0.5),
    "lgfdr-half": Row(ModelSpec("lgfdr", PreprocessConfig(DEMO_IMAGE_SIZE), LgfdrSettings()), 1e-3, budget_share=0.5),
    "fair-paper-w32": Row(ModelSpec("fair", PreprocessConfig(256), FairSettings(32)), 1e-4),
    "lgfdr-256": Row(ModelSpec("lgfdr", PreprocessConfig(256), LgfdrSettings()), 1e-3),
    "fair-paper-w128": Row(ModelSpec("fair", PreprocessConfig(256), FairSettings(128)), 1e-4),
    "patchcore": Row(ModelSpec("patchcore", PreprocessConfig(DEMO_IMAGE_SIZE), PatchcoreSettings()), 0.0, one_pass=True),
    "lgfdr-at-patchcore-time": Row(ModelSpec("lgfdr", PreprocessConfig(DEMO_IMAGE_SIZE), LgfdrSettings()), 1e-3,
                                   budget_from="patchcore"),
}
FUSIONS = {"fusion-fair-demo+lgfdr": ("fair-demo", "lgfdr"),
           "fusion-half-budgets": ("fair-demo-half", "lgfdr-half"),
           "fusion-patchcore+lgfdr": ("patchcore", "lgfdr"),
           "fusion-patchcore+lgfdr-at-patchcore-time": ("patchcore", "lgfdr-at-patchcore-time")}


def bench_data(data: str) -> tuple[DatasetSplit, DatasetSplit, list]:
    """(the whole dataset, its training part as a split, the held-out normals): what every bench row uses."""
    full = load_dataset(data)
    train, held = split_normals(full.train, HOLDOUT, SEED)
    return full, DatasetSplit(full.name, train), held


def tuned_row(tune_json: Path) -> Row:
    """The settings ``fair-edge tune`` chose (OUT/tune.json), at the full budget."""
    chosen = json.loads(tune_json.read_text())["chosen"]
    impl = get_family(chosen["family"])
    settings = impl.settings_from_options({"width": int(chosen["width"])})
    return Row(ModelSpec(impl.key, PreprocessConfig.from_dict(chosen["preprocess"]), settings), float(chosen["lr"]))


def make_trainer(row: Row, split: DatasetSplit, steps: int | None, out: Path):
    """The family's trainer with its default config, where the config has them: batch 8, the row's lr,
    ``steps``, seed 0, no periodic checkpoints (PatchCore's FitConfig takes only batch and seed)."""
    cfg = config_from_options(row.model.impl.training().default_train_config(),
                              dict(batch=8, lr=row.lr, steps=steps, seed=SEED, save_every=10**9, log_every=10))
    return row.model.impl.training().make_trainer(split, row.model, cfg, out, torch.device("cpu"))


def fit_steps(row: Row, split: DatasetSplit, budget_s: float, out: Path) -> tuple[int, dict]:
    """Steps that fit ``budget_s`` CPU seconds, from a probe trainer's setup and per-step CPU time."""
    c0 = time.process_time()
    probe = make_trainer(row, split, 10**6, out / "probe")
    setup = time.process_time() - c0
    probe.train_step(0)  # warm-up step, not timed
    c0 = time.process_time()
    for i in range(1, PROBE_STEPS + 1):
        probe.train_step(i)
    per_step = (time.process_time() - c0) / PROBE_STEPS
    return max(1, int((budget_s - setup) / per_step)), {"probe_setup_cpu_s": round(setup, 1),
                                                        "probe_cpu_s_per_step": round(per_step, 3)}


def run_row(name: str, row: Row, split: DatasetSplit, held, test, budget_s: float | None, out: Path,
            with_masks: bool = False) -> dict:
    """Train ``row`` on ``split``, score ``test`` and the ``held`` normals; writes OUT/NAME/row.json."""
    info: dict = {"model": row.model.describe(), "image_size": row.model.preprocess.image_size,
                  "filter": row.model.preprocess.filter, "cutoff": row.model.preprocess.cutoff, "lr": row.lr,
                  "settings": row.model.settings.to_dict()}
    if row.one_pass:
        steps = None
    elif row.steps is not None:
        steps = row.steps
    else:
        if budget_s is None:
            raise SystemExit(f"{name} needs the budget: run the {row.budget_from} row first (or pass --budget-s).")
        steps, probe = fit_steps(row, split, budget_s * row.budget_share, out / name)
        info.update(probe, budget_cpu_s=round(budget_s * row.budget_share, 1))
    c0, w0 = time.process_time(), time.perf_counter()
    trainer = make_trainer(row, split, steps, out / name)
    final = trainer.run()
    info.update(steps=steps, train_cpu_s=round(time.process_time() - c0, 1),
                train_wall_s=round(time.perf_counter() - w0, 1))
    return score_row(info, final, held, test, out / name, with_masks)


def score_row(info: dict, final: Path, held, test, folder: Path, with_masks: bool = False) -> dict:
    """Score ``test`` and the ``held`` normals with checkpoint ``final``; adds the line summary, pixel metrics and
    scoring CPU s per image to ``info``, writes FOLDER/scores.npz and FOLDER/row.json; returns ``info``."""
    c0 = time.process_time()
    test = score_samples(final, test, batch=32, with_masks=with_masks)
    info["score_cpu_s_per_image"] = round((time.process_time() - c0) / len(test.scores), 4)
    normal = score_samples(final, held, batch=32)
    info.update(metrics.line_summary(test.scores, test.labels),
                **pixel_summary(test.maps, test.masks, test.regions), checkpoint=str(final))
    extra = {} if test.masks is None else {"masks": np.packbits(test.masks, axis=-1),
                                           "mask_width": test.masks.shape[-1],
                                           "mask_labels": np.asarray(test.regions, np.int32)}
    np.savez_compressed(folder / "scores.npz", test_maps=np.stack(test.maps).astype(np.float16),
                        test_scores=test.scores, labels=test.labels, held_scores=normal.scores,
                        held_map_max=normal.maps.reshape(len(normal.maps), -1).max(axis=1), **extra)
    (folder / "row.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def pixel_summary(maps: np.ndarray, masks: np.ndarray | None, regions: np.ndarray | None = None) -> dict:
    """{"pixel_auroc", "aupro"} of (N, S, S) maps against (N, S, S) bool masks; AUPRO's regions the (N, S, S) int32
    region labels ``regions`` (``fair_edge.masks.labels_on_map_grid``; regions > 0 == masks), or None for the
    masks' 8-connected components on the map grid; {} without masks."""
    if masks is None:
        return {}
    maps = np.asarray(maps, np.float32)
    return {"pixel_auroc": metrics.pixel_auroc(maps, masks),
            "aupro": metrics.aupro(maps, masks, fpr_limit=0.3, regions=regions)}


def fuse_row(folders: list[Path], rule: str) -> dict:
    """One fusion of finished rows (each folder holds row.json and scores.npz) under ``rule``: its line summary,
    pixel metrics where masks exist, and the members' summed fit CPU s and scoring CPU s per image."""
    data = [np.load(f / "scores.npz") for f in folders]
    # fair-edge fuse fits each member's stats on its map maxima (PatchCore's re-weighted score is not one)
    stats = [NormalStats.fit(d["held_map_max"] if "held_map_max" in d else d["held_scores"]) for d in data]
    labels = data[0]["labels"]
    for f, d in zip(folders[1:], data[1:]):
        if not np.array_equal(d["labels"], labels):
            raise SystemExit(f"{f} scored another test set than {folders[0]}: fusion needs the same images.")
    masks = regions = None
    if "mask_labels" in data[0]:   # each region of the full-size mask one region (older rows: the masks' own)
        regions = data[0]["mask_labels"]
        masks = regions > 0
    elif "masks" in data[0]:
        masks = np.unpackbits(data[0]["masks"], axis=-1, count=int(data[0]["mask_width"])).astype(bool)
    members = [json.loads((f / "row.json").read_text()) for f in folders]
    fused_maps, fused = fuse_maps([d["test_maps"].astype(np.float32) for d in data], stats, rule)
    per_image = [r.get("score_cpu_s_per_image") for r in members]
    return {"members": [str(f) for f in folders], "rule": rule,
            "train_cpu_s": round(sum(r["train_cpu_s"] for r in members), 1),
            "score_cpu_s_per_image": None if None in per_image else round(sum(per_image), 4),
            **metrics.line_summary(fused, labels), **pixel_summary(fused_maps, masks, regions)}


def fusion_rows(out: Path, fusions: dict[str, tuple[str, ...]] = FUSIONS) -> dict:
    """Each fusion of ``fusions`` (name -> member rows) whose members are finished, under each rule."""
    rows = {}
    for name, members in fusions.items():
        folders = [out / m for m in members]
        if all((f / "scores.npz").is_file() for f in folders):
            for rule in RULES:
                rows[f"{name} ({rule})"] = {**fuse_row(folders, rule), "members": list(members)}
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--rows", nargs="+", default=list(ROWS), help=f"of {', '.join(ROWS)}, tuned")
    ap.add_argument("--tuned", type=Path, default=None, help="tune.json whose chosen settings make the 'tuned' row")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="CPU seconds for rows budgeted from fair-demo (default: the fair-demo row's)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = dict(ROWS)
    if args.tuned is not None:
        rows["tuned"] = tuned_row(args.tuned)
    full, split, held = bench_data(args.data)
    train = split.train
    results = {}
    for name in args.rows:
        done = args.out / name / "row.json"
        if not done.is_file():
            budget, source = None, args.out / rows[name].budget_from / "row.json"
            if rows[name].budget_from == "fair-demo" and args.budget_s is not None:
                budget = args.budget_s
            elif source.is_file():
                budget = json.loads(source.read_text())["train_cpu_s"]
            print(f"{name}: training ...", flush=True)
            run_row(name, rows[name], split, held, full.test, budget, args.out, with_masks=full.has_masks)
        results[name] = json.loads(done.read_text())
        print(name, json.dumps(results[name]), flush=True)
    for name in rows:
        if name not in results and (args.out / name / "row.json").is_file():
            results[name] = json.loads((args.out / name / "row.json").read_text())
    results.update(fusion_rows(args.out))
    report = {"date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "command": " ".join(sys.argv), "machine": f"{platform.machine()}, {args.threads} torch thread(s)",
              "data": args.data, "train_images": len(train), "held_out_normals": len(held),
              "n_test_normal": int(sum(s.label == 0 for s in full.test)),
              "n_test_defect": int(sum(s.label == 1 for s in full.test)), "rows": results}
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    for name, r in results.items():
        pixel = f"  pixel AUROC {r['pixel_auroc']:.4f}  AUPRO {r['aupro']:.4f}" if "aupro" in r else ""
        print(f"{name:32s} AUROC {r['image_auroc']:.4f}  caught@0.5% {r['catch_at_0.5%']:.1%}  "
              f"caught@5% {r['catch_at_5.0%']:.1%}  cpu {r['train_cpu_s']} s  "
              f"score {r.get('score_cpu_s_per_image')} s/image{pixel}")


if __name__ == "__main__":
    main()
