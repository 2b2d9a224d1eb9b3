"""``fair-edge tune DATA``: rank candidate settings on proxy defects planted in held-out normal images.

Ctrl-C (exit 130) or SIGTERM (exit 143) stops a tune with one line: nothing is chosen and tune has no --resume, so the
same command starts over; it deletes what the interrupted run left in OUT (candidates/, proxy/, a tune.csv without
tune.json). The candidates that finished before a stop (Ctrl-C, SIGTERM, an error) are ranked in OUT/tune.csv until
then, and the line or error names it. Results that cannot be written (a full disk) are one error line naming OUT and
the fix, and the same command then starts over the same way. A candidate that runs out of memory is a warning line
and ``out of memory`` in tune.csv, and the next one runs (``tune.score_within_memory``). A second tune into an OUT that
a running tune holds (``TUNE_LOCK``) is refused.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from fair_edge.cli.common import (Terminated, check_out_writable, check_width, console, friendly_errors,
                                  interrupt_exit_code, print_plain, sigterm_as_interrupt)
from fair_edge.demo.config import DEMO_IMAGE_SIZE, DEMO_LR, DEMO_STEPS, DEMO_WIDTH
from fair_edge.errors import ConfigError
from fair_edge.models.registry import WIDTH_FAMILY, get_family
from fair_edge.preprocess import PreprocessConfig
from fair_edge.runlock import LockHolder, hold_lock
from fair_edge.training.tune_candidates import TuneSettings

_TUNE = TuneSettings()
TUNE_LOCK = ".tune.lock"  # held in OUT while a tune runs: a second tune there is refused, not mixed in
START_OVER = "nothing chosen; run the same command again to start over"

app = typer.Typer()


@app.command("tune")
@friendly_errors(smaller="tune with a smaller --image-size or fewer normal images")
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
                             "One holding an earlier finished tune run is refused unless --overwrite; what an "
                             "interrupted one left is deleted."),
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
    from fair_edge.training.data import load_dataset
    from fair_edge.training.pixels import read_frames
    from fair_edge.training.loop import TrainingInterrupted, resolve_device
    from fair_edge.training.tune import tune as run_tune
    from fair_edge.training.tune_candidates import Candidate, default_candidates
    from fair_edge.training.tune_results import check_fresh_tune

    check_width(width)
    check_out_writable(out, "a tune run", "its results and candidates", "tune.csv, tune.json, candidates/, proxy/")
    run_device = resolve_device(device)   # before the data loads and candidates train
    pre = base_preprocess(image_size, cutoff)
    settings = TuneSettings(holdout=holdout, false_reject_rate=false_reject_rate, budget_s=budget_min * 60, seed=seed)
    if not overwrite:
        check_fresh_tune(out)  # never replace an earlier run's results and checkpoints unasked
    split = load_dataset(data, category)
    # the first image that can be a model input (unreadable and undersized ones are skipped, as training skips them)
    side = min(next(read_frames(split.train))[1].shape[:2]) if split.train else 0
    candidates = default_candidates(Candidate("base", pre, width, steps, lr), side)
    finished: list = []

    def on_row(r) -> None:
        finished.append(r)
        console.print(f"  {r.candidate.name}: proxy catch {r.proxy_catch:.3f}, AUROC {r.proxy_auroc:.3f} "
                      f"({r.train_s:.0f} s)")

    busy = functools.partial(tune_busy, out)
    with sigterm_as_interrupt(f"tune stopped by SIGTERM; {START_OVER}."), \
            hold_lock(out, TUNE_LOCK, "fair-edge tune", busy):  # held until the results are written
        clear_earlier(out, overwrite)
        print_plain(f"tune: {len(candidates)} candidates on {split.name}, budget {budget_min:g} min -> {out}")
        try:
            rows = run_tune(split, candidates, out, settings, run_device, data, on_row=on_row, category=category)
        except (TrainingInterrupted, KeyboardInterrupt) as exc:  # Ctrl-C; SIGTERM is Terminated, a KeyboardInterrupt
            print_plain(stopped_line(exc, len(finished), kept_results(out)))
            raise typer.Exit(interrupt_exit_code(exc)) from None
    table = Table(title=f"candidates, best first (proxy defects; target {false_reject_rate:.1%} false rejects)")
    for col in ("name", "status", "catch", "catch@5%", "AUROC"):
        table.add_column(col)
    for r in rows:
        f = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        table.add_row(r.candidate.name, r.status, f(r.proxy_catch), f(r.proxy_catch_5pct), f(r.proxy_auroc))
    console.print(table)
    for line in false_reject_lines(rows):
        print_plain(line)
    console.print(f"[green]chosen:[/] {escape(rows[0].candidate.name)}; {escape(str(out / 'tune.json'))}")
    print_plain(f"next: {rows[0].candidate.train_command(data, settings, category)}")  # tune.json's train_command


def false_reject_lines(rows: list) -> list[str]:
    """Under the table, one line per catch column: the false rejects its figures were measured at on the held-out
    normals (``TuneRow.false_rejects``, ``false_rejects_5pct``: "k of n normals (r %)", with the note when they are
    too few to resolve the rate, so a catch at 0 false rejects is not read as one at the target). A column whose
    rows were measured at different false rejects (ties among a candidate's normal scores) names the rows of
    each; rows without the figure (skipped) are left out."""
    lines = []
    for column, attribute in (("catch", "false_rejects"), ("catch@5%", "false_rejects_5pct")):
        by_text: dict[str, list[str]] = {}
        for r in rows:
            achieved = getattr(r, attribute)
            if achieved is not None:
                by_text.setdefault(achieved["text"], []).append(r.candidate.name)
        if len(by_text) == 1:
            lines.append(f"{column}: measured at false rejects {next(iter(by_text))}")
        elif by_text:
            lines.append(f"{column}: measured at false rejects " +
                         "; ".join(f"{text} ({', '.join(names)})" for text, names in by_text.items()))
    return lines


def stopped_line(exc: BaseException, finished: int, kept: Optional[Path] = None) -> str:
    """The one line of a tune stopped by ``exc`` (Ctrl-C: TrainingInterrupted from a stepped trainer, else
    KeyboardInterrupt; SIGTERM: ``Terminated``) after ``finished`` candidates: tune has no --resume, and a
    candidate's last.pt is no result, so it says nothing was chosen and how to start over; ``kept``: the tune.csv
    ranking the finished candidates (``tune_results.KeptRanking``), None when none was written."""
    how = "stopped by SIGTERM" if isinstance(exc, Terminated) else "interrupted"
    line = f"tune {how} after {finished} candidate{'' if finished == 1 else 's'}; {START_OVER}"
    if kept is not None:
        line += (f"; the finished candidates are ranked in {kept} (the same command deletes it as it starts over: "
                 "copy it first)")
    return line


def kept_results(out: Path) -> Optional[Path]:
    """OUT/tune.csv when a stopped tune left one (the finished candidates, ranked; ``clear_earlier`` deleted any
    earlier one before this run began), else None."""
    from fair_edge.training.tune_results import TUNE_FINISHED

    csv_path = out / "tune.csv"
    return csv_path if csv_path.is_file() and not (out / TUNE_FINISHED).exists() else None


def clear_earlier(out: Path, overwrite: bool) -> None:
    """Delete, each named on stderr, an earlier tune run in ``out`` (--overwrite), or what an interrupted one left
    there (candidates/, proxy/, a tune.csv without tune.json: ``unfinished_tune``), so the new run's files are its
    own. Call it holding ``TUNE_LOCK``: no other tune is writing there."""
    from fair_edge.training.runs import remove_outputs
    from fair_edge.training.tune_results import clear_tune, unfinished_tune

    if overwrite:
        for path in clear_tune(out):
            console.print(f"--overwrite: deleted {escape(str(path))}", highlight=False)
        return
    left = unfinished_tune(out)
    if left:
        print_plain(f"note: {out} holds an unfinished tune run ({', '.join(left)}; no tune.json: it was interrupted "
                    "or its results could not be written); deleted it to start over.")
        remove_outputs(out, tuple(left))


def tune_busy(out: Path, holder: LockHolder) -> str:
    """The refusal of a tune into an ``out`` that another tune is writing (``holder``: who holds the lock, written as
    its pid and what it runs: ``LockHolder.__str__``)."""
    return (f"--out {out} is in use by another fair-edge tune ({holder}); wait for it to end, or tune into another "
            "folder (--out NEW_FOLDER).")


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
