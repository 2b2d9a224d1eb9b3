"""The frame-source protocol every camera adapter implements, and the helpers they share.

A source is a resource owner: ``open()`` connects and proves it works by reading a first
frame (fail fast), ``read()`` returns the next :class:`~fair_edge.records.Frame` or raises,
``close()`` releases and is safe to call twice. ``open()`` on an open source is a no-op and
``open()`` after ``close()`` reconnects, which is what :class:`CaptureThread` relies on.

What ``read()`` raises tells the capture loop what to do:
  :class:`EndOfStream`  no frame will ever come (replay finished): end the stream.
  :class:`FrameMissed`  this read gave no frame but the link may be fine: count it, retry.
  :class:`~fair_edge.errors.CameraError` (any other)  the link is down: reconnect.
A failed read is never turned into a substitute (black) frame.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Protocol, runtime_checkable

import numpy as np

from fair_edge.errors import CameraError, ConfigError
from fair_edge.preprocess import check_frame
from fair_edge.records import Frame

log = logging.getLogger(__name__)


class EndOfStream(CameraError):
    """The source has no more frames (a replay ended without looping, or a reader gave up).

    ``cause``: the exception that ended the stream, if it ended on a failure, else ``None``.
    """

    def __init__(self, message: str, cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.cause = cause


class FrameMissed(CameraError):
    """One read delivered no frame, but the source may still be connected (a counted event)."""


@runtime_checkable
class FrameSource(Protocol):
    """What the capture loop needs from a camera, a replay or a synthetic line.

    name: a short human-readable label used in logs and error messages.
    nominal_fps: frames per second the source delivers when healthy; ``None`` if unknown.
    """

    name: str

    @property
    def nominal_fps(self) -> float | None: ...

    def open(self) -> None:
        """Connect and read a first frame; raise ``CameraError`` naming the source and the fix."""

    def read(self) -> Frame:
        """Return the next frame; raise ``EndOfStream``, ``FrameMissed`` or ``CameraError``."""

    def close(self) -> None:
        """Release the device; idempotent; clean-up failures are logged, not raised."""

    def __enter__(self) -> FrameSource: ...

    def __exit__(self, *exc: object) -> None: ...


class SourceBase:
    """Context-manager plumbing and the sequence counter shared by the concrete sources.

    Subclasses implement ``_connect() -> np.ndarray`` (open and return the first image),
    ``_grab() -> tuple[np.ndarray, str]`` (next image and its ``Frame.source`` label) and
    ``_release()`` (also called after a failed ``_connect``, so it must cope with a
    half-open state). The first image read by ``_connect`` is returned by the next ``read()``,
    so fail-fast opening loses no frame. Sequence numbers keep counting across reconnects.
    """

    name: str = "source"

    def __init__(self) -> None:
        self._is_open = False
        self._pending: tuple[np.ndarray, str] | None = None
        self._seq = 0

    @property
    def nominal_fps(self) -> float | None:
        return None

    @property
    def is_open(self) -> bool:
        return self._is_open

    def open(self) -> None:
        if self._is_open:
            return
        try:
            first = self._connect()
            check_image(first[0], self.name)
        except BaseException:
            self._release_logged()
            raise
        self._pending = first
        self._is_open = True
        log.info("camera %s: opened", self.name)

    def read(self) -> Frame:
        if not self._is_open:
            raise CameraError(f"{self.name}: read() on a closed source; call open() first (or use `with`)")
        if self._pending is not None:
            image, label = self._pending
            self._pending = None
        else:
            image, label = self._grab()
        return self._make_frame(image, label)

    def close(self) -> None:
        if not self._is_open:
            return
        self._is_open = False
        self._pending = None
        self._release_logged()

    def _release_logged(self) -> None:
        try:
            self._release()
        except Exception:  # clean-up must not mask the caller's error; logged, not hidden
            log.exception("camera %s: error while releasing; continuing", self.name)

    def __enter__(self) -> SourceBase:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _make_frame(self, image: np.ndarray, label: str) -> Frame:
        image = freeze(image)  # checked once, by the inspection loop (a malformed frame: an NG verdict)
        frame = Frame(seq=self._seq, t_capture=time.monotonic(), image=image, source=label)
        self._seq += 1
        return frame

    def _connect(self) -> tuple[np.ndarray, str]:
        raise NotImplementedError

    def _grab(self) -> tuple[np.ndarray, str]:
        raise NotImplementedError

    def _release(self) -> None:
        raise NotImplementedError


def check_image(image: object, source: str) -> np.ndarray:
    """Validate an image by the one frame rule (``fair_edge.preprocess.check_frame``) and freeze it: what a
    source does with its first frame at ``open()`` (fail fast on a wrong pixel format) and a synthetic
    line with its images. Frames read afterwards are checked once, by the inspection loop.

    image: expected (H, W, 3) uint8 BGR or (H, W) / (H, W, 1) uint8 gray, H, W >= 2, host memory.
    Returns it as (H, W, 3) or (H, W), marked read-only (frames are never mutated downstream).
    Raises CameraError naming the source, the expected and the found shape/dtype and the fix.
    """
    try:
        image = check_frame(image)
    except ConfigError as exc:
        raise CameraError(f"{source}: {exc} Set the camera to an 8-bit mono or BGR pixel format.") from None
    return freeze(image)


def freeze(image: np.ndarray) -> np.ndarray:
    """Mark a captured array read-only (a frame is never mutated after capture); anything else is passed on
    as it is, for the inspection loop's check to turn into a "malformed frame" verdict."""
    if isinstance(image, np.ndarray):
        image.flags.writeable = False
    return image


def check_fps(fps: float, source: str) -> float:
    """Validate a replay rate: frames per second >= 0 (0 = as fast as possible)."""
    if not isinstance(fps, (int, float)) or fps < 0 or fps != fps:
        raise ConfigError(f"{source}: fps must be a number >= 0 (0 = as fast as possible), found {fps!r}")
    return float(fps)


class Pacer:
    """Spaces calls to ``wait()`` at ``1 / fps`` seconds (monotonic clock).

    fps: frames per second, 0 = no waiting. A late caller is not made to catch up with a
    burst: the next slot is counted from the later of the schedule and now. ``wake()``
    (thread-safe) ends a pending wait early; ``reset()`` restarts the schedule.
    """

    def __init__(self, fps: float) -> None:
        self.period = 1.0 / fps if fps > 0 else 0.0
        self._next: float | None = None
        self._wake = threading.Event()

    def reset(self) -> None:
        self._next = None
        self._wake.clear()

    def wake(self) -> None:
        self._wake.set()

    def wait(self) -> None:
        if self.period == 0.0:
            return
        now = time.monotonic()
        if self._next is None or self._next < now:
            self._next = now
        delay = self._next - now
        if delay > 0:
            self._wake.wait(delay)
        self._next += self.period
