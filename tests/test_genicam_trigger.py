"""A ``genicam:`` camera the line triggers (TriggerMode On) waits for parts as an ``aravis:`` one does: it opens on an
idle line, a wait without a frame is no part yet once a register read proves the link (never a reconnect), an
unplugged camera is still a lost link, reconnected, and stopping ends the wait within one fetch step.

Before, GenICamSource read no TriggerMode: open() on an idle line failed (no first frame), and every fetch timeout
between parts (a break on the line) was a lost link: the camera was closed, reconnected with back-off (a fault
shown, the first part after the break read by the reconnect's open()), again at each gap."""

from __future__ import annotations

import queue
import time
import types

import numpy as np
import pytest

from fair_edge.cameras import CaptureSettings, CaptureState, CaptureThread, EndOfStream, FrameMissed, genicam
from fair_edge.cameras.genicam import FETCH_STEP_S, LINK_CHECK_REGISTER, GenICamSource, trigger_mode_reads_on
from fair_edge.errors import CameraError

from test_cameras_aravis_fake import wait_for
from test_genicam_padding import FakeBuffer, FakeComponent, FakeNodeMap, GenTLInvalidAddress, GenTLTimeout

FAST = dict(backoff_initial_s=0.01, backoff_max_s=0.05)


class FakeCamera:
    """One GenICam camera behind a GenTL producer, on a link that can be pulled (``unplug``) and plugged back.

    Parts (``send``) are frames its trigger took, waiting for a fetch. ``fetch(timeout)`` waits up to ``timeout``
    for one, else raises GenTL's timeout (as harvesters does; also while unplugged: no buffer comes). A register
    read over the remote port (``port.read``) raises GenTL's timeout while unplugged, as does connecting; one of an
    address below ``register_map_start`` is refused with GenTL's InvalidAddressException (an emulated camera)."""

    def __init__(self, trigger_mode: str | None = "On") -> None:
        features = {} if trigger_mode is None else {"TriggerMode": trigger_mode}
        self.remote_device = types.SimpleNamespace(node_map=FakeNodeMap(features), port=self)
        self.parts: queue.Queue = queue.Queue()
        self.plugged, self.connects, self.register_reads = True, 0, 0
        self.register_map_start = 0
        self.fetch_waits: list[float] = []   # the timeout each fetch was given, seconds

    def send(self, value: int) -> None:
        self.parts.put(FakeComponent(np.full((4, 6), value, np.uint8), "Mono8", x_padding=0))

    def unplug(self) -> None:
        self.plugged = False

    def plug_back(self) -> None:
        self.plugged = True

    # ---- what harvesters' Harvester / ImageAcquirer / remote port calls GenICamSource makes
    def create(self, key) -> FakeCamera:
        if not self.plugged:
            raise GenTLTimeout("no device answered")
        self.connects += 1
        return self

    def fetch(self, timeout: float) -> FakeBuffer:
        self.fetch_waits.append(timeout)
        try:
            component = self.parts.get(timeout=timeout) if self.plugged else None
        except queue.Empty:
            component = None
        if component is None:
            raise GenTLTimeout("GenTL timeout")
        return FakeBuffer(component)

    def read(self, address: int, size: int) -> tuple[int, bytes]:
        if not self.plugged:
            raise GenTLTimeout(f"port read of 0x{address:04x} timed out")
        assert address == LINK_CHECK_REGISTER
        self.register_reads += 1
        if address < self.register_map_start:
            raise GenTLInvalidAddress("GenTL exception: Address is out of range or invalid. (ID: -1015)")
        return size, bytes(size)

    def start(self) -> None: pass

    def stop(self) -> None: pass

    def destroy(self) -> None: pass


@pytest.fixture
def camera(monkeypatch, tmp_path) -> FakeCamera:
    cam = FakeCamera()

    class FakeHarvester:
        device_info_list = [object()]

        def add_file(self, path: str) -> None: pass

        def update(self) -> None: pass

        def create(self, key) -> FakeCamera:
            return cam.create(key)

        def reset(self) -> None: pass

    monkeypatch.setattr(genicam, "_import_harvester",
                        lambda cti: (FakeHarvester, GenTLTimeout, (GenTLInvalidAddress,)))
    (tmp_path / "Producer.cti").write_bytes(b"")
    cam.cti = tmp_path / "Producer.cti"
    return cam


def test_a_triggered_camera_opens_on_an_idle_line_and_an_idle_wait_is_no_lost_link(camera):
    source = GenICamSource(camera.cti, serial="FE01", timeout_s=0.3)
    source.open()                                          # no part yet: no first frame to read
    assert source.triggered and source.nominal_fps is None and camera.fetch_waits == []
    with pytest.raises(FrameMissed, match="no trigger within 0.3 s") as raised:
        source.read()
    assert type(raised.value).__name__ == "AwaitingTrigger" and camera.register_reads == 1
    assert max(camera.fetch_waits) <= FETCH_STEP_S and sum(camera.fetch_waits) == pytest.approx(0.3)
    camera.send(7)
    assert source.read().image[0, 0] == 7
    camera.unplug()
    with pytest.raises(CameraError, match="does not answer a register read") as raised:
        source.read()
    assert not isinstance(raised.value, FrameMissed)       # the link check failed: a lost link
    source.close()


def test_an_idle_triggered_line_is_no_fault_and_its_first_part_after_the_break_is_taken(camera):
    """The report: a break on the line reconnected the camera at every fetch timeout (a fault, the station flagged).
    Now the camera connects once, waits, and the first part after the break is the next frame."""
    source = GenICamSource(camera.cti, serial="FE01", timeout_s=0.3)
    with CaptureThread(source, CaptureSettings(queue_size=16, **FAST)) as cap:
        wait_for(lambda: camera.register_reads >= 3, "three idle waits")   # the break
        camera.send(1)                                                     # the first part after it
        assert cap.get(timeout=5).image[0, 0] == 1
        stats = cap.stats()
        assert (stats.state, stats.read_errors, stats.reconnects, camera.connects) == (CaptureState.RUNNING, 0, 0, 1)
    assert cap.stats().frames_lost_estimate == 0           # no nominal fps: idle time is no lost frames


def test_a_triggered_camera_has_no_nominal_fps_so_an_outage_counts_no_frames_lost(camera):
    """fps is the free-running rate: a triggered camera's frames come with the parts, so it has no nominal fps and the
    time across a reconnect is no frames lost (at 5.0 fps the gap measured here would count 4 or more)."""
    source = GenICamSource(camera.cti, serial="FE01", timeout_s=0.3, fps=5.0)
    with CaptureThread(source, CaptureSettings(queue_size=4, **FAST)) as cap:
        camera.send(1)
        before = cap.get(timeout=5)
        assert source.triggered and source.nominal_fps is None
        camera.unplug()
        wait_for(lambda: cap.stats().state is CaptureState.RECONNECTING, "the link check to fail")
        camera.plug_back()
        wait_for(lambda: cap.stats().reconnects == 1, "the reconnect")
        wait_for(lambda: time.monotonic() - before.t_capture >= 1.0, "1 s since the frame before the outage")
        camera.send(2)
        after = cap.get(timeout=5)
        assert after.image[0, 0] == 2 and after.resumed     # the first frame after an outage: its gap is estimated
        assert round((after.t_capture - before.t_capture) * 5.0) - 1 >= 4
        assert cap.stats().frames_lost_estimate == 0


def test_a_triggered_camera_unplugged_while_idle_is_reconnected(camera):
    source = GenICamSource(camera.cti, serial="FE01", timeout_s=0.3)
    with CaptureThread(source, CaptureSettings(queue_size=4, **FAST)) as cap:
        wait_for(lambda: camera.register_reads >= 1, "an idle wait")
        camera.unplug()
        wait_for(lambda: cap.stats().state is CaptureState.RECONNECTING, "the link check to fail")
        assert "does not answer a register read" in cap.stats().outage_cause
        camera.plug_back()
        wait_for(lambda: cap.stats().reconnects == 1, "the reconnect")
        camera.send(2)
        assert cap.get(timeout=5).image[0, 0] == 2


def test_a_camera_that_refuses_the_link_check_address_answers_and_waits_for_parts(camera):
    """A camera (an emulated one: Viky's register map does not start at 0) refuses the link check's address with
    GenTL's InvalidAddressException: an error answer, so the link is up. Before, any error of that read was 'the
    camera does not answer a register read: the link is down': reconnected at every idle wait, forever."""
    camera.register_map_start = 0x1000
    source = GenICamSource(camera.cti, serial="FE01", timeout_s=0.3)
    with CaptureThread(source, CaptureSettings(queue_size=4, **FAST)) as cap:
        wait_for(lambda: camera.register_reads >= 3, "three idle waits")
        camera.send(5)
        assert cap.get(timeout=5).image[0, 0] == 5
        stats = cap.stats()
        assert (stats.state, stats.read_errors, stats.reconnects, camera.connects) == (CaptureState.RUNNING, 0, 0, 1)
        camera.unplug()                                    # no answer at all is still a lost link
        wait_for(lambda: cap.stats().state is CaptureState.RECONNECTING, "the link check to fail")
        assert "does not answer a register read" in cap.stats().outage_cause


def test_stopping_ends_a_triggered_wait_at_its_next_fetch_step_without_a_link_check(camera):
    """The stop wait stays bounded with the link check after each wait: stop() interrupts the wait, which ends at
    its next fetch step (FETCH_STEP_S), with no register read after it."""
    source = GenICamSource(camera.cti, serial="FE01", timeout_s=2.0)
    source.open()
    source.interrupt()
    with pytest.raises(EndOfStream, match="stopped while waiting"):
        source.read()
    assert camera.fetch_waits == [pytest.approx(FETCH_STEP_S)] and camera.register_reads == 0
    source.close()


@pytest.mark.parametrize("trigger_mode", ["Off", None], ids=["trigger-off", "no-trigger-feature"])
def test_a_free_running_cameras_fetch_timeout_is_still_a_lost_link(camera, trigger_mode):
    camera.remote_device.node_map = FakeNodeMap({} if trigger_mode is None else {"TriggerMode": trigger_mode})
    camera.send(3)
    source = GenICamSource(camera.cti, serial="FE01", timeout_s=0.3, fps=5.0)
    source.open()                                          # free-running: the first frame is read at open
    assert not source.triggered and source.nominal_fps == 5.0 and source.read().image[0, 0] == 3
    with pytest.raises(CameraError, match="no frame within 0.3 s from a free-running camera") as raised:
        source.read()
    assert not isinstance(raised.value, FrameMissed) and camera.register_reads == 0
    assert camera.fetch_waits[-1] == 0.3                   # one fetch of the whole wait, as before
    source.close()


def test_a_camera_whose_trigger_mode_node_is_not_available_opens_free_running(camera):
    """A camera XML may declare TriggerMode with pIsAvailable 0: GenApi's has_node finds it, reading it raises
    AccessException. That is no readable TriggerMode: the camera runs free and opens (before, open() failed with
    'cannot start the camera ... check the cable' at every reconnect)."""
    camera.remote_device.node_map = FakeNodeMap(unavailable=("TriggerMode",))
    camera.send(4)
    source = GenICamSource(camera.cti, serial="FE01", timeout_s=0.3, fps=5.0)
    source.open()                                          # free-running: its first frame is read at open
    assert not source.triggered and source.nominal_fps == 5.0 and source.read().image[0, 0] == 4
    source.close()


def test_trigger_mode_without_has_node_reads_the_feature_or_runs_free():
    """The rule aravis: reads by too: with no "is it there" call, a failing read of TriggerMode is no such feature."""
    def no_such_node(name: str) -> str:
        raise LookupError(f"node {name} not found")

    assert trigger_mode_reads_on(None, lambda name: "On")
    assert not trigger_mode_reads_on(None, no_such_node)
    assert not trigger_mode_reads_on(FakeNodeMap({"TriggerMode": "Off"}).has_node, lambda name: "Off")
