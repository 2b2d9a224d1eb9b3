"""The station's side of the PLC handshake: one thread that owns the link and runs the protocol.

Every ``poll_ms`` the thread reads the PLC's signals and then, in this order:

1. ``trigger`` = 1: the part id is taken (a ``Ticket``, handed to the ``TriggeredSource``, which
   gives the part the next camera frame) and ``trigger`` is set back to 0. A trigger while the
   station cannot inspect (``stopping()`` on), or beyond ``max_parts`` waiting, is answered at once: NG not
   inspected. So is a trigger already 1 at the first poll after a connect or reconnect (counted
   ``stale_triggers``): the PLC set it while the link was down, at a time the station cannot know, so no frame
   taken now is known to show that part.
2. a result is up (``results_ready`` = 1) and ``ack`` = 1: ``ack`` and then ``results_ready`` go
   back to 0. No ack within ``ack_timeout_ms``: the result is withdrawn (``ack`` = 0 and
   ``results_ready`` = 0), counted ``ack_timeouts``, logged, ``error`` = 10. ``ack`` = 1 while no
   result is up (a late ack for a withdrawn result) acknowledges nothing: it is set back to 0 and
   counted ``stale_acks``.
3. no result up (and ``results_ready`` 0 for two polls at least): the oldest triggered part (results
   go out in trigger order) is written (``ack`` = 0, ``result_part_id``, ``result``, ``score``, the
   region signals that have an address, then ``results_ready`` = 1, which the link writes only once all of
   the data was written: ``HandshakeLink.write``) once its verdict is in. So an
   ack counts only when it rises after its result was written: an ack the PLC wrote for an
   earlier result never acknowledges the next one.
   A part whose ``result_timeout_ms`` passed is never answered (counted ``expired``, ``error`` = 11).
4. ``heartbeat`` + 1 (modulo 65536) every heartbeat_ms / 5; ``ready`` / ``error`` when they change, and again
   every heartbeat_ms (a value something else wrote over them, say a second station started on these registers
   by mistake, is put right within heartbeat_ms). The link
   writes the counter in its register's / node's own range (``HandshakeLink.write``; OPC UA: an Int16 node
   wraps 32767 -> -32768), so every value it hands the link can be written, a reconnect's included.

``ready`` is 1 while the link is up, the station inspects (from ``begin()``) and no station fault
is held (``fault()``); ``stopping()``, ``finish()`` and ``close()`` drop it: the thread's last write is ``ready`` = 0,
made only when this handshake had raised it (a station refused at start, which never did, leaves ``ready`` and
``error`` as they are). A dead process cannot drop it: the PLC
must treat a heartbeat unchanged for ``heartbeat_ms`` as not ready. A handshake fault (10, 11, 12)
is held on ``error`` until a later part completes the handshake in time (written and acked).
The link is reopened with back-off (50 ms -> 2 s; back to 50 ms only after a poll that succeeds, so a link that
connects and fails its first poll again, say a node that stays refused, is not reopened every 50 ms); after a
reconnect a result that was up is withdrawn (its ack is unknown), ``ack`` is cleared (a stale ack acknowledges
nothing), parts past their timeout are dropped and a trigger found already 1 is answered 3 (step 1): nothing stale
is replayed. A device's refusal of a read or write (a Modbus exception reply such as 0x06 busy, an OPC UA bad
status: ``PlcDeviceError``) is no outage: the link answered, so it stays up, the result that is up stays up, the
refusal is counted ``device_errors`` (logged when a run of them begins) and the poll is tried again next cycle; the
heartbeat and ``ready`` / ``error`` of that cycle are still written. An OPC UA node that is gone or changed its data
type (``PlcBindingError``) is a link failure: the link is reopened, which reads its nodes and their types again. A
Modbus gateway's 0x0A / 0x0B (the PLC behind it is off) is a link failure. A link that refuses the PLC's setup at
connect (an OPC UA node whose data type cannot hold its signal: ``ConfigError``) stays down, logged as an error
naming the node (again only when the reason changes), and is retried with the same back-off, so a PLC program that
is fixed is picked up without a restart; the thread never dies of it.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

from ...errors import ConfigError, PlcDeviceError, PlcError
from ...records import Frame, Verdict
from ..close_cut import cut_note
from ..sinks.base import Counters
from .settings import (ACK, ERROR, ERROR_ACK_TIMEOUT, ERROR_CODES, ERROR_NONE, ERROR_RESULT_TIMEOUT,
                       ERROR_STATION_FAULT, ERROR_TRIGGER_OVERRUN, HEARTBEAT, HEARTBEAT_MODULUS,
                       HEARTBEAT_STEPS, PART_ID, READY, RESULT, RESULT_NG, RESULT_NONE,
                       RESULT_NOT_INSPECTED, RESULT_OK, RESULT_PART_ID, RESULTS_READY, SCORE, TRIGGER,
                       HandshakeSettings, region_values)
from .tickets import Ticket, TriggerQueue

log = logging.getLogger(__name__)

BACKOFF_S = (0.05, 2.0)   # reconnect back-off: first, most
FINISH_S = 2.0            # finish(): most time to answer and get acks for the parts still open
CLOSE_S = 3.0             # close(): most time for the thread to write ready = 0 and close the link
RESULT_REST_POLLS = 2     # after a result is acked or withdrawn, results_ready is 0 for this many polls (counted, not
                          # timed: a poll late or early never shortens the rest the PLC sees)
HANDSHAKE_COUNTERS = ("triggers", "results", "ok", "ng", "not_inspected", "acked", "ack_timeouts",
                      "expired", "overruns", "withdrawn", "io_errors", "device_errors", "reconnects",
                      "stale_frames", "stale_acks", "late_frames", "stale_triggers")


class HandshakeLink(Protocol):
    """One PLC connection (``ModbusLink``, ``OpcUaLink``). ``open`` / ``read_inputs`` / ``write``
    raise ``PlcError`` on a link failure (``PlcDeviceError`` when the device refuses); ``open`` raises
    ``ConfigError`` when the PLC's signals cannot carry the handshake (a node of the wrong data type).
    ``write`` writes its pairs in order; a last pair ``results_ready`` = 1 is written only when every pair before
    it was (Modbus: one FC 16 request; OPC UA: a Write of its own after the data's Write succeeded node by node)."""

    name: str

    def open(self) -> None: ...

    def read_inputs(self) -> dict[str, int]: ...

    def write(self, values: list[tuple[str, float | int | bool | None]]) -> None: ...

    def close(self) -> None: ...


class Handshake:
    """Runs the handshake over ``link`` (opened and reopened by its own thread, started by ``start()``).

    Station side: ``begin()`` (inspection runs), ``next_trigger()`` / ``next_trigger_before()`` /
    ``bind()`` (the triggered source), ``on_verdict`` (the inspector's callback), ``on_drop`` (the capture queue
    dropped a frame), ``fault()`` (the station cannot inspect), ``stopping()`` (before capture stops), ``finish()``
    then ``close()``.
    """

    def __init__(self, settings: HandshakeSettings, link: HandshakeLink,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """clock: monotonic seconds for the poll cycle's ``now`` and a result's ``t_written`` (tests fake it)."""
        self.settings, self.link, self.name, self._clock = settings, link, link.name, clock
        self._poll_s = settings.poll_ms / 1000.0
        self._beat_s = settings.heartbeat_ms / 1000.0 / HEARTBEAT_STEPS
        self._counters = Counters(HANDSHAKE_COUNTERS)
        self._lock = threading.Lock()
        self._order: collections.deque[Ticket] = collections.deque()   # trigger order, oldest first
        self._by_seq: dict[int, Ticket] = {}
        self._triggers = TriggerQueue(settings.max_parts)   # taken, waiting for a frame
        self._up: Ticket | None = None       # the result now up (results_ready = 1)
        self._rest_polls = 0                 # polls results_ready still stays 0 before the next result is written
        self._station_fault: str | None = None
        self._latched = ERROR_NONE
        self._inspecting = False             # set by begin(): the station is running
        self._shown: tuple[bool, int] | None = None     # (ready, error) last written
        self._next_restate = 0.0             # when (ready, error) are written again though unchanged (monotonic s)
        self._raised = False                 # ready = 1 was written: the thread's last words drop it
        self._heartbeat = 0
        self._next_beat = 0.0
        self._taken: int | None = None       # part id taken whose trigger is not yet written back to 0
        self._connected = False
        self._first_poll = False             # no poll has read the PLC's signals since the link (re)connected
        self._delay, self._next_try, self._was_up = BACKOFF_S[0], 0.0, False
        self._refused = ""                   # the last ConfigError a connect met (logged again only when it changes)
        self._device_refusing = False        # the last poll ended in a device's refusal (logged once per run)
        self._stop = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"handshake-{self.name}", daemon=True)

    # -- life cycle -------------------------------------------------------------------------------
    def start(self) -> Handshake:
        self._thread.start()
        return self

    def __enter__(self) -> Handshake:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def begin(self) -> None:
        """The station inspects from now on: ``ready`` may rise (call it once capture and the
        inspection loop are up; before that a trigger is answered NG not inspected)."""
        self._inspecting = not self._closed

    def stopping(self) -> None:
        """The station stops: call it before capture stops. ``ready`` drops at the next poll and a trigger from
        now on is answered 3 (NG not inspected) at once; the parts already taken keep their frames (capture still
        runs), and ``finish()`` answers the ones left without a result."""
        self._inspecting = False

    def finish(self, fault: str = "", timeout_s: float = FINISH_S) -> None:
        """The station has stopped (capture and the inspection are over, so no verdict comes any more): ``ready``
        drops, every part taken and not answered (its frame never came, or came after capture stopped) is answered
        NG not inspected at once, and the open results are written and acked (at most ``timeout_s``). fault: the
        run's fault, if any (held on ``error``)."""
        if fault:
            self.fault(True, fault)
        self._inspecting = False
        self._answer_unanswered()
        deadline = time.monotonic() + timeout_s
        while self._open_parts() and time.monotonic() < deadline and self._thread.is_alive():
            time.sleep(0.005)

    def close(self, timeout_s: float = CLOSE_S) -> None:
        """Stop the thread, waited for at most ``timeout_s`` (a station's stop: what it has left, at most ``CLOSE_S``);
        it writes ``ready`` = 0 last (when the link is up) and closes the link."""
        if self._closed:
            return
        self._closed = True
        self._inspecting = False
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=timeout_s)
            if self._thread.is_alive():
                log.error("handshake %s: thread did not stop within %.1f s%s", self.name, timeout_s, cut_note())
        else:
            self.link.close()

    # -- station side (any thread; never blocks on the link) -----------------------------------
    def next_trigger(self, timeout_s: float) -> Ticket | None:
        """The next triggered part to capture, or None after ``timeout_s`` (a part already past its
        result timeout is skipped: it will not be answered, so it needs no frame)."""
        return self._triggers.next(timeout_s)

    def next_trigger_before(self, t: float) -> Ticket | None:
        """The next triggered part, taken, when the station saw its trigger at or before ``t`` (monotonic s, a
        frame's ``t_capture``); None, nothing taken, when its trigger came later or none waits. A frame exposed at
        ``t`` cannot show the part triggered before this one (the PLC had triggered the next part by then)."""
        return self._triggers.next_before(t)

    def wait_for_trigger(self, timeout_s: float) -> bool:
        """Wait at most ``timeout_s`` until a triggered part waits for its frame, or one was queued since the call
        (another reader may have taken it already); whether one did. Takes nothing (``TriggerFanout``)."""
        return self._triggers.wait(timeout_s)

    def bind(self, seq: int, ticket: Ticket) -> None:
        """Frame ``seq`` inspects ``ticket``'s part."""
        with self._lock:
            ticket.seq = seq
            self._by_seq[seq] = ticket

    def count_stale_frame(self) -> None:
        """The triggered source skipped a frame captured before its trigger."""
        self._counters.add("stale_frames")

    def count_late_frame(self) -> None:
        """A camera's frame for a part came after the next part's trigger (the part is answered not inspected for
        that camera; ``TriggeredSource``)."""
        self._counters.add("late_frames")

    def answer_not_inspected(self, ticket: Ticket) -> None:
        """No frame could be taken for this part (camera read failed): NG not inspected."""
        self._answer(ticket, RESULT_NOT_INSPECTED)

    def on_verdict(self, frame: Frame, verdict: Verdict, anomaly_map: object = None) -> None:
        """Inspector callback: the result of the part ``frame`` was taken for."""
        with self._lock:
            ticket = self._by_seq.pop(verdict.seq, None)
        if ticket is not None:
            code = RESULT_NOT_INSPECTED if verdict.error else (RESULT_NG if verdict.ng else RESULT_OK)
            ticket.regions = region_values(verdict, self.settings.region_signals)
            self._answer(ticket, code, verdict.score)

    def answer(self, ticket: Ticket, verdict: Verdict | None) -> None:
        """The result of a part decided by the station itself (several cameras: the part's verdict from all
        its views, ``fair_edge.station.parts``); None = the part could not be inspected (a view missing)."""
        if verdict is None or verdict.error:
            self._answer(ticket, RESULT_NOT_INSPECTED)
            return
        ticket.regions = region_values(verdict, self.settings.region_signals)
        self._answer(ticket, RESULT_NG if verdict.ng else RESULT_OK, verdict.score)

    def on_drop(self, frame: Frame) -> None:
        """The capture queue dropped ``frame``: its part is NG not inspected."""
        with self._lock:
            ticket = self._by_seq.pop(frame.seq, None)
        if ticket is not None:
            self._answer(ticket, RESULT_NOT_INSPECTED)

    def fault(self, active: bool, reason: str = "") -> None:
        """Hold ``ready`` = 0 and ``error`` = 1 while the station cannot inspect (a FaultBoard target);
        parts triggered but not yet given a frame are answered NG not inspected at once."""
        self._station_fault = (reason or "station fault") if active else None
        if active:
            self._answer_waiting()

    @property
    def ready(self) -> bool:
        return self._connected and self._inspecting and self._station_fault is None

    @property
    def error_code(self) -> int:
        return ERROR_STATION_FAULT if self._station_fault is not None else self._latched

    def stats(self) -> dict:
        out: dict = self._counters.snapshot()
        out.update(connected=self._connected, error=self.error_code, open_parts=self._open_parts())
        return out

    # -- the thread -------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                if not self._connected and not self._connect():
                    self._stop.wait(min(self._poll_s * 10, max(0.0, self._next_try - time.monotonic())))
                    continue
                self._poll(self._clock())
                self._stop.wait(self._poll_s)
        finally:
            self._last_words()

    def _poll(self, now: float) -> None:
        """One poll cycle at ``now`` (monotonic s) on a connected link: a device's refusal keeps the link and retries
        next cycle, a link failure drops it; a cycle that succeeds starts the reconnect back-off over."""
        try:
            self._cycle(now)
        except PlcDeviceError as exc:
            self._device_refused(exc)
        except PlcError as exc:
            self._link_failed(exc)
        else:
            self._device_refusing = False
            self._delay = BACKOFF_S[0]

    def _cycle(self, now: float) -> None:
        """One poll: the PLC's signals, trigger, ack and result (``_exchange``), then the heartbeat and Ready / Error
        (``_show``). A device's refusal in the first part does not keep the second from being written (a Result node
        that refuses writes must not starve the PLC's watchdog or hide the Error code); it is raised after it."""
        try:
            self._exchange(now)
        except PlcDeviceError:
            self._show(now)   # the link answered: the station is alive and says so
            raise
        self._show(now)

    def _exchange(self, now: float) -> None:
        inputs = self.link.read_inputs()
        if inputs[TRIGGER]:
            self._take_trigger(inputs[PART_ID], now, left_over=self._first_poll)
        self._first_poll = False
        if self._up is not None:
            self._check_ack(bool(inputs[ACK]), now)
        elif inputs[ACK]:
            self._clear_stale_ack()
        if self._up is None:
            if self._rest_polls:
                self._rest_polls -= 1
            if not self._rest_polls:
                self._write_next(now)

    def _show(self, now: float) -> None:
        """``heartbeat`` + 1 when due; ``error`` / ``ready`` when they changed (logged when the error does) and
        again every heartbeat_ms though unchanged (``_next_restate``: an outside write over them is undone)."""
        if now >= self._next_beat:
            self._heartbeat = (self._heartbeat + 1) % HEARTBEAT_MODULUS
            self.link.write([(HEARTBEAT, self._heartbeat)])
            self._next_beat = now + self._beat_s
        shown = (self.ready, self.error_code)
        if shown != self._shown or now >= self._next_restate:
            self._raised = self._raised or shown[0]   # before the write: one that failed half-way may have raised it
            self.link.write([(ERROR, shown[1]), (READY, int(shown[0]))])
            self._next_restate = now + self.settings.heartbeat_ms / 1000.0
            if shown[1] != (self._shown or (True, ERROR_NONE))[1]:
                log.log(logging.ERROR if shown[1] else logging.WARNING, "handshake %s: error %d (%s)",
                        self.name, shown[1], ERROR_CODES[shown[1]])
            self._shown = shown

    def _take_trigger(self, part_id: int, now: float, left_over: bool = False) -> None:
        """``trigger`` = 1 for ``part_id`` at ``now``: a new part is taken (queued for its frame, or answered 3 at
        once: left over from an outage, the station not ready, ``max_parts`` waiting) and ``trigger`` written back
        to 0. A part id already taken (its trigger's 0 was not written: a failed write, retried) is not taken twice.
        left_over: the first poll since the link (re)connected, so the trigger was set while it was down."""
        if self._taken != part_id:
            self._counters.add("triggers")
            ticket = Ticket(part_id, now, now + self.settings.result_timeout_ms / 1000.0)
            with self._lock:
                self._order.append(ticket)
            self._taken = part_id
            if left_over:
                self._answer_left_over(ticket)
            elif not self.ready:
                self._answer(ticket, RESULT_NOT_INSPECTED)
            elif not self._triggers.put(ticket):
                self._overrun(ticket)
        self.link.write([(TRIGGER, 0)])
        self._taken = None

    def _answer_left_over(self, ticket: Ticket) -> None:
        """A trigger already 1 at the first poll since the link came up: set while it was down, when is unknown, so
        no frame taken now is known to show the part. Answered 3 (NG not inspected) at once, never given a frame;
        counted ``stale_triggers``, logged (once per connect at most)."""
        self._counters.add("stale_triggers")
        log.warning("handshake %s: part %d's trigger was already 1 when the link came up (set while it was down, "
                    "when is unknown): answered 3 (not inspected), no frame taken for it", self.name, ticket.part_id)
        self._answer(ticket, RESULT_NOT_INSPECTED)

    def _overrun(self, ticket: Ticket) -> None:
        """A trigger beyond ``max_parts`` parts waiting for their frame: answered 3 at once, counted ``overruns``,
        error 12."""
        self._counters.add("overruns")
        self._fail(ERROR_TRIGGER_OVERRUN, f"part {ticket.part_id}: {self.settings.max_parts} parts "
                                          f"already wait to be captured (reject.handshake.max_parts)")
        self._answer(ticket, RESULT_NOT_INSPECTED)

    def _check_ack(self, ack: bool, now: float) -> None:
        """The result up: acked (``ack`` = 1 now, or seen before and its clearing write refused, which may have
        cleared ``ack`` already) -> ack and results_ready back to 0; past ``ack_timeout_ms`` -> withdrawn (counted
        once the withdrawal is written)."""
        up = self._up
        if ack or up.acked:
            up.acked = True
            self.link.write([(ACK, 0), (RESULTS_READY, 0)])
            self._rest_polls = RESULT_REST_POLLS   # results_ready stays 0 for 2 polls at least
            self._counters.add("acked")
            self._up = None
            if self._latched in (ERROR_ACK_TIMEOUT, ERROR_RESULT_TIMEOUT, ERROR_TRIGGER_OVERRUN):
                log.warning("handshake %s: part %d acknowledged in time; error %d cleared", self.name,
                            up.part_id, self._latched)
                self._latched = ERROR_NONE
        elif now - up.t_written > self.settings.ack_timeout_ms / 1000.0:
            self.link.write([(ACK, 0), (RESULTS_READY, 0)])   # a late ack for it then rises from 0: stale
            self._counters.add("ack_timeouts")
            self._fail(ERROR_ACK_TIMEOUT, f"part {up.part_id}: no ack within {self.settings.ack_timeout_ms:g} ms "
                                          f"(reject.handshake.ack_timeout_ms); result withdrawn")
            self._rest_polls = RESULT_REST_POLLS
            self._up = None

    def _clear_stale_ack(self) -> None:
        """``ack`` = 1 with no result up (the PLC acknowledged a result already withdrawn): set it back to 0,
        so it cannot be taken for the next result's ack."""
        self._counters.add("stale_acks")
        log.warning("handshake %s: ack = 1 with no result up (late, for a withdrawn result?): set back to 0, "
                    "acknowledges nothing; the PLC must ack only a result that is up (results_ready = 1)", self.name)
        self.link.write([(ACK, 0)])

    def _write_next(self, now: float) -> None:
        with self._lock:
            while self._order and self._order[0].deadline < now:
                self._expire(self._order.popleft())
            head = self._order[0] if self._order and self._order[0].result != RESULT_NONE else None
        if head is None:
            return
        try:
            self.link.write([(ACK, 0), (RESULT_PART_ID, head.part_id), (RESULT, head.result), (SCORE, head.score),
                             *((n, head.regions.get(n, 0)) for n in self.settings.region_signals),
                             (RESULTS_READY, 1)])
        except PlcDeviceError as exc:   # the link wrote results_ready = 1 only if all its data was written
            raise PlcDeviceError(f"part {head.part_id}'s result not shown (Results Ready left 0; written again "
                                 f"next poll until its result timeout): {exc}") from exc
        with self._lock:
            if self._order and self._order[0] is head:
                self._order.popleft()
        head.t_written = self._clock()
        self._up = head
        self._counters.add("results")

    def _expire(self, ticket: Ticket) -> None:
        """(under the lock) a part past its result timeout: never answered."""
        if ticket.seq is not None:
            self._by_seq.pop(ticket.seq, None)
        self._counters.add("expired")
        self._fail(ERROR_RESULT_TIMEOUT, f"part {ticket.part_id}: no result within "
                                         f"{self.settings.result_timeout_ms:g} ms of its trigger; not answered "
                                         f"(reject.handshake.result_timeout_ms)")

    def _answer(self, ticket: Ticket, code: int, score: float | None = None) -> None:
        """score: the verdict's, None for a part not scored (malformed frame, failed inference, no frame)."""
        with self._lock:
            if ticket.result != RESULT_NONE:
                return
            ticket.score = None if score is None else float(score)
            ticket.result = code
        self._counters.add({RESULT_OK: "ok", RESULT_NG: "ng"}.get(code, "not_inspected"))

    def _answer_waiting(self) -> None:
        """Parts triggered whose frame was not taken yet: NG not inspected (the station cannot)."""
        for ticket in self._triggers.take_all():
            self._answer(ticket, RESULT_NOT_INSPECTED)

    def _answer_unanswered(self) -> None:
        """At ``finish()``: every part taken and still without a result, NG not inspected now (logged): no verdict
        comes after the inspection ended, and waiting for one only let the part expire (error 11)."""
        self._answer_waiting()
        with self._lock:
            open_parts = [t for t in self._order if t.result == RESULT_NONE]
            self._by_seq.clear()
        for ticket in open_parts:
            self._answer(ticket, RESULT_NOT_INSPECTED)
        if open_parts:
            log.warning("handshake %s: %d part(s) without a result at the stop answered 3 (not inspected): %s",
                        self.name, len(open_parts), ", ".join(str(t.part_id) for t in open_parts))

    def _fail(self, code: int, detail: str) -> None:
        log.error("handshake %s: error %d: %s", self.name, code, detail)
        self._latched = code

    def _open_parts(self) -> int:
        with self._lock:
            return len(self._order) + (self._up is not None)

    # -- the link ---------------------------------------------------------------------------------
    def _connect(self) -> bool:
        if time.monotonic() < self._next_try:
            return False
        try:
            self.link.open()
            if self._up is not None:   # its ack state is unknown after an outage: withdraw it
                self._counters.add("withdrawn")
                self._up = None
            self.link.write([(ACK, 0), (RESULTS_READY, 0), (HEARTBEAT, self._heartbeat)])   # a stale ack acks nothing
        except (PlcError, ConfigError) as exc:
            self.link.close()
            self._next_try = time.monotonic() + self._delay
            self._delay = min(2 * self._delay, BACKOFF_S[1])
            if isinstance(exc, ConfigError):
                self._log_refusal(exc)
            else:
                log.debug("handshake %s: connect failed: %s", self.name, exc)
            return False
        self._connected, self._shown, self._refused = True, None, ""   # the back-off restarts after a good poll
        self._first_poll = True   # a trigger it finds already 1 was set while the link was down: answered 3
        if self._was_up:
            self._counters.add("reconnects")
            log.warning("handshake %s: reconnected", self.name)
        self._was_up = True
        return True

    def _log_refusal(self, exc: ConfigError) -> None:
        """A connect refused the PLC's setup: logged as an error when the reason is new (retried every back-off
        step, so the same reason is not logged again)."""
        if str(exc) != self._refused:
            self._refused = str(exc)
            log.error("handshake %s: the PLC's setup cannot carry the handshake, not ready: %s", self.name, exc)

    def _device_refused(self, exc: PlcDeviceError) -> None:
        """The device refused a read or write of this poll (Modbus busy, a bad status): it answered, so the link,
        the result that is up and its ack stay as they are; counted ``device_errors``, logged when a run of
        refusals begins, and the next poll tries again (each step of a cycle is safe to repeat)."""
        self._counters.add("device_errors")
        if not self._device_refusing:
            self._device_refusing = True
            log.warning("handshake %s: %s; link kept, tried again next poll (logged again after a poll that "
                        "succeeds)", self.name, exc)

    def _link_failed(self, exc: PlcError) -> None:
        """A link failure (I/O error, timeout, a gateway whose PLC is off): counted ``io_errors``, the link closed
        and reopened with back-off (the reconnect withdraws a result that was up)."""
        self._counters.add("io_errors")
        self._device_refusing = False
        log.warning("handshake %s: %s; reconnecting", self.name, exc)
        self._connected = False
        self.link.close()
        self._next_try = time.monotonic() + self._delay
        self._delay = min(2 * self._delay, BACKOFF_S[1])   # reset by the next poll that succeeds

    def _last_words(self) -> None:
        """Thread end: ``ready`` = 0 (with the current error) when this handshake had raised it, then close the
        link. One that never did (a station refused at start, before ``begin()``) writes nothing: the registers may
        be another station's, whose ``ready`` it must not drop."""
        if self._connected and self._raised:
            try:
                self.link.write([(ERROR, self.error_code), (READY, 0)])
            except PlcError as exc:
                log.warning("handshake %s: could not write ready = 0 on stop: %s", self.name, exc)
        self._connected = False
        self.link.close()
