"""The station's line side: what it signals and records through (``LineSide``: the recorder, the reject gate, the
encoder, MQTT, metrics and the PLC handshake), opened from the settings (``open_line_side``) and finished at the stop
(``finish_line``, ``finish_gates``, ``publish_summary``).

``open_line_side`` binds the metrics port before it opens anything else, the handshake last: a station refused at
start for its metrics port or a missing sink has written nothing to the PLC (the console, opened after, may still
refuse it: its handshake has then written its own registers only, which the PLC-output locks keep its own).
While frames pass, ``LineSide``'s verdict callback (``record_verdict``: the gate first, then the verdict log and
MQTT), its capture hook for dropped frames (``on_drop``) and its fault state (``fault_reason``, ``publish_fault``, on
the loop's tick) run beside the frame path (docs/architecture.md).
"""

from __future__ import annotations

import contextlib
import functools
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterable

from fair_edge.line.metrics import DROP_STAGE_QUEUE   # fair_edge_dropped_total{stage=...}: the capture queue's drops
from fair_edge.station.locks import station_lock
from fair_edge.station.stop_deadline import StopDeadline, stop_budget_s

if TYPE_CHECKING:  # typing only: the line side's modules are imported when a station opens them
    import numpy as np

    from fair_edge.line.encoder_source import EncoderSource
    from fair_edge.line.handshake import Handshake
    from fair_edge.line.metrics import Metrics
    from fair_edge.line.mqtt import MqttPublisher
    from fair_edge.line.recorder import Recorder
    from fair_edge.line.scheduler import RejectScheduler
    from fair_edge.records import Frame, Verdict
    from fair_edge.station.config import StationConfig
    from fair_edge.station.inspector import RunSummary, VerdictCallback

STOP_DRAIN_MIN_S = 1.0   # s: the least a stop waits for pulses handed to the sinks (finish_gates) past the belt's wait
FINISH_ROWS_S = 1.0   # s: finish_line's wait for the rows left once NG images were given up on (close waits longer)
# Handshake.stats()'s keys that are no counters, exported as fair_edge_handshake_<key> gauges (connected: 0/1, error:
# the code the PLC's Error shows, open_parts: parts taken and not yet acked); every other key (HANDSHAKE_COUNTERS) is
# fair_edge_handshake_total{event}
HANDSHAKE_GAUGES = ("connected", "error", "open_parts")


@dataclass
class LineSide:
    """What a station signals and records through: the recorder, the reject gate (None without
    sinks), the encoder and the MQTT publisher (None without them) and the verdict callbacks. ``gates_parts`` False:
    the gate only holds the fault output and decides no part (``RejectSettings.decides_parts``)."""

    recorder: Recorder
    scheduler: RejectScheduler | None
    encoder: EncoderSource | None
    mqtt: MqttPublisher | None
    callbacks: list[VerdictCallback]
    metrics: Metrics | None = None
    fault_shown: str | None = None   # the fault reason last published on MQTT ('' none); None: nothing yet
    handshake: Handshake | None = None   # reject.handshake
    station_fault: str = ""   # the reason a FaultBoard holds on the gate and the handshake (``fault``); '' none
    gates_parts: bool = True   # False: the scheduler holds only the fault output (a handshake station's lamp)
    stop: StopDeadline = field(default_factory=StopDeadline)   # the stop's one deadline (open_line_side sizes it)

    @property
    def part_gate(self) -> RejectScheduler | None:
        """The gate that notes and decides parts: the scheduler, unless it decides no part; None without one."""
        return self.scheduler if self.gates_parts else None

    def capture_hooks(self) -> dict[str, Callable[[Frame], None]]:
        """Hooks for the capture thread: the gate notes every part at capture, the log every drop."""
        hooks: dict[str, Callable[[Frame], None]] = {"on_drop": self.on_drop}
        if self.part_gate is not None:
            hooks["on_capture"] = self.part_gate.on_capture
        return hooks

    def on_drop(self, frame: Frame, extra: dict | None = None) -> None:
        """A frame the capture queue dropped: a row in the verdict log (and on MQTT), one more on
        ``fair_edge_dropped_total{stage="camera_queue"}``; its triggered part, if any, is answered NG
        not inspected. extra: fields added to its row (a cell's ``part``)."""
        from fair_edge.line.recorder import dropped_row

        row = {**dropped_row(frame), **(extra or {})}
        self.recorder.record_row(row)
        if self.metrics is not None:
            self.metrics.count_drop(DROP_STAGE_QUEUE)
        if self.handshake is not None:
            self.handshake.on_drop(frame)
        if self.mqtt is not None:
            self.mqtt.publish_row(self.recorder.log_row(row))

    def record_verdict(self, frame: Frame, verdict: Verdict, anomaly_map: np.ndarray | None = None) -> None:
        """Verdict callback: the gate gets the verdict first, then the verdict log its row, and MQTT the same
        row; a verdict that came after its part was decided at the gate is logged and published with what
        the gate did (``verdict_late``, ``gate``: e.g. ``rejected_uninspected``)."""
        from fair_edge.line.scheduler import LATE

        extra, gate = None, self.part_gate
        if gate is not None and gate.submit(verdict) == LATE:
            extra = {"verdict_late": True, "gate": gate.decision(verdict.seq) or "went_by_undecided"}
        self.recorder.record(frame, verdict, anomaly_map, extra)
        if self.mqtt is not None:
            self.mqtt.publish_row({**self.recorder.log_row(verdict), **(extra or {})})

    def stopping(self) -> None:
        """The inspection loop ends (``Inspector.run``'s ``on_stop``, before capture stops): the PLC handshake
        drops Ready and answers a trigger from now on 3 at once (``Handshake.stopping``), so no part is triggered
        that no camera will take; ``finish_line`` answers the parts it took and no verdict answered. The stop's
        deadline (``stop``) starts now."""
        self.stop.begin()
        if self.handshake is not None:
            self.handshake.stopping()

    def fault_reason(self, camera_reason: str = "") -> str:
        """Why the station's fault outputs are on now ('' when they are off), what MQTT and systemd's STATUS show:
        the camera's fault, else the reject gate's (the FaultBoard's reasons, a sink down, an encoder link down, a
        latched alarm), else the FaultBoard's reasons held on the handshake alone (a drift alarm: Ready 0, Error 1);
        then the handshake's latched error while the PLC's Error shows it (``handshake_error``)."""
        gate = self.scheduler.fault_reason if self.scheduler is not None else None
        return "; ".join(r for r in (camera_reason or gate or self.station_fault, self.handshake_error()) if r)

    def handshake_error(self) -> str:
        """The handshake's latched fault (error 10 ack timeout, 11 result timeout, 12 trigger overrun) while the PLC's
        Error register shows it, in words; '' without one, or while a station fault's error 1 stands in for it."""
        from fair_edge.line.handshake.settings import ERROR_CODES, ERROR_NONE, ERROR_STATION_FAULT

        code = ERROR_NONE if self.handshake is None else self.handshake.error_code
        if code in (ERROR_NONE, ERROR_STATION_FAULT):
            return ""
        return f"handshake error {code}: {ERROR_CODES.get(code, 'unknown error code')}"

    def publish_fault(self, camera_reason: str) -> None:
        """Publish the fault state on MQTT on the first tick and whenever it changed (called on every tick): the
        first one replaces a fault an earlier station left retained there."""
        reason = self.fault_reason(camera_reason)
        if self.mqtt is not None and reason != self.fault_shown:
            self.mqtt.publish_fault(bool(reason), reason or "cleared", self.recorder.clock.iso(time.monotonic()))
            self.fault_shown = reason

    def fault(self, active: bool, reason: str = "") -> None:
        """The station cannot inspect (a ``FaultBoard`` target): the reject gate's fault output and
        the handshake's ready / error; the reason is kept for ``fault_reason``."""
        self.station_fault = (reason or "station fault") if active else ""
        for target in (self.scheduler, self.handshake):
            if target is not None:
                target.fault(active, reason)

    def reject_stats(self) -> dict:
        """The reject gate's counters (``fault_output``: why its fault output is on, '' off; ``sinks``: per sink),
        ``handshake``'s, and ``encoder``'s own (reads, read_errors, reconnects, wraps, position_lost: belt-position
        losses, whether or not a part was on the belt; count, position_epoch) for an encoder that keeps them."""
        out = {} if self.handshake is None else {"handshake": self.handshake.stats()}
        encoder_stats = getattr(self.encoder, "stats", None)
        if encoder_stats is not None:
            out["encoder"] = encoder_stats()
        if self.scheduler is None:
            return out
        if self.part_gate is None:   # a fault output only: no part counters, which would read 0 for parts it never saw
            return dict(self.fault_output_stats(), fault_output=self.scheduler.fault_reason or "",
                        sinks=self.scheduler.sink_stats(), decides_parts=False, **out)
        return dict(self.scheduler.stats(), fault_output=self.scheduler.fault_reason or "",
                    sinks=self.scheduler.sink_stats(), **out)

    def fault_output_stats(self) -> dict[str, int]:
        """A gate that decides no part (a handshake station's fault lamp, a lane station's own gate) holds only the
        fault output: the counters its fault sinks can move (``sink_*``: errors, link downs, ...)."""
        return {key: n for key, n in self.scheduler.stats().items() if key.startswith("sink_")}


def open_line_side(cfg: StationConfig, stack: contextlib.ExitStack, run_id: str) -> LineSide:
    """Open metrics, recorder, MQTT, encoder, reject scheduler and handshake on ``stack`` (closed with it), in that
    order: the station's run lock first (``station_lock``; already held under ``run_station``), then what may refuse
    the start (the metrics port, ``require_sinks_at_start``) before the handshake writes to the PLC; a station
    refused on the way has not opened what comes after. Verdict callbacks: the log, the handshake, metrics. Watched
    on /metrics: the recorder, the reject gate, the encoder and the handshake (``fair_edge_handshake_total{event}``,
    its ``HANDSHAKE_GAUGES``; a station of several cameras watches its handshake in ``cell_line.watch_cell``).
    Each is closed within what the stop has left (``LineSide.stop``, ``stop_deadline``), at most its own cap."""
    from fair_edge.line import metrics as metrics_mod
    from fair_edge.line import mqtt as mqtt_mod
    from fair_edge.line.encoder_links import open_encoder
    from fair_edge.line.polled_encoder import CLOSE_JOIN_S as ENCODER_CLOSE_S
    from fair_edge.line.recorder import Recorder
    from fair_edge.line.scheduler import RejectScheduler
    from fair_edge.line.settings import SINK_CHECK_S

    stack.enter_context(station_lock(cfg))
    stop = StopDeadline(stop_budget_s(cfg))
    # first: a metrics port taken (another station's) refuses the start while nothing else is open
    metrics = metrics_mod.Metrics(cfg.metrics).start() if cfg.metrics.enabled else None
    if metrics is not None:
        stack.callback(stop.call, metrics.close, metrics_mod.CLOSE_S, "the metrics server's close")
    recorder = Recorder(cfg.record, run_id=run_id)
    stack.callback(close_recorder, recorder, stop)
    mqtt = mqtt_mod.MqttPublisher(cfg.mqtt.url).start() if cfg.mqtt.url else None
    if mqtt is not None:
        stack.callback(stop.call, mqtt.close, mqtt_mod.CLOSE_S, "MQTT's close")
    line = LineSide(recorder, None, None, mqtt, [], stop=stop)
    if cfg.reject.encoder:
        line.encoder = open_encoder(cfg.reject.encoder).start()
        stack.callback(stop.call, line.encoder.close, ENCODER_CLOSE_S, "the encoder's close")
    if cfg.reject.sinks or cfg.reject.fault_sinks:
        line.scheduler = RejectScheduler(cfg.reject, encoder=line.encoder, on_part=recorder.record_gate)
        stack.callback(close_gates, [line.scheduler], stop)
        line.gates_parts = cfg.reject.decides_parts
        if cfg.reject.require_sinks_at_start:
            line.scheduler.check_sinks(SINK_CHECK_S)
    line.callbacks.append(line.record_verdict)
    if cfg.reject.handshake.enabled:   # last: its thread writes to the PLC as soon as it connects
        from fair_edge.line.handshake import engine, open_handshake

        line.handshake = open_handshake(cfg.reject.handshake).start()
        stack.callback(stop.call, line.handshake.close, engine.CLOSE_S, "the PLC handshake's close")
        line.callbacks.append(line.handshake.on_verdict)
    if metrics is not None:
        metrics.watch("recorder", recorder.stats)
        if line.scheduler is not None and not (cfg.cameras and cfg.group.by == "lane"):   # lanes: cell.watch_cell
            if line.part_gate is not None:
                metrics.watch("reject", line.scheduler.stats)
            else:
                metrics.watch("fault_output", line.fault_output_stats, gauges=())
        encoder_stats = getattr(line.encoder, "stats", None)   # fair_edge_encoder_total{event="read_errors"}, ...
        if encoder_stats is not None:
            metrics.watch("encoder", encoder_stats, gauges=("count", "position_epoch"))
        if line.handshake is not None and not cfg.cameras:   # several cameras: cell.watch_cell, with its fanout's
            metrics.watch("handshake", line.handshake.stats, gauges=HANDSHAKE_GAUGES)
        line.callbacks.append(metrics.on_verdict)
        line.metrics = metrics
    return line


def stop_wait_s(cfg: StationConfig) -> float:
    """How long a stop waits, s, for the parts on the belt to reach the gate and for their pulses to end: the belt's
    drain (``service_unit.belt_drain_ms``, which the unit's TimeoutStopSec is sized from: the parts' travel, in
    encoder mode ``ENCODER_STOP_WAIT_S`` since a stopped belt never brings them, + the widest pulse any reject output
    drives, a sink URL's own ``pulse_ms`` or a lane's included, + ``reject.late_ms``) and 1 s. ``reject.pulse_ms``
    alone cut a wider URL pulse short at the stop."""
    from fair_edge.station.service_unit import belt_drain_ms

    return belt_drain_ms(cfg) / 1000.0 + 1.0


def close_gates(gates: Iterable[RejectScheduler], stop: StopDeadline) -> None:
    """Close reject gates (``RejectScheduler``s: a station's, or a cell's lanes together) within one ``CloseBy`` of
    what the stop has left (at most ``CLOSE_DRAIN_S + CLOSE_JOIN_S``): every gate's thread told to stop
    (``stop_deciding``) before any is waited for, then each gate's sinks told to stop (``begin_close``) before any
    sink is waited for, so N lanes whose encoder reads or outputs hang cost one close in all, not one per lane. Run
    by ``stop.call``: cut short, their log lines name the deadline (``line.close_cut``), not a held encoder read."""
    from fair_edge.line.sinks.base import CLOSE_DRAIN_S, CLOSE_JOIN_S, CloseBy

    gates = list(gates)

    def close(budget_s: float) -> None:
        by = CloseBy.from_now(budget_s)
        for gate in gates:
            gate.stop_deciding()
        for gate in gates:
            gate.begin_close(by)
        for gate in gates:
            gate.close(by)

    stop.call(close, CLOSE_DRAIN_S + CLOSE_JOIN_S, "the reject gates' close")


def close_recorder(recorder: Recorder, stop: StopDeadline) -> None:
    """Close the recorder within what the stop has left: NG images still queued (none after ``finish_line``, which
    saved or gave them up) up to ``CLOSE_IMAGES_S``, rows up to ``CLOSE_ROWS_MAX_S`` (``CLOSE_ROWS_S`` without a
    row written: a hung disk); rows left then are counted ``lost_at_close``, named lost to the deadline when it cut
    the rows' wait short (``stop.call``: ``line.close_cut``), else to the disk."""
    from fair_edge.line.recorder import CLOSE_IMAGES_S, CLOSE_ROWS_MAX_S, CLOSE_ROWS_S

    def close(rows_max_s: float) -> None:
        recorder.close(images_s=stop.left(CLOSE_IMAGES_S), rows_s=min(CLOSE_ROWS_S, rows_max_s), rows_max_s=rows_max_s)

    stop.call(close, CLOSE_ROWS_MAX_S, "the recorder's close")


def finish_gates(gates: Iterable[RejectScheduler], deadline: float, stop: StopDeadline) -> None:
    """A stop's wait at reject gates (the station's, or a cell's lanes together), until ``deadline`` (monotonic s:
    the stop's time + ``stop_wait_s``; a cell's lanes: from when the station's own line has finished): the parts on
    the belt reach each gate (``wait_idle``), those that did not are abandoned (``abandon_pending``: counted, one gate
    row each, before a summary takes the counters), then the pulses handed to their sinks end (``drain_sinks``,
    until ``deadline`` or ``STOP_DRAIN_MIN_S`` from then, whichever is later, once for all the gates, within what
    the stop has left), so the station does not close an output mid-pulse."""
    gates = list(gates)
    with stop.timed("the belt's drain at the reject gates"):
        for gate in gates:
            gate.wait_idle(timeout_s=max(0.0, deadline - time.monotonic()))
            gate.abandon_pending()
        drain_until = stop.until(max(deadline, time.monotonic() + STOP_DRAIN_MIN_S))
        for gate in gates:
            gate.drain_sinks(timeout_s=max(0.0, drain_until - time.monotonic()))


def finish_line(cfg: StationConfig, line: LineSide, summary: RunSummary, camera_state: str,
                publish: bool = True) -> None:
    """After inspection stopped: note a camera fault, let parts already on the belt reach the gate and their pulses
    end (``finish_gates``, ``stop_wait_s``: they are decided and pulsed there; those that do not within their travel
    time are abandoned: counted, one gate row each), close the reject gate (its outputs: a pulse still queued behind
    a slow or hung write is counted missed, with its gate row, before the summary takes the counters), write the log,
    and fill the summary's line counters. The log:
    NG images still queued are saved for at most ``CLOSE_IMAGES_S``, then rows only (images counted ``images_skipped``);
    ``summary.recorder`` is taken now for the MQTT summary and again when the recorder has closed (its
    final counters, after the last row: the ones summary.json gets). camera_state: ``CameraWatch.at_stop()``, a
    camera gone or still down at the stop ('' when it was delivering): the run's fault unless it has one.
    publish: False leaves the MQTT summary to the caller (``publish_summary``), which fills more counters first (a
    cell's cameras, parts and lanes)."""
    if not summary.fault and camera_state:
        summary.fault = camera_state
    from fair_edge.line.recorder import CLOSE_IMAGES_S

    if line.handshake is not None:   # ready drops; parts left without a result answered 3, all acked
        from fair_edge.line.handshake.engine import FINISH_S

        with line.stop.timed("the PLC handshake's finish"):
            line.handshake.finish(summary.fault, timeout_s=line.stop.left(FINISH_S))
    if line.scheduler is not None:
        if summary.fault:
            line.scheduler.fault(True, summary.fault)
        finish_gates([line.scheduler], line.stop.until(time.monotonic() + stop_wait_s(cfg)), line.stop)
        close_gates([line.scheduler], line.stop)   # the station's stack closes it too: a no-op then
    images_s = line.stop.left(CLOSE_IMAGES_S)
    with line.stop.timed("the NG images and rows at the drain"):
        if not line.recorder.flush(timeout=images_s):
            line.recorder.stop_images(f"the run ended with NG images unsaved after {images_s:g} s")
            line.recorder.flush(timeout=line.stop.left(FINISH_ROWS_S))   # the rows left, quick without their images
    summary.rejects = line.reject_stats()
    summary.recorder = line.recorder.stats()
    line.recorder.on_close(functools.partial(setattr, summary, "recorder"))
    if publish:
        publish_summary(line, summary)


def publish_summary(line: LineSide, summary: RunSummary) -> None:
    """The run's last fault state and its summary on MQTT (retained ``PREFIX/summary``), with MQTT's own counters
    as they stand when it is queued: the summary message is not in its own counts, and a message queued just before
    it (the last fault state) may show there unacknowledged (``outbox``). ``summary.mqtt`` is taken again when the
    publisher has closed (its outbox flushed: the final counters, the summary message's among them), before
    summary.json is written. Nothing without MQTT."""
    if line.mqtt is not None:
        line.publish_fault(summary.fault)
        summary.mqtt = line.mqtt.stats()
        line.mqtt.publish_summary(summary.to_dict())
        line.mqtt.on_close(functools.partial(setattr, summary, "mqtt"))
