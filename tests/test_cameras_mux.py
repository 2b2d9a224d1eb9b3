"""Several cameras read as one stream (fair_edge.cameras.mux): frames in turn, tagged with their camera; a camera
that ends leaves the others going; stopping asks every camera at once."""

from __future__ import annotations

import queue
import threading
import time

import numpy as np
import pytest

from fair_edge.cameras import CaptureSettings, CaptureThread, EndOfStream, LineSource
from fair_edge.cameras.mux import CaptureMux
from fair_edge.records import Frame


def images(n: int, value: int) -> list[np.ndarray]:
    return [np.full((8, 8, 3), value + i, np.uint8) for i in range(n)]


def wait_until(cond, timeout_s: float = 10.0) -> bool:
    """Poll ``cond()`` every 5 ms until it is true or ``timeout_s`` passed (a bound for a hung test, never a timing
    claim); returns its last value."""
    deadline = time.monotonic() + timeout_s
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.005)
    return bool(cond())


def make_mux(sources: dict) -> CaptureMux:
    mux = CaptureMux()
    mux.set_captures({name: CaptureThread(src, CaptureSettings(queue_size=16, full_policy="block"), on_queued=mux.wake)
                      for name, src in sources.items()})
    return mux


def test_every_frame_once_tagged_and_in_turn_until_every_camera_ended():
    mux = make_mux({"a": LineSource(images(5, 0), loop=False, name="a"),
                    "b": LineSource(images(2, 100), loop=False, name="b"),
                    "c": LineSource(images(3, 200), loop=False, name="c")})
    got = []
    with mux:
        # every camera queued all its frames and its end (queues of 16 hold them), so the turn order is what is tested
        assert wait_until(lambda: mux.ended), mux.camera_stats()
        while True:
            try:
                got.append(mux.get(timeout=5))
            except EndOfStream:
                break
    assert sorted((f.camera, f.seq) for f in got) == [("a", i) for i in range(5)] + [("b", 0), ("b", 1)] + \
        [("c", i) for i in range(3)]
    assert [f.camera for f in got[:6]] == ["a", "b", "c", "a", "b", "c"]        # in turn while all have frames
    assert all(int(f.image[0, 0, 0]) == {"a": 0, "b": 100, "c": 200}[f.camera] + f.seq for f in got)
    stats = mux.stats()
    assert stats.frames_in == 10 and {n: s.frames_in for n, s in mux.camera_stats().items()} == {"a": 5, "b": 2, "c": 3}


def test_an_empty_wait_times_out_and_a_later_frame_wakes_it():
    class Gate:
        """A source that yields one frame when released."""

        name = "gate"
        nominal_fps = None

        def __init__(self) -> None:
            self.release, self.sent = threading.Event(), False

        def open(self) -> None:
            pass

        def read(self) -> Frame:
            if self.sent:
                raise EndOfStream("done")
            self.release.wait(10)
            self.sent = True
            return Frame(0, time.monotonic(), np.zeros((8, 8, 3), np.uint8), "gate")

        def close(self) -> None:
            self.release.set()

    gate = Gate()
    mux = make_mux({"g": gate})
    with mux:
        with pytest.raises(queue.Empty):
            mux.get(timeout=0.05)
        threading.Timer(0.1, gate.release.set).start()
        frame = mux.get(timeout=10)        # woken by the frame, long before the 10 s
        assert (frame.camera, frame.seq) == ("g", 0)
        with pytest.raises(EndOfStream):
            mux.get(timeout=10)


def test_stop_asks_every_camera_at_once():
    """Each camera's read returns only once every camera of the mux has been asked to stop (or after 5 s): stopped
    one after another, the first camera's read would wait for the others and time out."""
    mux = CaptureMux()
    saw_all: list[bool] = []

    class Slow:
        nominal_fps = None

        def __init__(self, name: str) -> None:
            self.name, self.seq = name, 0

        def open(self) -> None:
            pass

        def read(self) -> Frame:
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                if mux.captures and all(c._stop.is_set() for c in mux.captures.values()):
                    saw_all.append(True)
                    raise EndOfStream("stopped")
                time.sleep(0.005)
            saw_all.append(False)
            raise EndOfStream("timed out")

        def close(self) -> None:
            pass

    mux.set_captures({n: CaptureThread(Slow(n), CaptureSettings(stop_timeout_s=10), on_queued=mux.wake)
                      for n in ("a", "b", "c")})
    mux.start()
    assert mux.stop()
    assert saw_all == [True, True, True]
