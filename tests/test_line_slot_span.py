"""The reject gate plans its pulse slots with the widest pulse its sinks drive (a URL's pulse_ms over
reject.pulse_ms), not with reject.pulse_ms alone: no timing is asserted, only the plan and the gate's decisions,
which follow from the parts' due times."""

from __future__ import annotations

import time

import pytest

from fair_edge.line.gate_sinks import slot_span_s
from fair_edge.line.scheduler import RejectScheduler
from fair_edge.line.settings import RejectSettings
from fair_edge.line.sim_sink_plc import SimulatedPlc
from fair_edge.line.sinks import FanOut, open_fanout
from fair_edge.records import Verdict
from line_replay import RecordingSink

DELAY_MS = 500   # capture -> gate: the verdicts below are submitted microseconds after capture, always in time


@pytest.fixture()
def plc():
    server = SimulatedPlc().start()
    yield server
    server.close()


def _coil(plc: SimulatedPlc, coil: int, **options: object) -> str:
    extra = "".join(f"&{k}={v}" for k, v in options.items())
    return f"modbus://127.0.0.1:{plc.port}?unit=1&coil={coil}{extra}"


@pytest.mark.parametrize("url_pulses, expected_ms", [
    ((5, None), 50 + 20),     # a sink without its own pulse_ms drives reject.pulse_ms: the widest
    ((5, 30), 30 + 20),       # both URLs narrower than reject.pulse_ms: the wider of theirs
    ((80, 5), 80 + 20),       # one URL wider than reject.pulse_ms: its width
    ((0, 0), 0 + 20),         # pulse_ms=0 (the PLC clears the output): min_gap_ms only
])
def test_the_slot_is_the_widest_pulse_a_reject_sink_drives_plus_min_gap(plc, url_pulses, expected_ms):
    settings = RejectSettings(pulse_ms=50.0, min_gap_ms=20.0, delay_ms=DELAY_MS,
                              sinks=tuple(_coil(plc, i, **({} if w is None else {"pulse_ms": w}))
                                          for i, w in enumerate(url_pulses)) + ("log://",))
    with open_fanout(settings.sinks, settings.pulse_ms) as fan:
        assert slot_span_s(settings, fan) == pytest.approx(expected_ms / 1000.0)


def test_sinks_that_drive_no_timed_output_leave_the_slot_to_reject_pulse_ms():
    settings = RejectSettings(pulse_ms=40.0, min_gap_ms=10.0)
    assert slot_span_s(settings, FanOut([RecordingSink()])) == pytest.approx(0.05)
    with open_fanout(("log://",), settings.pulse_ms) as fan:
        assert slot_span_s(settings, fan) == pytest.approx(0.05)


def _decide_two_ng_parts(settings: RejectSettings, pitch_s: float) -> list[str]:
    """Two NG parts ``pitch_s`` apart through a gate whose sinks are opened from ``settings.sinks``: their
    decisions (gate outcomes), which depend only on their due times and the slot plan."""
    with RejectScheduler(settings) as gate:
        t0 = time.monotonic()
        for seq, t_capture in enumerate((t0, t0 + pitch_s)):
            gate.note_capture(seq, t_capture)
            gate.submit(Verdict(seq, t_capture, 0.9, 0.5, True, time.monotonic()))
        deadline = time.monotonic() + DELAY_MS / 1000.0 + 10.0
        while any(gate.decision(seq) is None for seq in (0, 1)) and time.monotonic() < deadline:
            time.sleep(0.005)
        return [gate.decision(seq) for seq in (0, 1)]


def test_a_short_url_pulse_is_not_spaced_for_reject_pulse_ms(plc):
    """pulse_ms=5 on the URL + min_gap 20 = 25 ms fits a 33 ms pitch; planned with reject.pulse_ms (50) every
    second part was refused as gap_missed (the audit's gap_span.py: 33 of 60 NG parts not rejected)."""
    settings = RejectSettings(sinks=(_coil(plc, 0, pulse_ms=5),), delay_ms=DELAY_MS, pulse_ms=50.0,
                              min_gap_ms=20.0, late_ms=10.0)
    assert _decide_two_ng_parts(settings, pitch_s=0.033) == ["rejected_ng", "rejected_ng"]


def test_a_long_url_pulse_is_never_overlapped_by_the_next(plc):
    """pulse_ms=80 on the URL: a part 50 ms behind cannot get its own pulse (it would fall inside the first):
    gap_missed, alarmed; planned with reject.pulse_ms (5) both were fired, the second edge inside the first pulse."""
    settings = RejectSettings(sinks=(_coil(plc, 0, pulse_ms=80),), delay_ms=DELAY_MS, pulse_ms=5.0,
                              min_gap_ms=20.0, late_ms=10.0)
    assert _decide_two_ng_parts(settings, pitch_s=0.050) == ["rejected_ng", "gap_missed"]
