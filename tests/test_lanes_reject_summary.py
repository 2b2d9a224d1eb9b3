"""A lane station's reject counters in the run summary, the live table and summary.json (``CellLine.reject_stats``,
``cli.run.reject_rows``). Audit (cellacks exp1, exp1b): the rows read the top level, where a lane station kept only
its station gate's counters (absent without ``reject.fault_sinks``, 0 with them): two lanes that rejected a part
each showed "rejects: NG / uninspected = 0 / 0", a lane's part passed uninspected showed 0, and a lane's alarm
latched at the end showed no fault output row, nor summary.json a ``fault_output``.

Real gates (``RejectScheduler``) decide real parts; each count a row shows is made to move, distinct per lane, so
a row that read one lane, or the station gate alone, would show another number. Order, not speed: each step waits
for the gate to be idle."""

from __future__ import annotations

import json
import logging
import time

from fair_edge.cameras.mux import CaptureMux
from fair_edge.cli.run import reject_rows
from fair_edge.errors import PlcDeviceError
from fair_edge.line.scheduler import LATE, RejectScheduler
from fair_edge.line.settings import RecordSettings, RejectSettings
from fair_edge.line.sinks.base import WorkerSink
from fair_edge.line.sinks.log import LogSink
from fair_edge.records import Verdict
from fair_edge.station.cell import finish_cell
from fair_edge.station.cell_line import CellLine
from fair_edge.station.config import StationConfig
from fair_edge.station.inspector import RunSummary
from fair_edge.station.line_side import LineSide
from fair_edge.station.run import write_summary
from fair_edge.station.views import GroupSettings, ViewSettings
from line_replay import RecordingSink

WAIT_S = 10.0   # upper bound for a gate to decide what is due on a loaded machine (a passing step returns at once)
# a belt long enough for a verdict handed in at once to be in time on a loaded machine; a pulse slot (pulse +
# min_gap) wider than late_ms: of two NG parts due at once, the second is gap_missed
TIMING = dict(delay_ms=200.0, pulse_ms=20.0, min_gap_ms=60.0, late_ms=10.0)
SLOT_S = (TIMING["pulse_ms"] + TIMING["min_gap_ms"]) / 1000.0


class RefusingOutput:
    """A PLC coil whose device refuses every write (``PlcDeviceError``): each pulse is reported missed."""

    def open(self) -> None:
        pass

    def set(self, on: bool) -> None:
        raise PlcDeviceError("fake plc: the write: device refused it: exception_code=2")

    def close(self) -> None:
        pass


def part(gate: RejectScheduler, seq: int, ng: bool | None, t: float | None = None) -> None:
    """Part ``seq`` captured at ``t`` (now), its verdict in at once: NG, OK, or none (``ng`` None)."""
    t = time.monotonic() if t is None else t
    gate.note_capture(seq, t)
    if ng is not None:
        gate.submit(Verdict(seq, t, 0.9 if ng else 0.1, 0.5, ng, time.monotonic()))


def settle(gate: RejectScheduler) -> None:
    """Every part decided, its pulse handed to the sinks and ended, and its pulse slot past (the next part's pulse
    is not pushed past its due + late_ms by it)."""
    assert gate.wait_idle(WAIT_S)
    gate.drain_sinks(WAIT_S)
    time.sleep(SLOT_S)


def lane_a(gate: RejectScheduler) -> None:
    """fail_safe reject: NG (rejected_ng), none (rejected_uninspected), OK (passed), two NG due at once (one
    rejected_ng, one gap_missed), none then a late NG verdict (rejected_uninspected, late_verdicts)."""
    for seq, ng in ((1, True), (2, None), (3, False)):
        part(gate, seq, ng)
        settle(gate)
    t = time.monotonic()
    part(gate, 4, True, t)
    part(gate, 5, True, t)
    settle(gate)
    part(gate, 6, None)
    settle(gate)
    assert gate.submit(Verdict(6, 0.0, 0.9, 0.5, True, time.monotonic())) == LATE


def lane_b(gate: RejectScheduler) -> None:
    """fail_safe alarm, a coil that refuses writes: NG (rejected_ng, its pulse missed), none (passed_uninspected:
    the alarm latches)."""
    for seq, ng in ((1, True), (2, None)):
        part(gate, seq, ng)
        settle(gate)


def lane_station(tmp_path) -> StationConfig:
    return StationConfig(cameras=(ViewSettings("a", "1", reject=("log://test.lanes.a",)),
                                  ViewSettings("b", "2", reject=("modbus://127.0.0.1:1502?unit=1&coil=0",))),
                         group=GroupSettings(by="lane"), reject=RejectSettings(**TIMING), output=tmp_path,
                         record=RecordSettings(dir=tmp_path, save_ng_images=False, min_free_mb=0)).checked()


def finished_summary(cfg: StationConfig, lanes: dict[str, RejectScheduler], recorder) -> RunSummary:
    """``finish_cell`` for the lanes (no camera, no station gate), then summary.json as ``run_cell`` writes it."""
    mux = CaptureMux()
    mux.set_captures({})
    summary = RunSummary()
    finish_cell(cfg, CellLine(LineSide(recorder, None, None, None, []), lanes=lanes), summary, [], mux)
    write_summary(summary, cfg.output)
    return summary


def test_the_summary_rows_and_summary_json_count_every_lane_and_name_each_lanes_fault(tmp_path):
    from fair_edge.line.recorder import Recorder

    logging.getLogger("test.lanes.a").setLevel(logging.CRITICAL)   # its pulses' INFO lines: not needed here
    cfg = lane_station(tmp_path)
    refusing = WorkerSink("coil b", RefusingOutput(), pulse_ms=TIMING["pulse_ms"])
    try:
        with Recorder(cfg.record) as recorder, \
                RejectScheduler(RejectSettings(**TIMING), sinks=LogSink(logging.getLogger("test.lanes.a")),
                                fault_sinks=RecordingSink("fa")) as a, \
                RejectScheduler(RejectSettings(fail_safe="alarm", **TIMING), sinks=refusing,
                                fault_sinks=RecordingSink("fb")) as b:
            lane_a(a)
            lane_b(b)
            summary = finished_summary(cfg, {"a": a, "b": b}, recorder)
            reasons = {"a": a.fault_reason, "b": b.fault_reason}
    finally:
        refusing.close()
    lanes = summary.rejects["lanes"]
    assert [lanes["a"][k] for k in ("rejected_ng", "rejected_uninspected", "passed_uninspected", "gap_missed",
                                    "late_verdicts")] == [2, 2, 0, 1, 1], lanes["a"]
    assert [lanes["b"][k] for k in ("rejected_ng", "rejected_uninspected", "passed_uninspected", "gap_missed",
                                    "late_verdicts")] == [1, 0, 1, 0, 0], lanes["b"]
    assert reasons["a"] and reasons["b"]   # a: gap_missed latched its alarm; b: its missed pulse and its alarm
    fault = f"lane a: {reasons['a']}; lane b: {reasons['b']}"
    rows = dict(reject_rows(summary.rejects))
    assert rows["rejects: NG / uninspected"] == "3 / 2"
    assert rows["passed uninspected / late verdicts"] == "1 / 1"
    assert rows["pulses delivered / missed / unconfirmed"] == "[bold red]4 / 1 / 0[/]"
    assert rows["[bold red]not rejected: too close to the previous pulse (gap_missed)[/]"] == 1
    assert rows["lane a: rejects NG / uninspected / passed uninspected"] == "2 / 2 / 0"
    assert rows["lane b: rejects NG / uninspected / passed uninspected"] == "1 / 0 / 1"
    assert rows["fault output"] == f"[bold red]ON: {fault}[/]"
    assert (lanes["a"]["fault_output"], lanes["b"]["fault_output"]) == (reasons["a"], reasons["b"])
    written = json.loads((tmp_path / "summary.json").read_text())["rejects"]
    assert {k: written[k] for k in ("rejected_ng", "rejected_uninspected", "passed_uninspected", "gap_missed",
                                    "late_verdicts", "fired", "pending")} == {
        "rejected_ng": 3, "rejected_uninspected": 2, "passed_uninspected": 1, "gap_missed": 1, "late_verdicts": 1,
        "fired": 5, "pending": 0}
    assert written["fault_output"] == fault and written["lanes"]["b"]["fault_output"] == reasons["b"]


def test_a_lane_fault_the_station_gate_names_already_is_not_named_twice():
    """With ``reject.fault_sinks`` the station gate's reason holds each lane's fault as ``LaneWatch`` put it at the
    last tick: named once; a lane whose fault came after that tick (or changed since) is added; lanes off are not."""
    from fair_edge.station.cell_lanes import lanes_fault_output

    lanes = {"a": {"fault_output": "part seq 3 passed the gate uninspected"}, "b": {"fault_output": ""},
             "c": {"fault_output": "coil c missed reject seq 9"}}
    station = "camera d: camera reconnecting; lane a: part seq 3 passed the gate uninspected"
    assert lanes_fault_output(station, lanes) == f"{station}; lane c: coil c missed reject seq 9"
    assert lanes_fault_output("", {"b": {"fault_output": ""}}) == ""


def test_a_run_that_ends_with_a_fault_names_each_lanes_own_fault_not_the_run_fault_again(tmp_path):
    """Review of 4a4cbdf: ``finish_cell`` hands the run's fault (a camera gone) to every lane for the belt's last
    parts, and a gate's reason is its first holding cause: each lane's ``fault_output`` read the camera's fault, and
    the alarm a lane latched at the stop (its part passed uninspected) was named nowhere in summary.json."""
    from fair_edge.line.recorder import Recorder

    cfg = lane_station(tmp_path)
    gone = "camera b: gone for good (no frame for 5 s)"
    with Recorder(cfg.record) as recorder, \
            RejectScheduler(RejectSettings(**TIMING), fault_sinks=RecordingSink("station fault")) as station, \
            RejectScheduler(RejectSettings(fail_safe="alarm", **TIMING), sinks=RecordingSink("a")) as a, \
            RejectScheduler(RejectSettings(fail_safe="alarm", **TIMING), sinks=RecordingSink("b")) as b:
        a.note_capture(1, time.monotonic())   # lane a's part on the belt at the stop, no verdict: passed uninspected
        mux = CaptureMux()
        mux.set_captures({})
        summary = RunSummary()
        summary.fault = gone                  # what CameraWatch.at_stop gives run_cell
        finish_cell(cfg, CellLine(LineSide(recorder, station, None, None, []), lanes={"a": a, "b": b}), summary, [],
                    mux)
        write_summary(summary, cfg.output)
        alarm = a.alarm
    assert alarm and "part seq 1 passed the gate uninspected" in alarm
    written = json.loads((tmp_path / "summary.json").read_text())["rejects"]
    assert (written["lanes"]["a"]["fault_output"], written["lanes"]["b"]["fault_output"]) == (alarm, "")
    assert written["fault_output"] == f"{gone}; lane a: {alarm}"
    assert dict(reject_rows(summary.rejects))["fault output"] == f"[bold red]ON: {gone}; lane a: {alarm}[/]"
