"""``fair-edge rules check STATION FOLDER [--camera NAME]``: replay a folder of images through the station's region
rules (a station of several cameras: one camera's)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from fair_edge.cli.bench import write_json
from fair_edge.cli.common import console, friendly_errors

app = typer.Typer()
rules_app = typer.Typer(help="The station's defect-region rules (regions: in the station file).", no_args_is_help=True)
app.add_typer(rules_app, name="rules")


@rules_app.command("check")
@friendly_errors
def check(
    station: Path = typer.Argument(..., help="The station file whose bundle, threshold, ROI and regions: section to "
                                   "use."),
    folder: str = typer.Argument(..., help="A folder of images to replay (sorted by name), or a dataset with a test "
                                 "split (MVTec folder, VisA CSV): then caught and false-reject rates by score and by "
                                 "the rules too."),
    category: Optional[str] = typer.Option(None, help="Product inside a VisA CSV or an MVTec root."),
    camera: Optional[str] = typer.Option(None, help="A station file of several cameras (cameras:): the camera whose "
                                         "bundle, ROI, threshold and regions: to use, each the station's where the "
                                         "camera sets none; required there, refused for a one-camera file."),
    bundle: Optional[Path] = typer.Option(None, help="A bundle instead of the station file's (with --camera: "
                                          "instead of that camera's)."),
    backend: Optional[str] = typer.Option(None, help="Backend that scores the images [default: the station "
                                          "file's backend:]."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the report as JSON here (its folder "
                                            "is created)."),
) -> None:
    """Inspect every image as the station would and print what each rule did: per image the score, the
    regions (as the line counts them: those in ignore: true zones left out, and shown apart in an "ignored"
    column when there are any) and the verdict by score alone and by the rules (with the reason), then how often
    each rule fired. A station file of several cameras is checked one camera at a time: --camera NAME."""
    from fair_edge.station.config import load_station
    from fair_edge.station.rules_check import camera_config, check_frames
    cfg = camera_config(load_station(station), camera).override(bundle=bundle)
    if json_out is not None:
        json_folder(json_out)  # before the replay: a path that cannot be written fails now, not after it
    report = check_frames(cfg, _frames(folder, category), backend)
    seen_by = "" if camera is None else f" (camera {escape(camera)})"
    table = Table(title=f"rules check{seen_by}: threshold {report.threshold:.5g}, "
                        f"pixel threshold {report.pixel_threshold:.5g}")
    ignored = any(r["ignored_regions"] for r in report.rows)   # a column only where an ignore zone held a region
    counts = ("regions", "ignored") if ignored else ("regions",)
    for name in ("image", "score", *counts, "by score", "by rules", "reason"):
        table.add_column(name, justify="right" if name in ("score", *counts) else "left")
    for r in report.rows:
        score = "-" if r["score"] is None else f"{r['score']:.4g}"
        found = (str(r["regions"]), str(r["ignored_regions"])) if ignored else (str(r["regions"]),)
        table.add_row(escape(r["image"]), score, *found, "NG" if r["ng_by_score"] else "OK",
                      "NG" if r["ng"] else "OK", escape(r["reason"]))
    console.print(table)
    console.print(f"{report.images} images: NG by score {report.ng_by_score}, NG by the rules {report.ng_by_rules}")
    for key, count in report.fired.items():
        console.print(f"  {escape(key)}: fired on {count} image(s)")
    rates = report.rates()
    if rates is not None:
        for name, r in rates.items():
            caught = "-" if r["caught"] is None else f"{r['caught']:.1%}"
            false = "-" if r["false_rejects"] is None else f"{r['false_rejects']:.1%}"
            console.print(f"{name.replace('_', ' ')}: caught {caught} of the defective images, false rejects {false}")
    if json_out is not None:
        write_json(json_out, {"camera": camera, **report.to_dict()}, "the report")   # whole, or the earlier kept
        console.print(f"[green]report:[/] {escape(str(json_out))}")


def json_folder(json_out: Path) -> Path:
    """Create the folder of ``--json`` (as bench does); ConfigError naming --json when it cannot be created."""
    from fair_edge.errors import ConfigError

    try:
        json_out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--json {json_out}: cannot create its folder {json_out.parent} ({exc.strerror or exc}); "
                          "expected a path this user can write.") from None
    if json_out.is_dir():
        raise ConfigError(f"--json {json_out} is a folder; expected a file path, e.g. {json_out / 'rules.json'}.")
    return json_out.parent


def _frames(spec: str, category: Optional[str]):
    """(name, image[, label]) for a plain folder, or the labelled test split of a dataset, read one at a time.
    Unreadable, truncated and undersized (under 2 x 2 px) files are skipped with a warning naming each, and
    counted, as eval skips them (``read_frames``); DataError when none is left."""
    from fair_edge.errors import DataError
    from fair_edge.training.data import list_images, load_dataset
    from fair_edge.training.pixels import read_frames

    path = Path(spec)
    if path.is_dir() and any(p.is_file() for p in path.iterdir()) and not (path / "test").is_dir():
        return ((p.name, image) for p, image in read_frames(list_images(path)))
    split = load_dataset(spec, category)
    if not split.test:
        raise DataError(f"{spec} has no test images to replay; pass a folder of images or a dataset with a test "
                        "split (MVTec test/ folders, VisA test rows).")
    return ((f"{s.defect_type}/{s.path.name}", image, s.label) for s, image in read_frames(split.test))
