"""A console swap checks a bundle's map grids by the rule the station decides frames by (review of de9c759).

``hotswap.change_off_grid`` (the swap's check) kept its own copy of the station's rule (``ViewDecider.off_grid``),
and the copies drifted: with the threshold given by the station (no calibrated grid recorded: ``change.grid``
None) the station checks no map, while the swap still checked a fused bundle's tiled members and refused the swap
("every frame would be NG") although the station would decide every frame. Both now ask ``hotswap.map_off_grid``.
"""

from __future__ import annotations

import pytest

from export_fixtures import make_frames
from fair_edge.runtime.backends import close_scorer
from fair_edge.runtime.hotswap import change_off_grid, model_id
from fair_edge.station.bundles import load_change
from fair_edge.station.inspector import ViewDecider
from test_fused_tile_size_hint import HELD_OUT_PX, fused  # noqa: F401 - 96 px calibration frames; the fused fixture
from test_relearn_loop import swap_console

OTHER_PX = 136     # a camera of another resolution
STATION_THRESHOLD = 3.0   # decision.threshold in the station file: no calibrated grid is recorded for it


def test_a_swap_with_the_stations_threshold_to_a_fused_tiled_bundle_is_not_refused(fused, tmp_path, monkeypatch):
    """The camera sends 136 px frames; the swap runs at the station file's threshold (grid None): the station would
    decide these frames, so the swap is done (was: refused naming fused member m0's 96 x 96 grid). At the
    bundle's own calibrated threshold it is still refused, naming the member."""
    console, inspector = swap_console(tmp_path, monkeypatch, OTHER_PX)
    console.actions.swap(str(fused.root), "ann", threshold=STATION_THRESHOLD)
    status = console.actions.swap_status
    assert status["state"] == "done", status
    change = inspector.switch.take()
    assert change.model == model_id(fused) and change.threshold == STATION_THRESHOLD and change.grid is None
    close_scorer(change.scorer)

    console, inspector = swap_console(tmp_path / "own", monkeypatch, OTHER_PX)
    console.actions.swap(str(fused.root), "ann")
    status = console.actions.swap_status
    assert status["state"] == "failed" and "(fused member m0's)" in status["error"], status
    assert inspector.switch.pending is None


@pytest.mark.parametrize("threshold", [None, STATION_THRESHOLD], ids=["calibrated", "station's"])
def test_the_swap_refuses_exactly_the_frames_the_station_would_reject_off_grid(fused, threshold):
    """Scoring frames of each size with the swapped-in model, the station's verdict error (``ViewDecider.off_grid``)
    and the swap's check (``change_off_grid``) agree: the same map, grids and member, or both nothing."""
    change = load_change(fused.root, "onnxruntime", None, threshold=threshold)
    try:
        decider = ViewDecider(change.scorer, change.threshold, grid=change.grid)
        for size in (HELD_OUT_PX, OTHER_PX):
            frame = make_frames(1, seed=9, size=size)[0]
            maps, _ = change.scorer.infer_frames([frame])
            reason = decider.off_grid(frame.shape[:2], maps.shape[1:])
            found = change_off_grid(change, frame.shape[:2])
            assert (found is None) == (reason == ""), (size, found, reason)
            if found is not None:
                whose, calibrated, live = found
                assert f"calibrated on {calibrated[0]} x {calibrated[1]} maps" in reason
                assert f"gives a {live[0]} x {live[1]} map{whose}:" in reason
        assert (threshold is None) == (change_off_grid(change, (OTHER_PX, OTHER_PX)) is not None)
    finally:
        close_scorer(change.scorer)
