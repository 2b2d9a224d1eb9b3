"""``match: window`` / ``encoder`` when a camera hands over a second frame inside the window of an open part that
holds its view already (a trigger that bounced, a frame delivered twice, or parts closer than the window): one frame
cannot tell a repeat from a real part, so it still opens a part of its own, noted at the gate (never a part dropped),
and the log names the camera. Before, nothing named it: the part rows blamed the other camera (``b (no frame)``).
A view joins the open part nearest to it (capture time, belt count) that lacks its camera, not the newest: before,
camera b's view of a part joined the part a's bounce had opened after it, so the real part lacked b (not inspected,
b blamed) and b's verdict went to the bounce's part. The assembler runs in-process on a fake clock."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from fair_edge.line.grouped_log import LATE_LOG_S
from fair_edge.records import Frame, Verdict
from fair_edge.station.parts import PartAssembler
from fair_edge.station.views import GroupSettings

LOGGER = "fair_edge.station.parts"


class _Cell:
    """Cameras a and b, match ``match`` (window_ms 30, window_counts 20), a part timeout of 0.3 s; the belt count is
    ``count`` (encoder), the clock ``now`` (s). Records the parts noted at the gate and the part rows."""

    def __init__(self, match: str) -> None:
        self.now, self.count = 100.0, 1000
        self.opened: list[int] = []
        self.rows: dict[int, dict] = {}
        extra = {"count": lambda: self.count} if match == "encoder" else {}
        self.asm = PartAssembler(["a", "b"], GroupSettings(match=match, window_ms=30, window_counts=20), 0.3,
                                 on_part=lambda v, row: self.rows.__setitem__(row["part"], row),
                                 on_open=lambda part, t, count: self.opened.append(part), clock=lambda: self.now,
                                 **extra)

    def take(self, camera: str, seq: int, t_capture: float, count: int | None = None, ng: bool = False) -> int | None:
        """``camera``'s frame ``seq`` captured at ``t_capture`` (s; at belt count ``count``), then its verdict (OK;
        NG, score 2.0, with ``ng``)."""
        if count is not None:
            self.count = count
        frame = Frame(seq, t_capture, np.zeros(1), camera=camera)
        part = self.asm.on_capture(camera, frame)
        self.asm.on_verdict(frame, Verdict(seq, t_capture, 2.0 if ng else 0.1, 1.0, ng, self.now, camera=camera))
        return part


def lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


@pytest.mark.parametrize("match, where", [
    ("window", "captured +10.0 ms from part 0's first view, within group.window_ms (30 ms)"),
    ("encoder", "keyed +5 counts from part 0, within group.window_counts (20)")])
def test_a_second_frame_inside_its_parts_window_opens_a_part_and_the_log_names_its_camera(caplog, match, where):
    """Camera a's frame 2, 10 ms (5 counts) after its frame 1 of part 0: a part of its own, noted at the gate, and one
    warning naming camera a, both frames and both parts, and what it means. The part rows are as before (one part NG,
    not inspected); nothing else is counted."""
    caplog.set_level(logging.WARNING, logger=LOGGER)
    cell = _Cell(match)
    assert cell.take("a", 1, 100.000, count=1000) == 0
    assert cell.take("a", 2, 100.010, count=1005) == 1
    assert cell.opened == [0, 1]
    (line,) = lines(caplog)
    assert line.startswith(f"camera a frame 2: {where}, which holds a frame of this camera already: "), line
    assert "it opened part 1 of its own, not dropped" in line and "camera a's extra frame is the cause" in line
    cell.take("b", 1, 100.005, count=1002)
    cell.now = 101.0
    cell.asm.sweep()
    assert sorted(row["inspected"] for row in cell.rows.values()) == [False, True]
    assert cell.asm.stats == {"parts": 2, "ng": 1, "ok": 1, "not_inspected": 1, "late_views": 0}


def test_repeats_are_logged_once_per_camera_then_gathered(caplog):
    """A camera that bounces on every part logs its first repeat at once, the next ones as one line per
    ``LATE_LOG_S`` (their count, the last frame); every frame still opens or joins a part noted at the gate. Each part
    is complete (closed) before its bounce comes: a recently closed part is looked at too."""
    caplog.set_level(logging.WARNING, logger=LOGGER)
    cell = _Cell("window")
    for part in range(5):   # a part every 100 ms; camera a's trigger bounces 5 ms after each
        t = 100.0 + part * 0.1
        cell.now = t
        cell.asm.sweep()
        cell.take("a", 2 * part, t)
        cell.take("b", part, t + 0.002)
        cell.take("a", 2 * part + 1, t + 0.005)
    first = lines(caplog)
    assert len(first) == 1 and first[0].startswith("camera a frame 1: captured +5.0 ms"), first
    cell.now = 100.4 + LATE_LOG_S
    cell.asm.sweep()
    gathered = lines(caplog)[1:]
    assert len(gathered) == 1 and gathered[0].startswith("camera a: 4 more frames in the last"), gathered
    assert "the last frame 9 (beside part 8, opened part 9)" in gathered[0], gathered
    assert cell.opened == list(range(10))   # every repeat noted at the gate: none dropped


def test_views_of_parts_further_apart_than_the_window_log_nothing(caplog):
    caplog.set_level(logging.WARNING, logger=LOGGER)
    cell = _Cell("window")
    for part in range(3):
        t = 100.0 + part * 0.1
        cell.take("a", part, t)
        cell.take("b", part, t + 0.002)
    assert cell.opened == [0, 1, 2] and lines(caplog) == []


@pytest.mark.parametrize("match", ["window", "encoder"])
def test_a_view_joins_the_nearest_part_lacking_its_camera_not_the_bounces_newer_part(caplog, match):
    """Camera a's frame 1 opens part 0 (100.000 s, count 1000), its bounce 20 ms (15 counts) later part 1; camera
    b's NG frame of part 0 (2 ms, 1 count after a's) comes after the bounce: it joins part 0, which is NG by b's view,
    inspected; the bounce's part 1 lacks b (not inspected). The log still names camera a's extra frame."""
    caplog.set_level(logging.WARNING, logger=LOGGER)
    cell = _Cell(match)
    assert cell.take("a", 1, 100.000, count=1000) == 0
    assert cell.take("a", 2, 100.020, count=1015) == 1
    assert cell.take("b", 1, 100.002, count=1001, ng=True) == 0
    cell.now = 101.0
    cell.asm.sweep()
    real, bounce = cell.rows[0], cell.rows[1]
    assert (real["ng"], real["inspected"], real["missing"], real["views"]["b"]["seq"]) == (True, True, [], 1)
    assert (bounce["inspected"], bounce["missing"], bounce["views"]["a"]["seq"]) == (False, ["b"], 2)
    (line,) = lines(caplog)
    assert line.startswith("camera a frame 2: ") and "one of parts 0 and 1 lacks" in line, line


@pytest.mark.parametrize("match, a_views, b_view", [
    ("window", [(100.000, None), (100.010, None)], (100.005, None)),   # (t_capture s, count)
    ("encoder", [(100.000, 1000), (100.001, 1010)], (100.002, 1005))])
def test_a_view_as_near_two_parts_joins_the_older(match, a_views, b_view):
    """Camera b's view exactly between parts 0 and 1 (camera a's; by capture time, by belt count): the older, 0."""
    cell = _Cell(match)
    assert [cell.take("a", seq, t, count) for seq, (t, count) in enumerate(a_views)] == [0, 1]
    assert cell.take("b", 0, *b_view) == 0


def test_encoder_views_of_parts_closer_than_the_window_each_join_their_own_part():
    """Parts 15 counts apart with window_counts 20: camera b's view keyed 1001 joins part 0 (1000), its next, keyed
    1016, part 1 (1015). Before, the first joined part 1 (the newest) and the second part 0: the parts' views
    swapped, each part judged by the other's frame of b."""
    cell = _Cell("encoder")
    assert cell.take("a", 0, 100.000, count=1000) == 0
    assert cell.take("a", 1, 100.015, count=1015) == 1
    assert cell.take("b", 0, 100.001, count=1001) == 0
    assert cell.take("b", 1, 100.016, count=1016) == 1
    assert cell.rows[0]["views"]["b"]["seq"] == 0 and cell.rows[1]["views"]["b"]["seq"] == 1


def test_a_handshake_view_failure_goes_to_the_older_of_two_parts_with_one_id_as_its_frame_would():
    """``match: handshake``, a PLC that sent part id 7 for two triggers: camera a took a frame for each (parts 0 and
    1); camera b failed the first trigger, then took a frame for the second. The failure is part 0's and b's frame
    part 1's. Before, the failure went to the newest part with the id and b's frame then joined part 0 (answered
    inspected with the other part's image)."""
    rows: dict[int, dict] = {}
    asm = PartAssembler(["a", "b"], GroupSettings(match="handshake"), 5.0, plc_part=lambda camera, frame: 7,
                        on_part=lambda v, row: rows.__setitem__(row["part"], row), clock=lambda: 100.0)

    def take(camera: str, seq: int, t_capture: float) -> int | None:
        frame = Frame(seq, t_capture, np.zeros(1), camera=camera)
        part = asm.on_capture(camera, frame)
        asm.on_verdict(frame, Verdict(seq, t_capture, 0.1, 1.0, False, 100.0, camera=camera))
        return part

    assert [take("a", 1, 100.00), take("a", 2, 100.05)] == [0, 1]
    asm.view_failed("b", 7.0)
    assert take("b", 2, 100.06) == 1
    asm.close_all()
    assert rows[0]["inspected"] is False and "b" in rows[0]["missing"]
    assert rows[1]["inspected"] is True and {c: v["seq"] for c, v in rows[1]["views"].items()} == {"a": 2, "b": 2}
