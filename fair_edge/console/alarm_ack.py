"""The operator's acknowledgement of latched reject alarms, every gate at once (``StationActions.acknowledge_alarm``):
all or nothing. Each gate's alarms are held still (``RejectScheduler.acknowledging``), every gate's alarm text
(``feed.alarms``: its latched alarms and the missed pulses an acknowledgement clears) is checked against the one the
page showed (``refuse_unseen``: one changed since is refused, nothing cleared), then every gate is cleared
(``acknowledge_gates``); what still holds the fault output afterwards is named (``faults_left``)."""

from __future__ import annotations

import contextlib

from fair_edge.console.reject_gates import alarm_shown, named_alarm
from fair_edge.console.refusals import AlarmChanged


def refuse_unseen(latched: dict[str, str], seen: str | None) -> None:
    """AlarmChanged, before anything is cleared, when a gate's alarm text now ({gate: alarm}, ``feed.alarms``: an
    alarm latched or a pulse missed since changes it) is not one the page showed (``seen``: its alarm text; None:
    any is)."""
    if seen is None:
        return
    unseen = [named_alarm(gate, alarm) for gate, alarm in latched.items() if not alarm_shown(gate, alarm, seen)]
    if unseen:
        raise AlarmChanged(f"alarm: expected the one shown ({seen or 'none'!r}) to be latched, found a newer one: "
                           f"{'; '.join(unseen)}; read it, then acknowledge again (nothing was cleared)")


def acknowledge_gates(gates: dict, seen: str | None) -> dict[str, str]:
    """Clear every gate's alarm text ({gate: ``RejectGate``}, ``feed.reject_gates``' order) all or nothing, checked
    against ``seen`` (the page's text, ``reject_gates.alarm_text``; None: whatever is there): each gate held still
    (``acknowledging``: an alarm latched or a pulse missed meanwhile waits, and is there after), every text checked
    (``refuse_unseen``: AlarmChanged, nothing cleared), then each cleared. Returns {gate: the text it cleared}.
    Checked and cleared gate by gate instead, a gate that latched an alarm between the check and its clear kept it
    while the others were cleared, and the answer was a 409 that had cleared them."""
    with contextlib.ExitStack() as stack:
        held = {gate: stack.enter_context(scheduler.acknowledging()) for gate, scheduler in gates.items()}
        latched = {gate: ack.text for gate, ack in held.items() if ack.text}
        refuse_unseen(latched, seen)
        for gate in latched:
            held[gate].clear()
    return latched


def faults_left(gates: dict, lanes: bool) -> str:
    """Why the fault output is still on after an acknowledgement, as the gates tell it ('' none): the station's gate's
    reason (the camera, the backend, a sink down...); with lanes (``lanes``), each lane's own fault left, named (the
    station's others: the live page's fault pill, from the station's next tick)."""
    if not lanes:
        return next(iter(gates.values())).fault_reason or ""
    return "; ".join(named_alarm(gate, reason) for gate, scheduler in gates.items()
                     if gate and (reason := scheduler.fault_reason))
