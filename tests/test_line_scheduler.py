"""Reject scheduler rules with in-memory sinks: ordering, deadlines, min gap, faults, encoder."""

from __future__ import annotations

import threading
import time

import pytest

from fair_edge.errors import ConfigError
from fair_edge.line.encoder_source import FakeEncoder
from fair_edge.line.scheduler import DISPATCH_LEAD_S, LATE, OK, REFUSED, SCHEDULED, UNINSPECTED, RejectScheduler
from fair_edge.line.settings import RejectSettings
from fair_edge.line.sinks import FanOut
from fair_edge.line.sinks.base import SinkReport
from fair_edge.line.scheduler import SlotPlan
from fair_edge.records import Verdict
from line_replay import RecordingSink, check_submits, replay, report_timing


def _v(seq, t_capture, ng=True):
    return Verdict(seq, t_capture, 0.9 if ng else 0.1, 0.5, ng, time.monotonic())


def _sched(sink, faults=None, encoder=None, **kw):
    settings = RejectSettings(**{"delay_ms": 100, "pulse_ms": 20, "min_gap_ms": 10,
                                 "late_ms": 10, **kw})
    return RejectScheduler(settings, sinks=sink, fault_sinks=faults or RecordingSink("fault"),
                           encoder=encoder)


IN_TIME_MS = 500   # delay_ms where a test's verdicts must be in time: submitted microseconds after capture, so only
                   # a stall of the whole process for half a second in that window could make one late


def wait_decided(s: RejectScheduler, seqs, timeout_s: float = 10.0) -> None:
    """Wait until the gate has decided every part in ``seqs`` (``decision``); a wait on the scheduler's own record,
    never a guess at how long its thread takes. Fails naming the parts still undecided after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while any(s.decision(seq) is None for seq in seqs) and time.monotonic() < deadline:
        time.sleep(0.005)
    assert all(s.decision(seq) is not None for seq in seqs), \
        f"parts {[q for q in seqs if s.decision(q) is None]} not decided within {timeout_s:g} s"


def assert_handed_in_plan(sink: RecordingSink, dues: dict[int, float]) -> None:
    """Each pulse planned for its part's due time, and handed to the sink no earlier than DISPATCH_LEAD_S before
    it (never early). How late a loaded machine hands it in is measured, not asserted (report_timing)."""
    for t_handed, (_, event) in zip(sink.handed, sink.pulses):
        assert event.t_due == pytest.approx(dues[event.seq]) and event.t_edge == pytest.approx(dues[event.seq])
        assert t_handed >= event.t_edge - DISPATCH_LEAD_S - 1e-4, (event.seq, 1000 * (t_handed - event.t_edge))
    report_timing("scheduler_handoff", [1000 * (t - e.t_edge) for t, (_, e) in zip(sink.handed, sink.pulses)])


def test_out_of_order_verdicts_fire_in_due_order_on_time():
    """Scheduled or late is decided by the submit time (measured here), never by hoping this thread ran on time."""
    sink = RecordingSink()
    with _sched(sink) as s:
        run = replay(s, n=12, pitch_s=0.035, defective={0, 1, 2, 6, 7, 11}, delay_s=0.1,
                     latency_s=(0.001, 0.080), seed=7)
        assert s.wait_idle(10.0)   # every placed part decided and handed over (close() would abandon the rest)
    scheduled = check_submits(run, DISPATCH_LEAD_S)   # submit() returned before the cut-off / began after it
    assert [e.seq for _, e in sink.pulses] == scheduled and scheduled   # every scheduled part, in due order
    assert_handed_in_plan(sink, run.dues)


def test_good_parts_never_pulse():
    sink = RecordingSink()
    with _sched(sink) as s:
        now = time.monotonic()
        assert all(s.submit(_v(i, now, ng=False)) == OK for i in range(20))
        time.sleep(0.15)
        assert s.stats()["verdicts"] == 20 and s.stats()["ng"] == 0
    assert sink.pulses == []


def test_unnoted_ng_verdict_after_its_due_time_never_fires_and_alarms():
    sink, faults = RecordingSink(), RecordingSink("fault")
    with _sched(sink, faults) as s:
        now = time.monotonic()
        assert s.submit(_v(1, now - 0.2)) == LATE
        time.sleep(0.05)
        assert s.alarm and "after the part passed" in s.alarm
        assert faults.faults[-1][0] is True
        s.acknowledge_alarm()
        assert faults.faults[-1][0] is False and s.alarm is None
        stats = s.stats()
    assert sink.pulses == [] and stats["late_verdicts"] == 1 and stats["alarms"] == 1


@pytest.mark.parametrize("policy", ["reject", "alarm"])
def test_each_captured_part_is_decided_at_its_own_due_time(policy):
    """Noted at capture: an OK verdict in time passes, an NG in time fires at its due time, no
    verdict -> fail_safe (reject: fired at its own due time; alarm: not fired, alarm), and a
    verdict after the due time never fires (not on this part, not on a neighbour)."""
    sink, faults = RecordingSink(), RecordingSink("fault")
    delay_s = IN_TIME_MS / 1000.0
    with _sched(sink, faults, fail_safe=policy, delay_ms=IN_TIME_MS) as s:
        t0 = time.monotonic()
        caps = {seq: t0 + 0.040 * seq for seq in range(5)}
        for seq, t in caps.items():
            s.note_capture(seq, t)
        assert s.submit(_v(0, caps[0], ng=False)) == OK
        assert s.submit(_v(1, caps[1])) == SCHEDULED
        # seq 2 and 3: no verdict in time; seq 4: an OK verdict in time
        assert s.submit(_v(4, caps[4], ng=False)) == OK
        wait_decided(s, (2, 3))                          # both went by the gate without a verdict
        assert s.submit(_v(3, caps[3])) == LATE        # NG, after its part passed the gate
        assert s.submit(_v(2, caps[2], ng=False)) == LATE
        assert s.wait_idle(10.0)                         # seq 4 (and 1) decided too before close()
        stats = s.stats()
    fired = {e.seq: (t, e) for t, e in sink.pulses}
    if policy == "reject":
        assert sorted(fired) == [1, 2, 3]
        assert [fired[q][1].uninspected for q in (1, 2, 3)] == [False, True, True]
        assert_handed_in_plan(sink, {seq: caps[seq] + delay_s for seq in fired})
        assert stats["rejected_uninspected"] == 2 and stats["rejected_ng"] == 1 and stats["alarms"] == 0
    else:
        assert sorted(fired) == [1]
        assert stats["passed_uninspected"] == 2 and stats["alarms"] == 2 and faults.faults[-1][0] is True
    assert stats["passed"] == 2 and stats["late_verdicts"] == 2 and stats["captured"] == 5


def test_min_gap_shifts_within_late_ms_and_never_fires_on_the_next_part():
    sink, faults = RecordingSink(), RecordingSink("fault")
    with _sched(sink, faults, delay_ms=IN_TIME_MS) as s:
        t = time.monotonic()
        assert s.submit(_v(1, t)) == SCHEDULED
        assert s.submit(_v(2, t + 0.005)) == SCHEDULED   # 5 ms apart < pulse 20 + gap 10: cannot fire
        assert s.submit(_v(3, t + 0.060)) == SCHEDULED   # 60 ms after: no conflict
        assert s.submit(_v(4, t + 0.085)) == SCHEDULED   # 25 ms after 3: shifted 5 ms (<= late_ms)
        assert s.wait_idle(10.0)
        stats = s.stats()
    events = {e.seq: e for _, e in sink.pulses}
    assert sorted(events) == [1, 3, 4] and stats["gap_missed"] == 1 and faults.faults[-1][0] is True
    assert events[3].t_edge == pytest.approx(events[3].t_due)
    assert events[4].t_edge - events[3].t_edge == pytest.approx(0.030)   # pulse 20 + gap 10


def test_station_fault_holds_the_fault_output():
    faults = RecordingSink("fault")
    with _sched(RecordingSink(), faults) as s:
        s.fault(True, "camera gone")
        s.fault(False)
    assert faults.faults == [(True, "camera gone"), (False, "cleared")]


def test_refuses_beyond_max_pending_and_alarms():
    faults = RecordingSink("fault")
    with _sched(RecordingSink(), faults, max_pending=2, delay_ms=5000) as s:
        t = time.monotonic()
        assert [s.submit(_v(i, t + i)) for i in range(3)] == [SCHEDULED, SCHEDULED, REFUSED]
        s.note_capture(7, t)
        assert faults.faults[-1][0] is True and s.stats()["refused"] == 2
    assert s.stats()["abandoned"] == 2


def test_sink_miss_counts_and_alarms_under_alarm_policy():
    faults = RecordingSink("fault")
    with _sched(RecordingSink(), faults, fail_safe="alarm") as s:
        s.handle_report(SinkReport("plc", "missed", 4, "down"))
        s.handle_report(SinkReport("plc", "io_error", 4, "refused"))
        st = s.stats()
    assert st["sink_missed"] == 1 and st["sink_errors"] == 1 and faults.faults[-1][0]


def test_sink_miss_holds_the_fault_output_until_the_sink_reconnects():
    faults = RecordingSink("fault")
    with _sched(RecordingSink(), faults) as s:
        s.handle_report(SinkReport("plc", "missed", 4, "down"))
        assert faults.faults[-1][0] is True and "plc missed reject seq 4" in s.fault_reason
        s.handle_report(SinkReport("plc", "reconnected", None, "up"))
        assert faults.faults[-1] == (False, "cleared") and s.alarm is None


def test_encoder_distance_fires_when_the_count_is_reached():
    """Parts captured two at a time, their verdicts reversed; each NG part gets one pulse, in belt order, once the
    belt reached its target count (capture count + encoder_distance) and never before. The test moves the belt
    (``_TimedBelt``: 350 counts per step, at least 35 ms apart, as 10 000 counts/s) and waits until the gate has
    decided each part that reached it before the next step, so every verdict is in time and no two parts reach
    the gate in one poll however slow the machine; how soon after the count the gate fires is measured
    (report_timing), not asserted."""
    belt, sink = _TimedBelt(), RecordingSink()
    with _sched(sink, encoder=belt, encoder_distance=1200, delay_ms=0, fail_safe="reject") as s:
        gates, targets = {}, {}              # every part's target count; the NG parts'

        def step() -> None:
            belt.move_to(belt.n + 350)
            wait_decided(s, [seq for seq, target in gates.items() if target <= belt.n])
            time.sleep(0.035)                # the belt's pace: parts reach the gate apart, as on a line

        for pair in range(3):                # capture two parts, then their verdicts reversed
            for seq in (2 * pair, 2 * pair + 1):
                gates[seq] = s.note_capture(seq) + 1200
                if seq % 2 == 0:
                    targets[seq] = gates[seq]
                step()
            for seq in (2 * pair + 1, 2 * pair):
                assert s.submit(_v(seq, 0.0, ng=seq in targets)) == (SCHEDULED if seq in targets else OK)
        while belt.n < max(gates.values()):  # the belt runs on until every part passed the gate
            step()
        assert s.wait_idle(10.0)
    dues = {seq: belt.time_of(t) for seq, t in targets.items()}   # when the belt reached each target count
    assert [e.seq for _, e in sink.pulses] == sorted(targets)   # one pulse per NG part, in belt order
    # the gate fires once the count is reached, never before; how soon after is measured (encoder_poll_ms and
    # the machine's wake-up latency), not asserted: benchmarks, and report_timing below
    assert all(e.t_due >= dues[e.seq] and e.t_edge >= e.t_due for _, e in sink.pulses), sink.pulses
    report_timing("scheduler_encoder", [1000 * (e.t_due - dues[e.seq]) for _, e in sink.pulses])


def test_encoder_without_source_is_a_config_error():
    with pytest.raises(ConfigError, match="encoder_distance"):
        RejectScheduler(RejectSettings(encoder_distance=100), sinks=RecordingSink(),
                        fault_sinks=RecordingSink())


def test_encoder_missing_capture_count_is_late():
    enc = FakeEncoder(counts_per_s=1000)
    with _sched(RecordingSink(), encoder=enc, encoder_distance=100, delay_ms=0,
                fail_safe="alarm") as s:
        assert s.submit(_v(99, 0.0)) == LATE
        assert s.alarm


def test_fanout_isolates_a_broken_sink():
    class Broken(RecordingSink):
        def pulse(self, event):
            raise RuntimeError("boom")

    good = RecordingSink()
    fan = FanOut([Broken("broken"), good])
    with _sched(fan, delay_ms=IN_TIME_MS) as s:
        assert s.submit(_v(1, time.monotonic())) == SCHEDULED
        assert s.wait_idle(10.0)
    assert len(good.pulses) == 1 and fan.errors == 1
    fan.close()
    fan.close()
    assert good.closed == 1


def test_slot_plan():
    plan = SlotPlan(0.03)
    plan.take(1.0)
    plan.take(1.05)
    assert plan.earliest(0.9) == 0.9
    assert plan.earliest(1.01) == pytest.approx(1.08)
    plan.prune(1.2)
    assert len(plan) == 0


def test_close_stops_the_thread_counts_undecided_parts_once_and_is_safe_twice(monkeypatch):
    closed = []
    monkeypatch.setattr(FanOut, "close", lambda self, by=None: closed.append(self))   # the sinks it opened from URLs
    s = RejectScheduler(RejectSettings(sinks=("log://test.close",), delay_ms=5000), fault_sinks=RecordingSink())
    assert s.submit(_v(1, time.monotonic())) == SCHEDULED
    threads = [t for t in threading.enumerate() if t.name == "reject-scheduler"]
    s.close()
    s.close()
    assert threads and not any(t.is_alive() for t in threads)
    assert s.stats()["abandoned"] == 1 and s.stats()["pending"] == 0 and len(closed) == 1


class _HeldSink(RecordingSink):
    """A sink whose pulse() waits until the test lets it go: the scheduler is caught mid-decision."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def pulse(self, event) -> None:
        self.entered.set()
        self.release.wait(5.0)
        super().pulse(event)


def test_a_part_being_decided_is_still_pending_so_wait_idle_never_returns_before_its_count():
    """The station reads the reject counters after wait_idle(): a part popped for its gate but not yet counted
    must keep wait_idle waiting, or the run summary shows fewer pulses than the gate log rejected parts."""
    sink = _HeldSink()
    with _sched(sink) as s:
        try:
            assert s.submit(_v(1, time.monotonic())) == SCHEDULED
            assert sink.entered.wait(5.0)
            assert s.stats()["pending"] == 1 and not s.wait_idle(0.05)   # held in pulse(): not idle, not counted
            assert s.stats()["fired"] == 0
        finally:
            sink.release.set()
        assert s.wait_idle(5.0)
        assert s.stats()["fired"] == 1 and s.stats()["rejected_ng"] == 1 and len(sink.pulses) == 1


class _Belt:
    """An encoder the test moves by hand (the gate's fake clock, in counts): parts reach the gate only when
    the test sets ``n``, never because a loaded machine was slow."""

    def __init__(self) -> None:
        self.n = 0

    def count(self) -> int:
        return self.n


class _TimedBelt(_Belt):
    """A ``_Belt`` that remembers when the test moved it (monotonic s), so a pulse can be checked against the
    moment its part's target count was reached."""

    def __init__(self) -> None:
        super().__init__()
        self.moves: list[tuple[float, int]] = [(time.monotonic(), 0)]

    def move_to(self, n: int) -> None:
        self.moves.append((time.monotonic(), n))   # stamped before the count changes: never after the gate saw it
        self.n = n

    def time_of(self, count: int) -> float:
        """Monotonic s at which the belt first stood at ``count`` or beyond."""
        return next(t for t, n in self.moves if n >= count)


class _LinkSink(RecordingSink):
    """A recording sink that says whether its link is up (``connected``, as ``WorkerSink`` does)."""

    def __init__(self, name: str, connected: bool) -> None:
        super().__init__(name)
        self.connected = connected


def test_one_sinks_recovery_never_clears_another_sinks_fault():
    """Audit bug 4: the stack light reconnecting must not clear the PLC coil's fault; each sink clears its own."""
    faults = RecordingSink("fault")
    with _sched(RecordingSink(), faults) as s:
        s.handle_report(SinkReport("plc", "missed", 4, "down"))
        s.handle_report(SinkReport("plc-2", "missed", 4, "down"))
        s.handle_report(SinkReport("stack-light", "reconnected", None, "up"))
        assert faults.faults[-1][0] is True and "plc missed reject seq 4" in s.fault_reason
        s.handle_report(SinkReport("plc", "reconnected", None, "up"))
        assert faults.faults[-1][0] is True and s.fault_reason == "plc-2 missed reject seq 4"
        s.handle_report(SinkReport("plc-2", "reconnected", None, "up"))
        assert faults.faults[-1] == (False, "cleared") and s.fault_reason is None


def test_a_sinks_next_delivered_pulse_clears_its_missed_fault():
    """Audit bug 5: a miss while the link stays up (refused write, pulse dequeued late) is followed by no
    reconnect; the sink's next delivered pulse shows it works again. Another sink's delivery does not."""
    faults = RecordingSink("fault")
    with _sched(RecordingSink(), faults) as s:
        s.handle_report(SinkReport("plc", "missed", 4, "device refused"))
        s.handle_report(SinkReport("log", "delivered", 5, "ok"))
        assert faults.faults[-1][0] is True and "plc missed reject seq 4" in s.fault_reason
        s.handle_report(SinkReport("plc", "delivered", 5, "ok"))
        assert faults.faults[-1] == (False, "cleared") and s.fault_reason is None


def test_acknowledge_clears_the_miss_of_a_sink_whose_link_is_up_not_of_one_still_down():
    """Audit bug 5, the operator's rule: acknowledge clears a missed-pulse fault of a sink that is connected
    (nothing more will clear it until the next NG part); a sink still down keeps its fault until it reconnects."""
    faults = RecordingSink("fault")
    fan = FanOut([_LinkSink("plc-down", connected=False), _LinkSink("plc-up", connected=True)])
    with _sched(fan, faults, fail_safe="alarm") as s:
        s.handle_report(SinkReport("plc-down", "missed", 3, "link down"))
        s.handle_report(SinkReport("plc-up", "missed", 4, "device refused"))
        s.acknowledge_alarm()
        assert s.alarm is None and s.fault_reason == "plc-down missed reject seq 3"
        assert faults.faults[-1][0] is True
        s.handle_report(SinkReport("plc-down", "reconnected", None, "up"))
        assert faults.faults[-1] == (False, "cleared")


def test_a_stuck_output_holds_the_fault_until_the_sink_writes_it_off_again():
    """Audit bug 6: the link dropped between rising and falling edge (``stuck``: the coil may be left on). The
    fault output is held through the reconnect, an acknowledge and that pulse's own ``delivered`` report, and
    drops when the sink reports ``released`` (its resting level written again)."""
    faults = RecordingSink("fault")
    with _sched(RecordingSink(), faults) as s:
        s.handle_report(SinkReport("plc", "stuck", 4, "falling edge not written"))
        s.handle_report(SinkReport("plc", "delivered", 4, "rising edge written by its deadline"))
        assert faults.faults[-1][0] is True and "plc: output may be left on after reject seq 4" in s.fault_reason
        s.handle_report(SinkReport("plc", "reconnected", None, "up"))
        s.acknowledge_alarm()
        assert faults.faults[-1][0] is True and "left on" in s.fault_reason
        s.handle_report(SinkReport("other", "released", None, "off"))
        assert faults.faults[-1][0] is True
        s.handle_report(SinkReport("plc", "released", None, "off"))
        assert faults.faults[-1] == (False, "cleared") and s.fault_reason is None
        assert s.stats()["sink_errors"] == 1 and s.stats()["alarms"] == 0


def test_a_sink_link_down_holds_the_fault_output_until_that_sink_reconnects(caplog):
    """Audit (line safety): a sink whose link went down while no pulse was due raised no fault. ``link_down`` now
    holds the fault output, naming the sink, once per outage (counted once); it is no alarm (an acknowledge does
    not clear a link still down), another sink's recovery and a delivery do not clear it, its ``reconnected``
    does. Logged as a warning (reconnected too: a journal at the default level shows it cleared); counted
    ``sink_link_downs``, not ``sink_errors``."""
    faults = RecordingSink("fault")
    caplog.set_level("INFO", logger="fair_edge.line.sinks.base")
    fan = FanOut([_LinkSink("plc", connected=False), _LinkSink("light", connected=True)])
    with _sched(fan, faults, fail_safe="alarm") as s:
        s.handle_report(SinkReport("plc", "link_down", None, "probe (read back) failed: timed out"))
        assert faults.faults[-1][0] is True
        reason = s.fault_reason
        assert reason.startswith("plc: link down since ") and reason.endswith(", reconnecting")
        s.handle_report(SinkReport("plc", "link_down", None, "again"))   # a repeat: same reason, no new change
        s.handle_report(SinkReport("light", "reconnected", None, "up"))
        s.handle_report(SinkReport("plc", "delivered", 3, "ok"))
        s.acknowledge_alarm()
        assert s.fault_reason == reason and faults.faults[-1] == (True, reason) and s.alarm is None
        s.handle_report(SinkReport("plc", "reconnected", None, "up"))
        assert faults.faults[-1] == (False, "cleared") and s.fault_reason is None
        st = s.stats()
    assert (st["sink_link_downs"], st["sink_errors"], st["alarms"]) == (1, 0, 0)
    levels = {r.getMessage().split(": ")[1].split(" ")[0]: r.levelname for r in caplog.records
              if r.name == "fair_edge.line.sinks.base"}
    assert levels["link_down"] == "WARNING" and levels["reconnected"] == "WARNING"


@pytest.mark.parametrize("ng", [False, True])
def test_a_verdict_for_a_part_taken_to_the_gate_is_late_never_lost_between(ng):
    """Audit bug 7: parts taken off the queue together are decided one after the other; a verdict for the second
    while the first is being decided is late (counted, no false 'passed the gate' alarm), and decision() already
    says what the gate did. The belt jumps both parts to the gate at once; the gate log hook of the first holds
    the thread (no timing involved)."""
    belt, sink = _Belt(), RecordingSink()
    in_hook, release = threading.Event(), threading.Event()

    def on_part(row):
        if row["seq"] == 1 and row["event"] == "gate":
            in_hook.set()
            release.wait(10.0)

    settings = RejectSettings(delay_ms=0, encoder_distance=100, pulse_ms=5, min_gap_ms=1, late_ms=20)
    with RejectScheduler(settings, sinks=sink, fault_sinks=RecordingSink("fault"), encoder=belt,
                         on_part=on_part) as s:
        try:
            s.note_capture(1)
            s.note_capture(2)
            belt.n = 100                      # both at the gate in one poll
            assert in_hook.wait(10.0)
            assert s.submit(_v(2, 0.0, ng=ng)) == LATE
            assert s.decision(2) == "rejected_uninspected"
        finally:
            release.set()
        assert s.wait_idle(10.0)
        stats = s.stats()
    assert stats["late_verdicts"] == 1 and stats["rejected_uninspected"] == 2 and stats["alarms"] == 0
    assert s.alarm is None and [e.seq for _, e in sink.pulses] == [1, 2]


@pytest.mark.parametrize("policy", ["reject", "alarm"])
def test_a_verdict_with_an_error_is_decided_by_fail_safe_not_as_ng(policy):
    """Audit bug 8: a verdict whose error is set (inference failed, malformed frame) means the part was not
    inspected: reject -> pulsed uninspected (``rejected_uninspected``); alarm -> not pulsed, ``passed_uninspected``
    and the alarm. Counted ``error_verdicts``, not ``ng``. The belt brings the part to the gate (no timing)."""
    belt, sink, faults, rows = _Belt(), RecordingSink(), RecordingSink("fault"), []
    settings = RejectSettings(delay_ms=0, encoder_distance=100, pulse_ms=20, min_gap_ms=10, late_ms=10,
                              fail_safe=policy)
    with RejectScheduler(settings, sinks=sink, fault_sinks=faults, encoder=belt, on_part=rows.append) as s:
        s.note_capture(1)
        error = Verdict(1, 0.0, None, 0.5, True, time.monotonic(), "", "inference failed: CUDA error")
        assert s.submit(error) == UNINSPECTED
        belt.n = 100
        assert s.wait_idle(10.0)
        stats = s.stats()
    assert (stats["ng"], stats["error_verdicts"], stats["rejected_ng"]) == (0, 1, 0)
    gate = [r for r in rows if r["event"] == "gate"]
    assert [(r["verdict"], r["error"]) for r in gate] == [("none", "inference failed: CUDA error")]
    if policy == "reject":
        assert [(e.seq, e.uninspected) for _, e in sink.pulses] == [(1, True)]
        assert stats["rejected_uninspected"] == 1 and stats["alarms"] == 0 and s.alarm is None
    else:
        assert sink.pulses == [] and stats["passed_uninspected"] == 1
        assert "inference failed" in s.alarm and faults.faults[-1][0] is True


def test_parts_still_on_the_belt_when_the_run_ends_are_abandoned_counted_and_logged():
    """Each part between camera and gate at the end gets one gate row ``abandoned`` (no pulse) and is counted
    there, before a summary takes the counters; a verdict for it afterwards is late, and close() counts none again."""
    rows, sink = [], RecordingSink()
    s = RejectScheduler(RejectSettings(delay_ms=600_000, pulse_ms=20), sinks=sink, fault_sinks=RecordingSink("f"),
                        on_part=rows.append)
    t = time.monotonic()
    for seq in (1, 2, 3):
        s.note_capture(seq, t + seq)
    assert s.submit(_v(2, t + 2)) == SCHEDULED and s.submit(_v(3, t + 3, ng=False)) == OK
    assert s.abandon_pending() == 3
    assert s.stats()["abandoned"] == 3 and s.stats()["pending"] == 0
    assert [(r["seq"], r["event"], r["gate"], r["verdict"]) for r in rows] == [
        (1, "gate", "abandoned", "none"), (2, "gate", "abandoned", "ng"), (3, "gate", "abandoned", "ok")]
    assert s.submit(_v(1, t + 1)) == LATE and s.decision(1) == "abandoned"
    s.close()
    assert s.stats()["abandoned"] == 3 and len(rows) == 3 and sink.pulses == []


def test_the_run_summary_and_gate_log_show_the_abandoned_parts(tmp_path):
    """summary.rejects was copied before the scheduler closed, the only place abandoned was counted: summary.json
    and MQTT said abandoned 0, and gate.jsonl had no row for those parts."""
    import json

    from fair_edge.line.recorder import Recorder
    from fair_edge.line.settings import RecordSettings
    from fair_edge.station.config import StationConfig
    from fair_edge.station.inspector import RunSummary
    from fair_edge.station.line_side import LineSide, finish_line

    cfg = StationConfig(reject=RejectSettings(sinks=("log://test.abandon",), delay_ms=1.0))   # the stop waits ~1 s
    with Recorder(RecordSettings(dir=tmp_path, save_ng_images=False, min_free_mb=0)) as recorder:
        gate = RejectScheduler(RejectSettings(delay_ms=600_000), sinks=RecordingSink(),   # a belt that stopped
                               fault_sinks=RecordingSink("f"), on_part=recorder.record_gate)
        with gate:
            for seq in (7, 8):
                gate.note_capture(seq)
            summary = RunSummary()
            finish_line(cfg, LineSide(recorder, gate, None, None, []), summary, "")
    assert summary.rejects["abandoned"] == 2 and summary.rejects["pending"] == 0
    logged = [json.loads(line) for line in (tmp_path / "gate.jsonl").read_text().splitlines()]
    assert [(r["seq"], r["gate"]) for r in logged if r["event"] == "gate"] == [(7, "abandoned"), (8, "abandoned")]


def test_a_run_ending_with_300_parts_on_the_belt_logs_300_abandoned_gate_rows(tmp_path):
    """abandon_pending tells one gate row per part at once; through recorder.record_gate (a queue of 64 items)
    236 of 300 were dropped (the audit's 259 abandoned, 72 rows). The recorder's writer is held in an NG image
    meanwhile (a disk that stalls a moment), so nothing is written during the burst: every row still gets in."""
    import json

    from conftest import held_recorder

    rec, disk = held_recorder(tmp_path)
    s = RejectScheduler(RejectSettings(delay_ms=600_000, pulse_ms=20), sinks=RecordingSink(),
                        fault_sinks=RecordingSink("f"), on_part=rec.record_gate)
    t = time.monotonic()
    for seq in range(1, 301):
        s.note_capture(seq, t)
    assert s.abandon_pending() == 300
    assert rec.record(None, _v(301, t, ng=False))       # a verdict row coming in beside the burst
    s.close()
    disk.release.set()
    rec.close()
    gate = [json.loads(line) for line in (tmp_path / "gate.jsonl").read_text().splitlines()]
    assert [(r["seq"], r["gate"]) for r in gate] == [(seq, "abandoned") for seq in range(1, 301)]
    stats = rec.stats()
    assert stats["dropped"] == 0 and stats["gate_logged"] == 300 and stats["logged"] == 2 and stats["pending"] == 0
