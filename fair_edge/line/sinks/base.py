"""The signal sink protocol, the worker thread that drives one blocking output, and the fan-out
that drives several sinks as one (e.g. PLC reject coil + stack light + log).

A sink turns ``RejectEvent``s into pulses and a fault flag into a held level. ``pulse()`` and
``set_fault()`` never block and never raise: the write happens on the sink's own thread, so a
dead PLC cannot stall the scheduler or the inspection loop. Edges are timed with ``sleep_until``
(precise waits on a loaded machine: block coarsely, then finish with short sleeps), which the
scheduler uses too.

An idle, connected output is probed about every ``PROBE_S`` (``Output.probe``: a read, never a write), so a PLC
that went away is found while no part is on its way, not first when an NG part's pulse fails at the gate. The value
the probe reads back is compared with a fault level the sink holds on: one a PLC or HMI wrote over (an
"acknowledge" on the PLC side that resets the fault coil while the station's alarm stays latched) is written again,
counted ``overwritten`` and reported (``SinkReport`` kind ``overwritten``, a WARNING naming the sink and the level).
``link_down`` (the station's fault output) is reported when the link cannot be re-established: a connect that
fails (the first at start, or the first after the link dropped), or a second link failure (write or probe) in a
row whose reconnect in between succeeded (a PLC whose TCP stack answers and whose application does not). One
failed write or probe that the reconnect and the next write or probe get past (a single Modbus timeout) is an
``io_error`` only: the fault output does not flash. A PLC that went away is reported within about ``PROBE_S`` +
the probe's timeout + one connect timeout; one whose application stopped, about ``PROBE_S`` + the probe's timeout
+ a connect + the resting level's write timeout.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from ...errors import PlcBindingError, PlcDeviceError, PlcError
from ..close_cut import because
from ..events import RejectEvent

log = logging.getLogger(__name__)

RETRY_STEP_S = 0.003      # between write attempts while a pulse is still within its deadline
FALL_RETRY_S = 1.0        # how long a falling edge is retried before the output is reported stuck
IDLE_POLL_S = 0.05        # worker wake-up while idle (reconnect back-off, level changes)
CLOSE_DRAIN_S = 2.0       # close() lets queued and in-flight pulses finish for at most this long
CLOSE_JOIN_S = 2.0        # then waits this long at most for the stopped worker (a write, open or probe blocked), s
COARSE_MARGIN_S = 0.002   # wake this early from the coarse wait (Linux timer slack + GIL hand-off)
FINE_STEP_S = 0.0002      # then sleep in steps this short (yields the GIL; no pure busy loop)
PROBE_S = 1.0             # an idle, connected link is probed (read, never written) this often, seconds


def sleep_until(t_target: float, wake: threading.Event | None = None) -> bool:
    """Sleep until ``time.monotonic() >= t_target`` (seconds).

    Waits on ``wake`` (if given) until ~2 ms before, then sleeps in 0.2 ms steps.
    Returns False as soon as ``wake`` is set (caller re-plans), True when the time was reached.
    Typical overshoot on an idle Linux box: < 0.3 ms.
    """
    while True:
        left = t_target - time.monotonic()
        if left <= 0:
            return True
        if wake is not None and wake.is_set():
            return False
        if left > COARSE_MARGIN_S:
            coarse = left - COARSE_MARGIN_S
            if wake is not None:
                if wake.wait(coarse):
                    return False
            else:
                time.sleep(coarse)
        else:
            time.sleep(min(FINE_STEP_S, left))


@dataclass(frozen=True)
class CloseBy:
    """A close's deadlines, monotonic s: pulses queued or in progress are waited on until ``drain_until``, then the
    workers, told to stop, until ``join_until``. Sinks closed together (a ``FanOut``, a gate's outputs, a cell's lane
    gates) share one, each told to stop before any is waited for, so N outputs whose writes hang cost one
    ``CLOSE_DRAIN_S + CLOSE_JOIN_S`` in all, not N of them."""

    drain_until: float
    join_until: float

    @classmethod
    def from_now(cls, budget_s: float | None = None) -> CloseBy:
        """``CLOSE_DRAIN_S`` from now for the drain, ``CLOSE_JOIN_S`` after that for the workers; both shrunk in
        proportion when ``budget_s`` (seconds, e.g. what a station's stop has left: ``station.stop_deadline``) is
        less than their sum (0: both now). Why they were shrunk, for the log lines of what then does not stop in
        time, is the close's ``line.close_cut`` reason (``station.line_side.close_gates``)."""
        full_s = CLOSE_DRAIN_S + CLOSE_JOIN_S
        scale = 1.0 if budget_s is None else max(0.0, min(1.0, budget_s / full_s))
        now = time.monotonic()
        return cls(now + CLOSE_DRAIN_S * scale, now + full_s * scale)


@dataclass(frozen=True)
class SinkReport:
    """Something a sink wants the station to know. kind: ``missed`` (a pulse not written by its deadline: no write
    went out, or the device refused it), ``unconfirmed`` (a write went out but no reply came by the deadline: the PLC
    may or may not have acted on it; never replayed either), ``io_error`` (link failure), ``device_error`` (device
    refused the write), ``dropped`` (queue full), ``link_down`` (the link cannot be re-established: a connect failed,
    or a write / probe failed twice in a row with a successful reconnect between; once per outage), ``reconnected``
    (the link is up again after a link failure; after a ``link_down``, once a write or probe is answered again),
    ``stuck`` (falling edge not written within ``FALL_RETRY_S``: the output may be left on; said then while it waits on
    a reconnect, else when its write returns), ``released`` (the resting level written again after ``stuck``, by the
    worker or at close), ``late_write`` (a rising edge begun before its pulse's deadline whose write returned after
    it), ``late_fall`` (a falling edge written over ``FALL_RETRY_S`` after it was due, by a write that slow: no fault,
    the output is off again; the detail says how long it was held on; no gate-log row: the pulse's is its rising
    edge's), ``delivered`` (a pulse's rising edge written by its deadline), ``overwritten``
    (an idle probe read a fault output held on back off: something else wrote it; written again, reported when a run
    of them begins)."""

    sink: str
    kind: str
    seq: int | None
    detail: str


Reporter = Callable[[SinkReport], None]


@runtime_checkable
class SignalSink(Protocol):
    """One output the station signals through (PLC coil, OPC UA node, GPIO line, log).

    Optional ``pulse_ms``: the width of the pulses it drives, ms (its URL's ``pulse_ms``, else
    ``reject.pulse_ms``; 0: written on only, the PLC clears it). The reject gate spaces its pulse slots by the
    widest of its sinks' (``gate_sinks.slot_span_s``); a sink without it (a log sink) drives no timed output."""

    name: str

    def pulse(self, event: RejectEvent) -> None:
        """Start one reject pulse now (the scheduler calls this at the due time). Never blocks."""

    def set_fault(self, active: bool, reason: str) -> None:
        """Hold the output on (active) or off; used for fault / alarm outputs. Never blocks."""

    def stats(self) -> dict[str, int]:
        """Counters: pulses, delivered, missed, dropped, io_errors, device_errors, reconnects."""

    def close(self) -> None:
        """Stop and release; safe to call twice."""


class Output(Protocol):
    """A blocking output driver. ``set`` raises ``PlcDeviceError`` for a refusing device reply,
    ``PlcError`` for a link failure (a gateway's reply that the device behind it does not answer, Modbus 0x0A /
    0x0B, is one); ``open`` raises ``PlcError``. Any other exception from ``open``
    or ``set`` (a driver bug, a missing package, GPIO permissions lost) is logged by the worker and
    handled as a link failure: the worker never dies of it.

    Optional ``probe()``: check that the link answers without writing (read the output back); raises
    like ``set``. The worker calls it about every ``PROBE_S`` while idle and connected. Outputs without
    it (GPIO, local lines) are not probed. It must never write: a ``pulse_ms=0`` output stays on until
    the PLC clears it. It returns the value read back, or None where it reads none; with optional
    ``written(on)``, the value ``set(on)`` writes (None where ``set`` holds no level: an OPC UA counter), the worker
    compares the two (``WorkerSink`` puts a fault level held on and written over back)."""

    def open(self) -> None: ...

    def set(self, on: bool) -> None: ...

    def close(self) -> None: ...


def log_reporter(report: SinkReport) -> None:
    """A sink's report as one log line: at WARNING (the station's default level: what the journal keeps) for its
    faults and for their recoveries (``reconnected`` after ``link_down``, ``released`` after ``stuck``), so the journal
    shows each fault cleared as well as raised; ``delivered`` at DEBUG (one per pulse)."""
    level = logging.DEBUG if report.kind == "delivered" else logging.WARNING
    log.log(level, "sink %s: %s (seq %s): %s", report.sink, report.kind, report.seq, report.detail)


class Counters:
    """Thread-safe named counters."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self._lock = threading.Lock()
        self._c = dict.fromkeys(names, 0)

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._c[name] = self._c.get(name, 0) + n

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._c)


# A pulse handed in (``pulses``) is counted once in delivered, missed, unconfirmed or dropped (in none while queued or
# in progress; one still queued when the sink closes is counted ``missed`` then, one whose write still hangs when close
# gives up on the worker only once that write returns). ``delivered``: every rising edge written, in time or not;
# ``late_writes``: those of them whose write returned after the deadline (reported ``late_write``, gate log ``late``),
# a part of ``delivered``, never to be added to it. ``late_falls``: falling edges written over ``FALL_RETRY_S`` after
# they were due (reported ``late_fall``), no pulse outcome.
SINK_COUNTERS = ("pulses", "delivered", "missed", "unconfirmed", "dropped", "io_errors", "device_errors",
                 "link_downs", "reconnects", "late_writes", "late_falls", "overwritten")


class WorkerSink:
    """Drives one ``Output`` from its own thread.

    Queue: ``maxsize=queue_size``; when full, the newest pulse is dropped, counted and reported
    (items in a full queue are already late). Link failures: the output is closed and re-opened
    with exponential back-off (``backoff_s`` -> ``backoff_max_s``) while idle, and retried every
    ~3 ms while a pulse is within its deadline. A pulse past its deadline is never written. A pulse
    not written by its deadline is reported ``missed`` when no write of it went out (link down, device
    refused), ``unconfirmed`` when one went out without a reply (timed out, link dropped mid-write):
    the PLC may have acted on that one, so the station does not claim it missed the part.
    After a reconnect the resting level (off, or the fault level) is written again. A falling edge not written
    within ``FALL_RETRY_S`` is reported ``stuck`` (the output may be left on): then while it waits on a reconnect,
    one still blocking too (the fall watch, ``_connect_for``); a write of it that blocks, when that write returns
    (so up to the output's timeout after ``FALL_RETRY_S``, for any output: a write retried as it runs out):
    ``stuck`` if it failed, ``late_fall`` if it landed (no fault: the output is off again),
    naming how long the output was held on. The next write of the resting level is reported ``released``.
    ``open``/``set`` raising anything but ``PlcError`` is logged and handled as a link failure (pulses reported
    missed), so the worker thread never dies.
    Link watch: while idle and connected the output is probed every ``probe_s`` seconds (default
    ``PROBE_S``; ``Output.probe``, a read, never a write; any successful write counts as one). A probe
    that fails is a link failure like a write's (``io_errors``, ``io_error``, link closed, reconnected at
    once). ``link_down`` is reported once per outage when the link cannot be re-established: a connect
    attempt fails (at start, or after a disconnect), or a write / probe fails for the second time in a row,
    no write or probe answered since the first though the reconnect between them succeeded (TCP up, PLC
    application not answering). A single failure that the reconnect and the next write or probe get past
    reports no ``link_down``. After a ``link_down``, ``reconnected`` is reported when a write or probe is
    answered again (a connect alone does not prove the link), so the fault output is held, not flashed, while
    a mute PLC accepts connects. A device that refuses a write or probe has answered: the link is up.
    A refused write of the resting level is reported once (``device_error``) and not rewritten until the next
    reconnect or the next change of the level (``set_fault`` with the other level): a PLC that refuses it keeps
    refusing, and a rewrite every ``IDLE_POLL_S`` would log a warning each time. An exception reply that is a
    gateway's "the device behind me does not answer" (Modbus 0x0A / 0x0B) is no refusal: the output raises
    ``PlcError`` for it, a link failure like any other; so is an OPC UA node that is gone or changed its data type
    since the connect (``PlcBindingError``, from a write or a probe): the reconnect reads it again, and a node still
    gone fails that connect (``link_down``) at once.
    Read-back: a probe that reads a fault output off while its level is on (``Output.written``; a fault coil a PLC
    or HMI reset while the station's fault holds) has it written again in the same step, counted ``overwritten``
    each time and reported ``overwritten`` (logged at WARNING, naming the sink and the level) when a run of them
    begins: a PLC that writes it over at every scan is logged once, not once a probe, until a probe reads it at its
    level again. Not checked: a level the device refused (above), one not yet written, one set while the probe was
    answered, and any off level: a reject output's rest is off, and an idle sink that finds it on is looking at
    another output's pulse on the same coil or a PLC's manual reject, which a rewrite would cut.
    pulse_ms: width, ms; 0 = write "on" only (the PLC clears it, a handshake): no resting level is written over
    such a pulse, not even the one a reconnect owes when the pulse's own connect brought the link back; read back
    as ``pulse_ms`` (the reject gate plans its pulse slots with it).
    close(by): pulses already queued or in progress are finished first (rising and falling edge, until
    ``by.drain_until``: ``CLOSE_DRAIN_S`` from now by default); then the worker is told to stop (``begin_close``: a
    fan-out tells each of its sinks before waiting for any) and waited for until ``by.join_until``; then, the worker
    stopped, one attempt writes the resting level before the output is
    closed (``_rest_at_close``), so a station that stops never leaves an output on mid-pulse: a pulse still on
    (wider than the drain) is cut short and logged, and a failed last write is logged as an output that may be
    left on. A pulse still queued then (behind a slow or hung write) is never written: counted and reported
    ``missed`` (``_miss_left_queued``), so every pulse handed in ends in one outcome.
    """

    def __init__(self, name: str, output: Output, pulse_ms: float, *, queue_size: int = 16,
                 backoff_s: float = 0.05, backoff_max_s: float = 2.0,
                 reporter: Reporter = log_reporter, probe_s: float | None = None) -> None:
        probe_s = PROBE_S if probe_s is None else probe_s
        if not probe_s > 0:
            raise ValueError(f"sink {name}: probe_s: expected seconds > 0, found {probe_s!r}")
        self.name = name
        self._out = output
        self.pulse_ms = float(pulse_ms)   # the width this output drives, ms (SignalSink's optional pulse_ms)
        self._pulse_s = pulse_ms / 1000.0
        self._q: queue.Queue = queue.Queue(maxsize=queue_size)
        self._report = reporter
        self._counters = Counters(SINK_COUNTERS)
        self._backoff = (backoff_s, backoff_max_s)
        self._delay = backoff_s
        self._next_try = 0.0
        self._connected = False
        self._level = False          # wanted resting level (fault outputs)
        self._level_dirty = True     # resting level not yet confirmed written
        self._level_lock = threading.Lock()   # set_fault's stores vs the read back's check of them (never both half)
        self._level_refused: bool | None = None   # a resting level the device refused: not rewritten until a
                                                  # reconnect or a change of the level clears this
        self._refused = False        # the last _write_until ended in the device's refusal
        self._held_by_link = False   # the last _write_until met the link down (a failed write, a reconnect needed)
        self._stop = threading.Event()
        self._closed = False
        self._on_link = ""           # what the worker is in on the output: '' nothing, else a connect (an open) or an
                                     # idle link probe, in words (not idle: _holds_nothing; named by close's ERROR)
        self._released = False       # close() closed the output: a probe failing after it was cut by it, not the link
        self._inflight = 0           # pulses queued or being written (rising to falling edge)
        self._inflight_lock = threading.Lock()
        self._unanswered = False     # a write of the current pulse went out without a reply
        self._stuck = False          # "stuck" reported; "released" not yet (resting level not rewritten)
        self._stuck_seq: int | None = None   # the pulse whose falling edge was last reported stuck (reported once)
        self._fall_timer: threading.Timer | None = None   # the fall watch: armed by a falling edge's first reconnect
        self._connecting_for: int | None = None   # the pulse whose falling edge waits on the connect now (watched)
        self._stuck_lock = threading.Lock()   # the watch's stuck report vs the worker leaving that connect
        # (seq, monotonic s its falling edge was due, whether its write was held by the link): a pulse whose falling
        # edge the stop kept from being written (cut short in its sleep, or given up for the close after link failures)
        self._fall_owed: tuple[int, float, bool] | None = None
        self._odd_error = ""         # the last non-PlcError failure logged (logged again only when it changes)
        self._probe_s = probe_s
        self._next_probe = 0.0       # monotonic s: probe the idle link from then on (pushed back by each good write)
        self._down_reported = False  # "link_down" reported for the current outage; "reconnected" not yet
        self._failures = 0           # link failures (write / probe) in a row: none answered since the first
        self._overwriting = False    # the last probe read the resting level written over ("overwritten" reported)
        self._thread = threading.Thread(target=self._run, name=f"sink-{name}", daemon=True)
        self._thread.start()

    # -- caller side (never blocks) ---------------------------------------------------------
    def pulse(self, event: RejectEvent) -> None:
        self._counters.add("pulses")
        self._track(+1)
        try:
            self._q.put_nowait(event)
        except queue.Full:
            self._track(-1)
            self._counters.add("dropped")
            self._emit("dropped", event.seq, f"queue full ({self._q.maxsize} waiting)")

    def set_fault(self, active: bool, reason: str) -> None:
        with self._level_lock:
            if bool(active) != self._level:
                self._level_refused = None   # a new level: written even if the device refused the old one
            self._level = bool(active)
            self._level_dirty = True
        try:
            self._q.put_nowait(None)  # wake the worker; if full it sees the flag soon anyway
        except queue.Full:
            pass

    def stats(self) -> dict[str, int]:
        return self._counters.snapshot()

    @property
    def connected(self) -> bool:
        return self._connected

    def wait_connected(self, timeout_s: float) -> bool:
        """Wait until the worker has opened the output, at most ``timeout_s``; True when it has.
        (The worker connects on its own right after start; this only watches.)"""
        deadline = time.monotonic() + timeout_s
        while not self._connected and time.monotonic() < deadline and self._thread.is_alive():
            time.sleep(0.01)
        return self._connected

    def _track(self, n: int) -> None:
        with self._inflight_lock:
            self._inflight += n

    def drain(self, timeout_s: float) -> bool:
        """Wait until no pulse is queued or in progress, at most ``timeout_s``; True when idle."""
        deadline = time.monotonic() + timeout_s
        while self._inflight and time.monotonic() < deadline and self._thread.is_alive():
            time.sleep(0.002)
        return not self._inflight

    def begin_close(self, by: CloseBy) -> None:
        """close()'s first half: pulses queued or in progress are let finish until ``by.drain_until`` (monotonic s),
        then the worker is told to stop; not waited for (``close`` does). Once: later calls return at once."""
        if self._stop.is_set():
            return
        if not self.drain(max(0.0, by.drain_until - time.monotonic())):
            log.warning("sink %s: closing with %d pulse(s) unfinished", self.name, self._inflight)
        self._stop.set()

    def close(self, by: CloseBy | None = None) -> None:
        """Stop and release within ``by`` (``CloseBy.from_now()`` when None): ``begin_close``, the worker waited for
        until ``by.join_until``, the pulses still queued counted missed (``_miss_left_queued``), the resting level
        written (``_rest_at_close``; a link that is down reconnected for it only before ``by.join_until``), the output
        closed. A worker still running then is an error (the resting level not written; its cause, outside a
        ``close_cut.cut_short``, what ``_on_link`` says the worker is in, else a write) unless it holds nothing
        (``_holds_nothing``): idle, woken but not yet ended (a stop whose deadline was spent gives 0 s), it lost
        nothing and ends on its own. Twice: a no-op."""
        if self._closed:
            return
        self._closed = True
        by = by or CloseBy.from_now()
        self.begin_close(by)
        self._thread.join(timeout=max(0.0, by.join_until - time.monotonic()))
        missed = self._miss_left_queued()
        if self._thread.is_alive() and not missed and self._holds_nothing():   # woken, not yet ended: nothing lost
            log.debug("sink %s: worker still running at the close's deadline, holding no pulse and owing no level; "
                      "left to end on its own", self.name)
        elif self._thread.is_alive():   # still in a write, an open or a probe: a second writer would race it
            held_in = f"{self._on_link} still blocked" if self._on_link else "a write still blocked"
            log.error("sink %s: worker did not stop by the close's deadline (%s); the resting level is not written "
                      "at close: the output may be left on", self.name, because(held_in))
        else:
            self._rest_at_close(by.join_until)
        self._released = True
        self._disconnect()

    def _miss_left_queued(self) -> int:
        """close(), the worker stopped (or given up on: told to stop, it takes no more pulses, and one it took anyway
        it counts itself): each pulse still queued is counted and reported ``missed`` (its gate log row: missed).
        Returns how many."""
        missed = 0
        while True:
            try:
                item = self._q.get_nowait()
            except queue.Empty:
                return missed
            if isinstance(item, RejectEvent):
                missed += 1
                self._track(-1)
                self._counters.add("missed")
                self._emit("missed", item.seq, "left queued when the sink closed (the station stopped before its "
                                              "pulse was written); not written")

    def _rest_at_close(self, reconnect_until: float) -> None:
        """close(), the worker stopped: one attempt to write the resting level before the output is closed (a pulse
        wider than the drain, or a falling edge the stop or the link kept from being written, would leave it on).
        Skipped where nothing is owed, no pulse of ours on: a resting level already written (a ``pulse_ms=0``
        output's pulse is the PLC's to clear), a level the device refused, a link that is down. A link that is down
        with a pulse of ours on is reconnected for it only until ``reconnect_until`` (monotonic s, the shared
        ``CloseBy.join_until``): sinks closed together, their PLCs gone, cost at most one connect timeout past it,
        not one each; a connected output is written past it (its write is what the close is for). Logged: a pulse cut
        short, a write that failed or was not tried (the output may be left on). Reported: ``released`` (if stuck),
        ``late_fall`` (an owed edge the link held over ``FALL_RETRY_S`` past its due time, not reported stuck)."""
        owed, self._fall_owed = self._fall_owed, None
        on_now = owed is not None or self._stuck   # a pulse of ours may be on
        if not on_now and not self._level_owed():
            return
        level = "on" if self._level else "off"
        if not self._connected and time.monotonic() >= reconnect_until:
            log.error("sink %s: closing with the resting level (%s) not written: the link is down and the close's "
                      "deadline has passed (no reconnect); the output may be left on", self.name, level)
            return
        try:
            if not self._connected:
                self._out.open()        # one connect: no back-off, no reports, the sink is closing
                self._connected = True  # so _disconnect closes it
            self._out.set(self._level)
        except Exception as exc:  # noqa: BLE001 - any failure: said, and the output closed anyway
            log.error("sink %s: closing with the resting level (%s) not written: %s; the output may be left %s",
                      self.name, level, exc, "on" if on_now else "as it was")
            return
        if owed is not None:
            seq, t_fall, held_by_link = owed
            early_ms = 1000.0 * (t_fall - time.monotonic())
            if held_by_link:   # its own write failed on the link (a reconnect) and was given up for the close
                log.warning("sink %s: the falling edge of seq %d, due %.0f ms before, written at close (its write "
                            "was held by the link until the stop)", self.name, seq, max(0.0, -early_ms))
                self._say_if_late(seq, t_fall)   # counted late_falls as a worker's late edge is, unless stuck
            else:
                log.warning("sink %s: closed mid-pulse (seq %d): its falling edge written at close, %.0f ms early",
                            self.name, seq, max(0.0, early_ms))
        # its fault clears now: a gate closes its fault outputs after its reject outputs. A lane gate's (by: lane) has
        # none: reject.fault_sinks closed with the station's gate before the lanes', so that lamp may stay on naming
        # this; the lane's fault_output entry in the summary shows it cleared
        if self._stuck:
            self._stuck = False
            self._emit("released", self._stuck_seq, f"output back at its resting level ({level}), written at close")

    def _level_owed(self) -> bool:
        """A resting level owed (by the worker's step, or the close with no pulse of ours on): one not yet written
        nor refused, the link up."""
        return self._level_dirty and self._level_refused != self._level and self._connected

    def _holds_nothing(self) -> bool:
        """close(), the worker not stopped: no pulse queued or in progress, no falling edge owed, no output reported
        stuck on, no resting level owed (``_level_owed``), not on the link (``_on_link``: in an open or a probe, which
        the close's release cuts or races): a worker left to end on its own then loses nothing."""
        return (not self._inflight and self._fall_owed is None and not self._stuck and not self._level_owed()
                and not self._on_link)

    def __enter__(self) -> WorkerSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- worker side ------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._step()
            except Exception:  # noqa: BLE001 - a bug here must not end the sink: log, drop the link, go on
                log.exception("sink %s: worker step failed; link reset", self.name)
                self._disconnect()
                self._stop.wait(IDLE_POLL_S)

    def _step(self) -> None:
        """One worker iteration: a queued pulse, or while idle a (re)connect attempt or a due link probe; then the
        resting level. Idle once told to stop: nothing (a worker the close did not wait for must not reopen the
        output it released)."""
        try:
            item = self._q.get(timeout=IDLE_POLL_S)
        except queue.Empty:
            item = None
        if isinstance(item, RejectEvent):
            try:
                self._do_pulse(item)
            finally:
                self._track(-1)
        elif self._stop.is_set():   # closing: close() writes what is owed and releases the output, not this thread
            return
        elif not self._connected and time.monotonic() >= self._next_try:
            self._try_connect()
        elif self._connected and not self._inflight and time.monotonic() >= self._next_probe:
            self._probe()
        if self._level_owed():
            self._write_resting_level()

    def _write_resting_level(self) -> None:
        """Write the resting level (one try and one retry step). Refused by the device: remembered in
        ``_level_refused``, so it is not rewritten (and reported) again until a reconnect or a new level."""
        level = self._level
        if not self._write_until(level, time.monotonic() + RETRY_STEP_S, None) and self._refused:
            self._level_refused = level
            log.warning("sink %s: the device refused the resting level (%s); not rewritten until the link is "
                        "reconnected or the level changes", self.name, "on" if level else "off")

    def _do_pulse(self, ev: RejectEvent) -> None:
        if not self._connected:
            self._try_connect(force=True)   # connect while waiting for the edge
        if not sleep_until(ev.t_edge, self._stop):
            self._counters.add("missed")
            self._emit("missed", ev.seq, "the sink closed before its edge time; not written")
            return
        if time.monotonic() > ev.deadline:
            self._counters.add("missed")
            self._emit("missed", ev.seq, "dequeued after its deadline")
            return
        self._unanswered = False
        if not self._write_until(True, ev.deadline, ev.seq):
            if self._unanswered:   # the request may have reached the PLC: say so, do not claim a miss
                self._counters.add("unconfirmed")
                self._emit("unconfirmed", ev.seq, "written, but no reply by its deadline (the PLC may have "
                                                  "acted on it); not replayed")
                if self._pulse_s == 0:   # the PLC clears it: the level its reconnect owes is not written over it
                    self._level_dirty = False
                self._fall(ev)     # and if it did, the output must not stay on
            else:
                self._counters.add("missed")
                self._emit("missed", ev.seq, "not written by its deadline; not replayed")
            return
        self._counters.add("delivered")
        if self._pulse_s == 0:   # the PLC clears it: no resting level over the pulse (a reconnect's owed one too)
            self._level_dirty = False
        in_time = time.monotonic() <= ev.deadline
        if not in_time:   # the write began in time but finished late: say so
            self._counters.add("late_writes")
            self._emit("late_write", ev.seq, f"write finished {1000 * (time.monotonic() - ev.t_due):.1f} ms "
                                             f"after the due time (loaded machine?)")
        self._fall(ev)
        if in_time:   # reported after the pulse, so the report never stretches it
            self._emit("delivered", ev.seq, "rising edge written by its deadline")

    def _fall(self, ev: RejectEvent) -> None:
        """The falling edge, pulse_ms from now: after the rising edge's write returned or, unconfirmed, was given
        up on (so a write that did land still makes a full pulse); none with pulse_ms 0 (the PLC clears it).
        The sink closing mid-pulse leaves it to ``close()`` (``_fall_owed``), which writes it cut short."""
        if self._pulse_s <= 0:
            return
        t_fall = time.monotonic() + self._pulse_s
        if not sleep_until(t_fall, self._stop):
            self._fall_owed = (ev.seq, t_fall, False)
            return
        try:
            written = self._write_until(False, time.monotonic() + FALL_RETRY_S, ev.seq)
        finally:
            if self._fall_timer is not None:   # armed by a reconnect for this edge (_connect_for)
                self._fall_timer.cancel()
                self._fall_timer = None
        if written:
            self._say_if_late(ev.seq, t_fall)
            return
        if self._stop.is_set():   # given up for the close (the link may have held it): close() writes it
            self._fall_owed = (ev.seq, t_fall, self._held_by_link)
            return
        self._level_dirty = True  # write the resting level again once reconnected
        self._stuck = True        # "released" once it is
        if self._stuck_seq != ev.seq:   # not reported already by the fall watch while a connect blocked
            self._stuck_seq = ev.seq
            self._emit("stuck", ev.seq, "falling edge not written; retried after reconnect")

    def _say_if_late(self, seq: int, t_fall: float) -> None:
        """Pulse ``seq``'s falling edge, due at ``t_fall`` (monotonic s), written over ``FALL_RETRY_S`` after it, not
        reported ``stuck`` while held (a write that slow): ``late_fall`` (no fault: it is off), counted ``late_falls``,
        the detail naming the ms; no pulse outcome (the gate logs no row for it: the pulse's is its rising edge's)."""
        held_ms = 1000.0 * (time.monotonic() - t_fall)
        if held_ms > 1000.0 * FALL_RETRY_S and self._stuck_seq != seq:
            self._counters.add("late_falls")
            self._emit("late_fall", seq, f"the falling edge of seq {seq} written {held_ms:.0f} ms after it was due: "
                                         f"the output was held on that long past its pulse")

    def _write_until(self, on: bool, deadline: float, seq: int | None) -> bool:
        """Write ``on`` (True = active) until it succeeds or ``deadline`` passes. False when it did not; then
        ``_refused`` says whether the device refused it (not retried) rather than the link failing, and
        ``_held_by_link`` whether it met the link down (a write failed on it, or a reconnect was needed). Not tried
        after a reconnect that ended once the sink was closing, nor, for a pulse's rising edge (``seq`` given), past
        its ``deadline``."""
        self._refused = self._held_by_link = False
        while not self._stop.is_set():
            if not self._connected:
                self._held_by_link = True   # the write waits on a reconnect
                self._connect_for(on, deadline, seq)
                # connected once closing (the close writes what is owed), or past a rising edge's deadline (a stale
                # pulse is never written: it would kick another part)
                if self._stop.is_set() or (on and seq is not None and time.monotonic() > deadline):
                    return False
            if self._connected:
                try:
                    self._out.set(on)
                except PlcDeviceError as exc:
                    self._link_answered()   # the device answered: the link is fine
                    self._counters.add("device_errors")
                    self._emit("device_error", seq, str(exc))
                    self._refused = True
                    return False  # repeating a refused write will not help
                except Exception as exc:  # noqa: BLE001 - PlcError, or a driver failure: the link is not usable
                    # a rising edge sent, no reply: it may have landed (a binding error is a reply: it did not)
                    self._unanswered = self._unanswered or (on and not isinstance(exc, PlcBindingError))
                    self._held_by_link = True
                    self._link_failed("write to the output", exc, seq)
                else:
                    self._odd_error = ""   # the output works: a later failure is news again
                    self._link_answered()   # the write proved the link
                    self._wrote(on, seq)
                    return True
            if time.monotonic() + RETRY_STEP_S > deadline:
                return False
            time.sleep(RETRY_STEP_S)
        return False

    def _connect_for(self, on: bool, deadline: float, seq: int | None) -> None:
        """``_write_until``'s reconnect. A pulse's falling edge's (``on`` False, ``seq`` given) first one arms the fall
        watch: a timer that at ``deadline`` (monotonic s) reports it ``stuck`` if a connect for it still blocks then
        (``_stuck_while_connecting``), so an open slower than ``FALL_RETRY_S`` is said while it holds the output on."""
        if on or seq is None:
            self._try_connect(force=True)
            return
        if self._fall_timer is None:
            self._fall_timer = threading.Timer(max(0.0, deadline - time.monotonic()), self._stuck_while_connecting,
                                               (seq,))
            self._fall_timer.daemon = True
            self._fall_timer.start()
        with self._stuck_lock:
            self._connecting_for = seq
        if time.monotonic() >= deadline:   # begun past it (a retry's sleep overran it): the watch fired already
            self._stuck_while_connecting(seq)
        try:
            self._try_connect(force=True)
        finally:
            with self._stuck_lock:   # a watch firing from now on finds no connect: the worker reports what follows
                self._connecting_for = None

    def _stuck_while_connecting(self, seq: int) -> None:
        """The fall watch (its timer's thread, or the worker's): pulse ``seq``'s falling edge is past its retry time, a
        connect for it blocking: ``stuck``, once, under ``_stuck_lock``, which the worker takes as the connect returns
        (its write and ``released`` come after). Not once closing: the close writes the edge (``_fall_owed``)."""
        with self._stuck_lock:
            if self._connecting_for != seq or self._stuck_seq == seq or self._stop.is_set():
                return
            self._stuck, self._stuck_seq = True, seq
            self._emit("stuck", seq, f"falling edge not written {FALL_RETRY_S:g} s after it was due: a reconnect for "
                                     f"it still blocks; the output is held on until it is written (then released)")

    def _probe(self) -> None:
        """Idle and connected: check that the link still answers (``Output.probe``, a read) so a PLC that went
        away is reported now, not when the next pulse fails. A refused read is an answer: the link is up. One that
        fails once the close released the output (``_released``: a close that found the worker here) was cut by the
        close: not counted nor reported."""
        probe = getattr(self._out, "probe", None)
        if probe is None:   # a local output (GPIO): nothing to lose between writes
            self._next_probe = float("inf")
            return
        self._on_link = "a link probe"
        try:
            read_back = probe()
        except PlcDeviceError as exc:
            log.debug("sink %s: probe refused by the device (the link is up): %s", self.name, exc)
            self._link_answered()
        except Exception as exc:  # noqa: BLE001 - PlcError, or a driver failure: handled as a write's would be
            if self._released:
                log.debug("sink %s: probe cut by the close releasing the output: %s", self.name, exc)
                return
            self._link_failed("probe (read back) the output", exc, None)
        else:
            self._odd_error = ""
            self._link_answered()
            self._check_read_back(read_back)
        finally:
            self._on_link = ""
        self._next_probe = time.monotonic() + self._probe_s

    def _check_read_back(self, read_back: object) -> None:
        """A probe read ``read_back`` (None: the output reads no value) of a held fault level (on): when that level
        is written (not pending, not refused) and the output is not at it (``Output.written``), something else wrote
        it over: the level is marked to be written again (``_step`` does, next), counted ``overwritten``, and
        reported when a run of such probes begins. The level and its flags are read under ``_level_lock``, as
        ``set_fault`` stores them: a level set while the probe was answered is pending (not compared), never new
        and already written.
        An off level is never checked: a reject output's rest is off, and finding it on while this sink is idle is
        another output's pulse on the same coil (two lanes on one ejector), or a PLC's own manual reject: writing
        it off would cut that pulse."""
        written = getattr(self._out, "written", None)
        with self._level_lock:
            level, pending, refused = self._level, self._level_dirty, self._level_refused
        if read_back is None or written is None or not level or pending or refused == level:
            return
        held = written(level)
        if held is None or read_back == held:
            self._overwriting = False
            return
        self._counters.add("overwritten")
        self._level_dirty = True
        if not self._overwriting:
            self._overwriting = True
            self._emit("overwritten", None, f"read back {read_back!r} while its level is on ({held!r}): written "
                                            f"over by another writer (the PLC or an HMI?); writing on again "
                                            f"(reported again once a read back shows it at its level)")

    def _link_failed(self, what: str, exc: Exception, seq: int | None) -> None:
        """A write or probe failed on the link (``what``: which): counted ``io_errors``, reported ``io_error``, the
        link closed; the worker reconnects at once. The first failure in a row is no ``link_down`` (one timeout
        that the reconnect gets past must not flash the fault output; a reconnect that fails reports it); the
        second in a row, no write or probe answered since the first although the reconnect succeeded, is, and the
        next reconnect waits the back-off (a PLC or gateway that accepts connections and never answers was
        reconnected 60 times a second, one warning each)."""
        if not isinstance(exc, PlcError):
            self._log_odd_failure(what, exc)
        self._counters.add("io_errors")
        self._emit("io_error", seq, str(exc))
        self._failures += 1
        self._disconnect()   # before link_down: a listener that asks sees the link down
        if self._failures >= 2:   # the reconnect got no answer either: the next waits the back-off
            self._next_try = time.monotonic() + self._delay
            self._delay = min(self._delay * 2.0, self._backoff[1])
            self._link_down(f"{what} failed again after a reconnect ({self._failures} link failures in a row, "
                            f"none answered between them): {exc}")

    def _link_answered(self) -> None:
        """A write or probe was answered (done, or refused by the device): the link works. Ends a run of link
        failures and, after a ``link_down``, reports ``reconnected`` (a connect alone is not enough: a PLC whose
        TCP stack accepts while its application does not answer is still down)."""
        self._failures = 0
        self._delay = self._backoff[0]
        self._next_probe = time.monotonic() + self._probe_s
        if self._down_reported:
            self._down_reported = False
            self._counters.add("reconnects")
            self._emit("reconnected", None, "link is up again (connected, the output answers)")

    def _link_down(self, detail: str) -> None:
        """Report ``link_down`` once per outage (a failed connect, or the second link failure in a row; later
        failures say nothing until ``reconnected``)."""
        if self._down_reported:
            return
        self._down_reported = True
        self._counters.add("link_downs")
        self._emit("link_down", None, f"{detail}; reconnecting with back-off "
                                      f"({self._backoff[0]:g} s -> {self._backoff[1]:g} s)")

    def _wrote(self, on: bool, seq: int | None) -> None:
        """A write of ``on`` succeeded: the resting level is confirmed when ``on`` is it, and a
        ``stuck`` output is ``released``. The check and the flag are one step under ``_level_lock``: a
        ``set_fault`` of another level between them (a fault cleared while its "on" was written) stays pending."""
        with self._level_lock:
            if on != self._level:
                return
            self._level_dirty = False
        if self._stuck:
            self._stuck = False
            self._emit("released", seq, f"output back at its resting level ({'on' if on else 'off'})")

    def _try_connect(self, force: bool = False) -> None:
        """Open the output (not before ``_next_try`` unless ``force``), on the link meanwhile (``_on_link``). An open
        that returns after the close released the output (``_released``: the close gave up waiting for this worker)
        is closed again, and one it cut is no link failure: neither is counted or reported. One that returns while a
        close still waits is a connect as any other: the close then writes the level owed (``_rest_at_close``)."""
        if not force and time.monotonic() < self._next_try:
            return
        self._on_link = "a connect to the output"
        try:
            self._open_output()
        finally:
            self._on_link = ""

    def _open_output(self) -> None:
        """``_try_connect``'s open and its outcome: connected (a reconnect counted and reported), or the back-off."""
        try:
            self._out.open()
        except Exception as exc:  # noqa: BLE001 - PlcError, or anything else: a failed connect, never a dead worker
            self._next_try = time.monotonic() + self._delay
            self._delay = min(self._delay * 2.0, self._backoff[1])
            if isinstance(exc, PlcError):
                log.debug("sink %s: connect failed: %s", self.name, exc)
            else:
                self._log_odd_failure("open the output", exc)
            if self._released:   # the close released the output under this open: cut by it, not the link
                log.debug("sink %s: connect cut by the close: %s", self.name, exc)
                return
            self._link_down(f"connect failed: {exc}")   # the first failed connect: at start, or after a disconnect
            return
        if self._released:   # the close has released the output already (it gave up on this worker)
            log.debug("sink %s: connected after the close released the output; closed again", self.name)
            self._disconnect()
            return
        was_down = self._next_try > 0.0
        self._connected = True   # the back-off is reset once the link answers (_link_answered), not here: a PLC
        self._next_try = 0.0     # or gateway that accepts and never answers is reconnected with back-off
        self._level_dirty = True   # written next (or by a close waiting for this worker: _rest_at_close): that
        self._level_refused = None  # write tells whether the PLC answers, even if it refused the level before
        self._next_probe = time.monotonic() + self._probe_s
        if was_down and not self._down_reported:   # after a link_down, reconnected waits for an answer
            self._counters.add("reconnects")
            self._emit("reconnected", None, "link is up again")
        if self._released:   # released while this connect was recorded (close sets it before it closes)
            self._disconnect()

    def _log_odd_failure(self, what: str, exc: Exception) -> None:
        """An output failure that is not a ``PlcError`` (missing driver package, lost permissions, a
        driver bug): logged as an error with its traceback once per distinct message (it repeats on
        every retry), then handled as a link failure by the caller."""
        text = f"{type(exc).__name__}: {exc}"
        if text != self._odd_error:
            self._odd_error = text
            log.error("sink %s: cannot %s (%s); handled as a link failure: retried, pulses meanwhile "
                      "reported missed or unconfirmed", self.name, what, text, exc_info=exc)

    def _disconnect(self) -> None:
        self._connected = False
        if self._next_try == 0.0:
            self._next_try = time.monotonic()  # marks "was down" for the reconnect report
        try:
            self._out.close()
        except Exception:  # noqa: BLE001 - clean-up must not mask the original failure
            log.exception("sink %s: closing the output failed", self.name)

    def _emit(self, kind: str, seq: int | None, detail: str) -> None:
        try:
            self._report(SinkReport(self.name, kind, seq, detail))
        except Exception:  # noqa: BLE001 - a broken listener must not kill the worker
            log.exception("sink %s: report listener failed", self.name)


def begin_close(sink: SignalSink, by: CloseBy) -> None:
    """Tell ``sink`` to stop once its pulses are written (by ``by.drain_until``), without waiting for it to stop,
    where it can (it has ``begin_close``: a ``WorkerSink``, a ``FanOut``); nothing for any other sink."""
    start = getattr(sink, "begin_close", None)
    if start is not None:
        start(by)


def close_by(sink: SignalSink, by: CloseBy) -> None:
    """Close ``sink`` within ``by`` where it takes a deadline (it has ``begin_close``), else its plain ``close()``."""
    if getattr(sink, "begin_close", None) is not None:
        sink.close(by)
    else:
        sink.close()


class FanOut:
    """Calls every sink in turn; a sink that raises is logged and counted in ``errors`` and the
    others still get the call. ``close()`` closes each sink once, all within one ``CloseBy`` (failures logged)."""

    def __init__(self, sinks: Iterable[SignalSink], name: str = "fan-out") -> None:
        self.sinks = list(sinks)
        self.name = name
        self.errors = 0
        self._closed = False

    def pulse(self, event: RejectEvent) -> None:
        for sink in self.sinks:
            try:
                sink.pulse(event)
            except Exception:  # noqa: BLE001 - one broken sink must not stop the others
                self.errors += 1
                log.exception("sink %s failed on reject seq %d", sink.name, event.seq)

    def set_fault(self, active: bool, reason: str) -> None:
        for sink in self.sinks:
            try:
                sink.set_fault(active, reason)
            except Exception:  # noqa: BLE001
                self.errors += 1
                log.exception("sink %s failed on fault=%s", sink.name, active)

    def stats(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for sink in self.sinks:
            for key, value in sink.stats().items():
                total[key] = total.get(key, 0) + value
        return total

    def per_sink_stats(self) -> dict[str, dict[str, int]]:
        return {sink.name: sink.stats() for sink in self.sinks}

    def begin_close(self, by: CloseBy) -> None:
        """Tell each sink to stop once its pulses are written (``begin_close``), one ``by`` for all, waiting for
        none."""
        for sink in self.sinks:
            try:
                begin_close(sink, by)
            except Exception:  # noqa: BLE001 - stop the rest anyway
                log.exception("stopping sink %s failed", sink.name)

    def close(self, by: CloseBy | None = None) -> None:
        """Close every sink within one ``by`` (``CloseBy.from_now()`` when None): each told to stop first
        (``begin_close``), then each waited for and closed with what is left of it (``close_by``), so outputs
        whose writes hang cost one close's time in all. Failures logged; twice: a no-op."""
        if self._closed:
            return
        self._closed = True
        by = by or CloseBy.from_now()
        self.begin_close(by)
        for sink in self.sinks:
            try:
                close_by(sink, by)
            except Exception:  # noqa: BLE001 - close the rest anyway
                log.exception("closing sink %s failed", sink.name)

    def __enter__(self) -> FanOut:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
