"""CaptureThread: read a frame source in its own thread into a bounded queue; and ``SourceBase``, the
class every source builds on (it numbers, stamps and freezes each frame), so that one frame's capture
runs in two files: its source's and this one.

The reader opens the source before the thread starts (fail fast), then loops:
read -> enqueue under the full-queue policy -> repeat. When the link fails it closes the
source, waits with exponential back-off (interruptible by ``stop()``), reopens and says so
through ``logging``. When the source ends or the reader gives up, the stream ends: the
consumer's ``get()`` / iteration drains the frames already queued and then raises /
stops, it never blocks forever.

Usage from the inspection loop::

    with open_source("0") as src, CaptureThread(src, CaptureSettings(queue_size=4)) as cap:
        for frame in cap:          # ends at end of stream or stop()
            ...
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator

import numpy as np

from fair_edge.errors import CameraError, ConfigError
from fair_edge.preprocess import check_frame
from fair_edge.records import Frame

from .base import (FULL_POLICY_NAMES, AwaitingTrigger, CaptureSettings, CaptureState, CaptureStats, EndOfStream,
                   FrameIncomplete, FrameMissed, FrameSource)

log = logging.getLogger(__name__)

_END = object()  # end-of-stream marker put in the queue after the last frame

FIRST_FRAME_READS = 10     # reads open() makes at most while they miss (FrameMissed: connected, no complete frame) ...
FIRST_FRAME_WAIT_S = 3.0   # ... and the seconds after which it makes no new one
PIXEL_FORMAT_FIX = "Set the camera to an 8-bit mono or BGR pixel format."   # for a frame check_frame refuses


# ----------------------------------------------------------------------------- the sources' base class
class SourceBase:
    """Context-manager plumbing and the sequence counter shared by the concrete sources.

    Subclasses implement ``_connect()`` (open and return the first image as ``_grab`` does, or None for a
    camera that takes a frame only when triggered: it has none before a part comes),
    ``_grab() -> (image, label)`` or ``(image, label, t_grabbed)`` (next image, its ``Frame.source``
    label and, where the driver knows it, when the image was taken in ``time.monotonic()`` seconds) and
    ``_release()`` (also called after a failed ``_connect``, so it must cope with a
    half-open state). The first image read by ``_connect`` is returned by the next ``read()``,
    so fail-fast opening loses no frame; when ``_connect`` or a retry raises ``FrameMissed`` (connected,
    but that read had no complete frame: a GigE frame with packets lost), ``open()`` reads again with
    ``_grab``, up to ``FIRST_FRAME_READS`` reads started within ``FIRST_FRAME_WAIT_S`` s. Sequence numbers
    keep counting across reconnects.

    ``Frame.t_capture`` is when the image was grabbed, not when ``read()`` returned it: the driver's
    time where ``_grab`` gives one, else the moment ``_connect`` / ``_grab`` returned it (the first image
    keeps its time of ``open()``, however late it is read). A triggered capture relies on it to skip
    images taken before the trigger (``fair_edge.cameras.triggered``). A source that makes an image only
    when asked (``on_demand``: an unpaced replay or synthetic line) has no timeline: its first image is
    stamped when read, so a replayed folder's first file is a frame like the others.
    ``interrupt()`` (any thread) ends a wait inside ``_grab`` that can be cut short (a replay's pacing, a
    triggered ``genicam:`` camera's stepped wait for a part); here it does nothing. ``unreadable`` counts files a source skipped because it could not
    decode them (replays; ``CaptureStats.unreadable``).
    """

    name: str = "source"

    def __init__(self) -> None:
        self._is_open = False
        self._pending: tuple[np.ndarray, str, float] | None = None
        self._seq = 0
        self.unreadable = 0

    @property
    def nominal_fps(self) -> float | None:
        return None

    @property
    def is_open(self) -> bool:
        return self._is_open

    @property
    def on_demand(self) -> bool:
        """True when the source makes an image only when read (no timeline; here: False)."""
        return False

    def open(self) -> None:
        if self._is_open:
            return
        try:
            first = self._first_image()
            if first is not None:
                check_image(first[0], self.name)
        except BaseException:
            self._release_logged()
            raise
        self._pending = first
        self._is_open = True
        log.info("camera %s: opened", self.name)

    def _first_image(self) -> tuple[np.ndarray, str, float] | None:
        """Connect; the first image, stamped (None: a triggered camera, connected with none).

        A read that raises ``FrameMissed`` (the source is connected, that read had no complete frame) is made
        again with ``_grab()``, up to ``FIRST_FRAME_READS`` reads started within ``FIRST_FRAME_WAIT_S`` s of
        the start; then CameraError naming the reads, the seconds and the last miss."""
        t_start = time.monotonic()
        try:
            first = self._connect()
            return None if first is None else stamped(first)
        except FrameMissed as exc:
            missed = exc
        reads = 1
        while reads < FIRST_FRAME_READS and time.monotonic() - t_start < FIRST_FRAME_WAIT_S:
            reads += 1
            try:
                return stamped(self._grab())
            except FrameMissed as exc:
                missed = exc
                log.info("camera %s: no first frame yet (read %d): %s", self.name, reads, exc)
        raise CameraError(
            f"{self.name}: connected, but expected a complete first frame within {FIRST_FRAME_READS} reads or "
            f"{FIRST_FRAME_WAIT_S:g} s and found none in {reads} reads ({time.monotonic() - t_start:.1f} s); "
            f"last: {missed}. Check that the camera streams (acquisition running, not waiting for a trigger) "
            "and, for GigE, that its packets arrive (a firewall on the stream port, packet size above the "
            "network's MTU, the link's bandwidth)") from missed

    def read(self) -> Frame:
        if not self._is_open:
            raise CameraError(f"{self.name}: read() on a closed source; call open() first (or use `with`)")
        if self._pending is not None:
            image, label, t_grabbed = self._pending
            self._pending = None
            if self.on_demand:   # made for this read: it is taken now
                t_grabbed = time.monotonic()
        else:
            image, label, t_grabbed = stamped(self._grab())
        return self._make_frame(image, label, t_grabbed)

    def interrupt(self) -> None:
        """End a wait of ``_grab`` early (capture is stopping); a source that waits on its own implements it."""

    def close(self) -> None:
        if not self._is_open:
            return
        self._is_open = False
        self._pending = None
        self._release_logged()

    def _release_logged(self) -> None:
        try:
            self._release()
        except Exception:  # clean-up must not mask the caller's error; logged, not hidden
            log.exception("camera %s: error while releasing; continuing", self.name)

    def __enter__(self) -> SourceBase:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _make_frame(self, image: np.ndarray, label: str, t_grabbed: float) -> Frame:
        image = freeze(image)  # checked once, by the inspection loop (a malformed frame: an NG verdict)
        frame = Frame(seq=self._seq, t_capture=t_grabbed, image=image, source=label)
        self._seq += 1
        return frame

    def _connect(self) -> tuple[np.ndarray, str] | None:
        raise NotImplementedError

    def _grab(self) -> tuple[np.ndarray, str]:
        raise NotImplementedError

    def _release(self) -> None:
        raise NotImplementedError


def stamped(grabbed: tuple) -> tuple[np.ndarray, str, float]:
    """``(image, label)`` or ``(image, label, t_grabbed)`` from a source's ``_grab`` -> with the time it was
    taken (``time.monotonic()`` s): the source's own, else now (it was grabbed just before)."""
    if len(grabbed) == 3:
        return grabbed
    image, label = grabbed
    return image, label, time.monotonic()


def check_image(image: object, source: str) -> np.ndarray:
    """Validate an image by the one frame rule (``fair_edge.preprocess.check_frame``) and freeze it: what a
    source does with its first frame at ``open()`` (fail fast on a wrong pixel format) and a synthetic
    line with its images. Frames read afterwards are checked once, by the inspection loop.

    image: expected (H, W, 3) uint8 BGR or (H, W) / (H, W, 1) uint8 gray, H, W >= 2, host memory.
    Returns it as (H, W, 3) or (H, W), marked read-only (frames are never mutated downstream).
    Raises CameraError naming the source, the expected and the found shape/dtype and the fix.
    """
    try:
        image = check_frame(image)
    except ConfigError as exc:
        raise CameraError(f"{source}: {exc} {PIXEL_FORMAT_FIX}") from None
    return freeze(image)


def freeze(image: np.ndarray) -> np.ndarray:
    """Mark a captured array read-only (a frame is never mutated after capture); anything else is passed on
    as it is, for the inspection loop's check to turn into a "malformed frame" verdict."""
    if isinstance(image, np.ndarray):
        image.flags.writeable = False
    return image


# ----------------------------------------------------------------------------- the capture thread
BLOCK_POLL_S = 0.05  # how often a blocked reader checks for stop()


def _put_drop_oldest(q: queue.Queue, item: Frame, stop: threading.Event) -> list[Frame]:
    """Enqueue ``item``, evicting the oldest entries while full. Returns the frames dropped."""
    dropped: list[Frame] = []
    while True:  # ends at once unless stop() slips its end marker in between
        try:
            q.put_nowait(item)
            return dropped
        except queue.Full:
            pass
        with contextlib.suppress(queue.Empty):  # Empty: the consumer made room meanwhile
            old = q.get_nowait()
            if old is not _END:
                dropped.append(old)


def _put_drop_newest(q: queue.Queue, item: Frame, stop: threading.Event) -> list[Frame]:
    """Enqueue ``item`` unless full, in which case ``item`` is discarded. Returns dropped."""
    try:
        q.put_nowait(item)
        return []
    except queue.Full:
        return [item]


def _put_block(q: queue.Queue, item: Frame, stop: threading.Event) -> list[Frame]:
    """Wait for room (back-pressure on the source); only ``stop()`` makes it give ``item`` up."""
    while not stop.is_set():
        try:
            q.put(item, timeout=BLOCK_POLL_S)
            return []
        except queue.Full:
            continue
    return [item]


FULL_POLICIES: dict[str, Callable[[queue.Queue, Frame, threading.Event], list[Frame]]] = dict(
    zip(FULL_POLICY_NAMES, (_put_drop_oldest, _put_drop_newest, _put_block), strict=True))


class CaptureThread:
    """Reads ``source`` in a daemon thread into ``queue.Queue(maxsize=settings.queue_size)``.

    The thread owns the source while it runs and closes it when it ends. Frames are
    :class:`~fair_edge.records.Frame`: image (H, W, 3) uint8 BGR or (H, W) uint8 gray,
    read-only host memory; ``t_capture`` in ``time.monotonic()`` seconds.

    Hooks, both called on the reader thread and so kept short (a failure is logged, never ends
    the stream): ``on_capture(frame)`` for every frame read, before it is queued (the reject
    scheduler notes the part and its encoder count here); ``on_drop(frame)`` for every frame the
    full-queue policy discards (the verdict log accounts for it). ``on_queued()`` after a frame is queued
    and when the stream ends (a consumer waiting on several cameras wakes: ``fair_edge.cameras.mux``).
    """

    def __init__(self, source: FrameSource, settings: CaptureSettings | None = None, *,
                 on_capture: Callable[[Frame], None] | None = None,
                 on_drop: Callable[[Frame], None] | None = None,
                 on_queued: Callable[[], None] | None = None) -> None:
        self.source = source
        self.settings = settings or CaptureSettings()
        self._on_capture, self._on_drop, self._on_queued = on_capture, on_drop, on_queued
        self._queue: queue.Queue = queue.Queue(maxsize=self.settings.queue_size)
        self._put = FULL_POLICIES[self.settings.full_policy]
        self._stop = threading.Event()
        self._t_stop = float("inf")   # time.monotonic() when stop() was called
        self._ended = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._counts = dict(frames_in=0, dropped_queue_full=0, read_errors=0, reconnects=0,
                            frames_lost_estimate=0)
        self._state = CaptureState.NEW
        self._end_reason = ""
        self._cause: BaseException | None = None
        self._last: Frame | None = None
        self._after_outage = False
        self._outage_cause = ""       # the last link error of the outage under way ('' when none)
        self.down_at_stop = ""        # why the camera was not delivering when stop() was called ('' when it was)

    # ---- lifecycle -------------------------------------------------------------------
    def start(self) -> CaptureThread:
        """Open the source (raises CameraError now if it cannot) and start the reader."""
        if self._thread is not None:
            raise CameraError(f"{self.source.name}: CaptureThread.start() called twice; create a new one")
        self.source.open()
        self._state = CaptureState.RUNNING
        self._thread = threading.Thread(target=self._run, name=f"capture-{self.source.name}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> bool:
        """Stop the reader and join it within ``settings.stop_timeout_s``. Idempotent.

        A camera still down (reconnecting, or given up) has its unfinished outage counted now: see
        ``_count_open_outage``; ``down_at_stop`` then says why it was down.
        Returns True if the thread finished (or never started), False if it is still
        blocked inside ``source.read()`` or, reconnecting, its ``open()`` (logged, naming which; it is a daemon and
        exits on its own).
        """
        if not self._stop.is_set():   # the first call: the run's end (a second one moves nothing)
            self._t_stop = time.monotonic()
            self._stop.set()
            self._count_open_outage()
        if self._thread is None:
            self._finish(CaptureState.STOPPED, "stop() called")
            return True
        reopening = self._state is CaptureState.RECONNECTING   # alive after the join then: held in the source's open
        self._interrupt_source()
        # the end marker goes in after the reader's last frame: a frame taken before this call and read while
        # stopping is still queued ahead of it and inspected; one taken after it is not accepted (``_accept``)
        self._thread.join(self.settings.stop_timeout_s)
        self._finish(CaptureState.STOPPED, "stop() called")
        if self._thread.is_alive():
            log.warning("camera %s: reader did not finish within %.1f s (%s); leaving the daemon thread to exit",
                        self.source.name, self.settings.stop_timeout_s,
                        "held in reopening the camera" if reopening else "blocked in read()")
            return False
        return True

    close = stop

    def _count_open_outage(self) -> None:
        """At ``stop()``: frames lost to an outage no frame came back to end. A resumed frame counts its outage
        (``_accept``); one still open at the stop gets (t_stop - last frame's t_capture) x nominal fps - 1 (none
        without a nominal fps, e.g. a triggered camera) and sets ``down_at_stop``. Read after ``_stop`` is set: a
        reader seen reconnecting now accepts no frame after it, so the outage is never counted twice."""
        with self._lock:
            state, end_reason = self._state, self._end_reason
        if state is CaptureState.RECONNECTING:
            self.down_at_stop = f"reconnecting ({self._outage_cause})"
        elif state is CaptureState.ENDED and end_reason.startswith("gave up"):
            self.down_at_stop = end_reason
        else:
            return
        last, fps = self._last, self._nominal_fps()
        if last is not None and fps:
            lost = max(0, round((self._t_stop - last.t_capture) * fps) - 1)
            with self._lock:
                self._counts["frames_lost_estimate"] += lost
            log.warning("camera %s: still down at stop (%s): about %d frame(s) lost since the last one",
                        self.source.name, self.down_at_stop, lost)

    def _interrupt_source(self) -> None:
        """Wake a reader waiting inside the source (a paced replay): ``interrupt()`` where the source has one."""
        interrupt = getattr(self.source, "interrupt", None)
        if interrupt is None:
            return
        try:
            interrupt()
        except Exception:  # logged: stopping goes on, joined within stop_timeout_s
            log.exception("camera %s: interrupt() failed", self.source.name)

    def __enter__(self) -> CaptureThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def ended(self) -> bool:
        """True once the stream has ended or been stopped (queued frames may remain to get)."""
        return self._ended.is_set()

    # ---- consumer side ---------------------------------------------------------------
    def get(self, timeout: float | None = None) -> Frame:
        """Next frame, oldest first.

        Raises ``queue.Empty`` if none arrives within ``timeout`` seconds (``None`` = wait),
        and :class:`EndOfStream` (with the reason and any ``cause``) once the stream has
        ended and the queue is drained.
        """
        try:
            item = self._queue.get_nowait()
        except queue.Empty:
            if self._ended.is_set():
                raise self._end_error() from None
            item = self._queue.get(timeout=timeout)
        if item is _END:  # a frame the reader queued while stop() slipped the marker in still counts
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                raise self._end_error() from None
            with contextlib.suppress(queue.Full):
                self._queue.put_nowait(_END)
        return item

    def __iter__(self) -> Iterator[Frame]:
        """Yield frames until the stream ends or ``stop()`` is called."""
        while True:
            try:
                yield self.get()
            except EndOfStream:
                return

    def qsize(self) -> int:
        return self._queue.qsize()

    def stats(self) -> CaptureStats:
        """The counters now, with the state, why the stream ended and, while reconnecting, the outage's cause."""
        unreadable = getattr(self.source, "unreadable", 0)
        short = getattr(self.source, "frames_short", 0)   # a replayed video's frames declared, never given: lost
        with self._lock:
            counts = dict(self._counts, frames_lost_estimate=self._counts["frames_lost_estimate"] + short)
            cause = self._outage_cause if self._state is CaptureState.RECONNECTING else ""
            return CaptureStats(**counts, unreadable=unreadable, state=self._state, end_reason=self._end_reason,
                                outage_cause=cause)

    # ---- reader thread ---------------------------------------------------------------
    def _run(self) -> None:
        reason, cause = "stop() called", None
        try:
            reason, cause = self._read_loop()
        except Exception as exc:  # a bug in a source must end the stream, not hang the consumer
            log.exception("camera %s: reader crashed", self.source.name)
            reason, cause = f"reader crashed: {exc!r}", exc
        finally:
            self._close_source()
            self._cause = self._cause or cause
            self._finish(CaptureState.STOPPED if self._stop.is_set() else CaptureState.ENDED, reason)

    def _read_loop(self) -> tuple[str, BaseException | None]:
        misses = 0
        while not self._stop.is_set():
            try:
                frame = self.source.read()
            except EndOfStream as exc:
                return f"source ended: {exc}", exc.cause
            except CameraError as exc:
                misses, ended = self._read_failed(exc, misses)
                if ended is not None:
                    return ended
                continue
            misses = 0
            self._accept(frame)
        return "stop() called", None

    def _read_failed(self, exc: CameraError, misses: int) -> tuple[int, tuple[str, BaseException | None] | None]:
        """Handle a read that raised ``exc`` after ``misses`` misses in a row. Returns (misses in a row now,
        None to read on or the stream's (end reason, cause) when a reconnect gave up).

        ``AwaitingTrigger`` (no part, link answered): nothing counted. ``FrameIncomplete`` (a damaged frame
        arrived, so the link is up): counted in ``read_errors``, ends the run of misses, never a reconnect.
        ``FrameMissed``: counted; ``misses_before_reconnect`` in a row, or any other CameraError: reconnect."""
        if isinstance(exc, AwaitingTrigger):
            return 0, None
        self._count("read_errors")
        if isinstance(exc, FrameIncomplete):
            log.info("camera %s: %s (counted; the link is up)", self.source.name, exc)
            return 0, None
        self._after_outage = True
        misses = misses + 1 if isinstance(exc, FrameMissed) else self.settings.misses_before_reconnect
        if misses < self.settings.misses_before_reconnect:
            log.warning("camera %s: no frame (%s)", self.source.name, exc)
            return misses, None
        return 0, self._reconnect(exc)

    def _accept(self, frame: Frame) -> None:
        if frame.t_capture >= self._t_stop:   # taken after stop(): the run has ended; not counted, queued or noted
            log.debug("camera %s: frame %d taken after stop(); discarded", self.source.name, frame.seq)
            return
        lost = 0
        last = self._last
        if last is not None:
            gap = frame.seq - last.seq - 1
            if gap > 0:
                lost = gap
            elif self._after_outage:   # frames lost that seq does not count: say so on the frame
                frame = dataclasses.replace(frame, resumed=True)
                if fps := self._nominal_fps():
                    lost = max(0, round((frame.t_capture - last.t_capture) * fps) - 1)
        self._last, self._after_outage = frame, False
        self._call_hook(self._on_capture, frame)
        with self._lock:
            self._counts["frames_in"] += 1
            self._counts["frames_lost_estimate"] += lost
        dropped = self._put(self._queue, frame, self._stop)
        if self._put is _put_block:   # gives a frame up only when stop() is called: not a queue drop (not inspected)
            dropped = []
        with self._lock:
            self._counts["dropped_queue_full"] += len(dropped)
        for old in dropped:
            self._call_hook(self._on_drop, old)
        if self._on_queued is not None:
            self._on_queued()

    def _call_hook(self, hook: Callable[[Frame], None] | None, frame: Frame) -> None:
        if hook is None:
            return
        try:
            hook(frame)
        except Exception:  # a listener's bug must not end capture; logged with its traceback
            log.exception("camera %s: hook %r failed for frame %d", self.source.name, hook, frame.seq)

    def _reconnect(self, cause: CameraError) -> tuple[str, BaseException | None] | None:
        """Close, back off, reopen. Returns None when reconnected, else (end reason, cause)."""
        name, s = self.source.name, self.settings
        self._outage_cause = str(cause)   # set before the state: a stop() that sees it reconnecting can say why
        self._set_state(CaptureState.RECONNECTING)
        self._close_source()
        t_down = time.monotonic()
        attempt = 0
        while not self._stop.is_set():   # a stop during an attempt's open: no next attempt announced, no giving up
            if s.max_reconnects is not None and attempt >= s.max_reconnects:
                log.error("camera %s: giving up after %d reconnect attempts; last error: %s", name, attempt, cause)
                return f"gave up after {attempt} reconnect attempts: {cause}", cause
            delay = s.backoff_s(attempt)
            log.warning("camera %s: %s; reconnecting in %.2f s (attempt %d%s)", name, cause, delay,
                        attempt + 1, "" if s.max_reconnects is None else f" of {s.max_reconnects}")
            if self._stop.wait(delay):
                break
            attempt += 1
            try:
                self.source.open()
            except EndOfStream as exc:
                return f"source ended: {exc}", exc.cause
            except CameraError as exc:
                cause = exc
                self._outage_cause = str(exc)
                continue
            self._count("reconnects")
            self._set_state(CaptureState.RUNNING)
            log.warning("camera %s: reconnected after %.2f s (%d attempt(s))", name,
                        time.monotonic() - t_down, attempt)
            return None
        return "stop() called", None

    # ---- shared helpers --------------------------------------------------------------
    def _nominal_fps(self) -> float | None:
        """Settings first, else the source's (known only once opened, e.g. CAP_PROP_FPS)."""
        return self.settings.nominal_fps or getattr(self.source, "nominal_fps", None) or None

    def _close_source(self) -> None:
        try:
            self.source.close()
        except Exception:  # logged: a failing close() must not stop a reconnect or the end
            log.exception("camera %s: close() failed", self.source.name)

    def _count(self, key: str) -> None:
        with self._lock:
            self._counts[key] += 1

    def _set_state(self, state: CaptureState) -> None:
        with self._lock:
            if self._state not in (CaptureState.ENDED, CaptureState.STOPPED):
                self._state = state

    def _finish(self, state: CaptureState, reason: str) -> None:
        """Mark the stream ended (first caller wins) and wake a consumer blocked in get()."""
        with self._lock:
            if self._ended.is_set():
                return
            self._state, self._end_reason = state, reason
            self._ended.set()
        with contextlib.suppress(queue.Full):  # if full, the consumer drains it, then sees `_ended`
            self._queue.put_nowait(_END)
        if self._on_queued is not None:
            self._on_queued()

    def _end_error(self) -> EndOfStream:
        return EndOfStream(f"{self.source.name}: stream ended ({self._end_reason})", self._cause)
