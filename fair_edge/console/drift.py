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
``drift_min_parts`` of them before a value is given (at most ``drift_window``: the station file's ``console:`` is
refused otherwise, ``ConsoleSettings.check_drift``, as such a watch would wait for ever). A lighting change, a dirty
lens or a new material batch moves the whole normal distribution long before the reject rate says so.

Noise floor. Both samples are finite: the deciles come from the ``n_calib`` held-out normals the bundle was
calibrated on (``Threshold.n_normal``, often only ~60), the recent share from ``n`` parts. On a perfectly stable
line PSI is then about chi-square(9) / n_eff, 1 / n_eff = 1 / n + 1 / n_calib (mean 9 / n_eff: 0.17 for 59
calibration normals and 500 parts), and each bundle's deciles are fixed, so a bundle with unlucky deciles would
read "drifted" for ever. The watch therefore alarms when

    PSI >= alarm_at = max(level, noise),     noise = 27.88 / n_eff,

27.88 being the 99.9th percentile of chi-square(9). The chi-square reading understates PSI's upper tail
for windows of 50..200 parts (the log term), which is why the 99.9th and not the 99th percentile: measured on
a stable line (scores drawn from the calibration distribution), the alarm rate is <= 0.6 % for 30..500
calibration normals and 20..1000 parts (PSI >= level alone alarms on 16 % of bundles calibrated on 59
normals, 55 % on 30, with 500 parts). Where ``noise`` is below the level (large calibrations and windows,
e.g. 500 normals and 500 parts: 0.11) the rule is the plain level. A real drift still alarms: with 59
calibration normals and 500 parts (alarm_at 0.53), a mean shift of one standard deviation of the normal scores
(Gamma(4, 0.05) in the simulation, PSI 1.2 .. 2.4 in 90 % of bundles) alarmed in 100 % of 1000 bundles, one
of half a standard deviation in 57 % (the plain level: 96 %, at the price of the false alarms above).
The state keeps the raw PSI and shows both ``noise`` and ``alarm_at``, what the PSI was compared with.

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
NOISE_CHI2 = 27.88   # the 99.9th percentile of chi-square with 9 (= 10 bins - 1) degrees of freedom


def psi(recent: np.ndarray, calibration_quantiles: np.ndarray) -> float:
    """PSI of ``recent`` scores (N,) float against the calibration percentiles (101,) float."""
    edges = np.asarray(calibration_quantiles, dtype=np.float64)[list(DECILES)]
    counts = np.bincount(np.searchsorted(edges, np.asarray(recent, np.float64), side="right"), minlength=10)
    n = max(int(counts.sum()), 1)
    actual = np.maximum(counts / n, 0.5 / n)
    return float(np.sum((actual - 0.1) * np.log(actual / 0.1)))


def noise_floor(parts: int, calibration_n: int) -> float:
    """A stable line's PSI noise: NOISE_CHI2 * (1 / parts + 1 / calibration_n), for ``parts`` recent scores against
    the deciles of ``calibration_n`` calibration scores (both >= 1); a stable line's PSI exceeds it in <= 0.6 % of
    windows (see the module docstring)."""
    return NOISE_CHI2 * (1.0 / parts + 1.0 / calibration_n)


@dataclass(frozen=True)
class Reference:
    """What a drift watch compares recent scores with. quantiles: the calibration percentiles 0..100 of the
    held-out normal scores ((101,) float, score units; () = none); n: how many normal scores they were computed from
    (``Threshold.n_normal``, which every stored threshold has), the calibration term of the noise floor."""

    quantiles: tuple[float, ...] = ()
    n: int = 0

    @classmethod
    def of(cls, threshold) -> "Reference":
        """A ``Threshold``'s calibration distribution and size; None (no calibration in these units): none."""
        if threshold is None:
            return cls()
        return cls(tuple(float(q) for q in threshold.normal_quantiles), int(threshold.n_normal))

    def missing(self) -> str:
        """Why this reference cannot be compared with ("" when it can)."""
        if len(self.quantiles) != 101:
            return "the bundle stores no calibration distribution; rebuild it with `fair-edge build`"
        if self.n < 1:
            return (f"the bundle's calibration distribution names no size (n_normal {self.n}; expected >= 1); "
                    "rebuild it with `fair-edge build`")
        return ""


@dataclass(frozen=True)
class DriftState:
    """psi: the statistic, as computed (None until enough parts or without a calibration distribution); parts:
    recent normal scores used; level: the configured PSI alarm level (``console.drift_alarm``); noise: a stable
    line's PSI noise with these sample sizes (``noise_floor``; None without a value); alarm: psi >= alarm_at = max(level, noise); note: why there is no value; camera: which camera's
    state this is, in a combined state of several cameras ("" for one camera's own)."""

    psi: float | None
    parts: int
    level: float
    alarm: bool
    note: str = ""
    camera: str = ""
    noise: float | None = None

    @property
    def alarm_at(self) -> float | None:
        """The PSI this state's value was compared with: max(level, noise); None without a value."""
        return None if self.noise is None else max(self.level, self.noise)

    def to_dict(self) -> dict:
        return {"psi": self.psi, "parts": self.parts, "level": self.level, "noise": self.noise,
                "alarm_at": self.alarm_at, "alarm": self.alarm, "note": self.note,
                **({"camera": self.camera} if self.camera else {})}


class DriftWatch:
    """Collects scores of inspected parts (``observe``, O(1), called by the loop) and computes the
    PSI on demand (``state``, any thread). ``exclude(key)`` drops a part reviewed as a defect; a key is
    the view's ``(camera, seq)`` (``feed.view_key``). reference: the calibration distribution and its size.
    ``quantiles``: the reference's percentiles as (101,) float64, None when it cannot be compared with."""

    def __init__(self, reference: Reference, window: int = 500, min_parts: int = 100, level: float = 0.25) -> None:
        self.window, self.min_parts, self.level = window, min_parts, level
        self._scores: deque[tuple[tuple[str, int], float]] = deque(maxlen=window)
        self._excluded: set[tuple[str, int]] = set()
        self._lock = threading.Lock()
        self._use(reference)

    def _use(self, reference: Reference) -> None:
        self.reference, self.missing = reference, reference.missing()
        self.quantiles = None if self.missing else np.asarray(reference.quantiles, np.float64)

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

    def reset(self, reference: Reference) -> None:
        """A new model: its own calibration distribution, and scores of the old one forgotten."""
        with self._lock:
            self._use(reference)
            self._scores.clear()

    def state(self) -> DriftState:
        with self._lock:
            excluded, quantiles, missing, n_calib = set(self._excluded), self.quantiles, self.missing, self.reference.n
        recent = np.array([s for key, s in list(self._scores) if key not in excluded])
        if quantiles is None:
            return DriftState(None, recent.size, self.level, False, missing)
        if recent.size < self.min_parts:
            return DriftState(None, recent.size, self.level, False,
                              f"waiting for {self.min_parts} normal parts ({recent.size} so far)")
        value, noise = psi(recent, quantiles), noise_floor(recent.size, n_calib)
        return DriftState(value, recent.size, self.level, value >= max(self.level, noise), noise=noise)


class CameraDrift:
    """One ``DriftWatch`` per camera, each against its own bundle's calibration distribution.

    references: camera -> that camera's calibration distribution and size (``Reference``; ``Reference()`` = none,
    a watch whose state says so), in the station file's order; one camera: {"": reference}. A part's key
    ``(camera, seq)`` picks its camera's watch. ``state()`` is the combined one (the worst camera), ``states()``
    each camera's."""

    def __init__(self, references: Mapping[str, Reference], window: int = 500, min_parts: int = 100,
                 level: float = 0.25) -> None:
        self.window, self.min_parts, self.level = window, min_parts, level
        self.watches: dict[str, DriftWatch] = {camera: self._new(r) for camera, r in references.items()}

    def _new(self, reference: Reference) -> DriftWatch:
        return DriftWatch(reference, self.window, self.min_parts, self.level)

    def cover(self, cameras: Sequence[str]) -> None:
        """Watch exactly ``cameras`` (in this order): a camera already watched keeps its watch, a new one gets
        a watch without a calibration distribution; watches of other cameras (one camera's "") are dropped."""
        self.watches = {c: self.watches.get(c) or self._new(Reference()) for c in cameras}

    def observe(self, key: tuple[str, int], score: float | None) -> None:
        """A part's score to its camera's watch (O(1)); a camera first seen here gets a watch without a
        calibration distribution, which its state says (never a score dropped unseen)."""
        watch = self.watches.get(key[0])
        if watch is None:
            watch = self._new(Reference())
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

    def reset(self, camera: str, reference: Reference) -> None:
        """``camera`` runs a new model: its watch starts over on that model's distribution (a camera not watched
        yet gets a watch on it); the others go on."""
        watch = self.watches.get(camera)
        if watch is None:
            self.watches = {**self.watches, camera: self._new(reference)}
        else:
            watch.reset(reference)

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
    """The fault output's reason for these cameras in alarm ("" for none), each PSI with the level it reached
    (``DriftState.alarm_at``, 3 significant digits), e.g. ``drift: PSI 0.612 >= 0.528`` (one camera) or
    ``drift: camera b PSI 0.412 >= 0.25, camera c PSI 0.300 >= 0.25``."""
    if not alarms:
        return ""
    return "drift: " + ", ".join(f"{'camera ' + c + ' ' if c else ''}PSI {s.psi:.3f} >= {s.alarm_at:.3g}"
                                 for c, s in alarms.items())
