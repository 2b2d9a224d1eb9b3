"""Wire a station together from its settings: bundle and backend (opened by ``station.bundles``), camera,
recorder, rejects, metrics, console.

``run_station`` owns every resource it opens and closes them all (also on errors and signals);
the summary is written to ``OUTPUT/summary.json`` (``write_summary``: a failed write is logged, never fatal).
One station per output folder and per PLC output: ``station_lock`` holds ``OUTPUT/.station.lock`` (and one in
``record.dir`` when that is elsewhere) and a lock on each PLC address the station writes (its reject and fault
sinks', the handshake's: ``fair_edge.line.plc_lock``) from before the model loads until the summary is written, so
a second `fair-edge run` on the same folder or the same PLC outputs is refused naming the running one's pid before
it opens a reject or fault output, the handshake, the verdict log or a port (a second station's fault sinks
writing their resting level would clear the first one's latched alarm; a second handshake would answer every
part again). ``open_line_side`` binds the metrics port before it opens anything else, the handshake last: a
station refused at start for its metrics port or a missing sink has written nothing to the PLC (the console,
opened after, may still refuse it: its handshake has then written its own registers only, which the PLC-output
locks keep its own).
Under the lock and before the model loads, ``probe_gpio_lines`` requests and releases every GPIO line the station
drives: a line another process holds, or a chip that cannot be opened, refuses the start then (not minutes later,
after a TensorRT engine loaded), before the recorder, a port or a sink opens.
``exit_code(summary)`` is what `fair-edge run` returns: 0 fine, 3 station fault (also a camera gone, or still down
when the run stopped), 4 rejects were due but a reject sink delivered none of them.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np

from fair_edge.runtime.backends import FrameScorer
from fair_edge.cameras import CaptureSettings, CaptureThread, parse_source
from fair_edge.cameras.base import CaptureState
from fair_edge.cameras.opencv import redact_url
from fair_edge.cameras.replay import REPLAY_SOURCES
from fair_edge.errors import ConfigError
from fair_edge.line.metrics import DROP_STAGE_QUEUE   # fair_edge_dropped_total{stage=...}: the capture queue's drops
from fair_edge.line.handshake.settings import fused_score_warning
from fair_edge.station.faults import FaultBoard
from fair_edge.runtime.backends import close_scorer
from fair_edge.runtime.hotswap import fused_members, model_id
from fair_edge.station.inspector import Inspector, RunSummary
from fair_edge.disk import unwritable_folder, write_text_whole
from fair_edge.records import new_run_id
from fair_edge.runlock import LockHolder, hold_lock
from fair_edge.station.notify import ServiceNotifier, status_line
from fair_edge.station.bundles import (check_applied_threshold, load_change, load_roi, open_regions, open_scorer,
                                      read_bundle, resolve_threshold)
from fair_edge.station.config import AUTO_POLICY, StationConfig, load_station

if TYPE_CHECKING:  # typing only: the line side's modules are imported when a station opens them
    from fair_edge.calibration.threshold import Threshold
    from fair_edge.cameras import FrameSource
    from fair_edge.console.actions import StationLinks
    from fair_edge.console.station_hook import StationConsole
    from fair_edge.export.bundle import Bundle
    from fair_edge.line.encoder_source import EncoderSource
    from fair_edge.line.handshake import Handshake
    from fair_edge.line.metrics import Metrics
    from fair_edge.line.mqtt import MqttPublisher
    from fair_edge.line.plc_lock import PlcOutput
    from fair_edge.line.recorder import Recorder
    from fair_edge.line.scheduler import RejectScheduler
    from fair_edge.records import Frame, Verdict
    from fair_edge.runtime.fusion import FusedBundle
    from fair_edge.station.faults import FaultChannel
    from fair_edge.station.inspector import VerdictCallback

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAULT = 3                 # the station faulted: backend kept failing, camera gone for good
EXIT_REJECTS_UNDELIVERED = 4   # rejects were due, and a reject sink delivered none of them
STATION_LOCK = ".station.lock"   # in the output folder (and record.dir): held while a station runs (station_lock)
CAUSE_CHARS = 200   # the most characters of a reconnecting camera's cause in its fault reason (camera_fault)
STATION_BUSY = ("{folder}: a station is already running on this {what} ({holder}): stop it first ({stop}), "
                "or give this one another {fix}.")
OPEN_FILES = 65536   # the soft open-files limit a station raises itself to (its hard limit where that is lower)
BUSY_FOLDERS = {"output": ("output folder", "output folder (output: in the station file, or --out)"),
                "record": ("verdict-log folder", "verdict-log folder (record.dir: in the station file)"),
                "demo": ("output folder", "demo folder (fair-edge demo --out DIR)")}   # hold_station_folder's
BUSY_PLC = ("PLC output", "PLC output ({setting}: in the station file)")   # station_busy's what / fix for plc_busy
SWITCH_INTERVAL_S = 0.0005   # the GIL switch interval while a station runs, s (Python's default: 0.005; BENCHMARKS.md)
STOP_DRAIN_MIN_S = 1.0   # s: the least a stop waits for pulses handed to the sinks (finish_gate), budget spent or not
# what a station writes in its output folder (summary.json: write_summary; the console's journals and images:
# console.journal's REVIEWS and AUDIT, review/, datasets/) and in record.dir (line.recorder's verdict and gate logs, its
# NG images; the same folder unless record.dir names another): each there must be a file or folder of its own, or
# missing, never a symbolic link, which the station would write through (refuse_linked_outputs)
OUTPUT_WRITES = (STATION_LOCK, "summary.json", "reviews.jsonl", "audit.jsonl", "review", "datasets")
RECORD_WRITES = (STATION_LOCK, "verdicts.jsonl", "gate.jsonl", "ng")
# Handshake.stats()'s keys that are no counters, exported as fair_edge_handshake_<key> gauges (connected: 0/1, error:
# the code the PLC's Error shows, open_parts: parts taken and not yet acked); every other key (HANDSHAKE_COUNTERS) is
# fair_edge_handshake_total{event}
HANDSHAKE_GAUGES = ("connected", "error", "open_parts")


def exit_code(summary: RunSummary) -> int:
    """The documented exit code of a run (see the module doc and README's fail-safe rules)."""
    if summary.fault:
        return EXIT_FAULT
    if undelivered_sinks(summary.rejects):
        return EXIT_REJECTS_UNDELIVERED
    return EXIT_OK


def undelivered_sinks(rejects: dict) -> list[str]:
    """Reject sinks that were handed pulses and delivered none (``RunSummary.rejects``)."""
    sinks = (rejects or {}).get("sinks") or {}
    return [name for name, st in sinks.items() if st.get("pulses", 0) > 0 and st.get("delivered", 0) == 0]


def open_capture(cfg: StationConfig, source: FrameSource | None = None, trigger: Handshake | None = None,
                 **hooks: Callable[[Frame], None]) -> CaptureThread:
    """The camera's capture thread (not started). A folder or video without ``camera.fps`` is read
    as fast as inspection takes it, under ``block`` (nothing dropped) when ``full_policy`` is
    ``auto``; with fps, or from a camera, ``auto`` means ``drop_oldest``. source: a frame source
    to use instead of ``cfg.camera.source`` (tests, soak). trigger: a ``Handshake``: one
    frame per PLC trigger (``fair_edge.cameras.triggered``). hooks: ``on_capture``,
    ``on_drop`` (see ``CaptureThread``)."""

    def make(src: FrameSource, settings: CaptureSettings) -> CaptureThread:
        if trigger is None:
            return CaptureThread(src, settings, **hooks)
        from fair_edge.cameras.triggered import triggered_capture

        return triggered_capture(src, trigger, settings, **hooks)

    if source is not None:
        policy = "drop_oldest" if cfg.camera.full_policy == AUTO_POLICY else cfg.camera.full_policy
        return make(source, CaptureSettings(queue_size=cfg.camera.queue_size, full_policy=policy))
    check_loop(cfg)
    opts: dict = {}
    if cfg.camera.fps is not None:
        opts["fps"] = cfg.camera.fps
    if cfg.camera.loop:
        opts["loop"] = True
    source = parse_source(cfg.camera.source, **opts)
    replay_unpaced = isinstance(source, REPLAY_SOURCES) and cfg.camera.fps is None
    if replay_unpaced:
        source = parse_source(cfg.camera.source, **dict(opts, fps=0))
    policy = cfg.camera.full_policy
    if policy == AUTO_POLICY:
        policy = "block" if replay_unpaced else "drop_oldest"
    return make(source, CaptureSettings(queue_size=cfg.camera.queue_size, full_policy=policy))


def is_unpaced_replay(cfg: StationConfig) -> bool:
    """True when ``cfg.camera.source`` is a folder or video read without ``camera.fps`` (as fast as
    inspection takes it: frames are captured long before they can be inspected, so no line time)."""
    return cfg.camera.fps is None and isinstance(parse_source(cfg.camera.source), REPLAY_SOURCES)


def check_loop(cfg: StationConfig) -> None:
    """Refuse ``camera.loop`` (``--loop``) for a source that is no replayed folder or video (a live camera, an RTSP
    URL, ``opencv:clip.avi``): ConfigError naming the flag, the source and the fix. Checked before the model loads
    (``run_station``) and where the capture is made (``open_capture``)."""
    if cfg.camera.loop and not isinstance(parse_source(cfg.camera.source), REPLAY_SOURCES):
        raise ConfigError(f"--loop / camera.loop: expected a replayed folder, image or video file (--source PATH, "
                          f"folder:PATH, video:PATH), found the camera {redact_url(str(cfg.camera.source))}, which "
                          "cannot be replayed; drop --loop (loop: false in the station file) for a live camera.")


def check_reject_timing(cfg: StationConfig, timed_source: bool) -> None:
    """Refuse reject pulses the line's time cannot place. Each part is due at the gate
    ``t_capture + reject.delay_ms`` (or after ``encoder_distance`` counts): that needs a timed line
    (a camera, or a replay with ``camera.fps``) and the real travel time. ``delay_ms: 0`` (the
    default) would put the gate at the camera, where no verdict can be in time: every part would be
    rejected fail-safe. timed_source: False for a folder or video read without fps."""
    if not cfg.reject.sinks:
        return
    if not timed_source:
        raise ConfigError(f"camera.fps: a folder or video replayed without fps ({cfg.camera.source}) is not a "
                          "timed line (frames are read long before they can be inspected), so reject pulses "
                          "cannot be placed; give the line's rate (--fps / camera.fps), or drop the reject sinks "
                          "(--reject / reject.sinks).")
    if cfg.reject.encoder_distance is None and cfg.reject.delay_ms <= 0:
        raise ConfigError("reject.delay_ms: expected the camera -> reject gate travel time in ms (> 0), found "
                          f"{cfg.reject.delay_ms:g} (a gate at the camera: no verdict is ever in time, every "
                          "part would be rejected fail-safe); measure it on the line and set --reject-delay-ms / "
                          "reject.delay_ms, or use reject.encoder_distance.")


@contextlib.contextmanager
def station_lock(cfg: StationConfig) -> Iterator[None]:
    """Hold the station's run lock (``STATION_LOCK``) in its output folder and, when the verdict log goes elsewhere,
    in ``record.dir``, then the lock of each PLC address it writes (``plc_outputs``), while the block runs:
    ConfigError (``STATION_BUSY``, naming the running station's pid and station file, the folder or PLC address
    and the fix) when another station holds one. The same thread may take it again inside (``open_line_side``
    does: a no-op under ``run_station``, the lock of a station of several cameras). First, ConfigError when a file or
    folder the station writes there is a symbolic link (``refuse_linked_outputs``), or when it could not write there
    at all (``refuse_unwritable_outputs``)."""
    from fair_edge.line.plc_lock import hold_plc_outputs

    what = f"fair-edge run --station {cfg.source_file.resolve()}" if cfg.source_file else "fair-edge run"
    folders = {Path(cfg.output).resolve(): (Path(cfg.output), "output")}
    folders.setdefault(Path(cfg.record.dir).resolve(), (Path(cfg.record.dir), "record"))
    refuse_linked_outputs(cfg)   # before the lock file is written: it may be a link too
    refuse_unwritable_outputs(cfg)   # before the lock file is tried: one that cannot be made runs unlocked
    with contextlib.ExitStack() as stack:
        for folder, kind in folders.values():
            stack.enter_context(hold_station_folder(folder, what, kind))
        stack.enter_context(hold_plc_outputs(plc_outputs(cfg), what, plc_busy))
        yield


def refuse_linked_outputs(cfg: StationConfig) -> None:
    """ConfigError when a file or folder the station writes in its output folder (``OUTPUT_WRITES``) or in
    ``record.dir`` (``RECORD_WRITES``) is a symbolic link: the station would append its verdicts to, or save NG images
    and reviews into, whatever the link leads to (a link put there by anyone who can write the folder). The error
    names each link, where it leads and the fix (remove it). Checked at start, once (``station_lock``); a log
    link put there later fails that log's writes (``line.jsonl.open_log``: counted, never written through)."""
    found: dict[tuple[Path, str], Path] = {}   # (folder resolved, name) -> the path as configured: each once
    for folder, names in ((Path(cfg.output), OUTPUT_WRITES), (Path(cfg.record.dir), RECORD_WRITES)):
        for name in names:
            if (folder / name).is_symlink():
                found.setdefault((folder.resolve(), name), folder / name)
    links = list(found.values())
    if not links:
        return
    named = "; ".join(f"{link} leads to {_link_target(link)}" for link in links)
    raise ConfigError(f"expected the files and folders the station writes in its output folder and record.dir to be "
                      f"its own, found {len(links)} symbolic link(s): {named}. The station would write through a link "
                      f"into what it leads to: remove the link(s) (rm {' '.join(str(link) for link in links)}; what "
                      "they lead to is kept) and start again.")


def refuse_unwritable_outputs(cfg: StationConfig) -> None:
    """ConfigError when the station could not write its output folder or record.dir, or make the one that is
    missing (``disk.unwritable_folder``: a file where a folder should be, a read-only file system, a folder this
    account cannot write), naming the setting, the folder and why. Checked at start (``station_lock``), before the
    model loads: the recorder refused it only once the model had loaded (minutes for a TensorRT engine), after the
    run lock that could not be made there was warned about."""
    for setting, folder in (("output", Path(cfg.output)), ("record.dir", Path(cfg.record.dir))):
        why = unwritable_folder(folder)
        if why is not None:
            raise ConfigError(f"{setting}: expected a writable folder, found {folder} ({why}); pick another dir or "
                              "fix its permissions")


def _link_target(link: Path) -> str:
    """Where the symbolic link ``link`` leads, as it is written (``Path.readlink``), and the file or folder it resolves
    to when that differs (a relative link); "?" when it cannot be read."""
    try:
        written = str(link.readlink())
        resolved = str(link.resolve())
    except (OSError, RuntimeError):   # unreadable, a loop
        return "?"
    return written if written == resolved else f"{written} ({resolved})"


def hold_station_folder(folder: Path, what: str, kind: str = "output") -> contextlib.AbstractContextManager[Path]:
    """Hold ``folder``'s station lock (``STATION_LOCK``) while the block runs, as ``station_lock`` holds a station's
    output folder (``kind``: a ``BUSY_FOLDERS`` key, the refusal's words; "demo": `fair-edge demo`'s, which clears
    its station folder before its station runs there): ConfigError (``STATION_BUSY``) while another station runs
    there, before anything in it is touched. what: written in the lock file beside the pid. Yields the lock file."""
    return hold_lock(folder, STATION_LOCK, what, functools.partial(station_busy, folder, kind))


def plc_outputs(cfg: StationConfig) -> list[PlcOutput]:
    """The PLC addresses the station writes: the handshake's registers / nodes, the reject and fault sinks' and
    each camera's lane outputs (``cameras[i].reject``) that are Modbus or OPC UA."""
    from fair_edge.line.plc_lock import handshake_outputs, sink_outputs

    lanes = [sink_outputs(f"cameras[{i}].reject", view.reject) for i, view in enumerate(cfg.cameras)]
    return [*handshake_outputs(cfg.reject.handshake), *sink_outputs("reject.sinks", cfg.reject.sinks),
            *sink_outputs("reject.fault_sinks", cfg.reject.fault_sinks), *(o for lane in lanes for o in lane)]


def probe_gpio_lines(cfg: StationConfig) -> None:
    """Request and release each GPIO line the station drives (``StationConfig.output_urls``;
    ``sinks.gpio.probe_gpio_outputs``) before the model loads: a line another process holds (a second station, a leftover script), a chip that cannot
    be opened, missing permissions or driver package refuse the start at once, with the message opening the line
    would give after the model loaded, prefixed with the setting. Called under ``station_lock``, so a second station
    on this output folder is refused naming its pid first. A line taken in between still refuses at open."""
    from fair_edge.line.settings import named_urls
    from fair_edge.line.sinks.gpio import probe_gpio_outputs

    probe_gpio_outputs(named_urls(cfg.output_urls()))


def plc_busy(output: PlcOutput, holder: LockHolder) -> str:
    """The refusal of a station one of whose PLC addresses (``output``) another station holds (``holder``: its pid
    and station file), naming the address and the settings that place it."""
    what, fix = BUSY_PLC
    return STATION_BUSY.format(folder=output.shown, what=what, holder=holder, stop=stop_words(holder),
                               fix=fix.format(setting=output.setting))


def station_busy(folder: Path, kind: str, holder: LockHolder) -> str:
    """The refusal of a station whose output folder (``kind`` "output") or verdict-log folder ("record": record.dir
    elsewhere) another station holds (``holder``: its pid and station file), naming the setting that moves it."""
    what, fix = BUSY_FOLDERS[kind]
    return STATION_BUSY.format(folder=folder, what=what, holder=holder, stop=stop_words(holder), fix=fix)


def stop_words(holder: LockHolder) -> str:
    """How a refusal says to stop the station holding a lock: its own systemd unit (``systemctl stop
    fair-edge-line1.service``, recorded in the lock file), else its pid (``kill -TERM N``) or Ctrl-C in its terminal.
    A unit's name is never guessed: a site of two lines has two units, and the default ``fair-edge`` may be the
    other line's."""
    command = holder.stop_command()
    if holder.unit is not None:
        return f"`{command}`"
    return f"`{command}`, or Ctrl-C in its terminal" if command else "Ctrl-C in its terminal, or stop its service"


def camera_fault(stats) -> str:
    """Why the camera cannot deliver frames ('' when it can, was stopped, or a replay reached its end): while it
    reconnects, "camera reconnecting: CAUSE" (``CaptureStats.outage_cause``, one line of at most ``CAUSE_CHARS``: the
    link error, or why each reopen is refused, e.g. a camera replaced by one delivering 16-bit frames), as the fault
    output, MQTT, systemd's STATUS and the console show it."""
    if stats.state is CaptureState.RECONNECTING:
        cause = " ".join(stats.outage_cause.split())
        cause = cause if len(cause) <= CAUSE_CHARS else cause[:CAUSE_CHARS - 3].rstrip() + "..."
        return f"camera reconnecting: {cause}" if cause else "camera reconnecting"
    if stats.state is CaptureState.ENDED and not stats.end_reason.startswith(("source ended", "stop() called")):
        return f"camera gone: {stats.end_reason}"
    return ""


class CameraWatch:
    """Holds the reject scheduler's fault output on while the camera cannot deliver frames.

    Called from the inspection loop's tick (every ~0.5 s); sets the output only when the state changes.
    Once the run has stopped the capture, ``at_stop()`` says whether the camera was down then (a stopped
    capture is not a camera back: the fault held stays on).
    """

    def __init__(self, capture: CaptureThread, scheduler: FaultChannel | None, name: str = "") -> None:
        self.capture, self.scheduler, self.reason, self.name = capture, scheduler, "", name

    def __call__(self, _inspector: Inspector | None = None) -> str:
        stats = self.capture.stats()
        if stats.state is CaptureState.STOPPED:   # the run stopped it: nothing changed at the camera
            return self.reason
        reason = self._named(camera_fault(stats))
        if reason != self.reason:
            if reason:
                log.error("station cannot inspect: %s", reason)
            elif self.reason:
                log.warning("camera back: inspecting again")
            if self.scheduler is not None:
                self.scheduler.fault(bool(reason), reason)
            self.reason = reason
        return reason

    def at_stop(self) -> str:
        """After the capture was stopped: the run's camera fault, '' when the camera was delivering frames.
        A camera gone for good ("camera gone: ..."), or one still down at the stop ("camera down when the run
        stopped: reconnecting (...)", ``CaptureThread.down_at_stop``; its unfinished outage is in the lost count).
        Changes no output and logs nothing: the fault output the last tick held stays on (``finish_line``)."""
        reason = camera_fault(self.capture.stats())
        down = getattr(self.capture, "down_at_stop", "")
        if not reason and down:
            reason = f"camera down when the run stopped: {down}"
        return self._named(reason)

    def _named(self, reason: str) -> str:
        return f"camera {self.name}: {reason}" if reason and self.name else reason


@dataclass
class LineSide:
    """What a station signals and records through: the recorder, the reject gate (None without
    sinks), the encoder and the MQTT publisher (None without them) and the verdict callbacks."""

    recorder: Recorder
    scheduler: RejectScheduler | None
    encoder: EncoderSource | None
    mqtt: MqttPublisher | None
    callbacks: list[VerdictCallback]
    metrics: Metrics | None = None
    fault_shown: str | None = None   # the fault reason last published on MQTT ('' none); None: nothing yet
    handshake: Handshake | None = None   # reject.handshake
    station_fault: str = ""   # the reason a FaultBoard holds on the gate and the handshake (``fault``); '' none

    def capture_hooks(self) -> dict[str, Callable[[Frame], None]]:
        """Hooks for the capture thread: the gate notes every part at capture, the log every drop."""
        hooks: dict[str, Callable[[Frame], None]] = {"on_drop": self.on_drop}
        if self.scheduler is not None:
            hooks["on_capture"] = self.scheduler.on_capture
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

        extra = None
        if self.scheduler is not None and self.scheduler.submit(verdict) == LATE:
            extra = {"verdict_late": True, "gate": self.scheduler.decision(verdict.seq) or "went_by_undecided"}
        self.recorder.record(frame, verdict, anomaly_map, extra)
        if self.mqtt is not None:
            self.mqtt.publish_row({**self.recorder.log_row(verdict), **(extra or {})})

    def stopping(self) -> None:
        """The inspection loop ends (``Inspector.run``'s ``on_stop``, before capture stops): the PLC handshake
        drops Ready and answers a trigger from now on 3 at once (``Handshake.stopping``), so no part is triggered
        that no camera will take; ``finish_line`` answers the parts it took and no verdict answered."""
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
        return dict(self.scheduler.stats(), fault_output=self.scheduler.fault_reason or "",
                    sinks=self.scheduler.sink_stats(), **out)


def warn_fused_score(cfg: StationConfig, fused: bool) -> str:
    """Log at start, as a warning, that a fused model's scores (``fused``: the station's model, or a camera's, is
    fused) would read 0 on the handshake's Modbus score register (``handshake.settings.fused_score_warning``, with
    the fix); returns it ("" when they would not)."""
    note = fused_score_warning(cfg.reject.handshake, fused)
    if note:
        log.warning("%s", note)
    return note


def open_line_side(cfg: StationConfig, stack: contextlib.ExitStack, run_id: str) -> LineSide:
    """Open metrics, recorder, MQTT, encoder, reject scheduler and handshake on ``stack`` (closed with it), in that
    order: the station's run lock first (``station_lock``; already held under ``run_station``), then what may refuse
    the start (the metrics port, ``require_sinks_at_start``) before the handshake writes to the PLC; a station
    refused on the way has not opened what comes after. Verdict callbacks: the log, the handshake, metrics. Watched
    on /metrics: the recorder, the reject gate, the encoder and the handshake (``fair_edge_handshake_total{event}``,
    its ``HANDSHAKE_GAUGES``; a station of several cameras watches its handshake in ``cell.watch_cell``)."""
    from fair_edge.line.encoder_links import open_encoder
    from fair_edge.line.metrics import Metrics
    from fair_edge.line.mqtt import MqttPublisher
    from fair_edge.line.recorder import Recorder
    from fair_edge.line.scheduler import RejectScheduler
    from fair_edge.line.settings import SINK_CHECK_S

    stack.enter_context(station_lock(cfg))
    # first: a metrics port taken (another station's) refuses the start while nothing else is open
    metrics = stack.enter_context(Metrics(cfg.metrics).start()) if cfg.metrics.enabled else None
    recorder = stack.enter_context(Recorder(cfg.record, run_id=run_id))
    mqtt = stack.enter_context(MqttPublisher(cfg.mqtt.url)) if cfg.mqtt.url else None
    line = LineSide(recorder, None, None, mqtt, [])
    if cfg.reject.encoder:
        line.encoder = stack.enter_context(open_encoder(cfg.reject.encoder))
    if cfg.reject.sinks or cfg.reject.fault_sinks:
        line.scheduler = stack.enter_context(RejectScheduler(cfg.reject, encoder=line.encoder,
                                                             on_part=recorder.record_gate))
        if cfg.reject.require_sinks_at_start:
            line.scheduler.check_sinks(SINK_CHECK_S)
    line.callbacks.append(line.record_verdict)
    if cfg.reject.handshake.enabled:   # last: its thread writes to the PLC as soon as it connects
        from fair_edge.line.handshake import open_handshake

        line.handshake = stack.enter_context(open_handshake(cfg.reject.handshake))
        line.callbacks.append(line.handshake.on_verdict)
    if metrics is not None:
        metrics.watch("recorder", recorder.stats)
        if line.scheduler is not None and not (cfg.cameras and cfg.group.by == "lane"):   # lanes: cell.watch_cell
            metrics.watch("reject", line.scheduler.stats)
        encoder_stats = getattr(line.encoder, "stats", None)   # fair_edge_encoder_total{event="read_errors"}, ...
        if encoder_stats is not None:
            metrics.watch("encoder", encoder_stats, gauges=("count", "position_epoch"))
        if line.handshake is not None and not cfg.cameras:   # several cameras: cell.watch_cell, with its fanout's
            metrics.watch("handshake", line.handshake.stats, gauges=HANDSHAKE_GAUGES)
        line.callbacks.append(metrics.on_verdict)
        line.metrics = metrics
    return line


def open_console(cfg: StationConfig, bundle: Bundle | FusedBundle, faults: FaultBoard | None,
                 stack: contextlib.ExitStack, metrics: Metrics | None = None,
                 export_reviewed: Callable[[Path, Path], dict] | None = None,
                 calibration: Threshold | None = None, links: StationLinks | None = None,
                 calibrations: dict[str, Threshold | None] | None = None) -> StationConsole:
    """The console's feed, actions and drift watch (always), and its web server when ``console.enabled``
    (started here, closed by ``stack``). The console gets the station's bundle loader and station file
    loader, and ``export_reviewed`` (the training room's, handed in by the app) through ``StationLinks``.
    calibration: the calibration of the station's score (``DecisionThreshold.calibration``: with an ROI, of
    max(map x ROI)); its distribution feeds the drift watch and threshold tuning. links: what the console
    calls (default: one camera's loaders, as above; a station of several cameras hands in its own).
    calibrations: a station of several cameras: camera -> its score's calibration (``CellModels.calibrations``),
    one drift watch per camera; the ``drift`` metrics are then the worst camera's and ``drift_camera`` each camera's."""
    from fair_edge.console.actions import StationLinks
    from fair_edge.console.station_hook import StationConsole

    if links is None:
        links = StationLinks(load_model=functools.partial(load_change, backend=cfg.backend, roi_path=cfg.roi,
                                                          regions=cfg.regions),
                             load_station=load_station, export_reviewed=export_reviewed)
    console = stack.enter_context(StationConsole(cfg, bundle, faults.channel("drift") if faults else None, links,
                                                 calibration=calibration, calibrations=calibrations))
    if metrics is not None:
        metrics.watch("drift", console.drift_metrics, gauges=("psi", "alarm", "parts"))
        if calibrations is not None:   # several cameras: each camera's own, fair_edge_drift_camera_psi{camera}
            metrics.watch_by("drift_camera", "camera", console.camera_drift_metrics)
    return console


_SWITCH_LOCK = threading.Lock()
_SWITCH_RUNS: list[float] = []   # the interval found by the first of the stations running now in this process


@contextlib.contextmanager
def station_switch_interval(seconds: float = SWITCH_INTERVAL_S) -> Iterator[None]:
    """Shorten the interpreter's GIL switch interval (``sys.setswitchinterval``) to ``seconds`` while the block runs
    (never lengthen it), then restore the one found: a station run inside another program (tests) leaves it as it
    found it. Stations overlapping in one process count as one: the first to start sets it, the last to end restores
    the interval the first found (the first to end left the other at 5 ms, the last left 0.5 ms for good). At
    Python's default 5 ms, a reject sink's thread woken for its edge waited up to 5 ms per GIL hand-off behind the
    Python threads of the inspection loop, console and recorder: with two busy threads, 2 of 3 pulses were dequeued
    after their deadline (missed); measured in BENCHMARKS.md ("GIL switch interval")."""
    with _SWITCH_LOCK:
        _SWITCH_RUNS.append(sys.getswitchinterval())
        sys.setswitchinterval(min(_SWITCH_RUNS[0], seconds))
    try:
        yield
    finally:
        with _SWITCH_LOCK:
            found = _SWITCH_RUNS[0]
            _SWITCH_RUNS.pop()
            if not _SWITCH_RUNS:
                sys.setswitchinterval(found)


def raise_open_files_limit(wanted: int = OPEN_FILES) -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit, at most ``wanted``, and return the soft limit now.
    The console shares the station's process: at a soft limit of 1024 (systemd's default) a burst of console
    readers could take the descriptors the camera, the verdict log and the PLC links need. Never lowers it; a
    platform without the ``resource`` module, or a refusal, leaves it as it was (logged at debug)."""
    try:
        import resource
    except ImportError:   # not POSIX
        return -1
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(hard, wanted)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.debug("open-files limit: kept %d (raising it to %d was refused: %s)", soft, target, exc)
            return soft
        log.debug("open-files limit: raised from %d to %d (hard limit %s)", soft, target, hard)
        return target
    return soft


def run_station(cfg: StationConfig, stop: threading.Event, *, max_frames: int | None = None,
                duration_s: float | None = None, on_start: Callable[[str], None] | None = None,
                on_tick: Callable[[Inspector], None] | None = None, source: FrameSource | None = None,
                scorer: FrameScorer | None = None,
                on_console: Callable[[StationConsole], None] | None = None,
                export_reviewed: Callable[[Path, Path], dict] | None = None) -> RunSummary:
    """Run the station until stopped; returns the summary (also written to OUTPUT/summary.json).

    source: a frame source to use instead of ``cfg.camera.source``; scorer: a ``FrameScorer`` to
    use instead of selecting one from ``cfg.backend`` (both are closed by the station); on_console:
    called once with the running ``StationConsole`` (e.g. to wire SIGHUP to ``console.reload_bundle``);
    export_reviewed: the console's dataset export (``training.collect.export_reviewed``, a room above the
    station, so the app hands it in; None: the console's export button answers that it cannot export)."""
    if cfg.bundle is None:
        raise ConfigError("no bundle: set `bundle:` in the station file or pass --bundle (from `fair-edge build`).")
    if source is None:
        check_loop(cfg)   # before the model loads: not an "unknown option" from the camera after it
    check_reject_timing(cfg, timed_source=source is not None or cfg.reject.handshake.enabled
                        or not is_unpaced_replay(cfg))
    # the lock before the model loads and anything opens: a second station here is refused
    with station_lock(cfg), station_switch_interval():
        probe_gpio_lines(cfg)   # a busy GPIO line refuses the start now, not after the model loaded
        bundle = read_bundle(cfg.bundle)  # a fused bundle: several models, one score (fair_edge.runtime.fusion)
        check_applied_threshold(cfg, bundle)   # a threshold applied from the console on another model: refused
        roi = load_roi(cfg.roi, bundle)
        scorer = scorer or open_scorer(bundle, cfg.backend)
        try:
            decided = resolve_threshold(cfg, bundle, scorer.graph_threshold, roi)
        except BaseException:
            close_scorer(scorer)
            raise
        threshold = decided.value
        regions = open_regions(cfg, bundle, scorer.graph_threshold)
        run_id = new_run_id()
        if on_start is not None:
            on_start(f"run {run_id}; backend: {scorer.reason}; threshold {threshold:.5g} ({decided.reason}); "
                     f"camera {redact_url(str(cfg.camera.source))}")   # an RTSP URL's password never shown
        with contextlib.ExitStack() as stack:
            stack.callback(close_scorer, scorer)   # its backend and its pre-processing (a GPU kernel's device memory)
            notifier = stack.enter_context(ServiceNotifier.from_env())  # systemd: READY, WATCHDOG, STATUS, STOPPING
            warn_fused_score(cfg, bool(fused_members(scorer)))
            line = open_line_side(cfg, stack, run_id)
            if regions is not None:
                line.recorder.show_zones(regions.outlines())
            capture = stack.enter_context(open_capture(cfg, source, line.handshake,  # fails fast
                                                       **line.capture_hooks()))
            faults = FaultBoard(line) if line.scheduler is not None or line.handshake is not None else None
            watch = CameraWatch(capture, faults.channel("camera") if faults else None)
            console = open_console(cfg, bundle, faults, stack, line.metrics, export_reviewed, decided.calibration)
            line.callbacks.append(console.observe)
            if regions is not None:
                console.feed.show_zones(regions.outlines())
            if on_start is not None and console.url:
                on_start(f"console: {console.url}")
            if on_start is not None and line.metrics is not None:   # port 0: the one found is named nowhere else
                on_start(f"metrics: {line.metrics.url}")
            inspector = Inspector(capture, scorer, threshold, roi=roi, settings=cfg.batching, on_verdict=line.callbacks,
                                  model=model_id(bundle), regions=regions, grid=decided.grid,
                                  map_area=bundle.map_area)
            inspector.summary.run_id = run_id
            stack.callback(retire_swapped, inspector, scorer)
            console.attach(inspector, capture, line.scheduler, line.recorder, watch)
            console.feed.read_fault_from(line.fault_reason)   # the fault pill: the reason MQTT and STATUS show
            if on_console is not None:
                on_console(console)

            tick = station_tick(line, watch, capture, notifier, console, line.reject_stats, on_tick)
            if line.handshake is not None:
                line.handshake.begin()   # ready rises: the PLC may trigger
            summary = inspector.run(stop, max_frames=max_frames, duration_s=duration_s, on_tick=tick,
                                    on_iteration=notifier.alive, on_stop=line.stopping)
            notifier.stopping(status_line(summary, "stopping", recorder=line.recorder.stats()))
            finish_line(cfg, line, summary, watch.at_stop())
        write_summary(summary, cfg.output)
    return summary


def write_summary(summary: RunSummary, output: Path) -> Path | None:
    """Write ``output/summary.json`` (the folder is made): to a temporary of its own first, then renamed over the old
    file (``disk.write_text_whole``), so a full disk or a read-only folder never leaves a 0-byte or half summary (an
    older one stays whole). A failed write (OSError) is logged naming the path, the error and the fix, and the run
    goes on to its summary table and exit code: the verdict log and the counters do not depend on it. Returns the
    path, None if not written."""
    path = output / "summary.json"
    try:
        output.mkdir(parents=True, exist_ok=True)
        write_text_whole(path, summary.to_json(), "run summary")
    except OSError as exc:
        log.error("summary.json not written to %s: %s; expected a writable folder with free space (the run's "
                  "counters are in the summary printed and, with MQTT, its retained summary): free space on that "
                  "disk or fix the folder's permissions", path, exc)
        return None
    return path


def retire_swapped(inspector: Inspector, loaded: FrameScorer) -> None:
    """At the station's exit: retire the scorer the loop ran last when a hot swap put it there (``loaded``, the one
    the station opened, closes on its own)."""
    if inspector.scorer is not loaded:
        close_scorer(inspector.scorer)


def station_tick(line: LineSide, watch: Callable[[Inspector], str], capture, notifier: ServiceNotifier,
                 console: StationConsole, rejects: Callable[[], dict],
                 on_tick: Callable[[Inspector], None] | None) -> Callable[[Inspector], None]:
    """The inspection loop's ~0.5 s tick (``Inspector.run``'s ``on_tick``): the camera state to the fault output and
    MQTT, a status line to systemd (led by the fault output's reason while it is on), the console's tick, the reject
    counters (``rejects()``) into the summary, then the caller's ``on_tick``. capture: what ``stats()`` the dropped
    frames come from (a capture thread or a mux)."""
    def tick(insp: Inspector) -> None:
        camera_reason = watch(insp)
        line.publish_fault(camera_reason)
        notifier.status(status_line(insp.summary, line.fault_reason(camera_reason),
                                    capture.stats().dropped_queue_full,
                                    line.recorder.stats() if line.recorder is not None else None))
        console.tick(insp)
        insp.summary.rejects = rejects()
        if on_tick is not None:
            on_tick(insp)

    return tick


def stop_wait_s(cfg: StationConfig) -> float:
    """How long a stop waits, s, for the parts on the belt to reach the gate and for their pulses to end: the belt's
    drain (``service_unit.belt_drain_ms``, which the unit's TimeoutStopSec is sized from: the parts' travel, in
    encoder mode ``ENCODER_STOP_WAIT_S`` since a stopped belt never brings them, + the widest pulse any reject output
    drives, a sink URL's own ``pulse_ms`` or a lane's included, + ``reject.late_ms``) and 1 s. ``reject.pulse_ms``
    alone cut a wider URL pulse short at the stop."""
    from fair_edge.station.service_unit import belt_drain_ms

    return belt_drain_ms(cfg) / 1000.0 + 1.0


def finish_gate(gate: RejectScheduler, deadline: float) -> None:
    """A stop's wait at one reject gate (the station's, or a lane's), until ``deadline`` (monotonic s: the stop's
    time + ``stop_wait_s``; a cell's lanes: from when the station's own line has finished): the parts on the belt reach the gate (``wait_idle``), those that did not are abandoned
    (``abandon_pending``: counted, one gate row each, before a summary takes the counters), then the pulses handed
    to its sinks end (``drain_sinks``, at least ``STOP_DRAIN_MIN_S``), so the station does not close an output
    mid-pulse."""
    gate.wait_idle(timeout_s=max(0.0, deadline - time.monotonic()))
    gate.abandon_pending()
    gate.drain_sinks(timeout_s=max(STOP_DRAIN_MIN_S, deadline - time.monotonic()))


def finish_line(cfg: StationConfig, line: LineSide, summary: RunSummary, camera_state: str,
                publish: bool = True) -> None:
    """After inspection stopped: note a camera fault, let parts already on the belt reach the gate and their pulses
    end (``finish_gate``, ``stop_wait_s``: they are decided and pulsed there; those that do not within their travel
    time are abandoned: counted, one gate row each), write the log, and fill the summary's line counters. The log:
    NG images still queued are saved for at most ``CLOSE_IMAGES_S``, then rows only (images counted ``images_skipped``);
    ``summary.recorder`` is taken now for the MQTT summary and again when the recorder has closed (its
    final counters, after the last row: the ones summary.json gets). camera_state: ``CameraWatch.at_stop()``, a
    camera gone or still down at the stop ('' when it was delivering): the run's fault unless it has one.
    publish: False leaves the MQTT summary to the caller (``publish_summary``), which fills more counters first (a
    cell's cameras, parts and lanes)."""
    if not summary.fault and camera_state:
        summary.fault = camera_state
    if line.handshake is not None:
        line.handshake.finish(summary.fault)   # ready drops; parts left without a result answered 3, all acked
    if line.scheduler is not None:
        if summary.fault:
            line.scheduler.fault(True, summary.fault)
        finish_gate(line.scheduler, time.monotonic() + stop_wait_s(cfg))
    from fair_edge.line.recorder import CLOSE_IMAGES_S

    if not line.recorder.flush(timeout=CLOSE_IMAGES_S):
        line.recorder.stop_images(f"the run ended with NG images unsaved after {CLOSE_IMAGES_S:g} s")
        line.recorder.flush(timeout=1.0)   # the rows left: quick without their images; close() waits longer
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
