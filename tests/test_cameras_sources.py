"""OpenCV, GStreamer, GenICam and synthetic sources, and the spec registry."""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time

import cv2
import numpy as np
import pytest

from fair_edge.cameras import (
    EndOfStream,
    FrameSource,
    GenICamSource,
    GStreamerSource,
    LineSource,
    OpenCVSource,
    gstreamer_available,
    jetson_csi_pipeline,
    open_source,
    parse_source,
)
from fair_edge.cameras.base import READ_SPAN_S, CaptureSettings, CaptureState
from fair_edge.cameras.capture import CaptureThread
from fair_edge.cameras.gstreamer import streams_from_network
from fair_edge.errors import CameraError, ConfigError

IMAGES = [np.full((8, 8, 3), i, np.uint8) for i in range(3)]


# ---- OpenCV -------------------------------------------------------------------------
def test_missing_video_file_names_the_file(tmp_path):
    missing = tmp_path / "nope.avi"
    with pytest.raises(CameraError, match="no such file") as info:
        open_source(f"opencv:{missing}")
    assert str(missing) in str(info.value)


def test_missing_device_names_it_and_how_to_list_cameras():
    with pytest.raises(CameraError) as info:
        open_source("/dev/video97")
    msg = str(info.value)
    assert "/dev/video97" in msg and "does not exist" in msg and "v4l2-ctl" in msg


def test_missing_camera_index_suggests_other_indices():
    with pytest.raises(CameraError) as info:
        open_source(97)
    msg = str(info.value)
    assert "index 97" in msg and "another index" in msg


def test_unreachable_rtsp_url_is_redacted_and_suggests_fixes():
    t0 = time.monotonic()
    with pytest.raises(CameraError) as info:
        open_source("rtsp://admin:secret@127.0.0.1:9/stream", open_timeout_s=2)
    msg = str(info.value)
    assert "secret" not in msg and "admin:***@127.0.0.1" in msg
    assert "rtsp_transport;tcp" in msg
    assert time.monotonic() - t0 < 10


class _FrozenMjpegCamera:
    """An HTTP MJPEG camera on 127.0.0.1 that sends ``frames`` JPEG frames, then stops sending with its connection
    open (a network camera that froze): a read after the last frame waits out the source's read timeout."""

    def __init__(self, frames: int) -> None:
        self.frames = frames
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/video.mjpg"
        self.connections: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        with self.listener:
            conn, _ = self.listener.accept()
        self.connections.append(conn)   # kept open: the stream stalls, it does not end
        conn.recv(4096)
        jpeg = cv2.imencode(".jpg", np.full((16, 16, 3), 128, np.uint8))[1].tobytes()
        conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: multipart/x-mixed-replace; boundary=frame\r\n\r\n")
        part = b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n%s\r\n" % (len(jpeg), jpeg)
        conn.sendall(part * self.frames)


def test_a_frozen_network_stream_read_begun_before_stop_ends_within_the_stop_wait(caplog):
    """opencv:'s network read timeout was its open timeout, 5 s: a read of a stream that stopped sending, begun just
    before stop(), outlasted the capture's 3 s stop wait ("reader did not finish", the stream left open on a daemon
    thread). A read now waits READ_SPAN_S, the stop wait's share for a read; the read ends inside stop()'s wait
    (its missed frame is logged before stop() returns), not after it."""
    camera = _FrozenMjpegCamera(frames=4)
    capture = CaptureThread(open_source(camera.url), CaptureSettings(full_policy="block")).start()
    frames = [capture.get(timeout=10) for _ in range(4)]   # the first frame, read at open, is one of the four
    time.sleep(0.2)   # the reader is in its read of a fifth frame, which never comes
    assert capture.stop() is True, caplog.text
    assert "read() returned no frame" in caplog.text and "did not finish" not in caplog.text
    assert [f.seq for f in frames] == [0, 1, 2, 3] and not capture.alive


def test_opencv_source_reads_a_file_then_ends_without_black_frames(tmp_path):
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (16, 16))
    for i in range(3):
        writer.write(np.full((16, 16, 3), 80 * i + 20, np.uint8))
    writer.release()
    with OpenCVSource(str(path)) as src:
        frames = [src.read() for _ in range(3)]
        with pytest.raises(EndOfStream):
            src.read()
    assert src.nominal_fps == pytest.approx(25.0)
    assert all(f.image.mean() > 10 for f in frames)
    src.close()  # second close is safe
    with pytest.raises(CameraError, match="closed source"):
        src.read()


# ---- GStreamer ----------------------------------------------------------------------
def test_jetson_csi_pipeline_default_string():
    assert jetson_csi_pipeline() == (
        "nvarguscamerasrc sensor-id=0 ! "
        "video/x-raw(memory:NVMM), width=1920, height=1080, framerate=30/1, format=NV12 ! "
        "nvvidconv flip-method=0 ! video/x-raw, width=1920, height=1080, format=BGRx ! "
        "videoconvert ! video/x-raw, format=BGR ! appsink drop=1 max-buffers=1"
    )


def test_jetson_csi_pipeline_options():
    p = jetson_csi_pipeline(sensor_id=1, width=1280, height=720, fps=29.97, flip=2,
                            out_width=640, out_height=360)
    assert "sensor-id=1 " in p and "width=1280, height=720, framerate=30000/1001" in p
    assert "flip-method=2 " in p and "width=640, height=360, format=BGRx" in p
    assert p.endswith("appsink drop=1 max-buffers=1")


def _delivered_size(pipeline: str) -> tuple[str, str]:
    """(width, height) of the caps nvvidconv delivers to the app (after its flip)."""
    caps = pipeline.split("nvvidconv", 1)[1].split("format=BGRx", 1)[0]
    return caps.split("width=")[1].split(",")[0], caps.split("height=")[1].split(",")[0]


@pytest.mark.parametrize("flip", range(8))
def test_jetson_csi_pipeline_turning_flips_deliver_height_by_width(flip):
    """nvvidconv flip-method 1 and 3 turn the image 90 degrees and 5 and 7 transpose it (NVIDIA's
    GstNvVideoFlipMethod): a 1920 x 1080 sensor mode comes out 1080 x 1920; forcing 1920 x 1080 caps after the
    flip squeezed the turned image into the wrong shape."""
    pipeline = jetson_csi_pipeline(width=1920, height=1080, flip=flip)
    expected = ("1080", "1920") if flip in (1, 3, 5, 7) else ("1920", "1080")
    assert _delivered_size(pipeline) == expected
    assert "width=1920, height=1080, framerate=" in pipeline   # the sensor mode itself is not turned


def test_jetson_csi_pipeline_explicit_out_size_is_the_size_after_the_flip():
    assert _delivered_size(jetson_csi_pipeline(flip=3, out_width=540, out_height=960)) == ("540", "960")
    assert _delivered_size(jetson_csi_pipeline(flip=1, out_width=600)) == ("600", "1920")


@pytest.mark.parametrize("kwargs, field", [({"flip": 8}, "flip"), ({"flip": 1.0}, "flip"), ({"width": 0}, "width"),
                                           ({"fps": 0}, "fps"), ({"sensor_id": -1}, "sensor_id")])
def test_jetson_csi_pipeline_rejects_bad_values(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        jetson_csi_pipeline(**kwargs)


def test_gstreamer_pipeline_without_appsink_is_refused():
    with pytest.raises(ConfigError, match="appsink"):
        GStreamerSource("videotestsrc ! autovideosink")


def test_csi_and_pipeline_specs_build_gstreamer_sources():
    src = parse_source("csi:1", fps=60, flip=2)
    assert isinstance(src, GStreamerSource) and src.name == "csi:1"
    assert "sensor-id=1 " in src.target and "framerate=60/1" in src.target
    assert src.nominal_fps == 60
    assert isinstance(parse_source("videotestsrc ! videoconvert ! appsink"), GStreamerSource)


@pytest.mark.skipif(gstreamer_available(), reason="this OpenCV has GStreamer")
def test_gstreamer_missing_in_opencv_build_says_how_to_get_it():
    with pytest.raises(CameraError, match="built without GStreamer") as info:
        GStreamerSource("videotestsrc num-buffers=1 ! videoconvert ! appsink").open()
    assert "python3-opencv" in str(info.value)



class _SilentPipeline:
    """A fake ``cv2.VideoCapture`` as OpenCV's GStreamer backend opens a pipeline (``rtspsrc ... ! appsink``) that
    delivers one frame and then nothing (its camera gone): a read waits for the read timeout set on it, then gives
    (False, None) (``gst_app_sink_try_pull_sample``; returned at once here: the waiting is OpenCV's), and without one
    it waits for ever (OpenCV's default 30 s, or none in a backend without it: ``gst_app_sink_pull_sample``), here
    until ``stuck`` is set. ``read_timeout_ms``: what the backend reports before any set (0: it has none)."""

    instances: list[_SilentPipeline] = []
    read_timeout_ms = 30000.0
    stuck = threading.Event()

    def __init__(self, target: str, api: int) -> None:
        assert api == cv2.CAP_GSTREAMER
        self.props = {cv2.CAP_PROP_READ_TIMEOUT_MSEC: self.read_timeout_ms, cv2.CAP_PROP_OPEN_TIMEOUT_MSEC: 30000.0}
        self.sets: list[tuple[int, float]] = []
        self.reads = 0
        self.instances.append(self)

    def isOpened(self) -> bool:
        return True

    def get(self, prop: int) -> float:
        return self.props.get(prop, 0.0)

    def set(self, prop: int, value: float) -> bool:
        self.sets.append((prop, value))
        if not self.props.get(prop):
            return False
        self.props[prop] = float(value)
        return True

    def read(self):
        self.reads += 1
        if self.reads == 1:
            return True, IMAGES[0].copy()
        if self.props[cv2.CAP_PROP_READ_TIMEOUT_MSEC] >= 30000:
            self.stuck.wait()
        return False, None

    def release(self) -> None:
        pass


@pytest.fixture
def silent_pipeline(monkeypatch):
    """GStreamerSource opens ``_SilentPipeline`` (this OpenCV has no GStreamer); a reader left waiting is let go."""
    from fair_edge.cameras import gstreamer

    monkeypatch.setattr(gstreamer, "gstreamer_available", lambda: True)
    monkeypatch.setattr(cv2, "VideoCapture", _SilentPipeline)
    _SilentPipeline.instances, _SilentPipeline.stuck = [], threading.Event()
    yield _SilentPipeline
    _SilentPipeline.stuck.set()


RTSP_PIPELINE = "rtspsrc location=rtsp://cam/s ! decodebin ! videoconvert ! video/x-raw, format=BGR ! appsink"


def test_a_silent_gstreamer_pipeline_is_reconnected_and_its_stop_is_not_held(silent_pipeline):
    """A gst: pipeline's read had OpenCV's GStreamer default wait (30 s, or for ever in a backend without a read
    timeout): a pipeline gone silent held the reader in read(), the capture stayed 'running' (no reconnect, no fault
    output) and a stop gave up after its 3 s wait. Its waits are now set as an opencv: network stream's."""
    capture = CaptureThread(GStreamerSource(RTSP_PIPELINE), CaptureSettings(backoff_initial_s=5)).start()
    capture.get(timeout=5)
    deadline = time.monotonic() + 5
    while capture.stats().state is CaptureState.RUNNING and time.monotonic() < deadline:
        time.sleep(0.02)
    assert capture.stats().state is CaptureState.RECONNECTING and capture.stats().read_errors == 3
    assert capture.stop() is True
    first = silent_pipeline.instances[0]
    assert first.sets == [(cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, 5000.0), (cv2.CAP_PROP_READ_TIMEOUT_MSEC,
                                                                      READ_SPAN_S * 1000)]


def test_an_opencv_without_a_gstreamer_read_timeout_says_so_at_open(silent_pipeline, monkeypatch, caplog):
    """A backend that has no read timeout reports 0 and would refuse it as an open parameter (the open fails):
    nothing is set, and the open warns that a silent pipeline would hold the reader, with the check to run."""
    monkeypatch.setattr(silent_pipeline, "read_timeout_ms", 0.0)
    with caplog.at_level(logging.WARNING), GStreamerSource(RTSP_PIPELINE) as source:
        source.read()
    assert silent_pipeline.instances[0].sets == []
    said = [r.getMessage() for r in caplog.records if "no read timeout" in r.getMessage()]
    assert len(said) == 1 and "not reconnected" in said[0] and "CAP_PROP_READ_TIMEOUT_MSEC" in said[0], said


class _RestartedStream(_SilentPipeline):
    """A network pipeline as OpenCV's GStreamer backend leaves it after a timeout's ``set``: stopped, started again
    by the next read, which then waits at most the read timeout for a frame. Its first frame comes ``first_after_s``
    after that restart; a read before then waits its whole timeout on ``clock`` and gives (False, None)."""

    first_after_s = 5.0
    clock = [0.0]

    def read(self):
        self.reads += 1
        wait_s = self.props[cv2.CAP_PROP_READ_TIMEOUT_MSEC] / 1000
        if self.clock[0] + wait_s < self.first_after_s:
            self.clock[0] += wait_s
            return False, None
        self.clock[0] = max(self.clock[0], self.first_after_s)
        return True, IMAGES[0].copy()


@pytest.mark.parametrize("first_after_s, opens, reads", [(5.0, True, 3), (9.0, True, 5), (30.0, False, 5)])
def test_a_network_pipelines_first_frame_may_take_longer_than_one_read(silent_pipeline, monkeypatch, first_after_s,
                                                                      opens, reads):
    """Setting the timeouts stops the pipeline and the open's first read starts it again with 2 s for a frame: an RTSP
    camera's first frame (a new session, rtspsrc's 2 s jitter buffer, a key frame) missed it and the camera never
    opened. The first read is repeated while it times out, for up to FIRST_FRAME_S (10 s)."""
    from fair_edge.cameras import gstreamer

    monkeypatch.setattr(cv2, "VideoCapture", _RestartedStream)
    monkeypatch.setattr(_RestartedStream, "first_after_s", first_after_s)
    monkeypatch.setattr(_RestartedStream, "clock", [0.0])
    source = GStreamerSource(RTSP_PIPELINE)
    source._clock = lambda: _RestartedStream.clock[0]
    assert gstreamer.FIRST_FRAME_S == 10.0
    if opens:
        with source:
            assert source.read().image.shape == IMAGES[0].shape
    else:
        with pytest.raises(CameraError, match="delivered no first frame"):
            source.open()
    assert _RestartedStream.instances[0].reads == reads


def test_a_stop_ends_the_wait_for_a_network_pipelines_first_frame(silent_pipeline, monkeypatch):
    """A stop during a reconnect's wait for the first frame (the camera up, sending nothing) is not held for the
    rest of FIRST_FRAME_S: ``interrupt`` (what ``CaptureThread.stop`` calls) ends it after the read in progress."""
    monkeypatch.setattr(cv2, "VideoCapture", _RestartedStream)
    monkeypatch.setattr(_RestartedStream, "first_after_s", 30.0)
    monkeypatch.setattr(_RestartedStream, "clock", [0.0])
    source = GStreamerSource(RTSP_PIPELINE)
    source._clock = lambda: _RestartedStream.clock[0]
    timed_out_read = _RestartedStream.read

    def read_then_stop(self):   # the stop comes during the second read
        if self.reads == 1:
            source.interrupt()
        return timed_out_read(self)

    monkeypatch.setattr(_RestartedStream, "read", read_then_stop)
    with pytest.raises(CameraError, match="delivered no first frame"):
        source.open()
    assert _RestartedStream.instances[0].reads == 2


def test_a_stop_just_before_a_reconnects_open_still_ends_the_first_frame_wait(silent_pipeline, monkeypatch):
    """A stop between a reconnect's back-off and its open interrupts the source before the open: the open cleared
    that, and the first-frame wait ran its full FIRST_FRAME_S. The interrupt now lasts until the pipeline is
    released: the open reads once."""
    monkeypatch.setattr(cv2, "VideoCapture", _RestartedStream)
    monkeypatch.setattr(_RestartedStream, "first_after_s", 30.0)
    monkeypatch.setattr(_RestartedStream, "clock", [0.0])
    source = GStreamerSource(RTSP_PIPELINE)
    source._clock = lambda: _RestartedStream.clock[0]
    source.interrupt()
    with pytest.raises(CameraError, match="delivered no first frame"):
        source.open()
    assert _RestartedStream.instances[0].reads == 1


def test_a_pipelines_camera_name_is_its_first_element_alone():
    """A tab after the element put the location, password included, into the camera's name (every log line)."""
    assert GStreamerSource("rtspsrc\tlocation=rtsp://admin:secret@cam/s ! decodebin ! appsink").name == \
        "gstreamer:rtspsrc"


def test_a_first_read_that_fails_at_once_is_not_repeated(silent_pipeline, monkeypatch):
    """A read that gives nothing without waiting (the pipeline at its end, or in error) is no slow first frame: the
    open fails at once, as before."""
    monkeypatch.setattr(silent_pipeline, "read", lambda self: (setattr(self, "reads", self.reads + 1), (False, None))[1])
    with pytest.raises(CameraError, match="delivered no first frame"):
        GStreamerSource(RTSP_PIPELINE).open()
    assert silent_pipeline.instances[0].reads == 1


@pytest.mark.parametrize("pipeline", [jetson_csi_pipeline(0),
                                      "v4l2src device=/dev/video0 ! videoconvert ! video/x-raw, format=BGR ! appsink",
                                      "pylonsrc ! videoconvert ! video/x-raw, format=BGR ! appsink"])
def test_a_local_or_triggered_pipeline_keeps_opencv_waits(silent_pipeline, caplog, pipeline):
    """Only a pipeline streaming from the network gets the 2 s read: a triggered camera rightly delivers nothing
    between parts (a 2 s read would reconnect it at every pause) and setting a timeout restarts the pipeline, which
    Argus does slowly; neither is set, and no warning is given for them."""
    with caplog.at_level(logging.WARNING), GStreamerSource(pipeline) as source:
        source.read()
    assert silent_pipeline.instances[0].sets == []
    assert not [r for r in caplog.records if "read timeout" in r.getMessage()]


@pytest.mark.parametrize("pipeline, network", [
    (RTSP_PIPELINE, True),
    ("rtspsrc\tlocation=rtsp://cam/s ! decodebin ! videoconvert ! appsink", True),
    ("rtspsrc2 location=rtsp://cam/s ! decodebin ! videoconvert ! appsink", True),
    ("uridecodebin uri=rtspt://cam/s ! videoconvert ! appsink", True),
    ("nvurisrcbin uri=rtsp://cam/s ! nvvidconv ! appsink", True),
    ("filesrc location=/srv/rtsp://x.mp4 ! decodebin ! videoconvert ! appsink", False),
    ("souphttpsrc location=http://cam/mjpg ! jpegdec ! videoconvert ! appsink", True),
    ("uridecodebin uri=rtsp://cam/s ! videoconvert ! appsink", True),
    ('uridecodebin uri="https://cam/s.m3u8" ! videoconvert ! appsink', True),
    ("uridecodebin uri=file:///srv/a.mp4 ! videoconvert ! appsink", False),
    ("videotestsrc ! videoconvert ! appsink", False),
    ("nvarguscamerasrc sensor-id=0 ! nvvidconv ! appsink", False),
])
def test_which_pipelines_stream_from_the_network(pipeline, network):
    assert streams_from_network(pipeline) is network


# ---- GenICam ------------------------------------------------------------------------
def test_genicam_without_harvesters_names_the_package_and_cti(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "harvesters", None)  # import now fails even if installed
    monkeypatch.setitem(sys.modules, "harvesters.core", None)
    cti = tmp_path / "ProducerGEV.cti"
    with pytest.raises(CameraError) as info:
        open_source("genicam:12345678", cti=cti)
    msg = str(info.value)
    assert "pip install harvesters" in msg and "fair-edge[genicam]" in msg and str(cti) in msg
    assert isinstance(parse_source("genicam:", cti=cti), GenICamSource)


def test_genicam_spec_without_cti_finds_the_producer_the_sdk_put_on_the_gentl_path(tmp_path, monkeypatch):
    """A station file or --camera cannot carry cti=, so `genicam:SERIAL` takes the one .cti in the folders of
    GENICAM_GENTL64_PATH (set by camera SDKs). Before, every documented genicam: spec failed at start asking for
    a cti= option no command or station file could give. None or several: a ConfigError naming the variable."""
    from fair_edge.cameras.registry import GENTL_PATH

    sdk, other = tmp_path / "sdk", tmp_path / "other"
    sdk.mkdir(), other.mkdir()
    monkeypatch.delenv(GENTL_PATH, raising=False)
    with pytest.raises(ConfigError, match=f"{GENTL_PATH}.*it is not set"):
        parse_source("genicam:12345678")
    monkeypatch.setenv(GENTL_PATH, f"{tmp_path / 'gone'}{os.pathsep}{other}")
    with pytest.raises(ConfigError, match="found none in"):
        parse_source("genicam:12345678")
    (sdk / "ProducerGEV.cti").write_bytes(b"")
    monkeypatch.setenv(GENTL_PATH, f"{other}{os.pathsep}{sdk}")
    source = parse_source("genicam:12345678")
    assert isinstance(source, GenICamSource) and source.cti == sdk / "ProducerGEV.cti" and source.serial == "12345678"
    (other / "ProducerU3V.cti").write_bytes(b"")
    with pytest.raises(ConfigError, match="found 2: .*ProducerU3V.cti"):
        parse_source("genicam:12345678")


# ---- synthetic line ------------------------------------------------------------------
def test_line_source_yields_images_in_order_and_loops():
    src = LineSource(IMAGES)
    assert isinstance(src, FrameSource)
    with src:
        frames = [src.read() for _ in range(5)]
    assert [f.seq for f in frames] == [0, 1, 2, 3, 4]
    assert [int(f.image[0, 0, 0]) for f in frames] == [0, 1, 2, 0, 1]
    assert IMAGES[0].flags.writeable  # the caller's arrays are copied, not frozen


def test_line_source_rate():
    t0 = time.monotonic()   # before open(): the line's slot 0 passes the camera at open()
    with LineSource(IMAGES, fps=50) as src:
        frames = [src.read() for _ in range(6)]
    seqs = [f.seq for f in frames]
    assert seqs == sorted(set(seqs)) and seqs[0] == 0, seqs   # slots in order (a late reader may skip one)
    # a clocked line: slot k passes k / 50 s after slot 0 at the earliest, so its frame is never taken before. A
    # loaded machine wakes the reader late (a late stamp, or a skipped slot), never early; how late is a benchmark's.
    assert all(f.t_capture - t0 >= f.seq / 50 - 1e-4 for f in frames), [(f.seq, f.t_capture - t0) for f in frames]
    assert frames[-1].t_capture - t0 >= 5 / 50 - 1e-4


def test_line_source_validates_its_arguments():
    with pytest.raises(ConfigError, match="did you mean 'disconnect'"):
        LineSource(IMAGES, fail_at={2: "disconect"})
    with pytest.raises(ConfigError, match="at least one image"):
        LineSource([])
    with pytest.raises(CameraError, match="float32"):
        LineSource([np.zeros((4, 4), np.float32)])
    with pytest.raises(ConfigError, match="fps"):
        LineSource(IMAGES, fps=-1)


def test_line_spec_takes_images_option():
    src = open_source("line:", images=IMAGES, fps=0)
    assert src.read().seq == 0
    src.close()


# ---- registry ------------------------------------------------------------------------
def test_unknown_kind_and_option_get_did_you_mean(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'video:'"):
        parse_source("vidoe:clip.avi")
    with pytest.raises(ConfigError, match="no device and no folder or file .*nothing-here"):
        parse_source(str(tmp_path / "nothing-here"))
    tmp_path.joinpath("a").mkdir()
    with pytest.raises(ConfigError, match="did you mean 'fps'") as info:
        parse_source(str(tmp_path / "a"), fsp=5)
    assert "loop" in str(info.value)  # the valid list is shown


def test_bare_specs_pick_the_opencv_kind():
    for spec, kind in [("0", "index"), ("/dev/video3", "device"), ("rtsp://cam/s", "url"),
                       ("http://cam/mjpg", "url")]:
        src = parse_source(spec)
        assert isinstance(src, OpenCVSource) and src.kind == kind


@pytest.mark.parametrize("pfnc, top_left", [("BayerRG8", "RGGB"), ("BayerBG8", "BGGR"), ("BayerGR8", "GRBG"),
                                             ("BayerGB8", "GBRG")])
def test_bayer_formats_demosaic_to_the_colour_the_sensor_saw(pfnc, top_left):
    """PFNC names a Bayer pattern by the sensor's top-left 2 x 2; a flat part of BGR (10, 50, 200) mosaicked that
    way comes out as (10, 50, 200), not with red and blue swapped (OpenCV's classic codes name patterns otherwise)."""
    from fair_edge.cameras.genicam import PIXEL_FORMATS

    value = {"B": 10, "G": 50, "R": 200}
    mosaic = np.zeros((8, 8), np.uint8)
    for (dy, dx), colour in zip(((0, 0), (0, 1), (1, 0), (1, 1)), top_left):
        mosaic[dy::2, dx::2] = value[colour]
    channels, convert = PIXEL_FORMATS[pfnc]
    assert channels == 1
    assert convert(mosaic)[2:6, 2:6].reshape(-1, 3).tolist() == [[10, 50, 200]] * 16


def test_the_station_start_line_never_shows_an_rtsp_password(station_bundles, tmp_path):
    """`fair-edge run --camera rtsp://admin:PASS@host/...` printed the password in its start line (stdout: the
    journal under systemd), though the camera's own errors redact it. The line now names the camera redacted; the
    camera then fails to open (nothing listens), as it would."""
    import threading

    from fair_edge.console.settings import ConsoleSettings
    from fair_edge.line.settings import RecordSettings
    from fair_edge.station.config import CameraSettings, StationConfig
    from fair_edge.station.run import run_station

    cfg = StationConfig(camera=CameraSettings(source="rtsp://admin:CamPass99@127.0.0.1:9/stream1"),
                        bundle=station_bundles[0].root, backend="onnxruntime", output=tmp_path,
                        record=RecordSettings(dir=tmp_path), console=ConsoleSettings(enabled=False))
    started: list[str] = []
    with pytest.raises(Exception):
        run_station(cfg, threading.Event(), max_frames=1, on_start=started.append)
    assert started and "CamPass99" not in started[0] and "rtsp://admin:***@127.0.0.1:9/stream1" in started[0]
