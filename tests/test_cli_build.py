"""``fair-edge build`` through typer's CliRunner on a tiny checkpoint."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import pytest
import typer
from export_fixtures import make_frames, write_pngs
from typer.testing import CliRunner

from fair_edge.cli.build import build, gpu_preprocessing_note
from fair_edge.export.bundle import load_bundle
from fair_edge.preprocess import PreprocessConfig

app = typer.Typer()
app.command("build")(build)


@app.callback()
def _main() -> None:
    """Subcommand mode, as on the real app."""


runner = CliRunner()


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return {
        "calib": write_pngs(root / "train" / "good", make_frames(12, seed=100)),
        "normal": write_pngs(root / "val" / "good", make_frames(10, seed=1)),
        "defects": write_pngs(root / "val" / "bad", make_frames(6, seed=2, defect=True)),
        "empty": (root / "empty").resolve(),
    }


def invoke(*args):
    return runner.invoke(app, ["build", *map(str, args)], env={"COLUMNS": "200"})


def test_build_int8_with_calibration_folder(tiny_ckpt_path, folders, tmp_path):
    out = tmp_path / "bundle"
    r = invoke(tiny_ckpt_path, "--int8", "--calib", folders["calib"], "--calib-images", 8, "--normal", folders["normal"],
               "--defects", folders["defects"], "--max-batch", 4, "--out", out)
    assert r.exit_code == 0, r.output
    b = load_bundle(out)
    assert b.precision == "int8" and b.max_batch == 4 and b.engine is None
    assert b.calibration["images_used"] == 8 and b.calibration["method"] == "percentile"
    assert b.threshold is not None and b.threshold.n_normal == 10 and b.threshold.n_defect == 6
    assert "calibration.json" in b.files and "model.int8.onnx" in b.files
    assert "--int8" in b.build_command and str(folders["calib"]) in b.build_command
    for text in ("INT8 calibration", "model.int8.onnx", "threshold", "NOT built", "pip install tensorrt",
                 "python3-libnvinfer", "fair-edge[tensorrt,cuda]", "fair-edge run --bundle"):
        assert text in r.output, text
    again = invoke(tiny_ckpt_path, "--int8", "--calib", folders["calib"], "--calib-images", 8, "--out", out)
    assert again.exit_code == 0 and "calibration cache reused" in again.output
    assert load_bundle(out).threshold.source.startswith("calibration images")


def test_width_picks_latest_checkpoint_and_must_match(tiny_ckpt_path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = invoke("--width", 32, "--fp16")
    assert r.exit_code == 2 and "no w32 checkpoint" in r.output
    r = invoke(tiny_ckpt_path, "--width", 32)
    assert r.exit_code == 2 and "--width 32 does not match" in r.output and "width 8" in r.output
    r = invoke(tiny_ckpt_path, "--width", 46)
    assert r.exit_code == 2 and "must be one of 32, 64, 128" in r.output


def test_errors_name_the_problem(tiny_ckpt_path, folders, tmp_path):
    r = invoke(tmp_path / "missing.pt", "--out", tmp_path / "x")
    assert r.exit_code == 2 and "does not exist" in r.output
    folders["empty"].mkdir(exist_ok=True)
    r = invoke(tiny_ckpt_path, "--int8", "--calib", folders["empty"], "--out", tmp_path / "x")
    assert r.exit_code == 2 and "holds no images" in r.output
    r = invoke(tiny_ckpt_path, "--int8", "--out", tmp_path / "x")
    assert r.exit_code == 2 and "--int8 needs normal images" in r.output
    r = invoke(tiny_ckpt_path, "--int8", "--fp16")
    assert r.exit_code == 2 and "exclude each other" in r.output
    r = invoke(tiny_ckpt_path, "--int8", "--calib", folders["calib"], "--calib-method", "entropi")
    assert r.exit_code == 2 and "Did you mean 'entropy'" in r.output
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("keep me")
    r = invoke(tiny_ckpt_path, "--out", tmp_path / "foreign")
    assert r.exit_code == 2 and "not a fair-edge bundle" in r.output
    assert (tmp_path / "foreign" / "notes.txt").exists()


def test_int8_on_an_onnxruntime_without_int8_calibration_is_refused_before_the_export(tiny_ckpt_path, folders,
                                                                                      tmp_path, monkeypatch):
    """Python 3.10 (onnxruntime <= 1.23): --int8 is refused in one line before the checkpoint loads and the FP32 graph
    is exported, not after."""
    import torch

    from fair_edge.cli import build as build_cli
    from fair_edge.errors import ExportError

    def old_onnxruntime():
        raise ExportError("INT8 calibration needs onnxruntime >= 1.27 (Python >= 3.11); found onnxruntime 1.23.2.")

    def exported(*args, **kwargs):
        raise AssertionError("the FP32 graph was exported before the INT8 refusal")

    monkeypatch.setattr(build_cli, "require_int8_onnxruntime", old_onnxruntime)
    monkeypatch.setattr(torch.onnx, "export", exported)
    r = invoke(tiny_ckpt_path, "--int8", "--calib", folders["calib"], "--out", tmp_path / "x")
    assert r.exit_code == 2 and "needs onnxruntime >= 1.27" in r.output and not (tmp_path / "x").exists()


def test_export_failure_is_reported(tiny_ckpt_path, tmp_path, monkeypatch):
    import torch

    def broken(*args, **kwargs):
        raise RuntimeError("unsupported operator aten::frobnicate")

    monkeypatch.setattr(torch.onnx, "export", broken)
    r = invoke(tiny_ckpt_path, "--out", tmp_path / "x")
    assert r.exit_code == 2 and "ONNX export of FAIR width 8 (fp32, opset 17) failed" in r.output and "frobnicate" in r.output
    assert not os.path.exists(tmp_path / "x") and list(tmp_path.iterdir()) == []  # a failed build leaves nothing


def test_summary_says_which_gpu_pre_processing_the_station_gets():
    assert gpu_preprocessing_note(PreprocessConfig()) == ("fused CUDA kernel", "radius 20, 7 separable term(s)")
    assert gpu_preprocessing_note(PreprocessConfig(filter="sobel_xy"))[0] == "fused CUDA kernel"
    path, detail = gpu_preprocessing_note(PreprocessConfig(cutoff=5.0))
    assert path == "reference (PyTorch)" and "cutoff=10.1 (higher)" in detail


@pytest.fixture(scope="module")
def products(tmp_path_factory):
    """An MVTec root of two products, a and b: without --category it is refused (which product?)."""
    root = tmp_path_factory.mktemp("mvtec")
    for product, seed in (("a", 10), ("b", 20)):
        write_pngs(root / product / "train" / "good", make_frames(6, seed=seed))
        write_pngs(root / product / "test" / "good", make_frames(6, seed=seed + 1))
        write_pngs(root / product / "test" / "crack", make_frames(4, seed=seed + 2, defect=True))
    return root.resolve()


def parse_build_command(command: str) -> dict:
    """The options of a stored ``fair-edge build ...`` line as the build command itself reads them."""
    words = shlex.split(command)
    assert words[:2] == ["fair-edge", "build"], command
    return typer.main.get_command(app).commands["build"].make_context("build", words[2:]).params


def test_the_stored_build_command_has_every_option_that_was_given(tiny_ckpt_path, products, tmp_path, monkeypatch):
    """bundle.json's build_command (quoted by every 'Rebuild it with' error), read back by the build command, gives
    every option this build was given; each option of the command is given here, so a new one must be thought of
    (--model is not stored: the checkpoint it picked is; --width, which must match the checkpoint, separately;
    --overwrite changes no result, and the rebuild, from the same checkpoint, replaces its bundle without it)."""
    import fair_edge.cli.build as cli
    from fair_edge.errors import ExportError

    stored = []

    def stop(ckpt, out, options, *args, **kwargs):
        stored.append(options.command)
        raise ExportError("stopped: only the stored command is checked")

    monkeypatch.setattr(cli, "build_bundle", stop)
    out = tmp_path / "b"
    expected = {"checkpoint": Path(tiny_ckpt_path).resolve(), "fp16": False, "int8": True, "calib": str(products),
                "calib_images": 5, "calib_method": "max", "normal": str(products), "defects": str(products),
                "category": "a", "false_reject_rate": 0.02, "max_batch": 2, "out": out.resolve(), "engine": False,
                "max_drop": 0.5, "pixel_quantile": 0.999}
    r = invoke(tiny_ckpt_path, "--int8", "--calib", products, "--calib-images", 5, "--calib-method", "max", "--normal",
               products, "--defects", products, "--category", "a", "--false-reject-rate", 0.02, "--max-batch", 2,
               "--out", out, "--no-engine", "--max-drop", 0.5, "--pixel-quantile", 0.999)
    assert r.exit_code == 2 and "stopped: only the stored command" in r.output and len(stored) == 1, r.output
    parsed = parse_build_command(stored[0])
    assert set(parsed) - {"model", "width", "overwrite"} == set(expected), \
        "an option of `fair-edge build` this test does not give"
    assert {k: parsed[k] for k in expected} == expected, stored[0]
    by_width = cli._command(Path(tiny_ckpt_path), 32, "fp16", None, 64, "percentile", None, None, 0.01, 8, out)
    assert parse_build_command(by_width)["width"] == 32 and parse_build_command(by_width)["engine"] is True


def test_the_stored_command_of_one_product_in_a_multi_product_root_rebuilds_it(tiny_ckpt_path, products, tmp_path):
    """The rebuild command a bundle quotes works: it names --category (without it, the root's two products are
    refused)."""
    out = tmp_path / "b"
    r = invoke(tiny_ckpt_path, "--normal", products, "--category", "b", "--out", out, "--no-engine")
    assert r.exit_code == 0, r.output
    first = load_bundle(out)
    assert first.threshold.n_normal == 6
    again = runner.invoke(app, ["build", *shlex.split(first.build_command)[2:]], env={"COLUMNS": "200"})
    assert again.exit_code == 0, again.output
    rebuilt = load_bundle(out)
    assert rebuilt.threshold.value == first.threshold.value and rebuilt.build_command == first.build_command


def test_the_summary_of_a_colour_only_model_names_no_high_pass(patchcore_run, folders, tmp_path):
    """PatchCore takes the colour image only: the summary named FAIR's filter (butterworth) for it and said the
    fused kernel made a high-pass."""
    r = invoke(patchcore_run[0], "--normal", folders["normal"], "--out", tmp_path / "b", "--no-engine")
    assert r.exit_code == 0, r.output
    assert "filter" not in r.output and "the model takes the colour image only (no high-pass)" in r.output
