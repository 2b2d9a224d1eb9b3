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

This module runs the cell (``run``, ``run_cell``: start checks, cameras, loop, ``finish_cell``) and counts it
(``CellCounters``); the rest is in its own modules: ``cell_models`` (the models), ``cell_line`` (``CellLine``: the
line side, its hooks and verdict routing), ``cell_lanes`` (the lanes' totals and fault names, ``LaneWatch``,
``CellWatch``), ``cell_timing`` (when a part is complete) and ``cell_console`` (the console).
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Callable

from fair_edge.cameras.mux import CaptureMux
from fair_edge.errors import ConfigError
from fair_edge.records import new_run_id
from fair_edge.station.camera import CameraWatch, check_loop, is_unpaced_replay, open_capture
from fair_edge.station.cell_console import open_cell_console
from fair_edge.station.cell_lanes import CellWatch, LaneWatch
from fair_edge.station.cell_line import CellLine, open_cell_line
from fair_edge.station.cell_models import CellModels
from fair_edge.station.cell_timing import gate_times_parts, part_timeout_s
from fair_edge.station.config import StationConfig, view_config
from fair_edge.station.faults import FaultBoard
from fair_edge.station.inspector import Inspector, RunSummary
from fair_edge.station.line_side import close_gates, finish_gates, finish_line, publish_summary, stop_wait_s
from fair_edge.station.locks import probe_gpio_lines, station_lock
from fair_edge.station.notify import ServiceNotifier, status_line
from fair_edge.station.run import (check_reject_timing, raise_open_files_limit, run_station, station_switch_interval,
                                   station_tick, warn_fused_score, write_summary)


def run(cfg: StationConfig, stop: threading.Event, **kwargs) -> RunSummary:
    """Run the station the file describes: ``run_cell`` for a ``cameras:`` list, else ``run_station`` (with the
    process's open-files limit raised first: ``raise_open_files_limit``)."""
    raise_open_files_limit()
    return run_cell(cfg, stop, **kwargs) if cfg.cameras else run_station(cfg, stop, **kwargs)


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
        if cfg.group.by == "lane" and not gate.reject.sinks:
            continue   # the station's own gate of a lane station holds the fault output only: it decides no part
        if cfg.group.by == "part" and not gate_times_parts(gate):
            continue   # a lamp alone at delay_ms 0 decides each part as the cell hands it over: no travel time
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
        models = CellModels(cfg, scorer)
        try:
            return _run_cell(cfg, stop, max_frames, duration_s, on_start, on_tick, models, sources, on_console,
                             export_reviewed)
        finally:   # after summary.json, which needs nothing of them: a slow teardown is not SIGKILL's cut of the file
            models.close_swapped()   # the scorers the cameras took by hot swap, then the loaded ones (TensorRT, CUDA)
            models.close()


def _run_cell(cfg: StationConfig, stop: threading.Event, max_frames: int | None, duration_s: float | None,
              on_start, on_tick, models: CellModels, sources: dict | None, on_console, export_reviewed) -> RunSummary:
    """``run_cell``'s body, under the station's run lock: the station's run with ``models`` (closed by the caller,
    after summary.json)."""
    run_id = new_run_id()
    first = models.views[cfg.cameras[0].name]
    if on_start is not None:
        on_start(f"run {run_id}; {len(cfg.cameras)} cameras ({cfg.group.by}s); {len(models.bundles)} model(s); "
                 f"backend: {first.scorer.reason}")
    with contextlib.ExitStack() as stack:
        notifier = stack.enter_context(ServiceNotifier.from_env())
        warn_fused_score(cfg, any(view.fused for view in models.views.values()))
        cell = open_cell_line(cfg, stack, run_id)
        line = cell.line
        line.stop.extend = notifier.extend_timeout   # the stop's deadline moved: systemd told
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
        if line.handshake is not None:   # the PLC pill and handshake card: /metrics' counters, the fanout's too
            console.feed.read_handshake_from(cell.handshake_stats)
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
    ``stop_wait_s`` (``finish_gates``: their parts still on the belt then abandoned before the summary takes their
    counters, their pulses let end), then closed together (``close_gates``: a pulse still queued counted missed
    before the summary takes the counters, as ``finish_line`` closes the station's gate); per-camera and part counters
    go into the summary."""
    down = [r for r in (w.at_stop() for w in watches) if r]
    if down and not summary.fault:
        summary.fault = "; ".join(down)
    finish_line(cfg, cell.line, summary, "", publish=False)   # published below, with the cell's counters in
    deadline = cell.line.stop.until(time.monotonic() + stop_wait_s(cfg))   # one wait for every lane: their belts run at once
    for lane in cell.lanes.values():
        if summary.fault:
            lane.fault(True, summary.fault)
    finish_gates(cell.lanes.values(), deadline, cell.line.stop)
    for lane in cell.lanes.values():
        lane.fault(False)   # the run's fault, handed down for the belt's last parts, is the summary's already: each
                            # lane's entry names its own (a latched alarm, a sink fault), not the camera's again
    close_gates(cell.lanes.values(), cell.line.stop)   # the cell's stack closes them too: a no-op then
    summary.rejects = cell.reject_stats()
    CellCounters(cell, mux).into(summary)
    publish_summary(cell.line, summary)
