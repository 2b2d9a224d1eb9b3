"""OpenCV ``cv2.VideoCapture`` source: camera index, /dev/videoN, RTSP/HTTP URL, video file.

Opening fails fast: the constructor of the capture must succeed *and* deliver a first
frame, else :class:`~fair_edge.errors.CameraError` names the source and the likely fixes.
A failed read later is a :class:`FrameMissed` (live) or :class:`EndOfStream` (file), never a
substitute frame.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
from collections.abc import Callable

import cv2
import numpy as np

from fair_edge.errors import CameraError, ConfigError
from fair_edge.images import utf8_problem

from .base import READ_SPAN_S, EndOfStream, FrameMissed
from .capture import SourceBase

log = logging.getLogger(__name__)

_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
FFMPEG_KINDS = ("url", "file")   # targets OpenCV decodes with FFmpeg, whose decoders start threads of their own


def thread_shortage() -> str:
    """A clause for an FFmpeg open or first read that failed: "" when this process can start a thread now, else why
    the decoder likely failed and the fix. OpenCV's FFmpeg backend fails a codec's open (EAGAIN) or a frame's
    colour conversion when it cannot start its worker threads (a process or container thread limit reached), and
    says so only on stderr: the open or read just fails, which reads as a damaged file or an unsupported codec.
    Probed by starting one thread that ends at once; called on those failures only, never per frame."""
    probe = threading.Thread(target=lambda: None, name="thread-probe", daemon=True)
    try:
        probe.start()
    except RuntimeError as exc:   # "can't start new thread": the same limit the decoder met
        return (f"; this process cannot start a thread now ({exc}), and OpenCV's FFmpeg decoder needs threads, so "
                "the source is likely fine: raise the thread limit (`ulimit -u`, the service's TasksMax=, a "
                "container's --pids-limit) or stop what holds the threads, then start again")
    probe.join()
    return ""


def classify_target(target: int | str) -> str:
    """What an OpenCV target is: ``index``, ``device``, ``url`` or ``file``."""
    if isinstance(target, int) or str(target).strip().isdigit():
        return "index"
    target = str(target)
    if _URL.match(target):
        return "url"
    if target.startswith("/dev/"):
        return "device"
    return "file"


_AUTHORITY = re.compile(r"://([^/?\s]*)")   # a URL's host part: up to its path, its query or the end of the word


def redact_url(url: str) -> str:
    """``rtsp://user:secret@host/...`` -> ``rtsp://user:***@host/...`` (for logs and errors), for every URL in
    ``url`` (a GStreamer pipeline may hold one). The host part ends at the first '/' or '?' after ``://`` and the
    user info at its LAST '@', as ``urllib.parse.urlsplit`` and FFmpeg read it, so a password holding '@'
    (``admin:Pr0d@2024@host``) is hidden whole; user info without a password (``token@host``) is left as it is."""
    return _AUTHORITY.sub(_hide_password, url)


def _hide_password(match: re.Match) -> str:
    """One ``://HOST_PART`` match -> the same with the password of its ``user:password@`` written ``***``."""
    userinfo, at, hostport = match.group(1).rpartition("@")
    if not at or ":" not in userinfo:
        return match.group(0)
    return f"://{userinfo.split(':', 1)[0]}:***@{hostport}"


def _hint_index(target: str) -> str:
    return (
        f"no camera answered at index {target}. Check it is plugged in and listed by "
        "`v4l2-ctl --list-devices` (or `ls /dev/video*`), try another index, close other programs "
        f"using it, and in Docker pass `--device /dev/video{target}`"
    )


def _hint_device(target: str) -> str:
    if not os.path.exists(target):
        return (f"{target} does not exist: list cameras with `ls /dev/video*` or "
                "`v4l2-ctl --list-devices`; in Docker pass `--device` for it")
    if not os.access(target, os.R_OK | os.W_OK):
        return (f"permission denied on {target}: add the user to group 'video' "
                "(`sudo usermod -aG video $USER`, then log in again)")
    return (f"{target} exists but could not be opened: another program may hold it, or it is the "
            "camera's metadata node (try the neighbouring /dev/videoN)")


def _hint_url(target: str) -> str:
    return (
        f"could not receive from {redact_url(target)}: check address, port, path and credentials "
        "(try it in `ffplay` or VLC), that the camera is reachable from here, and for RTSP try TCP "
        "transport: OPENCV_FFMPEG_CAPTURE_OPTIONS='rtsp_transport;tcp'"
    )


def _hint_file(target: str) -> str:
    if not os.path.isfile(target):
        return f"no such file {target!r}: check the path (relative paths start at {os.getcwd()})"
    return (f"OpenCV could not decode {target!r}: check the file plays elsewhere, or re-encode it "
            "(`ffmpeg -i in.mp4 -c:v mjpeg out.avi`)")


def _hint_gstreamer(target: str) -> str:
    return (
        "the GStreamer pipeline produced no frame: test it with `gst-launch-1.0` (replace appsink by "
        "fakesink), make sure it ends in `video/x-raw, format=BGR ! appsink`, and for Jetson CSI "
        "cameras check the ribbon cable and `sudo systemctl restart nvargus-daemon`"
    )


HINTS: dict[str, Callable[[str], str]] = {
    "index": _hint_index,
    "device": _hint_device,
    "url": _hint_url,
    "file": _hint_file,
    "gstreamer": _hint_gstreamer,
}


def _default_api(kind: str) -> int:
    if kind in ("index", "device") and sys.platform.startswith("linux"):
        return cv2.CAP_V4L2
    return cv2.CAP_ANY


class OpenCVSource(SourceBase):
    """Frames from ``cv2.VideoCapture``.

    target: camera index (``0``), device path (``/dev/video0``), URL (``rtsp://...``) or file; a target that is not
    UTF-8 (a Latin-1 file name) is refused at open as a :class:`CameraError` naming it (OpenCV would crash on it).
    api: OpenCV backend (``cv2.CAP_*``); default V4L2 for local cameras on Linux, else any.
    width, height, fps: requested capture format (the device may choose another; logged).
    buffer_size: driver-side frame buffer; 1 keeps latency low for live inspection.
    open_timeout_s: how long opening a network stream (``url``, FFmpeg backend) may take, seconds: connect, the
    RTSP/HTTP handshake and FFmpeg's probe of its first frames (seconds on a slow H.264 stream). A network stream's
    read waits ``base.READ_SPAN_S`` (2 s, not settable) for a frame, so that a read begun just before
    ``CaptureThread.stop()`` ends within its stop wait; a timed-out read is a ``FrameMissed``, and since OpenCV's
    FFmpeg reader fails every read after it at once, the capture reconnects the stream. A reconnect's open runs in
    the reader thread too: a stop during it gives up after the stop wait, and the reader ends when the open does.
    Frames: (H, W, 3) uint8 BGR as decoded by OpenCV, ``source`` = ``name``.
    """

    def __init__(self, target: int | str, *, api: int | None = None, width: int | None = None,
                 height: int | None = None, fps: float | None = None, buffer_size: int | None = 1,
                 open_timeout_s: float = 5.0, name: str | None = None, kind: str | None = None) -> None:
        super().__init__()
        self.kind = kind or classify_target(target)
        if self.kind not in HINTS:
            raise ConfigError(f"OpenCVSource kind: expected one of {sorted(HINTS)}, found {self.kind!r}")
        self.target: int | str = int(target) if self.kind == "index" else str(target)
        self.api = _default_api(self.kind) if api is None else api
        self.width, self.height, self.fps = width, height, fps
        self.buffer_size = buffer_size
        self.open_timeout_s = open_timeout_s
        self.name = name or (redact_url(self.target) if self.kind == "url" else f"{self.kind}:{self.target}")
        self._cap: cv2.VideoCapture | None = None
        self._fps_seen: float | None = None

    @property
    def nominal_fps(self) -> float | None:
        return self._fps_seen or self.fps

    def _connect(self) -> tuple[np.ndarray, str]:
        problem = "" if self.kind == "index" else utf8_problem(self.target)
        if problem:   # OpenCV crashes the process (segfault) on a name that is not UTF-8
            raise CameraError(f"cannot open the {self.kind} target: {problem}; OpenCV opens a source only by a "
                              "UTF-8 name. Rename the file or its folder to UTF-8 (`convmv -f latin1 -t utf8 "
                              "--notest PATH`), or copy it to a UTF-8 name.")
        cap = self._create()
        self._cap = cap
        if not cap.isOpened():
            raise CameraError(f"cannot open {self.name}: {HINTS[self.kind](str(self.target))}{self._shortage()}")
        self._apply_format(cap)
        ok, image = self._first_read(cap)
        if not ok or image is None:
            raise CameraError(f"opened {self.name} but it delivered no first frame: "
                              f"{HINTS[self.kind](str(self.target))}{self._shortage()}")
        fps = cap.get(cv2.CAP_PROP_FPS)
        self._fps_seen = fps if fps and 0 < fps < 1000 else None
        return image, self.name

    def _first_read(self, cap: cv2.VideoCapture) -> tuple[bool, np.ndarray | None]:
        """The open's first ``cap.read()``: (ok, (H, W, 3) uint8 BGR image or None)."""
        return cap.read()

    def _shortage(self) -> str:
        """``thread_shortage()`` for a target FFmpeg decodes (``FFMPEG_KINDS``), else ""."""
        return thread_shortage() if self.kind in FFMPEG_KINDS else ""

    def _create(self) -> cv2.VideoCapture:
        if self.kind == "url":
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(self.open_timeout_s * 1000),
                      cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(READ_SPAN_S * 1000)]
            return cv2.VideoCapture(self.target, self.api, params)
        return cv2.VideoCapture(self.target, self.api)

    def _apply_format(self, cap: cv2.VideoCapture) -> None:
        if self.kind in ("file", "gstreamer"):
            return  # a file or a pipeline fixes its own format
        wanted = {cv2.CAP_PROP_FRAME_WIDTH: self.width, cv2.CAP_PROP_FRAME_HEIGHT: self.height,
                  cv2.CAP_PROP_FPS: self.fps, cv2.CAP_PROP_BUFFERSIZE: self.buffer_size}
        for prop, value in wanted.items():
            if value is not None and not cap.set(prop, value):
                log.info("camera %s: backend ignored property %d = %s", self.name, prop, value)
        for prop, value in ((cv2.CAP_PROP_FRAME_WIDTH, self.width), (cv2.CAP_PROP_FRAME_HEIGHT, self.height)):
            got = cap.get(prop)
            if value is not None and got and int(got) != int(value):
                log.warning("camera %s: asked for %s = %s, device gives %s", self.name,
                            "width" if prop == cv2.CAP_PROP_FRAME_WIDTH else "height", value, int(got))

    def _grab(self) -> tuple[np.ndarray, str]:
        ok, image = self._cap.read()
        if ok and image is not None:
            return image, self.name
        if self.kind == "file":
            raise EndOfStream(f"{self.name}: end of file")
        raise FrameMissed(f"{self.name}: read() returned no frame")

    def _release(self) -> None:
        cap, self._cap = self._cap, None
        if cap is not None:
            cap.release()

