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

A station of several cameras watches each camera on its own (``CameraDrift``: one ``DriftWatch`` per camera,
against the calibration of the bundle that camera runs): a dirty lens on one camera moves that camera's
scores only. What the station shows as one value is the worst camera's (the highest PSI), named.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

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
    parts: recent normal scores used; alarm: psi >= level; note: why there is no value; camera: which camera's
    state this is, in a combined state of several cameras ("" for one camera's own)."""

    psi: float | None
    parts: int
    level: float
    alarm: bool
    note: str = ""
    camera: str = ""

    def to_dict(self) -> dict:
        return {"psi": self.psi, "parts": self.parts, "level": self.level, "alarm": self.alarm, "note": self.note,
                **({"camera": self.camera} if self.camera else {})}


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

    def include(self, key: tuple[str, int]) -> None:
        """Undo ``exclude``: a review corrected from defect to false reject counts the part again."""
        with self._lock:
            self._excluded.discard(key)

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


class CameraDrift:
    """One ``DriftWatch`` per camera, each against its own bundle's calibration distribution.

    quantiles: camera -> that camera's calibration percentiles ((101,) float; () = none, a watch whose state
    says so), in the station file's order; one camera: {"": quantiles}. A part's key ``(camera, seq)`` picks
    its camera's watch. ``state()`` is the combined one (the worst camera), ``states()`` each camera's."""

    def __init__(self, quantiles: Mapping[str, Sequence[float]], window: int = 500, min_parts: int = 100,
                 level: float = 0.25) -> None:
        self.window, self.min_parts, self.level = window, min_parts, level
        self.watches: dict[str, DriftWatch] = {camera: self._new(q) for camera, q in quantiles.items()}

    def _new(self, quantiles: Sequence[float]) -> DriftWatch:
        return DriftWatch(quantiles, self.window, self.min_parts, self.level)

    def cover(self, cameras: Sequence[str]) -> None:
        """Watch exactly ``cameras`` (in this order): a camera already watched keeps its watch, a new one gets
        a watch without a calibration distribution; watches of other cameras (one camera's "") are dropped."""
        self.watches = {c: self.watches.get(c) or self._new(()) for c in cameras}

    def observe(self, key: tuple[str, int], score: float | None) -> None:
        """A part's score to its camera's watch (O(1)); a camera first seen here gets a watch without a
        calibration distribution, which its state says (never a score dropped unseen)."""
        watch = self.watches.get(key[0])
        if watch is None:
            watch = self._new(())
            self.watches = {**self.watches, key[0]: watch}   # a new dict: readers iterate a consistent one
        watch.observe(key, score)

    def exclude(self, key: tuple[str, int]) -> None:
        """Drop a part reviewed as a defect from its camera's watch."""
        watch = self.watches.get(key[0])
        if watch is not None:
            watch.exclude(key)

    def include(self, key: tuple[str, int]) -> None:
        """Count a part again in its camera's watch (a review corrected from defect to a normal label)."""
        watch = self.watches.get(key[0])
        if watch is not None:
            watch.include(key)

    def reset(self, camera: str, quantiles: Sequence[float]) -> None:
        """``camera`` runs a new model: its watch starts over on that model's distribution (a camera not watched
        yet gets a watch on it); the others go on."""
        watch = self.watches.get(camera)
        if watch is None:
            self.watches = {**self.watches, camera: self._new(quantiles)}
        else:
            watch.reset(quantiles)

    def states(self) -> dict[str, DriftState]:
        """Each camera's own state, in the watches' order."""
        return {camera: watch.state() for camera, watch in list(self.watches.items())}

    def state(self) -> DriftState:
        """The combined state: one camera's own; with several, the worst camera's (in alarm first, then the
        highest PSI, then the first in order when none has a value), with ``camera`` naming it."""
        states = self.states()
        if len(states) == 1:
            return next(iter(states.values()))
        if not states:
            return DriftState(None, 0, self.level, False, "no camera is watched")
        camera = max(states, key=lambda c: (states[c].alarm, states[c].psi is not None, states[c].psi or 0.0))
        return replace(states[camera], camera=camera)

    def alarms(self) -> dict[str, DriftState]:
        """The cameras in alarm now, with their states."""
        return {camera: state for camera, state in self.states().items() if state.alarm}


def alarm_reason(alarms: Mapping[str, DriftState]) -> str:
    """The fault output's reason for these cameras in alarm ("" for none), e.g.
    ``drift: PSI 0.412 >= 0.25`` (one camera) or ``drift: camera b PSI 0.412, camera c PSI 0.300 >= 0.25``."""
    if not alarms:
        return ""
    level = next(iter(alarms.values())).level
    named = ", ".join(f"{'camera ' + c + ' ' if c else ''}PSI {s.psi:.3f}" for c, s in alarms.items())
    return f"drift: {named} >= {level}"
