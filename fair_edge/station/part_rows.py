"""A multi-camera part and what is said of it once decided: ``Part`` (a part with the views filed so far) and
``part_decision`` (its verdict for the gate and its row), for ``station.parts.PartAssembler``.

Rows (``verdicts.jsonl``, MQTT): ``{"kind": "part", "part", "t_capture", "ng", "inspected", "score", "camera",
"views": {camera: {"seq", "score", "ng"} | {"missing": why[, "seq"]}}, "ng_views", "missing", "rule"}``; ``score`` /
``camera``: the deciding view's (``_deciding_view``): an NG part's worst NG view (furthest over its own threshold, in
its camera's score unit: ``_badness``), the one that decided it; an OK part's worst view; None for a part NG only
because views are missing (no view decided it: ``missing`` names them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from fair_edge.records import Verdict

NOT_AWAITED = "not awaited: the part was NG without it"   # a view not in when its part was decided NG
NO_FRAME = "no frame"    # a part row's why for a camera that took no frame of it (failed it, or silent to its close)
FUSED_SCORE_UNIT = 1.0   # a fused bundle's score unit: its members' normal spread (``_badness``)


@dataclass
class Part:
    """A part with its views so far. key: what views are matched on (capture time s, frame seq, or belt count)."""

    part_id: int
    t_open: float
    key: float
    t_close: float
    seqs: dict[str, int] = field(default_factory=dict)            # camera -> its frame's seq
    verdicts: dict[str, Verdict] = field(default_factory=dict)    # camera -> its view's verdict
    dropped: dict[str, str] = field(default_factory=dict)         # camera -> why its frame was not inspected
    decided: bool = False   # its verdict is out (NG by the views before the rest): it closes without another
    count_close: float | None = None   # close_by_count: the belt count it closes at (grace_s after it)
    t_counted: float | None = None     # ... when a sweep first saw the belt there (monotonic s)
    captured: dict[str, float] = field(default_factory=dict)   # camera -> its frame's t_capture (monotonic s)

    def in_hand(self) -> Part:
        """A copy of the views so far (under the lock): a part decided while open is decided from this, as the
        cameras' threads may file more views meanwhile."""
        return Part(self.part_id, self.t_open, self.key, self.t_close, dict(self.seqs), dict(self.verdicts),
                    dict(self.dropped), self.decided)


def part_decision(part: Part, cameras: list[str], min_ng: int, rule: str, early: bool,
                  clock: Callable[[], float]) -> tuple[Verdict | None, dict]:
    """The part's verdict for the gate (None when not inspected: the gate rejects it fail-safe at its due time) and
    its row (see the module doc). cameras: every camera, in the station file's order; min_ng: NG views that make the
    part NG (``group.rule``, named ``rule`` in the row); early: decided NG by its views in hand, the others not in yet
    (``NOT_AWAITED``); clock: monotonic seconds, the verdict's decision time."""
    inspected_views = {c: v for c, v in part.verdicts.items() if not v.error}
    ng_views = [c for c in cameras if c in inspected_views and inspected_views[c].ng]
    absent = {c: _why_missing(part, c, early) for c in cameras if c not in inspected_views}
    missing = {c: why for c, why in absent.items() if why != NOT_AWAITED}   # not awaited: not missing
    inspected = not missing or len(ng_views) >= min_ng
    ng = len(ng_views) >= min_ng or bool(missing)
    decider = _deciding_view(inspected_views, ng_views, ng)
    row = {"kind": "part", "part": part.part_id, "t_capture": part.t_open, "ng": ng, "inspected": inspected,
           "score": None if decider is None else decider.score,
           "camera": None if decider is None else decider.camera,
           "views": {c: _view_row(part, c, absent.get(c)) for c in cameras},
           "ng_views": ng_views, "missing": sorted(missing), "rule": rule}
    reasons = [missing_reason(missing)] if missing else []
    reasons += [f"{c}: {inspected_views[c].reason}" for c in ng_views if inspected_views[c].reason]
    if reasons:
        row["reason"] = "; ".join(reasons)
    verdict = None   # not inspected: the gate gets no verdict and rejects the part fail-safe at its due time
    if inspected:    # every view in, or enough NG views: the deciding view's regions decide an NG part too
        verdict = Verdict(part.part_id, part.t_open, decider.score, decider.threshold, ng, clock(),
                          decider.source, "", decider.model, decider.regions if ng else (),
                          decider.hits if ng else (), camera=decider.camera)
    return verdict, row


def missing_now(part: Part, cameras: list[str]) -> dict[str, str]:
    """Camera -> why its view is not among the part's inspected ones, for an open part not decided yet, as its row
    would name it were it closed now (``_why_missing``); in the station file's camera order."""
    return {c: _why_missing(part, c, False) for c in cameras if c not in part.verdicts or part.verdicts[c].error}


def missing_reason(missing: dict[str, str]) -> str:
    """The text a part's views missing (camera -> why) are named by: its row's ``reason`` and its gate's
    (``missing view: b (no frame)``, ``missing views: a (...), b (...)``)."""
    return f"missing view{'s' if len(missing) > 1 else ''}: " + ", ".join(f"{c} ({why})" for c, why in missing.items())


def _why_missing(part: Part, camera: str, early: bool) -> str:
    """Why a camera's view did not decide the part: its inspection failed, its frame was dropped, (early) it was
    not in yet when the part was decided NG, or (at the part's close) it was not inspected in time or never taken."""
    if camera in part.verdicts:
        return f"not inspected: {part.verdicts[camera].error}"
    if camera in part.dropped:
        return part.dropped[camera]
    if early:
        return NOT_AWAITED
    return "not inspected in time" if camera in part.seqs else NO_FRAME


def _deciding_view(inspected_views: dict[str, Verdict], ng_views: list[str], ng: bool) -> Verdict | None:
    """The view the part's row and verdict name: the worst NG view (``_badness``: the one that decided an NG part),
    else for an OK part its worst view; None for a part NG only because views are missing."""
    if ng_views:
        return max((inspected_views[c] for c in ng_views), key=_badness)
    if not ng:
        return max(inspected_views.values(), key=_badness, default=None)
    return None


def _view_row(part: Part, camera: str, missing: str | None) -> dict:
    """A camera's entry in the part row: {seq, score, ng} of its verdict; {missing: why} (with the frame's seq when
    it took one: a dropped frame, one not inspected in time or one whose inspection failed)."""
    if missing is None:
        v = part.verdicts[camera]
        return {"seq": v.seq, "score": v.score, "ng": v.ng}
    return {"missing": missing, **({"seq": part.seqs[camera]} if camera in part.seqs else {})}


def _badness(verdict: Verdict) -> float:
    """How far over its own threshold a view is, in a unit of its camera's scores: 1 + (score - threshold) / unit
    (1 at the threshold, above 1 over it; an unscored view is the worst, inf), so that the views of models whose
    scores live on other scales compare (a cell mixing fused and single bundles).

    unit: a single bundle's threshold (> 0: its scores are >= 0), which makes it score / threshold, as before;
    ``FUSED_SCORE_UNIT`` for a fused bundle's view (``Verdict.fused``), or any threshold <= 0, which only a fused
    bundle's can be: its scores are in its members' normal-spread units (``runtime.fusion``: normal parts about
    -2 .. 0, the threshold either side of 0, no scale to divide by), so its margin is counted in normal spreads.
    Before, such a view ranked by its raw score (or by score / threshold) against the other cameras' score /
    threshold. Views of one model at one threshold rank by their scores either way."""
    if verdict.score is None:
        return float("inf")
    if verdict.threshold > 0 and not verdict.fused:
        return verdict.score / verdict.threshold
    return 1.0 + (verdict.score - verdict.threshold) / FUSED_SCORE_UNIT
