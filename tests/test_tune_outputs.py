"""tune.csv names each column once, and tune.json lists the proxy defects that were planted.

With --false-reject-rate 0.05 the header held "proxy_catch_at_5.0%" twice (the target's column and the fixed 5 %
one), so a csv.DictReader kept only one of them. tune.json's proxy_sizes came from the settings, while the proxy set
cycles the 12 kind-size pairs over the held-out images: with 8 held-out normals none is "large", yet it was listed.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fair_edge.images import write_png
from fair_edge.preprocess import PreprocessConfig
from fair_edge.training import tune as tune_module
from fair_edge.training.data import DatasetSplit, Sample
from fair_edge.training.proxy_defects import KINDS
from fair_edge.training.tune import tune
from fair_edge.training.tune_candidates import Candidate, TuneSettings
from fair_edge.training.tune_results import TuneRow


def normals(folder: Path, n: int) -> list[Sample]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        write_png(folder / f"{i:03d}.png", rng.integers(100, 156, (48, 48, 3), dtype=np.uint8))
        paths.append(Sample(folder / f"{i:03d}.png"))
    return paths


@pytest.fixture
def untrained(monkeypatch):
    """Candidates are not trained: each gets a finished row (proxy catch 0.5 at the target, 0.75 at 5 %)."""

    def fake(cand, train, proxy, out, settings, device):
        return TuneRow(cand, "done", 0.9, 0.5, 0.75, 1.0, "final.pt")

    monkeypatch.setattr(tune_module, "score_candidate", fake)


def run_tune(tmp_path: Path, rate: float) -> tuple[list[str], list[list[str]], dict]:
    split = DatasetSplit("plates", normals(tmp_path / "good", 40))   # 20 % held out: 8 normals
    cand = Candidate("base", PreprocessConfig(image_size=32, cutoff=4.0), 8, 2)
    tune(split, [cand], tmp_path / "out", TuneSettings(false_reject_rate=rate), torch.device("cpu"))
    with (tmp_path / "out" / "tune.csv").open() as fh:
        header, *rows = list(csv.reader(fh))
    return header, rows, json.loads((tmp_path / "out" / "tune.json").read_text())


def test_a_target_of_5_percent_gives_one_catch_column(tmp_path, untrained):
    header, rows, _ = run_tune(tmp_path, 0.05)
    assert len(header) == len(set(header)), header
    assert [h for h in header if h.startswith("proxy_catch")] == ["proxy_catch_at_5.0%"]
    assert all(len(row) == len(header) for row in rows)
    row = dict(zip(header, rows[0]))
    assert (row["proxy_catch_at_5.0%"], row["proxy_auroc"]) == ("0.5000", "0.9000")


def test_another_target_keeps_both_catch_columns(tmp_path, untrained):
    header, rows, _ = run_tune(tmp_path, 0.005)
    assert [h for h in header if h.startswith("proxy_catch")] == ["proxy_catch_at_0.5%", "proxy_catch_at_5.0%"]
    row = dict(zip(header, rows[0]))
    assert (row["proxy_catch_at_0.5%"], row["proxy_catch_at_5.0%"], row["proxy_auroc"]) == ("0.5000", "0.7500",
                                                                                           "0.9000")


def test_tune_json_lists_the_kind_size_pairs_planted(tmp_path, untrained):
    _, _, summary = run_tune(tmp_path, 0.005)
    planted_folders = sorted(p.name for p in (tmp_path / "out" / "proxy").iterdir() if p.name != "good")
    assert summary["held_out_normals"] == 8
    # 8 held-out images, 12 pairs (every kind small, then medium, then large): no large one is planted
    assert summary["proxy_sizes"] == ["small", "medium"] and summary["proxy_kinds"] == list(KINDS)
    assert sorted(summary["proxy_planted"]) == planted_folders
    assert summary["proxy_planted"] == {f"{kind}-{size}": 1 for size in ("small", "medium") for kind in KINDS}
