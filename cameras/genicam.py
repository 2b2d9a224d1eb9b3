"""GenICam (GigE Vision / USB3 Vision) cameras through ``harvesters`` and a GenTL producer.

``harvesters`` is an optional extra (``pip install 'fair-edge[genicam]'``), imported only
when a GenICam source is opened. The GenTL producer is a ``.cti`` file shipped with the
camera vendor's SDK (e.g. Basler pylon, Teledyne Spinnaker, MATRIX VISION mvGenTL).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from fair_edge.errors import CameraError

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


def _import_harvester(cti: Path) -> type:
    """``harvesters.core.Harvester``, or CameraError saying how to install it."""
    try:
        from harvesters.core import Harvester
    except ImportError as exc:
        raise CameraError(
            "GenICam cameras need the optional package 'harvesters', which is not installed: "
            "run `pip install 'fair-edge[genicam]'` (or `pip install harvesters`). You also need "
            f"the GenTL producer .cti file of your camera's SDK (configured: {cti})"
        ) from exc
    return Harvester


class GenICamSource(SourceBase):
    """Frames from a GenICam camera.

    cti: path of the GenTL producer (.cti). serial: camera serial number; ``None`` = the
    camera at ``index`` in the producer's device list. timeout_s: fetch timeout, seconds.
    Supported pixel formats: see ``PIXEL_FORMATS`` (8-bit mono, BGR/RGB, Bayer); frames are
    (H, W) uint8 gray or (H, W, 3) uint8 BGR, copied out of the driver's buffer.
    """

    def __init__(self, cti: str | Path, *, serial: str | None = None, index: int = 0,
                 timeout_s: float = 2.0, fps: float | None = None, name: str | None = None) -> None:
        super().__init__()
        self.cti = Path(cti)
        self.serial, self.index, self.timeout_s, self.fps = serial, index, timeout_s, fps
        self.name = name or f"genicam:{serial if serial is not None else index}"
        self._harvester = None
        self._acquirer = None

    @property
    def nominal_fps(self) -> float | None:
        return self.fps

    def _connect(self) -> tuple[np.ndarray, str]:
        harvester_cls = _import_harvester(self.cti)
        if not self.cti.is_file():
            raise CameraError(f"{self.name}: GenTL producer not found at {self.cti}; install the camera "
                              "vendor's SDK and set the path of its .cti file")
        self._harvester = harvester_cls()
        try:
            self._harvester.add_file(str(self.cti))
            self._harvester.update()
            key = {"serial_number": self.serial} if self.serial is not None else self.index
            self._acquirer = self._harvester.create(key)
            self._acquirer.start()
        except Exception as exc:  # harvesters/genicam raise their own types; wrapped with context
            found = len(self._harvester.device_info_list)
            raise CameraError(f"{self.name}: cannot start the camera via {self.cti} ({found} device(s) "
                              f"found): {exc}; check the cable, IP configuration and the serial") from exc
        return self._grab()

    def _grab(self) -> tuple[np.ndarray, str]:
        try:
            with self._acquirer.fetch(timeout=self.timeout_s) as buffer:
                component = buffer.payload.components[0]
                fmt = component.data_format
                if fmt not in PIXEL_FORMATS:
                    raise CameraError(f"{self.name}: pixel format {fmt!r} is not supported; expected one "
                                      f"of {sorted(PIXEL_FORMATS)}: set PixelFormat on the camera")
                channels, convert = PIXEL_FORMATS[fmt]
                shape = (component.height, component.width) + ((channels,) if channels > 1 else ())
                image = np.array(component.data, dtype=np.uint8).reshape(shape)  # copy: buffer is requeued
        except CameraError:
            raise
        except Exception as exc:  # timeouts and transport errors -> a lost link for the capture loop
            raise CameraError(f"{self.name}: fetch failed: {exc}") from exc
        return (convert(image) if convert else image), self.name

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
