"""The station file's ``regions:`` section: defect regions, the camera scale, zones and their rules.

    regions:
      enabled: true            # find regions in every scored frame (false: off)
      pixel_threshold: null    # null = the bundle's calibrated one (bundle.json, of the graph the backend runs)
      mm_per_px: null          # camera scale, mm per frame pixel; or scale: {points: [[x, y], [x, y]], mm: D}
      frame: null              # [width, height] of the frames the scale and zones are for (needed with zones)
      default: {}              # rules for regions outside every zone, e.g. {min_area_mm2: 0.5}
      zones:                   # first zone that holds a region's centroid owns it
        - {name: seal, polygon: [[100, 40], [500, 40], [500, 90], [100, 90]], min_area_mm2: 0.5}
        - {name: label, mask: label.png, ignore: true}      # mask image: white = zone, frame-sized
        - {name: body, polygon: [...], max_count: 3, min_length_mm: 2}

Rules (per zone and in ``default``): ``min_area_mm2`` / ``min_area_px``: a region at least this big
fires; ``min_length_mm`` / ``min_length_px``: a region at least this long fires; ``max_count``: more
regions than this in the zone fires; ``ignore: true``: its regions fire nothing and are not counted.
With any rule that can fire (a size limit or a count) the verdict is NG exactly when one fires (or
the frame could not be inspected); without one it is the score against the threshold, as before
(an ``ignore`` zone alone changes no verdict: use ``decision.roi`` to mask the score), and regions
are only reported. Checked on load: a zone outside ``frame``, a mm rule without a scale, a mask of another size.
A zone mask's pixels are read once, when the station file loads; a relative mask path is read from the current
folder, as every relative path of the station file (`fair-edge install-service` reads it from its --working-dir,
the folder the unit runs the station in; with --print, one missing there is a note: ``masks_may_be_missing``). A
SIGHUP reload reads and checks the whole section again (a section that does not load refuses the reload, naming it)
and each camera takes it with its reloaded bundle (``RegionJudge.for_bundle``), the change logged
(``settings_change``).
A frame of another size than ``frame`` (whenever it is set, zones or not: a camera scale or px rule set for one
size is wrong at another, e.g. after 2x2 binning) cannot be judged: ``judge`` raises a ConfigError naming both sizes
and the fix; the inspector logs it once per camera and frame size and counts it (``region_errors``). A camera scale
without ``frame`` is not refused (a sensor ROI keeps the scale, and the size it was measured at is unknown): loading
it logs a warning suggesting ``frame:``, and the judge logs a warning once per frame size other than the first one's.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np

from fair_edge.errors import ConfigError, DataError
from fair_edge import fields as f
from fair_edge.images import DRAWN_MASK_RULE, read_mask_pixels
from fair_edge.records import RuleHit
from fair_edge.regions import MapGeometry, Region, extract_regions, scale_from_points

log = logging.getLogger(__name__)

# rule key -> (Region attribute measured, unit shown, needs the camera scale)
SIZE_RULES = {
    "min_area_mm2": ("area_mm2", "mm²", True),
    "min_length_mm": ("length_mm", "mm", True),
    "min_area_px": ("area_px", "px²", False),
    "min_length_px": ("length_px", "px", False),
}
RULE_KEYS = (*SIZE_RULES, "max_count", "ignore")
DEFAULT_ZONE = "default"
# the zone masks missing where a load reads them, noted instead of refused (``masks_may_be_missing``); None (every
# load but install-service --print's) = a missing mask refuses the load
_MISSING_MASKS: ContextVar[list[Path] | None] = ContextVar("missing_zone_masks", default=None)
# a size exactly at its limit fires ("1 mm² or more"), also when the mm come out 1 ulp short (a scale from two
# points: 40.8 mm / 816 px = 0.049999999999999996 mm/px)
LIMIT_TOLERANCE = 1e-9
MAX_ZONES = int(np.iinfo(np.uint16).max)   # zone ids 1..MAX_ZONES fit the (H, W) uint16 label image


@dataclass(frozen=True)
class ZoneRules:
    """The rules of one zone: size limits (``SIZE_RULES``; None = unused), max_count (None = unused), ignore."""

    limits: tuple[tuple[str, float], ...] = ()
    max_count: int | None = None
    ignore: bool = False

    @property
    def fires(self) -> bool:
        """True when a rule here can fire (a size limit or a count; ``ignore`` alone never rejects)."""
        return not self.ignore and (bool(self.limits) or self.max_count is not None)

    @classmethod
    def from_dict(cls, where: str, data: dict) -> "ZoneRules":
        limits = tuple((k, f.number(where, k, data[k], minimum=0)) for k in SIZE_RULES if data.get(k) is not None)
        count = data.get("max_count")
        return cls(limits, None if count is None else f.integer(where, "max_count", count, minimum=0),
                   f.boolean(where, "ignore", data.get("ignore", False)))


@dataclass(frozen=True)
class Zone:
    """A named zone: zone_id (1, 2, ... in file order; 0 is the default zone), polygon (x, y) frame pixels
    or a mask image path (white = zone), and its rules. mask_pixels: the mask's (H, W) bool pixels, read and
    checked once when the station file loads (``_zone``); the file is never read again (a mask redrawn or
    removed while the station runs changes nothing until the station file is loaded again, e.g. by SIGHUP)."""

    name: str
    zone_id: int
    rules: ZoneRules
    polygon: tuple[tuple[float, float], ...] | None = None
    mask: Path | None = None
    mask_pixels: np.ndarray | None = field(default=None, compare=False, repr=False)

    def pixels(self, frame_hw: tuple[int, int]) -> np.ndarray:
        """(H, W) bool: the frame pixels in this zone (a mask zone's as loaded; no disk access)."""
        if self.polygon is not None:
            out = np.zeros(frame_hw, np.uint8)
            cv2.fillPoly(out, [np.round(np.asarray(self.polygon)).astype(np.int32)], 1)
            return out > 0
        return self.mask_pixels

    def outline(self, frame_hw: tuple[int, int]) -> list[np.ndarray]:
        """Its outline(s) as (K, 2) int32 (x, y) point arrays (for drawing on NG images)."""
        if self.polygon is not None:
            return [np.round(np.asarray(self.polygon)).astype(np.int32)]
        contours, _ = cv2.findContours(self.pixels(frame_hw).astype(np.uint8), cv2.RETR_EXTERNAL,
                                       cv2.CHAIN_APPROX_SIMPLE)
        return [c.reshape(-1, 2) for c in contours]


@dataclass(frozen=True)
class RegionSettings:
    """The ``regions:`` section (see the module docstring). frame: (width, height) or None."""

    enabled: bool = True
    pixel_threshold: float | None = None
    mm_per_px: float | None = None
    frame: tuple[int, int] | None = None
    default: ZoneRules = field(default_factory=ZoneRules)
    zones: tuple[Zone, ...] = ()
    max_regions: int = 64

    @property
    def has_rules(self) -> bool:
        """True when a rule can fire: the rules then decide the verdict (an ignore zone alone does not)."""
        return self.default.fires or any(z.rules.fires for z in self.zones)

    def outlines(self) -> list[np.ndarray]:
        """Every zone's outline, (K, 2) int32 (x, y) frame pixels each (for NG images and the console); [] when
        regions are off or there are no zones."""
        if not self.enabled or not self.zones:
            return []
        hw = (self.frame[1], self.frame[0])
        return [pts for zone in self.zones for pts in zone.outline(hw)]

    @classmethod
    def from_dict(cls, data: Any, base: Path | None = None) -> "RegionSettings":
        """base: the folder a relative zone mask path is read from (``fair-edge install-service``: its
        --working-dir, where the unit runs the station); None = the current folder, where `fair-edge run` reads it
        (as every relative path of the station file: the unit's WorkingDirectory=)."""
        s = "regions"
        d = f.check_keys(s, data, ["enabled", "pixel_threshold", "mm_per_px", "scale", "frame", "default", "zones",
                                   "max_regions"])
        scale = _scale(d)
        frame = _frame(d.get("frame"))
        default = ZoneRules.from_dict(f"{s}.default", f.check_keys(f"{s}.default", d.get("default"), RULE_KEYS))
        zones = tuple(_zone(i, z, frame, base) for i, z in enumerate(_zone_list(d.get("zones"))))
        names = [z.name for z in zones]
        for name in names:
            if names.count(name) > 1 or name == DEFAULT_ZONE:
                raise ConfigError(f"regions.zones: zone name {name!r} is used twice or is reserved "
                                  f"('{DEFAULT_ZONE}' is the rest of the frame); give each zone its own name.")
        out = cls(f.boolean(s, "enabled", d.get("enabled", True)),
                  None if d.get("pixel_threshold") is None else f.number(s, "pixel_threshold", d["pixel_threshold"]),
                  scale, frame, default, zones, f.integer(s, "max_regions", d.get("max_regions", 64), minimum=1))
        _check_units(out)
        _check_counts(out)
        _warn_scale_without_frame(out)
        return out


def _warn_scale_without_frame(s: "RegionSettings") -> None:
    """A camera scale holds only at the frame size it was measured at; without ``frame`` that size is not checked."""
    if s.enabled and s.mm_per_px is not None and s.frame is None:
        log.warning("regions: the camera scale (%g mm/px) is set without regions.frame, so frames of another size "
                    "(binning, decimation) are judged with it unchecked; set regions.frame: [width, height] to the "
                    "frame size the scale was measured at", s.mm_per_px)


def _check_counts(s: "RegionSettings") -> None:
    """A zone keeps at most ``max_regions`` regions, so a ``max_count`` of that many or more could never fire."""
    for where, rules in [("regions.default", s.default)] + [(f"regions.zones ({z.name})", z.rules) for z in s.zones]:
        if rules.max_count is not None and rules.max_count >= s.max_regions:
            raise ConfigError(f"{where}.max_count: expected less than regions.max_regions ({s.max_regions}), found "
                              f"{rules.max_count}: a zone keeps at most max_regions regions, so the rule could never "
                              "fire; raise regions.max_regions or lower max_count.")


def _zone_list(value: Any) -> list:
    """The zones: a list of at most MAX_ZONES (their ids, 1.., are stored in a uint16 label image)."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConfigError(f"regions.zones: expected a list of zones ({{name, polygon or mask, rules}}), found {value!r}")
    if len(value) > MAX_ZONES:
        raise ConfigError(f"regions.zones: expected at most {MAX_ZONES} zones, found {len(value)}; merge zones "
                          "that share their rules into one mask image.")
    return value


def _scale(d: Any) -> float | None:
    if d.get("mm_per_px") is not None and d.get("scale") is not None:
        raise ConfigError("regions: give the camera scale once, as mm_per_px or as scale: {points, mm}; found both.")
    if d.get("mm_per_px") is not None:
        value = f.number("regions", "mm_per_px", d["mm_per_px"], minimum=0)
        f.require(value > 0, "regions.mm_per_px", "a number > 0 (mm per frame pixel)", value)
        return value
    if d.get("scale") is None:
        return None
    sc = f.check_keys("regions.scale", d["scale"], ["points", "mm"])
    pts = sc.get("points")
    f.require(isinstance(pts, list) and len(pts) == 2 and all(_is_point(p) for p in pts), "regions.scale.points",
              "two frame points [[x1, y1], [x2, y2]] a known distance apart", pts)
    return scale_from_points(tuple(pts[0]), tuple(pts[1]), f.number("regions.scale", "mm", sc.get("mm"), minimum=0))


def _is_point(p: Any) -> bool:
    return isinstance(p, (list, tuple)) and len(p) == 2 and all(f.is_number(v) for v in p)


def _frame(value: Any) -> tuple[int, int] | None:
    if value is None:
        return None
    f.require(isinstance(value, (list, tuple)) and len(value) == 2 and all(f.is_int(v) and v > 0 for v in value),
              "regions.frame", "[width, height] of the camera's frames in pixels", value)
    return int(value[0]), int(value[1])


def _zone(i: int, data: Any, frame: tuple[int, int] | None, base: Path | None) -> Zone:
    where = f"regions.zones[{i}]"
    d = f.check_keys(where, data, ["name", "polygon", "mask", *RULE_KEYS])
    name = f.text(where, "name", d.get("name"))
    if frame is None:
        raise ConfigError(f"{where} ({name}): zones are drawn in frame pixels; set regions.frame: [width, height] "
                          "to the camera's frame size so they can be checked.")
    w, h = frame
    if (d.get("polygon") is None) == (d.get("mask") is None):
        raise ConfigError(f"{where} ({name}): give exactly one of polygon: [[x, y], ...] or mask: IMAGE; "
                          f"found {'both' if d.get('polygon') is not None else 'neither'}.")
    rules = ZoneRules.from_dict(where, d)
    if d.get("polygon") is not None:
        pts = d["polygon"]
        f.require(isinstance(pts, list) and len(pts) >= 3 and all(_is_point(p) for p in pts), f"{where}.polygon",
                  "at least three [x, y] frame points", pts)
        for x, y in pts:
            if not (0 <= x <= w and 0 <= y <= h):
                raise ConfigError(f"{where}.polygon ({name}): point [{x}, {y}] lies outside the {w} x {h} frame "
                                  f"(regions.frame); keep every point within x 0..{w}, y 0..{h} or fix regions.frame.")
        return Zone(name, i + 1, rules, polygon=tuple((float(x), float(y)) for x, y in pts))
    given = Path(f.text(where, "mask", d["mask"]))
    path = base / given if base is not None and not given.is_absolute() else given
    noted = _MISSING_MASKS.get()
    if noted is not None and not path.exists():   # install-service --print: the unit may be for another machine
        noted.append(path)
        return Zone(name, i + 1, rules, mask=path)
    if not path.is_file():
        read_from = (f" (a relative mask path is read from {base}, the folder the station runs in)" if path != given
                     else "")
        raise ConfigError(f"{where}.mask ({name}): {path} is missing or not an image{read_from}; give a black/white "
                          "mask image.")
    try:
        pixels = read_mask_pixels(path, "zone mask", drawn=True)   # white, not transparent; orientation tags ignored
    except DataError as exc:
        raise ConfigError(f"{where}.mask ({name}): {exc} Give a black/white mask image.") from exc
    if pixels.shape != (h, w):
        raise ConfigError(f"{where}.mask ({name}): {path} is {pixels.shape[1]} x {pixels.shape[0]}; expected the "
                          f"frame size {w} x {h} (regions.frame). Draw the mask over a saved frame.")
    if not pixels.any():
        raise ConfigError(f"{where}.mask ({name}): {path} is all black, so the zone would hold no pixel; draw the "
                          f"zone in white ({DRAWN_MASK_RULE}) over a saved frame, or remove the zone.")
    pixels.setflags(write=False)
    return Zone(name, i + 1, rules, mask=path, mask_pixels=pixels)


@contextlib.contextmanager
def masks_may_be_missing() -> Iterator[list[Path]]:
    """While in it (this thread or task), a zone mask missing where the station file's load reads it does not refuse
    the load: its zone is kept without pixels (``Zone.mask_pixels`` None: never to be judged; only `fair-edge
    install-service --print`, whose unit may be for another machine, loads so) and its path (as read: relative ones
    under the load's base) is added to the list yielded. A mask that is there is read and checked as always."""
    missing: list[Path] = []
    token = _MISSING_MASKS.set(missing)
    try:
        yield missing
    finally:
        _MISSING_MASKS.reset(token)


def _check_units(s: RegionSettings) -> None:
    """A mm rule needs the camera scale."""
    if s.mm_per_px is not None:
        return
    for where, rules in [("regions.default", s.default)] + [(f"regions.zones[{z.zone_id - 1}]", z.rules) for z in s.zones]:
        for key, _ in rules.limits:
            if SIZE_RULES[key][2]:
                raise ConfigError(f"{where}.{key}: a rule in mm needs the camera scale; set regions.mm_per_px "
                                  f"(or regions.scale: {{points: [[x1, y1], [x2, y2]], mm: D}}), or use "
                                  f"{key.replace('mm2', 'px').replace('mm', 'px')} in frame pixels.")


class RegionJudge:
    """Regions and rule hits for one scored frame: ``judge(frame_hw, anomaly_map) -> (regions, hits)``.

    pixel_threshold: map pixels above it form regions (score units). roi: (x, y, w, h) frame pixels a tiled
    bundle's map covers, None = the whole frame. camera: named in its logs ('' = one camera or unknown). Zones are
    rasterised once, at the first frame."""

    def __init__(self, settings: RegionSettings, pixel_threshold: float, roi: tuple[int, ...] | None = None,
                 camera: str = "") -> None:
        self.settings, self.pixel_threshold, self.roi, self.camera = settings, float(pixel_threshold), roi, camera
        self._labels: np.ndarray | None = None   # (H, W) uint16 zone id per frame pixel, 0 = default
        # without regions.frame: the (H, W) of the first frame judged with a camera scale, and the sizes logged
        self.first_frame_hw: tuple[int, int] | None = None
        self._sizes_logged: set[tuple[int, int]] = set()

    def for_bundle(self, bundle, settings: RegionSettings | None = None, camera: str = "",
                   graph_threshold=None) -> "RegionJudge | None":
        """The judge for a hot-swapped bundle (plain or fused): these rules, or ``settings`` (the ``regions:`` a
        SIGHUP reload re-read), with the bundle's pixel threshold calibrated on the graph the new scorer runs
        (``graph_threshold``: its ``FrameScorer.graph_threshold``) and the frame rectangle its map covers
        (``map_area``), unless the settings set the pixel threshold; a bundle without one keeps the current
        threshold (logged, naming ``camera`` when given). None when ``settings`` turn regions off."""
        new_settings = self.settings if settings is None else settings
        judge = judge_for_bundle(new_settings, bundle, self.pixel_threshold, camera, graph_threshold)
        if judge is not None and judge.settings.mm_per_px == self.settings.mm_per_px:
            judge.first_frame_hw = self.first_frame_hw   # the same scale: compare with the same first frame
        return judge

    @property
    def decides(self) -> bool:
        """True when rules decide the verdict (any rule given), False when regions are only reported."""
        return self.settings.has_rules

    def outlines(self) -> list[np.ndarray]:
        """Every zone's outline, (K, 2) int32 (x, y) frame pixels each (for NG images and the console)."""
        return self.settings.outlines()

    def zone_labels(self, frame_hw: tuple[int, int]) -> np.ndarray:
        """(H, W) uint16: the zone id of every frame pixel (first zone in file order wins; 0 = default; at most
        MAX_ZONES zones, checked on load)."""
        if self._labels is None or self._labels.shape != tuple(frame_hw):
            labels = np.zeros(frame_hw, np.uint16)
            for zone in reversed(self.settings.zones):
                labels[zone.pixels(frame_hw)] = zone.zone_id
            self._labels = labels
        return self._labels

    def judge(self, frame_hw: tuple[int, int], anomaly_map: np.ndarray) -> tuple[tuple[Region, ...], tuple[RuleHit, ...]]:
        """frame_hw: the frame's (H, W); anomaly_map: (h, w) float32 host map of that frame.
        Raises ConfigError when ``regions.frame`` is set and the frame is not that size."""
        s = self.settings
        self.check_frame(frame_hw)
        geo = MapGeometry.of(frame_hw, anomaly_map.shape, self.roi)
        regions = extract_regions(anomaly_map, self.pixel_threshold, geo, s.mm_per_px, s.max_regions,
                                  group=self._zone_of(frame_hw))
        names = {0: DEFAULT_ZONE, **{z.zone_id: z.name for z in s.zones}}
        ignored = {zone_id for zone_id, rules in [(0, s.default), *((z.zone_id, z.rules) for z in s.zones)]
                   if rules.ignore}
        regions = tuple(replace(r, zone=names[r.zone_id], ignored=r.zone_id in ignored) for r in regions)
        return regions, self._hits(regions, [r.zone_id for r in regions])

    def check_frame(self, frame_hw: tuple[int, int]) -> None:
        """frame_hw: the frame's (H, W) px. ConfigError when ``regions.frame`` is set (zones or not) and differs;
        without it, a camera scale's frame size is only watched (``_watch_scale_size``)."""
        s = self.settings
        if s.frame is not None and (frame_hw[1], frame_hw[0]) != s.frame:
            raise ConfigError(zone_frame_mismatch(frame_hw, s.frame) if s.zones else frame_mismatch(frame_hw, s))
        if s.frame is None and s.mm_per_px is not None:
            self._watch_scale_size(tuple(frame_hw))

    def _watch_scale_size(self, frame_hw: tuple[int, int]) -> None:
        """Log a warning, once per size, for a frame (H, W) px of another size than the first one judged: the camera
        scale (set without ``regions.frame``) may not hold at that size; its mm are still reported."""
        if self.first_frame_hw is None:
            self.first_frame_hw = frame_hw
        if frame_hw == self.first_frame_hw or frame_hw in self._sizes_logged:
            return
        self._sizes_logged.add(frame_hw)
        (h, w), (fh, fw) = frame_hw, self.first_frame_hw
        where = f" (camera {self.camera})" if self.camera else ""
        log.warning("regions%s: frame is %d x %d, the first was %d x %d; the camera scale (%g mm/px) holds at the "
                    "size it was measured at only, so mm sizes and mm rules may be wrong at one of them (binning or "
                    "decimation changed?); set regions.frame: [width, height] to the size it was measured at, so "
                    "frames of another size are refused (logged once per size)", where, w, h, fw, fh,
                    self.settings.mm_per_px)

    def _zone_of(self, frame_hw: tuple[int, int]) -> Callable[[np.ndarray], np.ndarray]:
        """(N, 2) frame centroids (x, y) -> (N,) zone ids (0 = default; first zone in file order wins)."""
        labels = self.zone_labels(frame_hw) if self.settings.zones else None

        def zone_of(xy: np.ndarray) -> np.ndarray:
            if labels is None:
                return np.zeros(len(xy), np.int64)
            rows = np.clip(xy[:, 1].astype(np.int64), 0, frame_hw[0] - 1)
            cols = np.clip(xy[:, 0].astype(np.int64), 0, frame_hw[1] - 1)
            return labels[rows, cols].astype(np.int64)

        return zone_of

    def _hits(self, regions: tuple[Region, ...], zone_ids: list[int]) -> tuple[RuleHit, ...]:
        hits: list[RuleHit] = []
        for zone_id, name, rules in [(0, DEFAULT_ZONE, self.settings.default)] + [
                (z.zone_id, z.name, z.rules) for z in self.settings.zones]:
            if rules.ignore:
                continue
            mine = [i for i, z in enumerate(zone_ids) if z == zone_id]
            for i in mine:
                for key, limit in rules.limits:
                    value = getattr(regions[i], SIZE_RULES[key][0])
                    if value is not None and value >= limit * (1 - LIMIT_TOLERANCE):
                        hits.append(RuleHit(key, name, zone_id, float(value), limit, SIZE_RULES[key][1], i))
            if rules.max_count is not None and len(mine) > rules.max_count:
                hits.append(RuleHit("max_count", name, zone_id, float(len(mine)), float(rules.max_count), "regions"))
        return tuple(hits)


def zone_frame_mismatch(frame_hw: tuple[int, int], zones_frame: tuple[int, int]) -> str:
    """Why a frame of ``frame_hw`` (H, W) px cannot be judged by zones drawn on ``zones_frame`` (width, height)
    frames (``regions.frame``): both sizes and the two fixes."""
    (h, w), (zw, zh) = frame_hw, zones_frame
    return (f"frame is {w} x {h} but the zones were drawn for {zw} x {zh} (regions.frame); expected {zw} x {zh} px "
            f"frames, found {w} x {h}: set the camera back to {zw} x {zh} (binning, decimation or sensor ROI changed?), "
            f"or redraw the zones on a {w} x {h} frame and set regions.frame: [{w}, {h}]")


def frame_mismatch(frame_hw: tuple[int, int], settings: RegionSettings) -> str:
    """Why a frame of ``frame_hw`` (H, W) px cannot be judged by ``settings`` without zones whose ``regions.frame``
    (width, height) differs: its camera scale and px rules hold at that size only. Both sizes and the two fixes."""
    (h, w), (fw, fh) = frame_hw, settings.frame
    scaled = settings.mm_per_px is not None
    redo = (f"measure the camera scale (regions.mm_per_px or scale) on a {w} x {h} frame" if scaled
            else f"set the region rules for {w} x {h} frames")
    measured = "camera scale and region rules were" if scaled else "region rules were"
    return (f"frame is {w} x {h} but regions.frame is {fw} x {fh}, the size the {measured} set for; expected "
            f"{fw} x {fh} px frames, found {w} x {h}: set the camera back to {fw} x {fh} (binning, decimation or "
            f"sensor ROI changed?), or {redo} and set regions.frame: [{w}, {h}]")


def bundle_pixel_threshold(bundle, graph_threshold=None):
    """``bundle``'s PixelThreshold calibrated on the graph a scorer carrying ``graph_threshold`` runs
    (``export.bundle.Bundle.graph_pixel_threshold``; None: the bundle's own graph), else its ``pixel_threshold``;
    None for a fused bundle, which has none, or a bundle built before regions."""
    pick = getattr(bundle, "graph_pixel_threshold", None)
    return pick(graph_threshold) if pick is not None else getattr(bundle, "pixel_threshold", None)


def pixel_threshold_fix(bundle) -> str:
    """What to do for regions on ``bundle`` when it has no calibrated pixel threshold, in words. A bundle built before
    regions (or without normal images): rebuild it with normal images, or set one. A fused bundle (``fair-edge fuse``,
    which records none, and ``fair-edge build`` cannot make one): set one in its map's units, the members' normal
    spread, where its own threshold marks the pixels that make a part NG (its score is its map's maximum), or turn
    regions off."""
    from fair_edge.runtime.fusion import FusedBundle

    if isinstance(bundle, FusedBundle):
        return ("set regions.pixel_threshold in the station file in the fused map's units (its members' normal "
                f"spread: the pixels above the bundle's threshold, {bundle.threshold.value:.6g}, are the ones that "
                "make a part NG), or turn regions off (regions: {enabled: false}); `fair-edge fuse` records no "
                "pixel threshold, and `fair-edge build` makes no fused bundle")
    return ("set regions.pixel_threshold in the station file or rebuild the bundle with "
            "`fair-edge build --normal HELD_OUT_NORMALS`")


def judge_for_bundle(settings: RegionSettings, bundle, fallback: float | None = None,
                     camera: str = "", graph_threshold=None) -> RegionJudge | None:
    """The judge of ``settings`` for ``bundle`` (plain or fused; its ``map_area`` is the frame rectangle its map
    covers): pixel threshold = the settings', else the bundle's calibrated on the graph the scorer runs (told by its
    ``graph_threshold``: ``bundle_pixel_threshold``), else ``fallback`` (the one in force before a swap; logged).
    None when the settings turn regions off, or when there is no pixel threshold at all (logged, as at start: ``station.bundles.open_regions``). A loader refuses a bundle that rules cannot judge
    before it gets here (``station.bundles.region_pixel_threshold``). camera: named in the logs ('' = one camera)."""
    if not settings.enabled:
        return None
    value = settings.pixel_threshold
    if value is None:
        calibrated = bundle_pixel_threshold(bundle, graph_threshold)
        value = calibrated.value if calibrated is not None else fallback
        where = f" (camera {camera})" if camera else ""
        if calibrated is None and value is not None:
            log.warning("swapped bundle %s has no pixel threshold; regions%s keep %.6g", getattr(bundle, "root", "?"),
                        where, value)
        elif value is None:
            log.warning("defect regions off%s: bundle %s has no calibrated pixel threshold; %s", where,
                        getattr(bundle, "root", "?"), pixel_threshold_fix(bundle))
            return None
    return RegionJudge(settings, value, bundle.map_area, camera)   # a fused bundle's too (its members')


def settings_items(settings: RegionSettings | None) -> dict[str, str]:
    """What a ``regions:`` section sets, as {what: value in words}, for ``settings_change``: {"regions": "off"}
    when it is None or disabled. A mask zone's value names its file and a digest of the pixels read (a mask
    redrawn under the same name is a change)."""
    if settings is None or not settings.enabled:
        return {"regions": "off"}
    items = {"regions": "on", "pixel_threshold": "the bundle's" if settings.pixel_threshold is None
             else f"{settings.pixel_threshold:g}",
             "mm_per_px": "none" if settings.mm_per_px is None else f"{settings.mm_per_px:g}",
             "frame": "none" if settings.frame is None else f"{settings.frame[0]} x {settings.frame[1]}",
             "max_regions": str(settings.max_regions), "zones": ", ".join(z.name for z in settings.zones) or "none"}
    for where, rules in [(DEFAULT_ZONE, settings.default), *((f"zone {z.name}", z.rules) for z in settings.zones)]:
        items.update({f"{where} {key}": f"{limit:g}" for key, limit in rules.limits})
        if rules.max_count is not None:
            items[f"{where} max_count"] = str(rules.max_count)
        if rules.ignore:
            items[f"{where} ignore"] = "true"
    for zone in settings.zones:
        items[f"zone {zone.name} shape"] = (
            "polygon " + " ".join(f"{x:g},{y:g}" for x, y in zone.polygon) if zone.polygon is not None
            else f"mask {zone.mask} #{hashlib.sha256(np.packbits(zone.mask_pixels).tobytes()).hexdigest()[:8]}")
    return items


def settings_change(old: RegionSettings | None, new: RegionSettings | None) -> str:
    """What changed from ``old`` to ``new`` regions: settings (None = off), in words: "default min_area_px 50 ->
    5000; zone seal removed"-like items "what old -> new" ('unset' where one side does not set it); '' when nothing
    did. Regions turned off is "regions on -> off" alone."""
    before, after = settings_items(old), settings_items(new)
    if after["regions"] == "off":
        return "" if before["regions"] == "off" else "regions on -> off"
    keys = [*before, *(k for k in after if k not in before)]
    return "; ".join(f"{k} {before.get(k, 'unset')} -> {after.get(k, 'unset')}" for k in keys
                     if before.get(k) != after.get(k))
