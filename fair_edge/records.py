"""The records that flow through a station: frames from a camera, verdicts to the line."""

from __future__ import annotations

import json
import logging
import math
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from datetime import datetime, timezone

import numpy as np

from fair_edge.regions import Region, logged_size

log = logging.getLogger(__name__)


def new_run_id() -> str:
    """A run id that sorts by start time: ``20261129T134000Z-3f2a`` (UTC second, 4 random hex digits). Two ids drawn
    in the same second are equal once in 65 536."""
    return f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-{secrets.token_hex(2)}"


class WallClock:
    """Turns ``time.monotonic()`` seconds into UTC wall-clock time.

    The offset between the two clocks is held while it drifts by less than ``STEP_S`` (so the times of
    one run share one clock and sub-second NTP slews do not jitter them), and follows a step of the wall
    clock larger than that (an NTP correction after a Jetson without a clock battery booted at its last
    shutdown time), logged once per step: ``time_utc`` then stays a real moment, the one ``audit.jsonl``
    names. Ordering comes from the monotonic times, never from ``time_utc``.
    """

    STEP_S = 1.0

    def __init__(self) -> None:
        self.offset_s = time.time() - time.monotonic()

    def iso(self, t_monotonic: float) -> str:
        """ISO 8601 UTC with milliseconds, e.g. ``2026-11-29T13:40:00.123Z``."""
        offset_now = time.time() - time.monotonic()
        if abs(offset_now - self.offset_s) > self.STEP_S:
            log.warning("the wall clock stepped by %+.1f s; time_utc follows it from here",
                        offset_now - self.offset_s)
            self.offset_s = offset_now
        t = datetime.fromtimestamp(t_monotonic + self.offset_s, timezone.utc)
        return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


@dataclass(frozen=True)
class Frame:
    """One camera frame.

    seq: sequence number assigned by the source, strictly increasing (gaps = frames lost).
    t_capture: ``time.monotonic()`` seconds when the frame was captured (or read).
    image: (H, W, 3) uint8 BGR or (H, W) uint8 gray, host memory; never mutated after creation.
    source: what produced it (camera name, file name of a replayed image).
    camera: the station's name for the camera (several cameras: ``cameras[].name``); "" with one camera.
    resumed: the first frame after frames were lost that ``seq`` does not count (a missed read or a reconnect
    with no gap in seq): from here on, seq no longer tells which trigger a frame answers.
    """

    seq: int
    t_capture: float
    image: np.ndarray = field(repr=False)
    source: str = ""
    camera: str = ""
    resumed: bool = False


def size_text(value: float) -> str:
    """A region size or a rule's limit (mm², mm, px², px) as a reason writes it, never in scientific notation (the
    reason is read on the line, in logs and on the PLC's HMI): 3 significant figures below 1000 (``0.7``, ``12.3``,
    ``0.000025``), the whole number from there on (``2024``, ``5000``)."""
    if not math.isfinite(value):
        return str(value)
    if abs(value) >= 999.5:   # 3 significant figures would round 999.7 up to 1e+03
        return f"{value:.0f}"
    return np.format_float_positional(value, precision=3, unique=False, fractional=False, trim="-")


@dataclass(frozen=True)
class RuleHit:
    """A station rule that fired (``fair_edge.station.zones``).

    rule: its key (``min_area_mm2``, ``min_length_mm``, ``min_area_px``, ``min_length_px``, ``max_count``).
    zone / zone_id: the zone it belongs to (``default`` / 0 = outside every named zone). value: what was
    measured (a region's size, or the zone's region count); limit: the rule's number; unit: of both.
    region: index into ``Verdict.regions`` of the region that fired it, None for ``max_count``.
    """

    rule: str
    zone: str
    zone_id: int
    value: float
    limit: float
    unit: str
    region: int | None = None

    @property
    def reason(self) -> str:
        """In words, e.g. ``region 0.7 mm² in zone seal ≥ 0.5 mm²``, ``region 2024 px² in zone default ≥ 50 px²`` or
        ``4 regions in zone body > 3`` (sizes as ``size_text`` writes them)."""
        if self.rule == "max_count":
            return f"{self.value:.0f} regions in zone {self.zone} > {self.limit:.0f}"
        return (f"region {size_text(self.value)} {self.unit} in zone {self.zone} ≥ {size_text(self.limit)} "
                f"{self.unit}")

    def to_json_dict(self) -> dict:
        return {"rule": self.rule, "zone": self.zone, "zone_id": self.zone_id, "value": logged_size(self.value),
                "limit": self.limit, "unit": self.unit, "region": self.region, "reason": self.reason}


@dataclass(frozen=True)
class Verdict:
    """The decision for one frame.

    seq, t_capture, source: copied from the frame. score: image anomaly score (max of the map), None
    when the frame was not scored. threshold: the decision threshold in force. ng: score > threshold
    (True = reject the part). t_verdict: ``time.monotonic()`` seconds when the decision was made.
    error: why the frame could not be inspected ("" when it was). Fail-safe rule: a frame that
    cannot be inspected (malformed image, inference failure) gets score None and ng=True, so its
    part is rejected rather than passed unseen. model: id of the model that decided it
    (``fair_edge.runtime.hotswap.model_id``; "" when unknown). regions: the defect regions found in
    its map, largest first (``fair_edge.regions``; empty when regions are off). hits: the station rules
    that fired; with rules set, ng = bool(hits) for an inspected frame. Both are per view: a
    multi-camera part record can hold one Verdict per view. camera: the frame's ``Frame.camera``. fused: scored by
    a fused bundle (``runtime.fusion``): score, threshold and map count its members' normal spreads and may be
    below 0, whatever the threshold's sign, so the pictures (``plots.heat_scale``) and the console's score bar place
    them around the threshold, not from 0.
    """

    seq: int
    t_capture: float
    score: float | None
    threshold: float
    ng: bool
    t_verdict: float
    source: str = ""
    error: str = ""
    model: str = ""
    regions: tuple[Region, ...] = ()
    hits: tuple[RuleHit, ...] = ()
    camera: str = ""
    fused: bool = False

    @property
    def counted_regions(self) -> tuple[Region, ...]:
        """Its regions outside ``ignore: true`` zones, largest first: those in one fire nothing and are not counted
        (``Region.ignored``)."""
        return tuple(r for r in self.regions if not r.ignored)

    @property
    def reported_region(self) -> Region | None:
        """The one region the line is told the size of (the PLC's ``largest_area`` with ``zone_id``, `rules check`'s
        ``largest_area_mm2``): the region that fired the first rule hit (a ``max_count`` hit: the largest counted
        region of its zone), so its size and zone belong together; without a hit the largest counted region
        (``counted_regions``); None when there is none."""
        counted = self.counted_regions
        if not self.hits:
            return counted[0] if counted else None
        hit = self.hits[0]
        if hit.region is not None and hit.region < len(self.regions):
            return self.regions[hit.region]
        return next((r for r in counted if r.zone_id == hit.zone_id), None)

    @property
    def reason(self) -> str:
        """Why it is NG in words: the fired rules joined with '; ' ('' when none fired)."""
        return "; ".join(h.reason for h in self.hits)

    @property
    def latency_ms(self) -> float:
        """Capture -> verdict latency in milliseconds."""
        return (self.t_verdict - self.t_capture) * 1000.0

    def to_json_dict(self) -> dict:
        return {
            "seq": self.seq,
            "t_capture": self.t_capture,
            "t_verdict": self.t_verdict,
            "latency_ms": round(self.latency_ms, 3),
            "score": self.score,
            "threshold": self.threshold,
            "ng": self.ng,
            "source": self.source,
            **({"camera": self.camera} if self.camera else {}),
            **({"error": self.error} if self.error else {}),
            **({"model": self.model} if self.model else {}),
            **({"regions": [r.to_json_dict() for r in self.regions]} if self.regions else {}),
            **({"hits": [h.to_json_dict() for h in self.hits], "reason": self.reason} if self.hits else {}),
        }


def json_safe(value: Any) -> Any:
    """``value`` with every NaN or infinite float (in dicts, lists and tuples, at any depth) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def json_file_text(value: Any) -> str:
    """``value`` as the text of a JSON report file (summary.json, demo_report.json): strict JSON (``json_safe``: a
    NaN or infinite number as null, which JavaScript's JSON.parse reads), indented, other types as ``str``, one
    trailing newline."""
    return json.dumps(json_safe(value), indent=2, default=str, allow_nan=False) + "\n"
