"""A fused bundle's scores at the decision: with ``decision.roi`` (the score and the regions come from the map inside
the ROI, never from a 0 put outside it), on the heat maps (a scale that shows the map above and below a threshold
<= 0) and in a cell mixing fused and single bundles (which view decides a part).

A fused map is in its members' normal-spread units (``runtime.fusion``): normal parts about -2 .. 0, its threshold
often just under 0 (-0.0018 below). The maps here are handed in (``MapScorer``): the decision alone, no model."""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np
import pytest

from fair_edge.records import Frame, Verdict
from fair_edge.station.inspector import Inspector, roi_on_map
from fair_edge.station.parts import PartAssembler
from fair_edge.station.views import GroupSettings

FUSED_THRESHOLD = -0.0018
FRAME = np.full((64, 64, 3), 128, np.uint8)


class MapScorer:
    """A frame scorer whose anomaly map is handed in; its family score is the map's maximum."""

    reason, graph_threshold = "test: fixed map", None

    def __init__(self, amap: np.ndarray) -> None:
        self.amap = amap

    def infer_frames(self, frames):
        maps = np.stack([self.amap] * len(frames))
        return maps, maps.reshape(len(frames), -1).max(1)


def left_half_roi() -> np.ndarray:
    """(64, 64) float32 mask weights: the left half inspected (as ``station.bundles.load_roi`` gives)."""
    roi = np.zeros((64, 64), np.float32)
    roi[:, :32] = 1.0
    return roi


def fused_map(inside_peak: float, outside_peak: float = 3.0) -> np.ndarray:
    """(64, 64) float32 fused-like map: -1 normal spreads everywhere, ``inside_peak`` at one pixel of the left half,
    ``outside_peak`` at one of the right half (outside the ROI)."""
    amap = np.full((64, 64), -1.0, np.float32)
    amap[20, 10] = inside_peak
    amap[40, 50] = outside_peak
    return amap


def decide(amap: np.ndarray, threshold: float, roi: np.ndarray | None, regions=None) -> Verdict:
    inspector = Inspector(capture=None, scorer=MapScorer(amap), threshold=threshold, roi=roi, regions=regions)
    (verdict,) = inspector.inspect([Frame(0, 0.0, FRAME)])
    return verdict


# ----------------------------------------------------------------------------- bug 1: the ROI's 0-fill
def test_a_fused_part_under_its_negative_threshold_inside_the_roi_passes():
    """Inside the ROI the map peaks at -0.01, under the threshold -0.0018: OK, score -0.01. The pixels outside
    neither raise the score (a +3 hot spot there) nor floor it at 0 (before: every part scored >= 0, all NG)."""
    verdict = decide(fused_map(inside_peak=-0.01), FUSED_THRESHOLD, left_half_roi())
    assert verdict.score == pytest.approx(-0.01) and not verdict.ng and not verdict.error


def test_a_fused_defect_inside_the_roi_is_ng_with_its_own_score():
    verdict = decide(fused_map(inside_peak=0.7, outside_peak=5.0), FUSED_THRESHOLD, left_half_roi())
    assert verdict.score == pytest.approx(0.7) and verdict.ng


def test_a_single_bundles_roi_score_is_bit_for_bit_max_of_map_times_roi():
    """Maps >= 0 (every single family's) on grids other than the mask's: the score is max(map x ROI on the map's
    grid), the value the station's ROI threshold was calibrated on (``station.decision.roi_scores``), exactly."""
    rng = np.random.default_rng(3)
    roi = np.zeros((96, 80), np.float32)
    roi[10:60, 5:41] = 1.0
    for shape in ((96, 80), (32, 32), (200, 160), (45, 71)):
        amap = rng.random(shape, dtype=np.float32) * 0.3
        amap[rng.integers(shape[0]), rng.integers(shape[1])] = 0.9   # a hot spot, inside or outside
        expected = float((amap * roi_on_map(roi, shape)).max())
        assert decide(amap, 0.5, roi).score == expected


def test_region_rules_at_a_negative_pixel_threshold_see_the_map_inside_the_roi_only():
    """regions.pixel_threshold set in the fused map's units (-0.0018: a station file's), any region a defect: a
    normal part's map is under it everywhere inside the ROI, so no region forms and the part passes. Before, the
    zeros put outside the ROI were above it: one region the size of the right half, a rule hit, NG."""
    from fair_edge.station.zones import RegionJudge, RegionSettings

    judge = RegionJudge(RegionSettings.from_dict({"default": {"min_area_px": 1}}), FUSED_THRESHOLD)
    normal = decide(fused_map(inside_peak=-0.01), FUSED_THRESHOLD, left_half_roi(), regions=judge)
    assert normal.regions == () and normal.hits == () and not normal.ng
    defect = decide(fused_map(inside_peak=0.7), FUSED_THRESHOLD, left_half_roi(), regions=judge)
    assert [r.peak for r in defect.regions] == [pytest.approx(0.7)] and defect.hits and defect.ng


def test_a_single_bundles_regions_with_an_roi_are_those_of_map_times_roi():
    from fair_edge.regions import MapGeometry, extract_regions
    from fair_edge.station.zones import RegionJudge, RegionSettings

    amap = np.zeros((64, 64), np.float32)
    amap[10:14, 10:16] = 0.8          # inside the ROI
    amap[30:40, 40:60] = 0.9          # outside
    judge = RegionJudge(RegionSettings(), 0.5)
    verdict = decide(amap, 0.5, left_half_roi(), regions=judge)
    expected = extract_regions(amap * left_half_roi(), 0.5, MapGeometry.of((64, 64), (64, 64)))
    assert verdict.regions == tuple(replace(r, zone="default") for r in expected) and len(expected) == 1


# ----------------------------------------------------------------------------- bug 2: the heat-map scale
def test_a_single_bundles_heat_map_stays_on_0_to_twice_its_threshold():
    """The console's image of a single bundle's map is the one drawn on 0 .. 2 x threshold, byte for byte."""
    from fair_edge.console.render import JPEG_QUALITY, overlay_jpeg
    from fair_edge.plots import heatmap_overlay

    amap = np.linspace(0, 3, 64, dtype=np.float32).reshape(8, 8)
    grey = np.full((64, 64, 3), 128, np.uint8)
    ok, expected = cv2.imencode(".jpg", heatmap_overlay(grey, amap, 0.0, 1.0), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    assert ok and overlay_jpeg(grey, amap, 0.5) == expected.tobytes()


def test_a_fused_heat_scale_is_centred_on_its_threshold_the_same_on_every_image():
    from fair_edge.plots import FUSED_HALF_SCALE, heat_scale

    for amap in (fused_map(inside_peak=-0.01), fused_map(inside_peak=0.7, outside_peak=40.0)):
        assert heat_scale(amap, FUSED_THRESHOLD) == (FUSED_THRESHOLD - FUSED_HALF_SCALE,
                                                     FUSED_THRESHOLD + FUSED_HALF_SCALE)


def _colour_at(jpeg: bytes, y: int, x: int) -> np.ndarray:
    """The (B, G, R) of a decoded JPEG around (y, x) (a 3 x 3 mean: JPEG blurs single pixels)."""
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR).astype(np.float64)
    return image[y - 1 : y + 2, x - 1 : x + 2].reshape(-1, 3).mean(axis=0)


def test_the_console_draws_a_fused_maps_pixels_over_its_threshold_apart_from_the_normal_ones():
    """A fused map: normal pixels at -2 spreads, a band a hair over the threshold -0.0018 (an NG part), a hot spot
    at +2.5. The band is drawn green (the threshold's colour), the normal pixels blue, the hot spot red. Before, the
    scale was 0 .. map max: everything under 0, the NG band too, was the same dark blue."""
    from fair_edge.console.render import overlay_jpeg

    amap = np.full((64, 64), -2.0, np.float32)
    amap[:, 40:] = -0.0005                                            # over the threshold: NG
    amap[28:36, 4:12] = 2.5
    grey = np.full((64, 64, 3), 128, np.uint8)
    jpeg = overlay_jpeg(grey, amap, FUSED_THRESHOLD, alpha=1.0)
    normal, band, hot = _colour_at(jpeg, 10, 24), _colour_at(jpeg, 10, 52), _colour_at(jpeg, 32, 8)
    assert normal[0] > normal[2] + 60 and band[1] > normal[1] + 60 and hot[2] > hot[0] + 60, (normal, band, hot)


def test_the_console_draws_a_fused_map_all_under_zero():
    """A map all under 0 (a fused bundle's normal part): drawn, not refused. Before, 0 .. its maximum was no scale
    (vmin >= vmax): ConfigError, and the console showed no image."""
    from fair_edge.console.render import overlay_jpeg

    grey = np.full((64, 64, 3), 128, np.uint8)
    blue = _colour_at(overlay_jpeg(grey, np.full((64, 64), -2.5, np.float32), FUSED_THRESHOLD, alpha=1.0), 32, 32)
    assert blue[0] > blue[2] + 60, blue


def test_a_fused_ng_image_is_saved_with_its_threshold_marked(tmp_path):
    """The recorder's NG overlay of a fused map all under 0 is drawn (before: counted images_failed, the overlay
    refused vmin 0 > vmax), its NG pixels apart from the normal ones, the threshold marked on the colour scale."""
    from fair_edge.line.recorder import Recorder
    from fair_edge.line.settings import RecordSettings

    amap = np.full((48, 64), -2.5, np.float32)
    amap[10:20, 40:50] = -0.0001
    verdict = Verdict(0, 1.0, -0.0001, FUSED_THRESHOLD, True, 1.01, "test")
    with Recorder(RecordSettings(dir=tmp_path, min_free_mb=0), run_id="R1") as rec:
        assert rec.record(Frame(0, 1.0, np.full((48, 64, 3), 80, np.uint8), "test"), verdict, amap)
        assert rec.flush()
        stats = rec.stats()
    assert stats["images"] == 1 and not stats.get("images_failed"), stats
    overlay = cv2.imread(str(tmp_path / "ng" / "R1_00000000_overlay.png"))
    heat = overlay[overlay.shape[0] - 48 :].astype(int)
    assert heat[15, 45, 1] > heat[40, 10, 1] + 40 and heat[40, 10, 0] > heat[40, 10, 2]   # NG: greener; normal: blue
    bar = heat[:, 64:80]                                              # the colour bar: the threshold's black line
    assert (bar.sum(axis=2) < 60).all(axis=1).any()


# ----------------------------------------------------------------------------- bug 3: which view decides a part
def _part_row(views: list[Verdict]) -> dict:
    """The row of one part whose views are ``views`` (one per camera, in that order), decided with every view in
    (rule count>=N: an NG view alone does not decide it before the others come)."""
    cameras = [v.camera for v in views]
    rows = []
    group = GroupSettings(match="sequence", rule=f"count>={len(cameras)}")
    asm = PartAssembler(cameras, group, 10.0, on_part=lambda v, row: rows.append(row), clock=lambda: 0.0)
    for camera in cameras:
        asm.on_capture(camera, Frame(0, 0.0, np.zeros(1)))
    for v in views:
        asm.on_verdict(None, v)
    (row,) = rows
    return row


def view(camera: str, score: float, threshold: float, fused: bool = False) -> Verdict:
    return Verdict(0, 0.0, score, threshold, score > threshold, 0.0, camera=camera, fused=fused)


def test_an_ok_part_of_a_mixed_cell_names_the_view_nearest_its_own_threshold():
    """An OK part: the single bundle's view is 10 % under its threshold (0.45 of 0.5), the fused one a hair under its
    -0.0018 (-0.0019: 0.0001 normal spreads). The fused view is the worst. Before, its raw score (-0.0019) was
    ranked against the other's score / threshold (0.9): the single bundle's view was named."""
    row = _part_row([view("plain", 0.45, 0.5), view("fused", -0.0019, FUSED_THRESHOLD)])
    assert not row["ng"] and (row["camera"], row["score"]) == ("fused", -0.0019)


def test_an_ng_view_a_hair_over_its_threshold_does_not_outrank_a_fused_one_half_a_spread_over():
    """Both views NG: the single bundle's by 1 % (0.505 of 0.5), the fused one by 2, then by 0.5 normal spreads. Named
    both times: the fused one. Before, the fused view's raw score ranked: 1.9982 beat 1.01, but 0.4982 lost to it,
    the same margin over its threshold ranked by where the fused scores' zero lies."""
    far = _part_row([view("plain", 0.505, 0.5), view("fused", FUSED_THRESHOLD + 2.0, FUSED_THRESHOLD)])
    half = _part_row([view("plain", 0.505, 0.5), view("fused", FUSED_THRESHOLD + 0.5, FUSED_THRESHOLD)])
    assert far["camera"] == half["camera"] == "fused"


def test_a_fused_view_over_a_threshold_above_0_ranks_by_its_spreads_over_it():
    """A fused bundle whose calibrated threshold is above 0 (3.0 spreads): its view half a spread over it against a
    single bundle's 20 % over (0.6 of 0.5). Named: the fused one (1.5 against 1.2). Before, it was ranked by
    score / threshold (3.5 / 3.0 = 1.17), as if its scores had their zero where a single bundle's have."""
    row = _part_row([view("plain", 0.6, 0.5), view("fused", 3.5, 3.0, fused=True)])
    assert row["ng"] and row["camera"] == "fused"


def test_cameras_on_one_model_rank_as_before():
    """One single bundle, per-camera thresholds: score / threshold, as before (0.6 / 0.4 beats 0.7 / 0.5). One fused
    bundle on every camera: the highest score."""
    plain = _part_row([view("a", 0.7, 0.5), view("b", 0.6, 0.4)])
    fused = _part_row([view("a", -0.5, FUSED_THRESHOLD), view("b", -0.2, FUSED_THRESHOLD)])
    fused_ng = _part_row([view("a", 0.9, FUSED_THRESHOLD), view("b", 1.4, FUSED_THRESHOLD)])
    assert (plain["camera"], fused["camera"], fused_ng["camera"]) == ("b", "b", "b")
