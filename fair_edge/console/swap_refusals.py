"""Why a loaded bundle may not be switched to: its map on another scale than the one the region rules in force
judge with (``scale_refusal``: a fused bundle for a single one, or another model's map, while the station file's
``regions.pixel_threshold`` decides), or its camera's frames off the grid its threshold was calibrated on
(``grid_refusal``: every frame would be NG). Each answers the refusal's text, "" when the swap may run."""

from __future__ import annotations

from fair_edge.console import tuning
from fair_edge.console.feed import StationFeed
from fair_edge.console.threshold_refusals import decider_scores_below_zero, regions_decide
from fair_edge.errors import ConfigError
from fair_edge.runtime.hotswap import ModelChange, change_off_grid, off_grid_reason


def grid_refusal(feed: StationFeed, change: ModelChange, camera: str, regions, bundle: str) -> str:
    """Why the loaded ``change`` (of ``bundle``) may not run on ``camera`` (one camera: ""): the camera's latest
    frame in ``feed`` gives its tiled map another grid than its threshold was calibrated on
    (``hotswap.change_off_grid``), or is smaller than its tiling takes, so every frame would be NG
    (``ViewDecider.off_grid``, ``check_fits``); "" when it fits, no frame was seen yet, or region rules decide the
    verdicts (``regions``: the settings it is to be judged by; the pixel threshold holds on any grid)."""
    latest = feed.latest_views.get(camera) if camera else feed.latest
    frame = None if latest is None else latest.frame
    if frame is None or getattr(frame, "image", None) is None or regions_decide(regions):
        return ""
    h, w = frame_hw = tuple(frame.image.shape[:2])
    on = f"camera {camera}'s" if camera else "the camera's"
    kept = "the swap was refused: the station runs on with the model in force"
    try:
        found = change_off_grid(change, frame_hw)
    except ConfigError as exc:
        return f"bundle {bundle}: {on} latest {w} x {h} px frame does not fit its tiles: {exc} {kept}"
    if found is None:
        return ""
    where = f"cameras ({camera}).threshold" if camera else "decision.threshold"
    reason = off_grid_reason(found, f"{on} latest {w} x {h} frame", ", so every frame would be NG", where)
    return f"bundle {bundle}: {reason}; {kept}"


def scale_refusal(change: ModelChange, decider, regions, bundle: str, in_force: tuple[str, str] = ("", "")) -> str:
    """Why a swap that keeps the ``regions:`` settings in force (a console swap) may not run the loaded ``change``
    (of ``bundle``): their rules decide the verdict with the pixel threshold the station file sets
    (``regions.pixel_threshold``), which is in the units of the map of the model ``decider`` runs (or will once its
    pending change is taken; ``in_force``: its model id and FP32 reference graph, ``BundleSwaps._map_in_force``),
    and the loaded model's map is on another scale, so judged at it the new model's defects would pass (or every part
    be NG): a fused bundle's, in its members' normal spread, against a single bundle's score units
    (``tuning.scores_below_zero``), or another model's (``_model_refusal``). "" when both are one model's map (the
    same model id, or the same FP32 reference graph: a copy, a rebuild at another precision or calibrated again:
    ``_same_map``), rules do not decide, or the file sets no pixel threshold (each bundle's own is used then; a fused
    bundle has none, and its loader refuses it: ``station.bundles.region_pixel_threshold``)."""
    value = getattr(regions, "pixel_threshold", None)
    if value is None or not regions_decide(regions):
        return ""
    fused = tuning.scores_below_zero(change.scorer)
    if fused == _fused_in_force(decider):
        return "" if _same_map(change, in_force) else _model_refusal(change, in_force, value, bundle)
    if fused:
        new, old = "a fused bundle, whose map is in its members' normal spread", "the single bundle in force's score"
        units = f"the pixels above its threshold, {change.bundle.threshold.value:.6g}, make a part NG"
    else:
        new, old = "a single bundle, whose map is in its model's score units", ("the fused bundle in force's map: its "
                                                                               "members' normal spread")
        units = "null: its calibrated one"
    return (f"bundle {bundle} is {new}, but the region rules in force decide the verdict with the station file's "
            f"regions.pixel_threshold {value:g}, set in the units of {old}: on another scale, the new model's defects "
            "would pass or every part be NG. The swap was refused; the station runs on with the model in force. To "
            f"run {bundle} with region rules, set regions.pixel_threshold in its map's units ({units}) and bundle: "
            f"{bundle} in the station file, then reload (kill -HUP); or turn the rules off.")


def _model_refusal(change: ModelChange, in_force: tuple[str, str], value: float, bundle: str) -> str:
    """``scale_refusal``'s words for a swap to ``bundle`` (the loaded ``change``) of another model id than the one in
    force (``in_force``: its model id, "": not known, and FP32 reference graph), both single (or both fused) bundles,
    while the station file's ``regions.pixel_threshold`` (``value``) decides with the rules: another network (both
    graphs known, ``_another_network``), or one not known to be the same (a graph not known: ``_network_not_known``)."""
    old = in_force[0] or "?"
    new_graph = tuning.reference_graph(change.bundle)
    opening = (_another_network(change, bundle, old) if in_force[1] and new_graph else
               _network_not_known(change, bundle, old, "the model in force's" if new_graph else
                                  "the new model's" if in_force[1] else "either model's"))
    return (f"{opening}, but the region rules in force decide the verdict with the station file's "
            f"regions.pixel_threshold {value:g}, set in the units of model {old}'s map: another model's map is on a "
            "scale of its own, so the new model's defects would pass or every part be NG. The swap was refused; the "
            f"station runs on with the model in force. To run {bundle} with region rules, set "
            "regions.pixel_threshold in its map's units (null: its calibrated one) "
            f"and bundle: {bundle} in the station file, then reload (kill -HUP); with regions.pixel_threshold null "
            "there (reloaded), each bundle swapped in from here is judged at its own calibrated one; or turn the "
            "rules off.")


def _another_network(change: ModelChange, bundle: str, old: str) -> str:
    """``_model_refusal``'s opening where both FP32 reference graphs are known and differ (model ``old`` in force)."""
    return (f"bundle {bundle} holds model {change.model or '?'}, another model than model {old} in force (a copy of "
            "it, or a rebuild of it at another precision, would run the same network)")


def _network_not_known(change: ModelChange, bundle: str, old: str, unknown: str) -> str:
    """``_model_refusal``'s opening where ``unknown`` ("the model in force's", "the new model's", "either model's")
    FP32 reference graph is not known (a fused bundle has none; the model in force is known by the bundle it was
    loaded from, at the start or by a swap from here), so a rebuild of model ``old`` cannot be told from another."""
    return (f"bundle {bundle} holds model {change.model or '?'}, not known to be the same network as model {old} in "
            f"force ({unknown} FP32 reference graph is not known, so a copy or a rebuild at another precision cannot "
            "be told from another model)")


def _same_map(change: ModelChange, in_force: tuple[str, str]) -> bool:
    """Whether the loaded ``change`` draws the map of the model in force (``in_force``: its model id and FP32
    reference graph, "" where not known): the same model id, or the same FP32 reference graph
    (``tuning.reference_graph``: the network every precision of one checkpoint is built from, so a rebuild at another
    precision, or calibrated again, draws its map in the same units)."""
    model, graph = in_force
    if change.model and change.model == model:
        return True
    return bool(graph) and tuning.reference_graph(change.bundle) == graph


def _fused_in_force(decider) -> bool:
    """Whether the model ``decider`` judges with, or will once its pending change is taken, is a fused bundle's
    (``tuning.scores_below_zero``; a decider without a scorer, a stand-in, runs a single bundle's)."""
    pending = getattr(getattr(decider, "switch", None), "pending", None)
    if pending is not None and pending.scorer is not None:
        return tuning.scores_below_zero(pending.scorer)
    return decider_scores_below_zero(decider)
