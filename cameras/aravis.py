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
"""

from __future__ import annotations

import logging
import time

import numpy as np

from fair_edge.errors import CameraError

from .base import FrameMissed
from .capture import SourceBase
from .genicam import PIXEL_FORMATS

log = logging.getLogger(__name__)

GVSP_ID_MODULUS = 65535   # 16-bit block ids run 1..65535 (0 is reserved)


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


def frame_step(last_id: int, frame_id: int) -> int:
    """Frames from ``last_id`` to ``frame_id`` (1 = the next one), across a 16-bit id wrap."""
    if last_id > GVSP_ID_MODULUS or frame_id > GVSP_ID_MODULUS:   # GEV 2 extended (64-bit) ids
        return frame_id - last_id
    return (frame_id - last_id) % GVSP_ID_MODULUS


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
    fps: set AcquisitionFrameRate (None = leave the camera's setting). timeout_s: how long one
    read waits for a frame before it counts as missed. buffers: stream buffers queued.
    Frames: (H, W) uint8 gray or (H, W, 3) uint8 BGR (``PIXEL_FORMATS``), copied out of the buffer.
    """

    def __init__(self, device: str | None = None, *, fps: float | None = None, timeout_s: float = 1.0,
                 buffers: int = 8, name: str | None = None) -> None:
        super().__init__()
        self.device, self.fps, self.timeout_s, self.buffers = device or None, fps, timeout_s, buffers
        self.name = name or f"aravis:{device or 'first'}"
        self._camera = None
        self._stream = None
        self._last_id: int | None = None
        self._rate: float | None = None

    @property
    def nominal_fps(self) -> float | None:
        return self.fps or self._rate

    def _connect(self) -> tuple[np.ndarray, str, float]:
        aravis = _aravis()
        aravis.update_device_list()
        try:
            self._camera = aravis.Camera.new(self.device)
            if self.fps:
                self._camera.set_frame_rate(float(self.fps))
            self._rate = self._camera.get_frame_rate()
            self._stream = self._camera.create_stream(None, None)
            payload = self._camera.get_payload()
            for _ in range(self.buffers):
                self._stream.push_buffer(aravis.Buffer.new_allocate(payload))
            self._camera.start_acquisition()
        except Exception as exc:  # GLib.Error (not found, no control access) -> CameraError with the fix
            raise CameraError(f"{self.name}: cannot start the camera ({aravis.get_n_devices()} found): {exc}; "
                              "check the cable and IP setup, and the id with `arv-tool-0.8`") from exc
        self._last_id = None
        return self._grab()

    def _grab(self) -> tuple[np.ndarray, str, float]:
        aravis = _aravis()
        buffer = self._stream.timeout_pop_buffer(int(self.timeout_s * 1e6))
        if buffer is None:
            raise FrameMissed(f"{self.name}: no frame within {self.timeout_s:g} s")
        try:
            status = buffer.get_status()
            if status != aravis.BufferStatus.SUCCESS:
                raise FrameMissed(f"{self.name}: incomplete frame ({status.value_nick})")
            image = self._image(buffer)
            self._number(buffer.get_frame_id())
            t_grabbed = monotonic_from_system_ns(buffer.get_system_timestamp())
        finally:
            self._stream.push_buffer(buffer)
        return image, self.name, t_grabbed

    def _image(self, buffer) -> np.ndarray:
        fmt = self._camera.get_pixel_format_as_string()
        if fmt not in PIXEL_FORMATS:
            raise CameraError(f"{self.name}: pixel format {fmt!r} is not supported; expected one of "
                              f"{sorted(PIXEL_FORMATS)}: set PixelFormat on the camera")
        channels, convert = PIXEL_FORMATS[fmt]
        shape = (buffer.get_image_height(), buffer.get_image_width()) + ((channels,) if channels > 1 else ())
        image = np.frombuffer(buffer.get_data(), dtype=np.uint8, count=int(np.prod(shape))).reshape(shape).copy()
        return convert(image) if convert else image

    def _number(self, frame_id: int) -> None:
        """Set the next frame's seq from the camera's frame id (gaps = frames lost on the way)."""
        if self._last_id is not None:
            self._seq += max(0, frame_step(self._last_id, frame_id) - 1)
        self._last_id = frame_id

    def _release(self) -> None:
        camera, self._camera, self._stream = self._camera, None, None
        if camera is not None:
            try:
                camera.stop_acquisition()
            except Exception:  # noqa: BLE001 - a camera that is gone cannot be stopped; logged
                log.warning("camera %s: stop_acquisition failed (camera gone?)", self.name, exc_info=True)
