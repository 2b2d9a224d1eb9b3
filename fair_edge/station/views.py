"""A station with several cameras: the ``cameras:`` list and the ``group:`` section of the station file.

    cameras:
      - {name: top,  source: "genicam:Basler-123", bundle: runs/bundle-top}   # bundle / roi / threshold /
      - {name: left, source: "1", roi: masks/left.png}                       #   regions: the station's when absent
      - {name: right, source: "2", regions: {mm_per_px: 0.05}}               # its own scale, the station's rules
    group: {by: part, match: window, window_ms: 30, rule: any}

A camera's ``regions:`` is the station's ``regions:`` with each key the camera gives replacing the station's
(``camera_regions``): ``default:`` and ``zones:`` whole, and ``mm_per_px`` or ``scale`` the station's camera scale
given either way; a key it leaves out is the station's. Zones are drawn on one frame size: a camera whose
``frame:`` differs from the station's gives its own ``zones:`` (``zones: []`` for none), else the file is refused
(keeping the station's zones would judge every frame of it as an error). A camera without ``regions:`` uses the
station's whole: cameras of other frame sizes than ``regions.frame`` need their own when the station has zones.

``group.by``:
- ``part``: the cameras see one part from several sides. Their frames are matched into parts
  (``match``); the part is NG as soon as its NG views reach the rule (``any`` = one NG view, ``count>=K``
  = K of them), without waiting for its other views; it is rejected once, at the part's due time (``reject:``:
  the first view's capture time + ``delay_ms``, or the encoder distance). A view missing when the part closes
  (``part_timeout_ms`` after its first view; unset: its due time, when the gate has had no verdict for it)
  makes it a fail-safe reject at the gate; its row names the missing camera.
- ``lane``: each camera watches its own lane and is a line of its own: its own parts, its own reject
  output (the camera's ``reject`` URLs), the station's reject timing.

``group.match`` (``by: part``):
- ``window``: frames captured within ``window_ms`` of a part's first view belong to it (cameras fired
  by one hardware trigger, or by one light barrier); a frame within the window of several open parts lacking its
  camera joins the one captured nearest it (of two as near, the older);
- ``sequence``: the N-th frame of every camera is part N (cameras that count the same triggers; a
  replay of folders at one rate); after an outage that a camera's frame numbers do not count, or a silent
  slip (a missed trigger: the part its count names opened more than ``window_ms`` and half the time between
  parts away from its capture), its views are matched by capture time (``window_ms``) until one joins a part
  and its count is learned again (``parts.resyncs``);
- ``encoder``: frames captured within ``window_counts`` belt counts of a part's first view (the views
  are taken at different places along the belt: set each camera's ``offset_counts``); of several such parts, the
  nearest by belt count (of two as near, the older);
- ``handshake``: the PLC's part id (``reject.handshake``): every trigger makes each camera take one frame,
  and the part's verdict is the handshake's result for that part id.

A station file with ``camera:`` (one camera) works as before; ``cameras:`` and ``camera:`` cannot be
used together. Several cameras share one model per distinct bundle, and their frames are batched
into one inference call per frame size (``batching.max_batch``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import fields as dataclass_fields
from pathlib import Path
from typing import Any

from fair_edge import fields as f
from fair_edge.cameras.registry import station_options
from fair_edge.errors import ConfigError
from fair_edge.station.zones import RegionSettings

GROUP_BY = ("part", "lane")
MATCH_MODES = ("window", "sequence", "encoder", "handshake")
NAME = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
RULE = re.compile(r"^\s*count\s*>=\s*(\d+)\s*$")
# the keys of a regions: section (RegionSettings' fields, and scale: the camera scale given by two points)
REGION_KEYS = (*(field.name for field in dataclass_fields(RegionSettings)), "scale")
SCALE_KEYS = ("mm_per_px", "scale")   # one camera scale, given either way


@dataclass(frozen=True)
class ViewSettings:
    """One camera of a multi-camera station.

    name: how records, the console and faults name it (letters, digits, ``_``, ``-``). source, fps,
    loop, queue_size, full_policy, flip, timeout_s: as ``camera:`` (``CameraSettings``). bundle / roi / threshold:
    this camera's model, region of interest and threshold; None = the station's. reject: this
    camera's reject output URLs (``group.by: lane`` only; a part station rejects through ``reject.sinks``).
    offset_counts: belt counts from the first camera to this one (``match: encoder``). regions: this camera's
    ``regions:`` (its scale, frame, zones and rules: the station's with the camera's keys over them,
    ``camera_regions``); None = the station's.
    """

    name: str
    source: str
    fps: float | None = None
    loop: bool = False
    queue_size: int = 4
    full_policy: str = "auto"
    flip: int = 0
    timeout_s: float | None = None
    bundle: Path | None = None
    roi: Path | None = None
    threshold: float | None = None
    reject: tuple[str, ...] = ()
    offset_counts: int = 0
    regions: RegionSettings | None = None

    @classmethod
    def from_dict(cls, index: int, data: Any, full_policies: tuple[str, ...],
                  station_regions: Any = None, base: Path | None = None) -> "ViewSettings":
        """station_regions: the station file's ``regions:`` mapping as written (None = left out), which the
        camera's own ``regions:`` keys go over. base: the folder relative zone mask paths are read from (None = the
        current folder: ``RegionSettings.from_dict``)."""
        where = f"cameras[{index}]"
        d = f.check_keys(where, data, ["name", "source", "fps", "loop", "queue_size", "full_policy", "flip",
                                       "timeout_s", "bundle", "roi", "threshold", "reject", "offset_counts", "regions"])
        name = f.text(where, "name", d.get("name", f"cam{index}"))
        f.require(bool(NAME.match(name)), f"{where}.name", "1-32 letters, digits, '_' or '-'", name)
        f.require("source" in d, f"{where}.source", "a camera spec (index, URL, folder, genicam:...)", "nothing")
        fps, threshold, flip, timeout_s = d.get("fps"), d.get("threshold"), d.get("flip", 0), d.get("timeout_s")
        station_options(where, str(d["source"]), flip, timeout_s)   # checked against their ranges and the source
        return cls(
            name=name,
            source=str(d["source"]),
            fps=None if fps is None else f.number(where, "fps", fps, minimum=0),
            loop=f.boolean(where, "loop", d.get("loop", False)),
            queue_size=f.integer(where, "queue_size", d.get("queue_size", 4), minimum=1),
            full_policy=f.choice(where, "full_policy", d.get("full_policy", "auto"), full_policies),
            flip=flip,
            timeout_s=timeout_s,
            bundle=Path(f.text(where, "bundle", d["bundle"])) if d.get("bundle") is not None else None,
            roi=Path(f.text(where, "roi", d["roi"])) if d.get("roi") is not None else None,
            threshold=None if threshold is None else f.number(where, "threshold", threshold),
            reject=f.url_list(where, "reject", d.get("reject", [])),
            offset_counts=f.integer(where, "offset_counts", d.get("offset_counts", 0)),
            regions=None if d.get("regions") is None else camera_regions(f"{where} ({name})", station_regions,
                                                                          d["regions"], base),
        )


def camera_regions(where: str, station: Any, camera: Any, base: Path | None = None) -> RegionSettings:
    """One camera's ``regions:`` (``where``: ``cameras[i] (name)``, for errors): the station's ``regions:`` mapping
    (``station``, as written; None = left out) with each key of the camera's mapping (``camera``) replacing the
    station's: ``default:`` and ``zones:`` whole, ``mm_per_px`` or ``scale`` both of the station's (one camera
    scale). Checked as the station's section is (``RegionSettings.from_dict``, relative zone masks read from ``base``,
    None = the current folder); a ConfigError names the camera."""
    own = f.check_keys(f"{where}.regions", camera, REGION_KEYS)
    shared = station if isinstance(station, Mapping) else {}
    check_zone_frame(where, shared, own)
    replaced = SCALE_KEYS if any(key in own for key in SCALE_KEYS) else ()
    merged = {**{key: value for key, value in shared.items() if key not in replaced}, **own}
    try:
        return RegionSettings.from_dict(merged, base)
    except ConfigError as exc:
        raise ConfigError(f"{where}, its regions: over the station's: {exc}") from None


def check_zone_frame(where: str, shared: Mapping[str, Any], own: Mapping[str, Any]) -> None:
    """Zones are drawn on one frame size: a camera that sets its own ``regions.frame`` (``own``), other than the
    station's (``shared``), cannot keep the station's zones (every frame of it would be an error). ConfigError
    naming the camera, both sizes and the fix. Frames that are not [width, height] are left to the section's
    own check."""
    zones = shared.get("zones")
    if "frame" not in own or "zones" in own or not isinstance(zones, list) or not zones:
        return
    frame, station_frame = frame_size(own["frame"]), frame_size(shared.get("frame"))
    if frame is None or station_frame is None or frame == station_frame:
        return
    names = ", ".join(str(z.get("name")) for z in zones if isinstance(z, Mapping))
    raise ConfigError(f"{where}.regions.frame: this camera's frames are {frame[0]} x {frame[1]}, but the station's "
                      f"zones ({names}) were drawn on {station_frame[0]} x {station_frame[1]} frames "
                      "(regions.frame), so every frame of it would be an error; give the camera its own zones: drawn "
                      f"on its {frame[0]} x {frame[1]} frames (zones: [] for none), or fix its frame.")


def frame_size(value: Any) -> tuple[int, int] | None:
    """A ``regions.frame`` as written -> (width, height) px; None when it is not two positive integers."""
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(f.is_int(v) and v > 0 for v in value):
        return int(value[0]), int(value[1])
    return None


@dataclass(frozen=True)
class GroupSettings:
    """How the frames of several cameras become parts (see the module doc).

    by: ``part`` or ``lane``. match: ``window``, ``sequence``, ``encoder`` or ``handshake``. window_ms: capture-time
    window of one part, ms. window_counts: encoder-count window of one part (each view keyed by the belt count at its
    capture time): at least the belt's counts/s x (the encoder's ``poll_ms`` + the spread of the cameras' capture
    stamps), below half the part pitch in counts (``cell_timing.warn_window_counts``). rule: ``any`` or
    ``count>=K``. part_timeout_ms: how long after its first view a part waits for the others, ms; None
    = until its due time at the reject gate (``reject.delay_ms``: ``station.cell_timing.part_timeout_s``), with the
    PLC handshake half its result timeout (at most 1000 ms), else 1000 ms; with ``match: encoder`` a part closes by
    belt count instead (``station.cell_timing.part_close_by_count``): when the belt reaches its gate count
    (``reject.encoder_distance``), without one 1000 ms after the belt passed the furthest camera's
    ``window_counts``, and while the encoder has no belt position (its link is down) 1000 ms after it opened.
    """

    by: str = "part"
    match: str = "window"
    window_ms: float = 30.0
    window_counts: int = 20
    rule: str = "any"
    part_timeout_ms: float | None = None

    @classmethod
    def from_dict(cls, data: Any) -> "GroupSettings":
        d = f.with_defaults("group", data, cls)
        rule = f.text("group", "rule", d["rule"])
        f.require(rule == "any" or bool(RULE.match(rule)), "group.rule", "'any' or 'count>=K'", rule)
        timeout = d["part_timeout_ms"]
        return cls(
            by=f.choice("group", "by", d["by"], GROUP_BY),
            match=f.choice("group", "match", d["match"], MATCH_MODES),
            window_ms=f.number("group", "window_ms", d["window_ms"], minimum=0, maximum=f.DAY_MS),
            window_counts=f.integer("group", "window_counts", d["window_counts"], minimum=0),
            rule=rule.replace(" ", ""),
            part_timeout_ms=None if timeout is None else f.number("group", "part_timeout_ms", timeout, minimum=1,
                                                                          maximum=f.DAY_MS),
        )

    def min_ng_views(self, n_views: int) -> int:
        """How many NG views make the part NG (``any`` = 1); ConfigError when the rule asks for more views
        than the station has."""
        if self.rule == "any":
            return 1
        k = int(RULE.match(self.rule).group(1))
        if not 1 <= k <= n_views:
            raise ConfigError(f"group.rule: expected count>=K with 1 <= K <= {n_views} (the cameras of the station), "
                              f"found {self.rule}; lower K or add cameras.")
        return k


def parse_views(data: Any, full_policies: tuple[str, ...], station_regions: Any = None,
                base: Path | None = None) -> tuple[ViewSettings, ...]:
    """The ``cameras:`` list -> its views; ConfigError for an empty list or repeated names. station_regions: the
    station file's ``regions:`` mapping as written, the base of each camera's own ``regions:``. base: the folder
    relative zone mask paths are read from (None = the current folder)."""
    if not isinstance(data, list) or not data:
        raise ConfigError(f"cameras: expected a list of cameras ({{name, source, ...}} each), found {data!r}.")
    views = tuple(ViewSettings.from_dict(i, item, full_policies, station_regions, base) for i, item in enumerate(data))
    names = [v.name for v in views]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"cameras: each camera needs its own name; {', '.join(repeated)} is used more than once.")
    return views
