"""A station's stop (``finish_line``, ``finish_cell``): the parts on the belt reach the gate and their pulses end,
also when a sink URL sets a pulse wider than ``reject.pulse_ms``; a lane's parts still on the belt are counted
``abandoned`` before the summary takes the counters, as the station's gate's are; a pulse still queued behind a hung
write when the stop closes the gate is counted ``missed`` (with its gate.jsonl row) before the summary takes the
counters too.

Real schedulers and a real ``WorkerSink`` on an output that records its writes (no PLC needed). The assertions are
about order (the falling edge written before the stop returned), never about how fast the machine is."""

from __future__ import annotations

import json
import logging
import threading
import time

import pytest

from fair_edge.line.scheduler import RejectScheduler
from fair_edge.line.settings import RecordSettings, RejectSettings
from fair_edge.line.sinks.base import WorkerSink
from fair_edge.records import Verdict
from fair_edge.station.config import StationConfig
from fair_edge.station.inspector import RunSummary
from fair_edge.station.line_side import LineSide, finish_line, stop_wait_s
from fair_edge.station.views import GroupSettings, ViewSettings
from line_replay import RecordingSink
from line_servers import SkewClock, run_sinks_on
from test_line_sink_close import RecordingOutput

WIDE_PULSE_MS = 1500.0   # a sink URL's own pulse_ms: wider than the stop's old 1 s sink drain, over reject.pulse_ms 50
WIDE_URL = f"modbus://127.0.0.1:1502?unit=1&coil=0&pulse_ms={WIDE_PULSE_MS:g}"
TIMING = dict(delay_ms=20.0, pulse_ms=50.0, late_ms=20.0)   # a short belt: the part is at the gate at once
# late_ms far off where only "did the held write begin" matters (a loaded machine may wake the sink late): the test
# jumps the sink's clock past the deadlines (SkewClock) rather than waiting them out
HELD_TIMING = dict(TIMING, late_ms=10_000.0)


def ng_part(gate: RejectScheduler, seq: int) -> float:
    """One NG part captured now, its verdict in at once: pulsed at its due time. Returns its capture time (monotonic
    s)."""
    t = time.monotonic()
    gate.note_capture(seq, t)
    gate.submit(Verdict(seq, t, 0.9, 0.5, True, time.monotonic()))
    return t


def recorder_at(folder):
    from fair_edge.line.recorder import Recorder

    return Recorder(RecordSettings(dir=folder, save_ng_images=False, min_free_mb=0))


def test_the_stop_wait_counts_the_widest_pulse_any_reject_output_drives():
    """stop_wait_s took reject.pulse_ms (50) even when a sink URL (reject.sinks, or a lane's cameras[].reject)
    drives a wider pulse: the stop's budget was 1.09 s where the URL's 3 s pulse needs 4.04 s."""
    station = StationConfig(reject=RejectSettings(sinks=("log://test.runlife", WIDE_URL.replace("1500", "3000")),
                                                  **TIMING)).checked()
    assert stop_wait_s(station) == pytest.approx((20 + 3000 + 20) / 1000 + 1.0)
    lanes = StationConfig(cameras=(ViewSettings("a", "1", reject=("gpio://gpiochip0/17?pulse_ms=2500",)),
                                   ViewSettings("b", "2")),
                          group=GroupSettings(by="lane"), reject=RejectSettings(**TIMING)).checked()
    assert stop_wait_s(lanes) == pytest.approx((20 + 2500 + 20) / 1000 + 1.0)
    plain = StationConfig(reject=RejectSettings(sinks=("log://test.runlife",), **TIMING)).checked()
    assert stop_wait_s(plain) == pytest.approx((20 + 50 + 20) / 1000 + 1.0)   # no URL pulse: reject.pulse_ms


def test_a_stop_lets_a_pulse_wider_than_reject_pulse_ms_end_before_it_returns(tmp_path):
    """finish_line drained the sinks for 1 s whatever their pulse: a URL's 1.5 s pulse was still on when the stop
    went on to close the station (a pulse over ~3 s was cut short, its output left on: the sink's close gives up)."""
    cfg = StationConfig(reject=RejectSettings(sinks=(WIDE_URL,), **TIMING)).checked()
    out = RecordingOutput()
    sink = WorkerSink("coil", out, pulse_ms=WIDE_PULSE_MS)   # what the URL opens: its own pulse_ms
    try:
        with recorder_at(tmp_path) as recorder, RejectScheduler(cfg.reject, sinks=sink, fault_sinks=RecordingSink("f"),
                                                                on_part=recorder.record_gate) as gate:
            ng_part(gate, 1)
            summary = RunSummary()
            finish_line(cfg, LineSide(recorder, gate, None, None, []), summary, "")
            at_return = out.levels()
    finally:
        sink.close()
    assert at_return.count(True) == 1, at_return               # the part was pulsed ...
    assert at_return[-1] is False, at_return                   # ... and its pulse had ended when the stop returned
    assert summary.rejects["fired"] == 1 and summary.rejects["pending"] == 0


def lane_station(lane_url: str) -> StationConfig:
    return StationConfig(cameras=(ViewSettings("a", "1", reject=(lane_url,)), ViewSettings("b", "2")),
                         group=GroupSettings(by="lane"), reject=RejectSettings(**TIMING)).checked()


def finish_lanes(cfg: StationConfig, lane: RejectScheduler, recorder) -> RunSummary:
    """``finish_cell`` for a lane station whose lane ``a`` is ``lane`` (no camera, no station gate)."""
    from fair_edge.cameras.mux import CaptureMux
    from fair_edge.station.cell import finish_cell
    from fair_edge.station.cell_line import CellLine

    mux = CaptureMux()
    mux.set_captures({})
    summary = RunSummary()
    finish_cell(cfg, CellLine(LineSide(recorder, None, None, None, []), lanes={"a": lane}), summary, [], mux)
    return summary


def test_a_lane_stop_lets_its_wider_url_pulse_end_before_it_returns(tmp_path):
    """finish_cell drained each lane's sinks for 1 s: a lane URL's 1.5 s pulse was still on at its return."""
    cfg = lane_station(WIDE_URL)
    out = RecordingOutput()
    sink = WorkerSink("lane-a", out, pulse_ms=WIDE_PULSE_MS)
    try:
        with recorder_at(tmp_path) as recorder, RejectScheduler(cfg.reject, sinks=sink,
                                                                fault_sinks=RecordingSink("f")) as lane:
            ng_part(lane, 1)
            summary = finish_lanes(cfg, lane, recorder)
            at_return = out.levels()
    finally:
        sink.close()
    assert at_return.count(True) == 1 and at_return[-1] is False, at_return
    assert summary.rejects["lanes"]["a"]["fired"] == 1


def test_a_lanes_parts_still_on_the_belt_at_the_stop_are_abandoned_in_the_summary(tmp_path):
    """A lane's parts that did not reach its gate within the stop's wait were abandoned only when the lane closed,
    after the summary had copied its counters: summary.json said pending 1, abandoned 0 (the station's own gate
    has abandoned them before the summary since test_line_scheduler's abandoned-parts test)."""
    cfg = lane_station("log://test.runlife.lane")
    with recorder_at(tmp_path) as recorder, RejectScheduler(RejectSettings(delay_ms=600_000), sinks=RecordingSink(),
                                                            fault_sinks=RecordingSink("f"),
                                                            on_part=recorder.record_gate) as lane:   # a stopped belt
        lane.note_capture(7, time.monotonic())
        summary = finish_lanes(cfg, lane, recorder)
    counted = summary.rejects["lanes"]["a"]
    assert counted["abandoned"] == 1 and counted["pending"] == 0, counted


class StuckSink(RecordingSink):
    """A reject output whose pulse never ends: its ``drain`` is given ``timeout_s`` (recorded) and spends all of it
    on the fake ``clock`` (s)."""

    def __init__(self, name: str, clock: list[float]) -> None:
        super().__init__(name)
        self.clock, self.given = clock, []

    def drain(self, timeout_s: float) -> bool:
        self.given.append(timeout_s)
        self.clock[0] += timeout_s
        return False


def test_a_stop_with_several_stuck_outputs_waits_its_drain_timeout_once_not_once_per_output(monkeypatch):
    """The report: ``drain_sinks(timeout_s)`` gave each sink the whole timeout in turn, so a stop with three stuck
    outputs waited three times the stop's timeout. Now the sinks share one deadline: the first is given the timeout,
    the others what is left of it (nothing), and the drain ends ``timeout_s`` after it began, on a fake clock."""
    from types import SimpleNamespace

    from fair_edge.line import gate_sinks
    from fair_edge.line.sinks import FanOut

    clock = [100.0]
    monkeypatch.setattr(gate_sinks, "time", SimpleNamespace(monotonic=lambda: clock[0]), raising=False)
    stuck = [StuckSink(name, clock) for name in ("coil", "register", "node")]
    with RejectScheduler(RejectSettings(**TIMING), sinks=FanOut(stuck), fault_sinks=RecordingSink("f")) as gate:
        gate.drain_sinks(timeout_s=4.0)
    assert [sink.given for sink in stuck] == [[4.0], [0.0], [0.0]]
    assert clock[0] == 104.0


class HeldOutput:
    """A reject output whose first rising edge hangs until ``release`` is set (a PLC write that does not return);
    ``entered`` is set when it begins. Later writes return at once."""

    def __init__(self) -> None:
        self.entered, self.release = threading.Event(), threading.Event()

    def open(self) -> None: ...

    def set(self, on: bool) -> None:
        if on and not self.entered.is_set():
            self.entered.set()
            self.release.wait(10.0)

    def close(self) -> None: ...


class ReleaseAtClose(logging.Handler):
    """Releases ``out``'s hung write when its sink logs that it closes with pulses unfinished (``begin_close``, just
    before the worker is told to stop): the write returns during the stop's close, not before it."""

    def __init__(self, out: HeldOutput) -> None:
        super().__init__()
        self.out = out

    def emit(self, record: logging.LogRecord) -> None:
        if "pulse(s) unfinished" in record.getMessage():
            self.out.release.set()


@pytest.mark.parametrize("lanes", [False, True], ids=["station gate", "lane gate"])
def test_pulses_left_queued_at_the_stop_are_missed_in_the_summary_and_gate_log(tmp_path, monkeypatch, lanes):
    """Three NG parts pulsed; the first pulse's write hangs, so pulses 2 and 3 are still queued when the stop closes
    the gate. They were only logged: summary.json (taken before the gate closed) said pulses 3, delivered + missed +
    unconfirmed + dropped 0, and gate.jsonl had no pulse row for parts 2 and 3. Now the stop closes the gate before
    the summary takes its counters (a lane station's lanes together), and the sink counts them missed. The stop's
    waits are set to 0 (the drain's deadline passes at once); late_ms is 10 s (the first write must begin, however
    late the loaded machine wakes the sink), and before the stop the sink's clock (``SkewClock``) is jumped past
    every pulse's deadline (due + late_ms), no real wait: the hung write, released when the sink closes, returns
    late, and pulses 2 and 3 are past their deadlines whichever thread takes them: missed either way."""
    from fair_edge.line import sinks
    from fair_edge.line.sinks import base
    from fair_edge.station import cell, line_side

    out, sink_clock = HeldOutput(), SkewClock()
    run_sinks_on(monkeypatch, sink_clock)
    monkeypatch.setitem(sinks.SINK_SCHEMES, "held", lambda url, pulse_ms, reporter: WorkerSink(
        "held", out, pulse_ms, reporter=reporter))
    for module in (line_side, cell):
        monkeypatch.setattr(module, "stop_wait_s", lambda cfg: 0.0)
    monkeypatch.setattr(line_side, "STOP_DRAIN_MIN_S", 0.0)
    monkeypatch.setattr(base, "CLOSE_DRAIN_S", 0.0)
    monkeypatch.setattr(base, "CLOSE_JOIN_S", 10.0)   # a bound: the worker ends as soon as the write returns
    release = ReleaseAtClose(out)
    logging.getLogger(base.__name__).addHandler(release)
    settings = RejectSettings(sinks=("held://plc",), **HELD_TIMING)
    try:
        with recorder_at(tmp_path) as recorder, RejectScheduler(settings, on_part=recorder.record_gate) as gate:
            for seq in (1, 2, 3):
                t_last = ng_part(gate, seq)
                time.sleep(0.1)   # past the previous part's pulse slot (pulse 50 ms): each fires at its own due time
            assert out.entered.wait(10.0), "the first pulse's write did not begin"
            t_end = time.monotonic() + 10.0
            while gate.stats()["fired"] < 3:   # all three handed to the sink: 2 and 3 queued behind the hung write
                assert time.monotonic() < t_end, gate.stats()
                time.sleep(0.005)
            last_deadline = t_last + (settings.delay_ms + settings.late_ms) / 1000.0
            sink_clock.jump(max(0.0, last_deadline - sink_clock()) + 1.0)   # the stop: every pulse past its deadline
            if lanes:
                summary = finish_lanes(lane_station("log://test.runlife.lane"), gate, recorder)
            else:
                summary = RunSummary()
                finish_line(StationConfig(reject=settings), LineSide(recorder, gate, None, None, []), summary, "")
    finally:
        logging.getLogger(base.__name__).removeHandler(release)
    [counted] = summary.rejects["sinks"].values()
    assert (counted["pulses"], counted["delivered"], counted["missed"]) == (3, 1, 2), counted
    assert counted["delivered"] + counted["missed"] + counted["unconfirmed"] + counted["dropped"] == counted["pulses"]
    rows = [json.loads(line) for line in (tmp_path / "gate.jsonl").read_text().splitlines()]
    assert sorted((r["seq"], r["pulse"]) for r in rows if r["event"] == "pulse") == [(1, "late"), (2, "missed"),
                                                                                      (3, "missed")]


class TeardownWatch:
    """Stands in for a scorer's backend ``close`` (TensorRT, CUDA): notes whether summary.json was there when the
    teardown began, then fails as a hung teardown cut by systemd's SIGKILL would, leaving it unwritten."""

    def __init__(self, summary_path) -> None:
        self.summary_path, self.saw_summary = summary_path, []

    def __call__(self) -> None:
        self.saw_summary.append(self.summary_path.exists())
        raise RuntimeError("backend teardown hung (stands in for a SIGKILL)")


def station_scorer(bundle, out):
    from fair_edge.station.bundles import open_scorer

    scorer = open_scorer(bundle, "onnxruntime")
    watch = TeardownWatch(out / "summary.json")
    scorer.backend.close = watch
    return scorer, watch


@pytest.mark.parametrize("cell", [False, True], ids=["one camera", "cell"])
def test_summary_json_is_written_before_the_scorers_teardown(station_bundles, conveyor_dir, tmp_path, cell):
    """The scorer's teardown (a TensorRT engine, CUDA) ran after every line-side wait and summary.json after it, with
    only STOP_RESERVE_S (1 s) of the stop left for both: a slow teardown meant SIGKILL before summary.json. Now the
    summary is written first (it needs nothing of the teardown) and the scorer closed after it."""
    from fair_edge.station.cell import run_cell
    from fair_edge.station.config import CameraSettings, ConsoleSettings

    out = tmp_path / "out"
    scorer, watch = station_scorer(station_bundles[0], out)
    common = dict(bundle=station_bundles[0].root, backend="onnxruntime", output=out,
                  record=RecordSettings(dir=out), console=ConsoleSettings(enabled=False))
    if cell:
        cameras = tuple(ViewSettings(name, str(conveyor_dir), queue_size=4) for name in ("top", "side"))
        cfg = StationConfig(cameras=cameras, group=GroupSettings(match="sequence"), **common).checked()
        summary = run_cell(cfg, threading.Event(), scorer=scorer)
    else:
        from fair_edge.station.run import run_station

        cfg = StationConfig(camera=CameraSettings(source=str(conveyor_dir), queue_size=4), **common)
        summary = run_station(cfg, threading.Event(), scorer=scorer)
    assert watch.saw_summary == [True]   # closed once, summary.json already there
    assert json.loads((out / "summary.json").read_text())["inspected"] == summary.inspected > 0
