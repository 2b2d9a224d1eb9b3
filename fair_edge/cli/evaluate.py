"""``fair-edge eval``: score a labelled test set with a checkpoint, print the metrics, write the report.

Ctrl-C, and SIGTERM (``kill``, ``systemctl stop``, a CI timeout) alike, stop it with one line: the report being written
is removed (its staging folder), an earlier one is kept; one that comes while the new report replaces the earlier
one stops eval once the new one is whole (``write_report``); exit 130 after Ctrl-C, 143 after SIGTERM.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fair_edge.calibration.threshold import DEFAULT_FALSE_REJECT_RATE
from fair_edge.cli.common import (Terminated, check_out_writable, console, friendly_errors, interrupt_exit_code,
                                  progress_bar, sigterm_as_interrupt)
from fair_edge.errors import ConfigError
from fair_edge.training.data import BUILTIN_DATASETS

app = typer.Typer()
REPORT_FOLDER = "metrics.json, scores.csv, roc.png, heatmaps/"   # what an --out that is a file is told eval writes


def print_metrics(result: dict, out: Path) -> None:
    table = Table(title=escape(f"evaluation ({out})"))
    table.add_column("metric")
    table.add_column("value", justify="right")
    catch = [k for k in result if k.startswith("catch_at_")]
    for key in ("images", "normal", "defective", "image_auroc", *catch, "f1_max", "f1_threshold", "pixel_auroc",
                "aupro", "suggested_threshold"):
        if key in result:
            value = result[key]
            table.add_row(key, escape(metric_cell(value)))
    Console().print(table)
    for key in ("note", "pixel_metrics"):
        if key in result:
            console.print(f"[yellow]{escape(str(result[key]))}[/]")
    regions = result.get("regions") or {}
    if "defects" in regions:
        console.print(f"regions at pixel threshold {regions['pixel_threshold']:.5g} ({regions['pixel_threshold_source']}): "
                      f"{regions['defects_found']} of {regions['defects']} defects found, {regions['defects_missed']} "
                      f"missed, {regions['false_regions']} false regions ({regions['false_regions_per_image']:.2f} per "
                      f"image; {regions['normal_images_with_regions']} normal images with any); per image: regions.csv")


def metric_cell(value) -> str:
    """A metrics.json value as the table shows it: a float to 4 decimals, an entry with a ``text`` (the false rejects
    a catch figure was measured at, ``evaluate.achieved_false_rejects``) as that text."""
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value["text"]) if isinstance(value, dict) and "text" in value else str(value)


def run_eval(checkpoint: Path, data: str, out: Path, *, device: str, batch: int, false_reject_rate: float,
             category: Optional[str] = None, pixel_threshold: Optional[float] = None) -> dict:
    from fair_edge.training.data import load_dataset
    from fair_edge.training.evaluate import evaluate
    from fair_edge.training.loop import resolve_device

    split = load_dataset(data, category, need_train=False)   # eval reads the test split only
    with progress_bar() as bar:
        task = bar.add_task("eval", total=len(split.test))
        result = evaluate(checkpoint, split, out, device=str(resolve_device(device)), batch=batch,
                          false_reject_rate=false_reject_rate, progress=lambda n: bar.advance(task, n),
                          pixel_threshold=pixel_threshold)
    print_metrics(result, out)
    return result


def stopped_line(exc: BaseException, out: Path) -> str:
    """The one line of an eval stopped by ``exc`` (Ctrl-C, or SIGTERM: ``Terminated``): its unfinished report files
    were removed (``write_report``'s staging folder), so OUT holds no complete new report; or, for a stop that came
    while the new report replaced the earlier one (``exc.report_written`` set), that the new report is whole."""
    how = "stopped by SIGTERM" if isinstance(exc, Terminated) else "interrupted"
    if getattr(exc, "report_written", None) is not None:
        return (f"eval {how} once its new report was in place: {out} holds it whole (the stop came while it replaced "
                f"the earlier one); its metrics are in {out / 'metrics.json'}.")
    return (f"eval {how}; no complete new report was written to {out} (its unfinished files were removed). Run the "
            "same command again.")


@app.command("eval")
@friendly_errors(smaller="pass a smaller --batch (images per forward pass)")
def eval_command(
    checkpoint: Path = typer.Argument(..., help="A checkpoint written by `fair-edge train` (e.g. runs/train-w32/final.pt)."),
    data: str = typer.Argument(..., help="Dataset with a test split: MVTec category folder, VisA split CSV, or "
                               f"{' / '.join(repr(name) for name in BUILTIN_DATASETS)} (ELPV solar cells)."),
    out: Optional[Path] = typer.Option(None, help="Report folder [default: next to the checkpoint, eval/]."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    batch: int = typer.Option(16, help="Images per forward pass (>= 1)."),
    false_reject_rate: float = typer.Option(DEFAULT_FALSE_REJECT_RATE, "--false-reject-rate",
                                            help="Target share of normal images rejected, for the suggested threshold "
                                            "(the same setting and default as `build --false-reject-rate`)."),
    frr: Optional[float] = typer.Option(None, "--frr", hidden=True, help="Deprecated: --false-reject-rate."),
    category: Optional[str] = typer.Option(None, help="Product inside a VisA CSV or an MVTec root."),
    pixel_threshold: Optional[float] = typer.Option(None, "--pixel-threshold", help="Map value above which pixels "
                                                    "form defect regions, for the region-level results (e.g. a "
                                                    "bundle's pixel_threshold); default: calibrated on the normal "
                                                    "test images."),
) -> None:
    """Evaluate a checkpoint: metrics.json, scores.csv, ROC/PRO plots, worst-case heatmaps, threshold. The report
    folder holds this evaluation only: an earlier report's files there are replaced."""
    if batch < 1:
        raise ConfigError(f"--batch must be >= 1 image per forward pass; found {batch}. Pass e.g. --batch 16.")
    if pixel_threshold is not None and not math.isfinite(pixel_threshold):
        raise ConfigError(f"--pixel-threshold must be a finite map value (score units); found {pixel_threshold}. "
                          "Pass e.g. a bundle's pixel_threshold, or leave it out to calibrate on the normal test "
                          "images.")
    if frr is not None:
        console.print("[yellow]--frr is deprecated; use --false-reject-rate.[/]")
        false_reject_rate = frr
    out = out or checkpoint.parent / "eval"
    check_out_writable(out, "an evaluation", "its report", REPORT_FOLDER)   # before scoring, not after it
    with sigterm_as_interrupt(stopped_line(Terminated(), out)):  # SIGTERM: cleaned up as after Ctrl-C, exit 143
        try:
            run_eval(checkpoint, data, out, device=device, batch=batch, false_reject_rate=false_reject_rate,
                     category=category, pixel_threshold=pixel_threshold)
        except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (Terminated): the report's staging folder is gone
            console.print(f"error: {stopped_line(exc, out)}", markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(interrupt_exit_code(exc)) from None
    console.print(f"[green]report:[/] {escape(str(out))}")
