"""fuse and tune say the false-reject rate their figures were measured at, and tune.csv names each catch column by
its own rate.

``fair-edge fuse`` printed "threshold T at 0.5% false rejects" after calibrating on 30 normals, while fusion.json
recorded a measured rate of 0 (30 x 0.5 % < 1: no normal may be rejected); tune's table was titled "(proxy
defects, 0.5% false rejects)" and its catch@5% column, on the default 8 held-out normals, were both the catch at 0
false rejects. ``build`` and ``eval`` say "too few normals to resolve the target rate"; now fuse and tune do too,
and tune.json records the false rejects reached (false_rejects_achieved). tune.csv decided "one column" by the
rates formatted to one decimal: --false-reject-rate 0.0499 kept one column, proxy_catch_at_5.0%, holding the catch
at 4.99 % and dropping the one at 5 %.
"""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from export_fixtures import MODEL, PRE, make_frames, write_pngs
from typer.testing import CliRunner

from fair_edge.cli import app
from fair_edge.cli import tune as tune_cli
from fair_edge.preprocess import PreprocessConfig
from fair_edge.training import metrics
from fair_edge.training.data import Sample
from fair_edge.training import tune as tune_module
from fair_edge.training import tune_results
from fair_edge.training.tune_candidates import Candidate, TuneSettings
from fair_edge.training.tune_results import TuneRow, catch_columns, results_csv

TOO_FEW = "too few normals to resolve the target rate"


def one_line(text: str) -> str:
    return " ".join(text.split())


# ----------------------------------------------------------------------------- fuse
@pytest.fixture(scope="module")
def fuse_inputs(tiny_detector, tmp_path_factory) -> tuple[list[Path], Path]:
    """Two bundles of the tiny model (whole frame, and tiled) and a folder of 8 held-out normal images."""
    from fair_edge.export.build import BuildOptions, build_bundle
    from fair_edge.models.checkpoint import Checkpoint
    from fair_edge.tiling import TilingConfig

    root = tmp_path_factory.mktemp("fuse_rates")
    normals = make_frames(8, seed=5, size=64)
    state = tiny_detector.unet.state_dict()
    members = []
    for name, pre in (("whole", PRE), ("tiled", replace(PRE, tiling=TilingConfig(32, 8)))):
        ckpt = Checkpoint(replace(MODEL, preprocess=pre), state)
        members.append(build_bundle(ckpt, root / name, BuildOptions(engine=False), normal_frames=normals).bundle.root)
    return members, write_pngs(root / "normals", normals)


@pytest.mark.parametrize("rate, few", [(0.005, True), (0.25, False), (0.0, False)])
def test_fuse_prints_the_false_reject_rate_its_threshold_reached(fuse_inputs, tmp_path, rate, few):
    members, normals = fuse_inputs
    out = tmp_path / "fused"
    result = CliRunner().invoke(app, ["fuse", *map(str, members), "--normal", str(normals), "--out", str(out),
                                      "--false-reject-rate", str(rate)], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    recorded = json.loads((out / "fusion.json").read_text())["threshold"]
    assert recorded["n_normal"] == 8
    line = one_line(next(line for line in result.output.splitlines() if line.startswith("fused bundle:")))
    assert f"at {rate:.1%} false rejects" not in line   # the target, printed as if reached
    assert (f"false-reject {recorded['measured_false_reject_rate']:.2%} on 8 held-out normal images "
            f"(target {rate:.2%})") in line, line
    assert (TOO_FEW in line) == few, line
    if few:
        assert recorded["measured_false_reject_rate"] == 0.0


# ----------------------------------------------------------------------------- tune
def proxy_samples(n_normal: int) -> list[Sample]:
    """n held-out normals (label 0) and one planted copy each (label 1), kinds cycling as tune plants them."""
    kinds = ["scratch-small", "stain-small"]
    normal = [Sample(Path(f"good/{i:04d}.png")) for i in range(n_normal)]
    planted = [Sample(Path(f"{kinds[i % 2]}/{i:04d}.png"), 1, kinds[i % 2]) for i in range(n_normal)]
    return normal + planted


def test_tune_rows_record_the_false_rejects_each_catch_was_measured_at():
    cand = Candidate("base", PreprocessConfig(image_size=32), 32, 5)
    rng = np.random.default_rng(3)
    for n, rate, reached in ((8, 0.005, 0), (200, 0.005, 1), (200, 0.05, 10)):
        scores = np.r_[rng.normal(0, 1, n), rng.normal(1.5, 1, n)]
        settings = TuneSettings(false_reject_rate=rate)
        row = tune_module.proxy_row(cand, proxy_samples(n), scores, settings, 1.0, "final.pt")
        assert row.proxy_catch == metrics.catch_rate(scores, np.r_[np.zeros(n), np.ones(n)].astype(int), rate)
        assert (row.false_rejects["false_rejects"], row.false_rejects["normal"]) == (reached, n)
        assert row.false_rejects["rate"] == reached / n
        assert (TOO_FEW in row.false_rejects["text"]) == (n * rate < 1)
        assert row.false_rejects_5pct["false_rejects"] == int(n * 0.05)
        assert (TOO_FEW in row.false_rejects_5pct["text"]) == (n * 0.05 < 1)


def test_tune_says_its_catch_was_measured_at_0_false_rejects_on_few_held_out_normals(mvtec_dir, tmp_path):
    """The real command on 16 normals (5 held out; a budget that only the base candidate starts within)."""
    out = tmp_path / "tune"
    result = CliRunner().invoke(app, ["tune", str(mvtec_dir), "--image-size", "32", "--steps", "1",
                                      "--budget-min", "0.00001", "--out", str(out)], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    text = one_line(result.output)
    assert "(proxy defects, 0.5% false rejects)" not in text and "target 0.5% false rejects" in text
    assert ("catch: measured at false rejects 0 of 5 normals (0.00%) - too few normals to resolve the target rate "
            "0.5% (5 x 0.5% < 1; 200 or more resolve it)") in text, result.output
    assert ("catch@5%: measured at false rejects 0 of 5 normals (0.00%) - too few normals to resolve the target "
            "rate 5.0% (5 x 5.0% < 1; 20 or more resolve it)") in text, result.output
    summary = json.loads((out / "tune.json").read_text())
    assert summary["false_reject_rate"] == 0.005 and summary["held_out_normals"] == 5   # kept
    achieved = summary["false_rejects_achieved"]
    assert (achieved["false_rejects"], achieved["normal"], achieved["rate"]) == (0, 5, 0.0)
    assert TOO_FEW in achieved["text"]


def test_tune_lines_name_the_candidates_of_each_false_reject_count():
    """Ties among one candidate's normal scores reject fewer: each count is named with its candidates."""
    def row(name: str, k: int) -> TuneRow:
        achieved = {"false_rejects": k, "normal": 200, "rate": k / 200, "text": f"{k} of 200 normals ({k / 200:.2%})"}
        return TuneRow(Candidate(name, PreprocessConfig(image_size=32), 32, 5), "done", 0.9, 0.5, 0.6, 1.0,
                       false_rejects=achieved, false_rejects_5pct=dict(achieved, text="10 of 200 normals (5.00%)"))

    lines = tune_cli.false_reject_lines([row("a", 1), row("b", 0), row("c", 1), TuneRow(Candidate(
        "skipped", PreprocessConfig(image_size=32), 32, 5))])
    assert lines == ["catch: measured at false rejects 1 of 200 normals (0.50%) (a, c); 0 of 200 normals (0.00%) (b)",
                     "catch@5%: measured at false rejects 10 of 200 normals (5.00%)"]


# ----------------------------------------------------------------------------- tune.csv columns
def test_a_target_that_rounds_to_5_percent_keeps_its_own_column_and_the_5_percent_one():
    rng = np.random.default_rng(0)
    scores = np.r_[rng.normal(0, 1, 20), rng.normal(1.5, 1, 20)]
    labels = np.r_[np.zeros(20), np.ones(20)].astype(int)
    settings = TuneSettings(false_reject_rate=0.0499)
    at_target, at_5 = metrics.catch_rate(scores, labels, 0.0499), metrics.catch_rate(scores, labels, 0.05)
    assert at_target != at_5   # the figures the old single column confused
    row = TuneRow(Candidate("base", PreprocessConfig(image_size=32), 32, 5), "done", 0.9, at_target, at_5, 1.0)
    header, values = list(csv.reader(results_csv([row], settings).splitlines()))
    assert catch_columns(settings) == ["proxy_catch_at_4.99%", "proxy_catch_at_5.0%"]
    by_column = dict(zip(header, values))
    assert (by_column["proxy_catch_at_4.99%"], by_column["proxy_catch_at_5.0%"]) == (f"{at_target:.4f}", f"{at_5:.4f}")


@pytest.mark.parametrize("rate, columns", [
    (0.005, ["proxy_catch_at_0.5%", "proxy_catch_at_5.0%"]),   # the names users parse stay
    (0.05, ["proxy_catch_at_5.0%"]),
    (0.01, ["proxy_catch_at_1.0%", "proxy_catch_at_5.0%"]),
    (0.0, ["proxy_catch_at_0.0%", "proxy_catch_at_5.0%"]),
    (0.1, ["proxy_catch_at_10.0%", "proxy_catch_at_5.0%"]),
    (0.07, ["proxy_catch_at_7.0%", "proxy_catch_at_5.0%"]),
    (0.051, ["proxy_catch_at_5.1%", "proxy_catch_at_5.0%"]),
    (0.00125, ["proxy_catch_at_0.125%", "proxy_catch_at_5.0%"]),
    (0.049999999999, ["proxy_catch_at_4.9999999999%", "proxy_catch_at_5.0%"]),
])
def test_catch_columns_are_named_by_their_rate(rate, columns):
    assert catch_columns(TuneSettings(false_reject_rate=rate)) == columns


def test_different_rates_never_share_a_column_name():
    rates = [0.05, 0.0499, 0.0501, 0.05 - 1e-12, 0.05 + 1e-12, 0.005, 0.0049, 0.00499, 0.0, 1e-5, 1e-6, 0.999, 0.5]
    assert len({tune_results.percent_label(r) for r in rates}) == len(rates)
