"""Change the model or the threshold of a running station without stopping capture.

Another thread (the console, a SIGHUP handler) loads the new bundle and its backend off the loop,
then ``ModelSwitch.request()`` leaves the change in a one-item slot, ``pending``. Between batches the
inspection loop reads that attribute (no call into this module per frame) and only when a change waits
calls ``take()``, so a batch that is already being inferred finishes on the old
model and the next one uses the new; capture never pauses. Every verdict carries the id of the model
that decided it (``Verdict.model``).

Closing: a model's backend and its pre-processing (``runtime.backends.close_scorer``) are closed only when nothing
can run it any more. A request that replaces a change still waiting does not close that change's scorer: in a cell the cameras of one
bundle share one scorer, and another camera's pending change may hold it (changes are taken when a batch arrives,
or on the next idle loop iteration while the line is at rest). The replaced scorer waits in its switch (``parked``, ``take_replaced``) until the loop, which sees every
camera's switch, retires the scorers that no camera runs and no pending change holds (``retire_unused``): at the
next batch, or on the next idle loop iteration while the line is at rest.

Model id: the first 12 hex digits of a SHA-256 over the bundle's file checksums (the files
listed in bundle.json, which include the weights and graphs), so a rebuilt bundle gets a new id
and an unchanged one keeps it.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass, replace

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # typing only: the swap slot needs no backend code at run time
    from fair_edge.calibration.threshold import Threshold
    from fair_edge.export.bundle import Bundle
    from fair_edge.runtime.backends import FrameScorer
    from fair_edge.runtime.fusion import FusedBundle

log = logging.getLogger(__name__)


def model_id(bundle) -> str:
    """12 hex digits identifying the bundle's files (``bundle.files``: relative name -> SHA-256)."""
    h = hashlib.sha256()
    for name in sorted(bundle.files):
        h.update(f"{name}:{bundle.files[name]}\n".encode())
    return h.hexdigest()[:12]


@dataclass(frozen=True)
class ModelChange:
    """What changes at the next batch boundary. scorer: a ``FrameScorer`` (None = keep the model);
    threshold: the new decision threshold (None = keep); roi: (H, W) float32 mask weights for the new model
    (``station.bundles.load_roi``), or None; model: the new model's id; bundle: the loaded ``Bundle`` or
    ``FusedBundle``; calibration: the calibration of the new model's decision score (with an ROI, of
    max(map x ROI): ``station.decision``), whose distribution the console's drift watch and tuning use;
    None = none in the station's units. grid: (h, w) of the maps the new model's calibrated threshold came from
    (``DecisionThreshold.grid``; None = not checked). map_area: the frame rectangle the new model's map covers
    (a tiled bundle's ``tiling.roi``; None = the whole frame). regions: the station's ``regions:`` settings
    (``station.zones.RegionSettings``) the camera judges regions by from then on, as a SIGHUP reload re-read them;
    None = keep the ones in force (a console swap)."""

    scorer: FrameScorer | None = None
    threshold: float | None = None
    roi: np.ndarray | None = None
    model: str = ""
    bundle: Bundle | FusedBundle | None = None
    calibration: Threshold | None = None
    grid: tuple[int, int] | None = None
    map_area: tuple[int, ...] | None = None
    regions: Any = None


class ModelSwitch:
    """A one-item slot between the threads that ask for a change and the inspection loop.

    A second request before the loop took the first merges into it (the newest value of each
    field wins). shared (every ``ViewDecider``'s switch): the scorer of a replaced change that never
    ran is not closed here, since a cell's cameras share one scorer per bundle and another camera's
    change may hold it, but kept for the loop (``take_replaced``, then ``retire_unused``). A switch
    that is not shared (nobody else can hold its scorers) closes it at once.
    """

    def __init__(self, shared: bool = False) -> None:
        self._lock = threading.Lock()
        self.shared = shared
        # written under the lock; the loop reads it without (a stale None only waits a batch)
        self.pending: ModelChange | None = None
        self._replaced: list[FrameScorer] = []   # scorers of changes replaced before they ran (shared only)
        # how many wait in _replaced, written under the lock; the loop reads it without, on idle iterations only
        # (a plain attribute, no call into this module: a stale 0 only waits an iteration)
        self.parked = 0

    def request(self, change: ModelChange) -> None:
        with self._lock:
            old, self.pending = self.pending, _merge(self.pending, change)
            replaced = old.scorer if old is not None and change.scorer is not None else None
            if replaced is not None and self.shared:
                self._replaced.append(replaced)
                self.parked = len(self._replaced)
        if replaced is not None and not self.shared:
            from fair_edge.runtime.backends import close_scorer   # off the frame path: swaps only

            close_scorer(replaced)

    def take(self) -> ModelChange | None:
        """The pending change (once), or None. Called by the loop between batches."""
        with self._lock:
            change, self.pending = self.pending, None
        return change

    def take_replaced(self) -> list[FrameScorer]:
        """The scorers of changes replaced before they ran (once): the loop retires those nothing holds."""
        with self._lock:
            replaced, self._replaced, self.parked = self._replaced, [], 0
        return replaced

    def holds(self) -> FrameScorer | None:
        """The scorer the pending change would run, or None."""
        pending = self.pending
        return None if pending is None else pending.scorer


def _merge(old: ModelChange | None, new: ModelChange) -> ModelChange:
    """``new`` requested while ``old`` waits: a new model replaces the old one's fields, a threshold only that;
    re-read regions settings are kept unless ``new`` brings its own."""
    if old is None:
        return new
    regions = new.regions if new.regions is not None else old.regions
    if new.scorer is not None:
        return replace(new, regions=regions)
    return ModelChange(old.scorer, new.threshold if new.threshold is not None else old.threshold,
                       old.roi, old.model, old.bundle, old.calibration, old.grid, old.map_area, regions)


def retire_unused(candidates: list[FrameScorer], in_use: list[FrameScorer | None]) -> list[FrameScorer]:
    """Close each of ``candidates`` (once) that is not in ``in_use`` (the scorers the cameras run and those their
    pending changes hold); returns the ones closed. Called by the loop, which sees every camera's switch."""
    from fair_edge.runtime.backends import close_scorer   # off the frame path: swaps only

    held = {id(s) for s in in_use if s is not None}
    closed: list[FrameScorer] = []
    for scorer in candidates:
        if id(scorer) not in held:
            held.add(id(scorer))   # once, however often it was replaced
            close_scorer(scorer)
            closed.append(scorer)
    return closed
