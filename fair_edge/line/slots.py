"""Pulse slot planning: keep reject pulses ``pulse + min_gap`` apart when verdicts arrive in any
order."""

from __future__ import annotations

import bisect


class SlotPlan:
    """Start times (monotonic s) of planned and recently fired pulses, sorted.

    span_s = pulse width + min gap: two rising edges closer than this would merge or violate the
    actuator's recovery time.
    """

    def __init__(self, span_s: float) -> None:
        self.span_s = span_s
        self._starts: list[float] = []

    def earliest(self, t_wanted: float) -> float:
        """The first start >= t_wanted that is at least span_s from every planned start."""
        t = t_wanted
        for start in self._starts:
            if start + self.span_s <= t:
                continue
            if t + self.span_s <= start:
                break
            t = start + self.span_s
        return t

    def take(self, t_start: float) -> None:
        bisect.insort(self._starts, t_start)

    def prune(self, now: float) -> None:
        """Forget starts that can no longer conflict with anything planned from ``now`` on."""
        cut = bisect.bisect_left(self._starts, now - self.span_s)
        del self._starts[:cut]

    def __len__(self) -> int:
        return len(self._starts)
