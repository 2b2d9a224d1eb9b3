"""Reject pulses over Modbus TCP against a real pymodbus server on 127.0.0.1."""

from __future__ import annotations

import threading
import time

import pytest

pytest.importorskip("pymodbus")

from fair_edge.errors import PlcDeviceError, PlcError, SinkError  # noqa: E402
from fair_edge.line.scheduler import DISPATCH_LEAD_S, LATE, SCHEDULED, RejectScheduler  # noqa: E402
from fair_edge.line.settings import RejectSettings  # noqa: E402
from fair_edge.line.sinks import open_sink, parse_sink_url  # noqa: E402
from fair_edge.line.sinks.modbus import ModbusOutput, parse_modbus_url  # noqa: E402
from fair_edge.records import Verdict  # noqa: E402
from line_replay import JitterProbe, PulseAccount, capture_logger, check_plc_pulses, check_submits  # noqa: E402
from line_replay import replay, report_timing as _report, timing_errors_ms  # noqa: E402
from fair_edge.line.events import RejectEvent  # noqa: E402
from fair_edge.line.sinks import base  # noqa: E402
from fair_edge.line.sinks.base import sleep_until  # noqa: E402
from line_servers import ModbusTestServer, wait_for  # noqa: E402

DELAY_S = 0.150
PITCH_S = 0.040


def _settings(port: int, **kw) -> RejectSettings:
    base = dict(sinks=(f"modbus://127.0.0.1:{port}?unit=1&coil=0", "log://test.rejects"),
                fault_sinks=("log://test.fault",), delay_ms=DELAY_S * 1000, pulse_ms=20,
                min_gap_ms=10, late_ms=10, fail_safe="reject")
    base.update(kw)
    return RejectSettings(**base)


@pytest.fixture
def server():
    srv = ModbusTestServer().start()
    yield srv
    srv.close()


def _modbus_stats(sched) -> dict[str, int]:
    (stats,) = [st for name, st in sched.sink_stats().items() if name.startswith("modbus")]
    return stats


def _check_modbus_run(server, account: PulseAccount, dues: dict[int, float], sink: dict[str, int],
                      stats: dict[str, int] | None = None, late_ms: float = 10) -> dict[str, set[int]]:
    """The Modbus sink's reports against the PLC's record (``check_plc_pulses``), and every counter equal to them:
    the sink's (pulses, delivered, late_writes, missed) and, when given, the scheduler's (fired, sink_missed,
    sink_late_writes)."""
    results = account.results("modbus")
    kinds = check_plc_pulses(server.rises(0), server.falls(0), results, dues, late_ms=late_ms, pulse_ms=20,
                             io_errors=sink["io_errors"])
    n = {k: len(kinds.get(k, ())) for k in ("delivered", "late", "missed", "unconfirmed")}
    assert sink["pulses"] == len(results) and sink["dropped"] == 0 and sink["device_errors"] == 0
    assert (sink["delivered"], sink["late_writes"]) == (n["delivered"] + n["late"], n["late"])
    assert sink["missed"] == n["missed"] and sink.get("unconfirmed", 0) == n["unconfirmed"]
    if stats is not None:
        assert stats["fired"] == len(results)
        assert (stats["sink_missed"], stats["sink_late_writes"]) == (n["missed"], n["late"])
        assert stats.get("sink_unconfirmed", 0) == n["unconfirmed"]
    return kinds


def test_one_pulse_per_defective_part_on_time(server):
    """Order and accounting: one pulse per NG part whose verdict was in time (by the run's own submit times), in
    part order, none for good parts; each pulse the sink reports delivered is on the PLC's clock in
    [due, due + late_ms] and >= pulse_ms wide; counters equal the parts. (How close to due: report_timing.)"""
    defective = {1, 2, 5, 8, 9, 13, 17, 18, 22, 27}
    rejects_log = capture_logger("test.rejects")
    rejects_log.records.clear()
    account = PulseAccount()
    with RejectScheduler(_settings(server.port), on_part=account.on_part) as sched:
        sched.check_sinks(10.0)   # connected before the line starts (the outage tests start without it)
        run = replay(sched, n=30, pitch_s=PITCH_S, defective=defective, delay_s=DELAY_S, seed=1)
        scheduled = check_submits(run, DISPATCH_LEAD_S)
        assert account.wait_reported(scheduled, "modbus")
        stats, sink = sched.stats(), _modbus_stats(sched)
    assert sorted(account.results("modbus")) == scheduled and account.order("modbus") == scheduled
    kinds = _check_modbus_run(server, account, run.dues, sink, stats)
    assert stats["late_verdicts"] == len(defective) - len(scheduled)
    assert stats["rejected_ng"] == len(scheduled) and (stats["verdicts"], stats["ng"]) == (30, len(defective))
    assert [r.reject_seq for r in rejects_log.records] == scheduled        # the log sink too, in part order
    _report("modbus_coil", timing_errors_ms(server.rises(0), {s: run.dues[s] for s in kinds.get("delivered", ())},
                                            PITCH_S / 2))


def test_holding_register_pulse(server):
    account = PulseAccount()
    sink = open_sink(f"modbus://127.0.0.1:{server.port}?unit=1&register=3&value=7&pulse_ms=15",
                     reporter=account.report)
    assert sink.wait_connected(10.0)
    with RejectScheduler(RejectSettings(delay_ms=DELAY_S * 1000, pulse_ms=20), sinks=sink) as sched:
        run = replay(sched, n=4, pitch_s=PITCH_S, defective={0, 2}, delay_s=DELAY_S, seed=2)
        scheduled = check_submits(run, DISPATCH_LEAD_S)
        assert account.wait_reported(scheduled, "modbus")
    sink.close()
    writes = server.register_writes(3)
    values = [v for i, (_, v) in enumerate(writes) if i == 0 or v != writes[i - 1][1]]   # (a retried write: once)
    assert values[0] == 0 and values == [0, 7] * (len(values) // 2) + [0]   # resting level on connect, then 7 / 0
    kinds = check_plc_pulses([t for t, v in writes if v == 7], [t for t, v in writes[1:] if v == 0],
                             account.results("modbus"), run.dues, late_ms=10, pulse_ms=15,
                             io_errors=sink.stats()["io_errors"])
    assert sorted(account.results("modbus")) == scheduled == account.order("modbus")
    assert sum(map(len, kinds.values())) == len(scheduled)


def test_submit_never_waits_on_the_plc(server):
    """submit() and the gate go on while the sink's write to the PLC is held (a PLC that does not answer): order,
    not time. Pulses queued behind the held write are dequeued past their deadline and reported missed, never
    written late (a stale pulse would hit another part). (How long submit() takes: benchmarks/soak.py.)"""
    from fair_edge.line.sinks.modbus import default_client_factory, open_modbus_sink

    entered, release = threading.Event(), threading.Event()

    class HeldClient:   # the real pymodbus client; its first rising-edge write waits until the test releases it
        def __init__(self, client) -> None:
            self._client = client

        def write_coil(self, address, value, **kw):
            if value and not release.is_set():
                entered.set()
                release.wait(10.0)
            return self._client.write_coil(address, value, **kw)

        def __getattr__(self, name):
            return getattr(self._client, name)

    account = PulseAccount()
    sink = open_modbus_sink(parse_sink_url(f"modbus://127.0.0.1:{server.port}?unit=1&coil=0"), 20,
                            account.report, lambda target: HeldClient(default_client_factory(target)))
    # late_ms generous: the held write must begin (a loaded machine may wake the sink late), not be on time
    settings = RejectSettings(delay_ms=100, pulse_ms=20, min_gap_ms=10, late_ms=500)
    assert sink.wait_connected(10.0)                    # (a server still starting on a loaded machine: wait, in order)
    with RejectScheduler(settings, sinks=sink, on_part=account.on_part) as sched:
        assert sched.submit(Verdict(0, time.monotonic(), 0.9, 0.5, True, time.monotonic())) == SCHEDULED
        assert entered.wait(10.0), (account.rows, sink.stats())   # the sink is inside its write, held there
        now = time.monotonic()   # parts 40 ms apart: each gets its own pulse slot (pulse + min gap = 30 ms)
        t_caps = {seq: now + 0.3 + 0.04 * seq for seq in range(1, 4)}
        results = [sched.submit(Verdict(seq, t, 0.9, 0.5, True, time.monotonic())) for seq, t in t_caps.items()]
        decided = wait_for(lambda: set(account.gate) >= {0, 1, 2, 3}, 10.0)
        held = not release.is_set()                     # ... and still held: submit and the gate did not wait
        sleep_until(max(t_caps.values()) + 0.1 + 0.5 + 0.001)   # (their deadlines pass while the write is held)
        release.set()
        assert account.wait_reported(range(4), "modbus")
    sink.close()
    assert results == [SCHEDULED] * 3 and decided and held
    assert account.order("modbus") == [0, 1, 2, 3] and sink.stats()["pulses"] == 4
    got = account.results("modbus")
    assert all(got[seq] == ["missed"] for seq in (1, 2, 3)), got   # dequeued past their deadline: not written
    assert len(server.rises(0)) == (got[0] != ["missed"])           # only the held write reached the PLC


def test_device_error_reply_is_not_an_exception(server):
    target, _ = parse_modbus_url(parse_sink_url(f"modbus://127.0.0.1:{server.port}?coil=999"))
    out = ModbusOutput(target)
    out.open()
    with pytest.raises(PlcDeviceError, match="device refused"):
        out.set(True)  # address 999 does not exist: an exception reply, the link is fine
    out.close()
    out.close()


def test_link_failure_is_plc_error():
    target, _ = parse_modbus_url(parse_sink_url("modbus://127.0.0.1:1?coil=0"))
    out = ModbusOutput(target)
    with pytest.raises(PlcError, match="expected a connection"):
        out.open()


def test_server_down_at_start_then_up(server):
    """Rejects due while the PLC is down (it is started only after the sink reported on each of them) are missed:
    counted, logged, never replayed; after it comes up the sink reconnects and every pulse is accounted against
    the PLC's record. Phases follow the sink's own reports, not timers."""
    server.stop()
    defective_down = {0, 3, 5}
    defective_up = {16, 19, 22, 25}
    rejects_log = capture_logger("test.rejects")
    rejects_log.records.clear()
    account = PulseAccount()
    with JitterProbe() as probe, RejectScheduler(_settings(server.port), on_part=account.on_part) as sched:
        down = replay(sched, n=8, pitch_s=PITCH_S, defective=defective_down, delay_s=DELAY_S, seed=3)
        down_scheduled = check_submits(down, DISPATCH_LEAD_S)
        assert account.wait_reported(down_scheduled, "modbus")
        t_up = time.monotonic()
        server.start()
        up = replay(sched, n=20, pitch_s=PITCH_S, defective=defective_up, delay_s=DELAY_S, seed=3, first=8)
        up_scheduled = check_submits(up, DISPATCH_LEAD_S)
        assert account.wait_reported(up_scheduled, "modbus")
        stats, sink = sched.stats(), _modbus_stats(sched)
    results = account.results("modbus")
    assert all(results[seq] == ["missed"] for seq in down_scheduled), results   # never connected: nothing written
    assert account.order("modbus") == down_scheduled + up_scheduled
    kinds = _check_modbus_run(server, account, {**down.dues, **up.dues}, sink, stats)
    assert all(r >= t_up for r in server.rises(0))
    assert sink["reconnects"] >= 1 and any(t >= t_up and not v for t, fc, a, v in server.writes if fc == 5)
    if probe.max_ms < 5:   # no thread of this run woke 5 ms late: the recovered link must really have pulsed
        assert kinds.get("delivered", set()) & set(up_scheduled), (kinds, probe.max_ms)
    assert [r.reject_seq for r in rejects_log.records] == down_scheduled + up_scheduled
    _report("modbus_after_outage_at_start", timing_errors_ms(
        server.rises(0), {s: up.dues[s] for s in kinds.get("delivered", set()) & set(up_scheduled)}, PITCH_S / 2))


def test_server_goes_away_mid_run_and_returns(server):
    """fail_safe: alarm -- a reject missed during the outage raises the latched alarm. The PLC goes down after
    the sink reported on the parts before, and comes back after it reported on the parts during: each pulse due
    while it was down is missed or unconfirmed (never delivered), and no write reached it then."""
    defective_before = {1, 4}
    defective_during = {10, 13}
    defective_after = {20, 23, 26}
    fault_log = capture_logger("test.fault")
    fault_log.records.clear()
    account = PulseAccount()
    runs = []
    delay_s = 0.4   # verdicts (<= 60 ms) well before their gate, so each phase's NG parts are pulsed, loaded or not
    with RejectScheduler(_settings(server.port, fail_safe="alarm", delay_ms=delay_s * 1000),
                         on_part=account.on_part) as sched:
        sched.check_sinks(10.0)
        for first, defective in ((0, defective_before), (10, defective_during), (20, defective_after)):
            if first == 10:
                server.stop()
                t_down = time.monotonic()
            if first == 20:
                t_up = time.monotonic()
                server.start()
            runs.append(replay(sched, n=10, pitch_s=PITCH_S, defective=defective, delay_s=delay_s,
                               seed=4, first=first))
            assert account.wait_reported(check_submits(runs[-1], DISPATCH_LEAD_S), "modbus")
        stats, sink = sched.stats(), _modbus_stats(sched)
        alarm = sched.alarm
    during = sorted(s for s in runs[1].dues if runs[1].results[s] == SCHEDULED)
    assert during and not any(t_down < t < t_up for t, *_ in server.writes)
    kinds = _check_modbus_run(server, account, {s: d for r in runs for s, d in r.dues.items()}, sink, stats)
    not_written = kinds.get("missed", set()) | kinds.get("unconfirmed", set())
    assert set(during) <= not_written
    assert stats["alarms"] >= len(not_written) >= len(during) and stats["sink_errors"] >= 1
    assert alarm is not None and any(f"seq {s}" in alarm for s in not_written), alarm
    assert any(getattr(r, "fault_active", False) for r in fault_log.records)
    _report("modbus_mid_run_outage", timing_errors_ms(
        server.rises(0), {s: d for r in runs for s, d in r.dues.items() if s in kinds.get("delivered", ())},
        PITCH_S / 2))


class SlowReplyPlc(ModbusTestServer):
    """The test PLC, but it answers rising-edge writes only after ``hold_s`` until it sees the falling edge that
    follows them: each write is applied (and recorded) at once, its reply is late (a loaded PLC, a congested
    link). Order, not time, decides which writes are held: those of the first pulse."""

    def __init__(self, hold_s: float) -> None:
        super().__init__()
        self.hold_s, self.held = hold_s, 0

    async def _action(self, fc, start, address, count, regs, set_values):
        import asyncio

        out = await super()._action(fc, start, address, count, regs, set_values)
        if fc == 5 and set_values is not None and self.held >= 0:
            if set_values[0]:
                self.held += 1
                await asyncio.sleep(self.hold_s)
            elif self.held:
                self.held = -1    # the first pulse's falling edge: answer in time from now on
        return out


def test_a_write_without_a_reply_is_unconfirmed_not_missed(caplog):
    """A rising edge that reached the PLC but whose reply timed out is reported ``unconfirmed`` (the PLC may have
    acted on it), not ``missed``; counted apart (sink and scheduler) and logged; never replayed; its falling edge
    is still written before the next pulse (queued behind it) goes out, so the coil does not stay on."""
    plc = SlowReplyPlc(hold_s=0.3).start()
    account = PulseAccount()
    late_ms = 500   # >> the 50 ms reply timeout: the sink writes (and retries) before its deadline, loaded or not
    try:
        url = f"modbus://127.0.0.1:{plc.port}?unit=1&coil=0&timeout_ms=50"
        settings = RejectSettings(sinks=(url,), delay_ms=DELAY_S * 1000, pulse_ms=20, min_gap_ms=10,
                                  late_ms=late_ms)
        with RejectScheduler(settings, on_part=account.on_part) as sched:
            sched.check_sinks(10.0)
            now = time.monotonic()
            dues = {0: now + DELAY_S, 1: now + 0.07 + DELAY_S}   # 1 is handed over while 0 is still retrying
            for seq, due in dues.items():
                assert sched.submit(Verdict(seq, due - DELAY_S, 0.9, 0.5, True, now)) == SCHEDULED
            assert account.wait_reported(dues, "modbus")
            stats, sink = sched.stats(), _modbus_stats(sched)
    finally:
        plc.close()
    results = account.results("modbus")
    assert results[0] == ["unconfirmed"] and sink["io_errors"] >= 1 and plc.held == -1
    assert plc.rises(0)[0] >= dues[0]                                  # it did reach the PLC, in its own slot
    levels = [v for t, fc, a, v in plc.writes if fc == 5 and a == 0]
    levels = [v for i, v in enumerate(levels) if i == 0 or v != levels[i - 1]]
    assert levels == [False] + [True, False] * (1 + (results[1] != ["missed"])), levels   # each pulse ends
    missed = int(results[1] == ["missed"])
    assert (stats["sink_unconfirmed"], sink["unconfirmed"], stats["sink_missed"]) == (1, 1, missed)
    kinds = _check_modbus_run(plc, account, dues, sink, stats, late_ms=late_ms)
    assert kinds["unconfirmed"] == {0}
    assert "unconfirmed (seq 0)" in caplog.text and "missed (seq 0)" not in caplog.text


class ReadCountingPlc(ModbusTestServer):
    """The test PLC, also counting the read requests it answers per (function code, address): the sinks' idle
    probes (FC 1 coil, FC 3 holding register)."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: dict[tuple[int, int], int] = {}

    async def _action(self, fc, start, address, count, regs, set_values):
        if fc in (1, 3):
            self.reads[(fc, address)] = self.reads.get((fc, address), 0) + 1
        return await super()._action(fc, start, address, count, regs, set_values)


def test_a_plc_that_goes_away_while_idle_raises_the_fault_output_before_any_pulse(monkeypatch):
    """Audit (line safety): the PLC stops while no pulse is due. The idle sink's probe (a read of its coil) finds the
    link down and the fault output goes on, naming the sink, before any part reaches the gate; it drops when the
    sink reconnects. The probe never writes: the PLC saw no write but the resting level at each connect."""
    monkeypatch.setattr(base, "PROBE_S", 0.05)
    plc = ReadCountingPlc().start()
    fault_log = capture_logger("test.fault")
    fault_log.records.clear()
    try:
        with RejectScheduler(_settings(plc.port)) as sched:
            sched.check_sinks(10.0)
            assert wait_for(lambda: plc.reads.get((1, 0), 0) >= 2, 10.0), plc.reads   # probed while idle: FC 1
            assert sched.fault_reason is None
            plc.stop()
            assert wait_for(lambda: sched.fault_reason is not None, 10.0)
            reason = sched.fault_reason
            assert reason.startswith(f"modbus 127.0.0.1:{plc.port} unit 1 coil 0: link down since "), reason
            assert reason.endswith(", reconnecting")
            plc.start()
            assert wait_for(lambda: sched.fault_reason is None, 10.0), sched.fault_reason
            stats, sink = sched.stats(), _modbus_stats(sched)
    finally:
        plc.close()
    shown = [(r.fault_active, r.getMessage()) for r in fault_log.records if hasattr(r, "fault_active")]
    assert shown == [(True, f"fault ON: {reason}"), (False, "fault off: cleared")], shown
    assert (stats["fired"], stats["sink_missed"], stats["sink_link_downs"]) == (0, 0, 1)
    assert sink["link_downs"] == 1 and sink["reconnects"] == 1 and sink["io_errors"] >= 1
    assert {v for _, fc, a, v in plc.writes if fc == 5 and a == 0} == {False}   # resting level only, never a pulse


def test_the_idle_probe_reads_back_and_never_clears_a_pulse_ms_0_register(monkeypatch):
    """A ``pulse_ms=0`` sink writes the value and leaves clearing it to the PLC (a handshake). The idle probe reads
    the register back (FC 3) and never writes: probe after probe, the value the PLC has not cleared yet stays."""
    monkeypatch.setattr(base, "PROBE_S", 0.02)
    plc = ReadCountingPlc().start()
    account = PulseAccount()
    sink = open_sink(f"modbus://127.0.0.1:{plc.port}?unit=1&register=3&value=7&pulse_ms=0", reporter=account.report)
    try:
        assert sink.wait_connected(10.0)
        now = time.monotonic()
        sink.pulse(RejectEvent(seq=1, t_due=now, t_edge=now, deadline=now + 5.0))
        assert account.wait_reported([1], "modbus") and account.results("modbus")[1] == ["delivered"]
        probed = plc.reads.get((3, 3), 0)
        assert wait_for(lambda: plc.reads.get((3, 3), 0) >= probed + 3, 10.0), plc.reads   # 3 probes after the pulse
        values = [v for _, v in plc.register_writes(3)]
        assert [v for i, v in enumerate(values) if i == 0 or v != values[i - 1]] == [0, 7], values
        assert sink.stats()["link_downs"] == 0
    finally:
        sink.close()
        plc.close()


def test_late_verdict_never_fires(server):
    """A verdict that comes after its part passed the gate is never sent: it would hit another part."""
    with RejectScheduler(_settings(server.port)) as sched:
        now = time.monotonic()
        v = Verdict(7, now - 0.5, 0.9, 0.5, True, now)   # part passed the gate 350 ms ago
        assert sched.submit(v) == LATE
        time.sleep(0.1)
        stats = sched.stats()
    assert server.rises(0) == []
    assert stats["late_verdicts"] == 1 and stats["fired"] == 0 and stats["alarms"] == 1


def test_bad_urls_name_the_fix():
    with pytest.raises(SinkError, match="exactly one of coil=N or register=N"):
        open_sink("modbus://127.0.0.1:502?unit=1")
    with pytest.raises(SinkError, match="did you mean 'coil'"):
        open_sink("modbus://127.0.0.1:502?coill=0")
    with pytest.raises(SinkError, match="did you mean 'modbus://'"):
        open_sink("modbu://127.0.0.1:502?coil=0")
