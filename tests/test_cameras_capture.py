"""CaptureThread: queue policies, reconnect with back-off, loss counting, ending, stopping."""

from __future__ import annotations

import logging
import queue
import threading
import time

import numpy as np
import pytest

from fair_edge.cameras import (
    CaptureSettings,
    CaptureState,
    CaptureThread,
    EndOfStream,
    FrameSource,
    LineSource,
    OpenCVSource,
)
from fair_edge.cameras.capture import SourceBase
from fair_edge.errors import CameraError, ConfigError
from fair_edge.records import Frame

IMAGES = [np.full((8, 8, 3), i, np.uint8) for i in range(4)]
FAST = dict(backoff_initial_s=0.01, backoff_max_s=0.05)


def drain(cap: CaptureThread, timeout: float = 5.0) -> list[Frame]:
    """All frames until end of stream; fails the test instead of hanging."""
    frames = []
    deadline = time.monotonic() + timeout
    while True:
        try:
            frames.append(cap.get(timeout=max(0.0, deadline - time.monotonic())))
        except EndOfStream:
            return frames
        except queue.Empty:
            pytest.fail(f"consumer still waiting after {timeout} s: the stream did not end")


def wait_until_ended(cap: CaptureThread, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cap.ended:
        if time.monotonic() > deadline:
            pytest.fail("reader did not end")
        time.sleep(0.005)


def line(n: int = 12, **kw) -> LineSource:
    return LineSource([IMAGES[i % 4] for i in range(n)], loop=False, **kw)


def test_finished_source_ends_the_stream_and_consumer_loop():
    with CaptureThread(line(12), CaptureSettings(queue_size=64)) as cap:
        frames = list(cap)  # plain iteration must terminate
        stats = cap.stats()
    assert [f.seq for f in frames] == list(range(12))
    assert stats.frames_in == 12 and stats.state is CaptureState.ENDED
    assert "source ended" in stats.end_reason
    with pytest.raises(EndOfStream):
        cap.get(timeout=0)


@pytest.mark.parametrize("policy, kept", [("drop_oldest", [17, 18, 19]), ("drop_newest", [0, 1, 2])])
def test_full_queue_drops_are_counted_under_both_policies(policy, kept):
    cap = CaptureThread(line(20), CaptureSettings(queue_size=3, full_policy=policy))
    with cap:
        wait_until_ended(cap)  # consumer reads nothing until the reader is done
        frames = drain(cap)
        stats = cap.stats()
    assert [f.seq for f in frames] == kept
    assert stats.frames_in == 20 and stats.dropped_queue_full == 17
    assert stats.frames_lost_estimate == 0  # queue drops are ours, not the camera's


def test_disconnect_reconnects_with_exponential_backoff_and_counts_lost_frames(caplog):
    src = line(12, fail_at={5: "disconnect"}, down_for=2)
    settings = CaptureSettings(queue_size=64, backoff_initial_s=0.01, backoff_factor=2.0, backoff_max_s=1.0)
    with caplog.at_level(logging.WARNING), CaptureThread(src, settings) as cap:
        frames = drain(cap)
        stats = cap.stats()
    assert [f.seq for f in frames] == [0, 1, 2, 3, 4, 6, 7, 8, 9, 10, 11]
    assert (stats.reconnects, stats.read_errors, stats.frames_lost_estimate) == (1, 1, 1)
    assert not any(f.resumed for f in frames)   # the gap in seq counts the lost frame
    for delay, attempt in (("0.01", 1), ("0.02", 2), ("0.04", 3)):
        assert f"reconnecting in {delay} s (attempt {attempt})" in caplog.text
    assert "reconnected after" in caplog.text


def test_outage_on_clocked_line_loses_the_frames_that_passed():
    src = LineSource(IMAGES, fps=200, fail_at={3: "disconnect"}, down_for=1)
    settings = CaptureSettings(queue_size=256, backoff_initial_s=0.05, backoff_max_s=0.05)
    with CaptureThread(src, settings) as cap:
        frames = [cap.get(timeout=2) for _ in range(10)]
        stats = cap.stats()
    gaps = sum(b.seq - a.seq - 1 for a, b in zip(frames, frames[1:], strict=False))
    assert stats.reconnects == 1
    assert gaps == stats.frames_lost_estimate >= 10  # >= 0.1 s down at 200 fps, minus slack


class SeqKeepingCamera:
    """A source whose seq does not reveal an outage (like a re-opened USB camera)."""

    name = "seq-keeping"
    nominal_fps = 100.0

    def __init__(self) -> None:
        self.seq, self.failed = 0, False

    def open(self) -> None:
        pass

    def read(self) -> Frame:
        if self.seq == 3 and not self.failed:
            self.failed = True
            raise CameraError("cable pulled")
        if self.seq > 6:
            raise EndOfStream("done")
        time.sleep(0.01)
        self.seq += 1
        return Frame(self.seq, time.monotonic(), IMAGES[0], self.name)

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def test_outage_without_seq_gap_is_estimated_from_time_and_nominal_fps():
    src = SeqKeepingCamera()
    assert isinstance(src, FrameSource)
    settings = CaptureSettings(backoff_initial_s=0.2, backoff_max_s=0.2)
    t0 = time.monotonic()
    with CaptureThread(src, settings) as cap:
        frames = drain(cap)
        stats = cap.stats()
    ran_s = time.monotonic() - t0
    assert [f.seq for f in frames] == [1, 2, 3, 4, 5, 6, 7]
    # ~0.21 s at 100 fps, minus the frame seen; never more than the whole run at 100 fps (a loaded machine's stall
    # lengthens the outage, and the estimate with it)
    assert 15 <= stats.frames_lost_estimate <= ran_s * src.nominal_fps
    assert [f.resumed for f in frames] == [False] * 3 + [True] + [False] * 3   # seq hides the loss: said so


def test_single_missed_frame_is_counted_without_reconnecting():
    with CaptureThread(line(8, fail_at={3: "miss"}), CaptureSettings(queue_size=64, **FAST)) as cap:
        frames = drain(cap)
        stats = cap.stats()
    assert [f.seq for f in frames] == [0, 1, 2, 4, 5, 6, 7]
    assert (stats.read_errors, stats.reconnects, stats.frames_lost_estimate) == (1, 0, 1)


def test_permanent_failure_ends_the_stream_after_max_reconnects():
    src = LineSource(IMAGES, fail_at={3: "dead"})
    settings = CaptureSettings(queue_size=64, max_reconnects=3, **FAST)
    with CaptureThread(src, settings) as cap:
        frames = drain(cap)  # consumer is blocked in get() while the reader gives up
        stats = cap.stats()
        with pytest.raises(EndOfStream) as info:
            cap.get()
    assert [f.seq for f in frames] == [0, 1, 2]
    assert stats.state is CaptureState.ENDED and stats.reconnects == 0
    assert "gave up after 3 reconnect attempts" in stats.end_reason
    assert isinstance(info.value.cause, CameraError)
    assert not cap.alive


def test_reader_bug_ends_the_stream_with_the_cause():
    class Broken(SeqKeepingCamera):
        def read(self):
            raise RuntimeError("bug in a driver wrapper")

    with CaptureThread(Broken()) as cap, pytest.raises(EndOfStream) as info:
        cap.get(timeout=2)
    assert isinstance(info.value.cause, RuntimeError)
    assert "reader crashed" in cap.stats().end_reason


def test_stop_joins_promptly_while_streaming_and_is_idempotent():
    cap = CaptureThread(LineSource(IMAGES, fps=500), CaptureSettings(queue_size=2)).start()
    cap.get(timeout=2)
    assert cap.stop() is True   # the reader finished within stop_timeout_s (False: still in read() after it)
    assert not cap.alive and cap.stats().state is CaptureState.STOPPED
    assert cap.stop() is True  # second stop is a no-op
    drain(cap, timeout=1)  # consumer ends too


def test_stop_interrupts_a_long_backoff():
    src = LineSource(IMAGES, fail_at={1: "dead"})
    cap = CaptureThread(src, CaptureSettings(backoff_initial_s=30, backoff_max_s=30)).start()
    deadline = time.monotonic() + 2
    while cap.stats().state is not CaptureState.RECONNECTING and time.monotonic() < deadline:
        time.sleep(0.005)
    assert cap.stop() is True   # the 30 s back-off was cut short: else stop() gives up after 2 s with False


def test_stop_with_a_stalled_reader_returns_after_timeout_and_consumer_ends():
    src = LineSource(IMAGES, fail_at={2: "stall"}, stall_s=3.0)   # far longer than the 0.1 s stop timeout
    cap = CaptureThread(src, CaptureSettings(queue_size=64, stop_timeout_s=0.1)).start()
    assert [cap.get(timeout=2).seq for _ in range(2)] == [0, 1]  # slot 2 is now stalling
    time.sleep(0.02)
    assert cap.stop() is False  # returned after its 0.1 s timeout, the reader still stuck in read() (3 s stall)
    drain(cap, timeout=1)
    cap._thread.join(10)  # let the daemon finish before the next test


def test_start_fails_fast_when_the_source_cannot_open(tmp_path):
    cap = CaptureThread(OpenCVSource(str(tmp_path / "missing.avi")))
    with pytest.raises(CameraError, match="missing.avi"):
        cap.start()
    assert cap.stop() is True


def test_settings_are_validated():
    with pytest.raises(ConfigError, match="did you mean 'drop_oldest'"):
        CaptureSettings(full_policy="drop_old")
    with pytest.raises(ConfigError, match="queue_size"):
        CaptureSettings(queue_size=0)
    s = CaptureSettings(backoff_initial_s=0.5, backoff_factor=2, backoff_max_s=4)
    assert [s.backoff_s(i) for i in range(5)] == [0.5, 1.0, 2.0, 4.0, 4.0]


def test_stop_racing_a_full_drop_oldest_queue_never_crashes_the_reader(caplog):
    for _ in range(20):
        cap = CaptureThread(LineSource(IMAGES), CaptureSettings(queue_size=1)).start()
        cap.get(timeout=2)
        assert cap.stop() is True
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_stop_wakes_a_slowly_paced_replay_and_no_frame_comes_after_it(tmp_path):
    """A replay paced at one frame per 1000 s: stop() wakes the pacer (the source's interrupt()) and returns
    at once, and the image the reader then gets is neither counted, queued nor handed to on_capture. Before,
    stop() gave up after stop_timeout_s (False), and the reader delivered a frame after the run had ended."""
    import threading

    import cv2

    from fair_edge.cameras import FolderReplaySource

    for i in range(3):
        cv2.imwrite(str(tmp_path / f"{i}.png"), np.full((8, 8, 3), i, np.uint8))
    captured, first = [], threading.Event()

    def on_capture(frame: Frame) -> None:
        captured.append(frame.seq)
        first.set()

    cap = CaptureThread(FolderReplaySource(tmp_path, fps=0.001, loop=True), CaptureSettings(stop_timeout_s=5),
                        on_capture=on_capture).start()
    assert first.wait(10)                 # frame 0 is in; the reader now waits ~1000 s for the next slot
    assert cap.stop() is True, "stop() did not wake the paced replay: it waited stop_timeout_s"
    assert not cap.alive
    assert captured == [0] and cap.stats().frames_in == 1
    assert [f.seq for f in drain(cap)] == [0]


def test_a_frame_read_after_stop_is_not_accepted():
    """A source whose read() returns only when interrupted: that frame arrives after stop() and is dropped
    unseen (no hook, not counted, not queued)."""
    import threading

    from fair_edge.cameras.capture import SourceBase

    class WaitsForInterrupt(SourceBase):
        name = "waits"

        def __init__(self) -> None:
            super().__init__()
            self.woken, self.grabs = threading.Event(), 0

        def interrupt(self) -> None:
            self.woken.set()

        def _connect(self):
            return IMAGES[0], self.name

        def _grab(self):
            self.grabs += 1
            self.woken.wait()
            return IMAGES[1], self.name

        def _release(self) -> None:
            pass

    source, captured = WaitsForInterrupt(), []
    cap = CaptureThread(source, CaptureSettings(stop_timeout_s=5), on_capture=lambda f: captured.append(f.seq)).start()
    assert cap.get(timeout=5).seq == 0
    deadline = time.monotonic() + 5
    while source.grabs == 0 and time.monotonic() < deadline:   # the reader is in (or entering) the wait
        time.sleep(0.005)
    assert cap.stop() is True
    assert captured == [0] and cap.stats().frames_in == 1 and drain(cap) == []


def test_a_frame_taken_before_stop_but_read_while_stopping_is_still_inspected():
    """The reader is inside read() when stop() is called, with an image the camera took before it: that frame is
    queued ahead of the end marker and inspected (its part was on the line); only images taken after stop() are
    dropped."""
    import threading

    from fair_edge.cameras.capture import SourceBase

    class TookItEarlier(SourceBase):
        name = "earlier"

        def __init__(self) -> None:
            super().__init__()
            self.inside, self.release = threading.Event(), threading.Event()

        def _connect(self):
            return IMAGES[0], self.name

        def _grab(self):
            t_taken = time.monotonic()
            self.inside.set()
            self.release.wait()
            if self.grabs_done:
                raise EndOfStream("done")
            self.grabs_done = True
            return IMAGES[1], self.name, t_taken

        grabs_done = False

        def _release(self) -> None:
            pass

    source = TookItEarlier()
    cap = CaptureThread(source, CaptureSettings(stop_timeout_s=5)).start()
    assert cap.get(timeout=5).seq == 0 and source.inside.wait(5)
    stopper = threading.Thread(target=cap.stop)
    stopper.start()
    while not cap._stop.is_set():
        time.sleep(0.001)
    source.release.set()
    stopper.join(10)
    assert [f.seq for f in drain(cap)] == [1] and cap.stats().frames_in == 2



class DiesAfterItsFirstFrame(SourceBase):
    """A 50 fps camera whose first frame was taken ``age_s`` before it was read, then whose link dies for good
    (every read and reopen fails): an outage no frame ever ends."""

    name = "dies"
    nominal_fps = 50.0

    def __init__(self, age_s: float) -> None:
        super().__init__()
        self.age_s, self.opened = age_s, 0

    def _connect(self):
        self.opened += 1
        if self.opened > 1:
            raise CameraError("dies: camera unreachable")
        return IMAGES[0], self.name, time.monotonic() - self.age_s

    def _grab(self):
        raise CameraError("dies: link lost")

    def _release(self) -> None:
        pass


def wait_for_state(cap: CaptureThread, state: CaptureState, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while cap.stats().state is not state:
        if time.monotonic() > deadline:
            pytest.fail(f"capture never reached {state}: {cap.stats()}")
        time.sleep(0.005)


def test_stop_while_the_camera_is_down_counts_the_unfinished_outage_as_lost():
    """Audit: frames lost were estimated only when a frame came back after the outage, so a camera still down when
    the run stopped lost none (summary lost 0). Now stop() estimates the open outage, (t_stop - last frame's
    t_capture) x nominal fps - 1, once, and says why the camera was down (``down_at_stop``)."""
    cap = CaptureThread(DiesAfterItsFirstFrame(age_s=1.0), CaptureSettings(backoff_initial_s=30, backoff_max_s=30))
    cap.start()
    last = cap.get(timeout=5)
    wait_for_state(cap, CaptureState.RECONNECTING)   # in its 30 s back-off: no frame will end this outage
    assert cap.stop() is True
    lost = cap.stats().frames_lost_estimate
    assert lost == round((cap._t_stop - last.t_capture) * 50.0) - 1 >= 49   # the frame seen was 1 s old
    assert cap.down_at_stop == "reconnecting (dies: link lost)"
    cap.stop()
    assert cap.stats().frames_lost_estimate == lost and cap.stats().state is CaptureState.STOPPED   # counted once


def test_stop_while_frames_come_counts_no_outage():
    settings = CaptureSettings(queue_size=2, nominal_fps=50.0)
    with CaptureThread(LineSource(IMAGES, fps=0), settings) as cap:   # on demand: seq has no gaps
        cap.get(timeout=2)
    assert cap.down_at_stop == "" and cap.stats().frames_lost_estimate == 0


class ReopenHangs(SourceBase):
    """A camera whose link drops after its first frame and whose reopen then hangs (a camera that accepts the
    connection and says nothing) until ``release`` is set."""

    name = "hangs"

    def __init__(self) -> None:
        super().__init__()
        self.opened, self.reopening, self.release = 0, threading.Event(), threading.Event()

    def _connect(self):
        self.opened += 1
        if self.opened > 1:
            self.reopening.set()
            self.release.wait(10)
            raise CameraError("hangs: camera unreachable")
        return IMAGES[0], self.name, time.monotonic()

    def _grab(self):
        raise CameraError("hangs: link lost")

    def _release(self) -> None:
        pass


def test_a_stop_while_the_reader_is_held_reopening_the_camera_says_so(caplog):
    """A stop() whose join timed out always said "(blocked in read())", also when the reader was held reopening
    the camera after a lost link (an RTSP camera that accepts and says nothing): the log named the wrong place."""
    source = ReopenHangs()
    cap = CaptureThread(source, CaptureSettings(stop_timeout_s=0.2, **FAST)).start()
    try:
        cap.get(timeout=5)
        assert source.reopening.wait(5)
        with caplog.at_level(logging.WARNING):
            assert cap.stop() is False
        said = [r.getMessage() for r in caplog.records if "did not finish" in r.getMessage()]
        assert len(said) == 1 and "held in reopening the camera" in said[0] and "read()" not in said[0], said
    finally:
        source.release.set()


def test_a_reopen_that_fails_after_the_stop_announces_no_further_attempt(caplog):
    """A stop during a reopen gives up after its wait, and the reader ends when the open does; a failed open then
    logged "reconnecting in ... (attempt 2)" after the stop, as if the camera were still being reconnected (and, at
    the last of ``max_reconnects``, "giving up"). Now the reader ends without announcing another attempt."""
    for max_reconnects in (None, 1):
        source = ReopenHangs()
        cap = CaptureThread(source, CaptureSettings(stop_timeout_s=0.2, max_reconnects=max_reconnects, **FAST)).start()
        cap.get(timeout=5)
        assert source.reopening.wait(5)
        with caplog.at_level(logging.WARNING):
            assert cap.stop() is False
            said_before = len(caplog.records)
            source.release.set()   # the open fails now, after the stop
            deadline = time.monotonic() + 5
            while cap.alive and time.monotonic() < deadline:
                time.sleep(0.01)
        assert not cap.alive
        after = [r.getMessage() for r in caplog.records[said_before:]]
        assert not [m for m in after if "reconnecting in" in m or "giving up" in m], after
        assert cap.stats().state is CaptureState.STOPPED and cap.stats().end_reason == "stop() called"
        caplog.clear()
