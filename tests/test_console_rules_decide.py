"""The console while region rules decide the verdict (``regions:`` with a rule that can fire): a part is NG exactly when
a rule fires, whatever its score (``station.inspector``), so the image threshold changes no verdict.

1. A console swap keeps the ``regions:`` in force, with the station file's ``regions.pixel_threshold``, set in the
   units of the map of the model in force. The audit swapped one single bundle for another model's whose map is 100
   times larger (as PatchCore's distances against FAIR's errors): accepted, and 73 of 73 blank parts were NG after it
   (89 of 89 OK before). Only fused <-> single swaps were refused. Now a swap to another model is refused too, naming
   the field and the fix; one to the same network (the same FP32 reference graph: a rebuild at another precision, a
   calibration again, a copy) goes on, as does any swap without a file pixel threshold or without deciding rules.
   The map in force is the loaded bundle's, recorded at the start and at each swap: it was read again from the bundle
   folder at the swap, so the folder in force rebuilt in place at fp16 was refused as another model.
2. The tune page projected false-reject and catch rates by counting score > t as NG, and a threshold applied was
   accepted, audited and written, changing no verdict. Now /api/tune answers ``rules_decide`` (why, and what to tune
   instead) with no projection, and /api/threshold is refused (409), nothing changed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import onnx
import pytest
import yaml
from onnx import helper, numpy_helper

import numpy as np

from fair_edge.console.actions import StationLinks
from fair_edge.console.threshold_refusals import rules_decide_note
from fair_edge.console.journal import AUDIT
from fair_edge.console.station_hook import StationConsole
from fair_edge.export.bundle import MANIFEST, METADATA_KEY, load_bundle, write_manifest
from fair_edge.runtime.hotswap import ModelChange, ModelSwitch, folder_model_ids, model_id
from fair_edge.station.config import ConsoleSettings, StationConfig, load_station
from fair_edge.station.zones import RegionSettings, ZoneRules
from inline_swaps import inline_swaps  # noqa: F401 (autouse fixtures)
from test_console_units import TwoCameras, api, calibrated, one_camera_console, verdict
from test_fusedswap_region_scale import station, swapped  # noqa: F401 (the one-camera station fixture)

ANY_REGION = ZoneRules(limits=(("min_area_px", 1.0),))   # a rule that decides the verdict


def regions(pixel_threshold: float | None = 0.3, rules: ZoneRules = ANY_REGION) -> RegionSettings:
    return RegionSettings(pixel_threshold=pixel_threshold, default=rules)


# ------------------------------------------------------------------------------ 1. a swap to another model's map
def scaled_copy(bundle, dest: Path, factor: float = 100.0):
    """A copy of single FP32 ``bundle`` whose graph draws its map (and score) ``factor`` times larger, thresholds
    scaled alike: another model on another scale (the audit's probe), its weights.pt the same file."""
    shutil.copytree(bundle.root, dest)
    data = json.loads((dest / MANIFEST).read_text())
    graph_path = dest / data["graph"]["onnx"]
    model = onnx.load(str(graph_path))
    model.graph.initializer.append(numpy_helper.from_array(np.array(factor, np.float32), "scale_factor"))
    for out in model.graph.output:
        for node in model.graph.node:
            node.output[:] = [f"{o}_unscaled" if o == out.name else o for o in node.output]
        model.graph.node.append(helper.make_node("Mul", [f"{out.name}_unscaled", "scale_factor"], [out.name]))
    onnx.save(model, str(graph_path))
    for key in ("threshold", "pixel_threshold"):
        data[key]["value"] *= factor
    kept = {k: v for k, v in data.items() if k not in ("files", METADATA_KEY, "format", "format_version")}
    write_manifest(dest, kept)   # files listed and signed anew
    return load_bundle(dest)


@pytest.fixture(scope="module")
def other_model(station_bundles, tmp_path_factory):
    return scaled_copy(station_bundles[0], tmp_path_factory.mktemp("scaled") / "x100")


def test_a_swap_to_another_models_bundle_under_the_files_pixel_threshold_is_refused(station, station_bundles,
                                                                                     other_model):
    """The audit's case: rules decide at the station file's pixel threshold 0.3, in the fp32 model's map units; the
    bundle whose map is 100 times larger is refused, naming the field, both models and the fixes; nothing switched."""
    console, inspector = station(station_bundles[0], regions(0.3))
    status = swapped(console, inspector, other_model)
    assert status["state"] == "failed" and status["taken"] is None, status
    old, new = model_id(station_bundles[0]), model_id(other_model)
    error = status["error"]
    assert error.startswith(f"bundle {other_model.root} holds model {new}, another model than model {old} in force"), \
        error
    assert ("the region rules in force decide the verdict with the station file's regions.pixel_threshold 0.3, set "
            f"in the units of model {old}'s map") in error
    assert "The swap was refused; the station runs on with the model in force." in error
    assert (f"set regions.pixel_threshold in its map's units (null: its calibrated one) and bundle: {other_model.root} "
            "in the station file, then reload (kill -HUP)") in error
    assert inspector.model == old and console.feed.bundle_path == station_bundles[0].root


def test_a_swap_to_the_same_network_at_another_precision_goes_on_both_ways(station, station_bundles):
    """fp16 in force, fp32 swapped in (the other way than test_fusedswap_region_scale's): the same FP32 reference
    graph, so the same map units; the file's pixel threshold holds."""
    console, inspector = station(station_bundles[1], regions(0.3))
    status = swapped(console, inspector, station_bundles[0])
    assert status["state"] == "done" and status["taken"] == model_id(station_bundles[0]), status


@pytest.mark.parametrize("settings", [regions(None), regions(rules=ZoneRules())],
                         ids=["the bundle's own pixel threshold", "regions only reported"])
def test_a_swap_to_another_model_without_a_file_pixel_threshold_or_deciding_rules_goes_on(
        station, station_bundles, other_model, settings):
    console, inspector = station(station_bundles[0], settings)
    status = swapped(console, inspector, other_model)
    assert status["state"] == "done" and status["taken"] == model_id(other_model), status


def test_the_folder_in_force_rebuilt_in_place_at_another_precision_goes_on(station, station_bundles, tmp_path):
    """The review's case: the station started on bundles/current (fp32); the engineer rebuilt that folder in place at
    fp16 (same checkpoint, same FP32 reference graph) and swapped to it from the console. It was refused as "another
    model than model ... in force": the map in force was learnt by reading the folder again at the swap, and the
    folder held the fp16 build by then. The map in force is the loaded bundle's, recorded at the start."""
    current = tmp_path / "current"
    shutil.copytree(station_bundles[0].root, current)
    console, inspector = station(load_bundle(current), regions(0.3))
    shutil.rmtree(current)
    shutil.copytree(station_bundles[1].root, current)   # rebuilt in place at fp16
    status = swapped(console, inspector, SimpleNamespace(root=current))
    assert status["state"] == "done" and status["taken"] == model_id(station_bundles[1]), status


def test_the_folder_in_force_rebuilt_in_place_with_another_network_is_refused(station, station_bundles, other_model,
                                                                              tmp_path):
    current = tmp_path / "current"
    shutil.copytree(station_bundles[0].root, current)
    console, inspector = station(load_bundle(current), regions(0.3))
    shutil.rmtree(current)
    shutil.copytree(other_model.root, current)   # rebuilt in place with another network
    status = swapped(console, inspector, SimpleNamespace(root=current))
    assert status["state"] == "failed" and status["taken"] is None, status
    assert status["error"].startswith(f"bundle {current} holds model {model_id(other_model)}, another model than "
                                      f"model {model_id(station_bundles[0])} in force"), status["error"]


def bundle_folder(parent: Path, name: str, graph: str, weights: str = "") -> tuple[Path, str]:
    """A bundle folder ``parent``/``name`` with only a bundle.json (its FP32 reference graph's SHA-256 ``graph``, and a
    file of its own, ``weights``' SHA-256, by default ``name``), written over whatever the folder held (a rebuild in
    place): what ``folder_model_ids`` reads and the stand-in loader loads. Returns (folder, its model id)."""
    folder = parent / name
    folder.mkdir(parents=True, exist_ok=True)
    files = {"model.fp32.onnx": {"sha256": graph}, "weights.pt": {"sha256": weights or name}}
    (folder / "bundle.json").write_text(json.dumps({"graph": {"onnx": "model.fp32.onnx",
                                                              "reference_onnx": "model.fp32.onnx"}, "files": files}))
    return folder, folder_model_ids(folder)[0]


def loaded(folder: Path, graph: str, weights: str = "") -> SimpleNamespace:
    """What ``load_bundle`` gives for ``bundle_folder(..., graph, weights)``, as far as the console reads it."""
    return SimpleNamespace(root=folder, reference_onnx_path=folder / "model.fp32.onnx", threshold=None,
                           files={"model.fp32.onnx": graph, "weights.pt": weights or folder.name})


def stand_in_console(tmp_path, in_force: Path, model: str, settings: RegionSettings, graph: str = "graph-a"):
    """A one-camera console started on ``loaded(in_force, graph)`` over a stand-in inspector running ``model`` with
    region rules ``settings``, as ``station.run`` opens it; its loader gives the change of ``bundle_folder`` (read
    back from the folder asked for)."""
    def load_model(bundle, threshold=None, regions=None):
        files = json.loads((Path(bundle) / "bundle.json").read_text())["files"]
        graph, weights = (files[name]["sha256"] for name in ("model.fp32.onnx", "weights.pt"))
        return ModelChange(scorer=SimpleNamespace(backend=SimpleNamespace(close=lambda: None)), threshold=0.5,
                           model=folder_model_ids(bundle)[0], bundle=loaded(Path(bundle), graph, weights))

    cfg = StationConfig(output=tmp_path / "out", console=ConsoleSettings(enabled=False))
    console = StationConsole(cfg, loaded(in_force, graph), links=StationLinks(load_model=load_model))
    inspector = SimpleNamespace(model=model, threshold=0.5, switch=ModelSwitch(),
                                regions=SimpleNamespace(settings=settings))
    console.attach(inspector, None, None, None, None)
    return console, inspector


def test_another_network_is_refused_and_the_same_one_rebuilt_goes_on_as_loaded(tmp_path):
    """The model in force is known by its id and the bundle it was loaded from at the start (never its folder read
    again). Another graph: refused; the same graph under another id (fp16, or calibrated again): done, in a folder
    of its own or in the folder in force rebuilt in place."""
    in_force, model = bundle_folder(tmp_path, "current", "graph-a")
    other, other_id = bundle_folder(tmp_path, "other", "graph-b")
    rebuilt, rebuilt_id = bundle_folder(tmp_path, "fp16", "graph-a")
    console, inspector = stand_in_console(tmp_path, in_force, model, regions(0.5))

    console.actions.swap(str(other), "ann")
    status = console.actions.swap_status
    assert status["state"] == "failed" and inspector.switch.pending is None, status
    assert status["error"].startswith(f"bundle {other} holds model {other_id}, another model than model {model}")

    console.actions.swap(str(rebuilt), "ann")
    assert console.actions.swap_status["state"] == "done", console.actions.swap_status
    assert inspector.switch.take().model == rebuilt_id

    console, inspector = stand_in_console(tmp_path / "again", in_force, model, regions(0.5))
    _, rebuilt_in_place = bundle_folder(tmp_path, "current", "graph-a", "fp16")   # current rebuilt in place at fp16
    assert rebuilt_in_place != model
    console.actions.swap(str(in_force), "ann")
    assert console.actions.swap_status["state"] == "done", console.actions.swap_status
    assert inspector.switch.take().model == rebuilt_in_place


def test_a_model_whose_network_is_not_known_is_refused_as_not_known_to_be_the_same(tmp_path):
    """The decider runs a model the console neither started on nor switched to (its FP32 reference graph unknown): a
    swap to another id is refused, saying the network is not known to be the same, not that it is another model."""
    in_force, model = bundle_folder(tmp_path, "current", "graph-a")
    rebuilt, rebuilt_id = bundle_folder(tmp_path, "fp16", "graph-a")
    console, inspector = stand_in_console(tmp_path, in_force, model, regions(0.5))
    inspector.model = "a-model-not-loaded-here"   # switched behind the console's back
    console.actions.swap(str(rebuilt), "ann")
    status = console.actions.swap_status
    assert status["state"] == "failed" and inspector.switch.pending is None, status
    assert status["error"].startswith(
        f"bundle {rebuilt} holds model {rebuilt_id}, not known to be the same network as model "
        "a-model-not-loaded-here in force (the model in force's FP32 reference graph is not known, so a copy or a "
        "rebuild at another precision cannot be told from another model), but the region rules in force decide"), \
        status["error"]
    assert "another model than" not in status["error"]


def test_a_pending_swap_is_the_model_the_next_swap_is_compared_with(tmp_path):
    """A bundle swapped in and not yet taken is what the rules will judge with: the next swap is compared with it."""
    in_force, model = bundle_folder(tmp_path, "fp32", "graph-a")
    other, other_id = bundle_folder(tmp_path, "other", "graph-b")
    rebuilt, _ = bundle_folder(tmp_path, "fp16", "graph-a")
    console, inspector = stand_in_console(tmp_path, in_force, model, regions(0.5))
    inspector.switch.request(ModelChange(scorer=SimpleNamespace(backend=SimpleNamespace(close=lambda: None)),
                                         model=other_id, bundle=loaded(other, "graph-b")))
    console.actions.swap(str(rebuilt), "ann")
    status = console.actions.swap_status
    assert status["state"] == "failed" and f"another model than model {other_id} in force" in status["error"], status


def test_a_cells_console_swap_to_another_model_is_refused_for_the_camera_whose_rules_decide(tmp_path):
    """Several cameras: camera a judges with rules at the file's 0.5, b without rules, both on one bundle; a swap of
    both to another model's bundle is refused naming a's pixel threshold; no camera switches."""
    in_force, model = bundle_folder(tmp_path, "fp32", "graph-a")
    other, other_id = bundle_folder(tmp_path, "other", "graph-b")

    def load_views(bundle, cameras, thresholds=None, regions=None):
        return {c: ModelChange(scorer=SimpleNamespace(backend=SimpleNamespace(close=lambda: None)), threshold=0.5,
                               model=other_id, bundle=loaded(other, "graph-b")) for c in cameras}

    from fair_edge.console.reload_scope import CameraBundle

    links = StationLinks(load_views=load_views, camera_bundles=lambda station_file=None: (
        CameraBundle("a", in_force, False, None), CameraBundle("b", in_force, False, None)))
    cfg = StationConfig(output=tmp_path / "out", console=ConsoleSettings(enabled=False))
    rng = np.random.default_rng(0)
    console = StationConsole(cfg, loaded(in_force, "graph-a"), links=links,
                             calibrations={"a": calibrated(rng, 0.0), "b": calibrated(rng, 0.0)})
    console.start_bundles({"a": loaded(in_force, "graph-a"), "b": loaded(in_force, "graph-a")})   # as open_cell_console
    console.attach_cell(TwoCameras(), {"a": in_force, "b": in_force})
    views = {"a": SimpleNamespace(model=model, threshold=0.5, switch=ModelSwitch(),
                                  regions=SimpleNamespace(settings=regions(0.5))),
             "b": SimpleNamespace(model=model, threshold=0.5, switch=ModelSwitch(), regions=None)}
    console.attach(SimpleNamespace(views=views), None, None, None, None)
    console.actions.swap(str(other), "ann")
    status = console.actions.swap_status
    assert status["state"] == "failed", status
    assert status["error"].startswith(f"bundle {other} holds model {other_id}, another model than model {model}") and \
        "regions.pixel_threshold 0.5," in status["error"], status["error"]
    assert all(v.switch.pending is None for v in views.values())


def test_a_cells_camera_folder_rebuilt_in_place_with_the_same_network_goes_on(tmp_path):
    """Several cameras: the folder both cameras started on rebuilt in place with the same FP32 reference graph (a
    rebuild at fp16) and swapped to: each camera's map in force is its loaded bundle's (``start_bundles``), so it
    goes on for camera a, whose rules decide at the file's pixel threshold."""
    in_force, model = bundle_folder(tmp_path, "current", "graph-a")
    start = loaded(in_force, "graph-a")
    _, rebuilt_id = bundle_folder(tmp_path, "current", "graph-a", "fp16")   # rebuilt in place at fp16
    rebuilt = loaded(in_force, "graph-a", "fp16")

    def load_views(bundle, cameras, thresholds=None, regions=None):
        return {c: ModelChange(scorer=SimpleNamespace(backend=SimpleNamespace(close=lambda: None)), threshold=0.5,
                               model=rebuilt_id, bundle=rebuilt) for c in cameras}

    from fair_edge.console.reload_scope import CameraBundle

    links = StationLinks(load_views=load_views, camera_bundles=lambda station_file=None: (
        CameraBundle("a", in_force, False, None), CameraBundle("b", in_force, False, None)))
    cfg = StationConfig(output=tmp_path / "out", console=ConsoleSettings(enabled=False))
    rng = np.random.default_rng(0)
    console = StationConsole(cfg, start, links=links, calibrations={"a": calibrated(rng, 0.0),
                                                                    "b": calibrated(rng, 0.0)})
    console.start_bundles({"a": start, "b": start})
    console.attach_cell(TwoCameras(), {"a": in_force, "b": in_force})
    views = {"a": SimpleNamespace(model=model, threshold=0.5, switch=ModelSwitch(),
                                  regions=SimpleNamespace(settings=regions(0.5))),
             "b": SimpleNamespace(model=model, threshold=0.5, switch=ModelSwitch(), regions=None)}
    console.attach(SimpleNamespace(views=views), None, None, None, None)
    console.actions.swap(str(in_force), "ann")
    assert console.actions.swap_status["state"] == "done", console.actions.swap_status
    assert all(v.switch.take().model == rebuilt_id for v in views.values())


# ------------------------------------------------------------------------------ 2. tuning while rules decide
def ruled_console(tmp_path, settings: RegionSettings = regions(None)):
    """A one-camera console with a station file (threshold 1.0) over the stand-in inspector judging with region rules
    ``settings``, 40 recent parts decided by model "m1" (scores 0.0 .. 2.0, half of them above the threshold)."""
    station = tmp_path / "station.yaml"
    station.write_text(yaml.safe_dump({"bundle": str(tmp_path), "decision": {"threshold": 1.0}}))
    console, inspector = one_camera_console(tmp_path, StationLinks(load_station=load_station), station_file=station)
    inspector.regions = SimpleNamespace(settings=settings)
    for seq, score in enumerate(np.linspace(0.0, 2.0, 40)):
        console.observe(None, verdict(seq, float(score), ng=False), None)   # the rules passed every part
    return console, inspector, station


def test_the_tune_page_projects_nothing_while_rules_decide(tmp_path):
    """The audit's case: rules passed every part, and the projection called half of them false rejects. Now the
    answer says the rules decide and what to tune, with no rates; a proposed threshold is still checked as input."""
    console, inspector, _ = ruled_console(tmp_path)
    client = api(console)
    for params in ({}, {"threshold": 1.5}):
        tuned = client.get("/api/tune", params=params)
        assert tuned.status_code == 200, tuned.text
        assert tuned.json() == {"current": 1.0, "rules_decide": rules_decide_note("")}, tuned.json()
    assert tuned.json()["rules_decide"].startswith("region rules decide the verdict: a part is NG exactly when a rule "
                                                   "fires")
    assert "the image threshold changes no verdict" in tuned.json()["rules_decide"]
    assert "Tune the rules in the station file instead" in tuned.json()["rules_decide"]
    assert client.get("/api/tune", params={"threshold": "nan"}).status_code == 400


def test_a_threshold_applied_while_rules_decide_is_refused_and_changes_nothing(tmp_path):
    console, inspector, station = ruled_console(tmp_path)
    before = station.read_text()
    r = api(console).post("/api/threshold", json={"threshold": 1.5, "who": "ann", "confirm": True})
    assert r.status_code == 409, r.text
    assert r.json()["error"] == f"the threshold was not changed: {rules_decide_note('')}"
    assert inspector.switch.pending is None and station.read_text() == before
    assert not (tmp_path / AUDIT).exists() or "threshold" not in (tmp_path / AUDIT).read_text()


def test_rules_a_pending_reload_brings_decide_the_tune_page_already(tmp_path):
    """A reload's change that waits for the next batch with rules: its rules decide from that batch on."""
    console, inspector, _ = ruled_console(tmp_path, regions(None, rules=ZoneRules()))
    inspector.switch.request(ModelChange(regions=regions(None)))
    assert "rules_decide" in api(console).get("/api/tune").json()
    assert api(console).post("/api/threshold", json={"threshold": 1.5, "who": "ann", "confirm": True}).status_code \
        == 409


def test_regions_only_reported_keep_the_projection_and_the_apply(tmp_path):
    """Without a rule that can fire the score decides: projected and applied as before."""
    console, inspector, station = ruled_console(tmp_path, regions(None, rules=ZoneRules()))
    client = api(console)
    tuned = client.get("/api/tune", params={"threshold": 1.5}).json()
    assert "rules_decide" not in tuned and tuned["proposed"]["false_reject_rate"] == pytest.approx(10 / 40)
    r = client.post("/api/threshold", json={"threshold": 1.5, "who": "ann", "confirm": True})
    assert r.status_code == 200, r.text
    assert inspector.switch.take().threshold == 1.5
    assert yaml.safe_load(station.read_text())["decision"]["threshold"] == 1.5


def test_a_cells_camera_whose_rules_decide_is_named_and_the_other_is_projected(tmp_path):
    """Several cameras: camera a's rules decide, b's score does; tuning a says so naming a (and its --camera for
    `fair-edge rules check`), b is projected; a threshold applied to a is refused, nothing switched."""
    console = StationConsole(StationConfig(output=tmp_path, console=ConsoleSettings(enabled=False)),
                             SimpleNamespace(root=tmp_path, threshold=None),
                             calibrations={"a": calibrated(np.random.default_rng(0), 0.0),
                                           "b": calibrated(np.random.default_rng(1), 0.0)})
    console.attach_cell(TwoCameras(), {"a": tmp_path / "b", "b": tmp_path / "b"})
    views = {"a": SimpleNamespace(model="m1", threshold=1.0, switch=ModelSwitch(),
                                  regions=SimpleNamespace(settings=regions(None))),
             "b": SimpleNamespace(model="m1", threshold=1.0, switch=ModelSwitch(), regions=None)}
    console.attach(SimpleNamespace(views=views), None, None, None, None)
    client = api(console)
    ruled = client.get("/api/tune", params={"camera": "a"}).json()
    assert ruled == {"current": 1.0, "camera": "a", "rules_decide": rules_decide_note("a")}
    assert ruled["rules_decide"].startswith("region rules decide the verdict of camera a:")
    assert "--camera a" in ruled["rules_decide"]
    assert "proposed" in client.get("/api/tune", params={"camera": "b"}).json()
    r = client.post("/api/threshold", json={"threshold": 1.5, "who": "ann", "confirm": True, "camera": "a"})
    assert r.status_code == 409 and "camera a" in r.json()["error"], r.text
    assert views["a"].switch.pending is None
