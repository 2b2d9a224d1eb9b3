"""``fair-edge tune DATA``: rank candidate settings on proxy defects planted in held-out normal images."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from fair_edge.cli.common import check_width, console, friendly_errors, print_plain, shell_word
from fair_edge.demo.config import DEMO_IMAGE_SIZE, DEMO_LR, DEMO_STEPS, DEMO_WIDTH
from fair_edge.errors import ConfigError
from fair_edge.models.registry import WIDTH_FAMILY, get_family
from fair_edge.preprocess import PreprocessConfig
from fair_edge.training.tune import TuneSettings

_TUNE = TuneSettings()

app = typer.Typer()


@app.command("tune")
@friendly_errors
def tune(
    data: str = typer.Argument(..., help="Normal images: MVTec category folder (train/good is used), VisA CSV, "
                               "a folder of normal images, or 'elpv'. Test and defect images are never read."),
    width: int = typer.Option(DEMO_WIDTH, help="Base UNet width (32, 64 or 128); one candidate doubles it."),
    image_size: int = typer.Option(DEMO_IMAGE_SIZE, help="Base model input side in pixels (multiple of 16)."),
    cutoff: Optional[float] = typer.Option(None, help="Base high-pass cutoff D0 (default: 30 scaled from 256 px to --image-size)."),
    steps: int = typer.Option(DEMO_STEPS, help="Base training steps per candidate; one candidate doubles it."),
    budget_min: float = typer.Option(_TUNE.budget_s / 60, help="Wall-clock budget for all candidates, minutes."),
    false_reject_rate: float = typer.Option(_TUNE.false_reject_rate, help="Target false-reject rate of the ranking."),
    holdout: float = typer.Option(_TUNE.holdout, help="Share of the normal images held out for the proxy test."),
    out: Path = typer.Option(Path("runs/tune"), help="Output folder: tune.csv, tune.json, candidates/, proxy/. "
                             "One holding an earlier tune run is refused unless --overwrite."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Delete an earlier tune run in OUT (tune.csv, "
                                   "tune.json, candidates/, proxy/) before this one."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    category: Optional[str] = typer.Option(None, help="Product inside a VisA CSV or an MVTec root."),
    lr: float = typer.Option(DEMO_LR, help="Adam learning rate of the FAIR candidates (the demo's short-run rate); "
                             "the other families' candidates (LGFDR, PatchCore) use their own default."),
    seed: int = typer.Option(_TUNE.seed, help="Seed of the split, the planted defects and training."),
) -> None:
    """Choose settings from normal images only: train candidates (FAIR with one setting changed at a time,
    and each other model family: LGFDR, PatchCore), rank them by proxy defects caught at the target
    false-reject rate."""
    from fair_edge.training.data import load_dataset, read_frames
    from fair_edge.training.loop import resolve_device
    from fair_edge.training.tune import Candidate, check_fresh_tune, clear_tune, default_candidates
    from fair_edge.training.tune import tune as run_tune

    check_width(width)
    pre = base_preprocess(image_size, cutoff)
    settings = TuneSettings(holdout=holdout, false_reject_rate=false_reject_rate, budget_s=budget_min * 60, seed=seed)
    if not overwrite:
        check_fresh_tune(out)  # never replace an earlier run's results and checkpoints unasked
    split = load_dataset(data, category)
    # the first image that can be a model input (unreadable and undersized ones are skipped, as training skips them)
    side = min(next(read_frames(split.train))[1].shape[:2]) if split.train else 0
    candidates = default_candidates(Candidate("base", pre, width, steps, lr), side)
    if overwrite:
        for path in clear_tune(out):
            console.print(f"--overwrite: deleted {escape(str(path))}", highlight=False)
    print_plain(f"tune: {len(candidates)} candidates on {split.name}, budget {budget_min:g} min -> {out}")
    rows = run_tune(split, candidates, out, settings, resolve_device(device), data,
                    on_row=lambda r: console.print(f"  {r.candidate.name}: proxy catch {r.proxy_catch:.3f}, "
                                                   f"AUROC {r.proxy_auroc:.3f} ({r.train_s:.0f} s)"))
    table = Table(title=f"candidates, best first (proxy defects, {false_reject_rate:.1%} false rejects)")
    for col in ("name", "status", "catch", "catch@5%", "AUROC"):
        table.add_column(col)
    for r in rows:
        f = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        table.add_row(r.candidate.name, r.status, f(r.proxy_catch), f(r.proxy_catch_5pct), f(r.proxy_auroc))
    console.print(table)
    console.print(f"[green]chosen:[/] {escape(rows[0].candidate.name)}; {escape(str(out / 'tune.json'))}")
    print_plain(f"next: {rows[0].candidate.train_command(shell_word(data), settings)}")


def base_preprocess(image_size: int, cutoff: Optional[float]) -> PreprocessConfig:
    """The base candidate's pre-processing, checked by the base family (FAIR: a multiple of 16) before anything
    is read or written; ConfigError naming --image-size."""
    pre = PreprocessConfig(image_size=image_size, cutoff=cutoff)
    try:
        get_family(WIDTH_FAMILY).check_preprocess(pre)
    except ConfigError as exc:
        raise ConfigError(f"--image-size {image_size}: {exc} Pass e.g. --image-size "
                          f"{max(16, round(image_size / 16) * 16)}.") from None
    return pre
