"""A tune whose disk fills as it writes its results is one error line, and the same command then starts over.

tune wrote tune.csv, then tune.json, both in place: a full disk at tune.json was a raw OSError traceback, and the
folder kept tune.csv (a disk filling during tune.csv: a truncated one), which the next tune took for a finished run
("already holds a tune run (tune.csv) ... pass --overwrite"). Now both are written beside their place and renamed in,
tune.json last, only tune.json marks a finished run, and a failed write is a FairEdgeError naming --out and the fix.
"""

from __future__ import annotations

import errno
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fair_edge.cli import app
from fair_edge.images import write_png
from fair_edge.training import tune as tune_module
from fair_edge.training.tune_results import TuneRow, check_fresh_tune, unfinished_tune


@pytest.fixture
def untrained(monkeypatch):
    """Candidates are not trained: each gets a finished row (proxy catch 0.5, AUROC 0.9)."""

    def fake(cand, train, proxy, out, settings, device):
        return TuneRow(cand, "done", 0.9, 0.5, 0.75, 1.0, "final.pt")

    monkeypatch.setattr(tune_module, "score_candidate", fake)


@pytest.fixture
def normals(tmp_path) -> Path:
    """A folder of 20 normal 48 x 48 images."""
    rng = np.random.default_rng(0)
    for i in range(20):
        write_png(tmp_path / "good" / f"{i:03d}.png", rng.integers(100, 156, (48, 48, 3), dtype=np.uint8))
    return tmp_path / "good"


def fill_disk_at(monkeypatch, result: str) -> None:
    """Opening a file for writing whose name holds ``result`` ("tune.json") writes part of it, then fails as a full
    disk does (ENOSPC, naming the file); other files are written as usual."""
    real_open = Path.open

    def full_disk(self, mode="r", *args, **kwargs):
        if result in self.name and "w" in mode:
            with real_open(self, mode, *args, **kwargs) as fh:
                fh.write("rank,na")
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real_open(self, mode, *args, **kwargs)

    monkeypatch.setattr(Path, "open", full_disk)


@pytest.mark.parametrize("result", ["tune.json", "tune.csv"])
def test_a_disk_full_at_the_results_is_an_error_line_and_the_same_command_starts_over(
        normals, tmp_path, monkeypatch, untrained, result):
    out = tmp_path / "t"
    args = ["tune", str(normals), "--image-size", "32", "--out", str(out), "--device", "cpu"]
    with monkeypatch.context() as disk:
        fill_disk_at(disk, result)
        r = CliRunner().invoke(app, args, env={"COLUMNS": "400"})
    text = " ".join(r.output.split())
    assert r.exit_code == 2 and not isinstance(r.exception, OSError), (r.exception, r.output)
    assert f"error: the tune results were not written to {out}" in text and "No space left on device" in text
    assert f"the disk of {out} is full" in text and "then run the same command again" in text, text
    assert "the best candidate was" in text and "fair-edge train" in text, text
    assert not (out / "tune.json").exists() and not list(out.glob(".*.partial"))
    check_fresh_tune(out)  # no finished run there: no refusal
    r = CliRunner().invoke(app, args, env={"COLUMNS": "400"})
    text = " ".join(r.output.split())
    assert r.exit_code == 0, r.output
    assert f"{out} holds an unfinished tune run" in text and "deleted it to start over" in text, text
    assert json.loads((out / "tune.json").read_text())["chosen"]["train_command"].startswith("fair-edge train")
    assert (out / "tune.csv").read_text().startswith("rank,name,family,status,")
    assert not list(out.glob(".*.partial"))


def test_only_tune_json_marks_a_finished_run(tmp_path):
    """A tune.csv without tune.json (a tune whose tune.json failed) is an unfinished run, deleted by the next one;
    a tune.json is a finished run, refused."""
    (tmp_path / "candidates").mkdir()
    (tmp_path / "tune.csv").write_text("rank,na")
    (tmp_path / ".tune.json.partial").write_text("{")
    check_fresh_tune(tmp_path)
    assert unfinished_tune(tmp_path) == ["tune.csv", "candidates", ".tune.json.partial"]
    (tmp_path / "tune.json").write_text("{}")
    with pytest.raises(tune_module.ConfigError, match=r"already holds a tune run \(tune.json\)"):
        check_fresh_tune(tmp_path)
    assert unfinished_tune(tmp_path) == []
