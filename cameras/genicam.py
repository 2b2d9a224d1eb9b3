"""GenICam (GigE Vision / USB3 Vision) cameras through ``harvesters`` and a GenTL producer.

``harvesters`` is an optional extra (``pip install 'fair-edge[genicam]'``), imported only
when a GenICam source is opened. The GenTL producer is a ``.cti`` file shipped with the
camera vendor's SDK (e.g. Basler pylon, Teledyne Spinnaker, MATRIX VISION mvGenTL).

A frame's rows are read by their stride, as ``aravis:`` reads them (``image_from_rows``, shared with it): a camera
that pads each line (bytes after ``width x bytes per pixel``) gives its frames unsheared; a buffer whose size
fits neither packed nor equally padded rows is a CameraError, never a garbled frame (``row_padding``).

A camera the line triggers (GenICam ``TriggerMode`` = ``On``, read at connect, as ``aravis:`` reads it:
``trigger_mode_reads_on``; a TriggerMode node that is not readable, e.g. not available, is none) takes a frame per
part: ``open()`` reads no first frame, a wait of ``timeout_s`` without a frame is ``AwaitingTrigger`` once a register
read over the control link answers (``awaiting_trigger``; an error answer, an address the camera refuses, is an
answer too; no answer is a lost link), and ``nominal_fps`` is None. The wait is fetched in steps of
``FETCH_STEP_S`` that ``interrupt()`` (capture stopping) ends. A free-running camera's fetch timeout is a lost
link, reconnected.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from fair_edge.errors import CameraError

from .base import EndOfStream, awaiting_trigger
from .capture import SourceBase

log = logging.getLogger(__name__)

# PFNC pixel format -> (channels, conversion to our uint8 BGR / gray); others are refused.
# PFNC names a Bayer pattern by the sensor's top-left 2 x 2 (BayerRG8 = R G / G B); OpenCV's classic codes name it
# by the second row's second and third pixels, so PFNC BayerRG is OpenCV BayerBG (its alias COLOR_BayerRGGB2BGR,
# missing from older OpenCV), and so on for the other three.
PIXEL_FORMATS: dict[str, tuple[int, Callable[[np.ndarray], np.ndarray] | None]] = {
    "Mono8": (1, None),
    "BGR8": (3, None),
    "RGB8": (3, lambda a: cv2.cvtColor(a, cv2.COLOR_RGB2BGR)),
    "BayerRG8": (1, lambda a: cv2.cvtColor(a, cv2.COLOR_BayerBG2BGR)),
    "BayerBG8": (1, lambda a: cv2.cvtColor(a, cv2.COLOR_BayerRG2BGR)),
    "BayerGR8": (1, lambda a: cv2.cvtColor(a, cv2.COLOR_BayerGB2BGR)),
    "BayerGB8": (1, lambda a: cv2.cvtColor(a, cv2.COLOR_BayerGR2BGR)),
}


TRIGGER_MODE = "TriggerMode"   # SFNC: On = the selected trigger (TriggerSelector, FrameStart on most cameras) is used
# read to prove the control link (bypassing GenApi's cache): GigE Vision's Version, USB3 Vision's GenCP version register
LINK_CHECK_REGISTER = 0x0000
LINK_CHECK_BYTES = 4
FETCH_STEP_S = 0.1   # a triggered genicam: camera's wait for a frame is fetched in steps this long (interrupt ends it)
# GenApi EAccessMode values whose node can be read now: RO, RW (NI 0 not implemented, NA 1 not available, WO 2)
READABLE_ACCESS_MODES = (3, 4)


def trigger_mode_reads_on(has_feature: Callable[[str], bool] | None, read_string: Callable[[str], str]) -> bool:
    """True when a GenICam camera takes a frame only when triggered: its ``TriggerMode`` reads ``On`` (for the
    ``TriggerSelector`` selected, FrameStart on most cameras). False when it runs free or has no ``TriggerMode``
    feature it can read. has_feature: the API's "is this feature there to read" (Aravis: ``aravis.feature_present``,
    ``is_feature_implemented`` and ``is_feature_available``, the first where the Aravis has it (0.8.23+);
    ``genicam:``'s ``GenICamSource._feature_readable``: a node whose access mode is readable); None where the API
    has none: then a failing read of ``TriggerMode`` is no such feature. read_string:
    the feature's current value as text."""
    if has_feature is not None:
        return bool(has_feature(TRIGGER_MODE)) and read_string(TRIGGER_MODE) == "On"
    try:
        return read_string(TRIGGER_MODE) == "On"
    except Exception:  # noqa: BLE001 - the driver's "no such feature" error -> a free-running camera
        return False


def image_from_rows(data, height: int, width: int, channels: int, x_padding: int, source: str) -> np.ndarray:
    """An 8-bit image copied out of a buffer's ``data`` (bytes, or a uint8 array) whose rows lie
    ``width * channels + x_padding`` bytes apart (``x_padding``: bytes after each row; 0 = packed rows).

    Returns (height, width) uint8 for ``channels`` 1, else (height, width, channels), C-contiguous.
    CameraError naming ``source``, the bytes expected and found when ``data`` is too short for that layout."""
    row_bytes = width * channels
    stride = row_bytes + x_padding
    needed = (height - 1) * stride + row_bytes if height > 0 else 0
    if len(data) < needed:
        raise CameraError(f"{source}: frame data is {len(data)} bytes, expected at least {needed} for "
                          f"{height} rows of {width} x {channels} bytes, {x_padding} byte(s) of padding after each; "
                          "check the camera's PixelFormat, Width and Height")
    shape, strides = (height, width, channels), (stride, channels, 1)
    if channels == 1:
        shape, strides = shape[:2], strides[:2]
    return np.ndarray(shape, np.uint8, buffer=data, strides=strides).copy()


def row_padding(component, data_bytes: int, height: int, row_bytes: int, source: str) -> int:
    """Bytes after each of the ``height`` rows of ``row_bytes`` (width x bytes per pixel) in a harvesters component
    whose data is ``data_bytes`` long: its ``x_padding`` (GenTL's padding_x, bytes at the end of each line) where
    the producer gives one above 0; else read from the data's size less its ``y_padding`` (bytes after the image):
    0 when that is the packed image, the extra bytes per row when it is ``height`` equal padded rows.

    CameraError naming ``source`` and the sizes when the size is neither: rows read packed would be sheared."""
    given = int(getattr(component, "x_padding", 0) or 0)
    if given > 0:
        return given
    image_bytes = data_bytes - int(getattr(component, "y_padding", 0) or 0)
    packed = height * row_bytes
    if image_bytes == packed:
        return 0
    if height > 0 and image_bytes > packed and image_bytes % height == 0:
        return image_bytes // height - row_bytes
    raise CameraError(f"{source}: the frame is {data_bytes} bytes, which is neither its packed image ({height} rows x "
                      f"{row_bytes} bytes = {packed}) nor {height} rows of equal length (padded rows), and the camera "
                      "gives no row padding: check the camera's PixelFormat, Width and Height, and that harvesters "
                      "and the GenTL producer are current")


def _import_harvester(cti: Path) -> tuple[type, type, tuple[type, ...]]:
    """(``harvesters.core.Harvester``, the ``TimeoutException`` its ``fetch`` raises when no buffer came in time,
    the errors with which a camera answers a register read it refuses (InvalidAddressException: the address is
    out of its register map): GenTL's, from ``genicam``, which harvesters installs), or CameraError saying how to
    install them."""
    try:
        from genicam.gentl import InvalidAddressException, TimeoutException
        from harvesters.core import Harvester
    except ImportError as exc:
        raise CameraError(
            "GenICam cameras need the optional package 'harvesters', which is not installed: "
            "run `pip install 'fair-edge[genicam]'` (or `pip install harvesters`). You also need "
            f"the GenTL producer .cti file of your camera's SDK (configured: {cti})"
        ) from exc
    return Harvester, TimeoutException, (InvalidAddressException,)


class GenICamSource(SourceBase):
    """Frames from a GenICam camera.

    cti: path of the GenTL producer (.cti). serial: camera serial number; ``None`` = the
    camera at ``index`` in the producer's device list. timeout_s: how long one read waits for a frame, seconds
    (free-running: then the link counts as lost; triggered: then the link is checked and the read says no part
    came). fps: the camera's free-running frame rate as set in the vendor's tool (not written to the camera).
    Supported pixel formats: see ``PIXEL_FORMATS`` (8-bit mono, BGR/RGB, Bayer); frames are
    (H, W) uint8 gray or (H, W, 3) uint8 BGR, copied out of the driver's buffer row by row (padded rows unsheared).
    """

    def __init__(self, cti: str | Path, *, serial: str | None = None, index: int = 0,
                 timeout_s: float = 2.0, fps: float | None = None, name: str | None = None) -> None:
        super().__init__()
        self.cti = Path(cti)
        self.serial, self.index, self.timeout_s, self.fps = serial, index, timeout_s, fps
        self.name = name or f"genicam:{serial if serial is not None else index}"
        self._harvester = None
        self._acquirer = None
        self._timeout_error: type = Exception   # harvesters' fetch timeout (GenTL TimeoutException), set at connect
        self._answered_errors: tuple[type, ...] = ()   # a refused register read's errors (the camera answered)
        self._triggered = False
        self._interrupted = threading.Event()

    @property
    def nominal_fps(self) -> float | None:
        """The free-running frame rate (frames/s, ``fps``); None for a triggered camera (frames come with the parts)."""
        return None if self._triggered else self.fps

    @property
    def triggered(self) -> bool:
        """True when the camera read ``TriggerMode`` = ``On`` at its last connect (a frame per trigger)."""
        return self._triggered

    def interrupt(self) -> None:
        """End a wait for a frame (capture is stopping): a triggered camera's at its next ``FETCH_STEP_S`` step, a
        free-running one's when its fetch times out; that read raises EndOfStream (no link check, no reconnect)."""
        self._interrupted.set()

    def _connect(self) -> tuple[np.ndarray, str] | None:
        harvester_cls, self._timeout_error, self._answered_errors = _import_harvester(self.cti)
        if not self.cti.is_file():
            raise CameraError(f"{self.name}: GenTL producer not found at {self.cti}; install the camera "
                              "vendor's SDK and set the path of its .cti file")
        self._interrupted.clear()
        self._harvester = harvester_cls()
        try:
            self._harvester.add_file(str(self.cti))
            self._harvester.update()
            key = {"serial_number": self.serial} if self.serial is not None else self.index
            self._acquirer = self._harvester.create(key)
            self._triggered = trigger_mode_reads_on(self._feature_readable, self._feature_text)
            self._acquirer.start()
        except Exception as exc:  # harvesters/genicam raise their own types; wrapped with context
            found = len(self._harvester.device_info_list)
            raise CameraError(f"{self.name}: cannot start the camera via {self.cti} ({found} device(s) "
                              f"found): {exc}; check the cable, IP configuration and the serial") from exc
        if self._triggered:
            log.info("camera %s: TriggerMode On: a frame per trigger, none read at open", self.name)
            return None
        return self._grab()

    def _feature_readable(self, feature: str) -> bool:
        """True when the camera's node map has a node ``feature`` that can be read now (access mode RO or RW).
        GenApi's ``has_node`` alone is a name lookup: a node the camera's XML declares not implemented or not
        available (``pIsImplemented`` / ``pIsAvailable`` 0) is there, and reading it raises AccessException."""
        node_map = self._acquirer.remote_device.node_map
        return node_map.has_node(feature) and node_map.get_node(feature).get_access_mode() in READABLE_ACCESS_MODES

    def _feature_text(self, feature: str) -> str:
        """The camera's GenICam ``feature`` (a node of its GenApi node map) read as text."""
        return str(self._acquirer.remote_device.node_map.get_node(feature).value)

    def _grab(self) -> tuple[np.ndarray, str]:
        """The next frame. CameraError for a fetch that failed or (free-running) timed out: the link is down;
        a triggered camera's wait without a frame: AwaitingTrigger, or EndOfStream when ``interrupt()`` ended it."""
        try:
            with self._fetch() as buffer:
                image, convert = self._image(buffer.payload.components[0])   # a copy: the buffer is requeued
        except CameraError:
            raise
        except Exception as exc:  # transport errors -> a lost link for the capture loop
            raise CameraError(f"{self.name}: fetch failed: {exc}") from exc
        return (convert(image) if convert else image), self.name

    def _fetch(self):
        """The next harvesters buffer (a context manager that requeues it), waited for ``timeout_s`` in all: one
        fetch for a free-running camera, fetches of ``FETCH_STEP_S`` at most for a triggered one, so that
        ``interrupt()`` ends its wait (EndOfStream). None within ``timeout_s``: ``_no_frame``."""
        steps = math.ceil(self.timeout_s / FETCH_STEP_S) if self._triggered else 1
        for _ in range(steps):
            try:
                return self._acquirer.fetch(timeout=self.timeout_s / steps)
            except self._timeout_error:
                if self._interrupted.is_set():
                    raise EndOfStream(f"{self.name}: stopped while waiting for a frame") from None
        raise self._no_frame()

    def _no_frame(self) -> CameraError:
        """What a wait of ``timeout_s`` without a frame means: a lost link for a free-running camera; for a
        triggered one no part yet (``AwaitingTrigger``) once its control link answers a register read."""
        if not self._triggered:
            return CameraError(f"{self.name}: no frame within {self.timeout_s:g} s from a free-running camera: "
                               "taken as a lost link (a camera the line triggers needs TriggerMode On)")
        return awaiting_trigger(self.name, self.timeout_s, self._read_link_register, self._answered_errors)

    def _read_link_register(self) -> None:
        """One read of ``LINK_CHECK_REGISTER`` over the remote device's GenTL port: raises GenTL's
        InvalidAddressException when the camera refuses the address (an emulated device whose register map does
        not start at 0: it answered), another error (TimeoutException, IoException, ...) when the link is down."""
        self._acquirer.remote_device.port.read(LINK_CHECK_REGISTER, LINK_CHECK_BYTES)

    def _image(self, component) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray] | None]:
        """(the harvesters component's image copied out of its buffer, (H, W) or (H, W, channels) uint8; the
        conversion of its pixel format to BGR / gray or None). Each row is read at its own start, ``row_padding``
        bytes after the previous row's pixels, so padded rows are not sheared."""
        fmt = component.data_format
        if fmt not in PIXEL_FORMATS:
            raise CameraError(f"{self.name}: pixel format {fmt!r} is not supported; expected one "
                              f"of {sorted(PIXEL_FORMATS)}: set PixelFormat on the camera")
        channels, convert = PIXEL_FORMATS[fmt]
        data = np.ascontiguousarray(component.data, dtype=np.uint8).reshape(-1)
        height, width = int(component.height), int(component.width)
        x_padding = row_padding(component, data.size, height, width * channels, self.name)
        return image_from_rows(data, height, width, channels, x_padding, self.name), convert

    def _release(self) -> None:
        acquirer, self._acquirer = self._acquirer, None
        harvester, self._harvester = self._harvester, None
        steps = [acquirer.stop, acquirer.destroy] if acquirer is not None else []
        steps += [harvester.reset] if harvester is not None else []
        for step in steps:  # each step runs even if an earlier one failed
            try:
                step()
            except Exception:
                log.exception("camera %s: %s() failed while releasing", self.name, step.__name__)
