"""A fused bundle (``fair-edge fuse``) scores in units of its members' normal spread: normal parts about -2 .. 0, its
calibrated threshold often below 0. The console refused every threshold <= 0 ("expected a finite number > 0"), the
calibrated one included, from the tune page and the API; a single bundle's scores never go below 0, so there it
still refuses one. A fused station starts with its own threshold below 0 (the station file, ``--threshold``), and
its "regions off" warning names what applies to a fused bundle (``fair-edge build`` cannot make one)."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from console_station import RunningStation, station_config
from fair_edge.cli import app
from fair_edge.console.actions import StationLinks
from fair_edge.errors import ConfigError
from fair_edge.runtime.backends import close_scorer
from fair_edge.runtime.fusion import FusedScorer
from fair_edge.station.config import load_station
from test_console_units import api, one_camera_console, verdict

BELOW = -0.0018   # a fused bundle's threshold as the audit's fusion.json had it (-0.00184)


@pytest.fixture
def fused_scorer(fused_station_bundle):
    scorer = FusedScorer(fused_station_bundle, "onnxruntime")
    yield scorer
    close_scorer(scorer)


def post_threshold(client, value, confirm=True):
    return client.post("/api/threshold", json={"threshold": value, "who": "ann", "confirm": confirm})


def test_the_console_takes_a_threshold_below_zero_for_a_fused_model_only(tmp_path, fused_scorer):
    """On the model a fused bundle runs: a threshold below 0 (or 0) is projected and applied, still only with the
    explicit confirmation; what is not a finite number is refused naming it. On a single bundle's model (the
    stand-in's, scores >= 0) a threshold <= 0 is refused as before, nothing changed."""
    station = tmp_path / "station.yaml"
    station.write_text(yaml.safe_dump({"bundle": str(tmp_path), "decision": {"threshold": None}}))
    console, inspector = one_camera_console(tmp_path, StationLinks(load_station=load_station), station_file=station)
    inspector.scorer, inspector.threshold = fused_scorer, BELOW
    for seq, score in enumerate(np.linspace(-2.0, 0.5, 40)):
        console.observe(None, verdict(seq, float(score), ng=bool(score > BELOW), threshold=BELOW), None)
    client = api(console)
    tuned = client.get("/api/tune", params={"threshold": -0.5})
    assert tuned.status_code == 200, tuned.text
    assert tuned.json()["proposed"]["threshold"] == -0.5 and tuned.json()["current"] == BELOW
    passed = [v.score for v in console.feed.recent if not v.ng]   # the normal parts: every one passed at BELOW
    assert tuned.json()["proposed"]["false_reject_rate"] == pytest.approx(np.mean(np.array(passed) > -0.5))
    assert 0 < tuned.json()["proposed"]["false_reject_rate"] < 1
    assert post_threshold(client, -0.5, confirm=False).status_code == 400   # still only with the confirmation
    assert inspector.switch.take() is None
    for value in (BELOW, -0.5, 0):   # the calibrated one itself, one below it, 0
        r = post_threshold(client, value)
        assert r.status_code == 200, r.text
        assert inspector.switch.take().threshold == value
        assert yaml.safe_load(station.read_text())["decision"]["threshold"] == value
    refused = [post_threshold(client, bad) for bad in ("-0.5", None, True, 10 ** 400)]
    refused += [client.post("/api/threshold", content='{"threshold": -Infinity, "who": "ann", "confirm": true}',
                            headers={"Content-Type": "application/json"}),
                client.get("/api/tune", params={"threshold": "nan"})]
    for r in refused:
        assert r.status_code == 400 and r.json()["error"].startswith("threshold: expected a finite number, found"), \
            r.text
    assert inspector.switch.take() is None

    single, plain = one_camera_console(tmp_path / "single")   # the stand-in model: a single bundle's
    client = api(single)
    for value in (-0.5, 0):
        r = post_threshold(client, value)
        assert r.status_code == 400, r.text
        assert r.json()["error"] == f"threshold: expected a finite number > 0, found {value}"
        assert client.get("/api/tune", params={"threshold": value}).status_code == 400
    assert plain.switch.take() is None and not (tmp_path / "single" / "audit.jsonl").exists()


def test_a_fused_station_starts_below_zero_and_its_console_applies_one(fused_station_bundle, conveyor_dir, tmp_path):
    """A station on a fused bundle, its station file setting a threshold below 0, runs at it; the console projects
    and applies another below 0 (confirmed), written to the station file, and the next verdicts use it (was: 400,
    "expected a finite number > 0", for any of them, the calibrated one included)."""
    fused = fused_station_bundle
    station_file = tmp_path / "station.yaml"
    station_file.write_text(yaml.safe_dump({"bundle": str(fused.root), "decision": {"threshold": BELOW}}))
    loaded = load_station(station_file)
    assert loaded.threshold == BELOW
    cfg = station_config(fused.root, conveyor_dir, tmp_path / "out", threshold=loaded.threshold,
                         source_file=station_file)
    with RunningStation(cfg) as st:
        st.wait_for(lambda: len(st.verdicts()) >= 3, what="verdicts of the fused model")
        assert {v["threshold"] for v in st.verdicts()} == {BELOW}
        tune = httpx.get(st.url + "api/tune", params={"threshold": -1.0})
        assert tune.status_code == 200 and tune.json()["proposed"]["threshold"] == -1.0, tune.text
        for value in (fused.threshold.value, -1.0):   # its own calibrated threshold, then one below 0
            applied = httpx.post(st.url + "api/threshold", json={"threshold": value, "who": "ann", "confirm": True})
            assert applied.status_code == 200 and applied.json()["new"] == value, applied.text
        assert yaml.safe_load(station_file.read_text())["decision"]["threshold"] == -1.0
        seen = len(st.verdicts())
        st.wait_for(lambda: any(v["threshold"] == -1.0 for v in st.verdicts()[seen:]), what="verdicts at -1.0")
    assert load_station(station_file).threshold == -1.0   # the file it wrote still loads


def test_fair_edge_run_takes_a_fused_bundles_threshold_below_zero(fused_station_bundle, conveyor_dir, tmp_path):
    """``fair-edge run --threshold`` below 0 on a fused bundle runs at it, its "regions off" warning naming a fix that
    applies to a fused bundle; a station file's ``cameras[].threshold`` below 0 loads too."""
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["run", "--bundle", str(fused_station_bundle.root), "--source", str(conveyor_dir),
                                 "--threshold", str(BELOW), "--max-frames", "3", "--console", "off",
                                 "--backend", "onnxruntime", "--out", str(out)])
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in (out / "verdicts.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and {v["threshold"] for v in rows} == {BELOW}
    # the station's start names a fix that applies (the command's log goes to its stderr, one line a record)
    (regions_off,) = [line for line in r.output.splitlines() if "defect regions off" in line]
    assert_fused_fix(regions_off, fused_station_bundle)
    station = tmp_path / "cell.yaml"
    source = str(conveyor_dir)
    cameras = [{"name": "a", "source": source, "threshold": -0.5}, {"name": "b", "source": source}]
    station.write_text(yaml.safe_dump({"bundle": str(fused_station_bundle.root), "decision": {"threshold": BELOW},
                                       "cameras": cameras}))
    assert [c.threshold for c in load_station(station).cameras] == [-0.5, None]


def assert_fused_fix(text: str, bundle) -> None:
    """``text`` names what applies to a fused bundle without a pixel threshold, and not a rebuild."""
    assert "fair-edge build --normal" not in text, text
    assert "set regions.pixel_threshold in the station file in the fused map's units (its members' normal spread: " \
           f"the pixels above the bundle's threshold, {bundle.threshold.value:.6g}, are the ones" in text, text
    assert "or turn regions off (regions: {enabled: false})" in text, text


def test_a_fused_bundles_regions_warning_names_a_fix_that_applies(fused_station_bundle, caplog):
    """A fused bundle has no pixel threshold: its "regions off" warning, at start and at a swap, and the refusal of
    its rules name regions.pixel_threshold in the fused map's units or regions off (was: rebuild the bundle with
    ``fair-edge build --normal``, which cannot make a fused bundle); a plain bundle built before regions is still
    told to rebuild it."""
    from fair_edge.station.bundles import open_regions, region_pixel_threshold
    from fair_edge.station.config import StationConfig
    from fair_edge.station.zones import RegionSettings, judge_for_bundle

    fused = fused_station_bundle
    with caplog.at_level(logging.WARNING):
        assert open_regions(StationConfig(), fused) is None
        assert judge_for_bundle(RegionSettings(), fused, camera="top") is None
    started, swapped = [r.getMessage() for r in caplog.records if "defect regions off" in r.getMessage()]
    assert started.startswith(f"defect regions off: bundle {fused.root} has no calibrated pixel threshold; ")
    assert swapped.startswith(f"defect regions off (camera top): bundle {fused.root} has no calibrated pixel ")
    for text in (started, swapped):
        assert_fused_fix(text, fused)
    with pytest.raises(ConfigError) as refused:
        region_pixel_threshold(RegionSettings.from_dict({"default": {"min_area_px": 10}}), fused)
    assert_fused_fix(str(refused.value), fused)

    caplog.clear()
    old = SimpleNamespace(root="old_bundle", pixel_threshold=None, map_area=None)   # built before regions
    with caplog.at_level(logging.WARNING):
        assert judge_for_bundle(RegionSettings(), old) is None
    assert caplog.records[-1].getMessage().endswith(
        "set regions.pixel_threshold in the station file or rebuild the bundle with `fair-edge build --normal "
        "HELD_OUT_NORMALS`")
