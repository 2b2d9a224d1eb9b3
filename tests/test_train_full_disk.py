"""A disk that fills while a model trains: the loss log and the checkpoints.

loss.csv's append failing (ENOSPC; EFBIG past a file-size limit) ended training with a 60-line traceback (raised
again from close() in a finally), the steps since the last save lost; a checkpoint that could not be written said
"then run again", which is refused in a folder that holds a run: the fix is the resume command."""

from __future__ import annotations

import csv
import errno
import logging
import os
import re
import resource
import shlex
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from fair_edge.cli import app
from fair_edge.models.checkpoint import load_checkpoint
from fair_edge.training.loop import LossLog

from conftest import LGFDR_MODEL_KW
from test_checkpoint_fsync import saved_to, untagged

DEV_FULL = Path("/dev/full")  # every write: ENOSPC
UNPUBLISHED = "unexpected pos 64 vs 0"  # what torch.save says when the disk fills under it


def logged_steps(path: Path) -> list[int]:
    with path.open(newline="") as fh:
        return [int(row["step"]) for row in csv.DictReader(fh)]


def write_rows(log_file: LossLog, steps) -> None:
    for step in steps:
        log_file.write(step, 0, 0.5, 1e-4, 10.0, float(step))


@pytest.mark.skipif(not hasattr(resource, "RLIMIT_FSIZE"), reason="no file-size limit on this system")
def test_a_row_that_does_not_fit_is_left_out_whole_and_later_rows_are_written(tmp_path, caplog):
    """Past a file-size limit (EFBIG, as `prlimit --fsize` sets it) the row that crosses it is cut off again (the
    kernel wrote part of it), one warning names the file and the error, the count comes at close(); once there
    is room again the next rows are written after the last whole one."""
    path = tmp_path / "loss.csv"
    log_file = LossLog(path, keep_until=0)
    write_rows(log_file, range(1, 4))
    whole = path.stat().st_size
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (whole + 20, hard))  # room for part of one more row
    try:
        with caplog.at_level(logging.WARNING):
            write_rows(log_file, range(4, 7))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert path.stat().st_size == whole  # the part of row 4 that was written is gone
    write_rows(log_file, range(7, 9))
    with caplog.at_level(logging.WARNING):
        log_file.close()
    assert logged_steps(path) == [1, 2, 3, 7, 8]
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2, warnings
    assert f"cannot write the loss log {path} ({os.strerror(errno.EFBIG)})" in warnings[0]
    assert "Training goes on" in warnings[0] and "ulimit -f" in warnings[0]
    assert f"{path}: 3 loss rows between steps 4 and 6 could not be written" in warnings[1]


@pytest.mark.skipif(not DEV_FULL.exists(), reason="no /dev/full")
def test_close_after_failed_writes_does_not_raise(tmp_path, caplog):
    """close() runs in the trainers' finally: it raised ENOSPC again over the run's own outcome."""
    (tmp_path / "loss.csv").symlink_to(DEV_FULL)
    log_file = LossLog(tmp_path / "loss.csv", keep_until=0)
    write_rows(log_file, [10])
    with caplog.at_level(logging.WARNING):
        log_file.close()
    assert "1 loss row (step 10) could not be written (No space left on device)" in caplog.text


def make_trainer(family: str, data: Path, out: Path):
    """A tiny FAIR or LGFDR trainer: 4 steps of batch 4 on 32 px images, a loss row every step, no periodic save."""
    from fair_edge.models.registry import ModelSpec
    from fair_edge.preprocess import PreprocessConfig
    from fair_edge.training.data import load_dataset

    if family == "fair":
        from fair_edge.models.fair.family import FairSettings
        from fair_edge.models.fair.train import Trainer, TrainConfig

        cfg = TrainConfig(batch=4, lr=1e-3, steps=4, save_every=1000, log_every=1)
        return Trainer(load_dataset(data), PreprocessConfig(image_size=32), FairSettings(width=8), cfg, out,
                       torch.device("cpu"))
    from fair_edge.models.lgfdr.model import LgfdrSettings
    from fair_edge.models.lgfdr.train import LgfdrTrainConfig, LgfdrTrainer

    model = ModelSpec("lgfdr", PreprocessConfig(image_size=32), LgfdrSettings(**LGFDR_MODEL_KW))
    cfg = LgfdrTrainConfig(batch=4, steps=4, save_every=1000, log_every=1)
    return LgfdrTrainer(load_dataset(data), model, cfg, out, torch.device("cpu"))


@pytest.mark.skipif(not DEV_FULL.exists(), reason="no /dev/full")
@pytest.mark.parametrize("family", ["fair", "lgfdr"])
def test_training_goes_on_when_loss_csv_cannot_be_written(mvtec_dir, tmp_path, caplog, family):
    """loss.csv on a full disk (a link to /dev/full: every write ENOSPC) while the checkpoints have room: the run
    trains to the end and writes final.pt, with one warning at the first failure and the count at the end."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "loss.csv").symlink_to(DEV_FULL)
    trainer = make_trainer(family, mvtec_dir, out)
    with caplog.at_level(logging.WARNING, logger="fair_edge.training.loop"):
        final = trainer.run()
    assert load_checkpoint(final).data_summary["steps"] == 4
    warnings = [r.getMessage() for r in caplog.records if r.name == "fair_edge.training.loop"]
    assert len(warnings) == 2, warnings
    assert f"cannot write the loss log {out / 'loss.csv'} (No space left on device)" in warnings[0]
    assert "4 loss rows between steps 1 and 4 could not be written" in warnings[1]


# ----------------------------------------------------------------------------- a checkpoint that cannot be written
def failing_save(monkeypatch, fail_at: str, nth: int) -> None:
    """torch.save raises as on a full disk on its ``nth`` write of ``fail_at`` (last.pt or final.pt)."""
    real_save, writes = torch.save, []

    def save(obj, f, *args, **kwargs):
        if untagged(saved_to(f).name) == f"{fail_at}.tmp":
            writes.append(f)
            if len(writes) == nth:
                raise RuntimeError(f"[enforce fail at inline_container.cc:672] . {UNPUBLISHED}")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)


@pytest.mark.parametrize("fail_at, nth", [("last.pt", 2), ("final.pt", 1)], ids=["last.pt", "final.pt"])
def test_a_failed_checkpoint_names_the_resume_command_which_continues_the_run(mvtec_dir, tmp_path, monkeypatch,
                                                                              fail_at, nth):
    """The second periodic last.pt (step 4), or final.pt, cannot be written: the message names the file, the disk and
    the command that resumes from the last.pt that is still there, and that command finishes the run."""
    out = tmp_path / "run"
    failing_save(monkeypatch, fail_at, nth)
    args = ["train", str(mvtec_dir), "--model", "fair", "--width", "32", "--image-size", "32", "--steps", "4",
            "--batch", "4", "--save-every", "2", "--device", "cpu", "--out", str(out)]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "400"})
    text = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert f"error: cannot write checkpoint {out / fail_at}" in text and UNPUBLISHED in text
    assert "then run again" not in text and "choose an --out" not in text
    found = re.search(r"Free space on that disk, then resume with `([^`]+)` \((.+?), the last save, is intact\)\.",
                      text)
    assert found and found[2] == str(out / "last.pt"), text
    assert found[1] == f"fair-edge train --resume --out {out}"

    monkeypatch.undo()
    resumed = CliRunner().invoke(app, shlex.split(found[1])[1:], env={"COLUMNS": "400"})
    assert resumed.exit_code == 0, resumed.output
    assert load_checkpoint(out / "final.pt").data_summary["steps"] == 4


def test_a_first_checkpoint_that_cannot_be_written_says_run_again(mvtec_dir, tmp_path, monkeypatch):
    """With no last.pt yet there is nothing to resume: the same command runs again (the folder holds no run)."""
    failing_save(monkeypatch, "last.pt", 1)
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", str(mvtec_dir), "--model", "fair", "--width", "32", "--image-size",
                                      "32", "--steps", "2", "--batch", "4", "--save-every", "2", "--device", "cpu",
                                      "--out", str(out)], env={"COLUMNS": "400"})
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and f"error: cannot write checkpoint {out / 'last.pt'}" in text, result.output
    assert text.endswith("or choose an --out on another disk, then run again.") and "resume" not in text
