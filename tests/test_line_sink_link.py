"""A reject sink's link that goes down while no pulse is due raises the fault output (audit: an idle worker never
touched its link, so a PLC that went away was found only when the first NG part's pulse failed at the gate).
Phases follow the fake output's own calls (probes, opens, writes), never timers: order, not speed."""

import threading
import time

from fair_edge.errors import PlcError
from fair_edge.line.events import RejectEvent
from fair_edge.line import scheduler as scheduler_module
from fair_edge.line.scheduler import RejectScheduler
from fair_edge.line.settings import RejectSettings
from fair_edge.line.sinks import FanOut
from fair_edge.line.sinks.base import WorkerSink
from line_replay import RecordingSink
from line_servers import wait_for

WAIT_S = 10.0    # upper bound for a step to happen on a loaded machine (a passing test returns as soon as it does)
PROBE_S = 0.02   # the sinks' probe period here (injected; the module default is base.PROBE_S)
FAST = {"backoff_s": 0.01, "backoff_max_s": 0.05, "probe_s": PROBE_S}


class LinkOutput:
    """A PLC output whose link the test cuts and restores. Counts every probe, open and write; a probe or write
    counted after ``cut()`` fails (the count and the check are one step under the lock, so which probe was the
    first after the cut is exact)."""

    def __init__(self, up: bool = True) -> None:
        self.cond = threading.Condition()
        self.up = up
        self.probes = self.failed_opens = 0
        self.writes: list[bool] = []

    def _check(self, what: str) -> None:
        if not self.up:
            raise PlcError(f"fake plc: {what} failed: link cut")

    def open(self) -> None:
        with self.cond:
            self.failed_opens += not self.up
            self.cond.notify_all()
            self._check("connect")

    def set(self, on: bool) -> None:
        with self.cond:
            self._check("write")
            self.writes.append(on)
            self.cond.notify_all()

    def probe(self) -> None:
        with self.cond:
            self.probes += 1
            self.cond.notify_all()
            self._check("read")

    def close(self) -> None:
        pass

    def cut(self) -> int:
        """Cut the link; returns how many probes were made before the cut."""
        with self.cond:
            self.up = False
            return self.probes

    def restore(self) -> None:
        with self.cond:
            self.up = True

    def wait(self, cond) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: cond(self), WAIT_S)


class Listener:
    """The sink's reporter: hands each report to the scheduler (once there is one), then keeps its kind, so a test
    that saw a kind knows the scheduler has acted on it."""

    def __init__(self) -> None:
        self.kinds: list[str] = []
        self.cond = threading.Condition()
        self.scheduler: RejectScheduler | None = None

    def __call__(self, report) -> None:
        if self.scheduler is not None:
            self.scheduler.handle_report(report)
        with self.cond:
            self.kinds.append(report.kind)
            self.cond.notify_all()

    def wait_for(self, kind: str) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: kind in self.kinds, WAIT_S)


def _gate(sink: WorkerSink, listener: Listener, faults: RecordingSink) -> RejectScheduler:
    sched = RejectScheduler(RejectSettings(delay_ms=100, pulse_ms=20), sinks=sink, fault_sinks=faults)
    listener.scheduler = sched
    return sched


def test_a_link_cut_while_idle_raises_the_fault_output_before_any_pulse_and_reconnect_clears_it():
    """No pulse is due: the first probe after the cut finds the link down, the fault output goes on naming the sink
    (one ``link_down`` however many reconnects fail), and drops when the sink reports ``reconnected``."""
    out, listener, faults = LinkOutput(), Listener(), RecordingSink("fault")
    sink = WorkerSink("plc", out, pulse_ms=20, reporter=listener, **FAST)
    try:
        assert sink.wait_connected(WAIT_S)
        with _gate(sink, listener, faults) as sched:
            assert out.wait(lambda o: o.probes >= 2)          # idle, connected, probed: all well
            assert faults.faults == [] and sched.fault_reason is None and listener.kinds == []
            writes_before = list(out.writes)
            probes_at_cut = out.cut()
            assert listener.wait_for("link_down"), listener.kinds
            assert out.probes == probes_at_cut + 1             # found by the first probe after the cut
            active, reason = faults.faults[-1]
            assert active and reason.startswith("plc: link down since ") and reason.endswith(", reconnecting")
            assert sched.fault_reason == reason
            assert out.wait(lambda o: o.failed_opens >= 3)    # reconnect retried ...
            assert listener.kinds.count("link_down") == 1     # ... and reported once per outage
            assert faults.faults[-1][0] is True and out.writes == writes_before   # the probe never wrote
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
    when the first connect succeeds."""
    out, listener, faults = LinkOutput(up=False), Listener(), RecordingSink("fault")
    sink = WorkerSink("plc", out, pulse_ms=20, reporter=listener, **FAST)
    try:
        with _gate(sink, listener, faults) as sched:
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
    sink = WorkerSink("plc", out, pulse_ms=5, reporter=listener, **FAST)
    try:
        assert sink.wait_connected(WAIT_S)
        with _gate(sink, listener, faults) as sched:
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

    monkeypatch.setattr(scheduler_module, "open_fanout", open_fanout)
    settings = RejectSettings(sinks=("modbus://plc",), fault_sinks=("log://fault",), delay_ms=100, pulse_ms=20)
    with RejectScheduler(settings) as sched:
        assert faults.faults and faults.faults[-1][0] is True, faults.faults
        assert faults.faults[-1][1].startswith("plc: link down since ") and sched.fault_reason == faults.faults[-1][1]
        out.restore()
        assert wait_for(lambda: faults.faults[-1] == (False, "cleared"), WAIT_S), faults.faults
