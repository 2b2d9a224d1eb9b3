"""Where the belt was at a past time: the good readings a ``polled_encoder.PolledEncoder`` keeps (``ReadingHistory``),
so that a part is placed where the belt was when its frame was exposed (``Frame.t_capture``), not when the frame was
handed over (a camera that held a frame, a GigE resend).

The readings of the last ``HISTORY_S`` are kept, each stamped when the PLC most likely read its counter
(``ReadingHistory.sampled_at``: when the request went out + half the shortest round trip seen; on the encoder's
``clock()``, by default ``time.monotonic()``, the clock cameras stamp ``Frame.t_capture`` on). A time between two of
them is answered by interpolating (``ReadingHistory.mark_within``); after the newest, the encoder extrapolates at the
belt speed measured over them (``ReadingHistory.speed``).
"""

from __future__ import annotations

import collections
import math
from typing import NamedTuple

SPEED_SPAN_S = 0.1        # the belt speed is measured over readings at least this far apart (s)
HISTORY_S = 5.0           # mark_at(): the readings of the last this many seconds are kept ...
HISTORY_MAX = 20_000      # ... at most this many (a poll_ms under HISTORY_S / HISTORY_MAX keeps less time)


class Reading(NamedTuple):
    """One good reading kept for ``PolledEncoder.mark_at``. t: when the PLC most likely read its counter (clock()
    seconds: ``ReadingHistory.sampled_at``); count: the unwrapped count; epoch: the position epoch it counts in;
    resumed: the first reading after a link outage (the belt between it and the reading before went unseen)."""

    t: float
    count: int
    epoch: int
    resumed: bool


class ReadingHistory:
    """The good readings of the last ``HISTORY_S`` (at most ``HISTORY_MAX``), oldest first, and the shortest read
    round trip seen. Not locked: its encoder calls it holding its own lock."""

    def __init__(self) -> None:
        self._readings: collections.deque[Reading] = collections.deque(maxlen=HISTORY_MAX)   # oldest first
        self._rtt_min = math.inf             # the shortest read round trip seen (s): sampled_at

    def newest(self) -> Reading | None:
        """The newest reading kept; None before the first."""
        return self._readings[-1] if self._readings else None

    def keep(self, t: float, t_asked: float | None, count: int, epoch: int, resumed: bool) -> None:
        """Keep a good reading (its reply taken up at clock() ``t``, its request sent at ``t_asked``, None: ``t``),
        stamped when the counter was most likely read (``sampled_at``); forget the readings more than ``HISTORY_S``
        older."""
        reading = Reading(self.sampled_at(t, t_asked), count, epoch, resumed)
        self._readings.append(reading)
        while reading.t - self._readings[0].t > HISTORY_S:
            self._readings.popleft()

    def sampled_at(self, t: float, t_asked: float | None) -> float:
        """When the PLC most likely read its counter for a reading whose request went out at ``t_asked`` and whose
        reply was taken up at ``t``: half the shortest round trip seen since start after the request went out (an
        uncontended read's reply comes mid-way), never after ``t``. The time the reply was taken up is late by
        however long the poll thread waited for the interpreter on a loaded machine (tens of ms: at 8000 counts/s,
        hundreds of counts); the request goes out right after ``t_asked``."""
        if t_asked is None:
            return t
        self._rtt_min = min(self._rtt_min, max(0.0, t - t_asked))
        return min(t, t_asked + self._rtt_min / 2)

    def speed(self, measured: float | None) -> float | None:
        """The belt speed, counts/s, over the readings kept from the newest back to the first at least
        ``SPEED_SPAN_S`` older in its epoch (their stamps are when the counter was read: ``sampled_at``; the
        ``measured`` speed, on the poll thread's clock, is off by however late it took replies up); ``measured``
        when no reading kept is that old in the newest one's epoch. Needs a reading kept."""
        newest = self._readings[-1]
        for older in reversed(self._readings):
            if older.epoch != newest.epoch:
                break
            if newest.t - older.t >= SPEED_SPAN_S:
                return (newest.count - older.count) / (newest.t - older.t)
        return measured

    def mark_within(self, t: float, fresh_s: float, stale_s: float) -> tuple[tuple[int | None, int], float]:
        """``(count, epoch)`` at ``t``, before the newest reading (``PolledEncoder.mark_at``'s rules), and how long
        before the oldest reading kept ``t`` is when it is (s; 0.0: it is not, or within ``fresh_s`` of it).
        stale_s: two readings further apart saw no belt between them (a read hung). Needs a reading kept."""
        later = self._readings[-1]
        for earlier in reversed(self._readings):
            if earlier.t <= t:
                break
            later = earlier
        else:   # t is before the oldest reading kept (later is that one)
            ahead = later.t - t
            if ahead <= fresh_s:
                return (later.count, later.epoch), 0.0
            return (None, later.epoch), ahead
        if later.resumed or later.t - earlier.t > stale_s:
            return (None, earlier.epoch), 0.0
        if later.epoch != earlier.epoch:
            return (earlier.count, earlier.epoch), 0.0
        share = (t - earlier.t) / (later.t - earlier.t)
        return (earlier.count + round(share * (later.count - earlier.count)), earlier.epoch), 0.0
