"""Region rules per camera in a cell: each ``cameras[i]`` may carry its own ``regions:`` (its keys over the station's:
scale, frame, zones, rules), ``view_config`` hands it to that camera, and each camera's ViewDecider judges with it.
A camera whose frame differs from the station's zones is refused on load, naming the camera, both sizes and the fix."""

from __future__ import annotations

import json
import threading
import types
from pathlib import Path

import cv2
import numpy as np
import pytest

from fair_edge.errors import ConfigError
from fair_edge.station.config import StationConfig, view_config

SEAL_64 = [[16, 16], [40, 16], [40, 40], [16, 40]]   # a zone drawn on the top camera's 64 x 64 frames
SEAL_128 = [[2 * x, 2 * y] for x, y in SEAL_64]      # the same place on the side camera's 128 x 128 frames


def cell_file(side: dict | None = None, **station_regions) -> dict:
    """A station file of two cameras, ``top`` and ``side`` (side's ``regions:`` = ``side``), the station's
    ``regions:`` = ``station_regions``."""
    cameras = [{"name": "top", "source": "top"}, {"name": "side", "source": "side",
                                                   **({} if side is None else {"regions": side})}]
    return {"bundle": "b", "cameras": cameras, "group": {"match": "sequence"}, "regions": station_regions}


def regions_of(cfg: StationConfig, camera: str):
    """What the camera judges with: its ``view_config``'s regions."""
    return view_config(cfg, next(v for v in cfg.cameras if v.name == camera)).regions


def test_a_camera_sets_its_own_scale_and_keeps_the_stations_other_keys():
    cfg = StationConfig.from_dict(cell_file({"mm_per_px": 0.05}, pixel_threshold=0.5, mm_per_px=0.1,
                                            default={"min_area_mm2": 1.0}))
    top, side = regions_of(cfg, "top"), regions_of(cfg, "side")
    assert top == cfg.regions and top.mm_per_px == 0.1
    assert side.mm_per_px == 0.05 and (side.pixel_threshold, side.default) == (0.5, cfg.regions.default)
    # the scale given by two points replaces the station's mm_per_px (one camera scale, not "given twice")
    cfg = StationConfig.from_dict(cell_file({"scale": {"points": [[0, 0], [100, 0]], "mm": 5}}, mm_per_px=0.1))
    assert regions_of(cfg, "side").mm_per_px == pytest.approx(0.05) and regions_of(cfg, "top").mm_per_px == 0.1
    # default: and zones: are replaced whole; regions: null is the station's
    cfg = StationConfig.from_dict(cell_file({"default": {"min_area_px": 9}}, default={"min_area_mm2": 1.0},
                                            mm_per_px=0.1))
    assert regions_of(cfg, "side").default.limits == (("min_area_px", 9.0),)
    assert StationConfig.from_dict(cell_file(None, mm_per_px=0.1)).cameras[1].regions is None


def test_a_camera_of_another_frame_size_gets_its_own_zones_or_the_file_is_refused():
    station = {"mm_per_px": 0.1, "frame": [64, 64],
               "zones": [{"name": "seal", "polygon": SEAL_64, "min_area_mm2": 0.5}]}
    with pytest.raises(ConfigError) as refused:
        StationConfig.from_dict(cell_file({"mm_per_px": 0.05, "frame": [128, 128]}, **station))
    message = str(refused.value)
    assert message.startswith("cameras[1] (side).regions.frame: this camera's frames are 128 x 128")
    assert "zones (seal) were drawn on 64 x 64 frames" in message and "its own zones:" in message
    own = {"mm_per_px": 0.05, "frame": [128, 128],
           "zones": [{"name": "seal", "polygon": SEAL_128, "min_area_mm2": 0.5}]}
    cfg = StationConfig.from_dict(cell_file(own, **station))
    side = regions_of(cfg, "side")
    assert side.frame == (128, 128) and side.zones[0].polygon[2] == (80.0, 80.0)
    assert regions_of(cfg, "top").frame == (64, 64)
    cfg = StationConfig.from_dict(cell_file({"frame": [128, 128], "zones": []}, **station))
    assert regions_of(cfg, "side").zones == () and regions_of(cfg, "top").zones[0].name == "seal"
    # the camera's own zones are checked against its own frame, the error naming the camera
    with pytest.raises(ConfigError, match=r"cameras\[1\] \(side\), its regions: over the station's: "
                                          r"regions\.zones\[0\]\.polygon \(seal\): point \[80, 32\] lies outside the "
                                          r"64 x 64 frame"):
        StationConfig.from_dict(cell_file({"zones": [{"name": "seal", "polygon": SEAL_128}]}, **station))
    with pytest.raises(ConfigError, match=r"cameras\[1\] \(side\)\.regions\.zone: unknown setting "
                                          r"\(did you mean 'zones'\?\)"):
        StationConfig.from_dict(cell_file({"zone": []}, **station))


def test_a_cameras_zone_mask_path_may_start_with_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    mask = np.zeros((128, 128), np.uint8)
    mask[32:80, 32:80] = 255
    cv2.imwrite(str(tmp_path / "seal.png"), mask)
    cfg = StationConfig.from_dict(cell_file({"frame": [128, 128], "zones": [{"name": "seal", "mask": "~/seal.png"}]}))
    zone = regions_of(cfg, "side").zones[0]
    assert zone.mask == tmp_path / "seal.png" and zone.mask_pixels[40, 40] and not zone.mask_pixels[0, 0]


def test_a_swap_to_a_bundle_the_cameras_own_rules_cannot_judge_is_refused(station_bundles, monkeypatch):
    """The console's swap checked the station's regions: only: a camera with rules of its own took a bundle without a
    pixel threshold, its regions then judged by the old model's."""
    from dataclasses import replace

    from fair_edge.station import cell_console

    monkeypatch.setattr(cell_console, "read_bundle", lambda path: replace(station_bundles[0], pixel_threshold=None))
    monkeypatch.setattr(cell_console, "open_scorer", lambda *args: pytest.fail("a scorer opened for a refused bundle"))
    loader = cell_console.CellLoader(StationConfig.from_dict(cell_file({"default": {"min_area_px": 50}})))
    with pytest.raises(ConfigError, match="sets rules but bundle .* has no calibrated pixel threshold"):
        loader.load_views(Path("old-bundle"), ("side",))


class RedScorer:
    """A frame scorer whose anomaly map is the frame's red channel / 255 on a 32 x 32 grid (area-averaged), so the
    regions are where the red squares are; score = the map's max."""

    reason = "red channel"
    graph_threshold = None
    backend = types.SimpleNamespace(close=lambda: None)

    def infer_frames(self, frames):
        maps = np.stack([cv2.resize(f[:, :, 2].astype(np.float32) / 255.0, (32, 32), interpolation=cv2.INTER_AREA)
                         for f in frames])
        return maps, maps.reshape(len(maps), -1).max(axis=1)


def frames_of(size: int, folder: Path) -> Path:
    """Three frames of ``size`` px, one camera's view of three parts: clean; a square of 1/8 the frame inside
    the seal zone; the same square outside every zone. Seen by a camera of 6.4 mm / ``size`` mm per px, the square is
    0.8 x 0.8 mm (0.64 mm²) on both cameras."""
    folder.mkdir()
    side, inside, outside = size // 8, 3 * size // 8, 3 * size // 4
    for i, at in enumerate((None, inside, outside)):
        image = np.zeros((size, size, 3), np.uint8)
        if at is not None:
            image[at:at + side, at:at + side, 2] = 255
        cv2.imwrite(str(folder / f"{i:03d}.png"), image)
    return folder


def test_each_camera_judges_with_its_own_scale_frame_and_zones(station_bundles, tmp_path):
    """top: 64 x 64 px at 0.1 mm/px; side: 128 x 128 px of the same field, 0.05 mm/px, zones drawn on its frames.
    Both measure the same defect 0.64 mm²: NG in the seal zone (>= 0.5 mm²), OK outside (< 1 mm²), no frame an
    error. One regions: section for both judged every side frame an error (zones of 64 x 64) or measured 2.56 mm²."""
    from fair_edge.station.cell import run_cell

    data = {"bundle": str(station_bundles[0].root), "output": str(tmp_path / "out"), "console": {"enabled": False},
            "decision": {"threshold": 0.5}, "group": {"match": "sequence"},
            "cameras": [{"name": "top", "source": str(frames_of(64, tmp_path / "top"))},
                        {"name": "side", "source": str(frames_of(128, tmp_path / "side")),
                         "regions": {"mm_per_px": 0.05, "frame": [128, 128],
                                     "zones": [{"name": "seal", "polygon": SEAL_128, "min_area_mm2": 0.5}]}}],
            "regions": {"pixel_threshold": 0.5, "mm_per_px": 0.1, "frame": [64, 64], "default": {"min_area_mm2": 1.0},
                        "zones": [{"name": "seal", "polygon": SEAL_64, "min_area_mm2": 0.5}]}}
    run_cell(StationConfig.from_dict(data), threading.Event(), scorer=RedScorer())
    rows = [json.loads(line) for line in (tmp_path / "out" / "verdicts.jsonl").read_text().splitlines()]
    views = {(r["camera"], r["seq"]): r for r in rows if r.get("kind") != "part"}
    parts = {r["part"]: r for r in rows if r.get("kind") == "part"}
    assert len(views) == 6 and not any(r.get("error") for r in views.values())
    for camera in ("top", "side"):
        assert not views[camera, 0]["ng"] and not views[camera, 0].get("regions")
        (inside,) = views[camera, 1]["regions"]
        (outside,) = views[camera, 2]["regions"]
        assert (inside["zone"], inside["area_mm2"], outside["zone"], outside["area_mm2"]) == (
            "seal", pytest.approx(0.64), "default", pytest.approx(0.64)), camera
        assert views[camera, 1]["ng"] and not views[camera, 2]["ng"], camera
    assert [parts[i]["ng"] for i in range(3)] == [False, True, False]
    assert set(parts[1]["ng_views"]) <= {"top", "side"} and parts[1]["ng_views"]   # decided by the first NG view in
