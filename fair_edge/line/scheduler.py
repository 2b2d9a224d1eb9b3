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
- a gate with no reject output (``reject.fault_sinks`` only, a fault lamp; ``rejects_parts`` False) pulses nothing: an
  NG part passes, counted ``passed_ng``; a part not inspected passes, counted ``passed_uninspected``, and the fault
  output latches under either ``fail_safe``.

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

Sink failures and the fault output (what holds it on, until when) are ``line.gate_alarms``'s (``GateAlarms``),
as are the latched alarms (each alarm latches beside those before it, all named in one text until the operator
acknowledges: ``line.latched_alarms``), what an acknowledgement clears (``to_acknowledge``) and the alarm journal's
grouped lines (``GapMissLog``, ``UninspectedLog``).

More than ``max_pending`` parts between camera and gate: the new part is refused, counted, and alarmed.

What happened to each part is told to ``on_part`` (the recorder's gate log), one row per event:
``{"seq", "event": "gate", "gate": OUTCOME, "verdict": "ng" | "ok" | "none"}`` when the part is
decided (OUTCOME: one of ``GATE_OUTCOMES``, or ``abandoned`` for a part still on its way when the run ended:
``abandon_pending``; verdict "none" = no usable verdict by the due time, with
``"error"`` added when its verdict came with one, ``"reason"`` for ``position_lost`` and, for a part with no verdict,
what its station says is missing (``why_no_verdict``: a cell's views, ``missing view: b (no frame)``)), and
``{"seq", "event": "pulse", "sink", "pulse": "delivered" | "late" | "missed" | "unconfirmed"}`` per reject sink
that reports on the part's pulse (sinks opened from URLs). ``decision(seq)`` says how a part
was decided, so a verdict that comes after it can be logged with what the gate did.
"""

from __future__ import annotations

import bisect
import contextlib
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
from .close_cut import because
from .encoder_source import EncoderSource
from .events import RejectEvent
from .gate_alarms import Acknowledgement, GateAlarms
from .latched_alarms import NOT_REJECTED_LATE, NOT_REJECTED_LOST, PASSED_UNINSPECTED, REFUSED
from .gate_sinks import GateSinks, slot_span_s
from .grouped_log import seq_list
from .settings import RejectSettings
from .sinks import CloseBy, SignalSink, SinkReport, log_reporter
from .sinks.base import Counters, sleep_until

log = logging.getLogger(__name__)

SCHEDULER_COUNTERS = ("captured", "verdicts", "ng", "error_verdicts", "passed", "rejected_ng", "rejected_uninspected",
                      "passed_ng", "passed_uninspected", "gap_missed", "position_lost", "late_verdicts", "fired",
                      "alarms", "refused", "sink_missed", "sink_unconfirmed", "sink_errors", "sink_dropped",
                      "sink_late_writes", "sink_late_falls", "sink_link_downs", "abandoned")
DISPATCH_LEAD_S = 0.003  # decision cut-off before the due time; events reach the sinks this early
DECIDED_MEMORY = 4096    # decided parts remembered, so a late verdict is recognised as late

GATE_OUTCOMES = ("passed", "rejected_ng", "rejected_uninspected", "passed_ng", "passed_uninspected", "gap_missed",
                 "position_lost")
# a sink's report on a pulse -> what the gate log says happened to it
PULSE_RESULTS = {"delivered": "delivered", "late_write": "late", "missed": "missed", "dropped": "missed",
                 "unconfirmed": "unconfirmed"}
ABANDONED = "abandoned"   # a part still between camera and gate when the run ended: no decision, no pulse
PartListener = Callable[[dict], None]   # RejectScheduler(on_part=...): one gate-log row per call

# what submit() returns
OK, SCHEDULED, LATE, REFUSED, UNINSPECTED = "ok", "scheduled", "late", "refused", "uninspected"
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
    missing: str = ""  # no verdict by its due time: what its station said was missing then (``why_no_verdict``)
    epoch: int = 0   # the encoder's position epoch when the count was noted
    unseen: str = ""  # why the gate could not know where the part was (outcome position_lost)


class RejectScheduler:
    """Decides each part at the gate and pulses ``sinks``; holds the fault output on ``fault_sinks``.

    sinks / fault_sinks: anything with the ``SignalSink`` methods (usually a ``FanOut``); when
    omitted they are opened from ``settings.sinks`` / ``settings.fault_sinks`` and owned (closed
    by ``close()``). encoder: required when ``settings.encoder_distance`` is set. why_no_verdict: part seq -> what
    its station is missing (a cell's views: ``PartAssembler.missing_at_gate``; "" when it cannot say), asked once per
    part decided with no verdict, on the gate's thread after its pulse is handed over; None: not asked.
    """

    def __init__(self, settings: RejectSettings, sinks: SignalSink | None = None,
                 fault_sinks: SignalSink | None = None,
                 encoder: EncoderSource | None = None, on_part: PartListener | None = None) -> None:
        if settings.encoder_distance is not None and encoder is None:
            raise ConfigError("reject.encoder_distance: expected an encoder source to be "
                              "configured (reject.encoder), found none; configure it or use delay_ms")
        self.settings = settings
        self.on_part = on_part
        self.why_no_verdict: Callable[[int], str] | None = None
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
        self._epoch = 0   # the encoder's position epoch the heap's parts were last checked against
        # no reject output (only reject.fault_sinks, a lamp): nothing to pulse; NG parts pass (passed_ng), parts not
        # inspected pass and latch the fault output under either fail_safe (passed_uninspected)
        self.rejects_parts = sinks is not None or bool(settings.sinks)
        self._fail_safe = settings.fail_safe if self.rejects_parts else "alarm"
        self._alarms = GateAlarms(self._counters, self._fail_safe, log)   # fault output, alarm, their journal
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._close_begun = False
        self._closed = False
        self._outputs = GateSinks(settings, self.handle_report, sinks, fault_sinks)   # reject + fault sinks
        self._slots = SlotPlan(slot_span_s(settings, self._outputs.rejects))
        self._alarms.attach(self._outputs.faults)   # shows a fault reported while the sinks opened (a link down)
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
                              f"between camera and gate (reject.max_pending)", REFUSED, (seq,))
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
                              f"already between camera and gate (reject.max_pending)", REFUSED, (verdict.seq,))
            return REFUSED
        if decided is None and not (verdict.ng or uninspected):
            return OK   # a good part nobody noted: nothing to do at the gate
        self._counters.add("late_verdicts")
        if decided is None:
            what = "uninspected (verdict error)" if uninspected else "NG"
            self._raise_alarm(f"{what} part seq {verdict.seq}: verdict came after the part passed the gate",
                              NOT_REJECTED_LATE, (verdict.seq,))
        else:
            log.warning("verdict for seq %d came after its part was decided (%s); not fired",
                        verdict.seq, decided)
        return LATE

    def submit_uninspected(self, seq: int, error: str) -> bool:
        """``submit`` of a verdict with ``error`` set for part ``seq``, only while the gate holds the part (noted,
        not yet decided): counted ``verdicts`` and ``error_verdicts``, decided by ``fail_safe``, its gate row,
        alarm and journal line naming ``error``. False, nothing counted, for a part the gate decided already or never
        held (refused): a cell's part closed with a view missing (``error``: ``missing view: b (no frame)``) after
        its due time is no late verdict, and a refused one is not refused twice."""
        with self._lock:
            part = self._parts.get(seq)
            if part is not None:
                part.error = error
        if part is None:
            return False
        self._counters.add("verdicts")
        self._counters.add("error_verdicts")
        return True

    def fault(self, active: bool, reason: str = "") -> None:
        """The station cannot inspect (backend dead, camera gone) while ``active``: the fault
        output is held on; it drops when the fault clears and no alarm is latched."""
        self._alarms.station_fault(active, reason)

    def acknowledge_alarm(self, seen: str | None = None) -> str | None:
        """Operator reset of what ``to_acknowledge`` names: every alarm latched since the last reset (parts passed
        uninspected, refused, gap missed, sink misses) and the missed / unconfirmed pulse fault of each sink whose
        link is up (a refused write, a pulse dequeued late: the sink works); a sink still down (a ``link_down`` not
        yet followed by ``reconnected``, its socket connected or not) keeps its fault until it reconnects, a stuck output keeps its fault until the sink writes it off again, and a link that is down
        keeps its fault until it reconnects. Returns the text it cleared (None: nothing was there), read and
        cleared at once. seen: the text the operator was shown (None: whatever is there); ConfigError, nothing
        cleared, when it is another now (an alarm latched or a pulse missed since): never cleared unseen."""
        return self._alarms.acknowledge(seen, self._outputs.link_up)

    def acknowledging(self) -> contextlib.AbstractContextManager[Acknowledgement]:
        """This gate's alarms held still while several gates are acknowledged all or nothing (``GateAlarms.held``):
        ``with gate.acknowledging() as ack:`` ``ack.text`` is what ``acknowledge_alarm`` would clear, ``ack.clear()``
        clears it."""
        return self._alarms.held(self._outputs.link_up)

    @property
    def alarm(self) -> str | None:
        """Every alarm latched since the last acknowledgement, in one text (``line.latched_alarms``), or None."""
        return self._alarms.alarm

    @property
    def to_acknowledge(self) -> str | None:
        """What an acknowledgement clears now, the text the operator is shown (the console's alarm): the latched
        alarms, then the pulse faults of each sink whose link is up (no ``link_down`` since its ``reconnected``)
        that they do not name ("; "); None: nothing."""
        return self._alarms.to_acknowledge(self._outputs.link_up)

    @property
    def fault_reason(self) -> str | None:
        """Why the fault output is on now (station fault, encoder link down, sink faults, latched alarm),
        or None."""
        return self._alarms.reason

    def decision(self, seq: int) -> str | None:
        """How part ``seq`` was decided at the gate (one of ``GATE_OUTCOMES``), or None while it is
        still on its way (or long forgotten: the last ``DECIDED_MEMORY`` parts are kept)."""
        with self._lock:
            return self._decided.get(seq)

    def handle_report(self, report: SinkReport) -> None:
        """Listener for sink reports (wired automatically for sinks opened from URLs): logged, a pulse's row for
        ``on_part``, and counted and shown on the fault output (``GateAlarms.sink_report``)."""
        log_reporter(report)
        if report.kind in PULSE_RESULTS and report.seq is not None:
            self._tell({"seq": report.seq, "event": "pulse", "sink": report.sink,
                        "pulse": PULSE_RESULTS[report.kind]})
        self._alarms.sink_report(report)

    def stats(self) -> dict[str, int]:
        out = self._counters.snapshot()
        with self._lock:
            out["pending"] = len(self._parts) + self._at_gate
        return out

    def sink_stats(self) -> dict[str, dict[str, int]]:
        """Per reject sink: pulses handed in, delivered, missed, ... (see ``SINK_COUNTERS``)."""
        return self._outputs.per_sink_stats()

    def check_sinks(self, timeout_s: float) -> None:
        """Raise ``PlcError`` naming each reject or fault sink not connected within ``timeout_s``
        (``reject.require_sinks_at_start``)."""
        self._outputs.check_connected(timeout_s)

    def drain_sinks(self, timeout_s: float) -> None:
        """Wait until pulses handed to the reject sinks are written, at most ``timeout_s`` (s) for all of them
        together (``GateSinks.drain``: one deadline, not one per sink)."""
        self._outputs.drain(timeout_s)

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

    def stop_deciding(self) -> None:
        """Tell the gate's thread to stop, without waiting for it (``begin_close`` waits): a cell's lane gates are
        all told before any is waited for (``station.line_side.close_gates``)."""
        self._stop.set()
        self._wake.set()

    def begin_close(self, by: CloseBy) -> None:
        """close()'s first half: stop the thread, waited for until ``by.drain_until`` (a thread held in an encoder
        read), then (undecided parts are abandoned: ``abandon_pending``) tell the owned sinks to stop once their
        pulses are written (by ``by.drain_until``), waiting for none. Once. A thread still running then is an error
        only while the gate holds a part (``pending``): an idle one, woken but not yet ended (a stop whose deadline
        was spent gives 0 s), lost nothing and ends on its own."""
        if self._close_begun:
            return
        self._close_begun = True
        self.stop_deciding()
        self._thread.join(timeout=max(0.0, by.drain_until - time.monotonic()))
        if self._thread.is_alive() and not self.stats()["pending"]:   # woken, holding no part: nothing lost
            log.debug("reject scheduler thread: still running at the close's deadline, holding no part; left to end "
                      "on its own")
        elif self._thread.is_alive():
            log.error("reject scheduler thread did not stop by the close's deadline (%s)",
                      because("held in an encoder read?"))
        self._alarms.log_close()
        self.abandon_pending()
        self._outputs.begin_close(by)

    def close(self, by: CloseBy | None = None) -> None:
        """``begin_close``, then close the owned sinks within ``by`` (``CloseBy.from_now()`` when None; a cell's lane
        gates share one: ``station.line_side.close_gates``)."""
        if self._closed:
            return
        self._closed = True
        by = by or CloseBy.from_now()
        self.begin_close(by)
        self._outputs.close(by)

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
            self._alarms.log_due()

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
            self._ask_why_no_verdict(part)
            why = (f" (verdict error: {part.error})" if part.error else
                   f" (no verdict by its due time: {part.missing})" if part.missing else "")
            policy = "fail_safe: alarm" if self.settings.fail_safe == "alarm" else "no reject output"
            self._alarms.latch(f"part seq {part.seq} passed the gate uninspected{why} ({policy})",
                               PASSED_UNINSPECTED, (part.seq,))
            self._note_uninspected(part)
        elif outcome == "gap_missed":
            self._alarms.gap_missed(part.seq)
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
        if part.unseen or part.missing:
            row["reason"] = part.unseen or part.missing
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
        if part.state == NG and not self.rejects_parts:
            return "passed_ng"
        if part.state == UNKNOWN and self._fail_safe == "alarm":
            return "passed_uninspected"
        self._slots.prune(part.t_due)
        start = self._slots.earliest(part.t_due)
        if start > part.t_due + self.settings.late_ms / 1000.0:
            return "gap_missed"
        self._slots.take(start)
        part.t_edge = start
        return "rejected_uninspected" if part.state == UNKNOWN else "rejected_ng"

    def _fire(self, part: _Part, uninspected: bool) -> None:
        """Hand the part's pulse to the sinks; an uninspected part's journal line after it (``_note_uninspected``)."""
        if part.t_edge is None:
            raise RuntimeError(f"part seq {part.seq}: fired before its reject slot was taken")  # a bug, not input
        event = RejectEvent(part.seq, part.t_due, part.t_edge, part.t_due + self.settings.late_ms / 1000.0,
                            uninspected, part.score, part.count)
        self._outputs.rejects.pulse(event)
        self._counters.add("fired")
        if uninspected:
            self._ask_why_no_verdict(part)
            self._note_uninspected(part)

    def _ask_why_no_verdict(self, part: _Part) -> None:
        """A part decided with no verdict (none came, none with an error): ``why_no_verdict`` names what its station
        is missing (``part.missing``: its row's ``reason``, its alarm and journal line); asked outside the lock."""
        if part.error or self.why_no_verdict is None:
            return
        try:
            part.missing = self.why_no_verdict(part.seq)
        except Exception:  # noqa: BLE001 - a failing question must not stop the gate: the part keeps the plain why
            log.exception("reject gate: why_no_verdict failed for seq %s", part.seq)

    def _note_uninspected(self, part: _Part) -> None:
        """Part decided uninspected (rejected or passed by ``fail_safe``): its journal line, grouped
        (``UninspectedLog``)."""
        why = f"verdict error ({part.error})" if part.error else "no verdict by its due time"
        if part.missing:
            why = f"{why} ({part.missing})"
        self._alarms.uninspected(part.seq, why)

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
                          f"another part): {'; '.join(whats)}", NOT_REJECTED_LOST, tuple(part.seq for part in parts))

    # -- fault output -----------------------------------------------------------------------------
    def _check_encoder_fault(self) -> None:
        """Hold the fault output while the encoder says its count is held (link down); drop it when back."""
        self._alarms.encoder_fault(encoder_source.fault_reason(self._encoder))

    def _raise_alarm(self, reason: str, fate: str = "", seqs: tuple[int, ...] = ()) -> None:
        """Log the alarm and latch it beside those latched already (``GateAlarms.raise_alarm``): fate, what became
        of the parts ``seqs`` it names (a ``line.latched_alarms`` label)."""
        self._alarms.raise_alarm(reason, fate, seqs)
