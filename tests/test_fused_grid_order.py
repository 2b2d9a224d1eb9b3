"""A fused bundle checks every member's map grid, not only its first member's: a tiled member's map grows with the
frame, and the fused threshold was calibrated on its maps of the held-out frames. Before, fusion.json recorded the
first member's grid only and the other members' maps were resized onto it, so the same larger frame was NG with
the grid error when the tiled member came first and decided on its score when it came second."""

import json
import shutil
from dataclasses import replace

import pytest

from export_fixtures import MODEL, PRE, make_frames
from fair_edge.errors import BundleError
from fair_edge.export.build import BuildOptions, build_bundle
from fair_edge.models.checkpoint import Checkpoint
from fair_edge.records import Frame
from fair_edge.runtime.fusion import FusedScorer, build_fused_bundle, load_fused_bundle, write_fusion_manifest
from fair_edge.runtime.selection import select_backend
from fair_edge.station.decision import decide_threshold
from fair_edge.station.inspector import Inspector
from fair_edge.tiling import TilingConfig


@pytest.fixture(scope="module")
def members(tmp_path_factory, tiny_detector):
    """A whole-frame and a tiled FAIR bundle built on 8 held-out 64 px normals, fused in both orders."""
    root = tmp_path_factory.mktemp("grid-order")
    normals = make_frames(8, seed=5, size=64)
    state = tiny_detector.unet.state_dict()
    built = {}
    for name, pre in (("whole", PRE), ("tiled", replace(PRE, tiling=TilingConfig(32, 8)))):
        ckpt = Checkpoint(replace(MODEL, preprocess=pre), state)
        built[name] = build_bundle(ckpt, root / name, BuildOptions(engine=False), normal_frames=normals).bundle
    fused = {order: build_fused_bundle([built[n].root for n in order.split("-")], root / order, normals)
             for order in ("whole-tiled", "tiled-whole")}
    return built, fused, normals


def _inspect(bundle, scorer, frames):
    """The verdicts of ``frames`` at the station's calibrated threshold and grid for ``bundle``."""
    decided = decide_threshold(None, bundle, None, scorer.graph_threshold)
    inspector = Inspector(None, scorer, decided.value, grid=decided.grid)
    return inspector.inspect([Frame(i, 0.0, f, "f") for i, f in enumerate(frames)])


def test_fusion_json_records_each_members_own_grid(members):
    built, fused, normals = members
    tiled_grid = tuple(select_backend(built["tiled"], "onnxruntime").infer_frames(normals[:1])[0].shape[1:])
    whole_grid = tuple(select_backend(built["whole"], "onnxruntime").infer_frames(normals[:1])[0].shape[1:])
    assert tiled_grid != whole_grid
    bundle = fused["whole-tiled"]
    data = json.loads((bundle.root / "fusion.json").read_text())
    assert [tuple(m["grid"]) for m in data["members"]] == [whole_grid, tiled_grid]
    assert bundle.member_grids == (whole_grid, tiled_grid) and bundle.grid == whole_grid
    assert fused["tiled-whole"].member_grids == (tiled_grid, whole_grid)


@pytest.mark.parametrize("order", ["tiled-whole", "whole-tiled"])
def test_a_larger_frame_is_ng_with_the_grid_error_whatever_the_tiled_members_place(members, order):
    """The same 96 px frame through the tiled bundle alone and through both fusions: NG with an error naming the
    tiled member's calibration grid and its map of this frame. Before, tiled second: decided on its score, no error."""
    built, fused, normals = members
    large = make_frames(1, seed=9, size=96)[0]
    alone = _inspect(built["tiled"], select_backend(built["tiled"], "onnxruntime"), [normals[0], large])
    assert alone[0].error == "" and alone[1].ng and "threshold calibrated on" in alone[1].error
    grids = alone[1].error.split(":")[0]   # "threshold calibrated on H x W maps (...), but this 96 x 96 frame gives a h x w map"

    bundle = fused[order]
    scorer = FusedScorer(bundle, "onnxruntime")
    verdicts = _inspect(bundle, scorer, [normals[0], large])
    scorer.backend.close()
    member = f"m{order.split('-').index('tiled')}"
    assert verdicts[0].error == ""                                  # a frame of the held-out size is decided
    assert verdicts[1].ng and verdicts[1].error.startswith(f"{grids} (fused member {member}'s)"), verdicts[1].error
    assert "`fair-edge fuse B1 B2 --normal DIR --out FUSED`" in verdicts[1].error


def test_an_older_fusion_json_without_member_grids_loads_checked_on_the_first_members_grid(members, tmp_path, caplog):
    """fusion.json fused before member grids: still verifies (its checksum is of what it holds), the first
    member's grid is the recorded top-level one, the others unknown; a later tiled member is warned about at load
    with the command that fuses the members again. A member grid added or edited by hand is refused."""
    _, fused, _ = members
    old = tmp_path / "old"
    shutil.copytree(fused["whole-tiled"].root, old)
    data = json.loads((old / "fusion.json").read_text())
    for member in data["members"]:
        member.pop("grid")
    write_fusion_manifest(old, data)   # checksummed as an older `fair-edge fuse` wrote it
    with caplog.at_level("WARNING", logger="fair_edge.runtime.fusion"):
        loaded = load_fused_bundle(old)
    assert loaded.member_grids == (loaded.grid, None)
    assert "first member only" in caplog.text and "tiled member m1" in caplog.text
    assert f"`fair-edge fuse {old}/m0 {old}/m1 --normal DIR --rule mean" in caplog.text

    tiled_first = tmp_path / "tiled-first"
    shutil.copytree(fused["tiled-whole"].root, tiled_first)
    data_tf = json.loads((tiled_first / "fusion.json").read_text())
    for member in data_tf["members"]:
        member.pop("grid")
    write_fusion_manifest(tiled_first, data_tf)
    caplog.clear()
    with caplog.at_level("WARNING", logger="fair_edge.runtime.fusion"):
        assert load_fused_bundle(tiled_first).member_grids[0] == tuple(data_tf["grid"])
    assert "first member only" not in caplog.text   # its only tiled member is the first: checked as before

    data["members"][1]["grid"] = [1, 1]
    (old / "fusion.json").write_text(json.dumps(data))   # added by hand, not by `fair-edge fuse`: checksum differs
    with pytest.raises(BundleError, match="changed after fusion"):
        load_fused_bundle(old)
    write_fusion_manifest(old, data)
    data["members"][1]["grid"] = [32]
    write_fusion_manifest(old, data)
    with pytest.raises(BundleError, match=r"invalid members\[\]\.grid"):
        load_fused_bundle(old)
