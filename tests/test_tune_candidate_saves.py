"""The end of a training run under `fair-edge tune` and under `fair-edge train`.

A tune candidate's trainer wrote last.pt (weights and optimiser state, about 3x final.pt) and then final.pt, and tune
deleted last.pt only afterwards: at the end of every candidate the disk held both, so a tune on a nearly full disk
failed there. Now a candidate's trainer keeps no resume state (``keeps_resume_state`` False): it writes final.pt
alone, a last.pt a periodic save left deleted first. A save that failed there said "then resume with `fair-edge
train --resume --out OUT/candidates/NAME`", a command tune does not use (it starts over); now it says to run again,
with what tune kept. `fair-edge train` is unchanged: last.pt stays beside final.pt, and --resume of a finished run
reads its last step.

The disk is watched through ``torch.save`` in ``fair_edge.models.checkpoint`` (every checkpoint write goes through
it): each write records the files its folder held, and the file being written.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fair_edge.errors import CheckpointError, FairEdgeError
from fair_edge.models import checkpoint as checkpoint_module
from fair_edge.models.fair.family import FairSettings
from fair_edge.models.fair.train import TrainConfig, Trainer
from fair_edge.training.data import load_dataset
from fair_edge.training.tune import tune
from fair_edge.training.tune_candidates import Candidate

from test_checkpoint_fsync import saved_to, untagged
from test_tune_demo_full_disk import PRE, SETTINGS, tiny_candidates

RESUME_FILES = {"last.pt", "last.pt.tmp"}
FINAL_FILES = {"final.pt", "final.pt.tmp"}


def watch_writes(monkeypatch) -> list[tuple[str, set[str]]]:
    """Record each checkpoint write as (its folder's name, the names in that folder with the file being written;
    a temporary's ``untagged``)."""
    real_save, writes = checkpoint_module.torch.save, []

    def recording(payload, f, *args, **kwargs):
        path = saved_to(f)
        writes.append((path.parent.name, {untagged(p.name) for p in path.parent.iterdir()} | {untagged(path.name)}))
        return real_save(payload, f, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module.torch, "save", recording)
    return writes


def both_at_once(writes: list[tuple[str, set[str]]]) -> list[tuple[str, list[str]]]:
    """The writes during which a folder held a last.pt and a final.pt (either one whole or being written)."""
    return [(folder, sorted(names)) for folder, names in writes if names & RESUME_FILES and names & FINAL_FILES]


def test_a_tune_candidate_writes_final_pt_alone_in_every_family(mvtec_dir, tmp_path, monkeypatch):
    """FAIR, LGFDR and PatchCore candidates: no write happens while the candidate's folder holds last.pt and
    final.pt together, and each keeps final.pt alone."""
    candidates = [tiny_candidates()[0], Candidate("lgfdr", PRE, 8, 2, family="lgfdr"),
                  Candidate("patchcore", PRE, 8, None, family="patchcore")]
    writes = watch_writes(monkeypatch)
    rows = tune(load_dataset(mvtec_dir), candidates, tmp_path, SETTINGS, torch.device("cpu"))
    assert sorted(r.status for r in rows) == ["done"] * 3
    assert {folder for folder, _ in writes} == {"base", "lgfdr", "patchcore"}
    assert both_at_once(writes) == []
    for name in ("base", "lgfdr", "patchcore"):
        kept = {p.name for p in (tmp_path / "candidates" / name).iterdir()}
        assert "final.pt" in kept and not kept & RESUME_FILES, (name, sorted(kept))


def tiny_trainer(mvtec_dir, out: Path, save_every: int) -> Trainer:
    """FAIR of width 8 trained 2 steps on 32 x 32 inputs, a last.pt every ``save_every`` steps."""
    cfg = TrainConfig(batch=4, lr=1e-3, steps=2, save_every=save_every)
    return Trainer(load_dataset(mvtec_dir), PRE, FairSettings(width=8), cfg, out, torch.device("cpu"))


def test_a_run_keeping_no_resume_state_deletes_a_periodic_last_pt_before_final_pt(mvtec_dir, tmp_path, monkeypatch):
    writes = watch_writes(monkeypatch)
    trainer = tiny_trainer(mvtec_dir, tmp_path / "run", save_every=1)
    trainer.keeps_resume_state = False
    final = trainer.run()
    assert [names & (RESUME_FILES | FINAL_FILES) for _, names in writes][-1] == {"final.pt.tmp"}, writes
    assert both_at_once(writes) == [] and {"last.pt.tmp"} <= writes[0][1]    # periodic saves were made
    assert final.is_file() and not (tmp_path / "run" / "last.pt").exists()


def test_train_still_keeps_last_pt_beside_final_pt_and_resumes_a_finished_run_at_its_last_step(mvtec_dir, tmp_path):
    """`fair-edge train`'s trainer (``keeps_resume_state`` True): last.pt at the last step, then final.pt; a
    resume of the finished run reads step 2 of 2 (train's "resumed OUT/last.pt at step 2 of 2") and re-writes
    final.pt."""
    final = tiny_trainer(mvtec_dir, tmp_path, save_every=100).run()
    assert final.is_file() and (tmp_path / "last.pt").is_file()
    resumed = tiny_trainer(mvtec_dir, tmp_path, save_every=100)
    resumed.resume()
    assert (resumed.step, resumed.total_steps) == (2, 2)
    assert resumed.run() == final and (tmp_path / "last.pt").is_file()


def fail_final_pt_of(monkeypatch, candidate: str) -> None:
    """final.pt of OUT/candidates/``candidate`` cannot be written (torch.save raises as on a full disk); every other
    checkpoint is written."""
    real_save = checkpoint_module.torch.save

    def full_at_final(payload, f, *args, **kwargs):
        if saved_to(f).parent.name == candidate and untagged(saved_to(f).name) == "final.pt.tmp":
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1200064 vs 1199960")
        return real_save(payload, f, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module.torch, "save", full_at_final)


@pytest.mark.parametrize("candidate, finished", [("base", 0), ("gauss", 1)], ids=["first", "after-one"])
def test_a_failed_candidate_save_names_no_train_resume_command(mvtec_dir, tmp_path, monkeypatch, candidate,
                                                                finished):
    """It said "then resume with `fair-edge train --resume --out .../candidates/NAME` (.../last.pt, the last save,
    is intact)": tune has no --resume and deletes candidates/ as it starts over. Now: fix the disk, then run again,
    and (after a finished candidate) where its figures are kept until then."""
    fail_final_pt_of(monkeypatch, candidate)
    with pytest.raises(FairEdgeError) as raised:
        tune(load_dataset(mvtec_dir), tiny_candidates(), tmp_path, SETTINGS, torch.device("cpu"))
    text = " ".join(str(raised.value).split())
    folder = tmp_path / "candidates" / candidate
    assert text.startswith(f"cannot write checkpoint {folder / 'final.pt'}"), text
    assert "--resume" not in text and "last.pt" not in text, text
    assert "then run again." in text, text
    if finished:
        assert f"The 1 candidate that finished before it is ranked in {tmp_path / 'tune.csv'}" in text, text
    else:
        assert isinstance(raised.value, CheckpointError), repr(raised.value)
    assert not {p.name for p in folder.iterdir()} & RESUME_FILES


@pytest.mark.parametrize("family", ["fair", "lgfdr"])
def test_a_tune_candidate_stopped_by_ctrl_c_writes_no_last_pt(mvtec_dir, tmp_path, monkeypatch, family):
    """A Ctrl-C during a candidate saved a full last.pt at the step boundary (weights and optimiser state, about 3x
    final.pt) that tune never uses: it has no --resume and the next run deletes candidates/. The trainer of a run
    that keeps no resume state now stops without writing; tune's own line says to start over."""
    import os
    import signal

    from fair_edge.models.lgfdr.train import LgfdrTrainer
    from fair_edge.training.loop import TrainingInterrupted

    trainer_class = {"fair": Trainer, "lgfdr": LgfdrTrainer}[family]
    real_step = trainer_class.train_step

    def ctrl_c_in_step(self, step):
        if step == 0:
            os.kill(os.getpid(), signal.SIGINT)   # the trainer's handler asks it to stop after this step
        return real_step(self, step)

    monkeypatch.setattr(trainer_class, "train_step", ctrl_c_in_step)
    candidate = Candidate("c", PRE, 8, 2, lr=1e-3, family=family)
    writes = watch_writes(monkeypatch)
    with pytest.raises(TrainingInterrupted) as stopped:
        tune(load_dataset(mvtec_dir), [candidate], tmp_path, SETTINGS, torch.device("cpu"))
    assert stopped.value.checkpoint is None and stopped.value.step == 1
    assert "nothing saved" in str(stopped.value)
    assert writes == [] and not {p.name for p in (tmp_path / "candidates" / "c").iterdir()} & RESUME_FILES
