"""eval writes, next to each "caught at R false rejects" figure, the false rejects it was measured at (k of n), and
says when the normals are too few to resolve R (n x R < 1), as `fair-edge build` does.

The demo's 118 normals cannot resolve 0.5 % (one false reject is 0.85 %): the threshold rejected none of them
(0 of 118), and metrics.json and the table said "catch_at_0.5%_false_rejects 0.6294" with nothing more.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fair_edge.cli.evaluate import print_metrics
from fair_edge.records import json_file_text
from fair_edge.training.data import Sample
from fair_edge.training.evaluate import ScoredSet, compute_metrics

N_NORMAL = 118   # the demo's normal test images
NOTE = "too few normals to resolve the target rate"


def scored_set(normal: np.ndarray, defect: np.ndarray) -> ScoredSet:
    samples = [Sample(Path(f"good/{i:03d}.png")) for i in range(normal.size)]
    samples += [Sample(Path(f"bad/{i:03d}.png"), 1, "bad") for i in range(defect.size)]
    scores = np.concatenate([normal, defect]).astype(np.float32)
    return ScoredSet(samples, scores, np.zeros((scores.size, 4, 4), np.float32), None)


def test_each_catch_figure_has_its_achieved_false_rejects_and_the_too_few_note(tmp_path, monkeypatch, capsys):
    normal = np.arange(N_NORMAL, dtype=np.float64)          # 0 .. 117, distinct
    defect = np.array([10.5, 100.5, 111.5, 113.5, 200.0, 300.0])   # none in a gap a threshold may sit in
    result = compute_metrics(scored_set(normal, defect))
    low, high = result["catch_at_0.5%_false_rejects_achieved"], result["catch_at_5.0%_false_rejects_achieved"]
    # 0.5 %: 118 x 0.005 = 0.59 < 1, so no normal may be rejected: 0 of 118, with the build's note
    assert {k: low[k] for k in ("false_rejects", "normal", "rate")} == {"false_rejects": 0, "normal": 118, "rate": 0.0}
    assert low["text"] == f"0 of 118 normals (0.00%) - {NOTE} 0.5% (118 x 0.5% < 1; 200 or more resolve it)"
    assert result["catch_at_0.5%_false_rejects"] == 2 / 6                   # above the highest normal, 117
    # 5 %: floor(118 x 0.05) = 5 normals above the threshold, which resolves the rate: no note
    assert (high["false_rejects"], high["normal"], high["text"]) == (5, 118, "5 of 118 normals (4.24%)")
    assert result["catch_at_5.0%_false_rejects"] == 3 / 6                   # above 112, the 113th smallest
    assert json.loads(json_file_text(result))["catch_at_0.5%_false_rejects_achieved"] == low   # as metrics.json
    # the table: each achieved row right after its catch figure
    monkeypatch.setenv("COLUMNS", "250")
    print_metrics(result, tmp_path)
    lines = [line for line in capsys.readouterr().out.splitlines() if "catch_at_" in line]
    names = [f"catch_at_{rate}_false_rejects{achieved}" for rate in ("0.5%", "5.0%") for achieved in ("", "_achieved")]
    assert [line.split()[1] for line in lines] == names
    assert f"0 of 118 normals (0.00%) - {NOTE}" in lines[1]
    assert lines[3].rstrip(" │").endswith("5 of 118 normals (4.24%)")


def test_enough_normals_resolve_0_5_percent_without_a_note():
    normal = np.linspace(0.0, 1.0, 400)   # 400 x 0.005 = 2 false rejects allowed
    result = compute_metrics(scored_set(normal, np.array([0.999, 2.0])))
    achieved = result["catch_at_0.5%_false_rejects_achieved"]
    assert (achieved["false_rejects"], achieved["normal"]) == (2, 400) and NOTE not in achieved["text"]
    assert achieved["text"] == "2 of 400 normals (0.50%)"
