"""Wrong inputs refused by name before the work (audit 6): a resume under a dotted Python folder, --device gpu,
bench --json, demo/tune --out FILE and demo --backend, build CHECKPOINT --model."""

from __future__ import annotations

import logging

import pytest
from typer.testing import CliRunner

from fair_edge.cli import app
from fair_edge.errors import ConfigError


def invoke(*args):
    return CliRunner().invoke(app, [*map(str, args)], env={"COLUMNS": "200"})


def said(result) -> str:
    """The output of ``result`` on one line (rich wraps long messages)."""
    return " ".join(result.output.split())


# 1: resume of a run whose images are named by absolute paths under a dotted folder (.venv, ~/.pyenv, ~/.local)

def test_a_run_saved_with_absolute_paths_under_a_dotted_folder_resumes(tmp_path, caplog):
    """ELPV runs name their images by absolute path inside the installed package; under a .venv every one counted
    as hidden, so the resume said 0 images were trained on, all added, and refused (the demo's rerun too)."""
    from fair_edge.training.resume import check_same_data

    images = tmp_path / ".venv" / "lib" / "site-packages" / "elpv_dataset" / "data" / "images"
    files = [[str(images / f"cell{i:04d}.png"), 900] for i in range(3)]
    state = {"run": {"data": "elpv:mono", "files_from_root": True}, "total_steps": 100, "step": 40,
             "data_files": files + [[str(images / "._cell0000.png"), 64]]}
    with caplog.at_level(logging.WARNING):
        check_same_data(tmp_path / "last.pt", state, files, 100)
    assert "1 hidden file(s)" in caplog.text and "._cell0000.png" in caplog.text   # the file name still counts


def test_a_name_outside_the_data_root_is_not_hidden_for_its_dots(tmp_path):
    """A VisA CSV's images lie beside its folder: their names relative to it start with '..'."""
    from fair_edge.training.resume import check_same_data

    files = [["../candle/Data/Images/Normal/0000.JPG", 900], ["../candle/Data/Images/Normal/0001.JPG", 900]]
    state = {"run": {"data": str(tmp_path / "split_csv" / "1cls.csv"), "files_from_root": True},
             "total_steps": 100, "step": 40, "data_files": files}
    check_same_data(tmp_path / "last.pt", state, files, 100)


# 3: --device that torch does not know

@pytest.mark.parametrize("name", ["gpu", "cuda:x", "mps", "cuda:"], ids=["g-p-u", "cuda-x", "mps", "cuda-colon"])
def test_an_unknown_device_is_a_config_error_naming_the_flag(name):
    from fair_edge.training.loop import resolve_device

    with pytest.raises(ConfigError) as caught:
        resolve_device(name)
    text = str(caught.value)
    assert "--device" in text and "auto, cpu, cuda or cuda:N" in text and repr(name) in text


def test_train_and_tune_with_device_gpu_exit_2_without_a_traceback(mvtec_dir, tmp_path, monkeypatch):
    import fair_edge.training.tune as tune_module

    monkeypatch.setattr(tune_module, "tune", lambda *a, **k: pytest.fail("tune started"))
    for args in (["train", mvtec_dir, "--out", tmp_path / "t"], ["tune", mvtec_dir, "--out", tmp_path / "u"]):
        r = invoke(*args, "--device", "gpu")
        assert r.exit_code == 2 and "--device must be one of auto, cpu, cuda or cuda:N" in said(r), r.output
    assert not (tmp_path / "u").exists()


# 4: bench --json PATH

def test_bench_json_that_cannot_be_written_is_refused_before_the_timing(tmp_path, monkeypatch):
    """--json pointing at a folder, or under a file, crashed with a traceback after the whole benchmark."""
    import fair_edge.bench.run as bench_run

    monkeypatch.setattr(bench_run, "run_synthetic_bench", lambda *a, **k: pytest.fail("timed"))
    monkeypatch.setattr(bench_run, "synthetic_model", lambda *a, **k: pytest.fail("model built"))
    (tmp_path / "folder").mkdir()
    (tmp_path / "st.yaml").write_text("x")
    bench = ["bench", "--synthetic-width", 32, "--seconds", 0.1]
    r = invoke(*bench, "--json", tmp_path / "folder")
    assert r.exit_code == 2 and "--json" in said(r) and "is a folder" in said(r), r.output
    r = invoke(*bench, "--json", tmp_path / "st.yaml" / "r.json")
    assert r.exit_code == 2 and "is a file, not a folder" in said(r), r.output
    assert "Traceback" not in r.output


def test_bench_json_write_error_names_the_path(tmp_path):
    from fair_edge.cli.bench import write_json

    (tmp_path / "st.yaml").write_text("x")
    with pytest.raises(ConfigError, match="--json .*r.json: the results could not be written"):
        write_json(tmp_path / "st.yaml" / "r.json", {"rows": []})


# 5: demo / tune --out FILE, demo --backend typo, before any work

@pytest.mark.parametrize("flags,expected", [
    (["--backend", "onnx"], "--backend must be one of"),
    (["--device", "gpu"], "--device must be one of"),
    (["--out", "FILE"], "is a file; the demo writes a folder"),
])
def test_demo_refuses_a_wrong_flag_before_any_work(tmp_path, monkeypatch, flags, expected):
    import fair_edge.demo.run as demo_run

    monkeypatch.setattr(demo_run, "run_demo", lambda *a, **k: pytest.fail("the demo started"))
    (tmp_path / "FILE").write_text("a station file")
    flags = [str(tmp_path / "FILE") if f == "FILE" else f for f in flags]
    out = [] if "--out" in flags else ["--out", tmp_path / "demo"]
    r = invoke("demo", *out, *flags)
    assert r.exit_code == 2 and expected in said(r), r.output
    assert not (tmp_path / "demo").exists() and (tmp_path / "FILE").read_text() == "a station file"


def test_demo_backend_misspelt_names_the_closest_backend(tmp_path, monkeypatch):
    import fair_edge.demo.run as demo_run

    monkeypatch.setattr(demo_run, "run_demo", lambda *a, **k: pytest.fail("the demo started"))
    r = invoke("demo", "--out", tmp_path / "demo", "--backend", "onnxrutime")
    assert "Did you mean 'onnxruntime'?" in said(r), r.output


def test_tune_out_that_is_a_file_is_refused_before_any_work(mvtec_dir, tmp_path, monkeypatch):
    import fair_edge.training.data as data_module
    import fair_edge.training.tune as tune_module

    monkeypatch.setattr(tune_module, "tune", lambda *a, **k: pytest.fail("tune started"))
    monkeypatch.setattr(data_module, "load_dataset", lambda *a, **k: pytest.fail("data loaded"))
    (tmp_path / "st.yaml").write_text("camera: {}")
    r = invoke("tune", mvtec_dir, "--out", tmp_path / "st.yaml")
    assert r.exit_code == 2 and "is a file; a tune run writes a folder" in said(r), r.output


# 6: build CHECKPOINT --model

def test_build_refuses_a_model_family_other_than_the_checkpoints(tiny_ckpt_path, tmp_path):
    """--model was read only without CHECKPOINT: with one, any name (even misspelt) was silently ignored."""
    r = invoke("build", tiny_ckpt_path, "--model", "patchcore", "--out", tmp_path / "b", "--no-engine")
    assert r.exit_code == 2 and "--model patchcore does not match the checkpoint" in said(r), r.output
    assert "a fair model" in said(r) and not (tmp_path / "b").exists()
    r = invoke("build", tiny_ckpt_path, "--model", "patchcor", "--out", tmp_path / "b", "--no-engine")
    assert r.exit_code == 2 and "--model: model family must be one of" in said(r), r.output
    assert "Did you mean 'patchcore'?" in said(r) and not (tmp_path / "b").exists()
