"""A sink closed while pulses are queued or in progress finishes them: no output is left on. A worker never dies
of its output (missing driver, a driver bug), and an output left on is reported until it is written off again."""

import sys
import threading
import time

import pytest

from fair_edge.errors import PlcError, SinkError
from fair_edge.line.events import RejectEvent
from fair_edge.line.sinks import base, open_sink
from fair_edge.line.sinks.base import WorkerSink

WAIT_S = 10.0   # upper bound for a report to come on a loaded machine (a passing test returns as soon as it does)


class RecordingOutput:
    """Stands in for a PLC coil / GPIO line: records (time, level) of every write."""

    def __init__(self) -> None:
        self.writes: list[tuple[float, bool]] = []
        self.lock = threading.Lock()

    def open(self) -> None:
        pass

    def set(self, on: bool) -> None:
        with self.lock:
            self.writes.append((time.monotonic(), on))

    def close(self) -> None:
        pass

    def levels(self) -> list[bool]:
        """The levels written, in order."""
        with self.lock:
            return [on for _, on in self.writes]


def test_close_finishes_queued_and_running_pulses():
    out = RecordingOutput()
    sink = WorkerSink("coil", out, pulse_ms=30)
    now = time.monotonic()
    events = [RejectEvent(seq=i, t_due=now + delay, t_edge=now + delay, deadline=now + delay + 1.0)
              for i, delay in enumerate((0.02, 0.08))]   # deadlines a loaded machine cannot miss: close is tested
    for event in events:
        sink.pulse(event)
    sink.close()  # both pulses are still ahead of us
    levels = [on for _, on in out.writes]
    rises = [t for t, on in out.writes if on]
    falls = [t for t, on in out.writes if not on]
    assert levels.count(True) == 2 and levels[-1] is False  # both pulsed, and the line ends off
    for event, rise in zip(events, rises):   # each at its edge time, never early; written before its deadline
        assert event.t_edge <= rise <= event.deadline, (event.seq, 1000 * (rise - event.t_edge))
        assert min(f for f in falls if f > rise) - rise >= 0.030   # a full pulse_ms, not cut short by close()
    assert sink.stats()["delivered"] == 2 and sink.stats()["missed"] == 0
    sink.close()  # twice is safe


class Reports:
    """A sink reporter: keeps the report kinds and lets a test wait for one (at most WAIT_S)."""

    def __init__(self) -> None:
        self.kinds: list[str] = []
        self.cond = threading.Condition()

    def __call__(self, report) -> None:
        with self.cond:
            self.kinds.append(report.kind)
            self.cond.notify_all()

    def wait_for_any(self, *kinds: str) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: any(kind in self.kinds for kind in kinds), WAIT_S)


class BrokenOutput(RecordingOutput):
    """An output whose open() or set() raises something that is not a PlcError until ``fixed`` is set."""

    def __init__(self, fail_on: str, exc: Exception) -> None:
        super().__init__()
        self.fail_on, self.exc = fail_on, exc
        self.fixed = threading.Event()

    def open(self) -> None:
        if self.fail_on == "open" and not self.fixed.is_set():
            raise self.exc

    def set(self, on: bool) -> None:
        if self.fail_on == "set" and not self.fixed.is_set():
            raise self.exc
        super().set(on)


def _event(seq: int, deadline_s: float) -> RejectEvent:
    """A pulse due now, its deadline ``deadline_s`` seconds from now."""
    now = time.monotonic()
    return RejectEvent(seq=seq, t_due=now, t_edge=now, deadline=now + deadline_s)


@pytest.mark.parametrize(("fail_on", "exc"), [
    ("open", SinkError("modbus:// sinks need the 'pymodbus' package: pip install 'fair-edge[plc]'")),
    ("set", RuntimeError("driver bug"))])
def test_an_output_raising_anything_is_a_link_failure_and_the_worker_lives(fail_on, exc):
    """Audit bug 2: the worker caught only PlcError, so a missing driver (open) or a driver bug (set) killed its
    thread and pulses vanished unreported. Now the pulse is reported (missed: nothing went out; unconfirmed: a
    write may have) and, once the output works again, the same worker delivers the next pulse."""
    reports, out = Reports(), BrokenOutput(fail_on, exc)
    sink = WorkerSink("coil", out, pulse_ms=5, backoff_s=0.01, backoff_max_s=0.05, reporter=reports)
    try:
        sink.pulse(_event(1, 0.2))
        assert reports.wait_for_any("missed", "unconfirmed"), reports.kinds
        stats = sink.stats()
        assert stats["missed"] + stats["unconfirmed"] == 1 and stats["delivered"] == 0
        out.fixed.set()
        sink.pulse(_event(2, 5.0))
        assert reports.wait_for_any("delivered"), reports.kinds
        assert sink.stats()["delivered"] == 1 and [on for _, on in out.writes][-2:] == [True, False]
    finally:
        sink.close()


@pytest.mark.parametrize(("url", "package"), [("modbus://127.0.0.1:5020?coil=0", "pymodbus"),
                                               ("opcua://127.0.0.1:4840/x?node=ns=2;s=Reject", "asyncua")])
def test_a_missing_driver_package_stops_the_sink_at_open_naming_the_install(monkeypatch, url, package):
    """Audit bug 2: the driver import is checked on the caller's thread when the sink is opened (the station
    refuses to start, exit 2), not first on the worker's thread where the failure was silent."""
    for module in (package, f"{package}.client", f"{package}.sync"):
        monkeypatch.setitem(sys.modules, module, None)   # import fails: the package is not installed
    before = {t.name for t in threading.enumerate()}
    with pytest.raises(SinkError, match=rf"'{package}' package.*pip install 'fair-edge\[plc\]'"):
        open_sink(url, pulse_ms=20)
    assert not {t.name for t in threading.enumerate()} - before   # no worker started


def test_a_falling_edge_not_written_is_reported_stuck_then_released_once_written(monkeypatch):
    """Audit bug 6: the link drops after the rising edge: the output may be left on (``stuck``). When the link is
    back the resting level is written and the sink says so (``released``): the scheduler holds the fault output
    between the two."""
    monkeypatch.setattr(base, "FALL_RETRY_S", 0.02)   # give up on the falling edge quickly

    class DropsAfterRise(RecordingOutput):
        def __init__(self) -> None:
            super().__init__()
            self.up = threading.Event()
            self.up.set()

        def open(self) -> None:
            if not self.up.is_set():
                raise PlcError("link down")

        def set(self, on: bool) -> None:
            if not self.up.is_set():
                raise PlcError("link down")
            super().set(on)
            if on:
                self.up.clear()   # the link dies right after the rising edge landed

    reports, out = Reports(), DropsAfterRise()
    sink = WorkerSink("coil", out, pulse_ms=5, backoff_s=0.01, backoff_max_s=0.05, reporter=reports)
    try:
        now = time.monotonic()
        sink.pulse(RejectEvent(seq=1, t_due=now, t_edge=now, deadline=now + 5.0))
        assert reports.wait_for_any("stuck"), reports.kinds
        assert [on for _, on in out.writes][-1] is True and "released" not in reports.kinds
        out.up.set()
        assert reports.wait_for_any("released"), reports.kinds
        assert [on for _, on in out.writes][-1] is False
        assert reports.kinds.index("stuck") < reports.kinds.index("released")
        assert reports.kinds.count("stuck") == 1   # the fall watch and the given-up write report it once between them
    finally:
        sink.close()


class HangingOutput(RecordingOutput):
    """An output whose rising edge never returns (a hung driver, a TCP write with no timeout) until ``release``."""

    def __init__(self, release: threading.Event) -> None:
        super().__init__()
        self.release = release

    def set(self, on: bool) -> None:
        if on:
            self.release.wait(WAIT_S)
        super().set(on)


class WaitSpy:
    """Notes the waits a close asks for (``WorkerSink.drain``'s ``timeout_s``, ``thread.join``'s ``timeout``): when
    each was asked (``base.time.monotonic()``, s) and for how long (s; None: no bound). What a close asks to wait,
    read without timing it: a loaded machine's stall lengthens a wait, never what was asked."""

    def __init__(self) -> None:
        self.asked: list[tuple[float, float | None]] = []

    def noted(self, timeout_s: float | None) -> float | None:
        self.asked.append((base.time.monotonic(), timeout_s))
        return timeout_s

    def ends(self) -> list[float]:
        """When each wait was asked to end at the latest (monotonic s; inf for no bound)."""
        return [float("inf") if asked_s is None else t + asked_s for t, asked_s in self.asked]


def test_a_fanout_of_hung_outputs_closes_within_one_budget_not_one_per_output(monkeypatch):
    """The report: ``FanOut.close`` closed its sinks in turn, each waiting its drain and then 2 s for its worker, so
    N outputs whose writes hang stopped the station N x 4 s later (past systemd's stop timeout with a few). Now
    every sink is told to stop before any is waited for, against one ``CloseBy``: 12 hung outputs closed by one
    (0.25 s drain, then 0.25 s join) are all told to stop before the first worker join, and every drain and join is
    asked to end by its deadline. Read from what the close asks (``WaitSpy``), not how long it took: a close that
    gives each sink its own drain (drains one by one, 12 x 0.25 s) or closes them in turn asks past the deadlines or
    joins before all are stopped, however idle or loaded the machine.
    A healthy output closed with them, mid-pulse, still writes what it owes (its falling edge). Pulse deadlines are
    WAIT_S away: a worker woken late still begins its write (hung, or the healthy rising edge)."""
    per_sink_s = 0.5   # the close's budget: drain + join
    monkeypatch.setattr(base, "CLOSE_DRAIN_S", per_sink_s / 2)
    monkeypatch.setattr(base, "CLOSE_JOIN_S", per_sink_s / 2, raising=False)
    drains, joins, drain = WaitSpy(), WaitSpy(), base.WorkerSink.drain
    monkeypatch.setattr(base.WorkerSink, "drain", lambda sink, timeout_s: drain(sink, drains.noted(timeout_s)))
    release = threading.Event()
    hung = [WorkerSink(f"plc{i}", HangingOutput(release), pulse_ms=50, reporter=lambda r: None) for i in range(12)]
    healthy_out = RecordingOutput()
    healthy = WorkerSink("coil", healthy_out, pulse_ms=60_000, reporter=lambda r: None)   # on until the close
    fan = base.FanOut([*hung, healthy])   # the healthy one last: what is left of the budget is all it gets
    told_to_stop: list[int] = []   # at each join: how many sinks had been told to stop

    def spied(join):
        def spy(timeout: float | None = None) -> None:
            told_to_stop.append(sum(sink._stop.is_set() for sink in fan.sinks))
            join(joins.noted(timeout))
        return spy

    for sink in fan.sinks:
        sink._thread.join = spied(sink._thread.join)
    now = time.monotonic()
    try:
        for sink in fan.sinks:
            sink.pulse(RejectEvent(seq=1, t_due=now, t_edge=now, deadline=now + WAIT_S))
        deadline = time.monotonic() + WAIT_S
        while True not in healthy_out.levels() and time.monotonic() < deadline:
            time.sleep(0.01)
        by = base.CloseBy.from_now()
        fan.close(by)
    finally:
        release.set()
    eps_s = 0.01   # a clock read's slack, not a machine's
    assert told_to_stop == [len(fan.sinks)] * len(fan.sinks), \
        f"{told_to_stop}: a sink's worker was waited for before every sink was told to stop"
    assert drains.asked and max(drains.ends()) <= by.drain_until + eps_s, \
        f"{drains.asked}: a sink's drain was asked past the close's drain deadline"
    assert len(joins.asked) == len(fan.sinks) and max(joins.ends()) <= by.join_until + eps_s, \
        f"{joins.asked}: a sink's worker was waited for past the close's deadline"
    assert healthy_out.levels()[-2:] == [True, False]   # its pulse cut short at close, the line left off


def test_a_cells_lane_gates_close_together_in_one_budget():
    """``close_gates``: every lane gate's thread is told to stop before any is waited for, then each gate's sinks
    before any is closed, and all share one ``CloseBy``, so hung outputs on several lanes cost one sink close, not
    one per lane."""
    from fair_edge.station.line_side import close_gates
    from fair_edge.station.stop_deadline import StopDeadline

    calls: list[tuple[str, str, object]] = []

    class Gate:
        def __init__(self, name: str) -> None:
            self.name = name

        def stop_deciding(self) -> None:
            calls.append(("stop_deciding", self.name, None))

        def begin_close(self, by) -> None:
            calls.append(("begin_close", self.name, by))

        def close(self, by=None) -> None:
            calls.append(("close", self.name, by))

    close_gates([Gate("a"), Gate("b"), Gate("c")], StopDeadline())
    assert [(what, name) for what, name, _ in calls] == [(what, name) for what in ("stop_deciding", "begin_close",
                                                                                   "close") for name in "abc"]
    closing = [by for what, _, by in calls if what != "stop_deciding"]
    assert len({id(by) for by in closing}) == 1 and isinstance(closing[0], base.CloseBy)


class DiesAfterRise(RecordingOutput):
    """A PLC that goes away right after the rising edge landed: each connect after that takes ``connect_s`` and
    fails (a TCP connect timing out); ``opens_after_rise`` counts them."""

    def __init__(self, connect_s: float) -> None:
        super().__init__()
        self.connect_s = connect_s
        self.up = True
        self.opens_after_rise = 0

    def open(self) -> None:
        if not self.up:
            self.opens_after_rise += 1
            time.sleep(self.connect_s)
            raise PlcError("connect timed out")

    def set(self, on: bool) -> None:
        if not self.up:
            raise PlcError("link down")
        super().set(on)
        if on:
            self.up = False


def test_resting_writes_at_close_reconnect_only_within_the_shared_deadline(monkeypatch):
    """The report: a sink owing its resting level with its link down reconnected for it at close, one sink after
    another and after the shared ``CloseBy``: 6 outputs whose PLC went away, 0.5 s connects, closed in 3 s against a
    0.6 s budget. Now a reconnect at close is begun only before ``by.join_until``: each connect lasts at least
    ``connect_s``, so at most budget / connect_s + 1 of them fit, however many outputs (all 12 were tried before);
    a healthy output closed last, mid-pulse, still writes its falling edge past that deadline."""
    monkeypatch.setattr(base, "CLOSE_DRAIN_S", 0.15)
    monkeypatch.setattr(base, "CLOSE_JOIN_S", 0.15, raising=False)
    monkeypatch.setattr(base, "FALL_RETRY_S", 0.1)
    connect_s = 0.25
    dead = [DiesAfterRise(connect_s) for _ in range(12)]
    sinks = [WorkerSink(f"opc{i}", out, pulse_ms=5, backoff_s=60, backoff_max_s=60, reporter=lambda r: None)
             for i, out in enumerate(dead)]
    healthy_out = RecordingOutput()
    healthy = WorkerSink("coil", healthy_out, pulse_ms=60_000, reporter=lambda r: None)   # on until the close
    fan = base.FanOut([*sinks, healthy])
    now = time.monotonic()
    for sink in fan.sinks:
        sink.pulse(RejectEvent(seq=1, t_due=now, t_edge=now, deadline=now + WAIT_S))
    deadline = time.monotonic() + WAIT_S
    while not (all(s._stuck for s in sinks) and True in healthy_out.levels()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert all(s._stuck for s in sinks), "every dead output owes its falling edge"
    opens_before = sum(out.opens_after_rise for out in dead)
    fan.close()
    opens_at_close = sum(out.opens_after_rise for out in dead) - opens_before
    budget_s = base.CLOSE_DRAIN_S + base.CLOSE_JOIN_S
    assert opens_at_close <= budget_s / connect_s + 1, f"{opens_at_close} reconnects at close, one per output"
    assert healthy_out.levels()[-2:] == [True, False]   # its pulse cut short at close, the line left off
