"""The operator's acknowledgement of latched reject alarms, gate by gate (``StationActions.acknowledge_alarm``): a
gate's alarm text (``feed.alarms``: its latched alarms and the missed pulses an acknowledgement clears) changed since
the page showed it is refused before anything is cleared (``refuse_unseen``), each gate the page showed is reset
against the text it showed of it, the others are left alone (``clear_alarms``), and what still holds the fault
output afterwards is named (``faults_left``)."""

from __future__ import annotations

from fair_edge.console.feed import alarm_shown, named_alarm
from fair_edge.console.refusals import AlarmChanged
from fair_edge.errors import ConfigError


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


def clear_alarms(gates: dict, shown: dict[str, str] | None) -> tuple[dict[str, str], str]:
    """Reset the gates the page showed an alarm of (``acknowledge_alarm``), each against the text it showed of it
    (``shown``: {gate: alarm}, those ``refuse_unseen`` found shown; a gate not in it is not touched: a pulse it missed
    since stays; None: every gate, whatever it holds). Returns ({gate: the text it cleared}, the refusal of a gate
    whose text changed since: "" none; that gate keeps it all, the others are cleared)."""
    cleared, newer = {}, []
    for gate, scheduler in gates.items():
        if shown is not None and gate not in shown:
            continue
        try:
            old = scheduler.acknowledge_alarm(None if shown is None else shown[gate])
        except ConfigError as exc:   # latched since the page showed its own: kept
            newer.append(named_alarm(gate, str(exc)))
            continue
        if old:
            cleared[gate] = old
    return cleared, "; ".join(newer)


def faults_left(gates: dict, lanes: bool) -> str:
    """Why the fault output is still on after an acknowledgement, as the gates tell it ('' none): the station's gate's
    reason (the camera, the backend, a sink down...); with lanes (``lanes``), each lane's own fault left, named (the
    station's others: the live page's fault pill, from the station's next tick)."""
    if not lanes:
        return next(iter(gates.values())).fault_reason or ""
    return "; ".join(named_alarm(gate, reason) for gate, scheduler in gates.items()
                     if gate and (reason := scheduler.fault_reason))
