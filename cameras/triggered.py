"""Triggered capture: one frame per PLC trigger, tied to the PLC's part id.

``TriggeredSource`` wraps any frame source. Its ``read()`` waits for the next trigger the handshake
took, then returns the first frame the camera captured at or after the moment the trigger was
seen (frames stamped earlier, e.g. queued in a camera driver, are skipped and counted
``stale_frames``), renumbered so that one frame = one triggered part (no sequence gaps are counted
as lost). The handshake learns which frame inspects which part (``Handshake.bind``). A read that
fails answers the part NG not inspected and raises as the camera did (the capture thread
reconnects). A free-running camera works as it is; a camera in software-trigger mode would take the
exposure at the trigger instead (not wired yet: docs/line-integration.md).

``TriggeredCapture`` is the ``CaptureThread`` for it: ``stop()`` first wakes a ``read()`` waiting
for a trigger, so stopping never waits for the next part. ``triggered_capture`` makes the pair.

``TriggerFanout`` serves several cameras from one handshake (a station of several cameras, ``group.match:
handshake``): every trigger goes to each camera's ``TriggeredSource``, so each takes one frame per part, and
``part_id(camera, seq)`` says which PLC part a camera's frame shows.

It lives with the cameras (not in ``fair_edge.line.handshake``) because it is a frame source: the line
room sits below the cameras and never imports them.
"""

from __future__ import annotations

import queue
import threading
from collections import OrderedDict

from fair_edge.errors import CameraError
from fair_edge.line.handshake import Handshake, Ticket
from fair_edge.records import Frame

from .base import CaptureSettings, EndOfStream, FrameSource
from .capture import CaptureThread

WAIT_STEP_S = 0.05     # a read waiting for a trigger checks for stop this often
MAX_STALE = 16         # frames skipped at most for one trigger before the next one is taken anyway
FAILED_MEMORY = 1024   # triggers some (not all) cameras failed, remembered in case the others fail them too


class TriggeredSource:
    """A ``FrameSource`` that yields one frame per trigger of ``handshake`` (see the module doc).
    Frames: the inner source's images (same shape, dtype and memory); seq counts triggers from 0."""

    def __init__(self, inner: FrameSource, handshake: Handshake | _CameraPort) -> None:
        self.inner, self.handshake = inner, handshake
        self.name = f"{inner.name} (triggered)"
        self._seq = 0
        self._interrupted = threading.Event()

    @property
    def nominal_fps(self) -> float | None:
        return None   # the PLC sets the rate

    def open(self) -> None:
        self.inner.open()

    def read(self) -> Frame:
        ticket = None
        while ticket is None:
            if self._interrupted.is_set():
                raise EndOfStream(f"{self.name}: stopped while waiting for a trigger")
            ticket = self.handshake.next_trigger(WAIT_STEP_S)
        try:
            frame = self.inner.read()
            for _ in range(MAX_STALE):
                if frame.t_capture >= ticket.t_trigger:
                    break
                self.handshake.count_stale_frame()
                frame = self.inner.read()
        except CameraError:
            self.handshake.answer_not_inspected(ticket)
            raise
        out = Frame(self._seq, frame.t_capture, frame.image, frame.source)
        self._seq += 1
        self.handshake.bind(out.seq, ticket)
        return out

    def interrupt(self) -> None:
        """Make a ``read()`` waiting for a trigger end the stream (capture is stopping)."""
        self._interrupted.set()

    def close(self) -> None:
        self.inner.close()

    def __enter__(self) -> TriggeredSource:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class TriggeredCapture(CaptureThread):
    """``CaptureThread`` over a ``TriggeredSource``; ``stop()`` does not wait for a trigger."""

    source: TriggeredSource

    def stop(self) -> bool:
        self.source.interrupt()
        return super().stop()

    close = stop


def triggered_capture(source: FrameSource, handshake: Handshake | _CameraPort, settings: CaptureSettings,
                      **hooks) -> TriggeredCapture:
    """The capture thread (not started) for ``source``: one frame per trigger of ``handshake``."""
    return TriggeredCapture(TriggeredSource(source, handshake), settings, **hooks)


class TriggerFanout:
    """One handshake's triggers for several cameras: ``port(camera)`` is what that camera's ``TriggeredSource``
    uses in place of the handshake. The camera that asks first takes the next trigger from the handshake and
    queues it for every other camera; the frame each camera binds to it is remembered here (``ticket``),
    not in the handshake (sequence numbers are per camera): the station answers each part once, with the
    verdict of all its views (``Handshake.answer``)."""

    def __init__(self, handshake: Handshake, cameras: list[str]) -> None:
        self.handshake = handshake
        self._queues: dict[str, queue.Queue] = {name: queue.Queue() for name in cameras}
        self._pull = threading.Lock()
        self._lock = threading.Lock()
        self._bound: dict[tuple[str, int], Ticket] = {}
        self._cameras = frozenset(cameras)
        self._failed: OrderedDict[int, set[str]] = OrderedDict()   # id(ticket) -> cameras whose read failed it

    def port(self, camera: str) -> "_CameraPort":
        return _CameraPort(self, camera)

    def next_trigger(self, camera: str, timeout_s: float) -> Ticket | None:
        own = self._queues[camera]
        try:
            return own.get_nowait()
        except queue.Empty:
            pass
        with self._pull:   # one camera waits on the handshake at a time; the others take from their queues
            try:
                return own.get_nowait()
            except queue.Empty:
                ticket = self.handshake.next_trigger(timeout_s)
            if ticket is not None:
                for name, other in self._queues.items():
                    if name != camera:
                        other.put(ticket)
            return ticket

    def bind(self, camera: str, seq: int, ticket: Ticket) -> None:
        with self._lock:
            self._bound[(camera, seq)] = ticket

    def ticket(self, camera: str, seq: int, forget: bool = False) -> Ticket | None:
        """The ticket (PLC part) camera's frame ``seq`` was taken for, None when unknown."""
        with self._lock:
            return self._bound.pop((camera, seq), None) if forget else self._bound.get((camera, seq))

    def failed(self, camera: str, ticket: Ticket) -> None:
        """``camera`` could not take a frame for ``ticket``. Its view is missing: while another camera took one,
        the part is answered when it closes (not inspected, naming the camera). When every camera failed, no part
        opens to answer it: it is answered NG not inspected here, at once."""
        with self._lock:
            cameras = self._failed.setdefault(id(ticket), set())
            cameras.add(camera)
            everyone = cameras >= self._cameras
            if everyone:
                del self._failed[id(ticket)]
            while len(self._failed) > FAILED_MEMORY:
                self._failed.popitem(last=False)
        if everyone:
            self.handshake.answer_not_inspected(ticket)

    def part_id(self, camera: str, seq: int) -> int | None:
        ticket = self.ticket(camera, seq)
        return None if ticket is None else ticket.part_id


class _CameraPort:
    """The handshake as one camera of a ``TriggerFanout`` sees it (what ``TriggeredSource`` calls)."""

    def __init__(self, fanout: TriggerFanout, camera: str) -> None:
        self.fanout, self.camera = fanout, camera

    def next_trigger(self, timeout_s: float) -> Ticket | None:
        return self.fanout.next_trigger(self.camera, timeout_s)

    def bind(self, seq: int, ticket: Ticket) -> None:
        self.fanout.bind(self.camera, seq, ticket)

    def count_stale_frame(self) -> None:
        self.fanout.handshake.count_stale_frame()

    def answer_not_inspected(self, ticket: Ticket) -> None:
        """This camera could not take the part's frame (``TriggerFanout.failed``)."""
        self.fanout.failed(self.camera, ticket)
