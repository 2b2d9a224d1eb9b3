"""The frame-source protocol every camera adapter implements, the helpers they share, and the capture
thread's settings and counters (``CaptureSettings``, ``CaptureState``, ``CaptureStats``). The base class
the sources build on (``SourceBase``: numbering, stamping, freezing) lives with the capture thread in
``capture.py``, so a frame's whole capture happens in its source's file and that one.

A source is a resource owner: ``open()`` connects and proves it works by reading a first
frame (fail fast; reads that miss are retried a few times, ``capture.FIRST_FRAME_READS``), ``read()``
returns the next :class:`~fair_edge.records.Frame` or raises, ``close()`` releases and is safe to call
twice. A camera that takes a frame only when the line triggers it (GenICam ``TriggerMode=On``) has no
first frame to read before a part comes: it proves itself by connecting. ``open()`` on an open source is
a no-op and ``open()`` after ``close()`` reconnects, which is what :class:`CaptureThread` relies on.

What ``read()`` raises tells the capture loop what to do:
  :class:`EndOfStream`  no frame will ever come (replay finished): end the stream.
  :class:`AwaitingTrigger`  a triggered camera had no part to take, its link answered: read again (not counted).
  :class:`FrameIncomplete`  a frame arrived damaged (packets lost), so the link is up: count it, read again.
  :class:`FrameMissed` (any other)  this read gave no frame but the link may be fine: count it, retry;
      ``CaptureSettings.misses_before_reconnect`` in a row are taken as a lost link.
  :class:`~fair_edge.errors.CameraError` (any other)  the link is down: reconnect.
A failed read is never turned into a substitute (black) frame.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple, Protocol, runtime_checkable


from fair_edge.errors import CameraError, ConfigError, did_you_mean
from fair_edge.fields import require
from fair_edge.records import Frame

log = logging.getLogger(__name__)


class EndOfStream(CameraError):
    """The source has no more frames (a replay ended without looping, or a reader gave up).

    ``cause``: the exception that ended the stream, if it ended on a failure, else ``None``.
    """

    def __init__(self, message: str, cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.cause = cause


class FrameMissed(CameraError):
    """One read delivered no frame, but the source may still be connected (a counted event)."""


class FrameIncomplete(FrameMissed):
    """A frame arrived but damaged (a GigE frame with packets lost on the way): the link is up.

    Counted in ``CaptureStats.read_errors`` (and, as the camera's frame id is skipped, in
    ``frames_lost_estimate`` once the next frame shows the gap), never a reason to reconnect."""


class AwaitingTrigger(FrameMissed):
    """A triggered camera waited its timeout and took no frame because no part came, and its link answered.

    Nothing was missed: not counted, not a miss towards a reconnect, no frame lost; the reader reads again."""


def awaiting_trigger(source: str, timeout_s: float, read_link: Callable[[], object],
                     answered_errors: tuple[type[BaseException], ...] = ()) -> AwaitingTrigger:
    """What a triggered camera's wait of ``timeout_s`` seconds without a frame means (``aravis:``, ``genicam:``): no
    part yet, ``AwaitingTrigger`` (returned, for the caller to raise), once ``read_link()`` (one register read over
    the camera's control link, past any cache) returns, or raises one of ``answered_errors``: the errors the camera
    itself answers a read with (an address it refuses), which prove the link as well. CameraError naming ``source``
    when it raises anything else: the camera does not answer, the link is down (a camera unplugged while the line
    idles is reconnected, never waited for as an idle line)."""
    try:
        read_link()
    except answered_errors as exc:
        return AwaitingTrigger(f"{source}: no trigger within {timeout_s:g} s (no part; the camera answers: its "
                               f"register read came back with an error, {exc})")
    except Exception as exc:  # the driver's own error type (GLib.Error, GenTL's): no answer -> link down
        raise CameraError(f"{source}: no frame within {timeout_s:g} s and the camera does not answer a register "
                          f"read ({exc}): the link is down") from exc
    return AwaitingTrigger(f"{source}: no trigger within {timeout_s:g} s (no part; the camera answers)")


@runtime_checkable
class FrameSource(Protocol):
    """What the capture loop needs from a camera, a replay or a synthetic line.

    name: a short human-readable label used in logs and error messages.
    nominal_fps: frames per second the source delivers when healthy; ``None`` if unknown.
    """

    name: str

    @property
    def nominal_fps(self) -> float | None: ...

    def open(self) -> None:
        """Connect and read a first frame (a triggered camera: connect only); raise ``CameraError`` naming the
        source and the fix."""

    def read(self) -> Frame:
        """Return the next frame; raise ``EndOfStream``, ``FrameMissed`` or ``CameraError``."""

    def close(self) -> None:
        """Release the device; idempotent; clean-up failures are logged, not raised."""

    def __enter__(self) -> FrameSource: ...

    def __exit__(self, *exc: object) -> None: ...


def check_fps(fps: float, source: str) -> float:
    """Validate a replay rate: frames per second >= 0 (0 = as fast as possible)."""
    if not isinstance(fps, (int, float)) or fps < 0 or fps != fps:
        raise ConfigError(f"{source}: fps must be a number >= 0 (0 = as fast as possible), found {fps!r}")
    return float(fps)


CATCH_UP_S = 0.5   # a paced replay's reader this late (s) still gets each slot's frame; older slots are skipped


class Slot(NamedTuple):
    """A paced frame's place on its replay's timeline (``Pacer.wait``).

    t: the slot's time, ``time.monotonic()`` s: when a camera at that rate took the frame (its ``t_capture``).
    missed: slots before it skipped with no frame given (the reader came, or its wait woke, more than
    ``CATCH_UP_S`` and a whole period after them): the replay skips their images and counts them in its seq, as a
    camera loses the frames its host was too late for.
    """

    t: float
    missed: int = 0


class Pacer:
    """Paces a replay as a camera running at ``fps``: slot k is at ``t0 + k / fps`` (t0: the first ``wait()``
    after a ``reset()``), a fixed schedule that a late reader or a late wake never moves.

    fps: frames per second, 0 = no waiting (each ``wait()`` is a slot at once, now). ``wait()`` returns at the next
    slot's time (at once when it has come) and gives its ``Slot``; the frame is stamped with the slot's time, so
    stamps are always whole periods apart and a loaded machine never moves one replay's frames later than its
    sibling's (replays at one rate keep step, ``match: sequence``). A reader behind its schedule gets the slots it
    is late for one after another (a camera's buffered frames, each stamped at its slot) while they are at most
    ``CATCH_UP_S`` (and at least a period) old; older ones are skipped (``Slot.missed``). ``wake()`` (thread-safe)
    ends a pending wait early (its slot is then still to come); ``reset()`` restarts the schedule.
    """

    def __init__(self, fps: float) -> None:
        self.period = 1.0 / fps if fps > 0 else 0.0
        self._t0: float | None = None
        self._slot = 0   # the next slot's index from t0
        self._wake = threading.Event()

    def reset(self) -> None:
        self._t0 = None
        self._wake.clear()

    def wake(self) -> None:
        self._wake.set()

    def wait(self) -> Slot:
        now = time.monotonic()
        if self.period == 0.0:
            return Slot(now)
        if self._t0 is None:
            self._t0, self._slot = now, 0
        missed = self._skip_stale(now)       # a reader that came late
        delay = self._slot_time() - now
        if delay > 0:
            self._wake.wait(delay)
            missed += self._skip_stale(time.monotonic())   # a wait that woke late
        slot = Slot(self._slot_time(), missed)
        self._slot += 1
        return slot

    def _slot_time(self) -> float:
        return self._t0 + self._slot * self.period

    def _skip_stale(self, now: float) -> int:
        """Skip the slots too old to give at ``now`` (monotonic s): more than ``CATCH_UP_S``, and a whole period,
        before it; returns how many."""
        oldest = now - max(CATCH_UP_S, self.period)   # the next slot given is after this
        if self._slot_time() > oldest:
            return 0
        skipped = int((oldest - self._slot_time()) // self.period) + 1
        self._slot += skipped
        return skipped


# ----------------------------------------------------------------------------- capture settings and counters
FULL_POLICY_NAMES = ("drop_oldest", "drop_newest", "block")  # CaptureThread's full-queue policies (capture.FULL_POLICIES)


@dataclass(frozen=True)
class CaptureSettings:
    """How a CaptureThread buffers and reconnects.

    queue_size: frames held for the consumer (>= 1).
    full_policy: what a full queue does with a new frame: ``drop_oldest`` (keep the latest;
        default, right for live inspection), ``drop_newest`` (keep what is queued) or ``block``
        (the reader waits for room: nothing is dropped; for replays, where the source can wait;
        a live camera under ``block`` loses frames in its driver instead, counted as lost).
    backoff_initial_s, backoff_max_s, backoff_factor: reconnect delay in seconds,
        ``min(max, initial * factor ** attempt)``.
    max_reconnects: consecutive failed reconnect attempts before the stream ends;
        ``None`` = keep trying until ``stop()``.
    misses_before_reconnect: consecutive ``FrameMissed`` reads treated as a lost link (an incomplete frame,
        ``FrameIncomplete``, proves the link is up: counted, never one of them; a triggered camera's wait for a
        part, ``AwaitingTrigger``, is not a miss).
    stop_timeout_s: how long ``stop()`` waits for the reader thread to finish, seconds: a read in progress (at most
        ``READ_SPAN_S``: a GenICam camera's longest wait, an ``opencv:`` or ``gst:`` network stream's
        read timeout) and what follows it (``READ_AFTER_S``).
    nominal_fps: frame rate used to estimate frames lost in an outage when the source's
        sequence numbers show no gap; ``None`` = ask the source (``source.nominal_fps``).
    """

    queue_size: int = 4
    full_policy: str = "drop_oldest"
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 10.0
    backoff_factor: float = 2.0
    max_reconnects: int | None = None
    misses_before_reconnect: int = 3
    stop_timeout_s: float = 3.0
    nominal_fps: float | None = None

    def __post_init__(self) -> None:
        _require(self.queue_size >= 1, "queue_size", ">= 1", self.queue_size)
        if self.full_policy not in FULL_POLICY_NAMES:
            raise ConfigError(
                f"full_policy: expected one of {sorted(FULL_POLICY_NAMES)}, found {self.full_policy!r}"
                f"{did_you_mean(self.full_policy, FULL_POLICY_NAMES)}"
            )
        _require(self.backoff_initial_s >= 0, "backoff_initial_s", ">= 0", self.backoff_initial_s)
        _require(self.backoff_max_s >= self.backoff_initial_s, "backoff_max_s", ">= backoff_initial_s",
                 self.backoff_max_s)
        _require(self.backoff_factor >= 1, "backoff_factor", ">= 1", self.backoff_factor)
        _require(self.max_reconnects is None or self.max_reconnects >= 0, "max_reconnects",
                 "None or >= 0", self.max_reconnects)
        _require(self.misses_before_reconnect >= 1, "misses_before_reconnect", ">= 1",
                 self.misses_before_reconnect)
        _require(self.stop_timeout_s > 0, "stop_timeout_s", "> 0", self.stop_timeout_s)
        _require(self.nominal_fps is None or self.nominal_fps > 0, "nominal_fps", "None or > 0",
                 self.nominal_fps)

    def backoff_s(self, attempt: int) -> float:
        """Delay in seconds before reconnect attempt ``attempt`` (0-based)."""
        return min(self.backoff_max_s, self.backoff_initial_s * self.backoff_factor**attempt)


READ_AFTER_S = 1.0   # of the capture's stop wait, kept for what follows a read (copy, conversion, release), seconds
READ_SPAN_S = CaptureSettings.stop_timeout_s - READ_AFTER_S   # the rest, for the read itself: 2 s


def _require(ok: bool, field: str, expected: str, found: object) -> None:
    require(ok, f"CaptureSettings.{field}", expected, found)


class CaptureState(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    RECONNECTING = "reconnecting"
    ENDED = "ended"  # the source ended or the reader gave up / crashed
    STOPPED = "stopped"  # stop() was called


@dataclass(frozen=True)
class CaptureStats:
    """A snapshot of a CaptureThread's counters (all counts since start).

    frames_in: frames read from the source. dropped_queue_full: frames discarded by the
    full-queue policy. read_errors: reads that raised (missed and incomplete frames, link failures; not a
    triggered camera's wait for a part).
    reconnects: successful reconnections. frames_lost_estimate: frames the source produced
    that never reached us (sequence gaps, incomplete frames among them, or outage time x nominal fps where
    seq shows none; a triggered camera has no nominal fps, so its idle time is never counted).
    unreadable: files the source skipped because it could not decode them (a replayed folder's corrupt
    image): they are not frames, so an unpaced replay's files = frames_in + unreadable.
    outage_cause: while ``state`` is RECONNECTING, why: the last link error of the outage (the error that began it,
    then each failed reopen's, e.g. a camera that now delivers 16-bit frames); '' otherwise.
    """

    frames_in: int = 0
    dropped_queue_full: int = 0
    read_errors: int = 0
    reconnects: int = 0
    frames_lost_estimate: int = 0
    unreadable: int = 0
    state: CaptureState = CaptureState.NEW
    end_reason: str = ""
    outage_cause: str = ""
