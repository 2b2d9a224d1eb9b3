"""A cell with the PLC handshake (``group.match: handshake``) answers a part as soon as every view is known, a view its
camera failed included (task hsmetrics). A camera that takes no frame for a part (its read failed, its frame was
exposed after the next trigger, its trigger queue was full: ``TriggerFanout.failed``) marked only the fanout's
ticket; the part assembler never heard of it, so the part waited out ``group.part_timeout_ms`` before it was
answered 3 (NG not inspected), though nothing more could come: with the default timeout half the PLC's result
timeout, each such part held every later result back that long.

Now the fanout tells the cell (``on_failed``), the view is filed missing (``PartAssembler.view_failed``) and the part
closes with its last view: the verdict, row and counters its timeout gave it. A view that simply has not come still
waits for the timeout. The cell is opened as a station opens it (``open_cell_line``) over a scripted PLC on a fake
clock; the part timeout is swept at the times the test sets (no sleep, no thread)."""

from __future__ import annotations

import contextlib
import dataclasses

import numpy as np
import pytest

pytest.importorskip("prometheus_client")

from test_handshake_stale_parts import StampedCamera  # noqa: E402
from test_hsmetrics_exported import SETTINGS, connect, poll, scripted_handshakes, trigger  # noqa: E402
from test_metrics_consumers import cell_config  # noqa: E402
from line_servers import FakeClock  # noqa: E402

from fair_edge.cameras.triggered import TriggeredSource  # noqa: E402
from fair_edge.line.handshake import HandshakeSettings  # noqa: E402
from fair_edge.line.handshake.settings import RESULT_NONE, RESULT_NOT_INSPECTED, RESULT_OK  # noqa: E402
from fair_edge.line.settings import RejectSettings  # noqa: E402
from fair_edge.records import Frame, Verdict  # noqa: E402
from fair_edge.station.views import GroupSettings, ViewSettings  # noqa: E402

PART_TIMEOUT_S = 30.0   # group.part_timeout_ms: long, so "at once" and "at the timeout" are far apart on the fake clock


class Cell:
    """``open_cell_line`` for cameras top and left over a scripted PLC: each camera's frames, verdicts and failures
    as the capture threads and the inspector hand them over, each part's row as the cell's listeners get it."""

    def __init__(self, tmp_path, monkeypatch, stack: contextlib.ExitStack) -> None:
        from fair_edge.station.cell_line import open_cell_line

        self.clock = FakeClock()
        opened = scripted_handshakes(monkeypatch, self.clock)
        cameras = (ViewSettings("top", "unused-top"), ViewSettings("left", "unused-left"))
        cfg = cell_config(tmp_path, cameras, GroupSettings(match="handshake", part_timeout_ms=PART_TIMEOUT_S * 1000),
                          RejectSettings(handshake=HandshakeSettings(**SETTINGS)))
        self.cell = open_cell_line(cfg, stack, "run-failed-view")
        self.hs, self.plc, self.fan = self.cell.line.handshake, opened["plc"], self.cell.triggers
        self.rows: list[dict] = []
        self.cell.part_listeners.append(lambda verdict, row: self.rows.append(row))
        self.seqs = {"top": 0, "left": 0}
        connect(self.hs, self.clock)

    def trigger(self, part_id: int) -> dict:
        """The PLC triggers ``part_id``; each camera takes its ticket (camera -> ticket)."""
        trigger(self.hs, self.plc, self.clock, part_id)
        return {camera: self.fan.port(camera).next_trigger(0.0) for camera in ("top", "left")}

    def capture(self, camera: str, ticket) -> Frame:
        """``camera``'s frame for ``ticket``, bound and captured now (its capture thread's hook)."""
        frame = Frame(self.seqs[camera], self.clock(), np.zeros((4, 4, 3), np.uint8), camera=camera)
        self.seqs[camera] += 1
        self.fan.port(camera).bind(frame.seq, ticket)
        self.cell.hooks(camera)["on_capture"](frame)
        return frame

    def inspect(self, frame: Frame, ng: bool = False) -> None:
        verdict = Verdict(frame.seq, frame.t_capture, 2.0 if ng else 0.1, 1.0, ng, self.clock(), camera=frame.camera)
        for callback in self.cell.line.callbacks:   # as the inspector calls them
            callback(frame, verdict, None)

    def failed(self, camera: str, ticket) -> None:
        """``camera``'s read failed for ``ticket`` (``TriggeredSource`` answers it so through its port)."""
        self.fan.port(camera).answer_not_inspected(ticket)

    def results(self) -> list[tuple[int, int]]:
        """(part id, result) of every result written to the PLC, in order (each acked at once)."""
        out = []
        for _ in range(3):
            poll(self.hs, self.clock)
            if self.plc.signals.get("results_ready") == 1:
                self.plc.signals["ack"] = 1
        for write in self.plc.writes:
            if ("results_ready", 1) in write:
                out.append((dict(write)["result_part_id"], dict(write)["result"]))
        return out


def same_as_timed_out(row: dict) -> dict:
    """What a part row says of its verdict, without what names the part (ids, times, seqs)."""
    return {key: value for key, value in row.items() if key not in ("part", "t_capture", "views", "plc_part_id")} | {
        "left": row["views"]["left"], "top": {k: v for k, v in row["views"]["top"].items() if k != "seq"}}


def test_a_part_whose_camera_failed_its_view_is_answered_with_its_last_view_not_at_the_timeout(tmp_path, monkeypatch):
    """Part 3001: left's read fails after top's view is in. Part 3002: left's read fails before top's frame opened
    the part. Each is answered 3 (NG not inspected) as soon as both views are known, no sweep needed; part 3003,
    whose left view simply never comes, is still answered only at its timeout, with the same row and counters."""
    with contextlib.ExitStack() as stack:
        cell = Cell(tmp_path, monkeypatch, stack)
        tickets = cell.trigger(3001)
        cell.inspect(cell.capture("top", tickets["top"]))
        assert cell.rows == [] and tickets["top"].result == RESULT_NONE    # left may still come
        cell.failed("left", tickets["left"])
        assert [row["plc_part_id"] for row in cell.rows] == [3001], "part 3001 waited for its part timeout"
        assert tickets["top"].result == RESULT_NOT_INSPECTED

        tickets = cell.trigger(3002)
        cell.failed("left", tickets["left"])                               # before any frame of the part
        top = cell.capture("top", tickets["top"])
        assert len(cell.rows) == 1                                         # top's verdict still to come
        cell.inspect(top)
        assert [row["plc_part_id"] for row in cell.rows] == [3001, 3002], "part 3002 waited for its part timeout"
        answered = cell.results()

        tickets = cell.trigger(3003)                                       # left silent: no frame, no failure
        top = cell.capture("top", tickets["top"])
        cell.inspect(top)
        cell.cell.assembler.sweep(top.t_capture + PART_TIMEOUT_S - 0.001)
        assert len(cell.rows) == 2 and tickets["top"].result == RESULT_NONE
        cell.cell.assembler.sweep(top.t_capture + PART_TIMEOUT_S)
        timed_out = cell.rows[-1]
        assert timed_out["plc_part_id"] == 3003 and tickets["top"].result == RESULT_NOT_INSPECTED
        stats = dict(cell.cell.assembler.stats)
        handshake = cell.hs.stats()
    assert answered == [(3001, RESULT_NOT_INSPECTED), (3002, RESULT_NOT_INSPECTED)]
    for row in cell.rows[:2]:
        assert same_as_timed_out(row) == same_as_timed_out(timed_out)
    assert timed_out["views"]["left"] == {"missing": "no frame"} and timed_out["missing"] == ["left"]
    assert not timed_out["inspected"] and timed_out["ng"] and timed_out["score"] is None
    assert stats == {"parts": 3, "ng": 3, "ok": 0, "not_inspected": 3, "late_views": 0}
    assert (handshake["not_inspected"], handshake["expired"]) == (3, 0)


def test_a_late_frame_fails_its_cameras_view_and_the_part_closes_with_the_other_view(tmp_path, monkeypatch):
    """Left hung: its frame for part 3011 is exposed after 3012's trigger, so ``TriggeredSource`` answers 3011 not
    inspected for left (``late_frames``) and binds the frame to 3012. Part 3011 closes with top's view, at once;
    3012 gets both views and is answered OK."""
    with contextlib.ExitStack() as stack:
        cell = Cell(tmp_path, monkeypatch, stack)
        trigger(cell.hs, cell.plc, cell.clock, 3011)
        first = cell.fan.port("top").next_trigger(0.0)
        cell.inspect(cell.capture("top", first))
        trigger(cell.hs, cell.plc, cell.clock, 3012)
        second = cell.fan.port("top").next_trigger(0.0)
        left = TriggeredSource(StampedCamera("left", [cell.clock() + 0.001]), cell.fan.port("left"))
        late = dataclasses.replace(left.read(), camera="left")            # its wait for 3011's frame ends now
        assert cell.fan.part_id("left", late.seq) == 3012
        assert [row["plc_part_id"] for row in cell.rows] == [3011], "part 3011 waited for its part timeout"
        assert cell.rows[0]["views"]["left"] == {"missing": "no frame"} and not cell.rows[0]["inspected"]
        cell.cell.hooks("left")["on_capture"](late)
        cell.inspect(late)
        cell.inspect(cell.capture("top", second))
        answered = cell.results()
        late_frames = cell.hs.stats()["late_frames"]
    assert [row["plc_part_id"] for row in cell.rows] == [3011, 3012] and cell.rows[1]["inspected"]
    assert answered == [(3011, RESULT_NOT_INSPECTED), (3012, RESULT_OK)] and late_frames == 1
