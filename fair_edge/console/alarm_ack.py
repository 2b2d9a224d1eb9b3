"""The operator's acknowledgement of latched reject alarms, gate by gate (``StationActions.acknowledge_alarm``): an
alarm latched since the page showed its own is refused before anything is cleared (``refuse_unseen``), each gate is
reset against the alarm the page showed of it (``clear_alarms``), and what still holds the fault output afterwards
is named (``faults_left``)."""

from __future__ import annotations

from fair_edge.console.feed import alarm_shown, named_alarm
from fair_edge.console.refusals import AlarmChanged
from fair_edge.errors import ConfigError


def refuse_unseen(latched: dict[str, str], seen: str | None) -> None:
    """AlarmChanged, before anything is cleared, when an alarm latched now ({gate: alarm}, ``feed.alarms``) is not
    one the page showed (``seen``: its alarm text; None: any is)."""
    if seen is None:
        return
    unseen = [named_alarm(gate, alarm) for gate, alarm in latched.items() if not alarm_shown(gate, alarm, seen)]
    if unseen:
        raise AlarmChanged(f"alarm: expected the one shown ({seen or 'none'!r}) to be latched, found a newer one: "
                           f"{'; '.join(unseen)}; read it, then acknowledge again (nothing was cleared)")


def clear_alarms(gates: dict, shown: dict[str, str] | None) -> tuple[dict[str, str], str]:
    """Reset each gate's alarm (``acknowledge_alarm``), each against the alarm the page showed of it (``shown``: {gate:
    alarm}, those ``refuse_unseen`` found shown; a gate not in it against none; None: whatever is latched). Returns
    ({gate: the alarm it cleared}, the refusal of a gate that latched a newer alarm since: "" none; that gate keeps
    it, the others are cleared)."""
    cleared, newer = {}, []
    for gate, scheduler in gates.items():
        try:
            old = scheduler.acknowledge_alarm(None if shown is None else shown.get(gate, ""))
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
