"""`fair-edge train` flags that trained on into a wrong failure or crashed with a traceback (--lr-gamma nan/0/-1,
--seed past 2^63, --nproc 0), and a text file given where a checkpoint goes: each is refused before anything
starts, with exit code 2 and an error naming the flag (or the file) and the fix."""

from __future__ import annotations

import math

import pytest
from typer.testing import CliRunner

from fair_edge.cli import app
from fair_edge.errors import ConfigError
from fair_edge.models.fair.train import TrainConfig
from fair_edge.models.lgfdr.train import LgfdrTrainConfig

SEED_MAX = 2**32 - 1  # fair_edge.training.loop.SEED_MAX
runner = CliRunner()
FAIR_QUICK = ["--model", "fair", "--width", "32", "--image-size", "32", "--steps", "1", "--batch", "2",
              "--device", "cpu"]


def train(data, out, *args: str):
    return runner.invoke(app, ["train", str(data), "--out", str(out), *map(str, args)], env={"COLUMNS": "400"})


def refused(result, *parts: str) -> bool:
    text = " ".join(result.output.split())   # rich may wrap a long error line
    return result.exit_code == 2 and all(p in text for p in parts)


@pytest.mark.parametrize("config", [TrainConfig, LgfdrTrainConfig])
@pytest.mark.parametrize("field, value", [("lr_gamma", math.nan), ("lr_gamma", 0.0), ("lr_gamma", -1.0),
                                          ("lr_gamma", math.inf), ("lr", math.inf)])
def test_schedule_refuses_a_rate_that_is_not_finite_and_positive(config, field, value):
    """lr_gamma nan trained to the first milestone, then blamed --lr; 0 stopped learning and -1 climbed the
    loss silently; lr inf was accepted. Each stepped family's config refuses them, naming the flag."""
    flag = "--" + field.replace("_", "-")
    with pytest.raises(ConfigError, match=rf"^{field} must be > 0; found {value}.*{flag} "):
        config(**{field: value})
    assert config(lr_gamma=1.0).lr_gamma == 1.0 and config(lr_gamma=5.0).lr_gamma == 5.0  # keep or raise: allowed


@pytest.mark.parametrize("value", [2**64, 2**63, SEED_MAX + 1, -1, 1.5, True])
def test_a_seed_out_of_range_is_refused(value):
    from fair_edge.training.loop import check_seed

    with pytest.raises(ConfigError, match=rf"seed \(--seed\) must be a whole number from 0 to {SEED_MAX}"):
        check_seed(value)
    with pytest.raises(ConfigError, match=r"seed \(--seed\)"):
        TrainConfig(seed=value)
    check_seed(0)
    check_seed(SEED_MAX)


@pytest.mark.parametrize("args, parts", [
    (["--lr-gamma", "nan"], ["lr_gamma must be > 0; found nan (not a finite number)", "--lr-gamma 0.2"]),
    (["--lr-gamma", "0"], ["lr_gamma must be > 0; found 0.0", "0 stops learning"]),
    (["--lr-gamma", "-1"], ["lr_gamma must be > 0; found -1.0", "a negative factor climbs the loss"]),
    (["--lr", "inf"], ["lr must be > 0; found inf (not a finite number)", "--lr"]),
    (["--seed", str(2**64)], [f"seed (--seed) must be a whole number from 0 to {SEED_MAX}; found {2**64}"]),
    (["--nproc", "0"], ["--nproc is the number of training processes", "from 1 to 1024; found 0", "--nproc 1"]),
    (["--nproc", "-1"], ["from 1 to 1024; found -1"]),
    (["--nproc", str(2**64)], [f"from 1 to 1024; found {2**64}"]),
])
def test_train_refuses_flags_before_training(mvtec_dir, tmp_path, args, parts):
    result = train(mvtec_dir, tmp_path / "run", *FAIR_QUICK, *args)
    assert refused(result, *parts), result.output
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("seed", [str(2**64), "-1"])
def test_train_refuses_a_patchcore_seed_before_fitting(mvtec_dir, tmp_path, seed):
    """PatchCore's config does not check its seed: the command does, before the backbone pass (past 2^63 the
    coreset's generator raised OverflowError after the features were computed)."""
    result = train(mvtec_dir, tmp_path / "pc", "--model", "patchcore", "--backbone-weights", "random",
                   "--image-size", "32", "--device", "cpu", "--seed", seed)
    assert refused(result, f"seed (--seed) must be a whole number from 0 to {SEED_MAX}; found {seed}"), result.output
    assert not (tmp_path / "pc").exists()


def test_build_refuses_a_loss_csv_given_as_checkpoint(tmp_path):
    """Tab completion in a run folder picks loss.csv: build said 'IndexError: pop from empty list'."""
    csv = tmp_path / "loss.csv"
    csv.write_text("step,epoch,loss,lr,images_per_s,elapsed_s\n10,0,0.5,0.001,3.2,1.0\n")
    result = runner.invoke(app, ["build", str(csv), "--no-engine", "--out", str(tmp_path / "b")],
                           env={"COLUMNS": "400"})
    assert refused(result, "loss.csv is not a checkpoint written by fair-edge train", "final.pt"), result.output
    assert "weights_only" not in result.output


def _pretend(monkeypatch, folder, *, read_only: bool = False, writable: bool = True):
    """Make ``folder`` look mounted read-only (os.statvfs's ST_RDONLY) or not writable (os.access): root writes
    through chmod 0o555, so the test says what the kernel would; every other path is answered as it is."""
    import os
    from types import SimpleNamespace

    real_statvfs, real_access = os.statvfs, os.access

    def statvfs(path):
        st = real_statvfs(path)
        if os.path.realpath(path) != os.path.realpath(folder) or not read_only:
            return st
        fields = {name: getattr(st, name) for name in dir(st) if name.startswith("f_")}
        return SimpleNamespace(**{**fields, "f_flag": st.f_flag | os.ST_RDONLY})

    def access(path, mode, **kwargs):
        if os.path.realpath(path) == os.path.realpath(folder) and not writable and mode & os.W_OK:
            return False
        return real_access(path, mode, **kwargs)

    monkeypatch.setattr(os, "statvfs", statvfs)
    monkeypatch.setattr(os, "access", access)


@pytest.mark.parametrize("read_only, words", [(True, "is on a read-only file system"),
                                              (False, "is not writable by this account")])
@pytest.mark.parametrize("model", [FAIR_QUICK, ["--model", "patchcore", "--backbone-weights", "random",
                                                "--image-size", "32", "--device", "cpu"]])
def test_train_into_a_read_only_out_is_refused_before_training(mvtec_dir, tmp_path, monkeypatch, read_only, words,
                                                              model):
    """A read-only --out crashed with a raw `OSError: [Errno 30] Read-only file system` traceback from the trainer's
    mkdir (FAIR, LGFDR) or at the first checkpoint (PatchCore, after the fit); now one line names the folder and
    the fix before the data loads, for every family."""
    disk = tmp_path / "disk"
    disk.mkdir()
    _pretend(monkeypatch, disk, read_only=read_only, writable=False)
    result = train(mvtec_dir, disk / "run", *model)
    assert refused(result, f"--out {disk / 'run'}: {disk} {words} (it would be made in {disk}, the nearest folder "
                   "that exists)", "Choose an --out"), result.output
    assert result.output.startswith("error: --out"), result.output   # the first line: nothing loaded or trained
    assert not (disk / "run").exists()
    result = train(mvtec_dir, disk, *model)    # an existing folder
    assert refused(result, f"--out {disk}: {disk} {words}; a training run writes its checkpoints there"), result.output
