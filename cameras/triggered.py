"""Triggered capture: one frame per PLC trigger, tied to the PLC's part id.

``TriggeredSource`` wraps any frame source. Its ``read()`` waits for the next trigger the handshake
took, then returns the first frame the camera captured at or after the moment the trigger was
seen (frames stamped earlier, e.g. queued in a camera driver or grabbed at ``open()``, are skipped and
counted ``stale_frames``; ``Frame.t_capture`` is when the image was grabbed: ``SourceBase``), renumbered
so that one frame = one triggered part (no sequence gaps are counted as lost). The handshake learns
which frame inspects which part (``Handshake.bind``). A part's frame is bounded on both sides: one exposed after
the station saw the *next* part's trigger (a camera that hung, frames that queued up behind it) shows that part or
a later one, never this one: this part is answered not inspected for the camera (counted ``late_frames``, logged
grouped: ``LateFrameLog``) and the frame goes to the next part, the one it can show
(``TriggeredSource._part_shown``). A read that fails answers the part NG not inspected
and raises as the camera did (the capture thread reconnects). A free-running camera works as it is; a
camera in software-trigger mode would take the exposure at the trigger instead (not wired yet:
docs/line-integration.md).

``TriggeredCapture`` is the ``CaptureThread`` for it: ``stop()`` first wakes a ``read()`` waiting
for a trigger, so stopping never waits for the next part. ``triggered_capture`` makes the pair.

``TriggerFanout`` serves several cameras from one handshake (a station of several cameras, ``group.match:
handshake``): every trigger goes to each camera's ``TriggeredSource``, so each takes one frame per part, and
``part_id(camera, seq)`` says which PLC part a camera's frame shows. A camera back from an outage never takes a
trigger queued for it past its deadline (dropped, counted ``expired``), and at most ``max_queued`` wait for one
camera (beyond: the oldest dropped, counted ``overflow``, that view missing). One camera at a time waits on the
handshake for a trigger, without holding the lock the others take their queued tickets under.

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
from fair_edge.line.grouped_log import CameraGroupedLog, log_lines
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
        self._late_log = LateFrameLog(inner.name)

    @property
    def nominal_fps(self) -> float | None:
        return None   # the PLC sets the rate

    def open(self) -> None:
        self.inner.open()

    def read(self) -> Frame:
        """The first frame stamped at or after the next trigger, bound to the part it can show. Frames stamped
        before the trigger are skipped (counted ``stale_frames``); after ``MAX_STALE`` of them the part is answered
        not inspected and the next trigger is waited for: a frame from before the trigger shows another part, so it
        is never bound to this one. Nor is one exposed after the next part's trigger (``_part_shown``)."""
        while True:
            ticket = self._next_ticket()
            frame = self._frame_after(ticket)
            if frame is not None:
                break
            log.warning("%s: %d frames in a row were taken before part %d's trigger; part answered not inspected",
                        self.name, MAX_STALE + 1, ticket.part_id)
            self.handshake.answer_not_inspected(ticket)
        ticket = self._part_shown(ticket, frame)
        out = Frame(self._seq, frame.t_capture, frame.image, frame.source)
        self._seq += 1
        self.handshake.bind(out.seq, ticket)
        log_lines(log, [self._late_log.due()])
        return out

    def _next_ticket(self) -> Ticket:
        """The next trigger, waited for in ``WAIT_STEP_S`` steps; raises ``EndOfStream`` once ``interrupt()`` was
        called (capture is stopping)."""
        while True:
            if self._interrupted.is_set():
                raise EndOfStream(f"{self.name}: stopped while waiting for a trigger")
            ticket = self.handshake.next_trigger(WAIT_STEP_S)
            if ticket is not None:
                return ticket

    def _part_shown(self, ticket: Ticket, frame: Frame) -> Ticket:
        """The ticket ``frame`` (taken for ``ticket``) can show. When the station saw the next part's trigger at or
        before ``frame.t_capture``, the PLC had triggered that part before the exposure (the camera hung, or its
        frames queued up): the frame shows it or a later part, never ``ticket``'s. Then ``ticket`` is answered not
        inspected for this camera (counted ``late_frames``, logged: ``LateFrameLog``) and the next part takes its
        place, again while the part after that was triggered before the exposure too; the frame is bound to the last
        part triggered before it was exposed, whose next trigger came after it. A next trigger the station had not
        seen yet when the frame came (the PLC set it less than ``poll_ms`` earlier) is not caught: hence the camera
        placement rule (the part in view one frame period plus ``poll_ms`` after its trigger)."""
        while (later := self.handshake.next_trigger_before(frame.t_capture)) is not None:
            self.handshake.count_late_frame()
            self.handshake.answer_not_inspected(ticket)
            log_lines(log, [self._late_log.note((ticket.part_id, later.part_id))])
            ticket = later
        return ticket

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
        log_lines(log, [self._late_log.close()])
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
    uses in place of the handshake. Every trigger taken from the handshake is queued for every camera (the one
    taking it included), so each camera takes the parts in trigger order; the frame each camera binds to a part is
    remembered here (``ticket``), not in the handshake (sequence numbers are per camera): the station answers each
    part once, with the verdict of all its views (``Handshake.answer``). Tickets are taken from the handshake under
    this fanout's lock only (``next_trigger``, ``next_trigger_before``), so every camera's queue keeps trigger order.
    One camera at a time waits on the handshake for the next trigger, outside the lock
    (``Handshake.wait_for_trigger``); the others wait on a condition, notified whenever tickets are queued, so a
    camera whose ticket is queued takes it at once.

    A camera that was not reading (an outage, a reconnect) never takes a queued ticket past its deadline: the
    part has left and will not be answered (the handshake skips its own the same way), so a frame taken now
    would show another part. Such tickets are dropped when the camera asks, counted ``expired``. Each camera
    holds at most ``max_queued`` tickets (default: the handshake's ``max_parts``); beyond that its oldest is
    dropped, counted ``overflow``, and its view of that part is missing (``failed``). ``stats()``: the counts.
    clock: monotonic seconds, compared with ``Ticket.deadline`` (tests fake it). on_failed: told (camera, ticket) each
    time a camera takes no frame for a part (``failed``), outside this fanout's lock: a cell's part assembler, so the
    part closes once its other views are in (``CellLine.view_failed``).
    """

    def __init__(self, handshake: Handshake, cameras: list[str], max_queued: int | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 on_failed: Callable[[str, Ticket], None] | None = None) -> None:
        self.handshake, self._clock, self.on_failed = handshake, clock, on_failed
        self.max_queued = max_queued or getattr(getattr(handshake, "settings", None), "max_parts", MAX_QUEUED)
        self._queues: dict[str, collections.deque[Ticket]] = {name: collections.deque() for name in cameras}
        self._lock = threading.Lock()
        self._queued = threading.Condition(self._lock)   # notified when tickets were queued or the waiter is done
        self._waiting = False                            # a camera waits on the handshake for the next trigger
        self._bound: dict[tuple[str, int], Ticket] = {}
        self._cameras = frozenset(cameras)
        # id(ticket) -> (the ticket, cameras that failed it): the ticket is held so its id is not reused by a new one
        self._failed: OrderedDict[int, tuple[Ticket, set[str]]] = OrderedDict()
        self._counts = dict.fromkeys(FANOUT_COUNTERS, 0)

    def port(self, camera: str) -> "_CameraPort":
        return _CameraPort(self, camera)

    def next_trigger(self, camera: str, timeout_s: float) -> Ticket | None:
        """``camera``'s next ticket (its queue's, else the handshake's next, queued for every camera), or None after
        ``timeout_s``. Never waits while its ticket is queued, whichever camera waits on the handshake."""
        end, dropped = time.monotonic() + timeout_s, []
        while True:
            with self._queued:
                ticket = self._take(camera, dropped)
                left = end - time.monotonic()
                if ticket is not None or left <= 0:
                    break
                if self._waiting:   # another camera waits on the handshake: it queues this one's ticket too
                    self._queued.wait(left)
                    continue
                self._waiting = True
            try:
                self.handshake.wait_for_trigger(left)
            finally:
                with self._queued:
                    self._waiting = False
                    self._queued.notify_all()   # a camera waiting for its ticket may wait on the handshake now
        self._report(dropped)
        return ticket

    def next_trigger_before(self, camera: str, t: float) -> Ticket | None:
        """``camera``'s next ticket, taken, when its trigger was seen at or before ``t`` (monotonic s); None,
        nothing taken, when it came later or none waits (``Handshake.next_trigger_before``)."""
        dropped: list[tuple[str, str, Ticket]] = []
        with self._queued:
            self._drop_expired(camera, dropped)
            own = self._queues[camera]
            if not own:
                self._fan_out(self.handshake.next_trigger_before(t), dropped)
            ticket = own.popleft() if own and own[0].t_trigger <= t else None
        self._report(dropped)
        return ticket

    def stats(self) -> dict[str, int]:
        """Tickets dropped: ``expired`` (past their deadline when a camera asked or queued), ``overflow`` (a
        camera's queue full)."""
        with self._lock:
            return dict(self._counts)

    def _take(self, camera: str, dropped: list[tuple[str, str, Ticket]]) -> Ticket | None:
        """(under the lock) The oldest ticket for ``camera`` within its deadline: its queue's, else the handshake's
        next one (queued for every camera first; the handshake skipped those past their deadline); None when neither
        has one. Tickets dropped go to ``dropped``."""
        own = self._queues[camera]
        self._drop_expired(camera, dropped)
        if not own:
            self._fan_out(self.handshake.next_trigger(0.0), dropped)
        return own.popleft() if own else None

    def _drop_expired(self, camera: str, dropped: list[tuple[str, str, Ticket]]) -> None:
        """(under the lock) Drop ``camera``'s queued tickets past their deadline, oldest first (counted)."""
        own, now = self._queues[camera], self._clock()
        while own and own[0].deadline <= now:
            dropped.append(("expired", camera, own.popleft()))
            self._counts["expired"] += 1

    def _fan_out(self, ticket: Ticket | None, dropped: list[tuple[str, str, Ticket]]) -> None:
        """(under the lock) Queue ``ticket`` (taken from the handshake; None: nothing) for every camera and wake the
        cameras waiting; a full queue drops its oldest (counted ``overflow``, or ``expired`` when past its deadline:
        not answered anyway)."""
        if ticket is None:
            return
        now = self._clock()
        for camera, own in self._queues.items():
            if len(own) >= self.max_queued:
                old = own.popleft()
                why = "expired" if old.deadline <= now else "overflow"
                self._counts[why] += 1
                if why == "overflow":
                    dropped.append((why, camera, old))
            own.append(ticket)
        self._queued.notify_all()

    def _report(self, dropped: list[tuple[str, str, Ticket]]) -> None:
        """Outside the lock: log the tickets dropped (one line per camera and reason); an overflowed one is that
        camera's view missing (``failed``)."""
        if not dropped:
            return
        for camera in dict.fromkeys(c for _, c, _ in dropped):
            expired = [t for why, c, t in dropped if c == camera and why == "expired"]
            overflow = [t for why, c, t in dropped if c == camera and why == "overflow"]
            if expired:
                log.warning("camera %s: %d queued trigger(s) past their deadline dropped (parts %s): not read in "
                            "time, the parts have left", camera, len(expired),
                            ", ".join(str(t.part_id) for t in expired))
            for ticket in overflow:
                log.warning("camera %s: %d triggers already queued (the camera is not reading); part %d dropped for "
                            "it", camera, self.max_queued, ticket.part_id)
                self.failed(camera, ticket)

    def bind(self, camera: str, seq: int, ticket: Ticket) -> None:
        with self._lock:
            self._bound[(camera, seq)] = ticket

    def ticket(self, camera: str, seq: int, forget: bool = False) -> Ticket | None:
        """The ticket (PLC part) camera's frame ``seq`` was taken for, None when unknown."""
        with self._lock:
            return self._bound.pop((camera, seq), None) if forget else self._bound.get((camera, seq))

    def failed(self, camera: str, ticket: Ticket) -> None:
        """``camera`` could not take a frame for ``ticket``. Its view is missing: while another camera took one,
        the part is answered when it closes (not inspected, naming the camera), which ``on_failed`` (the cell's
        assembler) makes as soon as the other cameras' views are in. When every camera failed, no part opens to
        answer it: it is answered NG not inspected here, at once."""
        with self._lock:
            _, cameras = self._failed.setdefault(id(ticket), (ticket, set()))
            cameras.add(camera)
            everyone = cameras >= self._cameras
            if everyone:
                del self._failed[id(ticket)]
            while len(self._failed) > FAILED_MEMORY:
                self._failed.popitem(last=False)
        if self.on_failed is not None:
            self.on_failed(camera, ticket)
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

    def next_trigger_before(self, t: float) -> Ticket | None:
        return self.fanout.next_trigger_before(self.camera, t)

    def bind(self, seq: int, ticket: Ticket) -> None:
        self.fanout.bind(self.camera, seq, ticket)

    def count_stale_frame(self) -> None:
        self.fanout.handshake.count_stale_frame()

    def count_late_frame(self) -> None:
        self.fanout.handshake.count_late_frame()

    def answer_not_inspected(self, ticket: Ticket) -> None:
        """This camera could not take the part's frame (``TriggerFanout.failed``)."""
        self.fanout.failed(self.camera, ticket)


class LateFrameLog(CameraGroupedLog):
    """Groups one camera's late-frame lines (``CameraGroupedLog``): a camera that hangs now and then, or lags for
    good, would log one line per part. Its first late frame after a quiet spell is logged at once, naming the part
    answered not inspected and the part the frame went to; the ones after it as one line per ``window_s`` (their
    count and the last pair). Each is still counted ``late_frames``.

    ``note((part_id, shown_id))``: the camera's frame for part ``part_id`` came after part ``shown_id``'s trigger.
    """

    def _first_line(self, late: tuple[int, int]) -> str:
        part_id, shown_id = late
        return (f"camera {self.camera}: its frame for part {part_id} was exposed after part {shown_id}'s trigger (the "
                f"camera hung, or its frames queued up): part {part_id} answered not inspected for this camera, the "
                f"frame taken for part {shown_id}; further late frames of this camera are logged together, one line "
                f"per {self.window_s:g} s (each is counted in late_frames)")

    def _gathered_line(self, held: list[tuple[int, int]], span_s: float) -> str:
        part_id, shown_id = held[-1]
        parts = f"{len(held)} more part{'s' if len(held) > 1 else ''}"
        return (f"camera {self.camera}: {parts} in the last {span_s:.1f} s answered not inspected for this camera, "
                f"its frame exposed after the next part's trigger; the last part {part_id} (frame taken for part "
                f"{shown_id}); each is counted in late_frames")
