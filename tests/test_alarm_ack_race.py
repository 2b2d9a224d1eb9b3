"""An acknowledgement of several gates' alarms (``group.by: lane``) is all or nothing. Each gate was checked against
the page's text, then cleared in turn: lane b latching an alarm between the check and its own clear kept it (right)
while lane a was cleared and audited, and the answer was a 409 saying "nothing was cleared" and then that lane a's
alarm was. Now every gate is held still from the check to the clear (``RejectScheduler.acknowledging``): an alarm
latched in that moment waits and is latched after, the acknowledgement clears what the page showed, and a 409 means
nothing was cleared.

The interleaving is forced by a line tracer: when the acknowledgement's check (``alarm_ack.refuse_unseen``) returns,
another thread latches lane b's alarm, and the acknowledgement waits for it unless it holds lane b's alarms itself
(then the alarm can only latch after they are let go)."""

from __future__ import annotations

import sys
import threading

import pytest

from line_replay import RecordingSink
from test_alarms_latched import audited, console_of, shown_alarm
from test_console_units import api

from fair_edge.line.scheduler import RejectScheduler
from fair_edge.line.settings import RejectSettings

SEEN_A, SEEN_B = "part seq 3 passed the gate uninspected", "part seq 4 passed the gate uninspected"
NEWER_B = "part seq 9 refused: 1024 parts already between camera and gate"


@pytest.fixture
def lanes():
    gates = {name: RejectScheduler(RejectSettings(delay_ms=100, pulse_ms=20, fail_safe="alarm"),
                                   sinks=RecordingSink(f"plc-{name}")) for name in ("a", "b")}
    yield gates
    for gate in gates.values():
        gate.close()


def latch_after_the_check(gate: RejectScheduler, reason: str) -> list[threading.Thread]:
    """A tracer (for this thread and threads started from now on) that, when ``refuse_unseen`` returns, starts a
    thread latching ``reason`` on ``gate`` and waits for it unless this thread holds ``gate``'s alarms (an RLock it
    owns: the latch waits for it). Returns the list the racing thread is put in (one at most)."""
    racers: list[threading.Thread] = []

    def tracer(frame, event, arg):
        if frame.f_code.co_name != "refuse_unseen":
            return None
        if event == "return" and not racers:
            racer = threading.Thread(target=gate._raise_alarm, args=(reason,))
            racers.append(racer)
            racer.start()
            if not gate._alarms._lock._is_owned():   # nothing holds b's alarms: it latches now, before any clear
                racer.join()
        return tracer

    sys.settrace(tracer)
    threading.settrace(tracer)
    return racers


def test_an_alarm_latched_between_the_check_and_the_clear_is_kept_and_the_acknowledgement_is_whole(tmp_path, lanes):
    """Lanes a and b each show an alarm; lane b latches a newer one right after the check. The acknowledgement clears
    both alarms shown (200, audited with both), and lane b's newer alarm is latched after it, to be acknowledged."""
    lanes["a"]._raise_alarm(SEEN_A)
    lanes["b"]._raise_alarm(SEEN_B)
    console = console_of(tmp_path, lanes=lanes)
    shown = shown_alarm(console)
    assert shown == f"lane a: {SEEN_A}; lane b: {SEEN_B}"
    tracing = sys.gettrace(), threading.gettrace()
    racers = latch_after_the_check(lanes["b"], NEWER_B)
    try:
        r = api(console).post("/api/acknowledge_alarm", json={"who": "ann", "alarm": shown})
    finally:
        sys.settrace(tracing[0])
        threading.settrace(tracing[1])
    assert len(racers) == 1   # the tracer fired
    racers[0].join()
    # before: 409 "... (nothing was cleared) (the alarms shown were cleared: lane a: ...)", lane a cleared, b kept both
    assert r.status_code == 200 and r.json()["old"] == shown, r.text
    assert audited(console) == [("ann", shown)]
    assert lanes["a"].alarm is None and lanes["b"].alarm == NEWER_B
    assert shown_alarm(console) == f"lane b: {NEWER_B}"   # shown, for the next acknowledgement
