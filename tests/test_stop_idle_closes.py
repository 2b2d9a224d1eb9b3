"""A close given 0 s by a station's stop whose deadline earlier waits spent, of a component that holds nothing,
loses nothing: its thread, woken but not yet ended, is left to end on its own, and the journal gets no ERROR or
WARNING for it (one sent the engineer looking for a fault that was not there). One that did hold something (a part at
the gate, a pulse in a write, a read held) keeps its error and its counts."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from fair_edge.errors import PlcError
from fair_edge.line.close_cut import cut_short
from fair_edge.line.events import RejectEvent
from fair_edge.line.polled_encoder import CLOSE_JOIN_S as ENCODER_CLOSE_S, PolledEncoder
from fair_edge.line.scheduler import RejectScheduler
from fair_edge.line.settings import RejectSettings
from fair_edge.line.sinks.base import CloseBy, WorkerSink
from fair_edge.records import Verdict
from fair_edge.station.line_side import close_gates
from line_replay import RecordingSink
from line_servers import SkewClock, run_sinks_on
from test_line_sink_close import HangingOutput, RecordingOutput
from test_stop_budget import spent_stop

WAIT_S = 10.0   # upper bound for a thread to reach the state a test needs on a loaded machine
SLOW_OPEN_S = 2 * WAIT_S   # a reconnect this long (on the sink's SkewClock) ends past every pulse deadline here
SPENT = "the station's stop deadline was spent by earlier waits"   # the cut_short reason, as close_gates gives


class HeldSink(RecordingSink):
    """A reject sink handed in whose ``pulse`` blocks until ``release`` (the gate's thread held with a part)."""

    def __init__(self) -> None:
        super().__init__()
        self.entered, self.release = threading.Event(), threading.Event()

    def pulse(self, event) -> None:
        self.entered.set()
        self.release.wait(WAIT_S)
        super().pulse(event)


class CountingOutput(RecordingOutput):
    """An honest output that counts its opens and closes (one left open: a worker reopened it after the close)."""

    def __init__(self) -> None:
        super().__init__()
        self.opens = self.closes = 0

    def open(self) -> None:
        self.opens += 1

    def close(self) -> None:
        self.closes += 1


def loud(caplog, level: int = logging.WARNING) -> list[str]:
    return [f"{r.levelname} {r.getMessage()}" for r in caplog.records if r.levelno >= level]


def test_an_idle_gate_closed_on_a_spent_deadline_logs_no_error(caplog):
    """close_gates gave an idle gate (no part pending, its log:// sink idle) 0 s: its thread, woken, had not ended
    within 0 s and the close logged ERROR 'reject scheduler thread did not stop by the close's deadline'; nothing was
    lost. Now that is a DEBUG line: the thread ends on its own."""
    gate = RejectScheduler(RejectSettings(sinks=("log://t",), delay_ms=20, pulse_ms=5, min_gap_ms=1, late_ms=20))
    with caplog.at_level(logging.DEBUG, logger="fair_edge.line.scheduler"):
        close_gates([gate], spent_stop(4.0))
    assert loud(caplog, logging.ERROR) == []
    gate._thread.join(WAIT_S)
    assert not gate._thread.is_alive() and gate.stats()["pending"] == 0 and gate.stats()["abandoned"] == 0


def test_a_gate_holding_a_part_at_a_spent_deadline_still_logs_its_error(caplog):
    """A gate whose thread holds a part at the gate (its pulse being handed to a sink that blocks) keeps its ERROR,
    naming the deadline, and its counts: the part is counted once, rejected_ng, when its pulse is handed over."""
    sink = HeldSink()
    gate = RejectScheduler(RejectSettings(delay_ms=20, pulse_ms=5, min_gap_ms=1, late_ms=20), sinks=sink)
    try:
        gate.note_capture(1, time.monotonic())
        assert gate.submit(Verdict(1, time.monotonic(), 0.9, 0.5, True, time.monotonic(), "t")) == "scheduled"
        assert sink.entered.wait(WAIT_S)
        with caplog.at_level(logging.WARNING):
            close_gates([gate], spent_stop(4.0))
    finally:
        sink.release.set()
    errors = [m for m in loud(caplog, logging.ERROR) if "scheduler thread did not stop" in m]
    assert len(errors) == 1 and "MQTT's close 4.0 s" in errors[0], loud(caplog)
    gate._thread.join(WAIT_S)
    stats = gate.stats()
    assert (stats["rejected_ng"], stats["fired"], stats["abandoned"], stats["pending"]) == (1, 1, 0, 0), stats


def test_an_idle_sink_closed_with_no_time_logs_nothing_and_does_not_reopen_its_output(caplog):
    """A WorkerSink, connected and idle, closed with a CloseBy of 0 s: its worker (in its idle poll) had not ended
    within 0 s: ERROR 'worker did not stop ... the output may be left on' with nothing owed; then the worker, woken
    by its poll, found the link the close had released and reopened it (WARNING 'reconnected', the output left open).
    Now it is left to end on its own, touching the output no more."""
    out = CountingOutput()
    sink = WorkerSink("coil", out, pulse_ms=50)
    assert sink.wait_connected(WAIT_S)
    deadline = time.monotonic() + WAIT_S
    while sink._level_dirty and time.monotonic() < deadline:   # its resting level written: nothing owed
        time.sleep(0.005)
    with caplog.at_level(logging.DEBUG, logger="fair_edge.line.sinks.base"), cut_short(SPENT):
        sink.close(CloseBy.from_now(0.0))
        sink._thread.join(WAIT_S)
    assert loud(caplog) == []
    assert not sink._thread.is_alive() and (out.opens, out.closes) == (1, 1)
    assert sink.stats()["missed"] == 0 and sink.stats()["reconnects"] == 0


def test_a_sink_holding_a_pulse_closed_with_no_time_still_logs_its_error_and_counts_the_miss(caplog):
    """A WorkerSink whose worker is held in a write (a rising edge that does not return) with a second pulse queued,
    closed with 0 s: its ERROR (the resting level not written) stays, and the queued pulse is counted missed."""
    release = threading.Event()
    out = HangingOutput(release)
    sink = WorkerSink("plc", out, pulse_ms=50, reporter=lambda report: None)
    now = time.monotonic()
    try:
        assert sink.wait_connected(WAIT_S)
        for seq in (1, 2):
            sink.pulse(RejectEvent(seq=seq, t_due=now, t_edge=now, deadline=now + WAIT_S))
        deadline = time.monotonic() + WAIT_S
        while sink._q.qsize() > 1 and time.monotonic() < deadline:   # the first taken, in its write
            time.sleep(0.005)
        with caplog.at_level(logging.WARNING), cut_short(SPENT):
            sink.close(CloseBy.from_now(0.0))
    finally:
        release.set()
    errors = [m for m in loud(caplog, logging.ERROR) if "worker did not stop" in m]
    assert len(errors) == 1 and SPENT in errors[0], loud(caplog)
    assert sink.stats()["missed"] == 1


class SlowOpenOutput(CountingOutput):
    """An output whose open blocks until ``go`` (a connect in progress: a PLC slow to accept); ``is_open`` after."""

    def __init__(self) -> None:
        super().__init__()
        self.entered, self.go = threading.Event(), threading.Event()
        self.is_open = False

    def open(self) -> None:
        self.entered.set()
        self.go.wait(WAIT_S)
        super().open()
        self.is_open = True

    def close(self) -> None:
        super().close()
        self.is_open = False


def test_a_sink_closed_with_no_time_mid_connect_logs_its_error_and_leaves_the_output_closed(caplog):
    """A WorkerSink whose worker is in Output.open() (connecting) when a close gives it 0 s: the close took it for
    idle (DEBUG: no pulse, no level owed while not connected) and released the output; the open then returned and
    the worker set the sink connected, counted and reported 'reconnected', and left the output open after the close.
    Now the worker on the link is no idle worker (the close's ERROR), and an open returning once told to stop closes
    the output again: nothing counted or reported."""
    out = SlowOpenOutput()
    reports = []
    sink = WorkerSink("coil", out, pulse_ms=50, reporter=reports.append)
    try:
        assert out.entered.wait(WAIT_S)
        with caplog.at_level(logging.DEBUG, logger="fair_edge.line.sinks.base"), cut_short(SPENT):
            sink.close(CloseBy.from_now(0.0))
    finally:
        out.go.set()   # the connect completes after the close released the output
    sink._thread.join(WAIT_S)
    errors = [m for m in loud(caplog, logging.ERROR) if "worker did not stop" in m]
    assert len(errors) == 1 and SPENT in errors[0], loud(caplog, logging.DEBUG)
    assert not sink._thread.is_alive() and not out.is_open and not sink.connected
    assert sink.stats()["reconnects"] == 0 and [r.kind for r in reports] == []


class HangingProbeOutput(CountingOutput):
    """An output whose link probe (a read of the coil) hangs until the output is closed, then fails as a read on a
    closed socket does."""

    def __init__(self) -> None:
        super().__init__()
        self.probing, self.closed = threading.Event(), threading.Event()

    def probe(self) -> None:
        self.probing.set()
        self.closed.wait(WAIT_S)
        raise PlcError("probe read failed: connection closed")

    def close(self) -> None:
        super().close()
        self.closed.set()


def test_a_sink_closed_with_no_time_mid_probe_logs_its_error_and_counts_no_io_error(caplog):
    """A WorkerSink whose worker is in an idle link probe (a read hung on a PLC that stopped answering) when a close
    gives it 0 s: the close took it for idle (DEBUG), closed the output under the read, and the probe then failed
    after the close: WARNING io_error, io_errors 1, the output closed again. Now the close logs its ERROR (the worker
    was on the link), and the probe the close cut is neither counted nor reported."""
    out = HangingProbeOutput()
    reports = []
    sink = WorkerSink("coil", out, pulse_ms=50, reporter=reports.append, probe_s=0.01)
    try:
        assert out.probing.wait(WAIT_S)
        with caplog.at_level(logging.DEBUG, logger="fair_edge.line.sinks.base"), cut_short(SPENT):
            sink.close(CloseBy.from_now(0.0))
    finally:
        out.closed.set()
    sink._thread.join(WAIT_S)
    errors = [m for m in loud(caplog, logging.ERROR) if "worker did not stop" in m]
    assert len(errors) == 1 and SPENT in errors[0], loud(caplog, logging.DEBUG)
    assert not sink._thread.is_alive() and (out.opens, out.closes) == (1, 1)
    assert sink.stats()["io_errors"] == 0 and [r.kind for r in reports] == []


def test_a_sink_closed_in_its_own_time_names_the_open_or_probe_its_worker_is_held_in(caplog):
    """A WorkerSink's close given its own time (not cut short by a stop) guessed 'a write still blocked' for a worker
    held in Output.open() (a PLC slow to accept) or in an idle link probe (a read hung), sending the engineer to look
    at writes. Now the ERROR names the connect or the probe the worker is in (a write's wording: test_close_cut)."""
    connecting, probing = SlowOpenOutput(), HangingProbeOutput()
    sinks = {"connect": WorkerSink("coil", connecting, pulse_ms=50, reporter=lambda report: None),
             "probe": WorkerSink("lamp", probing, pulse_ms=50, reporter=lambda report: None, probe_s=0.01)}
    try:
        assert connecting.entered.wait(WAIT_S) and probing.probing.wait(WAIT_S)
        with caplog.at_level(logging.ERROR, logger="fair_edge.line.sinks.base"):
            for sink in sinks.values():
                sink.close(CloseBy.from_now(0.0))
    finally:
        connecting.go.set()
        probing.closed.set()
    errors = [m for m in loud(caplog, logging.ERROR) if "worker did not stop" in m]
    assert len(errors) == 2, errors
    assert "sink coil:" in errors[0] and "(a connect to the output still blocked)" in errors[0], errors
    assert "sink lamp:" in errors[1] and "(a link probe still blocked)" in errors[1], errors
    assert not any("a write" in m for m in errors), errors
    for sink in sinks.values():
        sink._thread.join(WAIT_S)
        assert not sink._thread.is_alive()


class Counter:
    """An honest PLC counter: every read answered at once (counted)."""

    name = "plc counter"

    def __init__(self) -> None:
        self.reads = 0

    def open(self) -> None:
        pass

    def read(self) -> int:
        self.reads += 1
        return 7

    def close(self) -> None:
        pass


def test_an_idle_encoder_closed_on_a_spent_deadline_warns_of_nothing(caplog):
    """PolledEncoder.close given 0 s by a spent stop warned 'its polling thread did not stop within 0 s (...);
    closing the link under it' for a healthy encoder whose thread was waiting between polls: no read was held, nothing
    was cut. Now that is a DEBUG line; one held in a read still warns (test_stop_budget's held-read test)."""
    counter = Counter()
    encoder = PolledEncoder(counter, 32, poll_s=10.0).start()   # read at start, then once: its thread waits 10 s
    deadline = time.monotonic() + WAIT_S
    while counter.reads < 2 and time.monotonic() < deadline:
        time.sleep(0.005)
    with caplog.at_level(logging.DEBUG, logger="fair_edge.line.encoder_links"):
        spent_stop(4.0).call(encoder.close, ENCODER_CLOSE_S, "the encoder's close")
    assert loud(caplog) == []
    encoder._thread.join(WAIT_S)
    assert not encoder._thread.is_alive() and counter.reads == 2


class LinkCounter:
    """A PLC counter whose link is open or closed (a read on a closed link fails, as ModbusCounter's does); its
    reads fail too once ``failing`` (a PLC that went away). Counts opens, good reads and failed reads."""

    name = "plc counter"

    def __init__(self) -> None:
        self.is_open, self.failing = False, False
        self.opens = self.reads = self.failed = 0

    def open(self) -> None:
        self.opens += 1
        self.is_open = True

    def read(self) -> int:
        if not self.is_open or self.failing:
            self.failed += 1
            raise PlcError(f"{self.name}: not connected")
        self.reads += 1
        return self.reads

    def close(self) -> None:
        self.is_open = False


class PausingStop(threading.Event):
    """An encoder's stop event whose next ``wait`` in the polling thread, once ``arm``-ed, is held until ``release``
    and then answers 'not stopped' (its time ran out just before the close set it); with ``and_check``, the polling
    loop's next ``is_set`` too (the loop's check came before the close). The thread held so sits in the window
    between its last stop check and the link."""

    def __init__(self) -> None:
        super().__init__()
        self.entered, self.release = threading.Event(), threading.Event()
        self._armed = self._check_next = False
        self._and_check = False

    def arm(self, and_check: bool) -> None:
        self._and_check, self._armed = and_check, True

    def wait(self, timeout: float | None = None) -> bool:
        if not (self._armed and threading.current_thread().name.startswith("encoder-")):
            return super().wait(timeout)
        self._armed, self._check_next = False, self._and_check
        self.entered.set()
        self.release.wait(WAIT_S)
        return False

    def is_set(self) -> bool:
        if self._check_next and threading.current_thread().name.startswith("encoder-"):
            self._check_next = False
            return False
        return super().is_set()


def held_encoder(counter: LinkCounter) -> tuple[PolledEncoder, PausingStop]:
    encoder = PolledEncoder(counter, 32, poll_s=0.01)
    encoder._stop = stop = PausingStop()
    return encoder.start(), stop


def close_at_once(encoder: PolledEncoder, stop: PausingStop, caplog) -> None:
    """Close ``encoder`` with 0 s while its polling thread is held in ``stop``'s window (its log from then on in
    ``caplog``), then let the thread go and wait for it to end."""
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="fair_edge.line.encoder_links"):
        encoder.close(0.0)
        stop.release.set()
        encoder._thread.join(WAIT_S)


def test_an_encoder_closed_with_no_time_past_its_stop_check_reads_nothing_after_the_close(caplog):
    """PolledEncoder.close given 0 s when the polling thread was past its loop's stop check but not yet marked on
    the link (_on_link): the close took it for between reads (DEBUG) and closed the link; the thread then read the
    closed link: WARNING 'read failed', fault_reason set, after the close. Now the thread marks itself on the link
    and then checks the stop again: told to stop, it reads nothing."""
    counter = LinkCounter()
    encoder, stop = held_encoder(counter)
    try:
        stop.arm(and_check=True)
        assert stop.entered.wait(WAIT_S)
        reads = counter.reads
        close_at_once(encoder, stop, caplog)
    finally:
        stop.release.set()
    assert loud(caplog) == []
    assert not encoder._thread.is_alive() and (counter.reads, counter.failed) == (reads, 0)
    assert encoder.fault_reason is None


def test_an_encoder_closed_with_no_time_before_its_reopen_does_not_reopen_the_link(caplog):
    """The same window before a reconnect: the polling thread's back-off wait after a failed read ended, not yet in
    _reopen's _on_link, when a 0 s close came: the close closed the link, then the thread reopened it (WARNING
    'reconnected', a reconnect counted) and left it open after the close. Now, told to stop, it reopens nothing."""
    counter = LinkCounter()
    encoder, stop = held_encoder(counter)
    try:
        counter.failing = True
        deadline = time.monotonic() + WAIT_S
        while counter.failed < 1 and time.monotonic() < deadline:   # every wait from now on is a back-off
            time.sleep(0.005)
        stop.arm(and_check=False)
        assert stop.entered.wait(WAIT_S)
        opens, reconnects = counter.opens, encoder.stats()["reconnects"]
        close_at_once(encoder, stop, caplog)
    finally:
        stop.release.set()
    assert loud(caplog) == []
    assert not encoder._thread.is_alive() and not counter.is_open and counter.opens == opens
    assert encoder.stats()["reconnects"] == reconnects


class FlakyLinkOutput(CountingOutput):
    """A PLC coil whose link can go down (writes and opens refused while ``up`` is False); once ``hold_open`` is set,
    an open waits until ``sink`` is told to stop (a reconnect in progress when a close comes, returning while that
    close still waits for the worker). ``coil``: the level the PLC holds."""

    def __init__(self) -> None:
        super().__init__()
        self.up, self.is_open, self.coil = True, False, False
        self.hold_open, self.entered = False, threading.Event()
        self.sink: WorkerSink | None = None

    def open(self) -> None:
        if self.hold_open:
            self.entered.set()
            deadline = time.monotonic() + WAIT_S
            while not self.sink._stop.is_set() and time.monotonic() < deadline:
                time.sleep(0.002)
        if not self.up:
            raise PlcError("connection refused")
        super().open()
        self.is_open = True

    def set(self, on: bool) -> None:
        if not (self.up and self.is_open):
            raise PlcError("link down")
        super().set(on)
        self.coil = on

    def close(self) -> None:
        super().close()
        self.is_open = False


def fault_on_then_cleared_while_down(out: FlakyLinkOutput, sink: WorkerSink) -> None:
    """``sink`` (a fault output over ``out``) connected and its fault written on; then the link lost and the fault
    cleared while it is down (that write refused)."""
    out.sink = sink
    assert sink.wait_connected(WAIT_S)
    sink.set_fault(True, "camera down")
    deadline = time.monotonic() + WAIT_S
    while not out.coil and time.monotonic() < deadline:
        time.sleep(0.005)
    assert out.coil
    out.up = out.is_open = False
    sink.set_fault(False, "cleared")


def test_a_close_that_waits_for_a_reconnect_writes_the_level_owed():
    """A fault output on, its link lost, the fault cleared meanwhile; a close with its full time finds the worker
    reconnecting, and that open returns while the close waits. 63de1e8 closed such a connect again whenever the sink
    was stopping, so the close found no link and wrote nothing: the PLC's fault coil stayed ON after the stop. Only a
    connect returning after the close gave up on the worker (released the output) is closed again: this one is a
    connect, and the close writes the level owed (off)."""
    out = FlakyLinkOutput()
    sink = WorkerSink("fault", out, pulse_ms=0, reporter=lambda report: None, backoff_s=0.05, backoff_max_s=0.05)
    fault_on_then_cleared_while_down(out, sink)
    deadline = time.monotonic() + WAIT_S
    while sink.connected and time.monotonic() < deadline:
        time.sleep(0.005)
    out.hold_open, out.up = True, True
    assert out.entered.wait(WAIT_S)
    sink.close(CloseBy.from_now())
    assert not out.coil and not out.is_open and out.levels()[-1] is False


def wait_for_report(reports: list, kind: str) -> None:
    """Poll ``reports`` (a sink's, appended by its worker) until one of ``kind`` is in it, up to WAIT_S."""
    deadline = time.monotonic() + WAIT_S
    while kind not in [r.kind for r in reports] and time.monotonic() < deadline:
        time.sleep(0.005)
    assert kind in [r.kind for r in reports]


class ProbedFlakyOutput(FlakyLinkOutput):
    """A FlakyLinkOutput the sink probes while idle (a read that fails while the link is down)."""

    def probe(self) -> None:
        if not (self.up and self.is_open):
            raise PlcError("link down")


def test_a_reject_output_at_rest_with_its_link_down_costs_the_close_no_reconnect(caplog):
    """A reject output (level off) pulsed, its falling edge written, then its link lost (a probe fails, the
    reconnect refused): its coil was last written off, so the close owes nothing and spends no connect on it, the
    PLC back or not. Nor does a sink whose PLC was never reachable, its level off."""
    out = ProbedFlakyOutput()
    reports: list = []
    sink = WorkerSink("reject", out, pulse_ms=20, reporter=reports.append, probe_s=0.02, backoff_s=60.0,
                      backoff_max_s=60.0)
    out.sink = sink
    assert sink.wait_connected(WAIT_S)
    now = time.monotonic()
    sink.pulse(RejectEvent(seq=1, t_due=now, t_edge=now, deadline=now + WAIT_S))
    assert sink.drain(WAIT_S) and out.levels()[-2:] == [True, False]
    out.up = out.is_open = False
    wait_for_report(reports, "link_down")
    out.up = True
    opens = out.opens
    sink.close(CloseBy.from_now())
    assert out.opens == opens and sink.stats()["delivered"] == 1
    never = ProbedFlakyOutput()
    never.up = False
    never_reports: list = []
    sink = WorkerSink("reject", never, pulse_ms=20, reporter=never_reports.append, backoff_s=60.0,
                      backoff_max_s=60.0)
    never.sink = sink
    wait_for_report(never_reports, "link_down")
    never.up = True
    sink.close(CloseBy.from_now())
    assert never.opens == 0 and never.levels() == []   # opens counts those that connected (the PLC is back)
    assert not loud(caplog, logging.ERROR)


class CutOpenOutput(SlowOpenOutput):
    """An output whose open blocks until ``go`` and then fails (the close released the output under it)."""

    def open(self) -> None:
        self.entered.set()
        self.go.wait(WAIT_S)
        raise PlcError("connect cut: socket closed")


def test_a_connect_cut_by_the_close_is_no_link_failure(caplog):
    """The first connect still in progress when a 0 s close came: the close released the output under it and the
    open failed. It was reported link_down after the close (a sink link fault raised at the stop); a connect the close
    cut is no link failure, as a probe it cut is not (f31d6d5)."""
    out = CutOpenOutput()
    reports = []
    sink = WorkerSink("coil", out, pulse_ms=50, reporter=reports.append)
    try:
        assert out.entered.wait(WAIT_S)
        with caplog.at_level(logging.ERROR):
            sink.close(CloseBy.from_now(0.0))
    finally:
        out.go.set()   # the open fails now, the output released under it
    sink._thread.join(WAIT_S)
    assert not sink._thread.is_alive() and [r.kind for r in reports] == []


class HeldReopenCounter(LinkCounter):
    """A LinkCounter whose opens after the first wait for ``go`` (a reconnect in progress, ``entered`` set)."""

    def __init__(self) -> None:
        super().__init__()
        self.entered, self.go = threading.Event(), threading.Event()

    def open(self) -> None:
        if self.opens:
            self.entered.set()
            self.go.wait(WAIT_S)
        super().open()


def test_an_encoder_reopen_returning_after_a_close_leaves_the_link_closed(caplog):
    """A read failed and the reopen's open was in progress when a 0 s close came: the close closed the link under
    it, the open then returned and the thread counted a reconnect, warned 'reconnected' and left the link open
    after the stop (a PLC connection slot held). Now the thread, told to stop, closes the link again."""
    counter = HeldReopenCounter()
    encoder = PolledEncoder(counter, 32, poll_s=0.01).start()
    try:
        counter.failing = True
        assert counter.entered.wait(WAIT_S)
        counter.failing = False
        with caplog.at_level(logging.DEBUG, logger="fair_edge.line.encoder_links"):
            encoder.close(0.0)
            counter.go.set()
            encoder._thread.join(WAIT_S)
    finally:
        counter.go.set()
    assert not encoder._thread.is_alive() and not counter.is_open
    assert encoder.stats()["reconnects"] == 0 and not [r for r in caplog.records if "reconnected" in r.getMessage()]
    assert [m for m in loud(caplog) if "(a reconnect to the counter still held)" in m], loud(caplog)


def sink_clock(monkeypatch) -> SkewClock:
    """The sink workers' clock (``run_sinks_on``) for this test: real time that the test's outputs jump on."""
    clock = SkewClock()
    run_sinks_on(monkeypatch, clock)
    return clock


class DroppingOutput(CountingOutput):
    """A reject coil whose link drops at the next write once ``drop`` is set (that write refused); the reconnect's
    open then takes ``open_s`` seconds of ``clock`` (a PLC slow to accept: the sink's clock jumped, no real wait, so a
    pulse's deadline passes during the reconnect however late the worker woke) or, with ``until_stop``, lasts until
    ``sink`` is told to stop. ``rising``: the rising edges written."""

    def __init__(self, clock: SkewClock | None = None) -> None:
        super().__init__()
        self.drop = self.until_stop = False
        self.is_open, self.open_s, self.rising = False, 0.0, 0
        self.clock = clock
        self.entered = threading.Event()
        self.sink: WorkerSink | None = None

    def open(self) -> None:
        if self.opens:   # a reconnect
            self.entered.set()
            self.slow_accept()
            deadline = time.monotonic() + WAIT_S
            while self.until_stop and not self.sink._stop.is_set() and time.monotonic() < deadline:
                time.sleep(0.002)
        super().open()
        self.is_open = True

    def set(self, on: bool) -> None:
        if self.drop:
            self.drop, self.is_open = False, False
            raise PlcError("link dropped")
        if not self.is_open:
            raise PlcError("not connected")
        super().set(on)
        self.rising += bool(on)

    def close(self) -> None:
        super().close()
        self.is_open = False

    def slow_accept(self) -> None:
        """A reconnect's open taking ``open_s`` on the sink's clock."""
        if self.open_s:
            self.clock.jump(self.open_s)


def pulse_on_a_dropped_link(out: DroppingOutput, clock: SkewClock) -> tuple[WorkerSink, list]:
    """A reject sink over ``out``, connected, given one pulse whose first write drops the link; its deadline WAIT_S
    away on ``clock``, so a worker woken late still writes it (a reconnect with ``open_s`` ends past it)."""
    reports: list = []
    sink = WorkerSink("reject", out, pulse_ms=100, reporter=reports.append)
    out.sink = sink
    assert sink.wait_connected(WAIT_S)
    out.drop = True
    now = clock()
    sink.pulse(RejectEvent(seq=7, t_due=now, t_edge=now, deadline=now + WAIT_S))
    return sink, reports


def test_a_rising_edge_is_not_written_after_a_reconnect_past_its_deadline(monkeypatch):
    """A pulse's write dropped the link and the reconnect took 0.3 s, past the pulse's 50 ms deadline: the rising
    edge was then written anyway, a full pulse a quarter second late (another part under the ejector), counted
    delivered. A stale pulse is never written: counted unconfirmed (the dropped write may have reached the PLC).
    The reconnect here ends past the deadline on the sink's clock (``SLOW_OPEN_S``)."""
    clock = sink_clock(monkeypatch)
    out = DroppingOutput(clock)
    out.open_s = SLOW_OPEN_S
    sink, reports = pulse_on_a_dropped_link(out, clock)
    deadline = time.monotonic() + WAIT_S
    while not [r for r in reports if r.seq == 7 and r.kind != "io_error"] and time.monotonic() < deadline:
        time.sleep(0.005)
    sink.close()
    assert out.rising == 0 and sink.stats()["delivered"] == 0 and sink.stats()["unconfirmed"] == 1


def test_a_rising_edge_is_not_written_by_a_reconnect_that_ends_once_the_sink_closes(monkeypatch):
    """The same pulse, its reconnect returning only once a close (with its full time) has told the worker to stop:
    since 14e879a keeps such a connect, the rising edge was written after the stop, half a second late, counted
    delivered. Now nothing is written after the stop but what the close owes, though its deadline is still ahead."""
    clock = sink_clock(monkeypatch)
    out = DroppingOutput(clock)
    out.until_stop = True
    sink, reports = pulse_on_a_dropped_link(out, clock)
    assert out.entered.wait(WAIT_S)
    sink.close(CloseBy.from_now(1.0))
    assert out.rising == 0 and sink.stats()["delivered"] == 0 and sink.stats()["unconfirmed"] == 1


class LandedDroppedOutput(DroppingOutput):
    """A DroppingOutput whose dropped write lands at the PLC (its reply lost): ``coil`` records every value set."""

    def __init__(self, clock: SkewClock) -> None:
        super().__init__(clock)
        self.coil: list[bool] = []

    def set(self, on: bool) -> None:
        if self.drop or self.is_open:
            self.coil.append(on)
        super().set(on)


def test_a_pulse_the_plc_clears_is_not_written_over_when_unconfirmed(monkeypatch):
    """pulse_ms 0 (the PLC clears the pulse): the rising edge landed but its reply was lost and the reconnect ended
    past the deadline: unconfirmed. The reconnect's owed resting level (off) was then written at once over the pulse
    the PLC may be acting on; as for a delivered one, it is not."""
    clock = sink_clock(monkeypatch)
    out = LandedDroppedOutput(clock)
    out.open_s = SLOW_OPEN_S
    reports: list = []
    sink = WorkerSink("reject", out, pulse_ms=0, reporter=reports.append)
    out.sink = sink
    assert sink.wait_connected(WAIT_S)
    out.coil.clear()
    out.drop = True
    now = clock()
    sink.pulse(RejectEvent(seq=7, t_due=now, t_edge=now, deadline=now + WAIT_S))
    deadline = time.monotonic() + WAIT_S
    while not [r for r in reports if r.kind == "unconfirmed"] and time.monotonic() < deadline:
        time.sleep(0.005)
    sink.close()
    assert sink.stats()["unconfirmed"] == 1 and out.coil == [True], out.coil


def test_a_falling_edge_held_by_the_link_until_the_stop_is_not_called_cut_short(caplog):
    """A pulse's falling edge dropped the link and its reconnect lasted until a close told the worker to stop: the
    close wrote it, and said 'closed mid-pulse ... 0 ms early', as if the stop had cut the pulse short. The ejector
    was held on by the link: the line says the edge was due before and held by the link."""
    out = DroppingOutput()
    out.until_stop = True
    sink = WorkerSink("reject", out, pulse_ms=50, reporter=lambda report: None)
    out.sink = sink
    assert sink.wait_connected(WAIT_S)
    now = time.monotonic()
    sink.pulse(RejectEvent(seq=7, t_due=now, t_edge=now, deadline=now + WAIT_S))
    deadline = time.monotonic() + WAIT_S
    while out.rising < 1 and time.monotonic() < deadline:
        time.sleep(0.002)
    out.drop = True   # the falling edge's write drops the link
    assert out.entered.wait(WAIT_S)
    with caplog.at_level(logging.WARNING):
        sink.close(CloseBy.from_now(1.0))
    said = [m for m in loud(caplog) if "seq 7" in m]
    assert len(said) == 1 and "held by the link until the stop" in said[0] and "early" not in said[0], said
    assert out.levels()[-1] is False


@pytest.mark.parametrize("rising", ["delivered", "unconfirmed"])
def test_a_stop_landing_at_a_healthy_falling_edge_is_called_cut_short_not_held_by_the_link(caplog, monkeypatch,
                                                                                          rising):
    """The stop lands just as a pulse's falling edge falls due, the link fine: the close writes the edge. a0d2f7e
    chose its line by whether the edge was already due when the close wrote it, and blamed the link ('held by the
    link until the stop') in 5 of 20 such stops; 2bcff49 by a link failure since the last answered write, so after a
    rising edge left unconfirmed (its write dropped the link, the reconnect past its deadline) it still did. The line
    follows whether the falling edge's own write met the link."""
    from fair_edge.line.sinks import base

    real_sleep_until, sleeps = base.sleep_until, []

    def sleep_then_stop(t: float, stop: threading.Event) -> bool:   # the fall's sleep ends and the stop lands
        sleeps.append(t)
        done = real_sleep_until(t, stop)
        if len(sleeps) == 2:
            stop.set()
        return done

    monkeypatch.setattr(base, "sleep_until", sleep_then_stop)
    clock = sink_clock(monkeypatch)
    out = DroppingOutput(clock)
    out.open_s = SLOW_OPEN_S   # a reconnect past the unconfirmed pulse's deadline
    sink = WorkerSink("reject", out, pulse_ms=20, reporter=lambda report: None)
    out.sink = sink
    assert sink.wait_connected(WAIT_S)
    out.drop = rising == "unconfirmed"
    now = clock()
    sink.pulse(RejectEvent(seq=7, t_due=now, t_edge=now, deadline=now + WAIT_S))
    deadline = time.monotonic() + WAIT_S
    while len(sleeps) < 2 and time.monotonic() < deadline:
        time.sleep(0.002)
    with caplog.at_level(logging.WARNING):
        sink.close(CloseBy.from_now())
    said = [m for m in loud(caplog) if "seq 7" in m]
    assert len(said) == 1 and "closed mid-pulse" in said[0] and "held by the link" not in said[0], said
    assert out.levels()[-1] is False and sink.stats()[rising] == 1


class RefusingThenSlowOutput(DroppingOutput):
    """A DroppingOutput whose first reconnect while ``refusing`` is refused after ``open_s`` on the sink's clock; the
    PLC is then back, its accept slow: the next reconnect lasts until the sink is told to stop. The output switches
    itself, so no test thread has to win a race with the worker between the two."""

    def __init__(self, clock: SkewClock) -> None:
        super().__init__(clock)
        self.refusing = False

    def open(self) -> None:
        if self.opens and self.refusing:
            self.slow_accept()
            self.refusing, self.until_stop, self.open_s = False, True, 0.0
            raise PlcError("connection refused")
        super().open()


def test_a_falling_edge_waiting_on_a_reconnect_until_the_stop_is_held_by_the_link(caplog, monkeypatch):
    """The rising edge's write dropped the link, reconnects were refused past its deadline (unconfirmed); by the
    falling edge the PLC was back but its accept slow, lasting until the stop: 2bcff49's flag knew only a failed write
    or a connect that failed, so the close's line said 'closed mid-pulse ... 0 ms early' for an ejector the link had
    held on. A write that waits on a reconnect is held by the link."""
    clock = sink_clock(monkeypatch)
    out = RefusingThenSlowOutput(clock)
    reports: list = []
    sink = WorkerSink("reject", out, pulse_ms=100, reporter=reports.append)
    out.sink = sink
    assert sink.wait_connected(WAIT_S)
    out.drop = out.refusing = True
    out.open_s = SLOW_OPEN_S   # refused past the deadline
    now = clock()
    sink.pulse(RejectEvent(seq=7, t_due=now, t_edge=now, deadline=now + WAIT_S))
    deadline = time.monotonic() + WAIT_S
    while "unconfirmed" not in [r.kind for r in reports] and time.monotonic() < deadline:
        time.sleep(0.002)
    assert out.entered.wait(WAIT_S)   # the falling edge's reconnect, lasting until the stop
    with caplog.at_level(logging.WARNING):
        sink.close(CloseBy.from_now(1.0))
    said = [m for m in loud(caplog) if "seq 7" in m]
    assert len(said) == 1 and "held by the link until the stop" in said[0], said
    assert out.levels()[-1] is False
