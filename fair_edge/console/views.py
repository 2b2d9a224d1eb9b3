"""What the pages show, as plain JSON-ready dicts and JPEG bytes (console thread only)."""

from __future__ import annotations

import time

from fair_edge.console.actions import REVIEW_LABELS, StationActions
from fair_edge.console.feed import StationFeed, finite
from fair_edge.console.render import JpegCache, overlay_jpeg
from fair_edge.line.recorder import ng_image_path

RECENT_SHOWN = 24


def _part(v, labels: dict[int, str]) -> dict:
    return {"seq": v.seq, "score": finite(v.score), "threshold": v.threshold, "ng": v.ng, "source": v.source,
            "latency_ms": round(v.latency_ms, 2), "model": v.model, "error": v.error,
            "review": labels.get(v.seq, ""), "regions": len(v.regions), "reason": v.reason}


def live_state(feed: StationFeed, actions: StationActions) -> dict:
    """Everything the live page shows."""
    latest = feed.latest
    recent = list(feed.recent)[-RECENT_SHOWN:]
    kept = {p.verdict.seq for p in list(feed.frames)} if feed.settings.keep_frames else set()
    return {
        "time": time.time(), "run": feed.run_id, "count": feed.count, "rate_fps": feed.rate(),
        "counters": feed.counters(), "latency": feed.latency(), **feed.state(),
        "drift": feed.drift.state().to_dict(),
        "latest": None if latest is None else _part(latest.verdict, actions.labels),
        "recent": [dict(_part(v, actions.labels), kept=v.seq in kept) for v in reversed(recent)],
        "swap": actions.swap_status,
    }


def latest_jpeg(feed: StationFeed, cache: JpegCache) -> bytes | None:
    part = feed.latest
    if part is None or part.frame is None:
        return None
    v = part.verdict
    return cache.get(("live", v.seq, v.model), lambda: overlay_jpeg(part.frame.image, part.anomaly_map, v.threshold,
                                                                   verdict=v, zone_outlines=feed.zone_outlines))


def part_jpeg(feed: StationFeed, cache: JpegCache, seq: int) -> bytes | None:
    """A kept part's frame with its heat map (None once it has left the keep_frames window)."""
    part = feed.kept_part(seq)
    if part is None or part.frame is None:
        return None
    v = part.verdict
    return cache.get(("part", v.seq, v.model), lambda: overlay_jpeg(part.frame.image, part.anomaly_map, v.threshold,
                                                                   verdict=v, zone_outlines=feed.zone_outlines))


def gallery(feed: StationFeed, actions: StationActions) -> dict:
    """NG parts of this run, newest first, with their overlay image (under the output folder) and review."""
    rec = feed.recorder
    folder, ext = (rec.dir, rec.settings.image_format) if rec is not None else (feed.output, "png")
    out = feed.output.resolve()
    parts = []
    for v in reversed(list(feed.ng)):
        item = _part(v, actions.labels)
        overlay = ng_image_path(folder, feed.run_id, v.seq, "overlay", ext, v.camera).resolve()
        item["image"] = f"/files/{overlay.relative_to(out).as_posix()}" if overlay.is_relative_to(out) \
            and overlay.is_file() else (f"/api/part/{v.seq}.jpg" if feed.kept_part(v.seq) else "")
        parts.append(item)
    reviewed = {k: sum(1 for lab in actions.labels.values() if lab == k) for k in REVIEW_LABELS}
    return {"run": feed.run_id, "parts": parts, "reviewed": reviewed,
            "labels": {k: text for k, (text, _) in REVIEW_LABELS.items()}}
