"""fair-edge tune: proxy defects, the normal-only split, ranking within a budget, and the CLI."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from fair_edge.cli import app
from fair_edge.training.data import DatasetSplit, Sample, load_dataset
from fair_edge.errors import ConfigError, DataError
from fair_edge.preprocess import PreprocessConfig
from fair_edge.training.evaluate import score_samples
from fair_edge.training.proxy_defects import KINDS, SIZES, plant
from fair_edge.training.tune import split_normals, tune
from fair_edge.training.tune_candidates import Candidate, TuneSettings, default_candidates


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_each_proxy_kind_changes_the_frame_inside_its_mask(kind):
    rng = np.random.default_rng(0)
    frame = np.clip(rng.normal(128, 20, (96, 96, 3)), 0, 255).astype(np.uint8)
    bad, mask = plant(frame, kind, "medium", rng)
    assert bad.shape == frame.shape and bad.dtype == np.uint8 and 0 < mask.mean() < 0.2
    diff = np.abs(bad.astype(int) - frame.astype(int)).sum(axis=2)
    assert diff[mask].mean() > 3 * max(diff[~mask].mean(), 0.1)


def test_proxy_sizes_grow_and_bad_names_are_refused():
    rng = np.random.default_rng(1)
    frame = np.full((200, 200, 3), 120, np.uint8)
    areas = [plant(frame, "stain", size, np.random.default_rng(1))[1].sum() for size in SIZES]
    assert areas == sorted(areas) and areas[0] > 0
    with pytest.raises(ConfigError, match="kind must be one of"):
        plant(frame, "crack", "small", rng)
    with pytest.raises(ConfigError, match="size must be one of"):
        plant(frame, "stain", "huge", rng)


def test_split_is_fixed_disjoint_and_needs_enough_images():
    samples = [Sample(Path(f"{i}.png")) for i in range(20)]
    train, held = split_normals(samples, 0.2, seed=3)
    assert len(held) == 5 and len(train) == 15 and not set(train) & set(held)
    assert split_normals(samples, 0.2, seed=3) == (train, held)
    with pytest.raises(DataError, match="at least 10"):
        split_normals(samples[:5], 0.2, 0)


def test_default_candidates_change_one_thing_at_a_time():
    base = Candidate("base", PreprocessConfig(image_size=64, cutoff=7.5), 16, 100)
    cands = default_candidates(base, frame_side=512)
    names = [c.name for c in cands]
    assert names[:2] == ["base", "lgfdr"] and "tiled" in names and "size-double" not in names
    assert names[-1] == "width-double"  # the costliest last, so a short budget reaches the cheap ones
    lgfdr = cands[1]
    assert lgfdr.family == "lgfdr" and lgfdr.steps is None and lgfdr.preprocess == base.preprocess
    assert [c.name for c in cands if c.family == "lgfdr"] == ["lgfdr"]
    small = {c.name: c for c in default_candidates(base, frame_side=100)}
    assert small["size-double"].preprocess.cutoff == 15.0 and small["size-double"].preprocess.image_size == 128
    odd = Candidate("base", PreprocessConfig(image_size=72, cutoff=8.0), 16, 100)  # not a multiple of 16
    assert "lgfdr" not in [c.name for c in default_candidates(odd, frame_side=100)]


def test_candidate_commands_name_the_family_and_its_own_flags():
    pre = PreprocessConfig(image_size=64, cutoff=7.5)
    fair = Candidate("base", pre, 16, 100, lr=1e-3).train_command("elpv:mono")
    assert fair.startswith("fair-edge train elpv:mono --model fair --width 16 --image-size 64") and "--steps 100" in fair
    lgfdr = Candidate("lgfdr", pre, 16, None, lr=1e-3, family="lgfdr").train_command("elpv:mono")
    assert lgfdr == "fair-edge train elpv:mono --model lgfdr --image-size 64 --lr 0.001"
    patchcore = Candidate("pc", pre, 16, None, family="patchcore").train_command("elpv:mono")
    assert patchcore.startswith("fair-edge train elpv:mono --model patchcore --image-size 64")


def test_tune_trains_an_lgfdr_candidate_through_the_family_seam(mvtec_dir, tmp_path):
    from fair_edge.models.checkpoint import load_checkpoint

    pre = PreprocessConfig(image_size=32, cutoff=4.0)
    cands = [Candidate("base", pre, 8, 2, lr=1e-3), Candidate("lgfdr", pre, 8, 3, lr=1e-3, family="lgfdr")]
    rows = tune(load_dataset(mvtec_dir), cands, tmp_path, TuneSettings(holdout=0.25, budget_s=3600, batch=4))
    by_name = {r.candidate.name: r for r in rows}
    assert by_name["lgfdr"].status == "done"
    # the proxy AUROC is the one of the checkpoint's scores on the planted set, recomputed here independently
    proxy = tmp_path / "proxy"
    planted = [Sample(p, 0 if p.parent.name == "good" else 1) for p in sorted(proxy.glob("*/*.png"))]
    scored = score_samples(Path(by_name["lgfdr"].checkpoint), planted)
    assert len(planted) == 2 * sum(1 for _ in (proxy / "good").glob("*.png")) >= 10
    assert by_name["lgfdr"].proxy_auroc == pytest.approx(roc_auc_score(scored.labels, scored.scores), abs=1e-9)
    ckpt = load_checkpoint(Path(by_name["lgfdr"].checkpoint))
    assert ckpt.model.family == "lgfdr" and ckpt.data_summary["steps"] == 3
    table = {r["name"]: r for r in csv.DictReader((tmp_path / "tune.csv").open())}
    assert table["lgfdr"]["family"] == "lgfdr" and table["lgfdr"]["model"] == "LGFDR on efficientnet_lite0"
    assert table["base"]["model"] == "FAIR width 8"


def test_tune_ranks_candidates_on_normal_images_only(mvtec_dir, tmp_path):
    split = load_dataset(mvtec_dir)
    split = DatasetSplit(split.name, split.train, [Sample(Path("/nonexistent.png"), 1)])  # never read
    pre = PreprocessConfig(image_size=32, cutoff=4.0)
    cands = [Candidate("base", pre, 8, 3, lr=1e-3), Candidate("gauss", PreprocessConfig(32, "gaussian", 4.0), 8, 3)]
    settings = TuneSettings(holdout=0.25, budget_s=3600, batch=4)
    rows = tune(split, cands, tmp_path, settings, torch.device("cpu"), data_name=str(mvtec_dir))
    assert [r.status for r in rows] == ["done", "done"] and rows[0].rank_key() >= rows[1].rank_key()
    table = list(csv.DictReader((tmp_path / "tune.csv").open()))
    assert [r["name"] for r in table] == [r.candidate.name for r in rows]
    chosen = json.loads((tmp_path / "tune.json").read_text())["chosen"]
    assert chosen["name"] == rows[0].candidate.name and chosen["train_command"].startswith("fair-edge train")
    assert len(list((tmp_path / "proxy" / "good").glob("*.png"))) == 5  # 25 % of 16 normals, at least 5


def test_a_budget_too_small_for_any_candidate_is_an_error(mvtec_dir, tmp_path):
    cand = Candidate("base", PreprocessConfig(image_size=32, cutoff=4.0), 8, 2)
    with pytest.raises(DataError, match="budget"):
        tune(load_dataset(mvtec_dir), [cand], tmp_path, TuneSettings(budget_s=1e-9, batch=4))


def test_cli_tune_help_and_bad_width():
    runner = CliRunner()
    result = runner.invoke(app, ["tune", "--help"])
    assert result.exit_code == 0 and "--budget-min" in result.output and "--false-reject-rate" in result.output
    bad = runner.invoke(app, ["tune", "elpv", "--width", "33"])
    assert bad.exit_code == 2 and "--width" in bad.output


def _stub_tune(monkeypatch):
    """Replace the candidates' training with one finished row per call (recorded), for the CLI's checks."""
    from fair_edge.training import tune as tune_module
    from fair_edge.training import tune_results

    calls = []

    def fake(split, candidates, out, settings, device, data, on_row=None, category=None):
        calls.append(out)
        out.mkdir(parents=True, exist_ok=True)
        return [tune_results.TuneRow(candidates[0], "done", 0.9, 0.5, 0.5, 1.0)]

    monkeypatch.setattr(tune_module, "tune", fake)
    return calls


def test_cli_tune_refuses_an_earlier_run_unless_overwrite(mvtec_dir, tmp_path, monkeypatch):
    """A second tune into the same --out silently replaced tune.json, tune.csv and the candidates' checkpoints."""
    calls = _stub_tune(monkeypatch)
    out = tmp_path / "t"
    (out / "candidates" / "base").mkdir(parents=True)
    (out / "candidates" / "base" / "final.pt").write_bytes(b"first run")
    (out / "tune.json").write_text("{}")
    (out / "notes.txt").write_text("mine")
    args = ["tune", str(mvtec_dir), "--image-size", "32", "--out", str(out)]
    r = CliRunner().invoke(app, args)
    text = " ".join(r.output.split())
    assert r.exit_code == 2 and "already holds a tune run" in text and "--overwrite" in text, r.output
    assert calls == [] and (out / "candidates" / "base" / "final.pt").read_bytes() == b"first run"
    r = CliRunner().invoke(app, [*args, "--overwrite"])
    assert r.exit_code == 0, r.output
    assert calls == [out] and not (out / "candidates").exists() and not (out / "tune.json").exists()
    assert (out / "notes.txt").read_text() == "mine"
    from fair_edge.training.tune_results import check_fresh_tune

    check_fresh_tune(tmp_path / "fresh")  # nothing there: no error


def test_cli_tune_checks_image_size_and_rate_before_writing_anything(mvtec_dir, tmp_path):
    """--image-size 100 wrote the proxy set, then every candidate was dropped and an IndexError followed;
    --false-reject-rate 5 was refused only after every candidate had trained."""
    out = tmp_path / "t"
    r = CliRunner().invoke(app, ["tune", str(mvtec_dir), "--image-size", "100", "--out", str(out)])
    text = " ".join(r.output.split())
    assert r.exit_code == 2 and "--image-size 100" in text and "multiple of 16" in text, r.output
    r = CliRunner().invoke(app, ["tune", str(mvtec_dir), "--false-reject-rate", "5", "--out", str(out)])
    text = " ".join(r.output.split())
    assert r.exit_code == 2 and "false_reject_rate must be a share in [0, 1)" in text and "found 5.0" in text, r.output
    assert not out.exists()


def test_candidates_dropped_by_their_family_are_named_and_none_left_is_an_error(caplog):
    odd = Candidate("base", PreprocessConfig(image_size=72, cutoff=8.0), 32, 100)
    with caplog.at_level("WARNING", logger="fair_edge.training.tune"):
        kept = default_candidates(odd, frame_side=100)
    assert "base" not in [c.name for c in kept]
    assert "dropped candidate base" in caplog.text and "multiple of 16" in caplog.text
    with pytest.raises(ConfigError, match="no tune candidate fits its model family"):
        default_candidates(Candidate("base", PreprocessConfig(image_size=100, cutoff=8.0), 32, 100), frame_side=1000)
    with pytest.raises(ConfigError, match="at least one candidate"):
        tune(DatasetSplit("x", []), [], Path("/nonexistent/never-written"))


def test_width_double_is_offered_only_at_a_width_train_accepts():
    """--width 128 added a width-256 candidate whose train command `fair-edge train` refuses."""
    def widths(width):
        pre = PreprocessConfig(image_size=32)
        return {c.name: c.width for c in default_candidates(Candidate("base", pre, width, 5, 1e-3), 48)}

    assert widths(64)["width-double"] == 128 and "width-double" not in widths(128)


def test_tune_lr_help_says_which_candidates_use_it():
    import typer

    command = typer.main.get_command(app).commands["tune"]
    lr = next(p for p in command.params if p.name == "lr")
    assert "every candidate" not in lr.help and "LGFDR" in lr.help and "own" in lr.help


@pytest.mark.parametrize("seed", [-1, 2**64])
def test_tune_refuses_a_seed_torch_cannot_take(seed):
    """tune --seed past 2**63 overflowed in torch after PatchCore's feature pass; -1 too in numpy."""
    from fair_edge.training.tune_candidates import TuneSettings

    with pytest.raises(ConfigError, match=r"seed \(--seed\) must be a whole number from 0 to 4294967295"):
        TuneSettings(seed=seed)
    assert TuneSettings(seed=2**32 - 1).seed == 2**32 - 1


def test_the_recommended_train_command_trains_with_the_tune_seed(mvtec_dir, tmp_path, monkeypatch):
    """`tune --seed 7` trained its candidates with seed 7 and recommended a `fair-edge train` line without --seed,
    which trains with seed 0: another model than the one ranked. The line (printed and in tune.json) says --seed 7;
    at the default seed it stays out."""
    from fair_edge.training.tune_results import TuneRow, write_results

    _stub_tune(monkeypatch)
    result = CliRunner().invoke(app, ["tune", str(mvtec_dir), "--image-size", "32", "--seed", "7", "--out",
                                      str(tmp_path / "t")], env={"COLUMNS": "400"})
    assert result.exit_code == 0 and "--seed 7" in result.output.split("next:")[1], result.output
    pre = PreprocessConfig(image_size=32, cutoff=4.0)
    for cand in (Candidate("base", pre, 8, 3, lr=1e-3), Candidate("pc", pre, 8, None, family="patchcore")):
        assert cand.train_command("d", TuneSettings(seed=7)).endswith(" --seed 7")
        assert "--seed" not in cand.train_command("d", TuneSettings()) and "--seed" not in cand.train_command("d")
    write_results([TuneRow(Candidate("base", pre, 8, 3), "done", 0.9, 0.5, 0.5, 1.0)], tmp_path,
                  TuneSettings(seed=7), "DATA", 10, 3)
    assert json.loads((tmp_path / "tune.json").read_text())["chosen"]["train_command"].endswith(" --seed 7")


def test_a_candidate_that_caught_nothing_ranks_above_one_that_ran_out_of_memory(mvtec_dir, tmp_path, monkeypatch):
    """TuneRow.rank_key read a catch and an AUROC of 0.0 as missing (``or -1.0``): a finished candidate whose proxy
    scores came out inverted (caught nothing, AUROC 0) tied with one that ran out of memory before it, which then led
    the ranking, and tune ended in "no candidate finished" with no tune.json. The finished one is chosen now."""
    from fair_edge.training import tune as tune_module
    from fair_edge.training.tune_results import OUT_OF_MEMORY, TuneRow

    pre = PreprocessConfig(32, cutoff=4.0)
    cands = [Candidate("big", pre, 8, 2), Candidate("small", pre, 8, 2)]

    def scored(cand, *args):
        if cand.name == "big":
            raise MemoryError("Unable to allocate 2.0 GiB")
        return TuneRow(cand, "done", proxy_auroc=0.0, proxy_catch=0.0, proxy_catch_5pct=0.0, train_s=0.1)

    monkeypatch.setattr(tune_module, "score_candidate", scored)
    rows = tune(load_dataset(mvtec_dir), cands, tmp_path, TuneSettings(holdout=0.25, budget_s=3600, batch=4))
    assert [(r.candidate.name, r.status) for r in rows] == [("small", "done"), ("big", OUT_OF_MEMORY)]
    assert json.loads((tmp_path / "tune.json").read_text())["chosen"]["name"] == "small"
