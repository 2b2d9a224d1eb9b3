"""A reject sink's pulse counters (``SINK_COUNTERS``; summary.json's ``rejects.sinks``) as line-integration.md defines
them: a pulse whose write began in time and returned after its deadline is counted ``delivered`` and ``late_writes``
(reported ``late_write``, the gate log's ``late``): ``late_writes`` is a part of ``delivered``, so the PLC's rises equal
``delivered``, not ``delivered + late_writes``. test_station_cell added the two and failed on a loaded machine
(``2 == 2 + 1``). The worker runs on a fake clock that only the output's writes move: a write is late because the
test says so, not because the machine was slow.

A pulse still queued when the sink closes (behind a write that hangs, a station stop) is counted ``missed``: it was
only logged, in no counter, so summary.json said pulses 3 while delivered + missed + unconfirmed + dropped was 1.
Those tests hold a write until the test releases it: what happens when is the test's doing, not the machine's."""

from __future__ import annotations

import threading
import time

from line_servers import FakeClock, run_sinks_on

from fair_edge.line.events import RejectEvent
from fair_edge.line.scheduler import PULSE_RESULTS
from fair_edge.line.sinks.base import CloseBy, WorkerSink

WAIT_S = 10.0   # real seconds a step may take on a loaded machine (a passing test returns as soon as it is done)
LATE_MS = 10.0  # the events' deadline after their edge


class TimedOutput:
    """An ``Output`` (local, not probed) that counts its rising edges (what the PLC sees) and whose rising-edge writes
    take ``write_s`` seconds of ``clock`` each (set per pulse by the test)."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock, self.write_s, self.rises = clock, 0.0, 0

    def open(self) -> None: ...

    def set(self, on: bool) -> None:
        if on:
            self.rises += 1
            self.clock.advance(self.write_s)

    def close(self) -> None: ...


def wait_for(done, what: str) -> None:
    t_end = time.monotonic() + WAIT_S
    while not done():
        assert time.monotonic() < t_end, f"not within {WAIT_S} s: {what}"
        time.sleep(0.002)


def test_a_late_write_is_delivered_and_counted_late_never_twice(monkeypatch):
    """Two pulses: the first's write takes 50 ms (past its 10 ms deadline), the second's none. Both reached the
    PLC: delivered 2 of which late_writes 1, equal to the PLC's rises; each pulse reported once (late_write, then
    delivered), as the gate log's late and delivered rows."""
    clock = FakeClock()
    run_sinks_on(monkeypatch, clock)
    out, reports = TimedOutput(clock), []
    sink = WorkerSink("timed", out, pulse_ms=0, reporter=reports.append)   # 0: no falling edge to wait for
    try:
        wait_for(lambda: sink.connected, "the sink connects")
        for seq, write_s in ((1, 0.050), (2, 0.0)):
            out.write_s = write_s
            t_edge = clock()
            sink.pulse(RejectEvent(seq, t_edge, t_edge, t_edge + LATE_MS / 1000))
            wait_for(lambda: [r.seq for r in reports if r.seq] == [1, 2][:seq], f"pulse {seq} reported")
        stats = sink.stats()
    finally:
        sink.close()
    assert [(r.seq, PULSE_RESULTS[r.kind]) for r in reports] == [(1, "late"), (2, "delivered")]
    assert (stats["pulses"], stats["delivered"], stats["late_writes"]) == (2, 2, 1)
    assert out.rises == stats["delivered"]   # not delivered + late_writes: a late write is one of those delivered
    assert stats["delivered"] + stats["missed"] + stats["unconfirmed"] + stats["dropped"] == stats["pulses"]



class HeldOutput:
    """An ``Output`` (local, not probed) whose rising-edge writes hang until the test sets ``release`` (a PLC write
    that does not return); ``entered`` is set once one has begun, ``rises`` counts those that returned."""

    def __init__(self) -> None:
        self.entered, self.release, self.rises = threading.Event(), threading.Event(), 0

    def open(self) -> None: ...

    def set(self, on: bool) -> None:
        if on:
            self.entered.set()
            self.release.wait(WAIT_S)
            self.rises += 1

    def close(self) -> None: ...


def held_sink_with_three_pulses() -> tuple[WorkerSink, HeldOutput, list]:
    """A sink whose first pulse's write hangs (``HeldOutput``) with pulses 2 and 3 queued behind it; deadlines a
    minute off, so none of them misses by its deadline."""
    out, reports = HeldOutput(), []
    sink = WorkerSink("held", out, pulse_ms=0, reporter=reports.append)   # 0: no falling edge
    wait_for(lambda: sink.connected, "the sink connects")
    t_edge = time.monotonic()
    for seq in (1, 2, 3):
        sink.pulse(RejectEvent(seq, t_edge, t_edge, t_edge + 60.0))
    assert out.entered.wait(WAIT_S), "the first pulse's write did not begin"
    return sink, out, reports


def outcomes(stats: dict[str, int]) -> int:
    """The pulses that ended, each in one outcome counter."""
    return stats["delivered"] + stats["missed"] + stats["unconfirmed"] + stats["dropped"]


def test_pulses_still_queued_when_the_sink_closes_are_counted_missed():
    """Told to stop while pulse 1's write hangs (the drain's deadline passed), the worker ends once that write
    returns; pulses 2 and 3, never taken, are counted and reported missed (gate log: missed) at close, so every
    pulse handed in is in one outcome. Before, close logged them and counted them nowhere: pulses 3, outcomes 1."""
    sink, out, reports = held_sink_with_three_pulses()
    now = time.monotonic()
    by = CloseBy(now, now + WAIT_S)   # the drain's deadline already passed; the worker waited for up to WAIT_S
    sink.begin_close(by)              # the worker is told to stop ...
    out.release.set()                 # ... then pulse 1's write returns
    sink.close(by)
    stats = sink.stats()
    assert (stats["pulses"], stats["delivered"], stats["missed"]) == (3, 1, 2), stats
    assert outcomes(stats) == stats["pulses"] == out.rises + 2
    assert [(r.seq, PULSE_RESULTS[r.kind]) for r in reports] == [(1, "delivered"), (2, "missed"), (3, "missed")]
    assert "left queued when the sink closed" in reports[-1].detail


def test_a_worker_given_up_on_at_close_counts_its_hung_pulse_when_the_write_returns():
    """The close's deadline passes with pulse 1's write still hanging: close gives up on the worker, counts the
    queued pulses 2 and 3 missed at once (the closing thread takes them, the worker never does), and pulse 1 is
    counted by the worker when its write returns (delivered), once: SINK_COUNTERS' comment."""
    sink, out, reports = held_sink_with_three_pulses()
    now = time.monotonic()
    sink.close(CloseBy(now, now))     # both deadlines passed: the worker is not waited for
    at_close = sink.stats()
    assert (at_close["pulses"], at_close["delivered"], at_close["missed"]) == (3, 0, 2), at_close
    out.release.set()
    wait_for(lambda: sink.stats()["delivered"] == 1, "the hung write returns and is counted")
    stats = sink.stats()
    assert outcomes(stats) == stats["pulses"] == 3 and stats["missed"] == 2
    assert sorted((r.seq, PULSE_RESULTS[r.kind]) for r in reports) == [(1, "delivered"), (2, "missed"), (3, "missed")]
