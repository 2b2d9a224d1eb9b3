"""A synthetic production line: a list of images passing a camera, with injectable faults.

For demos and for testing the capture loop deterministically. Slot ``k`` of the line shows
``images[k % len(images)]`` and its frame has ``seq = k``. At ``fps > 0`` the line runs on
the clock like a real conveyor: slots that pass while nobody reads (an outage, a slow
reader) are lost and show up as sequence gaps. At ``fps = 0`` the line waits for the reader.

Faults, ``fail_at={slot: fault}``, each fires once when the reader reaches that slot:
  ``miss``        that read raises FrameMissed (slot lost, link fine).
  ``disconnect``  that read raises CameraError and the next ``down_for`` open() calls fail.
  ``dead``        like disconnect, but every later open() fails (permanent failure).
  ``stall``       that read blocks ``stall_s`` seconds, then delivers (a hung driver).
  ``end``         that read raises EndOfStream.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from fair_edge.errors import CameraError, ConfigError, did_you_mean

from .base import EndOfStream, FrameMissed, check_fps
from .capture import SourceBase, check_image


def _miss(src: LineSource, slot: int) -> None:
    raise FrameMissed(f"{src.name}: no frame at slot {slot} (injected miss)")


def _disconnect(src: LineSource, slot: int) -> None:
    src._down_remaining = src.down_for
    raise CameraError(f"{src.name}: link lost at slot {slot} (injected disconnect)")


def _dead(src: LineSource, slot: int) -> None:
    src._down_remaining = -1
    raise CameraError(f"{src.name}: link lost for good at slot {slot} (injected dead)")


def _stall(src: LineSource, slot: int) -> None:
    src._wake.wait(src.stall_s)


def _end(src: LineSource, slot: int) -> None:
    raise EndOfStream(f"{src.name}: line stopped at slot {slot} (injected end)")


FAULTS: dict[str, Callable[[LineSource, int], None]] = {
    "miss": _miss, "disconnect": _disconnect, "dead": _dead, "stall": _stall, "end": _end,
}


class LineSource(SourceBase):
    """Yields given images as frames at a set rate, with optional injected faults.

    images: non-empty sequence of (H, W, 3) uint8 BGR or (H, W) uint8 gray arrays (copied).
    fps: line rate in frames per second; 0 = as fast as the reader asks.
    loop: cycle through ``images`` forever; else :class:`EndOfStream` after the last one.
    fail_at: slot -> fault name (see module docstring). down_for: failed open() calls after
    a ``disconnect``. stall_s: seconds a ``stall`` blocks.
    Frames: ``seq`` = slot, ``source`` = ``name``.
    """

    def __init__(self, images: Sequence[np.ndarray], *, fps: float = 0.0, loop: bool = True,
                 fail_at: Mapping[int, str] | None = None, down_for: int = 1, stall_s: float = 1.0,
                 name: str = "line") -> None:
        super().__init__()
        self.name = name
        if len(images) == 0:
            raise ConfigError(f"{name}: expected at least one image, found an empty sequence")
        self.images = [check_image(np.array(img, copy=True), name) for img in images]
        self.fps = check_fps(fps, name)
        self.loop = loop
        self.fail_at = dict(fail_at or {})
        for slot, fault in self.fail_at.items():
            if fault not in FAULTS:
                raise ConfigError(f"{name} fail_at[{slot}]: expected one of {sorted(FAULTS)}, "
                                  f"found {fault!r}{did_you_mean(fault, FAULTS)}")
        self.down_for, self.stall_s = down_for, stall_s
        self._faults_left = dict(self.fail_at)  # faults not yet fired
        self._down_remaining = 0  # open() calls left to fail; -1 = forever
        self._next_slot = 0
        self._t0: float | None = None
        self._wake = threading.Event()

    @property
    def nominal_fps(self) -> float | None:
        return self.fps or None

    @property
    def on_demand(self) -> bool:
        """fps 0: a slot passes when the reader asks (``SourceBase``)."""
        return self.fps == 0

    def _connect(self) -> tuple[np.ndarray, str]:
        if self._down_remaining != 0:
            if self._down_remaining > 0:
                self._down_remaining -= 1
            raise CameraError(f"{self.name}: camera unreachable (injected outage)")
        self._wake.clear()
        if self._t0 is None:
            self._t0 = time.monotonic()
        return self._grab()

    def _grab(self) -> tuple[np.ndarray, str]:
        slot = self._take_slot()
        due = [k for k in self._faults_left if k <= slot]
        if due:
            FAULTS[self._faults_left.pop(min(due))](self, slot)
        if not self.loop and slot >= len(self.images):
            raise EndOfStream(f"{self.name}: all {len(self.images)} images passed")
        self._seq = slot
        return self.images[slot % len(self.images)], self.name

    def _take_slot(self) -> int:
        """The next slot the reader sees, waiting for it on a clocked line."""
        slot = self._next_slot
        if self.fps > 0:
            now = time.monotonic()
            slot = max(slot, int((now - self._t0) * self.fps))
            due = self._t0 + slot / self.fps
            if due > now:
                self._wake.wait(due - now)
        self._next_slot = slot + 1
        return slot

    def _release(self) -> None:
        self._wake.set()
