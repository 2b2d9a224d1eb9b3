"""A reject output held on past its pulse + ``base.FALL_RETRY_S`` because its falling edge could not be written is
reported ``stuck`` (the gate's fault output on, counted ``sink_errors``) and ``released`` once the edge is written,
by the worker or at the stop; one written late by a write that slow is a ``late_fall``, no fault.
Audit: a reconnect for the edge that blocked longer than that (a Modbus / OPC UA connect timeout of 1.3 s) and then
succeeded wrote the edge late with nothing reported: the ejector was held on, the fault output never showed it, no
counter moved and the journal said nothing. Phases follow the fake output's calls and the sink's reports (the output
blocks until the test lets it go), never timers: order, not speed."""

import re
import threading

from fair_edge.errors import PlcError
from fair_edge.line.events import RejectEvent
from fair_edge.line import gate_sinks
from fair_edge.line.scheduler import RejectScheduler
from fair_edge.line.settings import RejectSettings
from fair_edge.line.sinks import FanOut, base
from fair_edge.line.sinks.base import WorkerSink
from line_replay import RecordingSink
from line_servers import SkewClock, run_sinks_on

WAIT_S = 10.0   # upper bound for a step to happen on a loaded machine (a passing test returns as soon as it does)
FAST = {"backoff_s": 0.01, "backoff_max_s": 0.05, "probe_s": 1000.0}   # no probe: the pulse's writes are the calls
STUCK_REASON = "plc: output may be left on after reject seq 1 (falling edge not written)"


class SlowOutput:
    """A PLC coil. ``slow="connect"``: the link drops right after a rising edge lands (the falling edge's write fails)
    and the reconnect's open blocks until ``go`` is set, then connects (a slow connect timeout). ``slow="write"``: the
    write of off after a rising edge blocks until ``go`` is set, then lands. ``trace``: each call (``open``,
    ``open:blocked``, ``set``, ``set:fail``, ``set:off:blocked``) and each report (``report:KIND``), in order."""

    def __init__(self, slow: str) -> None:
        self.slow = slow
        self.cond = threading.Condition()
        self.go = threading.Event()
        self.up = True
        self.writes: list[bool] = []
        self.trace: list[str] = []

    def note(self, entry: str) -> None:
        with self.cond:
            self.trace.append(entry)
            self.cond.notify_all()

    def open(self) -> None:
        if not self.up:
            self.note("open:blocked")
            self.go.wait(WAIT_S)
            self.up = True
        self.note("open")

    def set(self, on: bool) -> None:
        if not self.up:
            self.note("set:fail")
            raise PlcError("fake plc: link dropped")
        if self.slow == "write" and not on and self.writes[-1:] == [True]:
            self.note("set:off:blocked")
            self.go.wait(WAIT_S)
        with self.cond:
            self.writes.append(on)
        self.up = not (on and self.slow == "connect")
        self.note("set")

    def close(self) -> None:
        pass

    def wait(self, entry: str) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: entry in self.trace, WAIT_S)


class Listener:
    """The sink's reporter: hands each report to the scheduler, then notes it in the output's trace and keeps it."""

    def __init__(self, out: SlowOutput) -> None:
        self.out = out
        self.scheduler: RejectScheduler | None = None
        self.reports: list = []

    def __call__(self, report) -> None:
        if self.scheduler is not None:
            self.scheduler.handle_report(report)
        self.reports.append(report)
        self.out.note(f"report:{report.kind}")

    @property
    def kinds(self) -> list[str]:
        return [report.kind for report in self.reports]


def _station(out: SlowOutput, faults: RecordingSink, rows: list | None = None,
             ) -> tuple[RejectScheduler, WorkerSink, Listener]:
    """A scheduler whose reject fan-out drives one sink on ``out`` (20 ms pulses), its gate-log rows put in ``rows``;
    the caller closes both."""
    fan = FanOut([], "rejects")
    sched = RejectScheduler(RejectSettings(delay_ms=100, pulse_ms=20), sinks=fan, fault_sinks=faults,
                            on_part=None if rows is None else rows.append)
    listener = Listener(out)
    listener.scheduler = sched
    sink = WorkerSink("plc", out, pulse_ms=20, reporter=listener, **FAST)
    fan.sinks.append(sink)
    return sched, sink, listener


def _close_times(monkeypatch, fall_retry_s: float, drain_s: float) -> None:
    """``FALL_RETRY_S`` and ``CLOSE_DRAIN_S`` (s) for this test; the close waits up to ``WAIT_S`` for the worker (it
    ends once the blocked open returns)."""
    monkeypatch.setattr(base, "FALL_RETRY_S", fall_retry_s)
    monkeypatch.setattr(base, "CLOSE_DRAIN_S", drain_s)
    monkeypatch.setattr(base, "CLOSE_JOIN_S", WAIT_S)


def _closing(monkeypatch, fall_retry_s: float, drain_s: float,
             ) -> tuple[SlowOutput, RecordingSink, RejectScheduler, WorkerSink, Listener, threading.Thread]:
    """``_station`` on an output whose reconnect blocks (``SlowOutput("connect")``), the close's times set
    (``_close_times``), and a thread that closes the sink (started by the test)."""
    _close_times(monkeypatch, fall_retry_s, drain_s)
    out, faults = SlowOutput("connect"), RecordingSink("fault")
    sched, sink, listener = _station(out, faults)
    return out, faults, sched, sink, listener, threading.Thread(target=sink.close)


def _pulse(sink: WorkerSink) -> None:
    now = base.time.monotonic()
    sink.pulse(RejectEvent(seq=1, t_due=now, t_edge=now, deadline=now + WAIT_S))


def test_a_falling_edge_whose_reconnect_blocks_past_its_retry_time_is_reported_stuck_while_it_blocks(monkeypatch):
    """The link drops after the rising edge; the reconnect for the falling edge blocks (here until the test lets it
    go) past ``FALL_RETRY_S``: ``stuck`` is reported while it still blocks, the fault output goes on naming the sink and
    the part; once the connect returns the edge is written, ``released`` follows (once, after ``stuck``) and the
    fault output drops. ``FALL_RETRY_S`` 0.5 s (no test time: the open blocks until the test lets it go), so a worker
    stalled on a loaded machine between its failed write and the reconnect still reaches the connect before it (at
    0.05 s, a 60 ms stall took the given-up write's path instead and the test failed)."""
    monkeypatch.setattr(base, "FALL_RETRY_S", 0.5)
    out, faults = SlowOutput("connect"), RecordingSink("fault")
    sched, sink, listener = _station(out, faults)
    try:
        with sched:
            assert out.wait("set")                                # connected, resting level written
            _pulse(sink)
            assert out.wait("report:stuck"), out.trace            # said while the connect still blocks
            assert not out.go.is_set() and out.trace[-2:] == ["open:blocked", "report:stuck"], out.trace
            assert out.writes == [False, True]                    # the output is on
            assert faults.faults[-1][0] is True and faults.faults[-1][1].startswith(STUCK_REASON), faults.faults
            out.go.set()
            assert out.wait("report:released"), out.trace
            assert out.writes == [False, True, False] and faults.faults[-1] == (False, "cleared"), faults.faults
            after_stuck = out.trace[out.trace.index("report:stuck"):]   # the connect returned, then the edge
            assert after_stuck.index("open") < after_stuck.index("set") < after_stuck.index("report:released")
            assert out.wait("report:delivered"), out.trace   # the pulse's last report: a late_fall would come before it
            stats = sched.stats()
        assert listener.kinds.count("stuck") == 1 and listener.kinds.count("released") == 1, listener.kinds
        assert "late_fall" not in listener.kinds and stats["sink_late_falls"] == 0   # said once: stuck, not late too
        assert stats["sink_errors"] == 2   # the falling edge's failed write (io_error) and the stuck output
    finally:
        sink.close()


def test_a_stop_during_a_blocked_reconnect_writes_the_edge_at_close_and_releases_the_stuck_fault(monkeypatch, caplog):
    """The station stops while the falling edge's reconnect blocks, past ``FALL_RETRY_S`` (``stuck`` reported, the
    fault output on); the connect returns once the worker is told to stop and the close writes the edge off: that is
    ``released`` too, so the gate's stuck fault clears before the fault outputs close (the gate closes them last).
    Audit: the close wrote it and logged "written at close" but never said released: the fault output stayed on after
    a clean stop, its reason saying the output may be left on."""
    out, faults, sched, sink, listener, closing = _closing(monkeypatch, 0.5, 0.05)   # the drain gives up on the edge
    with sched:
        assert out.wait("set")
        _pulse(sink)
        assert out.wait("report:stuck"), out.trace
        assert faults.faults[-1][0] is True, faults.faults
        closing.start()
        assert sink._stop.wait(WAIT_S) and not out.go.is_set()   # told to stop while the connect still blocks
        out.go.set()
        closing.join(WAIT_S)
        assert not closing.is_alive()
        assert out.writes == [False, True, False], out.writes    # the edge, written by the close
        assert faults.faults[-1] == (False, "cleared") and sched.fault_reason is None, faults.faults
    assert "the falling edge of seq 1, due" in caplog.text and "written at close" in caplog.text
    kinds = listener.kinds
    assert kinds.count("stuck") == 1 and kinds.count("released") == 1, kinds
    assert kinds.index("stuck") < kinds.index("released") and "late_fall" not in kinds, kinds


def test_a_stop_with_no_drain_left_counts_the_edge_its_close_writes_late(monkeypatch):
    """The stop comes with no drain time left (a spent deadline) while the falling edge's reconnect blocks, before
    ``FALL_RETRY_S`` (no ``stuck`` yet: the watch says nothing once the sink is closing); the connect returns past it
    and the close writes the edge: ``late_fall``, counted ``late_falls`` / ``sink_late_falls``, as a late edge the
    worker writes is. The sink's clock is jumped past ``FALL_RETRY_S`` (5 s here), so no real wait decides it.
    Review: the close only logged it; summary.json, MQTT and /metrics showed no sign of the ejector held on."""
    clock = SkewClock()
    run_sinks_on(monkeypatch, clock)
    out, _, sched, sink, listener, closing = _closing(monkeypatch, 5.0, 0.0)   # stop set at once: no watch window
    with sched:
        assert out.wait("set")
        _pulse(sink)
        assert out.wait("open:blocked"), out.trace
        closing.start()
        assert sink._stop.wait(WAIT_S) and not out.go.is_set()
        clock.jump(base.FALL_RETRY_S + 0.5)
        out.go.set()
        closing.join(WAIT_S)
        assert not closing.is_alive() and out.writes == [False, True, False], out.writes   # written by the close
        stats = sched.stats()
    assert "stuck" not in listener.kinds and listener.kinds.count("late_fall") == 1, listener.kinds
    assert (stats["sink_late_falls"], sink.stats()["late_falls"], stats["sink_late_writes"]) == (1, 1, 0), stats


def test_a_gate_closed_during_a_blocked_reconnect_ends_with_its_fault_output_off(monkeypatch):
    """A gate that owns its reject and fault outputs (opened from URLs) stops while the reject output's falling edge
    waits on a blocked reconnect (``stuck``: the fault output on). The gate closes its reject outputs before its fault
    outputs, so the reject close's ``released`` clears the fault before the fault output's own close writes its
    resting level: it ends off, the gate's fault reason None. Closing the fault outputs first would leave it on."""
    _close_times(monkeypatch, 0.5, 0.05)   # the drain gives up on the blocked edge: the stop is set
    out, lamp, made = SlowOutput("connect"), SlowOutput("none"), {}

    def open_fanout(urls, pulse_ms, reporter, name):
        output = out if name == "rejects" else lamp
        made[name] = WorkerSink(name, output, pulse_ms=pulse_ms, **FAST,
                                reporter=lambda r: (reporter(r), output.note(f"report:{r.kind}")))
        return FanOut([made[name]], name)

    monkeypatch.setattr(gate_sinks, "open_fanout", open_fanout)
    sched = RejectScheduler(RejectSettings(sinks=("x://plc",), fault_sinks=("x://lamp",), delay_ms=100, pulse_ms=20))
    closing = threading.Thread(target=sched.close)
    try:
        assert out.wait("set") and lamp.wait("set")
        _pulse(made["rejects"])
        assert out.wait("report:stuck"), out.trace
        with lamp.cond:
            assert lamp.cond.wait_for(lambda: lamp.writes[-1:] == [True], WAIT_S), lamp.writes   # the fault output on
        closing.start()
        assert made["rejects"]._stop.wait(WAIT_S) and not out.go.is_set()   # told to stop while the connect blocks
        out.go.set()
        closing.join(WAIT_S)
        assert not closing.is_alive()
    finally:
        out.go.set()
        sched.close()
    assert "report:released" in out.trace and out.writes == [False, True, False], out.trace
    assert lamp.writes[-1] is False and sched.fault_reason is None, (lamp.writes, sched.fault_reason)


def test_a_falling_edge_written_after_its_retry_time_is_a_late_fall_naming_how_long_not_a_fault(monkeypatch, caplog):
    """The falling edge's write itself takes longer than ``FALL_RETRY_S`` (the sink's clock jumped past it while the
    write blocks) and then lands: the output is off again, so no fault: ``late_fall``, counted (the gate's
    ``sink_late_falls``, the sink's ``late_falls``) and logged at WARNING naming the pulse and how long the output
    was held on past its due time; the fault output untouched, ``sink_errors`` 0, ``late_writes`` 0 (late rising
    edges, a part of ``delivered``), the pulse's one gate-log row ``delivered`` (its rising edge was written in time).
    Audit: reported ``stuck`` then ``released`` back to back, a flash of the fault output; then counted in
    ``late_writes``, which broke ``late_writes <= delivered`` and its match with the gate log's ``late`` rows."""
    clock = SkewClock()
    run_sinks_on(monkeypatch, clock)
    out, faults, rows = SlowOutput("write"), RecordingSink("fault"), []
    sched, sink, listener = _station(out, faults, rows)
    try:
        with sched:
            assert out.wait("set")
            _pulse(sink)
            assert out.wait("set:off:blocked"), out.trace
            clock.jump(base.FALL_RETRY_S + 0.5)
            out.go.set()
            assert out.wait("report:delivered"), out.trace
            assert out.writes == [False, True, False] and faults.faults == [] and sched.fault_reason is None, faults.faults
            stats = sched.stats()
        assert listener.kinds == ["late_fall", "delivered"], listener.kinds
        late = listener.reports[0]
        held = re.search(r"the falling edge of seq 1 written (\d+) ms after it was due", late.detail)
        assert late.seq == 1 and held and 1500 <= int(held.group(1)) < 1500 + 1000 * WAIT_S, late.detail
        assert "retried" not in late.detail   # one write, not retried
        (logged,) = [r for r in caplog.records if "late_fall" in r.getMessage()]
        assert logged.levelname == "WARNING" and late.detail in logged.getMessage()
        assert (stats["sink_errors"], stats["sink_late_falls"], stats["sink_late_writes"]) == (0, 1, 0), stats
        counted = sink.stats()
        assert (counted["delivered"], counted["late_falls"], counted["late_writes"]) == (1, 1, 0), counted
        assert [row["pulse"] for row in rows if row["event"] == "pulse"] == ["delivered"]
    finally:
        sink.close()


def test_a_falling_edge_written_in_time_reports_nothing():
    """The normal pulse: rising and falling edge written, ``delivered``, no ``stuck``, the fault output untouched."""
    out, faults = SlowOutput("none"), RecordingSink("fault")
    sched, sink, listener = _station(out, faults)
    try:
        with sched:
            assert out.wait("set")
            _pulse(sink)
            assert out.wait("report:delivered"), out.trace
            assert out.writes == [False, True, False] and faults.faults == []
        assert listener.kinds == ["delivered"]
    finally:
        sink.close()
