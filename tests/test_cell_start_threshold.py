"""A station of several cameras checks each camera's console-applied threshold at start (review of de9c759).

A threshold applied from the console to one camera (written to its ``cameras[].threshold``, the audit row naming
the model it was applied on) ran unchanged on another model after the camera's ``bundle:`` was edited and the
station restarted: only a one-camera start (``run_station``) was checked. Now ``run_cell`` checks every camera
after its bundle loads, before any camera opens, as a reload does (``StationActions.check_threshold_pairs``).
"""

from __future__ import annotations

import json
import threading

import cv2
import pytest
import yaml

from export_fixtures import MODEL, make_frames
from fair_edge.errors import ConfigError
from fair_edge.export.build import BuildOptions, build_bundle
from fair_edge.models.checkpoint import Checkpoint
from fair_edge.runtime.hotswap import model_id
from fair_edge.station.cell import run_cell
from fair_edge.station.config import load_station

APPLIED = 0.0001   # the threshold applied from the console to camera top


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, tiny_detector):
    """{"a": the tiny model at 0.5 % false rejects, "b": the same checkpoint calibrated to 20 % (another model id)},
    whole-frame bundles built on 8 held-out normals."""
    root = tmp_path_factory.mktemp("cell-start")
    normals = make_frames(8, seed=3)
    checkpoint = Checkpoint(MODEL, tiny_detector.unet.state_dict())
    built = {name: build_bundle(checkpoint, root / name, BuildOptions(engine=False, false_reject_rate=rate),
                                normal_frames=normals).bundle for name, rate in (("a", 0.005), ("b", 0.2))}
    assert model_id(built["a"]) != model_id(built["b"])
    return built


def two_camera_station(tmp_path, bundles, top_bundle: str):
    """station.yaml of cameras top (bundle ``top_bundle``, threshold APPLIED) and side (bundle a, its own
    threshold), each replaying 2 frames, with the audit row of APPLIED applied from the console to camera top on
    bundle a. Returns the station file."""
    for camera in ("top", "side"):
        (tmp_path / camera).mkdir()
        for i, frame in enumerate(make_frames(2, seed=9)):
            cv2.imwrite(str(tmp_path / camera / f"{i:03d}.png"), frame)
    station, out = tmp_path / "station.yaml", tmp_path / "out"
    station.write_text(yaml.safe_dump({
        "output": str(out), "console": {"enabled": False}, "group": {"match": "sequence"},
        "cameras": [{"name": "top", "source": f"folder:{tmp_path / 'top'}", "bundle": str(bundles[top_bundle].root),
                     "threshold": APPLIED},
                    {"name": "side", "source": f"folder:{tmp_path / 'side'}", "bundle": str(bundles["a"].root)}]}))
    out.mkdir()
    row = {"action": "threshold", "who": "ann", "camera": "top", "old": 0.2, "new": APPLIED,
           "station_file": str(station), "model": model_id(bundles["a"]), "bundle": str(bundles["a"].root),
           "time": "2026-12-06T22:00:00Z"}
    (out / "audit.jsonl").write_text(json.dumps(row) + "\n")
    return station


def test_a_cameras_threshold_applied_on_another_model_is_refused_at_start_naming_the_camera(bundles, tmp_path):
    """Camera top's threshold was applied on model a; its bundle: now names model b. Before, the station started
    and ran b at a's threshold; now the start is refused before any camera opens, naming the camera, both models
    and the fix."""
    station = two_camera_station(tmp_path, bundles, "b")
    with pytest.raises(ConfigError) as refused:
        run_cell(load_station(station), threading.Event())
    text = str(refused.value)
    assert f"cameras (top).threshold {APPLIED:g} was applied from the console on bundle {bundles['a'].root} " \
           f"(model {model_id(bundles['a'])}" in text, text
    assert f"not on bundle {bundles['b'].root} this start would load for camera top (model " \
           f"{model_id(bundles['b'])})" in text, text
    assert f"set cameras (top).threshold for {bundles['b'].root}" in text and "it was not started" in text
    assert not (tmp_path / "out" / "verdicts.jsonl").exists() and not (tmp_path / "out" / "summary.json").exists()


def test_a_camera_still_on_the_model_its_threshold_was_applied_on_starts(bundles, tmp_path):
    station = two_camera_station(tmp_path, bundles, "a")
    summary = run_cell(load_station(station), threading.Event())
    assert {name: c["inspected"] for name, c in summary.cameras.items()} == {"top": 2, "side": 2}
