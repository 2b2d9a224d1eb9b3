"""Reject pulses over Modbus TCP against a real pymodbus server on 127.0.0.1."""

from __future__ import annotations

import time

import pytest

pytest.importorskip("pymodbus")

from fair_edge.errors import PlcDeviceError, PlcError, SinkError  # noqa: E402
from fair_edge.line.scheduler import LATE, SCHEDULED  # noqa: E402
from fair_edge.line.scheduler import RejectScheduler  # noqa: E402
from fair_edge.line.settings import RejectSettings  # noqa: E402
from fair_edge.line.sinks import open_sink, parse_sink_url  # noqa: E402
from fair_edge.line.sinks.modbus import ModbusOutput, parse_modbus_url  # noqa: E402
from line_replay import capture_logger, match_pulses, replay, report_timing as _report  # noqa: E402
from line_replay import timing_errors_ms  # noqa: E402
from line_servers import ModbusTestServer  # noqa: E402

TOL_S = 0.010
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


def test_one_pulse_per_defective_part_on_time(server):
    defective = {1, 2, 5, 8, 9, 13, 17, 18, 22, 27}
    rejects_log = capture_logger("test.rejects")
    with RejectScheduler(_settings(server.port)) as sched:
        run = replay(sched, n=30, pitch_s=PITCH_S, defective=defective, delay_s=DELAY_S, seed=1)
        time.sleep(DELAY_S + 0.1)
        stats = sched.stats()
    rises, falls = server.rises(0), server.falls(0)
    matched = match_pulses(rises, run.dues, PITCH_S / 2)
    assert {s: len(m) for s, m in matched.items()} == {s: 1 for s in defective}
    assert len(rises) == len(defective)
    errors = timing_errors_ms(rises, run.dues, PITCH_S / 2)
    _report("modbus_coil", errors)
    assert max(abs(e) for e in errors) <= TOL_S * 1000, errors
    widths = [1000 * (min(f for f in falls if f > r) - r) for r in rises]
    assert all(20 - 10 <= w <= 20 + 10 for w in widths), widths
    assert set(run.results.values()) == {"ok", SCHEDULED}
    assert stats["fired"] == len(defective) and stats["late_verdicts"] == 0
    assert sorted(r.reject_seq for r in rejects_log.records) == sorted(defective)


def test_holding_register_pulse(server):
    sink = open_sink(f"modbus://127.0.0.1:{server.port}?unit=1&register=3&value=7&pulse_ms=15")
    with RejectScheduler(RejectSettings(delay_ms=DELAY_S * 1000, pulse_ms=20), sinks=sink) as sched:
        run = replay(sched, n=4, pitch_s=PITCH_S, defective={0, 2}, delay_s=DELAY_S, seed=2)
        time.sleep(DELAY_S + 0.1)
    sink.close()
    writes = server.register_writes(3)
    assert [v for _, v in writes] == [0, 7, 0, 7, 0]  # resting level written on connect
    errors = timing_errors_ms([t for t, v in writes if v == 7], run.dues, PITCH_S / 2)
    assert len(errors) == 2 and max(abs(e) for e in errors) <= TOL_S * 1000


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
    """Rejects due before the PLC is reachable are missed (counted, logged, never replayed);
    after it comes up, pulses are on time; submit never blocks."""
    server.stop()
    defective_early = {0, 3, 5}           # due at ~150..350 ms: PLC still down
    defective_late = {16, 19, 22, 25}      # due at ~790..1150 ms: PLC up since ~500 ms
    rejects_log = capture_logger("test.rejects")
    rejects_log.records.clear()
    with RejectScheduler(_settings(server.port)) as sched:
        t0 = time.monotonic() + 0.05
        import threading
        threading.Timer(t0 + 0.45 - time.monotonic(), server.start).start()
        run = replay(sched, n=28, pitch_s=PITCH_S, defective=defective_early | defective_late,
                     delay_s=DELAY_S, seed=3, t0=t0)
        time.sleep(DELAY_S + 0.15)
        stats = sched.stats()
    late_dues = {s: run.dues[s] for s in defective_late}
    rises = server.rises(0)
    assert len(rises) == len(defective_late)
    errors = timing_errors_ms(rises, late_dues, PITCH_S / 2)
    _report("modbus_after_outage_at_start", errors)
    assert len(errors) == len(defective_late) and max(abs(e) for e in errors) <= TOL_S * 1000
    assert stats["sink_missed"] == len(defective_early)
    assert max(run.submit_s) < 0.005
    assert sorted(r.reject_seq for r in rejects_log.records) == sorted(run.dues)


def test_server_goes_away_mid_run_and_returns(server):
    """fail_safe: alarm -- a reject missed during the outage raises the latched alarm."""
    import threading
    defective_before = {1, 4}          # due ~190, ~310 ms
    defective_during = {10, 13}        # due ~550, ~670 ms; server down 0.45..0.80 s
    defective_after = {20, 23, 26}     # due ~950..1190 ms
    fault_log = capture_logger("test.fault")
    fault_log.records.clear()
    with RejectScheduler(_settings(server.port, fail_safe="alarm")) as sched:
        t0 = time.monotonic() + 0.05
        threading.Timer(t0 + 0.45 - time.monotonic(), server.stop).start()
        threading.Timer(t0 + 0.80 - time.monotonic(), server.start).start()
        run = replay(sched, n=30, pitch_s=PITCH_S,
                     defective=defective_before | defective_during | defective_after,
                     delay_s=DELAY_S, seed=4, t0=t0)
        time.sleep(DELAY_S + 0.15)
        stats = sched.stats()
        alarm = sched.alarm
    rises = server.rises(0)
    ok = {s: run.dues[s] for s in defective_before | defective_after}
    matched = match_pulses(rises, ok, PITCH_S / 2)
    assert all(len(m) == 1 for m in matched.values()), matched
    assert len(rises) == len(ok)
    errors = timing_errors_ms(rises, ok, PITCH_S / 2)
    _report("modbus_mid_run_outage", errors)
    assert max(abs(e) for e in errors) <= TOL_S * 1000
    assert stats["sink_missed"] == len(defective_during)
    assert stats["sink_errors"] >= 1 and stats["alarms"] >= len(defective_during)
    assert alarm is not None and "missed reject" in alarm
    assert any(getattr(r, "fault_active", False) for r in fault_log.records)
    assert max(run.submit_s) < 0.005


def test_late_verdict_never_fires(server):
    """A verdict that comes after its part passed the gate is never sent: it would hit another part."""
    from fair_edge.records import Verdict
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
