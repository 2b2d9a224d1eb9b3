"""Defect regions end to end: the build records the pixel threshold, the Inspector finds the planted blob
with a real (tiny, CPU) bundle and its rules decide the verdict; the verdict log carries regions and reasons."""

import json

import cv2
import numpy as np
import pytest

from fair_edge.errors import ConfigError
from fair_edge.records import Frame
from fair_edge.regions import DEFAULT_PIXEL_QUANTILE
from fair_edge.runtime.selection import select_backend
from fair_edge.station.config import StationConfig
from fair_edge.station.inspector import Inspector
from fair_edge.station.bundles import open_regions
from fair_edge.station.zones import RegionJudge, RegionSettings
from fair_edge.training.data import load_dataset
from fair_edge.training.pixels import read_image


@pytest.fixture(scope="module")
def plates(mvtec_dir):
    split = load_dataset(mvtec_dir)
    defects = [(read_image(s.path), cv2.imread(str(s.mask), cv2.IMREAD_GRAYSCALE) > 0) for s in split.test if s.label]
    normals = [read_image(s.path) for s in split.test if not s.label]
    return defects, normals


def inspector_for(bundle, section: dict) -> Inspector:
    scorer = select_backend(bundle, "onnxruntime")
    judge = RegionJudge(RegionSettings.from_dict(section), bundle.pixel_threshold.value)
    return Inspector(capture=None, scorer=scorer, threshold=bundle.threshold.value, regions=judge)


def test_the_build_records_a_pixel_threshold_from_normal_maps(station_bundles):
    bundle = station_bundles[0]
    pt = bundle.pixel_threshold
    assert pt is not None and pt.quantile == DEFAULT_PIXEL_QUANTILE and pt.n_images == 6
    assert pt.n_pixels == 6 * bundle.image_size ** 2 and 0 < pt.value <= bundle.threshold.value
    manifest = json.loads((bundle.root / "bundle.json").read_text())
    assert manifest["pixel_threshold"]["value"] == pt.value


def test_the_inspector_finds_the_blob_where_it_is_and_rules_decide(station_bundles, plates):
    defects, normals = plates
    # 48 x 48 plates at 0.1 mm/px: a blob of radius 5..8 px covers 0.8..2 mm²
    inspector = inspector_for(station_bundles[0], {"mm_per_px": 0.1, "frame": [48, 48],
                                                   "default": {"min_area_mm2": 0.5}})
    verdicts = inspector.inspect([Frame(i, 0.0, img) for i, (img, _) in enumerate(defects)])
    found = 0
    for v, (_, mask) in zip(verdicts, defects):
        assert v.error == ""
        if v.regions:
            x, y = v.regions[0].centroid
            ys, xs = np.nonzero(mask)
            found += int(np.hypot(x - xs.mean(), y - ys.mean()) < 8)   # the largest region sits on the blob
            assert v.ng == any(r.area_mm2 >= 0.5 for r in v.regions)
            assert v.ng == bool(v.hits)
    assert found >= 4, [(v.regions[:1], v.score) for v in verdicts]
    normal_verdicts = inspector.inspect([Frame(100 + i, 0.0, img) for i, img in enumerate(normals)])
    assert sum(v.ng for v in normal_verdicts) <= 1
    # with rules, a defect plate whose regions are all small passes: an ignore-everything zone passes every plate
    everything = inspector_for(station_bundles[0], {"mm_per_px": 0.1, "frame": [48, 48], "default": {"min_area_mm2": 0.5},
                                                    "zones": [{"name": "all", "polygon": [[0, 0], [48, 0], [48, 48], [0, 48]],
                                                               "ignore": True}]})
    assert not any(v.ng for v in everything.inspect([Frame(i, 0.0, img) for i, (img, _) in enumerate(defects)]))


def test_a_frame_of_another_size_than_the_zones_is_rejected_with_the_reason(station_bundles, plates):
    inspector = inspector_for(station_bundles[0], {"frame": [64, 64], "default": {"min_area_px": 1e9},
                                                   "zones": [{"name": "a", "polygon": [[0, 0], [9, 0], [9, 9]]}]})
    (v,) = inspector.inspect([Frame(0, 0.0, plates[1][0])])
    assert v.ng and "regions: frame is 48 x 48 but the zones were drawn for 64 x 64" in v.error


def test_an_old_bundle_without_a_pixel_threshold_turns_regions_off_or_refuses_rules(station_bundles, caplog):
    from dataclasses import replace

    old = replace(station_bundles[0], pixel_threshold=None)
    assert open_regions(StationConfig(), old) is None
    assert "defect regions off" in caplog.text
    ruled = StationConfig(regions=RegionSettings.from_dict({"default": {"min_area_px": 4}}))
    with pytest.raises(ConfigError, match="has no calibrated pixel threshold.*regions.pixel_threshold"):
        open_regions(ruled, old)
    set_here = StationConfig(regions=RegionSettings.from_dict({"pixel_threshold": 0.3}))
    assert open_regions(set_here, old).pixel_threshold == 0.3


def test_eval_reports_region_level_results_with_masks(trained, mvtec_dir, tmp_path):
    from fair_edge.training.evaluate import evaluate

    result = evaluate(trained[0], load_dataset(mvtec_dir), tmp_path)
    regions = result["regions"]
    assert regions["defects"] == 6 and regions["defects_found"] + regions["defects_missed"] == 6
    assert regions["defects_found"] >= 4 and regions["pixel_threshold_source"] == "test set's normal maps"
    rows = (tmp_path / "regions.csv").read_text().splitlines()
    assert rows[0] == "path,label,defects,found,missed,regions,false_regions" and len(rows) == 13
    given = evaluate(trained[0], load_dataset(mvtec_dir), tmp_path / "given", pixel_threshold=1e9)["regions"]
    assert given["defects_found"] == 0 and given["false_regions"] == 0 and given["pixel_threshold_source"] == "given"


def test_rules_check_replays_a_folder_and_says_what_each_rule_did(station_bundles, conveyor_dir, mvtec_dir, tmp_path):
    import yaml
    from typer.testing import CliRunner

    from fair_edge.cli import app

    station = tmp_path / "station.yaml"
    station.write_text(yaml.safe_dump({"bundle": str(station_bundles[0].root), "regions": {
        "mm_per_px": 0.1, "frame": [48, 48], "default": {"min_area_mm2": 0.5}}}))
    out = tmp_path / "rules.json"
    r = CliRunner().invoke(app, ["rules", "check", str(station), str(conveyor_dir), "--json", str(out)],
                           terminal_width=200)
    assert r.exit_code == 0, r.output
    report = json.loads(out.read_text())
    assert report["images"] == 12 and report["ng_by_rules"] == sum(row["ng"] for row in report["rows"])
    assert report["fired"].get("default/min_area_mm2", 0) == report["ng_by_rules"] >= 4
    defect_rows = [row for row in report["rows"] if "defect" in row["image"]]
    assert sum(row["ng"] for row in defect_rows) >= 4
    assert "NG by the rules" in r.output and "default/min_area_mm2: fired on" in r.output and report["rates"] is None
    # a labelled test set: caught and false-reject rates by score and by the rules
    r = CliRunner().invoke(app, ["rules", "check", str(station), str(mvtec_dir), "--json", str(out)], terminal_width=200)
    assert r.exit_code == 0, r.output
    rates = json.loads(out.read_text())["rates"]
    assert rates["by_rules"]["caught"] >= 4 / 6 and 0 <= rates["by_rules"]["false_rejects"] <= 1
    assert set(rates["by_score"]) == {"caught", "false_rejects"} and "by rules: caught" in r.output
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"bundle": str(station_bundles[0].root), "regions": {"default": {"min_area_mm2": 1}}}))
    r = CliRunner().invoke(app, ["rules", "check", str(bad), str(conveyor_dir)])
    assert r.exit_code == 2 and "regions.default.min_area_mm2: a rule in mm needs the camera scale" in r.output


def test_a_running_station_puts_regions_and_reasons_in_the_log_the_ng_images_and_the_console(
        station_bundles, conveyor_dir, tmp_path):
    import httpx

    from console_station import RunningStation, station_config

    regions = RegionSettings.from_dict({"mm_per_px": 0.1, "frame": [48, 48], "default": {"min_area_mm2": 0.5},
                                        "zones": [{"name": "corner", "polygon": [[0, 0], [8, 0], [8, 8], [0, 8]],
                                                   "ignore": True}]})
    cfg = station_config(station_bundles[0].root, conveyor_dir, tmp_path, regions=regions)
    with RunningStation(cfg) as st:
        st.wait_for(lambda: any(v.hits for v in st.console.feed.ng), what="an NG part rejected by a rule")
        state = httpx.get(st.url + "api/state").json()
        assert "reason" in state["latest"] and "regions" in state["latest"]
        gallery = httpx.get(st.url + "api/gallery").json()["parts"]
        assert any(p["reason"].startswith("region ") and "in zone default ≥ 0.5 mm²" in p["reason"] for p in gallery)
        seq = next(v.seq for v in st.console.feed.ng if v.hits)
        image = httpx.get(st.url + f"api/part/{seq}.jpg")
        assert image.status_code in (200, 404)   # 404 once it left the keep_frames window
        st.wait_for(lambda: any(r.get("hits") for r in st.verdicts()), what="a logged rule hit")
    rows = [r for r in st.verdicts() if r.get("inspected", True)]
    fired = [r for r in rows if r.get("hits")]
    assert fired and all(r["ng"] for r in fired) and not any(r["ng"] for r in rows if not r.get("hits") and not r.get("error"))
    assert fired[0]["regions"][fired[0]["hits"][0]["region"]]["area_mm2"] >= 0.5
    assert fired[0]["reason"] == "; ".join(h["reason"] for h in fired[0]["hits"])
    assert (tmp_path / "ng").is_dir() and any(p.name.endswith("_overlay.png") for p in (tmp_path / "ng").iterdir())


def test_rules_check_json_creates_its_folder(station_bundles, conveyor_dir, tmp_path):
    """--json into a folder that does not exist yet crashed with a traceback after the whole replay."""
    import yaml
    from typer.testing import CliRunner

    from fair_edge.cli import app

    station = tmp_path / "station.yaml"
    station.write_text(yaml.safe_dump({"bundle": str(station_bundles[0].root), "regions": {
        "mm_per_px": 0.1, "frame": [48, 48], "default": {"min_area_mm2": 0.5}}}))
    out = tmp_path / "not" / "yet" / "rules.json"
    r = CliRunner().invoke(app, ["rules", "check", str(station), str(conveyor_dir), "--json", str(out)])
    assert r.exit_code == 0, r.output
    assert json.loads(out.read_text())["images"] == 12
    blocked = tmp_path / "a_file"
    blocked.write_text("")
    r = CliRunner().invoke(app, ["rules", "check", str(station), str(conveyor_dir), "--json", str(blocked / "r.json")])
    assert r.exit_code == 2 and "--json" in r.output and "cannot create its folder" in " ".join(r.output.split())


def test_rules_check_scores_with_the_station_files_backend_unless_told(station_bundles, conveyor_dir, tmp_path,
                                                                       monkeypatch):
    """--backend defaulted to onnxruntime, ignoring the station file's backend: (the library's None: the file's)."""
    import yaml
    from typer.testing import CliRunner

    from fair_edge.cli import app
    from fair_edge.station import rules_check

    asked = []

    def fake_check(cfg, frames, backend=None):
        asked.append((cfg.backend, backend))
        raise ConfigError("stop here")

    monkeypatch.setattr(rules_check, "check_frames", fake_check)
    station = tmp_path / "station.yaml"
    station.write_text(yaml.safe_dump({"bundle": str(station_bundles[0].root), "backend": "torch-cpu"}))
    CliRunner().invoke(app, ["rules", "check", str(station), str(conveyor_dir)])
    CliRunner().invoke(app, ["rules", "check", str(station), str(conveyor_dir), "--backend", "onnxruntime"])
    assert asked == [("torch-cpu", None), ("torch-cpu", "onnxruntime")]
    help_text = " ".join(CliRunner().invoke(app, ["rules", "check", "--help"], terminal_width=200).output.split())
    assert "station file's" in help_text


def test_a_failure_inside_region_judging_is_decided_fail_safe_and_counted(station_bundles, plates, monkeypatch, caplog):
    """Only a ConfigError was caught: any other exception (a zone mask that changed size under a running station
    raised an IndexError) ended the run. Now the frame is NG with the reason, logged, and counted."""
    inspector = inspector_for(station_bundles[0], {"default": {"min_area_px": 1e9}})
    judge = inspector.decider_for(Frame(0, 0.0, plates[1][0])).regions

    def broken(*_args):
        raise IndexError("boolean index did not match")

    monkeypatch.setattr(judge, "judge", broken)
    v1, v2 = inspector.inspect([Frame(0, 0.0, plates[1][0]), Frame(1, 0.0, plates[1][1])])
    assert v1.ng and v2.ng and v1.error == "regions: judging failed: IndexError: boolean index did not match"
    assert inspector.summary.region_errors == 2 and inspector.summary.to_dict()["region_errors"] == 2
    assert caplog.text.count("Traceback") == 1   # the first failure with its traceback, the others one line each
