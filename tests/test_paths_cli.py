"""Paths the commands print and take: an image name too long for eval's heat-map panel name, a --source folder named
by digits, and paths with Rich markup ([b], [/) or a leading '-' in the lines and 'next:' commands printed."""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import signal
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from fair_edge.cli import app
from fair_edge.errors import ConfigError, DataError
from fair_edge.training.data import load_dataset
from fair_edge.training.evaluate import evaluate

LONG_STEM = "日" * 80   # 240 bytes of UTF-8: a valid name, too long for TAG-RANK-SCORE-STEM.png (+ .tmp)


def invoke(*args):
    return CliRunner().invoke(app, [*map(str, args)], env={"COLUMNS": "400"})


def one_line(output: str) -> str:
    return " ".join(output.split())


# ----------------------------------------------------------------------------- 1. eval: long image names
def test_a_panel_name_fits_a_file_name_whole_characters_and_tells_long_stems_apart():
    """Before: the panel was named TAG-RANK-SCORE-STEM.png whatever the stem's length (no panel_name)."""
    from fair_edge.training.evaluate import panel_name

    assert panel_name("defect-lowest", 3, 0.45213, "000") == "defect-lowest-03-0.4521-000.png"
    odd = os.fsdecode(b"d\xe9g\xe2t")   # a Latin-1 name: kept as it is when it fits
    assert panel_name("normal-highest", 0, 1.0, odd) == f"normal-highest-00-1.0000-{odd}.png"
    names = [panel_name("normal-highest", 7, -12345.6789, stem)
             for stem in (LONG_STEM, LONG_STEM[:-1] + "月", odd * 60)]
    for name in names:
        raw = os.fsencode(name)
        assert len(raw) + len(".tmp") <= 255, (len(raw), name)
        assert name.startswith("normal-highest-07--12345.6789-") and name.endswith(".png")
    assert names[0].encode("utf-8").decode("utf-8") and "~" in names[0]   # cut between characters: still UTF-8
    assert names[0] != names[1]   # the same first 60-odd characters: the hash tells them apart
    assert os.fsencode(names[2]).startswith(b"normal-highest-07--12345.6789-d\xe9g\xe2t")


def test_eval_of_an_image_with_a_long_name_writes_the_whole_report(trained, mvtec_dir, tmp_path):
    """A test image named 80 x '日' (240 bytes): eval scored everything, then failed writing its panel
    ('File name too long ... fix OUT or choose another --out'): no metrics.json, no scores.csv."""
    root = tmp_path / "plate"
    shutil.copytree(mvtec_dir, root)
    (root / "test/good/000.png").rename(root / "test/good" / f"{LONG_STEM}.png")
    out = tmp_path / "eval"
    result = evaluate(trained[0], load_dataset(root), out)
    assert result["images"] == 12
    assert json.loads((out / "metrics.json").read_text(encoding="utf-8"))["images"] == 12
    assert f"{LONG_STEM}.png" in (out / "scores.csv").read_text(encoding="utf-8")
    panels = [p.name for p in (out / "heatmaps").iterdir()]
    assert len(panels) == 12 and any(name.startswith("normal-highest-") and LONG_STEM[:60] in name for name in panels)
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []


def test_a_panel_that_cannot_be_written_is_a_warning_not_a_failed_eval(trained, mvtec_dir, tmp_path, monkeypatch,
                                                                        caplog):
    """One failed panel write stopped the whole eval (no report at all); now it is a warning naming the panel."""
    from fair_edge.training import evaluate as evaluate_module

    real_write = evaluate_module.write_png

    def refuse_one(path, image):
        if Path(path).name.startswith("defect-lowest-00-"):
            raise DataError(f"could not write {path} (File name too long)")
        real_write(path, image)

    monkeypatch.setattr(evaluate_module, "write_png", refuse_one)
    out = tmp_path / "eval"
    with caplog.at_level(logging.WARNING, logger="fair_edge.training.evaluate"):
        evaluate(trained[0], load_dataset(mvtec_dir), out)
    assert (out / "metrics.json").is_file() and (out / "scores.csv").is_file() and (out / "roc.png").is_file()
    assert len(list((out / "heatmaps").iterdir())) == 11
    assert any("heat-map panel defect-lowest-00-" in r.getMessage() and "not written" in r.getMessage()
               for r in caplog.records), caplog.text


# ----------------------------------------------------------------------------- 2. --source: a folder named by digits
def write_frames(folder: Path, n: int = 3) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        cv2.imwrite(str(folder / f"{i:03d}.png"), rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    return folder


def test_replay_spec_names_the_kind_of_an_existing_path_only(tmp_path, monkeypatch):
    """Before: no replay_spec; --source went to the bare-target guess, where all digits are a camera index."""
    from fair_edge.cli.common import replay_spec

    monkeypatch.chdir(tmp_path)
    write_frames(tmp_path / "20240115", 1)
    (tmp_path / "7").write_bytes(b"not a video")
    assert replay_spec(Path("20240115")) == "folder:20240115"
    assert replay_spec(Path("./20240115")) == "folder:20240115"
    assert replay_spec(Path("7")) == "video:7"
    assert replay_spec(Path("3")) == "3"   # names nothing here: still a camera index
    assert replay_spec(Path("missing.avi")) == "missing.avi"
    doubled = Path("/" + str(tmp_path / "20240115"))   # '//abs/folder': 'folder://...' would be read as a URL
    assert replay_spec(doubled) == f"folder:{tmp_path / '20240115'}"
    from fair_edge.cameras.registry import parse_source   # the spec names the folder replay, not OpenCV
    assert type(parse_source(replay_spec(doubled))).__name__ == "FolderReplaySource"


@pytest.mark.parametrize("typed", ["20240115", "./20240115"])
def test_collect_source_of_a_folder_named_by_digits_replays_it(tmp_path, monkeypatch, typed):
    """`collect out --source 20240115` opened camera index 20240115 ('no camera answered at index 20240115');
    ./20240115 too (pathlib drops the ./)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(signal, "signal", lambda *args: None)   # collect's Ctrl-C handler: not in the test process
    write_frames(tmp_path / "20240115")
    r = invoke("collect", "out", "--source", typed, "--duplicate-diff", 0, "--blur-min", 0)
    assert r.exit_code == 0, r.output
    assert "read 3 frames" in one_line(r.output) and len(list((tmp_path / "out").glob("*.png"))) == 3


@pytest.mark.parametrize("typed, spec", [("20240115", "folder:20240115"), ("./20240115", "folder:20240115"),
                                         ("42", "42")])
def test_run_source_of_a_folder_named_by_digits_is_a_folder(tmp_path, monkeypatch, typed, spec):
    """`run --source 20240115` handed the station camera '20240115', a camera index; a number that names no folder
    or file still is one."""
    from fair_edge.station import cell

    monkeypatch.chdir(tmp_path)
    write_frames(tmp_path / "20240115", 1)
    opened = []

    def station(cfg, stop, **kwargs):
        opened.append(cfg.camera.source)
        raise ConfigError("stop here: the test only reads the camera source")

    monkeypatch.setattr(cell, "run", station)
    r = invoke("run", "--source", typed, "--console", "off", "--out", tmp_path / "st")
    assert opened == [spec], r.output


# ----------------------------------------------------------------------------- 3. paths in printed lines
@pytest.mark.parametrize("path, word", [
    ("runs/final.pt", "runs/final.pt"), ("elpv", "elpv"), ("/data/a b/é", "'/data/a b/é'"),
    ("-run1/final.pt", "./-run1/final.pt"), ("-dash dir/base", "'./-dash dir/base'"),
    ("evals/eval [b] x", "'evals/eval [b] x'"), ("it's", "'it'\"'\"'s'")])
def test_shell_word_is_one_word_the_shell_reads_back_as_the_path(path, word):
    """Before: no shell_word; 'next:' lines put paths in unquoted (build, fuse) and a '-run1/...' as an option."""
    from fair_edge.cli.common import shell_word

    assert shell_word(path) == word and shell_word(Path(path)) == word
    assert shlex.split(word) == [path if not path.startswith("-") else "./" + path]


def test_train_next_line_can_be_run_for_a_path_starting_with_a_dash(mvtec_dir):
    """`next: fair-edge eval -run1/final.pt ...` failed with 'No such option: -r'."""
    from fair_edge.cli.train import next_hint

    split = load_dataset(mvtec_dir)
    assert next_hint(Path("-run1/final.pt"), "-dash dir/base", split) == \
        "next: fair-edge eval ./-run1/final.pt './-dash dir/base'"
    assert next_hint(Path("runs/a[/]b/final.pt"), str(mvtec_dir), split) == \
        f"next: fair-edge eval 'runs/a[/]b/final.pt' {mvtec_dir}"


def test_eval_prints_a_report_folder_with_brackets_as_it_is(trained, mvtec_dir, tmp_path):
    """`eval --out "evals/eval [b] é"` printed 'report: evals/eval  é' ([b] taken as bold)."""
    out = tmp_path / "eval [b] é"
    r = invoke("eval", trained[0], mvtec_dir, "--out", out, "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert f"report: {out}" in r.output
    assert "".join(f"evaluation ({out})".split()) in "".join(r.output.split())   # the table's title, wrapped


def test_train_into_a_folder_with_a_markup_close_tag_runs_and_prints_it(mvtec_dir, tmp_path):
    """`train --out "runs/a[/]b"` crashed with MarkupError (exit 1) printing its first line."""
    out = tmp_path / "a[/]b"
    r = invoke("train", mvtec_dir, "--width", 32, "--image-size", 32, "--cutoff", 4, "--steps", 2, "--batch", 4,
               "--out", out, "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert f"-> {out}" in one_line(r.output)
    assert f"next: fair-edge eval {shlex.quote(str(out / 'final.pt'))} {mvtec_dir}" in r.output


def test_print_plain_prints_markup_in_library_lines_as_text(capsys):
    """run's on_start lines (they name the camera source) went through Rich markup: '[/' crashed the station."""
    from fair_edge.cli import common

    common.print_plain("run 1; camera folder:frames [/] [b]x")
    assert "camera folder:frames [/] [b]x" in capsys.readouterr().err


def test_build_next_line_quotes_the_bundle_folder(tiny_ckpt_path, tmp_path):
    """`build --out "bundles/b2 [v2] x"` printed 'next: fair-edge run --bundle bundles/b2 [v2] x --source ...',
    which the shell splits into three words."""
    out = tmp_path / "b2 [v2] x"
    r = invoke("build", tiny_ckpt_path, "--out", out)
    assert r.exit_code == 0, r.output
    assert f"next: fair-edge run --bundle {shlex.quote(str(out))} --source IMAGES (replay) or --camera 0" in r.output
