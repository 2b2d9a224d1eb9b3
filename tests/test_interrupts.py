"""Stopping tune and eval: Ctrl-C and SIGTERM end them with one line and 130 / 143, leave nothing that blocks the
same command again (tune's unfinished candidates/, eval's .eval-partial-* staging folders), and eval reads its test
images by training's one skip rule (``read_frames``)."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from fair_edge.cli import app
from fair_edge.errors import DataError
from fair_edge.preprocess import PreprocessConfig
from fair_edge.training.data import Sample
from fair_edge.training.loop import TrainingInterrupted

from conftest import make_normal

START_OVER = "nothing chosen; run the same command again to start over"


def _interrupted_tune(monkeypatch, stop: BaseException, finished: int = 1):
    """Replace the candidates' training: ``finished`` candidates are done (on_row), then ``stop`` is raised, as the
    trainer raises TrainingInterrupted after Ctrl-C (a PatchCore fit: KeyboardInterrupt), leaving candidates/ and
    proxy/ behind."""
    from fair_edge.training import tune as tune_module
    from fair_edge.training import tune_results

    def fake(split, candidates, out, settings, device, data, on_row=None, category=None):
        (out / "proxy" / "good").mkdir(parents=True, exist_ok=True)
        (out / "candidates" / "base").mkdir(parents=True, exist_ok=True)
        (out / "candidates" / "base" / "last.pt").write_bytes(b"half a candidate")
        for cand in candidates[:finished]:
            on_row(tune_results.TuneRow(cand, "done", 0.9, 0.5, 0.5, 1.0))
        raise stop

    monkeypatch.setattr(tune_module, "tune", fake)


@pytest.mark.parametrize("stop", [TrainingInterrupted(Path("t/candidates/base/last.pt"), 1), KeyboardInterrupt()],
                         ids=["stepped-trainer", "patchcore-fit"])
def test_ctrl_c_during_tune_exits_130_saying_nothing_was_chosen(mvtec_dir, tmp_path, monkeypatch, stop):
    """Ctrl-C during tune said 'error: interrupted after step 1; state saved to .../last.pt.' and exited 2 (bad input),
    pointing at a state tune cannot resume; in a PatchCore fit it was a traceback."""
    _interrupted_tune(monkeypatch, stop)
    out = tmp_path / "t"
    r = CliRunner().invoke(app, ["tune", str(mvtec_dir), "--image-size", "32", "--out", str(out)],
                           env={"COLUMNS": "400"})
    assert r.exit_code == 130, r.output
    assert f"tune interrupted after 1 candidate; {START_OVER}" in r.output and "state saved" not in r.output
    assert not (out / ".tune.lock").exists()


def test_the_same_tune_command_after_an_interrupt_starts_over(mvtec_dir, tmp_path, monkeypatch):
    """After Ctrl-C the same command was refused ('already holds a tune run ... pass --overwrite') though the
    interrupted run wrote no tune.json or tune.csv; now what it left is deleted with a note and the run starts."""
    _interrupted_tune(monkeypatch, TrainingInterrupted(Path("last.pt"), 1), finished=0)
    out = tmp_path / "t"
    args = ["tune", str(mvtec_dir), "--image-size", "32", "--out", str(out)]
    assert CliRunner().invoke(app, args).exit_code == 130
    (out / "notes.txt").write_text("mine")
    from fair_edge.training import tune as tune_module
    from fair_edge.training import tune_results

    seen = []

    def finish(split, candidates, out_dir, settings, device, data, on_row=None, category=None):
        seen.append(sorted(p.name for p in out_dir.iterdir()))
        return [tune_results.TuneRow(candidates[0], "done", 0.9, 0.5, 0.5, 1.0)]

    monkeypatch.setattr(tune_module, "tune", finish)
    r = CliRunner().invoke(app, args, env={"COLUMNS": "400"})
    text = " ".join(r.output.split())
    assert r.exit_code == 0 and "unfinished tune run (candidates, proxy;" in text, r.output
    assert seen == [[".tune.lock", "notes.txt"]]  # the leftovers went before the run; other files stay


def test_a_finished_tune_run_is_still_refused(tmp_path):
    from fair_edge.errors import ConfigError
    from fair_edge.training.tune_results import check_fresh_tune, unfinished_tune

    (tmp_path / "candidates").mkdir()
    check_fresh_tune(tmp_path)  # an interrupted run's leftovers: no refusal
    assert unfinished_tune(tmp_path) == ["candidates"]
    (tmp_path / "tune.json").write_text("{}")  # written last: a tune.csv alone is unfinished (test_tune_atomic)
    with pytest.raises(ConfigError, match=r"already holds a tune run \(tune.json\)"):
        check_fresh_tune(tmp_path)
    assert unfinished_tune(tmp_path) == []


@pytest.mark.parametrize("data", ["my plates/bottle", "-plates", "plate"])
def test_tune_json_train_command_runs_as_pasted(tmp_path, data):
    """tune.json's train_command put DATA in unquoted: 'my plates/bottle' became two arguments, '-plates' an
    option."""
    from fair_edge.training.tune_candidates import Candidate, TuneSettings
    from fair_edge.training.tune_results import TuneRow, write_results

    cand = Candidate("base", PreprocessConfig(image_size=32, cutoff=4.0), 8, 3, lr=1e-3)
    write_results([TuneRow(cand, "done", 0.9, 0.5, 0.5, 1.0)], tmp_path, TuneSettings(), data, 10, 3)
    words = shlex.split(json.loads((tmp_path / "tune.json").read_text())["chosen"]["train_command"])
    assert words[:3] == ["fair-edge", "train", "./-plates" if data == "-plates" else data]


# ----------------------------------------------------------------------------- SIGTERM (a child process each)
SIGTERM_TUNE = r'''
"""`fair-edge tune ARGS` whose first candidate is done, then SIGTERM arrives during the second."""
import os
import signal
import sys
import time

from fair_edge.cli import app
from fair_edge.training import tune as tune_module
from fair_edge.training import tune_results


def fake(split, candidates, out, settings, device, data, on_row=None, category=None):
    on_row(tune_results.TuneRow(candidates[0], "done", 0.9, 0.5, 0.5, 1.0))
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(600)   # a bound: the handler raises at once


tune_module.tune = fake
app(sys.argv[1:])
'''

SIGTERM_EVAL = r'''
"""`fair-edge eval CKPT DATA --out OUT` whose report's metrics.json is in the staging folder when SIGTERM arrives."""
import os
import signal
import sys
import time

import fair_edge.training.data as data_module
import fair_edge.training.evaluate as evaluate_module
from fair_edge.cli import app


def files_then_sigterm(scored, result, staging, worst):
    (staging / "metrics.json").write_text("{}")
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(600)   # a bound: the handler raises at once


data_module.load_dataset = lambda *a, **k: data_module.DatasetSplit("x", [])
evaluate_module.evaluate = lambda ckpt, split, out, **k: evaluate_module.write_report(None, {}, out)
evaluate_module._write_report_files = files_then_sigterm
app(sys.argv[1:])
'''


ROOT = Path(__file__).resolve().parents[1]  # the child imports this tree's fair_edge, not an installed one


def _run_child(script: Path, args: list[str]) -> subprocess.CompletedProcess:
    path = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "COLUMNS": "400", "PYTHONPATH": path})


def test_sigterm_during_tune_exits_143_with_one_line(mvtec_dir, tmp_path):
    """SIGTERM (kill, a CI timeout) killed tune outright."""
    script = tmp_path / "tune_child.py"
    script.write_text(SIGTERM_TUNE)
    r = _run_child(script, ["tune", str(mvtec_dir), "--image-size", "32", "--out", str(tmp_path / "t")])
    assert r.returncode == 128 + signal.SIGTERM, (r.returncode, r.stderr)
    assert f"tune stopped by SIGTERM after 1 candidate; {START_OVER}" in r.stderr and "Traceback" not in r.stderr


def test_sigterm_while_eval_writes_its_report_leaves_no_staging_folder(tmp_path):
    """SIGTERM while eval wrote its report left OUT/.eval-partial-XXXX/ (metrics.json, ...) for good."""
    script, out = tmp_path / "eval_child.py", tmp_path / "ev"
    script.write_text(SIGTERM_EVAL)
    r = _run_child(script, ["eval", str(tmp_path / "final.pt"), "plate", "--out", str(out)])
    assert r.returncode == 128 + signal.SIGTERM, (r.returncode, r.stderr)
    assert list(out.iterdir()) == [] and "Traceback" not in r.stderr
    assert "eval stopped by SIGTERM" in r.stderr and "Run the same command again" in r.stderr


def _dead_pid() -> int:
    """The id of a process that has ended (reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_clear_report_removes_staging_folders_of_killed_evals_only(tmp_path):
    """An eval killed while writing its report (SIGKILL, a power cut) left .eval-partial-* that later evals into the
    same folder never cleared. A folder of a running eval (its pid alive), or of an older fair-edge (no pid) changed
    within the hour, is kept, as build's clear_leftovers decides."""
    from fair_edge.training.evaluate import clear_report

    def staging(name: str) -> Path:
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text("{}")
        return tmp_path / name

    dead = staging(f".eval-partial-{_dead_pid()}-abcd1234")
    live = staging(f".eval-partial-{os.getppid()}-abcd1234")
    mine = staging(f".eval-partial-{os.getpid()}-zzzz1234")
    old, fresh = staging(".eval-partial-old_1234"), staging(".eval-partial-new_1234")
    hour_ago = time.time() - 2 * 3600
    for path in (old, old / "metrics.json"):
        os.utime(path, (hour_ago, hour_ago))
    (tmp_path / "notes.txt").write_text("mine")
    removed = clear_report(tmp_path, keep=mine)
    assert sorted(removed) == sorted([dead, old])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, mine.name, fresh.name, "notes.txt"])


# ----------------------------------------------------------------------------- eval's skip rule
def _write_samples(folder: Path, unreadable: set[int], n: int) -> list[Sample]:
    folder.mkdir()
    rng = np.random.default_rng(0)
    samples = []
    for i in range(n):
        path = folder / f"{i:02d}.png"
        if i in unreadable:
            path.write_bytes(b"not a png")
        else:
            cv2.imwrite(str(path), make_normal(rng))
        samples.append(Sample(path, i % 2, "blob" if i % 2 else "good"))
    return samples


def test_eval_scores_by_read_frames_keeping_its_runs_and_counts(tiny_ckpt_path, tmp_path, caplog, monkeypatch):
    """score_samples had its own copy of the skip loop; now it reads by read_frames, in the same runs of --batch
    samples (progress per run, skipped ones counted), with the same warnings."""
    import fair_edge.training.evaluate as evaluate_module
    from fair_edge.training.pixels import read_frames

    calls = []

    def spy(*args, **kwargs):
        calls.append(kwargs.get("what"))
        return read_frames(*args, **kwargs)

    monkeypatch.setattr(evaluate_module, "read_frames", spy)
    samples = _write_samples(tmp_path / "imgs", unreadable={2, 3}, n=5)
    progress: list[int] = []
    with caplog.at_level("WARNING"):
        scored = evaluate_module.score_samples(tiny_ckpt_path, samples, batch=2, progress=progress.append)
    assert calls == ["test images"] and progress == [2, 2, 1]
    assert [s.path.name for s in scored.samples] == ["00.png", "01.png", "04.png"]
    assert "skipped 2 unreadable or undersized image(s) of 5" in caplog.text and "02.png" in caplog.text
    whole = evaluate_module.score_samples(tiny_ckpt_path, [samples[i] for i in (0, 1, 4)], batch=16)
    np.testing.assert_allclose(scored.scores, whole.scores, rtol=1e-5, atol=1e-6)


def test_eval_with_no_readable_image_names_the_first(tiny_ckpt_path, tmp_path):
    """The refusal said only 'no test image could be read.'; read_frames names the count and the first file."""
    from fair_edge.training.evaluate import score_samples

    samples = _write_samples(tmp_path / "imgs", unreadable={0, 1}, n=2)
    with pytest.raises(DataError, match=r"none of the 2 test images could be read \(first: .*00\.png"):
        score_samples(tiny_ckpt_path, samples, batch=1)
