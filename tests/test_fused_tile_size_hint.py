"""A frame smaller than a fused bundle's tiles names the member whose tiling it is too small for, that member's tile
and the frame size that member was calibrated on (its own recorded grid, ``FusedBundle.member_grids``). Before, the
error said "the bundle's tiled model" and took the calibrated frame size from the first member's grid at the other
member's scale: here "about 192 x 192 px" for frames of 96 x 96 px."""

from dataclasses import replace

import pytest

from export_fixtures import MODEL, PRE, make_frames
from fair_edge.export.build import BuildOptions, build_bundle
from fair_edge.models.checkpoint import Checkpoint
from fair_edge.records import Frame
from fair_edge.runtime.fusion import FusedScorer, build_fused_bundle
from fair_edge.station.decision import decide_threshold
from fair_edge.station.inspector import Inspector
from fair_edge.tiling import TilingConfig

HELD_OUT_PX = 96


@pytest.fixture(scope="module")
def fused(tmp_path_factory, tiny_detector):
    """Two tiled FAIR bundles, 32 px tiles (m0) and 64 px tiles (m1), built on 8 held-out 96 px normals and fused."""
    root = tmp_path_factory.mktemp("tile-hint")
    normals = make_frames(8, seed=5, size=HELD_OUT_PX)
    state = tiny_detector.unet.state_dict()
    members = []
    for tile in (32, 64):
        ckpt = Checkpoint(replace(MODEL, preprocess=replace(PRE, tiling=TilingConfig(tile, 8))), state)
        members.append(build_bundle(ckpt, root / f"tile{tile}", BuildOptions(engine=False), normal_frames=normals).bundle)
    return build_fused_bundle([m.root for m in members], root / "fused", normals)


def _errors(bundle, frames) -> list[str]:
    """The verdict errors of ``frames`` through a station inspector of the fused ``bundle``."""
    scorer = FusedScorer(bundle, "onnxruntime")
    try:
        decided = decide_threshold(None, bundle, None, scorer.graph_threshold)
        inspector = Inspector(None, scorer, decided.value, grid=decided.grid)
        return [v.error for v in inspector.inspect([Frame(i, 0.0, f, "f") for i, f in enumerate(frames)])]
    finally:
        scorer.backend.close()


def test_a_frame_too_small_for_the_second_members_tiles_names_it_and_its_calibrated_size(fused):
    assert fused.member_grids[0] != fused.member_grids[1]   # 96 x 96 (32 px tiles), 48 x 48 (64 px tiles)
    error = _errors(fused, [make_frames(1, seed=9, size=48)[0]])[0]
    assert error.startswith("malformed frame:"), error
    assert "48 x 48 px frame is smaller than fused member m1's tiled model takes: its 64 px tiles need frames of at " \
           f"least 64 x 64 px; it was calibrated on frames of about {HELD_OUT_PX} x {HELD_OUT_PX} px." in error, error


def test_a_frame_too_small_for_the_first_members_tiles_names_that_member(fused):
    error = _errors(fused, [make_frames(1, seed=9, size=24)[0]])[0]
    assert "24 x 24 px frame is smaller than fused member m0's tiled model takes: its 32 px tiles need frames of at " \
           f"least 32 x 32 px; it was calibrated on frames of about {HELD_OUT_PX} x {HELD_OUT_PX} px." in error, error


def test_a_frame_of_the_held_out_size_is_decided(fused):
    assert _errors(fused, make_frames(1, seed=9, size=HELD_OUT_PX)) == [""]
