"""``fair-edge fuse B1 B2 ... --normal DIR``: one fused bundle (one score, one threshold) from several bundles.

Ctrl-C and SIGTERM (``kill``, ``systemctl stop``, a CI timeout) stop a fuse alike: its temporary staging folder beside
--out is removed, the previous fused bundle there kept, and one line says so (``cli.build.stopped_line``); exit 130
after Ctrl-C, 143 after SIGTERM."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal, Optional

import typer
from rich.markup import escape

from fair_edge.calibration.threshold import DEFAULT_FALSE_REJECT_RATE
from fair_edge.cli.common import console, friendly_errors, print_plain, shell_word, sigterm_as_interrupt
from fair_edge.runtime.fusion import RULES

app = typer.Typer()
log = logging.getLogger(__name__)

# a stop before the fuse writes anything (while the members are checked and the images read)
EARLY_STOP = "nothing unfinished is left at --out (a fused bundle there is as it was). Run the same command again."


@app.command("fuse")
@friendly_errors
@sigterm_as_interrupt(f"fuse stopped by SIGTERM; {EARLY_STOP}", f"fuse interrupted; {EARLY_STOP}")
def fuse(
    bundles: list[Path] = typer.Argument(..., help="Two or more bundles from `fair-edge build` (any family or settings; "
                                         "their maps must cover the same part of the frame: the same --roi at "
                                         "training, or none)."),
    normal: str = typer.Option(..., "--normal", help="Held-out normal images: each model's map-max statistics and "
                               "the fused threshold. A folder, or a dataset `train` takes (its held-out normal "
                               "test images), as for `build --normal`."),
    category: Optional[str] = typer.Option(None, "--category", help="Product inside a VisA CSV or an MVTec root "
                                           "given as --normal."),
    out: Path = typer.Option(Path("runs/fused"), help="Output folder: new, empty, or a fused bundle to replace whole "
                             "(members are copied into it; it is made next to --out and moved into place, so a fused "
                             "bundle's own m0, m1 can be fused again into it)."),
    rule: Literal[tuple(RULES)] = typer.Option("mean", help="How normalised maps combine, pixel by pixel: mean "
                                               "(what the models agree on) or max (what any model sees)."),
    false_reject_rate: float = typer.Option(DEFAULT_FALSE_REJECT_RATE, help="Target false-reject rate of the threshold."),
    backend: str = typer.Option("onnxruntime", help="Backend that scores the normal images for calibration."),
) -> None:
    """Fuse several bundles: each model's map is normalised by the mean and spread of its own map maximum on the
    normal images, then combined."""
    from fair_edge.training.held_out import images_for
    from fair_edge.training.pixels import read_frames
    from fair_edge.cli.build import exit_stopped
    from fair_edge.export.build import in_place
    from fair_edge.runtime.fusion import build_fused_bundle

    paths = images_for(normal, "normal", category)
    check_members_held_out(bundles, paths, f"--normal {normal}")
    frames = [frame for _, frame in read_frames(paths, largest_tiling(bundles), what="--normal images")]
    try:
        fused = build_fused_bundle(bundles, out, frames, rule, false_reject_rate, backend)
        with in_place(out):   # a stop while the result prints finds the fused bundle complete
            print_fused(bundles, fused, out, rule)
    except KeyboardInterrupt as exc:   # Ctrl-C, or SIGTERM (Terminated): the staging folder is gone
        raise exit_stopped(exc, out, "fuse", "fused bundle") from None


def print_fused(bundles: list[Path], fused, out: Path, rule: str) -> None:
    """The result of a fuse: one line per member (``bundles``: as given) with its normal map-max statistics, the
    fused bundle's threshold with the false-reject rate it reached, the next command."""
    from fair_edge.cli.build import describe_threshold

    for i, (given, m, s) in enumerate(zip(bundles, fused.members, fused.stats)):   # m.root: its copy, m{i}/
        print_plain(f"  m{i}: {given}: {m.model.describe()}; normal map max {s.mean:.5g} +- {s.std:.3g}")
    console.print(f"[green]fused bundle:[/] {escape(str(out))} (rule {rule}, threshold {fused.threshold.value:.4g}: "
                  f"{escape(describe_threshold(fused.threshold))})")   # the rate reached, not only the target
    print_plain(f"next: fair-edge run --bundle {shell_word(out)} --source FRAMES")


def largest_tiling(bundles: list[Path]):
    """The tiling (``fair_edge.tiling.TilingConfig``) of the member with the largest tile, None when no member is
    tiled: a held-out image that holds its tile holds every member's (members map the same ``tiling.roi``, or
    none), so the images are checked against it before any member scores them."""
    from fair_edge.export.bundle import load_bundle

    tilings = [t for t in (load_bundle(path).preprocess.tiling for path in bundles) if t is not None]
    return max(tilings, key=lambda t: t.tile, default=None)


def check_members_held_out(bundles: list[Path], paths: list[Path], given: str) -> None:
    """DataError when any of ``paths`` (the images of ``given``, "--normal DIR") is an image a member was fitted
    on (``cli.build.refuse_training_images``, by the record its weights.pt keeps): the fused threshold and each
    member's statistics would sit too low. One warning names the members whose weights do not record their
    training images (built from a checkpoint an earlier fair-edge wrote): they are not checked."""
    from fair_edge.cli.build import refuse_training_images
    from fair_edge.export.bundle import load_bundle
    from fair_edge.models.checkpoint import load_checkpoint

    unchecked = []
    for path in bundles:
        weights = load_bundle(path).weights_path
        record = load_checkpoint(weights).training_images if weights is not None else None
        if record is None:
            unchecked.append(str(path))
        else:
            refuse_training_images(record, paths, given, "normal", f"bundle {path}")
    if unchecked:
        log.warning("%s: the weights of %s do not record which images they were trained on (built from a checkpoint "
                    "an earlier fair-edge wrote): the images are not checked against them. Make sure training did "
                    "not see them, or train and build again to record them.", given, ", ".join(unchecked))
