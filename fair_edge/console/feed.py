"""StationFeed: what the console knows about the running station, and the only link to its loop.

The inspection loop calls ``observe(frame, verdict, anomaly_map)`` once per verdict (a verdict
callback): it only appends references to bounded deques (no copy, no encoding, no lock held by
the console while it renders), so a slow or absent browser costs the loop nothing. Everything
else (counters, percentiles, images) is read on the console's thread from what the station
already keeps: the inspector's summary and latencies, the capture thread's stats, the reject
scheduler's and recorder's counters.

A view is named by its key ``(camera, seq)`` (``view_key``): with several cameras every camera numbers
its own frames, so seq alone is ambiguous; with one camera the camera is "". A station of several cameras
(``station.cell``) also hands in its part rows (``observe_part``, the ``PartAssembler``'s rows) and its
per-camera and part counters (``CellCounters``). Every camera's scores go to its own drift watch
(``drift.CameraDrift``), compared with the calibration of the bundle that camera runs.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from fair_edge.console.settings import ConsoleSettings
from fair_edge.console.drift import CameraDrift, Reference
from fair_edge.line.metrics import LATENCY_BUCKETS_S
from fair_edge.records import Frame, Verdict

LATENCY_EDGES_MS = tuple(1000.0 * b for b in LATENCY_BUCKETS_S)
RATE_WINDOW_S = 5.0


ViewKey = tuple[str, int]   # (camera, seq): one camera's frame; camera "" with one camera


def view_key(verdict: Verdict) -> ViewKey:
    """The key of a verdict's view: (camera, seq)."""
    return (verdict.camera, verdict.seq)


class CellCounters(Protocol):
    """What a station of several cameras counts, read by the console (``station.cell.CellCounters``).

    cameras() -> {camera: {"frames_in", "inspected", "ng", "dropped", "lost", "state", "end_reason"}} (the
    same counters as ``RunSummary.cameras``); parts() -> the part counters ({"parts", "ng", "ok",
    "not_inspected", "late_views"}, and "resyncs" with ``group.match: sequence``; {} when the cameras are lanes,
    not views of one part)."""

    def cameras(self) -> dict[str, dict]: ...

    def parts(self) -> dict: ...


@dataclass(frozen=True)
class Part:
    """One inspected part as the console keeps it: its verdict, and (while kept) its frame and map.
    frame.image: (H, W, 3) or (H, W) uint8; anomaly_map: (S, S) float32 or None."""

    verdict: Verdict
    frame: Frame | None = None
    anomaly_map: np.ndarray | None = None


class StationFeed:
    """Bounded memory of recent parts plus handles to the station's own counters.

    attach(...) is called by the station once its parts exist; until then the console shows
    "starting". output: the station's output folder (the only folder the console serves files from).
    reference: the calibration distribution of the station's score and its size (``drift.Reference``; none by
    default), for one camera's drift watch (camera ""). camera_references: several cameras: camera -> its own
    (station file's order), one drift watch each; given, ``reference`` is not used.
    """

    def __init__(self, settings: ConsoleSettings, output: Path, reference: Reference = Reference(),
                 camera_references: Mapping[str, Reference] | None = None) -> None:
        self.settings, self.output = settings, Path(output)
        self.recent: deque[Verdict] = deque(maxlen=settings.recent_parts)
        self.frames: deque[Part] = deque(maxlen=max(settings.keep_frames, 1))
        self.ng: deque[Verdict] = deque(maxlen=settings.recent_parts)
        # view -> its verdicts in ``recent`` / ``ng``, oldest first (kept and trimmed with them, by ``observe`` only):
        # ``verdict`` looks a view up in O(1), not by scanning thousands of verdicts for each view a page shows
        self._recent_index: dict[ViewKey, list[Verdict]] = {}
        self._ng_index: dict[ViewKey, list[Verdict]] = {}
        self.latest: Part | None = None
        self.latest_views: dict[str, Part] = {}   # camera -> its latest view (several cameras)
        self.part_rows: deque[dict] = deque(maxlen=settings.recent_parts)   # PartAssembler rows, oldest first
        self.ng_part_rows: deque[dict] = deque(maxlen=settings.recent_parts)
        self.part_of: dict[ViewKey, int] = {}     # view -> its part id, for the views of remembered parts
        self.cell: CellCounters | None = None
        self.camera_bundles: dict[str, Path] = {}   # camera -> the bundle it runs (several cameras)
        self.drift = CameraDrift({"": reference} if camera_references is None else camera_references,
                                 settings.drift_window, settings.drift_min_parts, settings.drift_alarm)
        self.inspector = self.capture = self.scheduler = self.recorder = self.camera_watch = None
        self.bundle_path: Path | None = None
        self.started = time.time()
        self.run_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(self.started))
        self.count = 0          # verdicts observed (changes = something new to push)
        self.zone_outlines: list[np.ndarray] = []   # the station's zones, drawn over the live and part images

    def show_zones(self, outlines: list[np.ndarray]) -> None:
        """Draw these zone outlines ((K, 2) int32 (x, y) frame pixels each) over the console's images."""
        self.zone_outlines = list(outlines)

    def attach(self, inspector, capture, scheduler=None, recorder=None, camera_watch=None,
               bundle_path: Path | None = None) -> None:
        self.inspector, self.capture, self.scheduler = inspector, capture, scheduler
        self.recorder, self.camera_watch, self.bundle_path = recorder, camera_watch, bundle_path
        if getattr(recorder, "run_id", None):
            self.run_id = recorder.run_id   # the station's run id: NG image names and log rows carry it

    def attach_cell(self, counters: CellCounters, bundles: dict[str, Path]) -> None:
        """A station of several cameras: its counters and the bundle each camera runs (in the station file's
        order). Each camera has its own drift watch (one not handed a calibration distribution gets a watch
        that says it has none)."""
        self.cell, self.camera_bundles = counters, dict(bundles)
        self.drift.cover(list(bundles))

    @property
    def lead_camera(self) -> str:
        """The first camera of several (the station file's order: the console's top-line model and bundle, and
        what tuning shows unless told); "" with one camera."""
        return next(iter(self.camera_bundles), "")

    # ------------------------------------------------------------------ loop side (O(1))
    def observe(self, frame: Frame, verdict: Verdict, anomaly_map: np.ndarray | None) -> None:
        """Verdict callback: remember the part. Appends only; never blocks, never copies."""
        part = Part(verdict, frame, anomaly_map)
        _append(self.recent, self._recent_index, verdict)
        if self.settings.keep_frames:
            self.frames.append(part)
        if verdict.ng:
            _append(self.ng, self._ng_index, verdict)
        self.latest = part
        if verdict.camera:
            self.latest_views[verdict.camera] = part
        self.drift.observe(view_key(verdict), verdict.score)
        self.count += 1

    def observe_part(self, row: dict) -> None:
        """A part row of several cameras' views (``station.parts``: part, ng, views {camera: {seq, ...} |
        {missing}}, ...). Appends only; never blocks. Called on the inspection loop's thread."""
        self.part_rows.append(row)
        if row.get("ng"):
            self.ng_part_rows.append(row)
        for camera, view in row.get("views", {}).items():
            if "seq" in view:
                self.part_of[(camera, view["seq"])] = row["part"]
        while len(self.part_of) > self.settings.recent_parts * max(1, len(row.get("views", {}))):
            self.part_of.pop(next(iter(self.part_of)))

    # ------------------------------------------------------------------ console side
    def kept_part(self, seq: int, camera: str = "") -> Part | None:
        """The kept frame of view (camera, seq) (None once it has left the keep_frames window and is no longer
        its camera's latest)."""
        for part in reversed(list(self.frames)):
            if part.verdict.seq == seq and part.verdict.camera == camera:
                return part
        latest = self.latest_views.get(camera) if camera else self.latest
        if latest is not None and latest.verdict.seq == seq and latest.verdict.camera == camera:
            return latest
        return None

    def verdict(self, seq: int, camera: str = "") -> Verdict | None:
        """The verdict of view (camera, seq) while it is among the recent ones (or the NG list): the newest recent
        one, else the newest NG one. O(1) (an index kept with the lists): any thread may call it."""
        key = (camera, seq)
        found = _newest(self._recent_index, key)
        return found if found is not None else _newest(self._ng_index, key)

    def cameras(self) -> list[str]:
        """The cameras of a station of several (in the station file's order), [] with one camera."""
        return list(self.cell.cameras()) if self.cell is not None else []

    def latency(self) -> dict:
        """Percentiles and a histogram (ms) of capture -> verdict latency over the recent parts."""
        values = np.array([v.latency_ms for v in list(self.recent)])
        if values.size == 0:
            return {"p50_ms": None, "p90_ms": None, "p99_ms": None, "max_ms": None,
                    "edges_ms": list(LATENCY_EDGES_MS), "counts": [0] * (len(LATENCY_EDGES_MS) + 1)}
        counts = np.bincount(np.searchsorted(LATENCY_EDGES_MS, values), minlength=len(LATENCY_EDGES_MS) + 1)
        p50, p90, p99 = np.percentile(values, [50, 90, 99])
        return {"p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99), "max_ms": float(values.max()),
                "edges_ms": list(LATENCY_EDGES_MS), "counts": counts.tolist()}

    def rate(self, now: float | None = None) -> float:
        """Parts inspected per second over the last RATE_WINDOW_S seconds."""
        now = time.monotonic() if now is None else now
        n = sum(1 for v in list(self.recent)[-2000:] if now - v.t_verdict <= RATE_WINDOW_S)
        return n / RATE_WINDOW_S

    def counters(self) -> dict:
        """The station's own counters, read (never kept twice). The reject gate's: ``late_verdicts`` (verdicts that
        came after their part's reject deadline: no pulse), ``gap_missed`` (parts due a reject and refused its pulse:
        too close to the previous one, ``min_gap_ms``). The recorder's: ``rows_logged`` (verdicts.jsonl),
        ``rows_failed`` (rows whose write raised: a full or unplugged disk; not in the log), ``rows_dropped`` (rows
        never queued, the writer's backlog full), ``write_errors`` (every failed write, rows and NG images),
        ``images_failed`` (NG parts whose frame or map could not be drawn or encoded: no NG image, not a disk fault;
        the part is in the log)."""
        out = {"frames_in": 0, "inspected": 0, "ng": 0, "dropped": 0, "lost": 0, "malformed": 0,
               "inference_errors": 0, "region_errors": 0, "late_verdicts": 0, "gap_missed": 0, "rows_logged": 0,
               "rows_failed": 0, "rows_dropped": 0, "write_errors": 0, "images_failed": 0}
        if self.inspector is not None:
            s = self.inspector.summary
            out.update(inspected=s.inspected, ng=s.ng, malformed=s.malformed, inference_errors=s.inference_errors,
                       region_errors=s.region_errors)
        if self.capture is not None:
            c = self.capture.stats()
            out.update(frames_in=c.frames_in, dropped=c.dropped_queue_full, lost=c.frames_lost_estimate)
        if self.scheduler is not None:
            gate = self.scheduler.stats()
            out.update(late_verdicts=gate.get("late_verdicts", 0), gap_missed=gate.get("gap_missed", 0))
        if self.recorder is not None:
            r = self.recorder.stats()
            out.update(rows_logged=r.get("logged", 0), rows_failed=r.get("rows_failed", 0),
                       rows_dropped=r.get("dropped", 0), write_errors=r.get("write_errors", 0),
                       images_failed=r.get("images_failed", 0))
        return out

    def ng_in_run(self) -> int:
        """NG verdicts of this run so far, kept or not: the inspector's count (``len(self.ng)`` before it is attached);
        several cameras: NG parts, or with lanes NG frames of every camera."""
        if self.cell is not None:
            parts = self.cell.parts()
            return parts.get("ng", 0) if parts else sum(c.get("ng", 0) for c in self.cell.cameras().values())
        return self.inspector.summary.ng if self.inspector is not None else len(self.ng)

    def cell_counters(self) -> dict:
        """Several cameras: {"cameras": {camera: counters}, "parts": part counters}; {} with one camera."""
        if self.cell is None:
            return {}
        return {"cameras": self.cell.cameras(), "parts": self.cell.parts()}

    def state(self) -> dict:
        """Camera, PLC, fault and model state as plain values. plc: None without a reject gate, else its sinks and
        fault sinks (counts), parts ``pending``, and the sinks' pulse faults: ``sink_errors``, ``sink_missed`` (not
        written by the deadline), ``sink_dropped`` (refused by a full sink queue), ``sink_unconfirmed`` (written, no
        reply), and the latched ``alarm`` ("" none)."""
        camera = self.capture.stats() if self.capture is not None else None
        sched = self.scheduler.stats() if self.scheduler is not None else None
        insp = self.inspector
        return {
            "camera": {"state": camera.state.value if camera else "starting",
                       "problem": self.camera_watch.reason if self.camera_watch is not None else ""},
            "plc": None if sched is None else {
                "sinks": len(self.scheduler.settings.sinks), "fault_sinks": len(self.scheduler.settings.fault_sinks),
                "pending": sched.get("pending", 0), "sink_errors": sched.get("sink_errors", 0),
                "sink_missed": sched.get("sink_missed", 0), "sink_unconfirmed": sched.get("sink_unconfirmed", 0),
                "sink_dropped": sched.get("sink_dropped", 0),   # a pulse a sink's full queue refused: missed too
                "alarm": self.scheduler.alarm or ""},
            "fault": insp.summary.fault if insp is not None else "",
            "model": None if insp is None else {"id": insp.model, "backend": insp.summary.backend,
                                                 "threshold": insp.threshold,
                                                 "bundle": str(self.bundle_path or "")},
        }


def _append(kept: deque[Verdict], index: dict[ViewKey, list[Verdict]], verdict: Verdict) -> None:
    """Append ``verdict`` to the bounded ``kept`` and its view's entry of ``index``; the verdict ``kept`` drops
    when full (its oldest, so the oldest of its view's entry) leaves the index too. Loop thread only (the one
    writer); a reader on another thread sees a verdict a moment before or after it is kept, never a torn entry."""
    if kept.maxlen is not None and len(kept) == kept.maxlen:
        old = kept[0]
        key = view_key(old)
        entries = index.get(key)
        if entries:
            if len(entries) == 1:
                del index[key]
            else:
                entries.pop(0)
    kept.append(verdict)
    key = view_key(verdict)
    entries = index.get(key)
    if entries is None:
        index[key] = [verdict]
    else:
        entries.append(verdict)


def _newest(index: dict[ViewKey, list[Verdict]], key: ViewKey) -> Verdict | None:
    """The newest verdict of view ``key`` in ``index``; None when it has none (or lost it while being read)."""
    try:
        return index[key][-1]
    except (KeyError, IndexError):
        return None


def finite(value: float) -> float | None:
    """JSON has no NaN: None for a score that could not be computed."""
    return value if isinstance(value, (int, float)) and math.isfinite(value) else None
