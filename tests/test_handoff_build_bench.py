"""Build and bench hand-offs: a tiled model's held-out frames of several map sizes are refused at build (its bundle
kept no grid, and its station decided frames of any size against a threshold calibrated on others); ``build --width /
--model`` picks a finished run's final.pt over an interrupted one's newer last.pt, and building a last.pt warns with
its step N of M; a bundle at --out built from another checkpoint is not replaced without --overwrite (the default
--out is shared by every checkpoint of one model and precision), nor one that records none (the library's, an
earlier demo's) without saying build cannot tell whose it is; bench times a tiled bundle on the frame size its
station decides by default, and warns on --frames the station would refuse (in its --json too)."""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from export_fixtures import MODEL, PRE, make_frames, write_pngs
from typer.testing import CliRunner

from fair_edge.errors import CheckpointError, DataError
from fair_edge.export.build import BuildOptions, build_bundle
from fair_edge.export.bundle import load_bundle
from fair_edge.models.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from fair_edge.tiling import TilingConfig
from fair_edge.training.runs import find_latest_checkpoint
from test_heldout_sources import invoke_build, one_line

TILING = TilingConfig(40, 8)   # 96 x 96 px frames -> 77 x 77 maps (32 map px per 40 frame px)


@pytest.fixture(scope="module")
def tiled_ckpt(tmp_path_factory, tiny_detector) -> Path:
    path = tmp_path_factory.mktemp("tiled") / "final.pt"
    return save_checkpoint(path, Checkpoint(replace(MODEL, preprocess=replace(PRE, tiling=TILING)),
                                            tiny_detector.unet.state_dict()))


# ----------------------------------------------------------------------------- 1: tiled held-out frames, one map size
def test_tiled_build_refuses_held_out_frames_of_two_map_sizes_naming_each_with_its_count(tiled_ckpt, tmp_path):
    """3 normals of 96 x 96 and 2 of 136 x 136 px: the old build kept no normal maps (two grids), so the bundle
    recorded no calibrated grid and its station decided 136 px frames against a threshold of 96 px ones."""
    ckpt = load_checkpoint(tiled_ckpt)
    mixed = make_frames(3, seed=3, size=96) + make_frames(2, seed=4, size=136)
    options = BuildOptions(engine=False, threshold_images="--normal held")
    with pytest.raises(DataError) as refused:
        build_bundle(ckpt, tmp_path / "mixed", options, normal_frames=mixed)
    text = str(refused.value)
    assert "--normal held: a tiled model's held-out frames must all give one frame map size" in text
    assert "77 x 77 from 96 x 96 px frames (3 of --normal held)" in text
    assert "109 x 109 from 136 x 136 px frames (2 of --normal held)" in text
    assert "station camera's frame size" in text and not (tmp_path / "mixed").exists()
    with pytest.raises(DataError, match=r"109 x 109 from 136 x 136 px frames \(2 of --defects\)"):
        build_bundle(ckpt, tmp_path / "defects", options, normal_frames=mixed[:3], defect_frames=mixed[3:])
    one = build_bundle(ckpt, tmp_path / "one", options, normal_frames=mixed[:3]).bundle
    assert one.normal_maps_path is not None


def test_the_cli_refuses_before_building_naming_the_folders(tiled_ckpt, tmp_path):
    normal = write_pngs(tmp_path / "normal", make_frames(3, seed=3, size=96))
    write_pngs(tmp_path / "big", make_frames(2, seed=4, size=136))
    for name in ("000.png", "001.png"):
        shutil.copy(tmp_path / "big" / name, normal / f"big_{name}")
    r = invoke_build(tiled_ckpt, "--normal", normal, "--out", tmp_path / "b", "--no-engine")
    text = one_line(r.output)
    assert r.exit_code == 2, r.output
    assert f"136 x 136 px frames (2 of --normal {normal})" in text and "building" not in text
    assert not (tmp_path / "b").exists()


def test_frames_of_several_sizes_giving_one_map_and_whole_frame_models_still_build(tiled_ckpt, tiny_ckpt_path,
                                                                                   tmp_path):
    """A tiling over tiling.roi maps that rectangle only: frames of any size holding it give one map, which the
    station accepts alike. A whole-frame model resizes every frame to its input: sizes never mattered."""
    ckpt = load_checkpoint(tiled_ckpt)
    roi = replace(ckpt.model, preprocess=replace(PRE, tiling=TilingConfig(40, 8, roi=(0, 0, 80, 80))))
    sizes = make_frames(2, seed=3, size=96) + make_frames(2, seed=4, size=112)
    bundle = build_bundle(replace(ckpt, model=roi), tmp_path / "roi", BuildOptions(engine=False),
                          normal_frames=sizes).bundle
    assert bundle.normal_maps_path is not None
    whole = build_bundle(load_checkpoint(tiny_ckpt_path), tmp_path / "whole", BuildOptions(engine=False),
                         normal_frames=make_frames(3, seed=3, size=40) + make_frames(3, seed=4, size=56)).bundle
    assert whole.normal_maps_path is not None and whole.threshold.n_normal == 6


# ----------------------------------------------------------------------------- 2: finished runs first
def touch(path: Path, mtime: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    os.utime(path, (mtime, mtime))
    return path


def test_latest_checkpoint_is_a_finished_runs_final_pt_over_any_newer_last_pt(tmp_path):
    """An interrupted experiment's last.pt (25 of 1000 steps), saved after a finished run's final.pt, was picked."""
    finished = touch(tmp_path / "train-w32" / "final.pt", 1000.0)
    touch(tmp_path / "train-w32" / "last.pt", 1000.0)
    touch(tmp_path / "train-w32-exp" / "last.pt", 2000.0)
    assert find_latest_checkpoint("w32", tmp_path) == finished
    newer = touch(tmp_path / "train-w32-b" / "final.pt", 1500.0)
    assert find_latest_checkpoint("w32", tmp_path) == newer   # the newest of the finished ones
    only_last = touch(tmp_path / "train-w64-exp" / "last.pt", 3000.0)
    touch(tmp_path / "train-w64-old" / "last.pt", 100.0)
    assert find_latest_checkpoint("w64", tmp_path) == only_last   # none finished: the newest last.pt
    with pytest.raises(CheckpointError, match="no w128 checkpoint"):
        find_latest_checkpoint("w128", tmp_path)


def unfinished(ckpt_path: Path, out: Path, step: int = 25, total: int = 1000) -> Path:
    """A copy of the checkpoint at ``ckpt_path`` saved as ``out`` by an interrupted run (step ``step`` of ``total``)."""
    ckpt = load_checkpoint(ckpt_path)
    return save_checkpoint(out, replace(ckpt, train_state={"step": step, "total_steps": total},
                                        data_summary={**ckpt.data_summary, "steps": step}))


def test_build_model_picks_the_finished_run_and_warns_on_a_last_pt_picked_or_passed(tiny_ckpt_path, tmp_path,
                                                                                     monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    tag = load_checkpoint(tiny_ckpt_path).model.tag   # FAIR's default settings' tag, what --model fair looks for
    finished = Path("runs") / "train-w128" / "final.pt"
    finished.parent.mkdir(parents=True)
    shutil.copy(tiny_ckpt_path, finished)
    os.utime(finished, (1000.0, 1000.0))
    interrupted = unfinished(tiny_ckpt_path, Path("runs") / "train-w128-exp" / "last.pt")
    assert tag != "w128" and interrupted.stat().st_mtime > 1000.0
    with caplog.at_level(logging.WARNING):
        r = invoke_build("--model", "fair", "--no-engine", "--out", "b")
    assert r.exit_code == 0, r.output
    assert f"from {finished} " in one_line(r.output) and "unfinished" not in caplog.text
    with caplog.at_level(logging.WARNING):
        r = invoke_build(interrupted, "--no-engine", "--out", "c")
    assert r.exit_code == 0, r.output
    warning = one_line(caplog.text)
    assert f"{interrupted} is an unfinished training run's save (step 25 of 1000)" in warning
    assert "`fair-edge train --resume --out runs/train-w128-exp`" in warning and "final.pt" in warning


# ----------------------------------------------------------------------------- 3: another checkpoint's bundle
def test_build_refuses_replacing_a_bundle_of_another_checkpoint_without_overwrite(tiny_ckpt_path, tmp_path,
                                                                                  monkeypatch):
    """Two checkpoints of one model tag and precision share the default --out: the second build replaced the
    first's bundle silently. A rebuild from the same checkpoint (or a copy of it) still replaces it."""
    monkeypatch.chdir(tmp_path)
    first = Path("a") / "final.pt"
    first.parent.mkdir()
    shutil.copy(tiny_ckpt_path, first)
    second = unfinished(tiny_ckpt_path, Path("b") / "final.pt", step=100, total=100)   # other bytes, same model
    assert invoke_build(first, "--no-engine").exit_code == 0
    out = Path("runs") / f"bundle-{load_checkpoint(first).model.tag}-fp32"
    r = invoke_build(second, "--no-engine")
    text = one_line(r.output)
    assert r.exit_code == 2, r.output
    assert f"--out {out} (the default --out" in text and f"another checkpoint, {first.resolve()} (SHA-256" in text
    assert f"not from {second.resolve()}" in text and "--overwrite to replace it" in text
    assert f"--out {out}-b" in text
    assert load_bundle(out).build_command.split()[2] == str(first.resolve())   # the first bundle is kept
    from fair_edge.export.build import SourceCheckpoint, recorded_source

    recorded = json.loads((out / "bundle.json").read_text())["source_checkpoint"]
    assert recorded == SourceCheckpoint.of(first).to_dict() and recorded["path"] == str(first.resolve())

    copy = Path("c") / "final.pt"
    copy.parent.mkdir()
    shutil.copy(first, copy)   # the same bytes under another name: the same checkpoint
    assert invoke_build(first, "--no-engine", "--false-reject-rate", "0.01").exit_code == 0   # recalibrated
    assert invoke_build(copy, "--no-engine").exit_code == 0
    r = invoke_build(second, "--no-engine", "--overwrite")
    assert r.exit_code == 0, r.output
    assert "--overwrite: replacing" in one_line(r.output)
    assert recorded_source(out) == SourceCheckpoint.of(second)


def test_a_bundle_built_before_the_source_was_recorded_is_compared_by_its_build_command(tmp_path):
    from fair_edge.export.build import SourceCheckpoint, recorded_source

    (tmp_path / "bundle.json").write_text(json.dumps({"build_command": "fair-edge build /runs/a/final.pt --out x"}))
    assert recorded_source(tmp_path) == SourceCheckpoint("/runs/a/final.pt")
    assert SourceCheckpoint("/runs/a/final.pt").same_as(SourceCheckpoint("/runs/a/final.pt", "ab" * 32))
    assert not SourceCheckpoint("/runs/a/final.pt").same_as(SourceCheckpoint("/runs/b/final.pt", "ab" * 32))
    (tmp_path / "bundle.json").write_text(json.dumps({"build_command": "fair-edge demo"}))
    assert recorded_source(tmp_path) is None


def test_a_bundle_that_records_no_checkpoint_is_replaced_only_with_overwrite_and_the_refusal_says_why(
        tiny_ckpt_path, tmp_path):
    """A bundle made by the library (or an earlier demo or bench) records no checkpoint: build cannot tell whether
    it holds the same model, so it is refused even from the checkpoint it was made from, but the refusal said it was
    built "not from" that checkpoint, which was untrue and read as a bug."""
    out = tmp_path / "bundle"
    build_bundle(load_checkpoint(tiny_ckpt_path), out, BuildOptions(engine=False))   # no source recorded
    r = invoke_build(tiny_ckpt_path, "--no-engine", "--out", out)
    text = one_line(r.output)
    assert r.exit_code == 2, r.output
    assert "does not record the checkpoint it was built from" in text and "not from" not in text
    assert f"fair-edge cannot tell whether it is the model of {tiny_ckpt_path.resolve()} (SHA-256" in text
    assert "or --overwrite to replace it (needed even when it is that model)." in text
    r = invoke_build(tiny_ckpt_path, "--no-engine", "--out", out, "--overwrite")
    assert r.exit_code == 0, r.output
    assert "built from a checkpoint its bundle.json does not record" in one_line(r.output)
    assert invoke_build(tiny_ckpt_path, "--no-engine", "--out", out).exit_code == 0   # recorded now: a rebuild


# ----------------------------------------------------------------------------- 4: bench frames of a tiled bundle
@pytest.fixture(scope="module")
def tiled_bundle(tiled_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("tiled_bundle") / "bundle"
    return build_bundle(load_checkpoint(tiled_ckpt), out, BuildOptions(engine=False),
                        normal_frames=make_frames(4, seed=3, size=96)).bundle


def bench(bundle, *args):
    from fair_edge.cli.bench import app   # the command alone: without the root app's logging set-up, for caplog

    return CliRunner().invoke(app, [str(bundle.root), "--batches", "1", "--seconds", "0.2", "--warmup", "0",
                                    "--baseline", "none", "--mode", "compute", "--backend", "onnxruntime",
                                    "--threads", "1", *args], env={"COLUMNS": "200"})


def test_bench_times_a_tiled_bundle_on_the_frames_its_station_decides(tiled_bundle, tmp_path):
    """The default 1920 x 1080 frames give an 864 x 1536 map, which the station refuses (every frame NG): bench timed
    2040 tiles a frame for a station that takes 9."""
    r = bench(tiled_bundle, "--json", tmp_path / "b.json")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "b.json").read_text())["settings"]["frames"] == "96x96"
    assert "frames 96x96: the size tiled bundle" in one_line(r.output) and "calibrated on 77 x 77 maps" in one_line(r.output)


def test_bench_warns_on_frames_the_station_of_a_tiled_bundle_refuses(tiled_bundle, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        r = bench(tiled_bundle, "--frames", "136x136", "--json", tmp_path / "b.json")
    assert r.exit_code == 0, r.output
    results = json.loads((tmp_path / "b.json").read_text())
    assert results["settings"]["frames"] == "136x136"   # timed as asked
    assert len(results["warnings"]) == 1   # the JSON carried the figures without the warning
    for text in (one_line(caplog.text), one_line(r.output), results["warnings"][0]):   # warned before the timing, said
        # again under the table, and kept in the JSON
        assert "threshold calibrated on 77 x 77 maps" in text and "a 136 x 136 frame gives a 109 x 109 map" in text
        assert "decides every such frame NG" in text and "the frames its station decides: --frames 96x96" in text
    with caplog.at_level(logging.WARNING):
        r = bench(tiled_bundle, "--frames", "96x96", "--json", tmp_path / "c.json")
    assert r.exit_code == 0 and "decides every such frame NG" not in one_line(r.output)
    assert json.loads((tmp_path / "c.json").read_text())["warnings"] == []
