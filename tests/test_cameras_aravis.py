"""GenICam through Aravis against Aravis's simulated GigE Vision camera (arv-fake-gv-camera-0.8) on
127.0.0.1: frames arrive; a camera killed mid-run is reconnected, with the frames lost counted."""

from __future__ import annotations

import shutil
import socket
import struct
import subprocess
import sys
import time

import numpy as np
import pytest

from fair_edge.cameras import CaptureSettings, CaptureState, CaptureThread, FrameMissed, parse_source
from fair_edge.cameras.aravis import frame_step, monotonic_from_system_ns
from fair_edge.cameras.triggered import triggered_capture
from test_cameras_triggered import FakeHandshake

FAKE = shutil.which("arv-fake-gv-camera-0.8")


def _aravis_importable() -> bool:
    try:
        import gi

        gi.require_version("Aravis", "0.8")
        from gi.repository import Aravis
    except (ImportError, ValueError):
        return False
    return hasattr(Aravis, "Camera")   # the typelib loaded


needs_fake_camera = pytest.mark.skipif(
    FAKE is None or not _aravis_importable(),
    reason="needs arv-fake-gv-camera-0.8 (apt: aravis-tools), gir1.2-aravis-0.8 and PyGObject "
           "(pip: fair-edge[aravis]); .ci/run installs them")


GVCP_PORT = 3956   # GigE Vision control port: the simulator always listens on it (the client looks there too)


class FakeCamera:
    """arv-fake-gv-camera-0.8 on 127.0.0.1 (GVCP port 3956). ``start`` returns once the simulator answers a GVCP
    discovery with this camera's serial, so a test never talks to a camera that is still starting up."""

    def __init__(self, serial: str = "FE0001") -> None:
        self.serial, self.proc = serial, None

    def start(self, timeout_s: float = 10.0) -> "FakeCamera":
        self.proc = subprocess.Popen([FAKE, "-i", "127.0.0.1", "-s", self.serial], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        try:
            self._wait_ready(timeout_s)
        except BaseException:
            self.kill()
            raise
        return self

    def _wait_ready(self, timeout_s: float) -> None:
        """Send GVCP DISCOVERY_CMD to 127.0.0.1:3956 every 50 ms until an ack names this serial (the bootstrap
        registers' serial number, 0xD8..0xE8 of the ack's payload). Raises naming what answered instead when
        the simulator exits (its port taken) or ``timeout_s`` passes."""
        answered: set[str] = set()
        deadline = time.monotonic() + timeout_s
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(0.05)
            req = 0
            while time.monotonic() < deadline and self.proc.poll() is None:
                req = req % 0xFFFF + 1
                sock.sendto(struct.pack(">BBHHH", 0x42, 0x01, 0x0002, 0, req), ("127.0.0.1", GVCP_PORT))
                try:
                    ack = sock.recv(2048)
                except (socket.timeout, ConnectionRefusedError):
                    continue
                serial = ack[8 + 0xD8:8 + 0xE8].split(b"\0")[0].decode(errors="replace")
                if ack[2:4] == b"\x00\x03" and serial == self.serial:
                    return
                answered.add(serial)
        state = "running" if self.proc.poll() is None else f"exited with {self.proc.returncode}"
        raise RuntimeError(f"fake GigE camera {self.serial}: expected it to answer a GVCP discovery on "
                           f"127.0.0.1:{GVCP_PORT} within {timeout_s:g} s, found it {state} and answers from "
                           f"{sorted(answered) or 'no camera'}; is another simulator holding the port "
                           f"(pgrep -a arv-fake-gv-camera)?")

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None

@pytest.fixture
def camera():
    cam = FakeCamera().start()
    yield cam
    cam.kill()


NOT_IMPLEMENTED_TRIGGER_MODE = r"""
import re, sys
import gi
gi.require_version("Aravis", "0.8")
from gi.repository import Aravis
from fair_edge.cameras.aravis import trigger_mode_on

def trigger_mode_read_on(xml_file=None):
    # Aravis's in-process Fake camera (with xml_file's GenICam XML), its TriggerMode register set to 1 (On)
    if xml_file:
        Aravis.set_fake_camera_genicam_filename(xml_file)
    Aravis.update_device_list()
    camera = Aravis.Camera.new("Fake_1")
    xml = camera.get_device().get_genicam_xml()
    xml = xml if isinstance(xml, str) else xml[0]
    register = re.search(r'Name="TriggerModeRegister".*?<Address>(0x[0-9a-fA-F]+)</Address>', xml, re.S)
    camera.get_device().write_register(int(register.group(1), 16), 1)
    return camera.get_string("TriggerMode"), trigger_mode_on(camera), xml

Aravis.enable_interface("Fake")
read, on, xml = trigger_mode_read_on()
element = re.search(r'<Enumeration Name="TriggerMode"[^>]*>', xml).group(0)
xml = xml.replace(element, element + "<pIsImplemented>TriggerModeImplemented</pIsImplemented>", 1).replace(
    "</RegisterDescription>", '<Integer Name="TriggerModeImplemented"><Value>0</Value></Integer></RegisterDescription>')
open(sys.argv[1], "w").write(xml)
print(read, on, *trigger_mode_read_on(sys.argv[1])[:2])
"""


@pytest.mark.skipif(not _aravis_importable(), reason="needs gir1.2-aravis-0.8 and PyGObject")
def test_a_trigger_mode_the_camera_does_not_implement_is_free_running(tmp_path):
    """Aravis's Fake camera whose TriggerMode has pIsImplemented 0 (its register still reads On): Aravis 0.8's
    is_feature_available said yes, so the camera was taken as triggered. Run in a child process: the Fake
    camera's XML file is process-wide."""
    done = subprocess.run([sys.executable, "-c", NOT_IMPLEMENTED_TRIGGER_MODE, str(tmp_path / "fake.xml")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["On", "True", "On", "False"], done.stdout


def test_frame_ids_wrap_like_gvsp():
    assert frame_step(10, 11) == 1 and frame_step(65535, 1) == 1 and frame_step(65534, 2) == 3
    assert frame_step(70000, 70004) == 4   # GEV 2 extended ids do not wrap at 16 bits


@needs_fake_camera
def test_frames_arrive_from_the_simulated_gige_camera(camera):
    source = parse_source(f"aravis:Aravis-Fake-{camera.serial}", fps=20, timeout_s=0.5)
    with CaptureThread(source, CaptureSettings(queue_size=32)) as cap:
        frames = [cap.get(timeout=5) for _ in range(10)]
        stats = cap.stats()
    assert all(f.image.shape == (512, 512) and f.image.dtype == np.uint8 for f in frames)
    assert [f.seq for f in frames] == sorted(f.seq for f in frames) and frames[-1].seq >= 9
    assert frames[0].image.std() > 0                      # the fake camera's moving test pattern, not blank
    assert stats.state is CaptureState.RUNNING and stats.frames_lost_estimate == frames[-1].seq - 9 - stats.dropped_queue_full


@needs_fake_camera
def test_camera_killed_mid_run_is_reconnected_and_lost_frames_counted(camera):
    source = parse_source(f"aravis:Aravis-Fake-{camera.serial}", fps=20, timeout_s=0.3)
    settings = CaptureSettings(queue_size=256, backoff_initial_s=0.2, backoff_max_s=0.5, misses_before_reconnect=2)
    with CaptureThread(source, settings) as cap:
        first = [cap.get(timeout=5) for _ in range(5)]
        camera.kill()                                   # the camera goes away mid-run ...
        time.sleep(1.5)
        camera.start()                                  # ... and comes back
        deadline = time.monotonic() + 20
        while cap.stats().reconnects < 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        after = []
        while len(after) < 5 and time.monotonic() < deadline:
            try:
                after.append(cap.get(timeout=1))
            except Exception:  # queue.Empty while reconnecting
                continue
        stats = cap.stats()
    assert stats.reconnects >= 1 and stats.read_errors >= 2
    assert stats.frames_lost_estimate >= 20             # ~1.5 s + reconnect at 20 frames/s, estimated
    assert len(after) == 5 and after[-1].seq > first[-1].seq


def test_a_buffer_system_timestamp_maps_onto_the_monotonic_clock():
    """Aravis stamps a buffer with the wall clock (g_get_real_time() * 1000 ns) as its first packet arrives."""
    now_ns, now = time.time_ns(), time.monotonic()
    assert monotonic_from_system_ns(now_ns - 2_000_000_000) == pytest.approx(now - 2.0, abs=0.05)
    assert monotonic_from_system_ns(0) >= now                      # no timestamp: now
    assert monotonic_from_system_ns(now_ns + 10**12) >= now        # ahead of now (clock set back): now


@needs_fake_camera
def test_triggered_frames_that_waited_in_the_stream_buffers_are_skipped_as_stale(camera):
    """No part for a while: the image grabbed at open and the frames that filled the stream's buffers are all
    older than the next trigger. Each comes out stamped when it arrived (the buffer's system timestamp), so the
    triggered source skips them (stale_frames) and takes a frame from after the trigger. Before, every frame was
    stamped when popped, after the trigger, and the part was inspected on an image from before it."""
    source = parse_source(f"aravis:Aravis-Fake-{camera.serial}", fps=20, timeout_s=0.5)
    hs = FakeHandshake()
    with triggered_capture(source, hs, CaptureSettings(queue_size=4)) as cap:
        deadline = time.monotonic() + 20
        while source._stream.get_n_buffers()[1] < 3 and time.monotonic() < deadline:   # the idle gap
            time.sleep(0.05)
        waiting = source._stream.get_n_buffers()[1]
        assert waiting >= 3, "the fake camera filled no stream buffers"
        t_trigger = hs.trigger(1).t_trigger
        frame = cap.get(timeout=10)
    assert frame.t_capture >= t_trigger
    assert hs.stale >= 1 + waiting          # the image grabbed at open and every frame that waited in a buffer


@needs_fake_camera
def test_a_camera_in_trigger_mode_opens_with_no_part_and_takes_a_frame_per_trigger(camera):
    """TriggerMode=On (here triggered in software, as the line's photo-eye would fire it): open() reads no first
    frame, an idle wait is no miss (the camera answers a register read), and each trigger gives one frame."""
    from gi.repository import Aravis

    Aravis.update_device_list()
    control = Aravis.Camera.new(f"Aravis-Fake-{camera.serial}")
    control.set_trigger("Software")                       # TriggerMode=On, TriggerSource=Software
    del control
    source = parse_source(f"aravis:Aravis-Fake-{camera.serial}", timeout_s=0.2)
    with source:
        assert source.triggered and source.nominal_fps is None
        with pytest.raises(FrameMissed, match="no trigger"):     # AwaitingTrigger: not counted, not a miss
            source.read()
        source._camera.software_trigger()
        frame = source.read()
    assert frame.image.shape == (512, 512) and frame.seq == 0
