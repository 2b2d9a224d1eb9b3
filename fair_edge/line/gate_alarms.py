"""What the reject gate tells the operator beside its pulses: the fault output, the latched alarms, their journal.

``GateAlarms`` holds the fault output (``reject.fault_sinks``) on while any of these holds, its reason the first
one's: the station cannot inspect (``station_fault``), the encoder's link is down (``encoder_fault``: the count is
held, the gate waits), a sink fault (one entry per sink and cause), the latched alarms (every alarm since the last
``acknowledge``, named in one text: ``line.latched_alarms``).

What the operator acknowledges (``to_acknowledge``, the console's alarm text) is the latched alarms and the missed /
unconfirmed pulses of each sink whose link is up and that reported no ``link_down`` since its last ``reconnected``
(each of its misses kept since the last acknowledgement, in one text; those the latched alarms do not name already):
the pulse faults an acknowledgement clears. ``acknowledge(seen)`` clears exactly that, and only when it is still the text the operator
was shown (``seen``): a pulse missed or an alarm latched since is never cleared unseen.

Sink failures, one fault entry per sink (one sink's recovery never clears another's fault): a sink
that misses a pulse (PLC down, device refused the write, pulse dequeued after its deadline) reports
it; counted ``sink_missed``, never replayed, and the fault output is held on until that sink reports
``reconnected`` or ``delivered`` (it works again), or the operator acknowledges while that sink's
link is up and holds no link fault (with ``fail_safe: alarm`` an alarm also latches, naming it; without, the operator is shown the pulse
fault itself beside the alarms, ``to_acknowledge``). A pulse whose write went out but got no reply by its deadline
is counted ``sink_unconfirmed`` instead (the PLC may have rejected the part: it is not claimed missed), with the same
fault output and alarm: nobody knows the part was rejected. A ``stuck`` report (falling edge not written: the
output may be left on) holds the fault output until that sink reports ``released`` (its resting level written
again); an acknowledge does not clear it. A ``late_fall`` (a falling edge written late: the output is off again) is
counted ``sink_late_falls``, no fault. A ``link_down`` report (the sink's link cannot be re-established: a
connect failed, or a write / probe failed twice in a row though the reconnect between succeeded; a single failure the
reconnect gets past is only an ``io_error``; a PLC that went away is found within about ``sinks.base.PROBE_S`` + the
probe's timeout + one connect timeout, before any pulse is due) holds the fault output, naming the sink and since
when, until that sink reports ``reconnected``; counted ``sink_link_downs``, no alarm latched, an acknowledge does not
clear it.

The journal lines of parts the gate could not reject as planned are grouped (``line.grouped_log``): ``gap_missed``
parts by ``GapMissLog`` and parts decided uninspected by ``UninspectedLog``, so a fault that lasts does not log a
line per part. It all runs beside the path (on the gate's and the sinks' threads, never deciding a pulse); its
lines go to the gate's logger (``fair_edge.line.scheduler``), which station log settings and tests select.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ..errors import ConfigError
from .grouped_log import GroupedLog, seq_list
from .latched_alarms import NOT_REJECTED_GAP, NOT_REJECTED_PULSE, UNCONFIRMED, LatchedAlarms
from .sinks import SignalSink, SinkReport
from .sinks.base import Counters

GAP_LOG_S = 10.0         # gap_missed parts after the first are logged together, one line per this many seconds
WHYS_NAMED = 3           # distinct reasons a grouped line of parts decided uninspected names at most (with counts)
GAP_MISSED_WHY = ("min_gap_ms after the previous pulse would put its edge past due + late_ms (it would hit the next "
                  "part)")
# a sink's fault entry: PULSE_FAULT after a missed / unconfirmed pulse, STUCK_FAULT after a falling edge not written,
# LINK_FAULT while its link is down (``link_down`` .. ``reconnected``)
PULSE_FAULT, STUCK_FAULT, LINK_FAULT = "pulse", "stuck", "link"
SinkLinkUp = Callable[[str], bool]   # whether the sink of this name says its link is up


@dataclass(frozen=True)
class Acknowledgement:
    """What an acknowledgement of one gate clears, while the gate's alarms are held still (``GateAlarms.held``):
    ``text``, its ``to_acknowledge`` (None: nothing), and ``clear()``, which clears exactly that."""

    text: str | None
    clear: Callable[[], None]


class GateAlarms:
    """The gate's fault output, latched alarms and alarm journal (see the module doc).

    counters: the gate's (``scheduler.SCHEDULER_COUNTERS``): alarms and sink reports are counted there.
    fail_safe: ``reject.fail_safe`` (``alarm``: a missed pulse also latches the alarm; parts decided uninspected are
    logged as alarms). log: the gate's logger. The fault output shows nothing until ``attach`` hands it its sinks.
    Thread-safe: the gate's thread, the sinks' threads and the station's loop change it concurrently.
    """

    def __init__(self, counters: Counters, fail_safe: str, log: logging.Logger) -> None:
        self._counters, self.fail_safe, self._log = counters, fail_safe, log
        self._lock = threading.RLock()   # fault state + output writes: sink threads report concurrently
        self._out: SignalSink | None = None   # the fault sinks (None while the gate opens them)
        self._station_fault: str | None = None
        self._sink_faults: dict[tuple[str, str], str] = {}   # (sink name, PULSE/STUCK/LINK_FAULT) -> reason
        self._latched = LatchedAlarms()   # every alarm since the last acknowledgement
        self._pulses_alarmed: set[str] = set()   # sinks whose pulse fault the latched alarms name (fail_safe: alarm)
        self._pulse_faults: dict[str, LatchedAlarms] = {}   # sink -> its missed / unconfirmed pulses, each one kept
        self._encoder_fault: str | None = None   # the encoder's link is down (count held), polled
        self._shown = False
        self._gap_log = GapMissLog()   # groups the journal lines of gap_missed parts
        self._uninspected_log = UninspectedLog(fail_safe)   # and of parts decided uninspected

    def attach(self, fault_sinks: SignalSink) -> None:
        """The fault sinks are open: show them the fault state (a fault reported while they were opened, a link
        down at start)."""
        with self._lock:
            self._out = fault_sinks
            self._update()

    # -- what holds the fault output --------------------------------------------------------------------
    @property
    def alarm(self) -> str | None:
        """The alarms latched since the last acknowledgement, in one text (``LatchedAlarms.text``), or None."""
        with self._lock:
            return self._latched.text()

    @property
    def reason(self) -> str | None:
        """Why the fault output is on now (station fault, encoder link down, sink faults, latched alarms),
        or None."""
        with self._lock:
            sink_faults = "; ".join(self._sink_faults.values()) or None
            return self._station_fault or self._encoder_fault or sink_faults or self._latched.text()

    def station_fault(self, active: bool, reason: str = "") -> None:
        """The station cannot inspect while ``active`` (``RejectScheduler.fault``)."""
        with self._lock:
            self._station_fault = (reason or "station fault") if active else None
            self._update()

    def encoder_fault(self, reason: str | None) -> None:
        """The encoder's fault reason now (None: its link is up): held on the fault output while it lasts, logged
        once per outage (the output shows the latest reason) and when it clears."""
        if reason == self._encoder_fault:
            return
        with self._lock:
            if reason is None:
                self._log.warning("reject gate: encoder fault cleared (%s)", self._encoder_fault)   # as it was raised
            elif self._encoder_fault is None:
                self._log.warning("reject gate: %s; parts wait at their counts", reason)
            self._encoder_fault = reason
            self._update()

    def to_acknowledge(self, link_up: SinkLinkUp) -> str | None:
        """What an acknowledgement clears now, as the operator is shown it: the latched alarms' text, then the pulse
        faults of each sink whose link is up (``link_up``) and holds no link fault that they do not name, joined by
        "; "; None: nothing."""
        with self._lock:
            return self._acknowledgeable(link_up)[1]

    def acknowledge(self, seen: str | None, link_up: SinkLinkUp) -> str | None:
        """Clear what ``to_acknowledge`` names (the latched alarms, the pulse faults of each sink whose link is up
        and holds no link fault),
        only while it is the text the operator was shown (``seen``; None: whatever it is now); returns that text,
        None when there was nothing (see ``RejectScheduler.acknowledge_alarm``). ConfigError, nothing cleared, when
        it is another (an alarm latched or a pulse missed since)."""
        with self.held(link_up) as now:
            if seen is not None and now.text is not None and now.text != seen:
                raise ConfigError(f"alarm: expected the one shown ({seen or 'none'!r}) to be latched, found a newer "
                                  f"one: {now.text}; read it, then acknowledge again (nothing was cleared)")
            now.clear()
        return now.text

    @contextlib.contextmanager
    def held(self, link_up: SinkLinkUp) -> Iterator[Acknowledgement]:
        """Hold the alarms still while the caller decides (no alarm latches and no sink fault changes until it
        leaves: those wait) and yield what an acknowledgement clears now (``Acknowledgement``: the ``to_acknowledge``
        text, ``clear()`` clears exactly that). For several gates acknowledged all or nothing (the console's
        ``alarm_ack.acknowledge_gates``): each gate held, every text checked, then every one cleared. Keep it short
        (the gate's thread waits to latch an alarm); hold several gates in one order (the console's)."""
        with self._lock:
            pulses, text = self._acknowledgeable(link_up)
            yield Acknowledgement(text, functools.partial(self._clear, pulses))

    def _clear(self, pulses: list[tuple[str, str]]) -> None:
        """(under self._lock) Clear the latched alarms and the pulse faults ``pulses`` (``_acknowledgeable``'s)."""
        self._latched = LatchedAlarms()
        self._pulses_alarmed.clear()
        for key in pulses:
            del self._sink_faults[key]
            self._pulse_faults.pop(key[0], None)
        self._update()

    def _acknowledgeable(self, link_up: SinkLinkUp) -> tuple[list[tuple[str, str]], str | None]:
        """(under self._lock) The pulse faults an acknowledgement clears now (their ``_sink_faults`` keys: each sink
        whose link is up, ``link_up``, and that holds no link fault: a socket connected again is no sink that works
        again until it reports ``reconnected``) and the text it clears (``to_acknowledge``)."""
        pulses = [key for key in self._sink_faults if key[1] == PULSE_FAULT and link_up(key[0])
                  and (key[0], LINK_FAULT) not in self._sink_faults]
        unnamed = [self._sink_faults[key] for key in pulses if key[0] not in self._pulses_alarmed]
        return pulses, "; ".join(t for t in (self._latched.text(), *unnamed) if t) or None

    def sink_report(self, report: SinkReport) -> None:
        """A sink's report, counted and, for a fault or a recovery, set on or cleared from the fault output (see
        the module doc)."""
        if report.kind in ("missed", "unconfirmed"):
            self._counters.add(f"sink_{report.kind}")
            reason = (f"{report.sink} missed reject seq {report.seq}" if report.kind == "missed" else
                      f"{report.sink}: reject seq {report.seq} unconfirmed (written, no reply by its "
                      f"deadline; the PLC may or may not have rejected it)")
            fate = NOT_REJECTED_PULSE if report.kind == "missed" else UNCONFIRMED
            seqs = () if report.seq is None else (report.seq,)
            with self._lock:   # each miss kept (the next one wrote over it: its NG part was never shown)
                pulses = self._pulse_faults.setdefault(report.sink, LatchedAlarms(f"pulse faults of {report.sink}"))
                pulses.add(reason, fate, seqs)
                self._sink_faults[(report.sink, PULSE_FAULT)] = pulses.text() or reason
                if self.fail_safe == "alarm":
                    self.raise_alarm(reason, fate, seqs)
                    self._pulses_alarmed.add(report.sink)
                self._update()
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
        elif report.kind == "late_fall":   # written, the output off again: no fault
            self._counters.add("sink_late_falls")

    # -- alarms and their journal -----------------------------------------------------------------------
    def raise_alarm(self, reason: str, fate: str = "", seqs: tuple[int, ...] = ()) -> None:
        """Log the alarm and latch it (``latch``)."""
        self.log_alarm(reason)
        self.latch(reason, fate, seqs)

    def log_alarm(self, line: str | None) -> None:
        """The journal's line for an alarm (None: nothing to log now, e.g. a gap_missed part gathered)."""
        if line is not None:
            self._log.error("reject alarm: %s", line)

    def latch(self, reason: str, fate: str = "", seqs: tuple[int, ...] = ()) -> None:
        """Count the alarm and latch it on the fault output beside those latched already (until ``acknowledge``),
        without logging it. fate: what became of the parts ``seqs`` it names (a ``line.latched_alarms`` label; "":
        named by ``reason`` alone)."""
        self._counters.add("alarms")
        with self._lock:
            self._latched.add(reason, fate, seqs)
            self._update()

    def gap_missed(self, seq: int) -> None:
        """Part ``seq`` was decided ``gap_missed``: the alarm latches, its journal line is grouped (``GapMissLog``)."""
        self.latch(f"part seq {seq} not rejected: {GAP_MISSED_WHY}", NOT_REJECTED_GAP, (seq,))
        self.log_alarm(self._gap_log.note(seq))

    def uninspected(self, seq: int, why: str) -> None:
        """Part ``seq`` was decided uninspected (rejected or passed by ``fail_safe``) for ``why``: its journal line,
        grouped (``UninspectedLog``)."""
        self._log_uninspected(self._uninspected_log.note((seq, why)))

    def log_due(self) -> None:
        """Log the grouped lines whose window ran out (call it on the gate thread's every turn)."""
        self.log_alarm(self._gap_log.due())
        self._log_uninspected(self._uninspected_log.due())

    def log_close(self) -> None:
        """Log the grouped lines still gathered at the end of the run."""
        self.log_alarm(self._gap_log.close())
        self._log_uninspected(self._uninspected_log.close())

    def _log_uninspected(self, line: str | None) -> None:
        """The journal's line for parts decided uninspected (None: nothing to log now): an alarm with ``fail_safe:
        alarm`` (each part latched it), else a warning (each part was rejected)."""
        if line is None:
            return
        if self.fail_safe == "alarm":
            self.log_alarm(line)
        else:
            self._log.warning("reject gate: %s", line)

    # -- sink faults ------------------------------------------------------------------------------------
    def _set_sink_fault(self, sink: str, cause: str, reason: str) -> None:
        """Hold the fault output for ``sink`` (cause: PULSE_FAULT, STUCK_FAULT or LINK_FAULT) until it clears."""
        with self._lock:
            self._sink_faults[(sink, cause)] = reason
            self._update()

    def _link_fault(self, sink: str) -> None:
        """``sink`` reported its link down: hold the fault output until it reports ``reconnected``. The reason
        names the sink and the UTC time of the first report (``2026-12-06T10:07:22Z``) (kept through repeats, so the
        fault output and MQTT see one change per outage); counted ``sink_link_downs`` once per outage."""
        with self._lock:
            if (sink, LINK_FAULT) not in self._sink_faults:
                self._counters.add("sink_link_downs")
                since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                self._set_sink_fault(sink, LINK_FAULT, f"{sink}: link down since {since}, reconnecting")

    def _clear_sink_fault(self, sink: str, cause: str) -> None:
        """``sink`` recovered from ``cause``: drop its entry (other sinks' entries stay)."""
        with self._lock:
            if cause == PULSE_FAULT:
                self._pulse_faults.pop(sink, None)
            if self._sink_faults.pop((sink, cause), None) is not None:
                self._log.warning("reject sink %s: %s fault cleared", sink, cause)   # at the level it was raised at
                self._update()

    def _update(self) -> None:
        """Hold the fault sinks on with the current reason while a fault holds, write them off once when it clears;
        nothing until they are attached."""
        with self._lock:
            if self._out is None:   # still opening the sinks: attach() shows it once they are
                return
            reason = self.reason
            active = reason is not None
            if active or self._shown:
                self._out.set_fault(active, reason or "cleared")
            self._shown = active


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
