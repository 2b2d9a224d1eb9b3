"""GStreamer pipelines through OpenCV (``cv2.CAP_GSTREAMER``), and the Jetson CSI pipeline.

The pipeline must end in an ``appsink`` that receives ``video/x-raw, format=BGR`` so OpenCV
hands over (H, W, 3) uint8 BGR frames. The opencv-python(-headless) wheels on PyPI are built
*without* GStreamer; on a Jetson use JetPack's OpenCV (``apt install python3-opencv``) or a
build with ``-DWITH_GSTREAMER=ON``.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from fractions import Fraction

import cv2
import numpy as np

from fair_edge.errors import CameraError, ConfigError
from fair_edge.fields import is_int, is_number, require

from .base import READ_SPAN_S
from .opencv import OpenCVSource

log = logging.getLogger(__name__)

# ``nvvidconv flip-method`` values as NVIDIA's element enumerates them (GstNvVideoFlipMethod, ``gst-inspect-1.0
# nvvidconv``): not GStreamer's ``videoflip`` order (there 1 is clockwise and 5 a vertical flip)
FLIP_METHODS = {
    0: "none", 1: "rotate 90 counter-clockwise", 2: "rotate 180", 3: "rotate 90 clockwise",
    4: "flip horizontal", 5: "flip upper-right diagonal", 6: "flip vertical",
    7: "flip upper-left diagonal",
}
TURNING_FLIPS = (1, 3, 5, 7)   # the two 90-degree turns and the two transposes: a W x H image comes out H x W
# first elements of a pipeline that streams from the network: a camera that streams whether or not a part passes,
# so a pipeline silent for READ_SPAN_S has lost it (a local or triggered source may wait minutes for a part)
NETWORK_SOURCES = ("rtspsrc", "rtspsrc2", "souphttpsrc", "udpsrc", "tcpclientsrc", "rtmpsrc", "rtmp2src", "srtsrc",
                   "srtclientsrc", "ristsrc")
# a URI bin's (uridecodebin, urisourcebin, nvurisrcbin, playbin) network URI: rtsp, rtspt (TCP), rtsps, rtmp, http...
NETWORK_URI = re.compile(r"\buri\s*=\s*[\"']?(rtsp[a-z]?|rtmp[a-z]?|https?|udp|rtp|srt|rist)://", re.IGNORECASE)
# how long the first frame of a network pipeline may take once the timeouts' set has restarted it (a new RTSP
# session, rtspsrc's 2 s jitter buffer, the wait for a key frame), seconds: read after read of READ_SPAN_S
FIRST_FRAME_S = 10.0


def gstreamer_available() -> bool:
    """True if the imported OpenCV was built with the GStreamer video I/O backend."""
    match = re.search(r"^\s*GStreamer:\s*(\S+)", cv2.getBuildInformation(), re.MULTILINE)
    return bool(match) and match.group(1).upper().startswith("YES")


def _positive_int(value: object, field: str) -> int:
    require(is_int(value) and value > 0, f"jetson_csi_pipeline {field}", "an integer > 0", value)
    return value


def _framerate(fps: float) -> str:
    """30 -> '30/1', 29.97 -> '30000/1001' (GStreamer fraction)."""
    require(is_number(fps) and fps > 0, "jetson_csi_pipeline fps", "a number > 0", fps)
    ntsc = round(fps * 1.001)  # 29.97 / 59.94 are the NTSC rates N * 1000 / 1001
    if not float(fps).is_integer() and abs(fps - ntsc / 1.001) < 0.005:
        return f"{ntsc * 1000}/1001"
    frac = Fraction(fps).limit_denominator(1000)
    return f"{frac.numerator}/{frac.denominator}"


def jetson_csi_pipeline(sensor_id: int = 0, width: int = 1920, height: int = 1080, fps: float = 30,
                        flip: int = 0, out_width: int | None = None, out_height: int | None = None) -> str:
    """The GStreamer pipeline for a Jetson CSI camera (libargus) delivering BGR to OpenCV.

    sensor_id: CSI port (``nvarguscamerasrc sensor-id``). width, height, fps: sensor mode,
    pixels and frames per second. flip: ``nvvidconv flip-method`` 0..7 (``FLIP_METHODS``; 0 = none, 2 = 180 deg).
    out_width, out_height: size of the frames delivered to the app, pixels, after the flip (scaled on the VIC);
    default = the sensor size, turned for a flip that turns the image (``TURNING_FLIPS``: height x width).
    ``appsink drop=1 max-buffers=1``: the sink keeps only the newest frame (lowest latency).
    """
    if isinstance(sensor_id, bool) or not isinstance(sensor_id, int) or sensor_id < 0:
        raise ConfigError(f"jetson_csi_pipeline sensor_id: expected an integer >= 0, found {sensor_id!r}")
    if not is_int(flip) or flip not in FLIP_METHODS:
        raise ConfigError(f"jetson_csi_pipeline flip: expected one of {FLIP_METHODS}, found {flip!r}")
    width, height = _positive_int(width, "width"), _positive_int(height, "height")
    turned_w, turned_h = (height, width) if flip in TURNING_FLIPS else (width, height)
    out_w = turned_w if out_width is None else _positive_int(out_width, "out_width")
    out_h = turned_h if out_height is None else _positive_int(out_height, "out_height")
    return (
        f"nvarguscamerasrc sensor-id={sensor_id} ! "
        f"video/x-raw(memory:NVMM), width={width}, height={height}, "
        f"framerate={_framerate(fps)}, format=NV12 ! "
        f"nvvidconv flip-method={flip} ! "
        f"video/x-raw, width={out_w}, height={out_h}, format=BGRx ! "
        "videoconvert ! video/x-raw, format=BGR ! "
        "appsink drop=1 max-buffers=1"
    )


def streams_from_network(pipeline: str) -> bool:
    """Whether ``pipeline`` (gst-launch syntax) begins with a network source: an element of ``NETWORK_SOURCES``,
    or a URI bin (``uridecodebin``, ``urisourcebin``, ``nvurisrcbin``, ``playbin``) given a network URI
    (``NETWORK_URI``)."""
    first = pipeline.split("!", 1)[0].split() or [""]
    element = first[0]
    uri_bin = "uri" in element or element.startswith("playbin")
    return element in NETWORK_SOURCES or (uri_bin and bool(NETWORK_URI.search(" ".join(first[1:]))))


class GStreamerSource(OpenCVSource):
    """Frames from a GStreamer pipeline string ending in ``appsink``.

    pipeline: gst-launch syntax, e.g. ``jetson_csi_pipeline()``.
    fps: the pipeline's frame rate if known (used for loss estimates), frames per second.
    Frames: (H, W, 3) uint8 BGR.

    A pipeline that streams from the network (``streams_from_network``: ``rtspsrc``, ``souphttpsrc``, ... or a
    ``uridecodebin`` of such a URI) has its waits bounded as an ``opencv:`` network stream's (``_bound_waits``): a
    read waits ``base.READ_SPAN_S`` (2 s) for a frame, so a network camera gone silent is a ``FrameMissed`` and then
    a reconnect, which the station's fault output shows, and a stop is not held; a start of the pipeline waits
    ``open_timeout_s``. Where this OpenCV's GStreamer backend has no read timeout, the open says so (a silent
    pipeline then holds the reader: no reconnect, no fault). Other pipelines keep OpenCV's waits: a CSI sensor
    (Argus restarts a pipeline stopped to take a property slowly, and ends it with an error, not silence, when its
    daemon dies) or a triggered camera, which may rightly deliver nothing for minutes between parts.
    """

    def __init__(self, pipeline: str, *, fps: float | None = None, name: str | None = None) -> None:
        if not isinstance(pipeline, str) or "appsink" not in pipeline:
            raise ConfigError(
                "GStreamer pipeline: expected a gst-launch string ending in "
                f"'video/x-raw, format=BGR ! appsink', found {pipeline!r}"
            )
        # the first element alone (its location may hold a password)
        first = (pipeline.split("!", 1)[0].split() or ["pipeline"])[0]
        super().__init__(pipeline, api=cv2.CAP_GSTREAMER, fps=fps, kind="gstreamer",
                         name=name or f"gstreamer:{first}")
        self._waits_bounded = False   # the open's timeouts were set (``_bound_waits``): the pipeline restarts
        self._interrupted = threading.Event()   # the capture is stopping: a slow first frame is not waited for
        self._clock = time.monotonic

    def interrupt(self) -> None:
        """End the open's wait for a network stream's first frame (capture is stopping) after the read in progress:
        ``_first_read`` repeats no read once this is set, until the pipeline is released."""
        self._interrupted.set()

    def _connect(self) -> tuple[np.ndarray, str]:
        if not gstreamer_available():
            raise CameraError(
                f"cannot open {self.name}: this OpenCV ({cv2.__version__}) was built without GStreamer "
                "(the PyPI opencv-python wheels are); on a Jetson use JetPack's OpenCV "
                "(`sudo apt install python3-opencv`, in a venv created with --system-site-packages, "
                "and uninstall opencv-python-headless there) or build OpenCV with -DWITH_GSTREAMER=ON"
            )
        return super()._connect()

    def _create(self) -> cv2.VideoCapture:
        """The pipeline's capture, opened, with its waits bounded when it streams from the network."""
        cap = super()._create()
        self._waits_bounded = cap.isOpened() and streams_from_network(str(self.target)) and self._bound_waits(cap)
        return cap

    def _release(self) -> None:
        """Release the pipeline; the next open is not interrupted by a stop that came before this (cleared here,
        not at the open: a stop between a reconnect's back-off and its open must still end the first-frame wait)."""
        self._interrupted.clear()
        super()._release()

    def _first_read(self, cap: cv2.VideoCapture) -> tuple[bool, np.ndarray | None]:
        """The open's first read. Once ``_bound_waits`` has set the timeouts, OpenCV has stopped the pipeline and
        this read starts it again with only ``READ_SPAN_S`` for a frame: a network stream's first frame (a new RTSP
        session, the jitter buffer, a key frame) may take longer, so reads that time out are repeated for up to
        ``FIRST_FRAME_S``; a read that fails sooner (an error or end of stream, not a wait) is not, nor one after
        ``interrupt`` (a stop)."""
        until = self._clock() + FIRST_FRAME_S
        while True:
            began = self._clock()
            ok, image = cap.read()
            now = self._clock()
            timed_out = now - began >= READ_SPAN_S / 2
            if ((ok and image is not None) or not self._waits_bounded or not timed_out or now >= until
                    or self._interrupted.is_set()):
                return ok, image

    def _bound_waits(self, cap: cv2.VideoCapture) -> bool:
        """Set OpenCV's GStreamer open and read timeouts (``open_timeout_s``, ``READ_SPAN_S``) on ``cap``.

        OpenCV's GStreamer backend applies them after the pipeline has started, whether given at open or set (it
        stops the pipeline; the first read starts it again: ``_first_read``), so they are set here, once open, where
        the backend has them: it reports its read timeout (30 s by default); one without (OpenCV's before it took
        them, or GStreamer < 1.10) reports 0 and would refuse them as open parameters. Then a warning names the risk.
        Returns whether a timeout was set."""
        if cap.get(cv2.CAP_PROP_READ_TIMEOUT_MSEC) <= 0:
            log.warning("camera %s: this OpenCV (%s) has no read timeout for GStreamer pipelines: if the pipeline "
                        "stops delivering frames, read() waits for ever, so the camera is not reconnected, the "
                        "station's fault output stays off and a stop leaves the reader behind. Use an OpenCV whose "
                        "GStreamer backend has one: a GStreamer capture's cap.get(cv2.CAP_PROP_READ_TIMEOUT_MSEC) "
                        "gives 30000, not 0 (docs/jetson.md, section 3)", self.name, cv2.__version__)
            return False
        bounded = False
        for prop, seconds in ((cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, self.open_timeout_s),
                              (cv2.CAP_PROP_READ_TIMEOUT_MSEC, READ_SPAN_S)):
            if cap.set(prop, seconds * 1000):
                bounded = True
            else:
                log.warning("camera %s: OpenCV's GStreamer backend refused timeout property %d = %g ms; its "
                            "default stays (30 s)", self.name, prop, seconds * 1000)
        return bounded
