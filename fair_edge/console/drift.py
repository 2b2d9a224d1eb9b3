"""Drift watch: are recent normal parts still scored like the normal images the bundle was calibrated on?

Statistic: the population stability index (PSI) of the recent normal scores against the
calibration distribution stored in the bundle (``Threshold.normal_quantiles``, percentiles 0..100
of the held-out normal scores). The calibration deciles cut the score axis into 10 bins that each
held 10 % of the calibration scores (the outer bins are open-ended); with ``a_i`` the share of
recent scores in bin i and ``e_i = 0.1``:

    PSI = sum_i (a_i - e_i) * ln(a_i / e_i),     a_i floored at 0.5 / n to stay finite.

PSI is 0 for the same distribution and grows with any shift of location or spread. The usual
reading, kept here as the default alarm level: < 0.1 stable, 0.1 .. 0.25 moving, >= 0.25 drifted
(``console.drift_alarm``). "Recent normal parts": the last ``drift_window`` inspected parts,
less those an operator confirmed as defects or misses and those without a score; at least
``drift_min_parts`` of them before a value is given. A lighting change, a dirty lens or a new
material batch moves the whole normal distribution long before the reject rate says so.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass

import numpy as np

DECILES = tuple(range(10, 100, 10))


def psi(recent: np.ndarray, calibration_quantiles: np.ndarray) -> float:
    """PSI of ``recent`` scores (N,) float against the calibration percentiles (101,) float."""
    edges = np.asarray(calibration_quantiles, dtype=np.float64)[list(DECILES)]
    counts = np.bincount(np.searchsorted(edges, np.asarray(recent, np.float64), side="right"), minlength=10)
    n = max(int(counts.sum()), 1)
    actual = np.maximum(counts / n, 0.5 / n)
    return float(np.sum((actual - 0.1) * np.log(actual / 0.1)))


@dataclass(frozen=True)
class DriftState:
    """psi: the statistic (None until enough parts or without a calibration distribution);
    parts: recent normal scores used; alarm: psi >= level; note: why there is no value."""

    psi: float | None
    parts: int
    level: float
    alarm: bool
    note: str = ""

    def to_dict(self) -> dict:
        return {"psi": self.psi, "parts": self.parts, "level": self.level, "alarm": self.alarm, "note": self.note}


class DriftWatch:
    """Collects scores of inspected parts (``observe``, O(1), called by the loop) and computes the
    PSI on demand (``state``, any thread). ``exclude(key)`` drops a part reviewed as a defect; a key is
    the view's ``(camera, seq)`` (``feed.view_key``)."""

    def __init__(self, quantiles, window: int = 500, min_parts: int = 100, level: float = 0.25) -> None:
        self.quantiles = np.asarray(quantiles, np.float64) if len(quantiles) == 101 else None
        self.window, self.min_parts, self.level = window, min_parts, level
        self._scores: deque[tuple[tuple[str, int], float]] = deque(maxlen=window)
        self._excluded: set[tuple[str, int]] = set()
        self._lock = threading.Lock()

    def observe(self, key: tuple[str, int], score: float | None) -> None:
        if score is not None and math.isfinite(score):
            self._scores.append((key, score))

    def exclude(self, key: tuple[str, int]) -> None:
        with self._lock:
            self._excluded.add(key)

    def reset(self, quantiles) -> None:
        """A new model: its own calibration distribution, and scores of the old one forgotten."""
        with self._lock:
            self.quantiles = np.asarray(quantiles, np.float64) if len(quantiles) == 101 else None
            self._scores.clear()

    def state(self) -> DriftState:
        with self._lock:
            excluded, quantiles = set(self._excluded), self.quantiles
        recent = np.array([s for key, s in list(self._scores) if key not in excluded])
        if quantiles is None:
            return DriftState(None, recent.size, self.level, False,
                              "the bundle stores no calibration distribution; rebuild it with `fair-edge build`")
        if recent.size < self.min_parts:
            return DriftState(None, recent.size, self.level, False,
                              f"waiting for {self.min_parts} normal parts ({recent.size} so far)")
        value = psi(recent, quantiles)
        return DriftState(value, recent.size, self.level, value >= self.level)
