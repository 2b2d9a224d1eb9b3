"""A close cut short by a station's stop deadline names the deadline and the waits that spent it; the same close given
its own time names its own likely cause. One mechanism carries why: ``line.close_cut``, set by ``StopDeadline.call``
for the close run inside it, read by the close's log lines in the thread that runs the close. The reject gates
(``line_side.close_gates``: a gate's thread held in an encoder read, its output's write hung) and the recorder
(``line_side.close_recorder``: a row write hung) once took the reason as an argument instead (``CloseBy.short_because``,
``Recorder.close(short_because=...)``); these tests hold their messages to what they were."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from fair_edge.line import close_cut, gate_sinks
from fair_edge.line import recorder as recorder_mod
from fair_edge.line.events import RejectEvent
from fair_edge.line.recorder import Recorder
from fair_edge.line.scheduler import RejectScheduler
from fair_edge.line.settings import RecordSettings, RejectSettings
from fair_edge.line.sinks import base
from fair_edge.line.sinks.base import FanOut, WorkerSink
from fair_edge.station.line_side import close_gates, close_recorder
from fair_edge.station.stop_deadline import StopDeadline
from test_stop_budget import HeldEncoder, StuckDisk, spent_stop

WAIT_S = 10.0   # upper bound for a thread to reach its hung call on a loaded machine


def stops() -> list[tuple[str, StopDeadline]]:
    """A stop whose deadline MQTT's close spent (4 s, all of it), and one not begun (every close gets its cap)."""
    return [("cut short", spent_stop(4.0)), ("own time", StopDeadline())]


class HangingOutput:
    """A PLC output whose rising edge never returns (a TCP write with no timeout) until ``release`` is set."""

    def __init__(self) -> None:
        self.rising, self.release = threading.Event(), threading.Event()

    def open(self) -> None:
        pass

    def set(self, on: bool) -> None:
        if on:
            self.rising.set()
            self.release.wait(WAIT_S)

    def close(self) -> None:
        pass


def test_the_reason_is_the_closing_threads_own():
    """Inside ``cut_short`` the close's lines take its reason; outside, their own guess; a thread started inside it
    does not see it (contextvars): a close must log from the thread that runs it."""
    seen_elsewhere: list[str] = []
    assert (close_cut.cut_reason(), close_cut.because("guess"), close_cut.cut_note()) == ("", "guess", "")
    with close_cut.cut_short("the deadline"):
        assert close_cut.cut_reason() == "the deadline" and close_cut.because("guess") == "the deadline"
        assert close_cut.cut_note() == " (the deadline)"
        worker = threading.Thread(target=lambda: seen_elsewhere.append(close_cut.cut_reason()))
        worker.start()
        worker.join(WAIT_S)
    assert seen_elsewhere == [""] and close_cut.cut_reason() == ""


def test_a_gates_close_names_the_deadline_when_cut_short_and_its_own_guess_when_not(caplog, monkeypatch):
    """The gate's thread held in an encoder read and its output's write hung, closed through ``close_gates``: on a
    spent stop both lines name the deadline and MQTT's close, not the encoder or the write; given their own time
    (shrunk to 0.1 s + 0.1 s to keep the test short) they name 'held in an encoder read?' and 'a write still
    blocked'."""
    monkeypatch.setattr(base, "CLOSE_DRAIN_S", 0.1)
    monkeypatch.setattr(base, "CLOSE_JOIN_S", 0.1)
    lines: dict[str, list[str]] = {}
    for label, stop in stops():
        encoder, output = HeldEncoder(), HangingOutput()
        sink = WorkerSink("plc", output, pulse_ms=50, reporter=lambda report: None)
        monkeypatch.setattr(gate_sinks, "open_fanout",   # the gate opens (and owns, so closes) its output
                            lambda urls, pulse_ms, reporter, name: FanOut([sink] if name == "rejects" else []))
        settings = RejectSettings(sinks=("modbus://plc",), delay_ms=0, encoder_distance=100, pulse_ms=5, min_gap_ms=1,
                                  late_ms=20)
        gate = RejectScheduler(settings, encoder=encoder)
        now = time.monotonic()   # a deadline a late-woken worker still meets: the write must begin (and hang)
        sink.pulse(RejectEvent(seq=1, t_due=now, t_edge=now, deadline=now + WAIT_S))
        try:
            assert encoder.reading.wait(WAIT_S) and output.rising.wait(WAIT_S)
            gate.note_capture(1)   # the gate holds a part: one holding none logs no error (test_stop_idle_closes)
            caplog.clear()
            with caplog.at_level(logging.ERROR):
                close_gates([gate], stop)
        finally:
            encoder.release.set()
            output.release.set()
        lines[label] = [r.getMessage() for r in caplog.records if "did not stop by the close's" in r.getMessage()]
    cut, own = lines["cut short"], lines["own time"]
    assert len(cut) == 2 and all("MQTT's close 4.0 s" in line for line in cut), cut
    assert not any("encoder read" in line or "write still blocked" in line for line in cut), cut
    assert len(own) == 2 and not any("stop deadline" in line for line in own), own
    assert "(held in an encoder read?)" in own[0] and "(a write still blocked)" in own[1], own


@pytest.mark.parametrize("label, stop", stops())
def test_a_recorders_close_names_the_deadline_when_cut_short_and_the_disk_when_not(label, stop, tmp_path, caplog,
                                                                                   monkeypatch):
    """A row write hung, closed through ``close_recorder``: on a spent stop the error names the deadline and MQTT's
    close, not the disk; given its own rows' time (shrunk to 0.3 s) it says the disk is too slow."""
    monkeypatch.setattr(recorder_mod, "CLOSE_IMAGES_S", 0.1)
    monkeypatch.setattr(recorder_mod, "CLOSE_ROWS_S", 0.3)
    monkeypatch.setattr(recorder_mod, "CLOSE_ROWS_MAX_S", 0.3)
    rec = Recorder(RecordSettings(dir=tmp_path, save_ng_images=False, min_free_mb=0))
    stuck = StuckDisk(rec._logs.write_verdict)
    monkeypatch.setattr(rec._logs, "write_verdict", stuck.write_verdict)
    rec.record_row({"seq": 1, "t_capture": time.monotonic()})
    try:
        assert stuck.writing.wait(WAIT_S)
        with caplog.at_level(logging.ERROR):
            close_recorder(rec, stop)
    finally:
        stuck.release.set()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert rec.stats()["lost_at_close"] == 1 and len(errors) == 1, errors
    if label == "cut short":
        assert "stop deadline" in errors[0] and "MQTT's close 4.0 s" in errors[0] and "faster disk" not in errors[0]
    else:
        assert "give record.dir a faster disk" in errors[0] and "stop deadline" not in errors[0], errors
