"""AravisSource against a fake, in-process Aravis (no gi, no network): frames that waited in the stream's buffers
after an unplug, incomplete frames, a camera the line triggers, padded rows, a camera another program controls;
and ``open()`` retrying reads that miss (SourceBase)."""

from __future__ import annotations

import enum
import logging
import queue
import time
import types

import numpy as np
import pytest

from fair_edge.cameras import CaptureSettings, CaptureState, CaptureThread, FrameMissed
from fair_edge.cameras import aravis as aravis_module
from fair_edge.cameras import capture as capture_module
from fair_edge.cameras.aravis import AravisSource
from fair_edge.cameras.capture import SourceBase
from fair_edge.errors import CameraError

MONO8, RGB8, BGR8 = 0x01080001, 0x02180014, 0x02180015   # PFNC codes a buffer's leader carries
FAST = dict(backoff_initial_s=0.01, backoff_max_s=0.05)


class GLibError(RuntimeError):
    """What PyGObject raises for a GError (``gi.repository.GLib.GError`` is a RuntimeError)."""


def arv_device_error(code: int, message: str) -> GLibError:
    """An ArvDeviceError as PyGObject raises it: ``domain``, ``code`` and ``message`` set, str() as GLib's."""
    error = GLibError(f"arv-device-error-quark: {message} ({code})")
    error.domain, error.code, error.message = "arv-device-error-quark", code, message
    return error


NOT_CONTROLLER, TIMEOUT, ACCESS_DENIED = 10, 5, 17   # ArvDeviceError codes
GVCP_WRITE_WAIT_S = 2.5   # an unanswered GVCP write: 5 tries x 500 ms before Aravis gives up (arv-fake-gv-camera)


class Status(enum.Enum):
    SUCCESS = 0
    MISSING_PACKETS = 3

    @property
    def value_nick(self) -> str:
        return self.name.lower().replace("_", "-")


class FakeBuffer:
    """An image buffer as Aravis hands it out: the image's rows, each followed by ``x_padding`` bytes (0xEE)."""

    def __init__(self, image: np.ndarray, frame_id: int, *, pfnc: int = MONO8, x_padding: int = 0,
                 status: Status = Status.SUCCESS, has_padding_api: bool = True) -> None:
        self.image, self.frame_id, self.pfnc, self.x_padding, self.status = image, frame_id, pfnc, x_padding, status
        rows = image.reshape(image.shape[0], -1)
        pad = np.full((rows.shape[0], x_padding), 0xEE, np.uint8)
        self.data = np.hstack([rows, pad]).tobytes()
        if has_padding_api:
            self.get_image_padding = lambda: (self.x_padding, 0)

    def get_status(self) -> Status:
        return self.status

    def get_image_width(self) -> int:
        return self.image.shape[1]

    def get_image_height(self) -> int:
        return self.image.shape[0]

    def get_image_pixel_format(self) -> int:
        return self.pfnc

    def get_data(self) -> bytes:
        return self.data

    def get_frame_id(self) -> int:
        return self.frame_id

    def get_system_timestamp(self) -> int:
        return 0


class FakeStream:
    def __init__(self, camera: FakeCamera) -> None:
        self.camera = camera

    def timeout_pop_buffer(self, timeout_us: int) -> FakeBuffer | None:
        try:
            return self.camera.buffers.get(timeout=timeout_us / 1e6)
        except queue.Empty:
            return None

    def push_buffer(self, buffer: object) -> None:
        pass


class FakeCamera:
    """One camera on a link that can be pulled (``unplug``) and plugged back. Frames it sends (``send``) wait in
    the stream's buffers until read; reading them needs no link. Anything over the control link (feature and
    register reads, connecting) raises GLibError while it is unplugged."""

    def __init__(self, *, trigger_mode: str | None = "Off", pixel_format: str = "Mono8", rate: float = 25.0) -> None:
        self.trigger_mode, self.pixel_format, self.rate = trigger_mode, pixel_format, rate
        self.buffers: queue.Queue = queue.Queue()
        self.plugged, self.register_reads = True, 0
        self._next_id = 1
        self.controlled_elsewhere = False   # another program holds the control privilege (a station, arv-viewer)
        self.controller = True              # this connection took control at connect (Aravis's take_control)
        self.denied_write = TIMEOUT         # how a write from a non-controller fails: the fake camera's silence
        self.writes, self.write_wait_s, self.stops = 0, 0.0, 0   # writes sent, seconds they waited, stops sent
        self.is_controller = lambda: self.controller   # ArvGvDevice.is_controller (get_device() is self)

    def send(self, n: int = 1, *, status: Status = Status.SUCCESS, **buffer_options) -> None:
        for _ in range(n):
            image = np.full((4, 6), self._next_id % 256, np.uint8)
            self.buffers.put(FakeBuffer(image, self._next_id, status=status, **buffer_options))
            self._next_id += 1

    def unplug(self) -> None:
        self.plugged = False

    def plug_back(self) -> None:
        self.plugged = True

    def take_over(self) -> None:
        """Another program takes control (this one's heartbeat lapsed): this connection gets no more frames."""
        self.controlled_elsewhere, self.controller = True, False

    def hand_back(self) -> None:
        """The other program exits: the next connect takes control."""
        self.controlled_elsewhere = False

    def _link(self, what: str) -> None:
        if not self.plugged:
            raise GLibError(f"arv-device-error-quark: GigEVision {what} timeout (5)")

    def _write(self, feature: str) -> None:
        """A register write: refused when this connection is not the controller, as ``denied_write`` says (the
        fake camera does not answer: a timeout after ``GVCP_WRITE_WAIT_S``; a real one answers ACCESS_DENIED)."""
        self._link("write_register")
        self.writes += 1
        if self.controller:
            return
        if self.denied_write == TIMEOUT:
            self.write_wait_s += GVCP_WRITE_WAIT_S
            raise arv_device_error(TIMEOUT, f"[{feature}] GigEVision write_register timeout")
        raise arv_device_error(self.denied_write, f"[{feature}] GigEVision write_register error (access-denied)")

    # ---- the Aravis.Camera calls AravisSource makes
    def connect(self, device: str | None) -> FakeCamera:
        self._link("discovery")
        self.controller = not self.controlled_elsewhere
        return self

    def set_frame_rate(self, fps: float) -> None:
        self._write("AcquisitionFrameRate")
        self.rate, self.trigger_mode = fps, "Off" if self.trigger_mode else None   # as Aravis does

    def get_frame_rate(self) -> float:
        self._link("read_register")
        return self.rate

    def is_feature_available(self, name: str) -> bool:
        self._link("read_memory")
        return name == "TriggerMode" and self.trigger_mode is not None

    def get_string(self, name: str) -> str:
        self._link("read_register")
        return {"TriggerMode": self.trigger_mode}[name]

    def get_pixel_format_as_string(self) -> str:
        self._link("read_register")
        return self.pixel_format

    def create_stream(self, callback: object, data: object) -> FakeStream:
        if not self.controller:
            raise arv_device_error(NOT_CONTROLLER, "Controller privilege required for streaming control")
        return FakeStream(self)

    def get_payload(self) -> int:
        return 24

    def start_acquisition(self) -> None:
        self._write("AcquisitionStart")

    def stop_acquisition(self) -> None:
        self.stops += 1
        self._write("AcquisitionStop")

    def get_device(self) -> FakeCamera:
        return self

    def read_register(self, address: int) -> int:
        self._link("read_register")
        self.register_reads += 1
        return 0


def fake_aravis(camera: FakeCamera) -> types.SimpleNamespace:
    """The ``Aravis`` module as far as AravisSource uses it, with ``camera`` the one camera on the network."""
    return types.SimpleNamespace(
        update_device_list=lambda: None, get_n_devices=lambda: int(camera.plugged),
        Camera=types.SimpleNamespace(new=camera.connect), Buffer=types.SimpleNamespace(new_allocate=lambda size: None),
        BufferStatus=Status)


@pytest.fixture
def camera(monkeypatch) -> FakeCamera:
    cam = FakeCamera()
    monkeypatch.setattr(aravis_module, "_aravis", lambda: fake_aravis(cam))
    return cam


def wait_for(predicate, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"waited {timeout} s for {what}")
        time.sleep(0.005)


# ----------------------------------------------------------------------------- 1. unplugged with frames waiting
def test_frames_waiting_in_the_stream_are_read_after_the_camera_is_unplugged(camera):
    """Each frame's pixel format comes from its buffer: the frames that waited are delivered, not a GLib.Error."""
    camera.send(4)
    source = AravisSource("cam", timeout_s=0.01)
    source.open()
    camera.unplug()
    frames = [source.read() for _ in range(4)]
    assert [f.image[0, 0] for f in frames] == [1, 2, 3, 4]
    with pytest.raises(FrameMissed):
        source.read()


def test_a_driver_error_while_reading_is_a_lost_link(camera):
    source = AravisSource("cam", timeout_s=0.01)
    camera.send(1)
    source.open()
    source.read()                                          # the frame read at open

    def pop_fails(timeout_us: int) -> None:
        raise GLibError("arv-stream-error: stream gone")

    source._stream.timeout_pop_buffer = pop_fails
    with pytest.raises(CameraError, match="stream gone") as raised:
        source.read()
    assert not isinstance(raised.value, FrameMissed)        # a link error: reconnect at once


def test_a_camera_unplugged_with_frames_waiting_is_reconnected_not_the_end_of_the_run(camera):
    camera.send(4)
    source = AravisSource("cam", timeout_s=0.01)
    source.open()
    camera.unplug()                                        # frames 2..4 still wait in the stream's buffers
    with CaptureThread(source, CaptureSettings(queue_size=16, **FAST)) as cap:
        wait_for(lambda: cap.stats().state is not CaptureState.RUNNING, "the camera to go down")
        stats = cap.stats()
        assert stats.state is CaptureState.RECONNECTING, stats.end_reason
        assert stats.frames_in == 4
        camera.plug_back()
        camera.send(1)
        wait_for(lambda: cap.stats().reconnects == 1 and cap.stats().frames_in == 5, "the reconnect")
        assert [cap.get(timeout=5).image[0, 0] for _ in range(5)] == [1, 2, 3, 4, 5]


# ----------------------------------------------------------------------------- 2. incomplete frames
def test_open_skips_incomplete_first_frames(camera):
    camera.send(2, status=Status.MISSING_PACKETS)
    camera.send(1)
    with AravisSource("cam", timeout_s=0.01) as source:
        frame = source.read()
    assert frame.image[0, 0] == 3 and frame.seq == 0


def test_incomplete_frames_are_counted_but_never_reconnect(camera):
    """Five incomplete frames in a row (misses_before_reconnect=3): their arrival proves the link is up."""
    camera.send(1)
    camera.send(5, status=Status.MISSING_PACKETS)
    camera.send(2)
    seen: list[tuple[int, int, int]] = []

    def note(frame) -> None:                              # on the reader thread, before the frame is counted
        stats = cap.stats()
        seen.append((frame.seq, stats.reconnects, stats.read_errors))

    settings = CaptureSettings(queue_size=16, misses_before_reconnect=3, **FAST)
    cap = CaptureThread(AravisSource("cam", timeout_s=0.01), settings, on_capture=note)
    with cap:
        wait_for(lambda: len(seen) >= 3, "three frames")
    assert seen[:3] == [(0, 0, 0), (6, 0, 5), (7, 0, 5)]  # ids 2..6 lost: seq gap 0 -> 6, no reconnect


# ----------------------------------------------------------------------------- open() retries (SourceBase)
class AlwaysMisses(SourceBase):
    """Connects, then every read misses; each read moves ``clock`` on by ``read_s`` seconds."""

    name = "misses"

    def __init__(self, clock: list[float], read_s: float) -> None:
        super().__init__()
        self.clock, self.read_s, self.reads = clock, read_s, 0

    def _connect(self):
        return self._grab()

    def _grab(self):
        self.reads += 1
        self.clock[0] += self.read_s
        raise FrameMissed(f"{self.name}: incomplete frame")

    def _release(self) -> None:
        pass


@pytest.mark.parametrize("read_s, bound", [(0.001, "reads"), (1.0, "seconds")])
def test_open_retries_missed_reads_within_a_bound_of_reads_and_seconds(monkeypatch, read_s, bound):
    """Fast misses stop at FIRST_FRAME_READS reads (10); 1 s ones at the 3 s bound: reads at 0, 1 and 2 s."""
    clock = [100.0]
    monkeypatch.setattr(capture_module, "time", types.SimpleNamespace(monotonic=lambda: clock[0]))
    source = AlwaysMisses(clock, read_s)
    with pytest.raises(CameraError) as raised:
        source.open()
    reads = 10 if bound == "reads" else 3
    assert source.reads == reads and not source.is_open
    assert f"found none in {reads} reads" in str(raised.value) and not isinstance(raised.value, FrameMissed)


# ----------------------------------------------------------------------------- 3. a camera the line triggers
def test_a_triggered_camera_opens_on_an_idle_line_and_waits_for_parts(camera):
    camera.trigger_mode = "On"
    source = AravisSource("cam", timeout_s=0.01)
    source.open()                                          # no part yet: no first frame to read
    assert source.triggered and source.nominal_fps is None
    with pytest.raises(FrameMissed, match="no trigger") as raised:
        source.read()
    assert type(raised.value).__name__ == "AwaitingTrigger" and camera.register_reads == 1
    camera.send(1)
    assert source.read().image[0, 0] == 1
    camera.unplug()
    with pytest.raises(CameraError, match="does not answer") as raised:
        source.read()
    assert not isinstance(raised.value, FrameMissed)       # the link check failed: a lost link


def test_an_idle_triggered_line_is_not_a_fault_and_loses_no_frames(camera):
    camera.trigger_mode = "On"
    source = AravisSource("cam", timeout_s=0.01)
    with CaptureThread(source, CaptureSettings(queue_size=16, misses_before_reconnect=3, **FAST)) as cap:
        wait_for(lambda: camera.register_reads >= 10, "ten idle waits")   # the line pauses
        camera.send(1)                                                    # a part
        assert cap.get(timeout=5).seq == 0
        stats = cap.stats()
        assert (stats.state, stats.read_errors, stats.reconnects) == (CaptureState.RUNNING, 0, 0)
        camera.unplug()                                                   # idle, and the cable is pulled
        wait_for(lambda: cap.stats().state is CaptureState.RECONNECTING, "the link check to fail")
    assert cap.stats().frames_lost_estimate == 0           # no nominal fps: idle or down time is no lost frames


def test_a_free_running_camera_keeps_its_rate_and_misses(camera):
    source = AravisSource("cam", timeout_s=0.01)
    camera.send(1)
    source.open()
    source.read()
    assert not source.triggered and source.nominal_fps == 25.0
    with pytest.raises(FrameMissed, match="no frame within") as raised:
        source.read()
    assert type(raised.value) is FrameMissed and camera.register_reads == 0


@pytest.mark.parametrize("trigger_mode, fps", [(None, None), ("On", 10.0)])
def test_no_trigger_mode_feature_or_a_set_rate_is_free_running(camera, trigger_mode, fps):
    """A camera without TriggerMode runs free; ``fps=`` turns TriggerMode off (Aravis's rate setter does)."""
    camera.trigger_mode = trigger_mode
    camera.send(1)
    with AravisSource("cam", fps=fps, timeout_s=0.01) as source:
        assert not source.triggered and source.nominal_fps == (fps or 25.0)


def test_an_unsupported_pixel_format_is_refused_at_open_even_with_no_frame_to_read(camera):
    camera.trigger_mode, camera.pixel_format = "On", "Mono12"
    with pytest.raises(CameraError, match="pixel format 'Mono12' is not supported"):
        AravisSource("cam", timeout_s=0.01).open()


def test_trigger_mode_without_is_feature_available_reads_the_feature_or_runs_free():
    def no_such_feature(name: str) -> str:
        raise GLibError(f"arv-device-error-quark: [{name}] not found")

    assert aravis_module.trigger_mode_on(types.SimpleNamespace(get_string=lambda name: "On"))
    assert not aravis_module.trigger_mode_on(types.SimpleNamespace(get_string=no_such_feature))


@pytest.mark.parametrize("implemented, available, triggered", [
    (False, True, False), (True, False, False), (True, True, True)])
def test_trigger_mode_counts_only_where_the_feature_is_implemented_and_available(implemented, available, triggered):
    """Aravis 0.8's is_feature_available reads only pIsAvailable: a TriggerMode whose pIsImplemented is 0 counted as
    there and read whatever its register held ("On": a free-running camera waited for triggers). Where the Aravis
    has is_feature_implemented (0.8.23+), both must say yes."""
    camera = types.SimpleNamespace(is_feature_implemented=lambda name: implemented,
                                   is_feature_available=lambda name: available, get_string=lambda name: "On")
    assert aravis_module.trigger_mode_on(camera) is triggered


def test_trigger_mode_on_an_aravis_without_is_feature_implemented_asks_is_feature_available():
    camera = types.SimpleNamespace(is_feature_available=lambda name: False, get_string=lambda name: "On")
    assert not aravis_module.trigger_mode_on(camera)
    camera.is_feature_available = lambda name: True
    assert aravis_module.trigger_mode_on(camera)


# ----------------------------------------------------------------------------- 4. a camera another program controls
def no_controller_check(camera: FakeCamera) -> None:
    """An Aravis (or device) without ``is_controller``: the refusal comes from the camera's own error."""
    del camera.is_controller


@pytest.mark.parametrize("fps", [None, 10.0])
def test_a_camera_another_program_controls_is_refused_at_once_saying_so(camera, caplog, fps):
    """Station A streams the camera; a second station or `collect` is told who holds it, not to check the cable,
    before writing anything (each write would wait 2.5 s on arv-fake-gv-camera), and logs no traceback."""
    camera.controlled_elsewhere = True
    camera.send(1)
    with caplog.at_level(logging.DEBUG), pytest.raises(CameraError) as raised:
        AravisSource("Aravis-Fake-FE7100", fps=fps, timeout_s=0.01).open()
    message = str(raised.value)
    assert "controlled by another program" in message and "stop" in message.lower() and "cable" not in message
    assert (camera.writes, camera.write_wait_s, camera.stops) == (0, 0.0, 0)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info] == []


@pytest.mark.parametrize("fps, denied_write, code",
                         [(None, TIMEOUT, NOT_CONTROLLER), (10.0, ACCESS_DENIED, ACCESS_DENIED)],
                         ids=["create_stream-not-controller", "frame-rate-write-access-denied"])
def test_the_control_privilege_errors_name_the_other_program_without_is_controller(camera, caplog, fps,
                                                                                    denied_write, code):
    """Without ``is_controller``: create_stream's NOT_CONTROLLER (10), or a real camera's ACCESS_DENIED (17) to
    the frame rate's write, is the other program; stop_acquisition is not sent (acquisition never started)."""
    camera.controlled_elsewhere, camera.denied_write = True, denied_write
    no_controller_check(camera)
    with caplog.at_level(logging.DEBUG), pytest.raises(CameraError, match="controlled by another program") as raised:
        AravisSource("Aravis-Fake-FE7100", fps=fps, timeout_s=0.01).open()
    assert f"({code})" in str(raised.value) and "cable" not in str(raised.value)
    assert camera.stops == 0 and not [r for r in caplog.records if r.exc_info]


def test_a_camera_that_is_not_found_still_says_check_the_cable(camera):
    camera.unplug()
    with pytest.raises(CameraError, match="check the cable") as raised:
        AravisSource("Aravis-Fake-FE7100", timeout_s=0.01).open()
    assert "another program" not in str(raised.value)


def test_a_camera_gone_at_close_is_one_warning_line_without_a_traceback(camera, caplog):
    camera.send(1)
    source = AravisSource("cam", timeout_s=0.01)
    source.open()
    camera.unplug()
    with caplog.at_level(logging.DEBUG):
        source.close()
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert camera.stops == 1 and len(warnings) == 1 and "stop_acquisition failed" in warnings[0].getMessage()
    assert warnings[0].exc_info is None and "write_register timeout" in warnings[0].getMessage()


def test_a_running_station_whose_camera_is_taken_reconnects_with_back_off_once_it_is_free(camera, caplog):
    """Another program takes the camera mid-run: the station says who holds it and keeps retrying with back-off
    (not given up); once that program exits the station takes the camera back."""
    def refused_reconnects() -> int:
        return sum("controlled by another program" in r.getMessage() and "reconnecting in" in r.getMessage()
                   for r in list(caplog.records))

    camera.send(1)
    caplog.set_level(logging.WARNING, logger="fair_edge.cameras")
    with CaptureThread(AravisSource("cam", timeout_s=0.01), CaptureSettings(queue_size=16, **FAST)) as cap:
        assert cap.get(timeout=5).seq == 0
        camera.take_over()                                 # no more frames for this connection
        wait_for(lambda: refused_reconnects() >= 2, "two refused reconnects")
        assert cap.stats().state is CaptureState.RECONNECTING
        camera.hand_back()
        camera.send(1)
        wait_for(lambda: cap.stats().reconnects == 1 and cap.stats().frames_in == 2, "the reconnect")
        assert cap.stats().state is CaptureState.RUNNING


# ----------------------------------------------------------------------------- 5. row padding
@pytest.mark.parametrize("pfnc, name, channels", [(MONO8, "Mono8", 1), (BGR8, "BGR8", 3), (RGB8, "RGB8", 3)])
def test_padded_rows_are_read_row_by_row(camera, pfnc, name, channels):
    camera.pixel_format = name
    image = np.arange(5 * 7 * channels, dtype=np.uint8).reshape((5, 7, channels) if channels > 1 else (5, 7))
    camera.buffers.put(FakeBuffer(image, 1, pfnc=pfnc, x_padding=3))
    with AravisSource("cam", timeout_s=0.01) as source:
        frame = source.read()
    expected = image[:, :, ::-1] if pfnc == RGB8 else image
    np.testing.assert_array_equal(frame.image, expected)
    assert frame.image.flags.c_contiguous


def test_a_buffer_too_short_for_its_padded_rows_is_refused(camera):
    buffer = FakeBuffer(np.zeros((4, 6), np.uint8), 1, x_padding=2)
    buffer.data = buffer.data[:-10]
    camera.buffers.put(buffer)
    with pytest.raises(CameraError, match="expected at least 30"):
        AravisSource("cam", timeout_s=0.01).open()


def test_without_the_padding_api_only_a_packed_sized_buffer_is_read(camera):
    camera.buffers.put(FakeBuffer(np.full((4, 6), 7, np.uint8), 1, has_padding_api=False))
    camera.buffers.put(FakeBuffer(np.full((4, 6), 8, np.uint8), 2, x_padding=2, has_padding_api=False))
    with AravisSource("cam", timeout_s=0.01) as source:
        assert source.read().image[0, 0] == 7
        with pytest.raises(CameraError, match="cannot tell the rows' padding"):
            source.read()


def test_the_pfnc_codes_are_aravis_pixel_formats():
    gi = pytest.importorskip("gi")
    try:
        gi.require_version("Aravis", "0.8")
        from gi.repository import Aravis
    except (ImportError, ValueError):
        pytest.skip("needs gir1.2-aravis-0.8")
    assert aravis_module.PFNC_NAMES == {
        Aravis.PIXEL_FORMAT_MONO_8: "Mono8", Aravis.PIXEL_FORMAT_RGB_8_PACKED: "RGB8",
        Aravis.PIXEL_FORMAT_BGR_8_PACKED: "BGR8", Aravis.PIXEL_FORMAT_BAYER_GR_8: "BayerGR8",
        Aravis.PIXEL_FORMAT_BAYER_RG_8: "BayerRG8", Aravis.PIXEL_FORMAT_BAYER_GB_8: "BayerGB8",
        Aravis.PIXEL_FORMAT_BAYER_BG_8: "BayerBG8"}
