"""A close given 0 s by a station's stop whose deadline earlier waits spent, of a component that holds nothing,
loses nothing: its thread, woken but not yet ended, is left to end on its own, and the journal gets no ERROR or
WARNING for it (one sent the engineer looking for a fault that was not there). One that did hold something (a part at
the gate, a pulse in a write, a read held) keeps its error and its counts."""

from __future__ import annotations

import logging
import threading
import time

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
from test_line_sink_close import HangingOutput, RecordingOutput
from test_stop_budget import spent_stop

WAIT_S = 10.0   # upper bound for a thread to reach the state a test needs on a loaded machine
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
