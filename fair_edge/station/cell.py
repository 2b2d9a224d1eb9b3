"""A station of several cameras (``cameras:`` in the station file): one process, one model per distinct
bundle, the frames of all cameras batched into shared inference calls, one verdict per part.

    cameras ──capture threads──> CaptureMux ──> Inspector (a batch = frames of any camera, one inference
       │   (on_capture)                          call per bundle; each view decided with its camera's
       ▼                                         threshold, ROI and rules)
    PartAssembler <───────── view verdicts ──────────┘
       │ part opened (first view's capture) ──> RejectScheduler.note_capture(part id[, its belt count])
       └ part decided (all views, or timed out) ──> RejectScheduler.submit(part verdict) ──> one pulse
                                                    verdicts.jsonl: a row per view and one per part

``group.by: lane`` skips the assembler: each camera's frames are its own parts, decided by its own
``RejectScheduler`` on the camera's ``reject`` URLs. ``run`` picks ``run_station`` or ``run_cell`` from the
station file. Exit codes and fail-safe rules are ``run_station``'s; a camera gone for good holds the fault
output (naming the camera) while the other cameras go on inspecting, and the run ends with exit code 3.

With the PLC handshake (``group.match: handshake``) a camera that takes no frame for a part (``TriggerFanout.failed``:
its read failed, its frame came after the next trigger, its trigger queue was full) has its view filed missing
(``CellLine.view_failed``): the part is answered once its other views are in, not at its ``part_timeout_s``.

The console sees every view (a verdict callback), every part row (``CellLine.on_part`` hands it to
``StationConsole.observe_part``), each camera's counters (``CellCounters``, the same numbers as the summary's
``cameras``) and, with lanes, each lane's reject gate (its alarm shown and acknowledged there); its swaps and SIGHUP
load bundles per camera through ``cell_console.CellLoader``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import threading
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

from fair_edge.cameras.mux import CaptureMux
from fair_edge.cameras.triggered import TriggerFanout
from fair_edge.errors import ConfigError
from fair_edge.records import Frame, Verdict, new_run_id
from fair_edge.runtime.backends import close_scorer
from fair_edge.runtime.hotswap import model_id
from fair_edge.station.bundles import (check_applied_threshold, load_roi, open_regions, open_scorer, read_bundle,
                                      resolve_threshold)
from fair_edge.station.cell_console import open_cell_console
from fair_edge.station.config import StationConfig, view_config
from fair_edge.station.faults import FaultBoard
from fair_edge.station.inspector import Inspector, RunSummary, ViewDecider
from fair_edge.station.notify import ServiceNotifier, status_line
from fair_edge.station.parts import CloseByCount, PartAssembler
from fair_edge.station.camera import CameraWatch, check_loop, is_unpaced_replay, open_capture
from fair_edge.station.line_side import (HANDSHAKE_GAUGES, LineSide, finish_gate, finish_line, open_line_side,
                                         publish_summary, stop_wait_s)
from fair_edge.station.locks import probe_gpio_lines, station_lock
from fair_edge.station.run import (check_reject_timing, raise_open_files_limit, run_station, station_switch_interval,
                                   station_tick, warn_fused_score, write_summary)

if TYPE_CHECKING:
    from fair_edge.line.handshake import Ticket
    from fair_edge.line.metrics import Metrics

log = logging.getLogger(__name__)

NO_GATE_TIMEOUT_S = 1.0   # group.part_timeout_ms unset and no reject timing: a part waits this long for its views


def run(cfg: StationConfig, stop: threading.Event, **kwargs) -> RunSummary:
    """Run the station the file describes: ``run_cell`` for a ``cameras:`` list, else ``run_station`` (with the
    process's open-files limit raised first: ``raise_open_files_limit``)."""
    raise_open_files_limit()
    return run_cell(cfg, stop, **kwargs) if cfg.cameras else run_station(cfg, stop, **kwargs)


def part_timeout_s(cfg: StationConfig) -> float:
    """How long a part waits for its views, s: ``group.part_timeout_ms``, else until its due time at the gate (a view
    that comes before the gate's cut-off completes the part in time; one still missing leaves the gate without a
    verdict, which it decides fail-safe: closing the part earlier would only take latency from every view); with
    the PLC handshake, half its result timeout (at most ``NO_GATE_TIMEOUT_S``); ``math.inf`` where the part closes
    by belt count instead (``part_close_by_count``: a slow or stopped belt must not time a good part out; while the
    encoder has no position, ``NO_GATE_TIMEOUT_S`` after it opened)."""
    if cfg.group.part_timeout_ms is not None:
        timeout, found = cfg.group.part_timeout_ms / 1000.0, cfg.group.part_timeout_ms
        if cfg.reject.sinks and cfg.reject.encoder_distance is None and timeout > cfg.reject.delay_ms / 1000.0:
            raise ConfigError(f"group.part_timeout_ms: expected at most reject.delay_ms ({cfg.reject.delay_ms:g}), "
                              f"found {found:g}: the part would reach the gate before its views are all in; lower "
                              "part_timeout_ms or leave it unset (= the due time).")
        if cfg.reject.handshake.enabled and timeout >= cfg.reject.handshake.result_timeout_ms / 1000.0:
            raise ConfigError(f"group.part_timeout_ms: expected less than reject.handshake.result_timeout_ms "
                              f"({cfg.reject.handshake.result_timeout_ms:g}), found {found:g}: the PLC would time the "
                              "part out first; lower part_timeout_ms or leave it unset.")
        return timeout
    if part_close_by_count(cfg) is not None:
        return math.inf
    if cfg.reject.sinks and cfg.reject.encoder_distance is None:
        return cfg.reject.delay_ms / 1000.0
    if cfg.reject.handshake.enabled:   # answered well inside the PLC's result timeout
        return min(NO_GATE_TIMEOUT_S, cfg.reject.handshake.result_timeout_ms / 2000.0)
    return NO_GATE_TIMEOUT_S


def part_close_by_count(cfg: StationConfig) -> CloseByCount | None:
    """``match: encoder`` with ``group.part_timeout_ms`` unset: where a part closes on the belt, counted from its key
    (its count at the camera at offset 0). With ``reject.encoder_distance``: at the gate's count, the count at which
    the gate decides the part (a view in before it completes the part in time; one still missing leaves the gate
    without a verdict, which it decides fail-safe, so closing earlier gains nothing and closing later helps no view).
    Without it and without a timed gate: ``NO_GATE_TIMEOUT_S`` after the belt passed the furthest camera's window
    (its view's inspection). Either way, while the encoder has no belt position (its link is down: the count does not
    move), ``NO_GATE_TIMEOUT_S`` after the part opened, as a part without a gate count (the gate decides a part
    captured then ``position_lost``; kept open, the parts would pile up until the link is back). None otherwise (the
    part closes by time: ``part_timeout_s``)."""
    if cfg.group.match != "encoder" or cfg.group.part_timeout_ms is not None:
        return None
    if cfg.reject.encoder_distance is not None:
        return CloseByCount(cfg.reject.encoder_distance, 0.0, NO_GATE_TIMEOUT_S)
    if cfg.reject.sinks:   # a timed gate (reject.delay_ms): the part's due time
        return None
    furthest = max((v.offset_counts for v in cfg.cameras), default=0)
    return CloseByCount(furthest + cfg.group.window_counts, NO_GATE_TIMEOUT_S, NO_GATE_TIMEOUT_S)


def warn_window_counts(cfg: StationConfig, encoder: object) -> str:
    """``match: encoder``: log at start, as a warning, that ``group.window_counts`` is below the counts the belt travels
    in one of the encoder's polls at the top speed its URL states (``max_counts_per_s`` x ``poll_ms``: how far apart
    the views of one part can be keyed when the counter changes only once a poll); returns it ("" when it is not, or
    when the URL states no top speed: the belt's speed is not known at start). Each view is keyed by the count at
    its capture time, interpolated between the encoder's readings (``PolledEncoder.mark_at``)."""
    if cfg.group.by != "part" or cfg.group.match != "encoder":
        return ""
    speed, poll_s = float(getattr(encoder, "stated_speed", 0.0)), float(getattr(encoder, "poll_s", 0.0))
    travel = speed * poll_s
    if travel <= cfg.group.window_counts:
        return ""
    note = (f"group.window_counts: {cfg.group.window_counts} counts is below the {travel:.0f} counts the belt travels "
            f"in one encoder poll at its stated top speed (reject.encoder max_counts_per_s={speed:g} x "
            f"poll_ms={poll_s * 1000:g}): the views of one part may be keyed further apart than that and open parts "
            "of their own, rejected fail-safe with their views missing; set window_counts to at least "
            f"{math.ceil(travel)} (and below half the part pitch in counts), or poll the counter faster")
    log.warning("%s", note)
    return note


@dataclasses.dataclass(frozen=True)
class CameraModel:
    """One camera's model as read before any backend opens (``read_camera_models``). cfg: the station as the camera
    sees it (``view_config``); key: its bundle folder, resolved (one backend per distinct one); bundle: read and
    verified (``Bundle`` or ``FusedBundle``); roi: its mask weights, (H, W) float32 (``load_roi``), or None."""

    cfg: StationConfig
    key: Path
    bundle: object
    roi: object


def read_camera_models(cfg: StationConfig) -> dict[str, CameraModel]:
    """Camera name -> its ``CameraModel``, in the station file's order: each distinct bundle read once, the threshold
    applied to each camera checked against its bundle (``bundles.check_applied_threshold``: one applied from the
    console on another model is refused, naming the camera) and its ROI read (``load_roi``). What ``run_station``
    refuses before its model opens, refused here before any camera's model opens (ConfigError naming the camera or
    the field): before, a later camera's ROI or missing bundle was refused after the earlier cameras' models had
    loaded, and each camera's ROI after its own."""
    read: dict[Path, object] = {}
    cameras: dict[str, CameraModel] = {}
    for view in cfg.cameras:
        vcfg = view_config(cfg, view)
        if vcfg.bundle is None:
            raise ConfigError(f"cameras ({view.name}): no bundle; set bundle: for the station or the camera.")
        key = Path(vcfg.bundle).resolve()
        if key not in read:
            read[key] = read_bundle(vcfg.bundle)
        check_applied_threshold(vcfg, read[key], view.name)
        cameras[view.name] = CameraModel(vcfg, key, read[key], load_roi(vcfg.roi, read[key]))
    return cameras


class CellModels:
    """One loaded model per distinct bundle, and each camera's ``ViewDecider`` over it. Every camera's bundle, applied
    threshold and ROI are read and checked before the first model opens (``read_camera_models``)."""

    def __init__(self, cfg: StationConfig, scorer=None) -> None:
        self.views: dict[str, ViewDecider] = {}
        self.bundles: dict[Path, tuple] = {}   # bundle path -> (bundle, scorer)
        self.calibrations: dict[str, object] = {}   # camera -> the calibration of its decision score (or None)
        cameras = read_camera_models(cfg)   # a refusal there has opened no model
        try:
            for name, camera in cameras.items():
                if camera.key not in self.bundles:
                    self.bundles[camera.key] = (camera.bundle, scorer or open_scorer(camera.bundle, cfg.backend))
                bundle, shared = self.bundles[camera.key]
                decided = resolve_threshold(camera.cfg, bundle, shared.graph_threshold, camera.roi)   # ROI: its own
                self.calibrations[name] = decided.calibration
                self.views[name] = ViewDecider(shared, decided.value, camera.roi, model_id(bundle),
                                               open_regions(camera.cfg, bundle, shared.graph_threshold), decided.grid,
                                               bundle.map_area)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Retire each loaded scorer once (``runtime.backends.close_scorer``: its backend and its pre-processing)."""
        closed = set()
        for _, scorer in self.bundles.values():
            if id(scorer) not in closed:
                closed.add(id(scorer))
                close_scorer(scorer)

    def close_swapped(self) -> None:
        """Retire the scorers the cameras took by hot swap (the loaded ones close with ``close``)."""
        loaded = {id(s) for _, s in self.bundles.values()}
        for decider in self.views.values():
            if id(decider.scorer) not in loaded:
                loaded.add(id(decider.scorer))
                close_scorer(decider.scorer)


@dataclasses.dataclass
class CellLine:
    """The line side of a cell: the station's ``LineSide`` (recorder, MQTT, metrics, fault output; its
    scheduler gates parts), and with ``by: lane`` one scheduler per camera."""

    line: LineSide
    assembler: PartAssembler | None = None
    lanes: dict = dataclasses.field(default_factory=dict)   # camera -> its RejectScheduler
    per_camera: dict = dataclasses.field(default_factory=dict)
    triggers: TriggerFanout | None = None                     # group.match: handshake
    part_listeners: list = dataclasses.field(default_factory=list)   # also told of every part (the console)

    def hooks(self, name: str) -> dict[str, Callable[[Frame], None]]:
        """One camera's capture hooks: its part (or lane) is noted at capture; drops are logged, named, with their
        part. A frame taken for a part already decided (NG by its other views) lets go of its PLC ticket: the
        part's answer went out without it."""
        def on_capture(frame: Frame) -> None:
            if self.assembler is not None:
                part = self.assembler.on_capture(name, frame)
                if self.triggers is not None and self.assembler.decided(part):
                    self.triggers.ticket(name, frame.seq, forget=True)
            elif name in self.lanes:
                self.lanes[name].note_capture(frame.seq, frame.t_capture)

        def on_drop(frame: Frame) -> None:
            self.count(name, "dropped")
            part = None if self.assembler is None else self.assembler.part_of(name, frame.seq)
            self.line.on_drop(dataclasses.replace(frame, camera=name), None if part is None else {"part": part})
            if self.assembler is not None:
                self.assembler.on_drop(name, frame)

        return {"on_capture": on_capture, "on_drop": on_drop}

    def view_failed(self, camera: str, ticket: Ticket) -> None:
        """The trigger fanout's ``on_failed``: ``camera`` took no frame for ``ticket``'s part (its read failed, its
        frame came after the next trigger, its trigger queue was full). The assembler files that view missing
        (``PartAssembler.view_failed``), so the part is answered as soon as its other views are in, not at its
        ``part_timeout_s``."""
        if self.assembler is not None:
            self.assembler.view_failed(camera, float(ticket.part_id))

    def count(self, camera: str, key: str, n: int = 1) -> None:
        self.per_camera.setdefault(camera, Counter())[key] += n

    def record_view(self, frame: Frame, verdict: Verdict, anomaly_map=None) -> None:
        """Verdict callback: a lane's gate gets it first; the log a row naming camera and part, MQTT the same."""
        from fair_edge.line.scheduler import LATE

        self.count(verdict.camera, "inspected")
        self.count(verdict.camera, "ng", int(verdict.ng))
        extra: dict = {}
        if self.assembler is not None:
            extra["part"] = self.assembler.part_of(verdict.camera, verdict.seq)
        lane = self.lanes.get(verdict.camera)
        if lane is not None and lane.submit(verdict) == LATE:
            extra.update(verdict_late=True, gate=lane.decision(verdict.seq) or "went_by_undecided")
        self.line.recorder.record(frame, verdict, anomaly_map, extra)
        if self.line.mqtt is not None:
            self.line.mqtt.publish_row({**self.line.recorder.log_row(verdict), **extra})

    def on_part(self, verdict: Verdict | None, row: dict) -> None:
        """The assembler's listener: the gate gets the part's verdict, the log and MQTT the part's row. A part not
        inspected (views missing: no verdict) is handed to the gate as uninspected with its row's ``reason``
        (``missing view: b (no frame)``; ``RejectScheduler.submit_uninspected``), so its gate row, alarm and
        journal line name the camera; the gate decides it fail-safe at its due time as before. One the gate
        decided already (closed at its due time) keeps the gate's "no verdict by its due time"."""
        from fair_edge.line.scheduler import LATE

        scheduler = self.line.scheduler
        if verdict is not None and scheduler is not None and scheduler.submit(verdict) == LATE:
            row = dict(row, verdict_late=True, gate=scheduler.decision(verdict.seq) or "went_by_undecided")
        elif verdict is None and scheduler is not None:
            scheduler.submit_uninspected(row["part"], row["reason"])   # (a part not inspected has a view missing)
        if self.triggers is not None:   # the PLC's result for its part id: this part's verdict, once
            tickets = [self.triggers.ticket(c, v["seq"], forget=True) for c, v in row["views"].items() if "seq" in v]
            ticket = next((t for t in tickets if t is not None), None)
            if ticket is not None:
                self.line.handshake.answer(ticket, verdict)
                row = dict(row, plc_part_id=ticket.part_id)
        self.line.recorder.record_row(row)
        if self.line.mqtt is not None:
            self.line.mqtt.publish_part(self.line.recorder.log_row(row))
        for listener in self.part_listeners:
            try:
                listener(verdict, row)
            except Exception:   # a viewer must not stop the parts
                log.exception("part %s: listener %r failed", row.get("part"), listener)

    def reject_stats(self) -> dict:
        """The line's reject counters (``LineSide.reject_stats``); with ``match: handshake``, the tickets the trigger
        fanout dropped (``handshake.fanout``: ``expired``, ``overflow``). With lanes: each lane's gate counters,
        its ``fault_output`` ('' off) and its sinks under ``lanes``; the top level's counters are the totals over
        the lanes and the station's own gate (``lane_totals``: what the run summary and live table show), its
        ``sinks`` the lanes' (``lane a: SINK``) and its ``fault_output`` names each lane whose fault is on
        (``lanes_fault_output``). Before, a lane station's top level read 0 rejects and no latched lane alarm."""
        out = self.line.reject_stats()
        if self.triggers is not None and "handshake" in out:
            out["handshake"] = dict(out["handshake"], fanout=self.triggers.stats())
        if self.lanes:
            counters = {name: lane.stats() for name, lane in self.lanes.items()}
            sinks = {name: lane.sink_stats() for name, lane in self.lanes.items()}
            out.update(lane_totals(out, counters.values()))
            out["lanes"] = {name: dict(counters[name], fault_output=lane.fault_reason or "", sinks=sinks[name])
                            for name, lane in self.lanes.items()}
            out["sinks"] = {f"{name}: {sink}": st for name, by_sink in sinks.items() for sink, st in by_sink.items()}
            out["fault_output"] = lanes_fault_output(out.get("fault_output", ""), out["lanes"])
        return out

    def handshake_stats(self) -> dict[str, int | bool]:
        """The handshake's counters and gauges (``Handshake.stats``) and its trigger fanout's dropped tickets as
        ``fanout_expired`` / ``fanout_overflow`` (``TriggerFanout.stats``), flat for /metrics (``watch_cell``); {}
        without a handshake."""
        if self.line.handshake is None:
            return {}
        out = dict(self.line.handshake.stats())
        if self.triggers is not None:
            out.update({f"fanout_{key}": n for key, n in self.triggers.stats().items()})
        return out

    def part_stats(self) -> dict[str, int]:
        """The parts' counters (``PartAssembler.stats``: parts, ng, ok, not_inspected, late_views[, resyncs]); {}
        for lanes (a lane's parts are its frames)."""
        return {} if self.assembler is None else dict(self.assembler.stats)

    def lane_stats(self) -> dict[str, dict[str, int]]:
        """Camera -> its lane gate's counters (``RejectScheduler.stats``, ``pending`` among them)."""
        return {name: lane.stats() for name, lane in self.lanes.items()}

    def fault_output_stats(self) -> dict[str, int]:
        """A lane station's own gate holds only the fault output (``reject.fault_sinks``) and gates no part: the
        counters its fault sinks can move (``sink_*``: errors, link downs, ...)."""
        return {key: n for key, n in self.line.scheduler.stats().items() if key.startswith("sink_")}


def lane_totals(station: dict, lanes: Iterable[dict[str, int]]) -> dict[str, int]:
    """Each gate counter (``RejectScheduler.stats``: ``rejected_ng``, ``passed_uninspected``, ``pending``, ...) summed
    over the lanes' gates (``lanes``: each one's ``stats()``) and the station's own (``station``: its top-level
    counters, absent without ``reject.fault_sinks``; it gates no part, its fault sinks' ``sink_*`` reports count)."""
    totals: Counter[str] = Counter()
    for counters in lanes:
        totals.update(counters)
    return {key: station.get(key, 0) + n for key, n in totals.items()}


def lane_reason(name: str, reason: str) -> str:
    """A lane's fault as the station names it (fault output, STATUS, MQTT, console, summary): ``lane a: REASON``."""
    return f"lane {name}: {reason}"


def lanes_fault_output(station: str, lanes: dict[str, dict]) -> str:
    """The summary's ``fault_output`` for a lane station: the station gate's reason (``station``; '' off or none),
    then each lane whose fault is on (``lanes``: camera -> its summary entry, ``fault_output``), named
    (``lane_reason``) unless the station's reason names it already (``LaneWatch`` put it there at the last tick)."""
    reasons = [station] if station else []
    for name, counters in lanes.items():
        named = lane_reason(name, counters["fault_output"])
        if counters["fault_output"] and named not in station:
            reasons.append(named)
    return "; ".join(reasons)


@dataclasses.dataclass
class LaneWatch:
    """One ``by: lane`` camera's reject gate, watched like a camera from the loop's tick: while the lane's own
    fault is on (its reject output down, missed or stuck, a latched alarm, the encoder link down), the station's
    fault output (``reject.fault_sinks``), systemd's STATUS, MQTT and the console name it ("lane top: ...").
    A lane holds no fault output of its own, so before this its faults were only in the log and the summary."""

    name: str
    lane: object                     # the lane's RejectScheduler (``fault_reason``)
    channel: object | None           # a FaultBoard channel (None without a gate to hold)
    reason: str = ""

    def __call__(self, _inspector: Inspector | None = None) -> str:
        own = self.lane.fault_reason
        reason = lane_reason(self.name, own) if own else ""
        if reason != self.reason:
            if reason:
                log.error("reject lane %s faulted: %s", self.name, own)
            elif self.reason:
                log.warning("reject lane %s: fault cleared", self.name)
            if self.channel is not None:
                self.channel.fault(bool(reason), reason)
            self.reason = reason
        return reason


@dataclasses.dataclass(frozen=True)
class CellWatch:
    """Every camera's ``CameraWatch`` and every lane's ``LaneWatch``: called from the loop's tick (each fault named
    on its own channel); ``reason``, what the console shows, reads the last reasons without changing anything."""

    watches: list[CameraWatch | LaneWatch]

    def __call__(self, _inspector: Inspector | None = None) -> str:
        return "; ".join(r for r in (w() for w in self.watches) if r)

    @property
    def reason(self) -> str:
        return "; ".join(w.reason for w in self.watches if w.reason)


@dataclasses.dataclass(frozen=True)
class CellCounters:
    """Each camera's counters and the parts', read on demand: the summary's ``cameras`` and ``parts`` at every tick
    while the cell runs (``counting_tick``: the live table) and at its end, the console's per-camera counters while
    it runs (``console.feed.CellCounters``)."""

    cell: CellLine
    mux: CaptureMux

    def cameras(self) -> dict[str, dict]:
        out = {}
        for name, stats in self.mux.camera_stats().items():
            counts = self.cell.per_camera.get(name, Counter())
            out[name] = {"frames_in": stats.frames_in, "inspected": counts["inspected"], "ng": counts["ng"],
                         "dropped": stats.dropped_queue_full, "lost": stats.frames_lost_estimate,
                         "unreadable": stats.unreadable,
                         "state": stats.state.value, "end_reason": stats.end_reason}
        return out

    def parts(self) -> dict:
        return self.cell.part_stats()

    def into(self, summary: RunSummary) -> None:
        """Bring ``summary``'s ``cameras`` and ``parts`` up to these counters: at every tick while the cell runs
        (``counting_tick``: ``fair-edge run``'s live table reads them there) and at the end (summary.json)."""
        summary.cameras.update(self.cameras())
        summary.parts = self.parts()


def counting_tick(counters: CellCounters, on_tick: Callable[[Inspector], None] | None) -> Callable[[Inspector], None]:
    """The caller's ``on_tick`` (``fair-edge run``'s live table; None: none) after ``counters.into`` the inspector's
    summary: the live table shows the part and camera counters summary.json ends with, as they move."""
    def tick(insp: Inspector) -> None:
        counters.into(insp.summary)
        if on_tick is not None:
            on_tick(insp)

    return tick


def open_cell_line(cfg: StationConfig, stack: contextlib.ExitStack, run_id: str) -> CellLine:
    """The station's line side, and the part assembler (``by: part``) or the lanes' schedulers (``by: lane``)."""
    from fair_edge.line import encoder_source
    from fair_edge.line.scheduler import RejectScheduler

    line = open_line_side(cfg, stack, run_id)
    warn_window_counts(cfg, line.encoder)
    line.callbacks.remove(line.record_verdict)   # view verdicts are not parts: the cell routes them
    cell = CellLine(line)
    line.callbacks.insert(0, cell.record_view)
    names = [v.name for v in cfg.cameras]
    if line.handshake is not None:   # one trigger, a frame from every camera, one result per part
        line.callbacks.remove(line.handshake.on_verdict)
        cell.triggers = TriggerFanout(line.handshake, names, on_failed=cell.view_failed)
    if cfg.group.by == "part":
        scheduler, triggers = line.scheduler, cell.triggers
        cell.assembler = PartAssembler(
            names, cfg.group, part_timeout_s(cfg), on_part=cell.on_part,
            on_open=None if scheduler is None else (lambda part, t, count: scheduler.note_capture(part, t, count)),
            count=None if line.encoder is None else line.encoder.count,
            count_at=None if line.encoder is None else (lambda t: encoder_source.mark_at(line.encoder, t)[0]),
            position=None if line.encoder is None else (lambda: encoder_source.mark(line.encoder)[0]),
            offsets={v.name: v.offset_counts for v in cfg.cameras}, close_by_count=part_close_by_count(cfg),
            plc_part=None if triggers is None else (lambda camera, frame: triggers.part_id(camera, frame.seq)),
            due_s=part_due_s(cfg, scheduler is not None, line.encoder is not None))
        line.callbacks.append(cell.assembler.on_verdict)
        if line.metrics is not None:
            watch_cell(line.metrics, cell)
        return cell
    for view in cfg.cameras:
        if view.reject:
            settings = dataclasses.replace(cfg.reject, sinks=view.reject, fault_sinks=())
            cell.lanes[view.name] = stack.enter_context(RejectScheduler(
                settings, encoder=line.encoder,
                on_part=lambda row, name=view.name: line.recorder.record_gate(dict(row, camera=name))))
    if line.metrics is not None:
        watch_cell(line.metrics, cell)
    return cell


def part_due_s(cfg: StationConfig, gated: bool, by_count: bool) -> float:
    """How long after a part's first view's capture its reject gate can still reject it (``PartAssembler``'s
    ``due_s``, s): ``reject.delay_ms + late_ms`` where the gate (``gated``: a scheduler is open) drives reject outputs
    by time; inf where there is no gate, it goes by belt count (``by_count``: an encoder), or it drives only
    ``reject.fault_sinks`` (a fault lamp rejects no part, and its ``delay_ms`` is not checked: left at 0, a view
    handed over 10 ms after its grab would open no part)."""
    if not gated or by_count or not cfg.reject.sinks:
        return math.inf
    return (cfg.reject.delay_ms + cfg.reject.late_ms) / 1000.0


def watch_cell(metrics: Metrics, cell: CellLine) -> None:
    """A cell's own counters on /metrics, read at scrape time (``fair_edge_frames_total`` / ``_ng_total`` count its
    views). By part: the parts as ``summary.json``'s ``parts`` counts them, ``fair_edge_parts_total{event="parts"}``
    (``"ng"``, ``"ok"``, ``"not_inspected"``, ``"late_views"``, ``"resyncs"``); with the PLC handshake its counters,
    ``fair_edge_handshake_total{event="results"}`` (every ``HANDSHAKE_COUNTERS`` key, and the fanout's
    ``"fanout_expired"``, ``"fanout_overflow"``: ``CellLine.handshake_stats``), and its gauges
    ``fair_edge_handshake_connected`` (0/1), ``_error`` (the code on the PLC's Error), ``_open_parts``. By lane: each
    lane's gate, ``fair_edge_reject_total{lane, event}`` and ``fair_edge_reject_pending{lane}``; the station's own
    gate, which then holds only the fault output (``open_line_side`` watches no ``reject`` for it), as
    ``fair_edge_fault_output_total{event}`` (its fault sinks' counters) where ``reject.fault_sinks`` open one."""
    if cell.assembler is not None:
        metrics.watch("parts", cell.part_stats, gauges=())
        if cell.line.handshake is not None:   # open_line_side left it to the cell: its fanout's counts join it
            metrics.watch("handshake", cell.handshake_stats, gauges=HANDSHAKE_GAUGES)
        return
    metrics.watch_counters_by("reject", "lane", cell.lane_stats)
    if cell.line.scheduler is not None:
        metrics.watch("fault_output", cell.fault_output_stats, gauges=())


def check_cameras(cfg: StationConfig, sources: dict | None = None) -> None:
    """What a cell refuses before anything loads or opens, as ``run_station`` refuses it for its one camera: each
    camera's ``--loop`` with a live source (``check_loop``, the same message; not for a camera handed a source),
    its reject timing (``check_reject_timing``: the station's gate, or with ``by: lane`` the camera's own; a replay
    without fps is timed by the PLC's triggers with the handshake), and, with ``by: part``, ``group.part_timeout_ms``
    (``part_timeout_s``). ConfigError naming the setting and the fix. sources: as ``open_cameras``'s."""
    sources = sources or {}
    for view in cfg.cameras:
        vcfg = view_config(cfg, view)
        if view.name not in sources:
            check_loop(vcfg)
        gate = dataclasses.replace(vcfg, reject=dataclasses.replace(cfg.reject, sinks=cfg.reject.sinks or view.reject))
        check_reject_timing(gate, timed_source=view.name in sources or cfg.reject.handshake.enabled
                            or not is_unpaced_replay(vcfg))
    if cfg.group.by == "part":
        part_timeout_s(cfg)


def open_cameras(cfg: StationConfig, cell: CellLine, sources: dict | None = None) -> CaptureMux:
    """Every camera's capture thread in one mux (not started); ``run_cell`` has checked their settings
    (``check_cameras``). sources: camera name -> a frame source to use instead of its ``source`` (tests)."""
    mux = CaptureMux()
    captures = {}
    sources = sources or {}
    for view in cfg.cameras:
        vcfg = view_config(cfg, view)
        triggered = cell.triggers is not None
        captures[view.name] = open_capture(vcfg, sources.get(view.name),
                                           cell.triggers.port(view.name) if triggered else None,
                                           on_queued=mux.wake, **cell.hooks(view.name))
    mux.set_captures(captures)
    if cell.assembler is not None and cfg.group.match == "sequence":   # an unpaced replay's time tells no trigger
        cell.assembler.mark_untimed({name for name, c in captures.items() if getattr(c.source, "on_demand", False)})
    return mux


def run_cell(cfg: StationConfig, stop: threading.Event, *, max_frames: int | None = None,
             duration_s: float | None = None, on_start: Callable[[str], None] | None = None,
             on_tick: Callable[[Inspector], None] | None = None, scorer=None, sources: dict | None = None,
             on_console=None, export_reviewed=None) -> RunSummary:
    """Run a station of several cameras until stopped (see the module doc); returns the summary (also in
    OUTPUT/summary.json) with each camera's counters and the parts'. scorer: one ``FrameScorer`` for every
    bundle; sources: camera name -> frame source instead of its ``source`` (both tests). The other
    arguments are ``run_station``'s."""
    if not cfg.cameras:
        raise ConfigError("run_cell: the station file has no cameras: list; use run_station for one camera.")
    check_cameras(cfg, sources)   # before the models load, as run_station's refusals: not minutes later
    # the lock before the models load and anything opens: a second station here is refused
    with station_lock(cfg), station_switch_interval():
        probe_gpio_lines(cfg)   # every camera's lane outputs too: a busy line refuses the start before the models load
        return _run_cell(cfg, stop, max_frames, duration_s, on_start, on_tick, scorer, sources, on_console,
                         export_reviewed)


def _run_cell(cfg: StationConfig, stop: threading.Event, max_frames: int | None, duration_s: float | None,
              on_start, on_tick, scorer, sources: dict | None, on_console, export_reviewed) -> RunSummary:
    """``run_cell``'s body, under the station's run lock."""
    models = CellModels(cfg, scorer)
    run_id = new_run_id()
    first = models.views[cfg.cameras[0].name]
    if on_start is not None:
        on_start(f"run {run_id}; {len(cfg.cameras)} cameras ({cfg.group.by}s); {len(models.bundles)} model(s); "
                 f"backend: {first.scorer.reason}")
    with contextlib.ExitStack() as stack:
        stack.callback(models.close)
        stack.callback(models.close_swapped)
        notifier = stack.enter_context(ServiceNotifier.from_env())
        warn_fused_score(cfg, any(view.fused for view in models.views.values()))
        cell = open_cell_line(cfg, stack, run_id)
        line = cell.line
        mux = stack.enter_context(open_cameras(cfg, cell, sources))
        gates = (line.scheduler, line.handshake, *cell.lanes.values())
        faults = FaultBoard(line) if any(g is not None for g in gates) else None
        watches = [CameraWatch(capture, faults.channel(f"camera {name}") if faults else None, name)
                   for name, capture in mux.captures.items()]
        watch = CellWatch([*watches, *(LaneWatch(name, lane, faults.channel(f"lane {name}") if faults else None)
                                       for name, lane in cell.lanes.items())])

        console = open_cell_console(cfg, models, faults, stack, line, export_reviewed)
        if on_start is not None and console.url:
            on_start(f"console: {console.url}")
        if on_start is not None and line.metrics is not None:   # port 0: the one found is named nowhere else
            on_start(f"metrics: {line.metrics.url}")
        inspector = Inspector(mux, first.scorer, first.threshold, settings=cfg.batching, on_verdict=line.callbacks,
                              views=models.views)
        inspector.decider = first   # the summary's backend and the console's top-line model: the first camera's
        inspector.summary.run_id = run_id
        console.attach(inspector, mux, line.scheduler, line.recorder, watch)
        console.feed.attach_lanes(cell.lanes)   # by: lane: each lane's alarm shown, named, and acknowledged there
        console.feed.read_fault_from(line.fault_reason)   # the fault pill: the reason MQTT and STATUS show
        counters = CellCounters(cell, mux)
        console.attach_cell(counters,
                            {v.name: Path(view_config(cfg, v).bundle) for v in cfg.cameras})
        cell.part_listeners.append(console.observe_part)
        if on_console is not None:
            on_console(console)

        tick = station_tick(line, watch, mux, notifier, console, cell.reject_stats, counting_tick(counters, on_tick))

        def iteration() -> None:
            notifier.alive()
            if cell.assembler is not None:
                cell.assembler.sweep()

        if line.handshake is not None:
            line.handshake.begin()   # ready rises: the PLC may trigger
        summary = inspector.run(stop, max_frames=max_frames, duration_s=duration_s, on_tick=tick,
                                on_iteration=iteration, on_stop=line.stopping)
        notifier.stopping(status_line(summary, "stopping", recorder=line.recorder.stats()))
        if cell.assembler is not None:
            cell.assembler.close_all()
        finish_cell(cfg, cell, summary, watches, mux)
    write_summary(summary, cfg.output)
    return summary


def finish_cell(cfg: StationConfig, cell: CellLine, summary: RunSummary, watches: list[CameraWatch],
                mux: CaptureMux) -> None:
    """``finish_line`` for a cell: a camera gone for good or still down at the stop is the run's fault (each named;
    ``CameraWatch.at_stop``: the fault output they held stays on); the lanes' gates are let finish too, within one
    ``stop_wait_s`` (``finish_gate``: their parts still on the belt then abandoned before the summary takes their
    counters, their pulses let end); per-camera and part counters go into the summary."""
    down = [r for r in (w.at_stop() for w in watches) if r]
    if down and not summary.fault:
        summary.fault = "; ".join(down)
    finish_line(cfg, cell.line, summary, "", publish=False)   # published below, with the cell's counters in
    deadline = time.monotonic() + stop_wait_s(cfg)   # one wait for every lane: their belts run at once
    for lane in cell.lanes.values():
        if summary.fault:
            lane.fault(True, summary.fault)
    for lane in cell.lanes.values():
        finish_gate(lane, deadline)
        lane.fault(False)   # the run's fault, handed down for the belt's last parts, is the summary's already: each
                            # lane's entry names its own (a latched alarm, a sink fault), not the camera's again
    summary.rejects = cell.reject_stats()
    CellCounters(cell, mux).into(summary)
    publish_summary(cell.line, summary)
