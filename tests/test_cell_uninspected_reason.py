"""A by-part cell's part not inspected (a view missing) reaches its reject gate with its row's reason
(``CellLine.on_part`` -> ``RejectScheduler.submit_uninspected``). Audit (cellacks exp4): the gate got no verdict, so
its gate row, the alarm and the journal said "no verdict by its due time" and named no camera.

A real ``PartAssembler`` matches the views, a real gate decides the part, a real recorder writes the rows; the
assertions are about what the gate decided and said, waiting for it to be idle (order, not speed)."""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest

from fair_edge.line.recorder import Recorder
from fair_edge.line.scheduler import RejectScheduler
from fair_edge.line.settings import RecordSettings, RejectSettings
from fair_edge.records import Frame, Verdict
from fair_edge.station.cell_line import CellLine
from fair_edge.station.parts import PartAssembler
from fair_edge.station.line_side import LineSide
from fair_edge.station.views import GroupSettings
from line_replay import RecordingSink

WAIT_S = 10.0      # upper bound for the gate to decide what is due on a loaded machine
DELAY_MS = 300.0   # camera -> gate: the part below is closed (its views in) long before its due time
MISSING_B = "missing view: b (dropped: capture queue full)"


def open_cell(tmp_path, gate: RejectScheduler, timeout_s: float):
    """A two-camera cell (a, b; match: sequence) whose line side gates parts with ``gate``; its recorder."""
    recorder = Recorder(RecordSettings(dir=tmp_path, save_ng_images=False, min_free_mb=0))
    cell = CellLine(LineSide(recorder, gate, None, None, []))
    cell.assembler = PartAssembler(["a", "b"], GroupSettings(match="sequence"), timeout_s, on_part=cell.on_part,
                                   on_open=lambda part, t, count: gate.note_capture(part, t, count))
    return cell, recorder


def capture(cell: CellLine, seq: int, t: float, views: str = "ab") -> dict[str, Frame]:
    frames = {c: Frame(seq, t, np.zeros((2, 2, 3), np.uint8)) for c in views}
    for camera, frame in frames.items():
        cell.assembler.on_capture(camera, frame)
    return frames


def view(camera: str, seq: int, t: float) -> Verdict:
    return Verdict(seq, t, 0.1, 0.5, False, time.monotonic(), camera=camera)


@pytest.mark.parametrize("fail_safe, outcome", [("alarm", "passed_uninspected"), ("reject", "rejected_uninspected")])
def test_a_part_with_a_view_missing_reaches_its_gate_naming_the_camera(tmp_path, caplog, fail_safe, outcome):
    """Camera b's frame dropped from its queue, a's view OK: the part closes at once, not inspected; at its due time
    the gate decides it as before (alarm: passed, the alarm latched; reject: a fail-safe pulse), and its gate row,
    the alarm and the journal line name camera b. Counted once: one verdict, an error verdict (not ng), no late
    verdict."""
    caplog.set_level(logging.WARNING, logger="fair_edge.line.scheduler")
    rows: list[dict] = []
    pulses = RecordingSink()
    with RejectScheduler(RejectSettings(delay_ms=DELAY_MS, pulse_ms=20, late_ms=20, fail_safe=fail_safe),
                         sinks=pulses, fault_sinks=RecordingSink("fault"), on_part=rows.append) as gate:
        cell, recorder = open_cell(tmp_path, gate, timeout_s=DELAY_MS / 1000.0)
        with recorder:
            t = time.monotonic()
            frames = capture(cell, 0, t)
            cell.assembler.on_drop("b", frames["b"])
            cell.assembler.on_verdict(frames["a"], view("a", 0, t))
            assert gate.wait_idle(WAIT_S)
            stats, alarm = gate.stats(), gate.alarm
    (row,) = [r for r in rows if r["event"] == "gate"]
    assert (row["gate"], row["verdict"], row.get("error")) == (outcome, "none", MISSING_B), row
    journal = [r.getMessage() for r in caplog.records if r.name == "fair_edge.line.scheduler"]
    assert any(MISSING_B in line for line in journal), journal
    assert not any("no verdict by its due time" in line for line in journal), journal
    if fail_safe == "alarm":
        assert MISSING_B in alarm and not pulses.pulses
    else:
        assert alarm is None and [event.uninspected for _, event in pulses.pulses] == [True]
    assert {k: stats[k] for k in ("verdicts", "error_verdicts", "ng", "late_verdicts", outcome)} == {
        "verdicts": 1, "error_verdicts": 1, "ng": 0, "late_verdicts": 0, outcome: 1}, stats
    assert cell.assembler.stats["not_inspected"] == cell.assembler.stats["parts"] == 1


def test_a_part_the_gate_decided_or_refused_before_it_closed_is_counted_once(tmp_path, caplog):
    """Parts closed after the gate decided them (their views waited out the due time) keep the gate's "no verdict
    by its due time": nothing more is counted, no late verdict, no "came after" line; a part the gate refused
    (reject.max_pending) is not refused twice when it closes with a view missing."""
    caplog.set_level(logging.WARNING, logger="fair_edge.line.scheduler")
    with RejectScheduler(RejectSettings(delay_ms=20.0, pulse_ms=20, late_ms=20, fail_safe="alarm", max_pending=1),
                         sinks=RecordingSink(), fault_sinks=RecordingSink("fault")) as gate:
        cell, recorder = open_cell(tmp_path, gate, timeout_s=60.0)
        with recorder:
            t = time.monotonic()
            frames = capture(cell, 0, t, views="a")            # part 0: b never takes a frame
            capture(cell, 1, t + 0.001, views="a")             # part 1: refused, part 0 still between camera and gate
            cell.assembler.on_verdict(frames["a"], view("a", 0, t))
            assert gate.wait_idle(WAIT_S) and gate.decision(0) == "passed_uninspected"
            before = gate.stats()
            cell.assembler.close_all()                         # both parts close now, b missing (no frame)
            after = gate.stats()
    assert before["refused"] == 1 and after == before, (before, after)
    assert not any("came after" in r.getMessage() for r in caplog.records), caplog.text


@pytest.mark.parametrize("fail_safe, outcome", [("alarm", "passed_uninspected"), ("reject", "rejected_uninspected")])
def test_a_part_still_open_at_its_due_time_is_named_by_its_missing_view_at_the_gate(tmp_path, caplog, fail_safe,
                                                                                      outcome):
    """Default timing (part_timeout = the due time): camera b takes no frame, so the gate decides the part before it
    closes. The cell's gate asks the assembler then (``missing_at_gate``): its gate row's reason, the alarm and the
    journal line name camera b. Before, they read "no verdict by its due time" and named no camera. Counted as
    before: no verdict, no error verdict; the part's row, when it closes after, names b too."""
    import contextlib

    from fair_edge.station.cell_line import open_cell_line
    from fair_edge.station.config import StationConfig

    caplog.set_level(logging.WARNING, logger="fair_edge.line.scheduler")
    cfg = StationConfig.from_dict({
        "output": str(tmp_path), "bundle": "unused",
        "cameras": [{"name": "a", "source": "0"}, {"name": "b", "source": "1"}],
        "group": {"by": "part", "match": "window", "window_ms": 30},
        "reject": {"sinks": ["log://"], "delay_ms": DELAY_MS, "fail_safe": fail_safe}})
    rows: list[dict] = []
    with contextlib.ExitStack() as stack:
        cell = open_cell_line(cfg, stack, "run1")
        gate, parts = cell.line.scheduler, []
        gate.on_part = rows.append
        cell.part_listeners.append(lambda verdict, row: parts.append(row))
        t = time.monotonic()
        frame = Frame(0, t, np.zeros((2, 2, 3), np.uint8), camera="a")
        assert cell.assembler.on_capture("a", frame) == 0
        cell.assembler.on_verdict(frame, view("a", 0, t))
        assert gate.wait_idle(WAIT_S) and gate.decision(0) == outcome
        stats, alarm = gate.stats(), gate.alarm
        cell.assembler.close_all()
        assert gate.stats() == stats
    (row,) = [r for r in rows if r["event"] == "gate"]
    assert (row["gate"], row["verdict"], row.get("reason"), row.get("error")) == (
        outcome, "none", "missing view: b (no frame)", None), row
    journal = [r.getMessage() for r in caplog.records if r.name == "fair_edge.line.scheduler"]
    assert any("no verdict by its due time (missing view: b (no frame))" in line for line in journal), journal
    if fail_safe == "alarm":
        assert "passed the gate uninspected (no verdict by its due time: missing view: b (no frame))" in alarm
    assert {k: stats[k] for k in ("verdicts", "error_verdicts", outcome)} == {"verdicts": 0, "error_verdicts": 0,
                                                                              outcome: 1}, stats
    (part,) = parts
    assert part["reason"] == "missing view: b (no frame)" and not part["inspected"]


def test_a_gate_whose_question_fails_decides_the_part_as_before(caplog):
    """``why_no_verdict`` raising is logged; the part is still decided fail-safe, its journal line the plain one."""
    def broken(seq: int) -> str:
        raise RuntimeError("assembler gone")

    with RejectScheduler(RejectSettings(delay_ms=DELAY_MS, pulse_ms=20, late_ms=20), sinks=RecordingSink(),
                         fault_sinks=RecordingSink("fault")) as gate:
        gate.why_no_verdict = broken
        gate.note_capture(0, time.monotonic())
        assert gate.wait_idle(WAIT_S) and gate.decision(0) == "rejected_uninspected"
    assert "why_no_verdict failed for seq 0" in caplog.text and "no verdict by its due time;" in caplog.text
