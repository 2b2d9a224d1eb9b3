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
per-camera and part counters (``CellCounters``); with ``group.by: lane`` also each lane's reject gate
(``attach_lanes``): their alarms are shown named by lane and acknowledged from the console like the station's own.
Every camera's scores go to its own drift watch (``drift.CameraDrift``), compared with the calibration of the bundle
that camera runs. The station hands in how to read why its fault outputs are on (``read_fault_from``: the text MQTT
and systemd's STATUS show), which the live page's fault pill shows.

What the console keeps does not grow with ``console.recent_parts``, except the NG review: every view's verdict is
kept for the last ``RECENT_VERDICTS`` views (or ``keep_frames``, if more: a kept frame's verdict stays findable), the
live page's latency over the last ``LATENCY_WINDOW`` of them; ``recent_parts`` sizes the NG lists the gallery shows
(``ng``, ``ng_part_rows``) and nothing the live page reads several times a second. The line's rate is a counter's
change over the last ``RATE_WINDOW_S`` (``CounterRate``): parts for cameras viewing one part, else inspected frames.
"""

from __future__ import annotations

import bisect
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from fair_edge.console.settings import ConsoleSettings
from fair_edge.console.drift import CameraDrift, Reference
from fair_edge.console.reject_gates import PLC_COUNTERS, RejectGate, alarm_text
from fair_edge.images import gray_2d
from fair_edge.line.metrics import LATENCY_BUCKETS_S
from fair_edge.records import Frame, Verdict

LATENCY_EDGES_MS = tuple(1000.0 * b for b in LATENCY_BUCKETS_S)
RATE_WINDOW_S = 5.0
RECENT_VERDICTS = 2000   # every view's verdict kept (live page, tuning, review lookups): fixed, not recent_parts
LATENCY_WINDOW = 2000    # the live page's latency percentiles and histogram: over the last this many verdicts
RATE_OF_PARTS, RATE_OF_FRAMES = "parts", "frames"   # what the live page's rate counts (``StationFeed.rate_counts``)


ViewKey = tuple[str, int]   # (camera, seq): one camera's frame; camera "" with one camera


def drawable_frame(image: object) -> bool:
    """Whether the console can draw ``image`` (``render.overlay_jpeg``): a uint8 numpy array, (H, W, 3) BGR or
    (H, W) / (H, W, 1) gray, H, W >= 1, the frame format ``preprocess.check_frame`` takes. A malformed frame's array
    (0-d, empty, of another dtype or number of channels) is not: OpenCV raised on it while the live page asked."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        return False
    image = gray_2d(image)
    return (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)) and min(image.shape[:2]) >= 1


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


class CounterRate:
    """Events per second over the last ``window_s`` seconds of a monotonic clock, as a counter's change: ``tick(t)``
    counts one event at time t (s; one writer at a time, O(1)), keeping the running total at each event back to the last
    one at or before ``t - window_s``; ``per_s(now)`` = (total now - total at ``now - window_s``) / window_s (any
    thread). It changes only when an event enters or leaves the window. At most ``max_readings`` events are kept: on a
    line faster than max_readings / window_s events/s, the rate is over the time since the oldest one kept."""

    def __init__(self, window_s: float = RATE_WINDOW_S, max_readings: int = 8192) -> None:
        self.window_s = window_s
        self.total = 0   # events counted (monotonic)
        self._readings: deque[tuple[float, int]] = deque(maxlen=max_readings)   # (t s, total), oldest first

    def tick(self, t: float) -> None:
        """One event at ``t`` (s, the clock ``per_s`` is given)."""
        self.total += 1
        readings = self._readings
        readings.append((t, self.total))
        while len(readings) > 1 and readings[1][0] <= t - self.window_s:
            readings.popleft()   # the newest at or before the window's start stays: the total then

    def per_s(self, now: float) -> float:
        """Events per second over (now - window_s, now]; 0.0 before the first."""
        readings = list(self._readings)   # a copy: the loop thread appends meanwhile
        if not readings:
            return 0.0
        total, start = readings[-1][1], now - self.window_s
        before = bisect.bisect_right(readings, start, key=_time)   # readings[:before] are at or before ``start``
        if before:
            return (total - readings[before - 1][1]) / self.window_s
        t_oldest, total_oldest = readings[0]
        if total_oldest == 1:   # the first event is kept: none came before the window
            return total / self.window_s
        return (total - total_oldest) / (now - t_oldest) if now > t_oldest else 0.0   # readings dropped: the kept ones


def _time(reading: tuple[float, int]) -> float:
    return reading[0]


class PartIndex:
    """View -> its part id, for the views of the last ``recent_rows`` part rows and of the NG part rows the gallery
    lists (the newest ``ng_rows``): the part a review of a view names. ``add`` by one writer at a time
    (``StationFeed.observe_part``'s lock); ``get`` from any thread."""

    def __init__(self, recent_rows: int, ng_rows: int) -> None:
        self._recent, self._ng = _Rows(recent_rows), _Rows(ng_rows)

    def add(self, row: dict) -> None:
        """A part row (part, ng, views {camera: {seq, ...} | {missing}})."""
        keys = tuple((camera, view["seq"]) for camera, view in row.get("views", {}).items() if "seq" in view)
        self._recent.add(row["part"], keys)
        if row.get("ng"):
            self._ng.add(row["part"], keys)

    def get(self, key: ViewKey, default: int | None = None) -> int | None:
        found = self._recent.of.get(key)
        if found is None:
            found = self._ng.of.get(key)
        return default if found is None else found


class _Rows:
    """The views of the last ``size`` part rows: ``of`` maps each to its part (a view seen again maps to its newest)."""

    def __init__(self, size: int) -> None:
        self.of: dict[ViewKey, int] = {}
        self._rows: deque[tuple[int, tuple[ViewKey, ...]]] = deque()   # (part, its views), oldest first
        self._size = size

    def add(self, part: int, keys: tuple[ViewKey, ...]) -> None:
        for key in keys:
            self.of[key] = part
        self._rows.append((part, keys))
        while len(self._rows) > self._size:
            old, old_keys = self._rows.popleft()
            for key in old_keys:
                if self.of.get(key) == old:   # not a newer part's view of the same key
                    del self.of[key]


class StationFeed:
    """Bounded memory of recent parts plus handles to the station's own counters.

    attach(...) is called by the station once its parts exist; until then the console shows
    "starting". output: the station's output folder (the only folder the console serves files from).
    reference: the calibration distribution of the station's score and its size (``drift.Reference``; none by
    default), for one camera's drift watch (camera ""). camera_references: several cameras: camera -> its own
    (station file's order), one drift watch each; given, ``reference`` is not used. clock: monotonic seconds, the
    time of a part row (``observe_part``) and of ``rate``'s now (a verdict brings its own ``t_verdict``).
    """

    def __init__(self, settings: ConsoleSettings, output: Path, reference: Reference = Reference(),
                 camera_references: Mapping[str, Reference] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings, self.output, self.clock = settings, Path(output), clock
        # every view's verdict, a fixed window (``recent_parts`` sizes the NG lists only): the live page reads it
        # several times a second
        self.recent: deque[Verdict] = deque(maxlen=max(RECENT_VERDICTS, settings.keep_frames))
        self.frames: deque[Part] = deque(maxlen=max(settings.keep_frames, 1))
        self.ng: deque[Verdict] = deque(maxlen=settings.recent_parts)
        # view -> its verdicts in ``recent`` / ``ng``, oldest first (kept and trimmed with them, by ``observe`` only):
        # ``verdict`` looks a view up in O(1), not by scanning thousands of verdicts for each view a page shows
        self._recent_index: dict[ViewKey, list[Verdict]] = {}
        self._ng_index: dict[ViewKey, list[Verdict]] = {}
        self.latest: Part | None = None
        self.latest_views: dict[str, Part] = {}   # camera -> its latest view (several cameras)
        self.part_rows: deque[dict] = deque(maxlen=RECENT_VERDICTS)   # PartAssembler rows, oldest first
        self.ng_part_rows: deque[dict] = deque(maxlen=settings.recent_parts)   # the NG parts the gallery lists
        # view -> its part id, for the views of the recent part rows and of the NG parts listed
        self.part_of = PartIndex(RECENT_VERDICTS, settings.recent_parts)
        self.cell: CellCounters | None = None
        self.camera_bundles: dict[str, Path] = {}   # camera -> the bundle it runs (several cameras)
        self.drift = CameraDrift({"": reference} if camera_references is None else camera_references,
                                 settings.drift_window, settings.drift_min_parts, settings.drift_alarm)
        self.inspector = self.capture = self.scheduler = self.recorder = self.camera_watch = None
        self.lanes: dict[str, RejectGate] = {}   # group.by: lane: camera -> its lane's reject gate (``attach_lanes``)
        # camera reason -> why the station's fault outputs are on ('' off; ``read_fault_from``); None: not handed in
        self.fault_reason: Callable[[str], str] | None = None
        # the PLC handshake's counters and gauges (``read_handshake_from``); None: the station has no handshake
        self.handshake_stats: Callable[[], dict] | None = None
        self.bundle_path: Path | None = None   # the bundle folder in force as loaded (its root: links followed)
        # the same bundle as it was named (``use_bundle``: --bundle, ``bundle:``, the path a swap was given), absolute,
        # links kept: what a reload without a station file loads (``bundle_in_force``), so a link leads to its target
        self.bundle_named: Path | None = None
        self.started = time.time()
        self.run_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(self.started))
        self.count = 0          # verdicts observed (changes = something new to push)
        self.frame_rate, self.part_rate = CounterRate(), CounterRate()   # verdicts observed, part rows observed
        self._part_lock = threading.Lock()   # observe_part's writers: the loop, and a capture thread (a drop)
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

    def attach_lanes(self, lanes: Mapping[str, RejectGate]) -> None:
        """``group.by: lane``: camera -> its lane's reject gate (``station.cell_line.CellLine.lanes``, the station
        file's order). Their latched alarms are shown named by lane (``alarms``) and cleared by the console's
        acknowledge."""
        self.lanes = dict(lanes)

    def read_fault_from(self, fault_reason: Callable[[str], str]) -> None:
        """How to read why the station's fault outputs are on: ``fault_reason(camera reason)`` -> the reason ('' off),
        ``station.line_side.LineSide.fault_reason`` (a PLC, encoder or reject link down, a latched alarm, a lane's
        fault, a handshake error, ...): the text MQTT and systemd's STATUS show, read when the page asks
        (``fault_now``)."""
        self.fault_reason = fault_reason

    def read_handshake_from(self, stats: Callable[[], dict]) -> None:
        """How to read the PLC handshake's counters and gauges (``reject.handshake``): ``stats()`` -> the dict the live
        table, summary.json and /metrics show (``line.handshake.Handshake.stats``; a cell's
        ``station.cell_line.CellLine.handshake_stats``, which adds its trigger fanout's ``fanout_expired`` /
        ``fanout_overflow``), read when the page asks (``state``'s handshake)."""
        self.handshake_stats = stats

    def fault_now(self) -> str:
        """Why the station's fault outputs are on now ('' off; '' before ``read_fault_from``), with the camera watch's
        reason as the station's tick hands it (``CameraWatch.reason``: the camera's fault leads)."""
        if self.fault_reason is None:
            return ""
        return self.fault_reason(self.camera_watch.reason if self.camera_watch is not None else "")

    def reject_gates(self) -> dict[str, RejectGate]:
        """The reject gates whose alarms the console shows and acknowledges: "" -> the station's own (when it has one),
        then each lane's (``attach_lanes``) by its camera's name."""
        gates = {} if self.scheduler is None else {"": self.scheduler}
        gates.update(self.lanes)
        return gates

    def alarms(self) -> dict[str, str]:
        """What an acknowledgement would clear now, gate by gate, as ``reject_gates`` names them: {"" | lane: its
        ``to_acknowledge`` text (every alarm latched since the last acknowledgement, and each missed pulse of a sink
        whose link is up that they do not name)}; {} none."""
        return {name: alarm for name, gate in self.reject_gates().items() if (alarm := gate.to_acknowledge)}

    def use_bundle(self, named, folder: Path) -> None:
        """The bundle in force from now on: ``folder``, its loaded root (links followed), named by the path ``named``
        (made absolute, links kept: ``bundles/current``; None: by the folder itself)."""
        self.bundle_path = folder
        self.bundle_named = Path(folder) if named is None else Path(os.path.abspath(named))

    def bundle_in_force(self) -> Path | None:
        """The bundle in force as it was named (a link stays a link: loading it again loads its target then); None
        before one is known."""
        return self.bundle_named if self.bundle_named is not None else self.bundle_path

    def shown_bundle(self) -> str:
        """The bundle in force as the console shows it (``bundle_text``)."""
        return bundle_text(self.bundle_named, self.bundle_path)

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
        """Verdict callback: remember the part. Appends only; never blocks, never copies. A frame whose image cannot
        be drawn (``drawable_frame``: a malformed frame's None, list, 0-d or empty array, ...: NG, not inspected) is
        kept as no frame (``Part.frame`` None: nothing to draw or review)."""
        part = Part(verdict, frame if drawable_frame(getattr(frame, "image", None)) else None, anomaly_map)
        _append(self.recent, self._recent_index, verdict)
        if self.settings.keep_frames:
            self.frames.append(part)
        if verdict.ng:
            _append(self.ng, self._ng_index, verdict)
        self.latest = part
        if verdict.camera:
            self.latest_views[verdict.camera] = part
        self.drift.observe(view_key(verdict), verdict.score)
        self.frame_rate.tick(verdict.t_verdict)
        self.count += 1

    def observe_part(self, row: dict) -> None:
        """A part row of several cameras' views (``station.parts``: part, ng, views {camera: {seq, ...} |
        {missing}}, ...). Appends only, under a lock held for microseconds: called on the inspection loop's thread,
        and on a capture thread where a dropped frame completes a part (``parts.on_drop``)."""
        with self._part_lock:
            self.part_rows.append(row)
            if row.get("ng"):
                self.ng_part_rows.append(row)
            self.part_of.add(row)
            self.part_rate.tick(self.clock())

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

    def latest_part_row(self) -> dict | None:
        """The newest part row (several cameras viewing one part; None before the first and with lanes)."""
        try:
            return self.part_rows[-1]
        except IndexError:
            return None

    def latency(self) -> dict:
        """Percentiles and a histogram (ms) of capture -> verdict latency over the last ``LATENCY_WINDOW`` verdicts
        (every camera's views; ``n``: how many): the same work however large ``console.recent_parts`` is."""
        values = np.array([v.latency_ms for v in list(self.recent)[-LATENCY_WINDOW:]])
        if values.size == 0:
            return {"p50_ms": None, "p90_ms": None, "p99_ms": None, "max_ms": None, "n": 0,
                    "edges_ms": list(LATENCY_EDGES_MS), "counts": [0] * (len(LATENCY_EDGES_MS) + 1)}
        counts = np.bincount(np.searchsorted(LATENCY_EDGES_MS, values), minlength=len(LATENCY_EDGES_MS) + 1)
        p50, p90, p99 = np.percentile(values, [50, 90, 99])
        return {"p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99), "max_ms": float(values.max()),
                "n": int(values.size), "edges_ms": list(LATENCY_EDGES_MS), "counts": counts.tolist()}

    def rate_counts(self) -> str:
        """What ``rate`` counts: ``RATE_OF_PARTS`` (cameras viewing one part: the part counter, each part once however
        many views it has) or ``RATE_OF_FRAMES`` (one camera, or cameras as lanes: every inspected frame)."""
        return RATE_OF_PARTS if self.cell is not None and self.cell.parts() else RATE_OF_FRAMES

    def rate(self, now: float | None = None) -> float:
        """Parts (or frames: ``rate_counts``) per second over the last ``RATE_WINDOW_S`` seconds: the change of the
        part rows observed (each part once), or of the verdicts observed, over that window (``CounterRate``). now:
        monotonic s (default: ``clock()``)."""
        now = self.clock() if now is None else now
        meter = self.part_rate if self.rate_counts() == RATE_OF_PARTS else self.frame_rate
        return meter.per_s(now)

    def counters(self) -> dict:
        """The station's own counters, read (never kept twice). The reject gate's: ``late_verdicts`` (verdicts that
        came after their part's reject deadline: no pulse), ``gap_missed`` (parts due a reject and refused its pulse:
        too close to the previous one, ``min_gap_ms``). The recorder's: ``rows_logged`` (verdicts.jsonl),
        ``rows_failed`` (rows whose write raised: a full or unplugged disk; not in the log), ``rows_dropped`` (rows
        never queued, the writer's backlog full), ``log_rotations_put_off`` (times a log rotation was refused, each
        until it went through: a log grows past max_log_mb), ``write_errors`` (every failed write, rows and NG images),
        ``images_failed`` (NG parts whose frame or map could not be drawn or encoded: no NG image, not a disk fault;
        the part is in the log). With lanes (``attach_lanes``) the gate counters are every lane's and the
        station's together."""
        out = {"frames_in": 0, "inspected": 0, "ng": 0, "dropped": 0, "lost": 0, "malformed": 0,
               "inference_errors": 0, "region_errors": 0, "late_verdicts": 0, "gap_missed": 0, "rows_logged": 0,
               "rows_failed": 0, "rows_dropped": 0, "log_rotations_put_off": 0, "write_errors": 0, "images_failed": 0}
        if self.inspector is not None:
            s = self.inspector.summary
            out.update(inspected=s.inspected, ng=s.ng, malformed=s.malformed, inference_errors=s.inference_errors,
                       region_errors=s.region_errors)
        if self.capture is not None:
            c = self.capture.stats()
            out.update(frames_in=c.frames_in, dropped=c.dropped_queue_full, lost=c.frames_lost_estimate)
        for gate in self.reject_gates().values():   # the station's gate and each lane's
            counts = gate.stats()
            out["late_verdicts"] += counts.get("late_verdicts", 0)
            out["gap_missed"] += counts.get("gap_missed", 0)
        if self.recorder is not None:
            r = self.recorder.stats()
            out.update(rows_logged=r.get("logged", 0), rows_failed=r.get("rows_failed", 0),
                       rows_dropped=r.get("dropped", 0), log_rotations_put_off=r.get("log_rotations_put_off", 0),
                       write_errors=r.get("write_errors", 0),
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
        reply), and the ``alarm`` ("" none): what an acknowledgement clears (``alarms``); with lanes, every lane's
        gate and the station's together, each lane's alarm named (``alarm_text``). fault: why the fault outputs are
        on ("" off): a fault that stopped the inspection (``RunSummary.fault``), else the station's fault reason now
        (``fault_now``), as systemd's STATUS leads with them. handshake: None without the PLC handshake, else its
        counters and gauges as ``read_handshake_from`` reads them (``connected`` bool, ``error`` the code on the PLC's
        Error, ``open_parts``, every ``HANDSHAKE_COUNTERS`` key): the live page's PLC pill and handshake card."""
        camera = self.capture.stats() if self.capture is not None else None
        insp = self.inspector
        return {
            "camera": {"state": camera.state.value if camera else "starting",
                       "problem": self.camera_watch.reason if self.camera_watch is not None else ""},
            "plc": self._plc_state(),
            "handshake": None if self.handshake_stats is None else self.handshake_stats(),
            "fault": (insp.summary.fault if insp is not None else "") or self.fault_now(),
            "model": None if insp is None else {"id": insp.model, "backend": insp.summary.backend,
                                                 "threshold": insp.threshold,
                                                 "bundle": self.shown_bundle()},
        }

    def _plc_state(self) -> dict | None:
        """``state``'s plc: the reject gates' (``reject_gates``) outputs and counters summed, their alarms in one text;
        None without a gate."""
        gates = self.reject_gates()
        if not gates:
            return None
        counts = [gate.stats() for gate in gates.values()]
        total = {key: sum(c.get(key, 0) for c in counts) for key in PLC_COUNTERS}
        return {"sinks": sum(len(g.settings.sinks) for g in gates.values()),
                "fault_sinks": sum(len(g.settings.fault_sinks) for g in gates.values()), **total,
                "alarm": alarm_text(self.alarms())}


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


def bundle_text(named: Path | None, folder: Path | None) -> str:
    """A bundle as the console shows it: the path it was named by with the folder it leads to where they differ (a
    link: ``/srv/bundles/current -> /srv/bundles/v2``), else the folder; "" for none."""
    if folder is None:
        return ""
    if named is None or Path(named) == Path(folder):
        return str(folder)
    return f"{named} -> {folder}"


def finite(value: float) -> float | None:
    """JSON has no NaN: None for a score that could not be computed."""
    return value if isinstance(value, (int, float)) and math.isfinite(value) else None
