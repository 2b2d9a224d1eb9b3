"""`fair-edge train` holds OUT/.train.lock for the whole command (fair_edge.training.runs.hold_run_lock, taken in
fair_edge/cli/train.py right after --out is checked): a second train into the same folder, with --overwrite or
--resume too, is refused naming the first one's pid before it reads, deletes or writes anything there."""

from __future__ import annotations

from typer.testing import CliRunner

from fair_edge.cli import app
from test_run_locks import held_by_child


def train_args(mvtec_dir, out, *more: str) -> list[str]:
    return ["train", str(mvtec_dir), "--width", "32", "--image-size", "32", "--cutoff", "4", "--steps", "2",
            "--batch", "4", "--out", str(out), "--device", "cpu", *more]


def test_a_second_train_into_a_held_out_folder_is_refused_before_anything_is_written(mvtec_dir, tmp_path):
    """Bug: a second `fair-edge train --out X` started before the first's first save (no last.pt yet) passed, and
    both wrote the same last.pt, final.pt and loss.csv. Now it is refused naming the first run's pid."""
    out = tmp_path / "run"
    out.mkdir()
    with held_by_child(out, ".train.lock") as pid:
        result = CliRunner().invoke(app, train_args(mvtec_dir, out))
        listed = sorted(p.name for p in out.iterdir())
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and f"pid {pid}" in text and "a training run is already writing" in text, text
    assert listed == [".train.lock"]   # the holder's lock only: no loss.csv, no checkpoint


def test_overwrite_and_resume_are_refused_too_and_the_run_is_kept(mvtec_dir, tmp_path):
    out = tmp_path / "run"
    runner = CliRunner()
    assert runner.invoke(app, train_args(mvtec_dir, out)).exit_code == 0   # the lock was let go at its end
    assert not (out / ".train.lock").exists()
    before = (out / "final.pt").read_bytes()
    with held_by_child(out, ".train.lock") as pid:
        for more in (["--overwrite"], ["--resume"]):
            args = train_args(mvtec_dir, out, *more) if more == ["--overwrite"] else ["train", "--resume", "--out",
                                                                                      str(out), "--device", "cpu"]
            result = runner.invoke(app, args)
            assert result.exit_code == 2 and f"pid {pid}" in " ".join(result.output.split()), result.output
    assert (out / "final.pt").read_bytes() == before and (out / "last.pt").is_file()   # --overwrite deleted nothing
    assert runner.invoke(app, train_args(mvtec_dir, out, "--overwrite")).exit_code == 0
