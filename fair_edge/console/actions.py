"""What an operator can change from the console: review parts, apply a threshold, acknowledge the reject alarm,
swap the bundle, export the reviewed parts. ``StationActions`` checks each request and makes it, with what each
concern keeps apart: the errors it refuses with (``refusals``; ``threshold_refusals``: when a threshold may not be
applied), the labels and the image of a review (``reviews``), an alarm acknowledged gate by gate (``alarm_ack``), a
swap's load, checks and switch on a thread of its own (``swaps.BundleSwaps``) and the dataset folder of an export
(``dataset_export``). Each change is written to the audit log (who, when, old, new): a change whose row could not be
written is refused before anything changes (``Journal.check_writable``: the answer's error is true); one made whose
row still fails (the disk filled meanwhile) stands and is answered as made, with a ``warning`` ("made but not
audited: ...", logged as an error: ``Journal.append_made``), never as a failure.

With several cameras (``station.cell``) a review names the view (``camera`` and its ``seq``), a threshold is
applied to one camera (its ``cameras[]`` entry in the station file), and a swap loads a bundle for one camera
or, unnamed, for every camera that runs the station's bundle; each camera switches through its own decider."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from threading import Lock, RLock
from typing import Any

from fair_edge.console import tuning
from fair_edge.console.alarm_ack import acknowledge_gates, faults_left
from fair_edge.console.dataset_export import export_dataset
from fair_edge.console.feed import StationFeed, ViewKey, finite, view_key
from fair_edge.console.journal import AUDIT, REVIEWS, Journal
from fair_edge.console.refusals import FrameNotKept, StationStarting, ThresholdNotForBundle
from fair_edge.console.reject_gates import alarm_text
from fair_edge.console.reload_scope import CameraBundle, ReloadFrom, reload_plan
from fair_edge.console.reviews import REVIEW_LABELS, not_kept, review_image
from fair_edge.console.swaps import BundleSwaps
from fair_edge.console.threshold_refusals import (applied_thresholds, decider_scores_below_zero, regions_decide,
                                                  regions_in_force, rules_decide_note, run_threshold_refusal,
                                                  threshold_can_change, threshold_decides, threshold_pair_refusal)
from fair_edge.errors import ConfigError, DataError, RecorderError, did_you_mean
from fair_edge.fields import is_int, require
from fair_edge.images import write_png
from fair_edge.records import Verdict
from fair_edge.runtime.hotswap import ModelChange, folder_model_ids

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StationLinks:
    """What the console calls in the rooms above it, handed in by ``station.run.open_console`` (rooms import
    only downward). A link left None is a change this station cannot make; asking for it is a ConfigError.

    load_model(bundle folder, threshold=None[, regions=]) -> ModelChange: opens a bundle for a swap (slow; called on a
        thread of its own; ``station.bundles.load_change``); threshold None: the bundle's, by the station's rule.
        regions (given when the camera judges regions): the ``regions:`` settings the swapped model is to be judged
        by (a reload's re-read ones, else those in force); a bundle their rules cannot judge is refused.
    load_station(station file) -> the station's settings (``.bundle``: the bundle the file names); raises
        ConfigError for a file that would not load (``station.config.load_station``). A threshold written
        to the station file is checked with it first; SIGHUP re-reads the bundle the file names with it.
    export_reviewed(station output folder, dataset folder) -> what was exported
        (``training.collect.export_reviewed``).
    Several cameras (``station.cell_console.CellLoader``):
    load_views(bundle folder, cameras, thresholds[, regions=]) -> {camera: ModelChange}: opens the bundle once (one
        backend shared by these cameras); each camera's threshold is ``thresholds[camera]`` where given, else decided
        by the station's rule (with the camera's ROI). regions (given when some camera judges regions): camera -> the
        ``regions:`` settings to check the bundle against, as ``load_model``'s (the others: the station's own).
    camera_bundles(station file or None[, bundle=]) -> each camera's ``CameraBundle``, as the file names them now
        (None: as the station started; bundle: --bundle over the file's ``bundle:``); ConfigError when the file no
        longer loads or names other cameras.
    """

    load_model: Callable[[Path], ModelChange] | None = None
    load_views: Callable[[Path, tuple[str, ...]], dict[str, ModelChange]] | None = None
    camera_bundles: Callable[[Path | None], tuple[CameraBundle, ...]] | None = None
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
        # how the last swap went ({"state": "idle" | "loading" | "done" | "failed", ...}): written by ``swaps``, shown
        # by /api/swap and the live page
        self.swap_status: dict = {"state": "idle"}
        # whether a threshold was applied from here since the start: without a station file (nothing else holds it),
        # a reload keeps the threshold in force from then on (``StationConsole.reload_bundle``)
        self.threshold_applied = False
        # camera ("" with one) -> the audit row of the threshold last applied to it from here in this run: without a
        # station file, what a reload checks the threshold in force against (``check_threshold_pairs``)
        self.applied_now: dict[str, dict] = {}
        # held across a threshold's station file write, switch request and audit row, and across a swap's start (a
        # reload holds it from reading the station file to starting its swap): two applies (each POST runs in a
        # thread of its own) take turns, and a threshold is never applied between a reload's read and its start
        self.lock = RLock()
        self.swaps = BundleSwaps(self)   # the swap thread: loads, checks and switches bundles (``swaps``)
        self.labels: dict[ViewKey, str] = {}   # (camera, seq) -> the newest review label
        # held across a review's row in reviews.jsonl and its label and drift change: two operators labelling one
        # view at once leave the file's newest row (what an export takes) and the label shown the same
        self._reviewing = Lock()
        # several cameras: the verdicts of the views of the NG parts the gallery lists (``feed.ng_part_rows``), kept
        # while it lists them (a passed view leaves ``feed.recent`` long before its NG part leaves the gallery)
        self.listed: dict[ViewKey, Verdict] = {}
        self._listed_parts: deque[tuple[ViewKey, ...]] = deque()   # each listed part's view keys, oldest first
        self._awaited: set[ViewKey] = set()   # views of listed parts whose verdict has not come yet
        for entry in self.reviews.read():  # reviews of this output folder survive a restart
            if entry.get("run") == self.run_id:
                self.labels[(str(entry.get("camera", "")), int(entry["seq"]))] = entry["label"]

    @property
    def run_id(self) -> str:
        return self.feed.run_id

    # ------------------------------------------------------------------ loop side (with the feed's; never blocks)
    def observe(self, verdict: Verdict) -> None:
        """Verdict callback (after ``feed.observe``): keeps the verdict of an awaited view of a listed NG part."""
        key = view_key(verdict)
        if key in self._awaited:
            self._awaited.discard(key)
            self.listed[key] = verdict

    def observe_part(self, row: dict) -> None:
        """A part row (after ``feed.observe_part``): an NG part's views are kept while the gallery lists it: those
        already seen from ``feed.recent`` (newest first, stopping once all are found), the others when they come;
        the views of a part the gallery no longer lists are forgotten."""
        if not row.get("ng"):
            return
        keys = tuple((camera, view["seq"]) for camera, view in row.get("views", {}).items() if "seq" in view)
        self._listed_parts.append(keys)
        while len(self._listed_parts) > (self.feed.ng_part_rows.maxlen or len(self._listed_parts)):
            for key in self._listed_parts.popleft():
                self.listed.pop(key, None)
                self._awaited.discard(key)
        self._awaited.update(keys)   # awaited first: a view that comes meanwhile is kept by ``observe``
        wanted = set(keys)
        for v in reversed(list(self.feed.recent)):   # a copy: a part decided at its due time may be off the loop
            if not wanted:
                break
            key = view_key(v)
            if key in wanted:
                wanted.discard(key)
                self._awaited.discard(key)
                self.listed.setdefault(key, v)

    def verdict(self, seq: int, camera: str = "") -> Verdict | None:
        """The verdict of view (camera, seq) while it is among the recent ones, the NG list, or a view of an NG
        part the gallery lists."""
        verdict = self.feed.verdict(seq, camera)
        return verdict if verdict is not None else self.listed.get((camera, seq))

    # ------------------------------------------------------------------ reviews
    def review(self, seq, label: str, who: str, camera=None) -> dict:
        """Record an operator's judgement of view (camera, seq): defect / false_reject (NG views) or miss
        (passed). camera: the view's camera (several cameras: required; one camera: none). Every input is checked
        before anything is written (the image under review/ included)."""
        who = _who(who)
        if not isinstance(label, str) or label not in REVIEW_LABELS:
            raise ConfigError(f"label: expected one of {', '.join(REVIEW_LABELS)}, found {label!r}")
        camera = self._camera(camera, required=True)
        verdict = self.verdict(_seq(seq), camera)
        what = f"camera {camera}'s frame {seq}" if camera else f"part {seq}"
        if verdict is None:
            raise ConfigError(f"seq: expected a {'frame' if camera else 'part'} inspected in this run and still in "
                              f"memory, found {what}")
        wanted = REVIEW_LABELS[label][1]
        if (wanted == "ng") != verdict.ng:
            raise ConfigError(f"label {label!r} is for {'NG' if wanted == 'ng' else 'passed'} parts; {what} "
                              f"{'was rejected' if verdict.ng else 'passed'}")
        image = self._save_image(verdict, label)
        key = (verdict.camera, verdict.seq)
        part = self.feed.part_of.get(key)
        row = {"run": self.run_id, **({"camera": camera} if camera else {}), "seq": verdict.seq,
               **({"part": part} if part is not None else {}), "label": label, "who": who,
               "score": finite(verdict.score), "threshold": verdict.threshold, "model": verdict.model,
               "source": verdict.source, "image": image}
        with self._reviewing:
            entry = self.reviews.append(row)
            self.labels[key] = label
            if label in tuning.DEFECT_LABELS:
                self.feed.drift.exclude(key)
            else:   # a false reject (a corrected defect too) is a normal part: back into its camera's drift sample
                self.feed.drift.include(key)
        return entry

    def _camera(self, camera, required: bool) -> str:
        """The camera a request names: "" with one camera (where naming one is an error); with several, one of
        them, or "" when none is named and ``required`` is False."""
        cameras = self.feed.cameras()
        if not cameras:
            require(camera in (None, ""), "camera", "none (this station has one camera)", camera)
            return ""
        if camera in (None, "") and not required:
            return ""
        if camera not in cameras:
            raise ConfigError(f"camera: expected one of {', '.join(cameras)}, found {camera!r}"
                              f"{did_you_mean(camera, cameras)}")
        return camera

    def _save_image(self, verdict, label: str) -> str:
        """Keep the reviewed part's frame under review/ (the NG folder is reused by later runs): from memory while it
        is kept, else the recorder's NG image. Returns its path relative to the output folder. FrameNotKept when
        neither exists any more (a passed part that left the keep_frames window: a review without its image would
        be dropped by the dataset export), RecorderError when it cannot be written; nothing is recorded then."""
        camera = f"{verdict.camera}_" if verdict.camera else ""
        rel = Path("review") / f"{self.run_id}_{camera}{verdict.seq:08d}_{label}.png"
        dest = self.feed.output / rel
        what = f"camera {verdict.camera}'s frame {verdict.seq}" if verdict.camera else f"part {verdict.seq}"
        image = review_image(self.feed, self.run_id, verdict)
        if image is None:
            refusal = not_kept(what, label, self.feed.settings.keep_frames)
            log.warning("review refused: %s", refusal)
            raise FrameNotKept(refusal)
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            write_png(dest, image)
        except (DataError, OSError) as exc:
            raise RecorderError(f"{dest}: the image of {what} could not be written ({exc}); nothing was recorded: "
                                "free disk space or make the output folder writable, then review it again") from exc
        return rel.as_posix()

    # ------------------------------------------------------------------ reject gate
    def acknowledge_alarm(self, who: str, seen=None) -> dict:
        """The operator's reset of the latched reject alarms (parts passed uninspected, refused, not rejected) and
        the missed pulses of sinks that work, on every gate the console shows (``feed.alarms``: the station's, and
        with ``group.by: lane`` each lane's), all or nothing (``alarm_ack.acknowledge_gates``); the fault output drops
        unless a fault (camera, backend, sink down) still holds it (a lane's alarm holds it through the station's tick:
        it drops at the next, ~0.5 s). Audited with everything it cleared (``reject_gates.alarm_text``). seen: the alarm
        text the page showed (None: whatever is latched); AlarmChanged, nothing cleared and nothing audited, when a
        gate's text is not the one it shows (an alarm latched or a pulse missed since). The answer's ``fault``: why the
        fault output is still on as the gates tell it (``alarm_ack.faults_left``)."""
        who = _who(who)
        require(seen is None or isinstance(seen, str), "alarm", "the alarm text the page showed (a string)", seen)
        gates = self.feed.reject_gates()
        if not gates:
            raise ConfigError("this station has no reject gate (reject.sinks / reject.fault_sinks, or a lane's "
                              "cameras[].reject): no alarm to acknowledge")
        self.audit.check_writable()   # an acknowledgement that could not be audited clears nothing
        old = alarm_text(acknowledge_gates(gates, seen))
        log.warning("reject alarm acknowledged by %s: %s", who, old or "(none latched)")
        return self.audit.append_made({"action": "acknowledge_alarm", "who": who, "old": old,
                                       "fault": faults_left(gates, bool(self.feed.lanes))})

    # ------------------------------------------------------------------ threshold
    def tune(self, proposed: float | None, camera=None) -> dict:
        """Distributions and the projection for ``proposed`` (default: the threshold in force) over the recent
        views of ``camera`` (several cameras: default the first; one camera: none), against that camera's own
        calibration distribution (its drift watch's). Only the views the model in force decided: another model's
        scores (before a swap) are on another scale. Where the camera's region rules decide the verdict (or will once
        its pending change is taken), the threshold changes no verdict: nothing is projected, the answer is
        {"current", "rules_decide": why and what to tune instead (``rules_decide_note``)}. StationStarting before the
        inspector is attached."""
        camera = self._camera(camera, required=False) or self.feed.lead_camera
        decider = self.decider(camera)
        current = decider.threshold
        proposed = current if proposed is None else tuning.check_threshold(proposed, decider_scores_below_zero(decider))
        if regions_decide(regions_in_force(decider)):
            return {"current": current, **({"camera": camera} if camera else {}),
                    "rules_decide": rules_decide_note(camera)}
        recent = [v for v in list(self.feed.recent) if v.camera == camera and v.model == decider.model]
        normal, defect, unreviewed = tuning.split_scores(recent, self.labels)
        watch = self.feed.drift.watches.get(camera)   # none while a station of several cameras is still starting
        quantiles = watch.quantiles if watch is not None else None
        return {"current": current, "unreviewed_ng": unreviewed, **({"camera": camera} if camera else {}),
                "proposed": tuning.projection(normal, defect, proposed),
                "at_current": tuning.projection(normal, defect, current),
                "histogram": tuning.histograms(normal, defect, quantiles if quantiles is not None else (), current)}

    def apply_threshold(self, value, who: str, confirm: bool, camera=None) -> dict:
        """Apply a new threshold from the next batch on; audit it and write it to the station file. Several
        cameras: to ``camera`` only (required), written as its ``cameras[].threshold``. value: a finite number, > 0
        unless the model in force can score below 0 (a fused bundle's: ``tuning.check_threshold``). Every input is
        checked before anything changes (the station file, the switch). Refused (SwapBusy) while a bundle loads (its
        change carries the threshold it was started with) and while a loaded bundle waits for its first batch
        (the scores tuned on are the old model's); applies take turns (``lock``): the station file, the switch
        and the audit log end with the same last threshold. Refused (RulesDecide, 409) where the camera's region
        rules decide the verdict (or will once its pending change is taken): the threshold would change no verdict.
        The audit's ``old``: the threshold in force, or the one applied before it that still waits for the next
        batch. An audit log that cannot be written refuses the
        apply (RecorderError, nothing changed); one that fails once the threshold is applied: a ``warning``. Where the
        station file names another bundle than the one in force (a bundle swapped in from the console is not written
        by the swap), the bundle in force is written with the threshold, in the same replace (several cameras: as the
        camera's ``cameras[].bundle``): the answer and the audit row name it (``station_file_bundle``: old, new), and
        ``bundle`` always names the bundle the threshold was applied on (``check_threshold_pairs`` reads it)."""
        who = _who(who)
        camera = self._camera(camera, required=True)
        decider = self.decider(camera)
        value = tuning.check_threshold(value, decider_scores_below_zero(decider))
        if self.station_file is not None and self.links.load_station is None:
            raise ConfigError(f"this station cannot write its station file {self.station_file} (no station "
                              "loader was given to check it); the threshold was not changed")
        if confirm is not True:
            raise ConfigError("confirm: expected true (an explicit confirmation), found "
                              f"{confirm!r}; the threshold was not changed")
        with self.lock:
            threshold_can_change(self.swap_status, decider, camera)
            threshold_decides(decider, camera)
            # a swap's model may have been taken since
            tuning.check_threshold(value, decider_scores_below_zero(decider))
            self.audit.check_writable()   # before the station file and the switch: refused, nothing changed
            pending = decider.switch.pending
            old = pending.threshold if pending is not None and pending.threshold is not None else decider.threshold
            written, paired = "", {}
            bundle = self._bundle_in_force(camera)
            if self.station_file is not None:   # written and checked first: a file that fails changes nothing
                paired = tuning.write_station_threshold(self.station_file, value, self.links.load_station, camera,
                                                        bundle)
                written = str(Path(self.station_file).resolve())   # a start from any folder finds the row
            decider.switch.request(ModelChange(threshold=value))
            self.threshold_applied = True
            if paired:
                log.warning("threshold %.6g applied by %s%s: bundle %s (in force) written to %s with it, where it "
                            "named %s", value, who, f" to camera {camera}" if camera else "", paired["new"],
                            written, paired["old"] or "none")
            row = self.audit.append_made({"action": "threshold", "who": who, **({"camera": camera} if camera else {}),
                                          "old": old, "new": value, "station_file": written, "model": decider.model,
                                          "bundle": "" if bundle is None else str(bundle),
                                          **({"station_file_bundle": paired} if paired else {})})
            self.applied_now[camera] = row
            return row

    def _bundle_in_force(self, camera: str) -> Path | None:
        """The bundle folder ``camera`` runs now (one camera: ""), as the console knows it: the station's, or the one
        a swap switched to (None: not known)."""
        return self.feed.camera_bundles.get(camera) if camera else self.feed.bundle_path

    def check_threshold_pairs(self, named) -> None:
        """Before a reload loads ``named`` (each camera's ``CameraBundle``: the bundle and threshold it is to run; one
        camera: camera ""): ThresholdNotForBundle when a camera's threshold is the one last applied from the console
        to this station file (the audit log's row, which names the model and bundle it was applied on) and the
        bundle folder now holds another model (``threshold_pair_refusal``: its model id as its manifests record it,
        ``folder_model_ids``; a folder rebuilt in place with another model is refused, a copy of the same model is
        not): a threshold is on its model's scale. Without a station file, the same against the threshold last
        applied to the camera from here in this run (``applied_now``: nothing else holds it), in force still and the
        folder, or the one a link leads to now, holding another model (``run_threshold_refusal``)."""
        if self.station_file is None:
            for c in named:
                refusal = run_threshold_refusal(self.applied_now.get(c.camera), c, folder_model_ids(c.bundle))
                if refusal:
                    raise ThresholdNotForBundle(refusal)
            return
        applied = applied_thresholds(self.audit.read(), self.station_file)
        for c in named:
            refusal = threshold_pair_refusal(self.station_file, applied.get(c.camera), c, folder_model_ids(c.bundle),
                                             "reload")
            if refusal:
                raise ThresholdNotForBundle(refusal)

    def decider(self, camera: str):
        """What decides ``camera``'s views (threshold, model, switch): the inspector's camera view, or with one
        camera the inspector itself."""
        inspector = self.inspector()
        return inspector.views[camera] if camera else inspector

    # ------------------------------------------------------------------ hot swap (``swaps.BundleSwaps``)
    def swap(self, bundle, who: str, camera=None, threshold: float | None = None, regions=None,
             reload: ReloadFrom | None = None) -> dict:
        """Load ``bundle`` in a background thread; the loop switches to it between batches. Several cameras:
        for ``camera``, or (none named) for every camera that runs the station's bundle. threshold: the one to
        run it with (SIGHUP: the station file's); None = the bundle's, by the station's rule (a bundle swapped
        in from the console: its scores are on its own scale). regions: the ``regions:`` settings to judge with
        from then on (SIGHUP: the station file's, re-read); None = keep the ones in force, which refuses a bundle whose
        map is on another scale (fused <-> single, or another model's) while their rules decide with a
        ``regions.pixel_threshold`` the station file sets (``swap_refusals.scale_refusal``). reload: a reload's swap
        (``ReloadFrom``): a failure is refused as the reload's, naming who asked and where the bundle is named."""
        if not isinstance(bundle, str) or not bundle.strip():
            raise ConfigError(f"bundle: expected the path of a bundle folder, found {bundle!r}")
        camera = self._camera(camera, required=False)
        if not self.feed.cameras():
            inspector = self.inspector()
            if self.links.load_model is None:
                raise ConfigError("this station cannot swap bundles (no loader was given)")
            return self.swaps.start_swap(self.swaps.load, Path(bundle), inspector, _who(who), threshold, regions,
                                         status={"bundle": bundle}, reload=reload)
        if camera:
            cameras = (camera,)
        else:
            cameras = tuple(c.camera for c in self._camera_bundles(None) if not c.own)
            if not cameras:
                raise ConfigError("camera: expected the camera to swap (every camera names its own bundle), "
                                  f"found none; one of {', '.join(self.feed.cameras())}")
        return self.swap_cameras({Path(bundle): cameras}, who, {c: threshold for c in cameras},
                                 None if regions is None else dict.fromkeys(cameras, regions), reload)

    def swap_cameras(self, plan: dict[Path, tuple[str, ...]], who: str,
                     thresholds: dict[str, float | None] | None = None, regions: dict | None = None,
                     reload: ReloadFrom | None = None) -> dict:
        """Several cameras: load each bundle of ``plan`` (bundle -> the cameras to run it) in a background
        thread; when all loaded, each camera switches through its own decider (none when one fails).
        thresholds: camera -> the threshold to run with (None or missing: the bundle's, by the station's rule).
        regions: camera -> the ``regions:`` settings it judges with from then on (a reload's); missing: keep.
        reload: a reload's swap (``ReloadFrom``): a bundle that fails to load is refused as the reload's, naming
        who asked and the cameras and station file fields naming it."""
        self.inspector()
        if self.links.load_views is None:
            raise ConfigError("this station cannot swap bundles (no loader was given)")
        cameras = [c for group in plan.values() for c in group]
        bundles = ", ".join(str(b) for b in plan)
        return self.swaps.start_swap(self.swaps.load_views, plan, _who(who), dict(thresholds or {}),
                                     dict(regions or {}), status={"bundle": bundles, "cameras": cameras},
                                     reload=reload)

    def close(self, timeout_s: float) -> bool:
        """At the station's stop: no swap starts from now on (StationStopping), a swap loading switches no camera, and
        the swap thread is joined, waiting up to ``timeout_s`` seconds (``BundleSwaps.close``). Returns whether no
        swap thread is left running."""
        return self.swaps.close(timeout_s)

    def refuse_swaps(self) -> None:
        """``close``'s first step, without the wait (``BundleSwaps.refuse_swaps``)."""
        self.swaps.refuse_swaps()

    def reload_refused(self, who: str, text: str) -> None:
        """A reload refused before it started a swap: ``swap_status`` says so (``BundleSwaps.reload_refused``)."""
        self.swaps.reload_refused(who, text)

    def started_with(self, camera: str, model: str, bundle) -> None:
        """Record the model ``camera`` (one camera: "") starts with and the loaded ``bundle`` it came from: the map a
        console swap is compared with (``BundleSwaps.started_with``)."""
        self.swaps.started_with(camera, model, bundle)

    def _camera_bundles(self, station_file: Path | None):
        if self.links.camera_bundles is None:
            raise ConfigError("this station cannot tell which bundle each camera runs (no loader was given)")
        return self.links.camera_bundles(station_file)

    def reload_cameras(self, who: str) -> dict:
        """Several cameras: load every camera's bundle, threshold and ``regions:`` as the station file names them now
        (the camera's own or the station's; without a station file, the bundles the cameras run, at the thresholds
        the station started with, regions kept), each camera through its own decider."""
        named = self._camera_bundles(self.station_file)   # no file: as the station started
        if self.station_file is None:   # each camera's bundle as it runs now (swaps included), reloaded in place
            named = [replace(c, bundle=self.feed.camera_bundles.get(c.camera, c.bundle), regions=None) for c in named]
        self.check_threshold_pairs(named)
        return self.swap_cameras(reload_plan(named), who, {c.camera: c.threshold for c in named},
                                 {c.camera: c.regions for c in named if c.regions is not None},
                                 ReloadFrom(who, tuple(named), self.station_file))

    # ------------------------------------------------------------------ dataset
    def export_reviewed(self, who: str) -> dict:
        """The reviewed parts of this output folder as a training/evaluation dataset in a folder of its own under
        datasets/ (``dataset_export``: two exports in the same second, two operators' clicks, never share one);
        the operator's name is checked before anything is exported; an audit log that cannot be written refuses it,
        one that fails once exported adds a ``warning``. An export that fails removes its folder while still empty."""
        who = _who(who)
        if self.links.export_reviewed is None:
            raise ConfigError("this station cannot export reviewed parts (no exporter was given)")
        return export_dataset(self.feed.output, self.links.export_reviewed, self.audit, who)

    def inspector(self):
        """The station's inspector; StationStarting before the station attached it."""
        if self.feed.inspector is None:
            raise StationStarting("the station is still starting (no inspector yet); try again in a moment")
        return self.feed.inspector


def _seq(value) -> int:
    require(is_int(value), "seq", "a part number (integer)", value)
    return value


def _who(value) -> str:
    require(isinstance(value, str) and bool(value.strip()) and len(value) <= 80, "who",
            "the operator's name (1..80 characters)", value)
    return value.strip()
