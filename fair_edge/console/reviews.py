"""An operator's review of a view (``StationActions.review``): the labels it may give (``REVIEW_LABELS``) and the
frame kept with it under review/ (``review_image``: from the console's memory, else the recorder's NG image; a
view whose frame is in neither is refused, ``not_kept`` saying why and what to do)."""

from __future__ import annotations

from fair_edge.console.feed import StationFeed
from fair_edge.images import read_stored
from fair_edge.line.ng_images import ng_image_path

# label -> (what the operator says, which verdicts it applies to)
REVIEW_LABELS = {
    "defect": ("confirmed defect", "ng"),
    "false_reject": ("false reject", "ng"),
    "miss": ("miss: passed, but defective", "ok"),
}


def review_image(feed: StationFeed, run_id: str, verdict):
    """The frame of ``verdict``'s view ((H, W[, C]) uint8): kept in ``feed``'s memory, else the recorder's NG image of
    run ``run_id``; None when neither exists any more."""
    part = feed.kept_part(verdict.seq, verdict.camera)
    if part is not None and part.frame is not None:
        return part.frame.image
    rec = feed.recorder
    folder, ext = (rec.dir, rec.settings.image_format) if rec is not None else (feed.output, "png")
    return read_stored(ng_image_path(folder, run_id, verdict.seq, "frame", ext, verdict.camera), "NG frame")


def not_kept(what: str, label: str, kept: int) -> str:
    """FrameNotKept's text: why the review of ``what`` as ``label`` is refused (``kept``: console.keep_frames) and
    what to do."""
    return (f"{what} cannot be reviewed as {label!r}: its frame has left the console's memory (the last {kept} "
            f"frames are kept, console.keep_frames) and no NG image of it is recorded, so the review would reach the "
            f"dataset without its image; nothing was recorded. Mark a part while it is among the last {kept} (the "
            f"live page greys its miss button once its frame is gone), or raise console.keep_frames in the station "
            f"file to keep more frames (memory: one frame each)")
