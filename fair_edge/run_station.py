"""Wire a station together from its settings: bundle, backend, camera, recorder, rejects, metrics.

``run_station`` owns every resource it opens and closes them all (also on errors and signals);
the summary is written to ``OUTPUT/summary.json``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from fair_edge.runtime.backends import select_backend
from fair_edge.cameras import CaptureSettings, CaptureThread, parse_source
from fair_edge.cameras.capture import CaptureState
from fair_edge.errors import ConfigError
from fair_edge.inspector import Inspector, RunSummary
from fair_edge.station import StationConfig

log = logging.getLogger(__name__)


def load_roi(path: Path | None, size: int) -> np.ndarray | None:
    """Region-of-interest mask image -> (size, size) float32 weights (nonzero pixels = inspected)."""
    if path is None:
        return None
    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE) if Path(path).is_file() else None
    if mask is None:
        raise ConfigError(f"decision.roi: {path} is missing or not an image; give a black/white mask image.")
    roi = cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST) > 0
    if not roi.any():
        raise ConfigError(f"decision.roi: {path} is all black, so nothing would be inspected.")
    return roi.astype(np.float32)


def camera_options(cfg: StationConfig) -> dict:
    """Options for the frame source: only those the station file set (sources refuse unknown ones)."""
    opts: dict = {}
    if cfg.camera.fps is not None:
        opts["fps"] = cfg.camera.fps
    if cfg.camera.loop:
        opts["loop"] = True
    return opts


def camera_fault(stats) -> str:
    """Why the camera cannot deliver frames ('' when it can, was stopped, or a replay reached its end)."""
    if stats.state is CaptureState.RECONNECTING:
        return "camera reconnecting"
    if stats.state is CaptureState.ENDED and not stats.end_reason.startswith(("source ended", "stop() called")):
        return f"camera gone: {stats.end_reason}"
    return ""


class CameraWatch:
    """Holds the reject scheduler's fault output on while the camera cannot deliver frames.

    Called from the inspection loop's tick (every ~0.5 s); sets the output only when the state changes.
    """

    def __init__(self, capture, scheduler) -> None:
        self.capture, self.scheduler, self.reason = capture, scheduler, ""

    def __call__(self, _inspector=None) -> str:
        reason = camera_fault(self.capture.stats())
        if reason != self.reason:
            if reason:
                log.error("station cannot inspect: %s", reason)
            elif self.reason:
                log.warning("camera back: inspecting again")
            if self.scheduler is not None:
                self.scheduler.fault(bool(reason), reason)
            self.reason = reason
        return reason


def resolve_threshold(cfg: StationConfig, bundle) -> float:
    if cfg.threshold is not None:
        return cfg.threshold
    if bundle.threshold is None:
        raise ConfigError(
            f"bundle {bundle.root} has no calibrated threshold; set decision.threshold in the station file, "
            "pass --threshold, or rebuild with `fair-edge build --calib NORMAL_IMAGES`."
        )
    return bundle.threshold.value


def run_station(cfg: StationConfig, stop: threading.Event, *, max_frames: int | None = None,
                duration_s: float | None = None, on_start: Callable[[str], None] | None = None,
                on_tick: Callable[[Inspector], None] | None = None) -> RunSummary:
    """Run the station until stopped; returns the summary."""
    from fair_edge.export.bundle import load_bundle
    from fair_edge.fusion import FusedChoice, is_fused, load_fused_bundle
    from fair_edge.line.metrics import Metrics
    from fair_edge.line.recorder import Recorder
    from fair_edge.line.scheduler import RejectScheduler

    if cfg.bundle is None:
        raise ConfigError("no bundle: set `bundle:` in the station file or pass --bundle (from `fair-edge build`).")
    fused = is_fused(cfg.bundle)  # several models, one fused score (fair_edge.fusion)
    bundle = load_fused_bundle(cfg.bundle) if fused else load_bundle(cfg.bundle)
    threshold = resolve_threshold(cfg, bundle)
    roi = load_roi(cfg.roi, bundle.image_size)
    choice = FusedChoice(bundle, cfg.backend) if fused else select_backend(bundle, cfg.backend)
    if on_start is not None:
        on_start(f"backend: {choice.reason}; threshold {threshold:.5g}; camera {cfg.camera.source}")
    capture_settings = CaptureSettings(queue_size=cfg.camera.queue_size, full_policy=cfg.camera.full_policy)
    with contextlib.ExitStack() as stack:
        stack.callback(choice.backend.close)
        capture = stack.enter_context(CaptureThread(parse_source(cfg.camera.source, **camera_options(cfg)),
                                                    capture_settings))  # __enter__ opens it: fails fast
        recorder = stack.enter_context(Recorder(cfg.record))
        callbacks = [recorder.record]
        scheduler = None
        if cfg.reject.sinks or cfg.reject.fault_sinks:
            scheduler = stack.enter_context(RejectScheduler(cfg.reject))
            callbacks.append(lambda frame, verdict, amap: scheduler.submit(verdict))
        if cfg.metrics.enabled:
            metrics = stack.enter_context(Metrics(cfg.metrics).start())
            metrics.watch("recorder", recorder.stats)
            if scheduler is not None:
                metrics.watch("reject", scheduler.stats)
            callbacks.append(lambda frame, verdict, amap: metrics.observe(verdict))
        watch = CameraWatch(capture, scheduler)

        def tick(inspector: Inspector) -> None:
            watch(inspector)
            if on_tick is not None:
                on_tick(inspector)

        inspector = Inspector(capture, choice, threshold, roi=roi, settings=cfg.batching, on_verdict=callbacks)
        summary = inspector.run(stop, max_frames=max_frames, duration_s=duration_s, on_tick=tick)
        camera_state = watch()
        if not summary.fault and camera_state.startswith("camera gone"):
            summary.fault = camera_state
        if scheduler is not None:
            if summary.fault:
                scheduler.fault(True, summary.fault)
            # parts already inspected are still on the belt: let their rejects fire before closing
            travel_s = (cfg.reject.delay_ms + cfg.reject.pulse_ms + cfg.reject.late_ms) / 1000.0
            scheduler.wait_idle(timeout_s=travel_s + 1.0)
        recorder.flush()
        extra = {"recorder": recorder.stats(), "reject": scheduler.stats() if scheduler else None}
    cfg.output.mkdir(parents=True, exist_ok=True)
    (cfg.output / "summary.json").write_text(json.dumps(dict(summary.to_dict(), **extra), indent=2, default=str) + "\n")
    return summary
