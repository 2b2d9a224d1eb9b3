"""Parts the gate refused a pulse (``gap_missed``: too close to the previous one) and pulses the sinks missed were
counted in ``summary.json`` and shown nowhere: an overloaded run (60 parts/s, 180 NG) ended with ``gap_missed: 204``
and a run table reading "rejects: NG / uninspected 92 / 66". The run table (``reject_rows``, the live table and the
summary both) and the console's counters now show them."""

from __future__ import annotations

import time

from fair_edge.cli.run import reject_rows
from fair_edge.console.feed import StationFeed
from fair_edge.console.settings import ConsoleSettings
from fair_edge.line.scheduler import SCHEDULED, RejectScheduler
from fair_edge.line.settings import RejectSettings
from fair_edge.records import Verdict
from line_replay import RecordingSink

SINK = "modbus 127.0.0.1:502 unit 1 coil 0"
GAP_ROW = "[bold red]not rejected: too close to the previous pulse (gap_missed)[/]"
PULSES_ROW = "pulses delivered / missed / unconfirmed"


def overloaded_rejects(gap_missed: int = 204, missed: int = 28, unconfirmed: int = 0) -> dict:
    """``RunSummary.rejects`` of the overload audit's run (its summary.json), with the gate's ``gap_missed`` and the
    sink's missed / unconfirmed pulses as given."""
    delivered = 158 - missed - unconfirmed
    return {"captured": 901, "verdicts": 719, "ng": 180, "passed": 539, "rejected_ng": 92, "rejected_uninspected": 66,
            "passed_uninspected": 0, "gap_missed": gap_missed, "position_lost": 0, "late_verdicts": 0, "fired": 158,
            "alarms": gap_missed, "sink_missed": missed, "sink_unconfirmed": unconfirmed, "sink_errors": 0,
            "sink_dropped": 0, "pending": 0, "fault_output": "",
            "sinks": {SINK: {"pulses": 158, "delivered": delivered, "missed": missed, "unconfirmed": unconfirmed,
                             "dropped": 0}}}


def test_the_run_table_counts_parts_refused_a_pulse_and_missed_pulses_in_red():
    rows = dict(reject_rows(overloaded_rejects(gap_missed=204, missed=28, unconfirmed=3)))
    assert rows.get(GAP_ROW) == 204, list(rows)
    assert rows[PULSES_ROW] == "[bold red]127 / 28 / 3[/]"
    assert rows["rejects: NG / uninspected"] == "92 / 66"


def test_the_run_table_leaves_the_gap_row_out_and_the_pulses_plain_while_none_was_missed():
    rows = dict(reject_rows(overloaded_rejects(gap_missed=0, missed=0)))
    assert not [name for name in rows if "gap_missed" in name]
    assert rows[PULSES_ROW] == "158 / 0 / 0"


def test_the_consoles_counters_carry_the_gates_refused_pulses_and_late_verdicts(tmp_path):
    """Two NG parts 5 ms apart on a gate of 20 ms pulses 10 ms apart: the second is refused its pulse
    (``gap_missed``), and the console's counters say so."""
    settings = RejectSettings(delay_ms=500, pulse_ms=20, min_gap_ms=10, late_ms=10)
    feed = StationFeed(ConsoleSettings(port=0), tmp_path)
    with RejectScheduler(settings, sinks=RecordingSink(), fault_sinks=RecordingSink("fault")) as scheduler:
        feed.attach(None, None, scheduler)
        assert (feed.counters()["gap_missed"], feed.counters()["late_verdicts"]) == (0, 0)
        t = time.monotonic()
        for seq, t_capture in ((1, t), (2, t + 0.005)):
            assert scheduler.submit(Verdict(seq, t_capture, 0.9, 0.5, True, time.monotonic())) == SCHEDULED
        assert scheduler.wait_idle(10.0)
        assert scheduler.stats()["gap_missed"] == 1
        assert (feed.counters()["gap_missed"], feed.counters()["late_verdicts"]) == (1, 0)
