"""What an NG part's saved images are: their file names and what the overlay shows.

``DIR/ng/RUNID_SEQ_frame.EXT`` (the frame as captured) and ``DIR/ng/RUNID_SEQ_overlay.EXT`` (the heat map over the
frame, its colour scale, and the score, threshold, source and sequence number written above; defect region boxes
(red: fired a rule) and zone outlines drawn on it, the reason written above); ``ng_image_path`` names them for the
recorder's image writer (``line.image_writer``), which draws the overlay with ``draw_overlay``, and for the console,
which reads them back.
"""

from __future__ import annotations

import functools
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from ..errors import RecorderError
from ..images import gray_2d
from ..plots import heat_scale, heatmap_panel, threshold_mark
from ..regions import draw_regions

if TYPE_CHECKING:
    from ..records import Verdict


def image_array(image: object) -> np.ndarray:
    """A frame's image to save as it is; ``RecorderError`` for one that is no numpy array (a malformed frame's None
    or list, which the station judged NG, not inspected): ``ImageWriter._write_images`` counts it ``images_failed``."""
    if isinstance(image, np.ndarray):
        return image
    raise RecorderError(f"expected the frame's image as a numpy array; found {type(image).__name__}")


def _ascii(text: str) -> str:
    """The reason as the image font (ASCII only) can draw it: mm² -> mm2, ≥ -> >=, letters with accents without
    them (a zone named Dichtfläche -> Dichtflache: NFKD, combining marks dropped) and any other character '?'."""
    plain = unicodedata.normalize("NFKD", text.replace("²", "2").replace("≥", ">="))
    return "".join("?" if not c.isascii() else c for c in plain if not unicodedata.combining(c))


def score_line(verdict: Verdict) -> str:
    """An NG image's first line: its score against the threshold. "> threshold T" only when the score is over it; a
    part NG at or under it says why: "<= threshold T, NG by rule" (the rule's reason is written below) or, for a
    frame that could not be judged (``Verdict.error``, NG fail-safe), "NG: not inspected". The score alone where
    there is no finite threshold, "-" for a frame not scored."""
    if verdict.score is None:
        return "NG  score -"
    text = f"NG  score {verdict.score:.4f}"
    if not np.isfinite(verdict.threshold):
        return text
    if verdict.score > verdict.threshold:
        return text + f" > threshold {verdict.threshold:.4f}"
    why = "NG by rule" if verdict.hits else ("NG: not inspected" if verdict.error else "NG")
    return text + f" <= threshold {verdict.threshold:.4f}, {why}"


def ng_image_path(folder: Path, run_id: str, seq: int, kind: str, ext: str, camera: str = "") -> Path:
    """Where the recorder saves an NG part's image (``ng/RUN_SEQ_KIND.EXT``, so a later run into the
    same folder overwrites nothing; ``ng/RUN_CAMERA_SEQ_KIND.EXT`` for a camera of several, whose
    sequence numbers are its own); kind: ``frame`` (as captured) or ``overlay``."""
    return Path(folder) / "ng" / f"{run_id}_{camera + '_' if camera else ''}{seq:08d}_{kind}.{ext}"


def draw_overlay(image: np.ndarray, amap: np.ndarray, verdict: Verdict, alpha: float,
                 zone_outlines: list[np.ndarray]) -> np.ndarray:
    """Heatmap over the frame on the station's scale (``plots.heat_scale``: 0 .. 2 x threshold on every image,
    or for a fused bundle's map, ``Verdict.fused``, threshold -/+ its half scale), so the threshold is the middle
    of the colour map (green) and hot spots of NG parts show red; above it the score against the threshold
    (``score_line``), source and sequence number, beside it the colour scale. image: (H, W, 3) uint8 BGR or (H, W)
    / (H, W, 1) uint8; amap: (h, w) float32, any size (resized to the frame); alpha: ``record.overlay_alpha``;
    zone_outlines: (K, 2) int32 (x, y) frame pixels each (``region_marks``). Returns the panel, uint8 BGR."""
    image = gray_2d(image)
    bgr = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else image
    threshold = verdict.threshold
    known = bool(np.isfinite(threshold))
    mark, why = threshold_mark(verdict.score, amap, threshold if known else None)
    lines = [score_line(verdict), f"seq {verdict.seq}  source {verdict.source or '-'}", *why] + (
        [_ascii(verdict.reason)] if verdict.hits else [])
    return heatmap_panel(bgr, amap, *heat_scale(amap, threshold, verdict.fused), lines, threshold=mark,
                         show_original=False, alpha=alpha, min_side=0,
                         marks=region_marks(verdict, zone_outlines))


def region_marks(verdict: Verdict,
                 zone_outlines: list[np.ndarray]) -> Callable[[np.ndarray], np.ndarray] | None:
    """Draws the verdict's regions and the zone outlines on the overlay, or None when there is neither."""
    if not verdict.regions and not zone_outlines:
        return None
    fired = {h.region for h in verdict.hits if h.region is not None}
    return functools.partial(draw_regions, regions=verdict.regions, fired=fired, zone_outlines=zone_outlines)
