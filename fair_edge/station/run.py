"""Wire a station together from its settings: bundle and backend (opened by ``station.bundles``), camera
(``station.camera``), recorder, rejects, metrics (``station.line_side``), console.

``run_station`` owns every resource it opens and closes them all (also on errors and signals);
the summary is written to ``OUTPUT/summary.json`` (``write_summary``: a failed write is logged, never fatal).
One station per output folder and per PLC output: it runs under ``station.locks.station_lock`` from before the model
loads until the summary is written, and ``probe_gpio_lines`` refuses a busy GPIO line before the model loads (both
in ``station.locks``). Every ~0.5 s the inspection loop's tick (``station_tick``) takes the camera state, the fault
output, systemd's status and the console's tick, beside the frame path.
``exit_code(summary)`` is what `fair-edge run` returns: 0 fine, 3 station fault (also a camera gone, or still down
when the run stopped), 4 rejects were due but a reject sink delivered none of them.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from fair_edge.runtime.backends import FrameScorer
from fair_edge.cameras.opencv import redact_url
from fair_edge.errors import ConfigError
from fair_edge.line.handshake.settings import fused_score_warning
from fair_edge.station.faults import FaultBoard
from fair_edge.runtime.backends import close_scorer
from fair_edge.runtime.hotswap import fused_members, model_id
from fair_edge.station.inspector import Inspector, RunSummary
from fair_edge.disk import write_text_whole
from fair_edge.records import new_run_id
from fair_edge.station.notify import ServiceNotifier, status_line
from fair_edge.station.bundles import (check_applied_threshold, load_change, load_roi, open_regions, open_scorer,
                                      read_bundle, resolve_threshold)
from fair_edge.station.camera import CameraWatch, check_loop, is_unpaced_replay, open_capture
from fair_edge.station.config import StationConfig, load_station
from fair_edge.station.line_side import LineSide, finish_line, open_line_side
from fair_edge.station.stop_deadline import StopDeadline
from fair_edge.station.locks import probe_gpio_lines, station_lock

if TYPE_CHECKING:
    from fair_edge.calibration.threshold import Threshold
    from fair_edge.cameras import FrameSource
    from fair_edge.console.actions import StationLinks
    from fair_edge.console.station_hook import StationConsole
    from fair_edge.export.bundle import Bundle
    from fair_edge.line.metrics import Metrics
    from fair_edge.runtime.fusion import FusedBundle

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAULT = 3                 # the station faulted: backend kept failing, camera gone for good
EXIT_REJECTS_UNDELIVERED = 4   # rejects were due, and a reject sink delivered none of them
OPEN_FILES = 65536   # the soft open-files limit a station raises itself to (its hard limit where that is lower)
SWITCH_INTERVAL_S = 0.0005   # the GIL switch interval while a station runs, s (Python's default: 0.005; BENCHMARKS.md)


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


def check_reject_timing(cfg: StationConfig, timed_source: bool) -> None:
    """Refuse a reject gate the line's time cannot place. Each part is due at the gate
    ``t_capture + reject.delay_ms`` (or after ``encoder_distance`` counts): that needs a timed line
    (a camera, or a replay with ``camera.fps``) and the real travel time. ``delay_ms: 0`` (the
    default) would put the gate at the camera, where no verdict can be in time: every part would be
    rejected fail-safe. A gate with ``reject.fault_sinks`` and no reject output (a fault lamp) decides every part
    too (an NG part passes, one not inspected latches the fault output) and is held to the same: at ``delay_ms: 0``
    every part would pass uninspected. A gate that decides no part (``RejectSettings.decides_parts``: a fault lamp
    on a handshake station, the PLC rejecting from the handshake's results) is not checked. timed_source: False for
    a folder or video read without fps."""
    if not cfg.reject.decides_parts:
        return
    outputs = ("the reject sinks (--reject / reject.sinks)" if cfg.reject.sinks
               else "reject.fault_sinks (no reject output: the gate only decides parts and lights the fault output)")
    at_camera = ("every part would be rejected fail-safe" if cfg.reject.sinks
                 else "every part would pass uninspected and latch the fault output")
    if not timed_source:
        raise ConfigError(f"camera.fps: a folder or video replayed without fps ({cfg.camera.source}) is not a "
                          "timed line (frames are read long before they can be inspected), so parts cannot "
                          "be placed at the reject gate; give the line's rate (--fps / camera.fps), or drop "
                          f"{outputs}.")
    if cfg.reject.encoder_distance is None and cfg.reject.delay_ms <= 0:
        raise ConfigError("reject.delay_ms: expected the camera -> reject gate travel time in ms (> 0), found "
                          f"{cfg.reject.delay_ms:g} (a gate at the camera: no verdict is ever in time, {at_camera}); "
                          "measure it on the line and set --reject-delay-ms / reject.delay_ms, or use "
                          "reject.encoder_distance.")


def warn_fused_score(cfg: StationConfig, fused: bool) -> str:
    """Log at start, as a warning, that a fused model's scores (``fused``: the station's model, or a camera's, is
    fused) would read 0 on the handshake's Modbus score register (``handshake.settings.fused_score_warning``, with
    the fix); returns it ("" when they would not)."""
    note = fused_score_warning(cfg.reject.handshake, fused)
    if note:
        log.warning("%s", note)
    return note


def open_console(cfg: StationConfig, bundle: Bundle | FusedBundle, faults: FaultBoard | None,
                 stack: contextlib.ExitStack, metrics: Metrics | None = None,
                 export_reviewed: Callable[[Path, Path], dict] | None = None,
                 calibration: Threshold | None = None, links: StationLinks | None = None,
                 calibrations: dict[str, Threshold | None] | None = None,
                 stop: StopDeadline | None = None) -> StationConsole:
    """The console's feed, actions and drift watch (always), and its web server when ``console.enabled``
    (started here, closed by ``stack``). The console gets the station's bundle loader and station file
    loader, and ``export_reviewed`` (the training room's, handed in by the app) through ``StationLinks``.
    calibration: the calibration of the station's score (``DecisionThreshold.calibration``: with an ROI, of
    max(map x ROI)); its distribution feeds the drift watch and threshold tuning. links: what the console
    calls (default: one camera's loaders, as above; a station of several cameras hands in its own).
    calibrations: a station of several cameras: camera -> its score's calibration (``CellModels.calibrations``),
    one drift watch per camera; the ``drift`` metrics are then the worst camera's and ``drift_camera`` each camera's.
    stop: the station's stop deadline (``LineSide.stop``): the console's close (up to ``CLOSE_LOAD_S`` for a bundle
    loading) is held apart from it (``StopDeadline.apart``), so the line side's closes after it keep their time."""
    from fair_edge.console.actions import StationLinks
    from fair_edge.console.settings import CLOSE_LOAD_S
    from fair_edge.console.station_hook import StationConsole

    if links is None:
        links = StationLinks(load_model=functools.partial(load_change, backend=cfg.backend, roi_path=cfg.roi,
                                                          regions=cfg.regions),
                             load_station=load_station, export_reviewed=export_reviewed)
    console = StationConsole(cfg, bundle, faults.channel("drift") if faults else None, links,
                             calibration=calibration, calibrations=calibrations).start()
    stack.callback((stop or StopDeadline()).apart, console.close, CLOSE_LOAD_S, "the console's close (a bundle load)")
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
        inspector: Inspector | None = None
        try:
            with contextlib.ExitStack() as stack:
                notifier = stack.enter_context(ServiceNotifier.from_env())  # systemd: READY, WATCHDOG, STATUS, ...
                warn_fused_score(cfg, bool(fused_members(scorer)))
                line = open_line_side(cfg, stack, run_id)
                line.stop.extend = notifier.extend_timeout   # the stop's deadline moved: systemd told
                if regions is not None:
                    line.recorder.show_zones(regions.outlines())
                capture = stack.enter_context(open_capture(cfg, source, line.handshake,  # fails fast
                                                           **line.capture_hooks()))
                faults = FaultBoard(line) if line.scheduler is not None or line.handshake is not None else None
                watch = CameraWatch(capture, faults.channel("camera") if faults else None)
                console = open_console(cfg, bundle, faults, stack, line.metrics, export_reviewed,
                                       decided.calibration, stop=line.stop)
                line.callbacks.append(console.observe)
                if regions is not None:
                    console.feed.show_zones(regions.outlines())
                if on_start is not None and console.url:
                    on_start(f"console: {console.url}")
                if on_start is not None and line.metrics is not None:   # port 0: its port is named nowhere else
                    on_start(f"metrics: {line.metrics.url}")
                inspector = Inspector(capture, scorer, threshold, roi=roi, settings=cfg.batching,
                                      on_verdict=line.callbacks, model=model_id(bundle), regions=regions,
                                      grid=decided.grid, map_area=bundle.map_area)
                inspector.summary.run_id = run_id
                console.attach(inspector, capture, line.scheduler, line.recorder, watch)
                console.feed.read_fault_from(line.fault_reason)   # the fault pill: MQTT's and STATUS's reason
                if line.handshake is not None:   # the PLC pill and handshake card: the live table's counters
                    console.feed.read_handshake_from(line.handshake.stats)
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
        finally:   # after summary.json, which needs nothing of them: a slow teardown is not SIGKILL's cut of the file
            if inspector is not None:
                retire_swapped(inspector, scorer)
            close_scorer(scorer)   # its backend and its pre-processing (TensorRT, a GPU kernel's device memory)
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
