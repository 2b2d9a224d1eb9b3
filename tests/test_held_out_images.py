"""Held-out images read by build, fuse, rules check and tune: a file that cannot be a model input (unreadable,
truncated, under 2 x 2 px, smaller than one tile) is skipped with a warning naming it and counted, as train and
eval skip it (``training.pixels.read_frames``), and none left is refused; rules check decides a frame it could not
inspect NG by score, as the station does."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import typer
from export_fixtures import make_frames, write_pngs
from typer.testing import CliRunner

from fair_edge.cli.build import build
from fair_edge.errors import DataError
from fair_edge.export.bundle import load_bundle
from fair_edge.records import Verdict
from fair_edge.station.rules_check import row
from fair_edge.tiling import TilingConfig

build_app = typer.Typer()
build_app.command("build")(build)


@build_app.callback()
def _main() -> None:
    """Subcommand mode, as on the real app."""


def add_bad_files(folder: Path, good: Path) -> list[str]:
    """A 1 x 1 px PNG and a truncated copy of ``good`` into ``folder``, named to sort last; their names."""
    cv2.imwrite(str(folder / "zz_1px.png"), np.full((1, 1, 3), 255, np.uint8))
    (folder / "zz_truncated.png").write_bytes(good.read_bytes()[:300])
    return ["zz_1px.png", "zz_truncated.png"]


def test_read_frames_skips_what_cannot_be_a_model_input_naming_each_and_counting(tmp_path, caplog):
    from fair_edge.training.data import Sample
    from fair_edge.training.pixels import read_frames

    folder = write_pngs(tmp_path / "imgs", make_frames(2, seed=3, size=40))
    bad = add_bad_files(folder, folder / "000.png")
    cv2.imwrite(str(folder / "small.png"), np.full((20, 30, 3), 128, np.uint8))   # under one 32 px tile
    paths = sorted(folder.iterdir())
    ticks = []
    with caplog.at_level(logging.WARNING):
        read = list(read_frames(paths, TilingConfig(tile=32, overlap=0), progress=lambda: ticks.append(1)))
    assert [p.name for p, _ in read] == ["000.png", "001.png"] and read[0][1].shape == (40, 40, 3)
    assert len(ticks) == len(paths)   # read or skipped, each counts
    for name in [*bad, "small.png"]:
        assert name in caplog.text
    assert "skipped 3 unreadable or undersized image(s) of 5" in caplog.text
    samples = [Sample(folder / name) for name in bad]
    assert [s for s, _ in read_frames([*samples, Sample(folder / "001.png")])] == [Sample(folder / "001.png")]
    with pytest.raises(DataError, match=r"none of the 2 --normal images could be read \(first: .*zz_1px\.png"):
        list(read_frames(samples, what="--normal images"))


# ----------------------------------------------------------------------------- fair-edge build
@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    """10 normals, 6 defects, 12 calibration images, each folder also holding a 1 x 1 px and a truncated file."""
    root = tmp_path_factory.mktemp("held_out")
    folders = {"normal": write_pngs(root / "normal", make_frames(10, seed=1)),
               "defects": write_pngs(root / "defects", make_frames(6, seed=2, defect=True)),
               "calib": write_pngs(root / "calib", make_frames(12, seed=100))}
    for folder in folders.values():
        add_bad_files(folder, folder / "000.png")
    return folders


def invoke_build(*args):
    return CliRunner().invoke(build_app, ["build", *map(str, args)], env={"COLUMNS": "200"})


def test_build_skips_a_1px_and_a_truncated_normal_defect_and_calibration_image(tiny_ckpt_path, held_out, tmp_path,
                                                                              caplog):
    """A 1 x 1 px file among --normal was scored (its score set the threshold: 9.25 -> 58.3 in the audit, every
    defect passed), and a truncated one stopped the build; --defects and --calib likewise."""
    with caplog.at_level(logging.WARNING):
        r = invoke_build(tiny_ckpt_path, "--normal", held_out["normal"], "--defects", held_out["defects"],
                         "--out", tmp_path / "b")
    assert r.exit_code == 0, r.output
    threshold = load_bundle(tmp_path / "b").threshold
    assert threshold.n_normal == 10 and threshold.n_defect == 6
    for folder in ("normal", "defects"):
        assert f"{held_out[folder] / 'zz_1px.png'} (1 x 1 px) cannot be a model input" in caplog.text
        assert str(held_out[folder] / "zz_truncated.png") in caplog.text
    assert "skipped 2 unreadable or undersized image(s) of 12" in caplog.text
    r = invoke_build(tiny_ckpt_path, "--calib", held_out["calib"], "--calib-images", 14, "--out", tmp_path / "c")
    assert r.exit_code == 0, r.output
    assert load_bundle(tmp_path / "c").threshold.n_normal == 12   # the threshold on the calibration images read


def test_build_refuses_normal_images_none_of_which_can_be_read(tiny_ckpt_path, tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    good = write_pngs(tmp_path / "good", make_frames(1, seed=1)) / "000.png"
    add_bad_files(folder, good)
    r = invoke_build(tiny_ckpt_path, "--normal", folder, "--out", tmp_path / "b")
    text = " ".join(r.output.split())
    assert r.exit_code == 2 and "none of the 2 --normal images could be read" in text, r.output
    assert not (tmp_path / "b").exists()


# ----------------------------------------------------------------------------- fair-edge rules check
def test_rules_check_decides_a_frame_it_could_not_inspect_ng_by_score():
    """A malformed frame (score None, an error) was shown 'by score: OK' while the station rejects it."""
    malformed = Verdict(0, 0.0, None, 1.0, True, 0.0, error="malformed frame: H, W >= 2; found (1, 1, 3)")
    assert row("px1.png", malformed)["ng_by_score"] is True
    unjudged = Verdict(1, 0.0, 0.5, 1.0, True, 0.0, error="regions: frame of another size than the zones")
    assert row("odd.png", unjudged)["ng_by_score"] is True
    assert row("ok.png", Verdict(2, 0.0, 0.5, 1.0, False, 0.0))["ng_by_score"] is False
    assert row("ng.png", Verdict(3, 0.0, 1.5, 1.0, True, 0.0))["ng_by_score"] is True


def test_rules_check_of_a_malformed_frame_counts_it_ng_by_score(station_bundles):
    from fair_edge.station.config import StationConfig
    from fair_edge.station.rules_check import check_frames

    cfg = StationConfig.from_dict({"bundle": str(station_bundles[0].root)})
    report = check_frames(cfg, [("px1.png", np.full((1, 1, 3), 255, np.uint8))])
    assert report.rows[0]["score"] is None and report.rows[0]["ng"] and report.rows[0]["ng_by_score"]
    assert report.ng_by_score == 1


def test_rules_check_skips_a_1px_and_a_truncated_file_naming_them(station_bundles, conveyor_dir, tmp_path, caplog):
    import yaml

    from fair_edge.cli.rules import app   # without the root app's logging set-up, so caplog sees the warnings

    folder = tmp_path / "replay"
    shutil.copytree(conveyor_dir, folder)
    bad = add_bad_files(folder, sorted(folder.iterdir())[0])
    station = tmp_path / "station.yaml"
    station.write_text(yaml.safe_dump({"bundle": str(station_bundles[0].root)}))
    out = tmp_path / "rules.json"
    with caplog.at_level(logging.WARNING):
        r = CliRunner().invoke(app, ["rules", "check", str(station), str(folder), "--json", str(out)],
                               terminal_width=200)
    assert r.exit_code == 0, r.output
    report = json.loads(out.read_text())
    assert report["images"] == 12 and not {row["image"] for row in report["rows"]} & set(bad)
    assert all(name in caplog.text for name in bad)
    assert "skipped 2 unreadable or undersized image(s) of 14" in caplog.text


# ----------------------------------------------------------------------------- fair-edge tune
def test_tune_reads_past_a_truncated_first_training_image(mvtec_dir, tmp_path, monkeypatch):
    """tune read its first training image with read_image, so a truncated one stopped it before any candidate."""
    from fair_edge.cli import app
    from fair_edge.training import tune as tune_module
    from fair_edge.training import tune_results

    root = tmp_path / "plate"
    shutil.copytree(mvtec_dir, root)
    first = root / "train" / "good" / "000.png"
    first.write_bytes(first.read_bytes()[:300])
    calls = []

    def fake(split, candidates, out, settings, device, data, on_row=None, category=None):
        calls.append(out)
        return [tune_results.TuneRow(candidates[0], "done", 0.9, 0.5, 0.5, 1.0)]

    monkeypatch.setattr(tune_module, "tune", fake)
    r = CliRunner().invoke(app, ["tune", str(root), "--image-size", "32", "--out", str(tmp_path / "t")])
    assert r.exit_code == 0, r.output
    assert calls == [tmp_path / "t"]
