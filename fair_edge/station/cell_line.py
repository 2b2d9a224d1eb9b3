"""The line side of a cell (``CellLine``): the station's ``LineSide`` with what several cameras add to it, each
camera's capture hooks, its view verdicts routed to the log, MQTT and (``by: lane``) its lane's gate, the part
assembler's part verdicts to the station's gate and the PLC's handshake, and the reject and part counters; opened
from the station file by ``open_cell_line`` and put on /metrics by ``watch_cell``. The capture hook and the
verdict callback run on a frame's path (docs/architecture.md: the capture thread's ``on_capture``, step 3's
``on_verdict``), so they stay in this one file."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections import Counter
from typing import TYPE_CHECKING, Callable

from fair_edge.cameras.triggered import TriggerFanout
from fair_edge.records import Frame, Verdict
from fair_edge.station.cell_lanes import lane_totals, lanes_fault_output
from fair_edge.station.cell_timing import part_close_by_count, part_due_s, part_timeout_s, warn_window_counts
from fair_edge.station.config import StationConfig
from fair_edge.station.line_side import HANDSHAKE_GAUGES, LineSide, close_gates, open_line_side
from fair_edge.station.parts import PartAssembler

if TYPE_CHECKING:
    from fair_edge.line.handshake import Ticket
    from fair_edge.line.metrics import Metrics

log = logging.getLogger("fair_edge.station.cell")   # the cell's logger: a part listener's failure keeps its name


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
        decided first (still open at its due time) is named by the gate's question then
        (``PartAssembler.missing_at_gate``: "no verdict by its due time (missing view: b (not inspected in time))")."""
        from fair_edge.line.scheduler import LATE

        scheduler = self.line.part_gate
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
        scheduler, triggers = line.part_gate, cell.triggers
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
        if scheduler is not None:   # a part the gate decides while it is open: the gate names its missing views
            scheduler.why_no_verdict = cell.assembler.missing_at_gate
        if line.metrics is not None:
            watch_cell(line.metrics, cell)
        return cell
    # the lanes opened (a live view: also those before one whose open failed) close together, in one budget of what
    # the stop has left
    stack.callback(close_gates, cell.lanes.values(), line.stop)
    for view in cfg.cameras:
        if view.reject:
            settings = dataclasses.replace(cfg.reject, sinks=view.reject, fault_sinks=())
            cell.lanes[view.name] = RejectScheduler(
                settings, encoder=line.encoder,
                on_part=lambda row, name=view.name: line.recorder.record_gate(dict(row, camera=name)))
    if line.metrics is not None:
        watch_cell(line.metrics, cell)
    return cell


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
        metrics.watch("fault_output", cell.line.fault_output_stats, gauges=())
