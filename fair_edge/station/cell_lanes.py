"""A ``group.by: lane`` cell's reject gates as the station reports them: their counters summed into the
station's (``lane_totals``), each lane's fault named (``lane_reason``) in the summary's ``fault_output``
(``lanes_fault_output``) and, from the loop's tick, on the station's fault output (``LaneWatch``), watched
with every camera's ``CameraWatch`` (``CellWatch``); at the stop they close together (``line_side.close_gates``)."""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from typing import Iterable

from fair_edge.station.camera import CameraWatch
from fair_edge.station.inspector import Inspector

log = logging.getLogger("fair_edge.station.cell")   # the cell's logger: a lane's fault lines keep its name


def lane_totals(station: dict, lanes: Iterable[dict[str, int]]) -> dict[str, int]:
    """Each gate counter (``RejectScheduler.stats``: ``rejected_ng``, ``passed_uninspected``, ``pending``, ...) summed
    over the lanes' gates (``lanes``: each one's ``stats()``) and the station's own (``station``: its top-level
    counters, absent without ``reject.fault_sinks``; it gates no part, its fault sinks' ``sink_*`` reports count)."""
    totals: Counter[str] = Counter()
    for counters in lanes:
        totals.update(counters)
    return {key: station.get(key, 0) + n for key, n in totals.items()}


def lane_reason(name: str, reason: str) -> str:
    """A lane's fault as the station names it (fault output, STATUS, MQTT, console, summary): ``lane a: REASON``."""
    return f"lane {name}: {reason}"


def lanes_fault_output(station: str, lanes: dict[str, dict]) -> str:
    """The summary's ``fault_output`` for a lane station: the station gate's reason (``station``; '' off or none),
    then each lane whose fault is on (``lanes``: camera -> its summary entry, ``fault_output``), named
    (``lane_reason``) unless the station's reason names it already (``LaneWatch`` put it there at the last tick)."""
    reasons = [station] if station else []
    for name, counters in lanes.items():
        named = lane_reason(name, counters["fault_output"])
        if counters["fault_output"] and named not in station:
            reasons.append(named)
    return "; ".join(reasons)


@dataclasses.dataclass
class LaneWatch:
    """One ``by: lane`` camera's reject gate, watched like a camera from the loop's tick: while the lane's own
    fault is on (its reject output down, missed or stuck, a latched alarm, the encoder link down), the station's
    fault output (``reject.fault_sinks``), systemd's STATUS, MQTT and the console name it ("lane top: ...").
    A lane holds no fault output of its own, so before this its faults were only in the log and the summary."""

    name: str
    lane: object                     # the lane's RejectScheduler (``fault_reason``)
    channel: object | None           # a FaultBoard channel (None without a gate to hold)
    reason: str = ""

    def __call__(self, _inspector: Inspector | None = None) -> str:
        own = self.lane.fault_reason
        reason = lane_reason(self.name, own) if own else ""
        if reason != self.reason:
            if reason:
                log.error("reject lane %s faulted: %s", self.name, own)
            elif self.reason:
                log.warning("reject lane %s: fault cleared", self.name)
            if self.channel is not None:
                self.channel.fault(bool(reason), reason)
            self.reason = reason
        return reason


@dataclasses.dataclass(frozen=True)
class CellWatch:
    """Every camera's ``CameraWatch`` and every lane's ``LaneWatch``: called from the loop's tick (each fault named
    on its own channel); ``reason``, what the console shows, reads the last reasons without changing anything."""

    watches: list[CameraWatch | LaneWatch]

    def __call__(self, _inspector: Inspector | None = None) -> str:
        return "; ".join(r for r in (w() for w in self.watches) if r)

    @property
    def reason(self) -> str:
        return "; ".join(w.reason for w in self.watches if w.reason)
