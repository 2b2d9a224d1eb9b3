"""`fair-edge collect`: frames from a camera, or the parts reviewed in the console, into a training folder."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Mapping, Optional

import typer
from rich.markup import escape

from fair_edge.cli.camera_flags import FLIP_HELP, flip_options
from fair_edge.cli.common import console, friendly_errors, print_plain, replay_spec
from fair_edge.training.collect import QualitySettings
from fair_edge.errors import ConfigError
from fair_edge.records import new_run_id

Q = QualitySettings()  # the defaults live in the dataclass

app = typer.Typer()


@app.command("collect")
@friendly_errors
def collect(
    out: Path = typer.Argument(..., help="Training folder to write (created): PNG frames, or with --reviewed an "
                               "MVTec layout (train/good = false rejects, test/defect = defects and misses)."),
    camera: Optional[str] = typer.Option(None, help="Camera: index (0), /dev/videoN, RTSP URL, video file, "
                                         "gst:PIPELINE, csi:0, genicam:SERIAL, aravis:DEVICE_ID."),
    source: Optional[Path] = typer.Option(None, help="An image folder, one image or a video file instead of a camera."),
    flip: Optional[int] = typer.Option(None, help=FLIP_HELP),
    reviewed: Optional[Path] = typer.Option(None, help="A station output folder: export its reviewed parts "
                                            "(reviews.jsonl) instead of reading a camera."),
    max_frames: int = typer.Option(200, help="Stop after saving this many frames."),
    every: int = typer.Option(1, help="Consider every N-th frame only."),
    duration: Optional[float] = typer.Option(None, help="Stop after this many seconds (> 0)."),
    blur_min: float = typer.Option(Q.blur_min, help="Skip frames whose Laplacian variance is below this (blurred)."),
    duplicate_diff: float = typer.Option(Q.duplicate_diff, help="Skip frames whose 32x32 gray thumbnail differs "
                                         "from a recently kept one by less than this mean level (near-duplicate)."),
    dark_mean: float = typer.Option(Q.dark_mean, help="Skip frames with a mean gray level below this (too dark)."),
    bright_mean: float = typer.Option(Q.bright_mean, help="Skip frames with a mean gray level above this (too bright)."),
) -> None:
    """Collect training images: keep sharp, well-exposed, distinct frames and count each skipped kind
    (badly exposed, blurred, near-duplicate). Ctrl-C stops and keeps what was saved."""
    from fair_edge.training.collect import Collector, collect_from_source, export_reviewed

    quality = QualitySettings(dark_mean=dark_mean, bright_mean=bright_mean, clipped_share=Q.clipped_share,
                              blur_min=blur_min, duplicate_diff=duplicate_diff, memory=Q.memory)
    chosen = [x for x in (camera, source, reviewed) if x is not None]
    if len(chosen) != 1:
        raise ConfigError(f"give exactly one of --camera, --source or --reviewed; found {len(chosen)}.")
    if every < 1 or max_frames < 1:
        raise ConfigError(f"--every and --max-frames must be >= 1; found {every} and {max_frames}.")
    check_duration(duration)
    if source is not None:
        check_out_outside(out, source)
    if reviewed is not None:
        if flip is not None:
            raise ConfigError("--flip is for a csi: --camera; --reviewed exports the station's saved images as "
                              "they are: leave out --flip.")
        result = export_reviewed(reviewed, out)
        done = "[yellow]exported the reviewed parts, rows refused[/]" if result.get("refused") else \
            "[green]exported every reviewed part[/]"
        console.print(f"{done} to {escape(str(out))}: {escape(result['summary'])}")
        return
    from fair_edge.cameras import open_source

    spec = camera if camera is not None else replay_spec(source)
    options = flip_options(flip, spec)   # refused before a timer starts or a frame is read
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    timer = threading.Timer(duration, stop.set) if duration is not None else None
    collector = Collector(out, quality, prefix=collect_prefix())
    try:
        if timer is not None:
            timer.start()
        with open_source(spec, **options) as src:
            read = collect_from_source(src, collector, max_saved=max_frames, every=every, stop=stop)
            skipped_files = int(getattr(src, "unreadable", 0))
    finally:
        if timer is not None:
            timer.cancel()
    print_plain(collect_line(read, skipped_files, collector.counts, out, collector.parts_removed,
                             len(collector.empty_pngs_removed)))


def collect_prefix() -> str:
    """The file-name prefix of one collect's frames: its run id and "_" (``records.new_run_id``, e.g.
    ``20261129T134000Z-3f2a_``): the UTC start second and a random suffix, so two collects into one folder started in
    the same second (or after the clock stepped back) name their frames apart; ``Collector`` never replaces a file
    either way."""
    return f"{new_run_id()}_"


def check_out_outside(out: Path, source: Path) -> None:
    """ConfigError when ``out`` is the --source folder or inside it: the replay would read the frames it saves there
    (and save the source's images into it again, under new names)."""
    folder, target = source.resolve(), out.resolve()
    if folder.is_dir() and (target == folder or folder in target.parents):
        where = "is the --source folder" if target == folder else f"is inside the --source folder {source}"
        raise ConfigError(f"collect: OUT {out} {where}: the images read from it would be saved into it again. "
                          f"Give a new folder outside it, e.g. {folder.parent / (folder.name + '_collected')}.")


def check_duration(duration: Optional[float]) -> None:
    """``--duration``, seconds: None (stop at --max-frames or the end of the source) or a number > 0 that the stop
    timer can wait (<= ``threading.TIMEOUT_MAX``, ~292 years); inf or 1e20 killed the timer's thread with an
    OverflowError and the collect ran on, and NaN or <= 0 stopped nothing or everything."""
    if duration is not None and not 0 < duration <= threading.TIMEOUT_MAX:   # also False for NaN
        raise ConfigError(f"--duration must be > 0 seconds and at most {threading.TIMEOUT_MAX:.0f} (the longest wait "
                          f"its stop timer takes); found {duration:g}. Give the time to collect for, or leave it out "
                          "to stop at --max-frames or the end of the source.")


def collect_line(read: int, skipped_files: int, c: Mapping[str, int], out: Path, parts_removed: int = 0,
                 empty_pngs_removed: int = 0) -> str:
    """The closing line of a camera / source collect. read: frames read; skipped_files: files the source itself
    skipped as undecodable (a replayed folder's ``unreadable``: not frames, so not in ``read``); c: the
    collector's counts; parts_removed, empty_pngs_removed: stale part files and empty reserved PNGs a killed collect
    had left in ``out``, removed at the start (``Collector``), named only when any. The unreadable count is both
    kinds, so with --every 1 read + skipped_files = saved + all skipped."""
    files = f" and {skipped_files} unreadable file{'' if skipped_files == 1 else 's'}" if skipped_files else ""
    left = [f"{n} {what}{'' if n == 1 else 's'}" for n, what in ((parts_removed, "stale part file"),
                                                                 (empty_pngs_removed, "empty PNG")) if n]
    removed = f" (removed {' and '.join(left)} a killed collect had left there)" if left else ""
    return (f"read {read} frames{files}: saved {c['saved']}, skipped {c['badly_exposed']} badly exposed, "
            f"{c['blurred']} blurred, {c['duplicate']} near-duplicates, {c['unreadable'] + skipped_files} "
            f"unreadable -> {out}{removed}")
