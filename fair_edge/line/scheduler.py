"""The reject scheduler: one pulse per NG part, released when the part reaches the reject gate.

Due time: ``verdict.t_capture + reject.delay_ms`` (monotonic seconds), or, with an
``EncoderSource``, the moment the encoder reaches ``count_at_capture + reject.encoder_distance``.
Pending rejects sit in a heap ordered by due time (or target count) served by one thread, so
verdicts may complete in any order. The thread sleeps until ``DISPATCH_LEAD_S`` before the head
is due (``timing.sleep_until``: a coarse wait, then 0.2 ms sleeps) and hands the event to the
sinks, which wait for ``RejectEvent.t_edge`` themselves and do their I/O on their own threads.

Deadline rule (``reject.late_ms``, ``reject.fail_safe``): a reject that cannot start by
``due + late_ms`` -- its verdict came after the part passed the gate, or keeping ``min_gap_ms``
from its neighbours would push it past that -- is *late* and counted. ``fail_safe: reject`` fires
it at the earliest moment the output allows (``RejectEvent.late = True``); ``fail_safe: alarm``
does not fire it and raises the fault output (latched until ``acknowledge_alarm()``).
A sink that cannot write a pulse by its deadline (PLC down) reports a miss: counted as
``sink_missed``, never replayed (it would kick another part), and with ``fail_safe: alarm`` it
raises the alarm too. More than ``max_pending`` waiting rejects: the new one is refused,
counted, and the alarm is raised under either policy.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from ..errors import ConfigError
from ..records import Verdict
from .encoder import EncoderSource
from .events import RejectEvent
from .settings import RejectSettings
from .sinks import FanOut, SignalSink, SinkReport, log_reporter, open_fanout
from .sinks.base import Counters
from .slots import SlotPlan
from .timing import sleep_until

log = logging.getLogger(__name__)

SCHEDULER_COUNTERS = ("verdicts", "ng", "scheduled", "fired", "late", "late_fired", "alarms",
                      "refused", "sink_missed", "sink_errors", "sink_dropped", "abandoned")
DISPATCH_LEAD_S = 0.003  # events reach the sinks this early; each sink times its own edge
CAPTURE_MEMORY = 4096  # encoder counts remembered per seq between capture and verdict

# what submit() returns
OK, SCHEDULED, LATE_FIRED, LATE_ALARM, REFUSED = "ok", "scheduled", "late-fired", "late-alarm", "refused"


@dataclass(order=True)
class _Pending:
    key: float            # planned start (monotonic s), or target encoder count
    order: int
    seq: int
    t_due: float          # monotonic s (time mode); nan until reached (encoder mode)
    late: bool
    score: float


class RejectScheduler:
    """Schedules reject pulses on ``sinks`` and holds the fault output on ``fault_sinks``.

    sinks / fault_sinks: anything with the ``SignalSink`` methods (usually a ``FanOut``); when
    omitted they are opened from ``settings.sinks`` / ``settings.fault_sinks`` and owned (closed
    by ``close()``). encoder: required when ``settings.encoder_distance`` is set.
    """

    def __init__(self, settings: RejectSettings, sinks: SignalSink | None = None,
                 fault_sinks: SignalSink | None = None,
                 encoder: EncoderSource | None = None) -> None:
        if settings.encoder_distance is not None and encoder is None:
            raise ConfigError("reject.encoder_distance: expected an encoder source to be "
                              "configured, found none; configure the encoder or use delay_ms")
        self.settings = settings
        self._encoder = encoder if settings.encoder_distance is not None else None
        self._counters = Counters(SCHEDULER_COUNTERS)
        self._lock = threading.Lock()
        self._heap: list[_Pending] = []
        self._order = itertools.count()
        self._slots = SlotPlan((settings.pulse_ms + settings.min_gap_ms) / 1000.0)
        self._captures: OrderedDict[int, int] = OrderedDict()
        self._station_fault: str | None = None
        self._alarm: str | None = None
        self._fault_shown = False
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._closed = False
        self._owned: list[SignalSink] = []
        try:
            self._sinks = sinks if sinks is not None else self._own(settings.sinks, "rejects")
            self._faults = (fault_sinks if fault_sinks is not None
                            else self._own(settings.fault_sinks, "fault"))
        except BaseException:
            for sink in self._owned:
                sink.close()
            raise
        self._thread = threading.Thread(target=self._run, name="reject-scheduler", daemon=True)
        self._thread.start()

    # -- called by the inspection loop --------------------------------------------------------
    def note_capture(self, seq: int) -> int | None:
        """Record the encoder count for frame ``seq`` (call it in the camera thread right at
        capture). Returns the count, or None without an encoder."""
        if self._encoder is None:
            return None
        count = int(self._encoder.count())
        with self._lock:
            self._captures[seq] = count
            while len(self._captures) > CAPTURE_MEMORY:
                self._captures.popitem(last=False)
        return count

    def submit(self, verdict: Verdict, encoder_count: int | None = None) -> str:
        """Hand over a verdict; never blocks on I/O. Returns ``ok`` (good part), ``scheduled``,
        ``late-fired``, ``late-alarm`` or ``refused`` (see the module doc)."""
        self._counters.add("verdicts")
        if not verdict.ng:
            with self._lock:
                self._captures.pop(verdict.seq, None)
            return OK
        self._counters.add("ng")
        now = time.monotonic()
        with self._lock:
            if len(self._heap) >= self.settings.max_pending:
                refused = True
            else:
                refused = False
                item, reason = (self._plan_time(verdict, now) if self._encoder is None
                                else self._plan_count(verdict, encoder_count))
                if item is not None:
                    heapq.heappush(self._heap, item)
                    if self._heap[0] is item:
                        self._wake.set()
        if refused:
            self._counters.add("refused")
            self._raise_alarm(f"reject seq {verdict.seq} refused: {self.settings.max_pending} "
                              f"rejects already waiting")
            return REFUSED
        if item is None:
            self._counters.add("late")
            self._raise_alarm(f"reject seq {verdict.seq} late: {reason}")
            return LATE_ALARM
        if item.late:
            self._counters.add("late")
            self._counters.add("late_fired")
            log.warning("reject seq %d late (%s): firing anyway (fail_safe: reject)",
                        verdict.seq, reason)
            return LATE_FIRED
        self._counters.add("scheduled")
        return SCHEDULED

    def fault(self, active: bool, reason: str = "") -> None:
        """The station cannot inspect (backend dead, camera gone) while ``active``: the fault
        output is held on; it drops when the fault clears and no alarm is latched."""
        self._station_fault = (reason or "station fault") if active else None
        self._update_fault_output()

    def acknowledge_alarm(self) -> None:
        """Operator reset of a latched late/refused/missed-reject alarm."""
        self._alarm = None
        self._update_fault_output()

    @property
    def alarm(self) -> str | None:
        return self._alarm

    def handle_report(self, report: SinkReport) -> None:
        """Listener for sink reports (wired automatically for sinks opened from URLs)."""
        log_reporter(report)
        if report.kind == "missed":
            self._counters.add("sink_missed")
            if self.settings.fail_safe == "alarm":
                self._raise_alarm(f"{report.sink} missed reject seq {report.seq}")
        elif report.kind in ("io_error", "device_error", "stuck"):
            self._counters.add("sink_errors")
        elif report.kind == "dropped":
            self._counters.add("sink_dropped")

    def stats(self) -> dict[str, int]:
        out = self._counters.snapshot()
        with self._lock:
            out["pending"] = len(self._heap)
        return out

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no reject is pending (all fired, refused or late), at most ``timeout_s``.

        A station that stops (end of stream, SIGTERM) calls this before ``close()`` so the parts
        already inspected still get their pulses. Returns True when nothing is left pending.
        """
        deadline = time.monotonic() + timeout_s
        while self.stats()["pending"] and time.monotonic() < deadline:
            time.sleep(0.005)
        return not self.stats()["pending"]

    def close(self) -> None:
        """Stop the thread (pending rejects are counted as abandoned) and close owned sinks."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=2.0)
        if self._thread.is_alive():
            log.error("reject scheduler thread did not stop within 2 s")
        with self._lock:
            left, self._heap = len(self._heap), []
        if left:
            self._counters.add("abandoned", left)
            log.warning("reject scheduler closed with %d rejects pending", left)
        for sink in self._owned:
            sink.close()

    def __enter__(self) -> RejectScheduler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- planning (under self._lock) ------------------------------------------------------------
    def _plan_time(self, v: Verdict, now: float) -> tuple[_Pending | None, str]:
        s = self.settings
        t_due = v.t_capture + s.delay_ms / 1000.0
        self._slots.prune(now)
        start = self._slots.earliest(max(t_due, now))
        late = start > t_due + s.late_ms / 1000.0
        reason = ""
        if late:
            reason = (f"due {1000 * (now - t_due):.1f} ms ago" if now > t_due else
                      f"min_gap_ms pushes it {1000 * (start - t_due):.1f} ms past its due time")
            if s.fail_safe == "alarm":
                return None, reason
        self._slots.take(start)
        return _Pending(start, next(self._order), v.seq, t_due, late, v.score), reason

    def _plan_count(self, v: Verdict, count: int | None) -> tuple[_Pending | None, str]:
        count = self._captures.pop(v.seq, None) if count is None else count
        if count is None:
            reason = "no encoder count recorded at capture (note_capture not called)"
            late = True
            target = float("-inf")
        else:
            target = count + self.settings.encoder_distance
            late = self._encoder.count() >= target
            reason = "encoder already past the gate" if late else ""
        if late and self.settings.fail_safe == "alarm":
            return None, reason
        return _Pending(target, next(self._order), v.seq, float("nan"), late, v.score), reason

    # -- the thread -------------------------------------------------------------------------------
    def _run(self) -> None:
        wait = self._wait_time if self._encoder is None else self._wait_count
        while not self._stop.is_set():
            for item in wait():
                self._fire(item)

    def _wait_time(self) -> list[_Pending]:
        with self._lock:
            self._wake.clear()
            head = self._heap[0].key if self._heap else None
        if head is None:
            self._wake.wait(0.1)
            return []
        if not sleep_until(head - DISPATCH_LEAD_S, self._wake):
            return []
        return self._pop_due(time.monotonic() + DISPATCH_LEAD_S)

    def _wait_count(self) -> list[_Pending]:
        self._stop.wait(self.settings.encoder_poll_ms / 1000.0)
        count = self._encoder.count()
        due = self._pop_due(count)
        now = time.monotonic()
        for item in due:  # the part is at the gate now; keep the min gap between pulses
            with self._lock:
                self._slots.prune(now)
                start = self._slots.earliest(now)
                self._slots.take(start)
            item.t_due = now
            if start > now + self.settings.late_ms / 1000.0 and not item.late:
                item.late = True
                self._counters.add("late")
                if self.settings.fail_safe == "alarm":
                    self._raise_alarm(f"reject seq {item.seq} late: min_gap_ms")
                    item.key = float("nan")
                    continue
                self._counters.add("late_fired")
            item.key = start
        return [i for i in due if i.key == i.key]

    def _pop_due(self, now: float) -> list[_Pending]:
        out = []
        with self._lock:
            while self._heap and self._heap[0].key <= now:
                out.append(heapq.heappop(self._heap))
        return out

    def _fire(self, item: _Pending) -> None:
        """Hand the event to the sinks (up to DISPATCH_LEAD_S before its edge; they wait)."""
        t_edge = item.key
        t_due = item.t_due if item.t_due == item.t_due else t_edge
        event = RejectEvent(item.seq, t_due, t_edge,
                            max(t_edge, t_due) + self.settings.late_ms / 1000.0,
                            item.late, item.score)
        self._sinks.pulse(event)
        self._counters.add("fired")

    # -- fault output -----------------------------------------------------------------------------
    def _raise_alarm(self, reason: str) -> None:
        self._counters.add("alarms")
        log.error("reject alarm: %s", reason)
        self._alarm = reason
        self._update_fault_output()

    def _update_fault_output(self) -> None:
        reason = self._station_fault or self._alarm
        active = reason is not None
        if active or self._fault_shown:
            self._faults.set_fault(active, reason or "cleared")
        self._fault_shown = active

    def _own(self, urls: tuple[str, ...], name: str) -> FanOut:
        fan = open_fanout(urls, self.settings.pulse_ms, self.handle_report, name)
        self._owned.append(fan)
        return fan
