"""Ctrl-C and --resume as a user meets them: a real process, a real SIGINT, the printed command run as given."""

import csv
import os
import shlex
import signal
import subprocess
import sys
import time

import pytest
import torch
from typer.testing import CliRunner

from fair_edge.models.checkpoint import load_checkpoint
from fair_edge.cli import app

STEPS = 150


def cli(args: list[str]) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", COLUMNS="200")
    return subprocess.Popen([sys.executable, "-m", "fair_edge.cli", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def train_args(data, out) -> list[str]:
    return [str(data), "--width", "32", "--image-size", "32", "--steps", str(STEPS), "--batch", "4", "--lr", "1e-3",
            "--device", "cpu", "--save-every", "1000", "--out", str(out)]


def logged_rows(path) -> list[dict]:
    if not path.is_file():
        return []
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_ctrl_c_then_printed_resume_command_equals_an_uninterrupted_run(mvtec_dir, tmp_path):
    straight = cli(["train", *train_args(mvtec_dir, tmp_path / "straight")])
    stopped = cli(["train", *train_args(mvtec_dir, tmp_path / "stopped")])
    deadline = time.monotonic() + 300
    while len(logged_rows(tmp_path / "stopped" / "loss.csv")) < 1:  # step 10 done: training is under way
        assert stopped.poll() is None and time.monotonic() < deadline, stopped.communicate()
        time.sleep(0.02)
    stopped.send_signal(signal.SIGINT)
    _, err = stopped.communicate(timeout=300)
    assert stopped.returncode == 130, err
    step = load_checkpoint(tmp_path / "stopped" / "last.pt").train_state["step"]
    assert 10 <= step < STEPS, err
    command = err.split("Resume with:")[1].strip().splitlines()[0]
    argv = shlex.split(command)
    assert argv[:2] == ["fair-edge", "train"]
    resumed = cli(argv[1:])  # exactly the printed flags, nothing added
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    assert f"resumed {tmp_path / 'stopped' / 'last.pt'} at step {step} of {STEPS}" in " ".join(err.split())
    assert straight.wait(timeout=600) == 0, straight.communicate()[1]

    a = load_checkpoint(tmp_path / "straight" / "final.pt")
    b = load_checkpoint(tmp_path / "stopped" / "final.pt")
    assert b.data_summary["steps"] == STEPS  # the step budget survived the resume
    for key, value in a.state_dict.items():
        assert torch.equal(b.state_dict[key], value), key
    rows_a = logged_rows(tmp_path / "straight" / "loss.csv")
    rows_b = logged_rows(tmp_path / "stopped" / "loss.csv")
    assert [(r["step"], r["loss"]) for r in rows_a] == [(r["step"], r["loss"]) for r in rows_b]


def tiny_run(mvtec_dir, out, steps="3") -> list[str]:
    return ["train", str(mvtec_dir), "--width", "32", "--image-size", "32", "--steps", steps, "--batch", "4",
            "--device", "cpu", "--save-every", "1", "--out", str(out)]


def test_resume_reads_settings_and_refuses_a_changed_flag(mvtec_dir, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, tiny_run(mvtec_dir, tmp_path))
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["train", "--resume", "--out", str(tmp_path), "--steps", "5", "--cutoff", "6"])
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and "--steps 5 (saved: 3)" in text and "--cutoff 6.0 (saved: 3.75)" in text, text
    result = runner.invoke(app, ["train", "--resume", "--out", str(tmp_path), "--image-size", "32", "--device", "cpu"])
    assert result.exit_code == 0 and "at step 3 of 3" in " ".join(result.output.split()), result.output


def test_a_run_saved_with_width_in_its_train_config_resumes_with_the_models_width(mvtec_dir, tmp_path):
    """Runs written before the width was a model setting only also hold it in their saved training settings
    (``train_state["config"]`` and ``data_summary["train_config"]``); they still resume, at the model's width."""
    from dataclasses import asdict

    from fair_edge.models.fair.family import FairSettings
    from fair_edge.models.fair.train import TrainConfig, Trainer
    from fair_edge.preprocess import PreprocessConfig
    from fair_edge.training.data import load_dataset
    from fair_edge.training.loop import TrainingInterrupted
    from fair_edge.training.resume import RunSource, read_saved_run

    cfg = TrainConfig(batch=4, lr=1e-3, steps=3, save_every=1000, log_every=1)
    trainer = Trainer(load_dataset(mvtec_dir), PreprocessConfig(image_size=32), FairSettings(width=8), cfg, tmp_path,
                      torch.device("cpu"))
    trainer.run_info = RunSource(str(mvtec_dir)).to_dict()  # as run_training sets it
    with pytest.raises(TrainingInterrupted):
        trainer.run(lambda step, *_: trainer.request_stop())
    path = tmp_path / "last.pt"
    payload = torch.load(path, map_location="cpu", weights_only=True)
    written_before = {"width": 8, **asdict(cfg)}  # TrainConfig.to_dict() as it was: width first, then the rest
    payload["train_state"]["config"] = written_before
    payload["data_summary"]["train_config"] = {k: v for k, v in written_before.items() if k != "synthesis"}
    torch.save(payload, path)

    saved = read_saved_run(tmp_path)
    assert saved.train == cfg and saved.model.settings == FairSettings(width=8)
    result = CliRunner().invoke(app, ["train", "--resume", "--out", str(tmp_path), "--width", "32"])
    assert result.exit_code == 2 and "--width 32 (saved: 8)" in " ".join(result.output.split()), result.output
    result = CliRunner().invoke(app, ["train", "--resume", "--out", str(tmp_path), "--device", "cpu"])
    text = " ".join(result.output.split())
    assert result.exit_code == 0 and "resumed" in text and "at step 1 of 3" in text and "FAIR width 8" in text, text
    final = load_checkpoint(tmp_path / "final.pt")
    assert final.settings.width == 8 and final.state_dict["head.weight"].shape[1] == 8
    assert final.data_summary["steps"] == 3 and "width" not in load_checkpoint(path).train_state["config"]


def test_resume_without_a_run_says_what_to_pass(tmp_path):
    result = CliRunner().invoke(app, ["train", "--resume", "--out", str(tmp_path / "none")])
    assert result.exit_code == 2 and "last.pt does not exist" in " ".join(result.output.split())
    result = CliRunner().invoke(app, ["train", "--width", "32"])
    assert result.exit_code == 2 and "train needs DATA" in result.output


def test_train_states_the_cutoff_and_learning_rate_it_used(mvtec_dir, tmp_path):
    result = CliRunner().invoke(app, tiny_run(mvtec_dir, tmp_path, steps="1"))
    text = " ".join(result.output.split())
    assert result.exit_code == 0, text
    assert "D0 3.75 (frequency-index units at 32 px, the paper's 30 at 256 px scaled to this size)" in text
    assert "learning rate 0.0001 (x0.2 at 80%, 90%)" in text
    assert load_checkpoint(tmp_path / "final.pt").preprocess.cutoff == pytest.approx(30 * 32 / 256)


def test_next_hint_fits_a_plain_folder(mvtec_dir, tmp_path):
    result = CliRunner().invoke(app, ["train", str(mvtec_dir / "train" / "good"), "--width", "32", "--image-size",
                                      "32", "--steps", "1", "--batch", "4", "--device", "cpu", "--out", str(tmp_path)])
    text = " ".join(result.output.split())
    assert result.exit_code == 0, text
    assert "next: fair-edge build" in text and "--normal" in text and "next: fair-edge eval" not in text


def test_cutoff_follows_the_image_size_but_old_settings_keep_theirs():
    from fair_edge.preprocess import PreprocessConfig

    assert PreprocessConfig().cutoff == 30.0 and PreprocessConfig(image_size=128).cutoff == 15.0
    assert PreprocessConfig(image_size=128, cutoff=30.0).cutoff == 30.0
    stored = {"image_size": 128, "filter": "butterworth", "cutoff": 30.0, "order": 2}  # an older checkpoint
    assert PreprocessConfig.from_dict(stored).cutoff == 30.0


def test_demo_continues_an_interrupted_training(mvtec_dir, tmp_path, monkeypatch):
    import fair_edge.cli.demo as cli
    from fair_edge.training.data import load_dataset
    from fair_edge.demo.config import demo_model, demo_train_config
    from fair_edge.models.fair.train import Trainer
    from fair_edge.training.loop import TrainingInterrupted

    fair = demo_model("fair")
    trainer = Trainer(load_dataset(mvtec_dir), fair.preprocess, fair.settings, demo_train_config(4, "fair"), tmp_path,
                      torch.device("cpu"))
    trainer.run_info = {"data": "elpv:mono", "category": None, "textures": None}  # as run_training sets it
    with pytest.raises(TrainingInterrupted):
        trainer.run(lambda step, *_: trainer.request_stop())
    calls = []
    monkeypatch.setattr(cli, "run_training", lambda data, **kw: calls.append(kw["resume"]) or (tmp_path / "x", None))

    def fake_demo(out, *, train, **kw):
        train()
        raise TrainingInterrupted(out / "last.pt", 3)

    monkeypatch.setattr("fair_edge.demo.run.run_demo", fake_demo)
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path), "--model", "fair", "--steps", "4"])
    assert result.exit_code == 130 and "Run the same `fair-edge demo` command again" in " ".join(result.output.split())
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path), "--model", "fair", "--steps", "5"])  # start over
    assert "other settings" in result.output
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path), "--steps", "4"])  # the default family: LGFDR
    assert "other settings" in result.output
    CliRunner().invoke(app, ["demo", "--out", str(tmp_path), "--model", "fair", "--steps", "4", "--retrain"])
    assert calls == [True, False, False, False]


def test_demo_never_overwrites_the_other_familys_model(mvtec_dir, tmp_path, monkeypatch):
    from fair_edge.training.data import load_dataset
    from fair_edge.demo.config import demo_model, demo_train_config

    fair = demo_model("fair")
    fair.impl.training().make_trainer(load_dataset(mvtec_dir), fair, demo_train_config(1, "fair"), tmp_path,
                                      torch.device("cpu")).run()
    before = (tmp_path / "final.pt").read_bytes()
    reused = []
    monkeypatch.setattr("fair_edge.demo.run.run_demo", lambda out, *, train, **kw: reused.append(train()) or {})
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path)])  # default LGFDR, a FAIR model there
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and "holds a FAIR width 32 model" in text and "--model fair to reuse it" in text, text
    assert (tmp_path / "final.pt").read_bytes() == before and reused == []
    monkeypatch.setattr("fair_edge.cli.demo.print_demo", lambda report: None)
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path), "--model", "fair"])
    assert result.exit_code == 0 and reused == [tmp_path / "final.pt"], result.output


def test_an_lgfdr_run_resumes_from_its_own_last_pt(mvtec_dir, tmp_path):
    runner = CliRunner()
    first = ["train", str(mvtec_dir), "--model", "lgfdr", "--image-size", "32", "--steps", "4", "--batch", "4",
             "--device", "cpu", "--save-every", "2", "--out", str(tmp_path)]
    result = runner.invoke(app, first)
    assert result.exit_code == 0, result.output
    saved = load_checkpoint(tmp_path / "last.pt").train_state
    assert saved["run"]["data"] == str(mvtec_dir) and saved["config"]["steps"] == 4
    result = runner.invoke(app, ["train", "--resume", "--out", str(tmp_path), "--steps", "6"])
    assert result.exit_code == 2 and "--steps 6 (saved: 4)" in " ".join(result.output.split()), result.output
    result = runner.invoke(app, ["train", "--resume", "--out", str(tmp_path)])
    text = " ".join(result.output.split())
    assert result.exit_code == 0 and "at step 4 of 4" in text and "LGFDR" in text, text
    assert "settings: 32 x 32 px; learning rate 0.001" in text and "high-pass" not in text  # LGFDR takes no high-pass
