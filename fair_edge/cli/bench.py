"""``fair-edge bench``: the command and the table it prints (the measurement is ``fair_edge.bench.run``).

A tiled bundle's score is the maximum over a frame map whose size follows the frame's, so the station decides only
frames whose map has the size of its held-out frames' (``station.inspector.ViewDecider.off_grid``). Its bench times
frames of that size by default (``station_frames``: the frame size its calibrated map grid comes from), and frames
given with --frames that the station would refuse are timed with a warning that says so, before and after the table
(``off_grid_note``), and in the --json file's ``warnings``.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from dataclasses import replace
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fair_edge.bench.settings import BenchSettings
from fair_edge.cli.build import describe_fact
from fair_edge.cli.common import check_file_writable, check_width, console, friendly_errors
from fair_edge.disk import write_failure, write_text_whole
from fair_edge.errors import ConfigError
from fair_edge.models.registry import FAMILIES, WIDTH_FAMILY
from fair_edge.runtime.selection import BACKEND_NAMES

app = typer.Typer()
log = logging.getLogger(__name__)


def print_row(row) -> None:
    """Progress while the bench runs: a timed row (``BenchRow`` / a round's ``CameraRow``) in one line."""
    console.print(row.line())


def print_cameras(report) -> None:
    """``--mode cameras``: per camera count, the cell and the stations, and the cell / stations ratio."""
    env, s = report.environment, report.settings
    table = Table(title=f"fair-edge bench, several cameras: {env['gpu'] or env['cpu']} ({s['frames']} frames, "
                        f"feed {s['feed']} per camera, {s['rounds']} round(s) of {s['seconds']:g} s)")
    for name in ("cameras", "arrangement", "models", "max b", "frames/s", "cell/stations", "p50/p99/max ms",
                 "mean b", "drops/lost", "per camera", "rounds frames/s"):
        table.add_column(name, justify="left" if name in ("arrangement", "per camera", "rounds frames/s") else "right")
    for r in report.cameras:
        ratio = "" if r.vs_stations is None else f"{r.vs_stations:.2f}"
        table.add_row(str(r.cameras), r.arrangement, str(r.models), str(r.max_batch), f"{r.fps:.1f}", ratio,
                      f"{r.p50_ms:.1f}/{r.p99_ms:.1f}/{r.max_ms:.1f}", f"{r.mean_batch:.2f}", f"{r.dropped}/{r.lost}",
                      " ".join(str(n) for n in r.per_camera.values()), " ".join(f"{f:.1f}" for f in r.round_fps))
    out = Console()
    (out if out.is_terminal else Console(width=180)).print(table)
    console.print(f"backend: {escape(str(report.cameras_backend))}")
    console.print("cell = one model, frames of all cameras batched (max batch = cameras); stations = one model copy "
                  "and one loop (max batch 1) per camera, threads of this process")
    for key, value in report.bundle.get("facts", {}).items():
        console.print(f"{key.replace('_', ' ')}: {escape(describe_fact(value))}")


def print_bench(report) -> None:
    env = report.environment
    if report.cameras:
        return print_cameras(report)
    if report.stages:
        from fair_edge.bench.stages import stage_table

        wide = Console(width=160)
        wide.print(f"per-stage ms per frame, CPU path: {env['cpu']} ({report.settings['frames']} frames)")
        return stage_table(report.stages, lambda line: wide.print(line, highlight=False))
    table = Table(title=f"fair-edge bench: {env['gpu'] or env['cpu']} ({report.settings['frames']} frames, "
                        f"feed {report.settings['feed']})")
    for name in ("role", "backend", "pre", "mode", "batch", "frames/s", "vs base", "p50/p99/max ms", "drops", "mean b"):
        table.add_column(name, justify="left" if name in ("role", "backend", "pre", "mode") else "right")
    for r in report.rows:
        ratio = "" if r.vs_baseline is None else f"{r.vs_baseline:.2f}"
        table.add_row(r.role, r.backend, r.preprocess, r.mode, str(r.batch), f"{r.fps:.1f}", ratio,
                      f"{r.p50_ms:.1f}/{r.p99_ms:.1f}/{r.max_ms:.1f}", str(r.dropped), f"{r.mean_batch:.1f}")
    out = Console()
    (out if out.is_terminal else Console(width=160)).print(table)  # a piped log keeps whole rows
    console.print(f"backend: {escape(str(report.rows[0].detail))}" if report.rows else "no rows timed")
    for key, value in report.bundle.get("facts", {}).items():
        console.print(f"{key.replace('_', ' ')}: {escape(describe_fact(value))}")
    for key, best in report.best.items():
        console.print(f"best batch {key}: {best['batch']} ({best['fps']:.1f} frames/s)")
    for batch, seconds in report.compile_seconds.items():
        console.print(f"torch.compile batch {batch}: {seconds:.1f} s (first call; cached for later runs)")


def finite_feed(text: str) -> str | float:
    """``--feed``: ``parse_feed``'s closed | free | a line rate in frames/s, the rate finite and its period
    (1 / rate, s) one a thread can wait (<= ``threading.TIMEOUT_MAX``): inf passed as > 0 and crashed the feeding
    thread (OverflowError), as did 1e-300 (a period of 1e300 s)."""
    from fair_edge.bench.settings import parse_feed

    feed = parse_feed(text)
    if isinstance(feed, float) and not (math.isfinite(feed) and feed * threading.TIMEOUT_MAX >= 1):
        raise ConfigError(f"--feed: expected closed, free, or a finite line rate in frames/s >= "
                          f"{1 / threading.TIMEOUT_MAX:.2g} (e.g. 500), found {text!r}; for the fastest feeding "
                          "without drops use closed, with drops free.")
    return feed


def calibrated_grid(bundle) -> tuple[int, int] | None:
    """(h, w) of the maps a tiled ``bundle``'s threshold was calibrated on, the grid the station checks every frame's
    map against (its held-out normal maps', ``export.normal_maps``); None for a whole-frame bundle, whose map does not
    follow the frame size, and for one that keeps no normal maps (no grid is checked then)."""
    from fair_edge.export.normal_maps import normal_maps_grid

    if bundle.preprocess.tiling is None or bundle.normal_maps_path is None:
        return None
    return tuple(normal_maps_grid(bundle.normal_maps_path))


def frames_map(bundle, frame_hw: tuple[int, int]) -> tuple[int, int]:
    """(h, w) of the map a tiled ``bundle`` makes of a frame of ``frame_hw`` (H, W) px (``tiling.tile_layout``, the
    station's rule); ConfigError when the frame is smaller than its tiling takes."""
    from fair_edge.tiling import tile_layout

    return tuple(tile_layout(tuple(frame_hw), bundle.preprocess.tiling, bundle.image_size).map_hw)


def frames_on_grid(bundle, grid: tuple[int, int]) -> tuple[int, int] | None:
    """(H, W) px of frames whose map a tiled ``bundle`` lays out on ``grid`` (h, w): the frames its held-out normals
    were, or (a tiling over ``tiling.roi``, whose map does not follow the frame) the smallest frame holding the ROI;
    per side the one nearest grid side x tile / image size. None when no frame size gives ``grid``."""
    tiling, size = bundle.preprocess.tiling, bundle.image_size
    if tiling.roi is not None:
        x, y, w, h = tiling.roi
        candidate = (y + h, x + w)
    else:
        candidate = (_frame_side(grid[0], tiling.tile, size), _frame_side(grid[1], tiling.tile, size))
    if None in candidate or frames_map(bundle, candidate) != tuple(grid):
        return None
    return candidate


def _frame_side(map_side: int, tile: int, image_size: int) -> int | None:
    """The frame side (px, >= one tile) nearest ``map_side`` x tile / image size whose map side is ``map_side``
    (``tiling.tile_layout``: max(image size, round(side x image size / tile))); None when none is."""
    scale = image_size / tile
    guess, span = round(map_side / scale), math.ceil(1 / scale) + 1
    for side in sorted(range(max(tile, guess - span), guess + span + 1), key=lambda c: (abs(c - guess), c)):
        if max(image_size, round(side * scale)) == map_side:
            return side
    return None


def station_frames(bundle, default_hw: tuple[int, int]) -> tuple[tuple[int, int], str]:
    """(the (H, W) px frames to time ``bundle`` on without --frames, a line saying why when not ``default_hw``): for a
    tiled bundle with a calibrated grid (``calibrated_grid``) the frames its station decides, ``default_hw`` when it
    gives that grid, else the size that does (``frames_on_grid``); ``default_hw`` for any other bundle."""
    grid = calibrated_grid(bundle)
    if grid is None or _fits(bundle, default_hw, grid):
        return default_hw, ""
    station = frames_on_grid(bundle, grid)
    if station is None:
        return default_hw, ""
    return station, (f"frames {station[1]}x{station[0]}: the size tiled bundle {bundle.root} decides (its threshold "
                     f"was calibrated on {grid[0]} x {grid[1]} maps of its held-out frames); --frames times another")


def _fits(bundle, frame_hw: tuple[int, int], grid: tuple[int, int]) -> bool:
    """Whether frames of ``frame_hw`` give a map on ``grid``; False when they are smaller than the tiling takes."""
    try:
        return frames_map(bundle, frame_hw) == tuple(grid)
    except ConfigError:
        return False


def off_grid_note(bundle, frame_hw: tuple[int, int]) -> str:
    """Why the station of tiled ``bundle`` decides every frame of ``frame_hw`` (H, W) px NG (its map lies off the
    calibrated grid: ``runtime.hotswap.off_grid_reason``, the station's words) and the --frames it decides; "" when
    it decides them (or checks no grid). ConfigError when the frames are smaller than the tiling takes."""
    from fair_edge.runtime.hotswap import off_grid_reason

    grid = calibrated_grid(bundle)
    if grid is None:
        return ""
    live = frames_map(bundle, frame_hw)
    if live == grid:
        return ""
    station = frames_on_grid(bundle, grid)
    size = f"--frames {station[1]}x{station[0]}" if station is not None else "frames of its held-out normals' size"
    reason = off_grid_reason(("", grid, live), f"a {frame_hw[1]} x {frame_hw[0]} frame",
                             ", so its station decides every such frame NG")
    return f"tiled bundle {bundle.root}: {reason}. Timed anyway; the frames its station decides: {size}"


@app.command()
@friendly_errors
def bench(
    bundle: Optional[Path] = typer.Argument(None, help="Model bundle from `fair-edge build` (or use --synthetic-model)."),
    backend: str = typer.Option("auto", help=", ".join(BACKEND_NAMES) + "."),
    baseline: str = typer.Option("torch-eager-cpu-pre", help="Also time PyTorch eager + CPU pre-processing on the "
                                 "backend's device (torch-eager-cpu-pre), or not (none)."),
    batches: str = typer.Option("1,4,8,16", help="Batch sizes (LoopSettings.max_batch), comma-separated."),
    frames: Optional[str] = typer.Option(None, help="Synthetic frame size WIDTHxHEIGHT, uint8 BGR, held in memory "
                                         "[default: 1920x1080; a tiled bundle: the frame size its threshold was "
                                         "calibrated on, the one its station decides]."),
    seconds: float = typer.Option(10.0, help="Timed seconds per backend, batch and mode (--mode cameras: per "
                                  "round, camera count and arrangement)."),
    warmup: float = typer.Option(1.0, help="Untimed seconds before each timing (after CUDA graph capture)."),
    mode: str = typer.Option("loop", help="loop (camera thread -> Inspector), compute (pre-process + infer "
                             "on ready batches), both, stages (CPU path: ms per frame of copy, resize, "
                             "high-pass (fft and separable), inference, scoring, decision, regions), or cameras (per "
                             "--cameras count N: one cell of N cameras on one model, frames batched across "
                             "cameras, against N single-camera stations with a model copy each, threads of "
                             "one process; --batches and --baseline are not used)."),
    cameras: Optional[str] = typer.Option(None, help="Camera counts of --mode cameras, comma-separated "
                                          f"(default {','.join(map(str, BenchSettings.cameras))})."),
    rounds: int = typer.Option(BenchSettings.rounds, help="--mode cameras: rounds, each timing every camera count "
                               "and both arrangements for --seconds (interleaved); figures pool the rounds."),
    feed: str = typer.Option("closed", help="loop feeding: closed (<= queue frames in flight, no drops), "
                             "free (fps=0, drop_oldest), or a line rate in frames/s (--mode cameras: per camera)."),
    queue: int = typer.Option(0, help="Capture queue size (closed: frames in flight); 0 = 2 x batch "
                              "(--mode cameras: per camera, 0 = 2)."),
    max_wait_ms: float = typer.Option(2.0, help="How long a partial batch waits for frames."),
    threads: int = typer.Option(0, help="torch.set_num_threads; 0 = PyTorch's default."),
    compile: bool = typer.Option(False, "--compile", help="torch.compile (inductor) the torch-cpu / torch-cuda "
                                 "backend; compile time per batch size is reported, cached on disk for later runs."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the results as JSON here (with the "
                                           "warnings printed beside the table, under warnings)."),
    synthetic_model: Optional[str] = typer.Option(None, help="No bundle: build one with random weights of this model "
                                                  f"family ({', '.join(FAMILIES)}) in a temporary folder."),
    synthetic_width: Optional[int] = typer.Option(None, help="FAIR UNet width (32, 64, 128) of the synthetic bundle; "
                                                  "implies --synthetic-model fair."),
    image_size: int = typer.Option(256, help="Model input size of the synthetic bundle."),
    precision: str = typer.Option("fp32", help="Precision of the synthetic bundle: fp32, fp16, int8."),
) -> None:
    """Sustained frames/s and capture -> verdict latency per batch size, against a PyTorch eager baseline.

    Speed does not depend on the weights: `fair-edge bench --synthetic-width 64` or
    `--synthetic-model lgfdr` needs no trained model. Several cameras on one model against one station per
    camera: `fair-edge bench --synthetic-model patchcore --mode cameras --cameras 1,2,4`."""
    import shlex
    import sys

    from fair_edge.bench.cameras import cameras_report
    from fair_edge.bench.run import run_bench, run_synthetic_bench, synthetic_model as make_synthetic_model
    from fair_edge.bench.settings import parse_batches, parse_cameras, parse_frames
    from fair_edge.export.bundle import load_bundle
    from fair_edge.station.inspector import LoopSettings

    if cameras is not None and mode != "cameras":
        raise ConfigError(f"--cameras sets the camera counts of --mode cameras; found --mode {mode}. "
                          f"Add --mode cameras, or leave --cameras out.")
    counts = BenchSettings.cameras if cameras is None else parse_cameras(cameras)
    LoopSettings(max_wait_ms=max_wait_ms)   # checked before any model is built: finite, in [0, a day]
    settings = BenchSettings(backend=backend, baseline=baseline, batches=parse_batches(batches),
                             frame_hw=parse_frames(frames) if frames is not None else BenchSettings.frame_hw,
                             seconds=seconds, mode=mode, feed=finite_feed(feed),
                             max_wait_ms=max_wait_ms, queue_size=queue, warmup_s=warmup, torch_threads=threads,
                             compile=compile, cameras=counts, rounds=rounds)
    if json_out is not None:
        check_file_writable(json_out, "--json", "bench.json")   # before the timing, not after it
    synthetic = synthetic_model is not None or synthetic_width is not None
    if (bundle is None) != synthetic:
        raise ConfigError("give either a BUNDLE or --synthetic-model / --synthetic-width (random weights), not both or neither.")
    if synthetic_width is not None:
        check_width(synthetic_width, flag="--synthetic-width")
    command = shlex.join(sys.argv)
    note = ""
    if bundle is not None:
        loaded = load_bundle(bundle)
        if frames is None:
            frame_hw, why = station_frames(loaded, settings.frame_hw)
            settings = replace(settings, frame_hw=frame_hw)
            if why:
                console.print(escape(why), highlight=False)
        note = off_grid_note(loaded, settings.frame_hw)
        if note:
            log.warning("%s", note)
        report = run_bench(loaded, settings, command, on_row=print_row, reports={"cameras": cameras_report})
    else:
        model = make_synthetic_model(synthetic_model or WIDTH_FAMILY, synthetic_width, image_size)
        report = run_synthetic_bench(model, precision, settings, command, on_row=print_row, reports={"cameras": cameras_report})
    print_bench(report)
    if note:
        console.print(escape(note), highlight=False)
        report = replace(report, warnings=[*report.warnings, note])
    if json_out is not None:
        write_json(json_out, report.to_dict())
        console.print(f"[green]results:[/] {escape(str(json_out))}")


def write_json(path: Path, results: dict, what: str = "the results") -> None:
    """Write ``results`` (the report's dict) as JSON to ``path`` (--json), making its folder, whole or not at all
    (``disk.write_text_whole``: an earlier file there stays as it was when the disk is full); ConfigError naming
    --json, the path, the cause and its fix (``json_write_failure``) when it cannot be written after all (the disk
    filled, the folder went away). what: what the file holds, for that message ("the results", "the report")."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_whole(path, json.dumps(results, indent=2) + "\n", "JSON report")
    except OSError as exc:
        raise ConfigError(json_write_failure(path, exc, what)) from None


def json_write_failure(path: Path, exc: OSError, what: str) -> str:
    """The message of a --json ``path`` that could not be written (``exc``): the error, that the table printed
    above holds ``what`` the file would, that an earlier file there is kept, and the cause and fix by errno
    (``disk.write_failure``: a full disk with its free space, a read-only one, no permission)."""
    kept = f"; the earlier {path} is left as it was" if path.is_file() else ""
    return (f"--json {path}: {what} could not be written ({exc.strerror or exc}), only printed above{kept}: "
            f"{write_failure(path.parent, exc, None)}, or pass another --json path, then run again.")
