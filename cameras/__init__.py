"""Frame sources for fair-edge: cameras, replays and a synthetic line, plus the capture thread.

The inspection loop needs three names::

    from fair_edge.cameras import open_source, CaptureThread, CaptureSettings

    with open_source(spec) as src, CaptureThread(src, CaptureSettings()) as cap:
        for frame in cap:   # Frame(seq, t_capture, image (H, W, 3) uint8 BGR, source)
            ...
        print(cap.stats())
"""

from .base import CaptureSettings, CaptureState, CaptureStats, EndOfStream, FrameMissed, FrameSource
from .capture import FULL_POLICIES, CaptureThread, SourceBase, check_image
from .genicam import GenICamSource
from .gstreamer import GStreamerSource, gstreamer_available, jetson_csi_pipeline
from .opencv import OpenCVSource
from .registry import SOURCES, open_source, parse_source
from .replay import FolderReplaySource, VideoReplaySource
from .synthetic import FAULTS, LineSource

__all__ = [
    "FAULTS", "FULL_POLICIES", "SOURCES",
    "CaptureSettings", "CaptureState", "CaptureStats", "CaptureThread",
    "EndOfStream", "FolderReplaySource", "FrameMissed", "FrameSource", "GStreamerSource",
    "GenICamSource", "LineSource", "OpenCVSource", "SourceBase", "VideoReplaySource",
    "check_image", "gstreamer_available", "jetson_csi_pipeline", "open_source", "parse_source",
]
