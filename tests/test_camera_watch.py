"""A station that cannot inspect because its camera is gone raises the fault output."""

import threading
import time

import numpy as np

from fair_edge.cameras import CaptureSettings, CaptureThread, LineSource
from fair_edge.line.scheduler import RejectScheduler
from fair_edge.line.settings import RejectSettings
from fair_edge.station.camera import CameraWatch


class RecordingSink:
    """A SignalSink that records fault levels (what a stack light would show)."""

    name = "recording"

    def __init__(self) -> None:
        self.levels: list[tuple[bool, str]] = []

    def pulse(self, event) -> None:
        pass

    def set_fault(self, active: bool, reason: str) -> None:
        self.levels.append((active, reason))

    def stats(self) -> dict:
        return {}

    def close(self) -> None:
        pass


def wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.01)
    return predicate()


def run_watch(source, settings, until):
    """Consume frames while polling a CameraWatch until ``until(reason)``; returns the fault levels seen."""
    light = RecordingSink()
    with RejectScheduler(RejectSettings(), sinks=RecordingSink(), fault_sinks=light) as scheduler, \
            CaptureThread(source, settings) as capture:
        watch = CameraWatch(capture, scheduler)
        done = threading.Event()

        def consume():
            while not done.is_set() and not capture.ended:
                try:
                    capture.get(timeout=0.02)
                except Exception:  # queue.Empty while reconnecting, EndOfStream at the end
                    pass

        threading.Thread(target=consume, daemon=True).start()
        assert wait_for(lambda: until(watch()), 10)
        done.set()
    return light.levels


def test_fault_output_is_held_during_an_outage_and_released_after():
    images = [np.full((20, 20, 3), 50, np.uint8)] * 3
    source = LineSource(images, fps=100, loop=True, fail_at={5: "disconnect"}, down_for=8)
    settings = CaptureSettings(queue_size=4, backoff_initial_s=0.03, backoff_max_s=0.03)
    seen = []

    def back_after_outage(reason: str) -> bool:
        seen.append(reason)
        return any(s.startswith("camera reconnecting") for s in seen) and reason == ""

    levels = run_watch(source, settings, back_after_outage)
    held = [reason for active, reason in levels[:-1]]
    assert all(active for active, _ in levels[:-1]) and levels[-1] == (False, "cleared")   # held, then released
    # the reason names the outage's cause: the link error, then why each reopen failed (a watch polled late on a
    # loaded machine may see only the latter)
    causes = ["camera reconnecting: line: link lost at slot 5 (injected disconnect)",
              "camera reconnecting: line: camera unreachable (injected outage)"]
    assert held in (causes, causes[1:]), held


def test_a_camera_gone_for_good_keeps_the_fault_on():
    images = [np.full((20, 20, 3), 50, np.uint8)] * 3
    source = LineSource(images, fps=100, loop=True, fail_at={5: "dead"})
    settings = CaptureSettings(queue_size=4, backoff_initial_s=0.01, backoff_max_s=0.01, max_reconnects=3)
    levels = run_watch(source, settings, lambda reason: reason.startswith("camera gone"))
    assert levels[-1][0] is True and "gave up after 3 reconnect attempts" in levels[-1][1]


def test_a_replay_that_ends_is_not_a_fault():
    source = LineSource([np.zeros((20, 20, 3), np.uint8)] * 3, fps=0, loop=False)
    with CaptureThread(source, CaptureSettings(queue_size=8)) as capture:
        assert wait_for(lambda: capture.ended)
        assert CameraWatch(capture, None)() == ""


def test_a_camera_still_down_when_the_run_stops_it_keeps_the_fault_and_is_not_back(caplog):
    """Audit: the station's last watch() came after the run had stopped the capture (state STOPPED), so a camera
    still reconnecting was logged "camera back: inspecting again" and the fault output was cleared while it was
    dead. Now a stopped capture changes nothing, and ``at_stop()`` names the camera as down when the run stopped."""
    images = [np.full((20, 20, 3), 50, np.uint8)] * 3
    source = LineSource(images, fps=100, loop=True, fail_at={5: "dead"})
    settings = CaptureSettings(queue_size=4, backoff_initial_s=30, backoff_max_s=30)   # reconnecting until stopped
    light = RecordingSink()
    with RejectScheduler(RejectSettings(), sinks=RecordingSink(), fault_sinks=light) as scheduler:
        capture = CaptureThread(source, settings).start()
        watch = CameraWatch(capture, scheduler, "top")
        down = "camera top: camera reconnecting: line: link lost for good at slot 5 (injected dead)"
        assert wait_for(lambda: watch() == down)
        capture.stop()
        assert watch() == down   # the run stopped it: not back
        at_stop = watch.at_stop()
    assert at_stop.startswith("camera top: camera down when the run stopped: reconnecting (line: link lost")
    assert [active for active, _ in light.levels] == [True]
    assert "camera back" not in caplog.text


def test_a_camera_delivering_when_the_run_stops_it_is_no_fault():
    source = LineSource([np.zeros((20, 20, 3), np.uint8)] * 3, fps=0, loop=True)
    with CaptureThread(source, CaptureSettings(queue_size=2)) as capture:
        capture.get(timeout=5)
    watch = CameraWatch(capture, None)
    assert watch() == "" and watch.at_stop() == ""
