"""The generated products of benchmarks/hires_fixture.py load as MVTec datasets with masks that mark what
was planted; bench_patchcore_variants.model_constants gives PatchCore's constants back afterwards."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from fair_edge.training.data import load_dataset
from fair_edge.training.pixels import read_mask

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _script(name: str):
    sys.path.insert(0, str(BENCH))  # the scripts import each other as top-level modules
    try:
        spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCH))


@pytest.mark.parametrize("product,kinds", [("woven", {"pit", "fleck"}), ("concrete", {"crack", "spall"})])
def test_generated_product_is_an_mvtec_set_whose_masks_mark_the_defects(tmp_path, product, kinds):
    fixture = _script("hires_fixture")
    root = fixture.write_fixture(tmp_path / product, size=128, n_train=3, n_good=2, n_bad=4, seed=1, product=product)
    split = load_dataset(str(root))
    assert split.has_masks and len(split.train) == 3
    bad = [s for s in split.test if s.label == 1]
    assert {s.defect_type for s in bad} == kinds and sum(s.label == 0 for s in split.test) == 2
    for sample in bad:
        mask = read_mask(sample.mask, (128, 128))
        assert 0 < mask.sum() < 0.1 * mask.size  # a small defect, never the whole frame
        image = cv2.imread(str(sample.path), cv2.IMREAD_GRAYSCALE).astype(np.float32)
        ring = cv2.dilate(mask.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool) & ~mask
        # the planted region differs from its surroundings (dark pits and cracks, bright flecks, shifted spalls)
        assert abs(image[mask].mean() - image[ring].mean()) > 5.0


def test_patchcore_variants_are_settings_not_patched_constants():
    variants = _script("bench_patchcore_variants")
    assert not hasattr(variants, "model_constants")
    assert variants.VARIANTS["pc-window-1"].model.settings.local_windows == (1,)
    assert variants.VARIANTS["pc-taps-s4-s16"].model.settings.taps == (0, 2)
    assert variants.VARIANTS["pc-base"].model.settings == variants.PatchcoreSettings()


def test_suite_reports_every_product_the_mean_and_the_worst_and_resumes(mvtec_dir, tmp_path, monkeypatch):
    """benchmarks/suite.py on two tiny products: a row per product and row, each row's mean and worst product, and
    a second invocation reads finished rows back instead of fitting them again."""
    import json

    suite = _script("suite")
    products = ["--product", f"plate={mvtec_dir}", "--product", f"copy={mvtec_dir}"]
    argv = ["suite.py", "--out", str(tmp_path), "--size", "32", "--rows", "pc-default", "pc-plain", *products]
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.syspath_prepend(str(BENCH))
    suite.main()
    report = json.loads((tmp_path / "suite-32.json").read_text())
    rows = report["products"]["plate"]
    assert set(report["products"]) == {"plate", "copy"} and set(rows) == {"pc-default", "pc-plain"}
    assert rows["pc-plain"]["memory_bank"]["dim"] == 152 and rows["pc-default"]["memory_bank"]["dim"] == 128
    assert 0.0 <= rows["pc-default"]["pixel_auroc"] <= 1.0 and "aupro" in rows["pc-plain"]
    table = (tmp_path / "suite-32.md").read_text()
    mean = (rows["pc-plain"]["image_auroc"] + report["products"]["copy"]["pc-plain"]["image_auroc"]) / 2
    worst = min(("plate", "copy"), key=lambda p: report["products"][p]["pc-plain"]["image_auroc"])
    assert f"| pc-plain | 2 | {mean:.3f} |" in table and f"| {worst} (" in table.split("| pc-plain | 2 |")[1]
    assert table.count("| plate | ") == 2 and table.count("| copy | ") == 2
    done = tmp_path / "32" / "plate" / "pc-default" / "row.json"
    before = done.stat().st_mtime_ns
    suite.main()  # resumes: nothing to fit
    assert done.stat().st_mtime_ns == before
    with pytest.raises(SystemExit, match="unknown row"):
        monkeypatch.setattr(sys, "argv", argv[:6] + ["pc-nonesuch"] + products)
        suite.main()


def test_suite_fuses_finished_rows_of_two_sizes_without_fitting_again(mvtec_dir, tmp_path, monkeypatch):
    """--fuse NAME=ROW+ROW@SIZE: the fused row of each product is the runtime's fusion of the members' saved maps
    (checked against fuse_maps on them), named in the table; a product missing a member is skipped, not fitted."""
    import json

    from fair_edge.runtime.fusion import NormalStats, fuse_maps
    from fair_edge.training.metrics import aupro, image_auroc

    suite = _script("suite")
    monkeypatch.syspath_prepend(str(BENCH))
    base = ["suite.py", "--out", str(tmp_path), "--rows", "pc-default", "--product", f"plate={mvtec_dir}"]
    monkeypatch.setattr(sys, "argv", [*base, "--size", "32"])
    suite.main()
    fit = tmp_path / "32" / "plate" / "pc-default" / "row.json"
    fitted = fit.stat().st_mtime_ns
    monkeypatch.setattr(sys, "argv", [*base, "--size", "48", "--fuse", "two-scales=pc-default+pc-default@32",
                                      "--fuse", "no-member=pc-default+pc-plain@32"])
    suite.main()
    assert fit.stat().st_mtime_ns == fitted  # the 32 px member was read back, not fitted again
    fused = json.loads((tmp_path / "48" / "plate" / "two-scales" / "row.json").read_text())
    assert not (tmp_path / "48" / "plate" / "no-member").exists()
    members = [np.load(tmp_path / str(s) / "plate" / "pc-default" / "scores.npz") for s in (48, 32)]
    assert members[0]["test_maps"].shape[1:] != members[1]["test_maps"].shape[1:]  # two grids: the fusion resizes
    _, scores = fuse_maps([m["test_maps"].astype(np.float32) for m in members],
                          [NormalStats.fit(m["held_map_max"]) for m in members], "mean")
    assert fused["rule"] == "mean" and fused["image_auroc"] == pytest.approx(image_auroc(scores, members[0]["labels"]))
    labels = members[0]["mask_labels"]     # regions as the full-size mask has them, which the fused AUPRO reads
    assert labels.dtype == np.int32 and np.array_equal(labels > 0, np.unpackbits(
        members[0]["masks"], axis=-1, count=int(members[0]["mask_width"])).astype(bool))
    fused_maps, _ = fuse_maps([m["test_maps"].astype(np.float32) for m in members],
                              [NormalStats.fit(m["held_map_max"]) for m in members], "mean")
    assert fused["aupro"] == pytest.approx(aupro(fused_maps, labels > 0, fpr_limit=0.3, regions=labels))
    assert "| plate | two-scales |" in (tmp_path / "suite-48.md").read_text()
    monkeypatch.setattr(sys, "argv", [*base, "--size", "48", "--fuse", "bad=pc-default"])
    with pytest.raises(SystemExit, match="expected NAME=ROW"):
        suite.main()


def test_a_rescored_row_scores_its_base_checkpoint_with_the_changed_setting_and_fits_nothing(mvtec_dir, tmp_path,
                                                                                             monkeypatch):
    """A ``Rescore`` row scores the base row's checkpoint with the changed scoring setting: with no change it gives
    the base's scores exactly; with a wider blur, smoother maps; the base is not fitted again; without the base row
    finished it stops and names the order to run them in."""
    import json

    suite = _script("suite")
    monkeypatch.syspath_prepend(str(BENCH))
    monkeypatch.setitem(suite.ROWS, "pc-same", suite.rescored("pc-default"))
    monkeypatch.setitem(suite.ROWS, "pc-blur8", suite.rescored("pc-default", smooth_sigma=8.0))
    base = ["suite.py", "--out", str(tmp_path), "--size", "32", "--product", f"plate={mvtec_dir}", "--rows"]
    monkeypatch.setattr(sys, "argv", [*base, "pc-blur8"])
    with pytest.raises(SystemExit, match="run --rows pc-default pc-blur8"):
        suite.main()
    monkeypatch.setattr(sys, "argv", [*base, "pc-default", "pc-same", "pc-blur8"])
    suite.main()
    folder = tmp_path / "32" / "plate"
    scores = {r: np.load(folder / r / "scores.npz") for r in ("pc-default", "pc-same", "pc-blur8")}
    rows = {r: json.loads((folder / r / "row.json").read_text()) for r in scores}
    np.testing.assert_array_equal(scores["pc-same"]["test_scores"], scores["pc-default"]["test_scores"])
    assert rows["pc-blur8"]["rescores"] == "pc-default" and rows["pc-blur8"]["changes"] == {"smooth_sigma": 8.0}
    assert rows["pc-blur8"]["train_cpu_s"] == rows["pc-default"]["train_cpu_s"]
    assert rows["pc-blur8"]["settings"]["smooth_sigma"] == 8.0

    def roughness(maps):  # mean absolute step between neighbouring pixels, in map units
        maps = maps.astype(np.float32)
        return float(np.abs(np.diff(maps, axis=-1)).mean() / (np.abs(maps).mean() + 1e-12))

    assert roughness(scores["pc-blur8"]["test_maps"]) < roughness(scores["pc-default"]["test_maps"])


def test_a_fair_row_fits_and_its_nested_scoring_setting_is_rescored(mvtec_dir, tmp_path, monkeypatch):
    """A FAIR row trains its steps; a re-scored row with ``scoring.k_color`` changes only that field of the nested
    scoring settings: without the colour term the maps are the structure term alone, so no higher anywhere."""
    import json

    suite = _script("suite")
    monkeypatch.syspath_prepend(str(BENCH))
    monkeypatch.setitem(suite.ROWS, "fair-tiny", suite.fair(4, 2, 1e-3))
    monkeypatch.setitem(suite.ROWS, "fair-tiny-k0", suite.rescored("fair-tiny", **{"scoring.k_color": 0.0}))
    monkeypatch.setitem(suite.ROWS, "fair-tiny-k1", suite.rescored("fair-tiny", **{"scoring.k_color": 1.0}))
    monkeypatch.setattr(sys, "argv", ["suite.py", "--out", str(tmp_path), "--size", "32", "--product",
                                      f"plate={mvtec_dir}", "--rows", "fair-tiny", "fair-tiny-k0", "fair-tiny-k1"])
    suite.main()
    folder = tmp_path / "32" / "plate"
    rows = {r: json.loads((folder / r / "row.json").read_text()) for r in ("fair-tiny", "fair-tiny-k0", "fair-tiny-k1")}
    assert rows["fair-tiny"]["steps"] == 2
    base, k0 = rows["fair-tiny"]["settings"]["scoring"], rows["fair-tiny-k0"]["settings"]["scoring"]
    assert k0 == {**base, "k_color": 0.0} and base["k_color"] > 0
    assert rows["fair-tiny-k0"]["changes"] == {"scoring.k_color": 0.0}
    maps = {r: np.load(folder / r / "scores.npz")["test_maps"].astype(np.float32) for r in rows}
    assert (maps["fair-tiny-k0"] <= maps["fair-tiny-k1"] + 1e-3).all()
    assert (maps["fair-tiny-k1"] - maps["fair-tiny-k0"]).max() > 1e-3  # the colour term is there to remove


def test_tune_rows_ranks_the_suite_rows_of_a_product_by_tunes_rule(mvtec_dir, tmp_path, monkeypatch):
    """bench_tune_rows.py on the suite's finished rows: every row scored on tune's proxy set and ranked by
    TuneRow.rank_key, the real figures beside the proxy ones."""
    import json

    from fair_edge.training.tune_candidates import Candidate
    from fair_edge.training.tune_results import TuneRow

    suite, tune_rows = _script("suite"), _script("bench_tune_rows")
    monkeypatch.syspath_prepend(str(BENCH))
    monkeypatch.setattr(sys, "argv", ["suite.py", "--out", str(tmp_path), "--size", "32", "--rows", "pc-default",
                                      "pc-plain", "--product", f"plate={mvtec_dir}"])
    suite.main()
    folder = tmp_path / "32" / "plate"
    monkeypatch.setattr(sys, "argv", ["bench_tune_rows.py", str(mvtec_dir), "--out", str(folder), "--rows",
                                      "pc-default", "pc-plain"])
    tune_rows.main()
    result = json.loads((folder / "tune_rows.json").read_text())
    table = result["table"]
    assert [t["name"] for t in table] in (["pc-default", "pc-plain"], ["pc-plain", "pc-default"])
    assert result["chosen"] == table[0]["name"] and (folder / "proxy").is_dir()
    keys = [TuneRow(Candidate(t["name"], None, 0, None), "done", t["proxy_auroc"], t["proxy_catch"],
                    t["proxy_catch_5pct"], 0.0, "").rank_key() for t in table]
    assert keys == sorted(keys, reverse=True)
    for t in table:
        assert t["real_auroc"] == json.loads((folder / t["name"] / "row.json").read_text())["image_auroc"]


@pytest.mark.parametrize("script", sorted(p.stem for p in BENCH.glob("*.py")))
def test_every_benchmark_script_imports(script):
    """A benchmark that no test runs must still import: a module moved in the library breaks it at once here."""
    _script(script)
