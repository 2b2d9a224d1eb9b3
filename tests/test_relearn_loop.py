"""The review -> retrain -> rebuild -> swap loop, audited (station 8):

1. A miss flagged on the live page after its frame left the console's memory (``console.keep_frames``; 3 s at
   10 parts/s) was saved without its image ("" in reviews.jsonl), and the dataset export dropped it. The API now
   refuses a review it cannot save an image for (409, naming keep_frames, nothing recorded), and the live page greys
   the miss button of a part whose frame is gone, in a held table too.
2. A threshold applied from the console was checked against the bundle *folder* a reload loads, and not at all at
   start: the folder rebuilt with another model (or ``bundle:`` edited, then a restart) ran that model at the old
   model's threshold. Now the model id recorded in the audit row is compared with the model the folder holds, at a
   reload and at start; a copy of the same model in another folder is no longer refused.
3. Two builds of one checkpoint calibrated to other thresholds (15.66 and 13.70) shared one model id: it hashed the
   bundle's files only. It now hashes bundle.json too.
4. A tiled bundle calibrated on another frame size swapped in as "done", then every part was NG with the grid error:
   the swap now refuses it with that error and the old model runs on.
"""

from __future__ import annotations

import functools
import logging
import shutil
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from export_fixtures import MODEL, PRE, make_frames
from fair_edge.console import reload_scope, swaps as swaps_module, threshold_refusals
from fair_edge.console.actions import StationLinks
from fair_edge.console.station_hook import StationConsole
from fair_edge.errors import ConfigError
from fair_edge.export.bundle import load_bundle
from fair_edge.export.build import BuildOptions, build_bundle
from fair_edge.models.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from fair_edge.records import Frame
from fair_edge.runtime.hotswap import ModelChange, ModelSwitch, model_id
from fair_edge.station.bundles import load_change
from fair_edge.station.config import load_station
from fair_edge.tiling import TilingConfig
from test_console_units import api, one_camera_console, verdict
from inline_swaps import InlineThread

FRAME_PX = 96   # the held-out normals' size: 40 px tiles, overlap 8 -> a 77 x 77 map
OTHER_PX = 136  # a camera of another resolution: a 109 x 109 map


# ---------------------------------------------------------------- bundles: one checkpoint twice, another model
@pytest.fixture(scope="module")
def bundles(tmp_path_factory, tiny_detector):
    """{"a": tiled bundle of the tiny model (0.5 % false rejects), "a_again": the same checkpoint calibrated to 20 %
    false rejects, "c": another model (other weights)}, each built from 96 px held-out normals."""
    root = tmp_path_factory.mktemp("relearn")
    model = replace(MODEL, preprocess=replace(PRE, tiling=TilingConfig(40, 8)))
    normals = make_frames(8, seed=3, size=FRAME_PX)
    state = tiny_detector.unet.state_dict()
    other = {k: v * 1.5 if k.startswith("head.") else v for k, v in state.items()}   # another model's maps
    built = {}
    for name, weights, rate in (("a", state, 0.005), ("a_again", state, 0.2), ("c", other, 0.005)):
        path = root / f"{name}.pt"
        save_checkpoint(path, Checkpoint(model, weights))
        built[name] = build_bundle(load_checkpoint(path), root / name, BuildOptions(engine=False, false_reject_rate=rate),
                                   normal_frames=normals).bundle
    return built


# ---------------------------------------------------------------- 3. the model id covers bundle.json
def test_a_bundle_calibrated_again_on_the_same_checkpoint_gets_another_model_id(bundles, tmp_path):
    """The audit's case: one checkpoint built twice at other false-reject rates, thresholds apart, one id. Now each
    build has its own id; a copy of a bundle in another folder keeps its id, and the id its manifests record
    (``folder_model_ids``, a reload's check before loading) is the loaded bundle's."""
    a, again = bundles["a"], bundles["a_again"]
    assert a.threshold.value != again.threshold.value
    assert model_id(a) != model_id(again), "a rebuilt bundle must get a new id"
    from fair_edge.runtime.hotswap import files_model_id, folder_model_ids

    assert files_model_id(a) == files_model_id(again)   # the id before: the same files, the same id
    copy = tmp_path / "copy"
    shutil.copytree(a.root, copy)
    assert model_id(load_bundle(copy)) == model_id(a)
    assert folder_model_ids(a.root) == (model_id(a), files_model_id(a))
    assert folder_model_ids(tmp_path / "nothing") == ()


# ---------------------------------------------------------------- 2. threshold and model paired by model id
def reload_station(tmp_path, bundle: Path, model: str, monkeypatch):
    """A one-camera console as a station running ``bundle`` (model id ``model``) from station file station.yaml,
    its swaps inline, over a loader that records (bundle folder, threshold) and loads the real bundle's id. Returns
    (console, decider, loads, station file)."""
    monkeypatch.setattr(swaps_module, "threading", SimpleNamespace(Thread=InlineThread, Lock=swaps_module.Lock))
    station = tmp_path / "station.yaml"
    station.write_text(yaml.safe_dump({"bundle": str(bundle), "output": str(tmp_path / "out"),
                                       "console": {"enabled": False}}))
    loads = []

    def load_model(path, threshold=None, regions=None):
        loads.append((Path(path), threshold))
        return ModelChange(scorer=SimpleNamespace(reason="loaded", backend=SimpleNamespace(close=lambda: None)),
                           threshold=threshold or 1.0, model=model_id(load_bundle(path)),
                           bundle=SimpleNamespace(root=Path(path), threshold=None))

    cfg = load_station(station)
    console = StationConsole(cfg, SimpleNamespace(root=cfg.bundle, threshold=None),
                             links=StationLinks(load_model=load_model, load_station=load_station))
    summary = SimpleNamespace(inspected=0, ng=0, malformed=0, inference_errors=0, region_errors=0, fault="",
                              backend="fake")
    decider = SimpleNamespace(model=model, threshold=1.0, switch=ModelSwitch(), summary=summary)
    console.attach(decider, None, None, None, None)
    return console, decider, loads, station


def refused_reloads(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("bundle reload refused")]


def test_a_reload_of_a_folder_rebuilt_with_another_model_refuses_the_threshold_applied_on_the_old_one(
        bundles, tmp_path, monkeypatch, caplog):
    """The audit's case: 14.5 applied on model A of folder live_bundle, the folder rebuilt in place with model C,
    kill -HUP: C ran at A's threshold (every part OK). Now the reload is refused naming both models and the fix,
    nothing is loaded; with decision.threshold set for C (null here: its own) it loads."""
    live = tmp_path / "live_bundle"
    shutil.copytree(bundles["a"].root, live)
    console, decider, loads, station = reload_station(tmp_path, live, model_id(bundles["a"]), monkeypatch)
    try:
        console.actions.apply_threshold(14.5, "ann", True)
        decider.switch.take()
        shutil.rmtree(live)
        shutil.copytree(bundles["c"].root, live)   # `fair-edge build C.pt --out live_bundle`
        with caplog.at_level(logging.ERROR):
            console.reload_bundle("SIGHUP")
        assert loads == [], "model C must not be loaded at model A's threshold"
        (refused,) = refused_reloads(caplog)
        assert f"decision.threshold 14.5 was applied from the console on bundle {live} (model {model_id(bundles['a'])}" \
            in refused
        assert f"this reload would load (model {model_id(bundles['c'])}: the folder was rebuilt since)" in refused
        assert "(null: the bundle's own calibrated threshold)" in refused and "nothing was reloaded" in refused
        data = yaml.safe_load(station.read_text())
        data["decision"]["threshold"] = None   # the fix: C's own threshold
        station.write_text(yaml.safe_dump(data))
        console.reload_bundle("SIGHUP")
        assert loads == [(live, None)]
    finally:
        console.close()


def test_a_reload_onto_a_copy_of_the_same_model_keeps_the_threshold_applied_on_it(bundles, tmp_path, monkeypatch,
                                                                                caplog):
    """bundle: edited to a copy of the same model in another folder (same model id): the threshold applied on it
    holds there, so the reload loads it (was: refused, another folder); bundle: edited to another model's folder is
    refused."""
    first, copy = tmp_path / "v1", tmp_path / "v1-copy"
    shutil.copytree(bundles["a"].root, first)
    shutil.copytree(bundles["a"].root, copy)
    console, decider, loads, station = reload_station(tmp_path, first, model_id(bundles["a"]), monkeypatch)
    try:
        console.actions.apply_threshold(0.64, "ann", True)
        decider.switch.take()
        for bundle in (copy, bundles["c"].root):
            data = yaml.safe_load(station.read_text())
            data["bundle"] = str(bundle)
            station.write_text(yaml.safe_dump(data))
            console.reload_bundle("SIGHUP")
        assert loads == [(copy, 0.64)]
        (refused,) = refused_reloads(caplog)
        assert f"not on bundle {bundles['c'].root} this reload would load (model {model_id(bundles['c'])})" in refused
    finally:
        console.close()


def test_a_start_refuses_the_threshold_applied_on_another_model_naming_it_and_the_fix(bundles, tmp_path,
                                                                                    monkeypatch):
    """The audit's restart case: 14.5 applied from the console on model A; then bundle: edited to model C (or its
    folder rebuilt) and the station restarted: it ran C at 14.5. Now the start is refused before anything opens,
    naming the threshold, the model it was applied on, the bundle named now and the fix; A itself still starts."""
    from fair_edge.station.run import run_station

    console, decider, _, station = reload_station(tmp_path, bundles["a"].root, model_id(bundles["a"]), monkeypatch)
    console.actions.apply_threshold(14.5, "ann", True)
    console.close()
    data = yaml.safe_load(station.read_text())
    data["bundle"] = str(bundles["c"].root)   # the hand edit, then a restart
    station.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as refused:
        run_station(load_station(station), threading_event())
    text = str(refused.value)
    assert f"decision.threshold 14.5 was applied from the console on bundle {bundles['a'].root} (model " \
           f"{model_id(bundles['a'])}" in text
    assert f"not on bundle {bundles['c'].root} this start would load (model {model_id(bundles['c'])})" in text
    assert "set decision.threshold for" in text and "(null: the bundle's own calibrated threshold)" in text
    assert "then start the station (it was not started)" in text
    from fair_edge.station.bundles import check_applied_threshold, read_bundle

    data["bundle"] = str(bundles["a"].root)
    station.write_text(yaml.safe_dump(data))
    check_applied_threshold(load_station(station), read_bundle(bundles["a"].root))   # the model it was applied on
    data["bundle"], data["decision"]["threshold"] = str(bundles["c"].root), None
    station.write_text(yaml.safe_dump(data))
    check_applied_threshold(load_station(station), read_bundle(bundles["c"].root))   # its own threshold: starts


def threading_event():
    import threading

    stop = threading.Event()
    stop.set()
    return stop


# ---------------------------------------------------------------- 4. a swap onto a tiled model of another frame size
def swap_console(tmp_path, monkeypatch, frame_px: int):
    """A one-camera console whose latest frame is ``frame_px`` square, swapping with the station's real loader
    (``load_change`` on ONNX Runtime), inline."""
    monkeypatch.setattr(swaps_module, "threading", SimpleNamespace(Thread=InlineThread, Lock=swaps_module.Lock))
    links = StationLinks(load_model=functools.partial(load_change, backend="onnxruntime", roi_path=None))
    console, inspector = one_camera_console(tmp_path, links)
    console.observe(Frame(1, 0.0, np.zeros((frame_px, frame_px, 3), np.uint8)), verdict(1, 0.5), None)
    return console, inspector


def test_a_swap_to_a_tiled_bundle_calibrated_on_another_frame_size_is_refused_and_the_old_model_runs_on(
        bundles, tmp_path, monkeypatch):
    """Bundle a was calibrated on 96 px frames (77 x 77 maps); the camera sends 136 px frames (109 x 109 maps).
    The swap said "done" and every part was NG with the grid error; now it fails with that error and nothing is
    switched. The same bundle at the camera's own size swaps in."""
    console, inspector = swap_console(tmp_path, monkeypatch, OTHER_PX)
    console.actions.swap(str(bundles["a"].root), "ann")
    status = console.actions.swap_status
    assert status["state"] == "failed", status
    assert "threshold calibrated on 77 x 77 maps" in status["error"]
    assert "latest 136 x 136 frame gives a 109 x 109 map" in status["error"]
    assert "`fair-edge build --normal DIR`" in status["error"] and "or set decision.threshold" in status["error"]
    assert inspector.switch.pending is None and inspector.model == "m1"

    console, inspector = swap_console(tmp_path / "fits", monkeypatch, FRAME_PX)
    console.actions.swap(str(bundles["a"].root), "ann")
    assert console.actions.swap_status["state"] == "done"
    assert inspector.switch.take().model == model_id(bundles["a"])


# ---------------------------------------------------------------- 1. a review is saved with its image, or refused
def passed(console, seqs):
    for seq in seqs:
        console.observe(Frame(seq, 0.0, np.full((8, 8, 3), seq, np.uint8)), verdict(seq, 0.5), None)


def test_a_miss_on_a_part_whose_frame_left_memory_is_refused_naming_keep_frames(tmp_path):
    """keep_frames 2, parts 1..4 passed: a miss on part 1 (its frame gone) was recorded with image "" and lost at
    export; now 409 naming console.keep_frames, nothing recorded. Part 4 (kept) is recorded with its image; an NG
    part whose frame left memory is reviewed from the recorder's NG image."""
    from fair_edge.images import write_png
    from fair_edge.line.ng_images import ng_image_path

    console, _ = one_camera_console(tmp_path, keep_frames=2)
    passed(console, range(1, 5))
    client = api(console)
    refused = client.post("/api/review", json={"seq": 1, "label": "miss", "who": "ann"})
    assert refused.status_code == 409, refused.text
    error = refused.json()["error"]
    assert "part 1" in error and "console.keep_frames" in error and "nothing was recorded" in error
    assert not (tmp_path / "reviews.jsonl").exists() and not (tmp_path / "review").exists()

    kept = client.post("/api/review", json={"seq": 4, "label": "miss", "who": "ann"})
    assert kept.status_code == 200 and kept.json()["image"], kept.text
    assert (tmp_path / kept.json()["image"]).is_file()

    console.observe(Frame(5, 0.0, np.zeros((8, 8, 3), np.uint8)), verdict(5, 2.0, ng=True), None)
    passed(console, range(6, 9))   # part 5's frame leaves memory; the recorder saved it as an NG image
    write_png(ng_image_path(tmp_path, console.feed.run_id, 5, "frame", "png"), np.zeros((8, 8, 3), np.uint8))
    reviewed = client.post("/api/review", json={"seq": 5, "label": "defect", "who": "ann"})
    assert reviewed.status_code == 200 and (tmp_path / reviewed.json()["image"]).is_file(), reviewed.text


def test_the_live_state_says_which_frames_are_kept(tmp_path):
    """Each row's ``kept``, and ``kept_from`` (the oldest part kept): a table held still greys the rows older. By
    default every row the live page shows has its frame when shown (keep_frames 32 >= 24 rows); at 10 parts/s the
    oldest shown row's frame is gone 0.8 s later, hence the greying."""
    from fair_edge.console.settings import ConsoleSettings
    from fair_edge.console.views import RECENT_SHOWN, live_state

    assert ConsoleSettings().keep_frames >= RECENT_SHOWN

    console, _ = one_camera_console(tmp_path, keep_frames=3)
    passed(console, range(1, 7))
    state = live_state(console.feed, console.actions)
    assert [(r["seq"], r["kept"]) for r in state["recent"]] == [(6, True), (5, True), (4, True), (3, False),
                                                                 (2, False), (1, False)]
    assert state["kept_from"] == {"": 4} and state["keep_frames"] == 3


def test_a_refusal_over_an_audit_row_an_older_release_wrote_names_no_bundle_it_cannot_know(tmp_path):
    """Audit rows written before rows named their bundle have a model only: after the rebuild an upgrade asks for,
    the refusal says the bundle was not recorded (it printed "bundle ?" and told the site to "name bundle ? again")."""
    row = {"new": 5.45005, "model": "64587dcbc687", "who": "op", "time": "2026-11-30T10:00:00Z"}
    named = reload_scope.CameraBundle("", tmp_path / "b_int8", False, 5.45005)
    text = threshold_refusals.threshold_pair_refusal(tmp_path / "station.yaml", row, named, ("95d3ce63e18b",), "start")
    assert "an older release did not record which" in text and "model 64587dcbc687" in text
    assert "?" not in text.replace("(model 64587dcbc687", "") and "name bundle" not in text
    assert f"set decision.threshold for {tmp_path / 'b_int8'}" in text
