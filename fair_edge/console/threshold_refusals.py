"""When a threshold applied from the console may not be: while a bundle loads or a loaded one waits to be taken
(``threshold_can_change``: the scores tuned on are the old model's), where region rules decide the verdict
(``threshold_decides``, ``rules_decide_note``: the threshold would change no verdict), and, at a reload or a start,
where the bundle now holds another model than the one it was applied on (``threshold_pair_refusal`` with the station
file's audit rows, ``run_threshold_refusal`` without a station file: a threshold is on its model's scale)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from fair_edge.console import tuning
from fair_edge.console.journal import AUDIT
from fair_edge.console.refusals import RulesDecide, SwapBusy
from fair_edge.console.reload_scope import CameraBundle

log = logging.getLogger(__name__)


def threshold_can_change(status: dict, decider, camera: str) -> None:
    """SwapBusy while a bundle loads for ``camera`` (``status``: ``StationActions.swap_status``; a SIGHUP reload's
    change carries the station file's threshold as it read it, a console swap's the new bundle's own: either would
    undo the threshold) or while ``decider``'s switch holds a loaded model that has not run yet (the scores tuned on
    are the old model's, on another scale)."""
    if status.get("state") == "loading" and (camera in status.get("cameras", ()) or "cameras" not in status):
        raise SwapBusy(f"a bundle is loading ({status.get('bundle', '')}); apply the threshold once it "
                       "runs (the threshold was not changed)")
    pending = decider.switch.pending
    if pending is not None and pending.scorer is not None:
        where = f" on camera {camera}" if camera else ""
        raise SwapBusy(f"a new bundle (model {pending.model}) waits to be taken{where} (at the next part, or "
                       "within about 50 ms on a line at rest); tune and apply the threshold once it runs (the "
                       "threshold was not changed)")


def threshold_decides(decider, camera: str) -> None:
    """RulesDecide (logged) when ``camera``'s region rules decide its verdicts (``decider``'s, or those its
    pending change brings: ``regions_in_force``): a threshold applied would change no verdict."""
    if regions_decide(regions_in_force(decider)):
        refusal = f"the threshold was not changed: {rules_decide_note(camera)}"
        log.warning("threshold refused: %s", refusal)
        raise RulesDecide(refusal)


def decider_scores_below_zero(decider) -> bool:
    """Whether the model ``decider`` runs can score below 0 (a fused bundle: ``tuning.scores_below_zero``), so a
    threshold at or below 0 may be applied to it; a decider without a scorer (a stand-in) runs a single bundle's."""
    return tuning.scores_below_zero(getattr(decider, "scorer", None))


def regions_in_force(decider):
    """The ``regions:`` settings (``station.zones.RegionSettings``) ``decider`` (an inspector or a camera's
    ``ViewDecider``) judges with, or will once its pending change is taken; None when it judges no regions (a swap
    then keeps them off, so nothing is to be checked)."""
    switch = getattr(decider, "switch", None)
    pending = getattr(switch, "pending", None)
    if pending is not None and pending.regions is not None:
        return pending.regions if pending.regions.enabled else None
    judge = getattr(decider, "regions", None)   # a stand-in decider without regions judges none
    return None if judge is None else judge.settings


def regions_decide(regions) -> bool:
    """Whether the ``regions:`` settings (``station.zones.RegionSettings``, None: none) have rules that decide the
    verdict (``RegionJudge.decides``): a map's grid then does not matter."""
    return regions is not None and getattr(regions, "enabled", True) and bool(getattr(regions, "has_rules", False))


def rules_decide_note(camera: str) -> str:
    """Why a threshold is neither projected nor applied on ``camera`` (one camera: "") whose region rules decide the
    verdict (``regions_decide``), and what to tune instead: the tune page shows it, a threshold applied is refused
    with it (``RulesDecide``)."""
    of = f" of camera {camera}" if camera else ""
    where = "its cameras[] entry's regions: over the station's" if camera else "its regions: section"
    check = "fair-edge rules check STATION FOLDER" + (f" --camera {camera}" if camera else "")
    return (f"region rules decide the verdict{of}: a part is NG exactly when a rule fires (a frame that cannot be "
            "inspected stays NG), whatever its image score, so the image threshold changes no verdict and no "
            f"false-reject or catch rate is projected for it. Tune the rules in the station file instead ({where}: "
            "the limits of regions.default and regions.zones, e.g. min_area_mm2, min_length_mm, max_count, and "
            f"regions.pixel_threshold, which cuts the regions), replay a folder through them with `{check}`, then "
            "reload (kill -HUP); or remove the rules (regions only reported) to decide by the threshold again")


def applied_thresholds(rows: list[dict], station_file: Path) -> dict[str, dict]:
    """camera ("" with one) -> the last of audit ``rows`` (``audit.jsonl``) of a threshold applied from the console
    and written to ``station_file`` (``names_station_file``: by its resolved path)."""
    applied: dict[str, dict] = {}
    for row in rows:
        if row.get("action") == "threshold" and names_station_file(str(row.get("station_file") or ""), station_file):
            applied[str(row.get("camera", ""))] = row
    return applied


def names_station_file(named: str, station_file: Path) -> bool:
    """Whether an audit row's ``station_file`` (``named``) is ``station_file``: both resolved (absolute, links
    followed), as ``apply_threshold`` writes it, so a start from another folder (the systemd unit's absolute
    --station, its WorkingDirectory elsewhere) finds the row of a threshold applied to a station started by hand
    with a relative one. A row written before that names the file as it was typed (relative): the folder it was
    relative to is not recorded, so it cannot be resolved reliably; it is compared as it always was, made absolute
    in this process's folder (found by a start from the folder it was written from)."""
    if not named:
        return False
    if os.path.isabs(named):
        return Path(named).resolve() == Path(station_file).resolve()
    return os.path.abspath(named) == os.path.abspath(station_file)


def threshold_pair_refusal(station_file: Path, row: dict | None, named: CameraBundle, found: tuple[str, ...],
                           by: str) -> str:
    """Why ``named`` (a camera's bundle and threshold from ``station_file``) may not run, or "": its threshold is the
    one the audit ``row`` applied from the console (``applied_thresholds``) and its bundle holds another model than
    the row's (``found``: the ids of the model it holds now, ``hotswap.folder_model_ids`` or the loaded bundle's
    ``model_id`` and ``files_model_id``; () when not known: then compared by folder). by: "reload" or "start"."""
    if row is None or not _applied_on_another(row, named, found):
        return ""
    where = f"cameras ({named.camera}).threshold" if named.camera else "decision.threshold"
    camera = f" for camera {named.camera}" if named.camera else ""
    rebuilt = bool(row.get("bundle")) and tuning.same_bundle(row["bundle"], named.bundle)
    now = f" (model {found[0]}{': the folder was rebuilt since' if rebuilt else ''})" if found else ""
    # a row an older release wrote names no bundle: its model alone tells it was another
    applied_on = f"bundle {row['bundle']}" if row.get("bundle") else "a bundle (an older release did not record which)"
    again = "" if rebuilt or not row.get("bundle") else f" or name bundle {row['bundle']} again"
    then = "then reload (nothing was reloaded)" if by == "reload" else "then start the station (it was not started)"
    return (f"{station_file}: {where} {named.threshold:.6g} was applied from the console on {applied_on} "
            f"(model {row.get('model') or '?'}, by {row.get('who', '?')} at "
            f"{row.get('time', '?')}, {AUDIT}), not on bundle {named.bundle} this {by} would load{camera}{now}; set "
            f"{where} for {named.bundle} in the station file (null: the bundle's own calibrated threshold){again}, "
            f"{then}")


def run_threshold_refusal(row: dict | None, named: CameraBundle, found: tuple[str, ...]) -> str:
    """Without a station file: why ``named`` (a camera's bundle as the station named it, and the threshold in force)
    may not run, or "": its threshold is the one the audit ``row`` applied from the console in this run
    (``StationActions.applied_now``) and its bundle holds another model now (``found``: the ids of the model it holds,
    as for ``threshold_pair_refusal``; () when not known: the load names the problem). A link is named with its
    target now."""
    if row is None or not found or not _applied_on_another(row, named, found):
        return ""
    target = tuning.real_folder(named.bundle)
    leads = "" if str(target) == os.path.abspath(named.bundle) else f" (-> {target})"
    camera = f" on camera {named.camera}" if named.camera else ""
    applied_on = row.get("model") or "?"
    back = (f"point {named.bundle} back at model {applied_on}'s bundle" if leads else
            f"put model {applied_on}'s bundle back in {named.bundle}")
    return (f"the threshold {named.threshold:.6g} in force{camera} was applied from the console on model {applied_on} "
            f"(bundle {row.get('bundle') or '?'}, by {row.get('who', '?')} at {row.get('time', '?')}, {AUDIT}), but "
            f"bundle {named.bundle}{leads} holds model {found[0]} now: a threshold is on its model's scale, so "
            f"nothing was reloaded. To run model {found[0]}, swap to it from the console (it runs at its own "
            f"calibrated threshold; tune and apply one there), or restart the station on it (--threshold for its "
            f"scale, or none: the bundle's own); to keep {named.threshold:.6g}, {back}, then reload")


def _applied_on_another(row: dict, named: CameraBundle, found: tuple[str, ...]) -> bool:
    """Whether ``named``'s threshold is the one the audit ``row`` applied from the console and ``named``'s bundle holds
    another model than the one it was applied on: by model id (the row's ``model`` among ``found``, an id of the
    model the bundle holds now, or the id fair-edge wrote for it before bundle.json counted), else, where either id
    is unknown, by folder (a row written before rows named their bundle: not known, False)."""
    if named.threshold is None or row.get("new") != named.threshold:
        return False
    if row.get("model") and found:
        return row["model"] not in found
    return bool(row.get("bundle")) and not tuning.same_bundle(row["bundle"], named.bundle)
