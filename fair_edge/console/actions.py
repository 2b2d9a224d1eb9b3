"""What an operator can change from the console: review parts, apply a threshold, swap the bundle,
export the reviewed parts. Each change is written to the audit log (who, when, old, new): a change whose row could
not be written is refused before anything changes (``Journal.check_writable``: the answer's error is true); one
made whose row still fails (the disk filled meanwhile) stands and is answered as made, with a ``warning`` ("made
but not audited: ...", logged as an error), never as a failure.

With several cameras (``station.cell``) a review names the view (``camera`` and its ``seq``), a threshold is
applied to one camera (its ``cameras[]`` entry in the station file), and a swap loads a bundle for one camera
or, unnamed, for every camera that runs the station's bundle; each camera switches through its own decider."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from threading import Event, Lock, RLock
from typing import Any


from fair_edge.console.drift import Reference
from fair_edge.console.feed import StationFeed, ViewKey, alarm_shown, alarm_text, finite, named_alarm, view_key
from fair_edge.console.journal import AUDIT, REVIEWS, Journal, utc_now
from fair_edge.console import tuning
from fair_edge.errors import ConfigError, DataError, FairEdgeError, RecorderError, did_you_mean
from fair_edge.runtime.backends import close_scorer
from fair_edge.runtime.hotswap import ModelChange, change_off_grid, folder_model_ids, off_grid_reason
from fair_edge.fields import is_int, require
from fair_edge.images import read_stored, write_png
from fair_edge.line.recorder import ng_image_path
from fair_edge.records import Verdict

log = logging.getLogger(__name__)

# label -> (what the operator says, which verdicts it applies to)
REVIEW_LABELS = {
    "defect": ("confirmed defect", "ng"),
    "false_reject": ("false reject", "ng"),
    "miss": ("miss: passed, but defective", "ok"),
}


class StationStarting(ConfigError):
    """Asked before the station attached its inspector (the console serves while the station starts): nothing
    changed; the API answers 503 so a page tries again."""


class SwapBusy(ConfigError):
    """A swap (or a reload) asked for while a bundle is loading: nothing changed. The console answers 400; a
    SIGHUP reload waits and runs once the swap in progress is done (``StationConsole.reload_bundle``)."""


class StationStopping(ConfigError):
    """A swap (or a reload) asked for once the station is stopping (``StationActions.close``): nothing is loaded."""


class ThresholdNotForBundle(ConfigError):
    """A reload refused: the station file's threshold was applied from the console on another model than the one the
    bundle folder the reload would load holds now (``StationActions.check_threshold_pairs``: another folder, or the
    same one rebuilt); the station runs on with what it runs."""


class Conflict(ConfigError):
    """A change refused for the state it met, not for its input: nothing changed; the API answers 409."""


class AlarmChanged(Conflict):
    """An acknowledgement of an alarm the operator was shown while another one, raised since, is latched: nothing
    was cleared; the API answers 409 so the page shows the new alarm first."""


class FrameNotKept(Conflict):
    """A review of a view whose frame has left the console's memory (``console.keep_frames``) and whose NG image is
    not recorded: its image cannot be saved, so nothing is recorded (a review without its image is dropped by the
    dataset export); the API answers 409."""


class RulesDecide(Conflict):
    """A threshold applied to a camera whose region rules decide the verdict (``regions:`` with a rule that can fire,
    ``RegionJudge.decides``): a part is NG exactly when a rule fires, whatever its score, so the threshold would
    change no verdict; nothing changed (``rules_decide_note`` says what to tune instead); the API answers 409."""


@dataclass(frozen=True)
class CameraBundle:
    """One camera of several and the bundle it runs. own: the camera names it (``cameras[].bundle``); else it
    is the station's (``bundle:``). threshold: the one the station file sets for the camera (its own, else the
    station's ``decision.threshold``); None = the bundle's, by the station's rule. regions: the camera's
    ``regions:`` settings as the station file sets them (``station.config.view_config``: its own keys over the
    station's), which a reload applies; None = keep the ones in force."""

    camera: str
    bundle: Path
    own: bool
    threshold: float | None = None
    regions: Any = None


@dataclass(frozen=True)
class ReloadFrom:
    """A reload's swap, as its refusal names it: who asked (``SIGHUP``), each camera's ``CameraBundle`` as the reload
    read it (one camera: camera ""), in the station file's order, the station file it read (None: none, the bundles
    in force reloaded in place) and --bundle where it stood for the station's ``bundle:`` (None: not given)."""

    who: str
    named: tuple[CameraBundle, ...]
    station_file: Path | None = None
    flag: Path | None = None

    def refusal(self, text: str, cameras: tuple[str, ...] = ()) -> str:
        """The line a refused reload logs and its swap status shows: ``text`` (what refused it), after where the
        reload took the bundle of ``cameras`` (those whose load failed; (): not one bundle's fault)."""
        where = self.where(cameras)
        return f"bundle reload refused ({self.who}): {where + ': ' if where else ''}{text}"

    def where(self, cameras: tuple[str, ...]) -> str:
        """Where the reload took the bundle of ``cameras``: the station file's field, ``cameras[i] (name).bundle`` for a
        camera naming its own and ``bundle`` (the station's) for the others, or ``--bundle PATH`` where the flag stood
        for it; without a station file, the bundle in force. "" for no camera."""
        chosen = [(i, c) for i, c in enumerate(self.named) if c.camera in cameras]
        shared = [c.camera for _, c in chosen if not c.own or self.station_file is None]
        fields = [f"{self.station_file}: cameras[{i}] ({c.camera}).bundle" for i, c in chosen
                  if c.own and self.station_file is not None]
        if shared:
            fields.append(self._shared_field(shared))
        return "; ".join(fields)

    def _shared_field(self, cameras: list[str]) -> str:
        """Where the reload took the bundle of ``cameras`` that name none of their own (one camera: [""])."""
        named = ", ".join(c for c in cameras if c)
        of = f" (for camera{'s' if len(cameras) > 1 else ''} {named})" if named else ""
        if self.station_file is None:
            return f"the bundle in force{of}, reloaded in place"
        if self.flag is not None:
            return f"--bundle {self.flag}{of}, over {self.station_file}'s bundle"
        return f"{self.station_file}: bundle{of}"


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
        self.swap_status: dict = {"state": "idle"}
        # whether a threshold was applied from here since the start: without a station file (nothing else holds it),
        # a reload keeps the threshold in force from then on (``StationConsole.reload_bundle``)
        self.threshold_applied = False
        # camera ("" with one) -> the audit row of the threshold last applied to it from here in this run: without a
        # station file, what a reload checks the threshold in force against (``check_threshold_pairs``)
        self.applied_now: dict[str, dict] = {}
        # camera ("" with one) -> (model id, its FP32 reference graph: ``tuning.reference_graph``) of the bundle it
        # started with (``started_with``, from the loaded bundle) or was last switched to from here (a swap, a reload):
        # the map a later console swap is compared with (``_map_in_force``). Never read back from the bundle folder,
        # which may hold another build by the time of the swap (rebuilt in place)
        self.maps_in_force: dict[str, tuple[str, str]] = {}
        self._swapper: threading.Thread | None = None   # the swap thread last started ("bundle-swap"), joined by close
        self._closed = Event()   # set by ``close``: no swap starts, and one loading switches no camera
        # held by ``close`` to set ``_closed`` and by a swap thread from its last look at it through its switch: a swap
        # either switches before close returns, or never
        self._switching = Lock()
        # held across a threshold's station file write, switch request and audit row, and across a swap's start (a
        # reload holds it from reading the station file to starting its swap): two applies (each POST runs in a
        # thread of its own) take turns, and a threshold is never applied between a reload's read and its start
        self.lock = RLock()
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
        image = _review_image(self.feed, self.run_id, verdict)
        if image is None:
            refusal = _not_kept(what, label, self.feed.settings.keep_frames)
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
        """The operator's reset of the latched reject alarms (a part passed uninspected, was refused, or missed its
        gap): ``RejectScheduler.acknowledge_alarm`` on each gate the console shows (``feed.reject_gates``: the
        station's, and with ``group.by: lane`` each lane's); the fault output drops unless a fault (camera, backend,
        sink down) still holds it (a lane's alarm holds it through the station's tick: it drops at the next, ~0.5 s).
        Audited with the alarms it cleared (``feed.alarm_text``; each read and cleared at once: one raised meanwhile is
        the one named). seen: the alarm text the page showed (None: whatever is latched); AlarmChanged, nothing
        cleared, when an alarm it does not show is latched now (a gate latching one in the moment between that check
        and its reset keeps it: the others shown are cleared and audited, then AlarmChanged names it). The answer's
        ``fault``: why the fault output is still on as the gates tell it (``_faults_left``)."""
        who = _who(who)
        require(seen is None or isinstance(seen, str), "alarm", "the alarm text the page showed (a string)", seen)
        gates = self.feed.reject_gates()
        if not gates:
            raise ConfigError("this station has no reject gate (reject.sinks / reject.fault_sinks, or a lane's "
                              "cameras[].reject): no alarm to acknowledge")
        self.audit.check_writable()   # an acknowledgement that could not be audited clears nothing
        latched = self.feed.alarms()
        _refuse_unseen(latched, seen)
        cleared, newer = _clear_alarms(gates, None if seen is None else latched)
        if newer and not cleared:   # only for an alarm raised since the page showed its own
            raise AlarmChanged(newer)
        old = alarm_text(cleared)
        log.warning("reject alarm acknowledged by %s: %s", who, old or "(none latched)")
        row = self._audited({"action": "acknowledge_alarm", "who": who, "old": old,
                             "fault": _faults_left(gates, bool(self.feed.lanes))})
        if newer:
            raise AlarmChanged(f"{newer} (the alarms shown were cleared: {old})")
        return row

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
        decider = self._decider(camera)
        current = decider.threshold
        proposed = current if proposed is None else tuning.check_threshold(proposed, _scores_below_zero(decider))
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
        decider = self._decider(camera)
        value = tuning.check_threshold(value, _scores_below_zero(decider))
        if self.station_file is not None and self.links.load_station is None:
            raise ConfigError(f"this station cannot write its station file {self.station_file} (no station "
                              "loader was given to check it); the threshold was not changed")
        if confirm is not True:
            raise ConfigError("confirm: expected true (an explicit confirmation), found "
                              f"{confirm!r}; the threshold was not changed")
        with self.lock:
            self._threshold_can_change(decider, camera)
            self._threshold_decides(decider, camera)
            tuning.check_threshold(value, _scores_below_zero(decider))   # a swap's model may have been taken since
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
            row = self._audited({"action": "threshold", "who": who, **({"camera": camera} if camera else {}),
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

    def _audited(self, row: dict) -> dict:
        """Append ``row`` to the audit log once its change is made; returns what was written. A log that fails now
        (the disk filled since ``audit.check_writable``) cannot undo the change: logged as an error, and the row is
        returned with a ``warning`` ("made but not audited: <the log's error>") so the answer says what happened."""
        try:
            return self.audit.append(row)
        except RecorderError as exc:
            warning = f"made but not audited: {exc}"
            log.error("console %s by %s %s", row.get("action", "change"), row.get("who", "?"), warning)
            return {"time": utc_now(), **row, "warning": warning}

    def _threshold_can_change(self, decider, camera: str) -> None:
        """SwapBusy while a bundle loads for ``camera`` (a SIGHUP reload's change carries the station file's
        threshold as it read it, a console swap's the new bundle's own: either would undo the threshold) or while
        ``decider``'s switch holds a loaded model that has not run yet (the scores tuned on are the old model's, on
        another scale)."""
        status = self.swap_status
        if status.get("state") == "loading" and (camera in status.get("cameras", ()) or "cameras" not in status):
            raise SwapBusy(f"a bundle is loading ({status.get('bundle', '')}); apply the threshold once it "
                           "runs (the threshold was not changed)")
        pending = decider.switch.pending
        if pending is not None and pending.scorer is not None:
            where = f" on camera {camera}" if camera else ""
            raise SwapBusy(f"a new bundle (model {pending.model}) waits to be taken{where} (at the next part, or "
                           "within about 50 ms on a line at rest); tune and apply the threshold once it runs (the "
                           "threshold was not changed)")

    @staticmethod
    def _threshold_decides(decider, camera: str) -> None:
        """RulesDecide (logged) when ``camera``'s region rules decide its verdicts (``decider``'s, or those its
        pending change brings: ``regions_in_force``): a threshold applied would change no verdict."""
        if regions_decide(regions_in_force(decider)):
            refusal = f"the threshold was not changed: {rules_decide_note(camera)}"
            log.warning("threshold refused: %s", refusal)
            raise RulesDecide(refusal)

    def _decider(self, camera: str):
        """What decides ``camera``'s views (threshold, model, switch): the inspector's camera view, or with one
        camera the inspector itself."""
        inspector = self._inspector()
        return inspector.views[camera] if camera else inspector

    # ------------------------------------------------------------------ hot swap
    def swap(self, bundle, who: str, camera=None, threshold: float | None = None, regions=None,
             reload: ReloadFrom | None = None) -> dict:
        """Load ``bundle`` in a background thread; the loop switches to it between batches. Several cameras:
        for ``camera``, or (none named) for every camera that runs the station's bundle. threshold: the one to
        run it with (SIGHUP: the station file's); None = the bundle's, by the station's rule (a bundle swapped
        in from the console: its scores are on its own scale). regions: the ``regions:`` settings to judge with
        from then on (SIGHUP: the station file's, re-read); None = keep the ones in force, which refuses a bundle whose
        map is on another scale (fused <-> single, or another model's) while their rules decide with a
        ``regions.pixel_threshold`` the station file sets (``scale_refusal``). reload: a reload's swap
        (``ReloadFrom``): a failure is refused as the reload's, naming who asked and where the bundle is named."""
        if not isinstance(bundle, str) or not bundle.strip():
            raise ConfigError(f"bundle: expected the path of a bundle folder, found {bundle!r}")
        camera = self._camera(camera, required=False)
        if not self.feed.cameras():
            inspector = self._inspector()
            if self.links.load_model is None:
                raise ConfigError("this station cannot swap bundles (no loader was given)")
            return self._start_swap(self._load, Path(bundle), inspector, _who(who), threshold, regions,
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
        self._inspector()
        if self.links.load_views is None:
            raise ConfigError("this station cannot swap bundles (no loader was given)")
        cameras = [c for group in plan.values() for c in group]
        bundles = ", ".join(str(b) for b in plan)
        return self._start_swap(self._load_views, plan, _who(who), dict(thresholds or {}), dict(regions or {}),
                                status={"bundle": bundles, "cameras": cameras}, reload=reload)

    def _start_swap(self, target, *args, status: dict, reload: ReloadFrom | None = None) -> dict:
        """Run ``target(*args, reload=reload)`` on the swap thread, ``swap_status`` "loading" meanwhile; SwapBusy while
        one loads, RecorderError (nothing started) while the audit log cannot be written."""
        with self.lock:
            if self._closed.is_set():
                raise StationStopping(f"the station is stopping: bundle {status.get('bundle', '')} was not loaded")
            if self.swap_status["state"] == "loading":
                raise SwapBusy(f"a bundle is already loading ({self.swap_status['bundle']}); wait for it")
            self.audit.check_writable()
            self.swap_status = {"state": "loading", **status, "since": utc_now()}
            # a daemon still, so a load stuck past ``close``'s wait cannot hold the process up; ``close`` joins it
            self._swapper = threading.Thread(target=self._guarded, args=(target, reload, *args), name="bundle-swap",
                                             daemon=True)
            self._swapper.start()
        return self.swap_status

    def close(self, timeout_s: float) -> bool:
        """At the station's stop: no swap starts from now on (StationStopping), a swap loading switches no camera
        (what it loaded is closed), and the swap thread is joined, waiting up to ``timeout_s`` seconds for a load in
        progress (a backend still in native code when the interpreter exits aborts the process). Returns whether
        no swap thread is left running; one still loading after ``timeout_s`` is logged as a warning."""
        self.refuse_swaps()
        swapper = self._swapper
        if swapper is None:
            return True
        swapper.join(timeout_s)
        if swapper.is_alive():
            log.warning("the station stops while bundle %s is still loading (waited %.0f s for it): the process may "
                        "exit with the load unfinished", self.swap_status.get("bundle", ""), timeout_s)
            return False
        return True

    def refuse_swaps(self) -> None:
        """``close``'s first step, without the wait: no swap starts from now on, and one loading switches no camera
        (a swap switching now has switched when this returns)."""
        with self._switching:
            self._closed.set()

    def _stopped(self, bundles: str, changes) -> bool:
        """Whether the station is stopping (``close``): then the loaded ``changes``' backends are closed (no camera
        will run them) and the swap ends as failed, logged as a warning. Asked before a load, and right before a
        switch holding ``_switching`` (so ``close`` cannot come between the answer and the switch)."""
        if not self._closed.is_set():
            return False
        _close_loaded(changes)
        log.warning("bundle swap dropped: the station is stopping (%s not switched to)", bundles)
        self.swap_status = {"state": "failed", "bundle": bundles, "error": "the station is stopping",
                            "since": utc_now()}
        return True

    def _guarded(self, target, reload: ReloadFrom | None, *args) -> None:
        """The swap thread: ``target(*args, reload=reload)``. Whatever it raises ends the swap as failed (logged, its
        text in ``swap_status``), never left "loading": that would refuse every later swap and SIGHUP until a
        restart."""
        try:
            target(*args, reload=reload)
        except Exception as exc:  # noqa: BLE001 - see the docstring
            self._swap_failed(str(self.swap_status.get("bundle", "")), exc, reload)

    def _swap_failed(self, bundle: str, exc: Exception, reload: ReloadFrom | None = None,
                     cameras: tuple[str, ...] = ()) -> None:
        """A swap that did not happen: logged (a traceback for what is not a FairEdgeError) and in ``swap_status``.
        A reload's (``reload``) is refused as the reload's: who asked, and where the station file names the bundle of
        ``cameras`` (those whose load failed: ``ReloadFrom.refusal``), logged and shown so, with ``who``."""
        text = str(exc) if isinstance(exc, FairEdgeError) else f"{type(exc).__name__}: {exc}"
        if reload is None:
            log.error("bundle swap refused: %s", text, exc_info=not isinstance(exc, FairEdgeError))
            self.swap_status = {"state": "failed", "bundle": bundle, "error": text, "since": utc_now()}
            return
        refusal = reload.refusal(text, cameras)
        log.error("%s", refusal, exc_info=not isinstance(exc, FairEdgeError))
        self.swap_status = {"state": "failed", "bundle": bundle, "error": refusal, "who": reload.who,
                            "since": utc_now()}

    def reload_refused(self, who: str, text: str) -> None:
        """A reload refused before it started a swap (``StationConsole.reload_bundle``: a station file that does not
        load, a threshold applied on another model, ...; logged there): ``swap_status`` says so, "failed" with
        ``error`` "bundle reload refused (WHO): TEXT" and ``who``, so ``/api/swap`` and the live page no longer show
        the swap before it as the last word. Left as it is while a swap loads (it ends as done or failed itself)."""
        with self.lock:
            if self.swap_status.get("state") != "loading":
                self.swap_status = {"state": "failed", "error": f"bundle reload refused ({who}): {text}", "who": who,
                                    "since": utc_now()}

    def _load(self, bundle: Path, inspector, who: str, threshold: float | None, regions=None,
              reload: ReloadFrom | None = None) -> None:
        """One camera: load ``bundle``, checked against ``regions`` (a reload's, else those in force), then switch
        to it, with ``regions`` when given (none when the load fails, the regions kept would judge it on another scale
        (``scale_refusal``), its frames are off its grid, or the audit log can no longer be written: the loaded backend
        closed, the swap failed; a reload's, ``reload``, refused as such). Done with a ``warning`` when the switch is
        made but its audit row fails."""
        old = {"model": inspector.model, "bundle": str(self.feed.bundle_path or "")}
        if self._stopped(str(bundle), []):
            return
        checked = regions if regions is not None else regions_in_force(inspector)
        try:
            change = self.links.load_model(bundle, threshold=threshold,
                                           **({} if checked is None else {"regions": checked}))
        except Exception as exc:  # noqa: BLE001 - a loader's own errors too (onnxruntime raises RuntimeError)
            self._swap_failed(str(bundle), exc, reload, ("",))
            return
        if regions is not None:
            change = replace(change, regions=regions)
        refusal = (scale_refusal(change, inspector, checked, str(bundle), self._map_in_force("", inspector))
                   if regions is None else "") or \
            self._grid_refusal(change, "", checked, str(bundle))
        if refusal:   # its region rules would judge on another scale, or every frame would be NG: the old model stays
            _close_loaded([change])
            self._swap_failed(str(bundle), ConfigError(refusal), reload)
            return
        with self._switching:
            if not self._stopped(str(bundle), [change]):
                self._switch(inspector, change, old, who, str(bundle), reload)

    def _grid_refusal(self, change: ModelChange, camera: str, regions, bundle: str) -> str:
        """Why the loaded ``change`` (of ``bundle``) may not run on ``camera`` (one camera: ""): the camera's latest
        frame gives its tiled map another grid than its threshold was calibrated on (``hotswap.change_off_grid``),
        or is smaller than its tiling takes, so every frame would be NG (``ViewDecider.off_grid``, ``check_fits``);
        "" when it fits, no frame was seen yet, or region rules decide the verdicts (``regions``: the settings it is
        to be judged by; the pixel threshold holds on any grid)."""
        latest = self.feed.latest_views.get(camera) if camera else self.feed.latest
        frame = None if latest is None else latest.frame
        if frame is None or getattr(frame, "image", None) is None or regions_decide(regions):
            return ""
        h, w = frame_hw = tuple(frame.image.shape[:2])
        on = f"camera {camera}'s" if camera else "the camera's"
        kept = "the swap was refused: the station runs on with the model in force"
        try:
            found = change_off_grid(change, frame_hw)
        except ConfigError as exc:
            return f"bundle {bundle}: {on} latest {w} x {h} px frame does not fit its tiles: {exc} {kept}"
        if found is None:
            return ""
        where = f"cameras ({camera}).threshold" if camera else "decision.threshold"
        reason = off_grid_reason(found, f"{on} latest {w} x {h} frame", ", so every frame would be NG", where)
        return f"bundle {bundle}: {reason}; {kept}"

    def _camera_refusal(self, change: ModelChange, camera: str, reloaded, bundle: str) -> str:
        """Why the loaded ``change`` (of ``bundle``) may not run on ``camera`` of several: the region rules it keeps
        (``reloaded`` None: a console swap keeps the camera's in force) on another map scale (``scale_refusal``), or
        its frames off the grid (``_grid_refusal``); "" when it may."""
        if reloaded is not None:
            return self._grid_refusal(change, camera, reloaded, bundle)
        decider = self._decider(camera)
        kept = regions_in_force(decider)
        return (scale_refusal(change, decider, kept, bundle, self._map_in_force(camera, decider))
                or self._grid_refusal(change, camera, kept, bundle))

    def started_with(self, camera: str, model: str, bundle) -> None:
        """Record the model ``camera`` (one camera: "") starts with: its id ``model`` (the decider's) and the FP32
        reference graph of ``bundle``, the loaded bundle it came from (``tuning.reference_graph``; "" for a fused one
        or a stand-in): the map a console swap is compared with until one switches the camera (``_map_in_force``)."""
        self.maps_in_force[camera] = (model, tuning.reference_graph(bundle))

    def _map_in_force(self, camera: str, decider) -> tuple[str, str]:
        """(model id, SHA-256 of its FP32 reference graph, "" when not known: ``tuning.reference_graph``) of the model
        ``camera``'s ``decider`` runs (one camera: ""), or will once its pending change is taken (that change's bundle),
        for ``scale_refusal``: as loaded at the start (``started_with``) or by the swap last switched to from here
        (``maps_in_force``), while the decider still runs that model; the graph is "" otherwise (never re-read from
        the bundle folder: one rebuilt in place since holds another build)."""
        pending = getattr(getattr(decider, "switch", None), "pending", None)
        if pending is not None and pending.scorer is not None:
            return pending.model, tuning.reference_graph(pending.bundle)
        model = str(getattr(decider, "model", "") or "")
        known = self.maps_in_force.get(camera)
        return known if known is not None and known[0] == model else (model, "")

    def _switch(self, inspector, change: ModelChange, old: dict, who: str, bundle: str,
                reload: ReloadFrom | None = None) -> None:
        """One camera: hand the loaded ``change`` (of ``bundle``, as asked for) to ``inspector``'s switch and audit
        it (``_load``; ``reload``: a reload's swap, refused as such)."""
        if not self._still_auditable(bundle, [change], reload):
            return
        new_model = _new_model(inspector, change)   # before the request: the model in force or pending until now
        inspector.switch.request(change)
        self.maps_in_force[""] = (change.model, tuning.reference_graph(change.bundle))
        self.feed.use_bundle(bundle, change.bundle.root)   # a link as named: a reload without a station file follows it
        if change.regions is not None:   # the reloaded zones, drawn on the live page and the NG images
            self._show_zones(change.regions.outlines())
        if new_model:   # the same model reloaded (threshold, regions edited) keeps its scores and its drift alarm
            self.feed.drift.reset("", _reference(change))
        row = self._audited({"action": "swap", "who": who, "old": old,
                             "new": {"model": change.model, "bundle": str(change.bundle.root),
                                     "threshold": change.threshold}})
        self.swap_status = {"state": "done", "bundle": self.feed.shown_bundle(), "model": change.model,
                            **_warning([row]), "since": utc_now()}

    def _still_auditable(self, bundles: str, changes: list[ModelChange], reload: ReloadFrom | None = None) -> bool:
        """Whether the audit log can still be written once the (slow) load is done; if not, the swap fails before
        any camera switches and the loaded ``changes``' backends are closed (no camera runs them). A reload's
        (``reload``) is refused as the reload's, naming no bundle (none is at fault): "bundle reload refused (WHO):
        <the audit log's error>"."""
        try:
            self.audit.check_writable()
        except RecorderError as exc:
            _close_loaded(changes)
            self._swap_failed(bundles, exc, reload)
            return False
        return True

    def _load_views(self, plan: dict[Path, tuple[str, ...]], who: str, thresholds: dict[str, float | None],
                    regions: dict | None = None, reload: ReloadFrom | None = None) -> None:
        """Load every bundle of the plan, each checked against its cameras' ``regions`` (a reload's, else those in
        force), then switch each camera (with its ``regions`` where given); a failure (a load, a camera's rules kept
        on another map scale or its frames off the grid: ``_camera_refusal``, an audit log that can no longer be
        written) switches none (loaded backends closed; a reload's, ``reload``, refused as such, naming
        the cameras of the bundle that failed and where the station file names it). Once switching, every camera
        switches: an audit row that fails then is the swap's ``warning``, not a stop (the cameras after it would
        keep the old model)."""
        changes: dict[str, ModelChange] = {}
        bundles = ", ".join(str(b) for b in plan)
        regions = regions or {}
        for bundle, cameras in plan.items():
            if self._stopped(bundles, changes.values()):   # the station stops: load no more bundles
                return
            try:
                checked = {c: r for c in cameras if (r := regions.get(c, self._regions_of(c))) is not None}
                changes.update(self.links.load_views(bundle, cameras, thresholds,
                                                     **({"regions": checked} if checked else {})))
            except Exception as exc:  # noqa: BLE001 - a loader's own errors too (onnxruntime raises RuntimeError)
                _close_loaded(changes.values())   # the bundles loaded before the failure: no camera runs them
                self._swap_failed(bundles, exc, reload, cameras)
                return
        changes = {c: change if c not in regions else replace(change, regions=regions[c])
                   for c, change in changes.items()}
        bundle_of = {camera: str(bundle) for bundle, cameras in plan.items() for camera in cameras}
        refusals = [r for c, change in changes.items()
                    if (r := self._camera_refusal(change, c, regions.get(c), bundle_of[c]))]
        if refusals:   # a camera's rules on another scale, or every frame of a camera NG: no camera switches
            _close_loaded(changes.values())
            self._swap_failed(bundles, ConfigError("; ".join(refusals)), reload)
            return
        with self._switching:
            if not self._stopped(bundles, changes.values()):
                self._switch_views(changes, bundles, who, reload)

    def _switch_views(self, changes: dict[str, ModelChange], bundles: str, who: str,
                      reload: ReloadFrom | None = None) -> None:
        """Several cameras: switch each camera of ``changes`` (camera -> its loaded change) and audit it
        (``_load_views``; ``reload``: a reload's swap, refused as such)."""
        if not self._still_auditable(bundles, list(changes.values()), reload):
            return
        rows = []
        for camera, change in changes.items():
            decider = self._decider(camera)
            old = {"model": decider.model, "bundle": str(self.feed.camera_bundles.get(camera, ""))}
            new_model = _new_model(decider, change)
            decider.switch.request(change)
            self.maps_in_force[camera] = (change.model, tuning.reference_graph(change.bundle))
            self.feed.camera_bundles[camera] = change.bundle.root
            if new_model:   # this camera's watch only, and only for another model: the same one keeps its scores
                self.feed.drift.reset(camera, _reference(change))
            if camera == self.feed.lead_camera:   # the console's top-line bundle is the first camera's
                self.feed.use_bundle(None, change.bundle.root)
            rows.append(self._audited({"action": "swap", "who": who, "camera": camera, "old": old,
                                       "new": {"model": change.model, "bundle": str(change.bundle.root),
                                               "threshold": change.threshold}}))
        self.swap_status = {"state": "done", "bundle": bundles, "cameras": list(changes),
                            "models": {c: ch.model for c, ch in changes.items()}, **_warning(rows), "since": utc_now()}

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

    def _regions_of(self, camera: str):
        """The ``regions:`` settings ``camera``'s decider judges with (``regions_in_force``)."""
        return regions_in_force(self._decider(camera))

    def _show_zones(self, outlines: list) -> None:
        """Draw these zone outlines ((K, 2) int32 frame points each) on the live page and the NG images from now on."""
        self.feed.show_zones(outlines)
        if self.feed.recorder is not None:
            self.feed.recorder.show_zones(outlines)

    # ------------------------------------------------------------------ dataset
    def export_reviewed(self, who: str) -> dict:
        """The reviewed parts of this output folder as a training/evaluation dataset in a folder of its own under
        datasets/ (``new_export_folder``: two exports in the same second, two operators' clicks, never share one);
        the operator's name is checked before anything is exported; an audit log that cannot be written refuses it,
        one that fails once exported adds a ``warning``. An export that fails removes its folder while still empty."""
        who = _who(who)
        if self.links.export_reviewed is None:
            raise ConfigError("this station cannot export reviewed parts (no exporter was given)")
        self.audit.check_writable()
        dest = new_export_folder(self.feed.output / "datasets",
                                 f"reviewed-{utc_now().replace(':', '').replace('-', '')[:15]}")
        try:
            result = self.links.export_reviewed(self.feed.output, dest)
        except BaseException:
            with contextlib.suppress(OSError):   # not empty: what was exported stays, for the operator to see
                dest.rmdir()
            raise
        return {**result, **_warning([self._audited({"action": "export", "who": who, "new": result})])}

    def _inspector(self):
        if self.feed.inspector is None:
            raise StationStarting("the station is still starting (no inspector yet); try again in a moment")
        return self.feed.inspector


def reload_plan(named) -> dict[Path, tuple[str, ...]]:
    """Bundle folder -> the cameras to run it, in the station file's order, for ``StationActions.swap_cameras``: one
    load per folder however the cameras spell its path (relative or absolute, through a link), keyed by the folder
    resolved (``tuning.real_folder``), as ``station.cell.CellModels`` keys its models at the start: cameras that share
    a backend there share one after a reload too. named: each camera's ``CameraBundle``."""
    plan: dict[Path, tuple[str, ...]] = {}
    for c in named:
        folder = tuning.real_folder(c.bundle)
        plan[folder] = (*plan.get(folder, ()), c.camera)
    return plan


def _scores_below_zero(decider) -> bool:
    """Whether the model ``decider`` runs can score below 0 (a fused bundle: ``tuning.scores_below_zero``), so a
    threshold at or below 0 may be applied to it; a decider without a scorer (a stand-in) runs a single bundle's."""
    return tuning.scores_below_zero(getattr(decider, "scorer", None))


def applied_thresholds(rows: list[dict], station_file: Path) -> dict[str, dict]:
    """camera ("" with one) -> the last of audit ``rows`` (``audit.jsonl``) of a threshold applied from the console
    and written to ``station_file`` (``names_station_file``: by its resolved path)."""
    applied: dict[str, dict] = {}
    for row in rows:
        if row.get("action") == "threshold" and names_station_file(str(row.get("station_file") or ""), station_file):
            applied[str(row.get("camera", ""))] = row
    return applied


def names_station_file(named: str, station_file: Path) -> bool:
    """Whether an audit row's ``station_file`` (``named``) is ``station_file``: both resolved (absolute, links
    followed), as ``apply_threshold`` writes it, so a start from another folder (the systemd unit's absolute
    --station, its WorkingDirectory elsewhere) finds the row of a threshold applied to a station started by hand
    with a relative one. A row written before that names the file as it was typed (relative): the folder it was
    relative to is not recorded, so it cannot be resolved reliably; it is compared as it always was, made absolute
    in this process's folder (found by a start from the folder it was written from)."""
    if not named:
        return False
    if os.path.isabs(named):
        return Path(named).resolve() == Path(station_file).resolve()
    return os.path.abspath(named) == os.path.abspath(station_file)


def threshold_pair_refusal(station_file: Path, row: dict | None, named: CameraBundle, found: tuple[str, ...],
                           by: str) -> str:
    """Why ``named`` (a camera's bundle and threshold from ``station_file``) may not run, or "": its threshold is the
    one the audit ``row`` applied from the console (``applied_thresholds``) and its bundle holds another model than
    the row's (``found``: the ids of the model it holds now, ``hotswap.folder_model_ids`` or the loaded bundle's
    ``model_id`` and ``files_model_id``; () when not known: then compared by folder). by: "reload" or "start"."""
    if row is None or not _applied_on_another(row, named, found):
        return ""
    where = f"cameras ({named.camera}).threshold" if named.camera else "decision.threshold"
    camera = f" for camera {named.camera}" if named.camera else ""
    rebuilt = bool(row.get("bundle")) and tuning.same_bundle(row["bundle"], named.bundle)
    now = f" (model {found[0]}{': the folder was rebuilt since' if rebuilt else ''})" if found else ""
    # a row an older release wrote names no bundle: its model alone tells it was another
    applied_on = f"bundle {row['bundle']}" if row.get("bundle") else "a bundle (an older release did not record which)"
    again = "" if rebuilt or not row.get("bundle") else f" or name bundle {row['bundle']} again"
    then = "then reload (nothing was reloaded)" if by == "reload" else "then start the station (it was not started)"
    return (f"{station_file}: {where} {named.threshold:.6g} was applied from the console on {applied_on} "
            f"(model {row.get('model') or '?'}, by {row.get('who', '?')} at "
            f"{row.get('time', '?')}, {AUDIT}), not on bundle {named.bundle} this {by} would load{camera}{now}; set "
            f"{where} for {named.bundle} in the station file (null: the bundle's own calibrated threshold){again}, "
            f"{then}")


def run_threshold_refusal(row: dict | None, named: CameraBundle, found: tuple[str, ...]) -> str:
    """Without a station file: why ``named`` (a camera's bundle as the station named it, and the threshold in force)
    may not run, or "": its threshold is the one the audit ``row`` applied from the console in this run
    (``StationActions.applied_now``) and its bundle holds another model now (``found``: the ids of the model it holds,
    as for ``threshold_pair_refusal``; () when not known: the load names the problem). A link is named with its
    target now."""
    if row is None or not found or not _applied_on_another(row, named, found):
        return ""
    target = tuning.real_folder(named.bundle)
    leads = "" if str(target) == os.path.abspath(named.bundle) else f" (-> {target})"
    camera = f" on camera {named.camera}" if named.camera else ""
    applied_on = row.get("model") or "?"
    back = (f"point {named.bundle} back at model {applied_on}'s bundle" if leads else
            f"put model {applied_on}'s bundle back in {named.bundle}")
    return (f"the threshold {named.threshold:.6g} in force{camera} was applied from the console on model {applied_on} "
            f"(bundle {row.get('bundle') or '?'}, by {row.get('who', '?')} at {row.get('time', '?')}, {AUDIT}), but "
            f"bundle {named.bundle}{leads} holds model {found[0]} now: a threshold is on its model's scale, so "
            f"nothing was reloaded. To run model {found[0]}, swap to it from the console (it runs at its own "
            f"calibrated threshold; tune and apply one there), or restart the station on it (--threshold for its "
            f"scale, or none: the bundle's own); to keep {named.threshold:.6g}, {back}, then reload")


def _applied_on_another(row: dict, named: CameraBundle, found: tuple[str, ...]) -> bool:
    """Whether ``named``'s threshold is the one the audit ``row`` applied from the console and ``named``'s bundle holds
    another model than the one it was applied on: by model id (the row's ``model`` among ``found``, an id of the
    model the bundle holds now, or the id fair-edge wrote for it before bundle.json counted), else, where either id
    is unknown, by folder (a row written before rows named their bundle: not known, False)."""
    if named.threshold is None or row.get("new") != named.threshold:
        return False
    if row.get("model") and found:
        return row["model"] not in found
    return bool(row.get("bundle")) and not tuning.same_bundle(row["bundle"], named.bundle)


def new_export_folder(parent: Path, name: str) -> Path:
    """A folder ``parent/name`` created now, or ``name-2``, ``name-3``, ... where that exists (each created with an
    exclusive mkdir: two exports asking at once never get the same one). RecorderError when none can be created."""
    try:
        parent.mkdir(parents=True, exist_ok=True)
        for n in range(1, 1000):
            folder = parent / (name if n == 1 else f"{name}-{n}")
            try:
                folder.mkdir()
            except FileExistsError:
                continue
            return folder
    except OSError as exc:
        raise RecorderError(f"{parent}: could not create an export folder ({exc.strerror or exc}); free disk space "
                            "or make the output folder writable, then export again (nothing was exported)") from exc
    raise RecorderError(f"{parent}: expected a free folder name {name}[-N], found {name} to {name}-999 taken; move "
                        "earlier exports away, then export again (nothing was exported)")


def regions_in_force(decider):
    """The ``regions:`` settings (``station.zones.RegionSettings``) ``decider`` (an inspector or a camera's
    ``ViewDecider``) judges with, or will once its pending change is taken; None when it judges no regions (a swap
    then keeps them off, so nothing is to be checked)."""
    switch = getattr(decider, "switch", None)
    pending = getattr(switch, "pending", None)
    if pending is not None and pending.regions is not None:
        return pending.regions if pending.regions.enabled else None
    judge = getattr(decider, "regions", None)   # a stand-in decider without regions judges none
    return None if judge is None else judge.settings


def _refuse_unseen(latched: dict[str, str], seen: str | None) -> None:
    """AlarmChanged, before anything is cleared, when an alarm latched now ({gate: alarm}, ``feed.alarms``) is not
    one the page showed (``seen``: its alarm text; None: any is)."""
    if seen is None:
        return
    unseen = [named_alarm(gate, alarm) for gate, alarm in latched.items() if not alarm_shown(gate, alarm, seen)]
    if unseen:
        raise AlarmChanged(f"alarm: expected the one shown ({seen or 'none'!r}) to be latched, found a newer one: "
                           f"{'; '.join(unseen)}; read it, then acknowledge again (nothing was cleared)")


def _clear_alarms(gates: dict, shown: dict[str, str] | None) -> tuple[dict[str, str], str]:
    """Reset each gate's alarm (``acknowledge_alarm``), each against the alarm the page showed of it (``shown``: {gate:
    alarm}, those ``_refuse_unseen`` found shown; a gate not in it against none; None: whatever is latched). Returns
    ({gate: the alarm it cleared}, the refusal of a gate that latched a newer alarm since: "" none; that gate keeps
    it, the others are cleared)."""
    cleared, newer = {}, []
    for gate, scheduler in gates.items():
        try:
            old = scheduler.acknowledge_alarm(None if shown is None else shown.get(gate, ""))
        except ConfigError as exc:   # latched since the page showed its own: kept
            newer.append(named_alarm(gate, str(exc)))
            continue
        if old:
            cleared[gate] = old
    return cleared, "; ".join(newer)


def _faults_left(gates: dict, lanes: bool) -> str:
    """Why the fault output is still on after an acknowledgement, as the gates tell it ('' none): the station's gate's
    reason (the camera, the backend, a sink down...); with lanes (``lanes``), each lane's own fault left, named (the
    station's others: the live page's fault pill, from the station's next tick)."""
    if not lanes:
        return next(iter(gates.values())).fault_reason or ""
    return "; ".join(named_alarm(gate, reason) for gate, scheduler in gates.items()
                     if gate and (reason := scheduler.fault_reason))


def _new_model(decider, change: ModelChange) -> bool:
    """Whether ``change`` makes ``decider`` (the inspector, or a camera's ``ViewDecider``) run another model than the
    one it runs, or will once its pending change is taken: model ids compared as the inspector compares them at the
    switch (``Inspector._swap_model``; "", an id not known, is another model). Its drift watch starts over only then:
    a reload of the same model (its threshold or regions edited, or nothing) changes no score, so its scores and a
    drift alarm they raised stay."""
    pending = decider.switch.pending
    running = pending.model if pending is not None and pending.scorer is not None else decider.model
    return not change.model or change.model != running


def _reference(change: ModelChange) -> Reference:
    """The calibration distribution of the swapped model's decision score and its size (the drift watch's
    ``Reference``): the change's (with an ROI, of max(map x ROI): ``station.decision``), else, without an ROI, the
    bundle's threshold's; ``Reference()`` = none."""
    threshold = change.calibration
    if threshold is None and change.roi is None:
        threshold = change.bundle.threshold
    return Reference.of(threshold)


def _close_loaded(changes) -> None:
    """Close the scorers of loaded ``changes`` no camera will run (each shared scorer once)."""
    for scorer in {id(c.scorer): c.scorer for c in changes if c.scorer is not None}.values():
        close_scorer(scorer)


def _review_image(feed: StationFeed, run_id: str, verdict):
    """The frame of ``verdict``'s view ((H, W[, C]) uint8): kept in ``feed``'s memory, else the recorder's NG image of
    run ``run_id``; None when neither exists any more."""
    part = feed.kept_part(verdict.seq, verdict.camera)
    if part is not None and part.frame is not None:
        return part.frame.image
    rec = feed.recorder
    folder, ext = (rec.dir, rec.settings.image_format) if rec is not None else (feed.output, "png")
    return read_stored(ng_image_path(folder, run_id, verdict.seq, "frame", ext, verdict.camera), "NG frame")


def _not_kept(what: str, label: str, kept: int) -> str:
    """FrameNotKept's text: why the review of ``what`` as ``label`` is refused (``kept``: console.keep_frames) and
    what to do."""
    return (f"{what} cannot be reviewed as {label!r}: its frame has left the console's memory (the last {kept} "
            f"frames are kept, console.keep_frames) and no NG image of it is recorded, so the review would reach the "
            f"dataset without its image; nothing was recorded. Mark a part while it is among the last {kept} (the "
            f"live page greys its miss button once its frame is gone), or raise console.keep_frames in the station "
            f"file to keep more frames (memory: one frame each)")


def scale_refusal(change: ModelChange, decider, regions, bundle: str, in_force: tuple[str, str] = ("", "")) -> str:
    """Why a swap that keeps the ``regions:`` settings in force (a console swap) may not run the loaded ``change``
    (of ``bundle``): their rules decide the verdict with the pixel threshold the station file sets
    (``regions.pixel_threshold``), which is in the units of the map of the model ``decider`` runs (or will once its
    pending change is taken; ``in_force``: its model id and FP32 reference graph, ``StationActions._map_in_force``),
    and the loaded model's map is on another scale, so judged at it the new model's defects would pass (or every part
    be NG): a fused bundle's, in its members' normal spread, against a single bundle's score units
    (``tuning.scores_below_zero``), or another model's (``_model_refusal``). "" when both are one model's map (the
    same model id, or the same FP32 reference graph: a copy, a rebuild at another precision or calibrated again:
    ``_same_map``), rules do not decide, or the file sets no pixel threshold (each bundle's own is used then; a fused
    bundle has none, and its loader refuses it: ``station.bundles.region_pixel_threshold``)."""
    value = getattr(regions, "pixel_threshold", None)
    if value is None or not regions_decide(regions):
        return ""
    fused = tuning.scores_below_zero(change.scorer)
    if fused == _fused_in_force(decider):
        return "" if _same_map(change, in_force) else _model_refusal(change, in_force, value, bundle)
    if fused:
        new, old = "a fused bundle, whose map is in its members' normal spread", "the single bundle in force's score"
        units = f"the pixels above its threshold, {change.bundle.threshold.value:.6g}, make a part NG"
    else:
        new, old = "a single bundle, whose map is in its model's score units", ("the fused bundle in force's map: its "
                                                                               "members' normal spread")
        units = "null: its calibrated one"
    return (f"bundle {bundle} is {new}, but the region rules in force decide the verdict with the station file's "
            f"regions.pixel_threshold {value:g}, set in the units of {old}: on another scale, the new model's defects "
            "would pass or every part be NG. The swap was refused; the station runs on with the model in force. To "
            f"run {bundle} with region rules, set regions.pixel_threshold in its map's units ({units}) and bundle: "
            f"{bundle} in the station file, then reload (kill -HUP); or turn the rules off.")


def _model_refusal(change: ModelChange, in_force: tuple[str, str], value: float, bundle: str) -> str:
    """``scale_refusal``'s words for a swap to ``bundle`` (the loaded ``change``) of another model id than the one in
    force (``in_force``: its model id, "": not known, and FP32 reference graph), both single (or both fused) bundles,
    while the station file's ``regions.pixel_threshold`` (``value``) decides with the rules: another network (both
    graphs known, ``_another_network``), or one not known to be the same (a graph not known: ``_network_not_known``)."""
    old = in_force[0] or "?"
    new_graph = tuning.reference_graph(change.bundle)
    opening = (_another_network(change, bundle, old) if in_force[1] and new_graph else
               _network_not_known(change, bundle, old, "the model in force's" if new_graph else
                                  "the new model's" if in_force[1] else "either model's"))
    return (f"{opening}, but the region rules in force decide the verdict with the station file's "
            f"regions.pixel_threshold {value:g}, set in the units of model {old}'s map: another model's map is on a "
            "scale of its own, so the new model's defects would pass or every part be NG. The swap was refused; the "
            f"station runs on with the model in force. To run {bundle} with region rules, set "
            "regions.pixel_threshold in its map's units (null: its calibrated one) "
            f"and bundle: {bundle} in the station file, then reload (kill -HUP); with regions.pixel_threshold null "
            "there (reloaded), each bundle swapped in from here is judged at its own calibrated one; or turn the "
            "rules off.")


def _another_network(change: ModelChange, bundle: str, old: str) -> str:
    """``_model_refusal``'s opening where both FP32 reference graphs are known and differ (model ``old`` in force)."""
    return (f"bundle {bundle} holds model {change.model or '?'}, another model than model {old} in force (a copy of "
            "it, or a rebuild of it at another precision, would run the same network)")


def _network_not_known(change: ModelChange, bundle: str, old: str, unknown: str) -> str:
    """``_model_refusal``'s opening where ``unknown`` ("the model in force's", "the new model's", "either model's")
    FP32 reference graph is not known (a fused bundle has none; the model in force is known by the bundle it was
    loaded from, at the start or by a swap from here), so a rebuild of model ``old`` cannot be told from another."""
    return (f"bundle {bundle} holds model {change.model or '?'}, not known to be the same network as model {old} in "
            f"force ({unknown} FP32 reference graph is not known, so a copy or a rebuild at another precision cannot "
            "be told from another model)")


def _same_map(change: ModelChange, in_force: tuple[str, str]) -> bool:
    """Whether the loaded ``change`` draws the map of the model in force (``in_force``: its model id and FP32
    reference graph, "" where not known): the same model id, or the same FP32 reference graph
    (``tuning.reference_graph``: the network every precision of one checkpoint is built from, so a rebuild at another
    precision, or calibrated again, draws its map in the same units)."""
    model, graph = in_force
    if change.model and change.model == model:
        return True
    return bool(graph) and tuning.reference_graph(change.bundle) == graph


def _fused_in_force(decider) -> bool:
    """Whether the model ``decider`` judges with, or will once its pending change is taken, is a fused bundle's
    (``tuning.scores_below_zero``; a decider without a scorer, a stand-in, runs a single bundle's)."""
    pending = getattr(getattr(decider, "switch", None), "pending", None)
    if pending is not None and pending.scorer is not None:
        return tuning.scores_below_zero(pending.scorer)
    return _scores_below_zero(decider)


def regions_decide(regions) -> bool:
    """Whether the ``regions:`` settings (``station.zones.RegionSettings``, None: none) have rules that decide the
    verdict (``RegionJudge.decides``): a map's grid then does not matter."""
    return regions is not None and getattr(regions, "enabled", True) and bool(getattr(regions, "has_rules", False))


def rules_decide_note(camera: str) -> str:
    """Why a threshold is neither projected nor applied on ``camera`` (one camera: "") whose region rules decide the
    verdict (``regions_decide``), and what to tune instead: the tune page shows it, a threshold applied is refused
    with it (``RulesDecide``)."""
    of = f" of camera {camera}" if camera else ""
    where = "its cameras[] entry's regions: over the station's" if camera else "its regions: section"
    check = "fair-edge rules check STATION FOLDER" + (f" --camera {camera}" if camera else "")
    return (f"region rules decide the verdict{of}: a part is NG exactly when a rule fires (a frame that cannot be "
            "inspected stays NG), whatever its image score, so the image threshold changes no verdict and no "
            f"false-reject or catch rate is projected for it. Tune the rules in the station file instead ({where}: "
            "the limits of regions.default and regions.zones, e.g. min_area_mm2, min_length_mm, max_count, and "
            f"regions.pixel_threshold, which cuts the regions), replay a folder through them with `{check}`, then "
            "reload (kill -HUP); or remove the rules (regions only reported) to decide by the threshold again")


def _warning(rows: list[dict]) -> dict:
    """{"warning": the distinct warnings of audit ``rows`` (``_audited``), joined} where any has one, else {}."""
    warnings = list(dict.fromkeys(row["warning"] for row in rows if "warning" in row))
    return {"warning": "; ".join(warnings)} if warnings else {}


def _seq(value) -> int:
    require(is_int(value), "seq", "a part number (integer)", value)
    return value


def _who(value) -> str:
    require(isinstance(value, str) and bool(value.strip()) and len(value) <= 80, "who",
            "the operator's name (1..80 characters)", value)
    return value.strip()
