"""The reject gates as the console reads them: what it needs of one (``RejectGate``), the counters the live page's PLC
pill sums over them (``PLC_COUNTERS``), and how their latched alarms are named and shown (``named_alarm``: a lane's by
its camera; ``alarm_text``: every gate's in one text, what the page shows and sends back with an acknowledgement;
``alarm_shown``: whether an alarm is one the page showed). Read by ``feed.StationFeed`` (``reject_gates``, ``alarms``,
``state``'s plc) and by the acknowledgement (``actions``, ``alarm_ack``)."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Protocol


class RejectGate(Protocol):
    """A reject gate as the console reads and resets it (``line.scheduler.RejectScheduler``): its ``settings``
    (``sinks``, ``fault_sinks``: URLs), counters (``stats()``), ``to_acknowledge`` (what an acknowledgement clears:
    the latched alarms and the missed pulses of sinks that work, one text; None: nothing), ``fault_reason`` (None:
    its fault output is off) and ``acknowledging()`` (its alarms held still while gates are acknowledged all or
    nothing: yields a ``line.gate_alarms.Acknowledgement``, the text and the ``clear()`` of exactly that)."""

    settings: object
    to_acknowledge: str | None
    fault_reason: str | None

    def stats(self) -> dict[str, int]: ...

    def acknowledging(self) -> contextlib.AbstractContextManager: ...


# the gate counters the live page's PLC pill shows (``StationFeed.state``'s plc): summed over the gates
PLC_COUNTERS = ("pending", "sink_errors", "sink_missed", "sink_unconfirmed", "sink_dropped")


def named_alarm(gate: str, alarm: str) -> str:
    """An alarm as the console shows it: a lane's named by its camera ("lane left: part seq 2 ..."), the station's own
    (gate "") as it is."""
    return f"lane {gate}: {alarm}" if gate else alarm


def alarm_text(alarms: Mapping[str, str]) -> str:
    """What the gates' acknowledgement clears ({gate: alarm}, ``StationFeed.alarms``) as the page shows it and sends
    back with an acknowledgement: each ``named_alarm``, joined by "; " (the station's first); "" none."""
    return "; ".join(named_alarm(gate, alarm) for gate, alarm in alarms.items())


def alarm_shown(gate: str, alarm: str, shown: str) -> bool:
    """Whether ``alarm``, latched on ``gate`` ("" the station's own), is one the page showed: a whole piece of
    ``shown`` (``alarm_text``; the station's own alarm is its first piece)."""
    named = named_alarm(gate, alarm)
    if not gate:
        return shown == named or shown.startswith(named + "; ")
    return f"; {named}; " in f"; {shown}; "
