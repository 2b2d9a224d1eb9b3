"""The station's camera: its capture thread made from the settings (``open_capture``; ``check_loop`` and
``is_unpaced_replay`` for a replayed folder or video) and the watch that holds the fault output on while the camera
cannot deliver frames (``CameraWatch``, on the inspection loop's ~0.5 s tick, beside the frame path;
``camera_fault`` says why in one line).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Callable

from fair_edge.cameras import CaptureSettings, CaptureThread, parse_source
from fair_edge.cameras.base import CaptureState
from fair_edge.cameras.opencv import redact_url
from fair_edge.cameras.replay import REPLAY_SOURCES
from fair_edge.errors import ConfigError
from fair_edge.station.config import AUTO_POLICY, StationConfig

if TYPE_CHECKING:
    from fair_edge.cameras import FrameSource
    from fair_edge.line.handshake import Handshake
    from fair_edge.records import Frame
    from fair_edge.station.faults import FaultChannel
    from fair_edge.station.inspector import Inspector

# the station's logger since these lines were written in station/run.py: journal filters and tests select it by name
log = logging.getLogger("fair_edge.station.run")

CAUSE_CHARS = 200   # the most characters of a reconnecting camera's cause in its fault reason (camera_fault)


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
    opts = cfg.camera.source_options()
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
