"""Replay images through a station's defect regions and rules (``fair-edge rules check``).

Every image is inspected as the station would (its bundle, backend, threshold, ROI, ``regions:``
section), so what each rule did can be read before the rules go on the line: per image the score,
the regions (counted as the line counts them: those in ``ignore: true`` zones apart), the verdict by score alone and
by the rules, and the reasons; per rule how many images it rejected; on labelled images (a test set) how the rules
change the caught and false-reject rates.
A station of several cameras (``cameras:``) is checked one camera at a time (``camera_config``): that
camera's bundle, ROI, threshold and regions, as the station inspects its frames.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field
from typing import Iterable

from fair_edge.errors import ConfigError
from fair_edge.records import Frame, Verdict
from fair_edge.runtime.backends import close_scorer
from fair_edge.station.bundles import load_roi, open_regions, open_scorer, read_bundle, resolve_threshold
from fair_edge.station.config import StationConfig, view_config
from fair_edge.station.inspector import Inspector


@dataclass
class RulesReport:
    """rows: one dict per image (``row``). fired: ``zone/rule`` -> images it fired on. images: how many
    were inspected; ng_by_score: score > threshold, or not inspectable (``rejected_by_score``); ng_by_rules:
    NG with the rules (the station's verdict)."""

    threshold: float
    pixel_threshold: float
    rows: list[dict] = field(default_factory=list)
    fired: dict[str, int] = field(default_factory=dict)

    @property
    def images(self) -> int:
        return len(self.rows)

    @property
    def ng_by_score(self) -> int:
        return sum(r["ng_by_score"] for r in self.rows)

    @property
    def ng_by_rules(self) -> int:
        return sum(r["ng"] for r in self.rows)

    def rates(self) -> dict | None:
        """On labelled rows: {by_score, by_rules: {caught, false_rejects}} (shares of the defective / normal
        images rejected), None without labels."""
        labelled = [r for r in self.rows if r.get("label") is not None]
        defective = [r for r in labelled if r["label"] == 1]
        normal = [r for r in labelled if r["label"] == 0]
        if not labelled:
            return None
        share = lambda rows, key: sum(r[key] for r in rows) / len(rows) if rows else None  # noqa: E731
        return {name: {"caught": share(defective, key), "false_rejects": share(normal, key)}
                for name, key in (("by_score", "ng_by_score"), ("by_rules", "ng"))}

    def to_dict(self) -> dict:
        return {"threshold": self.threshold, "pixel_threshold": self.pixel_threshold, "images": self.images,
                "ng_by_score": self.ng_by_score, "ng_by_rules": self.ng_by_rules, "fired": self.fired,
                "rates": self.rates(), "rows": self.rows}


def rejected_by_score(verdict: Verdict) -> bool:
    """The verdict by score alone, as the station decides without rules (``Inspector``): NG when the score is over
    the threshold, or when the frame could not be inspected or judged (an error, or no score: fail safe)."""
    return bool(verdict.error) or verdict.score is None or verdict.score > verdict.threshold


def row(name: str, verdict: Verdict) -> dict:
    """One image's line of the report: ``regions``, how many were found outside ``ignore: true`` zones
    (``Verdict.counted_regions``, as the PLC's region_count counts them), and ``ignored_regions``, how many lay in
    such zones (found and fired nothing: verdict rows mark them ``ignored``); ``largest_area_mm2``, the area of the
    region that fired the first rule, else of the largest outside ``ignore`` zones (``Verdict.reported_region``, as
    the PLC's largest_area), None without one or without a camera scale."""
    region = verdict.reported_region
    counted = len(verdict.counted_regions)
    return {"image": name, "score": verdict.score, "ng_by_score": rejected_by_score(verdict),
            "ng": verdict.ng, "regions": counted, "ignored_regions": len(verdict.regions) - counted,
            "largest_area_mm2": None if region is None else region.area_mm2,
            "reason": verdict.reason or verdict.error, "hits": [h.to_json_dict() for h in verdict.hits]}


def camera_config(cfg: StationConfig, camera: str | None) -> StationConfig:
    """The settings one camera of the station ``cfg`` inspects with: a one-camera station's own (``camera`` None),
    or for a station of several cameras (``cameras:``) camera ``camera``'s (``view_config``: its bundle, ROI,
    threshold and regions where it sets them, else the station's). ConfigError when a station of several cameras
    names none or an unknown one, or a one-camera station names one."""
    names = [view.name for view in cfg.cameras]
    if not names:
        if camera is not None:
            raise ConfigError(f"--camera {camera}: the station file has one camera (camera:), not a cameras: list; "
                              "leave --camera out.")
        return cfg
    if camera is None:
        raise ConfigError(f"rules check: the station file has several cameras ({', '.join(names)}), each with its "
                          "own bundle, ROI, threshold and regions; name the one to check with --camera, e.g. "
                          f"--camera {names[0]}.")
    if camera not in names:
        raise ConfigError(f"--camera: expected one of the station file's cameras ({', '.join(names)}), found "
                          f"{camera}.")
    return view_config(cfg, cfg.cameras[names.index(camera)])


def check_frames(cfg: StationConfig, frames: Iterable[tuple], backend: str | None = None) -> RulesReport:
    """Inspect ``frames`` ((name, (H, W, 3) uint8 BGR) or (name, image, label 0 normal / 1 defective) tuples)
    with the station ``cfg``'s bundle and rules: one camera's settings (a station of several cameras: pick one
    with ``camera_config`` first).

    backend: overrides ``cfg.backend`` (None = the file's). Raises ConfigError when the station file has no
    bundle, has several cameras, or regions are off (``regions.enabled: false``, or a bundle without a pixel
    threshold)."""
    if cfg.cameras:
        camera_config(cfg, None)   # names the cameras to choose from
    if cfg.bundle is None:
        raise ConfigError("rules check needs a bundle: set `bundle:` in the station file or pass --bundle.")
    bundle = read_bundle(cfg.bundle)
    scorer = open_scorer(bundle, backend or cfg.backend)
    try:
        roi = load_roi(cfg.roi, bundle)
        decided = resolve_threshold(cfg, bundle, scorer.graph_threshold, roi)
        judge = open_regions(cfg, bundle, scorer.graph_threshold)
        if judge is None:
            raise ConfigError("rules check: defect regions are off (regions.enabled: false, or the bundle has no "
                              "pixel threshold); set regions.pixel_threshold or rebuild the bundle.")
        inspector = Inspector(None, scorer, decided.value, roi=roi, regions=judge, grid=decided.grid)
        report = RulesReport(decided.value, judge.pixel_threshold)
        fired: collections.Counter[str] = collections.Counter()
        for seq, (name, image, *label) in enumerate(frames):
            (verdict,) = inspector.inspect([Frame(seq, time.monotonic(), image, name)])
            report.rows.append(dict(row(name, verdict), label=label[0] if label else None))
            fired.update({f"{h.zone}/{h.rule}" for h in verdict.hits})
        report.fired = dict(sorted(fired.items()))
        return report
    finally:
        close_scorer(scorer)
