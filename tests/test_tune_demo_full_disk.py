"""A disk that fills during tune or the demo (audit: interrupts, tune_full.sh and demo_full.sh).

tune kept every candidate's last.pt (about 3x its final.pt), so a small disk filled at the 4th candidate, and the
error wrote no tune.csv: the three finished candidates' figures lived only in the scroll-back. Now each candidate's
last.pt is deleted once its final.pt is written, tune.csv ranks the finished candidates as each one finishes, and a
tune stopped after one (an error, Ctrl-C) leaves them there (no tune.json) and says so.

The demo read its tally back from a verdict log the full disk had cut short and printed "defective 0, caught 0,
missed 0, pulses on time 0/0" with exit 0 while 60 parts were inspected. Now a tally of fewer rows than the station
inspected and dropped is an error naming N of M rows, and demo_report.json is written whole or not at all.
"""

from __future__ import annotations

import csv
import errno
import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from typer.testing import CliRunner

from fair_edge.cli import app
from fair_edge.errors import CheckpointError, DataError, FairEdgeError, RecorderError
from fair_edge.models import checkpoint as checkpoint_module
from fair_edge.preprocess import PreprocessConfig
from fair_edge.training import tune as tune_module
from fair_edge.training import tune_candidates
from fair_edge.training.data import load_dataset
from fair_edge.training.loop import TrainingInterrupted
from fair_edge.training.tune import tune
from fair_edge.training.tune_candidates import Candidate, TuneSettings
from fair_edge.training.tune_results import TuneRow

from test_checkpoint_fsync import saved_to

PRE = PreprocessConfig(image_size=32, cutoff=4.0)
SETTINGS = TuneSettings(holdout=0.25, budget_s=3600, batch=4)


def tiny_candidates() -> list[Candidate]:
    """Two FAIR candidates of width 8 trained 2 steps on 32 x 32 inputs (a second's work each)."""
    return [Candidate("base", PRE, 8, 2, lr=1e-3), Candidate("gauss", PreprocessConfig(32, "gaussian", 4.0), 8, 2)]


def fill_disk_in(monkeypatch, candidate: str) -> None:
    """torch.save into OUT/candidates/``candidate``/ fails as it did on the audit's full tmpfs (RuntimeError
    "unexpected pos", which save_checkpoint turns into CheckpointError "cannot write checkpoint ..."); other
    checkpoints are written as usual."""
    real_save = checkpoint_module.torch.save

    def full_disk(payload, f, *args, **kwargs):
        if saved_to(f).parent.name == candidate:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1200064 vs 1199960")
        return real_save(payload, f, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module.torch, "save", full_disk)


def test_a_finished_candidate_keeps_its_final_pt_and_not_its_last_pt(mvtec_dir, tmp_path):
    rows = tune(load_dataset(mvtec_dir), tiny_candidates(), tmp_path, SETTINGS, torch.device("cpu"))
    assert [r.status for r in rows] == ["done", "done"]
    for name in ("base", "gauss"):
        assert (tmp_path / "candidates" / name / "final.pt").is_file()
        assert not (tmp_path / "candidates" / name / "last.pt").exists(), sorted(
            p.name for p in (tmp_path / "candidates" / name).iterdir())


def test_a_full_disk_at_a_later_candidate_ranks_the_finished_ones_in_tune_csv(mvtec_dir, tmp_path, monkeypatch):
    fill_disk_in(monkeypatch, "gauss")
    with pytest.raises(FairEdgeError) as raised:
        tune(load_dataset(mvtec_dir), tiny_candidates(), tmp_path, SETTINGS, torch.device("cpu"))
    text = str(raised.value)
    assert text.startswith(f"cannot write checkpoint {tmp_path / 'candidates' / 'gauss'}"), text
    assert f"The 1 candidate that finished before it is ranked in {tmp_path / 'tune.csv'}" in text, text
    assert isinstance(raised.value.__cause__, CheckpointError), repr(raised.value.__cause__)
    table = list(csv.DictReader((tmp_path / "tune.csv").open()))
    assert [(r["rank"], r["name"], r["status"]) for r in table] == [("1", "base", "done")]
    assert not (tmp_path / "tune.json").exists() and not list(tmp_path.glob(".*.partial"))
    assert not (tmp_path / "candidates" / "base" / "last.pt").exists()


def test_cli_tune_names_the_kept_tune_csv_in_its_error_and_the_same_command_starts_over(mvtec_dir, tmp_path,
                                                                                          monkeypatch):
    monkeypatch.setattr(tune_candidates, "default_candidates", lambda base, side: tiny_candidates())
    out = tmp_path / "t"
    args = ["tune", str(mvtec_dir), "--image-size", "32", "--out", str(out), "--device", "cpu"]
    with monkeypatch.context() as disk:
        fill_disk_in(disk, "gauss")
        r = CliRunner().invoke(app, args, env={"COLUMNS": "400"})
    text = " ".join(r.output.split())
    assert r.exit_code == 2, r.output
    assert "error: cannot write checkpoint" in text and f"is ranked in {out / 'tune.csv'}" in text, text
    assert "copy it first" in text and (out / "tune.csv").is_file() and not (out / "tune.json").exists()
    r = CliRunner().invoke(app, args, env={"COLUMNS": "400"})
    assert r.exit_code == 0 and "holds an unfinished tune run" in r.output, r.output
    assert len(list(csv.DictReader((out / "tune.csv").open()))) == 2 and (out / "tune.json").is_file()


def stop_at_second(monkeypatch, stop: BaseException) -> None:
    """Candidates are not trained: the first gets a finished row (proxy catch 0.5, AUROC 0.9), the second raises
    ``stop``."""

    def fake(cand, train, proxy, out, settings, device):
        if cand.name != "base":
            raise stop
        return TuneRow(cand, "done", 0.9, 0.5, 0.75, 1.0, "final.pt")

    monkeypatch.setattr(tune_module, "score_candidate", fake)


@pytest.mark.parametrize("stop", [TrainingInterrupted(Path("t/candidates/gauss/last.pt"), 1), KeyboardInterrupt()],
                         ids=["stepped-trainer", "patchcore-fit"])
def test_ctrl_c_after_a_finished_candidate_ranks_it_in_tune_csv_and_says_so(mvtec_dir, tmp_path, monkeypatch, stop):
    monkeypatch.setattr(tune_candidates, "default_candidates", lambda base, side: tiny_candidates())
    stop_at_second(monkeypatch, stop)
    out = tmp_path / "t"
    r = CliRunner().invoke(app, ["tune", str(mvtec_dir), "--image-size", "32", "--out", str(out)],
                           env={"COLUMNS": "400"})
    assert r.exit_code == 130, r.output
    assert "tune interrupted after 1 candidate; nothing chosen" in r.output, r.output
    assert f"the finished candidates are ranked in {out / 'tune.csv'}" in r.output, r.output
    assert [row["name"] for row in csv.DictReader((out / "tune.csv").open())] == ["base"]
    assert not (out / "tune.json").exists()


def test_tune_csv_ranks_the_finished_candidates_as_each_one_finishes(mvtec_dir, tmp_path, monkeypatch):
    """The audit's disk was full when the 4th candidate failed: a tune.csv written only then could not be written
    either. Written as each candidate finishes, it is there before the next one's checkpoints fill the disk."""
    stop_at_second(monkeypatch, CheckpointError("cannot write checkpoint X (no space): free space, then run again."))
    seen = []

    def on_row(row):
        seen.append([r["name"] for r in csv.DictReader((tmp_path / "tune.csv").open())])

    real_open = Path.open

    def full_after_the_first(self, mode="r", *args, **kwargs):  # the disk is full once the first candidate is done
        if "tune.csv" in self.name and "w" in mode and seen:
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real_open(self, mode, *args, **kwargs)

    monkeypatch.setattr(Path, "open", full_after_the_first)
    with pytest.raises(FairEdgeError) as raised:
        tune(load_dataset(mvtec_dir), tiny_candidates(), tmp_path, SETTINGS, on_row=on_row)
    assert seen == [["base"]]
    assert [row["name"] for row in csv.DictReader((tmp_path / "tune.csv").open())] == ["base"]
    assert f"is ranked in {tmp_path / 'tune.csv'}" in str(raised.value), str(raised.value)


def test_a_stop_before_any_candidate_finished_writes_no_tune_csv(mvtec_dir, tmp_path, monkeypatch):
    def fake(cand, train, proxy, out, settings, device):
        raise KeyboardInterrupt

    monkeypatch.setattr(tune_module, "score_candidate", fake)
    with pytest.raises(KeyboardInterrupt):
        tune(load_dataset(mvtec_dir), tiny_candidates(), tmp_path, SETTINGS)
    assert not (tmp_path / "tune.csv").exists()


def test_a_tune_csv_the_full_disk_refuses_too_leaves_the_figures_in_the_error(mvtec_dir, tmp_path, monkeypatch):
    stop_at_second(monkeypatch, CheckpointError("cannot write checkpoint X (no space): free space, then run again."))
    real_open = Path.open

    def full_disk(self, mode="r", *args, **kwargs):
        if "tune.csv" in self.name and "w" in mode:
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real_open(self, mode, *args, **kwargs)

    monkeypatch.setattr(Path, "open", full_disk)
    with pytest.raises(FairEdgeError) as raised:
        tune(load_dataset(mvtec_dir), tiny_candidates(), tmp_path, SETTINGS)
    text = str(raised.value)
    assert text.startswith("cannot write checkpoint X"), text
    assert f"could not all be kept in {tmp_path / 'tune.csv'} (No space left on device; it was never written)" in text
    assert "base: proxy catch 0.500, AUROC 0.900" in text, text
    assert not (tmp_path / "tune.csv").exists() and not list(tmp_path.glob(".*.partial"))


def test_a_bug_after_a_finished_candidate_still_ranks_it_and_raises_unchanged(mvtec_dir, tmp_path, monkeypatch):
    stop_at_second(monkeypatch, ZeroDivisionError("a bug"))
    with pytest.raises(ZeroDivisionError):
        tune(load_dataset(mvtec_dir), tiny_candidates(), tmp_path, SETTINGS)
    assert [row["name"] for row in csv.DictReader((tmp_path / "tune.csv").open())] == ["base"]


# --- the demo ---------------------------------------------------------------------------------------------------


def test_a_tally_of_fewer_verdict_rows_than_the_station_logged_is_an_error(tmp_path):
    from fair_edge.demo.run import incomplete_tally, verdict_rows

    summary = SimpleNamespace(inspected=58, dropped=2)   # the station logged 60 parts
    log_file = tmp_path / "station" / "verdicts.jsonl"
    error = incomplete_tally(verdict_rows(13, summary), log_file)
    assert isinstance(error, RecorderError), error
    text = str(error)
    assert "tally is incomplete" in text and "could not be written" in text, text
    assert f"13 of 60 rows in {log_file}" in text and "run `fair-edge demo` again" in text, text
    assert incomplete_tally(verdict_rows(60, summary), log_file) is None   # every row read back: no error


def test_a_report_the_full_disk_refuses_after_an_incomplete_tally_says_both(tmp_path, monkeypatch):
    from fair_edge.demo import run as demo_run

    def full_disk(report, path):
        full = OSError(errno.ENOSPC, "No space left on device")
        raise DataError(f"cannot write the demo report {path} ...") from full

    monkeypatch.setattr(demo_run, "write_report", full_disk)
    with pytest.raises(RecorderError) as raised:
        demo_run.finish_report({"verdict_rows": {"read": 0, "expected": 60}}, tmp_path)
    text = str(raised.value)
    assert "0 of 60 rows" in text, text
    assert (f"The demo report {tmp_path / 'demo_report.json'} was not written either (No space left on device; an "
            "earlier one there is left as it was).") in text, text


def test_a_verdict_log_never_created_reads_as_no_rows(tmp_path):
    """The full disk left no verdicts.jsonl at all: the demo crashed reading it (FileNotFoundError) before."""
    from fair_edge.demo.run import read_rows

    assert read_rows(tmp_path / "verdicts.jsonl") == []
    (tmp_path / "gate.jsonl").write_text('{"seq": 1, "event": "pulse", "pulse": "delivered"}\n{"seq": 2, "ev')
    assert read_rows(tmp_path / "gate.jsonl") == [{"seq": 1, "event": "pulse", "pulse": "delivered"}]


def test_the_demo_report_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    from fair_edge.demo.run import write_report

    path = tmp_path / "demo_report.json"
    write_report({"defective": 20, "parts": []}, path)
    earlier = path.read_text()

    real_fsync = os.fsync

    def full_at_fsync(fd):   # the report's bytes cannot all be forced out: the disk is full
        if os.readlink(f"/proc/self/fd/{fd}").endswith("demo_report.json.tmp"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full_at_fsync)
    with pytest.raises(DataError) as raised:
        write_report({"defective": 0, "parts": [{"seq": i} for i in range(60)]}, path)
    monkeypatch.undo()
    assert path.read_text() == earlier and json.loads(earlier)["defective"] == 20
    assert [p.name for p in tmp_path.iterdir()] == ["demo_report.json"]
    text = str(raised.value)
    assert f"cannot write the demo report {path} (No space left on device; an earlier one" in text, text
    assert f"the disk of {tmp_path} is full" in text and "run `fair-edge demo` again" in text, text


def test_a_demo_whose_verdict_log_fills_the_disk_says_its_tally_is_incomplete(tmp_path, monkeypatch):
    """The audit's demo_full.sh in small: the verdict log takes 13 rows, then every write meets a full disk. The
    demo printed 'defective 0, caught 0, missed 0' (here: the 13 rows' counts) and exited 0."""
    pytest.importorskip("elpv_dataset")
    pytest.importorskip("pymodbus")
    from fair_edge.demo.run import run_demo
    from fair_edge.line.jsonl import RotatingJsonl
    from fair_edge.models.fair.family import FairSettings
    from fair_edge.models.fair.train import TrainConfig, Trainer
    from fair_edge.training.data import elpv_split

    real_write, written = RotatingJsonl.write, []

    def full_after_13(self, obj):
        if self.path.name == "verdicts.jsonl":
            if len(written) >= 13:
                raise OSError(errno.ENOSPC, "No space left on device", str(self.path))
            written.append(obj)
        return real_write(self, obj)

    monkeypatch.setattr(RotatingJsonl, "write", full_after_13)

    def train():
        cfg = TrainConfig(batch=4, lr=1e-3, steps=3, save_every=3)
        return Trainer(elpv_split("mono"), PRE, FairSettings(width=8), cfg, tmp_path, torch.device("cpu")).run()

    with pytest.raises(RecorderError) as raised:
        run_demo(tmp_path, train=train, evaluate=lambda final: {"skipped": True}, fps=40.0, backend="onnxruntime",
                 say=lambda text: None)
    text = str(raised.value)
    assert f"13 of 60 rows in {tmp_path / 'station' / 'verdicts.jsonl'}" in text, text
    report = json.loads((tmp_path / "demo_report.json").read_text())
    assert report["verdict_rows"] == {"read": 13, "expected": 60} and len(report["parts"]) == 13
