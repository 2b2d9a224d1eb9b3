"""GenICam cameras (GigE Vision, USB3 Vision) through Aravis, an open-source GenICam stack.

Needs Aravis 0.8 and its GObject introspection data (Debian/Ubuntu: ``gir1.2-aravis-0.8``;
Jetson: the same packages) and PyGObject in the Python that runs the station (``pip install
'fair-edge[aravis]'``, which builds against the system's ``libgirepository1.0-dev``). Unlike
``genicam:`` (harvesters), no vendor GenTL producer is needed. Spec: ``aravis:`` (first camera
found), ``aravis:DEVICE_ID`` (e.g. ``aravis:Basler-21234567``, as listed by ``arv-tool-0.8``) or
``aravis:IP_ADDRESS``.

Sequence numbers follow the camera's frame (block) ids, so frames the camera sent that never
arrived show up as gaps (16-bit GVSP ids wrap 65535 -> 1). After a reconnect the ids restart:
numbering goes on from the last frame, and the capture thread estimates the frames lost in
the outage from its duration and the nominal frame rate.

``Frame.t_capture`` is when the frame's first packet reached the host (the buffer's system timestamp, on
``time.monotonic()``), not when it was taken from the stream's buffers: frames that waited there come out
stamped old, so a triggered capture skips them (``stale_frames``).

Everything about a frame is read from its buffer (pixel format, size, row padding), never from the camera
over the network, so frames that waited in the stream's buffers are read after the camera has gone; an
error the driver raises while a frame is read (``GLib.Error``) is a CameraError: a lost link, reconnected.
An incomplete frame (packets lost on the way) is ``FrameIncomplete``: counted, never a reconnect.

A GigE Vision camera takes orders from one program at a time (its control privilege): a camera another program
controls (a running station, ``fair-edge collect``, ``arv-viewer``) is refused at connect with a CameraError that
says so, before anything is written to it; a station's reconnects keep trying with back-off until it is free.

A camera the line triggers (GenICam ``TriggerMode`` = ``On``, read at connect; ``fps=`` turns it off, as
Aravis's frame-rate setter does) takes a frame per part: ``open()`` reads no first frame, a wait of
``timeout_s`` without a frame is ``AwaitingTrigger`` once a register read proves the control link is up
(its failure is a lost link), and ``nominal_fps`` is None (no frames are estimated lost from idle time).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np

from fair_edge.errors import CameraError

from .base import FrameIncomplete, FrameMissed, awaiting_trigger
from .capture import SourceBase
from .genicam import LINK_CHECK_REGISTER, PIXEL_FORMATS, image_from_rows, trigger_mode_reads_on

log = logging.getLogger(__name__)

GVSP_ID_MODULUS = 65535   # 16-bit block ids run 1..65535 (0 is reserved)

# PFNC pixel format codes (what a buffer's leader carries; Aravis's ARV_PIXEL_FORMAT_*) -> ``PIXEL_FORMATS`` names
PFNC_NAMES: dict[int, str] = {
    0x01080001: "Mono8",
    0x02180014: "RGB8",
    0x02180015: "BGR8",
    0x01080008: "BayerGR8",
    0x01080009: "BayerRG8",
    0x0108000A: "BayerGB8",
    0x0108000B: "BayerBG8",
}
ARV_DEVICE_ERROR_DOMAIN = "arv-device-error-quark"   # ``GLib.Error.domain`` of Aravis's ArvDeviceError
# ArvDeviceError codes that mean another program holds the camera's control privilege: NOT_CONTROLLER (10, "Controller
# privilege required for streaming control") and PROTOCOL_ERROR_ACCESS_DENIED (17, the camera refused a write)
CONTROL_DENIED_CODES = frozenset({10, 17})


def _aravis():
    """The ``Aravis`` GObject module, or CameraError saying what to install."""
    try:
        import gi

        gi.require_version("Aravis", "0.8")
        from gi.repository import Aravis
    except (ImportError, ValueError) as exc:
        raise CameraError(
            "aravis: sources need Aravis 0.8 with its introspection data and PyGObject: install "
            "`gir1.2-aravis-0.8` (apt) and `pip install 'fair-edge[aravis]'`; found: " + str(exc)) from exc
    return Aravis


def control_denied(exc: BaseException) -> bool:
    """True when ``exc`` (a ``GLib.Error`` from Aravis) says another program controls the camera: an ArvDeviceError
    whose code is in ``CONTROL_DENIED_CODES``, or a message that names the control privilege."""
    if getattr(exc, "domain", None) == ARV_DEVICE_ERROR_DOMAIN and getattr(exc, "code", None) in CONTROL_DENIED_CODES:
        return True
    return "privilege" in str(exc).lower()


def controlled_elsewhere_error(source: str, found: str) -> CameraError:
    """The CameraError for a camera another program controls: who that usually is, and what to do."""
    return CameraError(
        f"{source}: the camera is controlled by another program (a running station or service, `fair-edge collect`, "
        "arv-viewer; on this computer or another), and a GigE Vision camera takes orders from one program at a time. "
        "Stop that program first, then start this one again (a connection that has just ended, a program that exited "
        "or this one's own before a reconnect, keeps the camera for a few seconds, until the camera's heartbeat "
        f"timeout); found: {found}")


def frame_step(last_id: int, frame_id: int) -> int:
    """Frames from ``last_id`` to ``frame_id`` (1 = the next one), across a 16-bit id wrap."""
    if last_id > GVSP_ID_MODULUS or frame_id > GVSP_ID_MODULUS:   # GEV 2 extended (64-bit) ids
        return frame_id - last_id
    return (frame_id - last_id) % GVSP_ID_MODULUS


def trigger_mode_on(camera) -> bool:
    """True when ``camera`` (an ``Aravis.Camera``) takes a frame only when triggered: ``trigger_mode_reads_on``, the
    rule ``genicam:`` reads by too, with ``feature_present`` (an Aravis without it: a failing read is no
    TriggerMode)."""
    return trigger_mode_reads_on(feature_present(camera), camera.get_string)


def feature_present(camera) -> Callable[[str], bool] | None:
    """``camera``'s "is this feature there to read" (feature name -> bool): implemented and available, each as far as
    its Aravis can tell. Aravis 0.8's ``is_feature_available`` reads only the node's pIsAvailable, so a node whose
    pIsImplemented is 0 counted as there (read as whatever its register holds); ``is_feature_implemented``
    (Aravis 0.8.23+) reads pIsImplemented, and both must be true. An older Aravis has only
    ``is_feature_available``; None where it has neither."""
    checks = [check for check in (getattr(camera, "is_feature_implemented", None),
                                  getattr(camera, "is_feature_available", None)) if check is not None]
    if not checks:
        return None
    return lambda name: all(check(name) for check in checks)


def monotonic_from_system_ns(system_ns: int) -> float:
    """An Aravis buffer's system timestamp -> ``time.monotonic()`` seconds (``Frame.t_capture``).

    Aravis stamps a buffer with the host's wall clock (``g_get_real_time() * 1000``: CLOCK_REALTIME, ns) when
    the frame's first packet arrives, so a frame that waited in the stream's buffers keeps the time it came in.
    Its age on the wall clock is taken off ``time.monotonic()`` now. 0 (no timestamp) or a time ahead of now
    (the wall clock was set back meanwhile) is stamped now; a wall clock set forward meanwhile makes the frame
    look older than it is (a triggered capture then skips it as stale)."""
    now_monotonic, now_wall_ns = time.monotonic(), time.time_ns()
    if system_ns <= 0:
        return now_monotonic
    return now_monotonic - max(0, now_wall_ns - system_ns) / 1e9


class AravisSource(SourceBase):
    """Frames from a GenICam camera via Aravis.

    device: Aravis device id or IP address; None or "" = the first camera found.
    fps: set AcquisitionFrameRate (None = leave the camera's setting; a rate also turns TriggerMode off).
    timeout_s: how long one read waits for a frame before it counts as missed (a triggered camera: before
    its link is checked and the read says no part came). buffers: stream buffers queued.
    Frames: (H, W) uint8 gray or (H, W, 3) uint8 BGR (``PIXEL_FORMATS``), copied out of the buffer.
    """

    def __init__(self, device: str | None = None, *, fps: float | None = None, timeout_s: float = 1.0,
                 buffers: int = 8, name: str | None = None) -> None:
        super().__init__()
        self.device, self.fps, self.timeout_s, self.buffers = device or None, fps, timeout_s, buffers
        self.name = name or f"aravis:{device or 'first'}"
        self._camera = None
        self._stream = None
        self._acquiring = False   # start_acquisition was sent since the last connect (release stops it)
        self._last_id: int | None = None
        self._rate: float | None = None
        self._triggered = False
        self._pixel_format = ""   # the camera's PixelFormat read at connect (a buffer that names none has it)

    @property
    def nominal_fps(self) -> float | None:
        """The free-running frame rate (frames/s); None for a triggered camera (frames come with the parts)."""
        if self._triggered:
            return None
        return self.fps or self._rate

    @property
    def triggered(self) -> bool:
        """True when the camera read ``TriggerMode`` = ``On`` at its last connect (a frame per trigger)."""
        return self._triggered

    def _connect(self) -> tuple[np.ndarray, str, float] | None:
        aravis = _aravis()
        aravis.update_device_list()
        try:
            self._start(aravis)
        except CameraError:
            raise
        except Exception as exc:  # GLib.Error (not found, no control access) -> CameraError with the fix
            raise self._start_error(aravis, exc) from exc
        self._last_id = None
        if self._triggered:
            log.info("camera %s: TriggerMode On: a frame per trigger, none read at open", self.name)
            return None
        return self._grab()

    def _start(self, aravis) -> None:
        """Connect, check this program controls the camera, configure it, queue ``buffers`` and start acquisition."""
        self._camera = aravis.Camera.new(self.device)
        self._check_control(self._camera)
        self._configure(self._camera)
        self._stream = self._camera.create_stream(None, None)
        payload = self._camera.get_payload()
        for _ in range(self.buffers):
            self._stream.push_buffer(aravis.Buffer.new_allocate(payload))
        self._acquiring = True   # set first: a start whose answer timed out may still have started the camera
        self._camera.start_acquisition()

    def _check_control(self, camera) -> None:
        """CameraError when Aravis could not take the camera's control privilege on connecting (a GigE device's
        ``is_controller()`` is False: another program controls it). Checked before anything is written to the
        camera, each write of which would wait for its timeout or be refused; a device without
        ``is_controller`` (USB3 Vision, an older Aravis) is not checked here."""
        is_controller = getattr(camera.get_device(), "is_controller", None)
        if is_controller is not None and not is_controller():
            raise controlled_elsewhere_error(self.name, "Aravis could not take control access on connecting")

    def _start_error(self, aravis, exc: Exception) -> CameraError:
        """The CameraError for a driver error while starting: another program controls the camera
        (``control_denied``), else a camera not found or not answering (cable, IP setup, id)."""
        if control_denied(exc):
            return controlled_elsewhere_error(self.name, str(exc))
        return CameraError(f"{self.name}: cannot start the camera ({aravis.get_n_devices()} found): {exc}; "
                           "check the cable and IP setup, and the id with `arv-tool-0.8`")

    def _configure(self, camera) -> None:
        """Set the frame rate (``fps``), then read the rate, the trigger mode and the pixel format the camera
        runs with. CameraError naming the format and the supported ones when the pixel format is not one."""
        if self.fps:
            camera.set_frame_rate(float(self.fps))   # Aravis turns TriggerMode off to set a rate
        self._rate = camera.get_frame_rate()
        self._triggered = trigger_mode_on(camera)
        self._pixel_format = camera.get_pixel_format_as_string()
        self._check_format(self._pixel_format)

    def _check_format(self, fmt: str) -> None:
        if fmt not in PIXEL_FORMATS:
            raise CameraError(f"{self.name}: pixel format {fmt!r} is not supported; expected one of "
                              f"{sorted(PIXEL_FORMATS)}: set PixelFormat on the camera")

    def _grab(self) -> tuple[np.ndarray, str, float]:
        """The next frame from the stream's buffers. FrameMissed (free-running: no frame within ``timeout_s``),
        AwaitingTrigger (triggered: none, link up), FrameIncomplete, or CameraError for anything the driver
        raises (``GLib.Error``: the link is down)."""
        aravis = _aravis()
        try:
            return self._grab_buffer(aravis)
        except CameraError:
            raise
        except Exception as exc:  # GLib.Error from the driver mid-read -> a lost link, reconnected
            raise CameraError(f"{self.name}: reading a frame failed: {exc}") from exc

    def _grab_buffer(self, aravis) -> tuple[np.ndarray, str, float]:
        buffer = self._stream.timeout_pop_buffer(int(self.timeout_s * 1e6))
        if buffer is None:
            raise self._no_frame()
        try:
            status = buffer.get_status()
            if status != aravis.BufferStatus.SUCCESS:
                raise FrameIncomplete(f"{self.name}: incomplete frame ({status.value_nick})")
            image = self._image(buffer)
            self._number(buffer.get_frame_id())
            t_grabbed = monotonic_from_system_ns(buffer.get_system_timestamp())
        finally:
            self._stream.push_buffer(buffer)
        return image, self.name, t_grabbed

    def _no_frame(self) -> FrameMissed:
        """What a wait of ``timeout_s`` without a frame means: a missed frame for a free-running camera; for a
        triggered one no part yet (``AwaitingTrigger``) once its control link answers a register read
        (``awaiting_trigger``, the rule ``genicam:`` waits by too)."""
        if not self._triggered:
            return FrameMissed(f"{self.name}: no frame within {self.timeout_s:g} s")
        return awaiting_trigger(self.name, self.timeout_s, self._read_link_register)

    def _read_link_register(self) -> None:
        """One read of ``LINK_CHECK_REGISTER`` over the control link (raises ``GLib.Error`` when the link is down)."""
        self._camera.get_device().read_register(LINK_CHECK_REGISTER)

    def _image(self, buffer) -> np.ndarray:
        """The buffer's image as (H, W) gray or (H, W, 3) BGR uint8, by its own pixel format, size and padding."""
        fmt = self._buffer_format(buffer)
        channels, convert = PIXEL_FORMATS[fmt]
        data = buffer.get_data()
        height, width = buffer.get_image_height(), buffer.get_image_width()
        x_padding = self._x_padding(buffer, len(data), height * width * channels)
        image = image_from_rows(data, height, width, channels, x_padding, self.name)
        return convert(image) if convert else image

    def _buffer_format(self, buffer) -> str:
        """The ``PIXEL_FORMATS`` name of the buffer's PFNC pixel format (0, none given: the camera's at connect)."""
        code = buffer.get_image_pixel_format()
        if not code:
            return self._pixel_format
        fmt = PFNC_NAMES.get(code)
        if fmt is None:
            raise CameraError(f"{self.name}: pixel format 0x{code:08x} is not supported; expected one of "
                              f"{sorted(PIXEL_FORMATS)}: set PixelFormat on the camera")
        return fmt

    def _x_padding(self, buffer, data_bytes: int, packed_bytes: int) -> int:
        """Bytes after each row (the buffer's leader). An Aravis without ``get_image_padding``: 0 when the data is
        exactly the packed image, else CameraError (rows could be padded; reading them packed would shear them)."""
        get_padding = getattr(buffer, "get_image_padding", None)
        if get_padding is not None:
            return int(get_padding()[0])
        if data_bytes == packed_bytes:
            return 0
        raise CameraError(f"{self.name}: the frame is {data_bytes} bytes, not the {packed_bytes} of its packed rows, "
                          "and this Aravis cannot tell the rows' padding (no Buffer.get_image_padding): upgrade "
                          "Aravis 0.8 (gir1.2-aravis-0.8) to a release that has arv_buffer_get_image_padding")

    def _number(self, frame_id: int) -> None:
        """Set the next frame's seq from the camera's frame id (gaps = frames lost on the way)."""
        if self._last_id is not None:
            self._seq += max(0, frame_step(self._last_id, frame_id) - 1)
        self._last_id = frame_id

    def _release(self) -> None:
        """Stop acquisition if it was started (a connect that failed before, e.g. on a camera another program
        controls, sends nothing) and drop the camera. A camera that is gone cannot be stopped: one warning line."""
        camera, acquiring = self._camera, self._acquiring
        self._camera, self._stream, self._acquiring = None, None, False
        if camera is None or not acquiring:
            return
        try:
            camera.stop_acquisition()
        except Exception as exc:  # noqa: BLE001 - GLib.Error: the link is down (expected on a reconnect)
            log.warning("camera %s: stop_acquisition failed (camera gone?): %s", self.name, exc)
