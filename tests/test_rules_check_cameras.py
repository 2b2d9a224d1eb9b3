"""`fair-edge rules check` on a station file of several cameras: one camera at a time (--camera NAME), with that
camera's bundle, ROI, threshold and regions (``view_config``); a cell file without --camera is refused naming its
cameras (it was checked with the station's settings, none of the cameras')."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from fair_edge.cli import app
from fair_edge.errors import ConfigError


def rules_check(*args: str):
    return CliRunner().invoke(app, ["rules", "check", *map(str, args)], terminal_width=200)


@pytest.fixture()
def corner_roi(tmp_path) -> Path:
    """A 48 x 48 ROI (the plates' size) inspecting only the top-left 8 x 8 corner."""
    mask = np.zeros((48, 48), np.uint8)
    mask[:8, :8] = 255
    path = tmp_path / "corner.png"
    cv2.imwrite(str(path), mask)
    return path


def rounded(value):
    """``value`` (a report's rows) with every float to 4 decimals: two runs of one graph score the same image a
    few 1e-7 apart where ONNX Runtime's threads split a reduction differently (seen on a loaded AVX-512 machine)."""
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v) for v in value]
    return value


def write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_cell_file_is_checked_with_the_named_cameras_roi_threshold_and_regions(station_bundles, conveyor_dir,
                                                                                   corner_roi, tmp_path):
    """--camera side gives the report of a one-camera file holding side's settings; --camera top the station's."""
    bundle = str(station_bundles[0].root)
    station_regions = {"mm_per_px": 0.1, "default": {"min_area_mm2": 0.5}}
    side = {"roi": str(corner_roi), "threshold": 0.01, "regions": {"default": {"min_area_px": 50}}}
    cell = write(tmp_path / "cell.yaml", {
        "bundle": bundle, "decision": {"threshold": 0.9}, "regions": station_regions, "group": {"match": "sequence"},
        "cameras": [{"name": "top", "source": str(conveyor_dir)},
                    {"name": "side", "source": str(conveyor_dir), **side}]})
    as_side = write(tmp_path / "side.yaml", {"bundle": bundle, "decision": {"roi": side["roi"], "threshold": 0.01},
                                             "regions": {**station_regions, **side["regions"]}})
    as_top = write(tmp_path / "top.yaml", {"bundle": bundle, "decision": {"threshold": 0.9},
                                           "regions": station_regions})
    reports = {}
    for name, args in (("side", [cell, conveyor_dir, "--camera", "side"]), ("as_side", [as_side, conveyor_dir]),
                       ("top", [cell, conveyor_dir, "--camera", "top"]), ("as_top", [as_top, conveyor_dir])):
        out = tmp_path / f"{name}.json"
        result = rules_check(*args, "--json", out)
        assert result.exit_code == 0, result.output
        reports[name] = json.loads(out.read_text())
    assert reports["side"]["camera"] == "side" and reports["as_side"]["camera"] is None
    assert reports["side"]["threshold"] == 0.01 and reports["top"]["threshold"] == 0.9
    for camera in ("side", "top"):
        mine, alone = reports[camera], reports[f"as_{camera}"]
        assert rounded(mine["rows"]) == rounded(alone["rows"]) and mine["fired"] == alone["fired"], camera
    assert set(reports["side"]["fired"]) <= {"default/min_area_px"}
    assert "default/min_area_mm2" in reports["top"]["fired"]
    assert reports["side"]["rows"] != reports["top"]["rows"]   # the ROI, threshold and rules made a difference
    said = " ".join(rules_check(cell, conveyor_dir, "--camera", "side").output.split())
    assert "rules check (camera side): threshold 0.01" in said


def test_a_cell_file_needs_camera_and_a_one_camera_file_refuses_it(station_bundles, conveyor_dir, tmp_path):
    from fair_edge.station.config import load_station
    from fair_edge.station.rules_check import check_frames

    bundle = str(station_bundles[0].root)
    cell = write(tmp_path / "cell.yaml", {"bundle": bundle, "group": {"match": "sequence"},
                                          "cameras": [{"name": "top", "source": "0"}, {"name": "side", "source": "1"}]})
    result = rules_check(cell, conveyor_dir)
    assert result.exit_code == 2
    said = " ".join(result.output.split())
    assert "several cameras (top, side)" in said and "--camera top" in said
    with pytest.raises(ConfigError, match=r"several cameras \(top, side\)"):   # the library refuses it too
        check_frames(load_station(cell), [])
    result = rules_check(cell, conveyor_dir, "--camera", "front")
    assert result.exit_code == 2
    assert "expected one of the station file's cameras (top, side), found front" in " ".join(result.output.split())
    single = write(tmp_path / "single.yaml", {"bundle": bundle})
    result = rules_check(single, conveyor_dir, "--camera", "top")
    assert result.exit_code == 2 and "leave --camera out" in " ".join(result.output.split())
    help_text = " ".join(CliRunner().invoke(app, ["rules", "check", "--help"], terminal_width=200).output.split())
    assert "--camera" in help_text and "required there" in help_text and "cameras:" in help_text
