"""A reject sink's link that goes down while no pulse is due raises the fault output (audit: an idle worker never
touched its link, so a PLC that went away was found only when the first NG part's pulse failed at the gate), and
only when the link cannot be re-established: one failed write or probe that the reconnect gets past holds no fault
(audit: a single Modbus timeout flashed the fault output, which may stop the line).
Phases follow the fake output's own calls (probes, opens, writes) and the sink's reports, never timers: order, not
speed."""

import threading
import time
from datetime import datetime, timezone

from fair_edge.errors import PlcError
from fair_edge.line.events import RejectEvent
from fair_edge.line import gate_sinks
from fair_edge.line.scheduler import RejectScheduler
from fair_edge.line.settings import RejectSettings
from fair_edge.line.sinks import FanOut
from fair_edge.line.sinks.base import WorkerSink
from line_replay import RecordingSink
from line_servers import SkewClock, run_sinks_on, wait_for

WAIT_S = 10.0    # upper bound for a step to happen on a loaded machine (a passing test returns as soon as it does)
PROBE_S = 0.02   # the sinks' probe period here (injected; the module default is base.PROBE_S)
FAST = {"backoff_s": 0.01, "backoff_max_s": 0.05, "probe_s": PROBE_S}


class LinkOutput:
    """A PLC output whose link the test cuts, mutes and restores. Counts every probe, open and write; a call counted
    after ``cut()`` fails (the count and the check are one step under the lock, so which probe was the first after
    the cut is exact). ``mute()``: connects succeed, writes and probes fail (a PLC whose TCP stack answers and whose
    application does not). ``glitch(op)``: the next ``op`` ("set" or "probe") fails once (one Modbus timeout).
    ``trace`` lists each call (``open``, ``set``, ``probe``; ``:fail`` when it failed) and each report the
    ``Listener`` got (``report:KIND``), in the order they happened."""

    def __init__(self, up: bool = True) -> None:
        self.cond = threading.Condition()
        self.up = up
        self.muted = False
        self.glitches: set[str] = set()
        self.probes = self.opens = self.failed_opens = 0
        self.writes: list[bool] = []
        self.trace: list[str] = []

    def _call(self, op: str, fails: bool) -> None:
        """Record ``op`` (under the lock) and raise the link failure when it ``fails``."""
        self.trace.append(f"{op}:fail" if fails else op)
        self.cond.notify_all()
        if fails:
            raise PlcError(f"fake plc: {op} failed: link cut")

    def _fails(self, op: str) -> bool:
        if op in self.glitches:
            self.glitches.discard(op)
            return True
        return not self.up or self.muted

    def open(self) -> None:
        with self.cond:
            self.opens += 1
            self.failed_opens += not self.up
            self._call("open", not self.up)

    def set(self, on: bool) -> None:
        with self.cond:
            fails = self._fails("set")
            if not fails:
                self.writes.append(on)
            self._call("set", fails)

    def probe(self) -> None:
        with self.cond:
            self.probes += 1
            self._call("probe", self._fails("probe"))

    def close(self) -> None:
        pass

    def note(self, entry: str) -> None:
        with self.cond:
            self.trace.append(entry)
            self.cond.notify_all()

    def cut(self) -> int:
        """Cut the link; returns how many probes were made before the cut."""
        with self.cond:
            self.up = False
            return self.probes

    def mute(self) -> None:
        with self.cond:
            self.muted = True

    def glitch(self, op: str) -> int:
        """The next ``op`` fails once; returns how many probes were made before."""
        with self.cond:
            self.glitches.add(op)
            return self.probes

    def restore(self) -> None:
        with self.cond:
            self.up, self.muted = True, False

    def wait(self, cond) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: cond(self), WAIT_S)

    def before(self, entry: str) -> list[str]:
        """The trace before the first ``entry`` (a copy)."""
        with self.cond:
            return self.trace[:self.trace.index(entry)] if entry in self.trace else []

    def after(self, entry: str) -> list[str]:
        """The trace after the first ``entry`` (a copy)."""
        with self.cond:
            return self.trace[self.trace.index(entry) + 1:] if entry in self.trace else []


class Listener:
    """The sink's reporter: hands each report to the scheduler (once there is one), then keeps its kind (and notes it
    in the output's trace), so a test that saw a kind knows the scheduler has acted on it."""

    def __init__(self, out: LinkOutput | None = None) -> None:
        self.kinds: list[str] = []
        self.cond = threading.Condition()
        self.scheduler: RejectScheduler | None = None
        self.out = out

    def __call__(self, report) -> None:
        if self.scheduler is not None:
            self.scheduler.handle_report(report)
        if self.out is not None:
            self.out.note(f"report:{report.kind}")
        with self.cond:
            self.kinds.append(report.kind)
            self.cond.notify_all()

    def wait_for(self, kind: str) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: kind in self.kinds, WAIT_S)


def _station(out: LinkOutput, listener: Listener, faults: RecordingSink, pulse_ms: float = 20,
             **fast: float) -> tuple[RejectScheduler, WorkerSink]:
    """The scheduler first (its reject fan-out still empty), then the sink on ``out``: every report the sink makes,
    its first connect's included, reaches the scheduler, however long building the scheduler takes (order, not
    speed). The caller closes both."""
    fan = FanOut([], "rejects")
    sched = RejectScheduler(RejectSettings(delay_ms=100, pulse_ms=20), sinks=fan, fault_sinks=faults)
    listener.scheduler = sched
    sink = WorkerSink("plc", out, pulse_ms=pulse_ms, reporter=listener, **{**FAST, **fast})
    fan.sinks.append(sink)
    return sched, sink


def _in_order(trace: list[str], *entries: str) -> bool:
    """Whether ``entries`` occur in ``trace`` in this order (the first occurrence of each, after the previous)."""
    at = -1
    for entry in entries:
        if entry not in trace[at + 1:]:
            return False
        at = trace.index(entry, at + 1)
    return True


def test_a_link_cut_while_idle_raises_the_fault_output_before_any_pulse_and_reconnect_clears_it():
    """No pulse is due: the first probe after the cut finds the link failing, the reconnect that follows fails and
    reports ``link_down`` (a PLC gone: found within about probe period + probe timeout + one connect timeout); the
    fault output goes on naming the sink (one ``link_down`` however many reconnects fail), and drops when the sink
    reports ``reconnected``."""
    out, faults = LinkOutput(), RecordingSink("fault")
    listener = Listener(out)
    sched, sink = _station(out, listener, faults)
    try:
        with sched:
            assert out.wait(lambda o: o.probes >= 2)          # idle, connected, probed: all well
            assert faults.faults == [] and sched.fault_reason is None and listener.kinds == []
            writes_before = list(out.writes)
            probes_at_cut = out.cut()
            assert listener.wait_for("link_down"), listener.kinds
            assert out.probes == probes_at_cut + 1             # found by the first probe after the cut ...
            assert _in_order(out.trace, "probe:fail", "report:io_error", "open:fail", "report:link_down"), out.trace
            active, reason = faults.faults[-1]                 # ... and reported by the reconnect that failed
            assert active and reason.startswith("plc: link down since ") and reason.endswith(", reconnecting")
            since = datetime.strptime(reason[len("plc: link down since "):-len(", reconnecting")], "%Y-%m-%dT%H:%M:%SZ")
            assert abs((datetime.now(timezone.utc).replace(tzinfo=None) - since).total_seconds()) < 60, reason  # UTC, dated
            assert sched.fault_reason == reason
            assert out.wait(lambda o: o.failed_opens >= 3)    # reconnect retried ...
            assert listener.kinds.count("link_down") == 1     # ... and reported once per outage
            assert faults.faults == [(True, reason)] and out.writes == writes_before   # the probe never wrote
            out.restore()
            assert listener.wait_for("reconnected"), listener.kinds
            assert faults.faults[-1] == (False, "cleared") and sched.fault_reason is None
            stats, sink_stats = sched.stats(), sink.stats()
        assert listener.kinds.index("link_down") < listener.kinds.index("reconnected")
        assert (sink_stats["link_downs"], sink_stats["io_errors"], sink_stats["reconnects"]) == (1, 1, 1)
        assert (stats["sink_link_downs"], stats["sink_errors"], stats["alarms"], stats["fired"]) == (1, 1, 0, 0)
    finally:
        sink.close()


def test_a_first_connect_that_fails_at_start_is_reported_link_down_then_reconnected():
    """The PLC is unreachable when the station starts: the fault output is on before any pulse is due, and drops
    when the first connect succeeds. (The scheduler exists before the sink's first connect: the test does not
    depend on how long building it takes.)"""
    out, listener, faults = LinkOutput(up=False), Listener(), RecordingSink("fault")
    sched, sink = _station(out, listener, faults)
    try:
        with sched:
            assert out.wait(lambda o: o.failed_opens >= 3)
            assert listener.wait_for("link_down"), listener.kinds
            assert listener.kinds.count("link_down") == 1 and not sink.connected
            assert faults.faults[-1][0] is True and "plc: link down since" in sched.fault_reason
            out.restore()
            assert listener.wait_for("reconnected"), listener.kinds
            assert faults.faults[-1] == (False, "cleared") and sched.fault_reason is None
    finally:
        sink.close()


def test_an_acknowledge_does_not_clear_a_link_that_is_still_down_and_a_miss_is_still_a_miss():
    """The link goes down while idle, then a pulse is due: it is reported missed (never replayed) beside the link
    fault; the operator's acknowledge clears neither while the link is down; the reconnect clears both."""
    out, listener, faults = LinkOutput(), Listener(), RecordingSink("fault")
    sched, sink = _station(out, listener, faults, pulse_ms=5)
    try:
        with sched:
            assert out.wait(lambda o: o.probes >= 1)          # connected, resting level written
            out.cut()
            assert listener.wait_for("link_down"), listener.kinds
            now = time.monotonic()
            sink.pulse(RejectEvent(seq=7, t_due=now, t_edge=now, deadline=now + 0.05))
            assert listener.wait_for("missed"), listener.kinds
            sched.acknowledge_alarm()
            assert faults.faults[-1][0] is True
            assert "plc missed reject seq 7" in sched.fault_reason and "plc: link down since" in sched.fault_reason
            out.restore()
            assert listener.wait_for("reconnected"), listener.kinds
            assert faults.faults[-1] == (False, "cleared") and sched.fault_reason is None
            assert sched.stats()["sink_missed"] == 1
    finally:
        sink.close()


def test_one_failed_probe_that_the_reconnect_gets_past_raises_no_link_down_and_no_fault():
    """Audit: one probe times out (a single Modbus timeout); the worker reconnects at once, rewrites the resting level
    and the next probes are answered. That is an ``io_error`` (counted), not a link that went down: the fault output
    never goes on (where it stops the line, one timeout stopped it)."""
    out, faults = LinkOutput(), RecordingSink("fault")
    listener = Listener(out)
    sched, sink = _station(out, listener, faults)
    try:
        with sched:
            assert out.wait(lambda o: o.probes >= 2)
            at = out.glitch("probe")
            assert out.wait(lambda o: o.probes >= at + 3), out.trace   # the failed probe, then two answered ones
            assert _in_order(out.after("probe:fail"), "report:io_error", "open", "set", "probe", "probe"), out.trace
            assert "link_down" not in listener.kinds, listener.kinds
            assert faults.faults == [] and sched.fault_reason is None
            stats, sink_stats = sched.stats(), sink.stats()
        assert (sink_stats["io_errors"], sink_stats["link_downs"]) == (1, 0)
        assert (stats["sink_errors"], stats["sink_link_downs"], stats["alarms"]) == (1, 0, 0)
    finally:
        sink.close()


def test_one_failed_pulse_write_that_the_reconnect_gets_past_delivers_the_pulse_without_a_fault():
    """Audit: the rising edge's write fails once (a timeout); the worker reconnects within ~3 ms and writes the pulse
    by its deadline. Delivered, one ``io_error``, no ``link_down``, and the fault output never flashes."""
    out, faults = LinkOutput(), RecordingSink("fault")
    listener = Listener(out)
    sched, sink = _station(out, listener, faults, probe_s=1000.0)   # no probe: the write is the only check
    try:
        with sched:
            assert out.wait(lambda o: o.writes == [False])   # connected, resting level written
            out.glitch("set")
            now = time.monotonic()
            sink.pulse(RejectEvent(seq=3, t_due=now, t_edge=now, deadline=now + WAIT_S))
            assert listener.wait_for("delivered"), listener.kinds
            assert _in_order(out.after("set:fail"), "report:io_error", "open", "set", "set", "report:delivered")
            assert out.writes == [False, True, False]
            assert "link_down" not in listener.kinds and "missed" not in listener.kinds, listener.kinds
            assert faults.faults == [] and sched.fault_reason is None
            sink_stats = sink.stats()
        assert (sink_stats["delivered"], sink_stats["io_errors"], sink_stats["link_downs"]) == (1, 1, 0)
    finally:
        sink.close()


def test_a_pulse_write_that_fails_and_a_reconnect_that_fails_report_link_down_once_after_the_failed_connect(
        monkeypatch):
    """The PLC went away and a pulse is due: the write fails (no ``link_down`` yet: it may be a glitch), the reconnect
    fails: ``link_down`` once (however many reconnects fail meanwhile), the pulse unconfirmed (its write went out
    without a reply) once its deadline passes (WAIT_S away on the sink's clock, jumped by the test once reconnects
    have failed: a worker woken late still writes the pulse), the fault output held."""
    clock = SkewClock()
    run_sinks_on(monkeypatch, clock)
    out, faults = LinkOutput(), RecordingSink("fault")
    listener = Listener(out)
    sched, sink = _station(out, listener, faults, probe_s=1000.0)
    try:
        with sched:
            assert out.wait(lambda o: o.writes == [False])
            out.cut()
            now = clock()
            sink.pulse(RejectEvent(seq=4, t_due=now, t_edge=now, deadline=now + WAIT_S))
            assert out.wait(lambda o: o.failed_opens >= 3)   # reconnects failing within the pulse's deadline
            clock.jump(2 * WAIT_S)                            # the deadline passes
            assert listener.wait_for("unconfirmed"), listener.kinds
            assert _in_order(out.trace, "set:fail", "report:io_error", "open:fail", "report:link_down"), out.trace
            assert out.wait(lambda o: o.failed_opens >= 6)   # and after it, idle
            assert listener.kinds.count("link_down") == 1 and "reconnected" not in listener.kinds, listener.kinds
            assert faults.faults[-1][0] is True and "plc: link down since" in sched.fault_reason
    finally:
        sink.close()


def test_two_link_failures_in_a_row_with_successful_reconnects_report_link_down_and_hold_it_until_answered():
    """A PLC whose TCP stack accepts connects while its application answers nothing: the probe fails, the reconnect
    succeeds, the resting level's write fails again: ``link_down`` (the second failure in a row). Reconnects that
    succeed while writes still fail do not report ``reconnected``: the fault output stays on, one change, no flash;
    the first write answered again reports ``reconnected`` and the fault clears."""
    out, faults = LinkOutput(), RecordingSink("fault")
    listener = Listener(out)
    sched, sink = _station(out, listener, faults)
    try:
        with sched:
            assert out.wait(lambda o: o.probes >= 2)
            out.mute()
            assert listener.wait_for("link_down"), listener.kinds
            assert _in_order(out.trace, "probe:fail", "report:io_error", "open", "set:fail", "report:io_error",
                             "report:link_down"), out.trace
            first = out.before("report:link_down")
            assert first.count("probe:fail") == 1 and first.count("set:fail") == 1, out.trace   # the second failure
            reason = sched.fault_reason
            assert reason is not None and reason.startswith("plc: link down since ")
            assert out.wait(lambda o: o.after("report:link_down").count("open") >= 3), out.trace   # connects ok ...
            assert out.after("report:link_down").count("set:fail") >= 2, out.trace                # ... writes fail
            assert "reconnected" not in listener.kinds[listener.kinds.index("link_down"):], listener.kinds
            assert listener.kinds.count("link_down") == 1 and faults.faults == [(True, reason)], faults.faults
            out.restore()
            assert out.wait(lambda o: "report:reconnected" in o.after("report:link_down")), out.trace
            assert faults.faults == [(True, reason), (False, "cleared")] and sched.fault_reason is None
            stats, sink_stats = sched.stats(), sink.stats()
        assert sink_stats["link_downs"] == 1 and stats["sink_link_downs"] == 1 and stats["alarms"] == 0
    finally:
        sink.close()


def test_a_link_down_reported_while_the_scheduler_still_opens_its_sinks_reaches_the_fault_output(monkeypatch):
    """A reject sink's first connect fails at once (connection refused) and its ``link_down`` reaches the scheduler
    while it is still opening its fault sinks: the fault is kept and shown on the fault output once it is open
    (not lost to a listener error). The report is made to come first by order: the fault sinks open only after it."""
    out, faults, reported = LinkOutput(up=False), RecordingSink("fault"), threading.Event()

    def open_fanout(urls, pulse_ms, reporter, name):
        if name == "rejects":
            def report(r):
                reporter(r)
                reported.set()
            return FanOut([WorkerSink("plc", out, pulse_ms, reporter=report, **FAST)], name)
        assert reported.wait(WAIT_S)   # the reject sink has reported its link down: only now the fault sinks
        return FanOut([faults], name)

    monkeypatch.setattr(gate_sinks, "open_fanout", open_fanout)
    settings = RejectSettings(sinks=("modbus://plc",), fault_sinks=("log://fault",), delay_ms=100, pulse_ms=20)
    with RejectScheduler(settings) as sched:
        assert faults.faults and faults.faults[-1][0] is True, faults.faults
        assert faults.faults[-1][1].startswith("plc: link down since ") and sched.fault_reason == faults.faults[-1][1]
        out.restore()
        assert wait_for(lambda: faults.faults[-1] == (False, "cleared"), WAIT_S), faults.faults


def test_after_a_link_down_a_plc_that_accepts_and_never_answers_is_reconnected_with_back_off():
    """A PLC (or a gateway whose PLC is off) that accepts connects and answers no write was reconnected at once after
    every failure, about 60 times a second with a warning each; after the link_down each reconnect waits the back-off
    (here 0.3 s doubling to 1.2 s; an idle worker's poll alone spaces them 0.05 s), measured on the fake's own clock
    readings: a loaded machine only widens them."""
    out, faults = LinkOutput(), RecordingSink("fault")
    listener = Listener(out)
    opened: list[float] = []
    real_open = out.open

    def timed_open() -> None:
        opened.append(time.monotonic())
        real_open()

    out.open = timed_open
    sched, sink = _station(out, listener, faults, backoff_s=0.3, backoff_max_s=1.2)
    try:
        with sched:
            assert out.wait(lambda o: o.probes >= 1)
            out.mute()
            assert listener.wait_for("link_down"), listener.kinds
            start = len(opened)
            assert out.wait(lambda o: len(opened) >= start + 3), out.trace
            gaps = [b - a for a, b in zip(opened[start - 1:], opened[start:start + 3])]
            assert all(gap >= 0.28 for gap in gaps), gaps
            out.restore()
            assert listener.wait_for("reconnected"), listener.kinds
    finally:
        sink.close()
