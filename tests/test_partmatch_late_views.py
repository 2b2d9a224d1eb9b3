"""A view that comes after its part closed, in a two-camera cell (``match: sequence`` and ``window``): camera left
hangs 3 s on its frame of trigger 15, then delivers that held frame. It is a late view of part 15 (counted
``late_views``), never paired with a later part, never a part of its own (which the gate would note 3 s after its due
time and pulse at once, onto another part). The assembler runs in-process on a fake clock."""

from __future__ import annotations

import numpy as np
import pytest

from fair_edge.records import Frame, Verdict
from fair_edge.station.parts import PartAssembler
from fair_edge.station.views import GroupSettings

PERIOD_S = 0.2      # one trigger every 200 ms
TIMEOUT_S = 0.6     # the part timeout: the gate's delay
DUE_S = 0.61        # the gate can reject a part until delay + late_ms after its capture
STALL = range(15, 30)   # left takes no frame of these triggers: its read of trigger 15's frame hangs until trigger 30
TRIGGERS = 45


class _Line:
    """Two cameras (top, left) fired every ``PERIOD_S`` on a fake clock; every view is OK and inspected at once.
    rows: part rows by part id; opened: (part id, t_open, clock then) per ``on_open``; trigger_of: (camera, seq) ->
    the trigger its image shows."""

    def __init__(self, match: str, timeout_s: float = TIMEOUT_S) -> None:
        self.now = 0.0
        self.rows: dict[int, dict] = {}
        self.opened: list[tuple[int, float, float]] = []
        self.trigger_of: dict[tuple[str, int], int] = {}
        self.asm = PartAssembler(["top", "left"], GroupSettings(match=match, window_ms=30), timeout_s,
                                 on_part=lambda v, row: self.rows.__setitem__(row["part"], row),
                                 on_open=lambda part, t, count: self.opened.append((part, t, self.now)),
                                 due_s=DUE_S, clock=lambda: self.now)

    def view(self, camera: str, seq: int, trigger: int, t_capture: float) -> int | None:
        """Camera's frame ``seq`` showing ``trigger``, captured at ``t_capture``, comes now and is inspected."""
        frame = Frame(seq, t_capture, np.zeros(1), camera=camera)
        self.trigger_of[(camera, seq)] = trigger
        part = self.asm.on_capture(camera, frame)
        self.asm.on_verdict(frame, Verdict(seq, t_capture, 0.1, 1.0, False, self.now, camera=camera))
        return part

    def tick(self, trigger: int) -> None:
        self.now = trigger * PERIOD_S
        self.asm.sweep()

    def end(self) -> None:
        self.now += 10.0
        self.asm.sweep()

    def triggers(self, row: dict) -> set[int]:
        """The triggers a part row's views show."""
        return {self.trigger_of[(c, v["seq"])] for c, v in row["views"].items() if "seq" in v}


def _stall(match: str, *, left_first: bool, read_counted: bool, stamped: bool) -> tuple[_Line, int | None]:
    """Left hangs on trigger 15's frame (its seq 15) until trigger 30, then delivers it (``stamped``: at its grab
    time, as a device timestamp; else at its read time, trigger 30's) and goes on with trigger 30's frame: its seq 16
    (``read_counted``: the frame number counts reads, as genicam: / OpenCV sources) or 30 (it counts slots). Returns
    the line and the part id on_capture gave left's held frame."""
    line, held_part = _Line(match), None
    for trigger in range(TRIGGERS):
        line.tick(trigger)
        t = line.now
        cameras = ("left", "top") if left_first else ("top", "left")
        for camera in cameras:
            if camera == "top":
                line.view("top", trigger, trigger, t)
            elif trigger == STALL.stop:
                held_part = line.view("left", STALL.start, STALL.start, STALL.start * PERIOD_S if stamped else t)
                seq = STALL.start + 1 if read_counted else trigger
                line.view("left", seq, trigger, t)
            elif trigger not in STALL:
                seq = trigger - len(STALL) + 1 if read_counted and trigger > STALL.stop else trigger
                line.view("left", seq, trigger, t)
    line.end()
    return line, held_part


@pytest.mark.parametrize("left_first", [False, True])
@pytest.mark.parametrize("read_counted", [False, True])
def test_a_held_frame_stamped_when_read_is_a_late_view_of_its_part_never_paired_with_a_later_one(left_first,
                                                                                                 read_counted):
    """match: sequence, left's held frame stamped when read (at trigger 30): its count names part 15, closed 2.4 s
    before. Before, it was read as a slipped count and paired by capture time with part 30, which passed on top's
    trigger-30 view and left's trigger-15 view (another physical part); with frame numbers counting slots the offset
    learned from it (+15) then split every part in two for 3 s. Now it is a late view of part 15 and left is matched
    by capture time from its next frame: every part shows one trigger, only the stalled triggers' parts miss left."""
    line, held_part = _stall("sequence", left_first=left_first, read_counted=read_counted, stamped=False)
    assert [sorted(line.triggers(row)) for row in line.rows.values() if len(line.triggers(row)) != 1] == []
    assert len(line.rows) == TRIGGERS
    assert held_part == STALL.start and line.asm.part_of("left", STALL.start) == STALL.start
    assert sorted(p for p, row in line.rows.items() if row["missing"]) == list(STALL)
    assert line.asm.stats == {"parts": TRIGGERS, "ng": len(STALL), "ok": TRIGGERS - len(STALL),
                              "not_inspected": len(STALL), "late_views": 1, "resyncs": 1, "duplicate_views": 0}


@pytest.mark.parametrize("match", ["sequence", "window"])
def test_a_held_frame_stamped_at_grab_time_joins_its_closed_part_late_and_opens_no_part(match):
    """left's held frame stamped at its grab time (trigger 15's, as Aravis stamps a buffer) comes 3 s later. Before,
    it opened a part of its own whose due time was 2.4 s past: the gate noted it and pulsed at once (onto part 30),
    and parts and not_inspected were counted one over. Now it is a late view of part 15: no part is opened but at its
    first view's capture, parts are one per trigger."""
    line, held_part = _stall(match, left_first=False, read_counted=False, stamped=True)
    assert [(part, t_open) for part, t_open, now in line.opened if t_open != now] == []
    assert len(line.opened) == len(line.rows) == TRIGGERS
    assert held_part == STALL.start and line.asm.part_of("left", STALL.start) == STALL.start
    assert line.asm.stats["late_views"] == 1 and line.asm.stats["not_inspected"] == len(STALL)
    assert line.rows[STALL.start]["missing"] == ["left"]   # its view came after the part was decided


@pytest.mark.parametrize("match", ["sequence", "window"])
def test_a_view_matching_no_part_once_the_gate_is_past_it_opens_none(match):
    """A view of a part no other camera saw (captured at 1.0 s) comes at 2.0 s, past the gate (due_s 0.61 s): opened,
    its part would be noted 0.39 s after its due time and the gate would pulse at once. Now no part is opened
    (on_capture says None), and its verdict counts ``late_views``."""
    line = _Line(match)
    line.now = 2.0
    assert line.view("left", 0, 0, 1.0) is None
    line.end()
    assert line.opened == [] and line.rows == {}
    assert line.asm.stats["late_views"] == 1 and line.asm.stats["parts"] == 0
    assert line.asm.part_of("left", 0) is None


@pytest.mark.parametrize("match", ["sequence", "window"])
def test_a_view_after_its_part_timeout_but_before_the_gate_still_opens_its_part(match):
    """group.part_timeout_ms (0.3 s) shorter than the gate's delay: a view of a part no other camera saw, coming 0.4 s
    after its capture, still opens its part (noted at the gate, which rejects it fail-safe at its due time), as
    before: only a part the gate can no longer reject opens none."""
    line = _Line(match, timeout_s=0.3)
    line.now = 1.4
    assert line.view("left", 0, 0, 1.0) == 0
    line.end()
    assert line.opened == [(0, 1.0, 1.4)] and line.rows[0]["missing"] == ["top"]
    assert line.asm.stats["late_views"] == 0


def test_an_offset_is_not_learned_from_a_frame_older_than_one_already_filed():
    """match: sequence, left out of step (a resumed frame, seq 20, trigger 12) opens a part of its own; then a frame
    it held (seq 15, stamped at trigger 11, delivered late) joins trigger 11's part by capture time. Before, the
    offset was learned from that stale frame (11 - 15), so left's later frames named the wrong parts; now it is learned
    from its newest frame when top's trigger-12 view joins its part (12 - 20): trigger 13's part pairs both cameras."""
    line = _Line("sequence")
    for trigger in range(12):
        line.tick(trigger)
        line.view("top", trigger, trigger, line.now)
        if trigger < 10:
            line.view("left", trigger, trigger, line.now)
    line.tick(12)
    frame = Frame(20, line.now, np.zeros(1), camera="left", resumed=True)
    line.trigger_of[("left", 20)] = 12
    line.asm.on_capture("left", frame)
    line.asm.on_verdict(frame, Verdict(20, line.now, 0.1, 1.0, False, line.now, camera="left"))
    line.view("left", 15, 11, 11 * PERIOD_S)   # held, out of order: older than seq 20, already filed
    line.view("top", 12, 12, line.now)
    line.tick(13)
    line.view("top", 13, 13, line.now)
    line.view("left", 21, 13, line.now)
    line.end()
    showing = {trigger: [(sorted(line.triggers(row)), row["missing"]) for row in line.rows.values()
                         if trigger in line.triggers(row)] for trigger in (11, 12, 13)}
    assert showing == {11: [([11], [])], 12: [([12], [])], 13: [([13], [])]}


@pytest.mark.parametrize("reject, due", [
    ({"fault_sinks": ["log://"], "delay_ms": 400.0}, 0.41),   # a fault lamp only: it decides parts at delay_ms too
    ({"fault_sinks": ["log://"]}, float("inf")),   # ... or, at delay_ms 0, each part as the cell hands it over
    ({"fault_sinks": ["log://"], "handshake": {"url": "modbus://127.0.0.1:1"}}, float("inf")),   # the PLC decides
    ({"sinks": ["log://"], "delay_ms": 600.0, "late_ms": 10.0}, 0.61),
    ({}, float("inf"))])
def test_a_cell_gives_its_parts_a_due_time_only_where_a_reject_output_rejects_them(tmp_path, reject, due):
    """Review of this change: a part cell whose reject section held only fault_sinks opened a scheduler, so its parts
    were given delay_ms (0) + late_ms as their due time, and every view handed over 10 ms after its grab opened no
    part (counted late_views): such a cell counted almost no parts. Now only a gate
    that decides parts gives them a due time: a reject output, or a lamp alone (held to delay_ms > 0 at start since
    0718de0), not a lamp on a handshake station (the PLC decides its parts)."""
    from fair_edge.station.cell_timing import part_due_s
    from fair_edge.station.config import StationConfig

    cfg = StationConfig.from_dict({
        "output": str(tmp_path), "bundle": "unused",
        "cameras": [{"name": "top", "source": "0"}, {"name": "left", "source": "1"}],
        "group": {"by": "part", "match": "handshake" if "handshake" in reject else "window", "window_ms": 30},
        "reject": reject})
    assert part_due_s(cfg, gated=bool(reject), by_count=False) == pytest.approx(due)
    assert part_due_s(cfg, gated=True, by_count=True) == float("inf")


@pytest.mark.parametrize("delay_ms", [0.0, 400.0])
def test_a_part_cell_with_only_a_fault_lamp_opens_a_part_for_a_view_handed_over_late(tmp_path, delay_ms):
    """The same through the cell's line side (open_cell_line): a view grabbed 20 ms before it is handed over opens
    its part. Before, the assembler's due_s was 0.01 s and it opened none (a lamp alone at delay_ms 0 has no due
    time; given a travel time, its due time is delay_ms + late_ms)."""
    import contextlib
    import time

    from fair_edge.station.cell_line import open_cell_line
    from fair_edge.station.config import StationConfig

    cfg = StationConfig.from_dict({
        "output": str(tmp_path), "bundle": "unused",
        "cameras": [{"name": "top", "source": "0"}, {"name": "left", "source": "1"}],
        "group": {"by": "part", "match": "window", "window_ms": 30},
        "reject": {"fault_sinks": ["log://"], "delay_ms": delay_ms}})
    with contextlib.ExitStack() as stack:
        assembler = open_cell_line(cfg, stack, "run1").assembler
        grabbed = time.monotonic() - 0.02
        assert assembler.on_capture("top", Frame(0, grabbed, np.zeros(1), camera="top")) == 0
        assert assembler.stats["late_views"] == 0
