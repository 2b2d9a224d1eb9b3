"""A station's console and its reloads (SIGHUP), with bundles named through links or spelled two ways.

1. A threshold applied from the console where the station file names its bundle through a link (``bundles/current``
   -> fp32) kept the link's *target* in the file (the console knows the bundle in force by its loaded root, the
   link resolved), so the next rollout (the link re-pointed, SIGHUP) left that camera on the old model. The file
   now keeps the link, and the threshold stays paired with the model it was applied on: the rollout's reload is
   refused, naming the threshold and the model, instead of silently splitting the cameras.
2. A reload refused before it loads anything left ``/api/swap`` (and the live page) at the swap before it, "done";
   a reload whose camera's bundle failed to load read "bundle ... does not exist", naming neither the reload nor
   the camera and its field. Both now say "bundle reload refused (SIGHUP): ..." in the swap status, with ``who``.
3. A reload loaded one bundle twice (two backends of one model) when two cameras spelled its path differently
   (relative and absolute, or through a link): the plan is keyed by the folder resolved now, as at the start.

Stand-ins: deciders with a switch, loaders that record what they load (no model runs), and the model a folder holds
told by its name (``folder_model_ids``, which reads a bundle's manifests, patched); swaps run on the caller's
thread (``InlineThread``), so no test waits on time.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from fair_edge.console import actions as actions_module
from fair_edge.console.actions import StationLinks
from fair_edge.console.settings import ConsoleSettings
from fair_edge.console.station_hook import ReloadFlags, StationConsole
from fair_edge.runtime.hotswap import ModelChange, ModelSwitch
from fair_edge.station.bundles import read_bundle
from fair_edge.station.cell_console import CellLoader
from fair_edge.station.config import StationConfig, load_station
from inline_swaps import inline_swaps  # noqa: F401 (autouse fixtures)
from test_reload_flags import Counters


@pytest.fixture
def models_by_folder(monkeypatch):
    """The model a bundle folder holds now is ``m-<its real folder's name>``: a link re-pointed holds another."""
    monkeypatch.setattr(actions_module, "folder_model_ids",
                        lambda folder: (f"m-{Path(os.path.realpath(folder)).name}",))


def folders(tmp_path: Path) -> tuple[Path, Path, Path]:
    """Bundle folders fp32 and fp16 and the link ``current`` -> fp32 (what a rollout re-points)."""
    fp32, fp16 = tmp_path / "bundles" / "fp32", tmp_path / "bundles" / "fp16"
    fp32.mkdir(parents=True)
    fp16.mkdir()
    current = tmp_path / "current"
    current.symlink_to(fp32)
    return fp32, fp16, current


def repoint(link: Path, target: Path) -> None:
    """A rollout: the link now leads to ``target``."""
    link.unlink()
    link.symlink_to(target)


def change_of(bundle: Path, threshold, scorer=None) -> ModelChange:
    """A loaded bundle's change; its model is named for the folder it was loaded from (links followed)."""
    real = Path(os.path.realpath(bundle))
    return ModelChange(scorer=scorer or SimpleNamespace(backend=SimpleNamespace(close=lambda: None)),
                       threshold=threshold, model=f"m-{real.name}", bundle=SimpleNamespace(root=real, threshold=None))


def write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# ------------------------------------------------------------------------------------------------------ one camera
def one_camera(tmp_path: Path, station: Path, running: Path):
    """A one-camera console over ``station`` whose model in force was loaded from ``running`` (its root: the real
    folder, as ``load_bundle`` resolves it); loads are recorded. Returns (console, decider, loads)."""
    loads = []

    def load_model(bundle, threshold=None, regions=None):
        loads.append(Path(bundle))
        if not Path(bundle).is_dir():
            read_bundle(bundle)   # the real refusal of a missing folder
        return change_of(bundle, threshold)

    cfg = StationConfig(output=tmp_path / "out", console=ConsoleSettings(enabled=False), source_file=station)
    links = StationLinks(load_model=load_model, load_station=load_station)
    console = StationConsole(cfg, SimpleNamespace(root=Path(os.path.realpath(running)), threshold=None), links=links)
    decider = SimpleNamespace(model=f"m-{Path(os.path.realpath(running)).name}", threshold=0.5, switch=ModelSwitch())
    console.attach(decider, None, None, None, None)
    return console, decider, loads


def test_a_threshold_applied_on_a_bundle_named_through_a_link_keeps_the_link_and_its_model(tmp_path,
                                                                                          models_by_folder):
    """bundle: current (-> fp32). The apply kept bundle: current (before: the file got bundle: .../fp32, and the
    rollout's SIGHUP reloaded fp32). The rollout (current -> fp16) then meets the threshold applied on fp32's model:
    refused, named, nothing loaded; pointed back, the link reloads at the threshold applied. A link to another
    folder than the one in force is still written over with the bundle in force (the pairing stays)."""
    fp32, fp16, current = folders(tmp_path)
    station = write(tmp_path / "station.yaml", {"bundle": str(current), "camera": {"source": "0"}})
    console, decider, loads = one_camera(tmp_path, station, current)
    answer = console.actions.apply_threshold(0.6, "ann", True)
    assert "station_file_bundle" not in answer and answer["bundle"] == str(fp32)
    assert yaml.safe_load(station.read_text())["bundle"] == str(current)

    repoint(current, fp16)   # the rollout
    console.reload_bundle("SIGHUP")
    status = console.actions.swap_status
    assert loads == [] and status["state"] == "failed" and status["who"] == "SIGHUP"
    assert status["error"].startswith(f"bundle reload refused (SIGHUP): {station}: decision.threshold 0.6 was "
                                      f"applied from the console on bundle {fp32} (model m-fp32")
    assert f"not on bundle {current} this reload would load (model m-fp16)" in status["error"]

    repoint(current, fp32)
    console.reload_bundle("SIGHUP")
    assert loads == [current] and console.actions.swap_status["state"] == "done"
    assert decider.switch.take().threshold == 0.6

    repoint(current, fp16)   # the file's link leads elsewhere than the bundle in force: written with the threshold
    answer = console.actions.apply_threshold(0.7, "ann", True)
    assert answer["station_file_bundle"] == {"old": str(current), "new": str(fp32)}
    assert yaml.safe_load(station.read_text())["bundle"] == str(fp32)


# ------------------------------------------------------------------------------------------------------ a cell
def cell_file(tmp_path: Path, bundle, left_bundle=None, **left) -> Path:
    """A station file of cameras top and left; left names ``left_bundle`` as its own where given."""
    own = {} if left_bundle is None else {"bundle": str(left_bundle)}
    return write(tmp_path / "station.yaml", {"bundle": str(bundle), "cameras": [
        {"name": "top", "source": "0"}, {"name": "left", "source": "1", **own, **left}]})


def cell(tmp_path: Path, station: Path, running: dict):
    """A cell's console as ``station.cell_console`` opens it (``CellLoader`` reads each camera's bundle from the
    station file), each camera running ``running[camera]`` (as a reload leaves it: the loaded root, links
    resolved). ``load_views`` records (bundle, cameras) and shares one scorer per load. Returns (console, views,
    loads)."""
    loads = []

    def load_views(bundle, cameras, thresholds=None, regions=None):
        loads.append((Path(bundle), tuple(cameras)))
        if not Path(bundle).is_dir():
            read_bundle(bundle)   # the real refusal of a missing folder
        shared = SimpleNamespace(backend=SimpleNamespace(close=lambda: None))
        return {c: change_of(bundle, (thresholds or {}).get(c) or 0.5, shared) for c in cameras}

    loader = CellLoader(load_station(station))
    links = StationLinks(load_station=load_station, load_views=load_views, camera_bundles=loader.camera_bundles)
    cfg = StationConfig(output=tmp_path / "out", console=ConsoleSettings(enabled=False), source_file=station)
    lead = Path(os.path.realpath(running["top"]))
    console = StationConsole(cfg, SimpleNamespace(root=lead, threshold=None), links=links,
                             calibrations={"top": None, "left": None})
    console.attach_cell(Counters(), {c: Path(os.path.realpath(b)) for c, b in running.items()})
    views = {c: SimpleNamespace(model=f"m-{Path(os.path.realpath(b)).name}", threshold=0.5, switch=ModelSwitch())
             for c, b in running.items()}
    console.attach(SimpleNamespace(views=views), None, None, None, None)
    return console, views, loads


def test_a_threshold_applied_to_a_camera_of_a_cell_on_a_linked_bundle_keeps_the_link(tmp_path, models_by_folder):
    """The audit's cell: bundle: current, both cameras on fp32 after a reload. The apply to top wrote cameras[0].bundle
    = fp32 (top then stayed on fp32 at the rollout while left moved to fp16); now top names no bundle of its own, and
    the rollout's reload is refused for top's threshold, both cameras running on together."""
    fp32, fp16, current = folders(tmp_path)
    station = cell_file(tmp_path, current)
    console, views, loads = cell(tmp_path, station, {"top": current, "left": current})
    answer = console.actions.apply_threshold(0.6, "ann", True, camera="top")
    assert "station_file_bundle" not in answer
    top = yaml.safe_load(station.read_text())["cameras"][0]
    assert top["threshold"] == 0.6 and "bundle" not in top

    repoint(current, fp16)
    console.reload_bundle("SIGHUP")
    status = console.actions.swap_status
    assert loads == [] and status["state"] == "failed" and status["who"] == "SIGHUP"
    assert status["error"].startswith(f"bundle reload refused (SIGHUP): {station}: cameras (top).threshold 0.6 was "
                                      f"applied from the console on bundle {fp32} (model m-fp32")


# ------------------------------------------------------------------------------------------------ refused reloads
def test_a_refused_reload_shows_failed_with_its_refusal_and_who_asked(tmp_path):
    """The audit's e2: a good reload ("done"), then one refused before it loads (left's regions: a mm rule without a
    scale). /api/swap kept "done" (the refusal only in the log); now "failed", its text the logged line, with
    ``who``. A refusal while a swap loads leaves the loading status (that swap ends as done or failed itself)."""
    fp32, _, _ = folders(tmp_path)
    station = cell_file(tmp_path, fp32)
    console, views, loads = cell(tmp_path, station, {"top": fp32, "left": fp32})
    console.reload_bundle("SIGHUP")
    assert console.actions.swap_status["state"] == "done" and loads == [(fp32, ("top", "left"))]

    cell_file(tmp_path, fp32, regions={"default": {"min_area_mm2": 1}})
    console.reload_bundle("SIGHUP")
    status = console.actions.swap_status
    assert status["state"] == "failed" and status["who"] == "SIGHUP" and len(loads) == 1
    assert status["error"].startswith(f"bundle reload refused (SIGHUP): {station}: cameras[1] (left)")
    assert "min_area_mm2: a rule in mm needs the camera scale" in status["error"]

    loading = {"state": "loading", "bundle": str(fp32), "since": "now"}
    console.actions.swap_status = loading
    console.actions.reload_refused("SIGHUP", "anything")
    assert console.actions.swap_status is loading


def test_a_reload_whose_bundle_is_missing_names_the_reload_the_camera_and_its_field(tmp_path):
    """The audit's e: left's bundle: names a missing folder. The status read "bundle .../nope does not exist"
    (a console swap's words); now it names the reload, who asked and the station file's field. The station's
    bundle: missing is named as the station's, for the cameras that run it; one camera likewise (its bundle:). A
    console swap of a missing folder is refused in a swap's words, as before."""
    fp32, _, _ = folders(tmp_path)
    nope = tmp_path / "nope"
    station = cell_file(tmp_path, fp32, left_bundle=nope)
    console, views, loads = cell(tmp_path, station, {"top": fp32, "left": fp32})
    console.reload_bundle("SIGHUP")
    status = console.actions.swap_status
    assert status["state"] == "failed" and status["who"] == "SIGHUP"
    assert status["error"].startswith(f"bundle reload refused (SIGHUP): {station}: cameras[1] (left).bundle: bundle "
                                      f"{nope} does not exist")
    assert views["top"].switch.take() is None and views["left"].switch.take() is None

    cell_file(tmp_path, nope)   # the station's bundle: missing, both cameras on it
    console.reload_bundle("SIGHUP")
    assert console.actions.swap_status["error"].startswith(
        f"bundle reload refused (SIGHUP): {station}: bundle (for cameras top, left): bundle {nope} does not exist")

    console.actions.swap(str(nope), "ann", camera="top")
    status = console.actions.swap_status
    assert status["error"].startswith(f"bundle {nope} does not exist") and "who" not in status

    (tmp_path / "one").mkdir()
    one = write(tmp_path / "one" / "station.yaml", {"bundle": str(nope), "camera": {"source": "0"}})
    single, _, _ = one_camera(tmp_path / "one", one, fp32)
    single.reload_bundle("SIGHUP")
    assert single.actions.swap_status["error"].startswith(
        f"bundle reload refused (SIGHUP): {one}: bundle: bundle {nope} does not exist")


# ------------------------------------------------------------------------------------------------ one load a folder
@pytest.mark.parametrize("flag", [None, Path("bundles/fp32")], ids=["file", "--bundle"])
def test_a_reload_loads_a_bundle_named_two_ways_once(tmp_path, monkeypatch, flag):
    """The audit's d: top runs the station's bundles/fp32 (relative to the working folder; or --bundle so), left names
    the same folder by its absolute path. The start loads it once (``CellModels`` keys by the resolved folder); a
    reload loaded it twice (two backends, the cameras' frames no longer batched together). Now once, both cameras
    on one scorer."""
    fp32, _, _ = folders(tmp_path)
    monkeypatch.chdir(tmp_path)
    station = cell_file(tmp_path, "bundles/fp32", left_bundle=fp32)
    console, views, loads = cell(tmp_path, station, {"top": fp32, "left": fp32})
    if flag is not None:
        console.keep_flags(ReloadFlags(bundle=flag))
    console.reload_bundle("SIGHUP")
    assert loads == [(fp32, ("top", "left"))]
    assert console.actions.swap_status["state"] == "done"
    top, left = views["top"].switch.take(), views["left"].switch.take()
    assert top.scorer is left.scorer
