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


def normals_folder(mvtec_dir, folder):
    """A folder of normal images: a copy of the fixture's 16 training images (a test may add or remove some)."""
    import shutil

    shutil.copytree(mvtec_dir / "train" / "good", folder)
    return folder


def test_resume_refuses_other_training_images_naming_them(mvtec_dir, tmp_path):
    """Images added to the data folder after an interrupted run: --resume would continue on other data, with
    another epoch length and the old learning-rate milestones. It is refused naming a few files and the count,
    and the fix; put back as they were, the run resumes."""
    import shutil

    data = normals_folder(mvtec_dir, tmp_path / "data")
    runner = CliRunner()
    result = runner.invoke(app, tiny_run(data, tmp_path / "run"))
    assert result.exit_code == 0, result.output
    saved = load_checkpoint(tmp_path / "run" / "last.pt").train_state
    assert len(saved["data_files"]) == 16 and saved["total_steps"] == 3
    for i in range(5):
        shutil.copy(data / "000.png", data / f"x{i}.png")
    (data / "015.png").unlink()
    result = runner.invoke(app, ["train", "--resume", "--out", str(tmp_path / "run")])
    text = " ".join(result.output.split())
    assert result.exit_code == 2, text
    assert "it was trained on 16 images" in text and "the data now has 20 images" in text, text
    assert f"5 added ({data / 'x0.png'}, {data / 'x1.png'}, {data / 'x2.png'} and 2 more)" in text, text
    assert f"1 missing ({data / '015.png'})" in text and "--overwrite" in text, text
    for i in range(5):
        (data / f"x{i}.png").unlink()
    shutil.copy(mvtec_dir / "train" / "good" / "015.png", data / "015.png")
    result = runner.invoke(app, ["train", "--resume", "--out", str(tmp_path / "run")])
    assert result.exit_code == 0 and "at step 3 of 3" in " ".join(result.output.split()), result.output


def test_resume_refuses_another_step_budget_and_a_changed_image(mvtec_dir, tmp_path):
    """An epoch budget follows the number of images: 16 images, batch 4, 1 epoch = 4 steps; with 4 more it would be
    5 steps (and milestones at other steps). The stored budget is compared; an image of another size is named."""
    import shutil

    from fair_edge.errors import ConfigError
    from fair_edge.models.fair.family import FairSettings
    from fair_edge.models.fair.train import TrainConfig, Trainer
    from fair_edge.preprocess import PreprocessConfig
    from fair_edge.training.data import load_dataset
    from fair_edge.training.loop import TrainingInterrupted

    data = normals_folder(mvtec_dir, tmp_path / "data")
    cfg = TrainConfig(batch=4, lr=1e-3, epochs=1, save_every=1000, log_every=1)

    def trainer():
        return Trainer(load_dataset(data), PreprocessConfig(image_size=32), FairSettings(width=8), cfg,
                       tmp_path / "run", torch.device("cpu"))

    first = trainer()
    with pytest.raises(TrainingInterrupted):
        first.run(lambda step, *_: first.request_stop())
    for i in range(4):
        shutil.copy(data / "000.png", data / f"x{i}.png")
    with pytest.raises(ConfigError, match=r"16 images with a budget of 4 steps \(saved at step 1\); the data now has "
                                          r"20 images, a budget of 5: 4 added"):
        trainer().resume()
    for i in range(4):
        (data / f"x{i}.png").unlink()
    (data / "003.png").write_bytes((data / "003.png").read_bytes() + b"\0")
    with pytest.raises(ConfigError, match=r"1 changed \(another size\) \(.*003\.png\)"):
        trainer().resume()


def test_a_patchcore_fit_resumed_on_other_images_is_refused(mvtec_dir, tmp_path):
    """Resuming a finished PatchCore fit re-writes final.pt from last.pt's bank: on other images it is refused."""
    import shutil

    data = normals_folder(mvtec_dir, tmp_path / "data")
    runner = CliRunner()
    args = ["train", str(data), "--model", "patchcore", "--image-size", "32", "--batch", "8", "--set", "embed_dim=16",
            "--device", "cpu", "--out", str(tmp_path / "run")]
    assert runner.invoke(app, args).exit_code == 0
    shutil.copy(data / "000.png", data / "new.png")
    result = runner.invoke(app, ["train", "--resume", "--out", str(tmp_path / "run")])
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and f"1 added ({data / 'new.png'})" in text, text


def test_training_again_into_a_run_folder_is_refused_unless_overwrite(mvtec_dir, tmp_path):
    """The same train command run again (--resume forgotten) would restart at step 0, truncate loss.csv and
    overwrite last.pt; and an interrupted second run would leave the first run's final.pt beside its last.pt, which
    `build --width 32` picks. Refused, naming the folder and the choices; --overwrite deletes the old run first."""
    runner = CliRunner()
    run = tmp_path / "run"
    assert runner.invoke(app, tiny_run(mvtec_dir, run)).exit_code == 0
    before = {name: (run / name).read_bytes() for name in ("last.pt", "final.pt", "loss.csv")}
    result = runner.invoke(app, tiny_run(mvtec_dir, run, steps="5"))
    text = " ".join(result.output.split())
    assert result.exit_code == 2, text
    assert f"{run} already holds a training run (last.pt and final.pt)" in text, text
    assert f"fair-edge train --resume --out {run}" in text and "another --out" in text and "--overwrite" in text
    assert {name: (run / name).read_bytes() for name in before} == before    # nothing touched
    (run / "final.pt").unlink()                                             # an interrupted run: last.pt alone
    assert runner.invoke(app, tiny_run(mvtec_dir, run)).exit_code == 2
    result = runner.invoke(app, [*tiny_run(mvtec_dir, run, steps="5"), "--overwrite"])
    text = " ".join(result.output.split())
    assert result.exit_code == 0 and f"--overwrite: deleted {run / 'last.pt'}" in text, text
    assert load_checkpoint(run / "final.pt").data_summary["steps"] == 5
    assert len(logged_rows(run / "loss.csv")) == 1                          # the new run's rows only (step 5)
    result = runner.invoke(app, ["train", "--resume", "--overwrite", "--out", str(run)])
    assert result.exit_code == 2 and "pass one" in result.output, result.output


def test_resume_refuses_changed_tiling_flags(mvtec_dir, tmp_path):
    """--tile, --tile-overlap and --roi are compared with the saved pre-processing's tiling, as --image-size is
    (they were silently ignored: the run went on untiled)."""
    runner = CliRunner()
    assert runner.invoke(app, tiny_run(mvtec_dir, tmp_path)).exit_code == 0
    result = runner.invoke(app, ["train", "--resume", "--out", str(tmp_path), "--tile", "32", "--tile-overlap", "8"])
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and "--tile 32 (saved: None)" in text and "--tile-overlap 8 (saved: 0)" in text, text
    result = runner.invoke(app, ["train", "--resume", "--out", str(tmp_path), "--tile-overlap", "0"])
    assert result.exit_code == 0, result.output


def test_resume_settings_compare_a_tiled_runs_tiling(tmp_path):
    from fair_edge.errors import ConfigError
    from fair_edge.models.checkpoint import Checkpoint, save_checkpoint
    from fair_edge.models.fair.family import FairSettings
    from fair_edge.models.fair.train import TrainConfig
    from fair_edge.models.fair.unet import UNet
    from fair_edge.models.registry import ModelSpec
    from fair_edge.preprocess import PreprocessConfig
    from fair_edge.tiling import TilingConfig
    from fair_edge.training.resume import resume_settings

    pre = PreprocessConfig(image_size=32, tiling=TilingConfig(32, 8, (0, 0, 64, 64)))
    state = {"step": 1, "config": TrainConfig().to_dict(), "run": {"data": "somewhere"}}
    save_checkpoint(tmp_path / "last.pt", Checkpoint(ModelSpec("fair", pre, FairSettings(8)), UNet(8).state_dict(), {},
                                                     state))
    same = resume_settings(tmp_path, {"tile": 32, "tile_overlap": 8, "roi": "0, 0, 64, 64"}, None)
    assert same.model.preprocess == pre
    with pytest.raises(ConfigError, match=r"--tile 48 \(saved: 32\); --roi 0,0,96,96 \(saved: 0,0,64,64\)"):
        resume_settings(tmp_path, {"tile": 48, "roi": "0,0,96,96"}, None)


def test_a_run_whose_budget_this_release_computes_otherwise_is_refused_naming_that_not_the_images(mvtec_dir, tmp_path):
    """A run written by a release that computed another step budget for the same settings (LGFDR with --tile counted
    --epochs in images before 75ab9ff, in tiles since: a saved 4000 is 24000 now), on unchanged images: the refusal
    said to restore the images (they are the same) and --steps is refused as a changed flag. Now it names the two
    budgets and the options that work, and no fix about the images."""
    runner = CliRunner()
    data = normals_folder(mvtec_dir, tmp_path / "data")
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", str(data), "--model", "lgfdr", "--image-size", "32", "--epochs", "1",
                                 "--batch", "4", "--device", "cpu", "--save-every", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    payload = torch.load(out / "last.pt", weights_only=False)
    assert payload["train_state"]["total_steps"] == 4 and payload["train_state"]["config"]["steps"] is None
    payload["train_state"]["total_steps"] = 9   # what the release that wrote it computed for these settings
    torch.save(payload, out / "last.pt")
    result = runner.invoke(app, ["train", "--resume", "--out", str(out)])
    text = " ".join(result.output.split())
    assert result.exit_code == 2, text
    assert "its 16 training images are unchanged" in text and "restore the images" not in text, text
    assert "this release computes a budget of 4 steps for its saved settings where the release that wrote the run " \
           "computed 9 (saved at step 4)" in text, text
    assert "finish the run with the fair-edge release that wrote it" in text and "start a new run" in text, text
    assert "--overwrite" in text and "with --steps 9 to train as many steps as this run planned" in text, text


# ----------------------------------------------------------------------------- --resume from another folder
def _stop_after_step(monkeypatch, step: int):
    """FAIR's trainer asks itself to stop after ``step`` (as the first Ctrl-C does), in this process."""
    from fair_edge.models.fair.train import Trainer

    original = Trainer.train_step

    def train_step(self, s):
        if s == step - 1:
            self.request_stop()
        return original(self, s)

    monkeypatch.setattr(Trainer, "train_step", train_step)


def test_a_run_started_with_a_relative_data_path_resumes_from_another_folder(mvtec_dir, tmp_path, monkeypatch):
    """`fair-edge train data/plate ...`, then from another folder `train --resume --out /abs/RUN`: "dataset
    data/plate does not exist" (DATA and the image names were saved relative to the folder training started in), and
    DATA given again, relative from there or absolute, was refused as a changed flag. Now the paths are saved
    absolute and the images named from the dataset root; a DATA given again is compared by the folder it names."""
    normals_folder(mvtec_dir, tmp_path / "start" / "data" / "plate")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "start")
    runner = CliRunner()
    with monkeypatch.context() as patch:
        _stop_after_step(patch, 2)
        result = runner.invoke(app, tiny_run("data/plate", "run", steps="4"))
    assert result.exit_code == 130, result.output
    run = tmp_path / "start" / "run"
    monkeypatch.chdir(tmp_path / "elsewhere")
    result = runner.invoke(app, ["train", "--resume", "--out", str(run)])
    text = " ".join(result.output.split())
    assert result.exit_code == 0 and f"resumed {run / 'last.pt'} at step 2 of 4" in text, text
    for data in ("../start/data/plate", str(tmp_path / "start" / "data" / "plate")):  # relative from here, absolute
        result = runner.invoke(app, ["train", data, "--resume", "--out", str(run)])
        assert result.exit_code == 0 and "at step 4 of 4" in " ".join(result.output.split()), result.output
    result = runner.invoke(app, ["train", str(mvtec_dir), "--resume", "--out", str(run)])  # another folder
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and f"{mvtec_dir} (saved: {tmp_path / 'start' / 'data' / 'plate'})" in text, text


def test_a_run_saved_with_paths_relative_to_its_start_folder_still_resumes(mvtec_dir, tmp_path, monkeypatch):
    """A last.pt written before the paths were saved absolute holds DATA as typed and the image names as found from
    the folder training started in. From there it resumes as before; from elsewhere, DATA given again as it is from
    there resumes it, and without DATA the refusal says where the path came from and what to do."""
    normals_folder(mvtec_dir, tmp_path / "start" / "data" / "plate")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "start")
    runner = CliRunner()
    with monkeypatch.context() as patch:
        _stop_after_step(patch, 1)
        assert runner.invoke(app, tiny_run("data/plate", "run", steps="3")).exit_code == 130
    path = tmp_path / "start" / "run" / "last.pt"
    payload = torch.load(path, map_location="cpu", weights_only=True)
    state = payload["train_state"]
    state["run"] = {"data": "data/plate", "category": None, "textures": None, "backbone_weights": None,
                    "backbone_sha256": None}  # as older releases wrote it
    state["data_files"] = [[f"data/plate/{name}", size] for name, size in state["data_files"]]
    torch.save(payload, path)
    monkeypatch.chdir(tmp_path / "elsewhere")
    result = runner.invoke(app, ["train", "--resume", "--out", str(path.parent)], env={"COLUMNS": "400"})
    text = " ".join(result.output.split())
    assert result.exit_code == 2, text
    assert f"{path} holds DATA as 'data/plate', a path relative to the folder its training started in" in text, text
    assert f"fair-edge train PATH --resume --out {path.parent}" in text, text
    result = runner.invoke(app, ["train", "../start/data/plate", "--resume", "--out", str(path.parent)])
    assert result.exit_code == 0 and "at step 1 of 3" in " ".join(result.output.split()), result.output
    torch.save(payload, path)  # the old last.pt again, resumed from the folder its training started in
    monkeypatch.chdir(tmp_path / "start")
    result = runner.invoke(app, ["train", "--resume", "--out", "run"])
    assert result.exit_code == 0 and "at step 1 of 3" in " ".join(result.output.split()), result.output


# ----------------------------------------------------------------------------- loss.csv elapsed_s over a resume
@pytest.mark.parametrize("family", ["fair", "lgfdr"])
def test_elapsed_s_goes_on_over_a_resume(mvtec_dir, tmp_path, monkeypatch, family):
    """loss.csv's elapsed_s restarted at 0 after --resume. The training seconds are saved in last.pt and counted on.
    (A fake clock, 1 s per reading: no timing luck.)"""
    from fair_edge.models.registry import ModelSpec, get_family
    from fair_edge.models.training_contract import config_from_options
    from fair_edge.preprocess import PreprocessConfig
    from fair_edge.training.data import load_dataset
    from fair_edge.training.loop import TrainingInterrupted

    readings = iter(range(10**6))
    monkeypatch.setattr(time, "perf_counter", lambda: float(next(readings)))
    impl = get_family(family)
    spec = ModelSpec(family, PreprocessConfig(image_size=32), impl.settings_from_options({"width": 8}))
    cfg = config_from_options(impl.training().default_train_config(),
                              {"batch": 4, "steps": 6, "log_every": 1, "save_every": 1000, "lr": 1e-3})

    def trainer():
        return impl.training().make_trainer(load_dataset(mvtec_dir), spec, cfg, tmp_path, torch.device("cpu"))

    first = trainer()
    with pytest.raises(TrainingInterrupted):
        first.run(lambda step, *_: step == 3 and first.request_stop())
    second = trainer()
    second.resume()
    second.run()
    rows = logged_rows(tmp_path / "loss.csv")
    elapsed = [float(r["elapsed_s"]) for r in rows]
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    assert all(a < b for a, b in zip(elapsed, elapsed[1:])), elapsed
    assert load_checkpoint(tmp_path / "last.pt").train_state["elapsed_s"] >= elapsed[-1]


# ----------------------------------------------------------------------------- Ctrl-C during a PatchCore fit
def test_ctrl_c_during_a_patchcore_fit_says_nothing_was_saved(mvtec_dir, tmp_path, monkeypatch):
    """Ctrl-C in a PatchCore fit ended with exit code 130 and no word, though `train --help` said Ctrl-C saves
    last.pt and prints the resume command: a fit in one pass has no step to save at. It now says so, and the help
    says which families Ctrl-C saves."""
    from fair_edge.cli.train import TrainCommand
    from fair_edge.models.patchcore.train import PatchcoreFitter

    def interrupted(self, on_step):
        raise KeyboardInterrupt

    monkeypatch.setattr(PatchcoreFitter, "features", interrupted)
    result = CliRunner().invoke(app, ["train", str(mvtec_dir), "--model", "patchcore", "--image-size", "32",
                                      "--set", "embed_dim=16", "--device", "cpu", "--out", str(tmp_path / "run")],
                                env={"COLUMNS": "400"})
    assert result.exit_code == 130, result.output
    assert "interrupted: PatchCore fits in one pass; nothing was saved; run the same command again" in result.output
    assert not (tmp_path / "run" / "last.pt").exists()
    help_text = " ".join(TrainCommand().__doc__.split())
    assert "For FAIR and LGFDR, Ctrl-C finishes the current step, saves OUT/last.pt" in help_text
    assert "a PatchCore fit is one pass, so Ctrl-C saves nothing" in help_text


def test_hidden_files_a_run_listed_before_they_were_skipped_do_not_stop_its_resume(tmp_path):
    """A run started before hidden files were skipped listed a folder's macOS ._NAME.png files among its images; they
    are not read now, so its resume said they were 'missing' (still on disk) and refused the run."""
    from fair_edge.errors import ConfigError
    from fair_edge.training.resume import check_same_data

    data = tmp_path / "data"
    data.mkdir()
    state = {"run": {"data": str(data), "files_from_root": True}, "total_steps": 100, "step": 40,
             "data_files": [["000.png", 900], ["._000.png", 64], ["sub/.x/001.png", 900]]}
    check_same_data(tmp_path / "last.pt", state, [["000.png", 900]], 100)
    with pytest.raises(ConfigError, match="missing"):   # a file the listing still reads stays one the run needs
        check_same_data(tmp_path / "last.pt", {**state, "data_files": [*state["data_files"], ["002.png", 9]]},
                        [["000.png", 900]], 100)
