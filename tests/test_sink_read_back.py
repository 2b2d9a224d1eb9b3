"""A sink's output written over by another writer is put back (``WorkerSink._check_read_back``). Audit (cellacks
exp2): a PLC / HMI that reset the fault coil (its "acknowledge") while the station's alarm stayed latched left the
coil off for good: the idle probe read the coil back every second and ignored the value; the level was written
again only when the fault changed.

Phases follow the fakes' own calls (probes, writes) and the sink's reports; the real servers' waits are bounded by
WAIT_S, never a timing the test hopes for."""

from __future__ import annotations

import linecache
import logging
import sys
import threading
import time

import pytest

from fair_edge.line.events import RejectEvent
from fair_edge.line.sinks import base
from fair_edge.line.sinks.base import WorkerSink
from line_servers import wait_for

WAIT_S = 10.0   # upper bound for a step to happen on a loaded machine (a passing test returns as soon as it does)
FAST = {"backoff_s": 0.01, "backoff_max_s": 0.05, "probe_s": 0.005}


class SharedCoil:
    """A coil the sink writes and another writer (the PLC, an HMI: the test) writes too. ``probe`` reads it back
    (``written``: what ``set`` writes, as Modbus's coil gives it); ``fight(level)``: the other writer writes
    ``level`` over each of the sink's writes (a PLC program that drives the coil at every scan). Counts probes."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.value = False
        self.sets: list[bool] = []
        self.probes = 0
        self.fighting: bool | None = None

    def open(self) -> None:
        pass

    def set(self, on: bool) -> None:
        with self.cond:
            self.sets.append(on)
            self.value = on if self.fighting is None else self.fighting
            self.cond.notify_all()

    def written(self, on: bool) -> bool:
        return bool(on)

    def probe(self) -> bool:
        with self.cond:
            self.probes += 1
            self.cond.notify_all()
            return self.value

    def close(self) -> None:
        pass

    def plc_writes(self, level: bool) -> None:
        with self.cond:
            self.value = level

    def fight(self, level: bool | None) -> None:
        with self.cond:
            self.fighting = level
            if level is not None:
                self.value = level

    def wait(self, cond) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: cond(self), WAIT_S)

    def probes_later(self, n: int) -> bool:
        with self.cond:
            target = self.probes + n
            return self.cond.wait_for(lambda: self.probes >= target, WAIT_S)


def overwritten_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "fair_edge.line.sinks.base"
            and r.levelno == logging.WARNING and "overwritten" in r.getMessage()]


def test_a_held_fault_level_written_over_is_written_again_and_logged_once_per_occurrence(caplog):
    caplog.set_level(logging.WARNING, logger="fair_edge.line.sinks.base")
    coil = SharedCoil()
    sink = WorkerSink("fault coil", coil, pulse_ms=50.0, **FAST)
    try:
        sink.set_fault(True, "alarm latched")
        assert coil.wait(lambda c: c.sets and c.sets[-1] is True and c.value is True)
        writes = len(coil.sets)
        coil.plc_writes(False)                                   # the HMI resets "its" alarm bit, once
        assert coil.wait(lambda c: len(c.sets) > writes and c.value is True), coil.sets
        assert coil.probes_later(3)                              # it stays put: no more writes, no more lines
        assert (sink.stats()["overwritten"], len(coil.sets)) == (1, writes + 1), (sink.stats(), coil.sets)
        (line,) = overwritten_lines(caplog)
        assert "sink fault coil: overwritten" in line and "while its level is on" in line, line

        coil.fight(False)                                        # a PLC program that writes it at every scan
        assert coil.wait(lambda c: c.sets.count(True) >= writes + 4)   # written again each time it is found off
        coil.fight(None)
        assert coil.wait(lambda c: c.value is True)
        assert coil.probes_later(3)
        assert sink.stats()["overwritten"] >= 4 and len(overwritten_lines(caplog)) == 2, sink.stats()   # 1 per run
    finally:
        sink.close()


def test_an_off_level_found_on_is_left_alone_so_another_outputs_pulse_on_the_coil_is_not_cut():
    """A reject output rests off; found on while its sink is idle, it is another output's pulse on the same coil (two
    lanes on one ejector: the review cut a 200 ms pulse to 1 ms by writing it off) or the PLC's own manual reject:
    not written. Nor is a ``pulse_ms=0`` output's pulse, which is the PLC's to clear."""
    coil = SharedCoil()
    sink = WorkerSink("reject coil", coil, pulse_ms=20.0, **FAST)
    try:
        assert coil.wait(lambda c: c.sets == [False])            # the resting level after the connect
        coil.plc_writes(True)                                    # the other lane's pulse begins
        assert coil.probes_later(5)
        assert coil.sets == [False] and coil.value is True and sink.stats()["overwritten"] == 0, coil.sets
    finally:
        sink.close()
    coil = SharedCoil()
    sink = WorkerSink("handshake coil", coil, pulse_ms=0.0, **FAST)
    try:
        assert coil.wait(lambda c: c.sets == [False])
        now = time.monotonic()
        sink.pulse(RejectEvent(seq=1, t_due=now, t_edge=now, deadline=now + WAIT_S))
        assert coil.wait(lambda c: c.sets == [False, True])
        assert coil.probes_later(5)
        assert coil.sets == [False, True] and coil.value is True and sink.stats()["overwritten"] == 0, coil.sets
    finally:
        sink.close()


def test_a_modbus_fault_coil_and_register_reset_by_the_hmi_are_put_back_while_the_alarm_is_latched(monkeypatch):
    """exp2: the station's fault outputs on a real Modbus server (a coil, and a register holding value=7); the HMI
    writes them off while the gate's alarm stays latched: both are written on again within a probe."""
    pytest.importorskip("pymodbus")
    from pymodbus.client import ModbusTcpClient

    from fair_edge.line.scheduler import RejectScheduler
    from fair_edge.line.settings import RejectSettings
    from fair_edge.line.sim_sink_plc import SimulatedPlc

    monkeypatch.setattr(base, "PROBE_S", 0.05)
    plc = SimulatedPlc().start()
    hmi = ModbusTcpClient("127.0.0.1", port=plc.port)
    try:
        hmi.connect()
        coil = lambda: hmi.read_coils(1, count=1, device_id=1).bits[0]   # noqa: E731
        word = lambda: hmi.read_holding_registers(2, count=1, device_id=1).registers[0]   # noqa: E731
        with RejectScheduler(RejectSettings(delay_ms=100, pulse_ms=20, fail_safe="alarm", sinks=("log://test.rb",),
                                            fault_sinks=(f"modbus://127.0.0.1:{plc.port}?unit=1&coil=1",
                                                         f"modbus://127.0.0.1:{plc.port}?unit=1&register=2&value=7"))
                             ) as gate:
            gate.note_capture(1, time.monotonic() - 5)          # past its gate, no verdict: the alarm latches
            assert wait_for(lambda: gate.alarm is not None and coil() and word() == 7, WAIT_S)
            hmi.write_coil(1, False, device_id=1)
            hmi.write_register(2, 3, device_id=1)
            assert wait_for(lambda: coil() and word() == 7, WAIT_S), (coil(), word())
            assert gate.alarm is not None                        # nothing was acknowledged at the station
    finally:
        hmi.close()
        plc.close()


def test_an_opcua_fault_node_reset_by_the_plc_is_put_back(monkeypatch):
    """The same on a real OPC UA server: a Boolean fault node the PLC writes False while the fault holds."""
    pytest.importorskip("asyncua")
    from fair_edge.line.sinks import open_sink
    from line_servers import NodeServer

    monkeypatch.setattr(base, "PROBE_S", 0.05)
    with NodeServer({"Fault": ("Boolean", False)}) as srv:
        sink = open_sink(srv.url("node=ns=2;s=Fault"), pulse_ms=20)
        try:
            assert sink.wait_connected(WAIT_S)
            sink.set_fault(True, "alarm latched")
            assert wait_for(lambda: srv.value("Fault") is True, WAIT_S)
            srv.set("Fault", False)                              # the PLC resets it
            assert wait_for(lambda: srv.value("Fault") is True, WAIT_S), srv.changes["Fault"]
            assert sink.stats()["overwritten"] >= 1
        finally:
            sink.close()


class HeldReplyCoil(SharedCoil):
    """A faithful coil (only the sink writes it) whose next probe's reply is held until ``release`` is set: the read
    is taken at once, the answer arrives later (a network round trip)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.release.set()
        self.reading = threading.Event()

    def probe(self) -> bool:
        value = super().probe()
        self.reading.set()
        self.release.wait(WAIT_S)
        return value


def test_a_fault_set_while_a_probe_is_answered_is_no_overwrite(caplog):
    """Review of 99ef699: the check read the level, then its pending flag, while ``set_fault`` stored them in that
    order on another thread: a probe answered between the two stores (its read taken before the level was written)
    was counted ``overwritten`` with a WARNING blaming the PLC, though nothing else wrote the coil. The interleaving is
    forced with a line tracer on the caller's thread: the reply arrives just before the flag is stored."""
    caplog.set_level(logging.WARNING, logger="fair_edge.line.sinks.base")
    coil = HeldReplyCoil()
    sink = WorkerSink("fault coil", coil, pulse_ms=50.0, **FAST)
    try:
        assert coil.wait(lambda c: c.sets == [False])
        coil.reading.clear()
        coil.release.clear()
        assert coil.reading.wait(WAIT_S)                         # a probe has read the coil (off) and waits
        probes = coil.probes

        def tracer(frame, event, arg):
            if frame.f_code is not WorkerSink.set_fault.__code__:
                return None

            def line(frame, event, arg):
                if event == "line" and "self._level_dirty = True" in linecache.getline(frame.f_code.co_filename,
                                                                                       frame.f_lineno):
                    coil.release.set()                           # the reply arrives between the two stores
                    with coil.cond:                              # and the worker has time to check it (a next
                        coil.cond.wait_for(lambda: coil.probes > probes, 1.0)   # probe; none while it waits on us)
                return line
            return line

        sys.settrace(tracer)
        try:
            sink.set_fault(True, "alarm latched")
        finally:
            sys.settrace(None)
        assert coil.wait(lambda c: c.sets == [False, True])
        assert coil.probes_later(3)
        assert sink.stats()["overwritten"] == 0 and not overwritten_lines(caplog), (sink.stats(), coil.sets)
    finally:
        sink.close()


def test_a_fault_cleared_while_its_on_level_is_written_is_written_off():
    """Review of 4ce6ae0: ``_wrote`` checked that the level written was still wanted, then marked it written, while
    ``set_fault`` stored a new level on the gate's thread: a fault cleared between the two was marked written and
    the coil stayed on for good (an off level is never compared by the read back). The interleaving is forced with
    a tracer on the sink's thread: at the mark, another thread clears the fault (given up to 0.5 s to get in)."""
    clearing: list[threading.Thread] = []
    forced = threading.Event()   # the clear was started at the mark
    sink: WorkerSink | None = None

    def line(frame, event, arg):
        if (event == "line" and not clearing and frame.f_locals.get("on") is True
                and "self._level_dirty = False" in linecache.getline(frame.f_code.co_filename, frame.f_lineno)):
            clear = threading.Thread(target=sink.set_fault, args=(False, "cleared"))
            clearing.append(clear)
            clear.start()
            clear.join(0.5)   # the gate's clear lands here (or waits for the sink's step to end)
            forced.set()
        return line

    def tracer(frame, event, arg):
        return line if event == "call" and frame.f_code is WorkerSink._wrote.__code__ else None

    coil = SharedCoil()
    threading.settrace(tracer)
    try:
        sink = WorkerSink("fault coil", coil, pulse_ms=50.0, **FAST)
        assert coil.wait(lambda c: c.sets == [False])
        sink.set_fault(True, "alarm latched")
        assert forced.wait(WAIT_S)
        clearing[0].join(WAIT_S)
        assert coil.wait(lambda c: c.sets[-1] is False and c.value is False), coil.sets
    finally:
        threading.settrace(None)
        if sink is not None:
            sink.close()
