"""Region sizes hold at one frame size: ``regions.frame`` is checked on every frame whenever it is set, zones or not.

A camera scale measured at 96 x 96 (0.1 mm/px) reads a defect of 35.6 mm² as 8.3 mm² after 2x2 binning (48 x 48), so
``min_area_mm2: 20`` passed it as OK. With ``frame: [96, 96]`` and no zones, nothing checked the size before: such
a frame is now a region error (logged once per camera and size, counted), NG fail-safe where rules decide, decided
by its score where regions only report. A camera scale without ``frame`` still loads (warning suggesting ``frame:``)
and a frame of another size than the first is logged once per size.

The frames are scored by ``RedScorer`` (test_regions_live): its anomaly map is the frame's red channel on a 32 x 32
grid, so a red s x s square is one region of s² frame px²."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from fair_edge.errors import ConfigError
from fair_edge.records import Frame
from fair_edge.station.inspector import Inspector, ViewDecider
from fair_edge.station.zones import RegionJudge, RegionSettings
from test_regions_live import PIXEL_THRESHOLD, RedScorer, red_frame

BINNED_HW = (48, 48)
# 0.1 mm/px measured on 96 x 96 frames; a region of 20 mm² (2000 px² at 96 x 96) or more rejects
SCALED_96 = {"mm_per_px": 0.1, "frame": [96, 96], "default": {"min_area_mm2": 20}}
ZONES_LOGGER, INSPECTOR_LOGGER = "fair_edge.station.zones", "fair_edge.station.inspector"


def judge(section: dict) -> RegionJudge:
    return RegionJudge(RegionSettings.from_dict(section), PIXEL_THRESHOLD)


def square_map(size: int, square: int) -> np.ndarray:
    """(size, size) float32 anomaly map, 1.0 in a ``square`` x ``square`` block at (10, 10), else 0."""
    amap = np.zeros((size, size), np.float32)
    amap[10:10 + square, 10:10 + square] = 1.0
    return amap


def inspector_of(section: dict, cameras=("top", "side")) -> Inspector:
    """One view per camera, each with its own judge of ``section`` (as ``station.cell`` makes them), threshold 0.9."""
    scorer = RedScorer()
    views = {c: ViewDecider(scorer, 0.9, model="m0", regions=judge(section)) for c in cameras}
    inspector = Inspector(capture=None, scorer=scorer, threshold=0.9, views=views)
    inspector.decider = views[cameras[0]]
    return inspector


def messages(caplog, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


# ------------------------------------------------------------------------------------ regions.frame without zones
def test_a_frame_of_another_size_than_regions_frame_is_refused_without_zones():
    """Before, ``if s.zones and ...`` skipped the check: the binned frame's 8.3 mm² region passed the 20 mm² rule."""
    j = judge(SCALED_96)
    (region,), (hit,) = j.judge((96, 96), square_map(96, 60))   # 3600 px² = 36 mm² at full resolution
    assert region.area_mm2 == pytest.approx(36.0) and hit.rule == "min_area_mm2"
    with pytest.raises(ConfigError) as caught:
        j.judge(BINNED_HW, square_map(48, 30))                    # the same defect, binned: 900 px² "= 9 mm²"
    message = str(caught.value)
    assert message.startswith("frame is 48 x 48 but regions.frame is 96 x 96")
    assert "expected 96 x 96 px frames, found 48 x 48: set the camera back to 96 x 96" in message
    assert "measure the camera scale (regions.mm_per_px or scale) on a 48 x 48 frame" in message
    assert "set regions.frame: [48, 48]" in message


def test_px_rules_with_regions_frame_are_checked_too():
    j = judge({"frame": [96, 96], "default": {"min_area_px": 2000}})
    with pytest.raises(ConfigError, match=r"frame is 48 x 48 but regions\.frame is 96 x 96, the size the region rules"):
        j.judge(BINNED_HW, square_map(48, 30))


def test_binned_frames_are_ng_counted_and_logged_once_per_camera_and_size_where_rules_decide(caplog):
    """Rules decide: each binned frame is NG with the error (not inspected, fail-safe), counted; each camera and size
    logged once as an error naming both sizes and the fix. A full-size frame is judged as before."""
    inspector = inspector_of(SCALED_96)
    frames = [Frame(i, 0.0, red_frame(48, 24), camera=c) for i, c in enumerate(("top", "top", "side"))]
    frames += [Frame(3, 0.0, red_frame(96, 60), camera="top"), Frame(4, 0.0, red_frame(96), camera="top")]
    with caplog.at_level("ERROR", logger=INSPECTOR_LOGGER):
        verdicts = inspector.inspect(frames)
    binned, full_ng, full_ok = verdicts[:3], verdicts[3], verdicts[4]
    assert all(v.ng and v.error.startswith("regions: frame is 48 x 48 but regions.frame is 96 x 96") and not v.regions
               for v in binned)
    assert full_ng.ng and not full_ng.error and full_ng.hits and not full_ok.ng and not full_ok.error
    assert inspector.summary.region_errors == 3
    logged = messages(caplog, "regions cannot be judged")
    assert len(logged) == 2 and logged[0].startswith("camera top: ") and logged[1].startswith("camera side: ")
    assert "each such frame is NG with this error, not inspected (fail-safe" in logged[0]


def test_binned_frames_are_decided_by_their_score_where_regions_only_report(caplog):
    inspector = inspector_of({"mm_per_px": 0.1, "frame": [96, 96]})
    with caplog.at_level("ERROR", logger=INSPECTOR_LOGGER):
        ok, ng = inspector.inspect([Frame(0, 0.0, red_frame(48), camera="top"),
                                    Frame(1, 0.0, red_frame(48, 12), camera="top")])
    assert (ok.ng, ok.error, ok.regions) == (False, "", ()) and (ng.ng, ng.error, ng.regions) == (True, "", ())
    assert inspector.summary.region_errors == 2
    (logged,) = messages(caplog, "regions cannot be judged")
    assert "decided by its score, without regions" in logged


# ------------------------------------------------------------------------------- a camera scale without frame
def test_a_camera_scale_without_frame_loads_with_a_warning_naming_the_fix(caplog):
    """Station files with mm_per_px (or scale: points) and no frame keep loading; the warning suggests frame:."""
    with caplog.at_level("WARNING", logger=ZONES_LOGGER):
        s = RegionSettings.from_dict({"mm_per_px": 0.1, "default": {"min_area_mm2": 20}})
        RegionSettings.from_dict({"scale": {"points": [[0, 0], [30, 40]], "mm": 2.5}})
        RegionSettings.from_dict({"mm_per_px": 0.1, "frame": [96, 96]})          # frame set: no warning
        RegionSettings.from_dict({"enabled": False, "mm_per_px": 0.1})            # regions off: no warning
        RegionSettings.from_dict({"default": {"min_area_px": 5}})                # no scale: no warning
    assert s.mm_per_px == 0.1 and s.frame is None
    warned = messages(caplog, "is set without regions.frame")
    assert len(warned) == 2 and "set regions.frame: [width, height]" in warned[0] and "(0.1 mm/px)" in warned[0]


def test_a_camera_scale_without_frame_logs_each_size_other_than_the_first_once(caplog):
    """Without frame the size the scale was measured at is unknown (a sensor ROI keeps it): frames are still judged,
    and each size other than the first frame's is logged once as a warning naming both sizes and the fix. A swapped
    judge (same scale) compares with the same first frame."""
    j = RegionJudge(RegionSettings.from_dict({"mm_per_px": 0.1, "default": {"min_area_mm2": 20}}), PIXEL_THRESHOLD,
                    camera="top")
    with caplog.at_level("WARNING", logger=ZONES_LOGGER):
        assert j.judge((96, 96), square_map(96, 60))[1]
        (region,), hits = j.judge(BINNED_HW, square_map(48, 30))
        j.judge(BINNED_HW, square_map(48, 30))
        j.judge((96, 96), square_map(96, 60))
        j.judge((40, 40), square_map(40, 5))
        swapped = j.for_bundle(SimpleNamespace(pixel_threshold=None, map_area=None, root="b2"))
        swapped.judge(BINNED_HW, square_map(48, 30))
    assert region.area_mm2 == pytest.approx(9.0) and hits == ()   # still judged (and reported) with the scale
    warned = messages(caplog, "the first was 96 x 96")
    assert len(warned) == 3 and warned[0].startswith("regions (camera top): frame is 48 x 48, the first was 96 x 96")
    assert "frame is 40 x 40" in warned[1] and "set regions.frame: [width, height]" in warned[0]
    assert swapped.first_frame_hw == (96, 96)
