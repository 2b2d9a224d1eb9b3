"""Defect regions on a running station: a frame of another size than the zones (logged once per camera and frame
size, counted in ``region_errors`` where the run table, summary.json and the console show it; NG fail-safe only
where rules decide), a SIGHUP reload that applies the station file's re-read ``regions:`` to every camera (and logs
what changed, naming the camera), and region sizes in reasons without scientific notation.

The frames are scored by a stand-in whose anomaly map is the frame's red channel (so a red square is a region of
known size); swaps run inline (the console's swap thread replaced), never slept on."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import yaml

from fair_edge.records import Frame, RuleHit
from fair_edge.runtime.hotswap import ModelChange
from fair_edge.station.inspector import Inspector, ViewDecider
from fair_edge.station.zones import RegionJudge, RegionSettings

PIXEL_THRESHOLD = 0.5
ZONES_64 = {"frame": [64, 64], "default": {"min_area_px": 400},
            "zones": [{"name": "seal", "polygon": [[0, 0], [64, 0], [64, 10], [0, 10]], "min_area_px": 10}]}


class RedScorer:
    """A frame scorer whose anomaly map is the frame's red channel / 255 on a 32 x 32 grid (INTER_AREA): a red
    square of s x s frame pixels is one region of s² px². Score = the map's maximum."""

    reason, graph_threshold = "test: red channel", None
    backend = SimpleNamespace(close=lambda: None)

    def infer_frames(self, frames):
        maps = np.stack([cv2.resize(f[:, :, 2].astype(np.float32) / 255.0, (32, 32), interpolation=cv2.INTER_AREA)
                         for f in frames])
        return maps, maps.reshape(len(frames), -1).max(1)


def red_frame(size: int, square: int = 0) -> np.ndarray:
    """(size, size, 3) uint8 BGR, grey with no red, and a red ``square`` x ``square`` px at (20, 20)."""
    image = np.full((size, size, 3), 40, np.uint8)
    image[:, :, 2] = 0
    image[20:20 + square, 20:20 + square, 2] = 255
    return image


def judge(section: dict) -> RegionJudge:
    return RegionJudge(RegionSettings.from_dict(section), PIXEL_THRESHOLD)


def cell_inspector(section: dict, cameras=("top", "side")) -> Inspector:
    """An inspector over views as ``station.cell`` makes them: one per camera, each with its own judge of
    ``section``, threshold 0.9; the default decider is the first camera's."""
    scorer = RedScorer()
    views = {c: ViewDecider(scorer, 0.9, model="m0", regions=judge(section)) for c in cameras}
    inspector = Inspector(capture=None, scorer=scorer, threshold=0.9, views=views)
    inspector.decider = views[cameras[0]]
    return inspector


def region_error_logs(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "regions cannot be judged" in r.getMessage()]


# ------------------------------------------------------------------------------------------ zones of another size
def test_zones_drawn_for_another_frame_size_are_logged_once_per_camera_and_size_and_counted(caplog):
    """Zones drawn on 64 x 64 frames, cameras delivering 48 x 48 (and top 40 x 40 once): every such frame is NG with
    the error (rules decide: a frame the station cannot judge, fail-safe), each (camera, size) logged once as an
    error naming expected and found sizes and the fix, every frame counted. Before, nothing was logged or counted:
    the run table said NG 12, malformed 0, inference errors 0."""
    inspector = cell_inspector(ZONES_64)
    frames = [Frame(i, 0.0, red_frame(48), camera=c) for i, c in enumerate(("top", "top", "side", "top", "side"))]
    frames += [Frame(9, 0.0, red_frame(40), camera="top"), Frame(10, 0.0, red_frame(64), camera="top")]
    with caplog.at_level("ERROR", logger="fair_edge.station.inspector"):
        verdicts = inspector.inspect(frames)
        inspector.inspect([Frame(11, 0.0, red_frame(48), camera="side")])
    wrong, right = verdicts[:6], verdicts[6]
    assert all(v.ng and v.error.startswith("regions: frame is ") for v in wrong) and not right.ng and not right.error
    assert wrong[0].error.startswith("regions: frame is 48 x 48 but the zones were drawn for 64 x 64")
    logged = region_error_logs(caplog)
    assert len(logged) == 3, logged   # (top, 48), (side, 48), (top, 40)
    assert [m.split(":")[0] for m in logged] == ["camera top", "camera side", "camera top"]
    assert "expected 64 x 64 px frames, found 48 x 48: set the camera back to 64 x 64" in logged[0]
    assert "set regions.frame: [48, 48]" in logged[0] and "found 40 x 40" in logged[2]
    assert "each such frame is NG with this error, not inspected (fail-safe" in logged[0]
    assert inspector.summary.region_errors == 7 and inspector.summary.malformed == 0
    assert inspector.summary.to_dict()["region_errors"] == 7


def test_the_region_errors_are_shown_in_the_run_table_summary_json_and_the_console(tmp_path, monkeypatch):
    """The count moves in every place a station's counters are shown: the summary table, the live table,
    summary.json (``write_summary``) and the console's counters (/api/state)."""
    from rich.console import Console

    import fair_edge.cli.run as cli_run
    from fair_edge.console.feed import StationFeed
    from fair_edge.console.settings import ConsoleSettings
    from fair_edge.station.run import write_summary

    inspector = cell_inspector(ZONES_64)
    inspector.inspect([Frame(i, 0.0, red_frame(48), camera="top") for i in range(3)])
    summary = inspector.summary
    table = Console(record=True, width=200)
    monkeypatch.setattr(cli_run, "Console", lambda: table)
    cli_run.print_summary(summary, Path("out"))
    assert "region errors │ 3 │" in " ".join(table.export_text().split())
    stats = SimpleNamespace(state=SimpleNamespace(value="running"), frames_in=3, dropped_queue_full=0,
                            frames_lost_estimate=0)
    inspector.capture = SimpleNamespace(stats=lambda: stats)
    live = Console(record=True, width=200)
    live.print(cli_run.live_table(inspector))
    assert "region errors │ 3 │" in " ".join(live.export_text().split())
    assert json.loads(write_summary(summary, tmp_path).read_text())["region_errors"] == 3
    feed = StationFeed(ConsoleSettings(port=0), tmp_path)
    feed.attach(inspector, None, None, None)
    assert json.loads(json.dumps(feed.counters()))["region_errors"] == 3


def test_zones_of_another_size_leave_a_report_only_frame_to_its_score(caplog):
    """Regions that only report (an ignore zone alone decides nothing): the frame's score decides, as the docs say;
    its regions are not reported, and the frame is counted and logged. Before, every such frame was NG."""
    inspector = cell_inspector({"frame": [64, 64], "zones": [{"name": "label", "polygon": [[0, 0], [9, 0], [9, 9]],
                                                              "ignore": True}]})
    with caplog.at_level("ERROR", logger="fair_edge.station.inspector"):
        ok, ng = inspector.inspect([Frame(0, 0.0, red_frame(48), camera="top"),
                                    Frame(1, 0.0, red_frame(48, 12), camera="top")])
    assert (ok.ng, ok.error, ok.regions) == (False, "", ()) and (ng.ng, ng.error, ng.regions) == (True, "", ())
    assert inspector.summary.region_errors == 2
    (logged,) = region_error_logs(caplog)
    assert "decided by its score, without regions" in logged


# ------------------------------------------------------------------------------------------------ reasons in words
def test_region_sizes_in_reasons_have_no_scientific_notation():
    """A 2024 px² region read "region 2.02e+03 px² in zone default ≥ 50 px²"; a 5000 px² limit "≥ 5e+03"."""
    hit = RuleHit("min_area_px", "default", 0, 2024.4, 50.0, "px²")
    assert hit.reason == "region 2024 px² in zone default ≥ 50 px²"
    assert RuleHit("min_area_px", "seal", 1, 144.0, 5000.0, "px²").reason == "region 144 px² in zone seal ≥ 5000 px²"
    from fair_edge.records import size_text

    assert [size_text(v) for v in (0.7, 2.0, 12.345, 999.4, 999.7, 1234.5, 2.5e-5, 1e7)] == \
        ["0.7", "2", "12.3", "999", "1000", "1234", "0.000025", "10000000"]
    assert RuleHit("min_area_mm2", "seal", 1, 0.7, 0.5, "mm²").reason == "region 0.7 mm² in zone seal ≥ 0.5 mm²"


# ------------------------------------------------------------------------------------------------ swaps, named
def test_swap_and_threshold_log_lines_in_a_cell_name_every_camera_the_first_included(caplog):
    """A cell's first camera's decider is also the inspector's default one: its swap was logged "model swapped: now
    ..." with no camera, and its threshold change likewise."""
    inspector = cell_inspector({"default": {"min_area_px": 50}})
    bundle = SimpleNamespace(root="b2", pixel_threshold=None, map_area=None)
    for camera in ("top", "side"):
        inspector.views[camera].switch.request(ModelChange(scorer=RedScorer(), threshold=0.8, model="m2",
                                                           bundle=bundle))
    with caplog.at_level("WARNING", logger="fair_edge.station.inspector"):
        inspector.apply_switch()
    logged = [r.getMessage() for r in caplog.records]
    assert "model swapped on camera top: now m2 from b2" in logged and "model swapped on camera side: now m2 from b2" \
        in logged, logged
    assert "threshold changed on camera top: 0.9 -> 0.8" in logged and "threshold changed on camera side: 0.9 -> 0.8" \
        in logged, logged
    assert not [m for m in logged if m.startswith(("model swapped:", "threshold changed:"))], logged


# ------------------------------------------------------------------------------------------------ SIGHUP reloads
class InlineThread:
    """The console's swap thread, run at ``start()`` on the caller's thread (the swap is done when it returns)."""

    def __init__(self, target, args=(), name=None, daemon=None) -> None:
        self.target, self.args = target, args

    def start(self) -> None:
        self.target(*self.args)


@pytest.fixture
def inline_swaps(monkeypatch):
    from fair_edge.console import swaps

    monkeypatch.setattr(swaps, "threading", SimpleNamespace(Thread=InlineThread, Lock=threading.Lock))


def swapped_in(bundle, threshold=None, **_) -> ModelChange:
    """What a loader returns for ``bundle``: a red-channel scorer, a bundle without a pixel threshold. Every one is
    the same network (one FP32 reference graph): a console swap between them keeps the file's pixel threshold."""
    root = Path(bundle)
    return ModelChange(scorer=RedScorer(), threshold=threshold or 0.9, model=f"m-{root.name}",
                       bundle=SimpleNamespace(root=root, threshold=None, pixel_threshold=None, map_area=None,
                                              reference_onnx_path=root / "model.fp32.onnx",
                                              files={"model.fp32.onnx": "red-channel"}))


def write_station(path: Path, regions: dict, **more) -> None:
    path.write_text(yaml.safe_dump({"bundle": str(path.parent / "b1"), "decision": {"threshold": 0.9},
                                    "regions": {"pixel_threshold": PIXEL_THRESHOLD, **regions}, **more}))


def one_camera_station(tmp_path, loads: list):
    """A one-camera station's console and inspector as ``station.run`` wires them, judging the station file's
    regions; the loader records the regions each load was checked against."""
    from fair_edge.console.actions import StationLinks
    from fair_edge.console.settings import ConsoleSettings
    from fair_edge.console.station_hook import StationConsole
    from fair_edge.station.config import StationConfig, load_station

    def load_model(bundle, threshold=None, regions=None):
        loads.append(regions)
        return swapped_in(bundle, threshold)

    station = tmp_path / "station.yaml"
    write_station(station, {"default": {"min_area_px": 50}})
    started = load_station(station)
    inspector = Inspector(capture=None, scorer=RedScorer(), threshold=0.9, model="m0",
                          regions=RegionJudge(started.regions, PIXEL_THRESHOLD))
    cfg = StationConfig(output=tmp_path / "out", console=ConsoleSettings(enabled=False), source_file=station)
    console = StationConsole(cfg, SimpleNamespace(root=tmp_path / "b0", threshold=None),
                             links=StationLinks(load_model=load_model, load_station=load_station))
    console.attach(inspector, None, None, None, None)
    return console, inspector, station


def test_sighup_applies_the_station_files_new_regions_and_logs_what_changed(tmp_path, inline_swaps, caplog):
    """min_area_px 50 -> 5000 (and a zone and a scale added) in the station file, then SIGHUP: the 144 px² defect
    that was NG passes, the log says what changed, the loader checked the bundle against the new rules and the
    console draws the new zone. Before, the reload swapped the model and threshold and kept the start-up rules:
    later frames were still judged >= 50 px², and nothing said so."""
    loads = []
    console, inspector, station = one_camera_station(tmp_path, loads)
    defect = Frame(0, 0.0, red_frame(64, 12))
    (before,) = inspector.inspect([defect])
    assert before.ng and before.reason == "region 144 px² in zone default ≥ 50 px²"
    seal = {"name": "seal", "polygon": [[0, 0], [64, 0], [64, 10], [0, 10]], "min_area_px": 10}
    write_station(station, {"default": {"min_area_px": 5000}, "mm_per_px": 0.1, "frame": [64, 64], "zones": [seal]})
    with caplog.at_level("WARNING"):
        console.reload_bundle("SIGHUP")
        inspector.apply_switch()
    (after,) = inspector.inspect([Frame(1, 0.0, red_frame(64, 12))])
    assert not after.ng and after.regions and not after.hits
    assert inspector.regions.settings.default.limits == (("min_area_px", 5000.0),)
    changed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("regions changed")]
    assert len(changed) == 1 and "default min_area_px 50 -> 5000" in changed[0], changed
    assert "mm_per_px none -> 0.1" in changed[0] and "zones none -> seal" in changed[0]
    assert loads[-1] is not None and loads[-1].default.limits == (("min_area_px", 5000.0),)
    assert [len(o) for o in console.feed.zone_outlines] == [4]


def test_a_reload_with_regions_that_do_not_load_is_refused_naming_them(tmp_path, inline_swaps, caplog):
    """A regions: section that does not load refuses the whole reload, naming the field; the station judges on with
    what it ran (nothing loaded, nothing pending)."""
    loads = []
    console, inspector, station = one_camera_station(tmp_path, loads)
    write_station(station, {"default": {"min_area_mm2": 1}})   # a mm rule without a camera scale
    console.reload_bundle("SIGHUP")
    refused = [r.getMessage() for r in caplog.records if "bundle reload refused (SIGHUP)" in r.getMessage()]
    assert len(refused) == 1 and f"{station}: regions.default.min_area_mm2: a rule in mm needs the camera scale" \
        in refused[0], refused
    assert loads == [] and inspector.switch.pending is None
    assert inspector.regions.settings.default.limits == (("min_area_px", 50.0),)


def test_a_console_swap_after_a_reload_keeps_the_reloaded_regions(tmp_path, inline_swaps):
    """A bundle swapped in from the console keeps the regions in force (the reloaded ones), and its load is checked
    against them, not against the station's start-up rules; a swap requested before the reload's change was taken
    keeps the reload's regions too."""
    loads = []
    console, inspector, station = one_camera_station(tmp_path, loads)
    write_station(station, {"default": {"min_area_px": 5000}})
    console.reload_bundle("SIGHUP")
    console.actions.swap(str(tmp_path / "b2"), "ann")   # before the loop took the reload's change
    inspector.apply_switch()
    assert inspector.model == "m-b2" and inspector.regions.settings.default.limits == (("min_area_px", 5000.0),)
    assert loads[-1].default.limits == (("min_area_px", 5000.0),)
    console.actions.swap(str(tmp_path / "b3"), "ann")
    inspector.apply_switch()
    assert inspector.model == "m-b3" and inspector.regions.settings.default.limits == (("min_area_px", 5000.0),)
    assert loads[-1].default.limits == (("min_area_px", 5000.0),)


def cell_station(tmp_path, cameras: list[dict], loads: list):
    """A two-camera cell's console (``CellLoader.camera_bundles`` re-reading the station file, a recording
    ``load_views``) over an inspector whose views judge each camera's regions as the file set them at start."""
    from fair_edge.console.actions import StationLinks
    from fair_edge.console.settings import ConsoleSettings
    from fair_edge.console.station_hook import StationConsole
    from fair_edge.station.cell_console import CellLoader
    from fair_edge.station.config import load_station, view_config

    def load_views(bundle, names, thresholds, regions=None):
        loads.append(regions)
        return {c: swapped_in(bundle, thresholds.get(c)) for c in names}

    station = tmp_path / "station.yaml"
    write_station(station, {"default": {"min_area_px": 50}}, cameras=cameras, group={"match": "sequence"})
    cfg = load_station(station)
    scorer = RedScorer()
    views = {v.name: ViewDecider(scorer, 0.9, model="m0", regions=RegionJudge(view_config(cfg, v).regions,
                                                                              PIXEL_THRESHOLD))
             for v in cfg.cameras}
    inspector = Inspector(capture=None, scorer=scorer, threshold=0.9, views=views)
    inspector.decider = views[cfg.cameras[0].name]
    loader = CellLoader(cfg)
    console = StationConsole(cfg.override(console=ConsoleSettings(enabled=False)),
                             SimpleNamespace(root=tmp_path / "b1", threshold=None),
                             links=StationLinks(load_station=load_station, camera_bundles=loader.camera_bundles,
                                                load_views=load_views),
                             calibrations={v.name: None for v in cfg.cameras})
    console.attach_cell(SimpleNamespace(cameras=lambda: {}, parts=lambda: {}),
                        {v.name: tmp_path / "b1" for v in cfg.cameras})
    console.attach(inspector, None, None, None, None)
    return console, inspector, station


def test_sighup_in_a_cell_applies_the_new_regions_to_every_camera_and_names_each(tmp_path, inline_swaps, caplog):
    """In a cell every camera's decider takes the re-read regions with its reloaded bundle; each change is logged
    naming its camera, the first camera's too (it is also the inspector's default decider). Before, each camera kept
    its start-up rules and the first camera's swap was logged without its name."""
    loads = []
    cameras = [{"name": "top", "source": "x"}, {"name": "side", "source": "y"}]
    console, inspector, station = cell_station(tmp_path, cameras, loads)
    write_station(station, {"default": {"min_area_px": 5000}}, cameras=cameras, group={"match": "sequence"})
    with caplog.at_level("WARNING"):
        console.reload_bundle("SIGHUP")
        inspector.apply_switch()
    assert console.actions.swap_status["state"] == "done", console.actions.swap_status
    for camera in ("top", "side"):
        assert inspector.views[camera].regions.settings.default.limits == (("min_area_px", 5000.0),)
    verdicts = inspector.inspect([Frame(0, 0.0, red_frame(64, 12), camera=c) for c in ("top", "side")])
    assert [v.ng for v in verdicts] == [False, False]
    logged = [r.getMessage() for r in caplog.records]
    for camera in ("top", "side"):
        assert f"regions changed on camera {camera}: default min_area_px 50 -> 5000" in logged, logged
        assert f"model swapped on camera {camera}: now m-b1 from {tmp_path / 'b1'}" in logged, logged
    assert not [m for m in logged if m.startswith(("model swapped:", "regions changed:"))], logged
    assert [sorted(r) for r in loads] == [["side", "top"]]
    assert all(r.default.limits == (("min_area_px", 5000.0),) for r in loads[0].values())


def test_a_reload_in_a_cell_gives_each_camera_its_own_regions(tmp_path, inline_swaps, caplog):
    """A camera's own regions: (``cameras[i].regions``, its keys over the station's) reach its decider on reload
    through ``view_config``: side's own rule changes, top takes the station's."""
    loads = []
    cameras = [{"name": "top", "source": "x"}, {"name": "side", "source": "y", "regions": {"default": {"max_count": 3}}}]
    console, inspector, station = cell_station(tmp_path, cameras, loads)
    assert inspector.views["side"].regions.settings.default.max_count == 3
    cameras[1]["regions"] = {"default": {"min_area_px": 100}}
    write_station(station, {"default": {"min_area_px": 5000}}, cameras=cameras, group={"match": "sequence"})
    with caplog.at_level("WARNING"):
        console.reload_bundle("SIGHUP")
        inspector.apply_switch()
    top, side = (inspector.views[c].regions.settings.default for c in ("top", "side"))
    assert top.limits == (("min_area_px", 5000.0),) and (side.limits, side.max_count) == ((("min_area_px", 100.0),), None)
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("regions changed")]
    assert "regions changed on camera side: default max_count 3 -> unset; default min_area_px unset -> 100" in logged, \
        logged
    verdicts = inspector.inspect([Frame(0, 0.0, red_frame(64, 12), camera=c) for c in ("top", "side")])
    assert [v.ng for v in verdicts] == [False, True]
