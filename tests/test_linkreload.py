"""A rollout by link without a station file: `fair-edge run --bundle bundles/current` (``current`` a link to
bundles/v1), then ``ln -sfn v2 bundles/current`` and ``kill -HUP``. The reload loaded v1 again: it took the bundle
in force by its loaded root, the link's target at the start, not by the flag as named. Now a reload without a station
file loads the folder the bundle in force was named by (the flag, or the path a console swap was given), so a link
leads to its target now; the console shows the link with its target. A threshold applied from the console stays
paired with its model by model id, as with a station file: a reload onto another model with it in force is refused,
nothing loaded. Each test runs the real command line (``StationSignals`` wiring the console) over a stand-in station
whose loader reads the real bundle the path leads to (its resolved root, its model id); swaps run inline."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from export_fixtures import MODEL, make_frames
from fair_edge.export.build import BuildOptions, build_bundle
from fair_edge.export.bundle import load_bundle
from fair_edge.models.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from fair_edge.runtime.hotswap import ModelChange, ModelSwitch, model_id
from fair_edge.station import run as run_module
from test_reload_flags import run_command, take
from inline_swaps import inline_swaps, kept_signals  # noqa: F401 (autouse fixtures)


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_detector) -> dict[str, Path]:
    """{"v1": a bundle of the tiny model (0.5 % false rejects), "v2": the same checkpoint calibrated to 20 % false
    rejects (another threshold, so another model id)}: the folders, built once."""
    root = tmp_path_factory.mktemp("linkreload")
    ckpt = root / "final.pt"
    save_checkpoint(ckpt, Checkpoint(MODEL, tiny_detector.unet.state_dict()))
    normals = make_frames(8, seed=3, size=40)
    return {name: build_bundle(load_checkpoint(ckpt), root / name, BuildOptions(engine=False, false_reject_rate=rate),
                               normal_frames=normals).bundle.root
            for name, rate in (("v1", 0.005), ("v2", 0.2))}


@pytest.fixture
def bundles(built, tmp_path, monkeypatch) -> Path:
    """tmp_path/bundles with copies v1, v2 and v1-copy (v1's model in another folder) and the link current -> v1,
    the working folder tmp_path (the flag is given as bundles/current, relative, as an operator types it)."""
    folder = tmp_path / "bundles"
    for name, source in (("v1", built["v1"]), ("v2", built["v2"]), ("v1-copy", built["v1"])):
        shutil.copytree(source, folder / name)
    (folder / "current").symlink_to("v1")
    monkeypatch.chdir(tmp_path)
    return folder


def repoint(link: Path, target: str) -> None:
    """``ln -sfn TARGET LINK``: the link replaced at once (a new link renamed over it)."""
    fresh = link.with_name(link.name + ".new")
    fresh.symlink_to(target)
    os.replace(fresh, link)


def run_with_link(monkeypatch, tmp_path, args: list[str], scenario) -> list[tuple[Path, str, float | None]]:
    """`fair-edge run --bundle bundles/current ARGS --console off --out OUT` (no station file) over a stand-in for
    ``station.cell.run``: its console opened as ``run_station`` opens it, on the bundle the flag leads to (loaded: its
    root is the link's target), a stand-in inspector running that model at its threshold; ``scenario(console,
    decider)`` drives it. Returns each load the reloads and swaps asked for: (the path as asked, the model id the
    folder held then, the threshold asked for)."""
    loads = []

    def load_change(bundle_path, backend, roi_path, threshold=None, regions=None):
        bundle = load_bundle(bundle_path)
        loads.append((Path(bundle_path), model_id(bundle), threshold))
        return ModelChange(scorer=SimpleNamespace(reason="new", backend=SimpleNamespace(close=lambda: None)),
                           threshold=bundle.threshold.value if threshold is None else threshold,
                           model=model_id(bundle), bundle=bundle)

    def station(cfg):
        bundle = load_bundle(cfg.bundle)
        console = run_module.open_console(cfg, bundle, None, contextlib.ExitStack())
        summary = SimpleNamespace(inspected=0, ng=0, malformed=0, inference_errors=0, region_errors=0, fault="",
                                  backend="fake")
        decider = SimpleNamespace(model=model_id(bundle), threshold=cfg.threshold or bundle.threshold.value,
                                  switch=ModelSwitch(), summary=summary)
        console.attach(decider, None, None, None, None)
        return console, decider

    monkeypatch.setattr(run_module, "load_change", load_change)
    run_command(monkeypatch, tmp_path, ["--bundle", "bundles/current", *args], scenario, station)
    return loads


def shown_bundle(console) -> str:
    """The bundle the console shows (the live and threshold pages' ``model.bundle``)."""
    return console.feed.state()["model"]["bundle"]


def test_a_reload_without_a_station_file_loads_the_links_target_now(bundles, tmp_path, monkeypatch):
    """The report's case: started with --bundle bundles/current (-> v1), the link re-pointed to v2, kill -HUP: v1 was
    loaded again (its resolved folder). Now the reload loads bundles/current as named, so v2's model runs (at its own
    threshold: none was given or applied), and the console shows the link with its target, before and after."""
    link, v1, v2 = bundles / "current", (bundles / "v1").resolve(), (bundles / "v2").resolve()
    shown = {}

    def scenario(console, decider):
        shown["start"] = shown_bundle(console)
        repoint(link, "v2")   # ln -sfn v2 bundles/current
        console.reload_bundle("SIGHUP")
        assert console.actions.swap_status["state"] == "done", console.actions.swap_status
        take(decider)
        shown["reloaded"] = shown_bundle(console)
        shown["swap"] = console.actions.swap_status["bundle"]

    loads = run_with_link(monkeypatch, tmp_path, [], scenario)
    assert loads == [(link, model_id(load_bundle(v2)), None)], "the reload must load the link as named, now v2"
    assert shown["start"] == f"{link} -> {v1}"
    assert shown["reloaded"] == shown["swap"] == f"{link} -> {v2}"


def test_a_reload_without_a_station_file_keeps_the_applied_threshold_paired_with_its_model(bundles, tmp_path,
                                                                                          monkeypatch, caplog):
    """0.45 applied from the console on v1's model; the link re-pointed to v2 (another model id): the reload is
    refused, nothing loaded, naming both models and the fix (before: v2 ran at v1's 0.45). The link re-pointed to a
    copy of v1's model in another folder: that reload loads it at 0.45."""
    link = bundles / "current"
    v1_model, v2_model = model_id(load_bundle(bundles / "v1")), model_id(load_bundle(bundles / "v2"))
    status = {}

    def scenario(console, decider):
        console.actions.apply_threshold(0.45, "ann", True)
        take(decider)
        repoint(link, "v2")
        with caplog.at_level(logging.ERROR):
            console.reload_bundle("SIGHUP")
        status.update(console.actions.swap_status)
        assert decider.switch.take() is None, "nothing may be switched to"
        repoint(link, "v1-copy")
        console.reload_bundle("SIGHUP")
        take(decider)
        assert decider.threshold == 0.45 and decider.model == v1_model

    loads = run_with_link(monkeypatch, tmp_path, [], scenario)
    assert loads == [(link, v1_model, 0.45)], "v2 must not be loaded at v1's threshold"
    assert status["state"] == "failed"
    refusal = status["error"]
    assert refusal.startswith("bundle reload refused (SIGHUP): ")
    assert f"the threshold 0.45 in force was applied from the console on model {v1_model}" in refusal
    assert f"bundle {link} (-> {(bundles / 'v2').resolve()}) holds model {v2_model} now" in refusal
    assert "nothing was reloaded" in refusal and "swap to it from the console" in refusal
    assert [r.getMessage() for r in caplog.records if r.getMessage().startswith("bundle reload refused")] \
        == [refusal]


def test_a_folder_rebuilt_in_place_with_another_model_refuses_the_threshold_applied_on_the_old_one(
        bundles, tmp_path, monkeypatch):
    """No link: --bundle bundles/current a folder of v1's model, 0.45 applied from the console, the folder rebuilt
    with v2's model (`fair-edge build ... --out bundles/current`), kill -HUP: refused, nothing loaded (before: v2 ran
    at v1's 0.45, as a station file's reload no longer did)."""
    current = bundles / "current"
    current.unlink()
    shutil.copytree(bundles / "v1", current)
    status = {}

    def scenario(console, decider):
        console.actions.apply_threshold(0.45, "ann", True)
        take(decider)
        shutil.rmtree(current)
        shutil.copytree(bundles / "v2", current)
        console.reload_bundle("SIGHUP")
        status.update(console.actions.swap_status)

    assert run_with_link(monkeypatch, tmp_path, [], scenario) == []
    v1_model = model_id(load_bundle(bundles / "v1"))
    assert status["state"] == "failed"
    assert f"bundle {current} holds model {model_id(load_bundle(bundles / 'v2'))} now" in status["error"]
    assert f"to keep 0.45, put model {v1_model}'s bundle back in {current}, then reload" in status["error"]


def test_a_bundle_swapped_in_by_a_link_is_reloaded_through_the_link(bundles, tmp_path, monkeypatch):
    """A bundle swapped in from the console by a link (bundles/next -> v1-copy) is the bundle in force as the
    operator named it: re-pointed to v2, a reload without a station file loads v2 (at its own threshold: the swapped
    bundle ran at its own, no threshold was applied on it), and the console shows the link with its target."""
    nxt = bundles / "next"
    nxt.symlink_to("v1-copy")
    shown = {}

    def scenario(console, decider):
        console.actions.swap("bundles/next", "ann")
        take(decider)
        shown["swapped"] = shown_bundle(console)
        repoint(nxt, "v2")
        console.reload_bundle("SIGHUP")
        take(decider)
        shown["reloaded"] = shown_bundle(console)

    loads = run_with_link(monkeypatch, tmp_path, [], scenario)
    v1_model, v2_model = model_id(load_bundle(bundles / "v1")), model_id(load_bundle(bundles / "v2"))
    assert loads == [(Path("bundles/next"), v1_model, None), (nxt, v2_model, None)]
    assert shown["swapped"] == f"{nxt} -> {(bundles / 'v1-copy').resolve()}"
    assert shown["reloaded"] == f"{nxt} -> {(bundles / 'v2').resolve()}"


def test_a_bundle_named_by_its_own_folder_is_shown_as_that_folder(bundles, tmp_path, monkeypatch):
    """No link: the console shows the folder alone (no arrow), as before."""
    shown = {}

    def scenario(console, decider):
        console.actions.swap(str((bundles / "v2").resolve()), "ann")
        take(decider)
        shown["swapped"] = shown_bundle(console)

    run_with_link(monkeypatch, tmp_path, [], scenario)
    assert shown["swapped"] == str((bundles / "v2").resolve())
