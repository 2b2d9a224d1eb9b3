"""Triggered capture: one frame per PLC trigger, tied to the PLC's part id.

``TriggeredSource`` wraps any frame source. Its ``read()`` waits for the next trigger the handshake
took, then returns the first frame the camera captured at or after the moment the trigger was
seen (frames stamped earlier, e.g. queued in a camera driver or grabbed at ``open()``, are skipped and
counted ``stale_frames``; ``Frame.t_capture`` is when the image was grabbed: ``SourceBase``), renumbered
so that one frame = one triggered part (no sequence gaps are counted as lost). The handshake learns
which frame inspects which part (``Handshake.bind``). A read that fails answers the part NG not inspected
and raises as the camera did (the capture thread reconnects). A free-running camera works as it is; a
camera in software-trigger mode would take the exposure at the trigger instead (not wired yet:
docs/line-integration.md).

``TriggeredCapture`` is the ``CaptureThread`` for it: ``stop()`` first wakes a ``read()`` waiting
for a trigger, so stopping never waits for the next part. ``triggered_capture`` makes the pair.

``TriggerFanout`` serves several cameras from one handshake (a station of several cameras, ``group.match:
handshake``): every trigger goes to each camera's ``TriggeredSource``, so each takes one frame per part, and
``part_id(camera, seq)`` says which PLC part a camera's frame shows. A camera back from an outage never takes a
trigger queued for it past its deadline (dropped, counted ``expired``), and at most ``max_queued`` wait for one
camera (beyond: the oldest dropped, counted ``overflow``, that view missing).

It lives with the cameras (not in ``fair_edge.line.handshake``) because it is a frame source: the line
room sits below the cameras and never imports them.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from fair_edge.errors import CameraError
from fair_edge.line.handshake import Handshake, Ticket
from fair_edge.records import Frame

from .base import CaptureSettings, EndOfStream, FrameSource
from .capture import CaptureThread

WAIT_STEP_S = 0.05     # a read waiting for a trigger checks for stop this often
MAX_STALE = 16         # frames skipped at most for one trigger before the next one is taken anyway
FAILED_MEMORY = 1024   # triggers some (not all) cameras failed, remembered in case the others fail them too
MAX_QUEUED = 64        # triggers queued for one camera of a TriggerFanout at most (when the handshake has no max_parts)
FANOUT_COUNTERS = ("expired", "overflow")   # TriggerFanout.stats(): tickets dropped, and why

log = logging.getLogger(__name__)


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
        """The first frame stamped at or after the next trigger. Frames stamped before it are skipped (counted
        ``stale_frames``); after ``MAX_STALE`` of them the part is answered not inspected and the next trigger
        is waited for: a frame from before the trigger shows another part, so it is never bound to this one."""
        while True:
            ticket = None
            while ticket is None:
                if self._interrupted.is_set():
                    raise EndOfStream(f"{self.name}: stopped while waiting for a trigger")
                ticket = self.handshake.next_trigger(WAIT_STEP_S)
            frame = self._frame_after(ticket)
            if frame is not None:
                break
            log.warning("%s: %d frames in a row were taken before part %d's trigger; part answered not inspected",
                        self.name, MAX_STALE + 1, ticket.part_id)
            self.handshake.answer_not_inspected(ticket)
        out = Frame(self._seq, frame.t_capture, frame.image, frame.source)
        self._seq += 1
        self.handshake.bind(out.seq, ticket)
        return out

    def _frame_after(self, ticket: Ticket) -> Frame | None:
        """The inner source's first frame stamped at or after ``ticket``'s trigger, skipping at most ``MAX_STALE``
        older ones (each counted); None when the last one read is still older. A failed read answers the
        part not inspected and raises."""
        try:
            for _ in range(MAX_STALE + 1):
                frame = self.inner.read()
                if frame.t_capture >= ticket.t_trigger:
                    return frame
                self.handshake.count_stale_frame()
        except CameraError:
            self.handshake.answer_not_inspected(ticket)
            raise
        return None

    @property
    def unreadable(self) -> int:
        return getattr(self.inner, "unreadable", 0)

    def interrupt(self) -> None:
        """Make a ``read()`` waiting for a trigger end the stream and wake the inner source (capture is stopping)."""
        self._interrupted.set()
        interrupt = getattr(self.inner, "interrupt", None)
        if interrupt is not None:
            interrupt()

    def close(self) -> None:
        self.inner.close()

    def __enter__(self) -> TriggeredSource:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class TriggeredCapture(CaptureThread):
    """``CaptureThread`` over a ``TriggeredSource``; ``stop()`` does not wait for a trigger (it calls the
    source's ``interrupt()``, as for every source)."""

    source: TriggeredSource


def triggered_capture(source: FrameSource, handshake: Handshake | _CameraPort, settings: CaptureSettings,
                      **hooks) -> TriggeredCapture:
    """The capture thread (not started) for ``source``: one frame per trigger of ``handshake``."""
    return TriggeredCapture(TriggeredSource(source, handshake), settings, **hooks)


class TriggerFanout:
    """One handshake's triggers for several cameras: ``port(camera)`` is what that camera's ``TriggeredSource``
    uses in place of the handshake. The camera that asks first takes the next trigger from the handshake and
    queues it for every other camera; the frame each camera binds to it is remembered here (``ticket``),
    not in the handshake (sequence numbers are per camera): the station answers each part once, with the
    verdict of all its views (``Handshake.answer``).

    A camera that was not reading (an outage, a reconnect) never takes a queued ticket past its deadline: the
    part has left and will not be answered (the handshake skips its own the same way), so a frame taken now
    would show another part. Such tickets are dropped when the camera asks, counted ``expired``. Each camera
    holds at most ``max_queued`` tickets (default: the handshake's ``max_parts``); beyond that its oldest is
    dropped, counted ``overflow``, and its view of that part is missing (``failed``). ``stats()``: the counts.
    clock: monotonic seconds, compared with ``Ticket.deadline`` (tests fake it).
    """

    def __init__(self, handshake: Handshake, cameras: list[str], max_queued: int | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.handshake, self._clock = handshake, clock
        self.max_queued = max_queued or getattr(getattr(handshake, "settings", None), "max_parts", MAX_QUEUED)
        self._queues: dict[str, collections.deque[Ticket]] = {name: collections.deque() for name in cameras}
        self._pull = threading.Lock()
        self._lock = threading.Lock()
        self._bound: dict[tuple[str, int], Ticket] = {}
        self._cameras = frozenset(cameras)
        self._failed: OrderedDict[int, set[str]] = OrderedDict()   # id(ticket) -> cameras whose read failed it
        self._counts = dict.fromkeys(FANOUT_COUNTERS, 0)

    def port(self, camera: str) -> "_CameraPort":
        return _CameraPort(self, camera)

    def next_trigger(self, camera: str, timeout_s: float) -> Ticket | None:
        ticket = self._take_queued(camera)
        if ticket is not None:
            return ticket
        with self._pull:   # one camera waits on the handshake at a time; the others take from their queues
            ticket = self._take_queued(camera)
            if ticket is not None:
                return ticket
            ticket = self.handshake.next_trigger(timeout_s)
            if ticket is not None:
                for name in self._queues:
                    if name != camera:
                        self._queue(name, ticket)
            return ticket

    def stats(self) -> dict[str, int]:
        """Tickets dropped: ``expired`` (past their deadline when a camera asked or queued), ``overflow`` (a
        camera's queue full)."""
        with self._lock:
            return dict(self._counts)

    def _take_queued(self, camera: str) -> Ticket | None:
        """The oldest ticket queued for ``camera`` still within its deadline; older ones are dropped, counted."""
        now, expired = self._clock(), []
        with self._lock:
            own = self._queues[camera]
            while own and own[0].deadline <= now:
                expired.append(own.popleft())
            self._counts["expired"] += len(expired)
            ticket = own.popleft() if own else None
        if expired:
            log.warning("camera %s: %d queued trigger(s) past their deadline dropped (parts %s): not read in time, "
                        "the parts have left", camera, len(expired), ", ".join(str(t.part_id) for t in expired))
        return ticket

    def _queue(self, camera: str, ticket: Ticket) -> None:
        """Queue ``ticket`` for ``camera``; a full queue drops its oldest (that view is missing, ``failed``)."""
        with self._lock:
            own = self._queues[camera]
            dropped = own.popleft() if len(own) >= self.max_queued else None
            own.append(ticket)
            expired = dropped is not None and dropped.deadline <= self._clock()   # not answered anyway
            if dropped is not None:
                self._counts["expired" if expired else "overflow"] += 1
        if dropped is not None and not expired:
            log.warning("camera %s: %d triggers already queued (the camera is not reading); part %d dropped for it",
                        camera, self.max_queued, dropped.part_id)
            self.failed(camera, dropped)

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
