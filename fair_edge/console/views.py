"""What the pages show, as plain JSON-ready dicts and JPEG bytes (console thread only).

A view is addressed by (camera, seq): ``/api/part/SEQ.jpg`` with one camera, ``/api/part/CAMERA/SEQ.jpg`` with
several (each camera numbers its own frames); its URL also names the run and model (``?r=RUN&m=MODEL``), as a
cached picture is one part's only within its run. The live state's ``drift`` is the combined drift state (with several
cameras the worst camera's, named by its ``camera``). The live state's ``model`` (and each camera's, with several)
says whether region rules decide its verdicts (``rules_decide``: the model in force's, or a pending reload's), so the
tune page follows a reload that turns rules on or off as it follows a threshold changed elsewhere. With several
cameras the live state adds ``cameras`` (each camera's counters, model, threshold and own drift state), ``parts``
(the part counters) and ``tiles`` (every view of the latest part), and
the gallery lists NG parts with their views.
"""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import quote, urlencode

from fair_edge.console.actions import StationActions
from fair_edge.console.feed import RATE_WINDOW_S, StationFeed, ViewKey, finite
from fair_edge.console.render import JpegCache, overlay_jpeg
from fair_edge.console.reviews import REVIEW_LABELS
from fair_edge.console.threshold_refusals import regions_decide, regions_in_force
from fair_edge.line.ng_images import ng_image_path
from fair_edge.plots import FUSED_HALF_SCALE

RECENT_SHOWN = 24


def part_url(camera: str, seq: int, run: str, model: str) -> str:
    """The console's URL of a view's kept frame with its heat map, naming the run and the model of its verdict:
    seqs start again at 0 in every run, so the same path is another part after a restart and a browser must not
    show the picture it cached under it (the server answers 404 to an URL of another run)."""
    path = f"/api/part/{quote(camera, safe='')}/{seq}.jpg" if camera else f"/api/part/{seq}.jpg"
    return f"{path}?{urlencode({'r': run, 'm': model})}"


def _part(v, labels: dict[ViewKey, str]) -> dict:
    return {"seq": v.seq, "score": finite(v.score), "threshold": v.threshold, "ng": v.ng, "source": v.source,
            "latency_ms": round(v.latency_ms, 2), "model": v.model, "error": v.error,
            "review": labels.get((v.camera, v.seq), ""), "regions": len(v.regions), "reason": v.reason,
            "fused": v.fused, **({"camera": v.camera} if v.camera else {})}


def live_state(feed: StationFeed, actions: StationActions) -> dict:
    """Everything the live page shows."""
    latest = feed.latest
    recent = list(feed.recent)[-RECENT_SHOWN:]
    kept = {(p.verdict.camera, p.verdict.seq) for p in list(feed.frames)} if feed.settings.keep_frames else set()
    kept |= {(c, p.verdict.seq) for c, p in list(feed.latest_views.items())}
    state = {
        "time": time.time(), "run": feed.run_id, "count": feed.count, "rate": rate_state(feed),
        "counters": feed.counters(), "latency": feed.latency(), **feed.state(),
        "drift": feed.drift.state().to_dict(),
        "latest": None if latest is None else _part(latest.verdict, actions.labels),
        "recent": [dict(_part(v, actions.labels), kept=(v.camera, v.seq) in kept,
                        image=part_url(v.camera, v.seq, feed.run_id, v.model))
                   for v in reversed(recent)],
        "kept_from": kept_from(kept), "keep_frames": feed.settings.keep_frames,
        "fused_half_scale": FUSED_HALF_SCALE,   # the score bar of a fused model's part (live.js scoreFraction)
        "swap": actions.swap_status,
    }
    if feed.cell is not None:
        state.update(cell_state(feed, actions, kept))
    elif state.get("model") is not None:   # one camera: the inspector decides (several: each camera's, cell_state)
        state["model"]["rules_decide"] = rules_decide(feed.inspector)
    return state


def rules_decide(decider) -> bool:
    """Whether region rules decide the verdicts of ``decider`` (the inspector, or a camera's ``ViewDecider``): its
    ``regions:`` in force, or those its pending change (a reload's) brings (``threshold_refusals.regions_in_force``).
    The tune page then projects no rates (``StationActions.tune`` answers ``rules_decide``); read on every poll, so a
    reload that turns rules on or off is followed."""
    return regions_decide(regions_in_force(decider))


def rate_state(feed: StationFeed) -> dict:
    """The live page's rate: ``per_s``, what it counts per second (``of``: "parts" with cameras viewing one part, each
    part once; else "frames", every inspected frame), over the last ``window_s`` seconds (``StationFeed.rate``)."""
    return {"per_s": feed.rate(), "of": feed.rate_counts(), "window_s": RATE_WINDOW_S}


def kept_from(kept: set[ViewKey]) -> dict[str, int]:
    """camera ("" with one) -> the oldest seq whose frame is kept (``kept``: the views whose frames are in memory):
    a Recent parts table held still greys the miss button of each row older than that, its frame gone since the
    snapshot it was drawn from (frames leave in the order they came)."""
    oldest: dict[str, int] = {}
    for camera, seq in kept:
        oldest[camera] = min(seq, oldest.get(camera, seq))
    return oldest


def cell_state(feed: StationFeed, actions: StationActions, kept: set[ViewKey]) -> dict:
    """Several cameras: each camera's counters (``RunSummary.cameras``' own), model (with ``rules_decide``),
    threshold and drift state (``DriftState.to_dict``; None for a camera not watched); the part counters; the latest
    part (none when the cameras are lanes) and a tile per camera: that part's view, or with lanes the camera's latest
    view."""
    counters = feed.cell_counters()
    cameras = []
    inspector = feed.inspector
    drift = feed.drift.states()
    for name, counts in counters["cameras"].items():
        decider = inspector.views.get(name) if inspector is not None else None
        cameras.append({"name": name, "counters": counts,
                        "drift": drift[name].to_dict() if name in drift else None,
                        "model": None if decider is None else {"id": decider.model, "threshold": decider.threshold,
                                                               "backend": decider.scorer.reason,
                                                               "bundle": str(feed.camera_bundles.get(name, "")),
                                                               "rules_decide": rules_decide(decider)}})
    latest = feed.latest_part_row()
    tiles = []
    for name in counters["cameras"]:
        if latest is not None:
            view = latest["views"].get(name, {"missing": "no frame"})
            seq = view.get("seq")
        else:
            part = feed.latest_views.get(name)
            view, seq = {}, None if part is None else part.verdict.seq
        tiles.append(_view(feed, actions, name, seq, view.get("missing", ""), kept,
                           decided=latest is not None and latest.get("camera") == name
                           and name in latest.get("ng_views", ())))
    return {"cameras": cameras, "parts": counters["parts"], "tiles": tiles,
            "latest_part": None if latest is None else _part_head(latest)}


def _part_head(row: dict) -> dict:
    return {"part": row["part"], "ng": row["ng"], "inspected": row["inspected"], "camera": row.get("camera"),
            "score": finite(row.get("score")), "ng_views": row.get("ng_views", []), "missing": row.get("missing", []),
            "reason": row.get("reason", ""), "rule": row.get("rule", "")}


def _view(feed: StationFeed, actions: StationActions, camera: str, seq: int | None, missing: str,
          kept: set[ViewKey] | None, decided: bool = False, row_view: dict | None = None) -> dict:
    """One camera's view of a part as the pages show it: its verdict (while remembered: ``actions.verdict``), image,
    review and ``kept`` (``_is_kept``: its frame in memory; a passed view's *miss* needs it, 409 otherwise).
    row_view: the part row's entry for the view ({seq, score, ng}), its score and OK/NG once the verdict is
    forgotten. The review label is ``actions.labels``' whether or not the verdict is remembered."""
    out = {"camera": camera, "seq": seq, "missing": missing, "decided": decided}
    v = None if seq is None else actions.verdict(seq, camera)
    if v is not None:
        out.update(_part(v, actions.labels), decided=decided)
    elif row_view is not None and seq is not None:
        out.update(score=finite(row_view.get("score")), ng=row_view.get("ng"))
    if seq is not None:
        out["review"] = actions.labels.get((camera, seq), "")
        out["kept"] = _is_kept(feed, camera, seq, kept)
        out["image"] = _image(feed, v, camera, seq, kept)
    return out


def _is_kept(feed: StationFeed, camera: str, seq: int, kept: set[ViewKey] | None = None) -> bool:
    """Whether view (camera, seq)'s frame is in the console's memory (``kept``: the views kept, gathered once for a
    page; None: ask ``feed.kept_part``). A passed view's review (*miss*) is saved with that frame, so the station
    refuses it once the frame is gone (409, ``refusals.FrameNotKept``): the pages grey its button then."""
    return (camera, seq) in kept if kept is not None else feed.kept_part(seq, camera) is not None


def records_dir(feed: StationFeed) -> Path | None:
    """The recorder's folder (``record.dir``: NG images, verdicts.jsonl), served under ``/records/``; None
    without a recorder."""
    rec = feed.recorder
    return None if rec is None else Path(rec.dir)


def file_url(feed: StationFeed, path: Path) -> str:
    """The console's URL of a file under the output folder (``/files/``) or the recorder's folder
    (``/records/``, where ``record.dir`` is elsewhere); "" for a file under neither."""
    path = path.resolve()
    for prefix, root in (("/files/", feed.output), ("/records/", records_dir(feed))):
        root = None if root is None else root.resolve()
        if root is not None and path.is_relative_to(root):
            return prefix + path.relative_to(root).as_posix()
    return ""


def _image(feed: StationFeed, v, camera: str, seq: int, kept: set[ViewKey] | None = None) -> str:
    """The recorder's saved overlay of an NG view (under the output or the recorder's folder), else the kept
    frame, else ""."""
    if v is not None and v.ng:
        rec = feed.recorder
        folder, ext = (rec.dir, rec.settings.image_format) if rec is not None else (feed.output, "png")
        overlay = ng_image_path(folder, feed.run_id, seq, "overlay", ext, camera)
        url = file_url(feed, overlay) if overlay.is_file() else ""
        if url:
            return url
    is_kept = _is_kept(feed, camera, seq, kept)
    return part_url(camera, seq, feed.run_id, v.model if v is not None else "") if is_kept else ""


def latest_jpeg(feed: StationFeed, cache: JpegCache) -> bytes | None:
    part = feed.latest
    if part is None or part.frame is None:
        return None
    v = part.verdict
    return cache.get(("live", v.camera, v.seq, v.model), lambda: overlay_jpeg(
        part.frame.image, part.anomaly_map, v.threshold, verdict=v, zone_outlines=feed.zone_outlines))


def live_jpeg(feed: StationFeed, cache: JpegCache, seq: int | None, camera: str = "") -> bytes | None:
    """The live image of view (camera, seq), the part whose verdict the page shows beside it, while its frame is kept
    (``part_jpeg``); the latest part's when seq is None or no longer kept (None before the first part)."""
    data = part_jpeg(feed, cache, seq, camera) if seq is not None else None
    return data if data is not None else latest_jpeg(feed, cache)


def part_jpeg(feed: StationFeed, cache: JpegCache, seq: int, camera: str = "") -> bytes | None:
    """A kept view's frame with its heat map (None once it has left the keep_frames window)."""
    part = feed.kept_part(seq, camera)
    if part is None or part.frame is None:
        return None
    v = part.verdict
    return cache.get(("part", v.camera, v.seq, v.model), lambda: overlay_jpeg(
        part.frame.image, part.anomaly_map, v.threshold, verdict=v, zone_outlines=feed.zone_outlines))


def gallery(feed: StationFeed, actions: StationActions) -> dict:
    """NG parts of this run, newest first, with their overlay image (``file_url``), review and ``kept`` (its frame
    in memory, ``_is_kept``: the page greys a passed view's *miss* button without it, saying why with
    ``keep_frames``, ``console.keep_frames``).
    Several cameras viewing one part: each NG part with all its views (``views``: the camera that decided it
    marked, missing views named); lanes: each NG view with its camera. Time linear in the parts listed (each
    view's verdict is looked up, not searched for); the server builds it off its event loop."""
    labels = list(actions.labels.values())   # a copy: a review (another thread) may add one meanwhile
    reviewed = {k: sum(1 for lab in labels if lab == k) for k in REVIEW_LABELS}
    out = {"run": feed.run_id, "reviewed": reviewed, "labels": {k: text for k, (text, _) in REVIEW_LABELS.items()},
           "keep_frames": feed.settings.keep_frames}
    kept = _kept_views(feed)
    if feed.cell is not None and feed.cell.parts():
        return {**out, "parts": [_gallery_part(feed, actions, row, kept)
                                 for row in reversed(list(feed.ng_part_rows))],
                "cameras": feed.cameras()}
    parts = []
    for v in reversed(list(feed.ng)):
        item = _part(v, actions.labels)
        item["kept"] = _is_kept(feed, v.camera, v.seq, kept)
        item["image"] = _image(feed, v, v.camera, v.seq, kept)
        parts.append(item)
    return {**out, "parts": parts}


def _kept_views(feed: StationFeed) -> set[ViewKey]:
    """The views whose frame ``feed.kept_part`` finds now (kept frames, each camera's latest, the latest), as one
    set: a page of thousands of views asks once, not once a view."""
    kept = {(p.verdict.camera, p.verdict.seq) for p in list(feed.frames)}
    kept |= {(c, p.verdict.seq) for c, p in list(feed.latest_views.items())}
    latest = feed.latest
    if latest is not None:
        kept.add((latest.verdict.camera, latest.verdict.seq))
    return kept


def _gallery_part(feed: StationFeed, actions: StationActions, row: dict, kept: set[ViewKey] | None = None) -> dict:
    views = [_view(feed, actions, camera, view.get("seq"), view.get("missing", ""), kept,
                   decided=camera == row.get("camera") and camera in row.get("ng_views", ()), row_view=view)
             for camera, view in row["views"].items()]
    return {**_part_head(row), "views": views}
