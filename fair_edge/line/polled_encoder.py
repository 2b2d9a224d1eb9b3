"""A PLC's belt counter, polled and unwrapped into where the conveyor is: ``PolledEncoder`` (an
``encoder_source.EncoderSource``) over a ``CounterReader``, the raw register a link reads (the links and
their URLs are in ``encoder_links``).

A PLC's counter is a 16- or 32-bit register that wraps (``bits``). ``PolledEncoder`` reads it on its own thread
every ``poll_ms`` and unwraps it into a non-decreasing count, so ``count()`` is cheap and never does I/O (the reject
scheduler calls it every ``reject.encoder_poll_ms``). A read that fails keeps the last count
(the gate waits: no part is decided on a guessed position; ``fault_reason`` says so while the
link is down), is counted and logged, and the link is reopened with back-off; a part captured meanwhile has no
position (``mark()`` says ``None``: the held count is where the belt was when the link dropped, not
where it is; the gate decides such a part ``position_lost``). A read that hangs (a dropped TCP link: the read
in flight waits for its timeout) is noticed before it fails: ``mark()`` says ``None`` once the last good
reading is older than ``PolledEncoder.stale_s``; until then it extrapolates the count by the measured belt speed
(see ``PolledEncoder.mark``). After a reconnect
the count is unwrapped from the last reading before the outage, so the belt travel during the
outage is counted; the span of counts the belt covered unseen is remembered (``went_unseen``:
a part whose gate lay in it went by while nobody watched). A step the unwrapping cannot explain
(the counter went back by more than ``jitter`` counts: a PLC that restarted or re-initialised
its counter, with or without an outage, or an outage longer than half the counter range of
travel), or with the link up a step forward longer than the belt can have travelled since the last
reading, once the belt's speed is measured (a counter reset from the upper half of its range looks like a
step forward over a wrap: see ``PolledEncoder.plausible_step``; before a speed is measured any step forward under
half the range is travel, so a belt read seldom or a register the PLC refreshes in bursts counts from the start)
loses the belt position: ``position_epoch`` goes up, counted
``position_lost``, logged as an error, and the count goes on from the new reading; the positions of the
parts noted before it are unknown (``went_unseen`` names the loss for them), and the measured speed is
forgotten: the belt is measured afresh from the new reading (a step refused wrongly stops no count).

Where the belt was when a frame was exposed, not when it was handed over (a camera that held a frame, a GigE resend):
``PolledEncoder`` keeps its readings of the last ``HISTORY_S`` (``encoder_history``), and ``mark_at(t)`` answers the
count at ``t`` by interpolating between the two readings around it, after the newest by extrapolating at the belt
speed (see ``PolledEncoder.mark_at``).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

from ..errors import PlcError, SinkError
from .close_cut import because
from .encoder_history import HISTORY_S, SPEED_SPAN_S, ReadingHistory

log = logging.getLogger("fair_edge.line.encoder_links")   # one logger for every encoder line (operators filter by it)

CLOSE_JOIN_S = 2.0        # close() waits this long at most for the polling thread (a read held), seconds
BACKOFF_S = (0.05, 2.0)   # reconnect back-off after a failed read: first, most
JITTER_COUNTS = 16        # default ``jitter``: a step back of at most this many counts is dither, held
BLIND_SPANS = 64          # link outages remembered for ``went_unseen`` (the latest)
# plausible travel between two readings with the link up (PolledEncoder.plausible_step): counts <
# RANGE_FLOOR of the counter range + SPEED_MARGIN x the fastest speed measured x the time between the readings
SPEED_MARGIN = 4.0
STEP_SPAN_MAX_S = 2.0   # s: the longest time a step's plausible travel is reckoned over (a burst register's interval)
RANGE_FLOOR = 1 / 16      # 16 bit: 4096 counts, 32 bit: 268435456 counts
# mark(): a reading older than max(STALE_POLLS x poll_s, STALE_FLOOR_S) gives no position (a read hangs: the link
# dropped); a younger one is extrapolated by the measured speed. mark_at(): a time before the oldest reading kept by
# at most max(FRESH_POLLS x poll_s, FRESH_FLOOR_S) (a poll's lag) takes that reading's count
STALE_POLLS, STALE_FLOOR_S = 10, 0.25
FRESH_POLLS, FRESH_FLOOR_S = 2, 0.05


class CounterReader(Protocol):
    """A raw hardware counter: ``read()`` returns the register value, 0 .. 2**bits - 1;
    ``open``/``read`` raise ``PlcError`` on a link failure."""

    name: str

    def open(self) -> None: ...

    def read(self) -> int: ...

    def close(self) -> None: ...


class PolledEncoder:
    """``EncoderSource`` over a ``CounterReader``: polls it every ``poll_s`` on a daemon thread.

    bits: counter width (16 or 32). Each reading is unwrapped from the last one taken (also across a link outage): a
    step forward of less than half the range is belt travel (over a wrap when the raw value went down), unless the
    link was up, the belt speed is known (``peak_speed`` > 0: measured over steps taken as travel, or stated) and
    the step is longer than ``plausible_step`` allows; a step back of at most ``jitter`` counts is dither and held
    (the count never decreases: it goes on once the raw counter passes its old value); any other step loses the belt
    position (``position_epoch`` + 1, see the module doc) and forgets the measured speed. max_counts_per_s: the
    belt's top speed, counts/s, if known (URL option; ``peak_speed`` starts there instead of at 0: a belt read
    seldom, ``poll_ms`` of hundreds, that runs fast from the start). clock: monotonic seconds, the time of each
    reading (a test's fake clock; the cameras' ``Frame.t_capture`` is on ``time.monotonic()``, the default), called
    before each read and after it; the readings of the last ``HISTORY_S`` are kept for ``mark_at`` (the count at a
    frame's capture time). ``start()`` opens the reader and reads once (fail fast: ``PlcError`` names the device).
    """

    def __init__(self, reader: CounterReader, bits: int, poll_s: float, jitter: int = JITTER_COUNTS,
                 max_counts_per_s: float = 0.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.reader, self.bits, self.poll_s, self.clock = reader, bits, poll_s, clock
        self.name = reader.name
        self._modulus = 1 << bits
        if not 0 <= jitter < self._modulus // 4:
            raise SinkError(f"encoder {self.name}: jitter: expected 0 .. {self._modulus // 4 - 1} counts "
                            f"(under a quarter of the {bits}-bit range), found {jitter}; lower it")
        self.jitter = jitter
        self._lock = threading.Lock()
        self._last_raw: int | None = None
        self._count = 0
        self.origin_raw: int | None = None   # the raw counter value that count() == 0 stands for
        self._counters = {"reads": 0, "read_errors": 0, "reconnects": 0, "wraps": 0, "position_lost": 0,
                          "before_history": 0}
        self._epoch = 0
        self._lost: str | None = None        # why the position was last lost
        self._held: int | None = None        # the count held since reads began to fail (None: link up)
        self._down: str | None = None        # the read failure while held
        self._spans: collections.deque[tuple[int, int]] = collections.deque(maxlen=BLIND_SPANS)
        self._history = ReadingHistory()     # the good readings of the last HISTORY_S, for mark_at
        self._last_t = 0.0                   # clock() at the last good reading
        self._moved_t = 0.0                  # clock() at the last good reading that moved the raw counter
        self._speed_from: tuple[float, int] | None = None   # (clock(), count) where the speed span began
        self.stated_speed = float(max_counts_per_s)   # the belt's top speed as stated (URL), counts/s; 0: not stated
        self.peak_speed = self.stated_speed  # the fastest belt speed measured (or stated) since the position was found
        self.speed: float | None = None      # the belt speed over the latest span, counts/s (None: not measured)
        self.stale_s = max(STALE_POLLS * poll_s, STALE_FLOOR_S)   # mark(): an older reading gives no position
        self.fresh_s = max(FRESH_POLLS * poll_s, FRESH_FLOOR_S)   # mark_at(): a poll's lag before the oldest reading
        self._stop = threading.Event()
        self._on_link = ""   # what the polling thread does on the link: a read or a reopen ('' between polls)
        self._thread = threading.Thread(target=self._run, name=f"encoder-{self.name}", daemon=True)

    def start(self) -> PolledEncoder:
        self.reader.open()
        self._read_once()
        self._thread.start()
        return self

    def count(self) -> int:
        """Unwrapped counts since start (non-decreasing)."""
        with self._lock:
            return self._count

    def mark(self) -> tuple[int | None, int]:
        """``(count, position_epoch)`` read together: what to note for a part captured now (``mark_at(clock())``):
        count: ``count()`` + the belt speed measured over the latest ``SPEED_SPAN_S`` x the time since the counter
        was last read (the lag of a poll, or of a read in flight longer than a poll takes; ``count()`` when no speed
        is measured); None while the link is down (the count is held where the belt was when it dropped) or the
        last good reading is older than ``stale_s`` (a read hangs: the link dropped, its timeout has not yet told):
        where a part captured now is on the belt is unknown."""
        return self.mark_at(self.clock())

    def mark_at(self, t: float) -> tuple[int | None, int]:
        """``(count, position_epoch)`` of the belt at ``t`` (clock() seconds: a frame's ``t_capture``), what to
        note for a part exposed then, however late its frame was handed over:

        - at or after the newest reading: as ``mark`` says for a reading that old (``t`` - its time): extrapolated
          by the belt speed;
        - between two kept readings: the count interpolated linearly between them (counts are unwrapped: a wrap in
          between is travel), in the epoch they count in; None when the belt went unseen between them (the later one
          is the first after a link outage, or they are more than ``stale_s`` apart: a read hung); the epoch of the
          earlier one when the position was lost at the later one (the gate finds the part's position lost);
        - before the oldest reading kept (``HISTORY_S``; or before ``start``): that reading's count when it is at
          most ``fresh_s`` later (a poll's lag), else None: a frame held longer than the readings kept has no
          position (counted ``before_history``, logged): a count guessed from the oldest reading would place it
          further on than it is, on another part.
        """
        with self._lock:
            newest = self._history.newest()
            if newest is None or t >= newest.t:
                return self._mark_after(t), self._epoch
            mark, older = self._history.mark_within(t, self.fresh_s, self.stale_s)
            if older:
                self._counters["before_history"] += 1
                times = self._counters["before_history"]
        if older and mark[0] is None and _power_of_ten(times):
            log.warning("encoder %s: a frame captured %.3f s before the oldest reading kept (%.1f s of readings) has "
                        "no belt position (%d such frames so far): a camera that held a frame that long, or a "
                        "camera whose t_capture is not on time.monotonic()", self.name, older, HISTORY_S, times)
        return mark

    def _mark_after(self, t: float) -> int | None:
        """(under the lock) The count at ``t``, at or after the newest reading kept (``mark``'s rules): None while
        the link is down or the last good reading was taken up more than ``stale_s`` before ``t``; else the newest
        reading's count + the belt speed (``ReadingHistory.speed``) x the time from when it was read to ``t`` (as
        read while no speed is measured)."""
        newest = self._history.newest()
        if self._held is not None or t - self._last_t > self.stale_s or newest is None:
            return None
        speed = self._history.speed(self.speed)
        return newest.count if not speed else newest.count + round(speed * max(0.0, t - newest.t))

    def plausible_step(self, elapsed_s: float) -> int:
        """The longest step forward, in counts, that is belt travel in ``elapsed_s`` seconds between two
        readings with the link up, once ``peak_speed`` is known (before, any step under half the range is
        travel): ``RANGE_FLOOR`` of the counter range (16 bit: 4096) + ``SPEED_MARGIN`` x ``peak_speed`` (the
        fastest the belt was measured to go, over readings ``SPEED_SPAN_S`` apart, or ``max_counts_per_s`` when
        faster) x ``elapsed_s`` (since the raw counter last moved: a register the PLC refreshes in bursts steps
        the travel of the whole burst interval), at most ``STEP_SPAN_MAX_S``: a belt that stood still, then jumps (a
        PLC restarted while the belt stopped) is held to that much travel. A longer one is a counter reset, not
        travel."""
        span_s = min(max(0.0, elapsed_s), STEP_SPAN_MAX_S)
        return int(self._modulus * RANGE_FLOOR + SPEED_MARGIN * self.peak_speed * span_s)

    @property
    def position_epoch(self) -> int:
        """How many times the belt position was lost since start: a count noted under an older
        epoch says nothing about where that part is now."""
        with self._lock:
            return self._epoch

    @property
    def fault_reason(self) -> str | None:
        """Why the count cannot be trusted to move now (the link is down: the count is held), or None."""
        with self._lock:
            return None if self._held is None else self._down

    def went_unseen(self, target: int, epoch: int) -> str | None:
        """Why a part noted under ``epoch`` (``mark()``) whose gate is at count ``target`` cannot be
        decided at the gate, or None when it can: its position was lost since it was noted, or the
        belt carried it past ``target`` during a link outage (the count jumped over it)."""
        with self._lock:
            if epoch != self._epoch:
                return (f"encoder {self.name}: belt position lost after the part was noted "
                        f"({self._lost}); where it is now is unknown")
            for held, resumed in self._spans:
                if held < target < resumed:
                    return (f"encoder {self.name}: the belt passed count {target} during a link outage "
                            f"(count {held} -> {resumed}): the part went by the gate unseen")
        return None

    def stats(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counters, count=self._count, position_epoch=self._epoch)

    def close(self, timeout_s: float = CLOSE_JOIN_S) -> None:
        """Stop the polling thread, waiting for it at most ``timeout_s`` seconds (a read held by a PLC that stopped
        answering; a station's stop gives what its deadline has left: ``station.stop_deadline``), then close the
        link, the thread's read cut off with it (warned). A thread neither reading nor reconnecting, woken but not
        yet ended (a stop whose deadline was spent gives 0 s), holds nothing: left to end on its own, at DEBUG."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=max(0.0, timeout_s))
            if self._thread.is_alive() and not self._on_link:   # woken between polls, not yet ended: nothing held
                log.debug("encoder %s: its polling thread, between reads, had not ended within %g s; left to end on "
                          "its own", self.name, timeout_s)
            elif self._thread.is_alive():
                log.warning("encoder %s: its polling thread did not stop within %g s (%s); closing the link under "
                            "it", self.name, timeout_s, because(f"{self._on_link or 'a read'} still held"))
        try:
            self.reader.close()
        except Exception:  # noqa: BLE001 - clean-up failure is logged, the link may be gone
            log.exception("encoder %s: close failed", self.name)

    def __enter__(self) -> PolledEncoder:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _read_once(self) -> None:
        """Read the counter (``PlcError`` when the link fails) and take the reading, with the times its request went
        out and its reply was taken up. Told to stop by then: nothing read (a close that found the thread not yet
        on the link, ``_on_link``, closes it)."""
        t_asked = self.clock()
        self._on_link = "a read"   # then the stop checked: a close either sees the thread on the link or the stop
        try:
            if self._stop.is_set():
                return
            raw = self.reader.read()
        finally:
            self._on_link = ""
        self._take(raw, self.clock(), t_asked)

    def _take(self, raw: int, t: float, t_asked: float | None = None) -> None:
        """One good reading, its reply taken up at clock() ``t``, its request sent at ``t_asked`` (None: ``t``):
        unwrap it, close an outage's blind span, or lose the position; keep it for ``mark_at``, stamped when the
        counter was most likely read (``ReadingHistory.sampled_at``)."""
        with self._lock:
            self._counters["reads"] += 1
            lost = self._unwrap(raw, t)
            self._last_t = t
            if lost is not None:
                self._forget_speed(t)
                self._epoch += 1
                self._counters["position_lost"] += 1
                self._lost = lost
                self._spans.clear()     # the parts they concern are in the old epoch
            else:
                self._measure_speed(t)
                if self._held is not None and self._count > self._held:
                    self._spans.append((self._held, self._count))
            self._history.keep(t, t_asked, self._count, self._epoch, self._held is not None)
            self._held = self._down = None
        if lost is not None:
            log.error("encoder %s: belt position lost: %s; the parts on the belt are at unknown positions",
                      self.name, lost)

    def _unwrap(self, raw: int, t: float) -> str | None:
        """(under the lock) Count ``raw`` in, read at clock() ``t``; returns why the position is lost, or None."""
        if self._last_raw is None:
            self._last_raw, self._moved_t = raw, t
            if self.origin_raw is None:
                self.origin_raw = (raw - self._count) % self._modulus
            return None
        last, step = self._last_raw, (raw - self._last_raw) % self._modulus
        if step == 0:
            return None
        if step < self._modulus // 2:
            implausible = self._implausible(last, raw, step, t - self._moved_t)
            self._last_raw, self._moved_t = raw, t   # refused: count on from here
            if implausible is not None:
                return implausible
            if raw < last:
                self._counters["wraps"] += 1
            self._count += step
            return None
        if self._modulus - step <= self.jitter:
            return None                 # dither: held until the raw counter passes ``last`` again
        self._last_raw, self._moved_t = raw, t   # count on from here
        outage = "after a link outage" if self._held is not None else "with the link up"
        return (f"raw counter went from {last} to {raw} {outage} at count {self._count}: expected a step "
                f"forward under {self._modulus // 2} or back at most jitter={self.jitter} (a counter "
                f"reset or restart, or too long an outage)")

    def _implausible(self, last: int, raw: int, step: int, elapsed_s: float) -> str | None:
        """(under the lock) Why a step forward of ``step`` counts (raw ``last`` -> ``raw``) in ``elapsed_s`` is no
        belt travel, or None when it may be: with the link up and the belt speed known, one longer than
        ``plausible_step`` (``elapsed_s``: since the raw counter last moved). After an outage, or before a speed is
        measured, the travel is unknown: any step forward under half the range is taken (see the module doc)."""
        most = self.plausible_step(elapsed_s)
        if self._held is not None or self.peak_speed <= 0 or step <= most:
            return None
        return (f"raw counter went from {last} to {raw} with the link up at count {self._count}: a step forward "
                f"of {step} counts in {elapsed_s:.3f} s since it last moved, expected at most {most} (belt speed "
                f"measured up to "
                f"{self.peak_speed:.0f} counts/s; a counter reset or restart; a belt that can go faster from "
                f"the start: give its top speed as max_counts_per_s= on the encoder URL)")

    def _measure_speed(self, t: float) -> None:
        """(under the lock) Set ``speed`` to the speed over the readings since the span began, once the span is
        ``SPEED_SPAN_S`` long, and raise ``peak_speed`` to it (the count is unwrapped travel the bound allowed)."""
        if self._speed_from is None:
            self._speed_from = (t, self._count)
            return
        t0, count0 = self._speed_from
        if t - t0 >= SPEED_SPAN_S:
            self.speed = (self._count - count0) / (t - t0)
            self.peak_speed = max(self.peak_speed, self.speed)
            self._speed_from = (t, self._count)

    def _forget_speed(self, t: float) -> None:
        """(under the lock) The position was lost: the speed measured so far says nothing of the steps ahead (a
        refused step may have been travel); measure it afresh from the reading at clock() ``t``."""
        self.speed, self.peak_speed = None, self.stated_speed
        self._speed_from = (t, self._count)

    def _run(self) -> None:
        delay = BACKOFF_S[0]
        next_t = time.monotonic()
        while not self._stop.is_set():
            next_t += self.poll_s
            try:
                self._read_once()
                delay = BACKOFF_S[0]
            except PlcError as exc:
                self._read_failed(exc, delay)
                if self._stop.wait(delay):
                    return
                delay = min(2 * delay, BACKOFF_S[1])
                self._reopen()
                next_t = time.monotonic()
                continue
            self._stop.wait(max(0.0, next_t - time.monotonic()))

    def _read_failed(self, exc: PlcError, delay: float) -> None:
        """The count is held from the first failed read until the next good one."""
        with self._lock:
            self._counters["read_errors"] += 1
            if self._held is None:
                self._held = self._count
            self._down = f"encoder {self.name}: link down ({exc}); count held at {self._held}"
            count = self._count
        log.warning("encoder %s: read failed (%s); count held at %d, reconnecting in %.2f s",
                    self.name, exc, count, delay)

    def _reopen(self) -> None:
        """Close and open the link again (a reconnect counted); told to stop by then, nothing (as ``_read_once``);
        told to stop during the open, the link is closed again and no reconnect counted."""
        self._on_link = "a reconnect to the counter"
        try:
            if self._stop.is_set():
                return
            self.reader.close()
            self.reader.open()
            if self._stop.is_set():   # the close came during the open (it may have closed the link already)
                log.debug("encoder %s: reopened while closing; the link closed again", self.name)
                self.reader.close()
                return
            with self._lock:
                self._counters["reconnects"] += 1   # the next reading is unwrapped from the last one
            log.warning("encoder %s: reconnected", self.name)
        except PlcError as exc:
            log.debug("encoder %s: reopen failed: %s", self.name, exc)
        finally:
            self._on_link = ""


def _power_of_ten(n: int) -> bool:
    """Whether ``n`` is 1, 10, 100, ...: a flood of like events is logged at these counts."""
    while n % 10 == 0:
        n //= 10
    return n == 1
