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
listed in bundle.json, which include the weights and graphs) and the SHA-256 of bundle.json itself (its
thresholds and every other setting; a fused bundle: of fusion.json, which pins each member's bundle.json), so a
rebuilt bundle gets a new id, one calibrated again on the same checkpoint included, and an unchanged one (a copy
in another folder too) keeps it. ``folder_model_ids`` tells the id of a bundle folder from its manifests alone,
before it is loaded (a reload's threshold check, ``console.actions.check_threshold_pairs``); ids written before
bundle.json counted (``files_model_id``) are still recognised there.

A loaded change can be checked against the frames the station sees before it is switched to (``change_off_grid``): a
tiled model calibrated on another frame size would decide every frame NG (``station.inspector.ViewDecider.off_grid``);
both ask ``map_off_grid``, the one rule for which maps are checked against which calibrated grid.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from dataclasses import dataclass, replace

from typing import TYPE_CHECKING, Any

import numpy as np

from fair_edge.errors import BundleError
from fair_edge.tiling import FrameTiler, tile_layout

if TYPE_CHECKING:  # typing only: the swap slot needs no backend code at run time
    from fair_edge.calibration.threshold import Threshold
    from fair_edge.export.bundle import Bundle
    from fair_edge.runtime.backends import FrameScorer
    from fair_edge.runtime.fusion import FusedBundle

log = logging.getLogger(__name__)


BUNDLE_MANIFEST = "bundle.json"   # export.bundle.MANIFEST: a plain bundle's settings, not among its ``files``
FUSION_MANIFEST = "fusion.json"   # runtime.fusion.MANIFEST: a fused bundle's, among its ``files`` already


def model_id(bundle) -> str:
    """12 hex digits identifying a loaded bundle: its files (``bundle.files``: relative name -> SHA-256) and its
    settings, the SHA-256 of its bundle.json (read again from ``bundle.root``, checked to list the files loaded); a
    fused bundle's ``files`` hold fusion.json's already. BundleError when bundle.json can no longer be read or lists
    other files (the folder was rebuilt while it loaded: load it again)."""
    if getattr(bundle, "members", None) is not None:   # a fused bundle
        return _digest(bundle.files)
    return _digest({**bundle.files, BUNDLE_MANIFEST: _manifest_sha(bundle.root, bundle.files)})


def files_model_id(bundle) -> str:
    """The model id as fair-edge wrote it before bundle.json counted (its files only): the id an older audit row or
    verdict names for ``bundle``; the same as ``model_id`` for a fused bundle."""
    return _digest(bundle.files)


def _digest(checksums) -> str:
    """12 hex digits of a SHA-256 over ``checksums`` (relative name -> SHA-256 hex), in name order."""
    h = hashlib.sha256()
    for name in sorted(checksums):
        h.update(f"{name}:{checksums[name]}\n".encode())
    return h.hexdigest()[:12]


def _manifest_sha(root, files) -> str:
    """SHA-256 hex of ``root``/bundle.json, which must list ``files`` (name -> SHA-256) as loaded."""
    path = root / BUNDLE_MANIFEST
    try:
        raw = path.read_bytes()
        listed = _listed_files(json.loads(raw))
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise BundleError(f"{path} could not be read again to name the model loaded from it ({exc}); the bundle "
                          "folder changed while it loaded: load it again") from exc
    if listed != dict(files):
        raise BundleError(f"{path} lists other files than the bundle loaded from {root} (rebuilt while it loaded?): "
                          "load it again")
    return hashlib.sha256(raw).hexdigest()


def _listed_files(manifest: dict) -> dict[str, str]:
    """A bundle.json's ``files``: relative name -> SHA-256 hex, as recorded."""
    return {str(name): str(entry["sha256"]) for name, entry in manifest["files"].items()}


def folder_model_ids(folder) -> tuple[str, ...]:
    """The model ids of the bundle folder ``folder`` as its manifests record it, without loading it (no file is
    hashed but the manifests): (``model_id``, ``files_model_id``) for a plain bundle, (``model_id``,) for a fused
    one; () when they cannot be read (the load will say why). Equal to the loaded bundle's ids once its files are
    verified against these same records."""
    from pathlib import Path

    root = Path(folder)
    try:
        if (root / FUSION_MANIFEST).is_file():
            raw = (root / FUSION_MANIFEST).read_bytes()
            files = {}
            for i, entry in enumerate(json.loads(raw)["members"]):
                member = json.loads((root / entry["path"] / BUNDLE_MANIFEST).read_bytes())
                files.update({f"m{i}/{name}": sha for name, sha in _listed_files(member).items()})
            return (_digest({**files, FUSION_MANIFEST: hashlib.sha256(raw).hexdigest()}),)
        raw = (root / BUNDLE_MANIFEST).read_bytes()
        files = _listed_files(json.loads(raw))
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return ()
    return _digest({**files, BUNDLE_MANIFEST: hashlib.sha256(raw).hexdigest()}), _digest(files)


def change_off_grid(change: ModelChange, frame_hw: tuple[int, int]) -> tuple[str, tuple[int, int], tuple[int, int]] | None:
    """``map_off_grid`` for ``change``'s model (its scorer and ``change.grid``) on a frame of ``frame_hw`` (H, W) px,
    each map laid out from its tiling: what the station would find scoring such a frame after the switch (every
    such frame NG, ``ViewDecider.off_grid``). None when each map fits, none is tiled, or no grid is recorded (a
    threshold given by the station: ``change.grid`` None). ConfigError (``tiling.tile_layout``) when the frame is
    smaller than a tiling takes."""
    return map_off_grid(change.scorer, change.grid, frame_hw)


def map_off_grid(scorer, grid: tuple[int, int] | None, frame_hw: tuple[int, int],
                 map_hw: tuple[int, int] | None = None) -> tuple[str, tuple[int, int], tuple[int, int]] | None:
    """(whose map: " (fused member NAME's)" for a fused scorer's member, "" for the map the score is taken from;
    the (h, w) grid its threshold or statistics were calibrated on; the (h, w) map a frame of ``frame_hw`` (H, W) px
    gives) for the first of ``scorer``'s maps such a frame puts off its calibrated grid: each tiled member's own map
    of a fused scorer against its recorded grid (``FusedBundle.member_grids``), in member order, then the scored
    map against ``grid`` (a fused map lies on its first member's grid). None when each fits, or when ``grid`` is
    None: no grid is recorded for the threshold in force (the station file's), so no map is checked. The one rule
    the station decides frames by (``ViewDecider.off_grid``) and a console swap checks before switching
    (``change_off_grid``). map_hw: the scored map's (h, w), as the station scored it; None: laid out from its
    tiling (a whole-frame map, whose grid does not change with the frame, is then not checked). ConfigError
    (``tiling.tile_layout``) when the frame is smaller than a tiling takes."""
    if grid is None:
        return None
    members = fused_members(scorer)
    for name, member, recorded in members:
        live = laid_out_map(member, frame_hw)
        if recorded is not None and live is not None and live != tuple(recorded):
            return f" (fused member {name}'s)", tuple(recorded), live
    scored = tuple(map_hw) if map_hw is not None else laid_out_map(members[0][1] if members else scorer, frame_hw)
    if scored is not None and scored != tuple(grid):
        return "", tuple(grid), scored
    return None


def off_grid_reason(found: tuple[str, tuple[int, int], tuple[int, int]], frame: str, outcome: str = "",
                    where: str = "decision.threshold") -> str:
    """Why a frame whose map lies off its calibrated grid cannot be decided, with the fix: found: ``map_off_grid``'s
    (whose map, calibrated grid, live grid); frame: the frame in words ("this 300 x 300 frame"); outcome: what
    follows ("", or ", so every frame would be NG"); where: the setting that gives a threshold instead. The one
    text of the station's verdict error (``ViewDecider.off_grid``) and the console's swap refusal."""
    whose, calibrated, live = found
    fix = ("Fuse the members with held-out normal frames from this camera (`fair-edge fuse B1 B2 --normal DIR "
           "--out FUSED`)" if whose else "Build with held-out normal frames from this camera "
           "(`fair-edge build --normal DIR`)")
    return (f"threshold calibrated on {calibrated[0]} x {calibrated[1]} maps (the bundle's held-out frames), but "
            f"{frame} gives a {live[0]} x {live[1]} map{whose}: a tiled model's score then means something "
            f"else{outcome}. {fix}, or set {where}")


def laid_out_map(scorer, frame_hw: tuple[int, int]) -> tuple[int, int] | None:
    """(h, w) of the map a tiled ``scorer`` (``BundleScorer.tiler``) makes of a frame of ``frame_hw`` (H, W) px, laid
    out as its ``FrameTiler`` splits and stitches it (``tiling.tile_layout``); None for a whole-frame one or a scorer
    without a tiler. ConfigError when the frame is smaller than its tiling takes."""
    tiler = getattr(scorer, "tiler", None)
    if tiler is None or tiler.tiling is None:
        return None
    return tuple(tile_layout(tuple(frame_hw), tiler.tiling, tiler.image_size).map_hw)


def frame_tilers(scorer, grid: tuple[int, int] | None = None) -> list[tuple[str, FrameTiler, tuple | None]]:
    """(whose tiling, the tiler, (h, w) map grid its threshold or statistics were calibrated on or None) for each
    tiler ``scorer`` cuts frames with: a tiled bundle's (``BundleScorer.tiler``: "the bundle's", ``grid``), each
    tiled member's of a fused scorer ("fused member m1's", its own recorded grid: ``fused_members``); [] for
    whole-frame models and scorers without a tiler."""
    tiler = getattr(scorer, "tiler", None)
    if tiler is not None:
        return [("the bundle's", tiler, grid)] if tiler.tiling is not None else []
    return [(f"fused member {name}'s", tiler, recorded) for name, member, recorded in fused_members(scorer)
            for _, tiler, _ in frame_tilers(member)]


def fused_members(scorer) -> list[tuple[str, Any, tuple[int, int] | None]]:
    """(folder name, its ``FrameScorer``, the (h, w) grid its statistics were fitted on or None) of each member of a
    fused scorer (``FusedScorer.backend.scorers``, ``FusedBundle.members`` and ``member_grids``; names m0, m1, ...
    where the bundle names none), in member order; [] for any other scorer."""
    members = list(getattr(getattr(scorer, "backend", None), "scorers", ()))
    fused = getattr(scorer, "bundle", None)
    names = [m.root.name for m in getattr(fused, "members", ())] or [f"m{i}" for i in range(len(members))]
    grids = list(getattr(fused, "member_grids", ()) or (None,) * len(members))
    return list(zip(names, members, grids))


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
