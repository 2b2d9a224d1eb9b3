"""Several cameras read as one stream: ``CaptureMux`` takes the frames of named ``CaptureThread``s in turn.

The inspection loop reads a mux as it reads one capture thread (``get``, ``stop``, ``stats``), so
frames of several cameras land in one batch. Each frame comes out tagged with its camera's name
(``Frame.camera``). Cameras are served in turn (a busy camera cannot starve the others), and a camera
whose stream ended is left out while the others go on: the mux ends when every camera has ended.

    mux = CaptureMux({"top": top_capture, "left": left_capture})   # each built with on_queued=mux.wake
    with mux:
        frame = mux.get(timeout=0.05)   # Frame(..., camera="left")
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time

from fair_edge.records import Frame

from .base import CaptureStats, EndOfStream
from .capture import CaptureThread


class CaptureMux:
    """Named capture threads read in turn. captures: camera name -> its (not started) ``CaptureThread``,
    made with ``on_queued=mux.wake`` (``set_captures``) so a waiting ``get`` wakes on any frame."""

    def __init__(self) -> None:
        self.captures: dict[str, CaptureThread] = {}
        self._ready = threading.Event()
        self._turn = 0
        self._ended: set[str] = set()

    def set_captures(self, captures: dict[str, CaptureThread]) -> None:
        self.captures = dict(captures)

    def wake(self) -> None:
        """A camera queued a frame or ended (its ``on_queued`` hook)."""
        self._ready.set()

    # ---- lifecycle ------------------------------------------------------------------
    def start(self) -> CaptureMux:
        """Start every camera; if one cannot open, the ones started are stopped and its error raised."""
        started = []
        try:
            for capture in self.captures.values():
                capture.start()
                started.append(capture)
        except BaseException:
            for capture in started:
                capture.stop()
            raise
        return self

    def stop(self) -> bool:
        """Stop every camera at once (each may wait up to its ``stop_timeout_s`` for a read in progress; one after
        another, N paced cameras would take N frame periods); idempotent. True when every reader finished."""
        finished: dict[str, bool] = {}
        stoppers = [threading.Thread(target=lambda n=name, c=capture: finished.__setitem__(n, c.stop()),
                                     name=f"stop-{name}") for name, capture in self.captures.items()]
        for stopper in stoppers:
            stopper.start()
        for stopper in stoppers:
            stopper.join()
        return all(finished.values())

    close = stop

    def __enter__(self) -> CaptureMux:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- consumer side ----------------------------------------------------------------
    def get(self, timeout: float | None = None) -> Frame:
        """The next frame of the next camera in turn that has one, tagged with its name. Raises
        ``queue.Empty`` when none comes within ``timeout`` s, ``EndOfStream`` once every camera ended."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self._ready.clear()   # cleared before looking, so a frame queued meanwhile sets it again
            frame = self._take()
            if frame is not None:
                return frame
            if len(self._ended) == len(self.captures):
                raise EndOfStream("every camera's stream ended")
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise queue.Empty
            self._ready.wait(left)

    def _take(self) -> Frame | None:
        names = list(self.captures)
        for i in range(len(names)):
            name = names[(self._turn + i) % len(names)]
            if name in self._ended:
                continue
            try:
                frame = self.captures[name].get(timeout=0)
            except queue.Empty:
                continue
            except EndOfStream:
                self._ended.add(name)
                continue
            self._turn = (self._turn + i + 1) % len(names)
            return dataclasses.replace(frame, camera=name)
        return None

    def qsize(self) -> int:
        return sum(capture.qsize() for capture in self.captures.values())

    @property
    def ended(self) -> bool:
        return all(capture.ended for capture in self.captures.values())

    def stats(self) -> CaptureStats:
        """Every camera's counters summed; state, end reason and outage cause of the first camera not running (or
        the first)."""
        per = self.camera_stats()
        out = {k: sum(getattr(s, k) for s in per.values())
               for k in ("frames_in", "dropped_queue_full", "read_errors", "reconnects", "frames_lost_estimate",
                         "unreadable")}
        first = next((s for s in per.values() if s.state.value != "running"), next(iter(per.values())))
        return CaptureStats(**out, state=first.state, end_reason=first.end_reason, outage_cause=first.outage_cause)

    def camera_stats(self) -> dict[str, CaptureStats]:
        """Each camera's own counters, by name."""
        return {name: capture.stats() for name, capture in self.captures.items()}
