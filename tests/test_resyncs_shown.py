"""``parts.resyncs`` (the times a camera of a cell fell out of step and was matched again, ``match: sequence``)
was in summary.json and the console's state only: the run summary's parts row and the console's part counters
did not show it, so a slipping camera went unseen by whoever watched the run. The cell's line is the one of
``test_sequence_slip`` (a camera that takes no frame of some triggers), its assembler on a fake clock."""

from __future__ import annotations

import pytest

from test_sequence_slip import _line

CAMERA = {"frames_in": 0, "inspected": 0, "ng": 0, "dropped": 0, "lost": 0, "state": "running", "end_reason": ""}


def slipped_parts(missed: dict[str, set[int]]) -> dict:
    """The part counters of 60 triggers of two cameras, ``missed``: camera -> the triggers it takes no frame of."""
    asm, _, _ = _line(60, missed)
    return dict(asm.stats)


@pytest.mark.parametrize("missed, resyncs", [({}, 0), ({"right": {30}}, 1), ({"right": {10, 40}}, 2)])
def test_the_run_summary_parts_row_counts_the_times_a_camera_fell_out_of_step(monkeypatch, missed, resyncs):
    """A camera that slips moves the parts row's resync count with the assembler's (0, 1, 2)."""
    from test_inspector import _printed_summary

    from fair_edge.station.inspector import RunSummary

    parts = slipped_parts(missed)
    assert parts["resyncs"] == resyncs
    summary = RunSummary(cameras={"left": CAMERA, "right": CAMERA}, parts=parts)
    printed = _printed_summary(monkeypatch, summary)
    assert (f"parts │ 60: {parts['ng']} NG, {parts['not_inspected']} not inspected, {resyncs} resyncs (a camera "
            "out of step), 0 duplicate views skipped │") in printed, printed


def test_parts_matched_other_than_by_sequence_show_no_resync_count(monkeypatch):
    """``match: window`` / ``encoder`` / ``handshake`` never count resyncs (no such key): the row does not name one."""
    from test_inspector import _printed_summary

    from fair_edge.station.inspector import RunSummary

    parts = {"parts": 4, "ng": 1, "ok": 3, "not_inspected": 0, "late_views": 0}
    printed = _printed_summary(monkeypatch, RunSummary(cameras={"left": CAMERA, "right": CAMERA}, parts=parts))
    assert "parts │ 4: 1 NG, 0 not inspected │" in printed and "resync" not in printed, printed
