"""A console swap between a fused and a single bundle keeps the ``regions:`` in force, and with them the station file's
``regions.pixel_threshold``, set in the units of the map in force: a fused bundle's map is in its members' normal
spread, a single bundle's in its model's score units. The audit's station (fused, pixel_threshold 2.0, rule
min_area_px 1) swapped to a single bundle judged its maps at 2.0 spreads: 0 of 28 defects NG after the swap, 18 of
22 before. While region rules decide with a pixel threshold the file sets, such a swap is now refused, naming
regions.pixel_threshold and the fix, and the old model runs on (as a swap to a fused bundle with no pixel threshold
already was); a swap on one scale, or with the bundle's own pixel threshold, or with regions only reported, is not.
"""

from __future__ import annotations

import functools
from pathlib import Path
from types import SimpleNamespace

import pytest

from fair_edge.console import reload_scope
from fair_edge.console.actions import StationLinks
from fair_edge.console.station_hook import StationConsole
from fair_edge.runtime.backends import close_scorer
from fair_edge.runtime.fusion import FusedScorer
from fair_edge.runtime.hotswap import ModelChange, ModelSwitch, model_id
from fair_edge.station.bundles import load_change, open_scorer
from fair_edge.station.config import ConsoleSettings, StationConfig
from fair_edge.station.inspector import Inspector
from fair_edge.station.zones import RegionJudge, RegionSettings, ZoneRules
from inline_swaps import inline_swaps  # noqa: F401 (autouse fixtures)
from test_reload_flags import Counters

SPREADS = 2.0   # the audit's regions.pixel_threshold, in the fused map's units
ANY_REGION = ZoneRules(limits=(("min_area_px", 1.0),))   # a rule that decides the verdict


def regions(pixel_threshold: float | None = SPREADS, rules: ZoneRules = ANY_REGION) -> RegionSettings:
    return RegionSettings(pixel_threshold=pixel_threshold, default=rules)


@pytest.fixture
def station(tmp_path):
    """``station(bundle, settings)``: a one-camera station running ``bundle`` (its real scorer on ONNX Runtime) with
    region rules ``settings`` and the console's real loader (``load_change``, as ``station.run`` links it). Returns
    (console, inspector); scorers opened are closed at the end."""
    opened = []

    def make(bundle, settings: RegionSettings):
        scorer = open_scorer(bundle, "onnxruntime")
        opened.append(scorer)
        judge = RegionJudge(settings, settings.pixel_threshold if settings.pixel_threshold is not None else 0.5)
        inspector = Inspector(None, scorer, float(bundle.threshold.value), model=model_id(bundle), regions=judge)
        cfg = StationConfig(output=tmp_path / "out", console=ConsoleSettings(enabled=False))
        links = StationLinks(load_model=functools.partial(load_change, backend="onnxruntime", roi_path=None,
                                                          regions=settings))
        console = StationConsole(cfg, bundle, links=links)
        console.attach(inspector, None, None, None, None)
        return console, inspector

    yield make
    for scorer in opened:
        close_scorer(scorer)


def swapped(console, inspector, bundle) -> dict:
    """Swap to ``bundle`` from the console; the status, with a loaded model taken (and its scorer closed)."""
    console.actions.swap(str(bundle.root), "ann")
    change = inspector.switch.take()
    if change is not None:
        close_scorer(change.scorer)
    return {**console.actions.swap_status, "taken": None if change is None else change.model}


def test_a_swap_from_a_fused_bundle_to_a_single_one_under_the_fused_pixel_threshold_is_refused(
        station, station_bundles, fused_station_bundle):
    """The audit's case: fused in force, the file's pixel threshold in spreads; the single bundle is refused with
    regions.pixel_threshold named and the fix (null takes its calibrated one), nothing switched."""
    plain = station_bundles[0]
    console, inspector = station(fused_station_bundle, regions())
    status = swapped(console, inspector, plain)
    assert status["state"] == "failed" and status["taken"] is None, status
    error = status["error"]
    assert error.startswith(f"bundle {plain.root} is a single bundle, whose map is in its model's score units, but "
                            "the region rules in force decide the verdict with the station file's "
                            "regions.pixel_threshold 2, set in the units of the fused bundle in force's map"), error
    assert "The swap was refused; the station runs on with the model in force." in error
    assert "(null: its calibrated one)" in error and f"bundle: {plain.root} in the station file" in error
    assert inspector.model == model_id(fused_station_bundle)


def test_a_swap_from_a_single_bundle_to_a_fused_one_under_its_pixel_threshold_is_refused(
        station, station_bundles, fused_station_bundle):
    """The other way: the file's pixel threshold in the single bundle's score units would be read as spreads."""
    plain = station_bundles[0]
    console, inspector = station(plain, regions(0.3))
    status = swapped(console, inspector, fused_station_bundle)
    assert status["state"] == "failed" and status["taken"] is None, status
    assert status["error"].startswith(f"bundle {fused_station_bundle.root} is a fused bundle, whose map is in its "
                                      "members' normal spread, but the region rules in force decide the verdict "
                                      "with the station file's regions.pixel_threshold 0.3"), status["error"]
    assert (f"the pixels above its threshold, {fused_station_bundle.threshold.value:.6g}, make a part NG"
            in status["error"])
    assert inspector.model == model_id(plain)


@pytest.mark.parametrize("settings", [regions(None), regions(rules=ZoneRules())],
                         ids=["the bundle's own pixel threshold", "regions only reported"])
def test_a_fused_to_single_swap_without_a_file_pixel_threshold_or_deciding_rules_goes_on(
        station, station_bundles, fused_station_bundle, settings):
    plain = station_bundles[0]
    console, inspector = station(fused_station_bundle, settings)
    status = swapped(console, inspector, plain)
    assert status["state"] == "done" and status["taken"] == model_id(plain), status


def test_a_swap_between_two_single_bundles_keeps_the_file_pixel_threshold(station, station_bundles):
    """One scale (the fp32 and fp16 builds of one model): the swap is done, as before."""
    console, inspector = station(station_bundles[0], regions(0.3))
    status = swapped(console, inspector, station_bundles[1])
    assert status["state"] == "done" and status["taken"] == model_id(station_bundles[1]), status


# ------------------------------------------------------------------------------------------------ a cell
class StandInFused(FusedScorer):
    """What ``tuning.scores_below_zero`` knows a fused bundle's scorer by, without its members."""

    def __init__(self) -> None:
        self.backend = SimpleNamespace(close=lambda: None)


def plain_scorer():
    return SimpleNamespace(backend=SimpleNamespace(close=lambda: None))


def test_a_cells_console_swap_onto_another_scale_is_refused_for_every_camera(tmp_path):
    """Several cameras: top runs a fused bundle with rules at 2.0 spreads, left a single bundle without rules. A swap
    of both to a single bundle is refused naming camera top's regions.pixel_threshold; no camera switches."""
    loads = []

    def load_views(bundle, cameras, thresholds=None, regions=None):
        loads.append(tuple(cameras))
        shared = plain_scorer()
        return {c: ModelChange(scorer=shared, threshold=0.5, model="m-plain",
                               bundle=SimpleNamespace(root=Path(bundle), threshold=None)) for c in cameras}

    links = StationLinks(load_views=load_views, camera_bundles=lambda station_file=None: (
        reload_scope.CameraBundle("top", tmp_path / "fused", False, None),
        reload_scope.CameraBundle("left", tmp_path / "fused", False, None)))
    cfg = StationConfig(output=tmp_path / "out", console=ConsoleSettings(enabled=False))
    console = StationConsole(cfg, SimpleNamespace(root=tmp_path / "fused", threshold=None), links=links,
                             calibrations={"top": None, "left": None})
    console.attach_cell(Counters(), {"top": tmp_path / "fused", "left": tmp_path / "fused"})
    views = {"top": SimpleNamespace(model="m-fused", threshold=-0.2, switch=ModelSwitch(), scorer=StandInFused(),
                                    regions=SimpleNamespace(settings=regions())),
             "left": SimpleNamespace(model="m-fused", threshold=-0.2, switch=ModelSwitch(), scorer=StandInFused(),
                                     regions=None)}
    console.attach(SimpleNamespace(views=views), None, None, None, None)
    console.actions.swap(str(tmp_path / "plain"), "ann")
    status = console.actions.swap_status
    assert loads == [("top", "left")] and status["state"] == "failed", status
    assert status["error"].startswith(f"bundle {tmp_path / 'plain'} is a single bundle") and \
        "regions.pixel_threshold 2," in status["error"], status["error"]
    assert all(v.switch.pending is None for v in views.values())
