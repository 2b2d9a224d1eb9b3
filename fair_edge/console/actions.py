"""What an operator can change from the console: review parts, apply a threshold, swap the bundle,
export the reviewed parts. Each change is written to the audit log (who, when, old, new)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2

from fair_edge.console.feed import StationFeed, finite
from fair_edge.console.journal import AUDIT, REVIEWS, Journal, utc_now
from fair_edge.console import tuning
from fair_edge.errors import ConfigError, FairEdgeError
from fair_edge.runtime.hotswap import ModelChange
from fair_edge.fields import is_int, require
from fair_edge.line.recorder import ng_image_path

log = logging.getLogger(__name__)

# label -> (what the operator says, which verdicts it applies to)
REVIEW_LABELS = {
    "defect": ("confirmed defect", "ng"),
    "false_reject": ("false reject", "ng"),
    "miss": ("miss: passed, but defective", "ok"),
}


@dataclass(frozen=True)
class StationLinks:
    """What the console calls in the rooms above it, handed in by ``station.run.open_console`` (rooms import
    only downward). A link left None is a change this station cannot make; asking for it is a ConfigError.

    load_model(bundle folder) -> ModelChange: opens a bundle for a swap (slow; called on a thread of its own;
        ``station.run.load_change``).
    load_station(station file) -> the station's settings (``.bundle``: the bundle the file names); raises
        ConfigError for a file that would not load (``station.config.load_station``). A threshold written
        to the station file is checked with it first; SIGHUP re-reads the bundle the file names with it.
    export_reviewed(station output folder, dataset folder) -> what was exported
        (``training.collect.export_reviewed``).
    """

    load_model: Callable[[Path], ModelChange] | None = None
    load_station: Callable[[Path], Any] | None = None
    export_reviewed: Callable[[Path, Path], dict] | None = None


class StationActions:
    """Changes asked for from the console. ``station_file``: where an applied threshold is written
    (None = the station runs from flags only; the audit log still records it). ``links``: what the
    changes call in the station and training rooms (``StationLinks``; by default none: no swaps, no
    station file writes, no exports)."""

    def __init__(self, feed: StationFeed, station_file: Path | None, links: StationLinks = StationLinks()) -> None:
        self.feed, self.station_file, self.links = feed, station_file, links
        self.reviews = Journal(feed.output / REVIEWS)
        self.audit = Journal(feed.output / AUDIT)
        self.swap_status: dict = {"state": "idle"}
        self._swap_lock = threading.Lock()
        self.labels: dict[int, str] = {}
        for entry in self.reviews.read():  # reviews of this output folder survive a restart
            if entry.get("run") == self.run_id:
                self.labels[int(entry["seq"])] = entry["label"]

    @property
    def run_id(self) -> str:
        return self.feed.run_id

    # ------------------------------------------------------------------ reviews
    def review(self, seq, label: str, who: str) -> dict:
        """Record an operator's judgement of part ``seq``: defect / false_reject (NG parts) or miss (passed)."""
        if label not in REVIEW_LABELS:
            raise ConfigError(f"label: expected one of {', '.join(REVIEW_LABELS)}, found {label!r}")
        verdict = self.feed.verdict(_seq(seq)) or next((v for v in self.feed.ng if v.seq == seq), None)
        if verdict is None:
            raise ConfigError(f"seq: expected a part inspected in this run and still in memory, found {seq!r}")
        wanted = REVIEW_LABELS[label][1]
        if (wanted == "ng") != verdict.ng:
            raise ConfigError(f"label {label!r} is for {'NG' if wanted == 'ng' else 'passed'} parts; part {seq} "
                              f"{'was rejected' if verdict.ng else 'passed'}")
        image = self._save_image(verdict, label)
        entry = self.reviews.append({"run": self.run_id, "seq": verdict.seq, "label": label, "who": _who(who),
                                     "score": finite(verdict.score), "threshold": verdict.threshold,
                                     "model": verdict.model, "source": verdict.source, "image": image})
        self.labels[verdict.seq] = label
        if label in tuning.DEFECT_LABELS:
            self.feed.drift.exclude(verdict.seq)
        return entry

    def _save_image(self, verdict, label: str) -> str:
        """Keep the reviewed part's frame under review/ (the NG folder is reused by later runs): from
        memory while it is kept, else the recorder's NG image. Returns its path relative to the output
        folder ("" when neither exists any more: a passed part that left the keep_frames window)."""
        rel = Path("review") / f"{self.run_id}_{verdict.seq:08d}_{label}.png"
        dest = self.feed.output / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = self.feed.kept_part(verdict.seq)
        if part is not None and part.frame is not None:
            image = part.frame.image
        else:
            rec = self.feed.recorder
            folder, ext = (rec.dir, rec.settings.image_format) if rec is not None else (self.feed.output, "png")
            image = cv2.imread(str(ng_image_path(folder, self.run_id, verdict.seq, "frame", ext, verdict.camera)), cv2.IMREAD_UNCHANGED)
        if image is None or not cv2.imwrite(str(dest), image):
            log.warning("no image kept for reviewed part %d (label %s)", verdict.seq, label)
            return ""
        return rel.as_posix()

    # ------------------------------------------------------------------ reject gate
    def acknowledge_alarm(self, who: str) -> dict:
        """The operator's reset of a latched reject alarm (a part passed uninspected, was refused, or
        missed its gap): ``RejectScheduler.acknowledge_alarm``; the fault output drops unless a fault
        (camera, backend, sink down) still holds it. Audited with the alarm it cleared."""
        who = _who(who)
        scheduler = self.feed.scheduler
        if scheduler is None:
            raise ConfigError("this station has no reject gate (reject.sinks / reject.fault_sinks): no alarm to "
                              "acknowledge")
        old = scheduler.alarm
        scheduler.acknowledge_alarm()
        log.warning("reject alarm acknowledged by %s: %s", who, old or "(none latched)")
        return self.audit.append({"action": "acknowledge_alarm", "who": who, "old": old or "",
                                  "fault": scheduler.fault_reason or ""})

    # ------------------------------------------------------------------ threshold
    def tune(self, proposed: float | None) -> dict:
        """Distributions and the projection for ``proposed`` (default: the threshold in force)."""
        current = self.feed.inspector.threshold if self.feed.inspector is not None else float("nan")
        proposed = current if proposed is None else tuning.check_threshold(proposed)
        normal, defect, unreviewed = tuning.split_scores(list(self.feed.recent), self.labels)
        return {"current": current, "unreviewed_ng": unreviewed,
                "proposed": tuning.projection(normal, defect, proposed),
                "at_current": tuning.projection(normal, defect, current),
                "histogram": tuning.histograms(normal, defect, self.feed.drift.quantiles
                                               if self.feed.drift.quantiles is not None else (), current)}

    def apply_threshold(self, value, who: str, confirm: bool) -> dict:
        """Apply a new threshold from the next batch on; audit it and write it to the station file."""
        value = tuning.check_threshold(value)
        if self.station_file is not None and self.links.load_station is None:
            raise ConfigError(f"this station cannot write its station file {self.station_file} (no station "
                              "loader was given to check it); the threshold was not changed")
        if confirm is not True:
            raise ConfigError("confirm: expected true (an explicit confirmation), found "
                              f"{confirm!r}; the threshold was not changed")
        inspector = self._inspector()
        old = inspector.threshold
        inspector.switch.request(ModelChange(threshold=value))
        written = ""
        if self.station_file is not None:
            tuning.write_station_threshold(self.station_file, value, self.links.load_station)
            written = str(self.station_file)
        return self.audit.append({"action": "threshold", "who": _who(who), "old": old, "new": value,
                                  "station_file": written, "model": inspector.model})

    # ------------------------------------------------------------------ hot swap
    def swap(self, bundle, who: str) -> dict:
        """Load ``bundle`` in a background thread; the loop switches to it between batches."""
        if not isinstance(bundle, str) or not bundle.strip():
            raise ConfigError(f"bundle: expected the path of a bundle folder, found {bundle!r}")
        inspector = self._inspector()
        if self.links.load_model is None:
            raise ConfigError("this station cannot swap bundles (no loader was given)")
        with self._swap_lock:
            if self.swap_status["state"] == "loading":
                raise ConfigError(f"a bundle is already loading ({self.swap_status['bundle']}); wait for it")
            self.swap_status = {"state": "loading", "bundle": bundle, "since": utc_now()}
        threading.Thread(target=self._load, args=(Path(bundle), inspector, _who(who)), name="bundle-swap",
                         daemon=True).start()
        return self.swap_status

    def _load(self, bundle: Path, inspector, who: str) -> None:
        old = {"model": inspector.model, "bundle": str(self.feed.bundle_path or "")}
        try:
            change = self.links.load_model(bundle)
        except FairEdgeError as exc:
            log.error("bundle swap refused: %s", exc)
            self.swap_status = {"state": "failed", "bundle": str(bundle), "error": str(exc), "since": utc_now()}
            return
        inspector.switch.request(change)
        self.feed.bundle_path = change.bundle.root
        self.feed.drift.reset(_quantiles(change))
        self.audit.append({"action": "swap", "who": who, "old": old,
                           "new": {"model": change.model, "bundle": str(change.bundle.root),
                                   "threshold": change.threshold}})
        self.swap_status = {"state": "done", "bundle": str(change.bundle.root), "model": change.model, "since": utc_now()}

    # ------------------------------------------------------------------ dataset
    def export_reviewed(self, who: str) -> dict:
        """The reviewed parts of this output folder as a training/evaluation dataset under datasets/."""
        if self.links.export_reviewed is None:
            raise ConfigError("this station cannot export reviewed parts (no exporter was given)")
        dest = self.feed.output / "datasets" / f"reviewed-{utc_now().replace(':', '').replace('-', '')[:15]}"
        result = self.links.export_reviewed(self.feed.output, dest)
        self.audit.append({"action": "export", "who": _who(who), "new": result})
        return result

    def _inspector(self):
        if self.feed.inspector is None:
            raise ConfigError("the station is still starting; try again in a moment")
        return self.feed.inspector


def _quantiles(change: ModelChange):
    """The calibration distribution of the swapped model's decision score: the change's (with an ROI, of
    max(map x ROI): ``station.decision``), else, without an ROI, the bundle's threshold's; () = none."""
    threshold = change.calibration
    if threshold is None and change.roi is None:
        threshold = change.bundle.threshold
    return threshold.normal_quantiles if threshold is not None else ()


def _seq(value) -> int:
    require(is_int(value), "seq", "a part number (integer)", value)
    return value


def _who(value) -> str:
    require(isinstance(value, str) and bool(value.strip()) and len(value) <= 80, "who",
            "the operator's name (1..80 characters)", value)
    return value.strip()
