"""WorkerSink at a stop and after a reconnect (base.py): a pulse still on when the sink closes is ended by close(),
and a pulse_ms=0 output's pulse is not overwritten by the resting level its own reconnect owed. Every wait here is
for an event the worker reports, bounded by WAIT_S; no sleep stands in for one."""

from __future__ import annotations

import logging
import sys
import threading
import time

from fair_edge.errors import PlcError
from fair_edge.line.events import RejectEvent
from fair_edge.line.sinks import base, open_sink
from fair_edge.line.sinks.base import WorkerSink

from test_gpio_outputs import FakeChips

WAIT_S = 10.0        # upper bound for a report on a loaded machine (a passing test returns as soon as it comes)
LONG_PULSE_MS = 600_000.0   # a pulse no test waits out: only close() can end it


class Output:
    """A coil / GPIO line: records every write (monotonic s, level) and signals each one; ``up`` False fails opens
    and writes as a dead link does."""

    def __init__(self) -> None:
        self.writes: list[tuple[float, bool]] = []
        self.wrote = threading.Condition()
        self.up = True
        self.opened = False

    def open(self) -> None:
        if not self.up:
            raise PlcError("connect refused")
        self.opened = True

    def set(self, on: bool) -> None:
        if not (self.up and self.opened):
            raise PlcError("link down")
        with self.wrote:
            self.writes.append((time.monotonic(), on))
            self.wrote.notify_all()

    def close(self) -> None:
        self.opened = False

    def levels(self) -> list[bool]:
        with self.wrote:
            return [on for _, on in self.writes]

    def wait_for_level(self, on: bool) -> bool:
        with self.wrote:
            return self.wrote.wait_for(lambda: any(level is on for _, level in self.writes), WAIT_S)


class Reports:
    """A sink reporter that keeps the report kinds and lets a test wait for one (at most WAIT_S)."""

    def __init__(self) -> None:
        self.kinds: list[str] = []
        self.cond = threading.Condition()

    def __call__(self, report) -> None:
        with self.cond:
            self.kinds.append(report.kind)
            self.cond.notify_all()

    def wait_for(self, kind: str) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: kind in self.kinds, WAIT_S)


def due_now(seq: int) -> RejectEvent:
    now = time.monotonic()
    return RejectEvent(seq=seq, t_due=now, t_edge=now, deadline=now + WAIT_S)


# -- 2. a stop during a long pulse ---------------------------------------------------------------------------------

def test_close_during_a_pulse_wider_than_the_drain_writes_the_falling_edge(monkeypatch, caplog):
    """Audit bug 2: after close()'s drain the stop woke _fall, whose _write_until returned False without writing
    (its loop runs while not stopped): the output was closed still on (a diverter held open after the station
    exited), reported ``stuck ... retried after reconnect``, which never came."""
    monkeypatch.setattr(base, "CLOSE_DRAIN_S", 0.01)
    out, reports = Output(), Reports()
    sink = WorkerSink("gate", out, pulse_ms=LONG_PULSE_MS, reporter=reports)
    sink.pulse(due_now(7))
    assert out.wait_for_level(True), out.writes
    with caplog.at_level(logging.WARNING, logger=base.__name__):
        sink.close()
    assert out.levels()[-1] is False, out.writes          # the gate is shut before the output is closed
    assert "stuck" not in reports.kinds and sink.stats()["delivered"] == 1
    assert "closed mid-pulse (seq 7): its falling edge written at close" in caplog.text


def test_close_with_the_falling_edge_not_writable_says_the_output_may_be_left_on(monkeypatch, caplog):
    """The one attempt at close fails (the link is gone): logged as an output that may be left on, not passed over."""
    monkeypatch.setattr(base, "CLOSE_DRAIN_S", 0.01)
    out = Output()
    sink = WorkerSink("gate", out, pulse_ms=LONG_PULSE_MS, reporter=Reports())
    sink.pulse(due_now(8))
    assert out.wait_for_level(True), out.writes
    out.up = False
    with caplog.at_level(logging.ERROR, logger=base.__name__):
        sink.close()
    assert out.levels() == [True]
    assert "closing with the resting level (off) not written: link down; the output may be left on" in caplog.text


def test_a_gpio_line_is_left_off_when_the_station_stops_mid_pulse(monkeypatch):
    """The audit's case end to end through open_sink and a libgpiod v2 stand-in: reject.pulse_ms 4000 and a stop
    after the drain: the line's physical level after close was 1 (gate open)."""
    chips = FakeChips({"/dev/gpiochip0": 32})
    monkeypatch.setitem(sys.modules, "gpiod", chips.module())
    monkeypatch.setattr(base, "CLOSE_DRAIN_S", 0.01)
    sink = open_sink("gpio://gpiochip0/17", pulse_ms=LONG_PULSE_MS)
    sink.pulse(due_now(1))
    deadline = time.monotonic() + WAIT_S
    while chips.physical.get(("/dev/gpiochip0", 17)) != 1 and time.monotonic() < deadline:
        threading.Event().wait(0.005)   # polls the fake line's level, bounded by WAIT_S; no timing is asserted
    assert chips.physical[("/dev/gpiochip0", 17)] == 1
    sink.close()
    assert chips.physical[("/dev/gpiochip0", 17)] == 0


def test_a_pulse_not_yet_due_at_close_is_missed_and_says_why(monkeypatch):
    """A pulse whose edge time the close came before is missed "not written by its deadline" no more: the sink
    closed before its edge (its deadline had not passed)."""
    monkeypatch.setattr(base, "CLOSE_DRAIN_S", 0.01)
    out, details = Output(), []
    sink = WorkerSink("gate", out, pulse_ms=5, reporter=lambda report: details.append((report.kind, report.detail)))
    now = time.monotonic()
    sink.pulse(RejectEvent(seq=3, t_due=now + WAIT_S, t_edge=now + WAIT_S, deadline=now + 2 * WAIT_S))
    sink.close()
    assert True not in out.levels() and sink.stats()["missed"] == 1
    assert ("missed", "the sink closed before its edge time; not written") in details


# -- 3. pulse_ms=0 and the reconnect its pulse made ---------------------------------------------------------------

class ProbedOutput(Output):
    """An Output with a ``probe`` (a read, as Modbus / OPC UA have) that signals each call: the worker probes only
    in a step after the one that wrote the pulse, so a probe seen means that step's writes are all in."""

    def __init__(self) -> None:
        super().__init__()
        self.probed = threading.Event()

    def probe(self) -> None:
        if not (self.up and self.opened):
            raise PlcError("link down")
        self.probed.set()


def test_a_pulse_ms_0_pulse_after_its_own_reconnect_is_not_cleared_by_the_resting_level():
    """Audit bug 3: the pulse found the link down and its connect (_do_pulse -> _try_connect(force=True)) set
    _level_dirty; the same worker step wrote the resting level (off) right after the rising edge: the PLC saw the
    output on for ~40 us instead of until it cleared it, and the pulse was counted delivered."""
    out, reports = ProbedOutput(), Reports()
    out.up = False   # down at start: the first connect fails, the next waits the (long) back-off
    sink = WorkerSink("handshake", out, pulse_ms=0, reporter=reports, backoff_s=60.0, backoff_max_s=60.0,
                      probe_s=0.01)
    try:
        assert reports.wait_for("link_down"), reports.kinds
        out.up = True    # the PLC is back; the worker is still backing off: the pulse's own connect reconnects
        sink.pulse(due_now(5))
        assert reports.wait_for("delivered"), reports.kinds
        out.probed.clear()
        assert out.probed.wait(WAIT_S)   # a later idle step: the pulse's step is over
        assert out.levels() == [True], out.writes
    finally:
        sink.close()
    assert out.levels() == [True], out.writes   # nor does close() clear it: the PLC does
