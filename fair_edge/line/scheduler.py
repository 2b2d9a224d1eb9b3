"""The reject gate: every captured part is decided at its own due time, and only there.

A part enters at capture (``note_capture``, called on the camera thread) with its due time
``t_capture + reject.delay_ms`` (monotonic seconds) or, with an ``EncoderSource``, its target
count ``count_at_capture + reject.encoder_distance``. Its verdict may come any time before that
(``submit``). The scheduler thread decides each part when it reaches the gate:

- known good (an OK verdict in time) -> no pulse;
- NG verdict in time -> pulse at the due time;
- no verdict in time (slow inference, frame dropped from the queue), or a verdict whose ``error`` is
  set (inference failed, malformed frame: the part was not inspected; counted ``error_verdicts``,
  not ``ng``) -> ``fail_safe: reject``: pulse at the due time, counted ``rejected_uninspected``;
  ``fail_safe: alarm``: no pulse, counted ``passed_uninspected``, the fault output latches. Their journal lines
  are grouped by ``UninspectedLog`` as gap_missed ones are (below): a camera whose every frame is malformed
  logged a line per part.

A verdict that comes after its part was decided is counted ``late_verdicts`` and never fires:
the gate only ever acts on the part in front of it. A part is decided (its outcome recorded) under
the same lock that takes it off the heap, so a verdict is either in time or late, never neither. The decision cut-off is
``DISPATCH_LEAD_S`` before the due time (the event then goes to the sinks, which time the edge
themselves). A pulse that ``min_gap_ms`` would push past ``due + late_ms`` is not fired either
(it would hit the next part): counted ``gap_missed`` and alarmed, each part (the alarm latches per part; its journal
lines are grouped by ``GapMissLog``: the first miss at once, the rest one line per ``GAP_LOG_S`` naming their count and
sequence numbers, so a persistent conflict does not log a line per part). Pulse slots are ``pulse + min_gap_ms`` wide,
the pulse being the widest any reject sink drives (its URL's ``pulse_ms``, else ``reject.pulse_ms``: ``slot_span_s``).

A verdict for a part that was never noted at capture (callers without a capture hook) is placed
from its own ``t_capture``; if that due time is already past, the part went by without a
decision: counted ``late_verdicts`` and, when NG, alarmed.

Encoder mode: each part is noted with the encoder's ``(count, position epoch)`` at its frame's ``t_capture``
(``encoder_source.mark_at``: where the belt was when the frame was exposed, not when it was handed over).
A part whose position the gate cannot know is decided ``position_lost``, whatever its verdict: the belt
position was lost after it was noted (a counter reset, an implausible jump: the encoder's
``position_epoch`` went up; every part of an older epoch is taken off the heap at once, in the poll that
sees the new epoch, under the lock that pops it), or its gate count lay inside a span the belt covered
while the encoder's link was down (``encoder_source.went_unseen``; decided when the count jumps past it), or it
was captured while the link was down (``mark`` had no count for it: the held count is where the belt was when the
link dropped; decided as soon as its verdict comes or the link is back, whichever is first).
Such a part gets **no pulse** under either ``fail_safe`` (a pulse at a guessed place may kick a good
neighbour and let the bad part through, as ``gap_missed`` is not fired onto the next part); the alarm is
raised naming the parts and why (latched until ``acknowledge_alarm``: lines that must not run on with
unknown parts stop there), and their gate rows carry ``"reason"``. While the encoder's link is down
(``encoder_source.fault_reason``: the count is held, the gate waits), the fault output is held on with
that reason, checked every ``encoder_poll_ms``; it drops when the link is back (no alarm latched by it).

Sink failures, one fault entry per sink (one sink's recovery never clears another's fault): a sink
that misses a pulse (PLC down, device refused the write, pulse dequeued after its deadline) reports
it; counted ``sink_missed``, never replayed, and the fault output is held on until that sink reports
``reconnected`` or ``delivered`` (it works again), or the operator acknowledges while that sink's
link is up (with ``fail_safe: alarm`` the alarm also latches). A pulse whose write went out but got
no reply by its deadline is counted ``sink_unconfirmed`` instead (the PLC may have rejected the
part: it is not claimed missed), with the same fault output and alarm: nobody knows the part was
rejected. A ``stuck`` report (falling edge not written: the output may be left on) holds the fault
output until that sink reports ``released`` (its resting level written again); an acknowledge does
not clear it. A ``link_down`` report (the sink's link cannot be re-established: a connect failed, or a write /
probe failed twice in a row though the reconnect between succeeded; a single failure the reconnect gets past is
only an ``io_error``; a PLC that went away is found within about ``sinks.base.PROBE_S`` + the probe's timeout + one
connect timeout, before any pulse is due) holds the fault output, naming the sink and since when, until that sink
reports ``reconnected``; counted ``sink_link_downs``, no alarm latched, an acknowledge does not clear it.
More than ``max_pending`` parts between camera and gate: the new part is refused, counted, and alarmed.

What happened to each part is told to ``on_part`` (the recorder's gate log), one row per event:
``{"seq", "event": "gate", "gate": OUTCOME, "verdict": "ng" | "ok" | "none"}`` when the part is
decided (OUTCOME: one of ``GATE_OUTCOMES``, or ``abandoned`` for a part still on its way when the run ended:
``abandon_pending``; verdict "none" = no usable verdict by the due time, with
``"error"`` added when its verdict came with one, ``"reason"`` for ``position_lost``), and
``{"seq", "event": "pulse", "sink", "pulse": "delivered" | "late" | "missed" | "unconfirmed"}`` per reject sink
that reports on the part's pulse (sinks opened from URLs). ``decision(seq)`` says how a part
was decided, so a verdict that comes after it can be logged with what the gate did.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import ConfigError
from ..records import Frame, Verdict
from . import encoder_source
from .encoder_source import EncoderSource
from .events import RejectEvent
from .settings import RejectSettings
from .sinks import FanOut, SignalSink, SinkReport, log_reporter, open_fanout
from .sinks.base import Counters, sleep_until

log = logging.getLogger(__name__)

SCHEDULER_COUNTERS = ("captured", "verdicts", "ng", "error_verdicts", "passed", "rejected_ng", "rejected_uninspected",
                      "passed_uninspected", "gap_missed", "position_lost", "late_verdicts", "fired", "alarms",
                      "refused", "sink_missed", "sink_unconfirmed", "sink_errors", "sink_dropped", "sink_late_writes",
                      "sink_link_downs", "abandoned")
DISPATCH_LEAD_S = 0.003  # decision cut-off before the due time; events reach the sinks this early
DECIDED_MEMORY = 4096    # decided parts remembered, so a late verdict is recognised as late

GATE_OUTCOMES = ("passed", "rejected_ng", "rejected_uninspected", "passed_uninspected", "gap_missed",
                 "position_lost")
# a sink's report on a pulse -> what the gate log says happened to it
PULSE_RESULTS = {"delivered": "delivered", "late_write": "late", "missed": "missed", "dropped": "missed",
                 "unconfirmed": "unconfirmed"}
SEQS_NAMED = 20          # sequence numbers an alarm or log line names at most (the rest are counted)
GAP_LOG_S = 10.0         # gap_missed parts after the first are logged together, one line per this many seconds
WHYS_NAMED = 3           # distinct reasons a grouped line of parts decided uninspected names at most (with counts)
GAP_MISSED_WHY = ("min_gap_ms after the previous pulse would put its edge past due + late_ms (it would hit the next "
                  "part)")
ABANDONED = "abandoned"   # a part still between camera and gate when the run ended: no decision, no pulse
PartListener = Callable[[dict], None]   # RejectScheduler(on_part=...): one gate-log row per call

# what submit() returns
OK, SCHEDULED, LATE, REFUSED, UNINSPECTED = "ok", "scheduled", "late", "refused", "uninspected"
# a sink's fault entry: PULSE_FAULT after a missed / unconfirmed pulse, STUCK_FAULT after a falling edge not written,
# LINK_FAULT while its link is down (``link_down`` .. ``reconnected``)
PULSE_FAULT, STUCK_FAULT, LINK_FAULT = "pulse", "stuck", "link"
UNKNOWN, GOOD, NG = "unknown", "good", "ng"


class SlotPlan:
    """Pulse slot planning (keeps reject pulses ``pulse + min_gap`` apart when verdicts arrive in any
    order): start times (monotonic s) of planned and recently fired pulses, sorted.

    span_s = pulse width + min gap (``slot_span_s``): two rising edges closer than this would merge or violate
    the actuator's recovery time.
    """

    def __init__(self, span_s: float) -> None:
        self.span_s = span_s
        self._starts: list[float] = []

    def earliest(self, t_wanted: float) -> float:
        """The first start >= t_wanted that is at least span_s from every planned start."""
        t = t_wanted
        for start in self._starts:
            if start + self.span_s <= t:
                continue
            if t + self.span_s <= start:
                break
            t = start + self.span_s
        return t

    def take(self, t_start: float) -> None:
        bisect.insort(self._starts, t_start)

    def prune(self, now: float) -> None:
        """Forget starts that can no longer conflict with anything planned from ``now`` on."""
        cut = bisect.bisect_left(self._starts, now - self.span_s)
        del self._starts[:cut]

    def __len__(self) -> int:
        return len(self._starts)


def sink_pulse_widths_ms(sink: SignalSink) -> list[float]:
    """The pulse widths, ms, that ``sink`` drives: its ``pulse_ms`` (a URL's own, else ``reject.pulse_ms``), or each
    of a fan-out's sinks'; none for a sink that does not say (a log sink: no timed output)."""
    members = getattr(sink, "sinks", None)
    if members is not None:
        return [width for member in members for width in sink_pulse_widths_ms(member)]
    width = getattr(sink, "pulse_ms", None)
    return [] if width is None else [float(width)]


def slot_span_s(settings: RejectSettings, sinks: SignalSink) -> float:
    """The gate's pulse slot width, s: the widest pulse any reject sink drives + ``reject.min_gap_ms``, so an
    output whose URL sets a longer pulse is never overlapped and one with a shorter pulse is not spaced for
    ``reject.pulse_ms``. ``reject.pulse_ms`` when no sink says its width (log or in-memory sinks only)."""
    widths = sink_pulse_widths_ms(sinks)
    return ((max(widths) if widths else settings.pulse_ms) + settings.min_gap_ms) / 1000.0


@dataclass
class _Part:
    """A part between camera and gate. t_due: monotonic s (time mode; set when the count is
    reached in encoder mode). target: encoder count at the gate (encoder mode; None for a part
    captured while the encoder's link was down: no position); count, epoch: the encoder's
    ``mark_at`` the part's capture time."""

    seq: int
    t_due: float | None
    target: int | None = None
    count: int | None = None
    state: str = UNKNOWN
    score: float | None = None  # None until a verdict with a score arrives
    t_edge: float | None = None  # set when the part's reject slot is taken
    error: str = ""  # a verdict came with this error (not inspected): decided as if no verdict came
    epoch: int = 0   # the encoder's position epoch when the count was noted
    unseen: str = ""  # why the gate could not know where the part was (outcome position_lost)


class RejectScheduler:
    """Decides each part at the gate and pulses ``sinks``; holds the fault output on ``fault_sinks``.

    sinks / fault_sinks: anything with the ``SignalSink`` methods (usually a ``FanOut``); when
    omitted they are opened from ``settings.sinks`` / ``settings.fault_sinks`` and owned (closed
    by ``close()``). encoder: required when ``settings.encoder_distance`` is set.
    """

    def __init__(self, settings: RejectSettings, sinks: SignalSink | None = None,
                 fault_sinks: SignalSink | None = None,
                 encoder: EncoderSource | None = None, on_part: PartListener | None = None) -> None:
        if settings.encoder_distance is not None and encoder is None:
            raise ConfigError("reject.encoder_distance: expected an encoder source to be "
                              "configured (reject.encoder), found none; configure it or use delay_ms")
        self.settings = settings
        self.on_part = on_part
        self._encoder = encoder if settings.encoder_distance is not None else None
        self._counters = Counters(SCHEDULER_COUNTERS)
        self._lock = threading.Lock()
        self._heap: list[tuple[float, int, int]] = []   # (due time or target count, order, seq)
        self._blind: list[int] = []   # encoder mode: seqs of parts captured while its link was down (not on the heap)
        self._parts: dict[int, _Part] = {}
        self._at_gate = 0   # parts popped (and decided) whose pulse, counters and row are not done yet
        self._decided: OrderedDict[int, str] = OrderedDict()
        self._order = itertools.count()
        self._slots: SlotPlan | None = None   # planned with the sinks' widest pulse, once they are open
        self._station_fault: str | None = None
        self._sink_faults: dict[tuple[str, str], str] = {}   # (sink name, PULSE/STUCK/LINK_FAULT) -> reason
        self._alarm: str | None = None
        self._encoder_fault: str | None = None   # the encoder's link is down (count held), polled
        self._epoch = 0   # the encoder's position epoch the heap's parts were last checked against
        self._fault_shown = False
        self._fault_lock = threading.RLock()   # fault state + output writes: sink threads report concurrently
        self._gap_log = GapMissLog()   # groups the journal lines of gap_missed parts
        self._uninspected_log = UninspectedLog(settings.fail_safe)   # and of parts decided uninspected
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._closed = False
        self._owned: list[SignalSink] = []
        self._sinks: SignalSink | None = None    # (None while opening: a sink may report before all are open)
        self._faults: SignalSink | None = None
        try:
            self._sinks = sinks if sinks is not None else self._own(settings.sinks, "rejects")
            self._faults = (fault_sinks if fault_sinks is not None
                            else self._own(settings.fault_sinks, "fault"))
        except BaseException:
            for sink in self._owned:
                sink.close()
            raise
        self._slots = SlotPlan(slot_span_s(settings, self._sinks))
        self._update_fault_output()   # a fault reported while the sinks were opened (a link down at start)
        self._thread = threading.Thread(target=self._run, name="reject-scheduler", daemon=True)
        self._thread.start()

    # -- called by the camera thread and the inspection loop ----------------------------------
    def note_capture(self, seq: int, t_capture: float | None = None, count: int | None = None) -> int | None:
        """A part was captured (call it on the camera thread, when its frame is handed over): it will be
        decided at its due time whatever happens to its frame. t_capture: monotonic s, its frame's exposure (now
        when None). Encoder mode: the part is noted at the belt count at ``t_capture`` (``encoder_source.mark_at``:
        a frame held before it was handed over is placed where it was exposed, not where the belt is now), or
        ``count`` when the caller knows the part's count better (a cell's part first seen by a camera downstream:
        its count at the camera at offset 0); the position epoch is the encoder's at ``t_capture``. Returns the
        encoder count noted, or None without an encoder."""
        count_then, epoch = self._mark(t_capture)
        t_capture = time.monotonic() if t_capture is None else t_capture
        count = count_then if count is None or count_then is None else int(count)
        with self._lock:
            refused = len(self._parts) >= self.settings.max_pending
            if not refused and seq not in self._parts and seq not in self._decided:
                self._add(self._new_part(seq, t_capture, count, epoch))
        if refused:
            self._counters.add("refused")
            self._raise_alarm(f"part seq {seq} refused: {self.settings.max_pending} parts already "
                              f"between camera and gate (reject.max_pending)")
        else:
            self._counters.add("captured")
        return count

    def _mark(self, t_capture: float | None) -> tuple[int | None, int]:
        """The encoder's ``(count, epoch)`` at ``t_capture`` (None: now, on the encoder's clock); (None, 0) without
        an encoder."""
        if self._encoder is None:
            return None, 0
        if t_capture is None:
            return encoder_source.mark(self._encoder)
        return encoder_source.mark_at(self._encoder, t_capture)

    def on_capture(self, frame: Frame) -> None:
        """The capture thread's ``on_capture`` hook: note the part at its capture time."""
        self.note_capture(frame.seq, frame.t_capture)

    def on_verdict(self, frame: Frame, verdict: Verdict, anomaly_map: object = None) -> None:
        """The inspector's verdict callback: ``submit(verdict)``."""
        self.submit(verdict)

    def submit(self, verdict: Verdict, encoder_count: int | None = None) -> str:
        """Hand over a verdict; never blocks on I/O. Returns ``ok`` (good part in time),
        ``scheduled`` (NG in time: pulse at the due time), ``uninspected`` (a verdict with ``error``
        set in time: the part was not inspected, ``fail_safe`` decides it at the due time), ``late``
        (its part was already decided, or went by undecided) or ``refused`` (see the module doc).
        encoder_count: the count at capture, for a part not noted by ``note_capture``."""
        uninspected = bool(verdict.error)
        self._counters.add("verdicts")
        self._counters.add("error_verdicts" if uninspected else "ng", int(uninspected or verdict.ng))
        refused = False
        with self._lock:
            part = self._parts.get(verdict.seq)
            decided = self._decided.get(verdict.seq)
            if part is None and decided is None and (verdict.ng or uninspected):
                refused = len(self._parts) >= self.settings.max_pending
                part = None if refused else self._place_unnoted(verdict, encoder_count)
            if part is not None and uninspected:   # the part stays UNKNOWN: fail_safe decides it
                part.error = verdict.error
            elif part is not None:
                part.state, part.score = (NG if verdict.ng else GOOD), verdict.score
        if part is not None:   # one with an error is logged when decided (_note_uninspected), not here as well
            if uninspected:
                return UNINSPECTED
            return SCHEDULED if verdict.ng else OK
        if refused:
            self._counters.add("refused")
            self._raise_alarm(f"reject seq {verdict.seq} refused: {self.settings.max_pending} parts "
                              f"already between camera and gate (reject.max_pending)")
            return REFUSED
        if decided is None and not (verdict.ng or uninspected):
            return OK   # a good part nobody noted: nothing to do at the gate
        self._counters.add("late_verdicts")
        if decided is None:
            what = "uninspected (verdict error)" if uninspected else "NG"
            self._raise_alarm(f"{what} part seq {verdict.seq}: verdict came after the part passed the gate")
        else:
            log.warning("verdict for seq %d came after its part was decided (%s); not fired",
                        verdict.seq, decided)
        return LATE

    def fault(self, active: bool, reason: str = "") -> None:
        """The station cannot inspect (backend dead, camera gone) while ``active``: the fault
        output is held on; it drops when the fault clears and no alarm is latched."""
        with self._fault_lock:
            self._station_fault = (reason or "station fault") if active else None
            self._update_fault_output()

    def acknowledge_alarm(self, seen: str | None = None) -> str | None:
        """Operator reset of a latched alarm (part passed uninspected, refused, gap missed, sink miss).
        It also clears the missed / unconfirmed pulse fault of each sink whose link is up (a refused
        write, a pulse dequeued late: the sink works); a sink still down keeps its fault until it
        reconnects, a stuck output keeps its fault until the sink writes it off again, and a link that is down
        keeps its fault until it reconnects. Returns the alarm it cleared (None: none was latched), read and
        cleared at once: an alarm raised meanwhile is the one returned, never cleared unnamed. seen: the alarm
        the operator was shown (None: whatever is latched); ConfigError, nothing cleared, when another is latched."""
        with self._fault_lock:
            cleared = self._alarm
            if seen is not None and cleared is not None and cleared != seen:
                raise ConfigError(f"alarm: expected the one shown ({seen or 'none'!r}) to be latched, found a newer "
                                  f"one: {cleared}; read it, then acknowledge again (nothing was cleared)")
            self._alarm = None
            for key in [k for k in self._sink_faults if k[1] == PULSE_FAULT and self._sink_link_up(k[0])]:
                del self._sink_faults[key]
            self._update_fault_output()
        return cleared

    @property
    def alarm(self) -> str | None:
        return self._alarm

    @property
    def fault_reason(self) -> str | None:
        """Why the fault output is on now (station fault, encoder link down, sink faults, latched alarm),
        or None."""
        with self._fault_lock:
            sink_faults = "; ".join(self._sink_faults.values()) or None
            return self._station_fault or self._encoder_fault or sink_faults or self._alarm

    def decision(self, seq: int) -> str | None:
        """How part ``seq`` was decided at the gate (one of ``GATE_OUTCOMES``), or None while it is
        still on its way (or long forgotten: the last ``DECIDED_MEMORY`` parts are kept)."""
        with self._lock:
            return self._decided.get(seq)

    def handle_report(self, report: SinkReport) -> None:
        """Listener for sink reports (wired automatically for sinks opened from URLs)."""
        log_reporter(report)
        if report.kind in PULSE_RESULTS and report.seq is not None:
            self._tell({"seq": report.seq, "event": "pulse", "sink": report.sink,
                        "pulse": PULSE_RESULTS[report.kind]})
        if report.kind in ("missed", "unconfirmed"):
            self._counters.add(f"sink_{report.kind}")
            reason = (f"{report.sink} missed reject seq {report.seq}" if report.kind == "missed" else
                      f"{report.sink}: reject seq {report.seq} unconfirmed (written, no reply by its "
                      f"deadline; the PLC may or may not have rejected it)")
            with self._fault_lock:
                self._sink_faults[(report.sink, PULSE_FAULT)] = reason
                if self.settings.fail_safe == "alarm":
                    self._raise_alarm(reason)
                self._update_fault_output()
        elif report.kind == "link_down":
            self._link_fault(report.sink)
        elif report.kind in ("reconnected", "delivered"):   # that sink works again: its pulse fault clears
            self._clear_sink_fault(report.sink, PULSE_FAULT)
            if report.kind == "reconnected":
                self._clear_sink_fault(report.sink, LINK_FAULT)
        elif report.kind == "released":
            self._clear_sink_fault(report.sink, STUCK_FAULT)
        elif report.kind in ("io_error", "device_error", "stuck"):
            self._counters.add("sink_errors")
            if report.kind == "stuck":
                self._set_sink_fault(report.sink, STUCK_FAULT,
                                     f"{report.sink}: output may be left on after reject seq {report.seq} "
                                     f"(falling edge not written); held until the sink writes it off again")
        elif report.kind == "dropped":
            self._counters.add("sink_dropped")
        elif report.kind == "late_write":
            self._counters.add("sink_late_writes")

    def stats(self) -> dict[str, int]:
        out = self._counters.snapshot()
        with self._lock:
            out["pending"] = len(self._parts) + self._at_gate
        return out

    def sink_stats(self) -> dict[str, dict[str, int]]:
        """Per reject sink: pulses handed in, delivered, missed, ... (see ``SINK_COUNTERS``)."""
        per_sink = getattr(self._sinks, "per_sink_stats", None)
        return per_sink() if per_sink is not None else {self._sinks.name: self._sinks.stats()}

    def check_sinks(self, timeout_s: float) -> None:
        """Raise ``PlcError`` naming each reject or fault sink not connected within ``timeout_s``
        (``reject.require_sinks_at_start``)."""
        from ..errors import PlcError

        down = []
        for fan in (self._sinks, self._faults):
            for sink in getattr(fan, "sinks", [fan]):
                wait = getattr(sink, "wait_connected", None)
                if wait is not None and not wait(timeout_s):
                    down.append(sink.name)
        if down:
            raise PlcError(f"reject.require_sinks_at_start: expected every sink to connect within "
                           f"{timeout_s:g} s, found {', '.join(down)} unreachable; check the PLC and "
                           f"its address, or set require_sinks_at_start: false")

    def drain_sinks(self, timeout_s: float) -> None:
        """Wait (at most ``timeout_s`` per sink) until pulses handed to the sinks are written."""
        for sink in getattr(self._sinks, "sinks", [self._sinks]):
            drain = getattr(sink, "drain", None)
            if drain is not None:
                drain(timeout_s)

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no part is between camera and gate, at most ``timeout_s``.

        A station that stops (end of stream, SIGTERM) calls this before ``close()`` so the parts
        already captured are still decided at the gate. Returns True when nothing is pending.
        """
        deadline = time.monotonic() + timeout_s
        while self.stats()["pending"] and time.monotonic() < deadline:
            time.sleep(0.005)
        return not self.stats()["pending"]

    def abandon_pending(self) -> int:
        """The run ends with parts still between camera and gate (a stopped belt, a stop before their travel
        time): take them off the belt undecided, in belt order. Each is counted ``abandoned``, remembered (a
        verdict for it is late) and told to ``on_part`` (one gate row, ``"gate": "abandoned"``); no pulse.
        Call it before the counters go into a summary. Returns how many parts were abandoned."""
        with self._lock:
            order = [seq for _, _, seq in sorted(self._heap)]
            parts = [self._parts.pop(seq) for seq in order if seq in self._parts] + list(self._parts.values())
            self._heap, self._parts = [], {}
            for part in parts:
                self._remember(part.seq, ABANDONED)
        if not parts:
            return 0
        self._counters.add(ABANDONED, len(parts))
        log.warning("reject gate: run ended with %d part(s) undecided (abandoned, not pulsed): seq %s", len(parts),
                    seq_list([p.seq for p in parts]))
        for part in parts:
            self._tell(self._gate_row(part, ABANDONED))
        return len(parts)

    def close(self) -> None:
        """Stop the thread (undecided parts are abandoned: ``abandon_pending``) and close owned sinks."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=2.0)
        if self._thread.is_alive():
            log.error("reject scheduler thread did not stop within 2 s")
        self._log_alarm(self._gap_log.close())
        self._log_uninspected(self._uninspected_log.close())
        self.abandon_pending()
        for sink in self._owned:
            sink.close()

    def __enter__(self) -> RejectScheduler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- placing parts (under self._lock) -------------------------------------------------------
    def _new_part(self, seq: int, t_capture: float, count: int | None, epoch: int = 0) -> _Part:
        """A part to place: due ``delay_ms`` after ``t_capture``, or at ``count + encoder_distance``; encoder
        mode with ``count`` None (the encoder had no position at capture): a part with no target, which the
        gate decides ``position_lost`` (``_pop_blind``)."""
        if self._encoder is None:
            return _Part(seq, t_capture + self.settings.delay_ms / 1000.0)
        if count is None:
            why = encoder_source.fault_reason(self._encoder)
            return _Part(seq, None, epoch=epoch, unseen=(
                f"captured while the encoder link was down ({why})" if why else
                "captured when the encoder had no belt position (a read hanging or the link down, or its frame "
                "held longer than the readings the encoder keeps)") + ": where it is on the belt is unknown")
        return _Part(seq, None, count + self.settings.encoder_distance, count, epoch=epoch)

    def _add(self, part: _Part) -> None:
        if self._encoder is not None and part.target is None:
            self._parts[part.seq] = part
            self._blind.append(part.seq)
            return
        key = part.t_due if part.target is None else part.target
        self._parts[part.seq] = part
        heapq.heappush(self._heap, (key, next(self._order), part.seq))
        if self._heap[0][2] == part.seq:
            self._wake.set()

    def _place_unnoted(self, verdict: Verdict, count: int | None) -> _Part | None:
        """An NG verdict for a part nobody noted at capture: place it if its gate is still ahead. Encoder
        mode: ``count`` (the caller's count at capture) is taken to be of the position epoch now (none given:
        not placed); while the encoder's link is down its gate is ahead when the held count is short of it."""
        if self._encoder is not None and count is None:
            return None
        now_count, epoch = encoder_source.mark(self._encoder) if self._encoder is not None else (None, 0)
        part = self._new_part(verdict.seq, verdict.t_capture, count, epoch)
        if part.target is not None and now_count is None:
            now_count = self._encoder.count()
        ahead = (part.t_due - DISPATCH_LEAD_S > time.monotonic() if part.target is None
                 else now_count < part.target)
        if not ahead:
            return None
        self._add(part)
        return part

    # -- the thread -------------------------------------------------------------------------------
    def _run(self) -> None:
        wait = self._wait_time if self._encoder is None else self._wait_count
        while not self._stop.is_set():
            decided = wait()
            try:
                self._alarm_lost([part for part, outcome in decided if outcome == "position_lost"])
            finally:
                for part, outcome in decided:
                    self._decide(part, outcome)
            self._log_alarm(self._gap_log.due())
            self._log_uninspected(self._uninspected_log.due())

    def _wait_time(self) -> list[tuple[_Part, str]]:
        with self._lock:
            self._wake.clear()
            head = self._heap[0][0] if self._heap else None
        if head is None:
            self._wake.wait(0.1)
            return []
        if not sleep_until(head - DISPATCH_LEAD_S, self._wake):
            return []
        return self._pop_due(time.monotonic() + DISPATCH_LEAD_S)

    def _wait_count(self) -> list[tuple[_Part, str]]:
        self._stop.wait(self.settings.encoder_poll_ms / 1000.0)
        self._check_encoder_fault()
        return self._pop_due(self._encoder.count(), at_gate=True)

    def _pop_due(self, now: float, at_gate: bool = False) -> list[tuple[_Part, str]]:
        """Take the parts due by ``now`` (monotonic s, or the encoder count) off the heap and decide
        them, under one lock: from here on a verdict for them is late (``submit`` finds them in
        ``_decided``), never placed again nor taken for a part that went by undecided.
        at_gate: encoder mode: the parts are at the gate now (their t_due is set to now); when the
        encoder's position epoch went up, every part noted under an older one is taken too (its
        position is unknown), and the parts captured while its link was down that are due (``_pop_blind``); a
        part whose position the encoder cannot vouch for is ``position_lost``."""
        out = []
        with self._lock:
            t_now = time.monotonic()
            popped = self._pop_lost_epochs() + self._pop_blind() if at_gate else []
            while self._heap and self._heap[0][0] <= now:
                _, _, seq = heapq.heappop(self._heap)
                part = self._parts.pop(seq, None)
                if part is not None:
                    popped.append(part)
            for part in popped:
                if at_gate:
                    part.t_due = t_now
                outcome = self._outcome(part)
                self._remember(part.seq, outcome)
                out.append((part, outcome))
            self._at_gate += len(out)
        return out

    def _remember(self, seq: int, outcome: str) -> None:
        """(under self._lock) Part ``seq`` was decided ``outcome``: a verdict for it from now on is late."""
        self._decided[seq] = outcome
        while len(self._decided) > DECIDED_MEMORY:
            self._decided.popitem(last=False)

    def _pop_lost_epochs(self) -> list[_Part]:
        """(under self._lock) When the encoder lost the belt position since the last poll, take every part
        noted under an older position epoch off the heap (in belt order): none of them can be found again."""
        epoch = encoder_source.position_epoch(self._encoder)
        if epoch == self._epoch:
            return []
        self._epoch = epoch
        keep, lost = [], []
        for entry in self._heap:
            part = self._parts.get(entry[2])
            if part is not None:
                (lost if part.epoch < epoch else keep).append(entry)
        if not lost:
            return []
        self._heap = keep
        heapq.heapify(self._heap)
        return [self._parts.pop(seq) for _, _, seq in sorted(lost)]

    def _pop_blind(self) -> list[_Part]:
        """(under self._lock) The parts captured while the encoder's link was down (no position) that the gate
        can decide now, in capture order: each once its verdict came (the gate row shows it) or the link is back
        (waiting tells nothing more: its frame may never be inspected)."""
        link_up = encoder_source.fault_reason(self._encoder) is None
        due: list[int] = []
        waiting: list[int] = []
        for seq in self._blind:
            part = self._parts.get(seq)
            if part is not None:   # (None: abandoned at the end of the run)
                (due if link_up or part.state != UNKNOWN or part.error else waiting).append(seq)
        self._blind = waiting
        return [self._parts.pop(seq) for seq in due]

    def _decide(self, part: _Part, outcome: str) -> None:
        """The part is at the gate, decided: pass it, or hand its pulse to the sinks (edge at the due
        time). It counts as pending until its counters and row are written, so ``wait_idle`` never
        returns between the pop and the count."""
        try:
            self._decide_now(part, outcome)
        finally:
            with self._lock:
                self._at_gate -= 1

    def _decide_now(self, part: _Part, outcome: str) -> None:
        self._counters.add(outcome)
        if outcome == "position_lost":
            pass   # no pulse: the gate does not know where the part is (alarmed for the batch by _alarm_lost)
        elif outcome == "passed_uninspected":
            why = f" (verdict error: {part.error})" if part.error else ""
            self._latch_alarm(f"part seq {part.seq} passed the gate uninspected{why} (fail_safe: alarm)")
            self._note_uninspected(part)
        elif outcome == "gap_missed":
            self._latch_alarm(f"part seq {part.seq} not rejected: {GAP_MISSED_WHY}")
            self._log_alarm(self._gap_log.note(part.seq))
        elif outcome.startswith("rejected"):
            self._fire(part, outcome == "rejected_uninspected")
        self._tell(self._gate_row(part, outcome))   # after the pulse is handed over

    @staticmethod
    def _gate_row(part: _Part, outcome: str) -> dict:
        """The gate log's row for a decided (or abandoned) part."""
        row = {"seq": part.seq, "event": "gate", "gate": outcome,
               "verdict": {UNKNOWN: "none", GOOD: "ok", NG: "ng"}[part.state]}
        if part.error:
            row["error"] = part.error
        if part.unseen:
            row["reason"] = part.unseen
        return row

    def _outcome(self, part: _Part) -> str:
        """The part's gate outcome (one of ``GATE_OUTCOMES``); takes its reject slot. Under self._lock."""
        if self._encoder is not None and part.target is None:   # captured while the link was down
            return "position_lost"
        if part.target is not None:
            unseen = encoder_source.went_unseen(self._encoder, part.target, part.epoch)
            if unseen is None and part.epoch < self._epoch:   # an encoder that does not say why
                unseen = f"belt position lost after the part was noted (epoch {part.epoch} -> {self._epoch})"
            if unseen is not None:
                part.unseen = unseen
                return "position_lost"
        if part.state == GOOD:
            return "passed"
        if part.state == UNKNOWN and self.settings.fail_safe == "alarm":
            return "passed_uninspected"
        self._slots.prune(part.t_due)
        start = self._slots.earliest(part.t_due)
        if start > part.t_due + self.settings.late_ms / 1000.0:
            return "gap_missed"
        self._slots.take(start)
        part.t_edge = start
        return "rejected_uninspected" if part.state == UNKNOWN else "rejected_ng"

    def _fire(self, part: _Part, uninspected: bool) -> None:
        if uninspected:
            self._note_uninspected(part)
        if part.t_edge is None:
            raise RuntimeError(f"part seq {part.seq}: fired before its reject slot was taken")  # a bug, not input
        event = RejectEvent(part.seq, part.t_due, part.t_edge, part.t_due + self.settings.late_ms / 1000.0,
                            uninspected, part.score, part.count)
        self._sinks.pulse(event)
        self._counters.add("fired")

    def _note_uninspected(self, part: _Part) -> None:
        """Part decided uninspected (rejected or passed by ``fail_safe``): its journal line, grouped
        (``UninspectedLog``)."""
        why = f"verdict error ({part.error})" if part.error else "no verdict by its due time"
        self._log_uninspected(self._uninspected_log.note((part.seq, why)))

    def _log_uninspected(self, line: str | None) -> None:
        """The journal's line for parts decided uninspected (None: nothing to log now): an alarm with ``fail_safe:
        alarm`` (each part latched it), else a warning (each part was rejected)."""
        if line is None:
            return
        if self.settings.fail_safe == "alarm":
            self._log_alarm(line)
        else:
            log.warning("reject gate: %s", line)

    def _tell(self, row: dict) -> None:
        if self.on_part is None:
            return
        try:
            self.on_part(dict(row, t=time.monotonic()))
        except Exception:  # noqa: BLE001 - a broken log must not stop the gate
            log.exception("reject gate: on_part failed for seq %s", row.get("seq"))

    def _alarm_lost(self, parts: list[_Part]) -> None:
        """One alarm for the parts decided ``position_lost`` in one poll, naming them and why."""
        if not parts:
            return
        by_reason: dict[str, list[int]] = {}
        for part in parts:
            by_reason.setdefault(part.unseen, []).append(part.seq)
        whats = [f"part{'s' if len(seqs) > 1 else ''} seq {seq_list(seqs)}: {reason}" for reason, seqs in by_reason.items()]
        self._raise_alarm(f"not rejected, position unknown at the gate (position_lost; no pulse, it could hit "
                          f"another part): {'; '.join(whats)}")

    # -- fault output -----------------------------------------------------------------------------
    def _check_encoder_fault(self) -> None:
        """Hold the fault output while the encoder says its count is held (link down); drop it when back."""
        reason = encoder_source.fault_reason(self._encoder)
        if reason == self._encoder_fault:
            return
        with self._fault_lock:
            if reason is None:
                log.warning("reject gate: encoder fault cleared (%s)", self._encoder_fault)   # as it was raised
            elif self._encoder_fault is None:   # logged once per outage; the output shows the latest reason
                log.warning("reject gate: %s; parts wait at their counts", reason)
            self._encoder_fault = reason
            self._update_fault_output()

    def _raise_alarm(self, reason: str) -> None:
        """Log the alarm and latch it (``_latch_alarm``)."""
        self._log_alarm(reason)
        self._latch_alarm(reason)

    @staticmethod
    def _log_alarm(line: str | None) -> None:
        """The journal's line for an alarm (None: nothing to log now, e.g. a gap_missed part gathered)."""
        if line is not None:
            log.error("reject alarm: %s", line)

    def _latch_alarm(self, reason: str) -> None:
        """Count the alarm and latch it on the fault output (until ``acknowledge_alarm``), without logging it."""
        self._counters.add("alarms")
        with self._fault_lock:
            self._alarm = reason
            self._update_fault_output()

    def _set_sink_fault(self, sink: str, cause: str, reason: str) -> None:
        """Hold the fault output for ``sink`` (cause: PULSE_FAULT, STUCK_FAULT or LINK_FAULT) until it clears."""
        with self._fault_lock:
            self._sink_faults[(sink, cause)] = reason
            self._update_fault_output()

    def _link_fault(self, sink: str) -> None:
        """``sink`` reported its link down: hold the fault output until it reports ``reconnected``. The reason
        names the sink and the UTC time of the first report (``2026-12-06T10:07:22Z``) (kept through repeats, so the fault output
        and MQTT see one change per outage); counted ``sink_link_downs`` once per outage."""
        with self._fault_lock:
            if (sink, LINK_FAULT) not in self._sink_faults:
                self._counters.add("sink_link_downs")
                since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                self._set_sink_fault(sink, LINK_FAULT, f"{sink}: link down since {since}, reconnecting")

    def _clear_sink_fault(self, sink: str, cause: str) -> None:
        """``sink`` recovered from ``cause``: drop its entry (other sinks' entries stay)."""
        with self._fault_lock:
            if self._sink_faults.pop((sink, cause), None) is not None:
                log.warning("reject sink %s: %s fault cleared", sink, cause)   # at the level it was raised at
                self._update_fault_output()

    def _sink_link_up(self, name: str) -> bool:
        """Whether sink ``name`` says its link is up (``connected``); True for a sink that does not say
        (in-memory sinks, a name no sink of ours has)."""
        for fan in (self._sinks, self._faults):
            for sink in getattr(fan, "sinks", [fan]):
                if getattr(sink, "name", None) == name:
                    return bool(getattr(sink, "connected", True))
        return True

    def _update_fault_output(self) -> None:
        """Hold the fault sinks on with the current reason while a fault holds, write them off once when it clears;
        nothing until they are open."""
        with self._fault_lock:
            if self._faults is None:   # still opening the sinks: __init__ shows it once they are
                return
            reason = self.fault_reason
            active = reason is not None
            if active or self._fault_shown:
                self._faults.set_fault(active, reason or "cleared")
            self._fault_shown = active

    def _own(self, urls: tuple[str, ...], name: str) -> FanOut:
        fan = open_fanout(urls, self.settings.pulse_ms, self.handle_report, name)
        self._owned.append(fan)
        return fan


def seq_list(seqs: list[int], most: int = SEQS_NAMED) -> str:
    """'3, 4, 5' for an alarm or log line: at most ``most`` sequence numbers, then how many more (an alarm for a
    belt of 258 lost parts named all of them in the fault output's reason and on MQTT)."""
    named = ", ".join(map(str, seqs[:most]))
    return named if len(seqs) <= most else f"{named} and {len(seqs) - most} more (all in gate.jsonl)"


class GroupedLog:
    """Groups a flood of like log lines (a fault that lasts, one event per part): the first event after a quiet
    spell is logged at once (``_first_line``), the events after it are gathered and logged as one line per
    ``window_s`` (``_gathered_line``). A window with no event ends the spell: the next event is logged at once
    again. Only the log is grouped: the caller still counts every event. Subclasses write the two lines.

    window_s: seconds a line gathers events. clock: monotonic seconds (tests hand in a fake one). Thread-safe (one
    thread notes and ticks; ``close`` may run beside a thread that did not stop).
    """

    def __init__(self, window_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = float(window_s)
        self._clock = clock
        self._lock = threading.Lock()
        self._held: list = []                 # the events gathered since the window began
        self._since: float | None = None      # when the window began (monotonic s); None: quiet, no window

    def note(self, event) -> str | None:
        """An event came: the line to log now (the first event of a spell; or the events gathered, once the
        window they were gathered in ran out, this one with them), or None (gathered)."""
        with self._lock:
            now = self._clock()
            if self._since is None:
                self._since = now
                return self._first_line(event)
            self._held.append(event)
            return self._window_end(now)

    def due(self) -> str | None:
        """The events gathered when their window ran out (one line), else None; a window without an event ends
        the spell. Call it often (the owning thread's every turn)."""
        with self._lock:
            return self._window_end(self._clock())

    def close(self) -> str | None:
        """The events still gathered (one line) at the end of the run, or None."""
        with self._lock:
            line = self._held_line(self._clock())
            self._held, self._since = [], None
            return line

    def _first_line(self, event) -> str:
        """The line for the first event of a spell, logged at once."""
        raise NotImplementedError

    def _gathered_line(self, held: list, span_s: float) -> str:
        """The line for the events gathered (``held``, oldest first, at least one) in the last ``span_s`` s."""
        raise NotImplementedError

    def _window_end(self, now: float) -> str | None:
        """(under self._lock) At the end of a window: its line (None when it gathered nothing, which ends the
        spell) and a new window from ``now``; before it: None."""
        if self._since is None or now - self._since < self.window_s:
            return None
        line = self._held_line(now)
        self._since = now if self._held else None
        self._held = []
        return line

    def _held_line(self, now: float) -> str | None:
        """(under self._lock) The line for the events gathered, or None when there are none."""
        if not self._held:
            return None
        return self._gathered_line(self._held, now - (self._since if self._since is not None else now))


class GapMissLog(GroupedLog):
    """Groups the journal lines of ``gap_missed`` parts (``GroupedLog``). A min_gap_ms conflict that lasts (parts
    closer than a pulse slot, 100 parts/s on a 70 ms slot) logged one ERROR line per part, 1 672 in 40 s; now the
    first miss after a quiet spell is logged at once, naming its part, and the misses after it are gathered and
    logged as one line per ``window_s`` (their count, first and last sequence number, and the first ``SEQS_NAMED``
    of them). Each part is still counted, alarmed and written to gate.jsonl.

    window_s: seconds a line gathers misses (None: ``GAP_LOG_S``). clock: monotonic seconds. ``note(seq)``: part
    ``seq`` was decided ``gap_missed``.
    """

    def __init__(self, window_s: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(GAP_LOG_S if window_s is None else window_s, clock)

    def _first_line(self, seq: int) -> str:
        return (f"part seq {seq} not rejected: {GAP_MISSED_WHY}; further such parts are logged together, "
                f"one line per {self.window_s:g} s (each is in gate.jsonl)")

    def _gathered_line(self, held: list[int], span_s: float) -> str:
        count = f"{len(held)} more part{'s' if len(held) > 1 else ''}"
        return (f"{count} not rejected (gap_missed) in the last {span_s:.1f} s, seq {held[0]} .. {held[-1]}: "
                f"{seq_list(held)}; {GAP_MISSED_WHY}")


class UninspectedLog(GroupedLog):
    """Groups the journal lines of parts decided uninspected (``GroupedLog``): a verdict with ``error`` set
    (malformed frame, inference failed) or none by the due time, then rejected (``fail_safe: reject``) or passed
    with the alarm latched (``alarm``). A camera switched to 16-bit makes every frame malformed: each part logged
    two warnings (at its verdict and at its decision), a flood at line rate; now the first part after a quiet spell is
    logged at once, naming it and why, and the parts after it one line per ``window_s`` (their count, first and last
    sequence number, the first ``SEQS_NAMED`` of them, and the first ``WHYS_NAMED`` reasons with their counts). Each
    part is still counted, decided and written to gate.jsonl (its ``error`` there).

    fail_safe: ``reject`` or ``alarm`` (what became of the parts). window_s: seconds a line gathers parts (None:
    ``GAP_LOG_S``). clock: monotonic seconds. ``note((seq, why))``: part ``seq`` was decided uninspected for ``why``.
    """

    def __init__(self, fail_safe: str, window_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(GAP_LOG_S if window_s is None else window_s, clock)
        self.decided = ("passed the gate uninspected (fail_safe: alarm)" if fail_safe == "alarm"
                        else "rejected uninspected (fail_safe: reject)")

    def _first_line(self, event: tuple[int, str]) -> str:
        seq, why = event
        return (f"part seq {seq} {self.decided}: {why}; further such parts are logged together, one line per "
                f"{self.window_s:g} s (each is in gate.jsonl)")

    def _gathered_line(self, held: list[tuple[int, str]], span_s: float) -> str:
        seqs = [seq for seq, _ in held]
        whys: dict[str, int] = {}
        for _, why in held:
            whys[why] = whys.get(why, 0) + 1
        named = "; ".join(f"{why} ({n})" for why, n in list(whys.items())[:WHYS_NAMED])
        others = len(whys) - WHYS_NAMED
        count = f"{len(held)} more part{'s' if len(held) > 1 else ''}"
        return (f"{count} {self.decided} in the last {span_s:.1f} s, seq {seqs[0]} .. {seqs[-1]}: {seq_list(seqs)}; "
                f"{named}" + (f"; and {others} other reason{'s' if others > 1 else ''}" if others > 0 else ""))
