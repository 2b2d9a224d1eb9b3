"""A reject sink's pulse counters (``SINK_COUNTERS``; summary.json's ``rejects.sinks``) as line-integration.md defines
them: a pulse whose write began in time and returned after its deadline is counted ``delivered`` and ``late_writes``
(reported ``late_write``, the gate log's ``late``): ``late_writes`` is a part of ``delivered``, so the PLC's rises equal
``delivered``, not ``delivered + late_writes``. test_station_cell added the two and failed on a loaded machine
(``2 == 2 + 1``). The worker runs on a fake clock that only the output's writes move: a write is late because the
test says so, not because the machine was slow."""

from __future__ import annotations

import time
import types

from line_servers import FakeClock

from fair_edge.line.events import RejectEvent
from fair_edge.line.scheduler import PULSE_RESULTS
from fair_edge.line.sinks import base
from fair_edge.line.sinks.base import WorkerSink

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
    monkeypatch.setattr(base, "time", types.SimpleNamespace(monotonic=clock, sleep=time.sleep))
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

