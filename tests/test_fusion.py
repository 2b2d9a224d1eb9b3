"""Score fusion: normalisation and rules, the fused bundle (two FAIR models of different settings),
its verification, the runtime scorer, and the CLI."""

import json
import re
from dataclasses import replace

import numpy as np
import pytest
from typer.testing import CliRunner

from export_fixtures import MODEL, PRE, make_frames, write_pngs
from fair_edge.models.checkpoint import Checkpoint, load_checkpoint
from fair_edge.cli import app
from fair_edge.errors import BundleError, ConfigError, DataError
from fair_edge.export.build import BuildOptions, build_bundle
from fair_edge.runtime.fusion import (FusedScorer, NormalStats, build_fused_bundle, fuse_maps, is_fused,
                              load_fused_bundle, write_fusion_manifest)
from fair_edge.runtime.selection import select_backend
from fair_edge.tiling import TilingConfig


def test_maps_are_normalised_by_each_models_own_normal_spread():
    a = np.full((2, 4, 4), 10.0, np.float32)
    b = np.full((2, 8, 8), 0.5, np.float32)
    a[0, 1, 1] = 14.0  # model a: +2 std at one pixel of frame 0
    stats = [NormalStats(10.0, 2.0), NormalStats(0.5, 0.01)]
    fused, scores = fuse_maps([a, b], stats, "mean")
    assert fused.shape == (2, 4, 4)  # on the first model's grid
    assert scores.tolist() == pytest.approx([1.0, 0.0])  # mean of z = (2 + 0) / 2
    _, max_scores = fuse_maps([a, b], stats, "max")
    assert max_scores.tolist() == pytest.approx([2.0, 0.0])


def test_bad_fusion_inputs_are_refused():
    m = np.zeros((1, 4, 4), np.float32)
    with pytest.raises(ConfigError, match="rule must be one of"):
        fuse_maps([m, m], [NormalStats(0, 1)] * 2, "median")
    with pytest.raises(ConfigError, match=">= 2 models"):
        fuse_maps([m], [NormalStats(0, 1)], "mean")
    # a model whose normal map maxima do not spread has no unit: refused naming it (was std 1e-12, threshold 0)
    for flat in (np.array([1.0, 1.0]), np.zeros(3), np.array([5.0, 5.0 + 1e-9])):
        with pytest.raises(DataError, match=r"member m1 \(b1\): its map maxima on the \d held-out normal images do not "
                                            r"spread .* pass more varied normal images with --normal"):
            NormalStats.fit(flat, "member m1 (b1)")
    assert NormalStats.fit(np.array([1.0, 1.5])).std == pytest.approx(0.25)


@pytest.fixture(scope="module")
def fused(tmp_path_factory, tiny_detector):
    """Two FAIR bundles of different settings (whole frame; tiled) fused on 8 held-out normals."""
    root = tmp_path_factory.mktemp("fusion")
    normals = make_frames(8, seed=5, size=64)
    state = tiny_detector.unet.state_dict()
    members = []
    for name, pre in (("whole", PRE), ("tiled", replace(PRE, tiling=TilingConfig(32, 8)))):
        ckpt = Checkpoint(replace(MODEL, preprocess=pre), state)
        members.append(build_bundle(ckpt, root / name, BuildOptions(engine=False), normal_frames=normals).bundle)
    bundle = build_fused_bundle([m.root for m in members], root / "fused", normals)
    return bundle, members, normals


def test_fused_bundle_calibrates_one_threshold_on_fused_scores(fused):
    bundle, members, normals = fused
    assert is_fused(bundle.root) and len(bundle.members) == 2 and bundle.rule == "mean"
    scorer = FusedScorer(bundle, "onnxruntime")
    maps, scores = scorer.infer_frames(normals)
    assert maps.shape == (8, 32, 32)
    top = float(scores.max())   # 8 normals at 0.5 %: just above the highest, 1e-3 x it + 1e-6 (nothing above it)
    assert bundle.threshold.value == pytest.approx(top + 1e-3 * abs(top) + 1e-6, rel=1e-5)
    member_maps = [select_backend(m, "onnxruntime").infer_frames(normals)[0] for m in members]
    for st, m in zip(bundle.stats, member_maps):  # stats are the members' own normal scores
        per_frame = m.reshape(8, -1).max(axis=1)
        assert st.mean == pytest.approx(float(per_frame.mean()), rel=1e-5)
    assert "fusion (mean)" in scorer.reason
    scorer.backend.close()


def test_every_backend_gives_the_same_fused_scores(fused):
    bundle, _, _ = fused
    frames = make_frames(3, seed=9, size=64, defect=True)
    ort = FusedScorer(bundle, "onnxruntime").infer_frames(frames)[1]
    torch_cpu = FusedScorer(bundle, "torch-cpu").infer_frames(frames)[1]
    np.testing.assert_allclose(ort, torch_cpu, rtol=1e-4, atol=1e-4)


def test_a_changed_member_is_refused(fused, tmp_path):
    import shutil

    bundle, _, _ = fused
    copy = tmp_path / "copy"
    shutil.copytree(bundle.root, copy)
    manifest = copy / "m1" / "bundle.json"
    data = json.loads(manifest.read_text())
    data["build_command"] = "edited"
    manifest.write_text(json.dumps(data))
    with pytest.raises(BundleError, match="changed since fusion"):
        load_fused_bundle(copy)


def test_cli_fuse(fused, tmp_path):
    _, members, normals = fused
    folder = write_pngs(tmp_path / "normals", normals)
    result = CliRunner().invoke(app, ["fuse", str(members[0].root), str(members[1].root), "--normal", str(folder),
                                      "--out", str(tmp_path / "f"), "--rule", "max"])
    assert result.exit_code == 0, result.output
    assert load_fused_bundle(tmp_path / "f").rule == "max"
    one = CliRunner().invoke(app, ["fuse", str(members[0].root), "--normal", str(folder), "--out", str(tmp_path / "g")])
    assert one.exit_code == 2 and "at least 2 bundles" in one.output


def test_cli_fuse_refuses_held_out_normals_whose_scores_do_not_spread(fused, tmp_path):
    """Twelve copies of one image fused with std clamped to 1e-12: threshold 0, every normal part rejected."""
    _, members, normals = fused
    folder = write_pngs(tmp_path / "same", [normals[0]] * 6)
    result = CliRunner().invoke(app, ["fuse", str(members[0].root), str(members[1].root), "--normal", str(folder),
                                      "--out", str(tmp_path / "f")])
    text = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert f"member m0 ({members[0].root})" in text and "6 held-out normal images do not spread" in text
    assert "pass more varied normal images with --normal" in text and not (tmp_path / "f").exists()


def test_cli_fuse_skips_held_out_images_that_cannot_be_a_model_input(fused, tmp_path, caplog):
    """A 1 x 1 px normal was scored into the members' statistics, and a truncated one (or one smaller than the
    tiled member's tile) stopped the fuse; now each is skipped with a warning naming it, as train and eval do."""
    import logging

    import cv2

    from fair_edge.cli.fuse import app as fuse_app   # without the root app's logging set-up: caplog sees warnings

    bundle, members, normals = fused
    folder = write_pngs(tmp_path / "normals", normals)
    cv2.imwrite(str(folder / "zz_1px.png"), np.full((1, 1, 3), 255, np.uint8))
    cv2.imwrite(str(folder / "zz_small.png"), normals[0][:20, :20])   # under the tiled member's 32 px tile
    (folder / "zz_truncated.png").write_bytes((folder / "000.png").read_bytes()[:300])
    with caplog.at_level(logging.WARNING):
        result = CliRunner().invoke(fuse_app, [str(members[0].root), str(members[1].root), "--normal", str(folder),
                                               "--out", str(tmp_path / "f")])   # the sub-app's one command
    assert result.exit_code == 0, result.output
    for name in ("zz_1px.png", "zz_small.png", "zz_truncated.png"):
        assert str(folder / name) in caplog.text
    assert "skipped 3 unreadable or undersized image(s) of 11" in caplog.text
    again = load_fused_bundle(tmp_path / "f")
    for got, want in zip(again.stats, bundle.stats):   # fitted on the 8 normals alone, as the fixture's
        assert got.mean == pytest.approx(want.mean, rel=1e-5) and got.std == pytest.approx(want.std, rel=1e-4)


def test_a_bad_fusion_manifest_is_refused(fused, tmp_path):
    import shutil

    bundle, _, _ = fused
    copy = tmp_path / "copy"
    shutil.copytree(bundle.root, copy)
    data = json.loads((copy / "fusion.json").read_text())
    write_fusion_manifest(copy, dict(data, rule="median"))   # checksummed, so the field checks are reached
    with pytest.raises(BundleError, match="rule 'median'"):
        load_fused_bundle(copy)
    write_fusion_manifest(copy, {k: v for k, v in data.items() if k != "stats"})
    with pytest.raises(BundleError, match="invalid field"):
        load_fused_bundle(copy)
    members = [{k: v for k, v in m.items() if k != "manifest_sha256"} for m in data["members"]]
    write_fusion_manifest(copy, dict(data, members=members))   # was a KeyError traceback
    with pytest.raises(BundleError, match="changed since fusion"):
        load_fused_bundle(copy)


@pytest.mark.parametrize("edit", [
    lambda d: d["threshold"].update(value=1e9),                  # never reject anything
    lambda d: d["stats"][1].update(std=1e6),                     # silence member 1
    lambda d: d.update(rule="max"),
])
def test_an_edited_fusion_manifest_is_refused(fused, tmp_path, edit):
    """fusion.json carries the checksum of its own content (as bundle.json does): an edited threshold, member
    std or rule is refused, naming the file and the fix; a re-fused bundle of another threshold has another
    model id (fusion.json's SHA-256 is among ``files``)."""
    import shutil

    from fair_edge.runtime.hotswap import model_id

    bundle, _, _ = fused
    copy = tmp_path / "copy"
    shutil.copytree(bundle.root, copy)
    data = json.loads((copy / "fusion.json").read_text())
    assert data["metadata_sha256"] and not (copy / "fusion.json.tmp").exists()
    edit(data)
    (copy / "fusion.json").write_text(json.dumps(data, indent=2))
    with pytest.raises(BundleError, match=r"fusion\.json was changed after fusion.*`fair-edge fuse"):
        load_fused_bundle(copy)
    write_fusion_manifest(copy, data)   # what `fair-edge fuse` writes: loads, and is another model
    assert "fusion.json" in load_fused_bundle(copy).files
    assert model_id(load_fused_bundle(copy)) != model_id(bundle)


def test_a_fusion_manifest_without_its_checksum_is_refused(fused, tmp_path):
    """A fusion.json written before the checksum existed cannot be verified: refused with the fix, as a
    bundle.json without its metadata checksum is (``export.bundle``)."""
    import shutil

    bundle, _, _ = fused
    copy = tmp_path / "copy"
    shutil.copytree(bundle.root, copy)
    data = json.loads((copy / "fusion.json").read_text())
    (copy / "fusion.json").write_text(json.dumps({k: v for k, v in data.items() if k != "metadata_sha256"}))
    command = f"`fair-edge fuse {copy}/m0 {copy}/m1 --normal DIR --rule mean --false-reject-rate 0.005 --backend "
    with pytest.raises(BundleError, match=r"has no metadata_sha256 .*" + re.escape(command)):
        load_fused_bundle(copy)   # the command as this fusion.json records it (tests/test_fuse_rebuild_command.py)


def test_members_must_map_the_same_part_of_the_frame(fused, tiny_detector, tmp_path, monkeypatch):
    """The fused map adds the members' maps pixel by pixel: a member tiled over (8, 8, 48, 48) of the frame and one
    over the whole frame are refused, naming both; two over the same rectangle fuse, and the station crops masks and
    places maps by that rectangle (``map_area``)."""
    from fair_edge.station.bundles import change_for
    from fair_edge.station.inspector import Inspector

    _, (whole, _), normals = fused
    pre = replace(PRE, tiling=TilingConfig(32, 8, roi=(8, 8, 48, 48)))
    ckpt = Checkpoint(replace(MODEL, preprocess=pre), tiny_detector.unet.state_dict())
    part = [build_bundle(ckpt, tmp_path / f"part{i}", BuildOptions(engine=False), normal_frames=normals).bundle
            for i in range(2)]
    with pytest.raises(ConfigError, match=r"whole: the whole frame; part0: tiling.roi \[8, 8, 48, 48\]"):
        build_fused_bundle([whole.root, part[0].root], tmp_path / "mixed", normals)
    assert not (tmp_path / "mixed").exists()                       # refused before anything is copied
    same = build_fused_bundle([p.root for p in part], tmp_path / "same", normals)
    assert same.map_area == (8, 8, 48, 48) and whole.map_area is None
    inspector = Inspector(None, FusedScorer(fused[0], "onnxruntime"), 1.0)          # a swap brings the area along
    inspector.switch.request(change_for(same, FusedScorer(same, "onnxruntime"), None, threshold=1.0))
    inspector.apply_switch()
    assert inspector.decider.map_area == (8, 8, 48, 48)
    import fair_edge.runtime.fusion as fusion                      # one fused before the check: refused at load

    with monkeypatch.context() as patched:
        patched.setattr(fusion, "check_same_area", lambda members, where: None)
        build_fused_bundle([whole.root, part[0].root], tmp_path / "old", normals)
    with pytest.raises(ConfigError, match="members of .*old map different parts of the frame"):
        load_fused_bundle(tmp_path / "old")



def test_a_fused_bundle_records_its_grid_and_frames_off_it_fail_safe(fused, tmp_path):
    """The fused map lies on the first member's grid. With a tiled member first it grows with the frame, so the
    fused threshold (the maximum over 64 px frames' maps) is another quantity on larger frames: the grid is
    recorded at fusion and the station's decider refuses frames off it, as for a tiled bundle. A (checksummed)
    fusion.json with no grid loads with no grid (no check); one fused before the grid was kept also predates the
    metadata checksum and is refused (test_a_fusion_manifest_without_its_checksum_is_refused)."""
    import shutil

    from fair_edge.records import Frame
    from fair_edge.station.decision import decide_threshold
    from fair_edge.station.inspector import Inspector

    _, (whole, tiled), normals = fused
    bundle = build_fused_bundle([tiled.root, whole.root], tmp_path / "tiled-first", normals)
    scorer = FusedScorer(bundle, "onnxruntime")
    maps, _ = scorer.infer_frames(normals[:1])
    assert bundle.grid == maps.shape[1:] and json.loads((bundle.root / "fusion.json").read_text())["grid"] == list(maps.shape[1:])
    decided = decide_threshold(None, bundle, None, scorer.graph_threshold)
    assert decided.grid == bundle.grid
    large = make_frames(1, seed=9, size=96)
    verdicts = Inspector(None, scorer, decided.value, grid=decided.grid).inspect(
        [Frame(0, 0.0, normals[0], "f"), Frame(1, 0.0, large[0], "f")])
    assert verdicts[0].error == "" and verdicts[1].ng and "96 x 96 frame" in verdicts[1].error
    scorer.backend.close()

    old = tmp_path / "old"
    shutil.copytree(bundle.root, old)
    data = json.loads((old / "fusion.json").read_text())
    write_fusion_manifest(old, {k: v for k, v in data.items() if k != "grid"})
    assert load_fused_bundle(old).grid is None and decide_threshold(None, load_fused_bundle(old), None).grid is None
    write_fusion_manifest(old, dict(data, grid=[32]))
    with pytest.raises(BundleError, match="invalid field"):
        load_fused_bundle(old)


def test_fusion_records_the_graph_each_member_was_fitted_on(fused):
    bundle, _, _ = fused
    data = json.loads((bundle.root / "fusion.json").read_text())
    fitted = [m["fitted_on"] for m in data["members"]]
    assert fitted == [{"backend": "onnxruntime", "graph": "model.fp32.onnx"}] * 2   # the default --backend
    assert [(f.backend, f.graph) for f in bundle.fitted_on] == [("onnxruntime", "model.fp32.onnx")] * 2
    # FP32 members: the PyTorch backends' weights reproduce the same graph, so nothing to warn about
    scorer = FusedScorer(bundle, "torch-cpu")
    assert scorer.off_graph == []
    scorer.backend.close()


def test_a_member_run_on_another_graph_than_fitted_warns_naming_the_fix(fused, tmp_path, caplog):
    """Member statistics and the fused threshold hold for the graphs fusion ran: an FP16 member fitted on ONNX
    Runtime (its FP16 graph) and run on PyTorch (FP32 weights) is warned about, naming both fixes; the station
    still starts (a threshold calibrated on another graph warns, as the PyTorch backends do on an older bundle)."""
    _, (whole, _), normals = fused
    ckpt = load_checkpoint(whole.weights_path)
    half = build_bundle(ckpt, tmp_path / "half", BuildOptions("fp16", engine=False), normal_frames=normals).bundle
    bundle = build_fused_bundle([half.root, whole.root], tmp_path / "mixed", normals)
    assert bundle.fitted_on[0].graph == "model.fp16.onnx" and bundle.fitted_on[1].graph == "model.fp32.onnx"
    with caplog.at_level("WARNING", logger="fair_edge.runtime.fusion"):
        same = FusedScorer(bundle, "onnxruntime")
    assert same.off_graph == [] and caplog.text == ""
    same.backend.close()
    with caplog.at_level("WARNING", logger="fair_edge.runtime.fusion"):
        other = FusedScorer(bundle, "torch-cpu")
    assert len(other.off_graph) == 1 and "member m0 runs model.fp32.onnx on torch-cpu" in other.off_graph[0]
    assert "fitted on model.fp16.onnx (onnxruntime)" in caplog.text and "calibrated on another graph" in caplog.text
    assert "--backend torch-cpu`" in caplog.text and "run the station with --backend onnxruntime" in caplog.text
    assert other.infer_frames(normals[:2])[1].shape == (2,)
    other.backend.close()


def test_an_older_fusion_manifest_without_fitted_graphs_loads_with_a_warning(fused, tmp_path, caplog):
    import shutil

    bundle, _, _ = fused
    old = tmp_path / "old"
    shutil.copytree(bundle.root, old)
    data = json.loads((old / "fusion.json").read_text())
    for member in data["members"]:
        member.pop("fitted_on")
    write_fusion_manifest(old, data)   # checksummed as an older `fair-edge fuse` wrote it
    with caplog.at_level("WARNING", logger="fair_edge.runtime.fusion"):
        loaded = load_fused_bundle(old)
    assert loaded.fitted_on == (None, None) and loaded.threshold == bundle.threshold
    assert "records no graph its member statistics" in caplog.text and "--backend BACKEND`" in caplog.text
    data["members"][0]["fitted_on"] = {"backend": "onnxruntime", "graph": "model.fp32.onnx"}
    (old / "fusion.json").write_text(json.dumps(data))   # added by hand, not by `fair-edge fuse`: checksum differs
    with pytest.raises(BundleError, match="changed after fusion"):
        load_fused_bundle(old)


def test_a_swap_that_region_rules_cannot_judge_is_refused(fused):
    """A fused bundle has no pixel threshold (its map is in normal-spread units). With region rules deciding the
    verdict, a swap to it is refused as the start is (before, it kept the old model's pixel threshold, another
    scale, with a warning); with regions.pixel_threshold set it loads."""
    from fair_edge.station.bundles import load_change
    from fair_edge.station.zones import RegionSettings

    bundle = fused[0]
    rules = RegionSettings.from_dict({"default": {"min_area_px": 10}})
    with pytest.raises(ConfigError, match="sets rules but bundle .* has no calibrated pixel threshold"):
        load_change(bundle.root, "onnxruntime", None, regions=rules)
    change = load_change(bundle.root, "onnxruntime", None,
                         regions=RegionSettings.from_dict({"pixel_threshold": 2.0, "default": {"min_area_px": 10}}))
    change.scorer.backend.close()
    load_change(bundle.root, "onnxruntime", None, regions=RegionSettings.from_dict({})).scorer.backend.close()


def test_fusion_with_a_tiled_member_refuses_held_out_images_of_two_sizes_naming_them(fused, tmp_path):
    """The tiled member (32 px tiles) maps 64 px frames to 64 x 64 and 80 px frames to 80 x 80; one fused threshold
    needs one grid: a DataError naming two images and their sizes, not NumPy's stacking error."""
    from fair_edge.errors import DataError

    _, members, normals = fused
    frames = [*normals[:3], *make_frames(2, seed=8, size=80)]
    with pytest.raises(DataError, match=r"member m1 is tiled and maps held-out normal image 1 \(64 x 64 px\) to a "
                                        r"64 x 64 map but image 4 \(80 x 80 px\) to 80 x 80 .*Pass --normal images of one"):
        build_fused_bundle([m.root for m in members], tmp_path / "fused", frames)


def _tree(root):
    """{relative path: bytes} of every file under ``root``."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_fused_bundle_fused_again_from_its_own_members_into_itself_is_replaced_whole(fused, tmp_path):
    """`fair-edge fuse FUSED/m0 FUSED/m1 --out FUSED` (the fix an old fusion.json names, with the only copies of the
    members an upgrade often leaves): the fused bundle is made next to --out and moved into place, so its members
    are read before anything is deleted (it deleted m0, then failed copying it); nothing is left beside it."""
    import shutil

    bundle, _, normals = fused
    copy = tmp_path / "copy"
    shutil.copytree(bundle.root, copy)
    members_before = {k: v for k, v in _tree(copy).items() if not k.startswith("fusion")}
    data = json.loads((copy / "fusion.json").read_text())
    (copy / "fusion.json").write_text(json.dumps({k: v for k, v in data.items() if k != "metadata_sha256"}))
    with pytest.raises(BundleError, match="has no metadata_sha256"):
        load_fused_bundle(copy)
    again = build_fused_bundle([copy / "m0", copy / "m1"], copy, normals)
    assert again.root == copy and load_fused_bundle(copy).threshold.value == pytest.approx(bundle.threshold.value)
    assert {k: v for k, v in _tree(copy).items() if not k.startswith("fusion")} == members_before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy"]   # no staging or replaced folder left


@pytest.mark.parametrize("failure", ["oserror", "dataerror"])
def test_a_refusion_that_fails_midway_leaves_the_fused_bundle_as_it_was(fused, tmp_path, monkeypatch, failure):
    """A failure after the members are copied (a full disk writing fusion.json; a refused statistic) leaves --out
    byte for byte as it was and nothing beside it; an OSError is a BundleError naming the path, not a traceback."""
    import errno
    import shutil

    from fair_edge.errors import DataError
    from fair_edge.runtime import fusion

    bundle, _, normals = fused
    copy = tmp_path / "copy"
    shutil.copytree(bundle.root, copy)
    before = _tree(copy)

    def fail(root, manifest):
        if failure == "oserror":
            raise OSError(errno.ENOSPC, "No space left on device", str(root / "fusion.json"))
        raise DataError(f"refused at {root}")

    monkeypatch.setattr(fusion, "write_fusion_manifest", fail)
    expected = (BundleError, r"--out .*copy: cannot write the fused bundle \(.*fusion\.json: No space left") \
        if failure == "oserror" else (DataError, r"refused at .*copy$")
    with pytest.raises(expected[0], match=expected[1]):
        build_fused_bundle([copy / "m0", copy / "m1"], copy, normals)
    assert _tree(copy) == before and load_fused_bundle(copy).threshold == bundle.threshold
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy"]


def test_fuse_refuses_an_out_that_is_not_a_fused_bundle(fused, tmp_path):
    """The fused bundle replaces --out whole: a folder of other files, or a member bundle itself, is refused
    before anything is written, not replaced (nor mixed with m0, m1 as before)."""
    _, members, normals = fused
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("keep")
    for out in (other, members[0].root):
        with pytest.raises(BundleError, match="exists and is not a fused bundle .*choose an empty or new directory"):
            build_fused_bundle([m.root for m in members], out, normals)
    assert (other / "notes.txt").read_text() == "keep" and sorted(p.name for p in other.iterdir()) == ["notes.txt"]
    assert not (members[0].root / "m0").exists()


@pytest.mark.parametrize("code, words", [(28, "is full ("), (30, "is on a read-only file system"),
                                         (13, "Make its files readable by this account")])
def test_a_member_copy_that_fails_names_the_disk_of_out_or_the_member_by_its_errno(fused, tmp_path, monkeypatch,
                                                                                  code, words):
    """`fuse` on a full disk said "Make its files readable by this account" (any OSError blamed the member). Now a
    full (ENOSPC) or read-only (EROFS) disk names --out's disk, its free space and the fix; a permission error still
    names the member; nothing is left beside --out."""
    import os
    import shutil

    _, members, normals = fused
    out = tmp_path / "f"

    def fail(src, dst, *, follow_symlinks=True):
        raise OSError(code, os.strerror(code), str(src), None, str(dst))

    monkeypatch.setattr(shutil, "copyfile", fail)
    with pytest.raises(BundleError) as err:
        build_fused_bundle([m.root for m in members], out, normals)
    message = str(err.value)
    assert f"cannot copy member bundle {members[0].root} into the fused bundle" in message and words in message
    assert ".building-" not in message and list(tmp_path.iterdir()) == []
    if code != 13:
        assert f"--out {out}" in message and "readable" not in message and "`fair-edge fuse` again" in message
    if code == 28:
        assert f"MB free on the disk of {tmp_path})" in message


def test_fuse_removes_the_staging_folder_a_killed_fuse_left(fused, tmp_path):
    """A fuse killed by SIGKILL left its `.f.building-*` folder beside --out for good; the next fuse removes it."""
    from pathlib import Path

    _, members, normals = fused
    dead = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1
    (tmp_path / f".f.building-{dead}-abcd_123" / "m0").mkdir(parents=True)
    build_fused_bundle([m.root for m in members], tmp_path / "f", normals)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_fuse_into_an_out_that_is_a_link_writes_where_it_points_and_keeps_the_link(fused, tmp_path):
    """`fuse --out LINK` replaced the link by the fused bundle (on the link's disk) and left the link aside as
    `.LINK.replaced-PID` for good; now the fused bundle is written where the link points and the link kept."""
    bundle, members, normals = fused
    target, links = tmp_path / "disk" / "fused_real", tmp_path / "links"
    target.mkdir(parents=True)
    links.mkdir()
    (links / "fused").symlink_to(target)
    for _ in range(2):   # a new fused bundle, then one replacing it
        again = build_fused_bundle([m.root for m in members], links / "fused", normals)
    assert (links / "fused").is_symlink() and [p.name for p in links.iterdir()] == ["fused"]
    assert [p.name for p in target.parent.iterdir()] == ["fused_real"] and is_fused(target)
    assert again.root == target and again.threshold.value == pytest.approx(bundle.threshold.value)
