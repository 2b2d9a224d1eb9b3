"""`fair-edge build` leaves nothing behind when it fails, and takes datasets wherever it asks for normal images."""

from __future__ import annotations

import pytest
import typer
from export_fixtures import make_frames, write_pngs
from typer.testing import CliRunner

import fair_edge.export.build as build_module
from fair_edge.models.checkpoint import load_checkpoint
from fair_edge.cli.build import build
from fair_edge.errors import ExportError
from fair_edge.export.build import BuildOptions, build_bundle
from fair_edge.export.bundle import load_bundle

app = typer.Typer()
app.command("build")(build)


@app.callback()
def _main() -> None:
    """Subcommand mode, as on the real app."""


def invoke(*args):
    return CliRunner().invoke(app, ["build", *map(str, args)], env={"COLUMNS": "200"})


def test_int8_without_calib_is_refused_before_any_work(tiny_ckpt_path, tmp_path):
    r = invoke(tiny_ckpt_path, "--int8", "--out", tmp_path / "b")
    assert r.exit_code == 2 and "--int8 needs normal images" in r.output and "elpv:mono" in r.output
    assert list(tmp_path.iterdir()) == []


def test_failed_build_leaves_nothing_and_keeps_the_previous_bundle(tiny_ckpt_path, tmp_path, monkeypatch):
    ckpt, out = load_checkpoint(tiny_ckpt_path), tmp_path / "b"
    frames = make_frames(8, seed=3)

    def fail(*args, **kwargs):
        raise ExportError("simulated failure after the graphs were written")

    with monkeypatch.context() as m:
        m.setattr(build_module, "_threshold", fail)
        with pytest.raises(ExportError, match="simulated"):
            build_bundle(ckpt, out, BuildOptions("fp32", engine=False), normal_frames=frames)
    assert list(tmp_path.iterdir()) == []  # no bundle, no temporary folder
    first = build_bundle(ckpt, out, BuildOptions("fp32", engine=False), normal_frames=frames)  # retry works
    with monkeypatch.context() as m:
        m.setattr(build_module, "_threshold", fail)
        with pytest.raises(ExportError):
            build_bundle(ckpt, out, BuildOptions("fp16", engine=False), normal_frames=frames)
    assert [p.name for p in tmp_path.iterdir()] == ["b"]
    assert load_bundle(out) == first.bundle  # the previous bundle is untouched
    second = build_bundle(ckpt, out, BuildOptions("fp16", engine=False), normal_frames=frames)
    assert second.bundle.precision == "fp16" and [p.name for p in tmp_path.iterdir()] == ["b"]


def test_calib_normal_and_defects_accept_a_dataset(tiny_ckpt_path, mvtec_dir, tmp_path):
    out = tmp_path / "b"
    r = invoke(tiny_ckpt_path, "--int8", "--calib", mvtec_dir, "--normal", mvtec_dir, "--defects", mvtec_dir,
               "--out", out, "--no-engine")
    assert r.exit_code == 0, r.output
    assert "build, INT8 calibration (percentile) 16/16 (100%)" in r.output  # the plain progress line of a log
    b = load_bundle(out)
    assert b.calibration["images_used"] == 16  # train/good
    assert b.threshold.n_normal == 6 and b.threshold.n_defect == 6  # test/good and test/blob


def test_dataset_without_that_role_is_a_clear_error(tiny_ckpt_path, mvtec_dir, tmp_path):
    plain = write_pngs(tmp_path / "plain", make_frames(4, seed=9))
    r = invoke(tiny_ckpt_path, "--normal", plain, "--out", tmp_path / "b1", "--no-engine")
    assert r.exit_code == 0 and load_bundle(tmp_path / "b1").threshold.n_normal == 4  # a plain folder: all of it
    r = invoke(tiny_ckpt_path, "--normal", "elpv:nonsense", "--out", tmp_path / "b2")
    assert r.exit_code == 2 and not (tmp_path / "b2").exists()
